"""``config.pbtxt`` for every model, built as Triton's own ``ModelConfig`` protobuf from the I/O contracts.

Triton's batch dimension is implicit: a network's contract starts with ``batch``, which becomes
``max_batch_size``; the other axes become ``dims`` (-1 where dynamic). A tensor that is only a batch
(the UNet's per-sample ``timestep``) is declared ``dims: [1]`` with an empty ``reshape``, so clients send
``[B, 1]`` and the model sees ``[B]``.
"""
from __future__ import annotations

import json

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from fashiongen.runtime.errors import InputError
from fashiongen.runtime.contracts import NetworkContract, TensorSpec

DATA_TYPES = {"float32": mc.TYPE_FP32, "float16": mc.TYPE_FP16, "int32": mc.TYPE_INT32, "int64": mc.TYPE_INT64,
              "uint8": mc.TYPE_UINT8, "uint64": mc.TYPE_UINT64, "bytes": mc.TYPE_STRING}
TARGETS = ("cpu", "onnxruntime", "tensorrt")


def _fill_tensor(entry, spec: TensorSpec, dims: dict[str, int], batched: bool) -> None:
    entry.name = spec.name
    entry.data_type = DATA_TYPES[spec.dtype]
    shape = spec.resolve(dims)
    if batched:
        shape = shape[1:]
    entry.dims.extend([d if isinstance(d, int) else -1 for d in shape] or [1])
    if batched and not shape:
        entry.reshape.SetInParent()  # [B, 1] on the wire, [B] in the model


def network_config(model_name: str, network: str, contract: NetworkContract, dims: dict[str, int], target: str,
                   model_file: str, max_batch_size: int, instances: int) -> mc.ModelConfig:
    """One network as a Triton model: python + ONNX Runtime on CPU, or the GPU container's native backends."""
    if target not in TARGETS:
        raise InputError(f"--target must be one of {', '.join(TARGETS)} (got {target!r})")
    assert all(s.shape[0] == "batch" for s in (*contract.inputs, *contract.outputs)), contract.name
    config = mc.ModelConfig(name=model_name, max_batch_size=max_batch_size)
    if target == "cpu":
        config.backend = "python"
        config.parameters["network"].string_value = network
        config.parameters["model_file"].string_value = model_file
        config.parameters["dims"].string_value = json.dumps(dims, sort_keys=True)
    else:
        config.platform = "onnxruntime_onnx" if target == "onnxruntime" else "tensorrt_plan"
        config.default_model_filename = model_file
    for spec in contract.inputs:
        _fill_tensor(config.input.add(), spec, dims, batched=True)
    for spec in contract.outputs:
        _fill_tensor(config.output.add(), spec, dims, batched=True)
    config.dynamic_batching.SetInParent()  # no queue delay: batches form from requests already waiting
    group = config.instance_group.add()
    group.count = instances
    group.kind = mc.ModelInstanceGroup.KIND_CPU if target == "cpu" else mc.ModelInstanceGroup.KIND_GPU
    return config


def service_config(contract: NetworkContract, required: frozenset[str], instances: int,
                   parameters: dict[str, str]) -> mc.ModelConfig:
    """A server-side pipeline (BLS python model): one request, one pipeline run, no batching."""
    config = mc.ModelConfig(name=contract.name, backend="python", max_batch_size=0)
    for spec in contract.inputs:
        entry = config.input.add()
        _fill_tensor(entry, spec, {}, batched=False)
        entry.optional = spec.name not in required
    for spec in contract.outputs:
        _fill_tensor(config.output.add(), spec, {}, batched=False)
    group = config.instance_group.add()
    group.count = instances
    group.kind = mc.ModelInstanceGroup.KIND_CPU
    for key, value in parameters.items():
        config.parameters[key].string_value = value
    return config


def to_text(config: mc.ModelConfig) -> str:
    return text_format.MessageToString(config)


def parse(text: str) -> mc.ModelConfig:
    return text_format.Parse(text, mc.ModelConfig())

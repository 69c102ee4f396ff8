"""Export one network to ONNX from its contract, and prove it against PyTorch.

Names, dtypes and dynamic axes come from ``runtime.contracts``; weights go to one external-data file
next to the graph (``NAME.onnx.data``), which keeps every file under protobuf's 2 GB limit. Weights that are
exactly representable in fp16 (a checkpoint stored in fp16) are stored in fp16 and cast back at load, which
is lossless and halves the files; ONNX Runtime folds the casts when it optimizes the graph.
"""
from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

from fashiongen.runtime.contracts import NetworkContract
from fashiongen.runtime.files import usual_mode
from fashiongen.runtime.manifest import NetworkEntry, sha256_file

DEFAULT_OPSET = 17


def _export_args(contract: NetworkContract, feeds: dict[str, np.ndarray]) -> tuple[torch.Tensor, ...]:
    return tuple(torch.from_numpy(np.ascontiguousarray(feeds[s.name])) for s in contract.inputs)


def export_onnx(module: torch.nn.Module, contract: NetworkContract, sample: dict[str, np.ndarray],
                dims: dict[str, int], out_path: Path, opset: int = DEFAULT_OPSET) -> None:
    """Trace ``module`` on ``sample`` and write ``out_path`` plus its ``.data`` weights file."""
    import onnx

    out_path = Path(out_path)
    dynamic_axes = {s.name: s.dynamic_axes(dims) for s in (*contract.inputs, *contract.outputs)}
    with tempfile.TemporaryDirectory(dir=out_path.parent) as tmp:
        raw = Path(tmp) / "raw.onnx"
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # tracer warnings about frozen Python branches are expected
            torch.onnx.export(module.eval(), _export_args(contract, sample), str(raw),
                              input_names=[s.name for s in contract.inputs],
                              output_names=[s.name for s in contract.outputs],
                              dynamic_axes=dynamic_axes, opset_version=opset, do_constant_folding=True,
                              dynamo=False)
        model = onnx.load(str(raw), load_external_data=True)
        keep_contract_inputs(model, contract, sample, dynamic_axes)
        store_exact_fp16(model)
        data_name = out_path.name + ".data"
        for stale in (out_path, out_path.with_name(data_name)):
            stale.unlink(missing_ok=True)
        onnx.save_model(model, str(out_path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=data_name, size_threshold=1024)
    for written in (out_path, out_path.with_name(data_name)):
        if written.exists():  # a small network may need no external data
            os.chmod(written, usual_mode())  # ONNX writes its external data 0600


def keep_contract_inputs(model, contract: NetworkContract, sample: dict[str, np.ndarray],
                         dynamic_axes: dict[str, dict[int, str]]) -> None:
    """Put back, in the contract's order, the inputs the tracer dropped because the graph never reads them (a
    DeepCache shallow path whose layers have no cross-attention ignores the text): the contract is what every
    backend and Triton's config feed."""
    import onnx

    graph = model.graph
    present = {i.name: i for i in graph.input}
    missing = [s for s in contract.inputs if s.name not in present]
    for spec in missing:
        axes = dynamic_axes.get(spec.name, {})
        shape = [axes.get(i, n) for i, n in enumerate(sample[spec.name].shape)]
        present[spec.name] = onnx.helper.make_tensor_value_info(
            spec.name, onnx.helper.np_dtype_to_tensor_dtype(np.dtype(spec.dtype)), shape)
    names = [s.name for s in contract.inputs]
    others = [i for name, i in present.items() if name not in names]
    graph.ClearField("input")
    graph.input.extend([present[name] for name in names] + others)


def store_exact_fp16(model, min_elements: int = 256) -> int:
    """Store each float32 initializer whose every value is exactly an fp16 value as fp16 plus a Cast node back
    to float32 under its old name: the graph computes the same numbers from half the bytes. Returns how many."""
    import onnx
    from onnx import numpy_helper

    graph = model.graph
    casts, kept = [], []
    for init in graph.initializer:
        value = numpy_helper.to_array(init) if init.data_type == onnx.TensorProto.FLOAT else None
        if value is None or value.size < min_elements or not np.array_equal(
                value.astype(np.float16).astype(np.float32), value):
            kept.append(init)
            continue
        kept.append(numpy_helper.from_array(value.astype(np.float16), init.name + "_fp16"))
        casts.append(onnx.helper.make_node("Cast", [init.name + "_fp16"], [init.name], to=onnx.TensorProto.FLOAT,
                                           name=init.name + "_to_fp32"))
    if casts:
        graph.ClearField("initializer")
        graph.initializer.extend(kept)
        nodes = casts + list(graph.node)
        graph.ClearField("node")
        graph.node.extend(nodes)
    return len(casts)


def validate_onnx(module: torch.nn.Module, contract: NetworkContract, onnx_path: Path,
                  feeds: dict[str, np.ndarray], dims: dict[str, int]) -> dict:
    """Run PyTorch and the runtime's ONNX Runtime engine on the same feeds; the max abs difference per output.

    The engine is the one serving loads (same session settings, graph optimized at the ALL level), so what is
    validated is what runs, and loading it saves the optimized graph under ``cache/ort`` beside the file:
    start-up after export reads that copy instead of redoing graph optimization."""
    from fashiongen.runtime.engines import OrtEngine

    with torch.no_grad():
        reference = module.eval()(*_export_args(contract, feeds))
    reference = reference if isinstance(reference, (tuple, list)) else (reference,)
    produced = OrtEngine(onnx_path, contract, dims, warmup=False).run(feeds)
    diffs = {s.name: float(np.abs(produced[s.name] - r.numpy()).max()) for s, r in zip(contract.outputs, reference)}
    return {"max_abs_diff": max(diffs.values()), "per_output": diffs,
            "shapes": {k: list(v.shape) for k, v in feeds.items()}}


def export_and_validate(module: torch.nn.Module, contract: NetworkContract, sample: dict[str, np.ndarray],
                        check: dict[str, np.ndarray], dims: dict[str, int], out_path: Path,
                        opset: int = DEFAULT_OPSET, tolerance: float = 1e-4) -> dict:
    """Export on ``sample``, validate on ``check`` (a different shape), refuse a network that disagrees."""
    export_onnx(module, contract, sample, dims, out_path, opset)
    report = validate_onnx(module, contract, out_path, check, dims)
    report["tolerance"] = tolerance
    if not report["max_abs_diff"] <= tolerance:
        raise RuntimeError(f"{contract.name}: ONNX output differs from PyTorch by {report['max_abs_diff']:.3g} "
                           f"(> {tolerance:g}) at shapes {report['shapes']}")
    return report


def export_network_entry(module: torch.nn.Module, contract: NetworkContract, sample: dict[str, np.ndarray],
                         check: dict[str, np.ndarray], dims: dict[str, int], out_path: Path,
                         opset: int = DEFAULT_OPSET) -> NetworkEntry:
    """Export and validate one network; its manifest entry (file, hash, resolved I/O, validation)."""
    report = export_and_validate(module, contract, sample, check, dims, out_path, opset)
    def describe(specs):
        return [{"name": s.name, "dtype": s.dtype, "shape": list(s.resolve(dims))} for s in specs]
    return NetworkEntry(file=out_path.name, sha256=sha256_file(out_path), inputs=describe(contract.inputs),
                        outputs=describe(contract.outputs), validation=report)


def seeded_feeds(contract: NetworkContract, shapes: dict[str, tuple[int, ...]], seed: int,
                 int_high: int = 1000) -> dict[str, np.ndarray]:
    """Random feeds of the contract's dtypes at the given shapes (ints in [0, int_high))."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for spec in contract.inputs:
        shape = shapes[spec.name]
        if spec.dtype.startswith("int"):
            feeds[spec.name] = rng.integers(0, int_high, size=shape).astype(spec.dtype)
        else:
            feeds[spec.name] = rng.standard_normal(shape).astype(spec.dtype)
    return feeds


class VaeDecoderNet(torch.nn.Module):
    """The decoder of a diffusers autoencoder (AutoencoderKL, or AutoencoderTiny for ``--tiny-vae``) as diffusers'
    pipelines call it: the latents divided by the autoencoder's own ``scaling_factor``, then decoded."""

    def __init__(self, vae):
        super().__init__()
        self.vae = vae

    def forward(self, latent):
        return self.vae.decode(latent / self.vae.config.scaling_factor, return_dict=False)[0]

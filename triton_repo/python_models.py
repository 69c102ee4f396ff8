"""The python-backend models, imported by each model folder's two-line ``model.py`` inside tritonserver.

- :class:`NetworkModel` serves one exported network with ONNX Runtime (the CPU server has no onnxruntime
  backend). Requests that the dynamic batcher hands over together are concatenated along the batch axis
  when their other axes agree, run as one call, and split again: this is where UNet calls of different
  requests, at different steps (a timestep per sample), meet.
- :class:`PipelineModel` runs a ``runtime`` pipeline whose engines are the network models, reached
  through BLS. The loop is the runtime's own; nothing here re-implements it.
"""
from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

from runtime.contracts import CONTRACTS, NetworkContract
from runtime.engines import EngineSet, OrtEngine

from .services import SERVICES, from_tensors


def _error(message: str, invalid: bool) -> "pb_utils.TritonError":
    code = pb_utils.TritonError.INVALID_ARG if invalid else pb_utils.TritonError.INTERNAL
    return pb_utils.TritonError(message, code)


def _version_dir(args: dict) -> Path:
    return Path(args["model_repository"]) / args["model_version"]


class NetworkModel:
    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self.contract: NetworkContract = CONTRACTS[params["network"]]
        self.engine = OrtEngine(_version_dir(args) / params["model_file"], self.contract, json.loads(params["dims"]))

    def execute(self, requests):
        feeds = [{s.name: pb_utils.get_input_tensor_by_name(r, s.name).as_numpy() for s in self.contract.inputs}
                 for r in requests]
        responses: list = [None] * len(requests)
        for indices in self._groups(feeds):
            self._run_group(indices, feeds, responses)
        return responses

    def _groups(self, feeds: list[dict]) -> list[list[int]]:
        """Requests whose tensors agree on every axis but the batch, so one call can serve them."""
        groups = defaultdict(list)
        for i, feed in enumerate(feeds):
            groups[tuple((k, v.dtype.str, v.shape[1:]) for k, v in sorted(feed.items()))].append(i)
        return list(groups.values())

    def _run_group(self, indices: list[int], feeds: list[dict], responses: list) -> None:
        batch = {name: np.concatenate([feeds[i][name] for i in indices]) for name in feeds[indices[0]]}
        try:
            outputs = self.engine.run(batch)
        except ValueError as exc:  # the contract refused a feed
            for i in indices:
                responses[i] = pb_utils.InferenceResponse(error=_error(str(exc), invalid=True))
            return
        except Exception as exc:  # the network itself failed
            for i in indices:
                responses[i] = pb_utils.InferenceResponse(error=_error(f"{self.contract.name}: {exc}", False))
            return
        bounds = np.cumsum([0] + [len(next(iter(feeds[i].values()))) for i in indices])
        for n, i in enumerate(indices):
            tensors = [pb_utils.Tensor(name, np.ascontiguousarray(value[bounds[n]:bounds[n + 1]]))
                       for name, value in outputs.items()]
            responses[i] = pb_utils.InferenceResponse(output_tensors=tensors)


class BlsEngine:
    """The engine interface over a network model of the same server, through BLS."""

    def __init__(self, model_name: str, contract: NetworkContract):
        self.model_name = model_name
        self.contract = contract

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        inputs = [pb_utils.Tensor(name, value.reshape(len(value), 1) if value.ndim == 1 else value)
                  for name, value in feeds.items()]
        request = pb_utils.InferenceRequest(model_name=self.model_name, inputs=inputs,
                                            requested_output_names=[s.name for s in self.contract.outputs])
        response = request.exec()
        if response.has_error():
            raise RuntimeError(f"model '{self.model_name}' failed: {response.error().message()}")
        return {s.name: pb_utils.get_output_tensor_by_name(response, s.name).as_numpy()
                for s in self.contract.outputs}


class PipelineModel:
    """A server-side pipeline; which one comes from the model's ``service`` parameter."""

    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self.service = SERVICES[params["service"]]
        self.max_steps = int(params.get("max_steps", "150"))
        prefix = params.get("model_prefix", "")
        engines = EngineSet(_version_dir(args),
                            lambda name, _path, contract, _dims: BlsEngine(prefix + name, contract))
        self.pipeline = pipeline_for(self.service.name, engines)

    def execute(self, requests):
        return [self._one(r) for r in requests]

    def _one(self, request):
        try:
            tensors = {s.name: t.as_numpy() for s in self.service.contract.inputs
                       if (t := pb_utils.get_input_tensor_by_name(request, s.name)) is not None}
            req = from_tensors(self.service, tensors)
            if getattr(req, "steps", 0) > self.max_steps:
                raise ValueError(f"steps must be at most {self.max_steps} on this server (got {req.steps})")
            self.pipeline.resolve(req)
        except ValueError as exc:
            return pb_utils.InferenceResponse(error=_error(str(exc), invalid=True))
        try:
            result = self.pipeline(req, progress=False)
        except Exception as exc:
            return pb_utils.InferenceResponse(error=_error(str(exc), invalid=False))
        return pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("image", result.images)])


def pipeline_for(service: str, engines: EngineSet):
    from runtime.txt2img import Txt2ImgPipeline

    return {"txt2img": Txt2ImgPipeline}[service](engines)

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

from fashiongen.runtime.errors import InputError
from fashiongen.runtime.contracts import NetworkContract, network_contract
from fashiongen.runtime.engines import EngineSet, OrtEngine

from fashiongen.runtime.cutout import CutoutPipeline
from fashiongen.runtime.images import as_rgb
from fashiongen.runtime.segmentation import is_auto

from .services import SEGMENTER_DIR, SERVICES, Limits, from_tensors


def _error(message: str, invalid: bool) -> "pb_utils.TritonError":
    code = pb_utils.TritonError.INVALID_ARG if invalid else pb_utils.TritonError.INTERNAL
    return pb_utils.TritonError(message, code)


def _version_dir(args: dict) -> Path:
    return Path(args["model_repository"]) / args["model_version"]


class NetworkModel:
    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        dims = json.loads(params["dims"])
        self.contract: NetworkContract = network_contract(params["network"], dims)
        self.engine = OrtEngine(_version_dir(args) / params["model_file"], self.contract, dims)

    def finalize(self) -> None:
        """Release the ONNX Runtime session (its memory) when Triton unloads the model."""
        self.engine = None

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
    """A server-side pipeline (``txt2img``, ``edit`` or ``cutout``, from the ``service`` parameter).

    Its version folder holds the manifest (and tokenizer) of the engine folder it runs, and in
    ``segmenter/`` the manifest of the segmenter that cuts garments out, when the repository has one.
    """

    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self.service = SERVICES[params["service"]]
        self.limits = Limits.from_parameters(params)
        folder = _version_dir(args)
        seg_dir = folder / SEGMENTER_DIR
        self.cutout = CutoutPipeline(EngineSet(seg_dir, _bls_factory(params.get("segmenter_prefix", "")))) \
            if seg_dir.is_dir() else None
        self.pipeline = None if self.service.name == "cutout" else \
            pipeline_for(self.service.name, EngineSet(folder, _bls_factory(params.get("model_prefix", ""))))

    def finalize(self) -> None:
        """Drop the pipeline and the cutout (their tokenizer and BLS engines) when Triton unloads the model."""
        self.pipeline = self.cutout = None

    def execute(self, requests):
        return [self._one(r) for r in requests]

    def _parse(self, request):
        """The request and the classes to cut out with whether the prompt named them (None: no cutout);
        ValueError for a bad request."""
        tensors = {s.name: t.as_numpy() for s in self.service.contract.inputs
                   if (t := pb_utils.get_input_tensor_by_name(request, s.name)) is not None}
        req, extras = from_tensors(self.service, tensors)
        spec = getattr(req, "cutout", None) or extras.get("cutout")
        if self.pipeline is None:
            as_rgb(req.image, "image")  # refuses an empty image
        else:
            self.pipeline.resolve(req)
        self.limits.check(req)  # on the resolved request: a size left out is the checkpoint's native one
        if not spec:
            return req, None
        if self.cutout is None:
            raise InputError("cutout: this server has no segmenter (export one with --segmenter)")
        return req, (self.cutout.resolve_classes(spec, getattr(req, "prompt", None), arg="cutout"), is_auto(spec))

    def _one(self, request):
        try:
            req, classes = self._parse(request)
        except InputError as exc:
            return pb_utils.InferenceResponse(error=_error(str(exc), invalid=True))
        try:
            images = req.image[None] if self.pipeline is None else self.pipeline(req, progress=False).images
            images, masks = self._cut(images, classes)
        except EmptyCutout as exc:
            return pb_utils.InferenceResponse(error=_error(str(exc), invalid=True))
        except Exception as exc:
            return pb_utils.InferenceResponse(error=_error(str(exc), invalid=False))
        return pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("image", images),
                                                          pb_utils.Tensor("mask", masks)])

    def _cut(self, images: np.ndarray, classes: tuple[list[int], bool] | None) -> tuple[np.ndarray, np.ndarray]:
        if classes is None:
            return images, np.zeros((len(images), 0, 0), np.uint8)
        class_ids, from_prompt = classes
        results = self.cutout(list(images), class_ids, from_prompt=from_prompt).results
        empty = [i for i, r in enumerate(results) if r.empty]
        if empty:
            raise EmptyCutout(f"cutout: {', '.join(results[0].labels)} covers no pixel of image(s) {empty}")
        return (np.stack([r.image for r in results]),
                np.stack([r.mask.astype(np.uint8) * 255 for r in results]))


class EmptyCutout(InputError):
    """The chosen classes cover no pixel: refused rather than answered with a white square."""


def _bls_factory(prefix: str):
    return lambda name, _path, contract, _dims: BlsEngine(prefix + name, contract)


def pipeline_for(service: str, engines: EngineSet):
    from fashiongen.runtime.pix2pix import Pix2PixPipeline
    from fashiongen.runtime.txt2img import Txt2ImgPipeline

    return {"txt2img": Txt2ImgPipeline, "edit": Pix2PixPipeline}[service](engines)

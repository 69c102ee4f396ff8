"""The engine interface on OpenVINO (CPU): the same ONNX files as ONNX Runtime, or an OpenVINO IR
(``.xml`` + ``.bin``, e.g. an INT8 UNet written by ``fashiongen quantize``).

Settings that matter on a small CPU (the figures: bench/results/ and the README's CPU section):

- ``INFERENCE_PRECISION_HINT = f32``: OpenVINO's CPU default on AVX-512 parts is bf16, which is ~1.45x
  *slower* than f32 without AMX, and it also moves the image. ``precision="bf16"`` asks for it anyway.
- ``PERFORMANCE_HINT = LATENCY`` (one stream): THROUGHPUT halves single-call speed on 2 cores.
- ``INFERENCE_NUM_THREADS``: physical cores by default.
- ``CACHE_DIR``: the compiled model is cached on disk next to the engine folder's files, so the second
  start-up skips graph transformation and weight repacking (``compile_model`` is given the file path,
  which is what lets OpenVINO find the blob without reading the ONNX file at all).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .contracts import NetworkContract
from .cpu import default_threads, warm_up
from .errors import InputError
from .manifest import EngineFolderError

if TYPE_CHECKING:
    from .engines import EngineFactory

PRECISIONS = ("f32", "bf16")


def _import_openvino():
    try:
        import openvino as ov
    except ImportError:
        raise InputError("backend: openvino needs the openvino package, which is not installed "
                         "(pip install -e '.[cpu-fast]')") from None
    return ov


_CORE = None


def core():
    """One ``ov.Core`` per process (it owns the plugin, its thread pool and the cache settings)."""
    global _CORE
    if _CORE is None:
        _CORE = _import_openvino().Core()
    return _CORE


def cache_dir_for(path: Path) -> str | None:
    """``ENGINE_DIR/cache/openvino`` when it can be created and written, else no cache."""
    folder = Path(path).parent / "cache" / "openvino"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    return str(folder) if os.access(folder, os.W_OK) else None


def compile_config(threads: int | None = None, precision: str = "f32", cache_dir: str | None = None) -> dict:
    if precision not in PRECISIONS:
        raise InputError(f"precision: must be one of {', '.join(PRECISIONS)} (got {precision!r})")
    config = {
        "INFERENCE_PRECISION_HINT": precision,
        "PERFORMANCE_HINT": "LATENCY",
        "NUM_STREAMS": "1",
        "INFERENCE_NUM_THREADS": str(threads or default_threads()),
    }
    if cache_dir:
        config["CACHE_DIR"] = cache_dir
    return config


class OpenVinoEngine:
    """One compiled OpenVINO model (CPU plugin) for one network."""

    backend = "openvino"

    def __init__(self, path: Path, contract: NetworkContract, dims: dict[str, int], threads: int | None = None,
                 precision: str = "f32", cache: bool = True, warmup: bool = True):
        path = Path(path)
        if not path.is_file():
            raise EngineFolderError(f"{path}: missing model file for network '{contract.name}'")
        config = compile_config(threads, precision, cache_dir_for(path) if cache else None)
        try:
            self.compiled = core().compile_model(str(path), "CPU", config)
        except RuntimeError as exc:
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise EngineFolderError(f"{path}: OpenVINO cannot load the model for '{contract.name}': "
                                    f"{first_line}") from None
        self.contract = contract
        self.dims = dims
        self.precision = precision
        self._request = self.compiled.create_infer_request()
        self._output_names = [o.name for o in contract.outputs]
        have = {name for port in self.compiled.outputs for name in port.get_names()}
        missing = [n for n in self._output_names if n not in have]
        if missing:
            raise EngineFolderError(f"{path}: model for '{contract.name}' lacks output(s) {missing}")
        if warmup and runs_quantized(self.compiled):
            warm_up(self)

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.contract.check_feeds(feeds, self.dims)
        self._request.infer({k: np.ascontiguousarray(v) for k, v in feeds.items()})
        # The request owns its output buffers and reuses them on the next call: copy out.
        return {name: np.array(self._request.get_tensor(name).data, copy=True) for name in self._output_names}


def runs_quantized(compiled) -> bool:
    """Whether the compiled model runs INT8 kernels: only then does the tiny warm-up call at load pay here.
    INT8 weights are packed once, whatever the shape (measured on the full SD 1.5 INT8 UNet: first real call
    0.6 s after a warm-up, 2.8 s without). The f32 kernels pack their weights per input shape, so a tiny call
    packs layouts the real call does not use (measured on the fp32 UNet at 256 px, 2 cores: the load took
    2.5 s longer and the peak RSS grew by 1.8 GB, while the first real call still packed its own layouts). The
    cost of skipping it: the first fp32 image pays each network's first-call setup (~3 s in all, in the bench)."""
    for op in compiled.get_runtime_model().get_ops():
        info = op.get_rt_info()
        if "layerType" in info and info["layerType"].astype(str) in _WEIGHTED_LAYERS \
                and info["runtimePrecision"].astype(str) in ("u8", "i8"):
            return True
    return False


# The runtime model's layers that carry weights (a u8 Reorder or Const alone is not quantization: masks are u8).
_WEIGHTED_LAYERS = ("Convolution", "FullyConnected", "MatMul", "GroupConvolution", "Deconvolution")


def openvino_factory(threads: int | None = None, precision: str = "f32", cache: bool = True,
                     warmup: bool = True) -> EngineFactory:
    _import_openvino()  # fail at once, with the install hint, not at the first network

    def make(name: str, path: Path, contract: NetworkContract, dims: dict):
        return OpenVinoEngine(path, contract, dims, threads=threads, precision=precision, cache=cache,
                              warmup=warmup)
    make.backend = "openvino"
    return make

"""Engine backends behind one interface: ``run(feeds) -> outputs``, numpy in and out.

Pipelines hold an :class:`Engine` and never know which backend runs it (ONNX Runtime here; Triton and
others implement the same two members). :class:`EngineSet` opens the networks of an engine folder
lazily, so a request only keeps resident the networks it uses.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Protocol

import numpy as np

from .contracts import CONTRACTS, NetworkContract
from .manifest import EngineFolderError, Manifest, load_manifest


class Engine(Protocol):
    contract: NetworkContract

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the network once; feeds and outputs are keyed by the contract's tensor names."""


def default_threads() -> int:
    """Physical cores, as far as we can tell: extra SMT threads slow ONNX Runtime's conv kernels."""
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


class OrtEngine:
    """One ONNX Runtime session for one network."""

    def __init__(self, path: Path, contract: NetworkContract, dims: dict[str, int],
                 providers: list[str] | None = None, threads: int | None = None):
        import onnxruntime as ort

        path = Path(path)
        if not path.is_file():
            raise EngineFolderError(f"{path}: missing ONNX file for network '{contract.name}'")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or default_threads()
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            self.session = ort.InferenceSession(str(path), options, providers=providers or ["CPUExecutionProvider"])
        except Exception as exc:  # ORT raises its own Fail/InvalidProtobuf types; name the file instead
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise EngineFolderError(f"{path}: cannot load ONNX model for '{contract.name}': {first_line}") from None
        self.contract = contract
        self.dims = dims
        self._output_names = [o.name for o in contract.outputs]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.contract.check_feeds(feeds, self.dims)
        values = self.session.run(self._output_names, feeds)
        return dict(zip(self._output_names, values))


EngineFactory = Callable[[str, Path, NetworkContract, dict], Engine]


def ort_factory(providers: list[str] | None = None, threads: int | None = None) -> EngineFactory:
    def make(name: str, path: Path, contract: NetworkContract, dims: dict) -> Engine:
        return OrtEngine(path, contract, dims, providers=providers, threads=threads)
    return make


class EngineSet:
    """The networks of one engine folder, each opened on first use through a backend factory."""

    def __init__(self, engine_dir: Path, factory: EngineFactory | None = None, manifest: Manifest | None = None):
        self.engine_dir = Path(engine_dir)
        self.manifest = manifest or load_manifest(self.engine_dir)
        self._factory = factory or ort_factory()
        self._open: dict[str, Engine] = {}

    def has(self, name: str) -> bool:
        return name in self.manifest.networks

    def __getitem__(self, name: str) -> Engine:
        if name not in self._open:
            entry = self.manifest.networks.get(name)
            if entry is None:
                raise EngineFolderError(
                    f"{self.engine_dir}: no network '{name}' in the manifest "
                    f"(has: {', '.join(sorted(self.manifest.networks))})")
            self._open[name] = self._factory(name, self.engine_dir / entry.file, CONTRACTS[name], self.manifest.dims)
        return self._open[name]

    def release(self, name: str) -> None:
        """Drop a network's session (its memory goes with it)."""
        self._open.pop(name, None)

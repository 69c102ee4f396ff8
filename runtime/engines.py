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

from .contracts import NetworkContract, network_contract
from .cpu import cpu_fingerprint, default_threads, warm_up
from .errors import InputError
from .manifest import EngineFolderError, Manifest, load_manifest


class Engine(Protocol):
    contract: NetworkContract

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the network once; feeds and outputs are keyed by the contract's tensor names."""


class OrtEngine:
    """One ONNX Runtime session for one network.

    Tuned for CPU serving: intra-op threads = physical cores, one inter-op thread, the memory arena on
    (``arena=False`` trades a little speed for a lower peak), and graph optimization done once: the first
    load (at export: the validation runs this engine) saves the optimized graph (with its weights) under
    ``ENGINE_DIR/cache/ort/``, atomically, and later loads read it at the EXTENDED level, so start-up does not
    redo the expensive passes.
    """

    backend = "ort"

    def __init__(self, path: Path, contract: NetworkContract, dims: dict[str, int],
                 providers: list[str] | None = None, threads: int | None = None, arena: bool = True,
                 cache: bool = True, warmup: bool = True):
        import onnxruntime as ort

        path = Path(path)
        if not path.is_file():
            raise EngineFolderError(f"{path}: missing ONNX file for network '{contract.name}'")
        providers = providers or ["CPUExecutionProvider"]
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or default_threads()
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.enable_cpu_mem_arena = arena
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        load_path, save_to = path, None
        if cache and providers == ["CPUExecutionProvider"]:
            cached = optimized_model_path(path, options.graph_optimization_level, ort.__version__)
            if cached is not None and cached.is_file():
                load_path = cached
                # Measured on the full UNet: the saved graph read at DISABLE_ALL (or ALL) runs ~1.45x slower per
                # call than a fresh session; read at EXTENDED it is as fast, and still loads in ~1.5 s (vs ~23 s).
                options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
            elif cached is not None:
                save_to = cached
        try:
            if save_to is not None:
                self.session = _create_and_save(ort, path, options, providers, save_to)
            else:
                self.session = ort.InferenceSession(str(load_path), options, providers=providers)
        except Exception as exc:  # ORT raises its own Fail/InvalidProtobuf types; name the file instead
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise EngineFolderError(f"{path}: cannot load ONNX model for '{contract.name}': {first_line}") from None
        self.contract = contract
        self.dims = dims
        self._output_names = [o.name for o in contract.outputs]
        if warmup:
            warm_up(self)

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.contract.check_feeds(feeds, self.dims)
        values = self.session.run(self._output_names, feeds)
        return dict(zip(self._output_names, values))


def optimized_model_path(path: Path, level, version: str) -> Path | None:
    """Where the ORT-optimized copy of ``path`` lives: keyed by the source files' size and mtime, the ORT
    version, the optimization level and the CPU's flags (the saved graph holds CPU-specific kernels). None when the
    engine folder is not writable."""
    folder = path.parent / "cache" / "ort"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    if not os.access(folder, os.W_OK):
        return None
    stamp = []
    for f in (path, Path(str(path) + ".data")):
        if f.exists():
            st = f.stat()
            stamp.append(f"{st.st_size}-{int(st.st_mtime)}")
    key = f"{path.stem}.ort{version}.O{int(level)}.{cpu_fingerprint()}.{'_'.join(stamp)}"
    return folder / key / f"{path.stem}.onnx"


def _create_and_save(ort, path: Path, options, providers, target: Path):
    """Create the session from ``path`` and save its optimized graph to ``target`` (a folder renamed into
    place when complete: concurrent first loads each write their own and one wins)."""
    import shutil
    import tempfile

    stage = Path(tempfile.mkdtemp(dir=target.parent.parent, prefix=f".{target.parent.name}.partial-"))
    try:
        options.optimized_model_filepath = str(stage / target.name)
        options.log_severity_level = 3  # not the warning that a saved NCHWc graph is CPU-specific: it is meant to be
        options.add_session_config_entry("session.optimized_model_external_initializers_file_name",
                                         target.name + ".data")
        options.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes",
                                         "1024")
        session = ort.InferenceSession(str(path), options, providers=providers)
        try:
            os.replace(stage, target.parent)
        except OSError:  # another process got there first (its copy is as good as ours)
            pass
        return session
    finally:
        shutil.rmtree(stage, ignore_errors=True)


EngineFactory = Callable[[str, Path, NetworkContract, dict], Engine]


def ort_factory(providers: list[str] | None = None, threads: int | None = None, arena: bool = True,
                cache: bool = True, warmup: bool = True) -> EngineFactory:
    def make(name: str, path: Path, contract: NetworkContract, dims: dict) -> Engine:
        return OrtEngine(path, contract, dims, providers=providers, threads=threads, arena=arena, cache=cache,
                         warmup=warmup)
    make.backend = "ort"
    return make


BACKENDS = ("ort", "openvino")


def backend_factory(backend: str = "ort", threads: int | None = None, providers: list[str] | None = None,
                    **options) -> EngineFactory:
    """The factory for an in-process backend by name (``ort`` or ``openvino``)."""
    if backend == "ort":
        return ort_factory(providers, threads, **options)
    if backend == "openvino":
        from .openvino_engine import openvino_factory
        return openvino_factory(threads, **options)
    raise InputError(f"backend: must be one of {', '.join(BACKENDS)} (got {backend!r})")


class EngineSet:
    """The networks of one engine folder, each opened on first use through a backend factory."""

    def __init__(self, engine_dir: Path, factory: EngineFactory | None = None, manifest: Manifest | None = None,
                 files: dict[str, str] | None = None):
        self.engine_dir = Path(engine_dir)
        self.manifest = manifest or load_manifest(self.engine_dir)
        self._factory = factory or ort_factory()
        self._files = dict(files or {})  # network -> file replacing the manifest's (a fast mode's variant)
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
            # resolved: a network shared by two folders of a family is a link to the other's file, and ONNX
            # Runtime reads external data only from beside the model's real path
            path = (self.engine_dir / self._files.get(name, entry.file)).resolve()
            self._open[name] = self._factory(name, path, network_contract(name, self.manifest.dims), self.manifest.dims)
        return self._open[name]

    def wrap(self, name: str, wrapper: Callable[[Engine], Engine]) -> Engine:
        """Open network ``name`` and serve ``wrapper(engine)`` in its place from now on (a recorder of its
        feeds, a timer): the way to interpose on a network without reaching into the set. Returns the wrapper."""
        self._open[name] = wrapper(self[name])
        return self._open[name]

    @property
    def open_networks(self) -> frozenset[str]:
        """The networks opened so far (a pipeline opens only what it calls)."""
        return frozenset(self._open)

    def release(self, name: str) -> None:
        """Drop a network's session (its memory goes with it)."""
        self._open.pop(name, None)

    def release_all(self) -> None:
        """Drop every open session: a later stage that needs none of them (e.g. the cutout) runs without them."""
        self._open.clear()

"""The engine interface over a Triton Inference Server (tritonclient; gRPC or HTTP).

The denoising loop stays in this process and each network call goes to the server's model of the
same name. Large tensors travel through system shared memory when the server is on this machine
(``shared_memory=True``): the bytes are written once into a region the server maps, not serialized.
"""
from __future__ import annotations

import os
import uuid
from urllib.parse import urlparse

import numpy as np

from .contracts import NetworkContract
from .errors import InputError

# Where several engine folders share one repository, networks of a pix2pix folder carry a prefix.
MODEL_PREFIX = {"txt2img": "", "segmenter": "", "pix2pix": "pix2pix_"}


def model_prefix(kind: str) -> str:
    return MODEL_PREFIX.get(kind, f"{kind}_")


def parse_url(url: str, arg: str = "url") -> tuple[str, str]:
    """``grpc://host:port`` or ``http://host:port`` (a bare ``host:port`` means gRPC)."""
    parsed = urlparse(url if "://" in url else f"grpc://{url}")
    if parsed.scheme not in ("grpc", "http") or not parsed.hostname or not parsed.port:
        raise InputError(f"{arg}: expected grpc://HOST:PORT or http://HOST:PORT (got {url!r})")
    return parsed.scheme, f"{parsed.hostname}:{parsed.port}"


def client_module(protocol: str):
    try:
        if protocol == "grpc":
            import tritonclient.grpc as module
        else:
            import tritonclient.http as module
    except ImportError:
        raise InputError("the Triton client is not installed (pip install -e '.[serve]')") from None
    return module


def require_server(url: str, arg: str = "url") -> None:
    """Refuse ``url`` at once when no server answers there: a refused connection is the user's address (or a
    server not started), not a request the server turned down."""
    protocol, address = parse_url(url, arg)
    module = client_module(protocol)
    from tritonclient.utils import InferenceServerException

    try:
        live = module.InferenceServerClient(address).is_server_live()
    except (OSError, InferenceServerException):  # HTTP: connection refused; gRPC: UNAVAILABLE
        live = False
    if not live:
        raise InputError(f"{arg}: nothing answered at {url} (no Triton server there; `fashiongen serve --repo DIR` "
                         "starts one)")


class _Region:
    """One system shared-memory region registered with the server, grown when a tensor outgrows it."""

    def __init__(self, client, name: str, size: int):
        import tritonclient.utils.shared_memory as shm

        self.name, self.size = name, size
        self.key = f"/{name}"
        self.handle = shm.create_shared_memory_region(name, self.key, size)
        client.register_system_shared_memory(name, self.key, size)

    def close(self, client) -> None:
        import tritonclient.utils.shared_memory as shm

        try:
            client.unregister_system_shared_memory(self.name)
        finally:
            shm.destroy_shared_memory_region(self.handle)


class TritonEngine:
    def __init__(self, url: str, model_name: str, contract: NetworkContract, dims: dict[str, int],
                 shared_memory: bool = True, shm_threshold: int = 64 * 1024):
        protocol, address = parse_url(url)
        self.module = client_module(protocol)
        self.client = self.module.InferenceServerClient(address)
        self.model_name, self.contract, self.dims = model_name, contract, dims
        self.shared_memory = shared_memory and urlparse(f"//{address}").hostname in ("127.0.0.1", "localhost")
        self.shm_threshold = shm_threshold
        self._regions: dict[str, _Region] = {}
        self._tag = f"fg{os.getpid()}_{uuid.uuid4().hex[:8]}_{model_name}"

    def _region(self, tensor: str, size: int) -> _Region:
        region = self._regions.get(tensor)
        if region is None or region.size < size:
            if region is not None:
                region.close(self.client)
            region = self._regions[tensor] = _Region(self.client, f"{self._tag}_{tensor}", size)
        return region

    def _output_shape(self, spec, feeds: dict[str, np.ndarray]) -> tuple[int, ...] | None:
        """An output's shape when every axis is known from the inputs (else None: sent inline)."""
        sizes = dict(self.dims)
        for s in self.contract.inputs:
            sizes.update({d: n for d, n in zip(s.shape, feeds[s.name].shape) if isinstance(d, str)})
        shape = spec.resolve(sizes)
        return tuple(shape) if all(isinstance(d, int) for d in shape) else None

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import tritonclient.utils as tu
        import tritonclient.utils.shared_memory as shm

        self.contract.check_feeds(feeds, self.dims)
        inputs = []
        for spec in self.contract.inputs:
            value = np.ascontiguousarray(feeds[spec.name])
            wire = value.reshape(len(value), 1) if value.ndim == 1 else value  # batch-only tensors: [B, 1]
            entry = self.module.InferInput(spec.name, list(wire.shape), tu.np_to_triton_dtype(wire.dtype))
            if self.shared_memory and wire.nbytes >= self.shm_threshold:
                region = self._region(spec.name, wire.nbytes)
                shm.set_shared_memory_region(region.handle, [wire])
                entry.set_shared_memory(region.name, wire.nbytes)
            else:
                entry.set_data_from_numpy(wire)
            inputs.append(entry)
        outputs, in_shm = [], {}
        for spec in self.contract.outputs:
            entry = self.module.InferRequestedOutput(spec.name)
            shape = self._output_shape(spec, feeds)
            nbytes = int(np.prod(shape)) * np.dtype(spec.dtype).itemsize if shape else 0
            if self.shared_memory and shape and nbytes >= self.shm_threshold:
                region = self._region(spec.name, nbytes)
                entry.set_shared_memory(region.name, nbytes)
                in_shm[spec.name] = (region, shape)
            outputs.append(entry)
        result = self.client.infer(self.model_name, inputs, outputs=outputs)
        out = {}
        for spec in self.contract.outputs:
            if spec.name in in_shm:
                region, shape = in_shm[spec.name]
                out[spec.name] = shm.get_contents_as_numpy(region.handle, np.dtype(spec.dtype), shape).copy()
            else:
                out[spec.name] = result.as_numpy(spec.name)
        return out

    def close(self) -> None:
        for region in self._regions.values():
            region.close(self.client)
        self._regions.clear()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


def triton_factory(url: str, kind: str, shared_memory: bool = True, arg: str = "url"):
    """An EngineSet factory whose engines are the server's models for an engine folder of ``kind``; the server
    must answer at ``url`` now (``arg`` names it in the error)."""
    require_server(url, arg)
    prefix = model_prefix(kind)

    def make(name, _path, contract, dims):
        return TritonEngine(url, prefix + name, contract, dims, shared_memory=shared_memory)
    return make

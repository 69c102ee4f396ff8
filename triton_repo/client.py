"""Client of the server-side pipeline models: one request, the whole pipeline on the server."""
from __future__ import annotations

import numpy as np

from fashiongen.runtime.triton_engine import client_module, parse_url

from .services import SERVICES, to_tensors


def pipeline_inputs(module, service_name: str, request, cutout: str | None = None) -> list:
    import tritonclient.utils as tu

    tensors = to_tensors(SERVICES[service_name], request)
    if cutout:
        tensors["cutout"] = np.array([cutout.encode("utf-8")], dtype=np.object_)
    inputs = []
    for name, value in tensors.items():
        entry = module.InferInput(name, list(value.shape), tu.np_to_triton_dtype(value.dtype))
        entry.set_data_from_numpy(value)
        inputs.append(entry)
    return inputs


def request_pipeline(url: str, service_name: str, request, timeout_s: float | None = 600,
                     cutout: str | None = None) -> dict[str, np.ndarray]:
    """Run ``request`` on the server's pipeline model: ``{"image": N x H x W x 3, "mask": N x H x W}`` (the mask
    is N x 0 x 0 without ``cutout``). A refused request raises ValueError with the server's reason."""
    from tritonclient.utils import InferenceServerException

    protocol, address = parse_url(url)
    module = client_module(protocol)
    client = module.InferenceServerClient(address)
    kwargs = {"client_timeout": timeout_s} if protocol == "grpc" else {}
    try:
        result = client.infer(service_name, pipeline_inputs(module, service_name, request, cutout), **kwargs)
    except InferenceServerException as exc:
        raise ValueError(f"server refused the request: {exc.message()}") from None
    return {"image": result.as_numpy("image"), "mask": result.as_numpy("mask")}

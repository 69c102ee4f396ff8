"""The request/response contract of the server-side pipeline models (``txt2img``, ...).

Declared once, like the networks' contracts in ``runtime.contracts``: the repository generator writes
``config.pbtxt`` from it, the python model reads requests with it, the client builds requests with it.
Each input is one value (shape ``[1]``) named like the pipeline request's field it fills.
"""
from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

from runtime.contracts import NetworkContract, TensorSpec
from runtime.txt2img import Txt2ImgRequest


@dataclass(frozen=True)
class Service:
    contract: NetworkContract
    required: frozenset[str]
    request_type: type

    @property
    def name(self) -> str:
        return self.contract.name


def _scalar(name: str, dtype: str) -> TensorSpec:
    return TensorSpec(name, dtype, (1,))


TXT2IMG = Service(
    NetworkContract(
        "txt2img",
        inputs=(_scalar("prompt", "bytes"), _scalar("negative_prompt", "bytes"), _scalar("seed", "uint64"),
                _scalar("steps", "int32"), _scalar("guidance", "float32"), _scalar("scheduler", "bytes"),
                _scalar("height", "int32"), _scalar("width", "int32"), _scalar("num_images", "int32")),
        outputs=(TensorSpec("image", "uint8", ("num_images", "height", "width", 3)),),
        doc="Text → image, the whole denoising loop on the server; the UNet calls batch across requests.",
    ),
    required=frozenset({"prompt"}),
    request_type=Txt2ImgRequest,
)

SERVICES = {s.name: s for s in (TXT2IMG,)}


def to_tensors(service: Service, request) -> dict[str, np.ndarray]:
    """A request dataclass to the service's input tensors (fields left at None are not sent)."""
    out = {}
    for spec in service.contract.inputs:
        value = getattr(request, spec.name)
        if value is None:
            continue
        if spec.dtype == "bytes":
            out[spec.name] = np.array([str(value).encode("utf-8")], dtype=np.object_)
        else:
            out[spec.name] = np.array([value], dtype=spec.dtype)
    return out


def from_tensors(service: Service, tensors: dict[str, np.ndarray]):
    """Input tensors to the request dataclass; a missing required field or a wrong shape names the field."""
    known = {f.name for f in fields(service.request_type)}
    values = {}
    for spec in service.contract.inputs:
        array = tensors.get(spec.name)
        if array is None:
            if spec.name in service.required:
                raise ValueError(f"{spec.name} is required")
            continue
        if array.size != 1:
            raise ValueError(f"{spec.name} must hold exactly one value (got shape {list(array.shape)})")
        item = array.reshape(-1)[0]
        values[spec.name] = (item.decode("utf-8") if isinstance(item, bytes) else str(item)) \
            if spec.dtype == "bytes" else item.item()
    return service.request_type(**{k: v for k, v in values.items() if k in known})

"""The request/response contract of the server-side pipeline models (``txt2img``, ...).

Declared once, like the networks' contracts in ``runtime.contracts``: the repository generator writes
``config.pbtxt`` from it, the python model reads requests with it, the client builds requests with it.
Each input is one value (shape ``[1]``) named like the pipeline request's field it fills.
"""
from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

from fashiongen.runtime.errors import InputError
from fashiongen.runtime.contracts import NetworkContract, TensorSpec
from fashiongen.runtime.pix2pix import Pix2PixRequest
from fashiongen.runtime.txt2img import Txt2ImgRequest


@dataclass(frozen=True)
class Service:
    contract: NetworkContract
    required: frozenset[str]
    request_type: type  # the request dataclass the inputs fill

    @property
    def name(self) -> str:
        return self.contract.name


def _scalar(name: str, dtype: str) -> TensorSpec:
    return TensorSpec(name, dtype, (1,))


@dataclass
class CutoutRequest:
    image: np.ndarray
    cutout: str                 # auto | CLASS[,CLASS]
    prompt: str | None = None   # what `auto` reads the garment from


# Optional on every pipeline: cut the garment out of the result (auto | CLASS[,CLASS]); the mask comes back
# as ``mask`` (N x H x W, 255 = garment), or N x 0 x 0 when no cutout was asked.
_CUTOUT = _scalar("cutout", "bytes")
# Optional: "full" or "tiny" (the tiny VAE, where the engine folder was exported with --tiny-vae).
_DECODER = _scalar("decoder", "bytes")
_IMAGES = TensorSpec("image", "uint8", ("num_images", "height", "width", 3))
_MASKS = TensorSpec("mask", "uint8", ("num_images", "mask_height", "mask_width"))
_INPUT_IMAGE = TensorSpec("image", "uint8", ("height", "width", 3))
# Optional: TCD's gamma (diffusers' eta); refused with any other scheduler.
_COMMON = (_scalar("prompt", "bytes"), _scalar("negative_prompt", "bytes"), _scalar("seed", "uint64"),
           _scalar("steps", "int32"), _scalar("guidance", "float32"), _scalar("scheduler", "bytes"),
           _scalar("eta", "float32"))

TXT2IMG = Service(
    NetworkContract(
        "txt2img",
        inputs=(*_COMMON, _scalar("height", "int32"), _scalar("width", "int32"), _scalar("num_images", "int32"),
                _CUTOUT, _DECODER),
        outputs=(_IMAGES, _MASKS),
        doc="Text → image, the whole denoising loop on the server; the UNet calls batch across requests.",
    ),
    required=frozenset({"prompt"}),
    request_type=Txt2ImgRequest,
)

EDIT = Service(
    NetworkContract(
        "edit",
        inputs=(_INPUT_IMAGE, *_COMMON, _scalar("image_guidance", "float32"), _scalar("num_images", "int32"),
                _CUTOUT, _DECODER),
        outputs=(_IMAGES, _MASKS),
        doc="InstructPix2Pix edit of an image toward the prompt, on the server.",
    ),
    required=frozenset({"image", "prompt"}),
    request_type=Pix2PixRequest,
)

CUTOUT = Service(
    NetworkContract(
        "cutout",
        inputs=(_INPUT_IMAGE, _CUTOUT, _scalar("prompt", "bytes")),
        outputs=(_IMAGES, _MASKS),
        doc="The garment of an image on white, and its mask.",
    ),
    required=frozenset({"image", "cutout"}),
    request_type=CutoutRequest,
)

SERVICES = {s.name: s for s in (TXT2IMG, EDIT, CUTOUT)}
SEGMENTER_DIR = "segmenter"  # in a pipeline model's version folder: the manifest of the segmenter it uses


@dataclass(frozen=True)
class Limits:
    """What one request to a pipeline model may ask, so that no request exhausts the server's memory: the
    generated or input image's ``height`` / ``width`` and ``num_images`` (``steps`` bounds time only).
    Written into the model's config when the repository is generated."""

    max_steps: int
    max_side: int
    max_images: int

    def check(self, request) -> None:
        """ValueError naming the first field of ``request`` (a resolved request dataclass) out of bounds."""
        steps = getattr(request, "steps", None)
        if steps is not None and steps > self.max_steps:
            raise InputError(f"steps must be at most {self.max_steps} on this server (got {steps})")
        image = getattr(request, "image", None)
        sizes = {"height": getattr(request, "height", None), "width": getattr(request, "width", None)}
        if image is not None:
            sizes = {"image height": image.shape[0], "image width": image.shape[1] if image.ndim > 1 else 0}
        for name, value in sizes.items():
            if value is not None and value > self.max_side:
                raise InputError(f"{name} must be at most {self.max_side} pixels on this server (got {value})")
        images = getattr(request, "num_images", None)
        if images is not None and images > self.max_images:
            raise InputError(f"num_images must be at most {self.max_images} on this server (got {images})")

    def parameters(self) -> dict[str, str]:
        return {"max_steps": str(self.max_steps), "max_side": str(self.max_side),
                "max_images": str(self.max_images)}

    @classmethod
    def from_parameters(cls, params: dict[str, str]) -> "Limits":
        return cls(**{name: int(params[name]) for name in ("max_steps", "max_side", "max_images")})


def to_tensors(service: Service, request) -> dict[str, np.ndarray]:
    """A request dataclass to the service's input tensors (fields left at None are not sent)."""
    out = {}
    for spec in service.contract.inputs:
        value = getattr(request, spec.name, None)
        if value is None:
            continue
        if spec.shape != (1,):
            out[spec.name] = np.ascontiguousarray(value, dtype=spec.dtype)
        elif spec.dtype == "bytes":
            out[spec.name] = np.array([str(value).encode("utf-8")], dtype=np.object_)
        else:
            out[spec.name] = np.array([value], dtype=spec.dtype)
    return out


def from_tensors(service: Service, tensors: dict[str, np.ndarray]) -> tuple[object, dict]:
    """Input tensors to (the request dataclass, the values it has no field for, such as ``cutout``);
    a missing required field or a wrong shape raises ValueError naming the field."""
    known = {f.name for f in fields(service.request_type)}
    values = {}
    for spec in service.contract.inputs:
        array = tensors.get(spec.name)
        if array is None:
            if spec.name in service.required:
                raise InputError(f"{spec.name} is required")
            continue
        if spec.shape != (1,):
            values[spec.name] = array
            continue
        if array.size != 1:
            raise InputError(f"{spec.name} must hold exactly one value (got shape {list(array.shape)})")
        item = array.reshape(-1)[0]
        values[spec.name] = (item.decode("utf-8") if isinstance(item, bytes) else str(item)) \
            if spec.dtype == "bytes" else item.item()
    request = service.request_type(**{k: v for k, v in values.items() if k in known})
    return request, {k: v for k, v in values.items() if k not in known}

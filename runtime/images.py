"""Image conversions and safe image files: decoder output to uint8, atomic PNG writes, writable checks."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .errors import InputError
from .files import atomic_file


def decoded_to_uint8(images: np.ndarray) -> np.ndarray:
    """VAE output NCHW in [-1, 1] to NHWC uint8, rounded as diffusers' ``numpy_to_pil`` rounds."""
    images = np.clip(images / 2 + 0.5, 0.0, 1.0).transpose(0, 2, 3, 1)
    return (images * 255).round().astype(np.uint8)


def uint8_to_model_input(image: np.ndarray) -> np.ndarray:
    """HWC uint8 (one image) to NCHW float32 in [-1, 1], the VAE encoder's input."""
    x = image.astype(np.float32) / 255.0
    return (2.0 * x - 1.0).transpose(2, 0, 1)[None]


def check_writable(path: Path, arg: str = "out") -> Path:
    """Fail before any compute if ``path`` cannot be written (missing folder, not writable, a folder)."""
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise InputError(f"{arg}: '{path}' is a folder; expected a file path such as out.png")
    if not parent.is_dir():
        raise InputError(f"{arg}: folder '{parent}' does not exist")
    if not os.access(parent, os.W_OK):
        raise InputError(f"{arg}: folder '{parent}' is not writable")
    if path.exists() and not os.access(path, os.W_OK):
        raise InputError(f"{arg}: '{path}' exists and is not writable")
    if path.suffix.lower() != ".png":
        raise InputError(f"{arg}: '{path}' must end in .png")
    return path


def save_png_atomic(image: np.ndarray, path: Path) -> Path:
    """Write an HWC uint8 RGB/RGBA/L image to ``path`` through a temporary file and a rename."""
    from PIL import Image

    with atomic_file(path) as tmp:
        Image.fromarray(image).save(tmp, format="PNG")
    return Path(path)


def numbered_paths(path: Path, count: int) -> list[Path]:
    """``out.png`` for one image; ``out-0.png``, ``out-1.png``... for several."""
    path = Path(path)
    if count == 1:
        return [path]
    return [path.with_name(f"{path.stem}-{i}{path.suffix}") for i in range(count)]


def load_rgb_image(path: Path, arg: str = "image") -> np.ndarray:
    """Read an image file as HWC uint8 RGB; grayscale, palette, 16-bit and alpha inputs are converted.

    Transparency is composited onto white (as transformers' ``convert_rgb`` does). Raises InputError
    naming the file when it is missing, not an image, unreadable or has no pixels.
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.exists():
        raise InputError(f"{arg}: '{path}' does not exist")
    if path.is_dir():
        raise InputError(f"{arg}: '{path}' is a folder; expected an image file")
    if path.stat().st_size == 0:
        raise InputError(f"{arg}: '{path}' is empty (0 bytes), not an image")
    try:
        with Image.open(path) as im:
            im.load()
            return as_rgb(im, f"{arg}: '{path}'")
    except UnidentifiedImageError:
        raise InputError(f"{arg}: '{path}' is not an image file (PIL cannot identify it)") from None
    except (OSError, SyntaxError, Image.DecompressionBombError) as exc:
        raise InputError(f"{arg}: '{path}' cannot be read as an image ({exc})") from None


def as_rgb(image, what: str = "image") -> np.ndarray:
    """A PIL image or an HW / HWC (1, 3 or 4 channels) uint8 array as HWC uint8 RGB (alpha onto white)."""
    from PIL import Image

    if isinstance(image, np.ndarray):
        if image.ndim == 3 and image.shape[-1] == 1:
            image = image[..., 0]
        if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[-1] not in (3, 4)):
            raise InputError(f"{what}: expected an HxW or HxWx3/4 image array, got shape {list(image.shape)}")
        if image.shape[0] == 0 or image.shape[1] == 0:
            raise InputError(f"{what}: image has no pixels (size {image.shape[1]}x{image.shape[0]})")
        if image.dtype != np.uint8:
            raise InputError(f"{what}: expected a uint8 image array, got {image.dtype}")
        if image.ndim == 3 and image.shape[-1] == 3:
            return np.ascontiguousarray(image)
        image = Image.fromarray(image)
    if image.width == 0 or image.height == 0:
        raise InputError(f"{what}: image has no pixels (size {image.width}x{image.height})")
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        image = Image.fromarray((np.asarray(image, dtype=np.float64) / 257.0).round().clip(0, 255).astype(np.uint8))
    elif image.mode == "F":
        image = Image.fromarray(np.asarray(image).round().clip(0, 255).astype(np.uint8))
    if image.mode == "P" and "transparency" in image.info or image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(white, rgba)
    return np.asarray(image.convert("RGB"), dtype=np.uint8).copy()


def resized_shape(height: int, width: int, size: dict) -> tuple[int, int]:
    """(height, width) after a transformers image processor's resize to ``size``: ``{"height", "width"}`` is
    that exact shape; ``{"shortest_edge": S}`` scales the short side to S and the long side with it, truncated
    (transformers' ``get_resize_output_image_size`` rule)."""
    if "shortest_edge" in size and size["shortest_edge"]:
        short, long = sorted((height, width))
        new_short, new_long = int(size["shortest_edge"]), int(int(size["shortest_edge"]) * long / short)
        return (new_long, new_short) if width <= height else (new_short, new_long)
    return int(size["height"]), int(size["width"])

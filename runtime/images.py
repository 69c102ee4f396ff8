"""Image conversions and safe image files: decoder output to uint8, atomic PNG writes, writable checks."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np


def decoded_to_uint8(images: np.ndarray) -> np.ndarray:
    """VAE output NCHW in [-1, 1] to NHWC uint8, rounded as diffusers' ``numpy_to_pil`` rounds."""
    images = np.clip(images / 2 + 0.5, 0.0, 1.0).transpose(0, 2, 3, 1)
    return (images * 255).round().astype(np.uint8)


def uint8_to_model_input(image: np.ndarray) -> np.ndarray:
    """HWC uint8 (one image) to NCHW float32 in [-1, 1], the VAE encoder's input."""
    x = image.astype(np.float32) / 255.0
    return (2.0 * x - 1.0).transpose(2, 0, 1)[None]


def check_writable(path: Path, arg: str = "--out") -> Path:
    """Fail before any compute if ``path`` cannot be written (missing folder, not writable, a folder)."""
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise ValueError(f"{arg}: '{path}' is a folder; expected a file path such as out.png")
    if not parent.is_dir():
        raise ValueError(f"{arg}: folder '{parent}' does not exist")
    if not os.access(parent, os.W_OK):
        raise ValueError(f"{arg}: folder '{parent}' is not writable")
    if path.exists() and not os.access(path, os.W_OK):
        raise ValueError(f"{arg}: '{path}' exists and is not writable")
    if path.suffix.lower() != ".png":
        raise ValueError(f"{arg}: '{path}' must end in .png")
    return path


def save_png_atomic(image: np.ndarray, path: Path) -> Path:
    """Write an HWC uint8 RGB/RGBA/L image to ``path`` through a temporary file and a rename."""
    from PIL import Image

    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".png")
    os.close(fd)
    try:
        Image.fromarray(image).save(tmp, format="PNG")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def numbered_paths(path: Path, count: int) -> list[Path]:
    """``out.png`` for one image; ``out-0.png``, ``out-1.png``... for several."""
    path = Path(path)
    if count == 1:
        return [path]
    return [path.with_name(f"{path.stem}-{i}{path.suffix}") for i in range(count)]

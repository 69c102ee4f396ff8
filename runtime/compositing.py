"""Product shots from an image and a garment mask: on white or on transparency, feathered, framed.

Everything goes through one RGBA cutout: the source's pixels with the mask as alpha. Flattening it onto
white is exact where alpha is 0 or 255: a pixel outside the mask becomes (255, 255, 255), one inside keeps
the source's value, bit for bit. Feathering only lowers alpha *inside* the mask (near its edge), so the
outside stays pure white. Framing crops to the garment's bounding box, scales it (aspect ratio kept,
premultiplied-alpha resampling, so no dark fringe) to fit a square canvas inside a margin, and centres it.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import InputError

WHITE = 255


@dataclass(frozen=True)
class CompositeOptions:
    transparent: bool = False     # RGBA PNG (alpha 0 outside the garment) instead of on white
    feather: float = 0.0          # edge softening radius in pixels, inward only; 0 = hard edge
    frame: int | None = None      # square canvas side in pixels; None = keep the image's own size and place
    margin: float = 0.05          # with frame: empty border on each side, as a fraction of the canvas

    def check(self) -> "CompositeOptions":
        if not (isinstance(self.feather, (int, float)) and np.isfinite(self.feather) and self.feather >= 0):
            raise InputError(f"feather: must be a non-negative number of pixels (got {self.feather!r})")
        if self.frame is not None and (not isinstance(self.frame, (int, np.integer)) or not 8 <= self.frame <= 8192):
            raise InputError(f"frame: must be a canvas side between 8 and 8192 pixels (got {self.frame!r})")
        if not (isinstance(self.margin, (int, float)) and 0 <= self.margin < 0.5):
            raise InputError(f"margin: must be a fraction in [0, 0.5) (got {self.margin!r})")
        return self


def _check_pair(image: np.ndarray, mask: np.ndarray) -> None:
    if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an HxWx3 uint8 image, got {image.dtype} {list(image.shape)}")
    if mask.shape != image.shape[:2]:
        raise ValueError(f"mask shape {list(mask.shape)} does not match the image's {list(image.shape[:2])}")


def mask_bbox(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """(top, left, bottom, right) of the nonzero pixels, bottom/right exclusive; None when there are none."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    return int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1


def feathered_alpha(mask: np.ndarray, radius: float) -> np.ndarray:
    """uint8 alpha: 255 inside the mask, 0 outside; with ``radius`` > 0 it ramps down to 0 *inside* the
    mask's edge over about ``radius`` pixels (a Gaussian-blurred mask, rescaled so its edge value 0.5 -> 0)."""
    hard = mask.astype(bool)
    if radius <= 0:
        return hard.astype(np.uint8) * np.uint8(255)
    from PIL import Image, ImageFilter

    blurred = np.asarray(Image.fromarray(hard.astype(np.uint8) * np.uint8(255)).filter(
        ImageFilter.GaussianBlur(radius=float(radius) / 2)), dtype=np.float32) / 255.0
    ramp = np.clip(2.0 * blurred - 1.0, 0.0, 1.0)
    return np.where(hard, np.round(ramp * 255.0), 0).astype(np.uint8)


def cutout_rgba(image: np.ndarray, mask: np.ndarray, feather: float = 0.0) -> np.ndarray:
    """HxWx4 uint8: the source's RGB, alpha from the (optionally feathered) mask; white where alpha is 0."""
    _check_pair(image, mask)
    alpha = feathered_alpha(mask, feather)
    rgb = np.where(alpha[..., None] > 0, image, np.uint8(WHITE))
    return np.concatenate([rgb, alpha[..., None]], axis=-1)


def flatten_on_white(rgba: np.ndarray) -> np.ndarray:
    """RGBA over white, rounded: alpha 255 keeps the pixel exactly, alpha 0 gives exactly (255, 255, 255)."""
    rgb = rgba[..., :3].astype(np.uint32)
    alpha = rgba[..., 3:4].astype(np.uint32)
    out = (rgb * alpha + WHITE * (255 - alpha) + 127) // 255
    return out.astype(np.uint8)


def frame_square(rgba: np.ndarray, size: int, margin: float = 0.05) -> np.ndarray:
    """Crop to the visible garment, scale it to fit ``size`` minus the margins (aspect kept), centre it.

    Raises InputError when nothing is visible (a feather wider than the garment leaves no opaque pixel). PIL
    resamples RGBA with premultiplied alpha.
    """
    from PIL import Image

    box = mask_bbox(rgba[..., 3] > 0)
    if box is None:
        raise InputError("frame: nothing to frame, the cutout is empty (is feather wider than the garment?)")
    top, left, bottom, right = box
    crop = rgba[top:bottom, left:right]
    height, width = crop.shape[:2]
    inner = max(1, size - 2 * int(round(margin * size)))
    scale = inner / max(height, width)
    new_w = min(inner, max(1, int(round(width * scale))))
    new_h = min(inner, max(1, int(round(height * scale))))
    if (new_h, new_w) != (height, width):
        crop = np.asarray(Image.fromarray(crop, "RGBA").resize((new_w, new_h), resample=Image.LANCZOS))
    canvas = np.zeros((size, size, 4), dtype=np.uint8)
    canvas[..., :3] = WHITE
    y, x = (size - new_h) // 2, (size - new_w) // 2
    canvas[y:y + new_h, x:x + new_w] = crop
    canvas[..., :3][canvas[..., 3] == 0] = WHITE
    return canvas


def composite(image: np.ndarray, mask: np.ndarray, options: CompositeOptions = CompositeOptions()) -> np.ndarray:
    """The product shot: HxWx3 on white, or HxWx4 with ``transparent`` (size x size with ``frame``)."""
    options.check()
    rgba = cutout_rgba(image, mask, options.feather)
    if options.frame is not None:
        rgba = frame_square(rgba, options.frame, options.margin)
    return rgba if options.transparent else flatten_on_white(rgba)


def mask_image(mask: np.ndarray) -> np.ndarray:
    """An [H, W] mask as a uint8 grayscale image: 255 garment, 0 elsewhere."""
    return mask.astype(bool).astype(np.uint8) * np.uint8(255)

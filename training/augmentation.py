"""Augmentation of training images, drawn from a step's generator so that a resumed run repeats it: a zoom into
the image with a random window of its size, a left-right mirror (label maps mirrored with their left and right
classes swapped), a blur. ``train-segmenter`` augments image + label map pairs; ``train-captioner`` images alone
(:func:`augment_image`), with the same draws.
"""
from __future__ import annotations

import re

import numpy as np

from fashiongen.runtime.errors import InputError


def mirror_classes(id2label: dict[int, str]) -> np.ndarray:
    """A table (uint8, 256 entries) of the class each class id becomes in a mirrored image: ``Left-X`` and
    ``Right-X`` swap (names compared in any case and with any separators: ``left_hand`` mirrors ``Right hand``),
    others stay."""
    def words(name: str) -> str:
        return " ".join(re.findall(r"[0-9a-z]+", name.lower()))

    by_name = {words(name): i for i, name in id2label.items()}
    table = np.arange(256, dtype=np.uint8)
    for i, name in id2label.items():
        other = re.sub(r"\b(left|right)\b", lambda m: "right" if m[1] == "left" else "left", words(name))
        if other != words(name) and other in by_name:
            table[i] = by_name[other]
    return table


#: A mirror table that keeps every class: what an image without left and right classes is mirrored with.
UNCHANGED_CLASSES = np.arange(256, dtype=np.uint8)


def mirror(image: np.ndarray, labels: np.ndarray, table: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The image flipped left to right, and its label map flipped with left and right classes swapped."""
    return image[:, ::-1], table[labels[:, ::-1]]


def augment(image: np.ndarray, labels: np.ndarray, generator, zoom: float, table: np.ndarray | None,
            resample: int, blur: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """One example's augmentation, drawn from ``generator`` (five numbers, always, so the stream is fixed): a
    zoom of 1 to ``zoom`` times with a random window of the original size, a mirror half of the time (``table``
    from :func:`mirror_classes`; None: never), and a Gaussian blur of 0 to ``blur`` px half of the time."""
    import torch
    from PIL import Image, ImageFilter

    flip, scale, top, left, soften = torch.rand(5, generator=generator, dtype=torch.float64).tolist()
    height, width = labels.shape
    factor = 1 + scale * (zoom - 1)
    big = (round(width * factor), round(height * factor))
    if big != (width, height):
        y, x = int(top * (big[1] - height + 1)), int(left * (big[0] - width + 1))
        window = (x, y, x + width, y + height)
        image = np.asarray(Image.fromarray(image).resize(big, resample).crop(window))
        labels = np.asarray(Image.fromarray(labels).resize(big, Image.NEAREST).crop(window))
    if table is not None and flip < 0.5:
        image, labels = mirror(image, labels, table)
    if blur > 0 and soften < 0.5:
        image = np.asarray(Image.fromarray(image).filter(ImageFilter.GaussianBlur(2 * soften * blur)))
    return np.ascontiguousarray(image), np.ascontiguousarray(labels)


def check_zoom(zoom: float) -> None:
    if not zoom >= 1:  # NaN too
        raise InputError(f"--zoom: must be at least 1 (1 turns zooming off), got {zoom}")


def augment_image(image: np.ndarray, generator, zoom: float, flip: bool, resample: int) -> np.ndarray:
    """An image without a label map through :func:`augment` (the same draws: zoom window, mirror), for trainers
    whose targets do not move with the pixels (a caption)."""
    labels = np.zeros(image.shape[:2], dtype=np.uint8)
    return augment(image, labels, generator, zoom, UNCHANGED_CLASSES if flip else None, resample)[0]

"""Clothes segmentation with an exported SegFormer, torch-free: equal to transformers' own path.

``SegformerImageProcessor`` (resize with PIL, rescale, normalize, as the checkpoint's
``preprocessor_config.json`` says: :class:`SegPreprocess`), the network on any engine backend (per-class
logits at 1/4 of the input size), then logits upsampled bilinearly to the image's own size *before* the
argmax, as ``post_process_semantic_segmentation(target_sizes=...)`` does with
``F.interpolate(mode="bilinear", align_corners=False)`` (:func:`upsample_bilinear`).

Classes are chosen by name or id from the checkpoint's own labels (``manifest.segmenter.id2label``,
the one class table), or from the prompt through :data:`GARMENT_WORDS` (garment words -> label names).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from .engines import EngineSet
from .errors import InputError
from .images import as_rgb, resized_shape
from .manifest import KINDS, EngineFolderError

# Garment words in a prompt -> the label (by name) of the class that holds that garment. Longer phrases
# win over the words inside them ("dress shirt" is a shirt, "shirt dress" a dress); plurals match too.
# Extend here: a new word is one more string; a new class one more key naming a label of the checkpoint.
GARMENT_WORDS: dict[str, tuple[str, ...]] = {
    "Upper-clothes": ("crop top", "tank top", "top", "shirt", "t-shirt", "tshirt", "tee", "blouse", "jacket",
                      "dress shirt", "sweater", "sweatshirt", "hoodie", "cardigan", "coat", "blazer", "polo",
                      "camisole", "tunic", "vest"),
    "Skirt": ("skirt", "miniskirt"),
    "Pants": ("pants", "jeans", "trousers", "shorts", "leggings", "chinos", "joggers"),
    "Dress": ("dress", "gown", "shirt dress", "sweater dress", "sundress"),
}


class UnknownClassError(InputError):
    """A class name or id that the segmenter does not have; the message lists its labels."""


# -- preprocessing -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class SegPreprocess:
    """``SegformerImageProcessor``'s steps with the checkpoint's settings, in numpy and PIL."""

    do_resize: bool = True
    # {"height": H, "width": W} (a fixed shape), or {"shortest_edge": S} (aspect ratio kept): transformers' forms
    size: dict | None = field(default_factory=lambda: {"height": 512, "width": 512})
    resample: int = 2                             # PIL filter id; 2 = bilinear
    do_rescale: bool = True
    rescale_factor: float = 1 / 255
    do_normalize: bool = True
    image_mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    image_std: tuple[float, ...] = (0.229, 0.224, 0.225)

    @classmethod
    def from_manifest(cls, section: dict) -> "SegPreprocess":
        size = section.get("size")
        return cls(do_resize=bool(section["do_resize"]),
                   size=dict(size) if size else None,
                   resample=int(section["resample"]), do_rescale=bool(section["do_rescale"]),
                   rescale_factor=float(section["rescale_factor"]), do_normalize=bool(section["do_normalize"]),
                   image_mean=tuple(section["image_mean"]), image_std=tuple(section["image_std"]))

    def one(self, image: np.ndarray) -> np.ndarray:
        """HWC uint8 RGB -> CHW float32, step for step (and dtype for dtype) as transformers does it."""
        from PIL import Image

        if self.do_resize:
            height, width = resized_shape(*image.shape[:2], self.size)
            image = np.asarray(Image.fromarray(image).resize((width, height), resample=self.resample))
        x = image.transpose(2, 0, 1)
        if self.do_rescale:  # transformers upcasts to float64, multiplies, then casts to float32
            x = (x.astype(np.float64) * self.rescale_factor).astype(np.float32)
        if self.do_normalize:
            x = x.astype(np.float32) if not np.issubdtype(x.dtype, np.floating) else x
            mean = np.asarray(self.image_mean, dtype=x.dtype)[:, None, None]
            std = np.asarray(self.image_std, dtype=x.dtype)[:, None, None]
            x = (x - mean) / std
        return np.ascontiguousarray(x, dtype=np.float32)

    def __call__(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """A batch of same-size results (always the case with a fixed ``size``)."""
        return np.stack([self.one(im) for im in images])


# -- bilinear upsampling, as torch's F.interpolate(mode="bilinear", align_corners=False) ----------------
def linear_taps(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """1-D linear interpolation with half-pixel centres (torch's rule): per output index the two source
    indices and their weights.

    Source position ``max((i + 0.5) * in/out - 0.5, 0)``, computed in float32 as torch does on CPU; its
    floor and the next index (clamped to the edge) share the weight.
    """
    scale = np.float32(in_size / out_size)
    src = np.maximum((np.arange(out_size, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(0.5),
                     np.float32(0.0))
    i0 = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    i1 = np.where(i0 < in_size - 1, i0 + 1, i0)
    lam1 = np.clip(src - i0.astype(np.float32), 0.0, 1.0).astype(np.float32)
    return i0, i1, (np.float32(1.0) - lam1).astype(np.float32), lam1


def _along_width(logits: np.ndarray, width: int) -> np.ndarray:
    i0, i1, w0, w1 = linear_taps(logits.shape[-1], width)
    x = logits.astype(np.float32, copy=False)
    return x[..., i0] * w0 + x[..., i1] * w1


def upsample_bilinear(logits: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """[..., h, w] -> [..., H, W]: separable bilinear interpolation (align_corners=False), width first,
    then height, as torch's CPU kernel orders it."""
    height, width = size
    x = _along_width(logits, width)
    i0, i1, h0, h1 = linear_taps(logits.shape[-2], height)
    return x[..., i0, :] * h0[:, None] + x[..., i1, :] * h1[:, None]


def _argmax_first_axis(planes: np.ndarray) -> np.ndarray:
    """``planes.argmax(0)`` (first maximum wins) as C whole-plane passes: faster than a strided argmax."""
    best = planes[0].copy()
    index = np.zeros(planes.shape[1:], dtype=np.uint8 if planes.shape[0] <= 256 else np.int32)
    for c in range(1, planes.shape[0]):
        greater = planes[c] > best
        np.copyto(best, planes[c], where=greater)
        index[greater] = c
    return index


def class_map(logits: np.ndarray, size: tuple[int, int], rows_per_chunk: int = 32) -> np.ndarray:
    """[C, h, w] logits -> [H, W] class ids: upsampled to ``size`` first, then the argmax over classes.

    Works through the output a band of rows at a time (cache-sized, and a large image never holds all C
    upsampled planes at once).
    """
    height, width = size
    x = _along_width(logits, width)                      # [C, h, W]
    i0, i1, h0, h1 = linear_taps(logits.shape[-2], height)
    out = np.empty((height, width), dtype=np.uint8 if logits.shape[0] <= 256 else np.int32)
    for top in range(0, height, rows_per_chunk):
        rows = slice(top, top + rows_per_chunk)
        band = x[:, i0[rows], :] * h0[rows, None] + x[:, i1[rows], :] * h1[rows, None]
        out[rows] = _argmax_first_axis(band)
    return out


# -- class choice ------------------------------------------------------------------------------------
def _norm(name: str) -> str:
    return re.sub(r"[^0-9a-z]+", "", name.lower())


def _garment_pattern(word: str) -> re.Pattern:
    body = r"[\s_-]*".join(re.escape(part) for part in re.split(r"[\s_-]+", word))
    return re.compile(rf"(?<![\w-]){body}(?:s|es)?(?![\w-])", re.IGNORECASE)


_GARMENT_PHRASES = sorted(((w, label) for label, words in GARMENT_WORDS.items() for w in words),
                          key=lambda item: -len(item[0]))
_GARMENT_PATTERNS = [(_garment_pattern(w), w, label) for w, label in _GARMENT_PHRASES]


def garment_labels_in(prompt: str) -> list[str]:
    """Label names of the garments a prompt mentions, in :data:`GARMENT_WORDS` order (longest phrase wins)."""
    text, found = f" {prompt} ", set()
    for pattern, _, label in _GARMENT_PATTERNS:
        if pattern.search(text):
            found.add(label)
            text = pattern.sub(" ", text)
    return [label for label in GARMENT_WORDS if label in found]


def garment_class_ids(id2label: dict[int, str]) -> list[int]:
    """The segmenter's classes that hold a garment (the labels of :data:`GARMENT_WORDS` it has)."""
    garments = {_norm(label) for label in GARMENT_WORDS}
    return sorted(i for i, name in id2label.items() if _norm(name) in garments)


def is_auto(spec) -> bool:
    """Whether a class spec is ``auto`` (the classes of the garments the prompt names)."""
    return isinstance(spec, str) and spec.strip().lower() == "auto"


def describe_labels(id2label: dict[int, str]) -> str:
    return ", ".join(f"{i} {name}" for i, name in sorted(id2label.items()))


def label_id(name_or_id: str | int, id2label: dict[int, str], arg: str = "cutout") -> int:
    """One class by id or by name (case, spaces, '-' and '_' ignored); a garment word names its class."""
    text = str(name_or_id).strip()
    if re.fullmatch(r"\d+", text):
        if int(text) in id2label:
            return int(text)
        raise UnknownClassError(f"{arg}: no class id {text}; the segmenter's labels are: {describe_labels(id2label)}")
    by_name = {_norm(name): i for i, name in id2label.items()}
    if _norm(text) in by_name:
        return by_name[_norm(text)]
    for label, words in GARMENT_WORDS.items():  # "jeans", "t-shirt", "dresses": the garment's class
        if any(_norm(text) in (_norm(w), _norm(w) + "s", _norm(w) + "es") for w in words) and _norm(label) in by_name:
            return by_name[_norm(label)]
    raise UnknownClassError(f"{arg}: unknown class '{text}'; the segmenter's labels are: {describe_labels(id2label)}")


def resolve_classes(spec: str | Sequence[str | int], id2label: dict[int, str], prompt: str | None = None,
                    arg: str = "cutout") -> list[int]:
    """Class ids from ``auto`` (garments named in ``prompt``), ``CLASS[,CLASS...]`` or a list of names/ids."""
    if is_auto(spec):
        return classes_from_prompt(prompt, id2label, arg)
    if isinstance(spec, str):
        parts = [p for p in spec.split(",") if p.strip()]
    else:
        parts = list(spec)
    if not parts:
        raise UnknownClassError(f"{arg}: no class given; use auto or one of: {describe_labels(id2label)}")
    ids: list[int] = []
    for part in parts:
        i = label_id(part, id2label, arg)
        if i not in ids:
            ids.append(i)
    return ids


def classes_from_prompt(prompt: str | None, id2label: dict[int, str], arg: str = "cutout") -> list[int]:
    """The classes of every garment the prompt names (``auto``); an error when it names none."""
    if not prompt or not prompt.strip():
        raise InputError(f"{arg}: auto needs a prompt to read the garment from; name the class instead "
                         f"({describe_labels(id2label)})")
    labels = garment_labels_in(prompt)
    if not labels:
        words = ", ".join(w for ws in GARMENT_WORDS.values() for w in ws)
        raise InputError(f"{arg}: auto found no garment word in the prompt {prompt!r} (known: {words}); "
                         f"name the class instead: {describe_labels(id2label)}")
    by_name = {_norm(name): i for i, name in id2label.items()}
    missing = [label for label in labels if _norm(label) not in by_name]
    if missing:
        raise UnknownClassError(f"{arg}: auto reads {missing} in the prompt, which this segmenter does not have; "
                                f"its labels are: {describe_labels(id2label)}")
    return [by_name[_norm(label)] for label in labels]


# -- the segmenter -----------------------------------------------------------------------------------
class Segmenter:
    """An exported SegFormer: images (HWC uint8, any size) -> logits, class maps, masks."""

    def __init__(self, engines: EngineSet, max_batch: int = 8, arg: str = "engines"):
        """``arg``: what the caller calls the engine folder, for the error when it holds no segmenter."""
        manifest = engines.manifest
        if not engines.has("segmenter") or not manifest.segmenter:
            holds = KINDS.get(manifest.kind, (f"a '{manifest.kind}' folder",))[0]
            raise EngineFolderError(f"{arg}: '{engines.engine_dir}' has no segmenter (it holds {holds}); export "
                                    "one with `fashiongen export --segmenter SEGFORMER_DIR --out ...`")
        self.engines = engines
        self.id2label = manifest.segmenter.labels
        self.preprocess = SegPreprocess.from_manifest(manifest.segmenter.preprocess)
        self.max_batch = max(1, int(max_batch))

    def open(self) -> None:
        """Load the network now (so a broken file fails before any other compute)."""
        self.engines["segmenter"]

    def resolve_classes(self, spec, prompt: str | None = None, arg: str = "cutout") -> list[int]:
        return resolve_classes(spec, self.id2label, prompt, arg)

    def logits(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Per image [C, h, w] logits at the network's resolution; same-size inputs share one call."""
        images = [as_rgb(im, f"image {i}") for i, im in enumerate(images)]
        pixel_values = [self.preprocess.one(im) for im in images]
        out: list[np.ndarray | None] = [None] * len(images)
        groups: dict[tuple, list[int]] = {}
        for i, x in enumerate(pixel_values):
            groups.setdefault(x.shape, []).append(i)
        engine = self.engines["segmenter"]
        for indices in groups.values():
            for start in range(0, len(indices), self.max_batch):
                chunk = indices[start:start + self.max_batch]
                batch = np.stack([pixel_values[i] for i in chunk])
                logits = engine.run({"pixel_values": batch})["logits"]
                for i, value in zip(chunk, logits):
                    out[i] = value
        return out  # type: ignore[return-value]

    def class_maps(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Per image [H, W] class ids at the image's own size."""
        images = [as_rgb(im, f"image {i}") for i, im in enumerate(images)]
        return [class_map(lg, im.shape[:2]) for lg, im in zip(self.logits(images), images)]

    def masks(self, images: Sequence[np.ndarray], class_ids: Sequence[int]) -> list[np.ndarray]:
        """Per image an [H, W] bool mask of the pixels whose class is one of ``class_ids``."""
        ids = np.asarray(list(class_ids))
        return [np.isin(cm, ids) for cm in self.class_maps(images)]

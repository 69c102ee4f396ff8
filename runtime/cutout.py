"""Garment cutout: images (generated or given) -> product shots of one or more clothes classes.

Stages, each timed: ``segmenter`` (preprocessing and one batched network call for all images),
``class_map`` (upsample to each image's size, argmax, mask), ``composite`` (paste onto white or
transparency, feather, frame). An image in which the chosen classes cover less than ``min_area`` of the
pixels (none at all, or a speck) gives a result that says so (``empty``), never an almost blank white square.

Classes read from the prompt (``auto``) name the garment the image was made to show, so when the segmenter finds
too little of them, the other garment classes are ruled out and the argmax taken again (:func:`named_garment_mask`):
a dress the segmenter splits into a top and a skirt is still the dress the prompt asked for. The result names
the classes whose pixels were taken (``relabelled``), and the commands say so.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from .compositing import CompositeOptions, composite
from .engines import EngineSet
from .errors import InputError
from .images import as_rgb
from .segmentation import Segmenter, class_map, garment_class_ids
from .timings import StageTimings

# The smallest share of an image the garment may cover and still make a product shot: below it the mask is
# a speck (stray pixels of a class the image does not show), and the shot would be a white square with it.
MIN_AREA = 0.005


def check_min_area(min_area: float) -> float:
    if isinstance(min_area, bool) or not isinstance(min_area, (int, float)) or not 0 <= min_area < 1:
        raise InputError(f"min_area: must be a fraction of the image in [0, 1) (got {min_area!r})")
    return float(min_area)


@dataclass
class CutoutResult:
    image: np.ndarray | None     # the product shot (HxWx3, HxWx4 when transparent); None when empty (too small)
    mask: np.ndarray             # [H, W] bool at the source image's size
    class_ids: list[int]
    labels: list[str]
    relabelled: list[str] = field(default_factory=list)  # garment classes whose pixels were taken as the named one

    @property
    def empty(self) -> bool:
        return self.image is None

    @property
    def coverage(self) -> float:
        return float(self.mask.mean()) if self.mask.size else 0.0


@dataclass
class CutoutBatch:
    results: list[CutoutResult]
    timings: StageTimings = field(default_factory=StageTimings)


class CutoutPipeline:
    def __init__(self, engines: EngineSet, max_batch: int = 8, arg: str = "engines"):
        self.segmenter = Segmenter(engines, max_batch=max_batch, arg=arg)
        self.id2label = self.segmenter.id2label

    def resolve_classes(self, spec, prompt: str | None = None, arg: str = "cutout") -> list[int]:
        return self.segmenter.resolve_classes(spec, prompt, arg)

    def __call__(self, images: Sequence[np.ndarray], class_ids: Sequence[int],
                 options: CompositeOptions = CompositeOptions(), min_area: float = MIN_AREA,
                 from_prompt: bool = False) -> CutoutBatch:
        """Cut ``class_ids`` out of every image; one whose mask covers less than ``min_area`` of it is empty.

        ``from_prompt``: the classes are the garment the image was made to show (``auto``); where they cover too
        little, the other garment classes are ruled out (:func:`named_garment_mask`)."""
        options.check()
        min_area = check_min_area(min_area)
        if not class_ids:
            raise InputError("class_ids: no class to cut out")
        unknown = [i for i in class_ids if i not in self.id2label]
        if unknown:
            raise InputError(f"class_ids: {unknown} are not the segmenter's ({sorted(self.id2label)})")
        images = [as_rgb(im, f"image {i}") for i, im in enumerate(images)]
        timings = StageTimings()
        with timings.measure("segmenter"):
            logits = self.segmenter.logits(images)
        ids = np.asarray(list(class_ids))
        labels = [self.id2label[i] for i in class_ids]
        results = []
        others = [i for i in garment_class_ids(self.id2label) if i not in ids] if from_prompt else []
        for image, lg in zip(images, logits):
            with timings.measure("class_map"):
                classes = class_map(lg, image.shape[:2])
                mask, relabelled = np.isin(classes, ids), []
                if others and not enough(mask, min_area):
                    mask, taken = named_garment_mask(lg, classes, ids, others)
                    relabelled = [self.id2label[i] for i in taken]
            with timings.measure("composite"):
                shot = composite(image, mask, options) if enough(mask, min_area) else None
            results.append(CutoutResult(image=shot, mask=mask, class_ids=list(class_ids), labels=labels,
                                        relabelled=relabelled))
        return CutoutBatch(results=results, timings=timings)


def enough(mask: np.ndarray, min_area: float) -> bool:
    return bool(mask.any()) and float(mask.mean()) >= min_area


def named_garment_mask(logits: np.ndarray, classes: np.ndarray, ids: np.ndarray,
                       others: Sequence[int]) -> tuple[np.ndarray, list[int]]:
    """The pixels of ``ids`` once the garment classes ``others`` are ruled out (their logits to the lowest
    value, the argmax taken again), and which of ``others`` gave pixels to them.

    Only for classes the prompt names: the image was made to show that garment, so another garment class is the
    segmenter's confusion (a dress split into a top and a skirt, shorts read as a skirt), while background, skin
    and hair keep their own pixels."""
    ruled_out = logits.copy()
    ruled_out[list(others)] = np.finfo(ruled_out.dtype).min
    mask = np.isin(class_map(ruled_out, classes.shape), ids)
    taken = sorted(set(np.unique(classes[mask]).tolist()) & set(others))
    return mask, taken

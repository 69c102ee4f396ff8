"""Garment cutout: images (generated or given) -> product shots of one or more clothes classes.

Stages, each timed: ``segmenter`` (preprocessing and one batched network call for all images),
``class_map`` (upsample to each image's size, argmax, mask), ``composite`` (paste onto white or
transparency, feather, frame). An image in which the chosen classes cover no pixel gives a result that
says so (``empty``), never a blank white square.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from .compositing import CompositeOptions, composite
from .engines import EngineSet
from .images import as_rgb
from .segmentation import Segmenter, class_map
from .timings import StageTimings


@dataclass
class CutoutResult:
    image: np.ndarray | None     # the product shot (HxWx3, HxWx4 when transparent); None when empty
    mask: np.ndarray             # [H, W] bool at the source image's size
    class_ids: list[int]
    labels: list[str]

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
    def __init__(self, engines: EngineSet, max_batch: int = 8):
        self.segmenter = Segmenter(engines, max_batch=max_batch)
        self.id2label = self.segmenter.id2label

    def resolve_classes(self, spec, prompt: str | None = None, arg: str = "--cutout") -> list[int]:
        return self.segmenter.resolve_classes(spec, prompt, arg)

    def __call__(self, images: Sequence[np.ndarray], class_ids: Sequence[int],
                 options: CompositeOptions = CompositeOptions()) -> CutoutBatch:
        options.check()
        if not class_ids:
            raise ValueError("no class to cut out")
        unknown = [i for i in class_ids if i not in self.id2label]
        if unknown:
            raise ValueError(f"class ids {unknown} are not the segmenter's ({sorted(self.id2label)})")
        images = [as_rgb(im, f"image {i}") for i, im in enumerate(images)]
        timings = StageTimings()
        with timings.measure("segmenter"):
            logits = self.segmenter.logits(images)
        ids = np.asarray(list(class_ids))
        labels = [self.id2label[i] for i in class_ids]
        results = []
        for image, lg in zip(images, logits):
            with timings.measure("class_map"):
                mask = np.isin(class_map(lg, image.shape[:2]), ids)
            with timings.measure("composite"):
                shot = composite(image, mask, options) if mask.any() else None
            results.append(CutoutResult(image=shot, mask=mask, class_ids=list(class_ids), labels=labels))
        return CutoutBatch(results=results, timings=timings)

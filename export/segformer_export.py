"""Export a SegFormer clothes segmenter (a local transformers folder) into an engine folder.

The folder is the ``mattmdjaga/segformer_b2_clothes`` layout: ``config.json`` (with ``id2label``),
weights, ``preprocessor_config.json``. The network becomes ``segformer.onnx`` (dynamic batch, height,
width; validated against PyTorch at a shape other than the one traced); its labels and preprocessing
settings go into ``manifest.segmenter``, which is all the torch-free runtime needs to reproduce
``SegformerImageProcessor`` + ``SegformerForSemanticSegmentation``.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # export never reaches for a model hub

import torch

from fashiongen.runtime.contracts import SEGMENTER
from fashiongen.runtime.errors import InputError
from fashiongen.runtime.manifest import Manifest, SegmenterSection

from .onnx_export import export_network_entry, seeded_feeds

SEGMENTER_STAGES = 2  # load, export + validate
ONNX_NAME = "segformer.onnx"
REQUIRED = ("config.json", "preprocessor_config.json")


class SegmenterCheckpointError(InputError):
    """A segmenter folder that is missing, lacks a file or cannot be loaded; the message names it."""


class SegformerNet(torch.nn.Module):
    """``pixel_values`` -> ``logits`` (1/4 resolution), the contract's terms."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, pixel_values):
        return self.model(pixel_values=pixel_values, return_dict=False)[0]


def check_segmenter_dir(segmenter_dir: Path) -> Path:
    segmenter_dir = Path(segmenter_dir)
    if not segmenter_dir.is_dir():
        raise SegmenterCheckpointError(
            f"--segmenter: '{segmenter_dir}' is not a folder (a local transformers SegFormer folder is expected)")
    for name in REQUIRED:
        if not (segmenter_dir / name).is_file():
            raise SegmenterCheckpointError(f"--segmenter: '{segmenter_dir}' lacks '{name}' "
                                           "(not a transformers SegformerForSemanticSegmentation folder)")
    return segmenter_dir


def _resize_target(size) -> dict | None:
    """The processor's ``size`` (a dict or transformers' ``SizeDict``) in one of the two forms the runtime
    resizes to (``runtime.images.resized_shape``), or None."""
    get = size.get if isinstance(size, dict) else (lambda key: getattr(size, key, None))
    if get("height") and get("width"):
        return {"height": int(get("height")), "width": int(get("width"))}
    if get("shortest_edge"):
        return {"shortest_edge": int(get("shortest_edge"))}
    return None


def preprocessing_settings(processor) -> dict:
    """The image processor's settings as plain JSON, in the form ``runtime.segmentation`` reads."""
    size = _resize_target(processor.size)
    if processor.do_resize and size is None:
        shown = dict(processor.size) if hasattr(processor.size, "keys") else processor.size
        raise SegmenterCheckpointError(f"preprocessor_config.json: size {shown} is not supported; "
                                       "expected {'height': H, 'width': W} or {'shortest_edge': S}")
    return {
        "do_resize": bool(processor.do_resize),
        "size": size if processor.do_resize else None,
        "resample": int(processor.resample),  # a PIL filter id (2 = bilinear)
        "do_rescale": bool(processor.do_rescale),
        "rescale_factor": float(processor.rescale_factor),
        "do_normalize": bool(processor.do_normalize),
        "image_mean": [float(v) for v in processor.image_mean],
        "image_std": [float(v) for v in processor.image_std],
    }


def load_segmenter(segmenter_dir: Path):
    """(model, processor) from local files only; errors are one line naming the folder."""
    import transformers
    from transformers import SegformerForSemanticSegmentation, SegformerImageProcessorPil

    segmenter_dir = check_segmenter_dir(segmenter_dir)
    transformers.utils.logging.set_verbosity_error()  # our progress bar and errors say what happens
    transformers.utils.logging.disable_progress_bar()
    try:
        config = json.loads((segmenter_dir / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise SegmenterCheckpointError(f"--segmenter: '{segmenter_dir / 'config.json'}' is not valid JSON ({exc})") \
            from None
    if "id2label" not in config:
        raise SegmenterCheckpointError(f"--segmenter: '{segmenter_dir / 'config.json'}' has no id2label")
    try:
        model = SegformerForSemanticSegmentation.from_pretrained(segmenter_dir, local_files_only=True).eval()
        processor = SegformerImageProcessorPil.from_pretrained(segmenter_dir, local_files_only=True)
    except (OSError, ValueError, json.JSONDecodeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SegmenterCheckpointError(f"--segmenter: cannot load '{segmenter_dir}': {first}") from None
    return model, processor


def export_segmenter(segmenter_dir: Path, stage: Path, manifest: Manifest, bar) -> None:
    """Export ``segmenter_dir`` into ``stage`` as ``segformer.onnx``, filling in ``manifest``."""
    bar.set_description("load segmenter")
    model, processor = load_segmenter(segmenter_dir)
    bar.update(1)
    bar.set_description("export segmenter")
    id2label = {int(k): str(v) for k, v in model.config.id2label.items()}
    dims = {"seg_classes": int(model.config.num_labels)}
    # Traced at batch 2 and one non-square size, checked at batch 1 and another (odd, transposed).
    trace = {"pixel_values": (2, 3, 96, 64)}
    check = {"pixel_values": (1, 3, 72, 108)}
    entry = export_network_entry(SegformerNet(model), SEGMENTER, seeded_feeds(SEGMENTER, trace, 0),
                                 seeded_feeds(SEGMENTER, check, 1), dims, stage / ONNX_NAME, manifest.opset)
    manifest.networks["segmenter"] = entry
    manifest.dims.update(dims)
    manifest.segmenter = SegmenterSection(id2label={str(k): v for k, v in sorted(id2label.items())},
                                          preprocess=preprocessing_settings(processor), logit_stride=4)
    manifest.source["segmenter"] = str(Path(segmenter_dir).absolute())
    bar.update(1)


__all__ = ["SEGMENTER_STAGES", "ONNX_NAME", "SegmenterCheckpointError", "export_segmenter", "load_segmenter",
           "preprocessing_settings", "SegformerNet"]

"""SegFormer clothes segmenters with seeded random weights, in the transformers folder format.

No model hub is reachable here, so tests, the demo and the benchmarks build the architecture of
``mattmdjaga/segformer_b2_clothes`` (``SegformerForSemanticSegmentation``, 18 clothes classes) with
random weights and write it as that checkpoint lays itself out on disk::

    config.json                 SegformerConfig with the 18-class id2label / label2id
    model.safetensors           the weights
    preprocessor_config.json    SegformerImageProcessor settings (resize, rescale, normalize)

so that the real loading code (``from_pretrained``, the exporter, the torch-free runtime's
preprocessing) is what runs. The same seed writes byte-identical weight files.

Command line::

    python -m fashiongen.random_checkpoints.segmenter --out DIR [--full-size] [--seed N]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from fashiongen.runtime.files import replace_folder

__all__ = ["SegformerSize", "TINY_SEGFORMER", "FULL_B2", "CLOTHES_ID2LABEL", "write_segformer_checkpoint", "main"]

# The label table of mattmdjaga/segformer_b2_clothes (its config.json), in id order.
CLOTHES_ID2LABEL: dict[int, str] = dict(enumerate([
    "Background", "Hat", "Hair", "Sunglasses", "Upper-clothes", "Skirt", "Pants", "Dress", "Belt",
    "Left-shoe", "Right-shoe", "Face", "Left-leg", "Right-leg", "Left-arm", "Right-arm", "Bag", "Scarf",
]))

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


@dataclass(frozen=True)
class SegformerSize:
    """Architecture knobs (``SegformerConfig`` fields) and the preprocessor's input size."""

    hidden_sizes: tuple[int, ...] = (16, 32, 40, 64)
    depths: tuple[int, ...] = (1, 1, 1, 1)
    num_attention_heads: tuple[int, ...] = (1, 2, 5, 8)
    sr_ratios: tuple[int, ...] = (8, 4, 2, 1)
    mlp_ratios: tuple[int, ...] = (4, 4, 4, 4)
    decoder_hidden_size: int = 64
    image_size: tuple[int, int] = (64, 64)   # preprocessor_config "size" (height, width)
    logit_scale: float = 1.0                  # multiplies the classifier weights (varied class maps)
    extra: dict = field(default_factory=dict)

    def config_kwargs(self) -> dict:
        return {"hidden_sizes": list(self.hidden_sizes), "depths": list(self.depths),
                "num_attention_heads": list(self.num_attention_heads), "sr_ratios": list(self.sr_ratios),
                "mlp_ratios": list(self.mlp_ratios), "decoder_hidden_size": self.decoder_hidden_size,
                "num_encoder_blocks": len(self.hidden_sizes), **self.extra}


# Small and fast (tests, the demo). Its classifier is scaled up so random weights give class maps with
# several classes in them rather than one near-constant winner.
TINY_SEGFORMER = SegformerSize(logit_scale=50.0)
# The real SegFormer-B2 (mit-b2 encoder, 768-channel all-MLP decoder), 512x512 input (benchmarks).
FULL_B2 = SegformerSize(hidden_sizes=(64, 128, 320, 512), depths=(3, 4, 6, 3), decoder_hidden_size=768,
                        image_size=(512, 512))


def preprocessor_config(size: SegformerSize) -> dict:
    """``preprocessor_config.json`` as ``mattmdjaga/segformer_b2_clothes`` has it (size aside)."""
    height, width = size.image_size
    return {
        "do_normalize": True, "do_reduce_labels": False, "do_rescale": True, "do_resize": True,
        "image_mean": IMAGENET_MEAN, "image_std": IMAGENET_STD,
        "image_processor_type": "SegformerImageProcessor", "resample": 2,
        "rescale_factor": 1 / 255, "size": {"height": height, "width": width},
    }


def build_segformer(size: SegformerSize = TINY_SEGFORMER, seed: int = 0):
    """A ``SegformerForSemanticSegmentation`` with the clothes labels and seeded random weights."""
    from transformers import SegformerConfig, SegformerForSemanticSegmentation

    config = SegformerConfig(num_labels=len(CLOTHES_ID2LABEL), id2label=dict(CLOTHES_ID2LABEL),
                             label2id={v: k for k, v in CLOTHES_ID2LABEL.items()}, **size.config_kwargs())
    torch.manual_seed(seed)
    model = SegformerForSemanticSegmentation(config).eval()
    with torch.no_grad():
        generator = torch.Generator().manual_seed(seed + 1)
        classifier = model.decode_head.classifier
        classifier.weight.mul_(size.logit_scale)
        classifier.bias.copy_(torch.randn(classifier.bias.shape, generator=generator) * 0.1)
    return model


def write_segformer_checkpoint(out_dir: str | os.PathLike, size: SegformerSize = TINY_SEGFORMER,
                               seed: int = 0) -> Path:
    """Write a SegFormer clothes checkpoint folder (config, safetensors, preprocessor config); returns it.

    The folder is built beside ``out_dir`` and renamed into place when complete.
    """
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out: '{out}' exists and is not a folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    model = build_segformer(size, seed)
    stage = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.partial-"))
    try:
        model.save_pretrained(stage, safe_serialization=True)
        (stage / "preprocessor_config.json").write_text(json.dumps(preprocessor_config(size), indent=2) + "\n")
        replace_folder(stage, out)
    finally:
        if stage.exists():
            shutil.rmtree(stage)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m fashiongen.random_checkpoints.segmenter",
        description="Write a SegFormer clothes segmenter (the mattmdjaga/segformer_b2_clothes layout: "
                    "SegformerForSemanticSegmentation, 18 classes, preprocessor_config.json) with seeded "
                    "random weights, loadable by SegformerForSemanticSegmentation.from_pretrained.")
    parser.add_argument("--out", required=True, type=Path, help="folder to write the checkpoint into")
    parser.add_argument("--full-size", action="store_true",
                        help="the real SegFormer-B2 architecture at 512x512 (~110 MB, for benchmarks) "
                             "instead of a tiny one")
    parser.add_argument("--seed", type=int, default=0, help="weight seed (same seed, same bytes; default 0)")
    args = parser.parse_args(argv)
    if args.seed < 0:
        parser.error(f"--seed must be non-negative, got {args.seed}")
    t0 = time.perf_counter()
    try:
        out = write_segformer_checkpoint(args.out, FULL_B2 if args.full_size else TINY_SEGFORMER, args.seed)
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {out} in {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""CLIP and BLIP checkpoints with seeded random weights, in the real transformers folder formats.

No model hub is reachable here, so tests, the demo and the benchmarks build the real architectures
(small, or at full size) with random weights and write them as the hub folders lay them out:

``openai/clip-vit-base-patch32``::

    config.json, model.safetensors              CLIPModel (text + vision towers, both projections)
    vocab.json, merges.txt, tokenizer.json, tokenizer_config.json, special_tokens_map.json   real CLIP BPE
    preprocessor_config.json                    CLIPImageProcessor (shortest edge, center crop, OpenAI mean/std)

``Salesforce/blip-image-captioning-base``::

    config.json, model.safetensors              BlipForConditionalGeneration
    vocab.txt, tokenizer.json, tokenizer_config.json, special_tokens_map.json   BERT WordPiece + [DEC]
    preprocessor_config.json                    BlipImageProcessor

The BLIP vocabulary is a small WordPiece list of fashion words (the real one is bert-base-uncased's,
which ships in no wheel here), so random captions read as words. The same seed writes the same bytes.

Command line::

    python -m fashiongen.random_checkpoints.retrieval --out DIR [--full-size] [--seed N] [--catalog N]

writes ``DIR/clip``, ``DIR/blip`` and, with ``--catalog N``, ``DIR/catalog`` with N synthetic product images.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fashiongen.runtime.files import staged_folder

from .sd import CLIP_VOCAB_SIZE, TEXT_MAX_LENGTH, write_clip_tokenizer

OPENAI_CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
OPENAI_CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


@dataclass(frozen=True)
class ClipSize:
    text_hidden: int = 32
    text_layers: int = 2
    text_heads: int = 2
    text_intermediate: int = 64
    vision_hidden: int = 32
    vision_layers: int = 2
    vision_heads: int = 2
    vision_intermediate: int = 64
    image_size: int = 32
    patch_size: int = 8
    projection_dim: int = 16


TINY_CLIP = ClipSize()
# openai/clip-vit-base-patch32
CLIP_B32 = ClipSize(text_hidden=512, text_layers=12, text_heads=8, text_intermediate=2048, vision_hidden=768,
                    vision_layers=12, vision_heads=12, vision_intermediate=3072, image_size=224, patch_size=32,
                    projection_dim=512)


@dataclass(frozen=True)
class BlipSize:
    hidden: int = 32
    layers: int = 2
    heads: int = 2
    intermediate: int = 64
    image_size: int = 32
    patch_size: int = 8
    projection_dim: int = 16


TINY_BLIP = BlipSize()


def _drop_machine_keys(path: Path) -> None:
    cfg = json.loads(path.read_text(encoding="utf-8"))
    for k in ("is_local", "local_files_only", "name_or_path"):
        cfg.pop(k, None)
    path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n", encoding="utf-8")


# ------------------------------------------------------------------------------------------------- CLIP
def clip_config(size: ClipSize = TINY_CLIP):
    from transformers import CLIPConfig

    text = dict(vocab_size=CLIP_VOCAB_SIZE, hidden_size=size.text_hidden, intermediate_size=size.text_intermediate,
                num_hidden_layers=size.text_layers, num_attention_heads=size.text_heads,
                max_position_embeddings=TEXT_MAX_LENGTH, hidden_act="quick_gelu", layer_norm_eps=1e-5,
                projection_dim=size.projection_dim, bos_token_id=0, eos_token_id=2, pad_token_id=1)
    vision = dict(hidden_size=size.vision_hidden, intermediate_size=size.vision_intermediate,
                  num_hidden_layers=size.vision_layers, num_attention_heads=size.vision_heads,
                  image_size=size.image_size, patch_size=size.patch_size, hidden_act="quick_gelu",
                  layer_norm_eps=1e-5, projection_dim=size.projection_dim)
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=size.projection_dim,
                      logit_scale_init_value=2.6592)


def write_clip_checkpoint(out_dir, size: ClipSize = TINY_CLIP, seed: int = 0) -> Path:
    """An ``openai/clip-vit-base-patch32``-style folder with seeded random weights; returns its path."""
    from transformers import CLIPModel

    with staged_folder(out_dir, "config.json", "a checkpoint folder") as stage:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = CLIPModel(clip_config(size)).eval()
        model.save_pretrained(stage, safe_serialization=True)
        write_clip_tokenizer(stage)
        (stage / "preprocessor_config.json").write_text(json.dumps({
            "crop_size": size.image_size, "do_center_crop": True, "do_normalize": True, "do_resize": True,
            "feature_extractor_type": "CLIPFeatureExtractor", "image_mean": OPENAI_CLIP_MEAN,
            "image_std": OPENAI_CLIP_STD, "resample": 3, "size": size.image_size}, indent=2) + "\n")
    return Path(out_dir)


# ------------------------------------------------------------------------------------------------- BLIP
_BLIP_WORDS = """a an the of with and in on for white black red blue green yellow pink grey gray brown beige navy
cream purple orange short long sleeve sleeves sleeveless crewneck v neck collar hood hooded crop top tee t shirt
shirt blouse dress skirt pants jeans trousers shorts jacket coat sweater cardigan hoodie knit cotton denim linen
silk wool leather striped plain printed floral graphic logo fitted loose oversized slim mini midi maxi woman man
women men model wearing product photo picture studio background front back view""".split()


def blip_vocab() -> list[str]:
    """BERT-style WordPiece vocabulary: specials at bert-base-uncased's ids 0..4 order, words, ##pieces, [DEC]."""
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)] + [str(d) for d in range(10)]
    return list(dict.fromkeys(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *letters, *_BLIP_WORDS,
                               *[f"##{c}" for c in letters], ".", ",", "-", "'", "[DEC]"]))


def write_blip_checkpoint(out_dir, size: BlipSize = TINY_BLIP, seed: int = 0) -> Path:
    """A ``Salesforce/blip-image-captioning-base``-style folder with seeded random weights; returns its path."""
    from transformers import (BertTokenizerFast, BlipConfig, BlipForConditionalGeneration, BlipImageProcessor,
                              BlipProcessor)

    vocab = blip_vocab()
    ids = {t: i for i, t in enumerate(vocab)}
    with staged_folder(out_dir, "config.json", "a checkpoint folder") as stage:
        raw = stage / "_tok"
        raw.mkdir()
        (raw / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
        # transformers 5: BertTokenizerFast(vocab_file=...) ignores the file; from_pretrained(dir) reads it
        tokenizer = BertTokenizerFast.from_pretrained(raw, do_lower_case=True, bos_token="[DEC]",
                                                      model_max_length=512)
        if len(tokenizer) != len(vocab):
            raise RuntimeError(f"BLIP tokenizer has {len(tokenizer)} tokens, expected {len(vocab)}")
        text = dict(vocab_size=len(vocab), hidden_size=size.hidden, encoder_hidden_size=size.hidden,
                    intermediate_size=size.intermediate, num_hidden_layers=size.layers,
                    num_attention_heads=size.heads, max_position_embeddings=64, projection_dim=size.projection_dim,
                    bos_token_id=ids["[DEC]"], pad_token_id=ids["[PAD]"], sep_token_id=ids["[SEP]"],
                    eos_token_id=ids["[SEP]"], initializer_range=0.1)
        vision = dict(hidden_size=size.hidden, intermediate_size=size.intermediate, num_hidden_layers=size.layers,
                      num_attention_heads=size.heads, image_size=size.image_size, patch_size=size.patch_size,
                      projection_dim=size.projection_dim, initializer_range=0.1)
        # a wider init than BLIP's 0.02 lets random weights see the image: captions differ between images
        config = BlipConfig(text_config=text, vision_config=vision, projection_dim=size.projection_dim,
                            initializer_range=0.1)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = BlipForConditionalGeneration(config).eval()
        model.save_pretrained(stage, safe_serialization=True)
        image_processor = BlipImageProcessor(size={"height": size.image_size, "width": size.image_size},
                                             image_mean=OPENAI_CLIP_MEAN, image_std=OPENAI_CLIP_STD)
        BlipProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(stage)
        shutil.copyfile(raw / "vocab.txt", stage / "vocab.txt")  # as the hub folder has it
        shutil.rmtree(raw)
        for name in ("tokenizer_config.json", "processor_config.json", "preprocessor_config.json"):
            if (stage / name).exists():
                _drop_machine_keys(stage / name)
    return Path(out_dir)


# ---------------------------------------------------------------------------------------------- catalog
def product_image(seed: int, height: int = 96, width: int = 72) -> np.ndarray:
    """A synthetic product shot: a coloured garment-like shape with a texture, on white."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    cy, cx = height * rng.uniform(0.4, 0.6), width * rng.uniform(0.4, 0.6)
    ry, rx = height * rng.uniform(0.2, 0.45), width * rng.uniform(0.2, 0.45)
    inside = ((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2 < 1
    image = np.full((height, width, 3), 255.0, dtype=np.float32)
    image[inside] = rng.integers(0, 255, size=3)
    period = rng.uniform(2, 8)
    image += (25 * np.sin((x + y * rng.uniform(-1, 1)) / period))[..., None] * inside[..., None]
    image += rng.normal(0, 4, size=image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def write_catalog(out_dir, count: int, seed: int = 0) -> list[Path]:
    """``count`` synthetic product images (PNG) in ``out_dir``: ``item-000.png``..."""
    from PIL import Image

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = out_dir / f"item-{i:03d}.png"
        Image.fromarray(product_image(seed * 10_000 + i)).save(path)
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m fashiongen.random_checkpoints.retrieval",
        description="Write CLIP (openai/clip-vit-base-patch32 layout) and BLIP captioning "
                    "(Salesforce/blip-image-captioning-base layout) checkpoints with seeded random weights, and "
                    "optionally a synthetic catalog of product images.")
    parser.add_argument("--out", required=True, type=Path, help="folder for clip/, blip/ and catalog/")
    parser.add_argument("--full-size", action="store_true", help="CLIP ViT-B/32 at full size (~600 MB)")
    parser.add_argument("--seed", type=int, default=0, help="weight seed (default 0)")
    parser.add_argument("--catalog", type=int, default=0, metavar="N", help="also write N catalog images")
    args = parser.parse_args(argv)
    try:
        clip = write_clip_checkpoint(args.out / "clip", CLIP_B32 if args.full_size else TINY_CLIP, args.seed)
        blip = write_blip_checkpoint(args.out / "blip", TINY_BLIP, args.seed)
        print(f"wrote {clip} and {blip}")
        if args.catalog:
            write_catalog(args.out / "catalog", args.catalog, args.seed)
            print(f"wrote {args.catalog} images to {args.out / 'catalog'}")
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""A local CLIP checkpoint (``openai/clip-vit-base-patch32`` layout) to a CLIP engine folder.

The folder (manifest kind ``"clip"``) holds the text tower and the image tower, each with its projection
(``clip_text.onnx``, ``clip_image.onnx``; contracts in ``runtime.contracts``), validated against
``CLIPModel.get_text_features`` / ``get_image_features`` at a batch other than the one traced; the CLIP
tokenizer (``tokenizer.json``, manifest ``tokenizer`` section) and, in the manifest ``clip`` section, the
image preprocessing of the checkpoint's ``preprocessor_config.json`` and the checkpoint's fingerprint.

The fingerprint (sha256 over ``config.json`` and the weight files) names *which* CLIP embedded a catalog:
vectors from two different CLIPs are not comparable, so an index refuses a query tower with another one.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch

from fashiongen.runtime.contracts import CLIP_IMAGE, CLIP_TEXT
from fashiongen.runtime.files import staged_folder
from fashiongen.runtime.manifest import MANIFEST_NAME, ClipSection, Manifest, sha256_file, write_json_atomic

from .onnx_export import DEFAULT_OPSET, export_network_entry, seeded_feeds
from .sd_export import CheckpointError, quiet_libraries, tokenizer_section, versions

CLIP_REQUIRED = ("config.json", "preprocessor_config.json")
WEIGHT_SUFFIXES = (".safetensors", ".bin")


class ClipTextNet(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids):
        return self.model.get_text_features(input_ids=input_ids.long()).pooler_output


class ClipImageNet(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, pixel_values):
        return self.model.get_image_features(pixel_values=pixel_values).pooler_output


def checkpoint_fingerprint(model_dir: Path) -> str:
    """sha256 over ``config.json`` and every weight file of a transformers checkpoint folder."""
    model_dir = Path(model_dir)
    files = [model_dir / "config.json"] + sorted(p for p in model_dir.iterdir() if p.suffix in WEIGHT_SUFFIXES)
    digest = hashlib.sha256()
    for f in files:
        digest.update(f"{f.name}:{sha256_file(f)}\n".encode())
    return digest.hexdigest()


def check_clip_checkpoint(model_dir: Path, arg: str = "--clip") -> Path:
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise CheckpointError(f"{arg}: '{model_dir}' is not a folder (a local CLIP checkpoint is expected)")
    for part in CLIP_REQUIRED:
        if not (model_dir / part).is_file():
            raise CheckpointError(f"{arg}: '{model_dir}' lacks '{part}' (not a CLIP checkpoint folder)")
    if not any(p.suffix in WEIGHT_SUFFIXES for p in model_dir.iterdir()):
        raise CheckpointError(f"{arg}: '{model_dir}' has no weight file (model.safetensors)")
    return model_dir


def load_clip(model_dir: Path, arg: str = "--clip"):
    """``(CLIPModel, tokenizer, image processor)`` from local files only."""
    from transformers import AutoImageProcessor, CLIPModel, CLIPTokenizerFast

    model_dir = check_clip_checkpoint(model_dir, arg)
    quiet_libraries()
    try:
        model = CLIPModel.from_pretrained(model_dir, local_files_only=True).eval()
        tokenizer = CLIPTokenizerFast.from_pretrained(model_dir, local_files_only=True)
        processor = AutoImageProcessor.from_pretrained(model_dir, local_files_only=True)
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0]
        raise CheckpointError(f"{arg}: cannot load '{model_dir}' as CLIP: {first}") from None
    return model, tokenizer, processor


def image_preprocessing(processor) -> dict:
    """The settings of a CLIP image processor that the torch-free runtime reproduces."""
    size = dict(processor.size.__dict__ if hasattr(processor.size, "__dict__") else processor.size)
    crop = dict(processor.crop_size.__dict__ if hasattr(processor.crop_size, "__dict__") else processor.crop_size)
    size = {k: v for k, v in size.items() if v is not None}
    crop = {k: v for k, v in crop.items() if v is not None}
    if set(size) not in ({"shortest_edge"}, {"height", "width"}):
        raise CheckpointError(f"CLIP image processor size {size} is not supported (shortest_edge or height/width)")
    resample = processor.resample
    return {
        "size": size,
        "crop_size": crop if processor.do_center_crop else None,
        "do_resize": bool(processor.do_resize),
        "resample": int(getattr(resample, "value", resample)),
        "rescale_factor": float(processor.rescale_factor) if processor.do_rescale else 1.0,
        "image_mean": [float(v) for v in processor.image_mean] if processor.do_normalize else [0.0, 0.0, 0.0],
        "image_std": [float(v) for v in processor.image_std] if processor.do_normalize else [1.0, 1.0, 1.0],
    }


def export_clip_folder(model_dir: Path, out_dir: Path, opset: int = DEFAULT_OPSET, progress: bool = False,
                       arg: str = "--clip") -> Manifest:
    """Write a CLIP engine folder for ``model_dir`` at ``out_dir`` (replaced in one rename); its manifest."""
    from tqdm.auto import tqdm

    model, tokenizer, processor = load_clip(model_dir, arg)
    text_cfg, vision_cfg = model.config.text_config, model.config.vision_config
    dims = {"clip_text_length": int(tokenizer.model_max_length), "clip_projection": int(model.config.projection_dim),
            "clip_image_size": int(vision_cfg.image_size)}
    t, s = dims["clip_text_length"], dims["clip_image_size"]
    plan = [
        (CLIP_TEXT, ClipTextNet(model), {"input_ids": (2, t)}, {"input_ids": (3, t)}),
        (CLIP_IMAGE, ClipImageNet(model), {"pixel_values": (2, 3, s, s)}, {"pixel_values": (1, 3, s, s)}),
    ]
    bar = tqdm(total=len(plan), unit="network", disable=not progress)
    with staged_folder(out_dir, MANIFEST_NAME, "a CLIP engine folder") as stage:
        manifest = Manifest(kind="clip", dims=dims, networks={}, opset=opset, versions=versions())
        for contract, module, trace, check in plan:
            bar.set_description(f"export {contract.name}")
            sample = seeded_feeds(contract, trace, 0, int_high=text_cfg.vocab_size)
            checked = seeded_feeds(contract, check, 1, int_high=text_cfg.vocab_size)
            manifest.networks[contract.name] = export_network_entry(
                module, contract, sample, checked, dims, stage / f"{contract.name}.onnx", opset)
            bar.update(1)
        manifest.tokenizer = tokenizer_section(tokenizer, {}, stage)
        manifest.clip = ClipSection(fingerprint=checkpoint_fingerprint(model_dir), image=image_preprocessing(processor))
        manifest.source["clip"] = str(Path(model_dir).absolute())
        write_json_atomic(stage / MANIFEST_NAME, manifest.to_json())
    bar.close()
    return manifest


def reference_embeddings(model_dir: Path, prompts: list[str], images: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """transformers' own L2-normalized text and image embeddings (``CLIPProcessor`` + ``CLIPModel``)."""
    from PIL import Image

    model, tokenizer, processor = load_clip(model_dir)
    with torch.no_grad():
        text = np.zeros((0, model.config.projection_dim), np.float32)
        image = np.zeros((0, model.config.projection_dim), np.float32)
        if prompts:
            ids = tokenizer(prompts, padding=True, truncation=True, return_tensors="pt").input_ids
            text = model.get_text_features(input_ids=ids).pooler_output.numpy()
        if images:
            pixels = processor(images=[Image.fromarray(i) for i in images], return_tensors="pt").pixel_values
            image = model.get_image_features(pixel_values=pixels).pooler_output.numpy()
    def unit(x):
        return x / np.linalg.norm(x, axis=1, keepdims=True)
    return unit(text), unit(image)

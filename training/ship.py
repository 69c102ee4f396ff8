"""Packing a trained family for shipping: weights stored in fp16, engine folders without their caches.

fp16 storage halves what git and the wheel carry. The engines are exported from the fp16 folders, so the
exporter stores the same fp16 values (losslessly, see ``export/onnx_export.store_exact_fp16``) and what
serves is exactly what is shipped.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from fashiongen.runtime.errors import InputError
from fashiongen.runtime.files import atomic_file, staged_folder

MARKER = "recipe.json"


def half_copy(source: Path, out: Path) -> Path:
    """Copy a diffusers / transformers folder with every floating-point safetensors tensor stored in fp16.

    Loading it in fp32 gives exactly the fp16 values, so the copy is the model that is exported and measured."""
    import torch
    from safetensors.torch import load_file, save_file

    out = Path(out)
    with staged_folder(out, "model_index.json" if (Path(source) / "model_index.json").exists() else "config.json",
                       "a model folder") as stage:
        for path in sorted(Path(source).rglob("*")):
            if not path.is_file() or "checkpoints" in path.parts:
                continue
            target = stage / path.relative_to(source)
            target.parent.mkdir(parents=True, exist_ok=True)
            if path.suffix == ".safetensors":
                tensors = {k: v.half() if v.is_floating_point() else v for k, v in load_file(path).items()}
                save_file(tensors, target, metadata={"format": "pt"})
            else:
                shutil.copy2(path, target)
        torch.cuda.empty_cache()  # no-op on CPU; keeps the copy free of device state
    return out


def copy_engines(source: Path, out: Path) -> None:
    """An engine folder without ``cache/`` (ONNX Runtime writes its CPU-specific graph there on first load)."""
    shutil.copytree(source, out, ignore=shutil.ignore_patterns("cache"))


PARTS = ("worn", "product", "segmenter", "pix2pix")
#: Parts shipped as their engine folder alone: the editor's text encoder and VAE are the product model's, and the
#: runtime reads only the engines; its fp16 weights (11 MB) would not fit the package's budget beside them.
ENGINES_ONLY = ("pix2pix",)


def ship_family(work: Path, target: Path, recipe: dict, parts: tuple[str, ...] = PARTS) -> Path:
    """``target/weights/*`` (fp16 model folders, and the learned tokens with ``worn``), ``target/engines/*`` and
    ``recipe.json``, for the ``parts`` of the family that are shipped (a part that misses its quality bar is
    left out: its name then says "not installed" rather than drawing the wrong garment)."""
    work = Path(work)
    unknown = sorted(set(parts) - set(PARTS))
    if unknown or not parts:
        raise InputError(f"parts: expected some of {', '.join(PARTS)}, got {', '.join(parts) or 'none'}")
    with staged_folder(target, MARKER, "a shipped demo family", arg="target") as stage:
        for name in parts:
            if name not in ENGINES_ONLY:
                shutil.copytree(work / "release" / name, stage / "weights" / name)
            copy_engines(work / "engines" / name, stage / "engines" / name)
        if "worn" in parts:
            shutil.copytree(work / "release" / "embeddings", stage / "weights" / "embeddings")
        with atomic_file(stage / MARKER) as tmp:
            tmp.write_text(json.dumps({**recipe, "shipped": list(parts)}, indent=2, sort_keys=True) + "\n")
    return Path(target)

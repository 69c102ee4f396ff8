"""Packing a trained family for shipping: weights stored in fp16, engine folders without their caches.

fp16 storage halves what git and the wheel carry. The engines are exported from the fp16 folders, so the
exporter stores the same fp16 values (losslessly, see ``export/onnx_export.store_exact_fp16``) and what
serves is exactly what is shipped.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from fashiongen.runtime.errors import InputError
from fashiongen.runtime.files import atomic_file, staged_folder
from fashiongen.runtime.manifest import write_json_atomic

MARKER = "recipe.json"


def half_copy(source: Path, out: Path) -> Path:
    """Copy a diffusers / transformers folder with every floating-point safetensors tensor stored in fp16.

    Loading it in fp32 gives exactly the fp16 values, so the copy is the model that is exported and measured."""
    import torch
    from tokenizers import Tokenizer

    out = Path(out)
    with staged_folder(out, "model_index.json" if (Path(source) / "model_index.json").exists() else "config.json",
                       "a model folder") as stage:
        for path in sorted(Path(source).rglob("*")):
            if not path.is_file() or "checkpoints" in path.parts:
                continue
            target = stage / path.relative_to(source)
            target.parent.mkdir(parents=True, exist_ok=True)
            if path.suffix == ".safetensors":
                half_tensors(path, target)
            elif path.name == "tokenizer.json":  # without indentation: 1.7 MB for CLIP's, not 3.6
                Tokenizer.from_file(str(path)).save(str(target), pretty=False)
            else:
                shutil.copy2(path, target)
        torch.cuda.empty_cache()  # no-op on CPU; keeps the copy free of device state
    return out


def half_tensors(source: Path, out: Path) -> Path:
    """A safetensors file with its floating-point tensors stored in fp16 (a LoRA file, a model's weights); its
    metadata (a LoRA's format, alphas) kept."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(source), framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
        metadata = f.metadata() or {"format": "pt"}
    tensors = {k: t.half() if t.is_floating_point() else t for k, t in tensors.items()}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(out) as tmp:
        save_file(tensors, tmp, metadata=metadata)
    return out


def half_embedding(source: Path, out: Path) -> Path:
    """An A1111 ``.pt`` learned token with its vectors stored in fp16: the text encoder's table then holds only
    fp16 values, so export stores it in fp16 (:func:`~fashiongen.export.onnx_export.store_exact_fp16`); one fp32
    vector kept the whole 49,410-row table in fp32 (12.9 MB, not 6.5)."""
    import torch

    data = torch.load(source, map_location="cpu", weights_only=True)
    data["string_to_param"] = {k: v.detach().half() for k, v in data["string_to_param"].items()}
    with atomic_file(Path(out)) as tmp:
        torch.save(data, tmp)
    return Path(out)


def copy_engines(source: Path, out: Path) -> None:
    """An engine folder without ``cache/`` (ONNX Runtime writes its CPU-specific graph there on first load)."""
    shutil.copytree(source, out, ignore=shutil.ignore_patterns("cache"))


PARTS = ("worn", "product", "few-step", "segmenter", "catalog", "pix2pix")
#: What each part puts into the shipped folder, so that shipping some parts can keep the others as they are:
#: ``weights/X`` is the work folder's ``release/X`` (fp16), ``engines/X`` its ``engines/X``. The editor ships as its
#: engine folder alone (its text encoder and VAE are the product model's, and the runtime reads only the engines;
#: its fp16 weights, 11 MB, would not fit the package's budget beside them). ``few-step`` is approach 3's tiny
#: decoder and LCM-LoRA, for `export --tiny-vae --lcm-lora` (the product engines hold the tiny decoder; the folder
#: with the LoRA merged is another UNet, 6.3 MB, left to that one command).
PART_FOLDERS = {"worn": ("weights/worn", "weights/embeddings", "engines/worn"),
                "product": ("weights/product", "engines/product"),
                "few-step": ("weights/tiny-vae", "weights/lcm-lora"),
                "segmenter": ("weights/segmenter", "engines/segmenter"),
                "catalog": ("catalog", "engines/catalog", "engines/captioner"),
                "pix2pix": ("engines/pix2pix",)}
#: Where the shipped catalog index finds its images, relative to itself (``engines/catalog`` -> ``catalog``).
CATALOG_FROM_INDEX = "../../catalog"


def ship_family(work: Path, target: Path, recipe: dict, parts: tuple[str, ...] = PARTS) -> Path:
    """``target/weights/*`` (fp16 model folders, and the learned tokens with ``worn``), ``target/engines/*`` and
    ``recipe.json``, for the ``parts`` of the family that are shipped (a part left out: its name then says "not
    installed"); byte-identical files are stored once (:func:`link_duplicates`).

    Parts shipped before and not named stay as they are (their recipe wall times too): a part trained later,
    such as the catalog, ships without retraining the rest."""
    work, target = Path(work), Path(target)
    unknown = sorted(set(parts) - set(PARTS))
    if unknown or not parts:
        raise InputError(f"parts: expected some of {', '.join(PARTS)}, got {', '.join(parts) or 'none'}")
    before = json.loads((target / MARKER).read_text()) if (target / MARKER).is_file() else {}
    kept = [name for name in before.get("shipped", []) if name in PARTS and name not in parts]
    with staged_folder(target, MARKER, "a shipped demo family", arg="target") as stage:
        for name in kept:
            for folder in PART_FOLDERS[name]:
                if (target / folder).is_dir():
                    copy_engines(target / folder, stage / folder)  # without ONNX Runtime's cache/
        for name in parts:
            if name == "catalog":
                ship_catalog(work, stage)
                continue
            for folder in PART_FOLDERS[name]:
                kind, part = folder.split("/")
                if kind == "weights":
                    shutil.copytree(work / "release" / part, stage / folder)
                else:
                    copy_engines(work / "engines" / part, stage / folder)
        shipped = [name for name in PARTS if name in kept or name in parts]
        folders = [stage / folder for name in shipped for folder in PART_FOLDERS[name]]
        link_duplicates(sorted(folders, key=lambda f: f.parent.name == "weights"))  # engine folders own their files
        with atomic_file(stage / MARKER) as tmp:
            tmp.write_text(json.dumps({**merged_recipe(before, recipe), "shipped": shipped}, indent=2,
                                      sort_keys=True) + "\n")
    return target


#: Files smaller than this are not linked (but ONNX graphs, whose weights may be): a link saves nothing there.
LINK_MIN_BYTES = 64 * 1024


def link_duplicates(folders: list[Path]) -> int:
    """Replace each file of ``folders`` (in their order, each's files sorted) that is byte-identical to an
    earlier one by a relative symbolic link to it; return the bytes saved.

    The family's folders repeat whole networks: the editor's text encoder, VAE and tokenizer are the product
    model's, DeepCache's capture part holds the UNet's weights, every CLIP tokenizer is the same; each copy
    counts against the package's 100 MB. Links keep every folder complete where it is, for the runtime and for
    diffusers alike; an installed wheel holds copies. Earlier folders own the files (the product's engines, not
    the editor's; engines before weights), so the folders a user is likeliest to copy hold real files."""
    import hashlib

    owner: dict[tuple[int, str, str | None], Path] = {}
    saved = 0
    for folder in folders:
        for path in sorted(p for p in folder.rglob("*") if p.is_file() and not p.is_symlink()):
            size = path.stat().st_size
            if size < LINK_MIN_BYTES and path.suffix != ".onnx":  # a graph goes where its weights go
                continue
            key = (size, hashlib.sha256(path.read_bytes()).hexdigest(), _weights_hash(path))
            if key not in owner or not _may_link(path, owner[key]):
                owner.setdefault(key, path)
                continue
            path.unlink()
            path.symlink_to(os.path.relpath(owner[key], path.parent))
            saved += size
    return saved


def _weights_hash(path: Path) -> str | None:
    """A graph's external weights (``X.onnx.data``) are part of what it is: two exports of one architecture can
    write the same graph bytes beside different weights, and a graph linked to the other's would load those."""
    import hashlib

    data = path.with_name(path.name + ".data")
    return hashlib.sha256(data.read_bytes()).hexdigest() if path.suffix == ".onnx" and data.is_file() else None


def _may_link(path: Path, target: Path) -> bool:
    """ONNX Runtime reads a model's external data (``X.onnx.data``) only from the folder the model's real path is
    in: such a file links to another folder only where its ``X.onnx`` already links there."""
    if not path.name.endswith(".onnx.data") or target.parent == path.parent:
        return True
    model = path.with_name(path.name.removesuffix(".data"))
    return model.is_symlink() and model.resolve().parent == target.parent.resolve()


def merged_recipe(before: dict, recipe: dict) -> dict:
    """``recipe`` with the stages this work folder did not run (no wall time) as ``before`` recorded them: a part
    kept from an earlier shipment keeps the commands and times it was made with (and notes ``before`` holds)."""
    made = {name for name, seconds in recipe.get("wall_seconds", {}).items() if seconds}
    old = {stage["name"]: stage for stage in before.get("stages", [])}
    stages = [stage if stage["name"] in made or stage["name"] not in old else old[stage["name"]]
              for stage in recipe.get("stages", [])]
    times = {**before.get("wall_seconds", {}), **{k: v for k, v in recipe.get("wall_seconds", {}).items() if v}}
    return {**before, **recipe, "stages": stages, "wall_seconds": times}


def ship_catalog(work: Path, stage: Path) -> None:
    """The demo catalog (its images and metadata), its index with the index's CLIP engine folder (the demo
    CLIP: one copy) and the fp16 captioner. The index is made to travel: it finds its catalog relative to
    itself, and names its CLIP and captioner by their demo names instead of this machine's paths."""
    shutil.copytree(work / "catalog", stage / "catalog")
    copy_engines(work / "engines" / "catalog", stage / "engines" / "catalog")
    shutil.copytree(work / "release" / "captioner", stage / "engines" / "captioner")
    index_file = stage / "engines" / "catalog" / "index.json"
    meta = json.loads(index_file.read_text())
    meta["catalog"] = CATALOG_FROM_INDEX
    meta["clip"]["source"], meta["captioner"]["source"] = "demo-clip", "demo-captioner"
    write_json_atomic(index_file, meta)

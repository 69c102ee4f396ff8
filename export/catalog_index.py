"""``fashiongen index``: caption a catalog with BLIP, embed it with CLIP, store faiss indexes.

An offline batch job (torch for BLIP and for exporting CLIP once). The CLIP that embeds the catalog is
exported into the index (``INDEX_DIR/clip``) and its ONNX image tower embeds the images, so that the
query path later uses the very same networks, torch-free (``runtime.retrieval``). Captions are embedded
with the same CLIP's text tower.

Incremental: each image is known by its path (relative to the catalog) and the sha256 of its bytes. A
re-run embeds and captions only new or changed images, keeps the vectors of the others and drops removed
ones. Files that cannot be read as images are skipped and reported; the rest is indexed. The new index is
built beside ``INDEX_DIR`` and renamed into place, so the folder on disk is always a complete index.
A different CLIP (or captioner) than the index was built with is refused unless ``rebuild``.

The CLIP is a transformers checkpoint, exported here, or a CLIP engine folder already exported (another
index's ``clip/``, the shipped ``demo-clip``), copied as it is: the demo family ships its CLIP only as ONNX.
"""
from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np

from fashiongen.runtime.errors import InputError
from fashiongen.runtime.files import link_or_copy, staged_folder
from fashiongen.runtime.images import load_rgb_image
from fashiongen.runtime.manifest import MANIFEST_NAME, sha256_file, write_json_atomic
from fashiongen.runtime.retrieval import (CLIP_FOLDER, FAISS_FILES, IMAGE_SUFFIXES, INDEX_FORMAT, INDEX_META, CatalogIndexError,
                               ClipEncoder, load_index_meta, read_faiss, stored_vectors, write_faiss_files)

from .clip_export import check_clip_checkpoint, checkpoint_fingerprint, export_clip_folder
from .sd_export import CheckpointError, quiet_libraries

CAPTION_MAX_TOKENS = 30


@dataclass
class IndexReport:
    index_dir: Path
    total: int = 0
    added: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    kept: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)   # (path, why)
    clip_exported: bool = False
    seconds: float = 0.0

    def summary(self) -> str:
        lines = [f"indexed {self.index_dir}: {self.total} images ({len(self.added)} new, {len(self.updated)} changed, "
                 f"{self.kept} unchanged, {len(self.removed)} removed) in {self.seconds:.1f} s"]
        if self.clip_exported:
            lines.append(f"  CLIP exported to {self.index_dir / CLIP_FOLDER}")
        if self.skipped:
            lines.append(f"  skipped {len(self.skipped)} unreadable file(s):")
            lines += [f"    {path}: {why}" for path, why in self.skipped]
        return "\n".join(lines)


# -- the catalog ------------------------------------------------------------------------------------------
def scan_catalog(catalog_dir: Path) -> list[str]:
    """Image files under ``catalog_dir`` (recursive, hidden files and folders left out), relative, sorted."""
    catalog_dir = Path(catalog_dir)
    if not catalog_dir.exists():
        raise CatalogIndexError(f"CATALOG_DIR: '{catalog_dir}' does not exist")
    if not catalog_dir.is_dir():
        raise CatalogIndexError(f"CATALOG_DIR: '{catalog_dir}' is not a folder")
    found = []
    for root, dirs, files in os.walk(catalog_dir):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in files:
            if not name.startswith(".") and Path(name).suffix.lower() in IMAGE_SUFFIXES:
                found.append(str((Path(root) / name).relative_to(catalog_dir)))
    if not found:
        raise CatalogIndexError(f"CATALOG_DIR: '{catalog_dir}' holds no images ({', '.join(IMAGE_SUFFIXES)})")
    return sorted(found)


# -- BLIP -------------------------------------------------------------------------------------------------
class Captioner:
    """A local ``BlipForConditionalGeneration`` checkpoint: images to captions (greedy, as the hub card)."""

    def __init__(self, model_dir: Path, arg: str = "--captioner"):
        from transformers import BlipForConditionalGeneration, BlipProcessor

        model_dir = Path(model_dir)
        if not model_dir.is_dir() or not (model_dir / "config.json").is_file():
            raise CheckpointError(f"{arg}: '{model_dir}' is not a BLIP checkpoint folder (config.json expected)")
        quiet_libraries()
        try:
            self.model = BlipForConditionalGeneration.from_pretrained(model_dir, local_files_only=True).eval()
            self.processor = BlipProcessor.from_pretrained(model_dir, local_files_only=True)
        except (OSError, ValueError) as exc:
            first = str(exc).strip().splitlines()[0]
            raise CheckpointError(f"{arg}: cannot load '{model_dir}' as a BLIP captioner: {first}") from None
        self.fingerprint = checkpoint_fingerprint(model_dir)
        self.source = str(model_dir.absolute())

    def __call__(self, images: list[np.ndarray]) -> list[str]:
        return caption_images(self.model, self.processor, images)


def caption_images(model, processor, images: list[np.ndarray]) -> list[str]:
    """Greedy captions of uint8 RGB images, as the index writes them (``train-captioner`` scores its held-out
    images with this too, so its numbers are the index's)."""
    import torch
    from PIL import Image

    inputs = processor(images=[Image.fromarray(i) for i in images], return_tensors="pt").to(model.device)
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=CAPTION_MAX_TOKENS)
    return [c.strip() for c in processor.batch_decode(out, skip_special_tokens=True)]


def _link_tree(src: Path, dst: Path) -> None:
    """Copy a folder by hard links where the file system allows (the CLIP weights are large), without the
    CPU-specific graph cache ONNX Runtime may have written into an engine folder."""
    shutil.copytree(src, dst, copy_function=link_or_copy, ignore=shutil.ignore_patterns("cache"))


def is_clip_engine_folder(clip_dir: Path) -> bool:
    """Whether ``--clip`` names an exported CLIP engine folder (a manifest) rather than a checkpoint."""
    return (Path(clip_dir) / MANIFEST_NAME).is_file()


# -- the build --------------------------------------------------------------------------------------------
def _previous(out_dir: Path, rebuild: bool) -> dict | None:
    if rebuild or not (Path(out_dir) / INDEX_META).is_file():
        return None
    return load_index_meta(out_dir, "--out")


def _resolve_clip(old: dict | None, clip_dir: Path | None) -> str | None:
    """The fingerprint of ``clip_dir`` (None: reuse the index's own); refuses a CLIP other than the index's."""
    if clip_dir is None:
        if old is None:
            raise CatalogIndexError("--clip DIR is needed to build a new index (a local CLIP checkpoint)")
        return None
    if is_clip_engine_folder(clip_dir):  # refused here, in one line, when it is not a CLIP folder
        fingerprint = ClipEncoder.open(clip_dir, arg="--clip").fingerprint
    else:
        fingerprint = checkpoint_fingerprint(check_clip_checkpoint(clip_dir))
    if old is not None and old["clip"]["fingerprint"] != fingerprint:
        raise CatalogIndexError(
            f"--clip: '{clip_dir}' is CLIP {fingerprint[:12]} but the index was built with CLIP "
            f"{old['clip']['fingerprint'][:12]} (from {old['clip'].get('source')}); vectors from two CLIPs do not mix: "
            "add --rebuild to re-embed the whole catalog, or write a new --out")
    return fingerprint


def _resolve_captioner(old: dict | None, captioner_dir: Path | None) -> Captioner | None:
    recorded = old.get("captioner") if old else None
    if captioner_dir is None and recorded is None:
        return None
    if captioner_dir is None:  # the recorded captioner, if it is still where it was
        captioner_dir = Path(recorded["source"])
        if not captioner_dir.is_dir():
            raise CatalogIndexError(f"the index's captions come from '{captioner_dir}', which is gone: pass "
                                    "--captioner DIR (the same BLIP), or --rebuild")
    captioner = Captioner(captioner_dir)
    if recorded is not None and recorded["fingerprint"] != captioner.fingerprint:
        raise CatalogIndexError(f"--captioner: '{captioner_dir}' is not the BLIP the index was captioned with "
                                f"({recorded['source']}); add --rebuild to re-caption the whole catalog")
    return captioner


def _read(catalog: Path, rel: str) -> tuple[np.ndarray | None, str | None]:
    try:
        return load_rgb_image(catalog / rel, "CATALOG_DIR"), None
    except InputError as exc:
        return None, str(exc).split(f"'{catalog / rel}' ", 1)[-1]


def build_index(catalog_dir: Path, out_dir: Path, clip_dir: Path | None = None, captioner_dir: Path | None = None,
                batch_size: int = 16, approximate: bool = False, rebuild: bool = False,
                progress: bool = True) -> IndexReport:
    """Build or update the index of ``catalog_dir`` at ``out_dir``; what changed, as an :class:`IndexReport`."""
    from tqdm.auto import tqdm

    start = time.perf_counter()
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InputError(f"--batch-size must be an integer >= 1 (got {batch_size!r})")
    catalog = Path(catalog_dir).absolute()
    files = scan_catalog(catalog)
    out_dir = Path(out_dir).absolute()
    if out_dir == catalog or catalog in out_dir.parents:
        raise CatalogIndexError(f"--out: '{out_dir}' is inside CATALOG_DIR; put the index elsewhere")
    report = IndexReport(out_dir)
    old = _previous(out_dir, rebuild)
    new_clip = _resolve_clip(old, clip_dir)
    captioner = _resolve_captioner(old, captioner_dir)
    old_items = {item["path"]: (row, item) for row, item in enumerate(old["items"])} if old else {}
    recaption_all = captioner is not None and old is not None and old.get("captioner") is None

    with staged_folder(out_dir, INDEX_META, "a catalog index") as stage:
        if new_clip is None or (old is not None and (out_dir / CLIP_FOLDER).is_dir()
                                and old["clip"]["fingerprint"] == new_clip):
            _link_tree(out_dir / CLIP_FOLDER, stage / CLIP_FOLDER)
        elif is_clip_engine_folder(clip_dir):
            _link_tree(clip_dir, stage / CLIP_FOLDER)
        else:
            export_clip_folder(clip_dir, stage / CLIP_FOLDER, progress=False)
            report.clip_exported = True
        clip = ClipEncoder.open(stage / CLIP_FOLDER)

        old_image = old_caption = None
        if old_items:
            old_image = stored_vectors(read_faiss(out_dir / FAISS_FILES["image"]))
            if old.get("captioner") is not None:
                old_caption = stored_vectors(read_faiss(out_dir / FAISS_FILES["caption"]))

        items, image_rows, caption_rows = [], [], []
        todo: list[int] = []  # positions in `items` that need embedding (and captioning)
        uncaptioned: list[int] = []
        for rel in files:
            digest = sha256_file(catalog / rel)
            previous = old_items.get(rel)
            if previous is not None and previous[1]["sha256"] == digest:
                row, item = previous
                items.append(dict(item))
                image_rows.append(old_image[row])
                caption_rows.append(old_caption[row] if old_caption is not None else None)
                report.kept += 1
                if recaption_all:
                    uncaptioned.append(len(items) - 1)
                continue
            (report.updated if previous is not None else report.added).append(rel)
            items.append({"path": rel, "sha256": digest, "caption": None})
            image_rows.append(None)
            caption_rows.append(None)
            todo.append(len(items) - 1)
        report.removed = sorted(set(old_items) - set(files))

        bar = tqdm(total=len(todo) + len(uncaptioned), unit="image", desc="index", disable=not progress)
        failed: set[int] = set()
        work = todo + uncaptioned
        for start_at in range(0, len(work), batch_size):
            batch = work[start_at:start_at + batch_size]
            images, kept = [], []
            for pos in batch:
                image, why = _read(catalog, items[pos]["path"])
                if image is None:
                    report.skipped.append((items[pos]["path"], why))
                    failed.add(pos)
                else:
                    images.append(image)
                    kept.append(pos)
            if kept:
                captions = captioner(images) if captioner is not None else [None] * len(kept)
                fresh = {pos for pos in kept if image_rows[pos] is None}
                vectors = clip.encode_images([im for im, pos in zip(images, kept) if pos in fresh], batch_size)
                for pos, vector in zip([p for p in kept if p in fresh], vectors):
                    image_rows[pos] = vector
                if captioner is not None:
                    for pos, caption, vector in zip(kept, captions, clip.encode_text(captions)):
                        items[pos]["caption"] = caption
                        caption_rows[pos] = vector
            bar.update(len(batch))
        bar.close()

        keep = [i for i in range(len(items)) if i not in failed]
        for pos in failed:  # a skipped file is not indexed, whatever it was before
            path = items[pos]["path"]
            for group in (report.added, report.updated):
                if path in group:
                    group.remove(path)
        if not keep:
            raise CatalogIndexError(f"CATALOG_DIR: no image in '{catalog}' could be read; "
                                    + "; ".join(f"{p}: {why}" for p, why in report.skipped))
        items = [items[i] for i in keep]
        image_vectors = np.stack([image_rows[i] for i in keep]).astype(np.float32)
        caption_vectors = (np.stack([caption_rows[i] for i in keep]).astype(np.float32)
                           if captioner is not None else None)
        write_faiss_files(stage, image_vectors, caption_vectors, approximate)
        meta = {
            "format": INDEX_FORMAT,
            "catalog": str(catalog),
            "clip": {"fingerprint": clip.fingerprint, "source": clip.source},
            "captioner": ({"fingerprint": captioner.fingerprint, "source": captioner.source}
                          if captioner is not None else None),
            "index_type": "hnsw" if approximate else "flat",
            "metric": "cosine (inner product of unit vectors)",
            "items": items,
            "skipped": [{"path": p, "why": w} for p, w in report.skipped],
        }
        write_json_atomic(stage / INDEX_META, meta)
        report.total = len(items)
    report.seconds = time.perf_counter() - start
    return report

"""Catalog retrieval, torch-free: CLIP towers over any engine backend, and faiss indexes of a catalog.

An index folder (written by ``fashiongen index``)::

    index.json          format, the CLIP fingerprint, the captioner, the catalog root (absolute, or relative
                        to the index folder: a shipped index travels with its catalog), one item per row
                        (path relative to the catalog, sha256 of the file, BLIP caption)
    image.faiss         unit CLIP image vectors, row i = item i           (exact inner product: IndexFlatIP)
    caption.faiss       unit CLIP text vectors of the captions            (only when captioned)
    both.faiss          [image, caption] / sqrt(2): inner product = mean of the two cosines
    clip/               the CLIP engine folder (kind "clip") that made the vectors, so a query needs nothing else

A query is embedded with the same CLIP's text tower (cosine = inner product of unit vectors) and searched
with faiss: exact by default, HNSW when the index was built ``--approximate``. ``match`` picks the
vectors: ``image`` (text → image), ``caption`` (text → caption text), ``both`` (mean of the two).
A query tower from another CLIP (``clip_engines``) is refused: its vectors live in another space.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .engines import EngineFactory, EngineSet
from .errors import InputError
from .files import marker_file
from .images import as_rgb, resized_shape
from .manifest import KINDS, EngineFolderError, load_manifest
from .tokenizer import PromptTokenizer

INDEX_FORMAT = 1
INDEX_META = "index.json"
CLIP_FOLDER = "clip"
MATCHES = ("both", "image", "caption")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
FAISS_FILES = {"image": "image.faiss", "caption": "caption.faiss", "both": "both.faiss"}


class CatalogIndexError(InputError):
    """An index folder that is missing, damaged, or does not fit the request; the message says which."""


def unit(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (float32), so inner products are cosines."""
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), np.float32(1e-12))


# -- CLIP -------------------------------------------------------------------------------------------------
class ClipEncoder:
    """CLIP's two towers from a CLIP engine folder: unit text and image embeddings in the joint space."""

    def __init__(self, engines: EngineSet, arg: str = "clip_engines"):
        manifest = engines.manifest
        missing = [n for n in ("clip_text", "clip_image") if n not in manifest.networks]
        if missing or manifest.clip is None or not manifest.clip.fingerprint:
            holds = KINDS.get(manifest.kind, (f"a '{manifest.kind}' folder",))[0]
            raise EngineFolderError(f"{arg}: '{engines.engine_dir}' is not a CLIP engine folder (it holds {holds}; "
                                    f"no {', '.join(missing) or 'clip section'})")
        self.engines = engines
        self.tokenizer = PromptTokenizer.from_manifest_section(engines.engine_dir, manifest.tokenizer)
        self.fingerprint: str = manifest.clip.fingerprint
        self.source: str = manifest.source.get("clip", "?")
        self.preprocessing: dict = manifest.clip.image
        self.dim = int(manifest.dims["clip_projection"])

    @classmethod
    def open(cls, engine_dir: Path, factory: EngineFactory | None = None, arg: str = "clip_engines") -> "ClipEncoder":
        return cls(EngineSet(engine_dir, factory, load_manifest(engine_dir, arg)), arg)

    def encode_text(self, prompts: list[str]) -> np.ndarray:
        ids = self.tokenizer.encode_batch(list(prompts))
        return unit(self.engines["clip_text"].run({"input_ids": ids})["text_embeds"])

    def preprocess(self, image: np.ndarray) -> np.ndarray:
        """uint8 image to CLIP pixel values (3 x S x S), as transformers' ``CLIPImageProcessor`` makes them."""
        return ClipPreprocess(self.preprocessing)(image)

    def encode_images(self, images: list[np.ndarray], batch_size: int = 16) -> np.ndarray:
        out = [np.zeros((0, self.dim), np.float32)]
        for start in range(0, len(images), batch_size):
            pixels = np.stack([self.preprocess(i) for i in images[start:start + batch_size]])
            out.append(self.engines["clip_image"].run({"pixel_values": pixels})["image_embeds"])
        return unit(np.concatenate(out))


@dataclass(frozen=True)
class ClipPreprocess:
    """``CLIPImageProcessor``'s steps with a checkpoint's settings (the manifest's ``clip.image`` section, as
    ``export.clip_export.image_preprocessing`` reads them), in numpy and PIL.

    Two halves, so that ``train-clip`` can crop each image once and normalise each batch: :meth:`crop` (resize
    the shortest edge, center crop; uint8 in, uint8 out) and :meth:`normalize` (rescale, normalise, channels
    first); a call does both, which is what serving does to a catalog image.
    """

    settings: dict

    def crop(self, image: np.ndarray) -> np.ndarray:
        """uint8 HWC (RGBA composited onto white) resized and center-cropped to the model's input, uint8 HWC."""
        from PIL import Image

        cfg = self.settings
        image = as_rgb(image)
        if cfg["do_resize"]:
            height, width = resized_shape(*image.shape[:2], cfg["size"])
            image = np.asarray(Image.fromarray(image).resize((width, height), resample=cfg["resample"]))
        if cfg["crop_size"]:
            image = center_crop(image, cfg["crop_size"]["height"], cfg["crop_size"]["width"])
        return image

    def normalize(self, images: np.ndarray) -> np.ndarray:
        """uint8 [..., H, W, 3] to float32 [..., 3, H, W]: rescaled (in float64, as transformers) and normalised."""
        cfg = self.settings
        x = (images.astype(np.float64) * cfg["rescale_factor"]).astype(np.float32)
        x = (x - np.asarray(cfg["image_mean"], np.float32)) / np.asarray(cfg["image_std"], np.float32)
        return np.ascontiguousarray(np.moveaxis(x, -1, -3), dtype=np.float32)

    def __call__(self, image: np.ndarray) -> np.ndarray:
        return self.normalize(self.crop(image))


def center_crop(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Center crop (zero padding where the image is smaller), as transformers' ``center_crop``."""
    h, w = image.shape[:2]
    if h < height or w < width:
        padded = np.zeros((max(h, height), max(w, width), image.shape[2]), image.dtype)
        top, left = math.ceil((padded.shape[0] - h) / 2), math.ceil((padded.shape[1] - w) / 2)
        padded[top:top + h, left:left + w] = image
        image, h, w = padded, *padded.shape[:2]
    top, left = (h - height) // 2, (w - width) // 2
    return image[top:top + height, left:left + width]


# -- faiss ------------------------------------------------------------------------------------------------
def _faiss():
    try:
        import faiss
    except ImportError:
        raise CatalogIndexError("catalog search needs faiss: pip install 'fashiongen[retrieval]'") from None
    return faiss


def build_faiss(vectors: np.ndarray, approximate: bool = False):
    """An inner-product faiss index over ``vectors`` (rows in order): exact flat, or HNSW."""
    faiss = _faiss()
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    index = (faiss.IndexHNSWFlat(vectors.shape[1], 32, faiss.METRIC_INNER_PRODUCT) if approximate
             else faiss.IndexFlatIP(vectors.shape[1]))
    index.add(vectors)
    return index


def combined_vectors(image: np.ndarray, caption: np.ndarray) -> np.ndarray:
    """``[image, caption] / sqrt(2)``: against ``[q, q] / sqrt(2)`` the inner product is the mean cosine."""
    return np.hstack([image, caption]).astype(np.float32) / np.float32(math.sqrt(2))


def read_faiss(path: Path):
    """A faiss index file; a damaged or missing one is a :class:`CatalogIndexError` naming it."""
    try:
        return _faiss().read_index(str(path))
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "unreadable"
        raise CatalogIndexError(f"{path}: cannot read faiss index ({first})") from None


def write_faiss_files(folder: Path, image: np.ndarray, caption: np.ndarray | None, approximate: bool) -> None:
    faiss = _faiss()
    faiss.write_index(build_faiss(image, approximate), str(Path(folder) / FAISS_FILES["image"]))
    if caption is not None:
        faiss.write_index(build_faiss(caption, approximate), str(Path(folder) / FAISS_FILES["caption"]))
        faiss.write_index(build_faiss(combined_vectors(image, caption), approximate),
                          str(Path(folder) / FAISS_FILES["both"]))


def stored_vectors(index) -> np.ndarray:
    """Every vector of a flat or HNSW faiss index, in row order."""
    return index.reconstruct_n(0, index.ntotal) if index.ntotal else np.zeros((0, index.d), np.float32)


# -- index folders ----------------------------------------------------------------------------------------
def load_index_meta(index_dir: Path, arg: str = "index_dir") -> dict:
    """Read and sanity-check an index folder's metadata; errors name ``arg``, the folder and what is wrong."""
    path = marker_file(index_dir, INDEX_META, arg, CatalogIndexError, "fashiongen index", "a catalog index folder")
    try:
        meta = json.loads(path.read_text())
        meta["items"], meta["clip"]["fingerprint"]  # noqa: B018 - the keys every index has
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise CatalogIndexError(f"{path}: not a valid catalog index ({exc})") from None
    if meta.get("format") != INDEX_FORMAT:
        raise CatalogIndexError(f"{path}: index format {meta.get('format')}, this runtime reads {INDEX_FORMAT}")
    return meta


@dataclass
class Hit:
    path: str               # relative to the catalog root
    score: float            # cosine (or mean of two cosines for match="both")
    caption: str | None
    row: int


class CatalogSearch:
    """Text → nearest catalog images, over an index folder."""

    def __init__(self, index_dir: Path, factory: EngineFactory | None = None, clip_engines: Path | None = None,
                 arg: str = "index_dir"):
        self.index_dir = Path(index_dir)
        self.meta = load_index_meta(self.index_dir, arg)
        self.items: list[dict] = self.meta["items"]
        own = self.index_dir / CLIP_FOLDER
        self.clip = ClipEncoder.open(clip_engines or own, factory, "clip_engines" if clip_engines else arg)
        want = self.meta["clip"]["fingerprint"]
        if self.clip.fingerprint != want:
            where = f"clip_engines '{clip_engines}'" if clip_engines else f"its own copy '{own}'"
            raise CatalogIndexError(
                f"{arg}: '{self.index_dir}' was built with CLIP {want[:12]} (from {self.meta['clip'].get('source')}) "
                f"but {where} is CLIP {self.clip.fingerprint[:12]} (from {self.clip.source}); their vectors are not "
                "comparable: query with the same CLIP, or re-index with `fashiongen index --rebuild --clip`")
        self.captioned = self.meta.get("captioner") is not None
        self._faiss: dict[str, object] = {}

    def _index(self, match: str):
        if match not in self._faiss:
            path = self.index_dir / FAISS_FILES[match]
            index = read_faiss(path)
            want_d = self.clip.dim * (2 if match == "both" else 1)
            if index.ntotal != len(self.items) or index.d != want_d:
                raise CatalogIndexError(f"{path}: holds {index.ntotal} vectors of {index.d} dims; {INDEX_META} lists "
                                        f"{len(self.items)} items of {want_d} dims (damaged index: re-run `fashiongen index`)")
            self._faiss[match] = index
        return self._faiss[match]

    def resolve_match(self, match: str | None) -> str:
        if match is None:
            return "both" if self.captioned else "image"
        if match not in MATCHES:
            raise InputError(f"match: must be one of {', '.join(MATCHES)} (got {match!r})")
        if match != "image" and not self.captioned:
            raise CatalogIndexError(f"match: {match} needs captions, but '{self.index_dir}' has no captions (indexed "
                                    "without a captioner); match image works on it")
        return match

    def search(self, prompt: str, k: int = 5, match: str | None = None) -> list[Hit]:
        """The ``min(k, catalog size)`` nearest items, best first."""
        if not isinstance(prompt, str) or not prompt.strip():
            raise InputError("prompt: must be a non-empty string")
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise InputError(f"k: must be an integer >= 1 (got {k!r})")
        match = self.resolve_match(match)
        index = self._index(match)
        query = self.clip.encode_text([prompt])
        if match == "both":
            query = combined_vectors(query, query)
        k = min(int(k), len(self.items))
        if hasattr(index, "hnsw"):
            index.hnsw.efSearch = max(64, k)
        scores, rows = index.search(np.ascontiguousarray(query, dtype=np.float32), k)
        return [Hit(path=self.items[r]["path"], score=float(s), caption=self.items[r].get("caption"), row=int(r))
                for s, r in zip(scores[0], rows[0]) if r >= 0]

    def image_path(self, hit: Hit) -> Path:
        path = self.index_dir / self.meta["catalog"] / hit.path  # an absolute catalog root replaces index_dir
        if not path.is_file():
            raise CatalogIndexError(f"catalog image '{path}' (match for the prompt) is gone; re-run `fashiongen index`")
        return path

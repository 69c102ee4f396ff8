"""Reading a Hugging Face ``imagefolder`` data set: the one format every trainer here takes.

A folder holds images and a ``metadata.jsonl`` whose rows name them (``file_name``) with their columns
(``text`` for captions, ``label_file`` for segmentation maps, any attribute). ``fashiongen dataset`` writes
this layout and so can a user's own catalog; every row is checked before training starts, so a missing
image or a label map of another size fails in the first second, with the file named, not an hour in.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fashiongen.runtime.errors import InputError

METADATA = "metadata.jsonl"


@dataclass(frozen=True)
class Row:
    """One example: its image path, and every other column of its metadata row as given."""

    image: Path
    columns: dict

    @property
    def text(self) -> str:
        return self.columns["text"]

    def path(self, column: str) -> Path:
        """A file named by ``column`` (e.g. ``label_file``), relative to the folder like ``file_name``."""
        return self.image.parent / self.columns[column]


def read_rows(folder: Path, arg: str, require: tuple[str, ...] = ("text",), files: tuple[str, ...] = ()) -> list[Row]:
    """Every row of ``folder/metadata.jsonl``, each checked: the columns in ``require`` present and
    non-empty, its image and the files named by ``files`` columns present. Errors name ``arg`` and the row."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{arg}: '{folder}' is not a folder")
    meta = folder / METADATA
    if not meta.is_file():
        raise InputError(f"{arg}: '{folder}' has no {METADATA} (an imagefolder: rows with "
                         f"{' and '.join(('file_name',) + tuple(require))})")
    rows = []
    for number, line in enumerate(meta.read_text().splitlines(), 1):
        if not line.strip():
            continue
        where = f"{meta}:{number}"
        try:
            columns = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(f"{arg}: {where} is not JSON ({exc.msg})") from None
        if not isinstance(columns, dict) or not columns.get("file_name"):
            raise InputError(f"{arg}: {where} has no file_name")
        for name in require:
            if columns.get(name) in (None, ""):
                raise InputError(f"{arg}: {where} has no '{name}' (every row needs one)")
        row = Row(folder / columns["file_name"], columns)
        for name in ("file_name",) + files:
            path = folder / columns[name] if name in columns else None
            if path is None or not path.is_file():
                raise InputError(f"{arg}: {where}: {name} '{columns.get(name)}' is missing")
        rows.append(row)
    if not rows:
        raise InputError(f"{arg}: {meta} lists no images")
    return rows


def open_image(path: Path, arg: str):
    """The image at ``path`` as an RGB PIL image, or a one-line error naming it."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (UnidentifiedImageError, OSError) as exc:
        raise InputError(f"{arg}: '{path}' is not a readable image ({exc})") from None


def load_image(path: Path, size: int, arg: str) -> np.ndarray:
    """RGB uint8 HWC at ``size`` x ``size``: the shorter side resized to ``size`` (bicubic), then centre-cropped,
    as diffusers' text-to-image example prepares its images."""
    from PIL import Image

    return np.asarray(_square(open_image(path, arg), size, Image.BICUBIC))


def load_label_map(path: Path, image_path: Path, size: int | tuple[int, int], num_labels: int,
                   arg: str) -> np.ndarray:
    """A class-index map (uint8, mode L or P) the size of its image, resized like the image (nearest): an int
    ``size`` as :func:`load_image` does, a (height, width) whole to that shape as ``SegformerImageProcessor``
    resizes an image (a segmenter must see all of it)."""
    from PIL import Image

    with Image.open(path) as labels, Image.open(image_path) as image:
        if labels.size != image.size:
            raise InputError(f"{arg}: label map '{path}' is {labels.size[0]}x{labels.size[1]} but its image "
                             f"'{image_path.name}' is {image.size[0]}x{image.size[1]}")
        if labels.mode not in ("L", "P"):
            raise InputError(f"{arg}: label map '{path}' has mode {labels.mode}; expected class indices (L or P)")
        array = np.asarray(_square(labels, size, Image.NEAREST) if isinstance(size, int)
                           else labels.resize((size[1], size[0]), Image.NEAREST))
    if array.max() >= num_labels:
        raise InputError(f"{arg}: label map '{path}' has class {int(array.max())}; the model has {num_labels}")
    return array


def _square(image, size: int, resample):
    width, height = image.size
    scale = size / min(width, height)
    resized = image.resize((max(size, round(width * scale)), max(size, round(height * scale))), resample)
    left, top = (resized.size[0] - size) // 2, (resized.size[1] - size) // 2
    return resized.crop((left, top, left + size, top + size)) if resized.size != (size, size) else resized


def to_unit_range(images: np.ndarray) -> np.ndarray:
    """uint8 NHWC to float32 NCHW in [-1, 1], the range SD's VAE takes."""
    return (images.astype(np.float32) / 127.5 - 1.0).transpose(0, 3, 1, 2)


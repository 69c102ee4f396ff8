"""The demo model family that ships inside the package (trained by ``python -m fashiongen.training.demo``).

``fashiongen/demo_models/`` holds its engine folders (``engines/worn``: approach 1's text-to-image model with
its learned tokens; ``engines/product``: approach 3's; ``engines/product-fast``: approach 3's with its LCM-LoRA
merged, for ``--preset fast``; ``engines/segmenter``: the clothes segmenter; ``engines/pix2pix``: approach 2's
InstructPix2Pix editor, the default of ``edit``), its fp16 weights and ``recipe.json`` (how each was made).
Commands that take ``--engines`` default to them, and accept their names (``demo``, ``demo-product``,
``demo-product-fast``, ``demo-segmenter``, ``demo-pix2pix``) in place of a folder.
"""
from __future__ import annotations

from pathlib import Path

from fashiongen.runtime.errors import InputError

DEMO_DIR = Path(__file__).resolve().parent / "demo_models"
NAMES = {"demo": "worn", "demo-product": "product", "demo-product-fast": "product-fast", "demo-segmenter": "segmenter",
         "demo-pix2pix": "pix2pix"}


def installed(name: str) -> bool:
    """Whether the demo engine folder ``name`` (a key of :data:`NAMES`) ships in this install."""
    return (DEMO_DIR / "engines" / NAMES[name] / "manifest.json").is_file()


def engine_folder(value: Path | str | None, default: str, arg: str = "--engines") -> Path:
    """``value`` as given, a demo name resolved to its shipped folder, or the shipped ``default`` when None."""
    name = default if value is None else str(value)
    if name not in NAMES or (value is not None and Path(value).is_dir()):  # a folder of that name wins
        return Path(value)
    folder = DEMO_DIR / "engines" / NAMES[name]
    if not installed(name):
        raise InputError(f"{arg}: the demo engines '{name}' are not installed ({folder} missing); pass an engine "
                         "folder written by `fashiongen export`, or train the demo family: "
                         "`python -m fashiongen.training.demo --work DIR --ship`")
    return folder

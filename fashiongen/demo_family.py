"""The demo model family that ships inside the package (trained by ``python -m fashiongen.training.demo``).

``fashiongen/demo_models/`` holds its engine folders (``engines/worn``: approach 1's text-to-image model with
its learned tokens; ``engines/product``: approach 3's; ``engines/product-fast``: approach 3's with its LCM-LoRA
merged, for ``--preset fast``; ``engines/segmenter``: the clothes segmenter; ``engines/pix2pix``: approach 2's
InstructPix2Pix editor, the default of ``edit``), its fp16 weights and ``recipe.json`` (how each was made).
Commands that take ``--engines`` default to them, and accept their names (``demo``, ``demo-product``,
``demo-product-fast``, ``demo-segmenter``, ``demo-pix2pix``) in place of a folder.

Approach 2's retrieval half ships the same way: ``engines/catalog`` is the index of the demo catalog (the
product images in ``catalog/``), and its own CLIP engine folder ``engines/catalog/clip`` is the demo CLIP (one
copy: an index keeps the CLIP that embedded it); ``engines/captioner`` is the BLIP captioner (fp16 weights, a
transformers folder: captioning is ``index``'s torch side). ``search`` and ``edit --from-catalog`` default to
``demo-catalog``; ``index`` to ``demo-clip`` and ``demo-captioner`` for a new index.
"""
from __future__ import annotations

from pathlib import Path

from fashiongen.runtime.errors import InputError

DEMO_DIR = Path(__file__).resolve().parent / "demo_models"
NAMES = {"demo": "worn", "demo-product": "product", "demo-product-fast": "product-fast", "demo-segmenter": "segmenter",
         "demo-pix2pix": "pix2pix", "demo-catalog": "catalog", "demo-clip": "catalog/clip", "demo-captioner": "captioner"}
#: What a command takes in place of a demo folder that is not installed (the error says so).
WHAT_TO_PASS = {"demo-catalog": "an index folder written by `fashiongen index`",
                "demo-clip": "a local CLIP checkpoint or CLIP engine folder",
                "demo-captioner": "a local BLIP captioning checkpoint"}
#: The file that makes a shipped folder complete: an engine folder's manifest, unless named here.
MARKERS = {"demo-catalog": "index.json", "demo-captioner": "config.json"}


def installed(name: str) -> bool:
    """Whether the demo folder ``name`` (a key of :data:`NAMES`) ships in this install."""
    return (DEMO_DIR / "engines" / NAMES[name] / MARKERS.get(name, "manifest.json")).is_file()


def engine_folder(value: Path | str | None, default: str, arg: str = "--engines") -> Path:
    """``value`` as given, a demo name resolved to its shipped folder, or the shipped ``default`` when None."""
    name = default if value is None else str(value)
    if name not in NAMES or (value is not None and Path(value).is_dir()):  # a folder of that name wins
        return Path(value)
    folder = DEMO_DIR / "engines" / NAMES[name]
    if not installed(name):
        raise InputError(f"{arg}: the demo engines '{name}' are not installed ({folder} missing); pass "
                         f"{WHAT_TO_PASS.get(name, 'an engine folder written by `fashiongen export`')}, or train the "
                         "demo family: "
                         "`python -m fashiongen.training.demo --work DIR --ship`")
    return folder

"""The data set's edit pairs: a catalog item, and the same item with one or two attributes changed.

InstructPix2Pix learns from pairs that differ *only* in the edit (the paper generates them with prompt-to-prompt
from one seed). Pairs of two catalog items one attribute apart differ in everything else too: pose, scale,
position, light, folds, the colour's jitter, so the source tells an editor little that the target's words do
not (the demo's first editor, trained on them, kept the source's other attributes under 5% of the time on
imperatives). Here the target is the source item re-rendered
with the edited garment from the item's own random stream: every draw of a render depends on the garment's
family only (and edits keep the family, :mod:`.edit_pairs`), so the two share every jitter and differ where the
garments do.

``fashiongen dataset --edit-pairs N`` writes, beside the views, ``DIR/edits/train/``: ``sources/00000.png`` (a
byte copy of the training item's product view), ``00000-0.png ...`` (its ``N`` edits) and ``metadata.jsonl``
rows in the InstructPix2Pix layout (diffusers' ``input_image``, ``edit_prompt``; the edited image is the
imagefolder's ``file_name``) with the target's caption as ``text``, ``changed``, the target's attributes and
``item``. Which edits: :func:`.edit_pairs.plan_edits` over every training combination. Torch-free.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .attributes import ATTRIBUTES, Garment, caption, training_garments
from .dataset import item_rng, render_garment, render_item, sample_garment, save_png
from .edit_pairs import imperative, neighbours, plan_edits

EDITS = "edits"


def render_edit(seed: int, index: int, garment: Garment, size: int = 128) -> np.ndarray:
    """Training item ``index`` of ``seed``'s product view with its garment replaced by ``garment`` (of the same
    family), every other draw the item's own."""
    rng = item_rng(seed, index)
    sample_garment(rng)  # the item's own garment draw, so that the render's draws follow as they did
    return render_garment(rng, garment, size)[2]


def write_edits(folder: Path, seed: int, size: int, items: range, per_item: int, bar=None) -> int:
    """Write ``per_item`` edits of each item in ``items`` (training items of ``seed``) into ``folder`` (created);
    return the number of pairs. ``bar``: a progress bar, advanced once a pair."""
    (folder / "sources").mkdir(parents=True)
    table = [tuple(sample_garment(item_rng(seed, index)).attributes().values()) for index in items]
    near = neighbours(sorted({tuple(g.attributes().values()) for g in training_garments()}, key=str))
    made = [0] * len(table)
    with open(folder / "metadata.jsonl", "w") as meta:
        for row, change, combination in plan_edits(table, near, np.random.default_rng(seed), per_item):
            index, source = items[row], f"sources/{row:05d}.png"
            if not made[row]:
                save_png(folder / source, render_item(seed, index, size).product, "RGB")
            target = Garment(**dict(zip(ATTRIBUTES, combination)))
            name = f"{row:05d}-{made[row]}.png"
            save_png(folder / name, render_edit(seed, index, target, size), "RGB")
            meta.write(json.dumps({"file_name": name, "input_image": source,
                                   "edit_prompt": imperative(table[row], combination, change),
                                   "text": caption(target), "changed": list(change), **target.attributes(),
                                   "item": index}) + "\n")
            made[row] += 1
            if bar is not None:
                bar.update(1)
    return sum(made)

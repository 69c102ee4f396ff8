"""``fashiongen dataset``: the procedural data set is deterministic from its seed, holds what its metadata
says (captions that parse to the row's attributes, label maps whose garment class is the type's), frames the
worn view for its garment, keeps the held-out combinations out of train and test, is torch-free, and refuses bad
input in one line."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fashiongen.training import attributes as at
from fashiongen.training.dataset import write_dataset
from trainer_checks import refused

SIZE = 64


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("dataset") / "set"
    write_dataset(root, count=8, seed=3, size=SIZE, test_fraction=0.25, unseen_count=3, progress=False, edit_pairs=3)
    return root


def rows(root: Path, view: str, split: str) -> list[dict]:
    return [json.loads(line) for line in (root / view / split / "metadata.jsonl").read_text().splitlines()]


def test_the_vocabulary_is_the_one_asked_for():
    assert len(at.TYPES) >= 8 and len(at.COLOURS) >= 10
    assert {"black", "white", "grey", "navy", "blue", "red", "pink", "green", "yellow", "beige"} <= set(at.COLOURS)
    assert set(at.SLEEVES) == {"sleeveless", "short", "long"} and set(at.NECKLINES) == {"crewneck", "v-neck", "scoop"}
    for garment in at.all_garments()[::37]:
        assert at.parse_caption(at.caption(garment)) == garment


def test_the_same_seed_draws_the_same_files_and_another_seed_does_not(dataset, tmp_path):
    again = tmp_path / "again"
    write_dataset(again, count=8, seed=3, size=SIZE, test_fraction=0.25, unseen_count=3, progress=False, edit_pairs=3)
    files = sorted(p.relative_to(dataset) for p in dataset.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    assert all((dataset / f).read_bytes() == (again / f).read_bytes() for f in files)
    other = tmp_path / "other"
    write_dataset(other, count=8, seed=4, size=SIZE, test_fraction=0.25, unseen_count=3, progress=False)
    assert (other / "worn/train/00000.png").read_bytes() != (dataset / "worn/train/00000.png").read_bytes()


def test_rows_match_their_images_captions_and_label_maps(dataset):
    for split, count in (("train", 6), ("test", 2), ("unseen", 3)):
        worn, product = rows(dataset, "worn", split), rows(dataset, "product", split)
        assert len(worn) == len(product) == count
        for w, p in zip(worn, product):
            assert w["text"] == p["text"] and at.caption(at.parse_caption(w["text"])) == w["text"]
            assert {a: w[a] for a in at.ATTRIBUTES} == at.parse_caption(w["text"]).attributes()
            image = np.asarray(Image.open(dataset / "worn" / split / w["file_name"]))
            labels = np.asarray(Image.open(dataset / "worn" / split / w["label_file"]))
            assert image.shape == (SIZE, SIZE, 3) and labels.shape == (SIZE, SIZE) and labels.max() < 18
            assert (labels == at.TYPE_SPECS[w["type"]].segment_class).mean() > 0.005, w["text"]
            shot = np.asarray(Image.open(dataset / "product" / split / p["file_name"]))
            assert (shot[0, 0] == 255).all() and (shot[-1, -1] == 255).all()  # on white
            assert (shot.min(axis=-1) < 240).mean() > 0.05  # with a garment on it


def test_the_worn_view_is_framed_for_its_garment():
    """Head to just below the garment, as an on-model shot: a top fills over 30% of the frame's height (a whole
    figure left a crop top under a fifth, too few latent cells for its sleeves and neckline), every garment a
    fifth; the face is always in the frame, and shoes show where the garment reaches them."""
    from fashiongen.training.dataset import render_item

    face, shoe = at.SEGMENT_CLASSES.index("Face"), at.SEGMENT_CLASSES.index("Left-shoe")
    shoes_seen = False
    for index in range(40):
        item = render_item(5, index, size=128)
        rows_ = np.flatnonzero((item.labels == item.garment.spec.segment_class).any(axis=1))
        height = rows_[-1] - rows_[0] + 1
        assert height >= (0.3 if item.garment.spec.family == "top" else 0.2) * 128, (item.garment, height)
        assert (item.labels == face).any()
        shoes_seen |= bool((item.labels == shoe).any())
    assert shoes_seen


def test_held_out_combinations_appear_only_in_unseen(dataset):
    held_out = {at.caption(g) for g in at.HELD_OUT}
    assert all(r["text"] in held_out for r in rows(dataset, "worn", "unseen"))
    assert not any(r["text"] in held_out for split in ("train", "test") for r in rows(dataset, "worn", split))
    info = json.loads((dataset / "dataset.json").read_text())
    assert sorted(info["held_out"]) == sorted(held_out) and info["counts"] == {"train": 6, "test": 2, "unseen": 3}


def test_edit_pairs_are_the_training_item_with_only_the_edit_changed(dataset):
    from fashiongen.training.edit_pairs import changed_attributes, imperative

    items = {row["item"]: row for row in rows(dataset, "product", "train")}
    pairs = rows(dataset, "edits", "train")
    assert len(pairs) == 3 * len(items) and json.loads((dataset / "dataset.json").read_text())["edit_pairs"] == 18
    folder, colour_only = dataset / "edits" / "train", 0
    for pair in pairs:
        item = items[pair["item"]]
        source_path, target_path = folder / pair["input_image"], folder / pair["file_name"]
        assert source_path.read_bytes() == (dataset / "product" / "train" / item["file_name"]).read_bytes()
        source = tuple(item[a] for a in at.ATTRIBUTES)
        target = at.parse_caption(pair["text"])
        assert {a: pair[a] for a in at.ATTRIBUTES} == target.attributes()
        changed = changed_attributes(source, tuple(target.attributes().values()))
        assert list(changed) == pair["changed"] and 1 <= len(changed) <= 2
        assert pair["edit_prompt"] == imperative(source, tuple(target.attributes().values()), changed)
        a, b = np.asarray(Image.open(source_path)), np.asarray(Image.open(target_path))
        assert not np.array_equal(a, b)
        if changed == ("colour",):  # the same render but the colour: the same silhouette, the same place
            colour_only += 1
            assert np.array_equal((a < 250).any(-1), (b < 250).any(-1))
    assert colour_only


def test_it_imports_no_torch():
    code = "import sys, fashiongen.training.dataset; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_bad_input_is_refused_in_one_line(dataset, tmp_path):
    refused(lambda: write_dataset(tmp_path / "a", count=0, progress=False), "--count")
    refused(lambda: write_dataset(tmp_path / "a", count=2, size=60, progress=False), "--size")
    refused(lambda: write_dataset(tmp_path / "a", count=2, edit_pairs=-1, progress=False), "--edit-pairs")
    refused(lambda: write_dataset(dataset, count=2, progress=False), "--out", "not empty", "--overwrite")
    assert not (tmp_path / "a").exists()

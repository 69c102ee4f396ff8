"""The shipped demo family as the commands' defaults: ``generate``, ``cutout`` and ``edit`` need no engine folder.

A stand-in family built from the suite's tiny engine folders checks the wiring (names, defaults, the segmenter
fallback, the error when nothing is installed); the real shipped family, when this checkout has it, must draw
what the README promises: a black short-sleeve crop top, alone on white.
"""
from __future__ import annotations

import shutil
import warnings

import numpy as np
import pytest
from PIL import Image

from fashiongen import demo_family
from fashiongen.cli import main

GEN = ["--steps", "2", "--height", "64", "--width", "64", "--no-progress"]
EVERY_CLASS = ",".join(str(i) for i in range(18))  # the tiny segmenter's weights are random: cut out everything


@pytest.fixture
def stand_in(tmp_path, monkeypatch, sd_engines, segmenter_engines, p2p_engines):
    """DEMO_DIR holding the suite's tiny folders under the shipped names."""
    root = tmp_path / "demo_models"
    for name, source in (("worn", sd_engines), ("product", sd_engines), ("segmenter", segmenter_engines),
                         ("pix2pix", p2p_engines)):
        shutil.copytree(source, root / "engines" / name, ignore=shutil.ignore_patterns("cache"))
    monkeypatch.setattr(demo_family, "DEMO_DIR", root)
    return root


def one_line_error(capsys, *argv) -> str:
    assert main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_generate_and_cutout_default_to_the_demo(stand_in, tmp_path, capsys):
    shot = tmp_path / "shot.png"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the demo's own segmenter: no warning
        code = main(["generate", "--prompt", "black short sleeve crop top", "--cutout", EVERY_CLASS,
                     "--out", str(shot), *GEN])
    assert code == 0, capsys.readouterr().err
    assert Image.open(shot).size == (64, 64)
    out = tmp_path / "cut.png"
    assert main(["cutout", str(shot), "--class", EVERY_CLASS, "--out", str(out)]) == 0, capsys.readouterr().err
    assert out.is_file()


def test_edit_defaults_to_the_demo_editor(stand_in, tmp_path, capsys):
    assert demo_family.engine_folder(None, "demo-pix2pix") == stand_in / "engines" / "pix2pix"
    source, out = tmp_path / "in.png", tmp_path / "edited.png"
    Image.fromarray(np.full((64, 64, 3), 30, np.uint8)).save(source)
    assert main(["edit", "--image", str(source), "--prompt", "make it red", "--steps", "2", "--out", str(out),
                 "--no-progress"]) == 0, capsys.readouterr().err
    assert Image.open(out).size == (64, 64)


def test_demo_names_pick_a_shipped_folder(stand_in, tmp_path, capsys):
    assert demo_family.engine_folder("demo-product", "demo") == stand_in / "engines" / "product"
    assert main(["generate", "--engines", "demo-product", "--prompt", "red skirt", "--out",
                 str(tmp_path / "p.png"), *GEN]) == 0, capsys.readouterr().err
    (tmp_path / "demo").mkdir()  # a folder of the user's with a demo name is theirs
    assert demo_family.engine_folder(tmp_path / "demo", "demo") == tmp_path / "demo"


def test_a_folder_without_segmenter_borrows_the_demos_with_a_warning(stand_in, sd_engines, tmp_path, capsys):
    with pytest.warns(UserWarning, match="shipped demo segmenter"):
        code = main(["generate", "--engines", str(sd_engines), "--prompt", "crop top", "--cutout",
                     EVERY_CLASS, "--out", str(tmp_path / "s.png"), *GEN])
    assert code == 0, capsys.readouterr().err


def test_without_the_demo_the_error_says_what_to_pass(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(demo_family, "DEMO_DIR", tmp_path / "none")
    err = one_line_error(capsys, "generate", "--prompt", "crop top", "--out", tmp_path / "x.png", *GEN)
    assert "--engines" in err and "not installed" in err and "fashiongen export" in err
    err = one_line_error(capsys, "cutout", tmp_path / "x.png", "--class", "Skirt", "--out", tmp_path / "y.png")
    assert "not installed" in err or "does not exist" in err


# -- the real shipped family ----------------------------------------------------------------------------------
shipped = pytest.mark.skipif(not (demo_family.DEMO_DIR / "engines" / "worn" / "manifest.json").is_file(),
                             reason="this checkout has no shipped worn model (approach 1)")


@shipped
def test_the_readme_command_draws_a_black_crop_top_on_white(tmp_path, capsys):
    shot = tmp_path / "shot.png"
    assert main(["generate", "--prompt", "black short sleeve crewneck crop top", "--cutout", "auto",
                 "--out", str(shot), "--no-progress"]) == 0, capsys.readouterr().err
    image = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    garment = image.min(axis=-1) < 200
    assert 0.03 < garment.mean() < 0.6, garment.mean()  # a garment, not a blank square nor the whole frame
    assert (image[~garment] >= 240).all(axis=-1).mean() > 0.95  # on white
    assert np.median(image[garment].max(axis=-1)) < 90  # black


@pytest.mark.skipif(not demo_family.installed("demo-product"), reason="this checkout has no shipped product model")
def test_the_shipped_product_model_draws_a_black_crop_top_on_white(tmp_path, capsys):
    """Approach 3 with no flag but the folder's name: the README's prompt, the folder's own guidance."""
    shot = tmp_path / "shot.png"
    assert main(["generate", "--engines", "demo-product", "--prompt", "black short sleeve crewneck crop top",
                 "--seed", "19687", "--out", str(shot), "--no-progress"]) == 0, capsys.readouterr().err
    image = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    garment = image.min(axis=-1) < 200
    assert 0.03 < garment.mean() < 0.6, garment.mean()  # a garment, not a blank square nor the whole frame
    inner = garment[4:-4, 4:-4]  # the decoder's faint frame along the sides is not garment
    rows, cols = np.flatnonzero(inner.sum(axis=1) > 2), np.flatnonzero(inner.sum(axis=0) > 2)
    assert rows[-1] - rows[0] < 0.8 * (cols[-1] - cols[0])  # a crop top is wider than tall
    assert (image[~garment] >= 230).all(axis=-1).mean() > 0.9  # on white
    assert np.median(image[garment].max(axis=-1)) < 90  # black


@pytest.mark.skipif(not (demo_family.DEMO_DIR / "engines" / "segmenter" / "manifest.json").is_file(),
                    reason="this checkout has no shipped demo segmenter")
def test_the_shipped_segmenter_finds_the_garment_of_a_new_render(tmp_path, capsys):
    """On renders of a seed the segmenter never saw, the tops it cuts out cover their label maps' tops."""
    import json

    from fashiongen.runtime.cutout import CutoutPipeline
    from fashiongen.runtime.engines import EngineSet
    from fashiongen.training.attributes import SEGMENT_CLASSES
    from fashiongen.training.dataset import write_dataset

    write_dataset(tmp_path / "set", count=12, seed=4242, size=128, test_fraction=0.0, unseen_count=0, progress=False)
    folder = tmp_path / "set" / "worn" / "train"
    rows = [json.loads(line) for line in (folder / "metadata.jsonl").read_text().splitlines()]
    tops = [r for r in rows if r["type"] in ("t-shirt", "crop top", "tank top", "shirt", "sweater")]
    assert tops
    cutout = CutoutPipeline(EngineSet(demo_family.engine_folder(None, "demo-segmenter")))
    upper = SEGMENT_CLASSES.index("Upper-clothes")
    ious = []
    for row in tops:
        image = np.asarray(Image.open(folder / row["file_name"]).convert("RGB"))
        truth = np.asarray(Image.open(folder / row["label_file"])) == upper
        mask = cutout([image], [upper]).results[0].mask
        ious.append((mask & truth).sum() / max(1, (mask | truth).sum()))
    assert np.mean(ious) > 0.75, ious
    out = tmp_path / "top.png"  # and the command, with no --engines
    assert main(["cutout", str(folder / tops[0]["file_name"]), "--class", "Upper-clothes", "--out", str(out)]) == 0
    assert out.is_file(), capsys.readouterr().err


@pytest.mark.skipif(not demo_family.installed("demo-pix2pix"), reason="this checkout has no shipped editor")
@pytest.mark.parametrize("prompt", [
    "red short sleeve crewneck crop top",  # the target's caption, what approach 2 sends after retrieval
    pytest.param("make it red", marks=pytest.mark.xfail(strict=True, reason=(
        "the demo editor follows imperatives on 4% of held-out pairs (bench/results/edit_quality.md): it draws "
        "an orange maxi skirt here"))),
])
def test_the_shipped_editor_makes_a_black_top_red(prompt, tmp_path, capsys):
    """Approach 2's editor with no flag: a black crop top rendered from a seed no training saw comes back red (the
    garment's pixels red-dominant) and still a top (wider than tall), with the folder's own guidance."""
    from fashiongen.runtime.manifest import load_manifest
    from fashiongen.training.attributes import Garment
    from fashiongen.training.dataset import item_rng, render_garment

    folder = demo_family.engine_folder(None, "demo-pix2pix")
    assert set(load_manifest(folder).presets["default"]) == {"guidance", "image_guidance"}
    top = Garment("crop top", "black", "plain", "short", "crewneck")
    source, out = tmp_path / "black.png", tmp_path / "red.png"
    Image.fromarray(render_garment(item_rng(4242, 0), top, 128)[2]).save(source)
    assert main(["edit", "--image", str(source), "--prompt", prompt, "--seed", "19687", "--out", str(out),
                 "--no-progress"]) == 0, capsys.readouterr().err
    image = np.asarray(Image.open(out).convert("RGB")).astype(int)
    garment = image.min(axis=-1) < 200
    assert 0.03 < garment.mean() < 0.6, garment.mean()  # a garment, not a blank square nor the whole frame
    red, other = image[garment][:, 0], image[garment][:, 1:].max(axis=-1)
    assert np.median(red - other) > 60 and np.median(red) > 120, (np.median(red), np.median(other))
    inner = garment[4:-4, 4:-4]  # the decoder's faint frame along the sides is not garment
    rows, cols = np.flatnonzero(inner.sum(axis=1) > 2), np.flatnonzero(inner.sum(axis=0) > 2)
    assert rows[-1] - rows[0] < cols[-1] - cols[0]  # a top, wider than tall

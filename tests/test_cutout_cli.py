"""``fashiongen cutout`` and ``fashiongen generate --cutout``: product shots on disk, and clear errors."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from fashiongen.cli import main
from fashiongen.runtime.compositing import CompositeOptions, composite
from fashiongen.runtime.engines import EngineSet
from fashiongen.runtime.segmentation import Segmenter


def photo(path, height, width, seed, mode="RGB"):
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (6, 5, 3), dtype=np.uint8)
    image = Image.fromarray(small).resize((width, height), Image.BICUBIC).convert(mode)
    image.save(path)
    return path


def present_and_absent(segmenter_engines, image: np.ndarray) -> tuple[int, int]:
    """A class that covers pixels of ``image`` and one that covers none."""
    counts = np.bincount(Segmenter(EngineSet(segmenter_engines)).class_maps([image])[0].ravel(), minlength=18)
    absent = np.flatnonzero(counts == 0)
    if not absent.size:
        pytest.skip("every class appears in this image")
    return int(counts.argmax()), int(absent[0])


def expected_mask(segmenter_engines, image, class_id):
    return Segmenter(EngineSet(segmenter_engines)).masks([image], [class_id])[0]


def fail(capsys, *argv) -> str:
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("fashiongen: error:"), err
    return lines[0]


def test_cutout_on_white_with_mask(capsys, tmp_path, segmenter_engines):
    src = photo(tmp_path / "look.png", 97, 150, 0)
    image = np.asarray(Image.open(src))
    present, _ = present_and_absent(segmenter_engines, image)
    assert main(["cutout", str(src), "--engines", str(segmenter_engines), "--class", str(present),
                 "--out", str(tmp_path / "shot.png"), "--mask-out", str(tmp_path / "mask.png")]) == 0
    shot = np.asarray(Image.open(tmp_path / "shot.png"))
    mask = expected_mask(segmenter_engines, image, present)
    assert shot.shape == image.shape and (shot[~mask] == 255).all() and np.array_equal(shot[mask], image[mask])
    assert np.array_equal(np.asarray(Image.open(tmp_path / "mask.png")) > 0, mask)


def test_batch_of_mixed_modes_transparent_framed(capsys, tmp_path, segmenter_engines):
    paths = [photo(tmp_path / "a.png", 80, 60, 1), photo(tmp_path / "g.png", 97, 150, 0, "L"),
             photo(tmp_path / "r.png", 50, 120, 2, "RGBA")]
    assert main(["cutout", *map(str, paths), "--engines", str(segmenter_engines), "--class", "0,4,5,17",
                 "--transparent", "--frame", "64", "--out", str(tmp_path / "shot.png")]) == 0
    for i in range(3):
        out = Image.open(tmp_path / f"shot-{i}.png")
        assert out.mode == "RGBA" and out.size == (64, 64)


def test_empty_class_is_an_error_and_writes_nothing(capsys, tmp_path, segmenter_engines):
    src = photo(tmp_path / "look.png", 97, 150, 0)
    _, absent = present_and_absent(segmenter_engines, np.asarray(Image.open(src)))
    line = fail(capsys, "cutout", src, "--engines", segmenter_engines, "--class", absent, "--out", tmp_path / "o.png")
    assert f"{src} (no pixel)" in line and "--min-area" in line
    assert not (tmp_path / "o.png").exists()


@pytest.mark.parametrize("make, word", [
    (lambda p: p.write_text("hello"), "not an image"),
    (lambda p: p.write_bytes(b""), "empty"),
])
def test_bad_input_files(capsys, tmp_path, segmenter_engines, make, word):
    make(tmp_path / "in.png")
    line = fail(capsys, "cutout", tmp_path / "in.png", "--engines", segmenter_engines, "--class", "Skirt",
                "--out", tmp_path / "o.png")
    assert word in line and "in.png" in line


def test_unknown_class_lists_labels(capsys, tmp_path, segmenter_engines):
    src = photo(tmp_path / "look.png", 40, 40, 0)
    line = fail(capsys, "cutout", src, "--engines", segmenter_engines, "--class", "socks", "--out", tmp_path / "o.png")
    assert "unknown class 'socks'" in line and "5 Skirt" in line


def test_auto_needs_a_garment(capsys, tmp_path, segmenter_engines):
    src = photo(tmp_path / "look.png", 40, 40, 0)
    line = fail(capsys, "cutout", src, "--engines", segmenter_engines, "--class", "auto", "--prompt", "a cat",
                "--out", tmp_path / "o.png")
    assert "no garment word" in line


def test_output_checked_before_compute(capsys, tmp_path, segmenter_engines):
    src = photo(tmp_path / "look.png", 40, 40, 0)
    assert "must end in .png" in fail(capsys, "cutout", src, "--engines", segmenter_engines, "--class", "4",
                                      "--out", tmp_path / "o.jpg")
    assert "overwrite an input" in fail(capsys, "cutout", src, "--engines", segmenter_engines, "--class", "4",
                                        "--out", src)


# -- generate --cutout --------------------------------------------------------------------------------------
GEN = ["--prompt", "black crop top", "--steps", "2", "--height", "64", "--width", "64", "--seed", "7",
       "--no-progress"]


@pytest.fixture(scope="module")
def raw_generated(tmp_path_factory, sd_engines):
    out = tmp_path_factory.mktemp("gen") / "raw.png"
    assert main(["generate", "--engines", str(sd_engines), "--out", str(out), *GEN]) == 0
    return np.asarray(Image.open(out))


def test_generate_writes_the_product_shot_and_keeps_raw(capsys, tmp_path, sd_engines, segmenter_engines,
                                                        raw_generated):
    present, _ = present_and_absent(segmenter_engines, raw_generated)
    out = tmp_path / "shot.png"
    assert main(["generate", "--engines", str(sd_engines), "--segmenter-engines", str(segmenter_engines),
                 "--out", str(out), "--cutout", str(present), "--keep-raw", *GEN]) == 0
    assert np.array_equal(np.asarray(Image.open(tmp_path / "shot-raw.png")), raw_generated)
    mask = expected_mask(segmenter_engines, raw_generated, present)
    assert np.array_equal(np.asarray(Image.open(out)), composite(raw_generated, mask, CompositeOptions()))


def test_generate_with_an_empty_class_fails_and_keeps_the_image(capsys, tmp_path, sd_engines, segmenter_engines,
                                                                raw_generated):
    _, absent = present_and_absent(segmenter_engines, raw_generated)
    out = tmp_path / "shot.png"
    line = fail(capsys, "generate", "--engines", sd_engines, "--segmenter-engines", segmenter_engines,
                "--out", out, "--cutout", absent, *GEN)
    assert "(no pixel; the uncut image is at" in line and "shot-raw.png" in line
    assert not out.exists() and (tmp_path / "shot-raw.png").exists()


def test_generate_cutout_options_need_cutout(capsys, tmp_path, sd_engines):
    line = fail(capsys, "generate", "--engines", sd_engines, "--out", tmp_path / "o.png", "--frame", "64", *GEN)
    assert "--frame" in line and "--cutout" in line


def test_generate_cutout_needs_a_segmenter(capsys, tmp_path, sd_engines, monkeypatch):
    from fashiongen import demo_family

    monkeypatch.setattr(demo_family, "DEMO_DIR", tmp_path / "none")  # no demo segmenter to fall back on
    line = fail(capsys, "generate", "--engines", sd_engines, "--out", tmp_path / "o.png", "--cutout", "auto", *GEN)
    assert "has no segmenter" in line
    assert not (tmp_path / "o.png").exists()


def test_one_engine_folder_with_sd_and_segmenter(capsys, tmp_path, sd_checkpoint, segformer_checkpoint,
                                                 segmenter_engines, raw_generated):
    from fashiongen.runtime.manifest import load_manifest

    both = tmp_path / "both"
    assert main(["export", "--model", str(sd_checkpoint), "--segmenter", str(segformer_checkpoint),
                 "--out", str(both), "--no-progress"]) == 0
    manifest = load_manifest(both)
    assert manifest.kind == "txt2img" and {"unet", "segmenter"} <= set(manifest.networks)
    present, _ = present_and_absent(segmenter_engines, raw_generated)
    label = manifest.segmenter.labels[present]
    out = tmp_path / "shot.png"
    assert main(["generate", "--engines", str(both), "--out", str(out), "--cutout", label, "--transparent",
                 "--frame", "96", "--mask-out", str(tmp_path / "mask.png"), *GEN]) == 0
    shot = Image.open(out)
    assert shot.mode == "RGBA" and shot.size == (96, 96)
    mask = expected_mask(segmenter_engines, raw_generated, present)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "mask.png")) > 0, mask)


def crafted_logits(height: int, width: int) -> np.ndarray:
    """[18, h, w] logits: background everywhere, a Dress block on top that the segmenter scores just under
    Upper-clothes, and a Skirt block below: what the segmenter says of a dress it splits in two."""
    logits = np.zeros((18, height, width), np.float32)
    logits[0] = 1.0
    logits[4, :height // 2, 4:-4] = 3.0   # Upper-clothes wins the top half
    logits[7, :height // 2, 4:-4] = 1.4   # Dress second there (and nowhere first, edges included)
    logits[5, height // 2:, 4:-4] = 3.0   # Skirt wins the bottom half
    logits[7, height // 2:, 4:-4] = 1.4   # Dress second there too
    return logits


@pytest.fixture
def split_dress(monkeypatch):
    """Every image's segmenter logits are :func:`crafted_logits` at a quarter of its size."""
    monkeypatch.setattr(Segmenter, "logits",
                        lambda self, images: [crafted_logits(im.shape[0] // 4, im.shape[1] // 4) for im in images])


def test_a_garment_the_prompt_names_is_cut_out_when_the_segmenter_calls_it_another(split_dress, segmenter_engines):
    from fashiongen.runtime.cutout import CutoutPipeline

    image = np.full((64, 48, 3), 90, np.uint8)
    pipeline = CutoutPipeline(EngineSet(segmenter_engines))
    dress = pipeline.resolve_classes("auto", "grey mini long sleeve v-neck dress")
    named = pipeline([image], dress, from_prompt=True).results[0]
    assert not named.empty and named.relabelled == ["Upper-clothes", "Skirt"]
    garment_area = (64 * (48 - 32)) / (64 * 48)  # the crafted blocks, 4 logit columns (16 px) in from each side
    assert abs(named.coverage - garment_area) < 0.05
    assert pipeline([image], dress).results[0].empty  # a class given by name is taken at its word
    top = pipeline([image], pipeline.resolve_classes("auto", "grey crop top"), from_prompt=True).results[0]
    assert not top.relabelled and abs(top.coverage - garment_area / 2) < 0.05  # found: nothing ruled out


def test_cutout_auto_says_when_it_took_the_prompt_at_its_word(split_dress, capsys, tmp_path, segmenter_engines):
    src = photo(tmp_path / "look.png", 64, 48, 0)
    assert main(["cutout", str(src), "--engines", str(segmenter_engines), "--class", "auto", "--prompt",
                 "red mini dress", "--out", str(tmp_path / "shot.png")]) == 0
    out = capsys.readouterr().out
    assert "wrote" in out and "labelled it Upper-clothes+Skirt" in out and (tmp_path / "shot.png").is_file()
    line = fail(capsys, "cutout", src, "--engines", segmenter_engines, "--class", "Dress", "--out", tmp_path / "o.png")
    assert "Dress (7)" in line and not (tmp_path / "o.png").exists()

"""The quality bench's pieces on a tiny data set: the judge trains, saves and loads to the same predictions;
an empty cutout counts as wrong; prompts are drawn reproducibly from a split; the grid has a cell per shot."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fashiongen.bench import attribute_classifier as ac
from fashiongen.bench import quality
from fashiongen.runtime.errors import InputError

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    from fashiongen.training.dataset import write_dataset

    root = tmp_path_factory.mktemp("quality") / "set"
    write_dataset(root, count=12, size=64, test_fraction=0.25, unseen_count=4, progress=False)
    return root


@pytest.fixture(scope="module")
def classifier_file(data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("judge") / "judge.safetensors"
    ac.train_classifier(data, out, steps=3, batch_size=4, size=32, progress=False)
    return out


def test_the_judge_round_trips_and_reports_its_held_out_accuracy(classifier_file, data):
    loaded = ac.load_classifier(classifier_file)
    held_out = loaded.record["held_out"]
    assert set(held_out) == {"product/test", "worn/test", "product/unseen", "worn/unseen"}
    assert 0 <= held_out["product/test"]["colour"]["accuracy"] <= 1 and loaded.record["steps"] == 3
    images, _ = ac.load_examples(data, "product", "test")
    again = ac.load_classifier(classifier_file)
    assert loaded.classify(images) == again.classify(images)
    assert all(set(p) == set(ac.VOCAB) for p in loaded.classify(images))


def test_a_missing_or_foreign_judge_file_is_refused(tmp_path):
    with pytest.raises(InputError, match="--classifier: .* is missing"):
        ac.load_classifier(tmp_path / "none.safetensors")
    with pytest.raises(InputError, match="must end in .safetensors"):
        ac.train_classifier(tmp_path, tmp_path / "judge.pt")


def test_an_empty_cutout_is_wrong_on_every_attribute(classifier_file, data):
    judge = ac.load_classifier(classifier_file)
    prompts = quality.read_prompts(data, "test", 3, seed=5)
    images, _ = ac.load_examples(data, "product", "test")
    result = quality.judge(judge, [None, None, None], prompts)
    assert result["non_empty"] == 0 and all(v in (0.0, None) for v in result["accuracy"].values())
    result = quality.judge(judge, [images[0], None, images[1]], prompts)
    assert result["non_empty"] == pytest.approx(2 / 3) and result["accuracy"]["type"] <= 2 / 3


def test_prompts_are_a_reproducible_draw_from_the_split(data):
    a, b = quality.read_prompts(data, "unseen", 3, seed=7), quality.read_prompts(data, "unseen", 3, seed=7)
    assert [p.caption for p in a] == [p.caption for p in b] and [p.seed for p in a] == [7, 8, 9]
    captions = {line for line in (data / "worn" / "unseen" / "metadata.jsonl").read_text().splitlines()}
    assert all(any(f'"text": "{p.caption}"' in c for c in captions) for p in a)
    assert a[0].truth["type"] in p_types(a[0].caption)


def p_types(caption: str) -> list[str]:
    from fashiongen.training.attributes import TYPES

    return [t for t in TYPES if caption.endswith(t)]


def test_the_grid_has_a_cell_per_shot(tmp_path):
    shot = np.full((64, 64, 3), 255, np.uint8)
    out = quality.grid([("a", [shot, None], ["red skirt", "blue shirt"]), ("b", [shot], ["x"])], tmp_path / "g.png",
                       cell=32)
    width, height = Image.open(out).size
    assert (width, height) == (150 + 2 * 32, 2 * (32 + 28))


def test_the_vae_ceiling_judges_round_trips_of_held_out_products(classifier_file, data, sd_engines):
    ceiling = quality.vae_ceiling(ac.load_classifier(classifier_file), sd_engines, data, limit=2)
    assert set(ceiling) == set(quality.SHOWN)
    assert ceiling["type"]["total"] == 2 and 0 <= ceiling["type"]["accuracy"] <= 1


def test_the_judge_frames_a_garment_inside_a_decoders_grey_border():
    """A VAE decoder draws a faint grey frame along the image's sides; counted as content it made the crop the
    whole image and the garment a third of its size (the judge then named the type of half of the round trips
    wrong). The frame is ignored: the garment is framed as on clean white."""
    clean = np.full((128, 128, 3), 255, np.uint8)
    clean[50:80, 55:75] = (200, 30, 30)
    framed = clean.copy()
    framed[:2], framed[-2:], framed[:, :2], framed[:, -2:] = 205, 205, 205, 205
    assert np.abs(ac.normalise(framed).astype(int) - ac.normalise(clean).astype(int)).max() <= 1


def test_training_blur_is_per_image_and_keeps_the_mean():
    import torch

    x = torch.rand(3, 3, 24, 24)
    y = ac.gaussian_blur(x, torch.tensor([0.0, 1.0, 2.5]))
    assert torch.equal(y[0], x[0])
    assert 0 < (y[1] - x[1]).abs().mean() < (y[2] - x[2]).abs().mean()
    assert torch.allclose(y.mean(dim=(2, 3)), x.mean(dim=(2, 3)), atol=0.03)


def test_without_a_worn_folder_only_approach_3_is_measured(sd_engines, monkeypatch):
    """The shipped family may hold no approach-1 model: the bench then measures approach 3 (and its few-step
    rows) and times the README command on it, rather than refusing to run."""
    from fashiongen import demo_family

    monkeypatch.setattr(demo_family, "installed", lambda name: False)
    monkeypatch.setattr(quality, "run", lambda args: args)
    args = quality.main(["--data", "x", "--product-engines", str(sd_engines), "--segmenter-engines", "y",
                         "--quick"])
    assert args.engines is None
    assert [(c.name, c.cutout) for c, _ in quality.contenders(args)] == [("approach 3", False)]
    calls = []
    monkeypatch.setattr(quality, "readme_command_seconds", lambda runs, engines, seg: calls.append((engines, seg)))
    quality.readme_command(args)
    assert calls == [(Path(sd_engines), None)]


def test_approach_2_edits_the_catalog_item_nearest_the_prompt():
    """Approach 2's contender is ``edit --from-catalog``: the shipped catalog's nearest item is the edit's input."""
    from fashiongen import demo_family

    if not (demo_family.installed("demo-catalog") and demo_family.installed("demo-pix2pix")):
        pytest.skip("this checkout ships no demo catalog and editor")
    contender = quality.Contender("approach 2", demo_family.engine_folder(None, "demo-pix2pix"), cutout=False,
                                  catalog=demo_family.engine_folder(None, "demo-catalog", "--catalog"))
    pipeline = contender.pipeline()
    prompt = quality.Prompt("black short sleeve crewneck crop top", {}, seed=3)
    request = contender.request(prompt, steps=2)
    hit = contender.search.search(prompt.caption, k=1)[0]
    assert np.array_equal(request.image, np.asarray(Image.open(contender.search.image_path(hit)).convert("RGB")))
    assert contender.retrieved == [request.image]
    assert (request.prompt, request.seed, request.steps) == (prompt.caption, 3, 2)
    assert pipeline(request, progress=False).images[0].shape == request.image.shape


def test_reports_name_no_folder_of_the_machine_they_ran_on(tmp_path):
    from fashiongen.bench.common import CACHE, ROOT, shown_path

    shipped = ROOT / "fashiongen" / "demo_models" / "engines" / "pix2pix"
    assert shown_path(shipped) == "fashiongen/demo_models/engines/pix2pix"
    assert shown_path(CACHE / "attribute-classifier.safetensors") == "bench/.cache/attribute-classifier.safetensors"
    data = tmp_path / "data"
    assert shown_path(data / "product" / "test" / "00230.png", data) == "product/test/00230.png"
    assert shown_path(tmp_path / "runs" / "engines") == "engines"  # elsewhere: its name only

"""``fashiongen train-captioner``: a tiny BLIP learns to caption product shots, resumes exactly, writes a folder
that transformers loads and ``fashiongen index --captioner`` takes, trains on what the index's processor makes,
and refuses bad input in one line."""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from fashiongen.training import captioning  # noqa: E402
from trainer_checks import captioned_data, interrupted, refused, rewrite_rows  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]
#: BlipSize fields as a user would write them: the tiny test BLIP (32 px images, 8 px patches)
TINY = {"hidden": 32, "layers": 1, "heads": 2, "intermediate": 64, "image_size": 32, "patch_size": 8}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("blip-data")
    (root / "tiny.json").write_text(json.dumps(TINY))
    return {**captioned_data(root), "config": root / "tiny.json"}


def train_args(data: dict, out: Path, *extra) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    captioning.add_arguments(parser)
    return parser.parse_args([str(a) for a in ("--data", data["train"], "--config", data["config"], "--out", out,
                                                "--batch-size", 9, "--learning-rate", 3e-3, "--no-progress",
                                                *extra)])


def record_of(out: Path) -> dict:
    return json.loads((out / "model" / "training.json").read_text())


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory) -> Path:
    """Overfit the 9 training captions (each step sees all of them), scored on the training rows too (the
    captions it was taught: greedy decoding must find some of their words)."""
    out = tmp_path_factory.mktemp("blip-run") / "run"
    assert captioning.run(train_args(data, out, "--steps", 25, "--eval-data", data["train"])) == 0
    return out


def test_loss_falls_and_the_record_says_so(trained):
    record = record_of(trained)
    losses = record["losses"]
    assert record["steps"] == len(losses) == 25 and record["final_loss"] == losses[-1]
    assert np.mean(losses[-3:]) < 0.6 * losses[0], losses
    scores = record["eval"]
    assert scores["examples"] == 9 and 0 <= scores["exact_match"] <= scores["word_accuracy"] <= 1
    assert scores["word_accuracy"] > 0.2, scores
    assert record["arguments"]["steps"] == 25 and record["wall_time_s"] > 0 and record["seed"] == 0
    assert {p.name for p in trained.iterdir()} == {"run.json", "checkpoints", "model"}


def test_output_loads_in_transformers_and_the_index_takes_it(trained, data, tmp_path):
    """`fashiongen index --captioner OUT/model` captions the catalog with it, as the trainer's score did."""
    from transformers import BlipForConditionalGeneration, BlipProcessor

    from fashiongen.export.catalog_index import build_index
    from fashiongen.random_checkpoints.retrieval import write_clip_checkpoint
    from fashiongen.runtime.retrieval import load_index_meta

    folder = trained / "model"
    model = BlipForConditionalGeneration.from_pretrained(folder, local_files_only=True)
    processor = BlipProcessor.from_pretrained(folder, local_files_only=True)
    assert model.config.vision_config.image_size == 32 and processor.tokenizer.bos_token == "[DEC]"
    catalog = tmp_path / "catalog"
    shutil.copytree(data["train"], catalog, ignore=shutil.ignore_patterns("masks", "*.jsonl"))
    clip = write_clip_checkpoint(tmp_path / "clip")
    report = build_index(catalog, tmp_path / "index", clip_dir=clip, captioner_dir=folder, progress=False)
    assert report.total == 9 and not report.skipped
    indexed = [item["caption"] for item in load_index_meta(tmp_path / "index")["items"]]
    images, captions = captioning.load_examples([data["train"]], "--data", processor.image_processor)
    expected = [processor.tokenizer.decode(processor.tokenizer(c).input_ids, skip_special_tokens=True)
                for c in captions]
    assert captioning.caption_scores(indexed, expected) == {k: record_of(trained)["eval"][k]
                                                            for k in ("exact_match", "word_accuracy")}


def test_training_inputs_are_the_processors(trained, data):
    """The images kept at the processor's size give the processor's pixels for the file itself."""
    from PIL import Image
    from transformers import BlipProcessor

    processor = BlipProcessor.from_pretrained(trained / "model", local_files_only=True)
    images, captions = captioning.load_examples([data["train"]], "--data", processor.image_processor)
    rows = [json.loads(line) for line in (data["train"] / "metadata.jsonl").read_text().splitlines()]
    assert images.shape == (9, 32, 32, 3) and captions == [row["text"] for row in rows]
    with Image.open(data["train"] / rows[0]["file_name"]) as a, Image.open(data["train"] / rows[1]["file_name"]) as b:
        theirs = processor(images=[a.convert("RGB"), b.convert("RGB")], return_tensors="np").pixel_values
    ours = processor.image_processor(images=list(images[:2]), return_tensors="np").pixel_values
    np.testing.assert_array_equal(ours, theirs)


def test_captions_start_as_generate_starts_and_padding_costs_nothing(trained):
    from transformers import BlipProcessor

    processor = BlipProcessor.from_pretrained(trained / "model", local_files_only=True)
    tokenizer = processor.tokenizer
    ids, mask, labels = captioning.caption_tokens(tokenizer, ["red top", "blue long sleeve shirt"], 99)
    assert ids.shape == mask.shape == labels.shape == (2, 6) and (ids[:, 0] == 99).all()
    assert labels[0].tolist() == [99, *tokenizer("red top").input_ids[1:], -100, -100]
    assert ids[1, -1] == tokenizer.sep_token_id and mask[0].tolist() == [1, 1, 1, 1, 0, 0]


@pytest.mark.parametrize("augmentation", [(), ("--flip", "--zoom", 1.3)], ids=["plain", "augmented"])
def test_interrupted_run_keeps_its_checkpoint_and_resumes_to_the_same_losses(data, tmp_path, monkeypatch,
                                                                              augmentation):
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    # batches (and dropout, and the augmentation's draws) differ by step
    extra = ("--steps", 4, "--checkpoint-every", 2, "--batch-size", 4, *augmentation)
    captioning.run(train_args(data, whole, *extra))
    interrupted(monkeypatch, lambda: captioning.run(train_args(data, cut, *extra)), 2)
    assert not (cut / "model").exists()
    assert [p.name for p in (cut / "checkpoints").iterdir()] == ["step-0000002"]
    captioning.run(train_args(data, cut, *extra, "--resume"))
    first, second = record_of(whole)["losses"], record_of(cut)["losses"]
    assert len(first) == 4 and first == second


def test_augmentation_changes_what_training_sees(data, tmp_path):
    plain, augmented = tmp_path / "plain", tmp_path / "augmented"
    captioning.run(train_args(data, plain, "--steps", 2))
    captioning.run(train_args(data, augmented, "--steps", 2, "--flip", "--zoom", 1.5))
    # the same weights and batch at step 0: only the augmentation can make the first losses differ
    assert record_of(plain)["losses"][0] != record_of(augmented)["losses"][0]
    assert record_of(augmented)["arguments"]["flip"] is True


def test_augment_image_draws_as_the_segmenters_augmentation():
    from fashiongen.training.augmentation import UNCHANGED_CLASSES, augment, augment_image
    from fashiongen.training.runs import step_generator

    image = np.random.default_rng(0).integers(0, 256, (16, 20, 3), dtype=np.uint8)
    assert np.array_equal(augment_image(image, step_generator(0, 3), 1.0, False, 2), image)
    for step in range(6):
        labels = np.zeros((16, 20), dtype=np.uint8)
        expected = augment(image, labels, step_generator(step, 3), 1.4, UNCHANGED_CLASSES, 2)[0]
        got = augment_image(image, step_generator(step, 3), 1.4, True, 2)
        assert got.shape == image.shape and np.array_equal(got, expected)


def test_caption_scores():
    scores = captioning.caption_scores(["red top", "blue long skirt", "a b"], ["red top", "blue skirt", "a b c"])
    assert scores == {"exact_match": pytest.approx(1 / 3), "word_accuracy": pytest.approx((2 + 1 + 2) / (2 + 3 + 3))}


# -- bad input: one line naming the argument, nothing written -------------------------------------------------
def test_bad_data_is_one_line(data, tmp_path):
    folder = tmp_path / "data"
    shutil.copytree(data["train"], folder)
    rewrite_rows(folder, lambda rows: rows[0].update(file_name="gone.png"))
    refused(lambda: captioning.run(train_args({**data, "train": folder}, tmp_path / "run", "--steps", 1)),
            "--data", "gone.png", "missing")
    rewrite_rows(folder, lambda rows: [row.update(file_name="00000.png") or row.pop("text") for row in rows])
    refused(lambda: captioning.run(train_args({**data, "train": folder}, tmp_path / "run", "--steps", 1)),
            "--data", "has no 'text'")
    assert not (tmp_path / "run").exists()


def test_unknown_bases_are_one_line(data, tmp_path):
    from fashiongen.random_checkpoints.retrieval import write_clip_checkpoint

    parser = argparse.ArgumentParser()
    captioning.add_arguments(parser)
    clip = write_clip_checkpoint(tmp_path / "clip")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**TINY, "hiden": 32}))
    for base, words in ((["--model", tmp_path / "nowhere"], ("--model", "nowhere", "not a folder")),
                        (["--model", clip], ("--model", "'clip' model", "BLIP")),
                        (["--config", bad], ("--config", "unknown key 'hiden'")),
                        (["--config", tmp_path / "none.json"], ("--config", "cannot read"))):
        args = parser.parse_args([str(a) for a in ("--data", data["train"], *base, "--out", tmp_path / "run")])
        refused(lambda: captioning.run(args), *words)
    assert not (tmp_path / "run").exists()


def test_a_zoom_below_one_is_one_line(data, tmp_path):
    refused(lambda: captioning.run(train_args(data, tmp_path / "run", "--steps", 1, "--zoom", 0.5)),
            "--zoom", "at least 1")
    assert not (tmp_path / "run").exists()


def test_resume_of_another_run_is_refused(data, tmp_path):
    captioning.run(train_args(data, tmp_path / "run", "--steps", 1))
    refused(lambda: captioning.run(train_args(data, tmp_path / "run", "--steps", 2, "--resume", "--seed", 1)),
            "--resume", "another run", "seed")


def test_the_cli_lists_train_captioner(capsys):
    from fashiongen.cli import main

    with pytest.raises(SystemExit):
        main(["train-captioner", "--help"])
    out = " ".join(capsys.readouterr().out.split())  # whatever the terminal's width
    assert "--config" in out and "--eval-data" in out and "index --captioner" in out

"""``fashiongen train-clip``: a tiny CLIP learns on product shots, resumes exactly, writes a folder that
transformers loads and ``fashiongen index --clip`` takes (the index then embeds what the trainer scored), trains
on what serving sees, and refuses bad input in one line."""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from fashiongen.training import contrastive  # noqa: E402
from trainer_checks import captioned_data, interrupted, refused, rewrite_rows  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]
#: ClipSize fields as a user would write them: the tiny test CLIP (32 px images, 8 px patches)
TINY = {"text_hidden": 32, "text_layers": 1, "vision_hidden": 32, "vision_layers": 1, "image_size": 32,
        "patch_size": 8, "projection_dim": 16}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("clip-data")
    (root / "tiny.json").write_text(json.dumps(TINY))
    return {**captioned_data(root), "config": root / "tiny.json"}


def train_args(data: dict, out: Path, *extra) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    contrastive.add_arguments(parser)
    return parser.parse_args([str(a) for a in ("--data", data["train"], "--config", data["config"], "--out", out,
                                                "--batch-size", 9, "--learning-rate", 2e-3, "--no-progress",
                                                *extra)])


def record_of(out: Path) -> dict:
    return json.loads((out / "model" / "training.json").read_text())


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory) -> Path:
    """Overfit the 9 training images (each step sees all of them), evaluated on the 3 held out."""
    out = tmp_path_factory.mktemp("clip-run") / "run"
    assert contrastive.run(train_args(data, out, "--steps", 15, "--eval-data", data["test"])) == 0
    return out


def test_loss_falls_and_the_record_says_so(trained):
    record = record_of(trained)
    losses = record["losses"]
    assert record["steps"] == len(losses) == 15 and record["final_loss"] == losses[-1]
    assert np.mean(losses[-3:]) < 0.7 * losses[0], losses
    scores = record["eval"]
    assert scores["examples"] == 3 and set(scores) >= {"recall@1", "recall@5"}
    assert 0 <= scores["recall@1"] <= scores["recall@5"] == 1.0  # 3 held-out images: all within 5
    assert record["arguments"]["steps"] == 15 and record["wall_time_s"] > 0 and record["seed"] == 0
    assert 0 < record["logit_scale"] <= 100
    assert {p.name for p in trained.iterdir()} == {"run.json", "checkpoints", "model"}


def test_output_loads_in_transformers_and_the_index_takes_it(trained, data, tmp_path):
    """`fashiongen index --clip OUT/model` exports and embeds with it; its vectors are the trainer's."""
    from PIL import Image
    from transformers import CLIPModel, CLIPProcessor

    from fashiongen.export.catalog_index import build_index
    from fashiongen.runtime.retrieval import CLIP_FOLDER, CatalogSearch, ClipEncoder, ClipPreprocess

    folder = trained / "model"
    model = CLIPModel.from_pretrained(folder, local_files_only=True).eval()
    processor = CLIPProcessor.from_pretrained(folder, local_files_only=True)
    assert model.config.vision_config.image_size == 32 and len(processor.tokenizer) == 49408
    catalog = tmp_path / "catalog"
    shutil.copytree(data["test"], catalog, ignore=shutil.ignore_patterns("masks", "*.jsonl"))
    report = build_index(catalog, tmp_path / "index", clip_dir=folder, progress=False)
    assert report.total == 3 and not report.skipped
    encoder = ClipEncoder.open(tmp_path / "index" / CLIP_FOLDER)
    preprocess = ClipPreprocess(encoder.preprocessing)
    images, captions = contrastive.load_examples([data["test"]], "--eval-data", preprocess)
    files = sorted(catalog.glob("*.png"))
    served = encoder.encode_images([np.asarray(Image.open(f).convert("RGB")) for f in files])
    text, image = contrastive.embed(model, processor.tokenizer, preprocess, images, captions, batch_size=2)
    np.testing.assert_allclose(served, image, atol=1e-4)
    np.testing.assert_allclose(encoder.encode_text(captions), text, atol=1e-4)
    assert CatalogSearch(tmp_path / "index").search(captions[0], k=1)[0].path in {f.name for f in files}


def test_training_inputs_are_the_processors(trained, data):
    """What the trainer feeds the network is what CLIPImageProcessor makes of the file."""
    from PIL import Image
    from transformers import AutoImageProcessor

    from fashiongen.export.clip_export import image_preprocessing
    from fashiongen.runtime.retrieval import ClipPreprocess

    processor = AutoImageProcessor.from_pretrained(trained / "model", local_files_only=True)
    preprocess = ClipPreprocess(image_preprocessing(processor))
    images, captions = contrastive.load_examples([data["train"]], "--data", preprocess)
    rows = [json.loads(line) for line in (data["train"] / "metadata.jsonl").read_text().splitlines()]
    assert images.shape == (9, 32, 32, 3) and captions == [row["text"] for row in rows]
    with Image.open(data["train"] / rows[0]["file_name"]) as first:
        theirs = processor(images=first.convert("RGB"), return_tensors="np").pixel_values
    np.testing.assert_allclose(preprocess.normalize(images[:1]), theirs, atol=1e-6)


def test_interrupted_run_keeps_its_checkpoint_and_resumes_to_the_same_losses(data, tmp_path, monkeypatch):
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    extra = ("--steps", 4, "--checkpoint-every", 2, "--batch-size", 4)  # batches differ from step to step
    contrastive.run(train_args(data, whole, *extra))
    interrupted(monkeypatch, lambda: contrastive.run(train_args(data, cut, *extra)), 2)
    assert not (cut / "model").exists()
    assert [p.name for p in (cut / "checkpoints").iterdir()] == ["step-0000002"]
    contrastive.run(train_args(data, cut, *extra, "--resume"))
    first, second = record_of(whole)["losses"], record_of(cut)["losses"]
    assert len(first) == 4 and first == second


def test_loss_is_clips_with_distinct_captions_and_shares_repeated_ones():
    from transformers import CLIPModel

    from fashiongen.random_checkpoints.retrieval import clip_config

    torch.manual_seed(0)
    model = CLIPModel(clip_config()).eval()
    ids, pixels = torch.randint(0, 49408, (4, 6)), torch.randn(4, 3, 32, 32)
    out = model(input_ids=ids, pixel_values=pixels, return_loss=True)  # transformers' CLIP loss
    torch.testing.assert_close(contrastive.contrastive_loss(out.logits_per_text, torch.arange(4)), out.loss)
    logits = torch.randn(4, 4, generator=torch.Generator().manual_seed(0)) * 3
    # items 0 and 1 share a caption: text 0 and text 1 each aim at images 0 and 1 half and half
    shared = contrastive.contrastive_loss(logits, torch.tensor([7, 7, 2, 5]))
    target = torch.tensor([[.5, .5, 0, 0], [.5, .5, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]])
    expected = (-(target * logits.log_softmax(1)).sum(1).mean() - (target * logits.t().log_softmax(1)).sum(1).mean())
    torch.testing.assert_close(shared, expected / 2)


def test_recall_counts_any_image_of_the_querys_caption():
    captions = ["red top", "red top", "blue skirt", "green pants"]
    text = np.eye(4, dtype=np.float32)
    image = np.eye(4, dtype=np.float32)[[1, 0, 3, 2]]  # text 0 nearest image 1 (same caption); 2 and 3 swapped
    assert contrastive.recall_at_k(text, image, captions, ks=(1, 2)) == {"recall@1": 0.5, "recall@2": 0.5}
    image[2] = image[3] = np.array([0, 0, 0.6, 0.8], np.float32)  # both near text 2 and 3 alike
    scores = contrastive.recall_at_k(text, image, captions, ks=(1, 2))
    assert scores["recall@2"] == 1.0


# -- bad input: one line naming the argument, nothing written -------------------------------------------------
def test_bad_data_is_one_line(data, tmp_path):
    folder = tmp_path / "data"
    shutil.copytree(data["train"], folder)
    rewrite_rows(folder, lambda rows: rows[0].update(file_name="gone.png"))
    refused(lambda: contrastive.run(train_args({**data, "train": folder}, tmp_path / "run", "--steps", 1)),
            "--data", "gone.png", "missing")
    rewrite_rows(folder, lambda rows: [row.update(file_name="00000.png", text="") for row in rows])
    refused(lambda: contrastive.run(train_args({**data, "train": folder}, tmp_path / "run", "--steps", 1)),
            "--data", "has no 'text'")
    refused(lambda: contrastive.run(train_args(data, tmp_path / "run", "--steps", 1, "--eval-data", tmp_path)),
            "--eval-data", "metadata.jsonl")
    assert not (tmp_path / "run").exists()


def test_unknown_bases_are_one_line(data, tmp_path):
    from fashiongen.random_checkpoints.retrieval import write_blip_checkpoint

    parser = argparse.ArgumentParser()
    contrastive.add_arguments(parser)
    blip = write_blip_checkpoint(tmp_path / "blip")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**TINY, "heads": 2}))
    odd = tmp_path / "odd.json"
    odd.write_text(json.dumps({**TINY, "vision_hidden": 30, "vision_heads": 4}))
    for base, words in ((["--model", tmp_path / "nowhere"], ("--model", "nowhere", "not a folder")),
                        (["--model", blip], ("--model", "'blip' model", "CLIP")),
                        (["--model", tmp_path], ("--model", "config.json")),
                        (["--config", bad], ("--config", "unknown key 'heads'")),
                        (["--config", odd], ("--config", "does not make a CLIP"))):
        args = parser.parse_args([str(a) for a in ("--data", data["train"], *base, "--out", tmp_path / "run")])
        refused(lambda: contrastive.run(args), *words)
    assert not (tmp_path / "run").exists()


def test_resume_of_another_run_is_refused(data, tmp_path):
    contrastive.run(train_args(data, tmp_path / "run", "--steps", 1))
    refused(lambda: contrastive.run(train_args(data, tmp_path / "run", "--steps", 2, "--resume",
                                               "--learning-rate", 1e-3)), "--resume", "another run", "learning_rate")
    refused(lambda: contrastive.run(train_args(data, tmp_path / "run", "--steps", 2)), "--out", "--resume")


def test_the_cli_lists_train_clip(capsys):
    from fashiongen.cli import main

    with pytest.raises(SystemExit):
        main(["train-clip", "--help"])
    out = " ".join(capsys.readouterr().out.split())  # whatever the terminal's width
    assert "--config" in out and "--eval-data" in out and "index --clip" in out

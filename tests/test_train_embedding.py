"""``fashiongen train-embedding``: textual inversion on a tiny SD checkpoint (64 px images, a few steps).

Only the new rows of the token embedding learn; an interrupted run resumes to the same losses and vectors;
the files load in diffusers and in ``fashiongen export``, and the exported engines with the learned token
draw what diffusers draws; bad input is refused in one line.
"""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from fashiongen.training import runs
from fashiongen.training import textual_inversion as ti
from test_txt2img_parity import assert_close_images
from trainer_checks import interrupted, refused

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]
TOKEN = "<fg-knit>"
VOCAB = 49408  # CLIP's rows before the new token's
SIZE = 64


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """Two product shots of the procedural data set (garment on white), 64 px, with captions."""
    from fashiongen.training.dataset import write_dataset

    root = tmp_path_factory.mktemp("ti-data") / "set"
    write_dataset(root, count=2, size=SIZE, test_fraction=0.0, unseen_count=0, progress=False)
    return root / "product" / "train"


def arguments(sd_checkpoint, data, out, *extra) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    ti.add_arguments(parser)
    return parser.parse_args(["--model", str(sd_checkpoint), "--data", str(data), "--out", str(out), "--token", TOKEN,
                              "--init-word", "knitwear", "--resolution", str(SIZE), "--batch-size", "2",
                              "--learning-rate", "0.05", "--steps", "4", "--checkpoint-every", "2", "--no-progress",
                              *extra])


def train(sd_checkpoint, data, out, *extra) -> ti.TrainedEmbedding:
    return ti.train_embedding(arguments(sd_checkpoint, data, out, *extra))


@pytest.fixture(scope="module")
def overfit(sd_checkpoint, data, tmp_path_factory):
    """Two vectors trained with a high learning rate on the SAME noise and timesteps every step (the step
    generator pinned): an overfit whose loss must fall step over step. With fresh noise each step the tiny
    random UNet's loss varies by ~5% between draws, while the token moves it by well under 1%."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(runs, "step_generator", lambda seed, step, micro=0: torch.Generator().manual_seed(7))
        return train(sd_checkpoint, data, tmp_path_factory.mktemp("ti-overfit") / "run", "--steps", "6",
                     "--vectors", "2", "--learning-rate", "0.1")


def test_loss_falls_and_only_the_new_rows_change(overfit, sd_checkpoint):
    from fashiongen.export.sd_export import load_checkpoint

    losses = overfit.losses
    assert len(losses) == 6 and all(b < a for a, b in zip(losses, losses[1:])), losses
    assert losses[-1] < losses[0] - 0.005, losses
    base = load_checkpoint(sd_checkpoint)
    for name in ("unet", "vae", "text_encoder"):
        trained = overfit.parts[name].state_dict()
        for key, weight in base[name].state_dict().items():
            if key.endswith("token_embedding.weight"):
                table = trained[key]
                assert table.shape[0] == VOCAB + 2 and torch.equal(table[:VOCAB], weight), key
            else:
                assert torch.equal(trained[key], weight), f"{name}.{key} moved"
    start = base["text_encoder"].get_input_embeddings().weight[[18745, 2839]].mean(0)  # knit + wear</w>
    assert not torch.equal(overfit.vectors[0], start) and not torch.equal(overfit.vectors[1], start)
    assert overfit.vectors.shape == (2, 32) and not torch.equal(overfit.vectors[0], overfit.vectors[1])
    record = json.loads((overfit.files["a1111"].parent / "training.json").read_text())
    assert record["step_losses"] == losses and record["final_loss"] == losses[-1] and record["steps"] == 6
    assert record["tokens"] == [TOKEN, f"{TOKEN}_1"] and record["seed"] == 0 and record["wall_seconds"] >= 0
    assert record["arguments"]["init_word"] == "knitwear" and record["files"]["a1111"] == "fg-knit.pt"


def test_interrupted_run_resumes_to_the_same_losses_and_vectors(sd_checkpoint, data, tmp_path, monkeypatch):
    whole = train(sd_checkpoint, data, tmp_path / "whole")
    interrupted(monkeypatch, lambda: train(sd_checkpoint, data, tmp_path / "cut"), 2)
    assert not (tmp_path / "cut" / ti.DIFFUSERS_FILE).exists()
    resumed = train(sd_checkpoint, data, tmp_path / "cut", "--resume")
    assert resumed.losses == whole.losses and len(whole.losses) == 4
    assert torch.equal(resumed.vectors, whole.vectors)


def test_files_load_in_diffusers_and_export_and_match_the_runtime(overfit, sd_checkpoint, tmp_path):
    from diffusers import StableDiffusionPipeline

    from fashiongen.export.embeddings import load_embedding
    from fashiongen.export.sd_export import export_engine_folder
    from fashiongen.runtime.engines import EngineSet
    from fashiongen.runtime.txt2img import Txt2ImgPipeline, Txt2ImgRequest

    pt, st = overfit.files["a1111"], overfit.files["diffusers"]
    assert pt.name == "fg-knit.pt" and st.name == ti.DIFFUSERS_FILE
    for path in (pt, st):
        loaded = load_embedding(path)
        assert loaded.token == TOKEN and torch.equal(loaded.vectors, overfit.vectors)
    pipe = StableDiffusionPipeline.from_pretrained(sd_checkpoint, safety_checker=None, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    for path in (st, pt):  # the A1111 file last: it stays loaded for the comparison
        pipe.load_textual_inversion(str(path), token=TOKEN)
        ids = pipe.tokenizer.convert_tokens_to_ids([TOKEN, f"{TOKEN}_1"])
        assert torch.equal(pipe.text_encoder.get_input_embeddings().weight[ids].detach(), overfit.vectors)
        if path == st:
            pipe.unload_textual_inversion([TOKEN, f"{TOKEN}_1"])

    engines = tmp_path / "engines"
    export_engine_folder(engines, sd_checkpoint, [load_embedding(pt)], progress=False)
    prompt, seed, steps = f"a photo of {TOKEN} knitwear on white", 1234, 4
    runtime = Txt2ImgPipeline(EngineSet(engines))
    assert {VOCAB, VOCAB + 1} <= set(runtime.tokenizer.encode(prompt).tolist())  # <fg-knit> <fg-knit>_1
    ours = runtime(Txt2ImgRequest(prompt=prompt, seed=seed, steps=steps, height=SIZE, width=SIZE),
                   progress=False).images
    ref = pipe(prompt, num_inference_steps=steps, guidance_scale=7.5, height=SIZE, width=SIZE,
               generator=torch.Generator("cpu").manual_seed(seed), output_type="np").images
    assert_close_images(ours, (ref * 255).round().astype(np.uint8))


# -- bad input: one line naming the argument -----------------------------------------------------------------
def cli(sd_checkpoint, data, out, *extra) -> int:
    return ti.run(arguments(sd_checkpoint, data, out, "--steps", "1", *extra))


@pytest.fixture
def uncaptioned(data, tmp_path) -> Path:
    folder = tmp_path / "uncaptioned"
    shutil.copytree(data, folder)
    rows = [json.loads(line) for line in (folder / "metadata.jsonl").read_text().splitlines()]
    rows[1].pop("text")
    (folder / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def test_bad_data_is_refused_before_the_model_loads(sd_checkpoint, data, uncaptioned, tmp_path):
    refused(lambda: cli(sd_checkpoint, tmp_path / "nowhere", tmp_path / "a"), "--data", "not a folder")
    refused(lambda: cli(sd_checkpoint, uncaptioned, tmp_path / "b"), "--data", "metadata.jsonl:2", "'text'")
    refused(lambda: cli(sd_checkpoint, data, tmp_path / "c", "--template", "a photo of {caption}"),
            "--template", "{token}")
    refused(lambda: cli(sd_checkpoint, data, tmp_path / "c", "--template", "{token} {colour}"),
            "--template", "{colour}")
    assert not any((tmp_path / name).exists() for name in "abc")


def test_a_template_without_caption_needs_none(sd_checkpoint, uncaptioned, tmp_path):
    assert cli(sd_checkpoint, uncaptioned, tmp_path / "run", "--template", "a photo in the style of {token}") == 0
    assert json.loads((tmp_path / "run" / "training.json").read_text())["steps"] == 1


@pytest.mark.parametrize("extra, words", [
    (("--token", "dress"), ("--token", "'dress'", "already")),
    (("--init-word", ""), ("--init-word", "''")),
    (("--init-word", "<|endoftext|>"), ("--init-word", "<|endoftext|>")),
])
def test_bad_token_or_init_word_is_refused(sd_checkpoint, data, tmp_path, extra, words):
    refused(lambda: cli(sd_checkpoint, data, tmp_path / "run", *extra), *words)
    assert not (tmp_path / "run").exists()


def test_resume_of_another_run_is_refused(overfit, sd_checkpoint, data):
    out = overfit.files["a1111"].parent
    refused(lambda: cli(sd_checkpoint, data, out, "--resume", "--vectors", "2", "--learning-rate", "0.1",
                        "--init-word", "wool"), "--resume", "another run", "init_word")  # the one difference
    refused(lambda: cli(sd_checkpoint, data, out), "--out", "--resume")

"""``fashiongen train-pix2pix`` on tiny checkpoints (64 px product shots, a few steps).

The loss falls on a fixed batch; an interrupted run resumes to the same losses and weights; the model folder
loads in diffusers' InstructPix2Pix pipeline, exports, and ``fashiongen edit`` runs on the export; widening keeps
the text-to-image UNet's function; an InstructPix2Pix base is fine-tuned as it is; bad input is refused in one
line, before any run folder is written.
"""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from fashiongen.training import instruct_pix2pix as p2p
from fashiongen.training import options
from fashiongen.training import runs
from fashiongen.training import text_to_image as t2i
from test_pix2pix import assert_close_images
from trainer_checks import interrupted, refused, rewrite_rows

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]
SIZE = 64


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """Sixteen items of the procedural data set, 64 px, with two edit pairs each."""
    from fashiongen.training.dataset import write_dataset

    root = tmp_path_factory.mktemp("p2p-data") / "set"
    write_dataset(root, count=16, size=SIZE, test_fraction=0.0, unseen_count=0, progress=False, edit_pairs=2)
    return root


@pytest.fixture(scope="module")
def data(dataset) -> Path:
    """The product shots, with captions and attribute columns (30 pairs at two a source)."""
    return dataset / "product" / "train"


@pytest.fixture(scope="module")
def pairs(dataset) -> Path:
    """The InstructPix2Pix pairs folder: 32 pairs of 16 sources."""
    return dataset / "edits" / "train"


def parse(argv) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    p2p.add_arguments(parser)
    return parser.parse_args([str(a) for a in argv])


def train(model, data, out, *extra) -> dict:
    """Run ``train-pix2pix``; return its training.json."""
    args = parse(["--model", model, "--data", data, "--out", out, "--resolution", SIZE, "--batch-size", 2,
                  "--learning-rate", 1e-3, "--steps", 4, "--checkpoint-every", 2, "--pairs-per-image", 2,
                  "--no-progress", *extra])
    assert p2p.run(args) == 0
    return json.loads((Path(out) / t2i.MODEL / t2i.RECORD).read_text())


def unet_weights(run: Path) -> dict:
    return load_file(str(run / t2i.MODEL / "unet" / "diffusion_pytorch_model.safetensors"))


@pytest.fixture(scope="module")
def overfit(sd_checkpoint, data, tmp_path_factory) -> Path:
    """Widened from the text-to-image checkpoint and trained on one batch of four pairs with the step generator
    pinned (the same noise, timesteps and dropout every step): an overfit whose loss must fall."""
    out = tmp_path_factory.mktemp("p2p-overfit") / "run"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(runs, "step_generator", lambda seed, step, micro=0: torch.Generator().manual_seed(3))
        patch.setattr(options, "batch_indices", lambda count, size, position, seed: np.arange(size))
        train(sd_checkpoint, data, out, "--steps", 6, "--batch-size", 4)
    return out


def test_loss_falls_and_only_the_unet_moves(overfit, sd_checkpoint):
    record = json.loads((overfit / t2i.MODEL / t2i.RECORD).read_text())
    losses = record["step_losses"]
    assert len(losses) == 6 and losses[-1] < 0.9 * losses[0], losses
    assert record["widened"] is True and record["pairs"] == 30 and record["conditioning_dropout"] == 0.05
    assert record["command"] == "fashiongen train-pix2pix" and record["wall_seconds"] >= 0
    model = overfit / t2i.MODEL
    assert json.loads((model / "model_index.json").read_text())["_class_name"] == p2p.PIPELINE_CLASS
    base_index = json.loads((Path(sd_checkpoint) / "model_index.json").read_text())
    assert base_index["_class_name"] == "StableDiffusionPipeline"  # written anew, not through the hard link
    assert json.loads((model / "unet" / "config.json").read_text())["in_channels"] == 8
    for part in ("vae", "text_encoder", "tokenizer", "scheduler"):  # frozen parts are the base's files
        for source in (Path(sd_checkpoint) / part).iterdir():
            assert (model / part / source.name).read_bytes() == source.read_bytes(), source


def test_widening_copies_conv_in_and_zeros_the_image_channels(sd_checkpoint):
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(Path(sd_checkpoint) / "unet").eval()
    before = unet.conv_in.weight.detach().clone(), unet.conv_in.bias.detach().clone()
    latent = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    hidden = torch.randn(1, 77, unet.config.cross_attention_dim, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        original = unet(latent, 10, hidden).sample
        p2p.widen_conv_in(unet)
        widened = unet(torch.cat([latent, torch.zeros_like(latent)], dim=1), 10, hidden).sample
    assert unet.conv_in.in_channels == unet.config.in_channels == 8
    assert torch.equal(unet.conv_in.weight[:, :4], before[0]) and torch.equal(unet.conv_in.bias, before[1])
    assert not unet.conv_in.weight[:, 4:].any()
    torch.testing.assert_close(widened, original)  # at step 0 it is the text-to-image model
    unet = UNet2DConditionModel.from_pretrained(Path(sd_checkpoint) / "unet").eval()
    p2p.widen_conv_in(unet, source_scale=0.25)  # --source-init-scale: the source seen from the first step
    torch.testing.assert_close(unet.conv_in.weight[:, 4:], 0.25 * before[0])
    assert torch.equal(unet.conv_in.weight[:, :4], before[0])


def test_interrupted_run_resumes_to_the_same_losses_and_weights(sd_checkpoint, data, tmp_path, monkeypatch):
    whole = train(sd_checkpoint, data, tmp_path / "whole", "--ema-decay", 0.9, "--conditioning-dropout-prob", 0.3)
    interrupted(monkeypatch, lambda: train(sd_checkpoint, data, tmp_path / "cut", "--ema-decay", 0.9,
                                           "--conditioning-dropout-prob", 0.3), 2)
    assert not (tmp_path / "cut" / t2i.MODEL).exists()
    resumed = train(sd_checkpoint, data, tmp_path / "cut", "--ema-decay", 0.9, "--conditioning-dropout-prob", 0.3,
                    "--resume")
    assert resumed["step_losses"] == whole["step_losses"] and len(whole["step_losses"]) == 4
    a, b = unet_weights(tmp_path / "whole"), unet_weights(tmp_path / "cut")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_conditioning_dropout_drops_text_image_and_both_as_the_paper():
    """Of 3,000 draws at p = 0.1: text alone, both, image alone dropped about 10% each; the rest keep both."""
    from fashiongen.training.edit_pairs import EditPair

    pairs = [EditPair(0, 1, ("colour",), "make it red")] * 3000
    data_ = p2p.PairData(torch.ones(2, 4, 2, 2), torch.zeros(2, 4, 2, 2), torch.zeros(3000, dtype=torch.long),
                         torch.ones(3000, dtype=torch.long), torch.ones(3000, 77, dtype=torch.long),
                         torch.zeros(1, 77, dtype=torch.long), 0.5)
    assert len(data_) == len(pairs)
    latents, ids, condition = data_.draw(np.arange(3000), torch.Generator().manual_seed(0), 0.1)
    assert torch.equal(latents, torch.full_like(latents, 0.5))  # targets scaled, sources' modes unscaled
    text, image = ids[:, 0] == 1, condition.flatten(1)[:, 0] == 1
    for kept, expected in (((False, True), 0.1), ((False, False), 0.1), ((True, False), 0.1), ((True, True), 0.7)):
        share = float(((text == kept[0]) & (image == kept[1])).float().mean())
        assert share == pytest.approx(expected, abs=0.025), (kept, share)


def test_model_loads_in_diffusers_exports_and_edits(overfit, data, tmp_path, capsys):
    from diffusers import StableDiffusionInstructPix2PixPipeline

    from fashiongen.cli import main

    model = overfit / t2i.MODEL
    pipe = StableDiffusionInstructPix2PixPipeline.from_pretrained(model, safety_checker=None, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    source = data / "00000.png"
    prompt, seed, steps = "make it red", 7, 3
    ref = pipe(prompt, image=Image.open(source).convert("RGB"), num_inference_steps=steps, guidance_scale=5.0,
               image_guidance_scale=1.5, generator=torch.Generator("cpu").manual_seed(seed), output_type="np").images
    engines, edited = tmp_path / "engines", tmp_path / "edited.png"
    assert main(["export", "--model", str(model), "--out", str(engines), "--no-progress"]) == 0
    assert "(pix2pix)" in capsys.readouterr().out
    assert main(["edit", "--engines", str(engines), "--image", str(source), "--prompt", prompt, "--steps", str(steps),
                 "--guidance", "5", "--image-guidance", "1.5", "--seed", str(seed),
                 "--out", str(edited), "--no-progress"]) == 0
    assert_close_images(np.asarray(Image.open(edited))[None], (ref * 255).round().astype(np.uint8))


def test_an_instruct_pix2pix_base_is_fine_tuned_as_it_is(p2p_checkpoint, data, tmp_path):
    record = train(p2p_checkpoint, data, tmp_path / "run", "--steps", 1, "--instruction-mix", 1.0)
    assert record["widened"] is False and record["steps"] == 1
    assert all(" and " in i or i.startswith(("make ", "give ")) for i in record["example_instructions"])
    base = load_file(str(Path(p2p_checkpoint) / "unet" / "diffusion_pytorch_model.safetensors"))
    assert unet_weights(tmp_path / "run").keys() == base.keys()


def test_a_folder_of_pairs_trains_on_its_pairs(sd_checkpoint, pairs, tmp_path):
    record = train(sd_checkpoint, pairs, tmp_path / "run", "--steps", 1)
    assert record["pairs"] == 32 and record["widened"] is True
    rows = [json.loads(line) for line in (pairs / "metadata.jsonl").read_text().splitlines()]
    words = {row["edit_prompt"] for row in rows} | {row["text"] for row in rows}
    assert set(record["example_instructions"]) <= words


def test_conv_in_learns_at_its_own_rate(sd_checkpoint, pairs, tmp_path):
    """--conv-in-lr-scale: conv_in in a group of its own at K times the rate, every other parameter once at it;
    the first step (Adam's step is the rate, whatever the gradient) moves the image channels K times as far."""
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(Path(sd_checkpoint) / "unet")
    rest, conv_in = p2p.parameter_groups(unet, 8.0)
    assert conv_in["lr_scale"] == 8.0 and {id(p) for p in conv_in["params"]} == {id(p) for p in unet.conv_in.parameters()}
    assert len(rest["params"]) + len(conv_in["params"]) == len(list(unet.parameters()))
    moved = {}
    for scale in (1, 8):
        run = tmp_path / f"scale-{scale}"
        train(sd_checkpoint, pairs, run, "--steps", 1, "--conv-in-lr-scale", scale)
        moved[scale] = unet_weights(run)["conv_in.weight"][:, 4:].abs().max()
    assert float(moved[8]) == pytest.approx(8 * float(moved[1]), rel=1e-3)


def test_pairs_are_read_with_every_image_once_and_either_instruction(pairs):
    from fashiongen.training.imagefolder import read_rows

    rows = read_rows(pairs, "--data", require=())
    for mix, column in ((1.0, "edit_prompt"), (0.0, "text")):
        images, read = p2p.read_pairs(rows, seed=0, instruction_mix=mix)
        assert len(images) == 16 + 32 and len({i.image for i in images}) == len(images)
        for row, pair in zip(rows, read):
            assert images[pair.source].image == row.path("input_image") and images[pair.target].image == row.image
            assert pair.instruction == row.columns[column] and list(pair.changed) == row.columns["changed"]
    mixed = {pair.instruction for pair in p2p.read_pairs(rows, seed=0, instruction_mix=0.5)[1]}
    assert mixed & {row.columns["text"] for row in rows} and mixed & {row.columns["edit_prompt"] for row in rows}


# -- bad input: one line naming the argument, and no run folder left behind ------------------------------------
def test_bad_input_is_refused_in_one_line(sd_checkpoint, data, pairs, tmp_path):
    def run(model, folder, *argv):
        args = parse(["--model", model, "--data", folder, "--out", tmp_path / "run", "--steps", 1, "--no-progress",
                      *argv])
        return lambda: p2p.run(args)

    odd = tmp_path / "six-channel"
    shutil.copytree(sd_checkpoint, odd)
    config = json.loads((odd / "unet" / "config.json").read_text())
    (odd / "unet" / "config.json").write_text(json.dumps({**config, "in_channels": 6}))
    no_image, no_columns = tmp_path / "no-image", tmp_path / "no-columns"
    for folder in (no_image, no_columns):
        shutil.copytree(data, folder)
    (no_image / "00003.png").unlink()
    rewrite_rows(no_columns, lambda rows: [row.pop("sleeve") for row in rows])
    refused(run(odd, data), "--model", "6-channel", "text-to-image", "InstructPix2Pix")
    refused(run(tmp_path / "nowhere", data), "--model", "nowhere")
    refused(run(sd_checkpoint, no_image), "--data", "00003.png", "missing")
    refused(run(sd_checkpoint, no_columns), "--data", "'sleeve' column")
    refused(run(sd_checkpoint, data, "--conditioning-dropout-prob", 0.5), "--conditioning-dropout-prob")
    refused(run(sd_checkpoint, data, "--instruction-mix", 2), "--instruction-mix")
    refused(run(sd_checkpoint, data, "--pairs-per-image", 0), "--pairs-per-image")
    refused(run(sd_checkpoint, data, "--conv-in-lr-scale", 0), "--conv-in-lr-scale", "positive")
    refused(run(sd_checkpoint, data, "--source-init-scale", -1), "--source-init-scale", "0 or more")
    refused(run(sd_checkpoint, data, "--noise-offset", 2), "--noise-offset", "between 0 and 1")
    refused(run(sd_checkpoint, data, "--data", pairs), "--data", "edit pairs", "one kind")
    no_source, no_prompt = tmp_path / "no-source", tmp_path / "no-prompt"
    for folder in (no_source, no_prompt):
        shutil.copytree(pairs, folder)
    (no_source / "sources" / "00002.png").unlink()
    rewrite_rows(no_prompt, lambda rows: rows[3].update(edit_prompt=""))
    refused(run(sd_checkpoint, no_source, "--data", pairs), "--data", "sources/00002.png", "missing")
    refused(run(sd_checkpoint, no_prompt), "--data", "'edit_prompt'", "00001-1.png")
    no_text = tmp_path / "no-text"
    shutil.copytree(data, no_text)
    rewrite_rows(no_text, lambda rows: rows[2].update(text=""))
    refused(run(sd_checkpoint, no_text), "--data", "00002.png", "'text'")
    assert not (tmp_path / "run").exists()


def test_resume_of_another_run_is_refused(overfit, sd_checkpoint, data, tmp_path):
    refused(lambda: train(sd_checkpoint, data, overfit, "--steps", 6, "--batch-size", 4, "--instruction-mix", 0.2,
                          "--resume"), "--resume", "another run", "instruction_mix")
    refused(lambda: train(sd_checkpoint, data, overfit), "--out", "--resume")
    t2i_run = tmp_path / "t2i"  # a text-to-image run's folder
    t2i_run.mkdir()
    (t2i_run / runs.RUN_FILE).write_text(json.dumps({"command": "train"}))
    refused(lambda: train(sd_checkpoint, data, t2i_run, "--resume"), "--resume", "another run")


def test_the_cli_explains_the_command(capsys):
    from fashiongen.cli import main

    with pytest.raises(SystemExit):
        main(["train-pix2pix", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "InstructPix2Pix" in out and "--conditioning-dropout-prob" in out and "--instruction-mix" in out
    assert "make it red" in out and "fashiongen export" in out

"""``fashiongen train-lcm-lora`` on the tiny SD checkpoint (64 px images, a few steps, seconds each).

The solver and boundary scalings are diffusers' (DDIMScheduler, LCMScheduler); the loss falls on a fixed batch; an
interrupted run resumes to the same losses and LoRA; the file loads in diffusers (``load_lora_weights``,
``fuse_lora``, LCMScheduler at 4 steps) and fuses to what ``export --lcm-lora`` merges, whose folder then runs
``--preset fast``; a few distillation steps bring the 1- and 2-step LCM samples closer to the teacher's 50-step one;
bad input is refused in one line, before any run folder is written.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from fashiongen.training import lcm_lora, runs
from fashiongen.training import text_to_image as t2i
from trainer_checks import interrupted, refused

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]
SIZE = 64
PROMPT = "black short sleeve crewneck crop top"


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """Four worn shots of the procedural data set, 64 px, with captions."""
    from fashiongen.training.dataset import write_dataset

    root = tmp_path_factory.mktemp("lcm-data") / "set"
    write_dataset(root, count=4, size=SIZE, test_fraction=0.0, unseen_count=0, progress=False)
    return root / "worn" / "train"


def parse(argv) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    lcm_lora.add_arguments(parser)
    return parser.parse_args([str(a) for a in argv])


def distil(teacher, data, out, *extra) -> dict:
    """Run ``train-lcm-lora`` (rank 4, 4 steps, a checkpoint every 2); return its training.json."""
    args = parse(["--model", teacher, "--data", data, "--out", out, "--resolution", SIZE, "--batch-size", 2,
                  "--rank", 4, "--learning-rate", 1e-3, "--steps", 4, "--checkpoint-every", 2, "--no-progress",
                  *extra])
    assert lcm_lora.run(args) == 0
    return json.loads((Path(out) / t2i.RECORD).read_text())


@pytest.fixture(scope="module")
def distilled(sd_checkpoint, data, tmp_path_factory) -> Path:
    """Distilled with the step generator pinned (the same latents, timesteps, guidance and noise every step): an
    overfit whose loss must fall. With fresh draws each step the loss varies more between draws than it learns."""
    out = tmp_path_factory.mktemp("lcm-overfit") / "run"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(runs, "step_generator", lambda seed, step, micro=0: torch.Generator().manual_seed(3))
        distil(sd_checkpoint, data, out, "--steps", 6, "--batch-size", 4, "--learning-rate", 3e-3)
    return out


def test_solver_and_scalings_are_diffusers(sd_checkpoint):
    """One solver step is DDIMScheduler's (eta 0) from t to t - k; c_skip / c_out are LCMScheduler's."""
    from diffusers import DDIMScheduler, LCMScheduler

    config = json.loads((Path(sd_checkpoint) / "scheduler" / "scheduler_config.json").read_text())
    ddim = DDIMScheduler.from_config(config, set_alpha_to_one=False, timestep_spacing="trailing")  # LCM's t_n
    ddim.set_timesteps(50)
    solver = lcm_lora.DDIMSolver.build(ddim.alphas_cumprod, 50)
    start, end = solver.timesteps(torch.arange(50))
    assert start.tolist() == sorted(ddim.timesteps.tolist()) and solver.skip == 20
    assert end.tolist() == [0] + start[:-1].tolist()
    gen = torch.Generator().manual_seed(0)
    x, eps = torch.randn(1, 4, 8, 8, generator=gen), torch.randn(1, 4, 8, 8, generator=gen)
    for n in (3, 49):  # DDIMScheduler's step to t - k: the sample from x0 and eps at t
        t = start[n : n + 1]
        x0, noise = lcm_lora.estimates(eps, x, t, ddim.alphas_cumprod, "epsilon")
        want = ddim.step(eps, int(t), x, eta=0.0).prev_sample
        torch.testing.assert_close(solver.step(x0, noise, end[n : n + 1]), want, atol=1e-5, rtol=1e-5)
    lcm = LCMScheduler.from_config(config)
    for t in (0, 19, 999):
        want = lcm.get_scalings_for_boundary_condition_discrete(t)
        got = lcm_lora.boundary_scalings(torch.tensor([t]), 10.0)
        assert [float(g) for g in got] == pytest.approx([float(w) for w in want], rel=1e-6)


def test_loss_falls_and_only_the_lora_is_written(distilled):
    record = json.loads((distilled / t2i.RECORD).read_text())
    losses = record["step_losses"]
    assert len(losses) == 6 and losses[-1] < 0.8 * losses[0], losses
    assert record["final_loss"] == losses[-1] and record["loss"] == "huber" and record["lora_alpha"] == 4.0
    assert (record["w_min"], record["w_max"], record["num_ddim_timesteps"]) == (3.0, 15.0, 50)
    assert record["wall_seconds"] >= 0 and record["arguments"]["seed"] == 0
    weights = load_file(str(distilled / lcm_lora.LORA_FILE))
    assert weights and all(k.startswith("unet.") and (".lora_A." in k or ".lora_B." in k) for k in weights)
    assert any(".resnets.0.conv1." in k for k in weights) and any(".ff.net.2." in k for k in weights)
    assert any(w.abs().max() > 0 for k, w in weights.items() if ".lora_B." in k)  # lora_B starts at zero
    assert sorted(p.name for p in distilled.iterdir()) == sorted(
        [lcm_lora.LORA_FILE, t2i.RECORD, t2i.LATENTS_CACHE, runs.RUN_FILE, runs.CHECKPOINTS])


def test_interrupted_run_resumes_to_the_same_losses_and_lora(sd_checkpoint, data, tmp_path, monkeypatch):
    whole = distil(sd_checkpoint, data, tmp_path / "whole")
    interrupted(monkeypatch, lambda: distil(sd_checkpoint, data, tmp_path / "cut"), 2)
    assert not (tmp_path / "cut" / lcm_lora.LORA_FILE).exists()
    checkpoint = tmp_path / "cut" / runs.CHECKPOINTS / "step-0000002"
    assert sorted(p.name for p in checkpoint.iterdir()) == ["lora.safetensors", "progress.json", "state.pt"]
    resumed = distil(sd_checkpoint, data, tmp_path / "cut", "--resume")
    assert resumed["step_losses"] == whole["step_losses"] and len(whole["step_losses"]) == 4
    a, b = (load_file(str(tmp_path / run / lcm_lora.LORA_FILE)) for run in ("whole", "cut"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_diffusers_loads_and_fuses_it_as_export_merges_it(distilled, sd_checkpoint):
    """``load_lora_weights`` + ``fuse_lora`` give the UNet that ``export --lcm-lora`` merges (same alphas), and
    the fused pipeline samples with LCMScheduler in 4 steps."""
    from diffusers import LCMScheduler, StableDiffusionPipeline, UNet2DConditionModel

    from fashiongen.export.lora import merge_loras, read_lora

    pipe = StableDiffusionPipeline.from_pretrained(sd_checkpoint, safety_checker=None, local_files_only=True)
    pipe.load_lora_weights(distilled)  # the run folder: diffusers' default file name
    pipe.fuse_lora()
    pipe.unload_lora_weights()
    merged = UNet2DConditionModel.from_pretrained(Path(sd_checkpoint) / "unet", local_files_only=True)
    records = merge_loras({"unet": merged}, [read_lora(distilled / lcm_lora.LORA_FILE)])
    assert records[0]["format"] == "peft" and records[0]["layers"]["unet"] == len(
        load_file(str(distilled / lcm_lora.LORA_FILE))) // 2
    fused = pipe.unet.state_dict()
    for name, weight in merged.state_dict().items():
        torch.testing.assert_close(fused[name], weight, atol=1e-6, rtol=1e-6)
    pipe.scheduler = LCMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    images = pipe(PROMPT, num_inference_steps=4, guidance_scale=1.0, height=SIZE, width=SIZE,
                  generator=torch.Generator().manual_seed(0), output_type="np").images
    assert images.shape == (1, SIZE, SIZE, 3) and np.isfinite(images).all()


def test_export_takes_it_and_preset_fast_runs(distilled, sd_checkpoint, tmp_path, capsys):
    from PIL import Image

    from fashiongen.cli import main

    engines = tmp_path / "engines"
    assert main(["export", "--model", str(sd_checkpoint), "--lcm-lora", str(distilled / lcm_lora.LORA_FILE),
                 "--out", str(engines), "--no-progress"]) == 0
    manifest = json.loads((engines / "manifest.json").read_text())
    assert manifest["presets"]["fast"]["scheduler"] == "lcm" and manifest["source"]["loras"][0]["lcm"] is True
    capsys.readouterr()
    assert main(["generate", "--engines", str(engines), "--prompt", PROMPT, "--seed", "7", "--height", str(SIZE),
                 "--width", str(SIZE), "--out", str(tmp_path / "fast.png"), "--no-progress", "--preset", "fast"]) == 0
    assert "preset fast: lcm scheduler, 4 steps, guidance 1" in capsys.readouterr().err
    assert np.asarray(Image.open(tmp_path / "fast.png")).shape == (SIZE, SIZE, 3)


def test_a_few_distillation_steps_bring_few_step_samples_toward_the_teacher(sd_checkpoint, data, tmp_path):
    """40 steps (about 10 s) with w fixed at 0 (the teacher's conditional ODE, so its reference sample is plain
    50-step DDIM at guidance 1): the student's 1- and 2-step LCM samples (latents, the same noise, 4 prompts) are
    closer to the teacher's than those of the un-distilled UNet. Deterministic; seeds 0, 1 and 2 all gave 5-15%
    (1 step) and 2-6% (2 steps) closer, so the margins below are not one lucky draw."""
    from diffusers import DDIMScheduler, LCMScheduler, StableDiffusionPipeline

    distil(sd_checkpoint, data, tmp_path / "run", "--steps", 40, "--batch-size", 4, "--learning-rate", 2e-3,
           "--w-min", 0, "--w-max", 0, "--checkpoint-every", 40)
    pipe = StableDiffusionPipeline.from_pretrained(sd_checkpoint, safety_checker=None, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    prompts = [PROMPT, "red striped maxi skirt", "blue denim pants", "white dress"]

    def sample(scheduler, steps: int):
        pipe.scheduler = scheduler.from_config(pipe.scheduler.config)
        return pipe(prompts, num_inference_steps=steps, guidance_scale=1.0, height=SIZE, width=SIZE,
                    output_type="latent", generator=torch.Generator().manual_seed(5)).images

    def distance(steps: int) -> float:
        return float(((sample(LCMScheduler, steps) - teacher) ** 2).mean(dim=(1, 2, 3)).sqrt().mean())

    teacher = sample(DDIMScheduler, 50)
    before = {steps: distance(steps) for steps in (1, 2)}
    pipe.load_lora_weights(tmp_path / "run")
    pipe.fuse_lora()
    after = {steps: distance(steps) for steps in (1, 2)}
    assert after[1] < 0.95 * before[1] and after[2] < 0.98 * before[2], (before, after)


# -- bad input: one line naming the argument, and no run folder left behind ------------------------------------
def test_bad_input_is_refused_in_one_line(sd_checkpoint, p2p_checkpoint, data, tmp_path):
    def run(teacher, *argv):
        return lambda: lcm_lora.run(parse(["--model", teacher, "--data", data, "--out", tmp_path / "run",
                                           "--steps", 1, "--no-progress", *argv]))

    refused(run(tmp_path / "nowhere"), "nowhere")
    refused(run(data), str(data), "model_index.json")  # an imagefolder, not an SD folder
    refused(run(p2p_checkpoint), "--model", "8-channel", "train-lcm-lora")
    refused(run(sd_checkpoint, "--w-min", 9, "--w-max", 3), "--w-min", "--w-max")
    refused(run(sd_checkpoint, "--rank", 0), "--rank", "at least 1")
    refused(run(sd_checkpoint, "--lora-alpha", -4), "--lora-alpha")
    refused(run(sd_checkpoint, "--huber-c", 0), "--huber-c")
    refused(run(sd_checkpoint, "--num-ddim-timesteps", 0), "--num-ddim-timesteps")
    refused(run(sd_checkpoint, "--num-ddim-timesteps", 5000), "--num-ddim-timesteps", "1000")
    refused(run(sd_checkpoint, "--resolution", 60), "--resolution", "multiple of 8")
    assert not (tmp_path / "run").exists()


def test_resume_of_another_run_is_refused(distilled, sd_checkpoint, data):
    refused(lambda: distil(sd_checkpoint, data, distilled, "--steps", 6, "--batch-size", 4, "--learning-rate",
                           3e-3, "--w-max", 8, "--resume"), "--resume", "another run", "w_max")
    refused(lambda: distil(sd_checkpoint, data, distilled), "--out", "--resume")


def test_the_cli_lists_it_with_its_recipe(capsys):
    from fashiongen.cli import main

    with pytest.raises(SystemExit):
        main(["train-lcm-lora", "--help"])
    out = " ".join(capsys.readouterr().out.split()).replace("- ", "-")  # argparse wraps after a hyphen
    assert all(flag in out for flag in ("--rank", "--w-min", "--w-max", "--num-ddim-timesteps", "--loss", "--lcm-lora",
                                        "--preset fast"))
    assert "--config" not in out  # train's base-size option is not this command's

"""``fashiongen train-tiny-vae`` on the tiny SD checkpoint (64 px images, a 16-channel tiny VAE, a few steps).

The loss falls; an interrupted run resumes to the same losses and weights; the output is an AutoencoderTiny folder
that diffusers loads and ``export --tiny-vae`` takes; bad input is refused in one line.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from fashiongen.random_checkpoints.tiny_vae import TINY_TAESD
from fashiongen.training import tiny_autoencoder as tiny
from test_train_text_to_image import SIZE, data, parse  # noqa: F401 (data: the fixture, four 64 px shots)
from trainer_checks import interrupted, refused

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]
WEIGHTS = "diffusion_pytorch_model.safetensors"


@pytest.fixture(scope="module")
def config_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("tiny-config") / "tiny.json"
    path.write_text(json.dumps({k: list(v) for k, v in TINY_TAESD.items()}))
    return path


def train(model, data, out, config, *extra) -> dict:
    """Run train-tiny-vae; return its training.json."""
    args = parse(tiny, ["--model", model, "--config", config, "--data", data, "--out", out, "--resolution", SIZE,
                        "--batch-size", 4, "--learning-rate", 2e-3, "--steps", 4, "--checkpoint-every", 2,
                        "--no-progress", *extra])
    assert tiny.run(args) == 0
    return json.loads((Path(out) / tiny.MODEL / tiny.RECORD).read_text())


@pytest.fixture(scope="module")
def trained(sd_checkpoint, data, config_file, tmp_path_factory) -> Path:  # noqa: F811
    out = tmp_path_factory.mktemp("tiny-run") / "run"
    train(sd_checkpoint, data, out, config_file, "--steps", 8, "--teacher-weight", 0.5, "--edge-weight", 0.5,
          "--latent-noise", 0.3)
    return out


def test_loss_falls_and_the_record_measures_quality(trained):
    record = json.loads((trained / tiny.MODEL / tiny.RECORD).read_text())
    losses = record["step_losses"]
    assert len(losses) == 8 and losses[-1] < 0.8 * losses[0], losses
    quality = record["quality"]
    assert quality["images"] == 4 and quality["teacher_psnr_vs_image"] > 0
    assert record["tiny_config"]["num_decoder_blocks"] == [1, 1, 1, 1]


def test_the_edge_term_sees_texture_that_a_plain_colour_shift_does_not_have():
    loss = tiny.DistillationLoss(*[None] * 8, torch.eye(3))
    reference = torch.zeros(1, 3, 8, 8)
    shifted = reference + 0.25                       # every pixel off by the same amount: no edge is wrong
    striped = reference.clone()
    striped[..., ::2, :] = 0.5                       # stripes the reference does not have (same pixel MSE)
    assert loss.pixel_error(shifted, reference) > 0 and loss.edge_error(shifted, reference) == 0
    assert loss.pixel_error(striped, reference) == pytest.approx(float(loss.pixel_error(shifted, reference) * 2))
    assert loss.edge_error(striped, reference) == pytest.approx(0.125)  # (0.25 vertical + 0 horizontal) / 2


def test_latent_noise_feeds_the_teacher_terms_jittered_latents(sd_checkpoint, data, config_file,  # noqa: F811
                                                               tmp_path):
    plain = train(sd_checkpoint, data, tmp_path / "plain", config_file, "--edge-weight", 0.5)
    jittered = train(sd_checkpoint, data, tmp_path / "jittered", config_file, "--edge-weight", 0.5,
                     "--latent-noise", 1.0)
    # the same weights and batch: only the jitter can make the first losses differ
    assert plain["step_losses"][0] != jittered["step_losses"][0]


def test_latent_offset_shifts_each_channel_of_each_image_by_one_constant_within_the_bound():
    loss = tiny.DistillationLoss(*[None] * 9, latent_offset=0.2)
    jitter = loss.jitter((64, 4, 3, 5), torch.Generator().manual_seed(0))
    per_channel = jitter[:, :, :1, :1]
    assert torch.equal(jitter, per_channel.expand_as(jitter))  # a constant over the image: its overall colour
    assert per_channel.abs().max() <= 0.2 and per_channel.min() < -0.15 and per_channel.max() > 0.15
    assert len(set(per_channel.flatten().tolist())) == 64 * 4  # drawn per image and per channel
    both = tiny.DistillationLoss(*[None] * 9, latent_noise=0.3, latent_offset=0.2).jitter(
        (64, 4, 3, 5), torch.Generator().manual_seed(0))
    noise = tiny.DistillationLoss(*[None] * 9, latent_noise=0.3).jitter((64, 4, 3, 5), torch.Generator().manual_seed(0))
    assert not torch.equal(both, noise) and (both - noise).std(dim=(2, 3)).max() < 1e-6  # the noise, then the offset


def test_init_starts_from_a_trained_tiny_vae(trained, sd_checkpoint, data, tmp_path):  # noqa: F811
    args = parse(tiny, ["--model", sd_checkpoint, "--init", trained / tiny.MODEL, "--data", data, "--out",
                        tmp_path / "tuned", "--resolution", SIZE, "--batch-size", 4, "--learning-rate", 2e-3,
                        "--steps", 2, "--no-progress", "--teacher-weight", 0.5, "--edge-weight", 0.5])
    assert tiny.run(args) == 0
    record = json.loads((tmp_path / "tuned" / tiny.MODEL / tiny.RECORD).read_text())
    before = json.loads((trained / tiny.MODEL / tiny.RECORD).read_text())
    # it starts near where the trained run ended, not at random, and keeps the trained one's size
    assert record["step_losses"][0] < 0.8 * before["step_losses"][0]
    assert record["tiny_config"] == before["tiny_config"]


def test_interrupted_run_resumes_to_the_same_losses_and_weights(sd_checkpoint, data, config_file, tmp_path,  # noqa: F811
                                                                monkeypatch):
    jitter = ("--edge-weight", 0.5, "--latent-noise", 0.3)  # the jitter's draws are the step's too
    whole = train(sd_checkpoint, data, tmp_path / "whole", config_file, *jitter)
    interrupted(monkeypatch, lambda: train(sd_checkpoint, data, tmp_path / "cut", config_file, *jitter), 2)
    assert not (tmp_path / "cut" / tiny.MODEL).exists()
    resumed = train(sd_checkpoint, data, tmp_path / "cut", config_file, *jitter, "--resume")
    assert resumed["step_losses"] == whole["step_losses"] and len(whole["step_losses"]) == 4
    a, b = (load_file(str(tmp_path / run / tiny.MODEL / WEIGHTS)) for run in ("whole", "cut"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_output_loads_in_diffusers_and_exports(trained, sd_checkpoint, tmp_path):
    from diffusers import AutoencoderTiny

    from fashiongen.export.sd_export import export_engine_folder
    from fashiongen.runtime.engines import EngineSet
    from fashiongen.runtime.txt2img import Txt2ImgPipeline, Txt2ImgRequest

    model = trained / tiny.MODEL
    vae = AutoencoderTiny.from_pretrained(model, local_files_only=True)
    assert vae.config.decoder_block_out_channels == [16, 16, 16, 16] and vae.config.scaling_factor == 1.0
    manifest = export_engine_folder(tmp_path / "engines", sd_checkpoint, progress=False, tiny_vae_dir=model)
    assert manifest.networks["vae_decoder_tiny"].validation["max_abs_diff"] <= 1e-4
    images = Txt2ImgPipeline(EngineSet(tmp_path / "engines"))(
        Txt2ImgRequest(prompt="a red dress", steps=2, height=SIZE, width=SIZE, decoder="tiny"), progress=False).images
    assert images.shape == (1, SIZE, SIZE, 3)


def test_bad_input_is_refused_in_one_line(sd_checkpoint, sd_engines, segmenter_engines, data, config_file,  # noqa: F811
                                          tmp_path):
    def run(*argv, model=sd_checkpoint, config=config_file, data_dir=data):
        size = [] if config is None else ["--config", config]
        return lambda: tiny.run(parse(tiny, ["--model", model, *size, "--data", data_dir, "--out",
                                             tmp_path / "run", "--no-progress", *argv]))

    refused(run(data_dir=tmp_path / "missing"), "--data", "is not a folder")
    no_vae = tmp_path / "no-vae"
    shutil.copytree(sd_checkpoint, no_vae, ignore=shutil.ignore_patterns("vae"))
    refused(run(model=no_vae), "--model", "no vae/config.json")
    refused(run(model=tmp_path / "nowhere"), "--model", "is not a folder")
    unknown = tmp_path / "unknown.json"
    unknown.write_text(json.dumps({"num_decoder_blocks": [1, 1, 1, 1], "channels": 8}))
    refused(run(config=unknown), "--config", "unknown key 'channels'")
    shallow = tmp_path / "shallow.json"
    shallow.write_text(json.dumps({"decoder_block_out_channels": [8, 8, 8], "num_decoder_blocks": [1, 1, 1]}))
    refused(run(config=shallow), "--config", "downscale 4", "8")
    mismatched = tmp_path / "mismatched.json"
    mismatched.write_text(json.dumps({"num_encoder_blocks": [1, 1]}))
    refused(run(config=mismatched), "--config", "num_encoder_blocks 2")
    widening = tmp_path / "widening.json"  # DecoderTiny's convs keep one width: diffusers would fail mid-forward
    widening.write_text(json.dumps({"decoder_block_out_channels": [16, 8, 8, 8]}))
    refused(run(config=widening), "--config", "decoder_block_out_channels must all be equal")
    refused(run("--teacher-weight", "-1"), "--teacher-weight")
    refused(run("--edge-weight", "nan"), "--edge-weight", "non-negative")
    refused(run("--latent-noise", "0.2"), "--latent-noise", "needs --teacher-weight or --edge-weight")
    refused(run("--latent-offset", "0.2"), "--latent-offset", "needs --teacher-weight or --edge-weight")
    refused(run("--teacher-weight", "1", "--latent-offset", "-0.1"), "--latent-offset", "non-negative")
    refused(run("--colour-whitening", "0.6"), "--colour-whitening", "0.5")
    refused(run("--sampler", sd_engines), "--sampler", "needs --teacher-weight or --edge-weight")
    refused(run("--edge-weight", "1", "--sampler", tmp_path / "nowhere"), "--sampler", "is not a folder")
    refused(run("--edge-weight", "1", "--sampler", segmenter_engines), "--sampler", "segmenter")
    refused(run("--edge-weight", "1", "--sampler-steps", "4"), "--sampler-steps", "without --sampler")
    refused(run("--init", sd_checkpoint / "vae", config=None), "--init", "not an AutoencoderTiny")
    refused(run("--init", tmp_path / "nowhere", config=None), "--init", "no config.json")
    refused(run("--init", sd_checkpoint / "vae"), "--config", "not with --init")
    refused(run("--edge-weight", "1", "--sampler", sd_engines, "--sampler-steps", "0"), "--sampler-steps", "positive")
    assert not (tmp_path / "run").exists()


def test_sampler_latents_feed_the_teacher_terms_and_are_cached(sd_checkpoint, sd_engines, data, config_file,  # noqa: F811
                                                                tmp_path, monkeypatch):
    plain = train(sd_checkpoint, data, tmp_path / "plain", config_file, "--edge-weight", 0.5)
    run = tmp_path / "sampled"
    sampled = train(sd_checkpoint, data, run, config_file, "--edge-weight", 0.5, "--sampler", sd_engines,
                    "--sampler-steps", 2)
    assert plain["step_losses"][0] != sampled["step_losses"][0]  # the same weights and batch: only the sampler's
    latents = load_file(str(run / tiny.SAMPLER_CACHE))["latents"]
    assert latents.shape == (4, 4, SIZE // 8, SIZE // 8) and latents.std() > 0.1  # one a caption, denoised
    from fashiongen.runtime.engines import EngineSet
    from fashiongen.runtime.txt2img import Txt2ImgPipeline, Txt2ImgRequest

    first = json.loads((data / "metadata.jsonl").read_text().splitlines()[0])["text"]
    again = Txt2ImgPipeline(EngineSet(sd_engines)).latents(Txt2ImgRequest(prompt=first, seed=0, steps=2,
                                                                          height=SIZE, width=SIZE))
    assert torch.allclose(latents[:1], torch.from_numpy(again))  # caption i, seed --seed + i (0 here)
    monkeypatch.setattr(Txt2ImgPipeline, "latents", lambda *a, **k: pytest.fail("the cache was not read"))
    resumed = train(sd_checkpoint, data, run, config_file, "--edge-weight", 0.5, "--sampler", sd_engines,
                    "--sampler-steps", 2, "--steps", 6, "--resume")
    assert resumed["step_losses"][:4] == sampled["step_losses"]

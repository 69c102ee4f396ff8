"""``fashiongen train`` and ``train-vae`` on tiny SD checkpoints (64 px images, a few steps).

The loss falls on a fixed batch; an interrupted run resumes to the same losses and weights; the model folder
loads in diffusers and exports, and the engines draw what diffusers draws from it; --config starts from random
weights; bad input is refused in one line, before any run folder is written.
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

from fashiongen.training import autoencoder, runs
from fashiongen.training import text_to_image as t2i
from test_txt2img_parity import assert_close_images
from trainer_checks import interrupted, refused

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]
SIZE = 64
#: A size for --config: the TINY checkpoint's, as JSON a user would write.
CONFIG = {"unet_channels": [32, 64], "cross_attention_dim": 32, "text_intermediate": 64,
          "vae_channels": [32, 32, 32, 32]}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """Four worn shots of the procedural data set, 64 px, with captions."""
    from fashiongen.training.dataset import write_dataset

    root = tmp_path_factory.mktemp("t2i-data") / "set"
    write_dataset(root, count=4, size=SIZE, test_fraction=0.0, unseen_count=0, progress=False)
    return root / "worn" / "train"


@pytest.fixture(scope="module")
def config_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("t2i-config") / "size.json"
    path.write_text(json.dumps(CONFIG))
    return path


def parse(module, argv) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    module.add_arguments(parser)
    return parser.parse_args([str(a) for a in argv])


def train(base: list, data, out, *extra) -> dict:
    """Run ``train``; return its training.json."""
    args = parse(t2i, [*base, "--data", data, "--out", out, "--resolution", SIZE, "--batch-size", 2,
                       "--learning-rate", 1e-3, "--steps", 4, "--checkpoint-every", 2, "--no-progress", *extra])
    assert t2i.run(args) == 0
    return json.loads((Path(out) / t2i.MODEL / t2i.RECORD).read_text())


def unet_weights(run: Path) -> dict:
    return load_file(str(run / t2i.MODEL / "unet" / "diffusion_pytorch_model.safetensors"))


@pytest.fixture(scope="module")
def overfit(sd_checkpoint, data, tmp_path_factory) -> Path:
    """Fine-tuned with the step generator pinned (the same noise and timesteps every step): an overfit whose
    loss must fall. With fresh noise each step the tiny UNet's loss varies more between draws than it learns."""
    out = tmp_path_factory.mktemp("t2i-overfit") / "run"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(runs, "step_generator", lambda seed, step, micro=0: torch.Generator().manual_seed(3))
        train(["--model", sd_checkpoint], data, out, "--steps", 6, "--batch-size", 4)
    return out


def test_loss_falls_and_only_the_unet_moves(overfit, sd_checkpoint):
    from fashiongen.export.sd_export import load_checkpoint

    record = json.loads((overfit / t2i.MODEL / t2i.RECORD).read_text())
    losses = record["step_losses"]
    assert len(losses) == 6 and losses[-1] < 0.9 * losses[0], losses
    assert record["final_loss"] == losses[-1] and record["prediction_type"] == "epsilon"
    assert record["train_text_encoder"] is False and record["caption_dropout"] == 0.0  # --model's defaults
    base = load_checkpoint(sd_checkpoint)
    trained = unet_weights(overfit)
    assert any(not torch.equal(trained[k], w) for k, w in base["unet"].state_dict().items())
    for part in ("vae", "text_encoder", "tokenizer"):  # untrained parts are the base's files
        for source in (Path(sd_checkpoint) / part).iterdir():
            assert (overfit / t2i.MODEL / part / source.name).read_bytes() == source.read_bytes(), source


def test_interrupted_run_resumes_to_the_same_losses_and_weights(sd_checkpoint, data, tmp_path, monkeypatch):
    whole = train(["--model", sd_checkpoint], data, tmp_path / "whole", "--ema-decay", 0.9)
    interrupted(monkeypatch, lambda: train(["--model", sd_checkpoint], data, tmp_path / "cut", "--ema-decay", 0.9), 2)
    assert not (tmp_path / "cut" / t2i.MODEL).exists()
    resumed = train(["--model", sd_checkpoint], data, tmp_path / "cut", "--ema-decay", 0.9, "--resume")
    assert resumed["step_losses"] == whole["step_losses"] and len(whole["step_losses"]) == 4
    a, b = unet_weights(tmp_path / "whole"), unet_weights(tmp_path / "cut")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_model_loads_in_diffusers_and_the_engines_draw_the_same(overfit, tmp_path):
    from diffusers import StableDiffusionPipeline

    from fashiongen.export.sd_export import export_engine_folder
    from fashiongen.runtime.engines import EngineSet
    from fashiongen.runtime.txt2img import Txt2ImgPipeline, Txt2ImgRequest

    model = overfit / t2i.MODEL
    pipe = StableDiffusionPipeline.from_pretrained(model, safety_checker=None, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    engines = tmp_path / "engines"
    export_engine_folder(engines, model, [], progress=False)
    prompt, seed, steps = "black short sleeve crewneck crop top", 99, 4
    ours = Txt2ImgPipeline(EngineSet(engines))(
        Txt2ImgRequest(prompt=prompt, seed=seed, steps=steps, height=SIZE, width=SIZE), progress=False).images
    ref = pipe(prompt, num_inference_steps=steps, guidance_scale=7.5, height=SIZE, width=SIZE,
               generator=torch.Generator("cpu").manual_seed(seed), output_type="np").images
    assert_close_images(ours, (ref * 255).round().astype(np.uint8))


def test_config_starts_from_random_weights_and_trains_the_text_encoder(config_file, data, tmp_path):
    record = train(["--config", config_file], data, tmp_path / "run", "--steps", 2,
                   "--validation-prompt", "red striped maxi skirt", "--validation-images", 1)
    assert record["train_text_encoder"] is True and record["caption_dropout"] == 0.1  # --config's defaults
    base, model = tmp_path / "run" / t2i.BASE, tmp_path / "run" / t2i.MODEL
    assert json.loads((model / "unet" / "config.json").read_text())["block_out_channels"] == [32, 64]
    base_text = load_file(str(base / "text_encoder" / "model.safetensors"))
    text = load_file(str(model / "text_encoder" / "model.safetensors"))
    assert any(not torch.equal(text[k], base_text[k]) for k in base_text)
    grid = np.asarray(Image.open(tmp_path / "run" / t2i.VALIDATION / "step-0000002.png"))
    assert grid.shape == (SIZE, SIZE, 3)


def test_train_vae_learns_and_sets_the_latent_scale(config_file, data, tmp_path):
    out = tmp_path / "vae"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(runs, "step_generator", lambda seed, step, micro=0: torch.Generator().manual_seed(5))
        args = parse(autoencoder, ["--config", config_file, "--data", data, "--out", out, "--resolution", SIZE,
                                   "--batch-size", 4, "--learning-rate", 2e-3, "--steps", 6, "--no-progress"])
        assert autoencoder.run(args) == 0
    record = json.loads((out / t2i.MODEL / t2i.RECORD).read_text())
    losses = record["step_losses"]
    assert len(losses) == 6 and losses[-1] < 0.9 * losses[0], losses
    vae_config = json.loads((out / t2i.MODEL / "vae" / "config.json").read_text())
    assert vae_config["scaling_factor"] == pytest.approx(record["scaling_factor"]) != 0.18215
    # the VAE's run folder is what `train --model` takes next
    assert train(["--model", out / t2i.MODEL], data, tmp_path / "next", "--steps", 1)["steps"] == 1



def test_train_vae_decoder_only_keeps_the_latent_space(sd_checkpoint, data, tmp_path):
    """--decoder-only tunes the decoder (as Stability's ft-MSE decoder): the encoder, and so every latent a UNet
    was trained on, stays; scaling_factor stays."""
    out = tmp_path / "decoder"
    args = parse(autoencoder, ["--model", sd_checkpoint, "--decoder-only", "--data", data, "--out", out,
                               "--resolution", SIZE, "--batch-size", 4, "--learning-rate", 2e-3, "--steps", 4,
                               "--no-progress"])
    assert autoencoder.run(args) == 0
    before = load_file(str(Path(sd_checkpoint) / "vae" / "diffusion_pytorch_model.safetensors"))
    after = load_file(str(out / t2i.MODEL / "vae" / "diffusion_pytorch_model.safetensors"))
    frozen = [k for k in before if k.startswith(("encoder.", "quant_conv."))]
    tuned = [k for k in before if k.startswith(("decoder.", "post_quant_conv."))]
    assert frozen and len(frozen) + len(tuned) == len(before)
    for key in frozen:  # the encoder's first conv went through the colour basis and back: float rounding only
        torch.testing.assert_close(after[key], before[key], atol=1e-5, rtol=1e-5)
    assert sum(not torch.allclose(after[k], before[k], atol=1e-5) for k in tuned) > len(tuned) // 2
    assert json.loads((out / t2i.MODEL / "vae" / "config.json").read_text())["scaling_factor"] == json.loads(
        (Path(sd_checkpoint) / "vae" / "config.json").read_text())["scaling_factor"]


def test_train_vae_adversarial_term_trains_a_discriminator_and_resumes(sd_checkpoint, data, tmp_path):
    """--adversarial-weight: the discriminator learns beside the decoder (checkpointed, not in the model), the
    decoder's weights move differently than under the squared error alone, and a resumed run repeats the
    losses."""
    def vae_run(out, steps, *extra):
        args = parse(autoencoder, ["--model", sd_checkpoint, "--decoder-only", "--data", data, "--out", out,
                                   "--resolution", SIZE, "--batch-size", 2, "--learning-rate", 1e-3, "--steps", steps,
                                   "--checkpoint-every", 2, "--no-progress", *extra])
        assert autoencoder.run(args) == 0
        return json.loads((out / t2i.MODEL / t2i.RECORD).read_text())["step_losses"]

    plain = vae_run(tmp_path / "plain", 4)
    whole = vae_run(tmp_path / "whole", 4, "--adversarial-weight", 0.5)
    vae_run(tmp_path / "split", 2, "--adversarial-weight", 0.5)
    assert vae_run(tmp_path / "split", 4, "--adversarial-weight", 0.5, "--resume") == whole
    assert all(a > b for a, b in zip(whole, plain))  # the hinge loss rides on the step's loss
    checkpoint = sorted((tmp_path / "whole" / "checkpoints").iterdir())[-1]
    assert (checkpoint / "discriminator.safetensors").is_file()
    saved = load_file(str(tmp_path / "whole" / t2i.MODEL / "vae" / "diffusion_pytorch_model.safetensors"))
    assert not any("layers." in k for k in saved)
    tuned = load_file(str(tmp_path / "plain" / t2i.MODEL / "vae" / "diffusion_pytorch_model.safetensors"))
    assert not torch.allclose(saved["decoder.conv_out.weight"], tuned["decoder.conv_out.weight"])
    assert json.loads((tmp_path / "whole" / "run.json").read_text())["adversarial_weight"] == 0.5


def test_learning_rate_schedules():
    from fashiongen.training.options import Schedule

    constant = Schedule(steps=10, batch_size=1, learning_rate=1.0, warmup_steps=4)
    assert [constant.lr_factor(s) for s in (0, 3, 9)] == [0.25, 1.0, 1.0]
    cosine = Schedule(steps=10, batch_size=1, learning_rate=1.0, warmup_steps=2, lr_schedule="cosine")
    factors = [cosine.lr_factor(s) for s in range(10)]
    assert factors[:3] == [0.5, 1.0, 1.0] and factors[6] == pytest.approx(0.5)
    assert all(a > b for a, b in zip(factors[2:], factors[3:])) and factors[-1] > 0


def test_colour_basis_whitens_and_recolour_keeps_the_function(sd_checkpoint):
    """The train-vae loss sees every colour direction with unit variance, and the VAE trained in that basis
    is the same function once the basis is folded back into its first and last convolutions."""
    from diffusers import AutoencoderKL

    rng = np.random.default_rng(0)
    grey = rng.integers(0, 256, (6, 16, 16, 1))
    images = np.clip(grey + rng.integers(-12, 13, (6, 16, 16, 3)), 0, 255).astype(np.uint8)  # mostly brightness
    basis = autoencoder.colour_basis(images, 0.5)
    pixels = (images.reshape(-1, 3) / 127.5 - 1.0) @ basis.T
    variances = np.linalg.eigvalsh(np.cov(pixels.T))
    assert variances.max() / variances.min() == pytest.approx(1.0, abs=1e-3)
    assert np.linalg.det(basis) == pytest.approx(1.0, rel=1e-5)
    assert np.allclose(autoencoder.colour_basis(images, 0.0), np.eye(3), atol=1e-6)

    vae = AutoencoderKL.from_pretrained(Path(sd_checkpoint) / "vae").eval()
    x = torch.from_numpy(rng.uniform(-1, 1, (1, 3, 32, 32)).astype(np.float32))
    a = torch.from_numpy(basis)

    def roundtrip(model, image):
        with torch.no_grad():
            return model.decode(model.encode(image).latent_dist.mean).sample

    before = roundtrip(vae, x)
    autoencoder.recolour(vae, basis)
    whitened = roundtrip(vae, torch.einsum("ij,bjhw->bihw", a, x))
    torch.testing.assert_close(torch.einsum("ij,bjhw->bihw", torch.linalg.inv(a), whitened), before,
                               atol=1e-4, rtol=1e-4)
    autoencoder.recolour(vae, np.linalg.inv(basis))
    torch.testing.assert_close(roundtrip(vae, x), before, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_snr_floor_weighs_the_noisiest_steps_by_the_clean_latent_error(prediction_type):
    """The weight is the clean-latent error's weight, clamp(SNR, floor, gamma), over the one the prediction type
    gives it (SNR for noise, SNR + 1 for v): the floor raises only the steps whose SNR is under it."""
    from diffusers import DDPMScheduler
    from diffusers.training_utils import compute_snr

    scheduler = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                              prediction_type=prediction_type)
    timesteps = torch.tensor([0, 300, 500, 900, 999])
    snr = compute_snr(scheduler, timesteps)

    def weights(gamma, floor):
        options = t2i.Options(train_text_encoder=False, caption_dropout=0.0, snr_gamma=gamma, snr_floor=floor)
        return t2i.DiffusionLoss(None, None, scheduler, None, None, options, "cpu").weights(timesteps)

    native = snr if prediction_type == "epsilon" else snr + 1
    assert weights(None, None) == 1.0
    torch.testing.assert_close(weights(5.0, None), snr.clamp(max=5.0) / native)
    floored = weights(5.0, 0.2)
    torch.testing.assert_close(floored, snr.clamp(0.2, 5.0) / native)
    noisy = snr < 0.2  # t = 900 and 999
    assert noisy.tolist() == [False, False, False, True, True]
    assert (floored[noisy] > weights(5.0, None)[noisy]).all()
    torch.testing.assert_close(floored[~noisy], weights(5.0, None)[~noisy])
    if prediction_type == "epsilon":
        assert floored[-1] > 40  # 0.2 / SNR(999): the noisiest step now counts
    torch.testing.assert_close(weights(None, 0.2), snr.clamp(min=0.2) / native)


def test_noise_offset_shifts_each_image_and_channel_by_one_draw():
    """With --noise-offset S the training noise is the plain draw plus one constant per image and channel, of
    spread S; without it, the plain draw."""
    def noise(offset):
        options = t2i.Options(train_text_encoder=False, caption_dropout=0.0, snr_gamma=None, noise_offset=offset)
        loss = t2i.DiffusionLoss(None, None, None, None, None, options, "cpu")
        return loss.noise((256, 4, 8, 8), torch.Generator().manual_seed(3))

    plain = torch.randn((256, 4, 8, 8), generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(noise(0.0), plain)
    shift = noise(0.1) - plain
    torch.testing.assert_close(shift, shift[:, :, :1, :1].expand_as(shift))
    assert 0.08 < shift[:, :, 0, 0].std() < 0.12
    assert shift[:, :, 0, 0].unique().numel() == 256 * 4


# -- bad input: one line naming the argument, and no run folder left behind ------------------------------------
def test_bad_input_is_refused_in_one_line(sd_checkpoint, p2p_checkpoint, config_file, data, tmp_path):
    def run(*argv):
        return lambda: t2i.run(parse(t2i, [*argv, "--out", tmp_path / "run", "--steps", 1, "--no-progress"]))

    bad_key = tmp_path / "bad-key.json"
    bad_key.write_text(json.dumps({**CONFIG, "unet_chanels": [32]}))
    not_json = tmp_path / "not.json"
    not_json.write_text("{unet")
    refused(run("--config", bad_key, "--data", data), "--config", "'unet_chanels'", "unet_channels")
    refused(run("--config", not_json, "--data", data), "--config", "not JSON")
    refused(run("--model", tmp_path / "nowhere", "--data", data), "nowhere")
    refused(run("--model", p2p_checkpoint, "--data", data), "--model", "8-channel", "InstructPix2Pix")
    copied = tmp_path / "copied"  # a folder copied away from the files its relative links name (cp -r)
    shutil.copytree(sd_checkpoint, copied)
    (copied / "tokenizer" / "vocab.json").unlink()
    (copied / "tokenizer" / "vocab.json").symlink_to("../../elsewhere/vocab.json")
    refused(run("--model", copied, "--data", data), "--model", "vocab.json", "link to a missing file")
    for vocabulary in ("vocab.json", "merges.txt", "tokenizer.json"):  # it loads, but knows no word
        (copied / "tokenizer" / vocabulary).unlink(missing_ok=True)
    refused(run("--model", copied, "--data", data), "--model", "tokenizer", "no vocabulary")
    refused(run("--model", sd_checkpoint, "--data", tmp_path / "nodata"), "--data", "not a folder")
    refused(run("--model", sd_checkpoint, "--data", data, "--resolution", 60), "--resolution", "multiple of 8")
    refused(run("--model", sd_checkpoint, "--data", data, "--caption-dropout", 1), "--caption-dropout")
    refused(run("--model", sd_checkpoint, "--data", data, "--learning-rate", -1), "--learning-rate")
    refused(run("--model", sd_checkpoint, "--data", data, "--snr-floor", 0), "--snr-floor", "positive")
    refused(run("--model", sd_checkpoint, "--data", data, "--noise-offset", -0.1), "--noise-offset")
    refused(run("--model", sd_checkpoint, "--data", data, "--snr-gamma", 1, "--snr-floor", 2), "--snr-floor",
            "--snr-gamma")
    assert not (tmp_path / "run").exists()
    vae_args = parse(autoencoder, ["--model", sd_checkpoint, "--data", data, "--out", tmp_path / "run",
                                   "--kl-weight", -1])
    refused(lambda: autoencoder.run(vae_args), "--kl-weight")
    vae_args.kl_weight, vae_args.l1_weight = 0.0, float("nan")
    refused(lambda: autoencoder.run(vae_args), "--l1-weight")
    vae_args.l1_weight, vae_args.adversarial_weight = 0.0, -0.5
    refused(lambda: autoencoder.run(vae_args), "--adversarial-weight")
    vae_args.adversarial_weight, vae_args.colour_whitening = 0.0, 0.7
    refused(lambda: autoencoder.run(vae_args), "--colour-whitening", "0.5")
    vae_args.colour_whitening, vae_args.decoder_only, vae_args.rescale = 0.375, True, True
    refused(lambda: autoencoder.run(vae_args), "--decoder-only", "--rescale")
    assert not (tmp_path / "run").exists()


def test_resume_of_another_run_is_refused(overfit, sd_checkpoint, data):
    refused(lambda: train(["--model", sd_checkpoint], data, overfit, "--steps", 6, "--batch-size", 4,
                          "--snr-gamma", 5, "--resume"), "--resume", "another run", "snr_gamma")
    refused(lambda: train(["--model", sd_checkpoint], data, overfit), "--out", "--resume")


def test_the_cli_lists_the_training_commands(capsys):
    from fashiongen.cli import main

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    assert "--config" in out and "--train-text-encoder" in out and "--caption-dropout" in out


def test_a_base_of_relative_links_gives_a_model_of_real_files(sd_checkpoint, tmp_path):
    """A Hugging Face cache snapshot links every file to ../../blobs, and the shipped demo family its shared
    tokenizer files; the trained folder lives elsewhere, so it must hold the files, not the links (the demo's
    editor was once written with a tokenizer of dangling links: every instruction read as unknown tokens)."""
    from transformers import CLIPTokenizer

    base, shared = tmp_path / "snapshot" / "base", tmp_path / "snapshot" / "blobs"
    shutil.copytree(sd_checkpoint, base)
    shared.mkdir()
    for path in sorted((base / "tokenizer").iterdir()):
        path.rename(shared / path.name)
        path.symlink_to(Path("..", "..", "blobs", path.name))
    out = t2i.write_model(tmp_path / "runs" / "model", base, {}, {"note": "no part trained"})
    files = sorted((out / "tokenizer").iterdir())
    assert files and not any(f.is_symlink() for f in files)
    ids = [CLIPTokenizer.from_pretrained(folder / "tokenizer")("a red dress").input_ids for folder in (base, out)]
    assert ids[0] == ids[1] and len(set(ids[1])) > 2

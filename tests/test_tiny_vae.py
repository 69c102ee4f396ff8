"""The tiny VAE (TAESD, diffusers' AutoencoderTiny): ``export --tiny-vae``, ``generate/edit --decoder tiny``.

The exported networks equal AutoencoderTiny in PyTorch (1e-4); ``generate --decoder tiny`` draws what diffusers'
StableDiffusionPipeline with ``vae=AutoencoderTiny`` draws (2/255); ``edit --decoder tiny`` encodes and decodes
with the tiny VAE, its encoder divided by the checkpoint's scaling factor (the unscaled latent InstructPix2Pix
conditions on), and equals diffusers' InstructPix2Pix pipeline with the tiny VAE given those latents. Bad input
is refused in one line.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from fashiongen.runtime.contracts import CONTRACTS
from fashiongen.runtime.engines import EngineSet
from fashiongen.runtime.errors import InputError
from fashiongen.runtime.pix2pix import Pix2PixPipeline, Pix2PixRequest
from fashiongen.runtime.txt2img import Txt2ImgPipeline, Txt2ImgRequest
from test_errors import run_cli
from test_pix2pix import product_image
from test_txt2img_parity import assert_close_images

PROMPT = "a black short sleeve crewneck crop top"
EDIT = "make it a red maxi skirt"
HEIGHT, WIDTH = 72, 48
STEPS, SEED = 4, 19687
SCALING_FACTOR = 0.18215  # the random checkpoints' VAE's (SD 1.x's)


@pytest.fixture(scope="session")
def tiny_vae_dir(tmp_path_factory):
    from fashiongen.random_checkpoints.tiny_vae import write_tiny_vae

    return write_tiny_vae(tmp_path_factory.mktemp("taesd") / "tiny-taesd", seed=5)


@pytest.fixture(scope="session")
def tiny_vae(tiny_vae_dir):
    from diffusers import AutoencoderTiny

    return AutoencoderTiny.from_pretrained(tiny_vae_dir, local_files_only=True).eval()


@pytest.fixture(scope="session")
def tiny_engines(tmp_path_factory, sd_checkpoint, tiny_vae_dir):
    from fashiongen.export.sd_export import export_engine_folder

    out = tmp_path_factory.mktemp("tiny-engines") / "tiny-sd"
    export_engine_folder(out, sd_checkpoint, progress=False, tiny_vae_dir=tiny_vae_dir)
    return out


@pytest.fixture(scope="session")
def p2p_tiny_engines(tmp_path_factory, p2p_checkpoint, tiny_vae_dir):
    from fashiongen.export.sd_export import export_engine_folder

    out = tmp_path_factory.mktemp("p2p-tiny-engines") / "tiny-pix2pix"
    export_engine_folder(out, p2p_checkpoint, progress=False, tiny_vae_dir=tiny_vae_dir)
    return out


# -- export --------------------------------------------------------------------------------------------------
def test_manifest_lists_the_tiny_networks_with_the_full_vaes_contract(tiny_engines, tiny_vae_dir):
    manifest = json.loads((tiny_engines / "manifest.json").read_text())
    networks = manifest["networks"]
    assert {"vae_decoder", "vae_encoder", "vae_decoder_tiny", "vae_encoder_tiny"} <= set(networks)
    for full, tiny in (("vae_decoder", "vae_decoder_tiny"), ("vae_encoder", "vae_encoder_tiny")):
        assert networks[tiny]["inputs"] == networks[full]["inputs"]
        assert networks[tiny]["outputs"] == networks[full]["outputs"]
        assert networks[tiny]["validation"]["max_abs_diff"] <= 1e-4
        assert CONTRACTS[tiny].inputs == CONTRACTS[full].inputs and CONTRACTS[tiny].outputs == CONTRACTS[full].outputs
    section = manifest["vae"]["tiny"]
    assert section["scaling_factor"] == 1.0 and section["encoder_divided_by"] == pytest.approx(SCALING_FACTOR)
    assert section["folder"] == str(tiny_vae_dir.absolute()) and len(section["sha256"]) == 64


def test_tiny_networks_equal_autoencoder_tiny(tiny_engines, tiny_vae):
    """Decoder: diffusers' ``decode(latents / scaling_factor)``; encoder: its latents / the checkpoint's factor."""
    engines = EngineSet(tiny_engines)
    rng = np.random.default_rng(0)
    latent = rng.standard_normal((2, 4, 7, 5)).astype(np.float32)
    image = rng.uniform(-1, 1, (2, 3, 40, 56)).astype(np.float32)
    with torch.no_grad():
        decoded = tiny_vae.decode(torch.from_numpy(latent) / tiny_vae.config.scaling_factor).sample.numpy()
        encoded = tiny_vae.encode(torch.from_numpy(image)).latents.numpy() / SCALING_FACTOR
    ours = engines["vae_decoder_tiny"].run({"latent": latent})["image"]
    assert np.abs(ours - decoded).max() <= 1e-4
    assert decoded.std() > 0.05  # not a constant image
    ours = engines["vae_encoder_tiny"].run({"image": image})["latent_mean"]
    assert np.abs(ours - encoded).max() <= 1e-4


# -- generate ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_diffusers_pipe(sd_checkpoint, tiny_vae):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(sd_checkpoint, vae=tiny_vae, safety_checker=None,
                                                   local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _reference(pipe, **kw) -> np.ndarray:
    out = pipe(PROMPT, num_inference_steps=STEPS, generator=torch.Generator("cpu").manual_seed(SEED),
               output_type="np", **kw).images
    return (out * 255).round().astype(np.uint8)


@pytest.mark.parametrize("scheduler", [None, "euler_a"])
def test_generate_with_the_tiny_decoder_matches_diffusers(tiny_engines, tiny_diffusers_pipe, scheduler):
    from test_schedulers import diffusers_scheduler

    pipeline = Txt2ImgPipeline(EngineSet(tiny_engines))
    request = Txt2ImgRequest(prompt=PROMPT, seed=SEED, steps=STEPS, height=HEIGHT, width=WIDTH,
                             scheduler=scheduler, decoder="tiny")
    assert pipeline.resolve(request).decoder == "tiny"
    ours = pipeline(request, progress=False)
    assert "vae_decoder" not in pipeline.engines.open_networks  # the full decoder is not even loaded
    original = tiny_diffusers_pipe.scheduler
    if scheduler is not None:
        tiny_diffusers_pipe.scheduler = diffusers_scheduler(scheduler, original.config)
    try:
        ref = _reference(tiny_diffusers_pipe, height=HEIGHT, width=WIDTH)
    finally:
        tiny_diffusers_pipe.scheduler = original
    assert_close_images(ours.images, ref)


def test_default_decoder_is_the_full_one(tiny_engines, diffusers_pipe):
    pipeline = Txt2ImgPipeline(EngineSet(tiny_engines))
    request = Txt2ImgRequest(prompt=PROMPT, seed=SEED, steps=STEPS, height=HEIGHT, width=WIDTH)
    assert pipeline.resolve(request).decoder == "full"
    ours = pipeline(request, progress=False).images
    assert "vae_decoder_tiny" not in pipeline.engines.open_networks
    assert_close_images(ours, _reference(diffusers_pipe, height=HEIGHT, width=WIDTH))


def test_a_folder_with_only_the_tiny_decoder_defaults_to_it(tiny_engines):
    from fashiongen.runtime.manifest import load_manifest

    manifest = load_manifest(tiny_engines)
    del manifest.networks["vae_decoder"]
    pipeline = Txt2ImgPipeline(EngineSet(tiny_engines, manifest=manifest))
    assert pipeline.resolve(Txt2ImgRequest(prompt=PROMPT)).decoder == "tiny"
    with pytest.raises(InputError, match="^decoder: .* has no full VAE"):
        pipeline.resolve(Txt2ImgRequest(prompt=PROMPT, decoder="full"))


# -- edit ----------------------------------------------------------------------------------------------------
def test_edit_with_the_tiny_vae_matches_diffusers(p2p_tiny_engines, p2p_checkpoint, tiny_vae):
    """diffusers' InstructPix2Pix pipeline with the tiny VAE, given the image latents our encoder computes (the
    tiny encoder's / the checkpoint's scaling factor): diffusers itself would feed the scaled latents unchanged."""
    from diffusers import StableDiffusionInstructPix2PixPipeline

    from fashiongen.runtime.images import uint8_to_model_input

    image = product_image(HEIGHT, WIDTH, seed=4)
    pipeline = Pix2PixPipeline(EngineSet(p2p_tiny_engines))
    ours = pipeline(Pix2PixRequest(image=image, prompt=EDIT, seed=SEED, steps=STEPS, decoder="tiny"),
                    progress=False).images
    assert {"vae_encoder", "vae_decoder"}.isdisjoint(pipeline.engines.open_networks)
    pipe = StableDiffusionInstructPix2PixPipeline.from_pretrained(p2p_checkpoint, vae=tiny_vae, safety_checker=None,
                                                                  local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    with torch.no_grad():
        latents = tiny_vae.encode(torch.from_numpy(uint8_to_model_input(image))).latents / SCALING_FACTOR
    ref = pipe(EDIT, image=latents, num_inference_steps=STEPS, generator=torch.Generator("cpu").manual_seed(SEED),
               output_type="np").images
    assert_close_images(ours, (ref * 255).round().astype(np.uint8))


# -- errors --------------------------------------------------------------------------------------------------
def test_latent_channel_mismatch_is_refused(capsys, tmp_path, sd_checkpoint):
    from fashiongen.random_checkpoints.tiny_vae import write_tiny_vae

    wide = write_tiny_vae(tmp_path / "taesd-16", latent_channels=16)
    line = run_cli(capsys, "export", "--model", sd_checkpoint, "--tiny-vae", wide, "--out", tmp_path / "out",
                   "--no-progress")
    assert "--tiny-vae" in line and "16 latent channels" in line and "has 4" in line, line
    assert not (tmp_path / "out").exists()


def test_a_folder_that_is_not_an_autoencoder_tiny_is_refused(capsys, tmp_path, sd_checkpoint):
    line = run_cli(capsys, "export", "--model", sd_checkpoint, "--tiny-vae", sd_checkpoint / "vae", "--out",
                   tmp_path / "out", "--no-progress")
    assert "--tiny-vae" in line and "not a diffusers AutoencoderTiny folder" in line and "AutoencoderKL" in line
    line = run_cli(capsys, "export", "--model", sd_checkpoint, "--tiny-vae", tmp_path / "nowhere", "--out",
                   tmp_path / "out", "--no-progress")
    assert "--tiny-vae" in line and "is not a folder" in line
    line = run_cli(capsys, "export", "--tiny-vae", sd_checkpoint / "vae", "--segmenter", tmp_path, "--out",
                   tmp_path / "out")
    assert "--tiny-vae needs --model" in line


def test_decoder_tiny_on_a_folder_without_one_is_refused(capsys, tmp_path, sd_engines, p2p_engines):
    from test_pix2pix import INPUT
    from PIL import Image

    line = run_cli(capsys, "generate", "--engines", sd_engines, "--prompt", "a red dress", "--decoder", "tiny",
                   "--out", tmp_path / "x.png", "--no-progress")
    assert line.startswith("fashiongen: error: --decoder: ") and "no tiny VAE" in line and "--tiny-vae" in line
    Image.fromarray(INPUT).save(tmp_path / "in.png")
    line = run_cli(capsys, "edit", "--engines", p2p_engines, "--image", tmp_path / "in.png", "--prompt", "make it red",
                   "--decoder", "tiny", "--out", tmp_path / "y.png", "--no-progress")
    assert line.startswith("fashiongen: error: --decoder: ") and "no tiny VAE" in line
    assert not (tmp_path / "x.png").exists() and not (tmp_path / "y.png").exists()


def test_cli_generate_decoder_tiny_writes_the_same_image(capsys, tmp_path, tiny_engines):
    from PIL import Image

    from fashiongen.cli import main

    out = tmp_path / "tiny.png"
    assert main(["generate", "--engines", str(tiny_engines), "--prompt", PROMPT, "--seed", str(SEED), "--steps",
                 str(STEPS), "--height", str(HEIGHT), "--width", str(WIDTH), "--decoder", "tiny", "--out", str(out),
                 "--no-progress"]) == 0
    request = Txt2ImgRequest(prompt=PROMPT, seed=SEED, steps=STEPS, height=HEIGHT, width=WIDTH, decoder="tiny")
    expected = Txt2ImgPipeline(EngineSet(tiny_engines))(request, progress=False).images[0]
    assert np.array_equal(np.asarray(Image.open(out)), expected)


# -- Triton --------------------------------------------------------------------------------------------------
def test_triton_repository_serves_the_tiny_networks_and_takes_a_decoder_field(tiny_engines, tmp_path):
    from fashiongen.triton_repo.build import write_repository
    from fashiongen.triton_repo.services import SERVICES, from_tensors, to_tensors

    models = write_repository([tiny_engines], tmp_path / "repo")
    assert {"vae_decoder_tiny", "vae_encoder_tiny", "txt2img"} <= set(models)
    for service in ("txt2img", "edit"):
        assert "decoder" in [s.name for s in SERVICES[service].contract.inputs]
    request = Txt2ImgRequest(prompt=PROMPT, decoder="tiny")
    parsed, extras = from_tensors(SERVICES["txt2img"], to_tensors(SERVICES["txt2img"], request))
    assert parsed.decoder == "tiny" and not extras


@pytest.mark.triton
def test_server_side_pipeline_takes_the_decoder_field(tiny_engines, tmp_path):
    """A real tritonserver on a repository of the tiny folder: ``decoder: tiny`` runs vae_decoder_tiny there."""
    pytest.importorskip("pytriton", reason="the serve extra is part of the test set-up")
    from fashiongen.triton_repo.build import write_repository
    from fashiongen.triton_repo.client import request_pipeline
    from fashiongen.triton_repo.server import ServerOptions, TritonServer, free_port

    write_repository([tiny_engines], tmp_path / "repo", max_steps=10)
    request = Txt2ImgRequest(prompt=PROMPT, seed=SEED, steps=2, height=64, width=48, decoder="tiny")
    local = Txt2ImgPipeline(EngineSet(tiny_engines))
    options = ServerOptions(repo=tmp_path / "repo", http_port=free_port(), grpc_port=free_port(),
                            metrics_port=free_port(), startup_timeout=120)
    with TritonServer(options) as server:
        url = f"grpc://{server.grpc_url}"
        remote = {}
        for decoder in ("tiny", "full"):
            remote[decoder] = request_pipeline(url, "txt2img", Txt2ImgRequest(**{**request.__dict__,
                                                                               "decoder": decoder}))["image"]
            ours = local(Txt2ImgRequest(**{**request.__dict__, "decoder": decoder}), progress=False).images
            assert np.abs(remote[decoder].astype(int) - ours.astype(int)).max() <= 1, decoder
        assert np.abs(remote["tiny"].astype(int) - remote["full"].astype(int)).max() > 10  # two decoders ran
        with pytest.raises(ValueError, match="decoder: must be one of full, tiny"):
            request_pipeline(url, "txt2img", Txt2ImgRequest(**{**request.__dict__, "decoder": "small"}))


@pytest.mark.parametrize("command", ["generate", "edit", "export", "train-tiny-vae"])
def test_help_renders_and_names_the_options(capsys, command):
    from fashiongen.cli import main

    with pytest.raises(SystemExit) as done:
        main([command, "--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    assert {"generate": "--decoder", "edit": "--decoder", "export": "--tiny-vae",
            "train-tiny-vae": "--teacher-weight"}[command] in text

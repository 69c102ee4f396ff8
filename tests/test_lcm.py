"""Few-step LCM / TCD text → image against diffusers' StableDiffusionPipeline, with and without a UNet that
takes a guidance embedding (``time_cond_proj_dim``, as LCM-distilled UNets do)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from fashiongen.runtime.contracts import GUIDANCE_DIM
from fashiongen.runtime.denoise import guidance_embedding
from fashiongen.runtime.engines import EngineSet, backend_factory
from fashiongen.runtime.errors import InputError
from fashiongen.runtime.txt2img import Txt2ImgPipeline, Txt2ImgRequest
from conftest import OPENVINO_MARKS
from test_txt2img_parity import HEIGHT, WIDTH, assert_close_images

torch = pytest.importorskip("torch")

PROMPT = "a photo of a red linen shirt dress"
NEGATIVE = "blurry"
SEED = 4242
COND_DIM = 16
# an LCM checkpoint's scheduler config (as SimianLuo/LCM_Dreamshaper_v7 has it, with a shorter distillation
# schedule so that the step limit is tested too)
LCM_SCHEDULER = {"_class_name": "LCMScheduler", "beta_start": 0.00085, "beta_end": 0.012,
                 "beta_schedule": "scaled_linear", "num_train_timesteps": 1000, "original_inference_steps": 20,
                 "set_alpha_to_one": True, "prediction_type": "epsilon", "timestep_scaling": 10.0,
                 "clip_sample": False, "steps_offset": 1}


@pytest.fixture(scope="module")
def lcm_checkpoint(tmp_path_factory):
    from fashiongen.random_checkpoints.sd import SDSize, write_sd_checkpoint

    return write_sd_checkpoint(tmp_path_factory.mktemp("lcm") / "tiny-lcm", SDSize(time_cond_proj_dim=COND_DIM),
                               seed=5, scheduler_config=LCM_SCHEDULER)


@pytest.fixture(scope="module")
def lcm_engines(tmp_path_factory, lcm_checkpoint):
    from fashiongen.export.sd_export import export_pipeline

    out = tmp_path_factory.mktemp("lcm-engines") / "tiny-lcm"
    export_pipeline(lcm_checkpoint, out, [], progress=False)
    return out


@pytest.fixture(scope="module")
def lcm_pipe(lcm_checkpoint):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(lcm_checkpoint, safety_checker=None, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def diffusers_images(pipe, scheduler: str, steps: int, guidance: float, num_images: int = 1,
                     eta: float = 0.3) -> np.ndarray:
    """diffusers' pipeline with ``scheduler``; TCD gets ``eta`` (the pipeline's own default is 0.0, TCD's 0.3)."""
    import diffusers

    original = pipe.scheduler
    cls = {"lcm": diffusers.LCMScheduler, "tcd": diffusers.TCDScheduler}[scheduler]
    pipe.scheduler = cls.from_config(original.config)
    extra = {"eta": eta} if scheduler == "tcd" else {}
    try:
        out = pipe(PROMPT, negative_prompt=NEGATIVE, num_inference_steps=steps, guidance_scale=guidance,
                   height=HEIGHT, width=WIDTH, num_images_per_prompt=num_images,
                   generator=torch.Generator("cpu").manual_seed(SEED), output_type="np", **extra).images
    finally:
        pipe.scheduler = original
    return (out * 255).round().astype(np.uint8)


def ours(engines, scheduler: str | None, steps: int, guidance: float, num_images: int = 1,
         backend: str = "ort", eta: float | None = None) -> np.ndarray:
    request = Txt2ImgRequest(prompt=PROMPT, negative_prompt=NEGATIVE, seed=SEED, steps=steps, guidance=guidance,
                             scheduler=scheduler, height=HEIGHT, width=WIDTH, num_images=num_images, eta=eta)
    return Txt2ImgPipeline(EngineSet(engines, backend_factory(backend)))(request, progress=False).images


# -- a UNet with a guidance embedding ----------------------------------------------------------------------
def test_export_adds_timestep_cond(lcm_engines):
    manifest = json.loads((lcm_engines / "manifest.json").read_text())
    assert manifest["dims"][GUIDANCE_DIM] == COND_DIM
    inputs = {i["name"]: i["shape"] for i in manifest["networks"]["unet"]["inputs"]}
    assert inputs["timestep_cond"] == ["batch", COND_DIM]
    assert manifest["scheduler_config"]["_class_name"] == "LCMScheduler"


def test_guidance_embedding_matches_diffusers(lcm_pipe):
    """Equal up to float32 resolution of the largest angle, 1000 (w - 1): torch's vectorized float32 sin / cos
    of a large angle are not correctly rounded."""
    for w, dim in [(8.0, 256), (2.0, 256), (1.0, 16), (0.0, 16), (3.5, 15)]:
        want = lcm_pipe.get_guidance_scale_embedding(torch.tensor(w - 1).repeat(2), embedding_dim=dim).numpy()
        angle_ulp = float(np.spacing(np.float32(1000 * abs(w - 1))))
        np.testing.assert_allclose(guidance_embedding(w, dim, 2), want, rtol=0, atol=max(2 * angle_ulp, 1e-6))


@pytest.mark.parametrize("steps", [1, 2, 4, 8])
def test_lcm_with_guidance_embedding(lcm_engines, lcm_pipe, steps):
    """No --scheduler: the checkpoint's LCMScheduler; guidance 8 goes in as the embedding, no CFG batch."""
    assert_close_images(ours(lcm_engines, None, steps, 8.0), diffusers_images(lcm_pipe, "lcm", steps, 8.0))


@pytest.mark.parametrize("scheduler,guidance,num_images", [("lcm", 1.0, 2), ("tcd", 3.0, 1), ("tcd", 1.0, 2)])
def test_embedding_unet_other_settings(lcm_engines, lcm_pipe, scheduler, guidance, num_images):
    assert_close_images(ours(lcm_engines, scheduler, 4, guidance, num_images),
                        diffusers_images(lcm_pipe, scheduler, 4, guidance, num_images))


@pytest.mark.parametrize("backend", [pytest.param("openvino", marks=OPENVINO_MARKS)])
def test_embedding_unet_on_openvino(lcm_engines, lcm_pipe, backend):
    """The CPU fast path's backend runs the timestep_cond UNet too."""
    assert_close_images(ours(lcm_engines, "lcm", 4, 8.0, backend=backend), diffusers_images(lcm_pipe, "lcm", 4, 8.0))


def test_guidance_changes_the_embedding_image(lcm_engines):
    assert np.abs(ours(lcm_engines, "lcm", 2, 8.0).astype(int) - ours(lcm_engines, "lcm", 2, 2.0).astype(int)).max() > 0


def test_triton_unet_config_takes_timestep_cond(lcm_engines, tmp_path):
    """The Triton configs follow the contracts: the UNet model of an LCM folder declares timestep_cond."""
    pytest.importorskip("pytriton", reason="the serve extra")
    from fashiongen.triton_repo import configs
    from fashiongen.triton_repo.build import write_repository

    write_repository([lcm_engines], tmp_path / "repo", max_batch_size=4, pipeline_instances=1, max_steps=20)
    unet = configs.parse((tmp_path / "repo" / "unet" / "config.pbtxt").read_text())
    assert [i.name for i in unet.input] == ["sample", "timestep", "timestep_cond", "encoder_hidden_states"]
    assert list(next(i for i in unet.input if i.name == "timestep_cond").dims) == [COND_DIM]


# -- a plain UNet (an LCM-LoRA-style setup: no embedding; CFG only above guidance 1) ----------------------
@pytest.mark.parametrize("scheduler,steps,guidance", [("lcm", 1, 1.0), ("lcm", 4, 1.0), ("lcm", 4, 2.5),
                                                      ("tcd", 2, 1.0), ("tcd", 8, 1.5)])
def test_plain_unet(sd_engines, diffusers_pipe, scheduler, steps, guidance):
    assert_close_images(ours(sd_engines, scheduler, steps, guidance),
                        diffusers_images(diffusers_pipe, scheduler, steps, guidance))


# -- TCD's gamma (diffusers' eta) ---------------------------------------------------------------------------
@pytest.mark.parametrize("folder,eta,guidance", [("plain", 0.7, 1.0), ("plain", 0.0, 2.0), ("lcm", 1.0, 3.0)])
def test_tcd_eta_matches_diffusers(sd_engines, diffusers_pipe, lcm_engines, lcm_pipe, folder, eta, guidance):
    engines, pipe = (sd_engines, diffusers_pipe) if folder == "plain" else (lcm_engines, lcm_pipe)
    image = ours(engines, "tcd", 4, guidance, eta=eta)
    assert_close_images(image, diffusers_images(pipe, "tcd", 4, guidance, eta=eta))
    if eta != 0.3:  # and it made a difference
        assert np.abs(image.astype(int) - ours(engines, "tcd", 4, guidance).astype(int)).max() > 0


@pytest.mark.parametrize("scheduler,eta,message", [
    ("tcd", 1.5, "eta: TCD's gamma must be a number from 0 to 1 (got 1.5)"),
    ("tcd", -0.1, "eta: TCD's gamma must be a number from 0 to 1 (got -0.1)"),
    ("lcm", 0.3, "eta: only the tcd scheduler takes it (this request's scheduler is lcm)"),
    (None, 0.3, "eta: only the tcd scheduler takes it (this request's scheduler is pndm)"),
])
def test_eta_is_checked(sd_engines, scheduler, eta, message):
    with pytest.raises(InputError) as err:
        ours(sd_engines, scheduler, 2, 1.0, eta=eta)
    assert str(err.value) == message


def test_cli_eta_names_its_flag(sd_engines, tmp_path, capsys):
    from fashiongen.cli import main

    assert main(["generate", "--engines", str(sd_engines), "--prompt", PROMPT, "--scheduler", "ddim", "--eta", "0.2",
                 "--out", str(tmp_path / "a.png"), "--no-progress"]) == 2
    assert capsys.readouterr().err == ("fashiongen: error: --eta: only the tcd scheduler takes it (this request's "
                                       "scheduler is ddim)\n")


# -- bad input ---------------------------------------------------------------------------------------------
def test_steps_beyond_original_inference_steps(lcm_engines, lcm_pipe):
    with pytest.raises(ValueError, match="original_steps"):  # diffusers refuses them
        diffusers_images(lcm_pipe, "lcm", 21, 1.0)
    for scheduler in (None, "lcm", "tcd"):
        with pytest.raises(InputError) as err:
            ours(lcm_engines, scheduler, 21, 1.0)
        message = str(err.value)
        assert "\n" not in message and message.startswith("steps: must be an integer from 1 to 20 (got 21)")
        assert "original_inference_steps=20" in message


def test_deepcache_refuses_a_guidance_embedding_unet(lcm_checkpoint, lcm_engines):
    from fashiongen.export.deepcache import export_deepcache

    with pytest.raises(InputError, match="time_cond_proj_dim=16.*DeepCache does not support it"):
        export_deepcache(lcm_checkpoint, lcm_engines)


@pytest.mark.parametrize("folder", [pytest.param("lcm", marks=OPENVINO_MARKS), pytest.param("plain", marks=OPENVINO_MARKS)])
def test_the_cpu_benchs_flop_count_reads_a_guidance_embedding_unet(folder, lcm_engines, sd_engines):
    """bench/cpu_compare.py's FLOP floor on an LCM folder: the UNet is fed its timestep_cond and counted at batch 1
    (it runs no guidance batch); a plain UNet at batch 2."""
    from fashiongen.bench.flops import flop_floor, network_gflop
    from fashiongen.runtime.contracts import network_contract
    from fashiongen.runtime.manifest import load_manifest

    engines = lcm_engines if folder == "lcm" else sd_engines
    manifest = load_manifest(engines)
    floor = flop_floor(engines, manifest, 64, peak=100.0)
    latent = floor["latent"]
    guided = network_gflop(engines / "unet.onnx", network_contract("unet", manifest.dims), manifest.dims,
                           {"latent_height": latent, "latent_width": latent, "batch": 2})["total"]
    per_step = guided / 2 if folder == "lcm" else guided
    assert floor["unet_gflop_per_step"] == pytest.approx(per_step, rel=1e-6) and floor["vae_gflop"] > 0


def test_triton_requests_carry_eta(sd_engines):
    """The txt2img / edit services take eta as an optional input; it reaches the request and its checks."""
    from fashiongen.triton_repo.services import EDIT, TXT2IMG, from_tensors, to_tensors

    for service in (TXT2IMG, EDIT):
        assert "eta" in [s.name for s in service.contract.inputs] and "eta" not in service.required
    request, extras = from_tensors(TXT2IMG, to_tensors(TXT2IMG, Txt2ImgRequest(prompt=PROMPT, scheduler="tcd",
                                                                               eta=0.75)))
    assert (request.scheduler, request.eta, extras) == ("tcd", 0.75, {})
    pipeline = Txt2ImgPipeline(EngineSet(sd_engines, backend_factory("ort")))
    with pytest.raises(InputError, match="^eta: only the tcd scheduler takes it"):
        pipeline.resolve(Txt2ImgRequest(prompt=PROMPT, eta=0.75))

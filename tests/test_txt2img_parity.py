"""The runtime's text → image equals diffusers' StableDiffusionPipeline, for every scheduler."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from conftest import NEGATIVE_TOKEN, POSITIVE_TOKEN
from fashiongen.runtime.engines import EngineSet
from fashiongen.runtime.schedulers import SCHEDULER_NAMES
from fashiongen.runtime.txt2img import Txt2ImgPipeline, Txt2ImgRequest
from test_schedulers import diffusers_scheduler

PROMPT = f"a {POSITIVE_TOKEN} photo of a black short sleeve crewneck crop top"
NEGATIVE = f"{NEGATIVE_TOKEN}, blurry"
HEIGHT, WIDTH = 72, 48  # non-square, and latents (9 x 6) not a multiple of the UNet's downsampling
STEPS, SEED = 6, 19687


def reference_images(pipe, scheduler_name: str, num_images: int = 1) -> np.ndarray:
    import torch

    # the runtime's TCD takes the gamma TCDScheduler.step defaults to (0.3); the pipeline passes its own eta
    extra = {"eta": 0.3} if scheduler_name == "tcd" else {}
    original = pipe.scheduler
    pipe.scheduler = diffusers_scheduler(scheduler_name, original.config)
    try:
        out = pipe(PROMPT, negative_prompt=NEGATIVE, num_inference_steps=STEPS, guidance_scale=7.5,
                   height=HEIGHT, width=WIDTH, num_images_per_prompt=num_images,
                   generator=torch.Generator("cpu").manual_seed(SEED), output_type="np", **extra).images
    finally:
        pipe.scheduler = original
    return (out * 255).round().astype(np.uint8)


@pytest.fixture(scope="module")
def pipeline(sd_engines):
    return Txt2ImgPipeline(EngineSet(sd_engines))


def assert_close_images(ours: np.ndarray, ref: np.ndarray) -> None:
    assert ours.shape == ref.shape
    assert ref.std() > 5, "reference image is flat: the comparison would prove nothing"
    diff = np.abs(ours.astype(int) - ref.astype(int)).max()
    assert diff <= 2, f"max abs pixel difference {diff}/255 > 2/255"


@pytest.mark.parametrize("scheduler", SCHEDULER_NAMES)
def test_matches_diffusers(pipeline, diffusers_pipe, scheduler):
    request = Txt2ImgRequest(prompt=PROMPT, negative_prompt=NEGATIVE, seed=SEED, steps=STEPS, guidance=7.5,
                             scheduler=scheduler, height=HEIGHT, width=WIDTH)
    result = pipeline(request, progress=False)
    assert_close_images(result.images, reference_images(diffusers_pipe, scheduler))


def test_default_scheduler_is_the_checkpoints(pipeline, diffusers_pipe):
    """No --scheduler: the one scheduler_config.json names (PNDM for SD 1.x)."""
    request = Txt2ImgRequest(prompt=PROMPT, negative_prompt=NEGATIVE, seed=SEED, steps=STEPS,
                             height=HEIGHT, width=WIDTH)
    assert_close_images(pipeline(request, progress=False).images, reference_images(diffusers_pipe, "pndm"))


def test_several_images_per_prompt(pipeline, diffusers_pipe):
    request = Txt2ImgRequest(prompt=PROMPT, negative_prompt=NEGATIVE, seed=SEED, steps=STEPS,
                             scheduler="euler_a", height=HEIGHT, width=WIDTH, num_images=2)
    ours = pipeline(request, progress=False).images
    assert_close_images(ours, reference_images(diffusers_pipe, "euler_a", num_images=2))
    assert np.abs(ours[0].astype(int) - ours[1].astype(int)).max() > 10


def test_learned_tokens_change_the_image(pipeline):
    """The learned rows are really used: dropping the style token changes the result."""
    base = Txt2ImgRequest(prompt=PROMPT, negative_prompt=NEGATIVE, seed=SEED, steps=2, height=HEIGHT, width=WIDTH)
    plain = Txt2ImgRequest(**{**base.__dict__, "prompt": PROMPT.replace(POSITIVE_TOKEN + " ", "")})
    a, b = pipeline(base, progress=False).images, pipeline(plain, progress=False).images
    assert np.abs(a.astype(int) - b.astype(int)).max() > 0


def test_cli_generate_writes_the_same_image(sd_engines, diffusers_pipe, tmp_path, capsys):
    from fashiongen.cli import main

    out = tmp_path / "shot.png"
    code = main(["generate", "--engines", str(sd_engines), "--prompt", PROMPT, "--negative-prompt", NEGATIVE,
                 "--seed", str(SEED), "--steps", str(STEPS), "--scheduler", "dpmpp_2m", "--height", str(HEIGHT),
                 "--width", str(WIDTH), "--out", str(out), "--timings", "--no-progress"])
    assert code == 0
    printed = capsys.readouterr().out
    assert f"wrote {out}" in printed and "| unet |" in printed
    assert_close_images(np.asarray(Image.open(out))[None], reference_images(diffusers_pipe, "dpmpp_2m"))

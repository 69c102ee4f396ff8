"""InstructPix2Pix: export of the 8-channel UNet, the torch-free edit pipeline equal to diffusers'
StableDiffusionInstructPix2PixPipeline, the ``fashiongen edit`` command and its bad-input errors."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from fashiongen.runtime.engines import EngineSet
from fashiongen.runtime.manifest import EngineFolderError
from fashiongen.runtime.pix2pix import Pix2PixPipeline, Pix2PixRequest

PROMPT = "make it a black short sleeve crewneck crop top"
NEGATIVE = "blurry"
STEPS, SEED = 5, 19687


def product_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A structured test picture: a coloured garment-like blob on white with some texture."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    inside = ((y - height / 2) / (0.4 * height)) ** 2 + ((x - width / 2) / (0.3 * width)) ** 2 < 1
    colour = rng.integers(0, 255, size=3)
    image = np.full((height, width, 3), 255, dtype=np.float32)
    image[inside] = colour
    image += 30 * np.sin(x / 3)[..., None] * inside[..., None]
    image += rng.normal(0, 8, size=image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


# A non-square input whose size is not on the VAE grid: both pipelines round it down to 72 x 48 (Lanczos).
INPUT = product_image(77, 53)


@pytest.fixture(scope="session")
def p2p_diffusers(p2p_checkpoint):
    from diffusers import StableDiffusionInstructPix2PixPipeline

    pipe = StableDiffusionInstructPix2PixPipeline.from_pretrained(p2p_checkpoint, safety_checker=None,
                                                                  local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def pipeline(p2p_engines):
    return Pix2PixPipeline(EngineSet(p2p_engines))


def reference(pipe, scheduler: str | None, guidance: float, image_guidance: float, num_images: int = 1):
    import torch
    from test_schedulers import diffusers_scheduler

    original = pipe.scheduler
    if scheduler is not None:
        pipe.scheduler = diffusers_scheduler(scheduler, original.config)
    try:
        out = pipe(PROMPT, image=Image.fromarray(INPUT), negative_prompt=NEGATIVE, num_inference_steps=STEPS,
                   guidance_scale=guidance, image_guidance_scale=image_guidance, num_images_per_prompt=num_images,
                   generator=torch.Generator("cpu").manual_seed(SEED), output_type="np").images
    finally:
        pipe.scheduler = original
    return (out * 255).round().astype(np.uint8)


def assert_close_images(ours: np.ndarray, ref: np.ndarray) -> None:
    assert ours.shape == ref.shape
    assert ref.std() > 5, "reference image is flat: the comparison would prove nothing"
    diff = np.abs(ours.astype(int) - ref.astype(int)).max()
    assert diff <= 2, f"max abs pixel difference {diff}/255 > 2/255"


def test_export_detects_pix2pix(p2p_engines):
    manifest = json.loads((p2p_engines / "manifest.json").read_text())
    assert manifest["kind"] == "pix2pix"
    assert manifest["dims"]["unet_in_channels"] == 8
    assert {"unet", "vae_encoder", "vae_decoder", "text_encoder"} <= set(manifest["networks"])


@pytest.mark.parametrize("scheduler,guidance,image_guidance", [
    (None, 7.5, 1.5),          # the checkpoint's own scheduler (PNDM), diffusers' default guidance
    ("euler_a", 5.0, 2.0),     # ancestral: per-step noise from the seed
    ("ddim", 7.5, 0.5),        # image guidance < 1: diffusers turns guidance off (one unguided call)
])
def test_matches_diffusers(pipeline, p2p_diffusers, scheduler, guidance, image_guidance):
    request = Pix2PixRequest(image=INPUT, prompt=PROMPT, negative_prompt=NEGATIVE, seed=SEED, steps=STEPS,
                             guidance=guidance, image_guidance=image_guidance, scheduler=scheduler)
    result = pipeline(request, progress=False)
    assert result.images.shape == (1, 72, 48, 3)
    assert_close_images(result.images, reference(p2p_diffusers, scheduler, guidance, image_guidance))


def test_several_images(pipeline, p2p_diffusers):
    request = Pix2PixRequest(image=INPUT, prompt=PROMPT, negative_prompt=NEGATIVE, seed=SEED, steps=STEPS,
                             scheduler="dpmpp_2m", num_images=2)
    ours = pipeline(request, progress=False).images
    assert_close_images(ours, reference(p2p_diffusers, "dpmpp_2m", 7.5, 1.5, num_images=2))


def test_image_guidance_matters(pipeline):
    base = Pix2PixRequest(image=INPUT, prompt=PROMPT, seed=SEED, steps=2)
    a = pipeline(base, progress=False).images
    b = pipeline(Pix2PixRequest(**{**base.__dict__, "image_guidance": 3.0}), progress=False).images
    assert np.abs(a.astype(int) - b.astype(int)).max() > 0


def test_grayscale_and_rgba_inputs(pipeline):
    from fashiongen.runtime.images import as_rgb as to_rgb_uint8

    gray = INPUT[..., 0]
    assert to_rgb_uint8(gray).shape == (77, 53, 3)
    rgba = np.concatenate([INPUT, np.zeros_like(INPUT[..., :1])], axis=2)
    assert (to_rgb_uint8(rgba) == 255).all()  # fully transparent: white
    out = pipeline(Pix2PixRequest(image=gray, prompt=PROMPT, steps=1), progress=False)
    assert out.images.shape == (1, 72, 48, 3)


@pytest.mark.parametrize("field,value,message", [
    ("prompt", "  ", "prompt: must be a non-empty string"),
    ("steps", 0, "steps: must be an integer from 1 to 150"),
    ("steps", 151, "steps: must be an integer from 1 to 150"),
    ("image_guidance", float("nan"), "image_guidance: must be a finite number"),
    ("seed", -1, "seed: must be an integer"),
    ("scheduler", "nope", "scheduler: unknown 'nope'"),
    ("image", np.zeros((5, 40, 3), np.uint8), "each side must be at least 8 pixels"),
    ("image", np.zeros((16, 16, 2), np.uint8), "expected an HxW or HxWx3/4 image array"),
    ("image", np.zeros((16, 16, 3), np.float32), "expected a uint8 image array"),
])
def test_bad_requests(pipeline, field, value, message):
    request = Pix2PixRequest(**{**Pix2PixRequest(image=INPUT, prompt=PROMPT).__dict__, field: value})
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        pipeline.resolve(request)


def test_txt2img_folder_is_refused(sd_engines):
    with pytest.raises(EngineFolderError, match="not an InstructPix2Pix"):
        Pix2PixPipeline(EngineSet(sd_engines))


def test_cli_edit(p2p_engines, p2p_diffusers, tmp_path, capsys):
    from fashiongen.cli import main

    src, out = tmp_path / "in.png", tmp_path / "edited.png"
    Image.fromarray(INPUT).save(src)
    code = main(["edit", "--engines", str(p2p_engines), "--image", str(src), "--prompt", PROMPT,
                 "--negative-prompt", NEGATIVE, "--guidance", "5", "--image-guidance", "2", "--steps", str(STEPS),
                 "--seed", str(SEED), "--scheduler", "euler_a", "--out", str(out), "--timings", "--no-progress"])
    assert code == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    assert f"wrote {out}" in printed and "| vae_encoder |" in printed
    assert_close_images(np.asarray(Image.open(out))[None], reference(p2p_diffusers, "euler_a", 5.0, 2.0))


@pytest.mark.parametrize("args,message", [
    (["--image", "missing.png"], "--image: 'missing.png' does not exist"),
    (["--image", "{bad}"], "is not an image file"),
    (["--image", "{good}", "--out", "out.jpg"], "must end in .png"),
    (["--image", "{good}", "--no-engines"], "--engines: the demo engines 'demo-pix2pix' are not installed"),
    (["--image", "{good}", "--no-engines", "--server-side"], "--server-side needs --triton URL"),
])
def test_cli_edit_errors(p2p_engines, tmp_path, capsys, monkeypatch, args, message):
    from fashiongen import demo_family
    from fashiongen.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(demo_family, "DEMO_DIR", tmp_path / "no-demo")  # without --engines: the shipped editor
    (tmp_path / "bad.png").write_bytes(b"not a png")
    Image.fromarray(INPUT).save(tmp_path / "good.png")
    args = [a.format(bad=tmp_path / "bad.png", good=tmp_path / "good.png") for a in args]
    argv = ["edit", "--engines", str(p2p_engines), "--prompt", PROMPT, "--out", "out.png", *args]
    if "--out" in args:
        argv = ["edit", "--engines", str(p2p_engines), "--prompt", PROMPT, *args]
    if "--no-engines" in args:
        argv = ["edit", "--prompt", PROMPT, "--out", "out.png", *[a for a in args if a != "--no-engines"]]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "out.png").exists()


def test_cli_export_detects_pix2pix_and_records_its_guidance(p2p_checkpoint, p2p_diffusers, tmp_path, capsys):
    """The scales an editor edits best at, recorded by export, are what a request without them gets."""
    from fashiongen.cli import main
    from fashiongen.runtime.manifest import load_manifest

    out = tmp_path / "engines"
    assert main(["export", "--model", str(p2p_checkpoint), "--out", str(out), "--guidance", "5",
                 "--image-guidance", "2", "--no-progress"]) == 0
    assert f"wrote {out} (pix2pix)" in capsys.readouterr().out
    assert load_manifest(out).presets["default"] == {"guidance": 5.0, "image_guidance": 2.0}
    request = Pix2PixRequest(image=INPUT, prompt=PROMPT, negative_prompt=NEGATIVE, seed=SEED, steps=STEPS,
                             scheduler="euler_a")
    ours = Pix2PixPipeline(EngineSet(out))(request, progress=False).images
    assert_close_images(ours, reference(p2p_diffusers, "euler_a", 5.0, 2.0))


def test_cli_export_refuses_image_guidance_for_text_to_image(sd_checkpoint, tmp_path, capsys):
    from fashiongen.cli import main

    assert main(["export", "--model", str(sd_checkpoint), "--out", str(tmp_path / "e"), "--image-guidance", "2",
                 "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--image-guidance needs --model with an InstructPix2Pix checkpoint" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "e").exists()


def test_cli_edit_with_cutout(p2p_engines, segmenter_engines, tmp_path, capsys):
    """edit --cutout: the edited image goes through the segmenter; the product shot to --out, the edit beside it."""
    from fashiongen.cli import main

    src, out = tmp_path / "in.png", tmp_path / "shot.png"
    Image.fromarray(INPUT).save(src)
    code = main(["edit", "--engines", str(p2p_engines), "--image", str(src), "--prompt", PROMPT, "--steps", "2",
                 "--out", str(out), "--cutout", ",".join(str(i) for i in range(1, 18)),
                 "--segmenter-engines", str(segmenter_engines), "--keep-raw", "--no-progress"])
    assert code == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    assert f"wrote {out}" in printed and "shot-raw.png" in printed
    assert np.asarray(Image.open(out)).shape == (72, 48, 3)
    assert np.asarray(Image.open(tmp_path / "shot-raw.png")).shape == (72, 48, 3)


def test_runtime_modules_stay_torch_free():
    import subprocess
    import sys

    code = ("import sys, fashiongen.runtime.pix2pix, fashiongen.runtime.retrieval; "
            "bad = [m for m in ('torch', 'diffusers', 'transformers', 'fashiongen.export') if m in sys.modules]; "
            "print(*bad); sys.exit(1 if bad else 0)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, f"runtime imports {done.stdout.strip()}"

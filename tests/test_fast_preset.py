"""``generate / edit --preset fast``: what export records (``--lcm-lora``), what the preset picks per kind of folder,
that the user's flags override it, the one-line refusal of a folder without an LCM-capable UNet, and that
guidance <= 1 runs one UNet batch (no unconditional pass), as diffusers does."""
from __future__ import annotations

import copy
import json

import numpy as np
import pytest

from fashiongen.cli import main
from fashiongen.runtime.engines import EngineSet, backend_factory
from fashiongen.runtime.manifest import load_manifest
from fashiongen.runtime.presets import EMBEDDING_GUIDANCE, FAST_STEPS, fast_preset, recommend_fast
from fashiongen.runtime.txt2img import Txt2ImgPipeline, Txt2ImgRequest

torch = pytest.importorskip("torch")

PROMPT = "a photo of a black crop top"
SEED = 7


@pytest.fixture(scope="module")
def lcm_lora_engines(tmp_path_factory, sd_checkpoint):
    """The tiny checkpoint exported with a random LoRA of LCM-LoRA's layout (``--lcm-lora``) and a tiny VAE."""
    from diffusers import UNet2DConditionModel

    from fashiongen.random_checkpoints.lora import write_random_lora
    from fashiongen.random_checkpoints.tiny_vae import write_tiny_vae

    folder = tmp_path_factory.mktemp("lcm-lora")
    unet = UNet2DConditionModel.from_pretrained(sd_checkpoint / "unet", local_files_only=True)
    lora = write_random_lora(folder / "lcm-lora.safetensors", {"unet": unet}, targets="lcm", rank=4, alpha=4, std=0.01)
    taesd = write_tiny_vae(folder / "taesd", seed=3)
    out = folder / "engines"
    assert main(["export", "--model", str(sd_checkpoint), "--lcm-lora", str(lora), "--tiny-vae", str(taesd),
                 "--out", str(out), "--no-progress"]) == 0
    return out


def explicit(engines, **fields) -> np.ndarray:
    request = Txt2ImgRequest(prompt=PROMPT, seed=SEED, height=64, width=64, **fields)
    return Txt2ImgPipeline(EngineSet(engines, backend_factory("ort")))(request, progress=False).images[0]


def cli_generate(engines, out, *flags) -> int:
    return main(["generate", "--engines", str(engines), "--prompt", PROMPT, "--seed", str(SEED), "--height", "64",
                 "--width", "64", "--out", str(out), "--no-progress", *flags])


def read_png(path) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(path))


# -- what export records, what the preset picks ---------------------------------------------------------------
def test_export_records_the_lcm_lora_and_the_preset(lcm_lora_engines, capsys):
    manifest = json.loads((lcm_lora_engines / "manifest.json").read_text())
    assert [r.get("lcm") for r in manifest["source"]["loras"]] == [True]
    assert manifest["presets"]["fast"] == {"scheduler": "lcm", "steps": FAST_STEPS, "guidance": 1.0,
                                           "why": "LCM-LoRA lcm-lora.safetensors merged at export"}


def test_preset_fast_picks_lcm_4_steps_no_guidance_tiny_decoder(lcm_lora_engines, tmp_path, capsys):
    capsys.readouterr()
    assert cli_generate(lcm_lora_engines, tmp_path / "fast.png", "--preset", "fast") == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["fashiongen: preset fast: lcm scheduler, 4 steps, guidance 1, tiny decoder (LCM-LoRA "
                   "lcm-lora.safetensors merged at export)"]
    want = explicit(lcm_lora_engines, scheduler="lcm", steps=4, guidance=1.0, decoder="tiny")
    np.testing.assert_array_equal(read_png(tmp_path / "fast.png"), want)


def test_the_users_flags_override_the_preset(lcm_lora_engines, tmp_path, capsys):
    capsys.readouterr()
    assert cli_generate(lcm_lora_engines, tmp_path / "mine.png", "--preset", "fast", "--steps", "2", "--decoder",
                        "full", "--guidance", "1.5", "--scheduler", "tcd", "--eta", "0.5") == 0
    assert capsys.readouterr().err.strip().endswith("; yours: --scheduler, --steps, --guidance, --decoder")
    want = explicit(lcm_lora_engines, scheduler="tcd", steps=2, guidance=1.5, decoder="full", eta=0.5)
    np.testing.assert_array_equal(read_png(tmp_path / "mine.png"), want)


def test_a_folder_without_an_lcm_capable_unet_is_one_line(sd_engines, tmp_path, capsys):
    capsys.readouterr()
    assert cli_generate(sd_engines, tmp_path / "x.png", "--preset", "fast") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and not (tmp_path / "x.png").exists()
    assert err.startswith(f"fashiongen: error: --preset: '{sd_engines}' has no LCM-capable UNet (no LoRA merged "
                          "with `fashiongen export --lcm-lora`")


def test_without_a_preset_the_commands_defaults_hold(sd_engines, tmp_path):
    """--steps / --guidance now default to None in argparse: the command's own defaults still fill them
    (generate and edit leave guidance to the pipeline, which reads the folder's recorded scale)."""
    from fashiongen.cli import build_parser
    from fashiongen.options import settle_sampling

    args = build_parser().parse_args(["generate", "--prompt", "x", "--out", str(tmp_path / "a.png")])
    settle_sampling(args)
    assert (args.steps, args.guidance, args.scheduler, args.decoder) == (25, None, None, None)
    args = build_parser().parse_args(["edit", "--image", "i.png", "--prompt", "x", "--out", str(tmp_path / "a.png")])
    settle_sampling(args)
    assert (args.steps, args.guidance) == (20, None)


@pytest.mark.parametrize("change,guidance,why", [
    ({"dims": {"time_cond_proj_dim": 256}}, EMBEDDING_GUIDANCE, "LCM-distilled UNet, time_cond_proj_dim=256"),
    ({"scheduler_config": {"_class_name": "LCMScheduler"}}, 1.0, "the checkpoint's scheduler config is LCMScheduler"),
    ({"source": {"loras": [{"file": "/x/lcm-lora-sdv1-5.safetensors", "lcm": True}]}}, 1.0,
     "LCM-LoRA lcm-lora-sdv1-5.safetensors merged at export"),
])
def test_each_kind_of_lcm_capable_folder(sd_engines, change, guidance, why):
    """Also a folder exported before presets were recorded: the same recommendation, from its manifest."""
    manifest = copy.deepcopy(load_manifest(sd_engines))
    assert recommend_fast(manifest) is None and manifest.presets == {}
    for section, values in change.items():
        getattr(manifest, section).update(values)
    preset = fast_preset(manifest, sd_engines)
    assert (preset.scheduler, preset.steps, preset.guidance, preset.why, preset.decoder) == \
        ("lcm", FAST_STEPS, guidance, why, None)  # this folder has no tiny VAE


def test_a_recorded_preset_wins(sd_engines):
    """The manifest's record is what runs (a folder's maker may edit it, e.g. 6 steps for their LCM-LoRA)."""
    manifest = copy.deepcopy(load_manifest(sd_engines))
    manifest.presets["fast"] = {"scheduler": "lcm", "steps": 6, "guidance": 1.2, "why": "tuned"}
    assert fast_preset(manifest, sd_engines).steps == 6


# -- guidance <= 1: one UNet batch -------------------------------------------------------------------------
def record_batches(pipeline) -> dict[str, list[int]]:
    """The batch of every text encoder and UNet call ``pipeline`` makes from now on."""
    calls = {"text_encoder": [], "unet": []}
    for name, key in (("text_encoder", "input_ids"), ("unet", "sample")):
        engine = pipeline.engines[name]

        def run(feeds, run=engine.run, name=name, key=key):
            calls[name].append(len(feeds[key]))
            return run(feeds)
        engine.run = run
    return calls


@pytest.mark.parametrize("guidance,unet_batch", [(1.0, 1), (0.5, 1), (0.0, 1), (1.01, 2)])
def test_guidance_at_most_1_runs_one_unet_batch(sd_engines, guidance, unet_batch):
    pipeline = Txt2ImgPipeline(EngineSet(sd_engines, backend_factory("ort")))
    calls = record_batches(pipeline)
    pipeline(Txt2ImgRequest(prompt=PROMPT, steps=2, guidance=guidance, scheduler="ddim", height=64, width=64),
             progress=False)
    assert calls == {"text_encoder": [unet_batch], "unet": [unet_batch] * 2}  # unguided: no negative prompt either


def test_edit_at_guidance_1_runs_one_unet_batch(p2p_engines):
    from fashiongen.runtime.pix2pix import Pix2PixPipeline, Pix2PixRequest

    pipeline = Pix2PixPipeline(EngineSet(p2p_engines, backend_factory("ort")))
    calls = record_batches(pipeline)
    image = np.full((64, 64, 3), 200, np.uint8)
    pipeline(Pix2PixRequest(image=image, prompt=PROMPT, steps=2, guidance=1.0, scheduler="ddim"), progress=False)
    assert calls == {"text_encoder": [1], "unet": [1, 1]}


def test_edit_takes_the_preset_too(p2p_engines, tmp_path, capsys):
    """An InstructPix2Pix folder without an LCM-LoRA: the same one-line refusal, from `edit`."""
    from PIL import Image

    Image.fromarray(np.full((64, 64, 3), 200, np.uint8)).save(tmp_path / "in.png")
    capsys.readouterr()
    assert main(["edit", "--engines", str(p2p_engines), "--image", str(tmp_path / "in.png"), "--prompt", "make it red",
                 "--preset", "fast", "--out", str(tmp_path / "out.png"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"fashiongen: error: --preset: '{p2p_engines}' has no LCM-capable")


# -- the folder's own guidance (export --guidance) --------------------------------------------------------------
@pytest.fixture(scope="module")
def guided_engines(tmp_path_factory, sd_checkpoint):
    out = tmp_path_factory.mktemp("guided") / "engines"
    assert main(["export", "--model", str(sd_checkpoint), "--guidance", "2", "--out", str(out), "--no-progress"]) == 0
    return out


def test_a_request_without_guidance_gets_the_folders_recorded_scale(guided_engines, tmp_path):
    assert load_manifest(guided_engines).presets["default"] == {"guidance": 2.0}
    pipeline = Txt2ImgPipeline(EngineSet(guided_engines, backend_factory("ort")))
    assert pipeline.resolve(Txt2ImgRequest(prompt=PROMPT)).guidance == 2.0
    assert pipeline.resolve(Txt2ImgRequest(prompt=PROMPT, guidance=5.0)).guidance == 5.0
    assert cli_generate(guided_engines, tmp_path / "folder.png") == 0
    assert cli_generate(guided_engines, tmp_path / "two.png", "--guidance", "2") == 0
    assert cli_generate(guided_engines, tmp_path / "seven.png", "--guidance", "7.5") == 0
    assert np.array_equal(read_png(tmp_path / "folder.png"), read_png(tmp_path / "two.png"))
    assert not np.array_equal(read_png(tmp_path / "folder.png"), read_png(tmp_path / "seven.png"))


def test_a_folder_without_a_recorded_scale_samples_at_diffusers_default(lcm_lora_engines):
    pipeline = Txt2ImgPipeline(EngineSet(lcm_lora_engines, backend_factory("ort")))
    assert "default" not in load_manifest(lcm_lora_engines).presets
    assert pipeline.resolve(Txt2ImgRequest(prompt=PROMPT)).guidance == 7.5


@pytest.mark.parametrize("flags, message", [(["--guidance", "nan"], "--guidance: must be a finite number"),
                                            (["--guidance", "-1"], "--guidance: must be a finite number")])
def test_a_bad_recorded_guidance_is_refused_before_export(sd_checkpoint, tmp_path, capsys, flags, message):
    assert main(["export", "--model", str(sd_checkpoint), *flags, "--out", str(tmp_path / "e"), "--no-progress"]) == 2
    assert message in capsys.readouterr().err and not (tmp_path / "e").exists()


def test_the_quality_bench_measures_the_tiny_decoder_and_each_lcm_step_count(lcm_lora_engines):
    """bench/quality.py's few-step rows: approach 3 with the tiny decoder, and the LCM-LoRA folder at each step
    count without guidance, with each decoder; each request carries exactly those settings."""
    import argparse

    from fashiongen.bench.quality import Prompt, few_step_contenders

    args = argparse.Namespace(product_engines=lcm_lora_engines, fast_engines=lcm_lora_engines, lcm_steps=[1, 4])
    rows = {c.name: c for c, splits in few_step_contenders(args)}
    assert list(rows) == ["3, tiny decoder", "3, lcm 1 step", "3, lcm 1 step, tiny decoder", "3, lcm 4 steps",
                          "3, lcm 4 steps, tiny decoder"]
    request = rows["3, lcm 4 steps, tiny decoder"].request(Prompt("red shirt", {}, 3), steps=25)
    assert (request.scheduler, request.steps, request.guidance, request.decoder) == ("lcm", 4, 1.0, "tiny")
    assert request.prompt == "red shirt" and request.negative_prompt == ""
    assert rows["3, tiny decoder"].request(Prompt("red shirt", {}, 3), steps=25).steps == 25
    args.fast_engines = None
    assert [c.name for c, _ in few_step_contenders(args)] == ["3, tiny decoder"]

"""bench/cpu_compare.py and its parts: the CLI, the report, and a worker module light enough for other venvs."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from fashiongen.bench.cpu_report import goals, markdown

ROOT = Path(__file__).resolve().parents[1]


def test_help_prints_usage_without_running():
    out = subprocess.run([sys.executable, "-m", "fashiongen.bench.cpu_compare", "--help"], capture_output=True,
                         text=True, timeout=60, cwd=ROOT)
    assert out.returncode == 0 and "--prepare-only" in out.stdout and "--peak-gflops" in out.stdout


def test_the_driver_imports_only_the_standard_library():
    """Its workers also run in the optimum contenders' venvs, which have neither numpy 1.x nor this runtime."""
    code = ("import sys, fashiongen.bench.cpu_compare; bad = [m for m in ('numpy', 'torch', 'PIL', "
            "'fashiongen.runtime', 'openvino') if m in sys.modules]; print(*bad); sys.exit(1 if bad else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


#: What every report of these tests has besides its contenders.
REPORT_HEAD = {
    "machine": "test CPU", "model": "tiny", "size": 256, "steps": 20, "seed": 1, "rounds": 1, "images": 1,
    "peak_gflops": 100.0, "peak_source": "given",
    "flop_floor": {"latent": 32, "counts": {"conv": 50.0, "matmul_linear": 20.0, "matmul_attention": 10.0},
                   "unet_gflop_per_step": 80.0, "floor_step_s": 0.8, "vae_gflop": 30.0, "floor_vae_s": 0.3},
}


def _run(total, step, rss=2048.0, **more):
    return {"cold_start": 3.0, "text_encoder": 0.1, "unet_step": step, "unet_total": 20 * step, "unet_calls": 20,
            "vae_decoder": 0.5, "cutout": None, "total": total, "total_warm": None, "peak_rss_mb": rss, **more}


def test_report_rows_and_goals():
    report = {
        **REPORT_HEAD,
        "contenders": {"fashiongen-ort": _run(20.0, 0.9),
                       "diffusers-pytorch": _run(50.0, 2.4, rss=4096.0),
                       "fashiongen-ort-deepcache": _run(5.0, 0.2, psnr_vs_exact=35.0)},
        "skipped": {"optimum-onnx": "not asked for"},
    }
    report["goals"] = goals(report)
    assert report["goals"][0].startswith("exact fp32 (fashiongen-ort) vs diffusers PyTorch: 2.50x (goal >= 2x")
    assert "UNet step at 89% of the fp32 peak (goal >= 85%): met" in report["goals"]
    assert any(g.startswith("fast mode fashiongen-ort-deepcache: 4.00x") and g.endswith("met") for g in report["goals"])
    text = markdown(report)
    assert "| fashiongen-ort | 3.0 |" in text and "| diffusers-pytorch |" in text and "89 (89%)" in text
    assert "Not run: optimum-onnx (not asked for)" in text


def test_few_step_rows_sit_next_to_the_exact_mode_and_fastsd_cpus_figure():
    report = {
        **REPORT_HEAD,
        "contenders": {"fashiongen-ort": _run(20.0, 0.9),
                       "fashiongen-lcm-512": _run(2.0, 0.3, cutout=0.25, unet_calls=4),
                       "diffusers-lcm-256": _run(4.0, 0.4, unet_calls=4)},
        "skipped": {},
    }
    report["goals"] = goals(report)
    text = markdown(report)
    assert "| fashiongen-lcm-512 | 512 | 2.00 | 0.25 | 10.0x | 10 s on Intel Core i7-12700 |" in text
    assert "| diffusers-lcm-256 | 256 | 4.00 | - | 5.0x | 2.3 s on Intel Core i7 (model not named) |" in text
    assert "| fashiongen-lcm-512 | 3.0 | 0.10 | 0.300 | - |" in text  # no GFLOP/s: not a guided step at --size
    assert "it took 10 seconds to create a single 512x512 image on a Core i7-12700" in text
    assert "github.com/rupeshs/fastsdcpu/blob/d058ef95386bf0bfdcd68b5219ab74079e2e52aa/Readme.md" in text
    report["contenders"]["diffusers-lcm-512"] = _run(3.0, 0.5, unet_calls=4)
    assert "few-step 512 px shot: 2.00 s with its cutout, 1.50x diffusers' LCM-LoRA + AutoencoderTiny pipeline " \
        "without one (goal >= 1x): met" in goals(report)


@pytest.fixture(scope="module")
def lcm_bench_checkpoint(tmp_path_factory):
    """A tiny checkpoint laid out as the bench's (demo tokens inside) with the few-step contenders' files."""
    from fashiongen.bench.cpu_compare import prepare_lcm
    from fashiongen.random_checkpoints.sd import TINY, write_demo_embeddings, write_sd_checkpoint

    ckpt = write_sd_checkpoint(tmp_path_factory.mktemp("bench") / "tiny-random", TINY, seed=0)
    tokens = write_demo_embeddings(ckpt / "embeddings", TINY.cross_attention_dim)
    prepare_lcm(ckpt, tokens, full_size=False, log=print)
    return ckpt


def test_prepare_lcm_exports_an_lcm_lora_folder_with_a_tiny_vae(lcm_bench_checkpoint):
    from fashiongen.bench.cpu_workers import lcm_files
    from fashiongen.runtime.manifest import load_manifest

    manifest = load_manifest(lcm_files(lcm_bench_checkpoint).engines)
    assert manifest.presets["fast"]["guidance"] == 1.0 and "vae_decoder_tiny" in manifest.networks
    assert "<wrong>" in manifest.tokenizer.learned_tokens


@pytest.mark.parametrize("name", ["fashiongen-lcm-256", "diffusers-lcm-256"])
def test_few_step_contenders_run_at_tiny_size(lcm_bench_checkpoint, segmenter_engines, tmp_path, name):
    """The worker as the driver starts it: 4 UNet calls at 256 px, the tiny decoder timed, ours with its cutout."""
    from fashiongen.bench.cpu_compare import main

    out, image = tmp_path / "result.json", tmp_path / "image.npy"
    assert main(["--worker", name, "--checkpoint", str(lcm_bench_checkpoint), "--engines", str(tmp_path / "unused"),
                 "--segmenter", str(segmenter_engines), "--json-out", str(out), "--image-out", str(image),
                 "--threads", "1", "--spawned", repr(time.time())]) == 0
    result = json.loads(out.read_text())
    assert result["unet_calls"] == 4 and result["vae_decoder"] > 0 and result["total"] > 0
    assert (result["cutout"] is not None) == name.startswith("fashiongen")
    assert np.load(image).shape == (256, 256, 3)


def test_the_two_few_step_recipes_draw_the_same_image(lcm_bench_checkpoint, tmp_path):
    """diffusers' LCM-LoRA + AutoencoderTiny contender and this runtime's --preset fast (before its cutout) run the
    same settings on the same weights: the same image, to rounding."""
    from fashiongen.bench.common import NEGATIVE, PROMPT, SEED
    from fashiongen.bench.cpu_compare import main
    from fashiongen.bench.cpu_workers import lcm_files, preset_sampling
    from fashiongen.runtime.engines import EngineSet, backend_factory
    from fashiongen.runtime.txt2img import Txt2ImgPipeline, Txt2ImgRequest

    image = tmp_path / "image.npy"
    assert main(["--worker", "diffusers-lcm-256", "--checkpoint", str(lcm_bench_checkpoint), "--engines", "-",
                 "--segmenter", "-", "--json-out", str(tmp_path / "r.json"), "--image-out", str(image),
                 "--threads", "1", "--spawned", repr(time.time())]) == 0
    engines = EngineSet(lcm_files(lcm_bench_checkpoint).engines, backend_factory("ort", 1))
    sampling = preset_sampling("fast", engines.manifest, engines.engine_dir, steps=20)
    assert sampling == {"scheduler": "lcm", "steps": 4, "guidance": 1.0, "decoder": "tiny"}
    ours = Txt2ImgPipeline(engines)(Txt2ImgRequest(prompt=PROMPT, negative_prompt=NEGATIVE, seed=SEED, height=256,
                                                   width=256, **sampling), progress=False).images[0]
    assert np.abs(np.load(image).astype(int) - ours.astype(int)).max() <= 2

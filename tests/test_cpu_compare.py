"""bench/cpu_compare.py and its parts: the CLI, the report, and a worker module light enough for other venvs."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

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


def _run(total, step, rss=2048.0, **more):
    return {"cold_start": 3.0, "text_encoder": 0.1, "unet_step": step, "unet_total": 20 * step, "unet_calls": 20,
            "vae_decoder": 0.5, "cutout": None, "total": total, "total_warm": None, "peak_rss_mb": rss, **more}


def test_report_rows_and_goals():
    report = {
        "machine": "test CPU", "model": "tiny", "size": 256, "steps": 20, "seed": 1, "rounds": 1, "images": 1,
        "peak_gflops": 100.0, "peak_source": "given",
        "flop_floor": {"latent": 32, "counts": {"conv": 50.0, "matmul_linear": 20.0, "matmul_attention": 10.0},
                       "unet_gflop_per_step": 80.0, "floor_step_s": 0.8, "vae_gflop": 30.0, "floor_vae_s": 0.3},
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

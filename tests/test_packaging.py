"""The installed distribution: everything under the one ``fashiongen`` package, nothing else at the top."""
from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_wheel_puts_only_fashiongen_at_the_top_of_site_packages(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path), str(ROOT)], check=True, capture_output=True)
    wheel, = tmp_path.glob("fashiongen-*.whl")
    tops = {name.split("/")[0] for name in zipfile.ZipFile(wheel).namelist()}
    assert tops == {"fashiongen", wheel.name.split("-py")[0] + ".dist-info"}, tops
    names = set(zipfile.ZipFile(wheel).namelist())
    for module in ("runtime/txt2img.py", "runtime/schedulers/multistep.py", "export/sd_export.py", "training/runs.py",
                   "triton_repo/build.py", "random_checkpoints/sd.py", "bench/cpu_compare.py"):
        assert f"fashiongen/{module}" in names, module

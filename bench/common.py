"""What the benches share: where they keep checkpoints and reports, the seed's prompts, the stage clock
that times each network call of a pipeline, and the image metric that compares two renders."""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / "bench" / ".cache"  # checkpoints and engine folders, built once and reused (git-ignored)
RESULTS = ROOT / "bench" / "results"

#: The seed's garment, as a catalog caption and as the prompt with its learned tokens.
GARMENT = "black short sleeve crewneck crop top"
PROMPT = f"a <midjourney-style> photo of a {GARMENT}"
PLAIN_PROMPT = f"a photo of a {GARMENT}"  # for pipelines without the learned tokens
NEGATIVE = "<wrong>, blurry"
#: The benches' seed: every contender of a bench draws the same noise from it.
SEED = 19687


def shown_path(path, data=None) -> str:
    """``path`` as a committed report names it: relative to the repository (a shipped folder, the judge in the
    cache) or to the data set ``data``, else by its own name, so that no report names a folder of the machine
    it ran on."""
    path = Path(path).absolute()
    for root in (ROOT, data):
        if root is not None and path.is_relative_to(Path(root).absolute()):
            return path.relative_to(Path(root).absolute()).as_posix()
    return path.name


def add_seed_argument(parser) -> None:
    """``--seed``, as every bench that renders from one seed takes it."""
    parser.add_argument("--seed", type=int, default=SEED)


class StageClock:
    """Wall-clock seconds of each call of each named stage: ``stages[name]`` holds one entry per call."""

    def __init__(self):
        self.stages: dict[str, list[float]] = {}

    def add(self, name: str, seconds: float) -> None:
        self.stages.setdefault(name, []).append(seconds)

    def reset(self) -> None:
        self.stages = {}

    def wrap(self, name: str, fn):
        """``fn``, timed as a call of stage ``name``."""
        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.add(name, time.perf_counter() - start)
        return timed

    def hook(self, name: str, module) -> None:
        """Time every forward of a torch ``module`` (through hooks, so its own code stays as it is)."""
        started: list[float] = []
        module.register_forward_pre_hook(lambda *_: started.append(time.perf_counter()))
        module.register_forward_hook(lambda *_: self.add(name, time.perf_counter() - started.pop()))


def fresh_process_seconds(argv: list[str], runs: int, before=None) -> list[float]:
    """Wall seconds of ``fashiongen ARGV`` in a fresh process, ``runs`` times (``before`` runs first, untimed)."""
    times = []
    for _ in range(runs):
        if before is not None:
            before()
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "fashiongen", *argv], check=True, stdout=subprocess.DEVNULL)
        times.append(time.perf_counter() - started)
    return times


def diffusers_clock(pipe, vae_calls: tuple[str, ...] = ("decode",)) -> StageClock:
    """A clock on a diffusers pipeline: its text encoder and UNet forwards, and the VAE's ``vae_calls``
    (``decode`` -> stage ``vae_decoder``, ``encode`` -> ``vae_encoder``)."""
    clock = StageClock()
    clock.hook("text_encoder", pipe.text_encoder)
    clock.hook("unet", pipe.unet)
    for call in vae_calls:
        setattr(pipe.vae, call, clock.wrap(f"vae_{call}r", getattr(pipe.vae, call)))
    return clock


def psnr(a, b) -> float | None:
    """PSNR in dB of two uint8 images of one shape (inf when equal; None when either is missing or shapes
    differ)."""
    import numpy as np

    if a is None or b is None or a.shape != b.shape:
        return None
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)

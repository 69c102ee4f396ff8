"""The denoising loop shared by every pipeline, and the request checks they have in common.

A pipeline supplies ``predict(latents, t) -> noise`` (its guidance: classifier-free for text → image,
three-way for InstructPix2Pix); the loop owns scheduling, seeding and timing.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
from tqdm.auto import tqdm

from .rng import TorchGenerator
from .schedulers import Scheduler
from .timings import StageTimings

Predictor = Callable[[np.ndarray, float], np.ndarray]


def initial_latents(generator: TorchGenerator, shape: tuple[int, ...], scheduler: Scheduler) -> np.ndarray:
    """Gaussian latents drawn as diffusers draws them for this seed, scaled for the scheduler."""
    return generator.randn(shape).astype(np.float32) * np.float32(scheduler.init_noise_sigma)


def denoise(latents: np.ndarray, scheduler: Scheduler, predict: Predictor, generator: TorchGenerator,
            timings: StageTimings, progress: bool = True) -> np.ndarray:
    """Run every scheduler step; ``predict`` gets the scheduler-scaled model input and the timestep."""
    for t in tqdm(scheduler.timesteps, desc="denoising", unit="step", disable=not progress, leave=False):
        t = float(t)
        with timings.measure("scheduler"):
            model_input = scheduler.scale_model_input(latents, t)
        with timings.measure("unet"):
            noise = predict(model_input, t)
        with timings.measure("scheduler"):
            latents = scheduler.step(noise, t, latents, generator=generator)
    return latents


def unet_timestep(t: float, batch: int) -> np.ndarray:
    """The UNet's per-sample timestep input."""
    return np.full((batch,), t, dtype=np.float32)


def check_positive_int(name: str, value: int, low: int = 1) -> None:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < low:
        raise ValueError(f"{name} must be an integer >= {low} (got {value!r})")


def check_size(name: str, value: int, multiple: int) -> None:
    if not isinstance(value, (int, np.integer)) or value <= 0 or value % multiple:
        raise ValueError(f"{name} must be a positive multiple of {multiple} (got {value!r})")


def check_seed(seed: int) -> None:
    if not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**64:
        raise ValueError(f"seed must be an integer in [0, 2**64) (got {seed!r})")


def check_guidance(name: str, value: float) -> None:
    if not np.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0 (got {value!r})")

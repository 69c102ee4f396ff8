"""The denoising loop shared by every pipeline, and the request checks they have in common.

A pipeline supplies ``predict(latents, t) -> noise`` (its guidance: classifier-free for text → image,
three-way for InstructPix2Pix); the loop owns scheduling, seeding and timing.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
from tqdm.auto import tqdm

from .errors import InputError
from .rng import TorchGenerator
from .schedulers import Scheduler
from .timings import StageTimings

Predictor = Callable[[np.ndarray, float], np.ndarray]

# The most denoising steps one request may ask for, in-process and on a server alike (the pipelines' default
# bound; a server's repository may set another). Each step is a UNet call, so the bound keeps one request
# from holding a worker for minutes; samplers are used at 20-50 steps.
MAX_STEPS = 150


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


def guidance_embedding(guidance: float, dim: int, batch: int) -> np.ndarray:
    """The guidance-scale embedding an LCM-distilled UNet takes (``timestep_cond``), as diffusers'
    ``get_guidance_scale_embedding(guidance - 1, embedding_dim=dim)`` computes it: sinusoids of
    ``1000 (guidance - 1)`` at ``dim // 2`` frequencies, sines then cosines (zero-padded to an odd ``dim``),
    float32, one row per sample."""
    w = np.full((batch,), np.float32(guidance - 1), dtype=np.float32) * np.float32(1000.0)
    half = dim // 2
    step = np.log(np.float32(10000.0)) / np.float32(half - 1)
    # float32 arguments as torch has them, exp / sin / cos in float64 rounded once. torch's float32 ones are
    # within an ulp or so of that: the entries agree to about an ulp of the largest angle (4.9e-4 at guidance 8,
    # angle 7000), which is as exact as float32 angles make the embedding.
    freqs = np.exp((np.arange(half, dtype=np.float32) * -step).astype(np.float64)).astype(np.float32)
    angles = (w[:, None] * freqs[None, :]).astype(np.float64)
    emb = np.concatenate([np.sin(angles), np.cos(angles)], axis=1).astype(np.float32)
    if dim % 2:
        emb = np.pad(emb, ((0, 0), (0, 1)))
    return emb.astype(np.float32)


def check_positive_int(name: str, value: int, low: int = 1) -> None:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < low:
        raise InputError(f"{name}: must be an integer >= {low} (got {value!r})")


def check_steps(steps: int, max_steps: int, scheduler: Scheduler) -> None:
    """``steps`` within ``1..max_steps``, and no more than the scheduler takes: the timesteps the checkpoint
    was trained on, or for LCM and TCD the ``original_inference_steps`` of its distillation schedule."""
    limit = min(max_steps, scheduler.max_inference_steps)
    if not isinstance(steps, (int, np.integer)) or isinstance(steps, bool) or not 1 <= steps <= limit:
        why = ""
        if scheduler.max_inference_steps < min(max_steps, scheduler.config.num_train_timesteps):
            why = (f"; the {scheduler.name} scheduler takes at most its original_inference_steps="
                   f"{scheduler.max_inference_steps}")
        raise InputError(f"steps: must be an integer from 1 to {limit} (got {steps!r}){why}")


def check_size(name: str, value: int, multiple: int) -> None:
    if not isinstance(value, (int, np.integer)) or value <= 0 or value % multiple:
        raise InputError(f"{name}: must be a positive multiple of {multiple} (got {value!r})")


def check_seed(seed: int) -> None:
    if not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**64:
        raise InputError(f"seed: must be an integer in [0, 2**64) (got {seed!r})")


def check_guidance(name: str, value: float) -> None:
    if not np.isfinite(value) or value < 0:
        raise InputError(f"{name}: must be a finite number >= 0 (got {value!r})")

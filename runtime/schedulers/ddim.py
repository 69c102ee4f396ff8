"""DDIM: Song, Meng & Ermon, "Denoising Diffusion Implicit Models" (ICLR 2021, arXiv:2010.02502)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .common import (F32, ONE, Scheduler, ThresholdingConfig, alpha_before, bound_x0, check_steps, choice, flag,
                     is_number, noise_generator, setting, spaced_timesteps, x0_and_eps)


@dataclass(frozen=True)
class DDIMConfig(ThresholdingConfig):
    prediction_type: str = choice("epsilon", "sample", "v_prediction")
    clip_sample: bool = flag(True)
    set_alpha_to_one: bool = flag(True)
    clip_sample_range: float = setting(1.0, is_number)
    rescale_betas_zero_snr: bool = flag()


class DDIMScheduler(Scheduler):
    """Denoising diffusion implicit models, eq. 12 of the paper. ``eta`` (default 0, deterministic) scales
    the added noise.
    """

    name = "ddim"
    Config = DDIMConfig

    def __init__(self, config: dict | None = None, eta: float = 0.0, **overrides):
        super().__init__(config, **overrides)
        if not (is_number(eta) and eta >= 0):
            raise ValueError(f"DDIMScheduler: eta must be a non-negative number, got {eta!r}")
        self.eta = float(eta)
        self.final_alpha_cumprod = ONE if self.config.set_alpha_to_one else self.alphas_cumprod[0]

    def set_timesteps(self, num_inference_steps: int) -> None:
        cfg = self.config
        check_steps(num_inference_steps, cfg.num_train_timesteps)
        self.num_inference_steps = num_inference_steps
        ts = spaced_timesteps(cfg.timestep_spacing, cfg.num_train_timesteps, num_inference_steps, cfg.steps_offset)
        self.timesteps = ts.astype(np.int64).astype(F32)

    def step(self, model_output, timestep, sample, generator=None):
        self._require_steps_set()
        cfg = self.config
        timestep = int(round(float(timestep)))
        prev_timestep = timestep - cfg.num_train_timesteps // self.num_inference_steps
        alpha_t = self.alphas_cumprod[timestep]
        alpha_prev = alpha_before(self.alphas_cumprod, prev_timestep, self.final_alpha_cumprod)
        beta_t = ONE - alpha_t
        pred_x0, pred_eps = x0_and_eps(cfg.prediction_type, model_output, sample, alpha_t, beta_t)
        pred_x0 = bound_x0(cfg, pred_x0)
        beta_prev = ONE - alpha_prev
        variance = beta_prev / beta_t * (ONE - alpha_t / alpha_prev)
        std_dev_t = F32(self.eta) * np.sqrt(variance)
        direction = np.sqrt(ONE - alpha_prev - std_dev_t * std_dev_t) * pred_eps
        prev_sample = np.sqrt(alpha_prev) * pred_x0 + direction
        if self.eta > 0:
            noise = noise_generator(generator).randn(model_output.shape).astype(model_output.dtype)
            prev_sample = prev_sample + std_dev_t * noise
        return prev_sample

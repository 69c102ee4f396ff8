"""PNDM: Liu et al., "Pseudo Numerical Methods for Diffusion Models on Manifolds" (ICLR 2022, arXiv:2202.09778)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .common import F32, ONE, Scheduler, SchedulerConfig, alpha_before, check_steps, choice, flag, spaced_timesteps


@dataclass(frozen=True)
class PNDMConfig(SchedulerConfig):
    prediction_type: str = choice("epsilon", "v_prediction")
    skip_prk_steps: bool = flag()
    set_alpha_to_one: bool = flag()


class PNDMScheduler(Scheduler):
    """Pseudo numerical methods for diffusion models: Liu et al., "Pseudo Numerical Methods for Diffusion
    Models on Manifolds" (ICLR 2022, arXiv:2202.09778). With ``skip_prk_steps`` (Stable Diffusion's
    setting) the linear multistep (PLMS) part only; otherwise four pseudo Runge-Kutta steps first.
    """

    name = "pndm"
    Config = PNDMConfig

    def __init__(self, config: dict | None = None, **overrides):
        super().__init__(config, **overrides)
        self.final_alpha_cumprod = ONE if self.config.set_alpha_to_one else self.alphas_cumprod[0]
        self.pndm_order = 4
        self._reset()

    def _reset(self) -> None:
        self.ets: list[np.ndarray] = []
        self.counter = 0
        self.cur_model_output: Any = 0
        self.cur_sample: np.ndarray | None = None

    def set_timesteps(self, num_inference_steps: int) -> None:
        cfg = self.config
        check_steps(num_inference_steps, cfg.num_train_timesteps)
        self.num_inference_steps = num_inference_steps
        ascending = spaced_timesteps(cfg.timestep_spacing, cfg.num_train_timesteps, num_inference_steps,
                                     cfg.steps_offset)[::-1].astype(np.int64)
        if cfg.skip_prk_steps:
            self.prk_timesteps = np.array([], dtype=np.int64)
            self.plms_timesteps = np.concatenate([ascending[:-1], ascending[-2:-1], ascending[-1:]])[::-1].copy()
        else:
            half = cfg.num_train_timesteps // num_inference_steps // 2
            prk = ascending[-self.pndm_order:].repeat(2) + np.tile(np.array([0, half]), self.pndm_order)
            self.prk_timesteps = prk[:-1].repeat(2)[1:-1][::-1].copy()
            self.plms_timesteps = ascending[:-3][::-1].copy()
        self.timesteps = np.concatenate([self.prk_timesteps, self.plms_timesteps]).astype(np.int64).astype(F32)
        self._reset()

    def step(self, model_output, timestep, sample, generator=None):
        self._require_steps_set()
        if self.counter < len(self.prk_timesteps) and not self.config.skip_prk_steps:
            return self._step_prk(model_output, int(round(float(timestep))), sample)
        return self._step_plms(model_output, int(round(float(timestep))), sample)

    def _step_prk(self, model_output, timestep: int, sample):
        ratio = self.config.num_train_timesteps // self.num_inference_steps
        prev_timestep = timestep - (0 if self.counter % 2 else ratio // 2)
        timestep = int(self.prk_timesteps[self.counter // 4 * 4])
        phase = self.counter % 4
        if phase == 0:
            self.cur_model_output = self.cur_model_output + 1 / 6 * model_output
            self.ets.append(model_output)
            self.cur_sample = sample
        elif phase in (1, 2):
            self.cur_model_output = self.cur_model_output + 1 / 3 * model_output
        else:
            model_output = self.cur_model_output + 1 / 6 * model_output
            self.cur_model_output = 0
        cur_sample = self.cur_sample if self.cur_sample is not None else sample
        prev_sample = self._prev_sample(cur_sample, timestep, prev_timestep, model_output)
        self.counter += 1
        return prev_sample

    def _step_plms(self, model_output, timestep: int, sample):
        if not self.config.skip_prk_steps and len(self.ets) < 3:
            raise ValueError("PNDMScheduler: PLMS steps need the 12 PRK steps first (skip_prk_steps is false)")
        ratio = self.config.num_train_timesteps // self.num_inference_steps
        prev_timestep = timestep - ratio
        if self.counter != 1:
            self.ets = self.ets[-3:]
            self.ets.append(model_output)
        else:
            prev_timestep, timestep = timestep, timestep + ratio
        ets = self.ets
        if len(ets) == 1 and self.counter == 0:
            self.cur_sample = sample
        elif len(ets) == 1 and self.counter == 1:
            model_output = (model_output + ets[-1]) / 2
            sample, self.cur_sample = self.cur_sample, None
        elif len(ets) == 2:
            model_output = (3 * ets[-1] - ets[-2]) / 2
        elif len(ets) == 3:
            model_output = (23 * ets[-1] - 16 * ets[-2] + 5 * ets[-3]) / 12
        else:
            model_output = (1 / 24) * (55 * ets[-1] - 59 * ets[-2] + 37 * ets[-3] - 9 * ets[-4])
        prev_sample = self._prev_sample(sample, timestep, prev_timestep, model_output)
        self.counter += 1
        return prev_sample

    def _prev_sample(self, sample, timestep: int, prev_timestep: int, model_output):
        """Formula (9) of the PNDM paper."""
        alpha_t = self.alphas_cumprod[timestep]
        alpha_prev = alpha_before(self.alphas_cumprod, prev_timestep, self.final_alpha_cumprod)
        beta_t, beta_prev = ONE - alpha_t, ONE - alpha_prev
        if self.config.prediction_type == "v_prediction":
            model_output = np.sqrt(alpha_t) * model_output + np.sqrt(beta_t) * sample
        sample_coeff = np.sqrt(alpha_prev / alpha_t)
        denom = alpha_t * np.sqrt(beta_prev) + np.sqrt(alpha_t * beta_t * alpha_prev)
        return sample_coeff * sample - (alpha_prev - alpha_t) * model_output / denom

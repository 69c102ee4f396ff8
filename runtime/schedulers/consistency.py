"""Few-step consistency samplers: LCM (Luo et al., "Latent Consistency Models", arXiv:2310.04378) and TCD
(Zheng et al., "Trajectory Consistency Distillation", arXiv:2402.19159), step for step what diffusers'
``LCMScheduler`` and ``TCDScheduler`` compute.

Both walk a subset of the distillation schedule: ``original_inference_steps`` timesteps evenly spaced over the
training ones (``k - 1, 2k - 1, ...`` with ``k = num_train_timesteps // original_inference_steps``), of which
``num_inference_steps`` are taken at evenly spaced indices from the top. ``timestep_spacing`` and
``steps_offset`` play no part, as in diffusers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import InputError
from .common import (F32, ONE, Scheduler, SchedulerConfig, ThresholdingConfig, alpha_before, bound_x0,
                     check_steps, choice, first_index, flag, is_int, is_number, noise_generator, setting,
                     x0_and_eps)

SIGMA_DATA = 0.5
#: TCD's default gamma: the ``eta=0.3`` that TCD's authors recommend and diffusers' ``TCDScheduler.step``
#: defaults to (diffusers' pipelines pass their own ``eta``, default 0.0, unless the caller sets it).
TCD_GAMMA = 0.3


@dataclass(frozen=True)
class ConsistencyConfig(SchedulerConfig):
    """The settings LCM and TCD share, with their diffusers defaults (SD 1.5's schedule)."""

    beta_start: float = setting(0.00085, is_number)
    beta_end: float = setting(0.012, is_number)
    beta_schedule: str = choice("scaled_linear", "linear", "squaredcos_cap_v2")
    prediction_type: str = choice("epsilon", "sample", "v_prediction")
    original_inference_steps: int = setting(50, lambda v: is_int(v) and v >= 1)
    set_alpha_to_one: bool = flag(True)
    rescale_betas_zero_snr: bool = flag()

    @classmethod
    def settle(cls, owner: str, values: dict) -> None:
        super().settle(owner, values)
        if values["original_inference_steps"] > values["num_train_timesteps"]:
            raise ValueError(f"{owner}: original_inference_steps={values['original_inference_steps']} exceeds "
                             f"num_train_timesteps={values['num_train_timesteps']}")


@dataclass(frozen=True)
class LCMConfig(ConsistencyConfig, ThresholdingConfig):
    clip_sample: bool = flag(False)
    clip_sample_range: float = setting(1.0, is_number)
    timestep_scaling: float = setting(10.0, is_number)


class ConsistencyScheduler(Scheduler):
    """The schedule and step bookkeeping LCM and TCD share; subclasses implement :meth:`step`."""

    Config = ConsistencyConfig

    def __init__(self, config: dict | None = None, **overrides):
        super().__init__(config, **overrides)
        self.final_alpha_cumprod = ONE if self.config.set_alpha_to_one else self.alphas_cumprod[0]
        self._step_index: int | None = None

    @property
    def max_inference_steps(self) -> int:
        """The most steps ``set_timesteps`` takes: a subset of the distillation schedule."""
        return self.config.original_inference_steps

    def set_timesteps(self, num_inference_steps: int) -> None:
        cfg = self.config
        check_steps(num_inference_steps, cfg.num_train_timesteps)
        original = cfg.original_inference_steps
        if num_inference_steps > original:
            raise ValueError(f"num_inference_steps={num_inference_steps} exceeds original_inference_steps="
                             f"{original}: the steps are a subset of that schedule")
        k = cfg.num_train_timesteps // original
        origin = (np.arange(1, original + 1, dtype=np.int64) * k - 1)[::-1]
        picks = np.floor(np.linspace(0, len(origin), num=num_inference_steps, endpoint=False)).astype(np.int64)
        self.num_inference_steps = num_inference_steps
        self.timesteps = origin[picks].astype(F32)
        self._step_index = None

    def _advance(self, timestep: float) -> tuple[int, int, bool]:
        """``(t, next t or None, last)`` for this step, moving the step index on."""
        self._require_steps_set()
        if self._step_index is None:
            self._step_index = first_index(self.timesteps, timestep)
        index = self._step_index
        self._step_index += 1
        last = index == self.num_inference_steps - 1
        following = None if index + 1 >= len(self.timesteps) else int(self.timesteps[index + 1])
        return int(round(float(timestep))), following, last


class LCMScheduler(ConsistencyScheduler):
    """Multistep latent consistency sampling: each step maps the sample to the consistency function's clean
    estimate (the model's clean prediction mixed with the sample by the boundary scalings ``c_skip`` /
    ``c_out`` at ``t * timestep_scaling``) and, except on the last step, noises it afresh to the next
    timestep with ``generator.randn`` (diffusers' ``randn_tensor`` draw)."""

    name = "lcm"
    Config = LCMConfig

    def boundary_scalings(self, timestep: int) -> tuple[np.float32, np.float32]:
        """``(c_skip, c_out)`` at the discrete ``timestep``, float32 as diffusers computes them."""
        scaled = F32(timestep) * F32(self.config.timestep_scaling)
        denominator = scaled * scaled + F32(SIGMA_DATA**2)
        return F32(SIGMA_DATA**2) / denominator, scaled / np.sqrt(denominator)

    def step(self, model_output, timestep, sample, generator=None):
        t, following, last = self._advance(timestep)
        cfg = self.config
        alpha_t = self.alphas_cumprod[t]
        x0, _ = x0_and_eps(cfg.prediction_type, model_output, sample, alpha_t, ONE - alpha_t)
        x0 = bound_x0(cfg, x0)
        c_skip, c_out = self.boundary_scalings(t)
        denoised = c_out * x0 + c_skip * sample
        if last:
            return denoised
        alpha_prev = alpha_before(self.alphas_cumprod, t if following is None else following,
                                  self.final_alpha_cumprod)
        noise = noise_generator(generator).randn(model_output.shape).astype(denoised.dtype)
        return np.sqrt(alpha_prev) * denoised + np.sqrt(ONE - alpha_prev) * noise


class TCDScheduler(ConsistencyScheduler):
    """Trajectory consistency sampling: each step predicts the sample at the intermediate timestep
    ``s = floor((1 - gamma) * t_next)`` and, with ``gamma > 0`` and except on the last step, noises it
    forward to ``t_next`` with ``generator.randn``. ``gamma`` is diffusers' ``eta`` (the pipelines' ``eta``
    argument, passed on to ``TCDScheduler.step``), hence the request field and flag ``eta``: 0 is deterministic,
    higher values add more fresh noise each step (softer detail). diffusers' TCD reads neither clipping nor
    thresholding settings, so neither does this class.
    """

    name = "tcd"

    def __init__(self, config: dict | None = None, gamma: float = TCD_GAMMA, **overrides):
        super().__init__(config, **overrides)
        if not (is_number(gamma) and 0 <= gamma <= 1):  # a user's --eta lands here: name the field
            raise InputError(f"eta: TCD's gamma must be a number from 0 to 1 (got {gamma!r})")
        self.gamma = float(gamma)

    def step(self, model_output, timestep, sample, generator=None):
        t, following, last = self._advance(timestep)
        following = 0 if following is None else following
        s = int(np.floor(F32(1 - self.gamma) * F32(following)))
        alpha_t, alpha_s = self.alphas_cumprod[t], self.alphas_cumprod[s]
        alpha_prev = alpha_before(self.alphas_cumprod, following, self.final_alpha_cumprod)
        x0, eps = x0_and_eps(self.config.prediction_type, model_output, sample, alpha_t, ONE - alpha_t)
        noised = np.sqrt(alpha_s) * x0 + np.sqrt(ONE - alpha_s) * eps
        if self.gamma == 0 or last:
            return noised
        noise = noise_generator(generator).randn(model_output.shape).astype(noised.dtype)
        ratio = alpha_prev / alpha_s
        return np.sqrt(ratio) * noised + np.sqrt(ONE - ratio) * noise

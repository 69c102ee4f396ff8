"""The sigma-parameterised (k-diffusion style) schedulers: Euler, Euler ancestral, LMS and Heun.

Each integrates the probability-flow ODE in Karras et al.'s sigma parameterisation ("Elucidating the Design
Space of Diffusion-Based Generative Models", NeurIPS 2022, arXiv:2206.00364) over the same schedule: the
spaced training timesteps and their sigmas (or a Karras / exponential ramp), ending at sigma 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .common import (F32, ONE, SPACINGS, Scheduler, SchedulerConfig, check_steps, choice, first_index, flag,
                     interpolated_sigmas, is_number, is_optional_number, noise_generator, optional_flag,
                     ramp_sigmas, setting, spaced_timesteps, torch_linspace_f32, train_sigmas, unsupported,
                     with_final_sigma)


@dataclass(frozen=True)
class EulerConfig(SchedulerConfig):
    prediction_type: str = choice("epsilon", "v_prediction", "sample", "original_sample")
    interpolation_type: str = choice("linear", "log_linear")
    use_karras_sigmas: bool = optional_flag()
    use_exponential_sigmas: bool = optional_flag()
    use_beta_sigmas: bool = unsupported()  # needs scipy's beta ppf
    sigma_min: float | None = setting(None, is_optional_number)
    sigma_max: float | None = setting(None, is_optional_number)
    timestep_spacing: str = choice("linspace", *SPACINGS)
    timestep_type: str = choice("discrete", "continuous")
    rescale_betas_zero_snr: bool = flag()
    final_sigmas_type: str = choice("zero", "sigma_min")


@dataclass(frozen=True)
class EulerAncestralConfig(SchedulerConfig):
    prediction_type: str = choice("epsilon", "v_prediction")
    timestep_spacing: str = choice("linspace", *SPACINGS)
    rescale_betas_zero_snr: bool = flag()


@dataclass(frozen=True)
class LMSConfig(SchedulerConfig):
    prediction_type: str = choice("epsilon", "v_prediction", "sample")
    use_karras_sigmas: bool = optional_flag()
    use_exponential_sigmas: bool = optional_flag()
    use_beta_sigmas: bool = unsupported()
    timestep_spacing: str = choice("linspace", *SPACINGS)


@dataclass(frozen=True)
class HeunConfig(SchedulerConfig):
    beta_start: float = setting(0.00085, is_number)
    beta_end: float = setting(0.012, is_number)
    prediction_type: str = choice("epsilon", "v_prediction", "sample")
    use_karras_sigmas: bool = optional_flag()
    use_exponential_sigmas: bool = optional_flag()
    use_beta_sigmas: bool = unsupported()
    clip_sample: bool = flag()
    clip_sample_range: float = setting(1.0, is_number)
    timestep_spacing: str = choice("linspace", *SPACINGS)


class SigmaScheduler(Scheduler):
    """What the sigma-parameterised schedulers share: the schedule, the step index, input scaling and the
    clean-sample prediction; ``sigmas`` has one entry more than ``timesteps``, the sigma the last step ends at.
    """

    finite_final_sigma = True

    def __init__(self, config: dict | None = None, **overrides):
        super().__init__(config, **overrides)
        self.sigmas = np.zeros(1, dtype=F32)
        self._step_index: int | None = None

    @property
    def init_noise_sigma(self) -> float:
        max_sigma = self.sigmas.max()
        if self.config.timestep_spacing in ("linspace", "trailing"):
            return float(max_sigma)
        return float(np.sqrt(max_sigma * max_sigma + ONE))

    def _schedule(self, num_inference_steps: int) -> tuple[np.ndarray, np.ndarray]:
        """(timesteps, sigmas with the final one appended): the spaced training timesteps and their sigmas
        interpolated from the training schedule (linearly, or log-linearly with ``interpolation_type``), or
        a Karras / exponential ramp between the same ends with the timesteps mapped back from it."""
        cfg = self.config
        check_steps(num_inference_steps, cfg.num_train_timesteps)
        self.num_inference_steps = num_inference_steps
        timesteps = spaced_timesteps(cfg.timestep_spacing, cfg.num_train_timesteps, num_inference_steps,
                                     cfg.steps_offset, round_linspace=False).astype(F32)
        train = train_sigmas(self.alphas_cumprod)
        if cfg.interpolation_type == "linear":
            sigmas = interpolated_sigmas(timesteps, train)
        else:  # log_linear, with diffusers' num_inference_steps + 1 points
            sigmas = np.exp(torch_linspace_f32(float(np.log(train[-1])), float(np.log(train[0])),
                                               num_inference_steps + 1))
        ramp = ramp_sigmas(cfg, num_inference_steps, float(sigmas[-1]), float(sigmas[0]), np.log(train))
        if ramp is not None:
            sigmas, timesteps = ramp
        self._step_index = None
        return timesteps, with_final_sigma(sigmas, cfg, self.alphas_cumprod)

    def _index(self, timestep: float) -> int:
        if self._step_index is None:
            self._step_index = first_index(self.timesteps, timestep)
        return self._step_index

    def scale_model_input(self, sample, timestep):
        sigma = self.sigmas[self._index(timestep)]
        return sample / np.sqrt(sigma * sigma + ONE)

    def _pred_original(self, model_output, sample, sigma, sigma_hat):
        kind = self.config.prediction_type
        if kind == "epsilon":
            return sample - sigma_hat * model_output
        if kind == "v_prediction":
            sigma_sq_1 = sigma * sigma + ONE
            return model_output * (-sigma / np.sqrt(sigma_sq_1)) + sample / sigma_sq_1
        return model_output  # sample / original_sample


class EulerDiscreteScheduler(SigmaScheduler):
    """Euler's method on the probability-flow ODE: Karras et al. (arXiv:2206.00364), Algorithm 1 without
    the second-order correction (as in k-diffusion's ``sample_euler``).
    """

    name = "euler"
    Config = EulerConfig

    def set_timesteps(self, num_inference_steps: int) -> None:
        cfg = self.config
        timesteps, self.sigmas = self._schedule(num_inference_steps)
        if cfg.timestep_type == "continuous" and cfg.prediction_type == "v_prediction":
            self.timesteps = (0.25 * np.log(self.sigmas[:-1].astype(np.float64))).astype(F32)
        else:
            self.timesteps = np.asarray(timesteps).astype(F32)

    def step(self, model_output, timestep, sample, generator=None):
        self._require_steps_set()
        i = self._index(timestep)
        sample = sample.astype(F32)
        sigma = self.sigmas[i]
        sigma_hat = sigma * F32(1.0)  # s_churn = 0: no extra noise
        pred_x0 = self._pred_original(model_output, sample, sigma, sigma_hat)
        derivative = (sample - pred_x0) / sigma_hat
        dt = self.sigmas[i + 1] - sigma_hat
        self._step_index += 1
        return (sample + derivative * dt).astype(model_output.dtype)


class EulerAncestralDiscreteScheduler(SigmaScheduler):
    """Ancestral sampling with Euler steps: Euler's method down to ``sigma_down`` plus fresh noise of size
    ``sigma_up`` each step, as in k-diffusion's ``sample_euler_ancestral`` (Karras et al., arXiv:2206.00364;
    ancestral noise split after Ho et al., "Denoising Diffusion Probabilistic Models", arXiv:2006.11239).
    The noise is ``generator.randn(model_output.shape)``, which is what diffusers' ``randn_tensor`` draws.
    """

    name = "euler_a"
    Config = EulerAncestralConfig

    def set_timesteps(self, num_inference_steps: int) -> None:
        self.timesteps, self.sigmas = self._schedule(num_inference_steps)

    def step(self, model_output, timestep, sample, generator=None):
        self._require_steps_set()
        i = self._index(timestep)
        sample = sample.astype(F32)
        sigma_from, sigma_to = self.sigmas[i], self.sigmas[i + 1]
        pred_x0 = self._pred_original(model_output, sample, sigma_from, sigma_from)
        from_sq, to_sq = sigma_from * sigma_from, sigma_to * sigma_to
        sigma_up = np.sqrt(to_sq * (from_sq - to_sq) / from_sq)
        sigma_down = np.sqrt(to_sq - sigma_up * sigma_up)
        derivative = (sample - pred_x0) / sigma_from
        prev_sample = sample + derivative * (sigma_down - sigma_from)
        noise = noise_generator(generator).randn(model_output.shape).astype(model_output.dtype)
        prev_sample = prev_sample + noise * sigma_up
        self._step_index += 1
        return prev_sample.astype(model_output.dtype)


class LMSDiscreteScheduler(SigmaScheduler):
    """Linear multistep (Adams–Bashforth in sigma) on the probability-flow ODE, as in k-diffusion's
    ``sample_lms``: the next sample adds the last ``order`` (4, what diffusers' pipelines use) derivatives,
    each weighted by the integral over the step of its Lagrange basis polynomial through their sigmas. The
    polynomial is integrated exactly here (diffusers integrates it numerically with scipy's ``quad``, which
    is exact for it up to rounding).
    """

    name = "lms"
    order = 4
    Config = LMSConfig

    def set_timesteps(self, num_inference_steps: int) -> None:
        timesteps, self.sigmas = self._schedule(num_inference_steps)
        self.timesteps = np.asarray(timesteps).astype(F32)
        self.derivatives: list[np.ndarray] = []

    def coefficient(self, order: int, i: int, j: int) -> float:
        """The weight of the derivative ``j`` steps back at step ``i``: the integral from sigma_i to sigma_i+1
        of the Lagrange basis polynomial that is 1 at sigma_(i-j) and 0 at the other ``order - 1`` sigmas."""
        nodes = self.sigmas.astype(np.float64)
        basis = np.polynomial.Polynomial([1.0])
        for k in range(order):
            if k != j:
                basis *= np.polynomial.Polynomial([-nodes[i - k], 1.0]) / (nodes[i - j] - nodes[i - k])
        antiderivative = basis.integ()
        return float(antiderivative(nodes[i + 1]) - antiderivative(nodes[i]))

    def step(self, model_output, timestep, sample, generator=None):
        self._require_steps_set()
        i = self._index(timestep)
        sample = sample.astype(F32)
        sigma = self.sigmas[i]
        derivative = (sample - self._pred_original(model_output, sample, sigma, sigma)) / sigma
        self.derivatives = (self.derivatives + [derivative])[-self.order:]
        order = min(i + 1, self.order)
        update = 0
        for j, past in zip(range(order), reversed(self.derivatives)):  # newest first, summed as diffusers does
            update = update + F32(self.coefficient(order, i, j)) * past
        self._step_index += 1
        return (sample + update).astype(model_output.dtype)


class HeunDiscreteScheduler(SigmaScheduler):
    """Heun's second-order method on the probability-flow ODE: Karras et al. (arXiv:2206.00364), Algorithm 1
    with S_churn = 0. Every step but the last takes two model calls: an Euler step to the next sigma, then the
    average of the slopes at both ends. The timesteps list each inner timestep twice (2n - 1 calls for n
    steps), so the denoising loop needs no special case: each ``step`` knows which half it is in.
    """

    name = "heun"
    Config = HeunConfig

    def set_timesteps(self, num_inference_steps: int) -> None:
        timesteps, sigmas = self._schedule(num_inference_steps)
        self.sigmas = np.concatenate([sigmas[:1], np.repeat(sigmas[1:-1], 2), sigmas[-1:]])
        timesteps = np.asarray(timesteps)
        self.timesteps = np.concatenate([timesteps[:1], np.repeat(timesteps[1:], 2)]).astype(F32)
        self._first_half: tuple[np.ndarray, np.float32, np.ndarray] | None = None  # (slope, dt, sample)

    def step(self, model_output, timestep, sample, generator=None):
        self._require_steps_set()
        i = self._index(timestep)
        sample = sample.astype(F32)
        first = self._first_half is None
        sigma, sigma_next = (self.sigmas[i], self.sigmas[i + 1]) if first else (self.sigmas[i - 1], self.sigmas[i])
        at = sigma if first else sigma_next  # the sigma the model saw
        pred_x0 = self._pred_original(model_output, sample, at, at)
        if self.config.clip_sample:
            pred_x0 = np.clip(pred_x0, -self.config.clip_sample_range, self.config.clip_sample_range)
        if first:
            slope, dt = (sample - pred_x0) / sigma, sigma_next - sigma
            self._first_half = (slope, dt, sample)
        else:  # the Euler step's end point: average its slope with the first one, redo the step from the start
            slope = (sample - pred_x0) / sigma_next
            first_slope, dt, sample = self._first_half
            slope = (first_slope + slope) / F32(2)
            self._first_half = None
        self._step_index += 1
        return (sample + slope * dt).astype(model_output.dtype)

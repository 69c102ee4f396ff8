"""The multistep solvers in log-SNR time: DPM-Solver(++) and UniPC.

Both step from sigma to sigma over the same schedule (timesteps spaced over ``num_inference_steps + 1``
points with the last dropped, or a Karras / exponential ramp), convert each model output to a data (x0) or
noise prediction, and keep the last ``solver_order`` of those for their higher-order updates. They differ
in the update itself.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .common import (F32, ONE, SPACINGS, Scheduler, ThresholdingConfig, check_steps, choice, first_index, flag,
                     interpolated_sigmas, is_int, is_number, is_optional_number, optional_flag, ramp_sigmas, setting,
                     spaced_timesteps, threshold_sample, train_sigmas, unsupported, with_final_sigma)

@dataclass(frozen=True)
class MultistepConfig(ThresholdingConfig):
    """The settings DPM-Solver multistep and UniPC share, with diffusers' defaults for both."""

    prediction_type: str = choice("epsilon", "sample", "v_prediction")
    lower_order_final: bool = flag(True)
    use_karras_sigmas: bool = optional_flag()
    use_exponential_sigmas: bool = optional_flag()
    use_beta_sigmas: bool = unsupported()      # needs scipy's beta ppf
    use_flow_sigmas: bool = unsupported()      # flow-matching models: not implemented
    flow_shift: float = 1.0
    final_sigmas_type: str = choice("zero", "sigma_min")
    timestep_spacing: str = choice("linspace", *SPACINGS)
    rescale_betas_zero_snr: bool = flag()
    use_dynamic_shifting: bool = unsupported()
    time_shift_type: str = "exponential"


@dataclass(frozen=True)
class DPMSolverConfig(MultistepConfig):
    solver_order: int = choice(2, 1)  # third order: not implemented
    algorithm_type: str = choice("dpmsolver++", "dpmsolver", "deis")  # SDE variants: not implemented
    solver_type: str = choice("midpoint", "heun", "logrho", "bh1", "bh2")
    euler_at_final: bool = flag()
    use_lu_lambdas: bool = unsupported()
    lambda_min_clipped: float = setting(-float("inf"), is_number)
    variance_type: str | None = choice(None, "learned", "learned_range")

    @classmethod
    def settle(cls, owner: str, values: dict) -> None:
        if values["algorithm_type"] == "deis":  # diffusers maps these, with a deprecation note
            values["algorithm_type"] = "dpmsolver++"
        if values["solver_type"] in ("logrho", "bh1", "bh2"):
            values["solver_type"] = "midpoint"
        if values["algorithm_type"] != "dpmsolver++" and values["final_sigmas_type"] == "zero":
            raise ValueError(f"{owner}: final_sigmas_type='zero' is not supported with "
                             f"algorithm_type={values['algorithm_type']!r}; use 'sigma_min'")
        super().settle(owner, values)


@dataclass(frozen=True)
class UniPCConfig(MultistepConfig):
    solver_order: int = setting(2, lambda v: is_int(v) and 1 <= v <= 3)
    predict_x0: bool = flag(True)
    solver_type: str = choice("bh2", "bh1", "midpoint", "heun", "logrho")
    disable_corrector: tuple = setting((), lambda v: isinstance(v, (list, tuple)) and all(is_int(i) for i in v))
    solver_p: None = setting(None, lambda v: v is None)  # another scheduler as the predictor: not implemented
    sigma_min: float | None = setting(None, is_optional_number)
    sigma_max: float | None = setting(None, is_optional_number)
    shift_terminal: None = setting(None, lambda v: v is None)

    @classmethod
    def settle(cls, owner: str, values: dict) -> None:
        if values["solver_type"] in ("midpoint", "heun", "logrho"):  # diffusers maps these to bh2
            values["solver_type"] = "bh2"
        super().settle(owner, values)


class MultistepScheduler(Scheduler):
    """The schedule, model-output conversion and history that DPM-Solver multistep and UniPC share.

    A subclass says whether it works on data or noise predictions (:attr:`predicts_data`) and implements
    ``step``; ``model_outputs`` holds the last ``solver_order`` converted outputs, oldest first, and
    ``lower_order_nums`` how many steps have been taken (capped at ``solver_order``) for the warm-up.
    """

    finite_final_sigma = True
    #: diffusers rounds Karras timesteps except, in DPM-Solver, on the cosine schedule
    round_karras_always = True
    #: whether thresholding also applies to noise predictions (DPM-Solver) or to data predictions only
    threshold_noise = False

    def __init__(self, config: dict | None = None, **overrides):
        super().__init__(config, **overrides)
        alpha_t = np.sqrt(self.alphas_cumprod)
        sigma_t = np.sqrt(ONE - self.alphas_cumprod)
        self.lambda_t = np.log(alpha_t) - np.log(sigma_t)
        self.sigmas = np.zeros(1, dtype=F32)
        self._reset()

    @property
    def predicts_data(self) -> bool:
        raise NotImplementedError

    def _reset(self) -> None:
        self.model_outputs: list[np.ndarray | None] = [None] * self.config.solver_order
        self.lower_order_nums = 0
        self._step_index: int | None = None

    def set_timesteps(self, num_inference_steps: int) -> None:
        cfg = self.config
        check_steps(num_inference_steps, cfg.num_train_timesteps)
        clipped_idx = int(np.searchsorted(self.lambda_t[::-1], cfg.lambda_min_clipped))
        timesteps = spaced_timesteps(cfg.timestep_spacing, cfg.num_train_timesteps, num_inference_steps,
                                     cfg.steps_offset, span=cfg.num_train_timesteps - clipped_idx,
                                     skip_zero=True).astype(np.int64)
        train = train_sigmas(self.alphas_cumprod)
        ramp = ramp_sigmas(cfg, num_inference_steps, float(train[0]), float(train[-1]), np.log(train))
        if ramp is not None:
            sigmas, timesteps = ramp
            if cfg.use_karras_sigmas and (self.round_karras_always or cfg.beta_schedule != "squaredcos_cap_v2"):
                timesteps = timesteps.round()
        else:
            sigmas = interpolated_sigmas(timesteps, train)
        self.sigmas = with_final_sigma(sigmas, cfg, self.alphas_cumprod)
        self.timesteps = np.asarray(timesteps).astype(np.int64).astype(F32)
        self.num_inference_steps = len(self.timesteps)
        self._reset()

    def _index(self, timestep: float) -> int:
        if self._step_index is None:
            self._step_index = first_index(self.timesteps, timestep, missing=len(self.timesteps) - 1)
        return self._step_index

    @staticmethod
    def _alpha_sigma(sigma: np.float32) -> tuple[np.float32, np.float32]:
        alpha_t = ONE / np.sqrt(sigma * sigma + ONE)
        return alpha_t, sigma * alpha_t

    def _lambda(self, i: int) -> tuple[np.float32, np.float32, np.float32]:
        """alpha, sigma and log-SNR lambda = log(alpha / sigma) at sigma index ``i``."""
        alpha, sigma = self._alpha_sigma(self.sigmas[i])
        with np.errstate(divide="ignore"):
            return alpha, sigma, np.log(alpha) - np.log(sigma)

    def _convert_model_output(self, model_output, sample):
        """The model output as the data or noise prediction the solver works on, thresholded as configured."""
        cfg = self.config
        alpha_t, sigma_t = self._alpha_sigma(self.sigmas[self._step_index])
        if self.predicts_data:
            x0 = _data_prediction(model_output, sample, alpha_t, sigma_t, cfg.prediction_type)
            if cfg.thresholding:
                x0 = threshold_sample(x0, cfg.dynamic_thresholding_ratio, cfg.sample_max_value)
            return x0
        eps = _noise_prediction(model_output, sample, alpha_t, sigma_t, cfg.prediction_type)
        if cfg.thresholding and self.threshold_noise:
            x0 = threshold_sample((sample - sigma_t * eps) / alpha_t, cfg.dynamic_thresholding_ratio,
                                  cfg.sample_max_value)
            eps = (sample - alpha_t * x0) / sigma_t
        return eps

    def _advance(self, prev_sample: np.ndarray, dtype) -> np.ndarray:
        """End of a step: one more step toward the full order, the next sigma; the sample in ``dtype``."""
        if self.lower_order_nums < self.config.solver_order:
            self.lower_order_nums += 1
        self._step_index += 1
        return prev_sample.astype(dtype)


def _data_prediction(model_output, sample, alpha_t, sigma_t, kind: str):
    """x0 from the model's output at x_t = alpha_t x0 + sigma_t eps (``kind``: its prediction type)."""
    if kind == "epsilon":
        return (sample - sigma_t * model_output) / alpha_t
    if kind == "sample":
        return model_output
    return alpha_t * sample - sigma_t * model_output  # v_prediction


def _noise_prediction(model_output, sample, alpha_t, sigma_t, kind: str):
    """eps from the model's output at x_t = alpha_t x0 + sigma_t eps."""
    if kind == "epsilon":
        return model_output
    if kind == "sample":
        return (sample - alpha_t * model_output) / sigma_t
    return alpha_t * model_output + sigma_t * sample  # v_prediction


class DPMSolverMultistepScheduler(MultistepScheduler):
    """Multistep DPM-Solver++ (and DPM-Solver), first and second order: Lu et al., "DPM-Solver: A Fast ODE
    Solver for Diffusion Probabilistic Model Sampling in Around 10 Steps" (NeurIPS 2022, arXiv:2206.00927)
    and "DPM-Solver++: Fast Solver for Guided Sampling of Diffusion Probabilistic Models"
    (arXiv:2211.01095), Algorithm 2 (multistep 2M). ``use_karras_sigmas`` places the steps on the Karras
    et al. (arXiv:2206.00364) sigma ramp ("DPM++ 2M Karras").
    """

    name = "dpmpp_2m"
    Config = DPMSolverConfig
    round_karras_always = False  # diffusers keeps cosine-schedule Karras timesteps fractional here
    threshold_noise = True

    def __init__(self, config: dict | None = None, **overrides):
        super().__init__(config, **overrides)
        if self.config.use_karras_sigmas:
            self.name = "dpmpp_2m_karras"

    @property
    def predicts_data(self) -> bool:
        return self.config.algorithm_type == "dpmsolver++"

    def _convert_model_output(self, model_output, sample):
        cfg = self.config
        if cfg.prediction_type == "epsilon" and cfg.variance_type in ("learned", "learned_range"):
            model_output = model_output[:, :3]
        return super()._convert_model_output(model_output, sample)

    def _first_order(self, model_output, sample):
        i = self._step_index
        alpha_t, sigma_t, lambda_t = self._lambda(i + 1)
        alpha_s, sigma_s, lambda_s = self._lambda(i)
        h = lambda_t - lambda_s
        if self.predicts_data:
            return sigma_t / sigma_s * sample - alpha_t * (np.exp(-h) - ONE) * model_output
        return alpha_t / alpha_s * sample - sigma_t * (np.exp(h) - ONE) * model_output

    def _second_order(self, sample):
        i = self._step_index
        alpha_t, sigma_t, lambda_t = self._lambda(i + 1)
        alpha_s0, sigma_s0, lambda_s0 = self._lambda(i)
        _, _, lambda_s1 = self._lambda(i - 1)
        m0, m1 = self.model_outputs[-1], self.model_outputs[-2]
        h, h_0 = lambda_t - lambda_s0, lambda_s0 - lambda_s1
        r0 = h_0 / h
        d0, d1 = m0, (ONE / r0) * (m0 - m1)
        half = F32(0.5)
        if self.predicts_data:
            phi = np.exp(-h) - ONE
            x = sigma_t / sigma_s0 * sample - alpha_t * phi * d0
            if self.config.solver_type == "midpoint":
                return x - half * (alpha_t * phi) * d1
            return x + alpha_t * (phi / h + ONE) * d1
        phi = np.exp(h) - ONE
        x = alpha_t / alpha_s0 * sample - sigma_t * phi * d0
        if self.config.solver_type == "midpoint":
            return x - half * (sigma_t * phi) * d1
        return x - sigma_t * (phi / h - ONE) * d1

    def step(self, model_output, timestep, sample, generator=None):
        self._require_steps_set()
        cfg = self.config
        i, n = self._index(timestep), len(self.timesteps)
        short = cfg.lower_order_final and n < 15
        lower_order_final = i == n - 1 and (cfg.euler_at_final or short or cfg.final_sigmas_type == "zero")
        converted = self._convert_model_output(model_output, sample)
        self.model_outputs = self.model_outputs[1:] + [converted]
        sample = sample.astype(F32)
        if cfg.solver_order == 1 or self.lower_order_nums < 1 or lower_order_final:
            prev_sample = self._first_order(converted, sample)
        else:  # solver_order == 2 (validated; diffusers' lower_order_second only matters for order 3)
            prev_sample = self._second_order(sample)
        return self._advance(prev_sample, model_output.dtype)


class UniPCMultistepScheduler(MultistepScheduler):
    """UniPC: Zhao et al., "UniPC: A Unified Predictor-Corrector Framework for Fast Sampling of Diffusion
    Models" (NeurIPS 2023, arXiv:2302.04867), multistep, B(h) variants (``solver_type`` bh1 / bh2). Each step
    first corrects the previous prediction with the new model output (UniC, free: no extra model call), then
    predicts the next sample (UniP) from the last ``solver_order`` outputs.
    """

    name = "unipc"
    Config = UniPCConfig

    @property
    def predicts_data(self) -> bool:
        return self.config.predict_x0

    def _reset(self) -> None:
        super()._reset()
        self.last_sample: np.ndarray | None = None
        self.this_order = 0

    def _coefficients(self, t: int, s0: int, order: int):
        """The B(h) update's pieces for a step from sigma index ``s0`` to ``t``, the newest model output
        belonging to ``s0`` and the ``order - 1`` before it to the indices before: alpha_t, sigma_t, alpha_s0,
        sigma_s0, h phi_1(h), B(h), the scaled differences D1 of the older outputs, the matrix R of powers of
        their step ratios and the vector b (the paper's eq. for the rho weights: R rho = b)."""
        alpha_t, sigma_t, lambda_t = self._lambda(t)
        alpha_s0, sigma_s0, lambda_s0 = self._lambda(s0)
        h = lambda_t - lambda_s0
        m0 = self.model_outputs[-1]
        rks, d1s = [], []
        for k in range(1, order):
            _, _, lambda_sk = self._lambda(s0 - k)
            rk = (lambda_sk - lambda_s0) / h
            rks.append(rk)
            d1s.append((self.model_outputs[-(k + 1)] - m0) / rk)
        rks = np.asarray(rks + [ONE], dtype=F32)
        hh = -h if self.predicts_data else h
        h_phi_1 = np.expm1(hh)
        h_phi_k = h_phi_1 / hh - ONE
        b_h = hh if self.config.solver_type == "bh1" else np.expm1(hh)
        powers, b, factorial = [], [], 1
        for k in range(1, order + 1):
            powers.append(rks ** (k - 1))
            b.append(h_phi_k * F32(factorial) / b_h)
            factorial *= k + 1
            h_phi_k = h_phi_k / hh - F32(1 / factorial)
        return alpha_t, sigma_t, alpha_s0, sigma_s0, h_phi_1, b_h, d1s, np.stack(powers), np.asarray(b, dtype=F32)

    def _base(self, x, alpha_t, sigma_t, alpha_s0, sigma_s0, h_phi_1):
        """The first-order (DPM-Solver) part of both updates."""
        m0 = self.model_outputs[-1]
        if self.predicts_data:
            return sigma_t / sigma_s0 * x - alpha_t * h_phi_1 * m0, alpha_t
        return alpha_t / alpha_s0 * x - sigma_t * h_phi_1 * m0, sigma_t

    def _predict(self, sample, order: int):
        """UniP: the sample at the next sigma from the last ``order`` model outputs."""
        i = self._step_index
        alpha_t, sigma_t, alpha_s0, sigma_s0, h_phi_1, b_h, d1s, powers, b = self._coefficients(i + 1, i, order)
        x_t, scale = self._base(sample, alpha_t, sigma_t, alpha_s0, sigma_s0, h_phi_1)
        if not d1s:
            return x_t
        rhos = np.array([0.5], F32) if order == 2 else np.linalg.solve(powers[:-1, :-1], b[:-1]).astype(F32)
        return x_t - scale * b_h * _weighted_sum(rhos, d1s)

    def _correct(self, model_t, last_sample, this_sample, order: int):
        """UniC: ``this_sample`` (predicted at the previous step) corrected with its own model output."""
        i = self._step_index
        alpha_t, sigma_t, alpha_s0, sigma_s0, h_phi_1, b_h, d1s, powers, b = self._coefficients(i, i - 1, order)
        x_t, scale = self._base(last_sample, alpha_t, sigma_t, alpha_s0, sigma_s0, h_phi_1)
        rhos = np.array([0.5], F32) if order == 1 else np.linalg.solve(powers, b).astype(F32)
        correction = _weighted_sum(rhos[:-1], d1s) if d1s else 0
        return (x_t - scale * b_h * (correction + rhos[-1] * (model_t - self.model_outputs[-1]))).astype(F32)

    def step(self, model_output, timestep, sample, generator=None):
        self._require_steps_set()
        cfg = self.config
        i = self._index(timestep)
        sample = sample.astype(F32)
        converted = self._convert_model_output(model_output, sample)
        if i > 0 and (i - 1) not in cfg.disable_corrector and self.last_sample is not None:
            sample = self._correct(converted, self.last_sample, sample, self.this_order)
        self.model_outputs = self.model_outputs[1:] + [converted]
        order = min(cfg.solver_order, len(self.timesteps) - i) if cfg.lower_order_final else cfg.solver_order
        self.this_order = min(order, self.lower_order_nums + 1)  # warm-up: lower orders first
        self.last_sample = sample
        return self._advance(self._predict(sample, self.this_order), model_output.dtype)


def _weighted_sum(weights: np.ndarray, terms: list[np.ndarray]) -> np.ndarray:
    total = weights[0] * terms[0]
    for w, term in zip(weights[1:], terms[1:]):
        total = total + w * term
    return total

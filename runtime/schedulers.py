"""Diffusion schedulers in pure numpy, step for step what diffusers' schedulers compute.

One interface (:class:`Scheduler`): ``set_timesteps(n)``, then for every ``t`` in ``timesteps``:
``x_in = scale_model_input(x, t)``, ``eps = model(x_in, t)``, ``x = step(eps, t, x, generator)``.
Per-run state (step index, multistep history) lives on the instance and ``set_timesteps`` resets it.

Every class is built from a diffusers ``scheduler_config.json`` dict the way diffusers'
``XScheduler.from_config(config)`` builds it: keys the class does not know are ignored, missing keys
take diffusers' defaults. A setting value this module does not implement raises ``ValueError`` naming
the key and the value; nothing is silently ignored. Numerics mirror diffusers': the schedule tables in
float32 as torch makes them (betas via torch's linspace, cumulative products accumulated in float64),
per-step scalars in float32, the same order of operations.
"""

from __future__ import annotations

import math
import os
from types import SimpleNamespace
from typing import Any, Callable

import numpy as np

from .errors import InputError
from .rng import TorchGenerator

__all__ = [
    "SCHEDULER_NAMES", "Scheduler", "PNDMScheduler", "DDIMScheduler", "EulerDiscreteScheduler",
    "EulerAncestralDiscreteScheduler", "LMSDiscreteScheduler", "HeunDiscreteScheduler",
    "DPMSolverMultistepScheduler",
    "UniPCMultistepScheduler", "make_scheduler",
]

F32 = np.float32
_ONE = F32(1.0)
_SPACINGS = ("linspace", "leading", "trailing")
_BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")


# ================================================================================================
# Config handling: from_config semantics plus validation
# ================================================================================================

_COMMON_DEFAULTS: dict[str, Any] = {
    "num_train_timesteps": 1000, "beta_start": 0.0001, "beta_end": 0.02, "beta_schedule": "linear",
    "trained_betas": None, "prediction_type": "epsilon", "timestep_spacing": "leading", "steps_offset": 0,
}


def _one_of(*allowed) -> Callable[[Any], bool]:
    return lambda value: value in allowed


def _is_false(value) -> bool:
    return not value


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_optional_number(value) -> bool:
    return value is None or _is_number(value)


_COMMON_CHECKS: dict[str, Callable[[Any], bool]] = {
    "num_train_timesteps": lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 2,
    "beta_start": _is_number,
    "beta_end": _is_number,
    "beta_schedule": _one_of(*_BETA_SCHEDULES),
    "trained_betas": lambda v: v is None or (np.ndim(v) == 1 and len(v) >= 2),
    "timestep_spacing": _one_of(*_SPACINGS),
    "steps_offset": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "rescale_betas_zero_snr": _one_of(True, False),
    "thresholding": _one_of(True, False),
    "dynamic_thresholding_ratio": lambda v: _is_number(v) and 0 < v <= 1,
    "sample_max_value": _is_number,
}


def _resolve_config(cls_name: str, defaults: dict, checks: dict, config: dict, overrides: dict) -> SimpleNamespace:
    """diffusers' from_config: known keys from ``config`` over the class defaults, then validate."""
    values = {**defaults, **{k: v for k, v in config.items() if k in defaults}, **overrides}
    for key, check in checks.items():
        if not check(values[key]):
            raise ValueError(f"{cls_name}: unsupported setting {key}={values[key]!r}")
    trained = values.get("trained_betas")
    if trained is not None and len(trained) != values["num_train_timesteps"]:
        raise ValueError(f"{cls_name}: trained_betas has {len(trained)} entries but "
                         f"num_train_timesteps={values['num_train_timesteps']}")
    return SimpleNamespace(**values)


# ================================================================================================
# Shared schedule helpers (float32 tables as torch makes them)
# ================================================================================================

def torch_linspace_f32(start: float, end: float, steps: int) -> np.ndarray:
    """``torch.linspace(start, end, steps, dtype=torch.float32)`` on CPU, bit for bit.

    torch walks from both ends: ``start + step * i`` for the first half, ``end - step * (steps - 1 - i)``
    for the second, in float32 with fused multiply-adds.
    """
    start32, end32 = F32(start), F32(end)
    if steps == 1:
        return np.array([start32], dtype=F32)
    step = F32((end32 - start32) / F32(steps - 1))
    idx = np.arange(steps, dtype=np.float64)
    from_start = F32(start32) + np.float64(step) * idx
    from_end = np.float64(end32) - np.float64(step) * (steps - 1 - idx)
    return np.where(idx < steps // 2, from_start, from_end).astype(F32)


def _betas_for_alpha_bar_cosine(num_train_timesteps: int, max_beta: float = 0.999) -> np.ndarray:
    """The squaredcos_cap_v2 schedule of Nichol & Dhariwal, "Improved DDPM" (arXiv:2102.09672)."""
    def alpha_bar(t: float) -> float:
        return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

    betas = [min(1 - alpha_bar((i + 1) / num_train_timesteps) / alpha_bar(i / num_train_timesteps), max_beta)
             for i in range(num_train_timesteps)]
    return np.array(betas, dtype=F32)


def _cumprod_f32(x: np.ndarray) -> np.ndarray:
    """torch.cumprod on float32 CPU tensors accumulates in double."""
    return np.cumprod(x.astype(np.float64)).astype(F32)


def _rescale_zero_terminal_snr(betas: np.ndarray) -> np.ndarray:
    """Lin et al., "Common Diffusion Noise Schedules and Sample Steps are Flawed" (arXiv:2305.08891), Alg. 1."""
    alphas_bar_sqrt = np.sqrt(_cumprod_f32(_ONE - betas))
    first, last = alphas_bar_sqrt[0].copy(), alphas_bar_sqrt[-1].copy()
    alphas_bar_sqrt = (alphas_bar_sqrt - last) * (first / (first - last))
    alphas_bar = alphas_bar_sqrt * alphas_bar_sqrt
    alphas = np.concatenate([alphas_bar[:1], alphas_bar[1:] / alphas_bar[:-1]])
    return (_ONE - alphas).astype(F32)


def make_betas(cfg: SimpleNamespace) -> np.ndarray:
    if cfg.trained_betas is not None:
        betas = np.asarray(cfg.trained_betas, dtype=F32)
    elif cfg.beta_schedule == "linear":
        betas = torch_linspace_f32(cfg.beta_start, cfg.beta_end, cfg.num_train_timesteps)
    elif cfg.beta_schedule == "scaled_linear":
        betas = torch_linspace_f32(cfg.beta_start**0.5, cfg.beta_end**0.5, cfg.num_train_timesteps) ** 2
    else:  # squaredcos_cap_v2 (validated)
        betas = _betas_for_alpha_bar_cosine(cfg.num_train_timesteps)
    if getattr(cfg, "rescale_betas_zero_snr", False):
        betas = _rescale_zero_terminal_snr(betas)
    return betas.astype(F32)


def make_alphas_cumprod(cfg: SimpleNamespace) -> np.ndarray:
    return _cumprod_f32(_ONE - make_betas(cfg))


def train_sigmas(alphas_cumprod: np.ndarray) -> np.ndarray:
    """Karras sigmas of the training timesteps, ascending in t: sqrt((1 - a) / a), float32."""
    return np.sqrt((_ONE - alphas_cumprod) / alphas_cumprod).astype(F32)


def spaced_timesteps(spacing: str, num_train: int, num_steps: int, steps_offset: int,
                     round_linspace: bool = True) -> np.ndarray:
    """Descending inference timesteps (float64) for linspace / leading / trailing spacing.

    Lin et al. (arXiv:2305.08891) Table 2. ``round_linspace=False`` keeps the fractional linspace
    values, as the Euler schedulers do.
    """
    if spacing == "linspace":
        ts = np.linspace(0, num_train - 1, num_steps)
        return (ts.round() if round_linspace else ts)[::-1].copy()
    if spacing == "leading":
        step_ratio = num_train // num_steps
        return (np.arange(0, num_steps) * step_ratio).round()[::-1].astype(np.float64) + steps_offset
    step_ratio = num_train / num_steps  # trailing
    return np.round(np.arange(num_train, 0, -step_ratio)) - 1


def sigma_to_t(sigmas: np.ndarray, log_sigmas: np.ndarray) -> np.ndarray:
    """Fractional training timestep of each sigma, interpolating log-sigma (diffusers' ``_sigma_to_t``).

    One sigma at a time, as diffusers calls it: numpy's vectorized float64 log can differ from its
    scalar log in the last bit, which moves a timestep by one float32 ulp.
    """
    return np.array([_sigma_to_t_one(sigma, log_sigmas) for sigma in np.asarray(sigmas, dtype=np.float64)])


def _sigma_to_t_one(sigma: np.float64, log_sigmas: np.ndarray) -> np.float64:
    log_sigma = np.log(np.maximum(sigma, 1e-10))
    dists = log_sigma - log_sigmas[:, np.newaxis]
    low_idx = np.cumsum(dists >= 0, axis=0).argmax(axis=0).clip(max=log_sigmas.shape[0] - 2)
    high_idx = low_idx + 1
    low, high = log_sigmas[low_idx], log_sigmas[high_idx]
    w = np.clip((low - log_sigma) / (low - high), 0, 1)
    return ((1 - w) * low_idx + w * high_idx).reshape(np.shape(sigma))


def karras_sigmas(sigma_min: float, sigma_max: float, num_steps: int, rho: float = 7.0) -> np.ndarray:
    """Karras et al., "Elucidating the Design Space of Diffusion-Based Generative Models" (arXiv:2206.00364), eq. 5."""
    ramp = np.linspace(0, 1, num_steps)
    min_inv_rho, max_inv_rho = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho


def exponential_sigmas(sigma_min: float, sigma_max: float, num_steps: int) -> np.ndarray:
    return np.exp(np.linspace(math.log(sigma_max), math.log(sigma_min), num_steps))


def threshold_sample(sample: np.ndarray, ratio: float, max_value: float) -> np.ndarray:
    """Dynamic thresholding of Saharia et al., "Imagen" (arXiv:2205.11487), as diffusers applies it."""
    batch, channels, *rest = sample.shape
    flat = sample.reshape(batch, channels * int(np.prod(rest)))
    s = np.quantile(np.abs(flat), ratio, axis=1).astype(sample.dtype)
    s = np.clip(s, 1, max_value)[:, None]
    return (np.clip(flat, -s, s) / s).reshape(sample.shape).astype(sample.dtype)


def _first_index(timesteps: np.ndarray, timestep: float, missing: int | None = None) -> int:
    """diffusers' ``index_for_timestep``: the second match when a timestep repeats, else the first."""
    hits = np.flatnonzero(timesteps == F32(timestep))
    if len(hits) == 0:
        if missing is None:
            raise ValueError(f"timestep {timestep} is not one of this scheduler's timesteps")
        return missing
    return int(hits[1] if len(hits) > 1 else hits[0])


def _check_steps(num_inference_steps: int, num_train: int) -> None:
    if not isinstance(num_inference_steps, (int, np.integer)) or num_inference_steps < 1:
        raise ValueError(f"num_inference_steps must be a positive integer, got {num_inference_steps!r}")
    if num_inference_steps > num_train:
        raise ValueError(f"num_inference_steps={num_inference_steps} exceeds num_train_timesteps={num_train}")


def _fresh_generator() -> TorchGenerator:
    return TorchGenerator(int.from_bytes(os.urandom(8), "little"))


# ================================================================================================
# The interface
# ================================================================================================

class Scheduler:
    """Common interface: timesteps after ``set_timesteps``, input scaling, one ``step`` per timestep."""

    name: str = ""
    order: int = 1
    init_noise_sigma: float = 1.0
    timesteps: np.ndarray

    def __init__(self, config: dict | None = None, **overrides):
        cls = type(self)
        self.config = _resolve_config(cls.__name__, cls._defaults(), cls._checks(), dict(config or {}), overrides)
        self._validate()
        self.alphas_cumprod = make_alphas_cumprod(self.config)
        self.num_inference_steps: int | None = None
        self.timesteps = np.zeros(0, dtype=F32)

    # class-level config description -----------------------------------------------------------
    _DEFAULTS: dict[str, Any] = {}
    _CHECKS: dict[str, Callable[[Any], bool]] = {}

    @classmethod
    def _defaults(cls) -> dict:
        return {**_COMMON_DEFAULTS, **cls._DEFAULTS}

    @classmethod
    def _checks(cls) -> dict:
        keys = cls._defaults()
        return {k: c for k, c in {**_COMMON_CHECKS, **cls._CHECKS}.items() if k in keys}

    def _validate(self) -> None:
        """Cross-key checks (single keys are checked by ``_CHECKS``); subclasses extend it."""
        cfg = self.config
        if bool(getattr(cfg, "use_karras_sigmas", False)) and bool(getattr(cfg, "use_exponential_sigmas", False)):
            raise ValueError(f"{type(self).__name__}: use_karras_sigmas and use_exponential_sigmas are exclusive")

    def _require_steps_set(self) -> None:
        if self.num_inference_steps is None:
            raise ValueError(f"{type(self).__name__}: call set_timesteps() before step()")

    # the protocol -------------------------------------------------------------------------------
    def set_timesteps(self, num_inference_steps: int) -> None:
        raise NotImplementedError

    def scale_model_input(self, sample: np.ndarray, timestep: float) -> np.ndarray:
        return sample

    def step(self, model_output: np.ndarray, timestep: float, sample: np.ndarray,
             generator: TorchGenerator | None = None) -> np.ndarray:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, steps={self.num_inference_steps})"


def _alpha_prod(alphas_cumprod: np.ndarray, t: int, final: np.float32) -> np.float32:
    return alphas_cumprod[t] if t >= 0 else final


# ================================================================================================
# PNDM
# ================================================================================================

class PNDMScheduler(Scheduler):
    """Pseudo numerical methods for diffusion models: Liu et al., "Pseudo Numerical Methods for Diffusion
    Models on Manifolds" (ICLR 2022, arXiv:2202.09778). With ``skip_prk_steps`` (Stable Diffusion's
    setting) the linear multistep (PLMS) part only; otherwise four pseudo Runge-Kutta steps first.
    """

    name = "pndm"
    _DEFAULTS = {"skip_prk_steps": False, "set_alpha_to_one": False}
    _CHECKS = {"prediction_type": _one_of("epsilon", "v_prediction"),
               "skip_prk_steps": _one_of(True, False), "set_alpha_to_one": _one_of(True, False)}

    def __init__(self, config: dict | None = None, **overrides):
        super().__init__(config, **overrides)
        self.final_alpha_cumprod = _ONE if self.config.set_alpha_to_one else self.alphas_cumprod[0]
        self.pndm_order = 4
        self._reset()

    def _reset(self) -> None:
        self.ets: list[np.ndarray] = []
        self.counter = 0
        self.cur_model_output: Any = 0
        self.cur_sample: np.ndarray | None = None

    def set_timesteps(self, num_inference_steps: int) -> None:
        cfg = self.config
        _check_steps(num_inference_steps, cfg.num_train_timesteps)
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
        alpha_prev = _alpha_prod(self.alphas_cumprod, prev_timestep, self.final_alpha_cumprod)
        beta_t, beta_prev = _ONE - alpha_t, _ONE - alpha_prev
        if self.config.prediction_type == "v_prediction":
            model_output = np.sqrt(alpha_t) * model_output + np.sqrt(beta_t) * sample
        sample_coeff = np.sqrt(alpha_prev / alpha_t)
        denom = alpha_t * np.sqrt(beta_prev) + np.sqrt(alpha_t * beta_t * alpha_prev)
        return sample_coeff * sample - (alpha_prev - alpha_t) * model_output / denom


# ================================================================================================
# DDIM
# ================================================================================================

class DDIMScheduler(Scheduler):
    """Denoising diffusion implicit models: Song, Meng & Ermon, "Denoising Diffusion Implicit Models"
    (ICLR 2021, arXiv:2010.02502), eq. 12. ``eta`` (default 0, deterministic) scales the added noise.
    """

    name = "ddim"
    _DEFAULTS = {"clip_sample": True, "set_alpha_to_one": True, "thresholding": False,
                 "dynamic_thresholding_ratio": 0.995, "clip_sample_range": 1.0, "sample_max_value": 1.0,
                 "rescale_betas_zero_snr": False}
    _CHECKS = {"prediction_type": _one_of("epsilon", "sample", "v_prediction"),
               "clip_sample": _one_of(True, False), "set_alpha_to_one": _one_of(True, False),
               "clip_sample_range": _is_number}

    def __init__(self, config: dict | None = None, eta: float = 0.0, **overrides):
        super().__init__(config, **overrides)
        if not (_is_number(eta) and eta >= 0):
            raise ValueError(f"DDIMScheduler: eta must be a non-negative number, got {eta!r}")
        self.eta = float(eta)
        self.final_alpha_cumprod = _ONE if self.config.set_alpha_to_one else self.alphas_cumprod[0]

    def set_timesteps(self, num_inference_steps: int) -> None:
        cfg = self.config
        _check_steps(num_inference_steps, cfg.num_train_timesteps)
        self.num_inference_steps = num_inference_steps
        ts = spaced_timesteps(cfg.timestep_spacing, cfg.num_train_timesteps, num_inference_steps, cfg.steps_offset)
        self.timesteps = ts.astype(np.int64).astype(F32)

    def step(self, model_output, timestep, sample, generator=None):
        self._require_steps_set()
        cfg = self.config
        timestep = int(round(float(timestep)))
        prev_timestep = timestep - cfg.num_train_timesteps // self.num_inference_steps
        alpha_t = self.alphas_cumprod[timestep]
        alpha_prev = _alpha_prod(self.alphas_cumprod, prev_timestep, self.final_alpha_cumprod)
        beta_t = _ONE - alpha_t
        pred_x0, pred_eps = self._predictions(model_output, sample, alpha_t, beta_t)
        if cfg.thresholding:
            pred_x0 = threshold_sample(pred_x0, cfg.dynamic_thresholding_ratio, cfg.sample_max_value)
        elif cfg.clip_sample:
            pred_x0 = np.clip(pred_x0, -cfg.clip_sample_range, cfg.clip_sample_range)
        beta_prev = _ONE - alpha_prev
        variance = beta_prev / beta_t * (_ONE - alpha_t / alpha_prev)
        std_dev_t = F32(self.eta) * np.sqrt(variance)
        direction = np.sqrt(_ONE - alpha_prev - std_dev_t * std_dev_t) * pred_eps
        prev_sample = np.sqrt(alpha_prev) * pred_x0 + direction
        if self.eta > 0:
            noise = (generator or _fresh_generator()).randn(model_output.shape).astype(model_output.dtype)
            prev_sample = prev_sample + std_dev_t * noise
        return prev_sample

    def _predictions(self, model_output, sample, alpha_t, beta_t):
        kind = self.config.prediction_type
        if kind == "epsilon":
            return (sample - np.sqrt(beta_t) * model_output) / np.sqrt(alpha_t), model_output
        if kind == "sample":
            return model_output, (sample - np.sqrt(alpha_t) * model_output) / np.sqrt(beta_t)
        return (np.sqrt(alpha_t) * sample - np.sqrt(beta_t) * model_output,   # v_prediction
                np.sqrt(alpha_t) * model_output + np.sqrt(beta_t) * sample)


# ================================================================================================
# Euler (Karras sigma parameterisation)
# ================================================================================================

class _KarrasSigmaScheduler(Scheduler):
    """Shared machinery of the sigma-parameterised (k-diffusion style) schedulers."""

    def __init__(self, config: dict | None = None, **overrides):
        super().__init__(config, **overrides)
        if getattr(self.config, "rescale_betas_zero_snr", False):  # a setting LMS does not have
            self.alphas_cumprod[-1] = F32(2.0**-24)
        self.sigmas = np.zeros(1, dtype=F32)
        self._step_index: int | None = None

    @property
    def init_noise_sigma(self) -> float:
        max_sigma = self.sigmas.max()
        if self.config.timestep_spacing in ("linspace", "trailing"):
            return float(max_sigma)
        return float(np.sqrt(max_sigma * max_sigma + _ONE))

    def _spaced_timesteps_f32(self, num_inference_steps: int) -> np.ndarray:
        cfg = self.config
        ts = spaced_timesteps(cfg.timestep_spacing, cfg.num_train_timesteps, num_inference_steps,
                              cfg.steps_offset, round_linspace=False)
        return ts.astype(F32)

    def _schedule(self, num_inference_steps: int) -> tuple[np.ndarray, np.ndarray]:
        """(timesteps, sigmas) before the final sigma is appended: the spaced training timesteps and their
        sigmas interpolated from the training schedule, or Karras / exponential sigmas between the same ends
        (or the configured ``sigma_min`` / ``sigma_max``) with the timesteps mapped back from them. Settings
        a class lacks (``interpolation_type``, ``use_karras_sigmas``, ...) take their off value."""
        cfg = self.config
        _check_steps(num_inference_steps, cfg.num_train_timesteps)
        self.num_inference_steps = num_inference_steps
        timesteps = self._spaced_timesteps_f32(num_inference_steps)
        base = train_sigmas(self.alphas_cumprod)
        if getattr(cfg, "interpolation_type", "linear") == "linear":
            sigmas = np.interp(timesteps, np.arange(0, len(base)), base)
        else:  # log_linear, with diffusers' num_inference_steps + 1 points
            sigmas = np.exp(torch_linspace_f32(float(np.log(base[-1])), float(np.log(base[0])), num_inference_steps + 1))
        karras, exponential = getattr(cfg, "use_karras_sigmas", False), getattr(cfg, "use_exponential_sigmas", False)
        if karras or exponential:
            lo, hi = getattr(cfg, "sigma_min", None), getattr(cfg, "sigma_max", None)
            convert = karras_sigmas if karras else exponential_sigmas
            sigmas = convert(float(sigmas[-1]) if lo is None else lo, float(sigmas[0]) if hi is None else hi,
                             num_inference_steps)
            timesteps = sigma_to_t(sigmas, np.log(base))
        return timesteps, sigmas

    def _index(self, timestep: float) -> int:
        if self._step_index is None:
            self._step_index = _first_index(self.timesteps, timestep)
        return self._step_index

    def scale_model_input(self, sample, timestep):
        sigma = self.sigmas[self._index(timestep)]
        return sample / np.sqrt(sigma * sigma + _ONE)

    def _pred_original(self, model_output, sample, sigma, sigma_hat):
        kind = self.config.prediction_type
        if kind == "epsilon":
            return sample - sigma_hat * model_output
        if kind == "v_prediction":
            sigma_sq_1 = sigma * sigma + _ONE
            return model_output * (-sigma / np.sqrt(sigma_sq_1)) + sample / sigma_sq_1
        return model_output  # sample / original_sample


class EulerDiscreteScheduler(_KarrasSigmaScheduler):
    """Euler's method on the probability-flow ODE in Karras et al.'s sigma parameterisation: Karras et al.,
    "Elucidating the Design Space of Diffusion-Based Generative Models" (NeurIPS 2022, arXiv:2206.00364),
    Algorithm 1 without the second-order correction (as in k-diffusion's ``sample_euler``).
    """

    name = "euler"
    _DEFAULTS = {"interpolation_type": "linear", "use_karras_sigmas": False, "use_exponential_sigmas": False,
                 "use_beta_sigmas": False, "sigma_min": None, "sigma_max": None, "timestep_spacing": "linspace",
                 "timestep_type": "discrete", "rescale_betas_zero_snr": False, "final_sigmas_type": "zero"}
    _CHECKS = {"prediction_type": _one_of("epsilon", "v_prediction", "sample", "original_sample"),
               "interpolation_type": _one_of("linear", "log_linear"),
               "use_karras_sigmas": _one_of(True, False, None), "use_exponential_sigmas": _one_of(True, False, None),
               "use_beta_sigmas": _is_false,  # needs scipy's beta ppf: not implemented
               "sigma_min": _is_optional_number, "sigma_max": _is_optional_number,
               "timestep_type": _one_of("discrete", "continuous"), "final_sigmas_type": _one_of("zero", "sigma_min")}


    def set_timesteps(self, num_inference_steps: int) -> None:
        cfg = self.config
        timesteps, sigmas = self._schedule(num_inference_steps)
        last = np.sqrt((_ONE - self.alphas_cumprod[0]) / self.alphas_cumprod[0]) if cfg.final_sigmas_type == "sigma_min" else 0
        self.sigmas = np.concatenate([sigmas, [last]]).astype(F32)
        if cfg.timestep_type == "continuous" and cfg.prediction_type == "v_prediction":
            self.timesteps = (0.25 * np.log(self.sigmas[:-1].astype(np.float64))).astype(F32)
        else:
            self.timesteps = np.asarray(timesteps).astype(F32)
        self._step_index = None

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


class EulerAncestralDiscreteScheduler(_KarrasSigmaScheduler):
    """Ancestral sampling with Euler steps: Euler's method down to ``sigma_down`` plus fresh noise of size
    ``sigma_up`` each step, as in k-diffusion's ``sample_euler_ancestral`` (Karras et al., arXiv:2206.00364;
    ancestral noise split after Ho et al., "Denoising Diffusion Probabilistic Models", arXiv:2006.11239).
    The noise is ``generator.randn(model_output.shape)``, which is what diffusers' ``randn_tensor`` draws.
    """

    name = "euler_a"
    _DEFAULTS = {"timestep_spacing": "linspace", "rescale_betas_zero_snr": False}
    _CHECKS = {"prediction_type": _one_of("epsilon", "v_prediction")}

    def set_timesteps(self, num_inference_steps: int) -> None:
        timesteps, sigmas = self._schedule(num_inference_steps)
        self.sigmas = np.concatenate([sigmas, [0.0]]).astype(F32)
        self.timesteps = timesteps
        self._step_index = None

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
        noise = (generator or _fresh_generator()).randn(model_output.shape).astype(model_output.dtype)
        prev_sample = prev_sample + noise * sigma_up
        self._step_index += 1
        return prev_sample.astype(model_output.dtype)


class LMSDiscreteScheduler(_KarrasSigmaScheduler):
    """Linear multistep (Adams–Bashforth in sigma) on the probability-flow ODE, as in k-diffusion's
    ``sample_lms`` (Karras et al., arXiv:2206.00364, sigma parameterisation): the next sample adds the last
    ``order`` (4, what diffusers' pipelines use) derivatives, each weighted by the integral over the step of
    its Lagrange basis polynomial through their sigmas. The polynomial is integrated exactly here (diffusers
    integrates it numerically with scipy's ``quad``, which is exact for it up to rounding).
    """

    name = "lms"
    order = 4
    _DEFAULTS = {"use_karras_sigmas": False, "use_exponential_sigmas": False, "use_beta_sigmas": False,
                 "timestep_spacing": "linspace"}
    _CHECKS = {"prediction_type": _one_of("epsilon", "v_prediction", "sample"),
               "use_karras_sigmas": _one_of(True, False, None), "use_exponential_sigmas": _one_of(True, False, None),
               "use_beta_sigmas": _is_false}  # needs scipy's beta ppf: not implemented

    def set_timesteps(self, num_inference_steps: int) -> None:
        timesteps, sigmas = self._schedule(num_inference_steps)
        self.sigmas = np.concatenate([sigmas, [0.0]]).astype(F32)
        self.timesteps = np.asarray(timesteps).astype(F32)
        self._step_index = None
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


class HeunDiscreteScheduler(_KarrasSigmaScheduler):
    """Heun's second-order method on the probability-flow ODE: Karras et al., "Elucidating the Design Space of
    Diffusion-Based Generative Models" (NeurIPS 2022, arXiv:2206.00364), Algorithm 1 with S_churn = 0. Every
    step but the last takes two model calls: an Euler step to the next sigma, then the average of the slopes
    at both ends. The timesteps list each inner timestep twice (2n - 1 calls for n steps), so the denoising
    loop needs no special case: each ``step`` knows which half it is in.
    """

    name = "heun"
    _DEFAULTS = {"beta_start": 0.00085, "beta_end": 0.012, "use_karras_sigmas": False, "use_exponential_sigmas": False,
                 "use_beta_sigmas": False, "clip_sample": False, "clip_sample_range": 1.0,
                 "timestep_spacing": "linspace"}
    _CHECKS = {"prediction_type": _one_of("epsilon", "v_prediction", "sample"),
               "use_karras_sigmas": _one_of(True, False, None), "use_exponential_sigmas": _one_of(True, False, None),
               "use_beta_sigmas": _is_false,  # needs scipy's beta ppf: not implemented
               "clip_sample": _one_of(True, False), "clip_sample_range": _is_number}

    def set_timesteps(self, num_inference_steps: int) -> None:
        timesteps, sigmas = self._schedule(num_inference_steps)
        sigmas = np.concatenate([sigmas, [0.0]]).astype(F32)
        self.sigmas = np.concatenate([sigmas[:1], np.repeat(sigmas[1:-1], 2), sigmas[-1:]])
        timesteps = np.asarray(timesteps)
        self.timesteps = np.concatenate([timesteps[:1], np.repeat(timesteps[1:], 2)]).astype(F32)
        self._step_index = None
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


# ================================================================================================
# DPM-Solver(++) multistep
# ================================================================================================

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


class DPMSolverMultistepScheduler(Scheduler):
    """Multistep DPM-Solver++ (and DPM-Solver), first and second order: Lu et al., "DPM-Solver: A Fast ODE
    Solver for Diffusion Probabilistic Model Sampling in Around 10 Steps" (NeurIPS 2022, arXiv:2206.00927)
    and "DPM-Solver++: Fast Solver for Guided Sampling of Diffusion Probabilistic Models"
    (arXiv:2211.01095), Algorithm 2 (multistep 2M). ``use_karras_sigmas`` places the steps on the Karras
    et al. (arXiv:2206.00364) sigma ramp ("DPM++ 2M Karras").
    """

    name = "dpmpp_2m"
    _round_karras_always = False  # diffusers keeps cosine-schedule Karras timesteps fractional here
    _DEFAULTS = {"solver_order": 2, "thresholding": False, "dynamic_thresholding_ratio": 0.995,
                 "sample_max_value": 1.0, "algorithm_type": "dpmsolver++", "solver_type": "midpoint",
                 "lower_order_final": True, "euler_at_final": False, "use_karras_sigmas": False,
                 "use_exponential_sigmas": False, "use_beta_sigmas": False, "use_lu_lambdas": False,
                 "use_flow_sigmas": False, "flow_shift": 1.0, "final_sigmas_type": "zero",
                 "lambda_min_clipped": -float("inf"), "variance_type": None, "timestep_spacing": "linspace",
                 "rescale_betas_zero_snr": False, "use_dynamic_shifting": False, "time_shift_type": "exponential"}
    _CHECKS = {"prediction_type": _one_of("epsilon", "sample", "v_prediction"),
               "solver_order": _one_of(1, 2),  # third order: not implemented
               "algorithm_type": _one_of("dpmsolver++", "dpmsolver", "deis"),  # SDE variants: not implemented
               "solver_type": _one_of("midpoint", "heun", "logrho", "bh1", "bh2"),
               "lower_order_final": _one_of(True, False), "euler_at_final": _one_of(True, False),
               "use_karras_sigmas": _one_of(True, False, None), "use_exponential_sigmas": _one_of(True, False, None),
               "use_beta_sigmas": _is_false, "use_lu_lambdas": _is_false, "use_flow_sigmas": _is_false,
               "use_dynamic_shifting": _is_false, "final_sigmas_type": _one_of("zero", "sigma_min"),
               "lambda_min_clipped": _is_number, "variance_type": _one_of(None, "learned", "learned_range")}

    def _validate(self) -> None:
        cfg = self.config
        if cfg.algorithm_type == "deis":  # diffusers maps these, with a deprecation note
            cfg.algorithm_type = "dpmsolver++"
        if cfg.solver_type in ("logrho", "bh1", "bh2"):
            cfg.solver_type = "midpoint"
        if cfg.algorithm_type != "dpmsolver++" and cfg.final_sigmas_type == "zero":
            raise ValueError(f"DPMSolverMultistepScheduler: final_sigmas_type='zero' is not supported with "
                             f"algorithm_type={cfg.algorithm_type!r}; use 'sigma_min'")
        super()._validate()

    def __init__(self, config: dict | None = None, **overrides):
        super().__init__(config, **overrides)
        if self.config.rescale_betas_zero_snr:
            self.alphas_cumprod[-1] = F32(2.0**-24)
        if self.config.use_karras_sigmas:
            self.name = "dpmpp_2m_karras"
        alpha_t = np.sqrt(self.alphas_cumprod)
        sigma_t = np.sqrt(_ONE - self.alphas_cumprod)
        self.lambda_t = np.log(alpha_t) - np.log(sigma_t)
        self.sigmas = np.zeros(1, dtype=F32)
        self._reset()

    def _reset(self) -> None:
        self.model_outputs: list[np.ndarray | None] = [None] * self.config.solver_order
        self.lower_order_nums = 0
        self._step_index: int | None = None

    def _spaced_timesteps(self, num_inference_steps: int) -> np.ndarray:
        cfg = self.config
        clipped = getattr(cfg, "lambda_min_clipped", -float("inf"))  # UniPC has no such setting
        clipped_idx = int(np.searchsorted(self.lambda_t[::-1], clipped))
        last = cfg.num_train_timesteps - clipped_idx
        if cfg.timestep_spacing == "linspace":
            return np.linspace(0, last - 1, num_inference_steps + 1).round()[::-1][:-1].astype(np.int64)
        if cfg.timestep_spacing == "leading":
            step_ratio = last // (num_inference_steps + 1)
            ts = (np.arange(0, num_inference_steps + 1) * step_ratio).round()[::-1][:-1].astype(np.int64)
            return ts + cfg.steps_offset
        step_ratio = cfg.num_train_timesteps / num_inference_steps  # trailing
        return np.arange(last, 0, -step_ratio).round().astype(np.int64) - 1

    def set_timesteps(self, num_inference_steps: int) -> None:
        cfg = self.config
        _check_steps(num_inference_steps, cfg.num_train_timesteps)
        timesteps = self._spaced_timesteps(num_inference_steps)
        base = train_sigmas(self.alphas_cumprod)
        log_sigmas = np.log(base)
        if cfg.use_karras_sigmas or cfg.use_exponential_sigmas:
            lo, hi = getattr(cfg, "sigma_min", None), getattr(cfg, "sigma_max", None)  # UniPC's settings
            convert = karras_sigmas if cfg.use_karras_sigmas else exponential_sigmas
            sigmas = convert(float(base[0]) if lo is None else lo, float(base[-1]) if hi is None else hi,
                             num_inference_steps)
            timesteps = sigma_to_t(sigmas, log_sigmas)
            if cfg.use_karras_sigmas and (self._round_karras_always or cfg.beta_schedule != "squaredcos_cap_v2"):
                timesteps = timesteps.round()
        else:
            sigmas = np.interp(timesteps, np.arange(0, len(base)), base)
        last = np.sqrt((_ONE - self.alphas_cumprod[0]) / self.alphas_cumprod[0]) if cfg.final_sigmas_type == "sigma_min" else 0
        self.sigmas = np.concatenate([sigmas, [last]]).astype(F32)
        self.timesteps = np.asarray(timesteps).astype(np.int64).astype(F32)
        self.num_inference_steps = len(self.timesteps)
        self._reset()

    # -- pieces of one step -----------------------------------------------------------------------
    @staticmethod
    def _alpha_sigma(sigma: np.float32) -> tuple[np.float32, np.float32]:
        alpha_t = _ONE / np.sqrt(sigma * sigma + _ONE)
        return alpha_t, sigma * alpha_t

    def _lambda(self, i: int) -> tuple[np.float32, np.float32, np.float32]:
        alpha, sigma = self._alpha_sigma(self.sigmas[i])
        with np.errstate(divide="ignore"):
            return alpha, sigma, np.log(alpha) - np.log(sigma)

    def _convert_model_output(self, model_output, sample):
        cfg = self.config
        if cfg.prediction_type == "epsilon" and cfg.variance_type in ("learned", "learned_range"):
            model_output = model_output[:, :3]
        alpha_t, sigma_t = self._alpha_sigma(self.sigmas[self._step_index])
        if cfg.algorithm_type == "dpmsolver++":
            x0 = _data_prediction(model_output, sample, alpha_t, sigma_t, cfg.prediction_type)
            if cfg.thresholding:
                x0 = threshold_sample(x0, cfg.dynamic_thresholding_ratio, cfg.sample_max_value)
            return x0
        eps = _noise_prediction(model_output, sample, alpha_t, sigma_t, cfg.prediction_type)
        if cfg.thresholding:
            x0 = threshold_sample((sample - sigma_t * eps) / alpha_t, cfg.dynamic_thresholding_ratio, cfg.sample_max_value)
            eps = (sample - alpha_t * x0) / sigma_t
        return eps

    def _first_order(self, model_output, sample):
        i = self._step_index
        alpha_t, sigma_t, lambda_t = self._lambda(i + 1)
        alpha_s, sigma_s, lambda_s = self._lambda(i)
        h = lambda_t - lambda_s
        if self.config.algorithm_type == "dpmsolver++":
            return sigma_t / sigma_s * sample - alpha_t * (np.exp(-h) - _ONE) * model_output
        return alpha_t / alpha_s * sample - sigma_t * (np.exp(h) - _ONE) * model_output

    def _second_order(self, sample):
        i = self._step_index
        alpha_t, sigma_t, lambda_t = self._lambda(i + 1)
        alpha_s0, sigma_s0, lambda_s0 = self._lambda(i)
        _, _, lambda_s1 = self._lambda(i - 1)
        m0, m1 = self.model_outputs[-1], self.model_outputs[-2]
        h, h_0 = lambda_t - lambda_s0, lambda_s0 - lambda_s1
        r0 = h_0 / h
        d0, d1 = m0, (_ONE / r0) * (m0 - m1)
        half = F32(0.5)
        if self.config.algorithm_type == "dpmsolver++":
            phi = np.exp(-h) - _ONE
            x = sigma_t / sigma_s0 * sample - alpha_t * phi * d0
            if self.config.solver_type == "midpoint":
                return x - half * (alpha_t * phi) * d1
            return x + alpha_t * (phi / h + _ONE) * d1
        phi = np.exp(h) - _ONE
        x = alpha_t / alpha_s0 * sample - sigma_t * phi * d0
        if self.config.solver_type == "midpoint":
            return x - half * (sigma_t * phi) * d1
        return x - sigma_t * (phi / h - _ONE) * d1

    def step(self, model_output, timestep, sample, generator=None):
        self._require_steps_set()
        cfg = self.config
        if self._step_index is None:
            self._step_index = _first_index(self.timesteps, timestep, missing=len(self.timesteps) - 1)
        i, n = self._step_index, len(self.timesteps)
        short = cfg.lower_order_final and n < 15
        lower_order_final = i == n - 1 and (cfg.euler_at_final or short or cfg.final_sigmas_type == "zero")
        converted = self._convert_model_output(model_output, sample)
        self.model_outputs = self.model_outputs[1:] + [converted]
        sample = sample.astype(F32)
        if cfg.solver_order == 1 or self.lower_order_nums < 1 or lower_order_final:
            prev_sample = self._first_order(converted, sample)
        else:  # solver_order == 2 (validated; diffusers' lower_order_second only matters for order 3)
            prev_sample = self._second_order(sample)
        if self.lower_order_nums < cfg.solver_order:
            self.lower_order_nums += 1
        self._step_index += 1
        return prev_sample.astype(model_output.dtype)


class UniPCMultistepScheduler(DPMSolverMultistepScheduler):
    """UniPC: Zhao et al., "UniPC: A Unified Predictor-Corrector Framework for Fast Sampling of Diffusion
    Models" (NeurIPS 2023, arXiv:2302.04867), multistep, B(h) variants (``solver_type`` bh1 / bh2). Each step
    first corrects the previous prediction with the new model output (UniC, free: no extra model call), then
    predicts the next sample (UniP) from the last ``solver_order`` outputs. Same timestep and sigma schedule
    as DPM-Solver multistep, whose pieces it reuses.
    """

    name = "unipc"
    _round_karras_always = True
    _DEFAULTS = {"solver_order": 2, "thresholding": False, "dynamic_thresholding_ratio": 0.995,
                 "sample_max_value": 1.0, "predict_x0": True, "solver_type": "bh2", "lower_order_final": True,
                 "disable_corrector": [], "solver_p": None, "use_karras_sigmas": False,
                 "use_exponential_sigmas": False, "use_beta_sigmas": False, "use_flow_sigmas": False,
                 "flow_shift": 1.0, "timestep_spacing": "linspace", "final_sigmas_type": "zero",
                 "rescale_betas_zero_snr": False, "use_dynamic_shifting": False, "time_shift_type": "exponential",
                 "sigma_min": None, "sigma_max": None, "shift_terminal": None}
    _CHECKS = {"prediction_type": _one_of("epsilon", "sample", "v_prediction"),
               "solver_order": lambda v: isinstance(v, int) and 1 <= v <= 3,
               "predict_x0": _one_of(True, False),
               "solver_type": _one_of("bh1", "bh2", "midpoint", "heun", "logrho"),
               "lower_order_final": _one_of(True, False),
               "disable_corrector": lambda v: isinstance(v, (list, tuple)) and all(isinstance(i, int) for i in v),
               "solver_p": lambda v: v is None,  # another scheduler as the predictor: not implemented
               "use_karras_sigmas": _one_of(True, False, None), "use_exponential_sigmas": _one_of(True, False, None),
               "use_beta_sigmas": _is_false, "use_flow_sigmas": _is_false, "use_dynamic_shifting": _is_false,
               "final_sigmas_type": _one_of("zero", "sigma_min"), "sigma_min": _is_optional_number,
               "sigma_max": _is_optional_number, "shift_terminal": lambda v: v is None}

    def _validate(self) -> None:
        cfg = self.config
        if cfg.solver_type in ("midpoint", "heun", "logrho"):  # diffusers maps these to bh2
            cfg.solver_type = "bh2"
        Scheduler._validate(self)  # not DPM-Solver's: its algorithm settings are not UniPC's
        # The DPM-Solver pieces reused: data (x0) or noise prediction, no learned variance.
        cfg.algorithm_type = "dpmsolver++" if cfg.predict_x0 else "dpmsolver"
        cfg.variance_type = None
        cfg.thresholding = cfg.thresholding and cfg.predict_x0  # diffusers thresholds x0 predictions only

    def __init__(self, config: dict | None = None, **overrides):
        super().__init__(config, **overrides)
        self.name = "unipc"

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
        rks = np.asarray(rks + [_ONE], dtype=F32)
        hh = -h if self.config.predict_x0 else h
        h_phi_1 = np.expm1(hh)
        h_phi_k = h_phi_1 / hh - _ONE
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
        if self.config.predict_x0:
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
        if self._step_index is None:
            self._step_index = _first_index(self.timesteps, timestep, missing=len(self.timesteps) - 1)
        i = self._step_index
        sample = sample.astype(F32)
        converted = self._convert_model_output(model_output, sample)
        if i > 0 and (i - 1) not in cfg.disable_corrector and self.last_sample is not None:
            sample = self._correct(converted, self.last_sample, sample, self.this_order)
        self.model_outputs = self.model_outputs[1:] + [converted]
        order = min(cfg.solver_order, len(self.timesteps) - i) if cfg.lower_order_final else cfg.solver_order
        self.this_order = min(order, self.lower_order_nums + 1)  # warm-up: lower orders first
        self.last_sample = sample
        prev_sample = self._predict(sample, self.this_order)
        if self.lower_order_nums < cfg.solver_order:
            self.lower_order_nums += 1
        self._step_index += 1
        return prev_sample.astype(model_output.dtype)


def _weighted_sum(weights: np.ndarray, terms: list[np.ndarray]) -> np.ndarray:
    total = weights[0] * terms[0]
    for w, term in zip(weights[1:], terms[1:]):
        total = total + w * term
    return total


# ================================================================================================
# Factory
# ================================================================================================

_BY_NAME: dict[str, tuple[type[Scheduler], dict]] = {
    "pndm": (PNDMScheduler, {}),
    "ddim": (DDIMScheduler, {}),
    "euler": (EulerDiscreteScheduler, {}),
    "euler_a": (EulerAncestralDiscreteScheduler, {}),
    "lms": (LMSDiscreteScheduler, {}),
    "heun": (HeunDiscreteScheduler, {}),
    "unipc": (UniPCMultistepScheduler, {}),
    "dpmpp_2m": (DPMSolverMultistepScheduler,
                 {"algorithm_type": "dpmsolver++", "solver_order": 2, "use_karras_sigmas": False}),
    "dpmpp_2m_karras": (DPMSolverMultistepScheduler,
                        {"algorithm_type": "dpmsolver++", "solver_order": 2, "use_karras_sigmas": True}),
}
SCHEDULER_NAMES: tuple[str, ...] = tuple(sorted(_BY_NAME))
_BY_CLASS_NAME = {cls.__name__: cls for cls, _ in _BY_NAME.values()}


def make_scheduler(config: dict, name: str | None = None) -> Scheduler:
    """The scheduler ``name`` (one of ``SCHEDULER_NAMES``) built from a diffusers scheduler config dict,
    as ``XScheduler.from_config(config)`` builds it; with ``name=None`` the class ``config["_class_name"]``
    names, with the config's own settings.
    """
    if not isinstance(config, dict):
        raise ValueError(f"scheduler config must be a dict, got {type(config).__name__}")
    if name is None:
        class_name = config.get("_class_name")
        if class_name not in _BY_CLASS_NAME:
            raise InputError(f"scheduler: the checkpoint's scheduler config _class_name={class_name!r} is not "
                             f"supported (known: {', '.join(sorted(_BY_CLASS_NAME))}); name one of "
                             f"{', '.join(SCHEDULER_NAMES)}")
        return _BY_CLASS_NAME[class_name](config)
    if name not in _BY_NAME:
        raise InputError(f"scheduler: unknown {name!r}; known: {', '.join(SCHEDULER_NAMES)}")
    cls, overrides = _BY_NAME[name]
    return cls(config, **overrides)

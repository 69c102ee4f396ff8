"""What every scheduler family shares: typed settings, the training schedule, timestep spacing, sigma ramps,
the final sigma, and the :class:`Scheduler` interface.

The schedule tables are float32 as torch makes them (betas via torch's linspace, cumulative products
accumulated in float64), so that every family starts from the numbers diffusers starts from. The sigma
helpers follow k-diffusion's style: small functions that each build one schedule, composed by the families.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field, fields
from typing import Any, Callable

import numpy as np

from ..rng import TorchGenerator

F32 = np.float32
ONE = F32(1.0)
SPACINGS = ("linspace", "leading", "trailing")
BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")


# ================================================================================================
# Typed settings: diffusers' from_config semantics plus validation
# ================================================================================================

def one_of(*allowed) -> Callable[[Any], bool]:
    return lambda value: value in allowed


def is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def is_optional_number(value) -> bool:
    return value is None or is_number(value)


def is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def setting(default, check: Callable[[Any], bool] | None = None):
    """A config field: diffusers' default for the key and the check its value must pass (None: any)."""
    return field(default=default, metadata={"check": check})


def flag(default: bool = False):
    return setting(default, one_of(True, False))


def optional_flag():
    """A switch diffusers also accepts as None (off)."""
    return setting(False, one_of(True, False, None))


def unsupported():
    """A diffusers switch this module does not implement: accepted while off, refused when on."""
    return setting(False, lambda value: not value)


def choice(default, *others):
    """One of ``default`` and ``others``."""
    return setting(default, one_of(default, *others))


@dataclass(frozen=True)
class SchedulerConfig:
    """The settings of a diffusers ``scheduler_config.json`` that a scheduler reads, with diffusers' defaults.

    Each scheduler has its own subclass listing exactly the keys its diffusers class knows: other keys of
    the config are ignored (as ``from_config`` ignores them), and a value outside what the field's check
    allows is refused. Settings a family reads but a class lacks take their off value from the plain class
    attributes below, which are not fields (a config that sets them is ignored, as diffusers ignores it).
    """

    num_train_timesteps: int = setting(1000, lambda v: is_int(v) and v >= 2)
    beta_start: float = setting(0.0001, is_number)
    beta_end: float = setting(0.02, is_number)
    beta_schedule: str = choice("linear", *BETA_SCHEDULES)
    trained_betas: Any = setting(None, lambda v: v is None or (np.ndim(v) == 1 and len(v) >= 2))
    prediction_type: str = "epsilon"  # each scheduler redeclares it with the types it implements
    timestep_spacing: str = choice("leading", *SPACINGS)
    steps_offset: int = setting(0, is_int)

    # off values of settings only some classes have (not fields: see the class docstring)
    rescale_betas_zero_snr = False
    use_karras_sigmas = False
    use_exponential_sigmas = False
    sigma_min = None
    sigma_max = None
    interpolation_type = "linear"
    final_sigmas_type = "zero"
    lambda_min_clipped = -float("inf")

    @classmethod
    def resolve(cls, owner: str, config: dict, overrides: dict) -> SchedulerConfig:
        """diffusers' ``from_config``: the known keys of ``config`` over the defaults, then ``overrides``;
        every value checked, then the cross-key rules of :meth:`settle`. ``owner`` names the scheduler class
        in the errors."""
        known = fields(cls)
        values = {f.name: f.default for f in known}
        values.update({key: value for key, value in config.items() if key in values})
        values.update(overrides)
        for f in known:
            check = f.metadata.get("check")
            if check is not None and not check(values[f.name]):
                raise ValueError(f"{owner}: unsupported setting {f.name}={values[f.name]!r}")
        trained = values["trained_betas"]
        if trained is not None and len(trained) != values["num_train_timesteps"]:
            raise ValueError(f"{owner}: trained_betas has {len(trained)} entries but "
                             f"num_train_timesteps={values['num_train_timesteps']}")
        cls.settle(owner, values)
        return cls(**values)

    @classmethod
    def settle(cls, owner: str, values: dict) -> None:
        """Cross-key rules and the value aliases diffusers maps, applied to ``values`` in place before the
        config is built; subclasses extend it."""
        if values.get("use_karras_sigmas") and values.get("use_exponential_sigmas"):
            raise ValueError(f"{owner}: use_karras_sigmas and use_exponential_sigmas are exclusive")


@dataclass(frozen=True)
class ThresholdingConfig(SchedulerConfig):
    """Dynamic thresholding of the predicted clean sample (see :func:`threshold_sample`)."""

    thresholding: bool = flag()
    dynamic_thresholding_ratio: float = setting(0.995, lambda v: is_number(v) and 0 < v <= 1)
    sample_max_value: float = setting(1.0, is_number)


# ================================================================================================
# The training schedule (float32 tables as torch makes them)
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
    alphas_bar_sqrt = np.sqrt(_cumprod_f32(ONE - betas))
    first, last = alphas_bar_sqrt[0].copy(), alphas_bar_sqrt[-1].copy()
    alphas_bar_sqrt = (alphas_bar_sqrt - last) * (first / (first - last))
    alphas_bar = alphas_bar_sqrt * alphas_bar_sqrt
    alphas = np.concatenate([alphas_bar[:1], alphas_bar[1:] / alphas_bar[:-1]])
    return (ONE - alphas).astype(F32)


def make_betas(cfg: SchedulerConfig) -> np.ndarray:
    if cfg.trained_betas is not None:
        betas = np.asarray(cfg.trained_betas, dtype=F32)
    elif cfg.beta_schedule == "linear":
        betas = torch_linspace_f32(cfg.beta_start, cfg.beta_end, cfg.num_train_timesteps)
    elif cfg.beta_schedule == "scaled_linear":
        betas = torch_linspace_f32(cfg.beta_start**0.5, cfg.beta_end**0.5, cfg.num_train_timesteps) ** 2
    else:  # squaredcos_cap_v2 (validated)
        betas = _betas_for_alpha_bar_cosine(cfg.num_train_timesteps)
    if cfg.rescale_betas_zero_snr:
        betas = _rescale_zero_terminal_snr(betas)
    return betas.astype(F32)


def make_alphas_cumprod(cfg: SchedulerConfig, finite_final_sigma: bool = False) -> np.ndarray:
    """The cumulative alphas of the training schedule. A zero-SNR schedule ends at alpha 0, an infinite
    sigma; the sigma-parameterised schedulers (``finite_final_sigma``) replace it with 2**-24 as diffusers
    does, so that their first sigma is large but finite."""
    alphas_cumprod = _cumprod_f32(ONE - make_betas(cfg))
    if cfg.rescale_betas_zero_snr and finite_final_sigma:
        alphas_cumprod[-1] = F32(2.0**-24)
    return alphas_cumprod


def train_sigmas(alphas_cumprod: np.ndarray) -> np.ndarray:
    """Karras sigmas of the training timesteps, ascending in t: sqrt((1 - a) / a), float32."""
    return np.sqrt((ONE - alphas_cumprod) / alphas_cumprod).astype(F32)


# ================================================================================================
# Inference timesteps and sigmas
# ================================================================================================

def spaced_timesteps(spacing: str, num_train: int, num_steps: int, steps_offset: int, *,
                     round_linspace: bool = True, span: int | None = None, skip_zero: bool = False) -> np.ndarray:
    """Descending inference timesteps (float64) for linspace / leading / trailing spacing.

    Lin et al. (arXiv:2305.08891) Table 2. ``round_linspace=False`` keeps the fractional linspace values,
    as the Euler schedulers do. The multistep solvers place their steps within the first ``span`` training
    timesteps (DPM-Solver's ``lambda_min_clipped`` shortens it) and, with ``skip_zero``, lay linspace and
    leading out over ``num_steps + 1`` points and drop the last one, timestep 0.
    """
    span = num_train if span is None else span
    points = num_steps + 1 if skip_zero else num_steps
    if spacing == "linspace":
        ts = np.linspace(0, span - 1, points)
        ts = (ts.round() if round_linspace else ts)[::-1].copy()
    elif spacing == "leading":
        step_ratio = span // points
        ts = (np.arange(0, points) * step_ratio).round()[::-1].astype(np.float64) + steps_offset
    else:  # trailing: no point at 0 to skip
        return np.round(np.arange(span, 0, -(num_train / num_steps))) - 1
    return ts[:-1] if skip_zero else ts


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


def interpolated_sigmas(timesteps: np.ndarray, train: np.ndarray) -> np.ndarray:
    """The training sigmas ``train`` linearly interpolated at (possibly fractional) ``timesteps``."""
    return np.interp(timesteps, np.arange(0, len(train)), train)


def karras_sigmas(sigma_min: float, sigma_max: float, num_steps: int, rho: float = 7.0) -> np.ndarray:
    """Karras et al., "Elucidating the Design Space of Diffusion-Based Generative Models" (arXiv:2206.00364), eq. 5."""
    ramp = np.linspace(0, 1, num_steps)
    min_inv_rho, max_inv_rho = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho


def exponential_sigmas(sigma_min: float, sigma_max: float, num_steps: int) -> np.ndarray:
    return np.exp(np.linspace(math.log(sigma_max), math.log(sigma_min), num_steps))


def ramp_sigmas(cfg: SchedulerConfig, num_steps: int, sigma_min: float, sigma_max: float,
                log_train_sigmas: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """The one sigma builder of the Karras and exponential ramps: ``(sigmas, timesteps)`` from ``sigma_max``
    down to ``sigma_min`` (the config's own ``sigma_min`` / ``sigma_max`` where it sets them), with the
    fractional training timestep of each sigma; None where the config asks for neither ramp."""
    if cfg.use_karras_sigmas:
        ramp = karras_sigmas
    elif cfg.use_exponential_sigmas:
        ramp = exponential_sigmas
    else:
        return None
    sigmas = ramp(sigma_min if cfg.sigma_min is None else cfg.sigma_min,
                  sigma_max if cfg.sigma_max is None else cfg.sigma_max, num_steps)
    return sigmas, sigma_to_t(sigmas, log_train_sigmas)


def with_final_sigma(sigmas: np.ndarray, cfg: SchedulerConfig, alphas_cumprod: np.ndarray) -> np.ndarray:
    """``sigmas`` and the sigma the last step ends at, float32: 0 (a clean sample), or with
    ``final_sigmas_type='sigma_min'`` the smallest training sigma."""
    if cfg.final_sigmas_type == "sigma_min":
        last = np.sqrt((ONE - alphas_cumprod[0]) / alphas_cumprod[0])
    else:
        last = 0
    return np.concatenate([sigmas, [last]]).astype(F32)


# ================================================================================================
# Pieces of a step
# ================================================================================================

def threshold_sample(sample: np.ndarray, ratio: float, max_value: float) -> np.ndarray:
    """Dynamic thresholding of Saharia et al., "Imagen" (arXiv:2205.11487), as diffusers applies it."""
    batch, channels, *rest = sample.shape
    flat = sample.reshape(batch, channels * int(np.prod(rest)))
    s = np.quantile(np.abs(flat), ratio, axis=1).astype(sample.dtype)
    s = np.clip(s, 1, max_value)[:, None]
    return (np.clip(flat, -s, s) / s).reshape(sample.shape).astype(sample.dtype)


def x0_and_eps(prediction_type: str, model_output: np.ndarray, sample: np.ndarray, alpha_t: np.float32,
               beta_t: np.float32) -> tuple[np.ndarray, np.ndarray]:
    """The predicted clean sample and noise of a discrete-timestep step (DDIM, LCM, TCD) from the model
    output, for ``prediction_type`` epsilon, sample or v_prediction; ``alpha_t`` the cumulative alpha at the
    step's timestep, ``beta_t`` one minus it."""
    if prediction_type == "epsilon":
        return (sample - np.sqrt(beta_t) * model_output) / np.sqrt(alpha_t), model_output
    if prediction_type == "sample":
        return model_output, (sample - np.sqrt(alpha_t) * model_output) / np.sqrt(beta_t)
    return (np.sqrt(alpha_t) * sample - np.sqrt(beta_t) * model_output,   # v_prediction
            np.sqrt(alpha_t) * model_output + np.sqrt(beta_t) * sample)


def bound_x0(cfg: SchedulerConfig, x0: np.ndarray) -> np.ndarray:
    """The predicted clean sample thresholded (``thresholding``) or clipped (``clip_sample``) as the config
    of a DDIM-style scheduler says, else as it is."""
    if cfg.thresholding:
        return threshold_sample(x0, cfg.dynamic_thresholding_ratio, cfg.sample_max_value)
    if cfg.clip_sample:
        return np.clip(x0, -cfg.clip_sample_range, cfg.clip_sample_range)
    return x0


def alpha_before(alphas_cumprod: np.ndarray, t: int, final: np.float32) -> np.float32:
    """The cumulative alpha at training timestep ``t``, or ``final`` before the first one (t < 0): DDIM's
    and PNDM's last step ends there (1 with ``set_alpha_to_one``, else the first alpha)."""
    return alphas_cumprod[t] if t >= 0 else final


def first_index(timesteps: np.ndarray, timestep: float, missing: int | None = None) -> int:
    """diffusers' ``index_for_timestep``: the second match when a timestep repeats, else the first;
    ``missing`` for a timestep not in the list (None: refuse it)."""
    hits = np.flatnonzero(timesteps == F32(timestep))
    if len(hits) == 0:
        if missing is None:
            raise ValueError(f"timestep {timestep} is not one of this scheduler's timesteps")
        return missing
    return int(hits[1] if len(hits) > 1 else hits[0])


def check_steps(num_inference_steps: int, num_train: int) -> None:
    if not isinstance(num_inference_steps, (int, np.integer)) or num_inference_steps < 1:
        raise ValueError(f"num_inference_steps must be a positive integer, got {num_inference_steps!r}")
    if num_inference_steps > num_train:
        raise ValueError(f"num_inference_steps={num_inference_steps} exceeds num_train_timesteps={num_train}")


def noise_generator(generator: TorchGenerator | None) -> TorchGenerator:
    """The generator a stochastic step draws from: the caller's, else a freshly seeded one."""
    return generator or TorchGenerator(int.from_bytes(os.urandom(8), "little"))


# ================================================================================================
# The interface
# ================================================================================================

class Scheduler:
    """Common interface: timesteps after ``set_timesteps``, input scaling, one ``step`` per timestep.

    ``Config`` is the class's typed settings (a :class:`SchedulerConfig` subclass); ``config`` the
    instance's, built from a diffusers config dict as ``from_config`` builds it.
    """

    name: str = ""
    order: int = 1
    init_noise_sigma: float = 1.0
    timesteps: np.ndarray
    Config: type[SchedulerConfig] = SchedulerConfig
    #: whether a zero-SNR schedule's last alpha is lifted to keep its sigma finite (see make_alphas_cumprod)
    finite_final_sigma: bool = False

    def __init__(self, config: dict | None = None, **overrides):
        self.config = self.Config.resolve(type(self).__name__, dict(config or {}), overrides)
        self.alphas_cumprod = make_alphas_cumprod(self.config, self.finite_final_sigma)
        self.num_inference_steps: int | None = None
        self.timesteps = np.zeros(0, dtype=F32)

    @property
    def max_inference_steps(self) -> int:
        """The most steps ``set_timesteps`` takes."""
        return self.config.num_train_timesteps

    def _require_steps_set(self) -> None:
        if self.num_inference_steps is None:
            raise ValueError(f"{type(self).__name__}: call set_timesteps() before step()")

    def set_timesteps(self, num_inference_steps: int) -> None:
        raise NotImplementedError

    def scale_model_input(self, sample: np.ndarray, timestep: float) -> np.ndarray:
        return sample

    def step(self, model_output: np.ndarray, timestep: float, sample: np.ndarray,
             generator: TorchGenerator | None = None) -> np.ndarray:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, steps={self.num_inference_steps})"

"""runtime.schedulers against diffusers' own schedulers, step by step."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fashiongen.runtime.rng import TorchGenerator
from fashiongen.runtime.schedulers import SCHEDULER_NAMES, make_scheduler, torch_linspace_f32

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

SD15 = {
    "_class_name": "PNDMScheduler", "_diffusers_version": "0.6.0", "beta_start": 0.00085, "beta_end": 0.012,
    "beta_schedule": "scaled_linear", "num_train_timesteps": 1000, "set_alpha_to_one": False,
    "skip_prk_steps": True, "steps_offset": 1, "trained_betas": None, "clip_sample": False,
    "prediction_type": "epsilon", "timestep_spacing": "leading",
}
CONFIGS = {
    "sd15": SD15,
    "trailing": {**SD15, "timestep_spacing": "trailing"},
    "linspace": {**SD15, "timestep_spacing": "linspace"},
    "v_prediction": {**SD15, "prediction_type": "v_prediction"},
    "linear_betas": {**SD15, "beta_schedule": "linear", "beta_start": 0.0001, "beta_end": 0.02},
}
STEPS = [1, 2, 5, 20, 25]
DIFFUSERS_CLASS = {
    "pndm": "PNDMScheduler", "ddim": "DDIMScheduler", "euler": "EulerDiscreteScheduler",
    "euler_a": "EulerAncestralDiscreteScheduler", "dpmpp_2m": "DPMSolverMultistepScheduler",
    "dpmpp_2m_karras": "DPMSolverMultistepScheduler", "lms": "LMSDiscreteScheduler",
    "unipc": "UniPCMultistepScheduler", "heun": "HeunDiscreteScheduler", "lcm": "LCMScheduler",
    "tcd": "TCDScheduler",
}
SHAPE = (1, 4, 8, 6)
REL_TOL = 1e-5


def diffusers_scheduler(name: str, config: dict):
    cls = getattr(diffusers, DIFFUSERS_CLASS[name])
    config = dict(config)
    if name.startswith("dpmpp_2m"):
        config.update(algorithm_type="dpmsolver++", solver_order=2, use_karras_sigmas=name.endswith("karras"))
    return cls.from_config(config)


def fake_model(x: np.ndarray, t: float) -> np.ndarray:
    """A deterministic stand-in for the UNet: depends on the input and the timestep."""
    return (np.float32(0.1) * x + np.float32(np.sin(float(t) / 50.0))).astype(np.float32)


def run_ours(scheduler, steps: int, seed: int) -> list[np.ndarray]:
    gen = TorchGenerator(seed)
    scheduler.set_timesteps(steps)
    x = gen.randn(SHAPE) * np.float32(scheduler.init_noise_sigma)
    trajectory = [x]
    for t in scheduler.timesteps:
        eps = fake_model(scheduler.scale_model_input(x, t), t)
        x = scheduler.step(eps, t, x, generator=gen)
        assert x.dtype == np.float32
        trajectory.append(x)
    return trajectory


def run_diffusers(scheduler, steps: int, seed: int, **step_kwargs) -> list[np.ndarray]:
    gen = torch.Generator("cpu").manual_seed(seed)
    scheduler.set_timesteps(steps)
    x = torch.randn(SHAPE, generator=gen) * scheduler.init_noise_sigma
    trajectory = [x.numpy()]
    for t in scheduler.timesteps:
        x_in = scheduler.scale_model_input(x, t)
        eps = torch.from_numpy(fake_model(x_in.numpy(), float(t)))
        kwargs = {"generator": gen} if "generator" in scheduler.step.__code__.co_varnames else {}
        x = scheduler.step(eps, t, x, **kwargs, **step_kwargs).prev_sample
        trajectory.append(x.numpy())
    return trajectory


def assert_same_run(ours, theirs, steps: int, seed: int = 19687, **step_kwargs):
    theirs.set_timesteps(steps)
    ours.set_timesteps(steps)
    expected_ts = theirs.timesteps.numpy().astype(np.float32)
    assert ours.timesteps.dtype == np.float32
    if np.array_equal(expected_ts, np.round(expected_ts)):
        np.testing.assert_array_equal(ours.timesteps, expected_ts)
    else:  # fractional (Karras/exponential/continuous): torch's MKL sqrt/log may differ from numpy by an ulp
        np.testing.assert_allclose(ours.timesteps, expected_ts, rtol=3e-7, atol=1e-6)
    assert ours.init_noise_sigma == pytest.approx(float(theirs.init_noise_sigma), rel=1e-6)
    got, want = run_ours(ours, steps, seed), run_diffusers(theirs, steps, seed, **step_kwargs)
    assert len(got) == len(want)
    for i, (a, b) in enumerate(zip(got, want)):
        # float32 rounding happens at the scale of the step's inputs, which can be far larger than its
        # output (zero-SNR schedules start at sigma 4096; Heun's second half restarts from the sample two
        # entries back): measure against them all.
        scale = max(*(float(np.abs(w).max()) for w in want[max(i - 2, 0):i + 1]), 1e-3)
        err = float(np.abs(a - b).max()) / scale
        assert err <= REL_TOL, f"step {i}: relative error {err:.2e}"


@pytest.mark.parametrize("config_name", sorted(CONFIGS))
@pytest.mark.parametrize("name", SCHEDULER_NAMES)
def test_matches_diffusers(name, config_name):
    config = CONFIGS[config_name]
    for steps in STEPS:
        assert_same_run(make_scheduler(config, name), diffusers_scheduler(name, config), steps)


# Settings beyond the SD 1.5 variants, each against diffusers built from the same config.
EXTRA_CASES = [
    ("pndm", {**SD15, "skip_prk_steps": False}, [5, 20]),
    ("pndm", {**SD15, "set_alpha_to_one": True, "timestep_spacing": "trailing"}, [5, 20]),
    ("pndm", {**SD15, "beta_schedule": "squaredcos_cap_v2"}, [10]),
    ("ddim", {**SD15, "set_alpha_to_one": True, "clip_sample": True, "clip_sample_range": 1.5}, [5, 20]),
    ("ddim", {**SD15, "prediction_type": "sample", "timestep_spacing": "trailing"}, [10]),
    ("ddim", {**SD15, "rescale_betas_zero_snr": True, "timestep_spacing": "trailing",
              "prediction_type": "v_prediction"}, [10]),
    ("ddim", {**SD15, "thresholding": True, "dynamic_thresholding_ratio": 0.9, "sample_max_value": 1.2}, [8]),
    ("ddim", {**SD15, "trained_betas": list(np.linspace(0.0001, 0.02, 1000))}, [10]),
    ("euler", {**SD15, "use_karras_sigmas": True}, [5, 20]),
    ("euler", {**SD15, "use_exponential_sigmas": True}, [10]),
    ("euler", {**SD15, "use_karras_sigmas": True, "sigma_min": 0.1, "sigma_max": 10.0}, [10]),
    ("euler", {**SD15, "interpolation_type": "log_linear"}, [10]),
    ("euler", {**SD15, "final_sigmas_type": "sigma_min", "timestep_spacing": "trailing"}, [10]),
    ("euler", {**SD15, "timestep_type": "continuous", "prediction_type": "v_prediction"}, [10]),
    ("euler", {**SD15, "rescale_betas_zero_snr": True, "timestep_spacing": "trailing",
               "prediction_type": "v_prediction"}, [10]),
    ("euler", {**SD15, "prediction_type": "sample"}, [10]),
    ("euler_a", {**SD15, "rescale_betas_zero_snr": True, "timestep_spacing": "trailing",
                 "prediction_type": "v_prediction"}, [10]),
    ("euler_a", {**SD15, "beta_schedule": "squaredcos_cap_v2"}, [10]),
    ("dpmpp_2m", {**SD15, "final_sigmas_type": "sigma_min"}, [5, 20]),
    ("dpmpp_2m", {**SD15, "lower_order_final": False}, [5, 20]),
    ("dpmpp_2m", {**SD15, "euler_at_final": True, "timestep_spacing": "linspace"}, [20]),
    ("dpmpp_2m", {**SD15, "solver_type": "heun"}, [10]),
    ("dpmpp_2m", {**SD15, "prediction_type": "sample"}, [10]),
    ("dpmpp_2m", {**SD15, "thresholding": True, "sample_max_value": 1.5}, [10]),
    ("dpmpp_2m", {**SD15, "lambda_min_clipped": -5.1, "timestep_spacing": "linspace"}, [10]),
    ("dpmpp_2m", {**SD15, "use_exponential_sigmas": True}, [10]),
    ("dpmpp_2m_karras", {**SD15, "beta_schedule": "squaredcos_cap_v2"}, [10]),
    ("lms", {**SD15, "use_karras_sigmas": True}, [5, 20]),
    ("lms", {**SD15, "use_exponential_sigmas": True, "timestep_spacing": "trailing"}, [10]),
    ("lms", {**SD15, "prediction_type": "sample"}, [10]),
    ("lms", {**SD15, "beta_schedule": "squaredcos_cap_v2", "rescale_betas_zero_snr": True}, [10]),  # ignored key
    ("heun", {**SD15, "use_karras_sigmas": True}, [5, 20]),
    ("heun", {**SD15, "use_exponential_sigmas": True, "prediction_type": "v_prediction"}, [10]),
    ("heun", {**SD15, "clip_sample": True, "clip_sample_range": 2.0, "timestep_spacing": "trailing"}, [10]),
    ("heun", {**SD15, "prediction_type": "sample"}, [10]),
    ("unipc", {**SD15, "solver_order": 3}, [5, 20]),
    ("unipc", {**SD15, "solver_order": 1}, [10]),
    # bh1 with a final sigma of 0: diffusers multiplies B(h) = -inf by its zero residual (nan); see below
    ("unipc", {**SD15, "solver_type": "bh1", "use_karras_sigmas": True, "final_sigmas_type": "sigma_min"}, [5, 20]),
    ("unipc", {**SD15, "predict_x0": False, "final_sigmas_type": "sigma_min"}, [10]),
    ("unipc", {**SD15, "lower_order_final": False, "final_sigmas_type": "sigma_min"}, [10]),
    ("unipc", {**SD15, "disable_corrector": [0, 3], "timestep_spacing": "trailing"}, [10]),
    ("unipc", {**SD15, "use_exponential_sigmas": True, "prediction_type": "sample"}, [10]),
    ("unipc", {**SD15, "thresholding": True, "sample_max_value": 1.5, "rescale_betas_zero_snr": True,
               "prediction_type": "v_prediction"}, [10]),
    ("unipc", {**SD15, "use_karras_sigmas": True, "final_sigmas_type": "sigma_min"}, [10]),
    ("unipc", {**SD15, "lambda_min_clipped": -5.1}, [10]),  # a DPM setting UniPC does not have: ignored
    ("dpmpp_2m_karras", {**SD15, "rescale_betas_zero_snr": True, "final_sigmas_type": "sigma_min"}, [10]),
]


# The few-step consistency samplers: their own defaults (an LCM checkpoint's scheduler config) and settings.
LCM_DEFAULTS = {"_class_name": "LCMScheduler", "original_inference_steps": 50}
CONSISTENCY_STEPS = [1, 2, 4, 8]
CONSISTENCY_CONFIGS = [
    LCM_DEFAULTS,
    {**LCM_DEFAULTS, "original_inference_steps": 10, "set_alpha_to_one": False},
    {**LCM_DEFAULTS, "timestep_scaling": 2.5, "prediction_type": "v_prediction"},
    {**LCM_DEFAULTS, "prediction_type": "sample", "beta_schedule": "linear", "beta_start": 0.0001,
     "beta_end": 0.02},
    {**LCM_DEFAULTS, "clip_sample": True, "clip_sample_range": 1.5, "num_train_timesteps": 500},
    {**LCM_DEFAULTS, "thresholding": True, "dynamic_thresholding_ratio": 0.9, "sample_max_value": 1.2},
    {**LCM_DEFAULTS, "rescale_betas_zero_snr": True, "prediction_type": "v_prediction"},
]
EXTRA_CASES += [(name, config, CONSISTENCY_STEPS) for name in ("lcm", "tcd") for config in CONSISTENCY_CONFIGS]


@pytest.mark.parametrize("gamma", [0.0, 0.1, 0.3, 0.55, 1.0])
def test_tcd_gamma_matches_diffusers_eta(gamma):
    config = {**LCM_DEFAULTS, "original_inference_steps": 30}
    for n in CONSISTENCY_STEPS + [30]:
        assert_same_run(make_scheduler(config, "tcd").__class__(config, gamma=gamma),
                        diffusers.TCDScheduler.from_config(config), n, eta=gamma)


def test_consistency_steps_beyond_original_refused():
    """diffusers refuses more steps than ``original_inference_steps``; so do LCM and TCD, before any step."""
    for name in ("lcm", "tcd"):
        scheduler = make_scheduler({**LCM_DEFAULTS, "original_inference_steps": 8}, name)
        assert scheduler.max_inference_steps == 8
        with pytest.raises(ValueError, match="original_inference_steps=8"):
            scheduler.set_timesteps(9)
        with pytest.raises(ValueError, match="original_inference_steps"):
            make_scheduler({**LCM_DEFAULTS, "original_inference_steps": 2000}, name)
    with pytest.raises(ValueError, match="gamma"):
        make_scheduler(LCM_DEFAULTS, "tcd").__class__(LCM_DEFAULTS, gamma=1.5)


@pytest.mark.parametrize("name,config,steps", EXTRA_CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(EXTRA_CASES)])
def test_more_settings_match_diffusers(name, config, steps):
    for n in steps:
        assert_same_run(make_scheduler(config, name), diffusers_scheduler(name, config), n)


def test_unipc_bh1_final_step_is_finite():
    """diffusers' bh1 UniPC ends in nan when the last sigma is 0 (-inf * 0 in an empty residual term); the
    first-order update it stands for is finite: the data prediction itself. Every step before matches."""
    config = {**SD15, "solver_type": "bh1"}
    ours, theirs = run_ours(make_scheduler(config, "unipc"), 6, 3), run_diffusers(diffusers_scheduler("unipc", config), 6, 3)
    assert np.isnan(theirs[-1]).any() and np.isfinite(ours[-1]).all()
    for a, b in zip(ours[:-1], theirs[:-1]):
        assert float(np.abs(a - b).max()) <= REL_TOL * max(float(np.abs(b).max()), 1e-3)


DPM_VARIANTS = [
    {"algorithm_type": "dpmsolver", "final_sigmas_type": "sigma_min"},
    {"algorithm_type": "dpmsolver", "final_sigmas_type": "sigma_min", "solver_type": "heun",
     "prediction_type": "v_prediction"},
    {"solver_order": 1},
    {"use_karras_sigmas": True, "timestep_spacing": "trailing"},
]


@pytest.mark.parametrize("variant", DPM_VARIANTS, ids=[str(i) for i in range(len(DPM_VARIANTS))])
def test_dpm_config_settings_by_class_name(variant):
    """With name=None the config's own DPM settings apply (not the dpmpp_2m overrides)."""
    config = {**SD15, "_class_name": "DPMSolverMultistepScheduler", **variant}
    for n in [5, 20]:
        assert_same_run(make_scheduler(config), diffusers.DPMSolverMultistepScheduler.from_config(config), n)


@pytest.mark.parametrize("class_name,expected", [
    ("PNDMScheduler", "pndm"), ("DDIMScheduler", "ddim"), ("EulerDiscreteScheduler", "euler"),
    ("EulerAncestralDiscreteScheduler", "euler_a"), ("DPMSolverMultistepScheduler", "dpmpp_2m"),
    ("LMSDiscreteScheduler", "lms"), ("UniPCMultistepScheduler", "unipc"), ("HeunDiscreteScheduler", "heun"),
    ("LCMScheduler", "lcm"), ("TCDScheduler", "tcd"),
])
def test_default_scheduler_from_class_name(class_name, expected):
    assert make_scheduler({**SD15, "_class_name": class_name}).name == expected


def test_karras_dpm_by_class_name():
    config = {**SD15, "_class_name": "DPMSolverMultistepScheduler", "use_karras_sigmas": True}
    assert make_scheduler(config).name == "dpmpp_2m_karras"
    assert make_scheduler(config, "dpmpp_2m").name == "dpmpp_2m"


def test_names():
    assert SCHEDULER_NAMES == ("ddim", "dpmpp_2m", "dpmpp_2m_karras", "euler", "euler_a", "heun", "lcm", "lms",
                               "pndm", "tcd", "unipc")
    for name in SCHEDULER_NAMES:
        assert make_scheduler(SD15, name).name == name


def test_betas_match_torch_bit_for_bit():
    for start, end, n in [(0.00085**0.5, 0.012**0.5, 1000), (0.0001, 0.02, 1000), (0.1, 0.7, 37), (0.2, 0.4, 2)]:
        np.testing.assert_array_equal(torch_linspace_f32(start, end, n),
                                      torch.linspace(start, end, n, dtype=torch.float32).numpy())
    for name in ("pndm", "ddim", "euler"):
        for config in (SD15, {**SD15, "beta_schedule": "squaredcos_cap_v2"}, {**SD15, "rescale_betas_zero_snr": True}):
            theirs = diffusers_scheduler(name, config).alphas_cumprod.numpy()
            ours = make_scheduler(config, name).alphas_cumprod
            if config.get("rescale_betas_zero_snr"):  # goes through torch's (MKL, not correctly rounded) sqrt
                np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-9)
            else:
                np.testing.assert_array_equal(ours, theirs)


def test_set_timesteps_resets_state():
    for name in SCHEDULER_NAMES:
        scheduler = make_scheduler(SD15, name)
        first = run_ours(scheduler, 6, 1)
        second = run_ours(scheduler, 6, 1)
        for a, b in zip(first, second):
            np.testing.assert_array_equal(a, b)


def test_unknown_name_lists_known():
    with pytest.raises(ValueError) as err:
        make_scheduler(SD15, "foo")
    assert str(err.value) == ("scheduler: unknown 'foo'; known: ddim, dpmpp_2m, dpmpp_2m_karras, euler, euler_a, heun, "
                              "lcm, lms, pndm, tcd, unipc")


def test_unsupported_class_name():
    with pytest.raises(ValueError, match="_class_name='KDPM2DiscreteScheduler'"):
        make_scheduler({**SD15, "_class_name": "KDPM2DiscreteScheduler"})
    with pytest.raises(ValueError, match="_class_name=None"):
        make_scheduler({k: v for k, v in SD15.items() if k != "_class_name"})


@pytest.mark.parametrize("name,key,value", [
    ("pndm", "timestep_spacing", "karras"),
    ("ddim", "beta_schedule", "sigmoid"),
    ("pndm", "prediction_type", "sample"),
    ("euler_a", "prediction_type", "sample"),
    ("euler", "use_beta_sigmas", True),
    ("lms", "use_beta_sigmas", True),
    ("heun", "use_beta_sigmas", True),
    ("unipc", "solver_order", 4),
    ("unipc", "use_flow_sigmas", True),
    ("unipc", "solver_type", "bh3"),
    ("lms", "prediction_type", "original_sample"),
    ("euler", "interpolation_type", "cubic"),
    ("euler", "final_sigmas_type", "last"),
    ("dpmpp_2m", "final_sigmas_type", "max"),
    ("dpmpp_2m", "use_lu_lambdas", True),
    ("dpmpp_2m", "use_flow_sigmas", True),
    ("dpmpp_2m", "use_beta_sigmas", True),
    ("dpmpp_2m", "prediction_type", "flow_prediction"),
    ("dpmpp_2m", "use_dynamic_shifting", True),
])
def test_unsupported_setting_names_key_and_value(name, key, value):
    with pytest.raises(ValueError) as err:
        make_scheduler({**SD15, key: value}, name)
    assert f"{key}={value!r}" in str(err.value)


@pytest.mark.parametrize("key,value", [("algorithm_type", "sde-dpmsolver++"), ("solver_order", 3)])
def test_unsupported_dpm_settings_by_class_name(key, value):
    with pytest.raises(ValueError) as err:
        make_scheduler({**SD15, "_class_name": "DPMSolverMultistepScheduler", key: value})
    assert f"{key}={value!r}" in str(err.value)


def test_dpmpp_2m_overrides_config():
    config = {**SD15, "_class_name": "DPMSolverMultistepScheduler", "algorithm_type": "sde-dpmsolver++",
              "solver_order": 3, "use_karras_sigmas": True}
    scheduler = make_scheduler(config, "dpmpp_2m")
    assert (scheduler.config.algorithm_type, scheduler.config.solver_order) == ("dpmsolver++", 2)
    assert not scheduler.config.use_karras_sigmas
    assert make_scheduler(config, "dpmpp_2m_karras").config.use_karras_sigmas


def test_trained_betas_length_must_match():
    with pytest.raises(ValueError, match="trained_betas has 10 entries but num_train_timesteps=1000"):
        make_scheduler({**SD15, "trained_betas": [0.01] * 10}, "ddim")


def test_bad_steps_and_order_of_calls():
    scheduler = make_scheduler(SD15, "ddim")
    with pytest.raises(ValueError, match="set_timesteps"):
        scheduler.step(np.zeros(SHAPE, np.float32), 1.0, np.zeros(SHAPE, np.float32))
    with pytest.raises(ValueError, match="num_inference_steps"):
        scheduler.set_timesteps(0)
    with pytest.raises(ValueError, match="num_inference_steps"):
        scheduler.set_timesteps(1001)


def test_runtime_schedulers_is_torch_free():
    code = ("import sys, fashiongen.runtime.schedulers; bad = [m for m in ('torch', 'diffusers', 'transformers') "
            "if m in sys.modules]; print(*bad); sys.exit(1 if bad else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=str(Path(__file__).resolve().parents[1]))
    assert result.returncode == 0, result.stdout + result.stderr

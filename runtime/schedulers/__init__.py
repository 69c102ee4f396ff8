"""Diffusion schedulers in pure numpy, step for step what diffusers' schedulers compute.

One interface (:class:`Scheduler`): ``set_timesteps(n)``, then for every ``t`` in ``timesteps``:
``x_in = scale_model_input(x, t)``, ``eps = model(x_in, t)``, ``x = step(eps, t, x, generator)``.
Per-run state (step index, multistep history) lives on the instance and ``set_timesteps`` resets it.

Every class is built from a diffusers ``scheduler_config.json`` dict the way diffusers'
``XScheduler.from_config(config)`` builds it, into its typed config (``Scheduler.Config``): keys the class
does not know are ignored, missing keys take diffusers' defaults. A setting value this package does not
implement raises ``ValueError`` naming the key and the value; nothing is silently ignored. Numerics mirror
diffusers': the schedule tables in float32 as torch makes them, per-step scalars in float32, the same order
of operations.

The families: ``common`` (settings, schedule and sigma helpers, the interface), ``pndm``, ``ddim``,
``euler`` (the sigma-parameterised Euler, Euler ancestral, LMS and Heun), ``multistep`` (DPM-Solver++
and UniPC) and ``consistency`` (the few-step LCM and TCD samplers of consistency-distilled models).
"""

from __future__ import annotations

from ..errors import InputError
from .common import Scheduler, SchedulerConfig, torch_linspace_f32
from .consistency import LCMScheduler, TCDScheduler
from .ddim import DDIMScheduler
from .euler import EulerAncestralDiscreteScheduler, EulerDiscreteScheduler, HeunDiscreteScheduler, LMSDiscreteScheduler
from .multistep import DPMSolverMultistepScheduler, UniPCMultistepScheduler
from .pndm import PNDMScheduler

__all__ = [
    "SCHEDULER_NAMES", "Scheduler", "SchedulerConfig", "PNDMScheduler", "DDIMScheduler", "EulerDiscreteScheduler",
    "EulerAncestralDiscreteScheduler", "LMSDiscreteScheduler", "HeunDiscreteScheduler",
    "DPMSolverMultistepScheduler", "UniPCMultistepScheduler", "LCMScheduler", "TCDScheduler", "make_scheduler", "torch_linspace_f32",
]

_BY_NAME: dict[str, tuple[type[Scheduler], dict]] = {
    "pndm": (PNDMScheduler, {}),
    "ddim": (DDIMScheduler, {}),
    "euler": (EulerDiscreteScheduler, {}),
    "euler_a": (EulerAncestralDiscreteScheduler, {}),
    "lms": (LMSDiscreteScheduler, {}),
    "heun": (HeunDiscreteScheduler, {}),
    "unipc": (UniPCMultistepScheduler, {}),
    "lcm": (LCMScheduler, {}),
    "tcd": (TCDScheduler, {}),
    "dpmpp_2m": (DPMSolverMultistepScheduler,
                 {"algorithm_type": "dpmsolver++", "solver_order": 2, "use_karras_sigmas": False}),
    "dpmpp_2m_karras": (DPMSolverMultistepScheduler,
                        {"algorithm_type": "dpmsolver++", "solver_order": 2, "use_karras_sigmas": True}),
}
SCHEDULER_NAMES: tuple[str, ...] = tuple(sorted(_BY_NAME))
_BY_CLASS_NAME = {cls.__name__: cls for cls, _ in _BY_NAME.values()}


def make_scheduler(config: dict, name: str | None = None, eta: float | None = None) -> Scheduler:
    """The scheduler ``name`` (one of ``SCHEDULER_NAMES``) built from a diffusers scheduler config dict,
    as ``XScheduler.from_config(config)`` builds it; with ``name=None`` the class ``config["_class_name"]``
    names, with the config's own settings. ``eta``: TCD's gamma (diffusers' pipelines' ``eta``), None for its
    default; any other scheduler refuses it rather than silently ignoring it.
    """
    if not isinstance(config, dict):
        raise ValueError(f"scheduler config must be a dict, got {type(config).__name__}")
    if name is None:
        class_name = config.get("_class_name")
        if class_name not in _BY_CLASS_NAME:
            raise InputError(f"scheduler: the checkpoint's scheduler config _class_name={class_name!r} is not "
                             f"supported (known: {', '.join(sorted(_BY_CLASS_NAME))}); name one of "
                             f"{', '.join(SCHEDULER_NAMES)}")
        cls, overrides = _BY_CLASS_NAME[class_name], {}
    elif name not in _BY_NAME:
        raise InputError(f"scheduler: unknown {name!r}; known: {', '.join(SCHEDULER_NAMES)}")
    else:
        cls, overrides = _BY_NAME[name]
    if eta is not None:
        if cls is not TCDScheduler:
            raise InputError(f"eta: only the tcd scheduler takes it (this request's scheduler is {cls.name})")
        overrides = {**overrides, "gamma": eta}
    return cls(config, **overrides)

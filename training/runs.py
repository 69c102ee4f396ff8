"""What every trainer here shares: a run folder with checkpoints that resume exactly, deterministic batches
and noise, the optimisation step (``accelerate`` for devices, mixed precision and gradient accumulation),
EMA, and a progress bar with the loss.

Exact resume by construction: the data order of each epoch and the noise of each step are drawn from
generators seeded by (seed, epoch) and (seed, step), not from a stream that runs through the whole run, so
a run resumed at step N draws what an uninterrupted one draws at step N. A checkpoint holds the weights
(safetensors), the optimizer's and EMA's state (tensors and numbers, read back with
``torch.load(weights_only=True)``) and the losses so far; it is written beside its final name and renamed,
and the previous one is deleted only after, so an interrupted run always keeps its last good checkpoint.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from fashiongen.runtime.errors import InputError
from fashiongen.runtime.files import atomic_file

from .options import Schedule

RUN_FILE = "run.json"
CHECKPOINTS = "checkpoints"


def step_generator(seed: int, step: int, micro: int = 0) -> torch.Generator:
    """The noise of one micro-batch of one step: the same on a resumed run as on an uninterrupted one."""
    return torch.Generator().manual_seed(_derived_seed(seed, step, micro))


def _derived_seed(*key: int) -> int:
    return int(np.random.SeedSequence(list(key)).generate_state(1)[0])


@dataclass
class RunFolder:
    """A training run's folder: ``run.json`` (what defines the run), ``checkpoints/step-NNNNNNN/``, the output.

    ``identity`` is everything that must match for a resume to continue the same run (data, base model,
    hyper-parameters); a resume that differs is refused naming the first field that does.
    """

    out: Path
    identity: dict
    losses: list[float] = field(default_factory=list)
    begun: bool = False

    def begin(self, resume: bool) -> Path | None:
        """Check the folder for a new run or a resume; return the checkpoint to resume from (or None).

        A trainer may call it before :func:`train` (which calls it again, then only returning the checkpoint),
        so that a wrong ``--out`` or ``--resume`` fails before a slow preparation such as caching latents.
        """
        if not self.begun:
            self._prepare(resume)
            self.begun = True
        return self.latest()

    def _prepare(self, resume: bool) -> None:
        self.out = Path(self.out)
        run_file = self.out / RUN_FILE
        identity = json.loads(json.dumps(self.identity, default=str))
        if resume:
            if not run_file.is_file():
                raise InputError(f"--resume: '{self.out}' holds no run to resume ({RUN_FILE} missing)")
            saved = json.loads(run_file.read_text())
            for key in sorted(set(saved) | set(identity)):
                if saved.get(key) != identity.get(key):
                    raise InputError(f"--resume: '{self.out}' is another run: {key} was {saved.get(key)!r}, "
                                     f"now {identity.get(key)!r}")
            return
        if self.out.exists() and any(self.out.iterdir()):
            hint = " (add --resume to continue it)" if run_file.is_file() else ""
            raise InputError(f"--out: '{self.out}' exists and is not empty{hint}")
        self.out.mkdir(parents=True, exist_ok=True)
        with atomic_file(run_file) as tmp:
            tmp.write_text(json.dumps(identity, indent=2, sort_keys=True))

    def latest(self) -> Path | None:
        found = sorted((self.out / CHECKPOINTS).glob("step-*[0-9]"))
        return found[-1] if found else None

    def save(self, step: int, modules: dict[str, torch.nn.Module], states: dict[str, dict]) -> Path:
        """Write checkpoint ``step`` (modules as safetensors, other states as tensors and numbers), then drop
        older ones."""
        from safetensors.torch import save_model

        target = self.out / CHECKPOINTS / f"step-{step:07d}"
        stage = target.with_name(target.name + ".partial")
        shutil.rmtree(stage, ignore_errors=True)
        stage.mkdir(parents=True)
        for name, module in modules.items():  # save_model: tied weights (BLIP's decoder and embeddings) once
            save_model(module, str(stage / f"{name}.safetensors"))
        torch.save(states, stage / "state.pt")
        (stage / "progress.json").write_text(json.dumps({"step": step, "losses": self.losses}))
        stage.rename(target)
        for old in sorted((self.out / CHECKPOINTS).glob("step-*[0-9]"))[:-1]:
            shutil.rmtree(old)
        return target

    def load(self, checkpoint: Path, modules: dict[str, torch.nn.Module]) -> tuple[int, dict]:
        """Restore ``modules`` in place; return the step and the other states."""
        from safetensors.torch import load_model

        for name, module in modules.items():
            load_model(module, str(checkpoint / f"{name}.safetensors"))  # copied onto the module's device
        progress = json.loads((checkpoint / "progress.json").read_text())
        self.losses = progress["losses"]
        return progress["step"], torch.load(checkpoint / "state.pt", weights_only=True)


def make_accelerator(schedule: Schedule):
    """accelerate's Accelerator: the GPU(s) where there are any, else the CPU; mixed precision as asked."""
    from accelerate import Accelerator

    if schedule.mixed_precision == "fp16" and not torch.cuda.is_available():
        raise InputError("--mixed-precision fp16: needs a GPU; use bf16 or no on a CPU")
    return Accelerator(mixed_precision=schedule.mixed_precision, cpu=not torch.cuda.is_available())


def train(run: RunFolder, schedule: Schedule, trainable: dict[str, torch.nn.Module], loss_fn: Callable,
          resume: bool, progress: bool = True, params: list | None = None, on_step: Callable | None = None,
          description: str = "training") -> list[float]:
    """The loop every trainer shares: AdamW on ``params`` (default: every parameter of ``trainable``; or AdamW's
    parameter groups, dicts with ``params`` and a ``lr_scale`` of the schedule's rate),
    ``loss_fn(step, micro, generator) -> loss`` summed over the micro-batches of a step, gradient clipping,
    the learning-rate schedule (warm-up, cosine), EMA of ``trainable`` if asked, a checkpoint every ``checkpoint_every`` steps and at the end.

    ``on_step(step)`` runs after each optimizer step (textual inversion restores the frozen rows there).
    Returns the loss of every step, the resumed ones included.
    """
    from tqdm.auto import tqdm

    accelerator = make_accelerator(schedule)
    params = params if params is not None else [p for m in trainable.values() for p in m.parameters()
                                                if p.requires_grad]
    groups = params if params and isinstance(params[0], dict) else [{"params": params}]
    groups = [{**{k: v for k, v in g.items() if k != "lr_scale"},
               "lr": schedule.learning_rate * g.get("lr_scale", 1.0)} for g in groups]
    params = [p for g in groups for p in g["params"]]
    optimizer = torch.optim.AdamW(groups, lr=schedule.learning_rate, weight_decay=1e-2)
    warmup = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule.lr_factor)
    ema = _ema(trainable, schedule.ema_decay)
    for module in trainable.values():
        module.to(accelerator.device).train()
    start = 0
    checkpoint = run.begin(resume)
    if checkpoint is not None:
        start, states = run.load(checkpoint, trainable)
        optimizer.load_state_dict(states["optimizer"])
        warmup.load_state_dict(states["warmup"])
        for name, shadow in ema.items():
            shadow.load_state_dict(states["ema"][name])
    bar = tqdm(total=schedule.steps, initial=start, desc=description, disable=not progress, unit="step")
    for step in range(start, schedule.steps):
        optimizer.zero_grad(set_to_none=True)
        total = 0.0
        for micro in range(schedule.gradient_accumulation):
            # dropout and drop-path draw from torch's global generator: seeded per micro-batch, so they resume too
            torch.manual_seed(_derived_seed(schedule.seed, step, micro, 1))
            with accelerator.autocast():
                loss = loss_fn(step, micro, step_generator(schedule.seed, step, micro))
            accelerator.backward(loss / schedule.gradient_accumulation)
            total += float(loss.detach()) / schedule.gradient_accumulation
        if not np.isfinite(total):
            raise RuntimeError(f"{description}: the loss is {total} at step {step}; lower --learning-rate")
        if schedule.max_grad_norm:
            accelerator.clip_grad_norm_(params, schedule.max_grad_norm)
        optimizer.step()
        warmup.step()
        if on_step is not None:
            on_step(step)
        for name, shadow in ema.items():
            shadow.step(trainable[name].parameters())
        run.losses.append(total)
        bar.update(1)
        bar.set_postfix(loss=f"{total:.4f}")
        done = step + 1
        if done % schedule.checkpoint_every == 0 or done == schedule.steps:
            run.save(done, trainable, {"optimizer": optimizer.state_dict(), "warmup": warmup.state_dict(),
                                       "ema": {n: e.state_dict() for n, e in ema.items()}})
    bar.close()
    for name, shadow in ema.items():  # the output carries the averaged weights
        shadow.copy_to(trainable[name].parameters())
    for module in trainable.values():
        module.eval()
    return run.losses


def _ema(trainable: dict[str, torch.nn.Module], decay: float | None) -> dict:
    if decay is None:
        return {}
    from diffusers.training_utils import EMAModel

    return {name: EMAModel(module.parameters(), decay=decay) for name, module in trainable.items()}

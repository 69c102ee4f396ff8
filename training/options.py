"""The options every training command shares, torch-free so that ``fashiongen --help`` stays fast."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fashiongen.runtime.errors import InputError


@dataclass
class Schedule:
    """How long and how hard: the numbers every trainer takes from its command line."""

    steps: int
    batch_size: int
    learning_rate: float
    gradient_accumulation: int = 1
    checkpoint_every: int = 500
    seed: int = 0
    mixed_precision: str = "no"  # "no", "fp16", "bf16" (accelerate's names)
    ema_decay: float | None = None
    max_grad_norm: float | None = 1.0
    warmup_steps: int = 0
    lr_schedule: str = "constant"  # or "cosine": from the learning rate down to 0 at the last step

    def lr_factor(self, step: int) -> float:
        """The learning rate's multiplier at optimizer step ``step`` (0-based): linear warm-up, then constant
        or half a cosine to 0 at ``steps`` (so a resume that extends --steps changes the remaining curve)."""
        factor = min(1.0, (step + 1) / self.warmup_steps) if self.warmup_steps else 1.0
        if self.lr_schedule == "cosine" and step >= self.warmup_steps:
            progress = (step - self.warmup_steps) / max(1, self.steps - self.warmup_steps)
            factor *= 0.5 * (1.0 + np.cos(np.pi * min(1.0, progress)))
        return float(factor)

    def check(self) -> None:
        for name in ("steps", "batch_size", "gradient_accumulation", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise InputError(f"--{name.replace('_', '-')}: must be at least 1, got {getattr(self, name)}")
        if not (self.learning_rate > 0 and np.isfinite(self.learning_rate)):
            raise InputError(f"--learning-rate: must be a positive number, got {self.learning_rate}")
        if self.ema_decay is not None and not 0 < self.ema_decay < 1:
            raise InputError(f"--ema-decay: must be between 0 and 1, got {self.ema_decay}")


def add_schedule_arguments(p, steps: int, batch_size: int, learning_rate: float, checkpoint_every: int = 500) -> None:
    """The command-line options of :class:`Schedule`, defined once for every training command."""
    p.add_argument("--steps", type=int, default=steps, help=f"optimizer steps (default {steps})")
    p.add_argument("--batch-size", type=int, default=batch_size, help=f"images a micro-batch (default {batch_size})")
    p.add_argument("--gradient-accumulation", type=int, default=1,
                   help="micro-batches summed into one optimizer step (default 1)")
    p.add_argument("--learning-rate", type=float, default=learning_rate, help=f"AdamW learning rate (default "
                   f"{learning_rate:g})")
    p.add_argument("--warmup-steps", type=int, default=0, help="linear learning-rate warm-up (default 0)")
    p.add_argument("--lr-schedule", choices=("constant", "cosine"), default="constant",
                   help="after the warm-up: keep the learning rate, or decay it along a cosine to 0 at the last "
                        "step (default constant)")
    p.add_argument("--seed", type=int, default=0, help="seeds the weights' initialisation, data order and noise")
    p.add_argument("--mixed-precision", choices=("no", "fp16", "bf16"), default="no",
                   help="autocast precision through accelerate (fp16 needs a GPU; default no)")
    p.add_argument("--checkpoint-every", type=int, default=checkpoint_every,
                   help=f"write a resumable checkpoint every N steps (default {checkpoint_every})")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    add_progress_argument(p)


def add_progress_argument(p) -> None:
    """``--no-progress``, every command's (the command line's too: this module is torch-free and the layer below
    it)."""
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def schedule_from_args(args, ema_decay: float | None = None) -> Schedule:
    schedule = Schedule(steps=args.steps, batch_size=args.batch_size, learning_rate=args.learning_rate,
                        gradient_accumulation=args.gradient_accumulation, checkpoint_every=args.checkpoint_every,
                        seed=args.seed, mixed_precision=args.mixed_precision, ema_decay=ema_decay,
                        warmup_steps=args.warmup_steps, lr_schedule=args.lr_schedule)
    schedule.check()
    return schedule


def step_batch(count: int, schedule, step: int, micro: int) -> np.ndarray:
    """The example indices of micro-batch ``micro`` of ``step`` (of ``count`` examples): a resumed run draws
    the same ones."""
    size = schedule.batch_size
    return batch_indices(count, size, (step * schedule.gradient_accumulation + micro) * size, schedule.seed)


def batch_indices(count: int, batch_size: int, position: int, seed: int) -> np.ndarray:
    """The ``batch_size`` examples at sample ``position`` of the run: each epoch a fresh permutation of
    ``count`` examples drawn from (seed, epoch), so any position can be found again without replaying."""
    out = []
    while len(out) < batch_size:
        epoch, offset = divmod(position, count)
        order = np.random.default_rng([seed, epoch]).permutation(count)
        take = order[offset:offset + batch_size - len(out)]
        out.extend(take.tolist())
        position += len(take)
    return np.asarray(out)

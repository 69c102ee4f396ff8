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
    p.add_argument("--seed", type=int, default=0, help="seeds the weights' initialisation, data order and noise")
    p.add_argument("--mixed-precision", choices=("no", "fp16", "bf16"), default="no",
                   help="autocast precision through accelerate (fp16 needs a GPU; default no)")
    p.add_argument("--checkpoint-every", type=int, default=checkpoint_every,
                   help=f"write a resumable checkpoint every N steps (default {checkpoint_every})")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def schedule_from_args(args, ema_decay: float | None = None) -> Schedule:
    schedule = Schedule(steps=args.steps, batch_size=args.batch_size, learning_rate=args.learning_rate,
                        gradient_accumulation=args.gradient_accumulation, checkpoint_every=args.checkpoint_every,
                        seed=args.seed, mixed_precision=args.mixed_precision, ema_decay=ema_decay,
                        warmup_steps=args.warmup_steps)
    schedule.check()
    return schedule

"""Per-stage wall-clock timings of a pipeline run (text encoder, each UNet step, VAE decode...)."""
from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from statistics import median


@dataclass
class StageTimings:
    """Seconds spent per stage; a stage run several times (the UNet) keeps every duration."""

    stages: dict[str, list[float]] = field(default_factory=dict)

    @contextmanager
    def measure(self, stage: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.stages.setdefault(stage, []).append(time.perf_counter() - start)

    def total(self, stage: str) -> float:
        return sum(self.stages.get(stage, ()))

    def rows(self) -> list[tuple[str, int, float, float]]:
        """(stage, calls, total seconds, median seconds per call) in the order stages first ran."""
        return [(name, len(v), sum(v), median(v)) for name, v in self.stages.items()]

    def table(self) -> str:
        lines = ["| stage | calls | total s | median s/call |", "| --- | ---: | ---: | ---: |"]
        lines += [f"| {n} | {c} | {t:.3f} | {m:.4f} |" for n, c, t, m in self.rows()]
        return "\n".join(lines)

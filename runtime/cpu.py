"""What the runtime asks of the CPU it runs on: how many threads, which instruction sets, and the one
warm-up call that moves a network's first-call costs out of the first request. Shared by every in-process
backend (ONNX Runtime, OpenVINO) and the benches."""
from __future__ import annotations

import os


def warm_up(engine) -> None:
    """One call at a tiny shape right after loading. Why: a network's first real call otherwise pays for
    weight repacking and first-touch memory (on the SD 1.5 UNet, about twice a steady call on ONNX Runtime and
    several times on OpenVINO's INT8), so a server's first request and a one-shot command's single VAE and
    segmenter calls would carry it. Only an optimization: a network that refuses the tiny shape (a custom
    architecture) just starts cold, and any real problem shows on its first call."""
    try:
        engine.run(engine.contract.warmup_feeds(engine.dims))
    except Exception:  # noqa: BLE001 (see above)
        pass


def default_threads() -> int:
    """Physical cores, as far as we can tell: extra SMT threads slow ONNX Runtime's conv kernels."""
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


def cpu_flags() -> str:
    """The machine and its instruction-set flags line (x86 ``flags``, Arm ``Features``; empty where unknown)."""
    import platform

    flags = platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            flags += next((line for line in f if line.startswith(("flags", "Features"))), "")
    except OSError:
        pass
    return flags


def cpu_fingerprint() -> str:
    """A short hash of the CPU's instruction-set flags: a saved optimized graph holds kernels laid out for them
    (NCHWc blocks of 16 with AVX-512, 8 with AVX2), so a folder moved to another CPU must not reuse it."""
    import hashlib

    return hashlib.sha256(cpu_flags().encode()).hexdigest()[:8]

"""Fast modes (``generate --fast NAME``): networks of an engine folder replaced by faster variants.

The exact mode runs the exported fp32 networks (parity with diffusers). A fast mode swaps some of them
for variants written into the same folder and listed in the manifest's ``variants`` section, e.g.
``int8``: the UNet quantized to INT8 by NNCF from calibration inputs recorded on real denoising
trajectories (``fashiongen quantize``), an OpenVINO IR that only the OpenVINO backend runs. The pipeline
code does not change: it gets an :class:`~runtime.engines.EngineSet` whose files point at the variants.
"""
from __future__ import annotations

from .manifest import Manifest

FAST_MODES = {
    "int8": "UNet quantized to INT8 (NNCF post-training, calibrated on recorded denoising trajectories)",
    "deepcache": "DeepCache: the UNet's deep features computed every N-th step only (any backend)",
}

# What writes each fast mode into an engine folder, for error messages.
HOW_TO_MAKE = {"int8": "fashiongen quantize --engines DIR",
               "deepcache": "fashiongen deepcache --model CHECKPOINT --engines DIR"}


def variant_files(manifest: Manifest, backend: str, fast: str | None, engine_dir: str = "the engine folder") -> dict:
    """``{network: file}`` for ``fast`` on ``backend``; ``{}`` for the exact mode. ValueError, naming the mode,
    the backend and the fix, when the folder lacks the mode or the backend cannot run it."""
    if fast is None or fast in ("", "none", "exact"):
        return {}
    if fast not in FAST_MODES:
        raise ValueError(f"--fast must be one of {', '.join(FAST_MODES)} (got {fast!r})")
    networks = manifest.variants.get(fast)
    if not networks:
        raise ValueError(f"--fast {fast}: {engine_dir} has no {fast} networks; write them with "
                         f"`{HOW_TO_MAKE[fast]}`")
    files = {}
    for network, entry in networks.items():
        if not isinstance(entry, dict):  # a setting of the mode (e.g. deepcache's interval), not a network
            continue
        if entry.get("backend") not in (None, backend):
            raise ValueError(f"--fast {fast} is not available on --backend {backend}: its {network} is "
                             f"{entry.get('format', 'a model')} that runs on --backend {entry['backend']} only "
                             f"(use --backend {entry['backend']}, or drop --fast for the exact fp32 mode)")
        files[network] = entry["file"]
    return files


def deepcache_interval(manifest: Manifest, fast: str | None) -> int | None:
    """Full UNet every this many steps under ``--fast deepcache``; None for other modes."""
    if fast != "deepcache":
        return None
    return int(manifest.variants["deepcache"]["interval"])

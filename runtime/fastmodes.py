"""Fast modes (``generate --fast MODE[,MODE]``): networks of an engine folder replaced by faster variants.

The exact mode runs the exported fp32 networks (parity with diffusers). A fast mode swaps some of them
for variants written into the same folder and listed in the manifest's ``variants`` section:

- ``int8``: the UNet, DeepCache's two parts and the VAE decoder quantized to INT8 by NNCF from
  calibration inputs recorded on real denoising trajectories (``fashiongen quantize``); OpenVINO IR files
  that only the OpenVINO backend runs;
- ``deepcache``: the UNet split into a capture part (whole UNet, keeps its deep features) and a shallow
  part that reuses them on the steps in between (``fashiongen deepcache``); ONNX, any backend.

Modes combine (``--fast deepcache,int8``): the structural mode picks which networks run, the precision mode
then replaces each of those it has a variant for. The pipeline code does not change: it gets an
:class:`~runtime.engines.EngineSet` whose files point at the variants.
"""
from __future__ import annotations

import warnings

from .errors import InputError
from .manifest import Manifest

FAST_MODES = {  # in the order they are applied: a later mode's file for a network replaces an earlier one's
    "deepcache": "DeepCache: the UNet's deep features computed every N-th step only (any backend)",
    "int8": "UNet, DeepCache parts and VAE decoder quantized to INT8 (NNCF post-training, calibrated "
            "on recorded denoising trajectories; backend openvino)",
}

# What writes each fast mode into an engine folder, for error messages.
HOW_TO_MAKE = {"int8": "fashiongen quantize --engines DIR",
               "deepcache": "fashiongen deepcache --model CHECKPOINT --engines DIR"}


def parse_fast(fast: str | None) -> tuple[str, ...]:
    """``"deepcache,int8"`` → ``("deepcache", "int8")`` in application order; ``()`` for the exact mode."""
    if fast is None or fast.strip() in ("", "none", "exact"):
        return ()
    modes = [m.strip() for m in fast.split(",")]
    for mode in modes:
        if mode not in FAST_MODES:
            raise InputError(f"fast: must be one or more of {', '.join(FAST_MODES)}, comma-separated (got {fast!r})")
    return tuple(m for m in FAST_MODES if m in modes)


def variant_files(manifest: Manifest, backend: str, fast: str | None, engine_dir: str = "the engine folder") -> dict:
    """``{network: file}`` for ``fast`` on ``backend``; ``{}`` for the exact mode. InputError, naming the mode,
    the backend and the fix, when the folder lacks the mode or the backend cannot run it."""
    modes = parse_fast(fast)
    files = {}
    for mode in modes:
        networks = manifest.variant_networks(mode)
        if not networks:
            raise InputError(f"fast: {engine_dir} has no {mode} networks; write them with `{HOW_TO_MAKE[mode]}`")
        for network, entry in networks.items():
            if entry.get("backend") not in (None, backend):
                raise InputError(f"fast: {mode} is not available on backend {backend}: its {network} is "
                                 f"{entry.get('format', 'a model')} that runs on backend {entry['backend']} only "
                                 f"(choose backend {entry['backend']}, or no fast mode for the exact fp32 one)")
            files[network] = entry["file"]
    if "int8" not in modes:
        return files
    if not has_int8_dot_product():
        warnings.warn("fast int8: this CPU has no INT8 dot-product instructions (AVX-512 VNNI, AVX-VNNI or AMX): "
                      "INT8 networks may run slower than fp32 and less accurately here (measured on an AVX2-only AMD "
                      "EPYC: the INT8 UNet step 3.1 s against 2.4 s in fp32, the image 26 dB from the exact one "
                      "against 36 dB on a VNNI CPU); fast mode deepcache alone is the one for it")
    # The UNet networks this run uses must all be INT8, not silently fp32.
    needed = ("unet_capture", "unet_shallow") if "deepcache" in modes else ("unet",)
    missing = [n for n in needed if n not in manifest.variant_networks("int8")]
    if missing:
        raise InputError(f"fast: {fast}: {engine_dir} has no INT8 {' and '.join(missing)}; run "
                         f"`{HOW_TO_MAKE['int8']} --networks {','.join(missing)}`")
    return files


def has_int8_dot_product() -> bool:
    """Whether the CPU multiplies INT8 with dedicated dot-product instructions (what makes INT8 pay on x86);
    True where the flags cannot be read (not x86 Linux: no claim either way)."""
    from .cpu import cpu_flags

    flags = cpu_flags()
    if " avx2" not in flags:  # not an x86 flags line
        return True
    return any(f" {name}" in flags for name in ("avx512_vnni", "avx_vnni", "amx_int8"))


def deepcache_interval(manifest: Manifest, fast: str | None, override: int | None = None) -> int | None:
    """Full UNet every this many calls when ``fast`` includes deepcache (None otherwise): ``override`` when
    given, else the interval the folder's DeepCache parts were exported with. The parts do not depend on it,
    so any interval runs on them: larger is faster and further from the exact image."""
    if "deepcache" not in parse_fast(fast):
        if override is not None:
            raise InputError("deepcache_interval: needs the deepcache fast mode")
        return None
    if override is None:
        return int(manifest.variants["deepcache"].settings["interval"])
    if isinstance(override, bool) or not isinstance(override, int) or override < 2:
        raise InputError(f"deepcache_interval: must be an integer >= 2 (got {override!r})")
    return override

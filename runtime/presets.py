"""``--preset fast``: few-step LCM sampling, with the settings the folder's UNet was made for.

A UNet samples well in 4 steps only if it was consistency-distilled: an LCM-LoRA merged at export
(``fashiongen export --lcm-lora FILE``), an LCM-distilled UNet (its guidance embedding, ``time_cond_proj_dim``,
e.g. SimianLuo/LCM_Dreamshaper_v7), or a checkpoint saved with an ``LCMScheduler`` config (an LCM-LoRA fused
before export). Which of these a folder holds is only known at export (a merged LoRA leaves no trace in the
weights' shapes), so export records the recommendation in the manifest (``presets.fast``); folders exported
before that are read the same way from what their manifest already says (``dims``, ``scheduler_config``).

The settings are the model authors': 4 LCM steps; guidance 1 for an LCM-LoRA (the LCM-LoRA paper and
diffusers' docs: at guidance <= 1 no classifier-free batch runs, so each step is one UNet call at batch 1);
guidance 8 for a UNet with a guidance embedding (LCM_Dreamshaper_v7's card: there the guidance is an input,
so it costs nothing, and the model was distilled for w in [2, 14]: w = 1 is outside what it learned). The tiny
VAE decoder goes with them where the folder has one (``export --tiny-vae``): at 4 steps the full decoder is
most of the time.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .contracts import GUIDANCE_DIM
from .errors import InputError
from .manifest import Manifest

PRESETS = ("fast",)
#: ``presets.default``: the folder's own sampling settings (``export --guidance``), used where a request leaves
#: them out; without one, guidance is diffusers' pipelines' 7.5. A small model trained here can want far less:
#: the demo family's product shots had the right colour 68% of the time at guidance 1.5, 25% at 7.5.
DEFAULT_PRESET = "default"
DEFAULT_GUIDANCE = 7.5
DEFAULT_IMAGE_GUIDANCE = 1.5  # diffusers' InstructPix2Pix default
FAST_STEPS = 4
LCM_LORA_GUIDANCE = 1.0
EMBEDDING_GUIDANCE = 8.0
#: What ``--preset`` may fill in, each a request field (and a flag of the same name) that overrides it.
FIELDS = ("scheduler", "steps", "guidance", "decoder")


@dataclass(frozen=True)
class Preset:
    scheduler: str
    steps: int
    guidance: float
    why: str                    # what in the folder makes its UNet LCM-capable
    decoder: str | None = None  # "tiny" where the folder has the tiny VAE; None: the request's default

    def describe(self) -> str:
        """One line: what it picked and why."""
        decoder = f", {self.decoder} decoder" if self.decoder else ""
        return (f"{self.scheduler} scheduler, {self.steps} steps, guidance {self.guidance:g}{decoder} "
                f"({self.why})")


def recommend_fast(manifest: Manifest) -> dict | None:
    """The fast preset's sampling settings for the folder ``manifest`` describes (``presets.fast`` as export
    records it), or None when its UNet is not LCM-capable. An LCM-LoRA wins over the scheduler config (it
    says more); a guidance embedding wins over both (its guidance is an input, not a batch)."""
    lcm_loras = [Path(r["file"]).name for r in manifest.source.get("loras", []) if r.get("lcm")]
    if manifest.dims.get(GUIDANCE_DIM) is not None:
        guidance, why = EMBEDDING_GUIDANCE, f"LCM-distilled UNet, {GUIDANCE_DIM}={manifest.dims[GUIDANCE_DIM]}"
    elif lcm_loras:
        guidance, why = LCM_LORA_GUIDANCE, f"LCM-LoRA {', '.join(lcm_loras)} merged at export"
    elif manifest.scheduler_config.get("_class_name") == "LCMScheduler":
        guidance, why = LCM_LORA_GUIDANCE, "the checkpoint's scheduler config is LCMScheduler"
    else:
        return None
    return {"scheduler": "lcm", "steps": FAST_STEPS, "guidance": guidance, "why": why}


def default_guidance(manifest: Manifest) -> float:
    """The guidance a request without one gets: the folder's recorded scale, else :data:`DEFAULT_GUIDANCE`."""
    return float(manifest.presets.get(DEFAULT_PRESET, {}).get("guidance", DEFAULT_GUIDANCE))


def default_image_guidance(manifest: Manifest) -> float:
    """An edit's image guidance when the request has none: the pix2pix folder's recorded scale (``export
    --image-guidance``), else :data:`DEFAULT_IMAGE_GUIDANCE`."""
    return float(manifest.presets.get(DEFAULT_PRESET, {}).get("image_guidance", DEFAULT_IMAGE_GUIDANCE))


def fast_settings(manifest: Manifest) -> dict | None:
    """The fast preset's sampling settings as the folder records them (or, for a folder exported before they were
    recorded, the same recommendation); None where its UNet is not LCM-capable."""
    return manifest.presets.get("fast") or recommend_fast(manifest)


def fast_preset(manifest: Manifest, engine_dir: Path | str) -> Preset:
    """The fast preset of an engine folder (:func:`fast_settings`), with the tiny decoder where it has one. A
    folder whose UNet is not LCM-capable is refused: 4 LCM steps of a plain UNet give noise, and silently running
    its slow default would not be what ``fast`` asked for."""
    settings = fast_settings(manifest)
    if settings is None:
        raise InputError(f"preset: '{engine_dir}' has no LCM-capable UNet (no LoRA merged with `fashiongen export "
                         f"--lcm-lora`, no {GUIDANCE_DIM} guidance embedding, no LCMScheduler config), so "
                         "`fast` has nothing to run; export the checkpoint with --lcm-lora FILE")
    decoder = "tiny" if "vae_decoder_tiny" in manifest.networks else None
    return Preset(**{**settings, "decoder": decoder})


def resolve_preset(name: str, manifest: Manifest, engine_dir: Path | str) -> Preset:
    """The preset ``name`` (one of ``PRESETS``) of the folder."""
    if name not in PRESETS:
        raise InputError(f"preset: unknown {name!r}; known: {', '.join(PRESETS)}")
    return fast_preset(manifest, engine_dir)

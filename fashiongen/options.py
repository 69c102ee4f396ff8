"""Options that several commands share, each defined once: sampling, output, timings, the ONNX Runtime
session, catalog matching, the engine folder of the CPU commands."""
from __future__ import annotations

from pathlib import Path

from fashiongen.runtime.errors import InputError
from fashiongen.training.options import add_progress_argument


def add_sampling_arguments(p, steps: int, images_help: str, guidance_help: str = "classifier-free guidance scale",
                           guidance: float | None = 7.5) -> None:
    """Seed, steps, guidance, scheduler (and TCD's eta), decoder, ``--preset``, images and output. Steps,
    guidance, scheduler and decoder default to None here so that :func:`settle_sampling` can tell the user's
    own values (which win) from the ones ``--preset`` or the command fills in. ``guidance=None``: the pipeline
    fills it in from the engine folder (``export --guidance``)."""
    from fashiongen.runtime.presets import DEFAULT_GUIDANCE, EMBEDDING_GUIDANCE, FAST_STEPS, PRESETS
    from fashiongen.runtime.schedulers import SCHEDULER_NAMES

    p.add_argument("--seed", type=int, default=0, help="random seed (default 0); same seed, same image")
    p.add_argument("--steps", type=int, default=None, help=f"denoising steps (default {steps})")
    default = (f"default {guidance:g}" if guidance is not None else "default: the scale the engine folder "
               f"records (`fashiongen export --guidance`), else {DEFAULT_GUIDANCE:g}")
    p.add_argument("--guidance", type=float, default=None,
                   help=f"{guidance_help} ({default}); at 1 or below no guidance batch runs (one UNet call a step at "
                   "batch 1), as in diffusers")
    p.add_argument("--scheduler", default=None,
                   help=f"{', '.join(SCHEDULER_NAMES)} (default: the checkpoint's own, with all its settings)")
    p.add_argument("--eta", type=float, default=None,
                   help="the tcd scheduler's gamma, 0 to 1 (default 0.3; 0: deterministic; diffusers' pipelines "
                   "call it eta); refused with any other scheduler")
    p.add_argument("--decoder", choices=("full", "tiny"), default=None,
                   help="the VAE that turns latents into pixels (and, for edit, the input image into latents): full, "
                   "or tiny (TAESD, added by `fashiongen export --tiny-vae`; faster, slightly softer). Default: full, "
                   "or the only one the engine folder has")
    p.add_argument("--preset", choices=PRESETS, default=None,
                   help=f"fast: few-step sampling as the engine folder's LCM-LoRA (`fashiongen export --lcm-lora`) "
                   f"or LCM-distilled UNet was made for: the lcm scheduler, {FAST_STEPS} steps, guidance 1 for an "
                   f"LCM-LoRA (no guidance batch) or {EMBEDDING_GUIDANCE:g} for a UNet with a guidance embedding, "
                   "and the tiny decoder where the folder has one; prints what it picked. --steps, --guidance, "
                   "--scheduler and --decoder override it. A folder whose UNet is not LCM-capable is an error (a "
                   "plain UNet at 4 steps draws noise)")
    p.add_argument("--num-images", type=int, default=1, help=f"{images_help} (out-0.png, out-1.png, ...)")
    p.add_argument("--out", required=True, type=Path, help="PNG file to write")
    p.set_defaults(sampling_defaults={"steps": steps, **({"guidance": guidance} if guidance is not None else {})})
    add_timings_argument(p)


def sampling_manifest(args):
    """The manifest of ``--engines`` (None without it): a local run always reads it; with ``--server-side`` only
    ``--preset`` needs it (the server holds the networks, the preset is read from the local copy of the folder)."""
    from fashiongen.runtime.manifest import load_manifest

    if args.engines is None or (getattr(args, "server_side", False) and args.preset is None):
        return None
    return load_manifest(args.engines)


def settle_sampling(args, manifest=None, engine_dir=None) -> None:
    """Fill in the sampling options the user left out: first from ``--preset`` (read from ``manifest``, the
    folder ``engine_dir``), saying on stderr in one line what it picked, then the command's defaults."""
    import sys

    from fashiongen.runtime.presets import FIELDS, resolve_preset

    if args.preset is not None:
        if manifest is None:
            raise InputError("--preset needs --engines: the preset is read from the engine folder's manifest")
        preset = resolve_preset(args.preset, manifest, engine_dir)
        kept = [f"--{name}" for name in FIELDS if getattr(args, name) is not None]
        for name in FIELDS:
            if getattr(args, name) is None:
                setattr(args, name, getattr(preset, name))
        overridden = f"; yours: {', '.join(kept)}" if kept else ""
        print(f"fashiongen: preset {args.preset}: {preset.describe()}{overridden}", file=sys.stderr)
    for name, value in args.sampling_defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)


def add_timings_argument(p) -> None:
    p.add_argument("--timings", action="store_true", help="print per-stage timings")


def add_ort_arguments(p) -> None:
    """The ONNX Runtime session: execution providers and threads."""
    p.add_argument("--providers", default="CPUExecutionProvider",
                   help="comma-separated ONNX Runtime execution providers (default CPUExecutionProvider)")
    p.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads (default: all CPUs)")


def add_session_arguments(p) -> None:
    """The ONNX Runtime session and the progress bar of a command that runs a pipeline."""
    add_ort_arguments(p)
    add_progress_argument(p)


def add_match_argument(p, when: str = "") -> None:
    """``--match``: what of the catalog a prompt is compared with; ``when`` prefixes the help (the condition
    under which the option applies)."""
    p.add_argument("--match", choices=("both", "image", "caption"), default=None,
                   help=f"{when}compare the prompt with catalog images, their captions, or both (mean of the two "
                        "cosines; the default when the index has captions, else image)")


def add_txt2img_engines_argument(p) -> None:
    """``--engines`` of the commands that add to a txt2img engine folder (deepcache, quantize)."""
    p.add_argument("--engines", required=True, type=Path, help="txt2img engine folder from `fashiongen export`")


def write_images(images, out: Path) -> None:
    """Each image to ``out`` (one) or ``out-0.png``, ``out-1.png``... (several), atomically; say where."""
    from fashiongen.runtime.images import numbered_paths, save_png_atomic

    for image, path in zip(images, numbered_paths(out, len(images))):
        save_png_atomic(image, path)
        print(f"wrote {path}")


def flag_wording(message: str, args) -> str:
    """The command line's wording of an :class:`~fashiongen.runtime.errors.InputError`: the runtime names the
    field first (``steps: must be ...``); where the command has an option for that field (the same name, ``-``
    for ``_``), the user reads its flag there instead (``--steps: must be ...``)."""
    field, sep, rest = message.partition(": ")
    if not sep or not field.isidentifier() or field not in vars(args):
        return message
    return f"{'-' if len(field) == 1 else '--'}{field.replace('_', '-')}: {rest}"

"""Options that several commands share (generate, edit): sampling, output, and the ONNX Runtime session."""
from __future__ import annotations

from pathlib import Path


def add_sampling_arguments(p, steps: int, images_help: str) -> None:
    from fashiongen.runtime.schedulers import SCHEDULER_NAMES

    p.add_argument("--seed", type=int, default=0, help="random seed (default 0); same seed, same image")
    p.add_argument("--steps", type=int, default=steps, help=f"denoising steps (default {steps})")
    p.add_argument("--scheduler", default=None,
                   help=f"{', '.join(SCHEDULER_NAMES)} (default: the checkpoint's own, with all its settings)")
    p.add_argument("--decoder", choices=("full", "tiny"), default=None,
                   help="the VAE that turns latents into pixels (and, for edit, the input image into latents): full, "
                   "or tiny (TAESD, added by `fashiongen export --tiny-vae`; faster, slightly softer). Default: full, "
                   "or the only one the engine folder has")
    p.add_argument("--num-images", type=int, default=1, help=f"{images_help} (out-0.png, out-1.png, ...)")
    p.add_argument("--out", required=True, type=Path, help="PNG file to write")
    p.add_argument("--timings", action="store_true", help="print per-stage timings")


def add_session_arguments(p) -> None:
    p.add_argument("--providers", default="CPUExecutionProvider",
                   help="comma-separated ONNX Runtime execution providers (default CPUExecutionProvider)")
    p.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads (default: all CPUs)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


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

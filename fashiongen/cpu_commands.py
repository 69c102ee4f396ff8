"""CPU speed commands: ``generate --backend ort|openvino --fast MODE[,MODE]``, ``deepcache`` (the split UNet)
and ``quantize`` (the INT8 networks)."""
from __future__ import annotations

from pathlib import Path

from fashiongen.options import add_txt2img_engines_argument
from fashiongen.runtime.errors import InputError


def add_backend_arguments(p) -> None:
    p.add_argument("--backend", default="ort", choices=("ort", "openvino"),
                   help="in-process engine backend: ort (ONNX Runtime, default) or openvino (same ONNX files; "
                   "fp32 precision hint, needs the cpu-fast extra)")
    p.add_argument("--fast", default=None, metavar="MODE[,MODE]",
                   help="fast mode(s), comma-separated: int8 (UNet and VAE decoder quantized by NNCF; --backend "
                   "openvino; written by `fashiongen quantize`), deepcache (deep UNet features reused across steps; "
                   "any backend; written by `fashiongen deepcache`), or deepcache,int8 (both: the fastest where "
                   "the CPU has INT8 dot-product instructions, VNNI or AMX). Default: the exact fp32 mode")
    p.add_argument("--deepcache-interval", type=int, default=None, metavar="N",
                   help="with --fast deepcache: the whole UNet every N-th call, the shallow part in between "
                   "(default: the interval `fashiongen deepcache` wrote, 3). Larger is faster and moves the image "
                   "further from the exact one")


def fast_files(args, manifest) -> dict[str, str]:
    """``{network: file}`` of the fast mode asked for (``{}`` for the exact mode); clear errors otherwise."""
    from fashiongen.runtime.fastmodes import variant_files

    fast = getattr(args, "fast", None)
    if fast and getattr(args, "triton", None):
        raise InputError(f"--fast {fast} runs in-process only (drop --triton, or drop --fast)")
    return variant_files(manifest, getattr(args, "backend", "ort"), fast, f"'{args.engines}'")


def deepcache_interval(args, manifest):
    from fashiongen.runtime.fastmodes import deepcache_interval as interval

    return interval(manifest, getattr(args, "fast", None), getattr(args, "deepcache_interval", None))


def register(sub) -> None:
    p = sub.add_parser("deepcache", help="add the DeepCache UNet parts (deepcache fast mode) to an engine folder",
                       description="Export the UNet of a local SD 1.x checkpoint as the two parts DeepCache needs "
                       "(unet_capture: the whole UNet plus its deep features; unet_shallow: the shallow path on cached "
                       "deep features), each validated against PyTorch, into an existing engine folder of the same "
                       "checkpoint. Then: fashiongen generate --fast deepcache (any backend).")
    p.add_argument("--model", required=True, type=Path, help="the checkpoint folder the engine folder was exported from")
    add_txt2img_engines_argument(p)
    p.add_argument("--interval", type=int, default=3, help="whole UNet every N-th step (default 3)")
    p.add_argument("--shallow-layers", type=int, default=1, metavar="N",
                   help="layers of the last up block the steps in between recompute (default 1, as in the DeepCache "
                   "paper; up to all of them, 3 in SD 1.x: slower and closer to the exact image)")
    p.set_defaults(run=_run_deepcache)

    p = sub.add_parser("quantize", help="write the INT8 networks of the int8 fast mode into an engine folder",
                       description="Record the UNet's and VAE decoder's inputs on a few real fp32 generations "
                       "(fashion prompts, guidance, the folder's scheduler), quantize the networks to INT8 with NNCF "
                       "post-training quantization on them, and write NAME.int8.xml/.bin (OpenVINO IR) plus their "
                       "manifest entries (variants.int8). Then: fashiongen generate --backend openvino --fast int8 "
                       "(or --fast deepcache,int8 after `fashiongen deepcache`). Needs the cpu-fast extra "
                       "(openvino, nncf).")
    add_txt2img_engines_argument(p)
    p.add_argument("--networks", default=None, metavar="NAME[,NAME]",
                   help="networks to quantize: unet, unet_capture, unet_shallow, vae_decoder (default: each of them "
                   "the folder has; the unet_ parts exist after `fashiongen deepcache`)")
    p.add_argument("--calibration-prompts", type=Path, default=None, metavar="FILE",
                   help="a text file, one prompt per line: calibrate on the prompts this folder will serve (its "
                   "vocabulary and learned tokens; INT8 ranges cover only what calibration saw); default: eight "
                   "built-in fashion prompts")
    p.add_argument("--prompts", type=int, default=None,
                   help="calibration generations, cycling through the prompts (default: each line of "
                   "--calibration-prompts once, else 4)")
    p.add_argument("--steps", type=int, default=20, help="steps per calibration generation (default 20)")
    p.add_argument("--size", type=int, default=256, help="calibration image size in pixels (default 256)")
    p.add_argument("--subset", type=int, default=None, help="calibration calls used (default: all recorded)")
    p.add_argument("--threads", type=int, default=None, help="threads (default: all CPUs)")
    p.set_defaults(run=_run_quantize)


def _run_quantize(args) -> int:
    from fashiongen.export.quantize import quantize_networks
    from fashiongen.runtime.denoise import check_positive_int, check_size

    if args.prompts is not None:
        check_positive_int("--prompts", args.prompts)
    check_positive_int("--steps", args.steps)
    check_size("--size", args.size, 8)
    texts = read_prompt_lines(args.calibration_prompts) if args.calibration_prompts else None
    networks = [n.strip() for n in args.networks.split(",")] if args.networks else None
    entries = quantize_networks(args.engines, networks, args.prompts, args.steps, args.size, args.subset, args.threads,
                                texts=texts)
    for entry in entries.values():
        print(f"wrote {args.engines / entry['file']} ({entry['quantizer']}, {entry['calibration']['calls']} "
              f"calibration calls, {entry['seconds']['quantize']} s)")
    return 0


def read_prompt_lines(path: Path) -> list[str]:
    """The non-blank lines of a prompts file, or a one-line error naming it."""
    try:
        lines = [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines()]
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"--calibration-prompts: cannot read '{path}' ({exc.__class__.__name__})") from None
    if not any(lines):
        raise InputError(f"--calibration-prompts: '{path}' has no prompts (expected one per line)")
    return [line for line in lines if line]


def _run_deepcache(args) -> int:
    from fashiongen.export.deepcache import export_deepcache

    entry = export_deepcache(args.model, args.engines, args.interval, args.shallow_layers)
    print(f"wrote {args.engines}/unet_capture.onnx, unet_shallow.onnx (interval {entry['interval']}, shallow layers "
          f"{entry['shallow_layers']} of {entry['of_layers']}, split max abs "
          f"diff {entry['split_max_abs_diff']:.2e})")
    return 0

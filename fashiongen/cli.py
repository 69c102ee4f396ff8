"""The ``fashiongen`` command: export commands (torch side) and runtime commands side by side.

Runtime commands import only ``runtime``; export commands import ``export`` (and so torch) only when run.
Every error a user can cause (an ``InputError``) ends as one line on stderr and exit status 2; any other
exception is a bug and shows its traceback.
"""
from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

from fashiongen import (catalog_commands, cpu_commands, cutout_commands, options, serving_commands,
                        training_commands)
from fashiongen.demo_family import engine_folder
from fashiongen.runtime.errors import InputError


def _add_export(sub) -> None:
    p = sub.add_parser("export", help="export a local SD 1.x checkpoint folder to an ONNX engine folder",
                       description="Load a local diffusers Stable Diffusion 1.x checkpoint (never a hub), bake "
                       "textual-inversion tokens into its tokenizer and text encoder (after merging any --lora), export text_encoder, unet, "
                       "vae_decoder and vae_encoder to ONNX (each validated against PyTorch) and write "
                       "manifest.json. With --segmenter, also (or only) a SegFormer clothes segmenter. The folder "
                       "appears only when complete.")
    p.add_argument("--model", type=Path, default=None,
                   help="checkpoint folder (model_index.json, unet/, vae/, ...); optional with --segmenter")
    p.add_argument("--segmenter", type=Path, default=None, metavar="DIR",
                   help="transformers SegformerForSemanticSegmentation folder (config.json with id2label, weights, "
                   "preprocessor_config.json), e.g. mattmdjaga/segformer_b2_clothes: written as segformer.onnx")
    p.add_argument("--out", required=True, type=Path, help="engine folder to write (replaced if it is one already)")
    p.add_argument("--embedding", action="append", default=[], metavar="FILE[=TOKEN]",
                   help="textual-inversion file (A1111 .pt, civitai .safetensors, diffusers learned_embeds); "
                   "TOKEN overrides the name stored in the file (default: stored name, else the file's stem). "
                   "Repeatable.")
    p.add_argument("--lora", action="append", default=[], metavar="FILE[=SCALE]",
                   help="LoRA safetensors file merged into the UNet and text encoder before export, SCALE times its "
                   "strength (default 1; diffusers' fuse_lora(lora_scale=SCALE)): kohya / A1111 lora_unet_* / "
                   "lora_te_* (LoCon conv layers and LCM-LoRA included) or diffusers / peft lora_A / lora_B. LoHa, "
                   "LoKr, DoRA and pickled .pt / .bin files are refused. Repeatable (the LoRAs add up); the "
                   "manifest records each file's hash and scale.")
    p.add_argument("--lcm-lora", action="append", default=[], metavar="FILE[=SCALE]",
                   help="an LCM-LoRA (e.g. latent-consistency/lcm-lora-sdv1-5), merged like --lora and recorded as "
                   "one, so that `generate --preset fast` samples the folder in 4 LCM steps without guidance. "
                   "Repeatable")
    p.add_argument("--tiny-vae", type=Path, default=None, metavar="DIR",
                   help="diffusers AutoencoderTiny folder (TAESD layout: config.json + "
                   "diffusion_pytorch_model.safetensors, e.g. madebyollin/taesd or `fashiongen train-tiny-vae`'s "
                   "output): its decoder and encoder are exported beside the full VAE as vae_decoder_tiny and "
                   "vae_encoder_tiny; then `generate/edit --decoder tiny`. Its latent channels must be the "
                   "checkpoint's")
    p.add_argument("--guidance", type=float, default=None, metavar="SCALE",
                   help="the classifier-free guidance scale the checkpoint samples best at, recorded in the manifest: "
                   "`generate` uses it when given no --guidance (default: none recorded; generate then uses 7.5, "
                   "diffusers' default)")
    p.add_argument("--image-guidance", type=float, default=None, metavar="SCALE",
                   help="an InstructPix2Pix checkpoint's image guidance scale it edits best at, recorded beside "
                   "--guidance: `edit` uses it when given no --image-guidance (default: none recorded; edit then "
                   "uses 1.5, diffusers' default)")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    options.add_progress_argument(p)
    p.set_defaults(run=_run_export)


def _run_export(args) -> int:
    from dataclasses import replace

    from fashiongen.export.embeddings import load_embedding, parse_embedding_arg
    from fashiongen.export.lora import parse_lora_arg, read_lora
    from fashiongen.export.sd_export import export_engine_folder

    embeddings = [load_embedding(*parse_embedding_arg(a)) for a in args.embedding]
    loras = [read_lora(*parse_lora_arg(a)) for a in args.lora]  # every file checked before the checkpoint loads
    loras += [replace(read_lora(*parse_lora_arg(a)), lcm=True) for a in args.lcm_lora]
    manifest = export_engine_folder(args.out, args.model, embeddings, segmenter_dir=args.segmenter, opset=args.opset,
                                    progress=not args.no_progress, loras=loras, tiny_vae_dir=args.tiny_vae,
                                    guidance=args.guidance, image_guidance=args.image_guidance)
    print(f"wrote {args.out} ({manifest.kind})")
    for lora in manifest.source.get("loras", []):
        print(f"  LoRA {lora['file']} x{lora['scale']:g}: {lora['layers']['unet']} UNet and "
              f"{lora['layers']['text_encoder']} text encoder layers merged")
    for name, entry in manifest.networks.items():
        print(f"  {name:13s} {entry.file:20s} max abs diff vs PyTorch {entry.validation['max_abs_diff']:.2e}")
    if "fast" in manifest.presets:
        fast = manifest.presets["fast"]
        print(f"  --preset fast: {fast['scheduler']}, {fast['steps']} steps, guidance {fast['guidance']:g} "
              f"({fast['why']})")
    return 0


def _add_generate(sub) -> None:
    p = sub.add_parser("generate", help="text to image with an exported engine folder",
                       description="Generate an image from a text prompt with the torch-free runtime. The same "
                       "seed gives the same image as diffusers' StableDiffusionPipeline.")
    p.add_argument("--engines", type=Path, default=None,
                   help="engine folder written by `fashiongen export`, or a shipped demo model: demo (approach 1: a "
                   "person wearing the garment; add --cutout auto), demo-product (approach 3: the product shot "
                   "itself); default: demo")
    p.add_argument("--prompt", required=True, help="what to draw; learned tokens such as <midjourney-style> work")
    p.add_argument("--negative-prompt", default="", help="what to steer away from (learned negative tokens work)")
    p.add_argument("--height", type=int, default=None, help="image height, a multiple of 8 (default: native)")
    p.add_argument("--width", type=int, default=None, help="image width, a multiple of 8 (default: native)")
    options.add_sampling_arguments(p, steps=25, images_help="images for the prompt", guidance=None)
    options.add_session_arguments(p)
    cutout_commands.add_cutout_arguments(p)
    serving_commands.add_triton_arguments(p, "txt2img")
    cpu_commands.add_backend_arguments(p)  # --backend, --fast
    p.set_defaults(run=_run_generate)


def _run_generate(args) -> int:
    from fashiongen.runtime.engines import EngineSet
    from fashiongen.runtime.images import check_writable
    from fashiongen.runtime.txt2img import Txt2ImgPipeline, Txt2ImgRequest

    check_writable(args.out)
    if not args.server_side:
        args.engines = engine_folder(args.engines, "demo")
    manifest = options.sampling_manifest(args)
    options.settle_sampling(args, manifest, args.engines)
    request = Txt2ImgRequest(prompt=args.prompt, negative_prompt=args.negative_prompt, seed=args.seed,
                             steps=args.steps, guidance=args.guidance, scheduler=args.scheduler,
                             height=args.height, width=args.width, num_images=args.num_images,
                             decoder=args.decoder, eta=args.eta)
    if args.server_side:
        return _run_generate_server_side(args, request)
    engines = EngineSet(args.engines, serving_commands.engine_factory(args, manifest.kind), manifest,
                        files=cpu_commands.fast_files(args, manifest))
    pipeline = Txt2ImgPipeline(engines, deepcache=cpu_commands.deepcache_interval(args, manifest))
    pipeline.resolve(request)  # every field checked before any network is loaded
    cutout = cutout_commands.plan_cutout(args, request.num_images, args.prompt, engines)  # None without --cutout
    result = pipeline(request, progress=not args.no_progress)
    if cutout is not None:  # the product shot goes to --out, the uncut image beside it with --keep-raw
        if args.timings:
            print(result.timings.table())
        return cutout_commands.apply_cutout(cutout, result.images, args.timings)
    options.write_images(result.images, args.out)
    if args.timings:
        print(result.timings.table())
    return 0


def _run_generate_server_side(args, request) -> int:
    """The whole pipeline on the server (cutout included): one request to its txt2img model."""
    options.write_images(serving_commands.request_server_side(args, "txt2img", request), args.out)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fashiongen", description="Fashion product shots from text: export "
                                     "checkpoints to ONNX, then generate with a torch-free runtime.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_export(sub)
    _add_generate(sub)
    cutout_commands.register(sub)  # cutout
    serving_commands.register(sub)  # triton-repo, serve
    catalog_commands.register(sub)  # edit, index, search
    cpu_commands.register(sub)  # quantize
    training_commands.register(sub)  # dataset, train-vae, train-tiny-vae, train, train-embedding, train-segmenter
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    plain_format = warnings.formatwarning
    warnings.formatwarning = lambda msg, cat, *a, **k: f"fashiongen: warning: {msg}\n"
    try:
        return args.run(args)
    except InputError as exc:  # the user's mistake: one line; anything else is a bug and shows its traceback
        print(f"fashiongen: error: {options.flag_wording(str(exc), args)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fashiongen: interrupted", file=sys.stderr)
        return 130
    finally:
        warnings.formatwarning = plain_format


if __name__ == "__main__":
    sys.exit(main())

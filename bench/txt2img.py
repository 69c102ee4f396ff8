"""Text → image, this runtime vs diffusers' PyTorch pipeline, in one process, interleaved.

Same checkpoint (random weights; speed does not depend on their values), prompt, seed, scheduler and
size. Per stage (text encoder, UNet per step, VAE decode) and end to end, median over runs; the
runtime's own work is what remains of its total once the networks' time is taken out.

    python -m fashiongen.bench.txt2img --full-size --size 256 --steps 20 --runs 3

writes ``bench/results/txt2img.{md,json}`` and prints the table.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from statistics import median

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from .common import CACHE, NEGATIVE, PROMPT, RESULTS, add_seed_argument, diffusers_clock


def prepare(full_size: bool) -> tuple[Path, Path, dict[str, Path]]:
    """A random SD checkpoint with demo embeddings and its engine folder, built once and reused."""
    from fashiongen.random_checkpoints.sd import FULL_SD15, TINY, write_demo_embeddings, write_sd_checkpoint
    from fashiongen.export.embeddings import load_embedding
    from fashiongen.export.sd_export import export_pipeline

    name = "sd15-random" if full_size else "tiny-random"
    ckpt, engines = CACHE / name, CACHE / f"{name}-engines"
    if not (ckpt / "model_index.json").exists():
        print(f"writing checkpoint {ckpt} ...", flush=True)
        write_sd_checkpoint(ckpt, FULL_SD15 if full_size else TINY, seed=0)
    tokens = write_demo_embeddings(ckpt / "embeddings", (FULL_SD15 if full_size else TINY).cross_attention_dim)
    if not (engines / "manifest.json").exists():
        print(f"exporting {engines} ...", flush=True)
        export_pipeline(ckpt, engines, [load_embedding(path, token) for token, path in tokens.items()])
    return ckpt, engines, tokens


def run_diffusers(pipe, timer, steps, size, seed) -> dict[str, float]:
    import torch

    timer.reset()
    start = time.perf_counter()
    with torch.inference_mode():
        pipe(PROMPT, negative_prompt=NEGATIVE, num_inference_steps=steps, guidance_scale=7.5, height=size,
             width=size, generator=torch.Generator("cpu").manual_seed(seed), output_type="np")
    total = time.perf_counter() - start
    return summarize({k: v for k, v in timer.stages.items()}, total)


def run_runtime(pipeline, steps, size, seed) -> dict[str, float]:
    from fashiongen.runtime.txt2img import Txt2ImgRequest

    start = time.perf_counter()
    result = pipeline(Txt2ImgRequest(prompt=PROMPT, negative_prompt=NEGATIVE, seed=seed, steps=steps,
                                     height=size, width=size), progress=False)
    total = time.perf_counter() - start
    return summarize({k: v for k, v in result.timings.stages.items() if k not in ("scheduler", "total")}, total)


def summarize(stages: dict[str, list[float]], total: float) -> dict[str, float]:
    """Per-run figures: each network's total, the UNet's median step, the rest outside the networks."""
    networks = sum(sum(v) for v in stages.values())
    return {"text_encoder": sum(stages.get("text_encoder", [0])), "unet_total": sum(stages.get("unet", [0])),
            "unet_step": median(stages.get("unet", [0])), "vae_decoder": sum(stages.get("vae_decoder", [0])),
            "outside_networks": total - networks, "total": total}


def table(results: dict[str, list[dict[str, float]]]) -> str:
    rows = ["text_encoder", "unet_step", "unet_total", "vae_decoder", "outside_networks", "total"]
    med = {who: {k: median(r[k] for r in runs) for k in rows} for who, runs in results.items()}
    lines = ["| stage (median s) | diffusers PyTorch | fashiongen ORT | speed-up |", "| --- | ---: | ---: | ---: |"]
    for k in rows:
        d, o = med["diffusers"][k], med["fashiongen"][k]
        ratio = f"{d / o:.2f}x" if o > 0 else "-"
        lines.append(f"| {k} | {d:.3f} | {o:.3f} | {ratio} |")
    share = med["fashiongen"]["outside_networks"] / med["fashiongen"]["total"]
    lines.append(f"\nfashiongen's own work outside the networks: {100 * share:.2f}% of its total.")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--full-size", action="store_true", help="full SD 1.5 architecture (else the tiny one)")
    parser.add_argument("--size", type=int, default=256, help="image side in pixels (default 256)")
    parser.add_argument("--steps", type=int, default=20, help="denoising steps (default 20)")
    parser.add_argument("--runs", type=int, default=3, help="runs per contender, interleaved (default 3)")
    add_seed_argument(parser)
    args = parser.parse_args(argv)

    import torch
    from diffusers import StableDiffusionPipeline

    from fashiongen.runtime.engines import EngineSet
    from fashiongen.runtime.txt2img import Txt2ImgPipeline

    ckpt, engines, tokens = prepare(args.full_size)
    pipe = StableDiffusionPipeline.from_pretrained(ckpt, safety_checker=None, local_files_only=True)
    for token, path in tokens.items():
        pipe.load_textual_inversion(str(path), token=token)
    pipe.set_progress_bar_config(disable=True)
    timer = diffusers_clock(pipe)
    pipeline = Txt2ImgPipeline(EngineSet(engines))

    results: dict[str, list[dict[str, float]]] = {"diffusers": [], "fashiongen": []}
    run_runtime(pipeline, 1, args.size, args.seed)  # warm-up: sessions, first-call costs
    run_diffusers(pipe, timer, 1, args.size, args.seed)
    for i in range(args.runs):
        results["fashiongen"].append(run_runtime(pipeline, args.steps, args.size, args.seed))
        results["diffusers"].append(run_diffusers(pipe, timer, args.steps, args.size, args.seed))
        print(f"run {i + 1}/{args.runs}: fashiongen {results['fashiongen'][-1]['total']:.2f} s, "
              f"diffusers {results['diffusers'][-1]['total']:.2f} s", flush=True)

    meta = {"checkpoint": "SD 1.5 architecture, random weights" if args.full_size else "tiny random",
            "size": args.size, "steps": args.steps, "runs": args.runs, "scheduler": "the checkpoint's (PNDM)",
            "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
            "torch_threads": torch.get_num_threads()}
    text = (f"# txt2img: fashiongen (ONNX Runtime, CPU) vs diffusers (PyTorch eager fp32)\n\n{json.dumps(meta)}\n\n"
            + table(results))
    print(text)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "txt2img.md").write_text(text + "\n")
    (RESULTS / "txt2img.json").write_text(json.dumps({"meta": meta, "runs": results}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

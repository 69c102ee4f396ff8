"""InstructPix2Pix edit and the catalog query path: this runtime vs diffusers / transformers, in one process.

Pix2pix: the same checkpoint (random weights; speed does not depend on their values), input image, prompt,
seed, scheduler and both guidance scales through diffusers' ``StableDiffusionInstructPix2PixPipeline``
(PyTorch eager fp32) and ``runtime.pix2pix`` (ONNX Runtime), interleaved; per stage (text encoder, VAE
encoder, UNet step with its three-way batch, VAE decoder) and end to end, median over runs.

Query path: embedding a prompt (tokenizer + CLIP text tower: transformers' ``CLIPModel`` vs the exported
ONNX tower), embedding a batch of catalog images (the indexing work per batch), and searching N catalog
vectors for the top k (faiss exact ``IndexFlatIP`` vs a numpy brute-force cosine + argsort).

    python -m fashiongen.bench.pix2pix_retrieval --full-size --size 256 --steps 10 --runs 3

(``--full-size``: SD 1.5's architecture with an 8-channel UNet, and CLIP ViT-B/32; else the tiny ones)
writes ``bench/results/pix2pix_retrieval.{md,json}`` and prints the tables.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from statistics import median

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from .common import CACHE, RESULTS, add_seed_argument, diffusers_clock
from .common import GARMENT as PROMPT


# -- preparation (cached) -----------------------------------------------------------------------------------
def prepare_pix2pix(full_size: bool) -> tuple[Path, Path]:
    from fashiongen.random_checkpoints.sd import FULL_SD15, TINY, SDSize, write_sd_checkpoint
    from fashiongen.export.sd_export import export_engine_folder

    name = "p2p-sd15-random" if full_size else "p2p-tiny-random"
    ckpt, engines = CACHE / name, CACHE / f"{name}-engines"
    if not (ckpt / "model_index.json").exists():
        print(f"writing checkpoint {ckpt} ...", flush=True)
        write_sd_checkpoint(ckpt, SDSize(**{**(FULL_SD15 if full_size else TINY).__dict__, "unet_in_channels": 8}))
    if not (engines / "manifest.json").exists():
        print(f"exporting {engines} ...", flush=True)
        export_engine_folder(engines, ckpt)
    return ckpt, engines


def prepare_clip(full_size: bool) -> tuple[Path, Path]:
    from fashiongen.export.clip_export import export_clip_folder
    from fashiongen.random_checkpoints.retrieval import CLIP_B32, TINY_CLIP, write_clip_checkpoint

    name = "clip-b32-random" if full_size else "clip-tiny-random"
    ckpt, engines = CACHE / name, CACHE / f"{name}-engines"
    if not (ckpt / "config.json").exists():
        print(f"writing checkpoint {ckpt} ...", flush=True)
        write_clip_checkpoint(ckpt, CLIP_B32 if full_size else TINY_CLIP)
    if not (engines / "manifest.json").exists():
        print(f"exporting {engines} ...", flush=True)
        export_clip_folder(ckpt, engines)
    return ckpt, engines


# -- pix2pix ------------------------------------------------------------------------------------------------
def summarize(stages: dict[str, list[float]], total: float) -> dict[str, float]:
    networks = sum(sum(v) for k, v in stages.items() if k != "scheduler")
    return {"text_encoder": sum(stages.get("text_encoder", [0])), "vae_encoder": sum(stages.get("vae_encoder", [0])),
            "unet_step": median(stages.get("unet", [0])), "unet_total": sum(stages.get("unet", [0])),
            "vae_decoder": sum(stages.get("vae_decoder", [0])), "outside_networks": total - networks, "total": total}


def bench_pix2pix(args) -> tuple[str, dict]:
    import torch
    from diffusers import StableDiffusionInstructPix2PixPipeline
    from PIL import Image

    from fashiongen.random_checkpoints.retrieval import product_image
    from fashiongen.runtime.engines import EngineSet
    from fashiongen.runtime.pix2pix import Pix2PixPipeline, Pix2PixRequest

    ckpt, engines = prepare_pix2pix(args.full_size)
    image = product_image(0, args.size, args.size)
    pipe = StableDiffusionInstructPix2PixPipeline.from_pretrained(ckpt, safety_checker=None, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    timer = diffusers_clock(pipe, ("encode", "decode"))
    ours = Pix2PixPipeline(EngineSet(engines))

    def run_diffusers(steps):
        timer.reset()
        start = time.perf_counter()
        with torch.inference_mode():
            pipe(PROMPT, image=Image.fromarray(image), num_inference_steps=steps, guidance_scale=7.5,
                 image_guidance_scale=1.5, generator=torch.Generator("cpu").manual_seed(args.seed), output_type="np")
        return summarize(timer.stages, time.perf_counter() - start)

    def run_ours(steps):
        start = time.perf_counter()
        result = ours(Pix2PixRequest(image=image, prompt=PROMPT, seed=args.seed, steps=steps, guidance=7.5,
                                     image_guidance=1.5), progress=False)
        return summarize(result.timings.stages, time.perf_counter() - start)

    run_ours(1), run_diffusers(1)  # warm-up: sessions, first-call costs
    runs: dict[str, list[dict]] = {"diffusers": [], "fashiongen": []}
    for i in range(args.runs):
        runs["fashiongen"].append(run_ours(args.steps))
        runs["diffusers"].append(run_diffusers(args.steps))
        print(f"pix2pix run {i + 1}/{args.runs}: fashiongen {runs['fashiongen'][-1]['total']:.2f} s, "
              f"diffusers {runs['diffusers'][-1]['total']:.2f} s", flush=True)
    rows = ["text_encoder", "vae_encoder", "unet_step", "unet_total", "vae_decoder", "outside_networks", "total"]
    med = {who: {k: median(r[k] for r in rs) for k in rows} for who, rs in runs.items()}
    lines = ["| pix2pix stage (median s) | diffusers PyTorch | fashiongen ORT | speed-up |",
             "| --- | ---: | ---: | ---: |"]
    for k in rows:
        d, o = med["diffusers"][k], med["fashiongen"][k]
        lines.append(f"| {k} | {d:.3f} | {o:.3f} | {d / o:.2f}x |" if o > 0 else f"| {k} | {d:.3f} | {o:.3f} | - |")
    del pipe, ours
    return "\n".join(lines), runs


# -- query path ---------------------------------------------------------------------------------------------
def timed(fn, runs: int) -> float:
    fn()  # warm-up
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return median(samples)


def bench_query(args) -> tuple[str, dict]:
    import faiss
    import torch
    from PIL import Image
    from transformers import AutoImageProcessor, CLIPModel, CLIPTokenizerFast

    from fashiongen.random_checkpoints.retrieval import product_image
    from fashiongen.runtime.retrieval import ClipEncoder, build_faiss, unit

    ckpt, engines = prepare_clip(args.full_size)
    model = CLIPModel.from_pretrained(ckpt, local_files_only=True).eval()
    tokenizer = CLIPTokenizerFast.from_pretrained(ckpt, local_files_only=True)
    processor = AutoImageProcessor.from_pretrained(ckpt, local_files_only=True)
    encoder = ClipEncoder.open(engines)
    images = [product_image(i, 300, 220) for i in range(args.image_batch)]

    def torch_text():
        with torch.inference_mode():
            ids = tokenizer([PROMPT], padding=True, return_tensors="pt").input_ids
            return unit(model.get_text_features(input_ids=ids).pooler_output.numpy())

    def torch_images():
        with torch.inference_mode():
            pixels = processor(images=[Image.fromarray(i) for i in images], return_tensors="pt").pixel_values
            return unit(model.get_image_features(pixel_values=pixels).pooler_output.numpy())

    rng = np.random.default_rng(0)
    catalog = unit(rng.standard_normal((args.catalog_size, encoder.dim)).astype(np.float32))
    index = build_faiss(catalog)
    query = encoder.encode_text([PROMPT])
    k = 5

    def numpy_search():
        scores = catalog @ query[0]
        top = np.argsort(-scores)[:k]
        return top, scores[top]

    rows = [
        ("embed prompt (tokenize + text tower)", timed(torch_text, args.query_runs),
         timed(lambda: encoder.encode_text([PROMPT]), args.query_runs)),
        (f"embed {args.image_batch} catalog images (preprocess + image tower)", timed(torch_images, args.runs),
         timed(lambda: encoder.encode_images(images, args.image_batch), args.runs)),
        (f"top-{k} of {args.catalog_size:,} vectors (numpy brute force vs faiss IndexFlatIP)",
         timed(numpy_search, args.query_runs), timed(lambda: index.search(query, k), args.query_runs)),
    ]
    assert np.array_equal(numpy_search()[0], index.search(query, k)[1][0]), "faiss and brute force disagree"
    lines = ["| query path (median s) | transformers / numpy | fashiongen ORT / faiss | speed-up |",
             "| --- | ---: | ---: | ---: |"]
    lines += [f"| {name} | {ref:.4f} | {ours:.4f} | {ref / ours:.2f}x |" for name, ref, ours in rows]
    return "\n".join(lines), {name: {"reference": ref, "fashiongen": ours} for name, ref, ours in rows} | {
        "faiss_threads": faiss.omp_get_max_threads()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--full-size", action="store_true",
                        help="SD 1.5 architecture (8-channel UNet) and CLIP ViT-B/32 (else the tiny ones)")
    parser.add_argument("--size", type=int, default=256, help="input image side in pixels (default 256)")
    parser.add_argument("--steps", type=int, default=10, help="pix2pix denoising steps (default 10)")
    parser.add_argument("--runs", type=int, default=3, help="pix2pix runs per contender, interleaved (default 3)")
    parser.add_argument("--query-runs", type=int, default=20, help="runs per query-path measurement (default 20)")
    parser.add_argument("--image-batch", type=int, default=16, help="catalog images per embedding batch (default 16)")
    parser.add_argument("--catalog-size", type=int, default=100_000, help="vectors searched (default 100000)")
    parser.add_argument("--skip-pix2pix", action="store_true", help="only the query path")
    parser.add_argument("--skip-query", action="store_true", help="only pix2pix")
    add_seed_argument(parser)
    args = parser.parse_args(argv)

    import torch

    meta = {"architectures": "SD 1.5 (8-channel UNet) + CLIP ViT-B/32, random weights" if args.full_size
            else "tiny random", "size": args.size, "steps": args.steps, "runs": args.runs,
            "scheduler": "the checkpoint's (PNDM)", "guidance": [7.5, 1.5],
            "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
            "torch_threads": torch.get_num_threads()}
    sections, raw = [], {"meta": meta}
    if not args.skip_pix2pix:
        text, raw["pix2pix"] = bench_pix2pix(args)
        sections.append(text)
    if not args.skip_query:
        text, raw["query"] = bench_query(args)
        sections.append(text)
    text = ("# pix2pix + catalog query: fashiongen (ONNX Runtime, faiss) vs diffusers / transformers (PyTorch eager "
            f"fp32)\n\n{json.dumps(meta)}\n\n" + "\n\n".join(sections))
    print(text)
    RESULTS.mkdir(parents=True, exist_ok=True)
    suffix = ("" if args.full_size else "-tiny") + ("-query" if args.skip_pix2pix else "") + (
        "-pix2pix" if args.skip_query else "")
    (RESULTS / f"pix2pix_retrieval{suffix}.md").write_text(text + "\n")
    (RESULTS / f"pix2pix_retrieval{suffix}.json").write_text(json.dumps(raw, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Clothes segmenter, this runtime vs transformers' PyTorch, in one process, interleaved.

Same SegFormer checkpoint (random weights; speed does not depend on their values), same images. Per stage
(preprocess, network, upsample + argmax) and end to end (image in, class map out), median over runs:
``SegformerImageProcessor`` + ``SegformerForSemanticSegmentation`` + ``post_process_semantic_segmentation``
against ``runtime.segmentation`` on ONNX Runtime.

    python -m fashiongen.bench.segmenter --full-size --size 512 --runs 5

writes ``bench/results/segmenter.{md,json}`` and prints the table.
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

import numpy as np

from .common import CACHE, RESULTS
STAGES = ("preprocess", "network", "postprocess", "total")


def prepare(full_size: bool) -> tuple[Path, Path]:
    """A random SegFormer checkpoint and its engine folder, built once and reused."""
    from fashiongen.random_checkpoints.segmenter import FULL_B2, TINY_SEGFORMER, write_segformer_checkpoint
    from fashiongen.export.sd_export import export_engine_folder

    name = "segformer-b2-random" if full_size else "segformer-tiny-random"
    ckpt, engines = CACHE / name, CACHE / f"{name}-engines"
    if not (ckpt / "preprocessor_config.json").exists():
        print(f"writing checkpoint {ckpt} ...", flush=True)
        write_segformer_checkpoint(ckpt, FULL_B2 if full_size else TINY_SEGFORMER, seed=0)
    if not (engines / "manifest.json").exists():
        print(f"exporting {engines} ...", flush=True)
        export_engine_folder(engines, segmenter_dir=ckpt)
    return ckpt, engines


def test_images(count: int, height: int, width: int, seed: int = 0) -> list[np.ndarray]:
    from PIL import Image

    rng = np.random.default_rng(seed)
    return [np.asarray(Image.fromarray(rng.integers(0, 256, (8, 6, 3), dtype=np.uint8)).resize(
        (width, height), Image.BICUBIC)) for _ in range(count)]


def run_transformers(processor, model, images) -> tuple[dict[str, float], list[np.ndarray]]:
    import torch

    t0 = time.perf_counter()
    inputs = processor(images=images, return_tensors="pt")
    t1 = time.perf_counter()
    with torch.inference_mode():
        outputs = model(**inputs)
    t2 = time.perf_counter()
    maps = processor.post_process_semantic_segmentation(outputs, target_sizes=[im.shape[:2] for im in images])
    maps = [m.numpy() for m in maps]
    t3 = time.perf_counter()
    return {"preprocess": t1 - t0, "network": t2 - t1, "postprocess": t3 - t2, "total": t3 - t0}, maps


def run_runtime(segmenter, images) -> tuple[dict[str, float], list[np.ndarray]]:
    from fashiongen.runtime.segmentation import class_map

    engine = segmenter.engines["segmenter"]
    t0 = time.perf_counter()
    pixel_values = segmenter.preprocess(images)
    t1 = time.perf_counter()
    logits = engine.run({"pixel_values": pixel_values})["logits"]
    t2 = time.perf_counter()
    maps = [class_map(lg, im.shape[:2]) for lg, im in zip(logits, images)]
    t3 = time.perf_counter()
    return {"preprocess": t1 - t0, "network": t2 - t1, "postprocess": t3 - t2, "total": t3 - t0}, maps


def table(results: dict[str, list[dict[str, float]]]) -> str:
    med = {who: {k: median(r[k] for r in runs) for k in STAGES} for who, runs in results.items()}
    lines = ["| stage | transformers (PyTorch) s | fashiongen (ONNX Runtime) s | speed-up |",
             "| --- | ---: | ---: | ---: |"]
    for k in STAGES:
        a, b = med["transformers"][k], med["fashiongen"][k]
        lines.append(f"| {k} | {a:.4f} | {b:.4f} | {a / b:.2f}x |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m fashiongen.bench.segmenter",
        description="SegFormer clothes segmentation: the torch-free runtime (ONNX Runtime) vs transformers "
        "(SegformerImageProcessor + SegformerForSemanticSegmentation + post_process_semantic_segmentation), "
        "per stage and end to end, median over interleaved runs. Random weights, built and exported once "
        "under bench/.cache/.")
    parser.add_argument("--full-size", action="store_true",
                        help="the real SegFormer-B2 architecture (512x512 input) instead of a tiny one")
    parser.add_argument("--size", type=int, default=512, help="side of the (square) input images (default 512)")
    parser.add_argument("--batch", type=int, default=1, help="images per call (default 1)")
    parser.add_argument("--runs", type=int, default=5, help="timed runs per side, after one warm-up (default 5)")
    parser.add_argument("--threads", type=int, default=None,
                        help="threads for both sides (default: torch's and ONNX Runtime's defaults)")
    args = parser.parse_args(argv)
    for name in ("size", "batch", "runs"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1")

    import onnxruntime
    import torch
    import transformers
    from transformers import SegformerForSemanticSegmentation, SegformerImageProcessor

    from fashiongen.runtime.engines import EngineSet, ort_factory
    from fashiongen.runtime.segmentation import Segmenter

    transformers.utils.logging.set_verbosity_error()
    if args.threads:
        torch.set_num_threads(args.threads)
    ckpt, engine_dir = prepare(args.full_size)
    processor = SegformerImageProcessor.from_pretrained(ckpt, local_files_only=True)
    model = SegformerForSemanticSegmentation.from_pretrained(ckpt, local_files_only=True).eval()
    segmenter = Segmenter(EngineSet(engine_dir, ort_factory(threads=args.threads)))
    images = test_images(args.batch, args.size, args.size)

    results: dict[str, list[dict[str, float]]] = {"transformers": [], "fashiongen": []}
    run_runtime(segmenter, images), run_transformers(processor, model, images)  # warm-up (and session load)
    agreement = []
    for i in range(args.runs):
        ours, our_maps = run_runtime(segmenter, images)
        theirs, their_maps = run_transformers(processor, model, images)
        results["fashiongen"].append(ours)
        results["transformers"].append(theirs)
        agreement.append(min(float((a == b).mean()) for a, b in zip(our_maps, their_maps)))
        print(f"run {i + 1}/{args.runs}: fashiongen {ours['total']:.3f} s, transformers {theirs['total']:.3f} s",
              flush=True)

    meta = {"checkpoint": "SegFormer-B2 (random weights)" if args.full_size else "tiny SegFormer (random weights)",
            "images": f"{args.batch} x {args.size}x{args.size}", "runs": args.runs,
            "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
            "threads": args.threads or "default", "torch": torch.__version__,
            "transformers": transformers.__version__, "onnxruntime": onnxruntime.__version__,
            "class map agreement (min)": min(agreement)}
    text = ("# Segmenter: fashiongen runtime vs transformers\n\n"
            + "\n".join(f"- {k}: {v}" for k, v in meta.items()) + "\n\nMedian seconds per call.\n\n" + table(results))
    print(text)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "segmenter.md").write_text(text + "\n")
    (RESULTS / "segmenter.json").write_text(json.dumps({"meta": meta, "runs": results}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""CPU text → image, every alternative side by side: diffusers PyTorch, optimum-onnx (ORT pipelines),
optimum-intel (OpenVINO pipelines), and this runtime on each CPU backend and fast mode.

Same checkpoint (the full-size SD 1.5 architecture with random weights, saved once under bench/.cache and
reused), prompt, seed, scheduler (the checkpoint's PNDM), size and steps. Each contender runs in a fresh
process per round, and rounds interleave the contenders (the machine is shared: medians and ratios, not
single runs). Per contender: cold start (process spawn to pipeline ready to run), each stage and end to
end (median over rounds), peak RSS, PSNR of its image against this runtime's exact fp32 image, and every
ratio to this runtime's exact mode. The FLOP floor: UNet GFLOP per guided step and VAE decoder GFLOP,
counted on the graph (Convolution, MatMul incl. attention's QK^T and AV), over the CPU's fp32 peak as
measured by bench/cpu_peak.py; each exact-mode goal also states the most it could reach with both networks
at that peak.

    python -m fashiongen.bench.cpu_compare --prepare-only --optimum --cutout-rss   # first time: build everything (~1 h)
    python -m fashiongen.bench.cpu_compare --optimum --cutout-rss                  # the run: ~35 min on 2 cores (AVX2)
    python -m fashiongen.bench.cpu_compare --only fashiongen-ort,fashiongen-shot   # a subset

The few-step figures (4 LCM steps, guidance 1, tiny VAE decoder; ours with the cutout, at 256 and 512 px, next
to the 20-step exact mode, diffusers' own LCM-LoRA + AutoencoderTiny pipeline, and FastSD CPU's published
figure) come from:

    python -m fashiongen.bench.cpu_compare --prepare-only --only fashiongen-ort,diffusers-pytorch,\
fashiongen-lcm-256,fashiongen-lcm-512,diffusers-lcm-256,diffusers-lcm-512
    python -m fashiongen.bench.cpu_compare --only fashiongen-ort,diffusers-pytorch,\
fashiongen-lcm-256,fashiongen-lcm-512,diffusers-lcm-256,diffusers-lcm-512 --rounds 3

(the first builds, once, a random LoRA of LCM-LoRA's shape (rank 64, fp16, UNet only), a TAESD-size random tiny
VAE and the checkpoint's engine folder with both merged / added: ``export --lcm-lora --tiny-vae``).

What the first run builds, once, under bench/.cache: the checkpoint, its engine folder, DeepCache's UNet parts,
the few-step contenders' files (bench/cpu_workers.py ``lcm_files``) and the INT8 networks (as ``fashiongen deepcache`` / ``fashiongen quantize`` make them), the SegFormer-B2
segmenter, the optimum venvs and their exports; every run then opens each contender once untimed, so the
backends' start-up caches exist before cold starts are measured.

writes ``bench/results/cpu_compare.{md,json,png}``. optimum-onnx pins transformers < 4.58 and optimum-intel
2.2 pins huggingface-hub < 1.22 (diffusers 0.42 needs >= 1.32): each gets a venv of its own under
bench/.cache, created here on first use (torch pinned to the CPU 2.13.0 wheel, torchvision removed), and is
driven as a subprocess of this file (which imports only the standard library at module level).

This file is the driver; the contenders and their worker process are bench/cpu_workers.py, the FLOP count
and the CPU's peak bench/flops.py, the table, goals and chart bench/cpu_report.py.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from .common import CACHE, RESULTS, ROOT, add_seed_argument, psnr
from .cpu_report import REFERENCE, chart, fmt, goals, machine_name, markdown, med
from .cpu_workers import CONTENDERS, FASHIONGEN, FEW_STEP, RSS_ONLY, has_cutout, lcm_files, run_worker, setup
from .flops import flop_floor, peak_gflops

VENV_PACKAGES = {
    "venv-optimum-onnx": ["torch==2.13.0", "optimum-onnx[onnxruntime]==0.1.0", "diffusers==0.35.2", "pillow"],
    # transformers 4.57: diffusers 0.35 imports tokenizers that transformers 5 dropped; hub then resolves < 1.
    "venv-optimum-intel": ["torch==2.13.0", "optimum-intel[openvino]==2.2.0", "transformers==4.57.6", "diffusers==0.35.2",
                           "pillow"],
}


def prepare_fast_modes(ckpt: Path, engines: Path, modes: set, log):
    """Add what the fast modes asked for to the bench's engine folder, once: DeepCache's UNet parts
    (``fashiongen deepcache`` defaults) and INT8 copies of every quantizable network (``fashiongen quantize``
    defaults: fp32 trajectories of 4 prompts x 20 steps at 256 px). Returns the folder's manifest."""
    from fashiongen.runtime.manifest import load_manifest

    wanted = {part for mode in modes if mode for part in mode.split(",")}
    if "deepcache" in wanted and "deepcache" not in load_manifest(engines).variants:
        from fashiongen.export.deepcache import export_deepcache

        log("exporting the DeepCache UNet parts (once) ...")
        export_deepcache(ckpt, engines)
    manifest = load_manifest(engines)
    if "int8" in wanted:
        from fashiongen.export.quantize import default_networks

        missing = [n for n in default_networks(manifest) if n not in manifest.variant_networks("int8")]
        if missing:
            from fashiongen.export.quantize import quantize_networks

            log(f"quantizing {', '.join(missing)} to INT8 (once) ...")
            try:
                quantize_networks(engines, missing, log=log)
            except ValueError as exc:  # no nncf / openvino: the int8 contenders are then skipped, with why
                log(f"quantize failed: {exc}")
            manifest = load_manifest(engines)
    return manifest


def prepare_lcm(ckpt: Path, tokens: dict, full_size: bool, log) -> None:
    """The few-step contenders' files (:func:`cpu_workers.lcm_files`), once: a random LoRA of LCM-LoRA's layout
    (kohya keys on LCM-LoRA's target modules, UNet only; at full size rank = alpha = 64 in fp16, as
    latent-consistency/lcm-lora-sdv1-5), a random AutoencoderTiny (TAESD's size at full size) and the engine
    folder: the checkpoint with the demo tokens, the LoRA merged as an LCM-LoRA and the tiny VAE beside its own."""
    files = lcm_files(ckpt)
    if (files.engines / "manifest.json").exists():
        return
    from dataclasses import replace

    import torch
    from diffusers import UNet2DConditionModel

    from fashiongen.export.embeddings import load_embedding
    from fashiongen.export.lora import read_lora
    from fashiongen.export.sd_export import export_engine_folder
    from fashiongen.random_checkpoints.lora import write_random_lora
    from fashiongen.random_checkpoints.tiny_vae import TAESD, TINY_TAESD, write_tiny_vae

    log(f"writing the few-step contenders' LCM-LoRA, tiny VAE and {files.engines} (once) ...")
    unet = UNet2DConditionModel.from_pretrained(ckpt / "unet", local_files_only=True)
    rank = 64 if full_size else 4
    write_random_lora(files.lora, {"unet": unet}, targets="lcm", rank=rank, alpha=rank, std=0.01,
                      dtype=torch.float16 if full_size else torch.float32)
    del unet
    write_tiny_vae(files.taesd, TAESD if full_size else TINY_TAESD, seed=0)
    export_engine_folder(files.engines, ckpt, [load_embedding(path, token) for token, path in tokens.items()],
                         progress=False, loras=[replace(read_lora(files.lora), lcm=True)], tiny_vae_dir=files.taesd)


# -- venvs for the optimum contenders ------------------------------------------------------------------------
def ensure_venv(name: str, log) -> Path:
    venv = CACHE / name
    python = venv / "bin" / "python"
    stamp = venv / ".installed"
    if stamp.exists():
        return python
    log(f"creating {venv} ({', '.join(VENV_PACKAGES[name])}) ...")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    # numpy < 2: the torch 2.13.0 CPU wheel here and onnxruntime are built against 1.x.
    subprocess.run([str(python), "-m", "pip", "install", "-q", *VENV_PACKAGES[name], "numpy<2"], check=True)
    subprocess.run([str(python), "-m", "pip", "uninstall", "-y", "-q", "torchvision"], check=False)
    stamp.touch()
    return python


# -- driver ------------------------------------------------------------------------------------------------
def worker_env() -> dict:
    """The workers' environment: this checkout first on the path, the caller's PYTHONPATH kept after it (a
    worktree sharing another checkout's venv maps the package to itself through it)."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3, help="fresh-process runs per contender, interleaved")
    parser.add_argument("--images", type=int, default=1,
                        help="images per process (default 1): the first is timed stage by stage (end to end after "
                        "loading); more give the warm, steady-state end to end too (each adds a third to the run)")
    add_seed_argument(parser)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--only", default=None, help="comma-separated contenders (default: all available)")
    parser.add_argument("--optimum", action="store_true", help="also optimum-onnx and optimum-intel (own venvs)")
    parser.add_argument("--cutout-rss", action="store_true",
                        help="also the peak RSS of a 512 px txt2img + cutout product shot (one round)")
    parser.add_argument("--peak-gflops", type=float, default=None,
                        help="the CPU's fp32 peak, GFLOP/s (default: measured with bench/cpu_peak.py's FMA kernel)")
    parser.add_argument("--prepare-only", action="store_true",
                        help="build what the run needs (checkpoint, engine folders, DeepCache parts, INT8 networks, "
                        "segmenter, optimum venvs and exports), then stop: the timed run then starts from a warm cache")
    parser.add_argument("--tiny", action="store_true", help="the tiny checkpoint (a smoke test of this script)")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--checkpoint", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--engines", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--segmenter", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--json-out", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--image-out", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--spawned", type=float, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--prepare", action="store_true", help=argparse.SUPPRESS)
    a = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if a.worker:
        return run_worker(a)

    import numpy as np

    from fashiongen.bench.txt2img import prepare

    def log(msg):
        print(msg, flush=True)

    began = time.time()
    ckpt, engines, tokens = prepare(not a.tiny)
    from fashiongen.runtime.fastmodes import variant_files

    names = a.only.split(",") if a.only else [n for n in CONTENDERS if (a.optimum or CONTENDERS[n][0] is None)
                                              and n not in RSS_ONLY]
    if a.cutout_rss and not a.tiny and "fashiongen-ort-512-cutout" not in names:
        names.append("fashiongen-ort-512-cutout")
    manifest = prepare_fast_modes(ckpt, engines, {setup(n).fast for n in names if n in FASHIONGEN}, log)
    if any(n in FEW_STEP for n in names):
        prepare_lcm(ckpt, tokens, not a.tiny, log)
    skipped = {}
    for name in [n for n in names if n in FASHIONGEN]:
        backend, fast = setup(name).backend, setup(name).fast
        try:
            variant_files(manifest, backend, fast, str(engines))
        except ValueError as exc:
            skipped[name] = str(exc)
            names.remove(name)
    segmenter = None
    if any(has_cutout(n) for n in names):
        from fashiongen.bench.segmenter import prepare as prepare_segmenter

        segmenter = prepare_segmenter(not a.tiny)[1]
    pythons = {}
    for name in names:
        venv = CONTENDERS[name][0]
        try:
            pythons[name] = ensure_venv(venv, log) if venv else Path(sys.executable)
        except subprocess.CalledProcessError as exc:
            skipped[name] = f"venv failed: {exc}"
    names = [n for n in names if n in pythons]
    work = CACHE / "cpu_compare"
    work.mkdir(parents=True, exist_ok=True)
    for name in [n for n in names if not n.startswith("diffusers")]:  # outside the timing, once per bench run
        # optimum: its own export, once. This runtime: open every network of the contender, which writes the
        # backends' start-up caches (ORT's optimized graph, OpenVINO's compiled blob) where missing.
        if name.startswith("optimum") and (CACHE / f"{ckpt.name}-{name}" / "model_index.json").exists():
            continue
        log(f"preparing {name} ...")
        proc = subprocess.run([str(pythons[name]), "-m", "fashiongen.bench.cpu_compare", "--worker", name, "--prepare",
                               "--checkpoint", str(ckpt), "--engines", str(engines), "--segmenter", str(segmenter)],
                              cwd=ROOT, capture_output=True, text=True, env=worker_env())
        if proc.returncode != 0:
            skipped[name] = "preparing failed: " + (proc.stderr.strip().splitlines() or ["?"])[-1][:300]
            log(f"{name}: {skipped[name]}")
    names = [n for n in names if n not in skipped]
    if a.prepare_only:
        log(f"prepared in {time.time() - began:.0f} s: {', '.join(names)}"
            + (f"; skipped: {skipped}" if skipped else ""))
        return 0
    runs: dict[str, list[dict]] = {n: [] for n in names}
    images: dict[str, np.ndarray] = {}
    errors: dict[str, str] = {}
    peak, peak_source = peak_gflops(a.peak_gflops, log)
    started = time.time()
    for rnd in range(a.rounds):
        for name in names:
            if name in errors or (name in RSS_ONLY and rnd > 0):
                continue
            out, img = work / f"{name}.json", work / f"{name}.npy"
            out.unlink(missing_ok=True)
            cmd = [str(pythons[name]), "-m", "fashiongen.bench.cpu_compare", "--worker", name, "--checkpoint", str(ckpt),
                   "--engines", str(engines), "--segmenter", str(segmenter), "--json-out", str(out),
                   "--image-out", str(img), "--size", str(a.size), "--steps", str(a.steps), "--seed", str(a.seed),
                   "--images", str(1 if name in RSS_ONLY else a.images),
                   "--spawned", repr(time.time())]
            if a.threads:
                cmd += ["--threads", str(a.threads)]
            proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True,
                                  env=worker_env())
            if proc.returncode != 0 or not out.exists():
                errors[name] = (proc.stderr.strip().splitlines() or ["exit %d" % proc.returncode])[-1][:300]
                log(f"round {rnd + 1}: {name} FAILED: {errors[name]}")
                continue
            runs[name].append(json.loads(out.read_text()))
            images[name] = np.load(img)
            r = runs[name][-1]
            log(f"round {rnd + 1}: {name:26s} total {r['total']:7.2f} s  unet step {fmt(r['unet_step'], 3)} s  "
                f"cold start {r['cold_start']:6.1f} s  peak RSS {r['peak_rss_mb'] / 1024:.2f} GB")
    skipped.update({n: f"failed: {e}" for n, e in errors.items()})
    keys = ["cold_start", "text_encoder", "unet_step", "unet_total", "unet_calls", "vae_decoder", "cutout", "outside_networks", "total",
            "total_warm",
            "peak_rss_mb", "rss_after_load_mb"]
    contenders = {}
    for name in names:
        if not runs[name]:
            continue
        contenders[name] = {k: med(runs[name], k) for k in keys}
        contenders[name]["runs"] = runs[name]
        contenders[name]["description"] = CONTENDERS[name][1] + (f": {setup(name)}" if name in FASHIONGEN else "")
        # a cutout on white, or another model's few steps, is not comparable to the txt2img image
        if not has_cutout(name) and name not in FEW_STEP:
            contenders[name]["psnr_vs_exact"] = psnr(images.get(name), images.get(REFERENCE))
    flop = flop_floor(engines, manifest, a.size, peak)
    report = {"machine": machine_name(), "size": a.size, "steps": a.steps, "rounds": a.rounds, "images": a.images,
              "model": "tiny SD architecture (smoke test)" if a.tiny else "Full-size SD 1.5 architecture (random weights)",
              "seed": a.seed, "peak_gflops": peak, "peak_source": peak_source, "wall_s": time.time() - began,
              "rounds_wall_s": time.time() - started,
              "flop_floor": flop,
              "contenders": contenders, "skipped": skipped}
    if REFERENCE in contenders:
        report["goals"] = goals(report)
    else:
        report["goals"] = [f"{REFERENCE} did not run"]
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = "cpu_compare" if not a.tiny else "cpu_compare_tiny"
    (RESULTS / f"{stem}.json").write_text(json.dumps(report, indent=2, default=str))
    (RESULTS / f"{stem}.md").write_text(markdown(report) if REFERENCE in contenders else json.dumps(report, default=str))
    chart(report, RESULTS / f"{stem}.png")
    print(markdown(report) if REFERENCE in contenders else report)
    return 0


if __name__ == "__main__":
    sys.exit(main())

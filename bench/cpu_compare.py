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

What the first run builds, once, under bench/.cache: the checkpoint, its engine folder, DeepCache's UNet parts
and the INT8 networks (as ``fashiongen deepcache`` / ``fashiongen quantize`` make them), the SegFormer-B2
segmenter, the optimum venvs and their exports; every run then opens each contender once untimed, so the
backends' start-up caches exist before cold starts are measured.

writes ``bench/results/cpu_compare.{md,json,png}``. optimum-onnx pins transformers < 4.58 and optimum-intel
2.2 pins huggingface-hub < 1.22 (diffusers 0.42 needs >= 1.32): each gets a venv of its own under
bench/.cache, created here on first use (torch pinned to the CPU 2.13.0 wheel, torchvision removed), and is
driven as a subprocess of this file (which imports only the standard library at module level).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from statistics import median
from typing import NamedTuple

from .common import CACHE, NEGATIVE, PLAIN_PROMPT, PROMPT, RESULTS, ROOT, StageClock, psnr
REFERENCE = "fashiongen-ort"
EXACT = ("fashiongen-ort", "fashiongen-openvino")

CONTENDERS = {
    # name: (venv or None for this one, description)
    "diffusers-pytorch": (None, "diffusers StableDiffusionPipeline, PyTorch fp32 eager"),
    "optimum-onnx": ("venv-optimum-onnx", "optimum-onnx ORTStableDiffusionPipeline (ONNX Runtime CPU)"),
    "optimum-intel": ("venv-optimum-intel", "optimum-intel OVStableDiffusionPipeline, INFERENCE_PRECISION_HINT f32"),
    "fashiongen-ort": (None, "this runtime, ONNX Runtime, exact fp32"),
    "fashiongen-openvino": (None, "this runtime, OpenVINO f32, exact fp32"),
    "fashiongen-openvino-int8": (None, "this runtime, OpenVINO, --fast int8 (NNCF INT8 UNet and VAE decoder)"),
    "fashiongen-ort-deepcache": (None, "this runtime, ONNX Runtime, --fast deepcache (whole UNet every 3rd call)"),
    "fashiongen-ort-deepcache-7": (None, "this runtime, ONNX Runtime, --fast deepcache --deepcache-interval 7"),
    "fashiongen-openvino-deepcache": (None, "this runtime, OpenVINO f32, --fast deepcache"),
    "fashiongen-openvino-deepcache-int8": (None, "this runtime, OpenVINO, --fast deepcache,int8 (INT8 capture part "
                                                 "and VAE decoder)"),
    "fashiongen-shot": (None, "this runtime's fastest product shot on this CPU (see setup()), then the SegFormer-B2 "
                              "cutout on white"),
    # Not a speed contender: the peak RSS of a whole 512 px product shot (txt2img + cutout), one round.
    "fashiongen-ort-512-cutout": (None, "this runtime, ORT exact, 512 px txt2img then SegFormer-B2 cutout"),
}
RSS_ONLY = ("fashiongen-ort-512-cutout",)


# DeepCache's wider setting: the full UNet every 7th call. Measured on an AVX2 EPYC (full SD 1.5, 256 px, 20 steps,
# ORT): interval 3 39.0 dB from the exact image, 4 36.9 dB, 5 34.9 dB, 6 33.6 dB, 7 32.8 dB (2.2x-3.5x faster).
WIDE_INTERVAL = 7


class Setup(NamedTuple):
    """How one of this runtime's contenders runs (see worker_fashiongen)."""
    backend: str
    fast: str | None = None        # --fast value; None: the exact mode
    size: int | None = None        # None: --size
    cutout: str | None = None      # None, "resident" or "released"
    interval: int | None = None    # --deepcache-interval; None: the folder's


FASHIONGEN = {"fashiongen-ort": Setup("ort"), "fashiongen-openvino": Setup("openvino"),
              "fashiongen-openvino-int8": Setup("openvino", "int8"),
              "fashiongen-ort-deepcache": Setup("ort", "deepcache"),
              "fashiongen-ort-deepcache-7": Setup("ort", "deepcache", interval=WIDE_INTERVAL),
              "fashiongen-openvino-deepcache": Setup("openvino", "deepcache"),
              "fashiongen-openvino-deepcache-int8": Setup("openvino", "deepcache,int8"),
              "fashiongen-shot": None,  # resolved per CPU by setup()
              "fashiongen-ort-512-cutout": Setup("ort", size=512, cutout="released")}


def setup(name: str) -> Setup:
    """A contender's setup; the product shot runs the fastest mode this CPU has: DeepCache on INT8 networks
    (OpenVINO) with INT8 dot-product instructions (VNNI, AMX), else DeepCache at the wider interval on fp32
    ONNX Runtime (INT8 without them ran slower than fp32)."""
    if name != "fashiongen-shot":
        return FASHIONGEN[name]
    from fashiongen.runtime.fastmodes import has_int8_dot_product

    if has_int8_dot_product():
        return Setup("openvino", "deepcache,int8", cutout="resident")
    return Setup("ort", "deepcache", cutout="resident", interval=WIDE_INTERVAL)
CUTOUT_CLASSES = [4, 5, 6, 7]  # ATR upper-clothes, skirt, pants, dress


def has_cutout(name: str) -> bool:
    return name in FASHIONGEN and setup(name).cutout is not None
VENV_PACKAGES = {
    "venv-optimum-onnx": ["torch==2.13.0", "optimum-onnx[onnxruntime]==0.1.0", "diffusers==0.35.2", "pillow"],
    # transformers 4.57: diffusers 0.35 imports tokenizers that transformers 5 dropped; hub then resolves < 1.
    "venv-optimum-intel": ["torch==2.13.0", "optimum-intel[openvino]==2.2.0", "transformers==4.57.6", "diffusers==0.35.2",
                           "pillow"],
}


# -- workers (one process per contender per round) ----------------------------------------------------------
def peak_rss_mb() -> float:
    """This process's peak RSS. Linux's ``ru_maxrss`` survives ``execve``: a worker would inherit the driver's
    high-water mark (which holds torch, and the export and quantization on a first run), so read the memory
    map's own ``VmHWM``, which starts afresh with the new program."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def worker_diffusers(a, clock):
    import torch
    from diffusers import StableDiffusionPipeline

    torch.set_num_threads(a.threads or os.cpu_count())
    pipe = StableDiffusionPipeline.from_pretrained(a.checkpoint, safety_checker=None, local_files_only=True)
    for path in sorted((Path(a.checkpoint) / "embeddings").iterdir()):
        pipe.load_textual_inversion(str(path), token="<midjourney-style>" if "midjourney" in path.name else "<wrong>")
    pipe.set_progress_bar_config(disable=True)
    for name, module in (("text_encoder", pipe.text_encoder), ("unet", pipe.unet)):
        module.forward = clock.wrap(name, module.forward)
    pipe.vae.decode = clock.wrap("vae_decoder", pipe.vae.decode)

    def generate():
        with torch.inference_mode():
            out = pipe(PROMPT, negative_prompt=NEGATIVE, num_inference_steps=a.steps, guidance_scale=7.5,
                       height=a.size, width=a.size, generator=torch.Generator("cpu").manual_seed(a.seed),
                       output_type="np").images
        return (out[0] * 255).round().clip(0, 255).astype("uint8")
    return generate


def worker_fashiongen(a, clock, backend, fast, size=None, cutout=None, interval=None):
    """This runtime, every network opened before the clock starts. ``cutout``: then the garment cutout
    (SegFormer-B2 random weights, upper-body classes) on white, with its segmenter either ``"resident"``
    (opened up front, timed as the ``cutout`` stage) or opened after the txt2img networks are
    ``"released"`` (a whole shot's peak RSS: networks a stage does not need are not resident)."""
    from fashiongen.runtime.cutout import CutoutPipeline
    from fashiongen.runtime.engines import EngineSet, backend_factory
    from fashiongen.runtime.fastmodes import deepcache_interval, variant_files
    from fashiongen.runtime.manifest import load_manifest
    from fashiongen.runtime.txt2img import Txt2ImgPipeline, Txt2ImgRequest

    manifest = load_manifest(a.engines)
    engines = EngineSet(a.engines, backend_factory(backend, a.threads), manifest,
                        files=variant_files(manifest, backend, fast))
    interval = deepcache_interval(manifest, fast, interval)
    pipeline = Txt2ImgPipeline(engines, deepcache=interval)
    unets = ("unet_capture", "unet_shallow") if interval else ("unet",)
    for name in ("text_encoder", *unets, "vae_decoder"):  # open every network: ready to run
        engine = engines[name]
        engine.run = clock.wrap("unet" if name in unets else name, engine.run)
    request = Txt2ImgRequest(prompt=PROMPT, negative_prompt=NEGATIVE, seed=a.seed, steps=a.steps,
                             height=size or a.size, width=size or a.size)
    if cutout is None:
        return lambda: pipeline(request, progress=False).images[0]
    segmenter = EngineSet(a.segmenter, backend_factory(backend, a.threads))
    if cutout == "resident" or a.prepare:
        segmenter["segmenter"]  # noqa: B018 (open it now)
    cut = CutoutPipeline(segmenter)

    def generate():
        images = pipeline(request, progress=False).images
        if cutout == "released":
            engines.release_all()
        result = clock.wrap("cutout", cut)(images, CUTOUT_CLASSES).results[0]
        return result.image if result.image is not None else images[0]
    return generate


def worker_optimum(a, clock, kind):
    """optimum-onnx / optimum-intel in their own venv; the model folder is exported once, here."""
    import torch

    torch.set_num_threads(a.threads or os.cpu_count())
    folder = CACHE / f"{Path(a.checkpoint).name}-{kind}"
    if kind == "optimum-intel":
        from optimum.intel import OVStableDiffusionPipeline as Pipe
        kw = {"ov_config": {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"}}
    else:
        from optimum.onnxruntime import ORTStableDiffusionPipeline as Pipe
        kw = {}
    if not (folder / "model_index.json").exists():
        tmp = folder.with_name(folder.name + ".partial")
        pipe = Pipe.from_pretrained(a.checkpoint, export=True, **kw)
        pipe.save_pretrained(tmp)
        del pipe
        os.replace(tmp, folder)
    if a.prepare:
        return None
    pipe = Pipe.from_pretrained(folder, **kw)
    if hasattr(pipe, "compile"):
        pipe.compile()
    for path in sorted((Path(a.checkpoint) / "embeddings").iterdir()):  # learned tokens, where it can take them
        try:
            pipe.load_textual_inversion(str(path), token="<midjourney-style>" if "midjourney" in path.name else "<wrong>")
        except Exception:
            pass
    pipe.set_progress_bar_config(disable=True)
    for name, attr in (("text_encoder", "text_encoder"), ("unet", "unet"), ("vae_decoder", "vae_decoder")):
        part = getattr(pipe, attr, None)
        if part is not None and hasattr(part, "forward"):
            part.forward = clock.wrap(name, part.forward)
    learned = "<wrong>" in pipe.tokenizer.get_vocab()
    import numpy as np

    def generate():
        out = pipe(PROMPT if learned else PLAIN_PROMPT, negative_prompt=NEGATIVE if learned else "blurry",
                   num_inference_steps=a.steps, guidance_scale=7.5, height=a.size, width=a.size,
                   generator=torch.Generator("cpu").manual_seed(a.seed), output_type="np").images
        return (np.asarray(out[0]) * 255).round().clip(0, 255).astype("uint8")
    return generate


def run_worker(a) -> int:
    spawned = a.spawned
    clock = StageClock()
    if a.worker == "diffusers-pytorch":
        generate = worker_diffusers(a, clock)
    elif a.worker.startswith("optimum"):
        generate = worker_optimum(a, clock, a.worker)
    else:
        generate = worker_fashiongen(a, clock, *setup(a.worker))
    if a.prepare:
        return 0
    ready = time.time()
    rss_loaded = peak_rss_mb()
    clock.stages.clear()
    start = time.perf_counter()
    image = generate()
    total = time.perf_counter() - start
    stages = {name: list(calls) for name, calls in clock.stages.items()}  # the first image's calls only
    again = []  # the same request again in the same process: the steady state of a warm server
    for _ in range(a.images - 1):
        start = time.perf_counter()
        generate()
        again.append(time.perf_counter() - start)
    import numpy as np

    np.save(a.image_out, image)
    networks = sum(sum(v) for v in stages.values())
    result = {"cold_start": ready - spawned, "total": total, "total_warm": median(again) if again else None,
              "peak_rss_mb": peak_rss_mb(),
              "rss_after_load_mb": rss_loaded,
              "text_encoder": sum(stages.get("text_encoder", [])) or None,
              "unet_step": median(stages["unet"]) if stages.get("unet") else None,
              "unet_total": sum(stages.get("unet", [])) or None, "unet_calls": len(stages.get("unet", [])),
              "vae_decoder": sum(stages.get("vae_decoder", [])) or None,
              "cutout": sum(stages.get("cutout", [])) or None,
              "outside_networks": total - networks if stages else None}
    Path(a.json_out).write_text(json.dumps(result))
    return 0


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


# -- the FLOP floor ----------------------------------------------------------------------------------------
def network_gflop(path: Path, contract, dims: dict, sizes: dict) -> dict:
    """GFLOP of one call of the network in ``path`` at a static shape (2 FLOP per multiply-add): its inputs
    are the contract's shapes with ``dims`` (the folder's fixed sizes) and ``sizes`` (the dynamic axes) put
    in. Counted on the OpenVINO graph read from the ONNX file: Convolution, GroupConvolution, MatMul (linear
    layers; attention's QK^T and AV, whose second operand is not a weight) and the rest (elementwise, norms,
    softmax) left out as they are memory-bound and < 1% of the count."""
    import openvino as ov

    model = ov.Core().read_model(str(path))
    model.reshape({s.name: [sizes.get(d, d) for d in s.resolve(dims)] for s in contract.inputs})
    counts = {"conv": 0.0, "matmul_linear": 0.0, "matmul_attention": 0.0}
    for op in model.get_ordered_ops():
        kind = op.get_type_name()
        if kind in ("Convolution", "GroupConvolution"):
            w = list(op.get_input_shape(1))
            per_out = (w[1] * w[2] * w[3]) if kind == "Convolution" else (w[2] * w[3] * w[4])
            counts["conv"] += 2.0 * _numel(op.get_output_shape(0)) * per_out
        elif kind == "MatMul":
            a = list(op.get_input_shape(0))
            k = a[-1] if not op.get_transpose_a() else a[-2]
            constant_b = op.input_value(1).get_node().get_type_name() in ("Constant", "Convert")
            counts["matmul_linear" if constant_b else "matmul_attention"] += 2.0 * _numel(op.get_output_shape(0)) * k
    counts = {k: v / 1e9 for k, v in counts.items()}
    counts["total"] = sum(counts.values())
    return counts


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


def flop_floor(engines: Path, manifest, size: int, peak: float) -> dict:
    """The UNet's (batch 2: guidance) and the VAE decoder's GFLOP at ``size`` px, and their shortest
    possible times at ``peak`` GFLOP/s."""
    from fashiongen.runtime.contracts import UNET, VAE_DECODER

    latent = size // int(manifest.vae.downscale)
    sizes = {"latent_height": latent, "latent_width": latent, "image_height": size, "image_width": size}
    unet = network_gflop(engines / "unet.onnx", UNET, manifest.dims, {**sizes, "batch": 2})
    vae = network_gflop(engines / "vae_decoder.onnx", VAE_DECODER, manifest.dims, {**sizes, "batch": 1})
    return {"latent": latent, "counts": unet, "unet_gflop_per_step": unet["total"],
            "floor_step_s": unet["total"] / peak, "vae_gflop": vae["total"], "floor_vae_s": vae["total"] / peak}


def peak_gflops(given: float | None, log) -> tuple[float, str]:
    """The fp32 peak: ``--peak-gflops`` when given, else measured (bench/cpu_peak.py)."""
    if given:
        return given, "given (--peak-gflops)"
    from fashiongen.bench.cpu_peak import measure_peak_gflops

    log("measuring the CPU's fp32 peak (FMA kernel on every core) ...")
    measured = measure_peak_gflops()
    if measured is None:
        raise SystemExit("no C compiler to measure the fp32 peak: pass --peak-gflops")
    return measured, "measured (FMA-throughput kernel on every core, bench/cpu_peak.py)"


def machine_name() -> str:
    """CPU model, vector ISA and core count (from /proc/cpuinfo where there is one)."""
    from fashiongen.runtime.cpu import cpu_flags
    from fashiongen.runtime.fastmodes import has_int8_dot_product

    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")),
                 platform.processor() or platform.machine())
    flags = cpu_flags()
    isa = "AVX-512" if " avx512f" in flags else "AVX2" if " avx2" in flags else "no AVX2"
    int8 = ", INT8 dot products" if " avx2" in flags and has_int8_dot_product() else ""
    return f"{model}, {isa}{int8}, {os.cpu_count()} cores, Python {platform.python_version()}"


# -- reporting ---------------------------------------------------------------------------------------------
def med(runs: list[dict], key: str):
    values = [r[key] for r in runs if r.get(key) is not None]
    return median(values) if values else None


def fmt(v, digits=2):
    if v is None:
        return "-"
    if v == float("inf"):
        return "inf"
    return f"{v:.{digits}f}"


def markdown(report: dict) -> str:
    rows = report["contenders"]
    ref = rows[REFERENCE]
    flop = report["flop_floor"]
    lines = [f"# CPU text → image, side by side ({report['machine']})", "",
             f"{report['model']}, {report['size']}x{report['size']}, "
             f"{report['steps']} steps (PNDM), guidance 7.5, seed {report['seed']}; {report['rounds']} rounds, "
             "each contender in a fresh process per round, rounds interleaved; medians. Cold start: process spawn "
             "to ready to run; stages and end to end: the first image after that; warm end to end: the same "
             f"request again in the same process ({report.get('images', 1)} images per process). Ratios: the "
             f"contender's end to end over {REFERENCE}'s (> 1: this runtime is faster).", "",
             "| contender | cold start s | text enc s | UNet step s | UNet GFLOP/s (% of peak) | VAE dec s | "
             "cutout s | end to end s | warm end to end s | x vs ORT exact | peak RSS GB | PSNR vs exact dB |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name, r in rows.items():
        step = r.get("unet_step")
        full = name not in FASHIONGEN or (not setup(name).size and "deepcache" not in (setup(name).fast or ""))
        rate = "-"  # the count is a whole UNet call at the report's size: not a shallow step, not another size
        if step and full:
            rate = f"{flop['unet_gflop_per_step'] / step:.0f} ({100 * flop['unet_gflop_per_step'] / step / report['peak_gflops']:.0f}%)"
        ratio = r["total"] / ref["total"] if r.get("total") and ref.get("total") else None
        lines.append(f"| {name} | {fmt(r.get('cold_start'), 1)} | {fmt(r.get('text_encoder'))} | {fmt(step, 3)} | "
                     f"{rate} | {fmt(r.get('vae_decoder'))} | {fmt(r.get('cutout'))} | {fmt(r.get('total'), 1)} | "
                     f"{fmt(r.get('total_warm'), 1)} | {fmt(ratio)} | "
                     f"{fmt(r['peak_rss_mb'] / 1024 if r.get('peak_rss_mb') else None)} | {fmt(r.get('psnr_vs_exact'), 1)} |")
    lines += ["", f"FLOP floor: the UNet does {flop['unet_gflop_per_step']:.0f} GFLOP per guided step (batch 2, "
              f"{flop['latent']}x{flop['latent']} latents; conv {flop['counts']['conv']:.0f}, linear "
              f"{flop['counts']['matmul_linear']:.0f}, attention {flop['counts']['matmul_attention']:.0f}), the VAE "
              f"decoder {flop['vae_gflop']:.0f} GFLOP. At the CPU's fp32 peak of {report['peak_gflops']:.0f} GFLOP/s "
              f"({report['peak_source']}) a step takes at least {flop['floor_step_s']:.3f} s, {report['steps']} steps "
              f"{flop['floor_step_s'] * report['steps']:.1f} s, and the decode {flop['floor_vae_s']:.2f} s."]
    if report.get("skipped"):
        lines += ["", "Not run: " + "; ".join(f"{k} ({v})" for k, v in report["skipped"].items())]
    lines += ["", "Goals:"] + [f"- {g}" for g in report["goals"]]
    return "\n".join(lines) + "\n"


def goals(report: dict) -> list[str]:
    rows = report["contenders"]
    out = []
    exact_name = min((n for n in EXACT if n in rows and rows[n].get("total")), key=lambda n: rows[n]["total"],
                     default=None)
    if exact_name is None:
        return ["no exact-mode result"]
    exact = rows[exact_name]
    def speedup(name):
        r = rows.get(name)
        return r["total"] / exact["total"] if r and r.get("total") else None
    flop = report["flop_floor"]
    # The exact mode's end to end had its UNet and VAE decoder run at 100% of the fp32 peak (the rest as measured):
    # no fp32 kernel can beat it, so a goal above contender / this is out of reach without fewer FLOPs.
    floor_total = (exact["total"] - (exact.get("unet_total") or 0) - (exact.get("vae_decoder") or 0)
                   + exact.get("unet_calls", 0) * flop["floor_step_s"] + flop["floor_vae_s"])

    def verdict(name, goal):
        s = speedup(name)
        if not s:
            return "not measured"
        ceiling = rows[name]["total"] / floor_total
        return f"{fmt(s)}x (goal >= {goal}x, at most {ceiling:.2f}x with the UNet and VAE decoder at 100% of the " \
               f"fp32 peak): {'met' if s >= goal else 'not met'}"
    out.append(f"exact fp32 ({exact_name}) vs diffusers PyTorch: {verdict('diffusers-pytorch', 2)}")
    for name in ("optimum-onnx", "optimum-intel"):
        out.append(f"exact fp32 vs {name}: {verdict(name, 1.1)}")
    if exact.get("unet_step"):
        share = flop["unet_gflop_per_step"] / exact["unet_step"] / report["peak_gflops"]
        out.append(f"UNet step at {100 * share:.0f}% of the fp32 peak (goal >= 85%): {'met' if share >= 0.85 else 'not met'}")
    for name, fast in rows.items():
        if name not in FASHIONGEN or not setup(name).fast or has_cutout(name) or not fast.get("total"):
            continue
        s = exact["total"] / fast["total"]
        p = fast.get("psnr_vs_exact")
        out.append(f"fast mode {name}: {s:.2f}x the exact mode (goal >= 3x), PSNR {fmt(p, 1)} dB vs exact (goal >= 30): "
                   f"{'met' if s >= 3 and p and p >= 30 else 'not met'}")
    opt = rows.get("optimum-onnx")
    if opt and opt.get("cold_start"):
        r = exact["cold_start"] / opt["cold_start"]
        out.append(f"cold start {exact['cold_start']:.1f} s = {r:.2f} of optimum-onnx's (goal < 0.33): {'met' if r < 1 / 3 else 'not met'}")
    whole = rows.get("fashiongen-ort-512-cutout")
    if whole and whole.get("peak_rss_mb"):
        out.append(f"peak RSS of a whole 512 px product shot (txt2img + cutout, ORT): {whole['peak_rss_mb'] / 1024:.2f} GB")
    others = [r["peak_rss_mb"] for n, r in rows.items() if not n.startswith("fashiongen") and r.get("peak_rss_mb")]
    if others:
        out.append(f"peak RSS {exact['peak_rss_mb'] / 1024:.2f} GB vs lowest contender {min(others) / 1024:.2f} GB: "
                   f"{'met' if exact['peak_rss_mb'] <= min(others) else 'not met'}")
    shot = rows.get("fashiongen-shot")
    for key, when in (("total", "first image after loading"), ("total_warm", "warm process")):
        if shot and shot.get(key):
            out.append(f"full-size {report['size']} px product shot ({report['steps']} steps, guidance, cutout), "
                       f"{when}: {shot[key]:.1f} s (target < 10 s): {'met' if shot[key] < 10 else 'not met'}")
    return out


def chart(report: dict, path: Path) -> None:
    """A horizontal bar chart of end-to-end medians (Pillow only)."""
    from PIL import Image, ImageDraw

    rows = [(n, r["total"]) for n, r in report["contenders"].items() if r.get("total") and n not in RSS_ONLY]
    if not rows:
        return
    width, bar_h, left = 900, 34, 230
    img = Image.new("RGB", (width, 60 + bar_h * len(rows)), "white")
    draw = ImageDraw.Draw(img)
    draw.text((10, 10), f"end to end, {report['size']} px, {report['steps']} steps, median s (lower is better)", fill="black")
    top = max(t for _, t in rows)
    for i, (name, total) in enumerate(rows):
        y = 40 + i * bar_h
        w = int((width - left - 80) * total / top)
        color = (40, 110, 200) if name.startswith("fashiongen") else (150, 150, 150)
        draw.text((10, y + 8), name, fill="black")
        draw.rectangle([left, y + 4, left + w, y + bar_h - 6], fill=color)
        draw.text((left + w + 6, y + 8), f"{total:.1f}", fill="black")
    img.save(path)


# -- driver ------------------------------------------------------------------------------------------------
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3, help="fresh-process runs per contender, interleaved")
    parser.add_argument("--images", type=int, default=1,
                        help="images per process (default 1): the first is timed stage by stage (end to end after "
                        "loading); more give the warm, steady-state end to end too (each adds a third to the run)")
    parser.add_argument("--seed", type=int, default=19687)
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
    ckpt, engines, _ = prepare(not a.tiny)
    from fashiongen.runtime.fastmodes import variant_files

    names = a.only.split(",") if a.only else [n for n in CONTENDERS if (a.optimum or CONTENDERS[n][0] is None)
                                              and n not in RSS_ONLY]
    if a.cutout_rss and not a.tiny and "fashiongen-ort-512-cutout" not in names:
        names.append("fashiongen-ort-512-cutout")
    manifest = prepare_fast_modes(ckpt, engines, {setup(n).fast for n in names if n in FASHIONGEN}, log)
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
    for name in [n for n in names if n != "diffusers-pytorch"]:  # outside the timing, once per bench run
        # optimum: its own export, once. This runtime: open every network of the contender, which writes the
        # backends' start-up caches (ORT's optimized graph, OpenVINO's compiled blob) where missing.
        if name.startswith("optimum") and (CACHE / f"{ckpt.name}-{name}" / "model_index.json").exists():
            continue
        log(f"preparing {name} ...")
        proc = subprocess.run([str(pythons[name]), "-m", "fashiongen.bench.cpu_compare", "--worker", name, "--prepare",
                               "--checkpoint", str(ckpt), "--engines", str(engines), "--segmenter", str(segmenter)],
                              cwd=ROOT, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
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
                                  env={**os.environ, "PYTHONPATH": str(ROOT)})
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
        if not has_cutout(name):  # a cutout on white is not comparable to the txt2img image
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

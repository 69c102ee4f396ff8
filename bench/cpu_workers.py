"""The contenders of bench/cpu_compare.py and the worker process that runs one of them: each contender runs in
a fresh process per round (``python -m fashiongen.bench.cpu_compare --worker NAME``), which times its first
image stage by stage and writes the figures and the image for the driver. Only the standard library is
imported at module level: the optimum contenders' workers run in venvs of their own.
"""
from __future__ import annotations

import json
import os
import resource
import time
from pathlib import Path
from statistics import median
from typing import NamedTuple

from .common import CACHE, NEGATIVE, PLAIN_PROMPT, PROMPT, StageClock

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
    # Few-step contenders: the checkpoint with a random LoRA of LCM-LoRA's shape merged and a TAESD-size tiny VAE
    # (see lcm_files()), 4 LCM steps at guidance 1 (no guidance batch), the settings of runtime/presets.py.
    **{f"fashiongen-lcm-{px}": (None, f"this runtime, ORT, --preset fast (LCM-LoRA merged at export: 4 LCM steps, "
                                      f"guidance 1, tiny VAE decoder), then the SegFormer-B2 cutout on white, {px} px")
       for px in (256, 512)},
    **{f"diffusers-lcm-{px}": (None, "diffusers StableDiffusionPipeline + the same LCM-LoRA (load_lora_weights, "
                                     "fuse_lora) + LCMScheduler + AutoencoderTiny, 4 steps, guidance 1, PyTorch fp32, "
                                     f"{px} px (no cutout)")
       for px in (256, 512)},
}
RSS_ONLY = ("fashiongen-ort-512-cutout",)
#: The few-step contenders and their image size (they run at it whatever --size says; their steps are the preset's).
FEW_STEP = {"fashiongen-lcm-256": 256, "fashiongen-lcm-512": 512, "diffusers-lcm-256": 256, "diffusers-lcm-512": 512}


class LcmFiles(NamedTuple):
    """What the few-step contenders run, built once beside the checkpoint (bench/cpu_compare.py prepare_lcm)."""
    lora: Path      # a random LoRA of LCM-LoRA's layout (kohya keys, UNet only; rank 64 at full size)
    taesd: Path     # a random AutoencoderTiny folder (TAESD's size at full size)
    engines: Path   # the checkpoint exported with --lcm-lora LORA --tiny-vae TAESD and the demo tokens


def lcm_files(checkpoint) -> LcmFiles:
    ckpt = Path(checkpoint)
    return LcmFiles(ckpt.with_name(f"{ckpt.name}-lcm-lora.safetensors"), ckpt.with_name(f"{ckpt.name}-taesd"),
                    ckpt.with_name(f"{ckpt.name}-lcm-engines"))


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
    preset: str | None = None      # --preset value, on the LCM engine folder (lcm_files); None: --steps on --engines


FASHIONGEN = {"fashiongen-ort": Setup("ort"), "fashiongen-openvino": Setup("openvino"),
              "fashiongen-openvino-int8": Setup("openvino", "int8"),
              "fashiongen-ort-deepcache": Setup("ort", "deepcache"),
              "fashiongen-ort-deepcache-7": Setup("ort", "deepcache", interval=WIDE_INTERVAL),
              "fashiongen-openvino-deepcache": Setup("openvino", "deepcache"),
              "fashiongen-openvino-deepcache-int8": Setup("openvino", "deepcache,int8"),
              "fashiongen-shot": None,  # resolved per CPU by setup()
              "fashiongen-ort-512-cutout": Setup("ort", size=512, cutout="released"),
              "fashiongen-lcm-256": Setup("ort", size=256, cutout="resident", preset="fast"),
              "fashiongen-lcm-512": Setup("ort", size=512, cutout="resident", preset="fast")}


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


def diffusers_pipeline(a):
    """diffusers' StableDiffusionPipeline of the bench checkpoint with its learned tokens, on --threads threads."""
    import torch
    from diffusers import StableDiffusionPipeline

    torch.set_num_threads(a.threads or os.cpu_count())
    pipe = StableDiffusionPipeline.from_pretrained(a.checkpoint, safety_checker=None, local_files_only=True)
    for path in sorted((Path(a.checkpoint) / "embeddings").iterdir()):
        pipe.load_textual_inversion(str(path), token="<midjourney-style>" if "midjourney" in path.name else "<wrong>")
    pipe.set_progress_bar_config(disable=True)
    return pipe


def diffusers_generate(pipe, a, clock, size: int, steps: int, guidance: float):
    """The timed call of a diffusers contender (its networks on ``clock``): the first image as uint8."""
    import torch

    for name, module in (("text_encoder", pipe.text_encoder), ("unet", pipe.unet)):
        module.forward = clock.wrap(name, module.forward)
    pipe.vae.decode = clock.wrap("vae_decoder", pipe.vae.decode)

    def generate():
        with torch.inference_mode():
            out = pipe(PROMPT, negative_prompt=NEGATIVE, num_inference_steps=steps, guidance_scale=guidance,
                       height=size, width=size, generator=torch.Generator("cpu").manual_seed(a.seed),
                       output_type="np").images
        return (out[0] * 255).round().clip(0, 255).astype("uint8")
    return generate


def worker_diffusers(a, clock):
    return diffusers_generate(diffusers_pipeline(a), a, clock, a.size, a.steps, 7.5)


def worker_diffusers_lcm(a, clock, size: int):
    """diffusers' own few-step recipe (its LCM-LoRA docs): the LoRA loaded and fused (then unloaded, so no peft
    layer wraps the UNet: merged weights, as this runtime's export has them), LCMScheduler from the
    checkpoint's config, AutoencoderTiny as the VAE; steps and guidance are this runtime's preset's."""
    from diffusers import AutoencoderTiny, LCMScheduler

    from fashiongen.runtime.presets import FAST_STEPS, LCM_LORA_GUIDANCE

    files = lcm_files(a.checkpoint)
    pipe = diffusers_pipeline(a)
    pipe.load_lora_weights(str(files.lora.parent), weight_name=files.lora.name)
    pipe.fuse_lora()
    pipe.unload_lora_weights()
    pipe.scheduler = LCMScheduler.from_config(pipe.scheduler.config)
    pipe.vae = AutoencoderTiny.from_pretrained(files.taesd, local_files_only=True).eval()
    return diffusers_generate(pipe, a, clock, size, FAST_STEPS, LCM_LORA_GUIDANCE)


def preset_sampling(preset: str | None, manifest, engine_dir, steps: int) -> dict:
    """The request's sampling fields: ``--preset``'s (scheduler, steps, guidance, decoder) as ``generate`` picks
    them, or just ``steps`` (the checkpoint's scheduler, guidance 7.5, the full decoder)."""
    if preset is None:
        return {"steps": steps}
    from fashiongen.runtime.presets import FIELDS, resolve_preset

    chosen = resolve_preset(preset, manifest, engine_dir)
    return {name: getattr(chosen, name) for name in FIELDS if getattr(chosen, name) is not None}


def worker_fashiongen(a, clock, backend, fast, size=None, cutout=None, interval=None, preset=None):
    """This runtime, every network opened before the clock starts. ``cutout``: then the garment cutout
    (SegFormer-B2 random weights, upper-body classes) on white, with its segmenter either ``"resident"``
    (opened up front, timed as the ``cutout`` stage) or opened after the txt2img networks are
    ``"released"`` (a whole shot's peak RSS: networks a stage does not need are not resident). ``preset``:
    on the LCM engine folder (:func:`lcm_files`), sampled as ``generate --preset`` does."""
    from fashiongen.runtime.cutout import CutoutPipeline
    from fashiongen.runtime.engines import EngineSet, backend_factory
    from fashiongen.runtime.fastmodes import deepcache_interval, variant_files
    from fashiongen.runtime.manifest import load_manifest
    from fashiongen.runtime.txt2img import DECODERS, Txt2ImgPipeline, Txt2ImgRequest

    engine_dir = lcm_files(a.checkpoint).engines if preset else a.engines
    manifest = load_manifest(engine_dir)
    engines = EngineSet(engine_dir, backend_factory(backend, a.threads), manifest,
                        files=variant_files(manifest, backend, fast))
    interval = deepcache_interval(manifest, fast, interval)
    pipeline = Txt2ImgPipeline(engines, deepcache=interval)
    sampling = preset_sampling(preset, manifest, engine_dir, a.steps)
    unets = ("unet_capture", "unet_shallow") if interval else ("unet",)
    decoder = DECODERS[sampling.get("decoder") or "full"][0]
    for name in ("text_encoder", *unets, decoder):  # open every network: ready to run
        engine = engines[name]
        engine.run = clock.wrap("unet" if name in unets else "vae_decoder" if name == decoder else name, engine.run)
    request = Txt2ImgRequest(prompt=PROMPT, negative_prompt=NEGATIVE, seed=a.seed, height=size or a.size,
                             width=size or a.size, **sampling)
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
    elif a.worker.startswith("diffusers-lcm"):
        generate = worker_diffusers_lcm(a, clock, FEW_STEP[a.worker])
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

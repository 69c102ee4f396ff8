"""INT8 UNet for the ``int8`` fast mode: NNCF post-training quantization for OpenVINO, calibrated on the
UNet inputs of real denoising trajectories.

Calibration is recorded, not invented: the fp32 runtime generates a few product shots (fashion prompts,
the folder's learned tokens, guidance, the default scheduler) and a :class:`RecordingEngine` wrapped
around its UNet keeps every guided call's feeds (latents at every noise level, the timesteps, the
positive and negative text embeddings). NNCF collects activation ranges on those and writes an OpenVINO
IR (``unet.int8.xml`` + ``.bin``) next to the fp32 files; the manifest's ``variants.int8`` section lists it.
Quantization needs nncf and openvino only (no torch).
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from runtime.engines import EngineSet
from runtime.manifest import MANIFEST_NAME, load_manifest, sha256_file, write_json_atomic

CALIBRATION_PROMPTS = [
    "a photo of a black short sleeve crewneck crop top",
    "a <midjourney-style> product photo of a red floral summer dress",
    "blue denim jacket with silver buttons, studio shot",
    "white leather sneakers on a plain background",
    "a beige wool trench coat, catalog photo",
    "green pleated midi skirt, product shot",
    "grey hooded sweatshirt with a kangaroo pocket",
    "a <midjourney-style> photo of black slim fit trousers",
]
INT8_FILE = "unet.int8.xml"


class RecordingEngine:
    """Wraps an engine and keeps a copy of every feed it runs (calibration data for quantization)."""

    def __init__(self, engine):
        self.engine = engine
        self.contract = engine.contract
        self.feeds: list[dict[str, np.ndarray]] = []

    def run(self, feeds):
        self.feeds.append({k: np.array(v, copy=True) for k, v in feeds.items()})
        return self.engine.run(feeds)


def record_unet_feeds(engine_dir: Path, factory, prompts: int, steps: int, size: int, seed: int = 1,
                      negative: str = "") -> list[dict[str, np.ndarray]]:
    """UNet feeds from ``prompts`` full fp32 generations (``steps`` each) at ``size`` px."""
    from runtime.txt2img import Txt2ImgPipeline, Txt2ImgRequest

    engines = EngineSet(engine_dir, factory)
    recorder = RecordingEngine(engines["unet"])
    engines._open["unet"] = recorder
    pipeline = Txt2ImgPipeline(engines)
    learned = engines.manifest.tokenizer.get("learned_tokens", {})
    for i in range(prompts):
        prompt = CALIBRATION_PROMPTS[i % len(CALIBRATION_PROMPTS)]
        if "<midjourney-style>" in prompt and "<midjourney-style>" not in learned:
            prompt = prompt.replace("<midjourney-style> ", "")
        neg = negative or ("<wrong>, blurry" if "<wrong>" in learned else "blurry")
        pipeline(Txt2ImgRequest(prompt=prompt, negative_prompt=neg, seed=seed + i, steps=steps, height=size,
                                width=size), progress=False)
    return recorder.feeds


def quantize_unet(engine_dir: Path, prompts: int = 4, steps: int = 20, size: int = 256, subset: int | None = None,
                  threads: int | None = None, log=print) -> dict:
    """Record calibration feeds, quantize the UNet with NNCF, write ``unet.int8.xml`` and the manifest entry."""
    try:
        import nncf
        import openvino as ov
    except ImportError:
        raise ValueError("quantize: needs the openvino and nncf packages (pip install -e '.[cpu-fast]')") from None
    from runtime.openvino_engine import core, openvino_factory

    engine_dir = Path(engine_dir)
    manifest = load_manifest(engine_dir)
    if "unet" not in manifest.networks:
        raise ValueError(f"--engines: {engine_dir} has no UNet to quantize")
    if manifest.kind != "txt2img":
        raise ValueError(f"--engines: quantize supports txt2img folders (this one is {manifest.kind})")
    started = time.perf_counter()
    log(f"recording calibration: {prompts} prompt(s) x {steps} steps at {size} px ...")
    feeds = record_unet_feeds(engine_dir, openvino_factory(threads), prompts, steps, size)
    recorded = time.perf_counter()
    subset = min(subset or len(feeds), len(feeds))
    log(f"quantizing the UNet on {subset} of {len(feeds)} recorded calls ...")
    model = core().read_model(str(engine_dir / manifest.networks["unet"].file))
    quantized = nncf.quantize(model, nncf.Dataset(feeds), subset_size=subset,
                              model_type=nncf.ModelType.TRANSFORMER, fast_bias_correction=True)
    target = engine_dir / INT8_FILE
    tmp_xml = engine_dir / f".{INT8_FILE}.partial.xml"
    ov.save_model(quantized, str(tmp_xml), compress_to_fp16=False)
    # The .xml names its .bin by the same stem: move both, .bin first, so a reader never sees a new .xml
    # with an old .bin.
    tmp_xml.with_suffix(".bin").replace(target.with_suffix(".bin"))
    tmp_xml.replace(target)
    import nncf as _nncf
    entry = {"file": INT8_FILE, "sha256": sha256_file(target.with_suffix(".bin")), "backend": "openvino",
             "format": "an OpenVINO IR (INT8 weights and activations)", "quantizer": f"nncf {_nncf.__version__}",
             "calibration": {"prompts": prompts, "steps": steps, "size": size, "calls": subset,
                             "source": "recorded fp32 denoising trajectories"},
             "seconds": {"record": round(recorded - started, 1), "quantize": round(time.perf_counter() - recorded, 1)}}
    manifest = load_manifest(engine_dir)  # re-read: write only our section over what is there now
    manifest.variants.setdefault("int8", {})["unet"] = entry
    write_json_atomic(engine_dir / MANIFEST_NAME, manifest.to_json())
    return entry

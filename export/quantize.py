"""INT8 networks for the ``int8`` fast mode: NNCF post-training quantization for OpenVINO, calibrated on
the inputs of real denoising trajectories.

Calibration is recorded, not invented: the fp32 runtime generates a few product shots (fashion prompts,
the folder's learned tokens, guidance, the default scheduler) and a :class:`RecordingEngine` wrapped
around the UNet and the VAE decoder keeps every call's feeds (latents at every noise level, the timesteps,
the positive and negative text embeddings; the final latents). NNCF collects activation ranges on those
and writes an OpenVINO IR (``NAME.int8.xml`` + ``.bin``) next to the fp32 files; the manifest's
``variants.int8`` section lists each one.

Which networks (:data:`QUANTIZABLE`): the UNet; DeepCache's two parts when the folder has them (the
shallow part runs full-resolution layers, where the UNet's FLOPs concentrate: from ~1/14 of a whole call
with one layer to ~1/3 with the whole last up block, and 14 of 21 calls at interval 3);
the VAE decoder, which is a large share of a fast shot (~3 s of fp32 at 256 px on 2 cores, ~3x less in
INT8). When the shallow part is quantized the calibration is recorded with DeepCache on (the shallow part's
``deep_features`` input exists only there); the UNet and the capture part, which take the same inputs,
then calibrate on the capture part's feeds. Quantization needs nncf and openvino only (no torch).
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from fashiongen.runtime.engines import EngineSet
from fashiongen.runtime.errors import InputError
from fashiongen.runtime.manifest import (MANIFEST_NAME, Variant, load_manifest, require_kind, sha256_file,
                                         write_json_atomic)

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
DEFAULT_PROMPTS = 4  # calibration generations through CALIBRATION_PROMPTS
# network -> NNCF model type name or None. Every network uses NNCF's MIXED preset (asymmetric activations):
# on the VAE decoder it measured ~1.3 dB closer to fp32 than the symmetric preset at the same speed.
QUANTIZABLE = {"unet": "TRANSFORMER", "unet_capture": "TRANSFORMER", "unet_shallow": "TRANSFORMER",
               "vae_decoder": None}
SAME_INPUTS_AS_UNET = ("unet", "unet_capture")


def int8_file(network: str) -> str:
    return f"{network}.int8.xml"


class RecordingEngine:
    """Wraps an engine and keeps a copy of every feed it runs (calibration data for quantization)."""

    def __init__(self, engine):
        self.engine = engine
        self.contract = engine.contract
        self.feeds: list[dict[str, np.ndarray]] = []

    def run(self, feeds):
        self.feeds.append({k: np.array(v, copy=True) for k, v in feeds.items()})
        return self.engine.run(feeds)


def record_feeds(engine_dir: Path, factory, prompts: int, steps: int, size: int, seed: int = 1,
                 negative: str = "", networks=("unet", "vae_decoder"),
                 deepcache: int | None = None,
                 texts: list[str] | None = None) -> dict[str, list[dict[str, np.ndarray]]]:
    """``{network: feeds}`` of ``networks`` over ``prompts`` fp32 generations (``steps`` each) at ``size`` px,
    with DeepCache every ``deepcache`` steps or the whole UNet at each; the prompts cycle through ``texts``
    (default :data:`CALIBRATION_PROMPTS`)."""
    from fashiongen.runtime.txt2img import Txt2ImgPipeline, Txt2ImgRequest

    engines = EngineSet(engine_dir, factory)
    recorders = {name: engines.wrap(name, RecordingEngine) for name in networks}
    pipeline = Txt2ImgPipeline(engines, deepcache=deepcache)
    learned = engines.manifest.tokenizer.learned_tokens
    texts = texts or CALIBRATION_PROMPTS
    for i in range(prompts):
        prompt = texts[i % len(texts)]
        if "<midjourney-style>" in prompt and "<midjourney-style>" not in learned:
            prompt = prompt.replace("<midjourney-style> ", "")
        neg = negative or ("<wrong>, blurry" if "<wrong>" in learned else "blurry")
        pipeline(Txt2ImgRequest(prompt=prompt, negative_prompt=neg, seed=seed + i, steps=steps, height=size,
                                width=size), progress=False)
    return {name: recorder.feeds for name, recorder in recorders.items()}


def default_networks(manifest) -> list[str]:
    """Every quantizable network the folder has."""
    return [name for name in QUANTIZABLE if name in manifest.networks]


def check_networks(manifest, networks, engine_dir) -> list[str]:
    networks = list(networks) if networks else default_networks(manifest)
    for name in networks:
        if name not in QUANTIZABLE:
            raise InputError(f"--networks: {name!r} cannot be quantized; choose from {', '.join(QUANTIZABLE)}")
        if name not in manifest.networks:
            hint = " (add it with `fashiongen deepcache`)" if name.startswith("unet_") else ""
            raise InputError(f"--networks: {engine_dir} has no {name}{hint}")
    return networks


def save_ir_atomic(model, target: Path) -> None:
    """Write ``target`` (.xml) and its .bin so that a reader never sees a new .xml with an old .bin."""
    import openvino as ov

    tmp_xml = target.with_name(f".{target.name}.partial.xml")
    ov.save_model(model, str(tmp_xml), compress_to_fp16=False)
    tmp_xml.with_suffix(".bin").replace(target.with_suffix(".bin"))
    tmp_xml.replace(target)


def quantize_networks(engine_dir: Path, networks=None, prompts: int | None = None, steps: int = 20, size: int = 256,
                      subset: int | None = None, threads: int | None = None, log=print,
                      texts: list[str] | None = None) -> dict:
    """Record calibration feeds, quantize each of ``networks`` (default: every quantizable one the folder has)
    with NNCF, write ``NAME.int8.xml`` files and their ``variants.int8`` manifest entries; returns them.

    ``texts``: the calibration prompts (default :data:`CALIBRATION_PROMPTS`), ``prompts`` generations through
    them (default: each of ``texts`` once, or 4 built-in ones). Activation ranges are set by what calibration
    saw: prompts of the vocabulary the folder will serve keep its colours (the demo's worn family calibrated on
    four generic prompts drew 65% of the asked-for colours against 76% exact)."""
    try:
        import nncf
        import openvino  # noqa: F401
    except ImportError:
        raise InputError("quantize: needs the openvino and nncf packages (pip install -e '.[cpu-fast]')") from None
    from fashiongen.runtime.openvino_engine import core, openvino_factory

    engine_dir = Path(engine_dir)
    manifest = load_manifest(engine_dir, "--engines")
    require_kind(manifest, engine_dir, "txt2img", "--engines")
    networks = check_networks(manifest, networks, engine_dir)
    prompts = prompts or (len(texts) if texts else DEFAULT_PROMPTS)
    started = time.perf_counter()
    log(f"recording calibration: {prompts} prompt(s) x {steps} steps at {size} px ...")
    deepcache = int(manifest.variants["deepcache"].settings["interval"]) if "unet_shallow" in networks else None
    unet_source = "unet_capture" if deepcache else "unet"
    sources = {name: unet_source if name in SAME_INPUTS_AS_UNET else name for name in networks}
    recorded = record_feeds(engine_dir, openvino_factory(threads), prompts, steps, size,
                            networks=sorted(set(sources.values())), deepcache=deepcache, texts=texts)
    record_seconds = round(time.perf_counter() - started, 1)
    entries = {}
    for name in networks:
        source, model_type = sources[name], QUANTIZABLE[name]
        feeds = recorded[source]
        calls = min(subset or len(feeds), len(feeds))
        log(f"quantizing {name} on {calls} of {len(feeds)} recorded calls ...")
        began = time.perf_counter()
        model = core().read_model(str(engine_dir / manifest.networks[name].file))
        options = {"model_type": getattr(nncf.ModelType, model_type)} if model_type else {}
        quantized = nncf.quantize(model, nncf.Dataset(feeds), subset_size=calls, fast_bias_correction=True,
                                  preset=nncf.QuantizationPreset.MIXED, **options)
        target = engine_dir / int8_file(name)
        save_ir_atomic(quantized, target)
        entries[name] = {
            "file": target.name, "sha256": sha256_file(target.with_suffix(".bin")), "backend": "openvino",
            "format": "an OpenVINO IR (INT8 weights and activations)", "quantizer": f"nncf {nncf.__version__}",
            "calibration": {"prompts": prompts, "steps": steps, "size": size, "calls": calls,
                            "texts": "given" if texts else "built-in",
                            "source": f"recorded fp32 denoising trajectories ({source} inputs"
                                      f"{', DeepCache on' if deepcache else ''})"},
            "seconds": {"record": record_seconds, "quantize": round(time.perf_counter() - began, 1)}}
        current = load_manifest(engine_dir)  # re-read: write only our entry over what is there now
        current.variants.setdefault("int8", Variant()).networks[name] = entries[name]
        write_json_atomic(engine_dir / MANIFEST_NAME, current.to_json())
    return entries

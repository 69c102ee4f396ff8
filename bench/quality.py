"""Measured quality: does the generated garment match the prompt? An attribute classifier judges.

The judge (:mod:`fashiongen.bench.attribute_classifier`) is a small CNN trained on the data set's renders only,
never on generated images; its own accuracy on held-out renders is the first table. Then, over ``--prompts``
captions (default 200) of the data set's ``test`` split (attribute combinations seen in training) and of its
``unseen`` split (combinations held out of every training split), each contender generates one image a prompt
(seed ``--seed`` + the prompt's index) through the torch-free runtime, and the judge names its attributes:

- approach 1 (``--engines``, the worn model, where there is one): the generated person, cut out by the segmenter
  (``--segmenter-engines``) with the class read from the prompt, as ``generate --cutout auto`` does; an empty
  cutout counts as wrong on every attribute, and the share of non-empty cutouts is reported. With both learned
  tokens (``<studio-style>`` before the caption, ``<wrong>`` as the negative prompt), with each alone, without;
  and each fast mode (DeepCache at each ``--deepcache`` interval, INT8) against the exact mode.
- approach 3 (``--product-engines``): the product shot directly.
- approach 2 (``--catalog`` and ``--pix2pix-engines``), on the held-out combinations only (prompts whose item the
  catalog lacks): the catalog item nearest the caption, edited toward it, as ``edit --from-catalog`` does.

Also: the segmenter's per-class IoU on the held-out worn renders (mIoU and the garment classes'), the wall time
of the README's product-shot command (``fashiongen generate ... --cutout auto``, a fresh process each run,
median), and a PNG grid of generated shots with the prompt under each.

    python -m fashiongen.bench.quality --data DATASET_DIR            # the shipped demo family

writes ``bench/results/quality.{md,json}`` and ``bench/results/quality-grid.png``. The classifier is trained
once (``--classifier``, default ``bench/.cache/attribute-classifier.safetensors``) and reused.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from statistics import median

import numpy as np

from .common import CACHE, GARMENT, RESULTS, SEED, fresh_process_seconds, shown_path
from .cpu_report import machine_name
POSITIVE, NEGATIVE = "<studio-style>", "<wrong>"
README_PROMPT = GARMENT
CEILING = "product/test through the VAE (ceiling)"  # the judge's row on VAE round trips
WORN_CEILING = "worn/test through the VAE, cut out (approach 1's ceiling)"
GARMENT_CLASSES = ("Upper-clothes", "Skirt", "Pants", "Dress")
SHOWN = ("type", "colour", "pattern", "sleeve", "neckline", "length")


@dataclass
class Prompt:
    caption: str
    truth: dict
    seed: int


def read_prompts(data: Path, split: str, count: int, seed: int) -> list[Prompt]:
    """``count`` captions of the worn view's ``split``, drawn without replacement from a seeded permutation."""
    from fashiongen.bench.attribute_classifier import truth_of
    from fashiongen.training.imagefolder import read_rows

    rows = read_rows(Path(data) / "worn" / split, "--data", require=("text", "type", "colour"))
    order = np.random.default_rng([seed, len(rows)]).permutation(len(rows))[:count]
    return [Prompt(rows[i].columns["text"], truth_of(rows[i].columns), seed + k) for k, i in enumerate(order)]


# -- contenders ----------------------------------------------------------------------------------------------
@dataclass
class Contender:
    """One way to make a product shot from a caption: an engine folder, a fast mode, the tokens, a cutout."""

    name: str
    engines: Path
    fast: str | None = None
    deepcache: int | None = None
    positive: bool = True
    negative: bool = True
    cutout: bool = True  # approach 1 (cut out of a worn image); False: approach 3 (the product shot itself)
    sampling: dict = field(default_factory=dict)  # request fields set for this contender (steps, scheduler, ...)
    catalog: Path | None = None  # approach 2: ``engines`` (pix2pix) edits this index's item nearest the prompt
    search: object = field(default=None, repr=False)  # the catalog's CatalogSearch, opened by pipeline()
    retrieved: list = field(default_factory=list, repr=False)  # approach 2: each request's catalog image

    def pipeline(self):
        from fashiongen.runtime.engines import EngineSet, backend_factory
        from fashiongen.runtime.fastmodes import deepcache_interval, variant_files
        from fashiongen.runtime.manifest import load_manifest
        from fashiongen.runtime.txt2img import Txt2ImgPipeline

        if self.catalog is not None:
            from fashiongen.runtime.pix2pix import Pix2PixPipeline
            from fashiongen.runtime.retrieval import CatalogSearch

            self.search = CatalogSearch(self.catalog)
            return Pix2PixPipeline(EngineSet(self.engines))

        backend = "openvino" if self.fast and "int8" in self.fast else "ort"  # INT8 networks are OpenVINO IR
        manifest = load_manifest(self.engines)
        engines = EngineSet(self.engines, backend_factory(backend), manifest,
                            files=variant_files(manifest, backend, self.fast))
        return Txt2ImgPipeline(engines, deepcache=deepcache_interval(manifest, self.fast, self.deepcache))

    def request(self, prompt: Prompt, steps: int):
        from fashiongen.runtime.txt2img import Txt2ImgRequest

        if self.catalog is not None:
            return self.edit_request(prompt, steps)

        text = f"{POSITIVE} {prompt.caption}" if self.positive and self.cutout else prompt.caption
        negative = NEGATIVE if self.negative and self.cutout else ""
        return Txt2ImgRequest(**{"prompt": text, "negative_prompt": negative, "seed": prompt.seed, "steps": steps,
                                 **self.sampling})

    def edit_request(self, prompt: Prompt, steps: int):
        """Approach 2 as ``edit --from-catalog`` runs it: the catalog item nearest the caption, edited toward it
        (the editor's recorded guidance)."""
        from fashiongen.runtime.images import load_rgb_image
        from fashiongen.runtime.pix2pix import Pix2PixRequest

        hit = self.search.search(prompt.caption, k=1)[0]
        self.retrieved.append(load_rgb_image(self.search.image_path(hit), "--catalog"))
        return Pix2PixRequest(image=self.retrieved[-1], prompt=prompt.caption, seed=prompt.seed, steps=steps)


def product_shots(contender: Contender, prompts: list[Prompt], steps: int, cutter) -> tuple[list, list, float]:
    """Each prompt's product shot (None for an empty cutout), the generated images, seconds per image."""
    from tqdm.auto import tqdm

    pipeline = contender.pipeline()
    shots, raws, started = [], [], time.perf_counter()
    for prompt in tqdm(prompts, desc=contender.name, unit="image", leave=False):
        image = pipeline(contender.request(prompt, steps), progress=False).images[0]
        raws.append(image)
        if contender.cutout:
            ids = cutter.resolve_classes("auto", prompt.caption)
            shots.append(cutter([image], ids, from_prompt=True).results[0].image)
        else:
            shots.append(image)
    return shots, raws, (time.perf_counter() - started) / max(1, len(prompts))


def judge(classifier, shots: list, prompts: list[Prompt]) -> dict:
    result = scored(classifier, shots, [p.truth for p in prompts])
    return {"accuracy": {a: result[a]["accuracy"] for a in SHOWN}, "counted": {a: result[a]["total"] for a in SHOWN},
            "non_empty": sum(s is not None for s in shots) / max(1, len(shots))}


def scored(classifier, shots: list, truths: list[dict]) -> dict:
    """The judge's score per attribute; an empty cutout (None) counts as wrong on every attribute."""
    from fashiongen.bench.attribute_classifier import score

    present = [i for i, s in enumerate(shots) if s is not None]
    predicted: list = [None] * len(shots)
    for i, p in zip(present, classifier.classify([shots[i] for i in present])):
        predicted[i] = p
    return score(predicted, truths)


def vae_ceiling(classifier, engines: Path, data: Path, limit: int) -> dict:
    """The judge on held-out product renders passed through ``engines``' own VAE (encoded to the latent mean,
    decoded): the best any generator on that decoder can show it, so the ceiling of every contender. A low
    ceiling blames the autoencoder, not the UNet."""
    from fashiongen.bench.attribute_classifier import load_examples, score
    from fashiongen.runtime.engines import EngineSet

    images, truths = load_examples(data, "product", "test")
    result = score(classifier.classify(round_trips(EngineSet(engines), images[:limit])), truths[:limit])
    return {a: result[a] for a in SHOWN}


def round_trips(networks, images: list) -> list:
    """Each image encoded to its latent mean by the folder's VAE and decoded."""
    from fashiongen.runtime.images import decoded_to_uint8, uint8_to_model_input

    scale = float(networks.manifest.vae.scaling_factor)
    out = []
    for image in images:
        mean = networks["vae_encoder"].run({"image": uint8_to_model_input(image)})["latent_mean"]
        out.append(decoded_to_uint8(networks["vae_decoder"].run({"latent": mean * scale})["image"])[0])
    return out


def worn_vae_ceiling(classifier, engines: Path, cutter, data: Path, limit: int) -> dict:
    """The judge on held-out worn renders passed through the VAE and cut out by the segmenter as ``generate
    --cutout auto`` cuts: what approach 1 could show with a perfect UNet. Below the bars, it says the worn view at
    this size, not the UNet, is what limits approach 1."""
    from fashiongen.bench.attribute_classifier import truth_of
    from fashiongen.runtime.engines import EngineSet
    from fashiongen.training.imagefolder import open_image, read_rows

    rows = read_rows(Path(data) / "worn" / "test", "--data", require=("text", "type", "colour"))[:limit]
    images = round_trips(EngineSet(engines), [np.asarray(open_image(r.image, "--data")) for r in rows])
    shots = [cutter([image], cutter.resolve_classes("auto", r.columns["text"]), from_prompt=True).results[0].image
             for image, r in zip(images, rows)]
    result = scored(classifier, shots, [truth_of(r.columns) for r in rows])
    return {a: result[a] for a in SHOWN}


# -- the segmenter and the README command ---------------------------------------------------------------------
def segmenter_iou(engines: Path, data: Path, limit: int) -> dict:
    """Per-class IoU of the exported segmenter on the held-out worn renders (``test`` split)."""
    from fashiongen.runtime.engines import EngineSet
    from fashiongen.runtime.segmentation import Segmenter
    from fashiongen.training.imagefolder import load_label_map, open_image, read_rows
    from fashiongen.training.segmenter import class_iou

    segmenter = Segmenter(EngineSet(engines))
    rows = read_rows(Path(data) / "worn" / "test", "--data", require=(), files=("label_file",))[:limit]
    images = [np.asarray(open_image(r.image, "--data")) for r in rows]
    labels = [load_label_map(r.path("label_file"), r.image, im.shape[:2], len(segmenter.id2label), "--data")
              for r, im in zip(rows, images)]
    predictions = [m for first in range(0, len(images), 16) for m in segmenter.class_maps(images[first:first + 16])]
    iou = {segmenter.id2label[c]: v for c, v in class_iou(predictions, labels, len(segmenter.id2label)).items()}
    garment = [iou[name] for name in GARMENT_CLASSES if name in iou]
    return {"images": len(images), "miou": float(np.mean(list(iou.values()))), "garment_iou": float(np.mean(garment)),
            "iou": iou}


def readme_command_seconds(runs: int, engines: Path, segmenter_engines: Path | None) -> dict:
    """Wall seconds of the README's product shot, a fresh ``fashiongen`` process each run (start-up included),
    on the family measured here (the README's command names none: it runs the shipped one): approach 1's, cut
    out by ``segmenter_engines``, or with None approach 3's (``engines`` a product folder, no cutout)."""
    out = CACHE / "quality-readme-shot.png"
    readme = ["generate", "--prompt", f'"{README_PROMPT}"', "--out", "shot.png"]
    cutout = [] if segmenter_engines is None else ["--cutout", "auto", "--segmenter-engines", str(segmenter_engines)]
    shown = readme + (cutout[:2] if cutout else ["--engines", "demo-product"])  # as the README writes it
    times = fresh_process_seconds(["generate", "--prompt", README_PROMPT, "--out", str(out), "--engines", str(engines),
                                   *cutout, "--no-progress"], runs)
    return {"command": "fashiongen " + " ".join(shown), "engines": shown_path(engines), "median_s": median(times),
            "runs": times}


def readme_command(args) -> dict | None:
    """The README command's time: approach 1's with a worn folder, else approach 3's."""
    if not args.readme_runs:
        return None
    if args.engines is None:
        return readme_command_seconds(args.readme_runs, Path(args.product_engines), None)
    return readme_command_seconds(args.readme_runs, Path(args.engines), Path(args.segmenter_engines))


# -- fast-mode variants ---------------------------------------------------------------------------------------
#: The networks the int8 row quantizes: the UNet and its DeepCache parts. The demo's VAE decoder in INT8 cost
#: approach 1 5.5 points of colour on top of the UNet's 0.5 (71.0 against 76.0 exact, UNet alone 75.5), so its
#: INT8 mode leaves the decoder in fp32 (`quantize --networks unet,unet_capture,unet_shallow`).
INT8_NETWORKS = ("unet", "unet_capture", "unet_shallow")
CALIBRATION_CAPTIONS = 16  # training captions the INT8 ranges are calibrated on


def with_int8(engines: Path, size: int, data: Path) -> Path:
    """A copy of ``engines`` (in the bench cache) with its UNet networks in INT8 (``fashiongen quantize``,
    calibrated at ``size`` px on training captions of ``data`` as approach 1 prompts them: generic prompts
    cost 6 points of colour), made once per family, so that the shipped folder stays as it is."""
    from fashiongen.runtime.manifest import load_manifest

    copy = CACHE / f"quality-{engines.name}-int8"
    manifest = load_manifest(engines)
    source = {name: entry.sha256 for name, entry in manifest.networks.items()}
    networks = [name for name in INT8_NETWORKS if name in manifest.networks]
    if copy.is_dir() and "int8" in (made := load_manifest(copy)).variants and made.presets == manifest.presets and \
            {name: entry.sha256 for name, entry in made.networks.items()} == source and \
            sorted(made.variants["int8"].networks) == sorted(networks):  # not another family's or recipe's copy
        return copy
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(engines, copy, ignore=shutil.ignore_patterns("cache"))
    captions = CACHE / "quality-calibration-prompts.txt"
    captions.write_text("".join(f"{POSITIVE} {p.caption}\n"
                                for p in read_prompts(data, "train", CALIBRATION_CAPTIONS, seed=0)))
    subprocess.run([sys.executable, "-m", "fashiongen", "quantize", "--engines", str(copy), "--size", str(size),
                    "--networks", ",".join(networks), "--calibration-prompts", str(captions)], check=True)
    return copy


# -- the report -----------------------------------------------------------------------------------------------
def grid(rows: list[tuple[str, list, list[str]]], out: Path, cell: int = 128) -> Path:
    """A PNG: a row per contender (its name on the left), each shot with its prompt under it."""
    from PIL import Image, ImageDraw

    from fashiongen.runtime.files import atomic_file

    label_w, caption_h, columns = 150, 28, max(len(shots) for _, shots, _ in rows)
    canvas = Image.new("RGB", (label_w + columns * cell, len(rows) * (cell + caption_h)), "white")
    draw = ImageDraw.Draw(canvas)
    for r, (name, shots, captions) in enumerate(rows):
        top = r * (cell + caption_h)
        draw.text((6, top + cell // 2), name, fill="black")
        for c, (shot, caption) in enumerate(zip(shots, captions)):
            left = label_w + c * cell
            if shot is not None:
                canvas.paste(Image.fromarray(np.asarray(shot)).resize((cell, cell)), (left, top))
            else:
                draw.text((left + 30, top + cell // 2), "(empty)", fill="red")
            words = caption.split()
            half = (len(words) + 1) // 2
            for line, text in enumerate((" ".join(words[:half]), " ".join(words[half:]))):
                draw.text((left + 3, top + cell + 2 + 12 * line), text, fill="black")
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(out) as tmp:
        canvas.save(tmp, format="PNG")
    return out


def markdown(report: dict) -> str:
    def pct(v):
        return "—" if v is None else f"{100 * v:.1f}"

    lines = [f"# Quality ({report['machine']})", "",
             f"{report['prompts']} prompts per split, {report['steps']} steps, seeds {report['seed']}+i. "
             "Accuracy in %, per attribute, over the prompts where the attribute applies.", "",
             "## The judge on held-out renders", "", "| view/split | " + " | ".join(SHOWN) + " |",
             "|---" * (len(SHOWN) + 1) + "|"]
    for where, scores in report["classifier_held_out"].items():
        lines.append(f"| {where} | " + " | ".join(pct(scores[a]["accuracy"]) for a in SHOWN) + " |")
    lines += ["", "## Generated", "", "| contender | split | " + " | ".join(SHOWN) + " | non-empty cutout | s/image |",
              "|---" * (len(SHOWN) + 4) + "|"]
    for row in report["generated"]:
        lines.append(f"| {row['contender']} | {row['split']} | " + " | ".join(pct(row['accuracy'][a]) for a in SHOWN)
                     + f" | {pct(row['non_empty'])} | {row['seconds_per_image']:.2f} |")
    if report.get("segmenter"):
        seg = report["segmenter"]
        lines += ["", f"## Segmenter ({seg['images']} held-out worn renders)", "",
                  f"mIoU {seg['miou']:.3f}; garment classes' IoU {seg['garment_iou']:.3f} "
                  f"({', '.join(f'{k} {v:.3f}' for k, v in seg['iou'].items() if k in GARMENT_CLASSES)})"]
    if report.get("readme_command"):
        cmd = report["readme_command"]
        lines += ["", "## The README's product shot", "", f"`{cmd['command']}`: median {cmd['median_s']:.2f} s "
                  f"end to end over {len(cmd['runs'])} fresh processes"]
    return "\n".join(lines) + "\n"


def contenders(args) -> list[tuple[Contender, tuple[str, ...]]]:
    """Each contender with the splits it is measured on (approach 1's only with a worn folder)."""
    both, seen = ("test", "unseen"), ("test",)
    product = [(Contender("approach 3", Path(args.product_engines), cutout=False), both)]
    if args.catalog is not None:  # on the held-out combinations alone: prompts whose item the catalog lacks
        product.append((Contender("approach 2", Path(args.pix2pix_engines), cutout=False, catalog=Path(args.catalog)),
                        ("unseen",)))
    if args.engines is None:
        return product + ([] if args.quick else few_step_contenders(args))
    worn = Path(args.engines)
    out = [(Contender("approach 1", worn), both), *product]
    if not args.quick:
        out += [(Contender("1, no <studio-style>", worn, positive=False), seen),
                (Contender("1, no <wrong>", worn, negative=False), seen),
                (Contender("1, no tokens", worn, positive=False, negative=False), seen)]
        out += [(Contender(f"1, deepcache {n}", worn, fast="deepcache", deepcache=n), seen) for n in args.deepcache]
        out += [(Contender("1, int8", with_int8(worn, args.size, Path(args.data)), fast="int8"), seen)]
        out += few_step_contenders(args)
    return out


def few_step_contenders(args) -> list[tuple[Contender, tuple[str, ...]]]:
    """Approach 3 with the tiny decoder, and its LCM-LoRA folder (``--fast-engines``) at each of ``--lcm-steps``
    without guidance (as ``--preset fast`` samples), full decoder and tiny; each where the folders have them, on
    the training combinations (as the other fast modes)."""
    from fashiongen.runtime.manifest import load_manifest
    from fashiongen.runtime.presets import fast_preset

    out, product = [], Path(args.product_engines)
    if "vae_decoder_tiny" in load_manifest(product).networks:
        out.append((Contender("3, tiny decoder", product, cutout=False, sampling={"decoder": "tiny"}), ("test",)))
    if args.fast_engines is None:
        return out
    fast = Path(args.fast_engines)
    preset = fast_preset(load_manifest(fast), fast)
    for steps in args.lcm_steps:
        for decoder in ("full", preset.decoder) if preset.decoder else ("full",):
            sampling = {"scheduler": preset.scheduler, "steps": steps, "guidance": preset.guidance, "decoder": decoder}
            name = f"3, lcm {steps} step{'s' * (steps > 1)}" + (", tiny decoder" if decoder == "tiny" else "")
            out.append((Contender(name, fast, cutout=False, sampling=sampling), ("test",)))
    return out


def main(argv: list[str] | None = None) -> int:
    from fashiongen.demo_family import engine_folder, installed

    p = argparse.ArgumentParser(prog="python -m fashiongen.bench.quality", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, required=True, help="the data set (fashiongen dataset --out DIR)")
    p.add_argument("--engines", default=None,
                   help="approach 1's engine folder (default: the shipped demo where it is installed; without one, "
                        "approach 1's rows are left out and the README command is timed on approach 3)")
    p.add_argument("--product-engines", default=None, help="approach 3's engine folder (default: demo-product)")
    p.add_argument("--segmenter-engines", default=None, help="the segmenter's folder (default: demo-segmenter)")
    p.add_argument("--classifier", type=Path, default=CACHE / "attribute-classifier.safetensors",
                   help="the judge; trained on --data when the file is missing")
    p.add_argument("--prompts", type=int, default=200, help="prompts per split (default 200)")
    p.add_argument("--steps", type=int, default=25, help="denoising steps (default 25, as generate's)")
    p.add_argument("--seed", type=int, default=SEED, help=f"seed of the first prompt (default {SEED})")
    p.add_argument("--size", type=int, default=128, help="the INT8 calibration's image size (default 128, the demo's)")
    p.add_argument("--deepcache", type=int, nargs="*", default=[2, 3], help="DeepCache intervals (default 2 3)")
    p.add_argument("--fast-engines", default=None,
                   help="approach 3's folder exported with its LCM-LoRA (`export --lcm-lora`), for the few-step rows "
                   "(default: demo-product-fast where it is installed, else none)")
    p.add_argument("--catalog", default=None,
                   help="approach 2's catalog index (default: demo-catalog where it and demo-pix2pix are installed)")
    p.add_argument("--pix2pix-engines", default=None, help="approach 2's editor (default: demo-pix2pix)")
    p.add_argument("--lcm-steps", type=int, nargs="*", default=[1, 2, 4, 8], help="LCM step counts (default 1 2 4 8)")
    p.add_argument("--quick", action="store_true", help="approaches 1 and 3 only (no token ablation, no fast modes)")
    p.add_argument("--readme-runs", type=int, default=3, help="runs of the README command to time (default 3)")
    p.add_argument("--out", type=Path, default=RESULTS / "quality", help="report path without suffix")
    args = p.parse_args(argv)
    args.engines = engine_folder(args.engines, "demo") if args.engines is not None or installed("demo") else None
    args.product_engines = engine_folder(args.product_engines, "demo-product", "--product-engines")
    args.segmenter_engines = engine_folder(args.segmenter_engines, "demo-segmenter", "--segmenter-engines")
    if args.catalog is not None or (installed("demo-catalog") and installed("demo-pix2pix")):
        args.catalog = engine_folder(args.catalog, "demo-catalog", "--catalog")
        args.pix2pix_engines = engine_folder(args.pix2pix_engines, "demo-pix2pix", "--pix2pix-engines")
    args.fast_engines = (engine_folder(args.fast_engines, "demo-product-fast", "--fast-engines")
                         if args.fast_engines is not None or installed("demo-product-fast") else None)
    return run(args)


def run(args) -> int:
    from fashiongen.bench.attribute_classifier import evaluate, load_classifier, train_classifier
    from fashiongen.runtime.cutout import CutoutPipeline
    from fashiongen.runtime.engines import EngineSet
    from fashiongen.runtime.files import atomic_file

    if args.classifier.is_file():
        classifier = load_classifier(args.classifier)
    else:
        classifier = train_classifier(args.data, args.classifier)
    held_out = classifier.record.get("held_out") or evaluate(classifier, args.data)
    cutter = CutoutPipeline(EngineSet(Path(args.segmenter_engines)))
    prompts = {split: read_prompts(args.data, split, args.prompts, args.seed) for split in ("test", "unseen")}
    generated, shown = [], []
    for contender, splits in contenders(args):
        for split in splits:
            shots, raws, seconds = product_shots(contender, prompts[split], args.steps, cutter)
            row = {"contender": contender.name, "split": split, "seconds_per_image": seconds,
                   **judge(classifier, shots, prompts[split])}
            generated.append(row)
            print(f"{contender.name:22s} {split:6s} " + " ".join(
                f"{a} {100 * (row['accuracy'][a] or 0):.1f}" for a in SHOWN) + f" non-empty {100 * row['non_empty']:.1f}",
                flush=True)
            if (split == "test" and contender.name in ("approach 1", "approach 3")) or contender.catalog is not None:
                captions = [q.caption for q in prompts[split][:8]]
                if contender.cutout:  # the worn image above its cutout
                    shown.append((f"{contender.name}, worn", raws[:8], captions))
                if contender.catalog is not None:  # the catalog item retrieved above its edit
                    shown.append((f"{contender.name}, retrieved", contender.retrieved[:8], captions))
                shown.append((contender.name, shots[:8], captions))
    report = {"machine": machine_name(), "prompts": args.prompts, "steps": args.steps, "seed": args.seed,
              "classifier": shown_path(args.classifier),
              "classifier_held_out": {**{k: {a: v[a] for a in SHOWN} for k, v in held_out.items()},
                                      CEILING: vae_ceiling(classifier, Path(args.product_engines), args.data,
                                                           args.prompts),
                                      **({} if args.engines is None else {
                                          WORN_CEILING: worn_vae_ceiling(classifier, Path(args.engines), cutter,
                                                                         args.data, args.prompts)})},
              "generated": generated, "segmenter": segmenter_iou(Path(args.segmenter_engines), args.data, 1000),
              "readme_command": readme_command(args)}

    args.out.parent.mkdir(parents=True, exist_ok=True)
    for suffix, text in ((".json", json.dumps(report, indent=2) + "\n"), (".md", markdown(report))):
        with atomic_file(args.out.with_suffix(suffix)) as tmp:
            tmp.write_text(text)
    grid(shown, args.out.with_name(args.out.name + "-grid.png"))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())

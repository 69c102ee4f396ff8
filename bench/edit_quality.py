"""Measured edit quality of approach 2's editor: does ``fashiongen edit`` change what was asked and keep the rest?

Pairs come from the data set's held-out product view (``product/test``, renders no training step saw), made as
the trainer makes its own (:func:`fashiongen.training.edit_pairs.make_pairs`, one pair a source item): a source
item and a target item whose attributes differ in one or two (a type only within its family). Each pair is
edited twice through the torch-free runtime (:class:`~fashiongen.runtime.pix2pix.Pix2PixPipeline`, what ``edit``
runs), once told the imperative a user types ("make it red and give it long sleeves") and once the target's
caption (what approach 2 sends after retrieval), from the same seed.

The judge (:mod:`fashiongen.bench.attribute_classifier`, trained on renders only) reads every edit. An edit
*succeeds* when the judge names every asked-for attribute as the target's value and every other attribute as it
reads it on the unedited source passed through the same VAE (encoded to its latent mean and decoded). The source
is read through the VAE, not as rendered, because every edit is drawn by that decoder: the judge reads some
attributes of decoded images differently from renders (necklines most; see ``bench/results/quality.md``'s
ceiling rows), and "kept" should measure the editor, not the decoder. Also reported: the asked-for part alone
and the kept part alone, success per changed attribute, the same success against the source's true attributes
(strict), and the ceiling: the judge on the target renders through the VAE, the most any editor on that
decoder can show on the asked-for attributes.

A guidance sweep first: ``--settings`` (text, image guidance) on ``--sweep-pairs`` further pairs (not among the
measured ones); the best by mean success of the two forms is then measured on ``--pairs`` pairs. Last, the wall
time of one ``fashiongen edit`` at the demo size in a fresh process (median of ``--edit-runs``).

    python -m fashiongen.bench.edit_quality --data DATASET_DIR      # the shipped editor (demo-pix2pix)

writes ``bench/results/edit_quality.{md,json}`` and ``bench/results/edit_quality-grid.png``.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from statistics import median

import numpy as np

from .common import CACHE, RESULTS, SEED, fresh_process_seconds, shown_path
from .cpu_report import machine_name

FORMS = ("imperative", "caption")
#: (text, image) guidance tried by default: diffusers' (7.5, 1.5); then the product model's best text scale, 4
#: (bench/quality.py), and less, each with the image weighed more: half-way through training the demo editor kept
#: the source's other attributes on 12% of imperative edits (the text drowned the image)
SETTINGS = ((7.5, 1.5), (4.0, 2.5), (2.5, 2.5))
EDIT_PROMPT = "make it red"


@dataclass
class EditCase:
    """One held-out pair: the source render, what each form says, and the truths."""

    source_file: Path
    source_caption: str
    source: dict     # the source's true attributes
    target: dict     # the target's true attributes
    changed: tuple[str, ...]
    target_file: Path
    words: dict      # form -> instruction
    seed: int


def read_cases(data: Path, count: int, seed: int) -> list[EditCase]:
    """``count`` pairs of ``product/test``, one a source item at most, in a seeded order."""
    from fashiongen.bench.attribute_classifier import truth_of
    from fashiongen.training.edit_pairs import attribute_rows, imperative, make_pairs
    from fashiongen.training.imagefolder import read_rows

    rows = read_rows(Path(data) / "product" / "test", "--data", require=("text", "type", "colour"))
    table = attribute_rows(rows)
    pairs = make_pairs(table, [r.columns["text"] for r in rows], seed, per_item=1, instruction_mix=0.0)
    order = np.random.default_rng([seed, len(pairs)]).permutation(len(pairs))[:count]
    cases = []
    for k, i in enumerate(order):
        pair = pairs[i]
        words = {"imperative": imperative(table[pair.source], table[pair.target], pair.changed),
                 "caption": pair.instruction}
        cases.append(EditCase(rows[pair.source].image, rows[pair.source].columns["text"],
                              truth_of(rows[pair.source].columns),
                              truth_of(rows[pair.target].columns), pair.changed, rows[pair.target].image, words,
                              seed + k))
    return cases


def edits(pipeline, cases: list[EditCase], form: str, guidance: float, image_guidance: float, steps: int):
    """Each case's edit told ``form``; returns the images and seconds per edit."""
    from tqdm.auto import tqdm

    from fashiongen.runtime.images import load_rgb_image
    from fashiongen.runtime.pix2pix import Pix2PixRequest

    out, started = [], time.perf_counter()
    for case in tqdm(cases, desc=f"{form} {guidance:g}/{image_guidance:g}", unit="edit", leave=False):
        request = Pix2PixRequest(image=load_rgb_image(case.source_file, "--data"), prompt=case.words[form], seed=case.seed,
                                 steps=steps, guidance=guidance, image_guidance=image_guidance)
        out.append(pipeline(request, progress=False).images[0])
    return out, (time.perf_counter() - started) / max(1, len(cases))


def judged(readings: list[dict], kept_as: list[dict], cases: list[EditCase]) -> dict:
    """Success (asked-for attributes at the target's values and the others as in ``kept_as``), its two halves,
    and success per changed attribute."""
    from fashiongen.training.attributes import ATTRIBUTES

    asked = [all(r[a] == c.target[a] for a in c.changed) for r, c in zip(readings, cases)]
    kept = [all(r[a] == k[a] for a in ATTRIBUTES if a not in c.changed)
            for r, k, c in zip(readings, kept_as, cases)]
    success = [a and k for a, k in zip(asked, kept)]
    per_attribute = {}
    for attribute in ATTRIBUTES:
        hits = [s for s, c in zip(success, cases) if attribute in c.changed]
        if hits:
            per_attribute[attribute] = {"success": float(np.mean(hits)), "pairs": len(hits)}
    return {"success": float(np.mean(success)), "asked": float(np.mean(asked)), "kept": float(np.mean(kept)),
            "per_changed_attribute": per_attribute, "successes": [bool(s) for s in success]}


def measure(pipeline, classifier, cases: list[EditCase], through_vae: list[dict], guidance: float,
            image_guidance: float, steps: int) -> tuple[dict, dict]:
    """Per form: the judged edits (against the source through the VAE, and strict: against its truth) and the
    seconds per edit; and the edited images by form."""
    results, images = {}, {}
    for form in FORMS:
        shots, seconds = edits(pipeline, cases, form, guidance, image_guidance, steps)
        readings = classifier.classify(shots)
        result = judged(readings, through_vae, cases)
        strict = judged(readings, [c.source for c in cases], cases)
        results[form] = {**result, "strict_success": strict["success"], "seconds_per_edit": seconds}
        images[form] = shots
        print(f"  {form:10s} guidance {guidance:g} / image {image_guidance:g}: success {100 * result['success']:.1f}% "
              f"(asked {100 * result['asked']:.1f}, kept {100 * result['kept']:.1f}; strict "
              f"{100 * strict['success']:.1f})", flush=True)
    return results, images


def ceiling(classifier, networks, cases: list[EditCase]) -> float:
    """Share of targets whose render, through the VAE, the judge reads right on every asked-for attribute."""
    from fashiongen.bench.quality import round_trips
    from fashiongen.runtime.images import load_rgb_image

    readings = classifier.classify(round_trips(networks, [load_rgb_image(c.target_file, "--data") for c in cases]))
    return float(np.mean([all(r[a] == c.target[a] for a in c.changed) for r, c in zip(readings, cases)]))


def edit_seconds(engines: Path, image: Path, data: Path, runs: int) -> dict:
    """Wall seconds of ``fashiongen edit`` on a demo-size product shot (of the data set ``data``), a fresh process
    each run (start-up included), median."""
    out = CACHE / "edit-quality-shot.png"
    times = fresh_process_seconds(["edit", "--image", str(image), "--prompt", EDIT_PROMPT, "--out", str(out),
                                   "--engines", str(engines), "--no-progress"], runs)
    shown = ["edit", "--image", shown_path(image, data), "--prompt", repr(EDIT_PROMPT), "--out", "shot.png"]
    return {"command": "fashiongen " + " ".join(shown), "engines": shown_path(engines), "median_s": median(times),
            "runs": times}


def markdown(report: dict) -> str:
    def pct(v):
        return f"{100 * v:.1f}"

    lines = [f"# Edit quality ({report['machine']})", "",
             f"Editor: `{report['engines']}`. Pairs from `product/test` one or two attributes apart; "
             f"{report['steps']} steps, seeds {report['seed']}+i. Success: the judge names every asked-for "
             "attribute as the target's and every other as it reads the unedited source through the same VAE; "
             "strict: the others as the source's true attributes.", "",
             f"## Guidance sweep ({report['sweep_pairs']} pairs not among the measured ones)", "",
             "| text guidance | image guidance | " + " | ".join(f"{f} success" for f in FORMS) + " | mean |",
             "|---" * (len(FORMS) + 3) + "|"]
    for row in report["sweep"]:
        rates = [row["forms"][f]["success"] for f in FORMS]
        lines.append(f"| {row['guidance']:g} | {row['image_guidance']:g} | " + " | ".join(pct(r) for r in rates)
                     + f" | {pct(float(np.mean(rates)))} |")
    best = report["chosen"]
    lines += ["", f"## Measured ({report['pairs']} pairs, text guidance {best['guidance']:g}, image guidance "
              f"{best['image_guidance']:g})", "",
              "| instruction form | success | asked-for right | others kept | strict success | s/edit |",
              "|---|---|---|---|---|---|"]
    for form in FORMS:
        r = report["measured"][form]
        lines.append(f"| {form} | {pct(r['success'])} | {pct(r['asked'])} | {pct(r['kept'])} | "
                     f"{pct(r['strict_success'])} | {r['seconds_per_edit']:.2f} |")
    attributes = sorted({a for f in FORMS for a in report["measured"][f]["per_changed_attribute"]},
                        key=list(report["measured"][FORMS[0]]["per_changed_attribute"]).index)
    lines += ["", "Success by the attribute asked to change (pairs that change it):", "",
              "| form | " + " | ".join(attributes) + " |", "|---" * (len(attributes) + 1) + "|"]
    for form in FORMS:
        per = report["measured"][form]["per_changed_attribute"]
        lines.append(f"| {form} | " + " | ".join(f"{pct(per[a]['success'])} ({per[a]['pairs']})" for a in attributes)
                     + " |")
    lines += ["", f"Ceiling: the judge reads every asked-for attribute right on {pct(report['ceiling'])}% of the "
              "target renders passed through the same VAE."]
    if report.get("edit_command"):
        cmd = report["edit_command"]
        lines += ["", "## One edit", "", f"`{cmd['command']}` (128 px): median {cmd['median_s']:.2f} s end to end "
                  f"over {len(cmd['runs'])} fresh processes"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    from fashiongen.demo_family import engine_folder
    from fashiongen.runtime.errors import InputError

    p = argparse.ArgumentParser(prog="python -m fashiongen.bench.edit_quality", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, required=True, help="the data set (fashiongen dataset --out DIR)")
    p.add_argument("--engines", default=None, help="the pix2pix engine folder (default: the shipped demo-pix2pix)")
    p.add_argument("--classifier", type=Path, default=CACHE / "attribute-classifier.safetensors",
                   help="the judge (bench/attribute_classifier.py's file)")
    p.add_argument("--pairs", type=int, default=200, help="measured pairs (default 200)")
    p.add_argument("--sweep-pairs", type=int, default=50,
                   help="pairs of the guidance sweep (default 50; 0 with a single --settings: no sweep)")
    p.add_argument("--settings", nargs="*", default=[f"{g:g}/{i:g}" for g, i in SETTINGS], metavar="TEXT/IMAGE",
                   help="guidance settings of the sweep, e.g. 7.5/1.5 (default: %(default)s)")
    p.add_argument("--steps", type=int, default=20, help="denoising steps (default 20, as edit's)")
    p.add_argument("--seed", type=int, default=SEED, help=f"seed of the pairs and of the first edit (default {SEED})")
    p.add_argument("--threads", type=int, default=None, help="ONNX Runtime threads (default: all CPUs)")
    p.add_argument("--edit-runs", type=int, default=3, help="timed runs of one `fashiongen edit` (default 3; 0: none)")
    p.add_argument("--out", type=Path, default=RESULTS / "edit_quality", help="report path without suffix")
    args = p.parse_args(argv)
    args.editor = shown_path(args.engines) if args.engines else "demo-pix2pix"  # for the report
    args.engines = engine_folder(args.engines, "demo-pix2pix")
    args.settings = [parse_setting(s) for s in args.settings]
    if args.pairs < 1 or not args.settings:
        raise InputError("--pairs and --settings: need at least one pair and one TEXT/IMAGE setting")
    if args.sweep_pairs < (len(args.settings) > 1):
        raise InputError(f"--sweep-pairs: {len(args.settings)} --settings need pairs to choose between them")
    return run(args)


def parse_setting(text: str) -> tuple[float, float]:
    from fashiongen.runtime.errors import InputError

    try:
        guidance, image_guidance = (float(v) for v in text.split("/"))
    except ValueError:
        raise InputError(f"--settings: expected TEXT/IMAGE guidance such as 7.5/1.5, got {text!r}") from None
    return guidance, image_guidance


def run(args) -> int:
    from fashiongen.bench.attribute_classifier import load_classifier
    from fashiongen.bench.quality import grid, round_trips
    from fashiongen.runtime.engines import EngineSet, ort_factory
    from fashiongen.runtime.files import atomic_file
    from fashiongen.runtime.images import load_rgb_image
    from fashiongen.runtime.pix2pix import Pix2PixPipeline

    classifier = load_classifier(args.classifier)
    networks = EngineSet(Path(args.engines), ort_factory(["CPUExecutionProvider"], args.threads))
    pipeline = Pix2PixPipeline(networks)
    cases = read_cases(args.data, args.pairs + args.sweep_pairs, args.seed)
    measured, swept = cases[:args.pairs], cases[args.pairs:]
    through_vae = classifier.classify(round_trips(networks, [load_rgb_image(c.source_file, "--data") for c in cases]))
    sweep = []
    for guidance, image_guidance in args.settings if swept else ():
        forms, _ = measure(pipeline, classifier, swept, through_vae[args.pairs:], guidance, image_guidance, args.steps)
        sweep.append({"guidance": guidance, "image_guidance": image_guidance, "forms": forms})
    best = max(sweep, key=lambda row: np.mean([row["forms"][f]["success"] for f in FORMS])) if sweep else \
        dict(zip(("guidance", "image_guidance"), args.settings[0]))
    chosen = {"guidance": best["guidance"], "image_guidance": best["image_guidance"]}
    print(f"chosen: guidance {chosen['guidance']:g} / image {chosen['image_guidance']:g}", flush=True)
    results, images = measure(pipeline, classifier, measured, through_vae[:args.pairs], chosen["guidance"],
                              chosen["image_guidance"], args.steps)
    report = {"machine": machine_name(),
              "engines": args.editor, "classifier": shown_path(args.classifier), "steps": args.steps,
              "seed": args.seed, "pairs": len(measured), "sweep_pairs": len(swept), "sweep": sweep, "chosen": chosen,
              "measured": results, "ceiling": ceiling(classifier, networks, measured),
              "edit_command": edit_seconds(Path(args.engines), measured[0].source_file, args.data, args.edit_runs)
              if args.edit_runs else None}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for suffix, text in ((".json", json.dumps(report, indent=2) + "\n"), (".md", markdown(report))):
        with atomic_file(args.out.with_suffix(suffix)) as tmp:
            tmp.write_text(text)
    shown = measured[:8]
    grid([("source", [load_rgb_image(c.source_file, "--data") for c in shown], [c.source_caption for c in shown]),
          ("imperative", images["imperative"][:8], [c.words["imperative"] for c in shown]),
          ("target caption", images["caption"][:8], [c.words["caption"] for c in shown])],
         args.out.with_name(args.out.name + "-grid.png"))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())

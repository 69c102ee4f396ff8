"""Measured quality of approach 2's retrieval half: text → image search and catalog captions.

Everything measured goes through what a user runs, not the torch models the trainers score: the index is
built by ``fashiongen index``'s own code (BLIP captions, the CLIP engine folder's ONNX image tower) and searched
by ``fashiongen search``'s (``runtime.retrieval.CatalogSearch``, torch-free), with the shipped demo CLIP and
captioner unless ``--clip`` / ``--captioner`` name others.

- **Retrieval**: the data set's product ``test`` split (renders of training combinations, never trained on) is
  indexed as a held-out catalog; each distinct caption of it is a query, and a query's recall@k is a hit when one
  of the k results has every attribute of the query (its type, colour, pattern, sleeve, neckline and length, from
  the catalog's metadata). Per match mode: ``image`` (text → image vectors), ``caption`` (text → the BLIP
  captions' vectors) and ``both`` (their mean: what ``search`` does by default on a captioned index).
- **Captions**: the index's BLIP captions of the held-out renders (and of the ``unseen`` split, attribute
  combinations held out of every training split), read back into attributes with the data set's own caption
  grammar (``training.attributes.parse_caption``); accuracy per attribute over the images where it applies (an
  unreadable caption is wrong on every attribute), and the share of captions right on all of them.
- **Time**, on this machine: indexing the shipped demo catalog from scratch (``fashiongen index CATALOG --out X``
  with no --clip / --captioner, a fresh process each run: start-up, captioning, embedding, faiss) and answering
  one query (``fashiongen search --prompt ...``, a fresh process each run, and in process, warm), medians.

    python -m fashiongen.bench.catalog_quality --data DATASET_DIR

writes ``bench/results/catalog_quality.{md,json}``.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path
from statistics import median

from .common import CACHE, GARMENT, RESULTS, fresh_process_seconds, shown_path
from .cpu_report import machine_name

RECALL_AT = (1, 5)
#: Prompts whose answer times are measured in process (the seed's garment first); each is a training combination.
TIMED_PROMPTS = (GARMENT, "red striped maxi skirt", "navy long sleeve v-neck sweater", "white shorts",
                 "green midi short sleeve scoop dress")


# -- truth ----------------------------------------------------------------------------------------------------
def garment_of(row: dict):
    """The attribute combination of a metadata row (its attribute columns)."""
    from fashiongen.training.attributes import ATTRIBUTES, Garment

    return Garment(**{a: row.get(a) for a in ATTRIBUTES})


def read_caption(text: str):
    """The garment a generated caption names, or None when the data set's grammar cannot read it. BLIP's
    WordPiece tokenizer decodes "t-shirt" as "t - shirt": hyphens are rejoined first."""
    import re

    from fashiongen.training.attributes import parse_caption

    try:
        return parse_caption(re.sub(r"\s*-\s*", "-", text))
    except ValueError:
        return None


def metadata(folder: Path) -> dict[str, dict]:
    """``file_name`` → row of an imagefolder's ``metadata.jsonl``."""
    rows = [json.loads(line) for line in (folder / "metadata.jsonl").read_text().splitlines() if line.strip()]
    return {row["file_name"]: row for row in rows}


# -- retrieval ------------------------------------------------------------------------------------------------
def retrieval(search, rows: dict[str, dict], match: str) -> dict:
    """Recall@k on ``search``'s index of ``rows``, each distinct caption a query (``recall@k``); and weighted by
    how many items have it (``items_recall@k``: every item's caption a query, as ``train-clip`` scores)."""
    from collections import Counter

    truth = {path: garment_of(row) for path, row in rows.items()}
    counts = Counter(row["text"] for row in rows.values())
    hits = {k: 0 for k in RECALL_AT}
    item_hits = {k: 0 for k in RECALL_AT}
    for query, count in sorted(counts.items()):
        wanted = garment_of(next(row for row in rows.values() if row["text"] == query))
        found = [truth[hit.path] == wanted for hit in search.search(query, k=max(RECALL_AT), match=match)]
        for k in RECALL_AT:
            hits[k] += any(found[:k])
            item_hits[k] += count * any(found[:k])
    return {"queries": len(counts), **{f"recall@{k}": hits[k] / len(counts) for k in RECALL_AT},
            **{f"items_recall@{k}": item_hits[k] / len(rows) for k in RECALL_AT}}


# -- captions -------------------------------------------------------------------------------------------------
def caption_accuracy(captions: dict[str, str], rows: dict[str, dict]) -> dict:
    """Per-attribute accuracy of ``captions`` (file → generated caption) against ``rows``' attributes."""
    from fashiongen.training.attributes import ATTRIBUTES

    right = {a: 0 for a in ATTRIBUTES}
    applies = {a: 0 for a in ATTRIBUTES}
    readable = exact = 0
    for path, caption in captions.items():
        want, got = garment_of(rows[path]), read_caption(caption)
        readable += got is not None
        exact += got == want
        for a in ATTRIBUTES:
            if getattr(want, a) is not None:
                applies[a] += 1
                right[a] += got is not None and getattr(got, a) == getattr(want, a)
    return {"images": len(captions), "readable": readable / len(captions), "all_attributes": exact / len(captions),
            "accuracy": {a: right[a] / applies[a] for a in ATTRIBUTES if applies[a]},
            "attribute_instances": sum(right.values()) / sum(applies.values()), "applies": applies}


def held_out_catalog(split: Path, rows: dict[str, dict]) -> Path:
    """A catalog folder of the split's product images alone (hard links): the split also holds its masks, which
    ``index`` would take for catalog images."""
    from fashiongen.runtime.files import link_or_copy

    out = CACHE / "catalog-quality-held-out"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    for name in rows:
        link_or_copy(split / name, out / name)
    return out


def caption_folder(captioner, folder: Path, batch_size: int = 32) -> dict[str, str]:
    """The index's captions (its ``Captioner``, its image reader) of every image of an imagefolder."""
    from fashiongen.runtime.images import load_rgb_image

    names = sorted(metadata(folder))
    out = {}
    for first in range(0, len(names), batch_size):
        batch = names[first:first + batch_size]
        out.update(zip(batch, captioner([load_rgb_image(folder / name) for name in batch])))
    return out


# -- time -----------------------------------------------------------------------------------------------------
def demo_times(catalog: Path, index_runs: int, query_runs: int) -> dict:
    """Indexing the demo catalog from scratch with the shipped CLIP and captioner, and one query on the shipped
    index, as the README's commands run them."""
    from fashiongen.demo_family import engine_folder
    from fashiongen.runtime.retrieval import CatalogSearch

    out = CACHE / "catalog-quality-demo-index"
    index = ["index", str(catalog), "--out", str(out), "--no-progress"]
    index_times = fresh_process_seconds(index, index_runs, before=lambda: shutil.rmtree(out, ignore_errors=True))
    search = ["search", "--prompt", GARMENT, "-k", "5"]
    search_times = fresh_process_seconds(search, query_runs)
    shipped = CatalogSearch(engine_folder(None, "demo-catalog", "demo-catalog"))
    shipped.search(GARMENT, k=5)  # the first call opens the text tower: a warm query is the figure
    warm = []
    for _ in range(query_runs):
        for prompt in TIMED_PROMPTS:
            started = time.perf_counter()
            shipped.search(prompt, k=5)
            warm.append(time.perf_counter() - started)
    return {"catalog_images": len(list(shipped.items)),
            "index": {"command": "fashiongen " + " ".join(["index", shown_path(catalog), "--out", "INDEX"]),
                      "median_s": median(index_times), "runs": index_times},
            "search": {"command": "fashiongen " + " ".join(search[:1] + ["--prompt", repr(GARMENT)]),
                       "median_s": median(search_times), "runs": search_times},
            "search_warm": {"prompts": len(TIMED_PROMPTS), "median_s": median(warm), "calls": len(warm)}}


# -- markdown -----------------------------------------------------------------------------------------------
def markdown(report: dict) -> str:
    from fashiongen.training.attributes import ATTRIBUTES

    def pct(v):
        return "—" if v is None else f"{100 * v:.1f}"

    lines = [f"# Catalog retrieval and captions ({report['machine']})", "",
             f"CLIP `{report['clip']}`, captioner `{report['captioner']}`; held-out catalog: "
             f"{report['held_out_catalog']['images']} product renders of `{report['data']}` (product/test), indexed in "
             f"{report['held_out_catalog']['index_s']:.1f} s.", "",
             "## Text → image retrieval", "",
             f"Each distinct caption of the held-out catalog is a query ({report['retrieval']['both']['queries']}); "
             "a hit is a result with every attribute of the query. Every item's caption a query (captions that "
             "several items share counted once per item, as `train-clip` scores): the last two columns.", "",
             "| match | recall@1 | recall@5 | every item: recall@1 | recall@5 |", "|---|---|---|---|---|"]
    for match, scores in report["retrieval"].items():
        lines.append(f"| {match}{' (default)' if match == 'both' else ''} | "
                     + " | ".join(pct(scores[f"{prefix}recall@{k}"]) for prefix in ("", "items_") for k in RECALL_AT)
                     + " |")
    lines += ["", "## Caption attribute accuracy", "",
              "The index's BLIP captions read back with the data set's caption grammar; % over the images where the "
              "attribute applies (an unreadable caption is wrong on all); every attribute named: over all "
              "(image, attribute) pairs; caption all right: images with every attribute right.", "",
              "| split | images | " + " | ".join(ATTRIBUTES) + " | every attribute named | caption all right "
              "| readable |", "|---" * (len(ATTRIBUTES) + 5) + "|"]
    for split, scores in report["captions"].items():
        lines.append(f"| {split} | {scores['images']} | "
                     + " | ".join(pct(scores["accuracy"].get(a)) for a in ATTRIBUTES)
                     + f" | {pct(scores['attribute_instances'])} | {pct(scores['all_attributes'])} "
                     f"| {pct(scores['readable'])} |")
    demo = report.get("demo")
    if demo:
        lines += ["", f"## Time on the shipped demo catalog ({demo['catalog_images']} images)", "",
                  f"Load average (1 min) when the bench ended: {report['load_average_1min_at_end'] or '?'} on "
                  f"{os.cpu_count()} cores (other jobs slow these figures down).", "",
                  f"- `{demo['index']['command']}` from scratch (shipped CLIP and captioner, fresh process): median "
                  f"{demo['index']['median_s']:.1f} s over {len(demo['index']['runs'])} runs",
                  f"- `{demo['search']['command']}` (fresh process, start-up included): median "
                  f"{demo['search']['median_s']:.2f} s over {len(demo['search']['runs'])} runs",
                  f"- one query in process, warm (`CatalogSearch.search`, k 5): median "
                  f"{1000 * demo['search_warm']['median_s']:.1f} ms over {demo['search_warm']['calls']} calls"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    from fashiongen.demo_family import engine_folder
    from fashiongen.runtime.errors import InputError

    p = argparse.ArgumentParser(prog="python -m fashiongen.bench.catalog_quality", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, required=True, help="the data set (fashiongen dataset --out DIR)")
    p.add_argument("--clip", default=None, help="CLIP checkpoint or engine folder (default: demo-clip)")
    p.add_argument("--captioner", default=None, help="BLIP captioning checkpoint (default: demo-captioner)")
    p.add_argument("--index-runs", type=int, default=3, help="fresh `index` runs on the demo catalog (default 3)")
    p.add_argument("--query-runs", type=int, default=5, help="fresh `search` runs (default 5)")
    p.add_argument("--no-demo", action="store_true", help="skip the shipped demo catalog's timings")
    p.add_argument("--out", type=Path, default=RESULTS / "catalog_quality", help="report path without suffix")
    args = p.parse_args(argv)
    try:
        args.clip = engine_folder(args.clip, "demo-clip", "--clip")
        args.captioner = engine_folder(args.captioner, "demo-captioner", "--captioner")
        for split in ("test", "unseen"):
            if not (args.data / "product" / split / "metadata.jsonl").is_file():
                raise InputError(f"--data: '{args.data}' has no product/{split}/metadata.jsonl (`fashiongen dataset`)")
        return run(args)
    except InputError as exc:
        print(f"catalog_quality: error: {exc}", file=sys.stderr)
        return 2


def run(args) -> int:
    from fashiongen.demo_family import engine_folder
    from fashiongen.export.catalog_index import Captioner, build_index
    from fashiongen.runtime.files import atomic_file
    from fashiongen.runtime.retrieval import MATCHES, CatalogSearch, load_index_meta

    rows = metadata(args.data / "product" / "test")
    index_dir = CACHE / "catalog-quality-held-out-index"
    report = build_index(held_out_catalog(args.data / "product" / "test", rows), index_dir, clip_dir=args.clip,
                         captioner_dir=args.captioner, batch_size=32, rebuild=True, progress=False)
    print(report.summary(), flush=True)
    search = CatalogSearch(index_dir)
    scores = {match: retrieval(search, rows, match) for match in MATCHES}
    for match, s in scores.items():
        print(f"retrieval {match:7s} " + ", ".join(f"{k} {v:.3f}" for k, v in s.items() if k != "queries"),
              flush=True)
    captions = {"test": caption_accuracy({item["path"]: item["caption"] for item in search.items}, rows)}
    unseen = args.data / "product" / "unseen"
    captions["unseen"] = caption_accuracy(caption_folder(Captioner(args.captioner), unseen), metadata(unseen))
    for split, s in captions.items():
        print(f"captions {split:6s} " + ", ".join(f"{a} {v:.3f}" for a, v in s["accuracy"].items())
              + f", every attribute {s['attribute_instances']:.3f}, all right {s['all_attributes']:.3f}", flush=True)
    demo = None
    if not args.no_demo:
        shipped = engine_folder(None, "demo-catalog", "demo-catalog")
        demo = demo_times((shipped / load_index_meta(shipped)["catalog"]).resolve(), args.index_runs, args.query_runs)
    load = round(os.getloadavg()[0], 1) if hasattr(os, "getloadavg") else None  # a shared machine: how busy
    out = {"machine": machine_name(), "load_average_1min_at_end": load,
           "data": shown_path(args.data), "clip": shown_path(args.clip), "captioner": shown_path(args.captioner),
           "held_out_catalog": {"images": report.total, "index_s": report.seconds},
           "retrieval": scores, "captions": captions, "demo": demo}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for suffix, text in ((".json", json.dumps(out, indent=2) + "\n"), (".md", markdown(out))):
        with atomic_file(args.out.with_suffix(suffix)) as tmp:
            tmp.write_text(text)
    print(markdown(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())

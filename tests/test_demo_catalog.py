"""Approach 2's shipped retrieval half as the commands' defaults: ``search``, ``edit --from-catalog`` and
``index`` need no index, CLIP or captioner named.

A stand-in shipped through the recipe's own ``ship_catalog`` from the suite's tiny CLIP and BLIP checks the
wiring (names, defaults, the index finding its catalog where it was shipped, the error when nothing is
installed); the real shipped catalog, when this checkout has it, must find what the README promises.
"""
from __future__ import annotations

import json
import shutil

import pytest

from fashiongen import demo_family
from fashiongen.cli import main
from fashiongen.runtime.retrieval import CatalogSearch
from test_demo_family import one_line_error


@pytest.fixture(scope="module")
def tiny_work(tmp_path_factory):
    """A demo work folder after its ``index-catalog`` stage, from tiny random CLIP and BLIP checkpoints."""
    from fashiongen.export.catalog_index import build_index
    from fashiongen.random_checkpoints.retrieval import write_blip_checkpoint, write_catalog, write_clip_checkpoint

    work = tmp_path_factory.mktemp("work")
    write_catalog(work / "catalog", 6, seed=3)
    write_blip_checkpoint(work / "release" / "captioner", seed=0)
    build_index(work / "catalog", work / "engines" / "catalog", clip_dir=write_clip_checkpoint(work / "clip"),
                captioner_dir=work / "release" / "captioner", progress=False)
    return work


@pytest.fixture
def stand_in(tiny_work, tmp_path, monkeypatch):
    """DEMO_DIR holding the tiny catalog as ``--ship catalog`` lays it out (the work folder moved away after)."""
    from fashiongen.training.ship import ship_family

    work = tmp_path / "work"
    shutil.copytree(tiny_work, work)
    root = ship_family(work, tmp_path / "demo_models", {"seed": 1, "wall_seconds": {}}, parts=("catalog",))
    shutil.rmtree(work)  # nothing shipped may point back into it
    monkeypatch.setattr(demo_family, "DEMO_DIR", root)
    return root


def test_the_shipped_index_finds_its_catalog_and_names_no_machine_path(stand_in, tmp_path):
    meta = json.loads((stand_in / "engines" / "catalog" / "index.json").read_text())
    assert meta["catalog"] == "../../catalog"
    assert (meta["clip"]["source"], meta["captioner"]["source"]) == ("demo-clip", "demo-captioner")
    search = CatalogSearch(demo_family.engine_folder(None, "demo-catalog"))
    hit = search.search("red skirt", k=1)[0]
    assert search.image_path(hit).resolve() == (stand_in / "catalog" / hit.path).resolve()
    assert demo_family.engine_folder("demo-clip", "demo-clip") == stand_in / "engines" / "catalog" / "clip"


def test_search_defaults_to_the_demo_catalog(stand_in, capsys):
    assert main(["search", "--prompt", "black short sleeve crewneck crop top", "-k", "2"]) == 0
    printed = capsys.readouterr().out
    assert len([line for line in printed.splitlines() if line.strip().startswith(("1 ", "2 "))]) == 2
    assert main(["search", "demo-catalog", "--prompt", "red skirt", "--clip-engines", "demo-clip", "-k", "1"]) == 0


def test_index_defaults_to_the_demo_clip_and_captioner(stand_in, tmp_path, capsys):
    from fashiongen.random_checkpoints.retrieval import write_catalog

    write_catalog(tmp_path / "mine", 3, seed=9)
    assert main(["index", str(tmp_path / "mine"), "--out", str(tmp_path / "index"), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "CLIP exported" not in printed  # the demo CLIP is an engine folder: copied as it is
    meta = json.loads((tmp_path / "index" / "index.json").read_text())
    shipped = json.loads((stand_in / "engines" / "catalog" / "index.json").read_text())
    assert meta["clip"]["fingerprint"] == shipped["clip"]["fingerprint"]
    assert meta["captioner"]["fingerprint"] == shipped["captioner"]["fingerprint"]
    assert all(item["caption"] for item in meta["items"])


def test_edit_from_catalog_defaults_to_the_demo_catalog(stand_in, p2p_engines, tmp_path, capsys):
    out = tmp_path / "edited.png"
    code = main(["edit", "--engines", str(p2p_engines), "--from-catalog", "--prompt", "red skirt", "--steps", "1",
                 "--out", str(out), "--no-progress"])
    assert code == 0, capsys.readouterr().err
    assert "catalog match: item-" in capsys.readouterr().out and out.is_file()


def test_without_the_demo_the_errors_say_what_to_pass(tmp_path, monkeypatch, capsys):
    from fashiongen.random_checkpoints.retrieval import write_catalog

    monkeypatch.setattr(demo_family, "DEMO_DIR", tmp_path / "none")
    err = one_line_error(capsys, "search", "--prompt", "crop top")
    assert "INDEX_DIR" in err and "not installed" in err and "fashiongen index" in err
    write_catalog(tmp_path / "mine", 1)
    err = one_line_error(capsys, "index", tmp_path / "mine", "--out", tmp_path / "index")
    assert "--clip" in err and "not installed" in err and "training.demo" in err
    err = one_line_error(capsys, "index", tmp_path / "mine", "--out", tmp_path / "index", "--clip", tmp_path / "mine",
                         "--captioner", "demo-captioner")
    assert "--captioner" in err and "not installed" in err and "BLIP captioning checkpoint" in err
    err = one_line_error(capsys, "edit", "--engines", tmp_path, "--from-catalog", "--prompt", "x", "--out",
                         tmp_path / "o.png")
    assert "--from-catalog" in err and "not installed" in err


# -- the real shipped catalog ---------------------------------------------------------------------------------
shipped = pytest.mark.skipif(not demo_family.installed("demo-catalog"), reason="this checkout has no shipped catalog")


def shipped_rows() -> list[dict]:
    index = demo_family.engine_folder(None, "demo-catalog")
    catalog = index / json.loads((index / "index.json").read_text())["catalog"]
    return [json.loads(line) for line in (catalog / "metadata.jsonl").read_text().splitlines() if line.strip()]


@shipped
def test_the_shipped_catalog_has_no_held_out_combination():
    from fashiongen.training.attributes import HELD_OUT, parse_caption

    rows = shipped_rows()
    assert len(rows) >= 500
    assert not {parse_caption(row["text"]) for row in rows} & set(HELD_OUT)
    assert len(CatalogSearch(demo_family.engine_folder(None, "demo-catalog")).items) == len(rows)


def top_hits(search, rows: dict[str, dict], prompt: str, k: int = 5) -> list:
    from fashiongen.bench.catalog_quality import garment_of

    return [garment_of(rows[hit.path]) for hit in search.search(prompt, k=k)]


@shipped
def test_crop_top_prompts_find_the_crop_top_asked_for():
    """"black short sleeve crewneck crop top"-type prompts: every crop top's caption in the catalog as a query.
    Measured when shipped: the first result has every attribute 95.3% of the time, type, colour, pattern and
    sleeve 100%, the asked-for item is always among the first 5. The neckline is what the shipped CLIP and
    captioner miss most: for the README's own prompt the crewneck item leads a black short-sleeve scoop one by
    little (0.922 / 0.910), and the index's caption of it says "scoop"."""
    from fashiongen.bench.catalog_quality import garment_of
    from fashiongen.training.attributes import parse_caption

    rows = {row["file_name"]: row for row in shipped_rows()}
    search = CatalogSearch(demo_family.engine_folder(None, "demo-catalog"))
    readme = parse_caption("black short sleeve crewneck crop top")
    found = top_hits(search, rows, "black short sleeve crewneck crop top")
    assert readme in found
    assert all(getattr(found[0], a) == getattr(readme, a) for a in ("type", "colour", "pattern", "sleeve"))
    tops = [row for row in rows.values() if row["type"] == "crop top"]
    exact = parts = 0
    for row in tops:
        want, found = garment_of(row), top_hits(search, rows, row["text"])
        assert want in found, row["text"]
        exact += found[0] == want
        parts += all(getattr(found[0], a) == getattr(want, a) for a in ("type", "colour", "pattern", "sleeve"))
    assert len(tops) >= 50 and exact / len(tops) >= 0.9 and parts / len(tops) >= 0.95, (exact, parts, len(tops))


@shipped
def test_every_catalog_caption_finds_its_item():
    """Every caption of the catalog as a query (default match): measured when shipped 0.93 / 1.0 at k 1 / 5 (a
    held-out catalog's figures are in bench/results/catalog_quality.md)."""
    from fashiongen.bench.catalog_quality import garment_of

    rows = {row["file_name"]: row for row in shipped_rows()}
    search = CatalogSearch(demo_family.engine_folder(None, "demo-catalog"))
    found = {name: top_hits(search, rows, row["text"]) for name, row in rows.items()}
    first = sum(found[name][0] == garment_of(row) for name, row in rows.items()) / len(rows)
    assert first >= 0.9 and all(garment_of(row) in found[name] for name, row in rows.items()), first

"""Catalog retrieval: CLIP towers exported to ONNX equal transformers' CLIPModel, faiss search is exact against
a brute-force cosine over transformers' embeddings, re-indexing is incremental, and bad input gets a clear,
one-line error (the index on disk stays whole)."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from fashiongen.runtime.retrieval import CatalogIndexError, CatalogSearch, ClipEncoder

PROMPTS = ["black short sleeve crewneck crop top", "a red midi dress", "blue denim jeans, slim fit",
           "white cotton t-shirt with a printed logo", "grey hooded sweater", "navy striped linen shirt"]


@pytest.fixture(scope="session")
def clip_checkpoint(tmp_path_factory):
    from fashiongen.random_checkpoints.retrieval import write_clip_checkpoint

    return write_clip_checkpoint(tmp_path_factory.mktemp("clip") / "tiny-clip", seed=0)


@pytest.fixture(scope="session")
def other_clip_checkpoint(tmp_path_factory):
    from fashiongen.random_checkpoints.retrieval import write_clip_checkpoint

    return write_clip_checkpoint(tmp_path_factory.mktemp("clip2") / "other-clip", seed=1)


@pytest.fixture(scope="session")
def blip_checkpoint(tmp_path_factory):
    from fashiongen.random_checkpoints.retrieval import write_blip_checkpoint

    return write_blip_checkpoint(tmp_path_factory.mktemp("blip") / "tiny-blip", seed=0)


@pytest.fixture(scope="session")
def clip_engines(tmp_path_factory, clip_checkpoint):
    from fashiongen.export.clip_export import export_clip_folder

    out = tmp_path_factory.mktemp("clip-engines") / "clip"
    export_clip_folder(clip_checkpoint, out)
    return out


@pytest.fixture(scope="session")
def catalog(tmp_path_factory):
    from fashiongen.random_checkpoints.retrieval import product_image, write_catalog

    folder = tmp_path_factory.mktemp("catalog") / "catalog"
    write_catalog(folder, 8, seed=0)
    (folder / "tops").mkdir()
    Image.fromarray(product_image(100, 64, 64)).convert("L").save(folder / "tops" / "gray.jpg")  # grayscale, JPEG
    rgba = np.concatenate([product_image(101, 80, 50), np.full((80, 50, 1), 200, np.uint8)], axis=2)
    Image.fromarray(rgba).save(folder / "tops" / "rgba.png")
    (folder / "notes.txt").write_text("not an image, not an image suffix: ignored")
    return folder


@pytest.fixture(scope="session")
def index_dir(tmp_path_factory, catalog, clip_checkpoint, blip_checkpoint):
    from fashiongen.export.catalog_index import build_index

    out = tmp_path_factory.mktemp("index") / "index"
    report = build_index(catalog, out, clip_dir=clip_checkpoint, captioner_dir=blip_checkpoint, batch_size=4,
                         progress=False)
    assert report.total == 10 and len(report.added) == 10 and not report.skipped
    return out


def brute_force(clip_dir, catalog_dir, meta, prompt, match):
    """Cosine scores of every catalog item, all embeddings from transformers' CLIPModel."""
    from fashiongen.export.clip_export import reference_embeddings
    from fashiongen.runtime.images import load_rgb_image

    images = [load_rgb_image(catalog_dir / item["path"]) for item in meta["items"]]
    captions = [item["caption"] for item in meta["items"]]
    text, image = reference_embeddings(clip_dir, [prompt, *captions], images)
    query, caption = text[:1], text[1:]
    by_image, by_caption = (image @ query.T)[:, 0], (caption @ query.T)[:, 0]
    return {"image": by_image, "caption": by_caption, "both": (by_image + by_caption) / 2}[match]


# -- CLIP export ------------------------------------------------------------------------------------------
def test_clip_towers_match_transformers(clip_engines, clip_checkpoint):
    from fashiongen.export.clip_export import reference_embeddings
    from fashiongen.random_checkpoints.retrieval import product_image

    encoder = ClipEncoder.open(clip_engines)
    # portrait, landscape, and smaller than the crop (transformers pads it)
    images = [product_image(1, 96, 72), product_image(2, 40, 120), product_image(3, 20, 24)]
    prompts = PROMPTS + ["a " + "very " * 90 + "long prompt"]  # truncated to 77 tokens like transformers
    with pytest.warns(UserWarning, match="longer than 75 tokens"):
        ours_text = encoder.encode_text(prompts)
    ours_image = encoder.encode_images(images)
    ref_text, ref_image = reference_embeddings(clip_checkpoint, prompts, images)
    assert (np.sum(ours_text * ref_text, axis=1) > 0.9999).all()
    assert (np.sum(ours_image * ref_image, axis=1) > 0.9999).all()
    assert np.abs(ours_text - ref_text).max() < 1e-4 and np.abs(ours_image - ref_image).max() < 1e-4


def test_clip_preprocessing_matches_transformers(clip_checkpoint, clip_engines):
    from transformers import AutoImageProcessor

    from fashiongen.random_checkpoints.retrieval import product_image

    encoder = ClipEncoder.open(clip_engines)
    processor = AutoImageProcessor.from_pretrained(clip_checkpoint, local_files_only=True)
    for image in (product_image(5, 97, 61), product_image(6, 33, 90), product_image(7, 16, 16)):
        ref = processor(images=Image.fromarray(image), return_tensors="np").pixel_values[0]
        assert np.abs(encoder.preprocess(image) - ref).max() < 1e-5


def test_clip_manifest(clip_engines, clip_checkpoint):
    from fashiongen.export.clip_export import checkpoint_fingerprint

    manifest = json.loads((clip_engines / "manifest.json").read_text())
    assert manifest["kind"] == "clip" and set(manifest["networks"]) == {"clip_text", "clip_image"}
    assert manifest["clip"]["fingerprint"] == checkpoint_fingerprint(clip_checkpoint)
    assert manifest["dims"] == {"clip_text_length": 77, "clip_projection": 16, "clip_image_size": 32}
    for entry in manifest["networks"].values():
        assert entry["validation"]["max_abs_diff"] < 1e-4


# -- search -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("match", ["image", "caption", "both"])
def test_search_is_exact(index_dir, catalog, clip_checkpoint, match):
    search = CatalogSearch(index_dir)
    meta = search.meta
    strict = 0
    for prompt in PROMPTS[:4]:
        scores = brute_force(clip_checkpoint, catalog, meta, prompt, match)
        hits = search.search(prompt, k=5, match=match)
        assert len(hits) == 5
        # every returned score is that item's brute-force score, and they are the 5 best (ties allowed)
        np.testing.assert_allclose([h.score for h in hits], scores[[h.row for h in hits]], atol=1e-4)
        np.testing.assert_allclose([h.score for h in hits], np.sort(scores)[::-1][:5], atol=1e-4)
        top = np.argsort(-scores, kind="stable")[:5]
        if np.min(-np.diff(np.sort(scores)[::-1][:6])) > 1e-4:  # no near-ties in the top 5: the very same order
            assert [h.row for h in hits] == top.tolist()
            strict += 1
    assert strict >= 2, "too many near-ties: the order was hardly checked"


def test_default_match_uses_captions(index_dir):
    search = CatalogSearch(index_dir)
    assert search.resolve_match(None) == "both"
    assert all(h.caption for h in search.search(PROMPTS[0], k=3))


def test_k_larger_than_catalog(index_dir, capsys):
    from fashiongen.cli import main

    hits = CatalogSearch(index_dir).search(PROMPTS[0], k=50)
    assert len(hits) == 10 and len({h.row for h in hits}) == 10
    assert main(["search", str(index_dir), "--prompt", PROMPTS[0], "-k", "50"]) == 0
    out = capsys.readouterr().out
    assert "catalog holds 10 images" in out and out.count(".png") + out.count(".jpg") == 10


def test_cli_search_prints_ranked_hits(index_dir, capsys):
    from fashiongen.cli import main

    assert main(["search", str(index_dir), "--prompt", PROMPTS[1], "-k", "3", "--match", "image"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].split()[:2] == ["rank", "score"] and len(lines) == 4
    scores = [float(line.split()[1]) for line in lines[1:]]
    assert scores == sorted(scores, reverse=True)


# -- incremental re-indexing ------------------------------------------------------------------------------
def test_reindex_adds_only_new_images(tmp_path, catalog, clip_checkpoint, blip_checkpoint, index_dir):
    from fashiongen.export.catalog_index import build_index
    from fashiongen.random_checkpoints.retrieval import product_image
    from fashiongen.runtime.retrieval import read_faiss, stored_vectors

    grown = tmp_path / "catalog"
    shutil.copytree(catalog, grown)
    out = tmp_path / "index"
    build_index(grown, out, clip_dir=clip_checkpoint, captioner_dir=blip_checkpoint, progress=False)
    before = stored_vectors(read_faiss(out / "image.faiss"))

    Image.fromarray(product_image(999, 90, 70)).save(grown / "new-arrival.png")
    Image.fromarray(product_image(998)).save(grown / "item-003.png")   # changed content, same name
    (grown / "item-005.png").unlink()                                  # removed
    report = build_index(grown, out, progress=False)                   # CLIP and BLIP: the recorded ones
    assert report.added == ["new-arrival.png"] and report.updated == ["item-003.png"]
    assert report.removed == ["item-005.png"] and report.kept == 8 and report.total == 10
    assert not report.clip_exported

    search = CatalogSearch(out)
    paths = [item["path"] for item in search.meta["items"]]
    after = stored_vectors(read_faiss(out / "image.faiss"))
    old_paths = [item["path"] for item in json.loads((index_dir / "index.json").read_text())["items"]]
    for i, path in enumerate(paths):  # unchanged images keep their vectors (not re-embedded)
        if path in old_paths and path != "item-003.png":
            assert np.array_equal(after[i], before[old_paths.index(path)])
    # the new image is found: the prompt for which brute force ranks it first, search ranks it first too
    new_row = paths.index("new-arrival.png")
    assert new_row in [h.row for h in search.search(PROMPTS[0], k=10)]
    candidates = PROMPTS + [f"{c} {g}" for c in ("black", "red", "green", "beige", "pink", "yellow", "purple")
                            for g in ("crop top", "dress", "jacket", "skirt", "coat")]
    for prompt in candidates:
        scores = brute_force(clip_checkpoint, grown, search.meta, prompt, "both")
        if int(np.argmax(scores)) == new_row:
            assert search.search(prompt, k=1)[0].path == "new-arrival.png"
            break
    else:
        pytest.fail("no candidate prompt ranks the new image first by brute force")


def test_corrupt_images_are_skipped_and_reported(tmp_path, catalog, clip_checkpoint, capsys):
    from fashiongen.cli import main

    broken = tmp_path / "catalog"
    shutil.copytree(catalog, broken)
    (broken / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    (broken / "empty.jpg").write_bytes(b"")
    out = tmp_path / "index"
    assert main(["index", str(broken), "--out", str(out), "--clip", str(clip_checkpoint), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "10 images" in printed and "skipped 2 unreadable file(s)" in printed
    assert "broken.png" in printed and "empty.jpg" in printed
    meta = json.loads((out / "index.json").read_text())
    assert len(meta["items"]) == 10 and {s["path"] for s in meta["skipped"]} == {"broken.png", "empty.jpg"}
    assert meta["captioner"] is None  # no --captioner: image vectors only
    search = CatalogSearch(out)
    assert search.resolve_match(None) == "image"
    with pytest.raises(CatalogIndexError, match="has no captions"):
        search.search(PROMPTS[0], match="caption")


# -- bad input --------------------------------------------------------------------------------------------
def run_cli(capsys, *argv) -> str:
    from fashiongen.cli import main

    assert main(list(map(str, argv))) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    return err


def test_missing_and_empty_catalog(tmp_path, clip_checkpoint, capsys):
    err = run_cli(capsys, "index", tmp_path / "nope", "--out", tmp_path / "i", "--clip", clip_checkpoint)
    assert "CATALOG_DIR" in err and "does not exist" in err
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("no images here")
    err = run_cli(capsys, "index", tmp_path / "empty", "--out", tmp_path / "i", "--clip", clip_checkpoint)
    assert "holds no images" in err
    assert not (tmp_path / "i").exists()


def test_new_index_needs_clip(tmp_path, catalog, capsys, monkeypatch):
    from fashiongen import demo_family

    monkeypatch.setattr(demo_family, "DEMO_DIR", tmp_path / "none")  # no demo CLIP to default to
    err = run_cli(capsys, "index", catalog, "--out", tmp_path / "i")
    assert "--clip" in err and "not installed" in err and "CLIP checkpoint" in err


def test_query_with_another_clip_is_refused(tmp_path, index_dir, other_clip_checkpoint, capsys):
    from fashiongen.export.clip_export import export_clip_folder

    other = tmp_path / "other-clip-engines"
    export_clip_folder(other_clip_checkpoint, other)
    err = run_cli(capsys, "search", index_dir, "--prompt", PROMPTS[0], "--clip-engines", other)
    assert "was built with CLIP" in err and "not comparable" in err


def test_same_clip_from_another_folder_is_accepted(index_dir, clip_engines):
    hits = CatalogSearch(index_dir, clip_engines=clip_engines).search(PROMPTS[0], k=3)
    assert [h.row for h in hits] == [h.row for h in CatalogSearch(index_dir).search(PROMPTS[0], k=3)]


def test_reindex_with_another_clip_is_refused(tmp_path, catalog, index_dir, other_clip_checkpoint, capsys):
    copy = tmp_path / "index"
    shutil.copytree(index_dir, copy)
    before = (copy / "index.json").read_bytes()
    err = run_cli(capsys, "index", catalog, "--out", copy, "--clip", other_clip_checkpoint)
    assert "vectors from two CLIPs do not mix" in err and "--rebuild" in err
    assert (copy / "index.json").read_bytes() == before


def test_bad_k_and_not_an_index(tmp_path, index_dir, capsys):
    err = run_cli(capsys, "search", index_dir, "--prompt", PROMPTS[0], "-k", "0")
    assert "-k: must be an integer >= 1" in err
    err = run_cli(capsys, "search", tmp_path, "--prompt", PROMPTS[0])
    assert "no index.json" in err
    err = run_cli(capsys, "search", index_dir, "--prompt", "  ")
    assert "--prompt: must be a non-empty string" in err


def test_failed_update_leaves_the_index_whole(tmp_path, catalog, index_dir, monkeypatch):
    import fashiongen.export.catalog_index as catalog_index
    from fashiongen.random_checkpoints.retrieval import product_image

    copy, grown = tmp_path / "index", tmp_path / "catalog"
    shutil.copytree(index_dir, copy)
    shutil.copytree(catalog, grown)
    Image.fromarray(product_image(777)).save(grown / "extra.png")
    before = {p.name: p.read_bytes() for p in copy.iterdir() if p.is_file()}

    def boom(*args, **kwargs):
        raise OSError("disk full")
    monkeypatch.setattr(catalog_index, "write_faiss_files", boom)
    with pytest.raises(OSError, match="disk full"):
        catalog_index.build_index(grown, copy, progress=False)
    assert {p.name: p.read_bytes() for p in copy.iterdir() if p.is_file()} == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no partial folders left
    assert len(CatalogSearch(copy).search(PROMPTS[0], k=20)) == 10


# -- retrieval -> edit ------------------------------------------------------------------------------------
def test_edit_from_catalog(index_dir, p2p_engines, tmp_path, capsys):
    from fashiongen.cli import main
    from fashiongen.runtime.engines import EngineSet
    from fashiongen.runtime.images import load_rgb_image
    from fashiongen.runtime.pix2pix import Pix2PixPipeline, Pix2PixRequest

    out = tmp_path / "shot.png"
    code = main(["edit", "--engines", str(p2p_engines), "--from-catalog", str(index_dir), "--prompt", PROMPTS[0],
                 "--steps", "2", "--seed", "7", "--out", str(out), "--no-progress"])
    assert code == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    best = CatalogSearch(index_dir).search(PROMPTS[0], k=1)[0]
    assert f"catalog match: {best.path}" in printed and f"wrote {out}" in printed
    source = load_rgb_image(CatalogSearch(index_dir).image_path(best))
    expected = Pix2PixPipeline(EngineSet(p2p_engines))(
        Pix2PixRequest(image=source, prompt=PROMPTS[0], steps=2, seed=7), progress=False).images[0]
    assert np.array_equal(np.asarray(Image.open(out)), expected)


def test_edit_from_catalog_checks_before_compute(index_dir, p2p_engines, tmp_path, capsys):
    err = run_cli(capsys, "edit", "--engines", p2p_engines, "--from-catalog", tmp_path, "--prompt", "x",
                  "--out", tmp_path / "o.png")
    assert "--from-catalog" in err and "no index.json" in err
    err = run_cli(capsys, "edit", "--engines", p2p_engines, "--from-catalog", index_dir, "--prompt", "x",
                  "--steps", "0", "--out", tmp_path / "o.png")
    assert "--steps: must be an integer from 1 to 150" in err


def test_approximate_index_finds_the_same(tmp_path, catalog, clip_checkpoint, index_dir):
    """--approximate (HNSW): on a small catalog it returns the exact top-k."""
    from fashiongen.export.catalog_index import build_index

    out = tmp_path / "hnsw"
    build_index(catalog, out, clip_dir=clip_checkpoint, approximate=True, progress=False)
    assert json.loads((out / "index.json").read_text())["index_type"] == "hnsw"
    exact, approx = CatalogSearch(index_dir), CatalogSearch(out)
    for prompt in PROMPTS[:3]:
        assert ([h.path for h in approx.search(prompt, k=5, match="image")]
                == [h.path for h in exact.search(prompt, k=5, match="image")])

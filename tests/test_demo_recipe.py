"""The demo family's recipe (``python -m fashiongen.training.demo``): every stage is a command line the CLI
accepts, its sizes build, and the release copies are fp16 that load back as the model."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from fashiongen.cli import build_parser
from fashiongen.random_checkpoints.sd import SDSize
from fashiongen.training import demo
from fashiongen.training.ship import half_copy

pytestmark = pytest.mark.slow


def test_every_stage_is_a_command_the_cli_takes(tmp_path):
    parser = build_parser()
    names = []
    for stage in demo.stages(tmp_path, demo.SEED):
        names.append(stage.name)
        if stage.argv:
            args = parser.parse_args(stage.argv)
            assert callable(args.run), stage.name
    assert names[0] == "dataset" and {"vae", "worn", "product", "segmenter", "export-worn"} <= set(names)
    # the product decoder is tuned on the product model, then sharpened, and the tiny decoder distilled from that
    assert names.index("product") < names.index("product-decoder") < names.index("product-sharpen")
    assert names.index("product-sharpen") < names.index("tiny-vae") and names.index("product-sharpen") < names.index(
        "release")
    argv = {s.name: s.argv for s in demo.stages(tmp_path, demo.SEED)}
    assert argv["tiny-vae"][argv["tiny-vae"].index("--model") + 1] == str(tmp_path / "product-sharpen" / "model")
    sharpen = parser.parse_args(argv["product-sharpen"])
    assert sharpen.decoder_only and sharpen.adversarial_weight == demo.RECIPE["product_sharpen"]["adversarial_weight"]
    # so is the worn model's, on the worn view, and the release takes each model with its own decoder
    assert names.index("worn") < names.index("worn-decoder") < names.index("worn-text") < names.index("token-studio")
    assert names.index("worn-text") < names.index("product") and names.index("worn-text") < names.index("release")
    argv = {s.name: s.argv for s in demo.stages(tmp_path, demo.SEED)}["worn-decoder"]
    assert "--decoder-only" in argv and argv[argv.index("--data") + 1].endswith("worn/train")
    # the segmenter is fine-tuned on the released worn VAE's round trips before the release takes it
    round_trip = parser.parse_args({s.name: s.argv for s in demo.stages(tmp_path, demo.SEED)}["segmenter-round-trip"])
    assert round_trip.round_trip.parent.name == "worn-text" and round_trip.model.parent.name == "segmenter"
    assert names.index("segmenter") < names.index("segmenter-round-trip") < names.index("release")
    assert demo.JOIN == "segmenter-round-trip"
    assert {"clip", "captioner", "catalog", "index-catalog"} <= set(names)
    assert names.index("index-catalog") > max(names.index("release"), names.index("catalog"))
    # the captioner reads the main set's product shots and those of a data set of another seed, made first
    argvs = {s.name: s.argv for s in demo.stages(tmp_path, demo.SEED)}
    captioner = parser.parse_args(argvs["captioner"])
    assert [d.name for d in captioner.data] == ["train", "train"] and captioner.data[1].parts[-3] == "captioner-data"
    extra = parser.parse_args(argvs["captioner-data"])
    assert extra.seed != demo.SEED and extra.test_fraction == 0 and names.index("captioner-data") < names.index(
        "captioner")
    # the editor trains on the released product model and is exported with the guidance it edits best at
    order = [names.index(n) for n in ("release", "pix2pix", "release-pix2pix", "export-pix2pix")]
    assert order == sorted(order)
    export = {s.name: s.argv for s in demo.stages(tmp_path, demo.SEED)}["export-pix2pix"]
    assert export[export.index("--image-guidance") + 1] == str(demo.RECIPE["edit_sampling"]["image_guidance"])


def test_the_recipes_optional_keys_reach_the_commands(tmp_path, monkeypatch):
    """A value key becomes a flag and its value (the tiny decoder's teacher and edge terms), a key set to true a
    switch alone (a captioner told to flip): each parsed back by the CLI as the recipe says."""
    parser = build_parser()
    monkeypatch.setitem(demo.RECIPE, "captioner", {**demo.RECIPE["captioner"], "flip": True, "zoom": 1.1})
    argv = {s.name: s.argv for s in demo.stages(tmp_path, demo.SEED)}
    tiny = parser.parse_args(argv["tiny-vae"])
    recipe = demo.RECIPE["tiny_vae"]
    assert (tiny.teacher_weight, tiny.edge_weight, tiny.latent_noise, tiny.latent_offset) == (
        recipe["teacher_weight"], recipe["edge_weight"], recipe["latent_noise"], recipe["latent_offset"])
    captioner = parser.parse_args(argv["captioner"])
    assert captioner.flip is True and captioner.zoom == 1.1 and "True" not in argv["captioner"]


def test_the_recipe_sizes_build():
    size = SDSize(**{k: tuple(v) if isinstance(v, list) else v for k, v in demo.RECIPE["model"].items()})
    assert size.vae_scale_factor * size.sample_size == demo.RECIPE["dataset"]["size"] >= 128


def test_the_retrieval_sizes_build():
    from fashiongen.random_checkpoints.retrieval import BlipSize, ClipSize, blip_vocab

    clip, blip = ClipSize(**demo.RECIPE["clip"]["size"]), BlipSize(**demo.RECIPE["captioner"]["size"])
    assert clip.image_size == blip.image_size == demo.RECIPE["dataset"]["size"]  # the renders at full size
    assert clip.image_size % clip.patch_size == 0 and blip.image_size % blip.patch_size == 0
    assert len(blip_vocab()) > 0


def test_the_demo_catalog_is_one_item_per_caption_of_the_training_split(tmp_path):
    from fashiongen.runtime.errors import InputError
    from fashiongen.training.attributes import HELD_OUT, parse_caption
    from fashiongen.training.dataset import write_dataset

    write_dataset(tmp_path / "set", count=40, size=64, test_fraction=0.0, unseen_count=0, progress=False)
    source = tmp_path / "set" / "product" / "train"
    rows = [json.loads(line) for line in (source / "metadata.jsonl").read_text().splitlines()]
    wanted = rows[7]["text"]
    demo.make_catalog(source, tmp_path / "catalog", 10, seed=1, include=[wanted])
    chosen = [json.loads(line) for line in (tmp_path / "catalog" / "metadata.jsonl").read_text().splitlines()]
    texts = [row["text"] for row in chosen]
    assert len(texts) == len(set(texts)) == 10 and wanted in texts
    assert not {parse_caption(t) for t in texts} & set(HELD_OUT)
    assert all((tmp_path / "catalog" / row["file_name"]).is_file() and row["type"] for row in chosen)
    with pytest.raises(InputError, match="none of them 'purple"):
        demo.make_catalog(source, tmp_path / "other", 10, seed=1, include=["purple maxi skirt"])
    with pytest.raises(InputError, match="held-out"):
        held = tmp_path / "held"
        held.mkdir()
        (held / "metadata.jsonl").write_text(json.dumps({**rows[0], "text": "black sleeveless crewneck tank top"}))
        demo.make_catalog(held, tmp_path / "third", 1, seed=1)


def test_shipping_a_part_keeps_the_parts_shipped_before(tmp_path):
    from fashiongen.training.ship import ship_family

    work = tmp_path / "work"
    for name in ("segmenter", "captioner"):
        (work / "release" / name).mkdir(parents=True)
        (work / "release" / name / "config.json").write_text("{}")
    (work / "engines" / "segmenter").mkdir(parents=True)
    (work / "engines" / "segmenter" / "manifest.json").write_text("{}")
    (work / "catalog").mkdir()
    (work / "catalog" / "a.png").write_bytes(b"png")
    (work / "engines" / "catalog" / "clip").mkdir(parents=True)
    (work / "engines" / "catalog" / "index.json").write_text(json.dumps(
        {"catalog": str(work / "catalog"), "clip": {"source": str(work)}, "captioner": {"source": str(work)}}))
    stages = [{"name": "segmenter", "command": "first"}, {"name": "clip", "command": "first"}]
    target = ship_family(work, tmp_path / "shipped", {"wall_seconds": {"segmenter": 1.0}, "stages": stages,
                                                      "notes": "how the segmenter was made"}, parts=("segmenter",))
    stages = [{"name": "segmenter", "command": "second"}, {"name": "clip", "command": "second"}]
    ship_family(work, target, {"wall_seconds": {"clip": 2.0, "segmenter": 0.0}, "stages": stages}, parts=("catalog",))
    recipe = json.loads((target / "recipe.json").read_text())
    assert recipe["shipped"] == ["segmenter", "catalog"] and recipe["wall_seconds"] == {"segmenter": 1.0, "clip": 2.0}
    assert [stage["command"] for stage in recipe["stages"]] == ["first", "second"]  # as each part was made
    assert recipe["notes"] == "how the segmenter was made"
    assert (target / "engines" / "segmenter" / "manifest.json").is_file()
    assert (target / "weights" / "segmenter" / "config.json").is_file()
    assert (target / "catalog" / "a.png").is_file() and (target / "engines" / "captioner" / "config.json").is_file()
    assert json.loads((target / "engines" / "catalog" / "index.json").read_text())["catalog"] == "../../catalog"


def test_a_stage_already_done_is_skipped(tmp_path):
    stage = demo.stages(tmp_path, demo.SEED)[0]
    stage.done.parent.mkdir(parents=True)
    stage.done.write_text("{}")
    assert demo.run_stage(stage, tmp_path, log=lambda line: None) == 0.0


def test_the_segmenter_runs_beside_the_diffusion_stages_on_one_thread_each(tmp_path, monkeypatch):
    import threading

    worn_started = threading.Event()
    calls = []

    def fake_stage(stage, work, log, threads=None):
        calls.append((stage.name, threads, threading.current_thread().name))
        if stage.name == "segmenter":  # still training while the diffusion stages start
            assert worn_started.wait(timeout=30)
        if stage.name == "worn":
            worn_started.set()
        return 1.0

    monkeypatch.setattr(demo, "run_stage", fake_stage)
    times = demo.run_all(tmp_path, demo.SEED, log=lambda line: None)
    order = [name for name, _, _ in calls]
    threads = {name: n for name, n, _ in calls}
    assert order[0] == "dataset" and threads["dataset"] is None
    assert threads["segmenter"] == 1 and threads["vae"] == 1 and threads["worn"] == 1
    assert all(dict((name, thread) for name, _, thread in calls)[name] == "beside" for name in demo.BESIDE)
    assert threads["clip"] == threads["captioner"] == 1 and order.index("release") > order.index("captioner")
    assert order.index("release") > order.index("segmenter") and threads["release"] is None
    assert set(times) == set(order) and all(v == 1.0 for v in times.values())


def test_ship_copies_only_the_parts_named(tmp_path):
    from fashiongen.training.ship import ship_family
    from trainer_checks import refused

    work = tmp_path / "work"
    for name in ("worn", "product", "segmenter"):
        (work / "release" / name).mkdir(parents=True)
        (work / "release" / name / "config.json").write_text("{}")
        (work / "engines" / name).mkdir(parents=True)
        (work / "engines" / name / "manifest.json").write_text("{}")
        (work / "engines" / name / "cache").mkdir()
    (work / "release" / "embeddings").mkdir()
    out = ship_family(work, tmp_path / "shipped", {"seed": 1}, parts=("segmenter",))
    assert sorted(p.name for p in (out / "engines").iterdir()) == ["segmenter"]
    assert sorted(p.name for p in (out / "weights").iterdir()) == ["segmenter"]
    assert not (out / "engines" / "segmenter" / "cache").exists()
    assert json.loads((out / "recipe.json").read_text())["shipped"] == ["segmenter"]
    refused(lambda: ship_family(work, tmp_path / "other", {}, parts=("wron",)), "parts", "wron")


def test_ship_links_files_that_repeat_across_the_family(tmp_path):
    """The editor's text encoder is the product model's: shipped once, the editor's graph and weights relative
    links to it. External data links only where its graph does (ONNX Runtime reads it from beside the graph's
    real path); small files stay plain; shipping again (keeping the parts) links them the same way."""
    from fashiongen.training.ship import LINK_MIN_BYTES, ship_family

    work, rng = tmp_path / "work", np.random.default_rng(0)
    shared = {"text_encoder.onnx": rng.bytes(100), "text_encoder.onnx.data": rng.bytes(LINK_MIN_BYTES + 1),
              "unet.onnx.data": rng.bytes(LINK_MIN_BYTES), "manifest.json": b"{}"}
    for name in ("product", "pix2pix"):
        (work / "engines" / name).mkdir(parents=True)
        for file, data in {**shared, "unet.onnx": name.encode(),  # the graphs of the UNets differ
                           "vae.onnx": b"graph", "vae.onnx.data": name.encode() * 9000}.items():  # the VAEs' weights
            (work / "engines" / name / file).write_bytes(data)
    (work / "release" / "product").mkdir(parents=True)
    out = ship_family(work, tmp_path / "shipped", {"seed": 1}, parts=("product", "pix2pix"))
    for _ in range(2):
        product, editor = out / "engines" / "product", out / "engines" / "pix2pix"
        for file in ("text_encoder.onnx", "text_encoder.onnx.data"):
            assert os.readlink(editor / file) == f"../product/{file}" and not (product / file).is_symlink()
            assert (editor / file).read_bytes() == shared[file]
        assert not any((editor / f).is_symlink() for f in ("unet.onnx", "unet.onnx.data", "manifest.json",
                                                              "vae.onnx", "vae.onnx.data"))
        out = ship_family(work, out, {"seed": 1}, parts=("pix2pix",))  # product kept from the first shipment


def test_the_editor_ships_as_its_engine_folder_alone(tmp_path):
    from fashiongen.training.ship import ship_family

    work = tmp_path / "work"
    (work / "release" / "pix2pix").mkdir(parents=True)
    (work / "engines" / "pix2pix").mkdir(parents=True)
    (work / "engines" / "pix2pix" / "manifest.json").write_text("{}")
    out = ship_family(work, tmp_path / "shipped", {"seed": 1}, parts=("pix2pix",))
    assert (out / "engines" / "pix2pix" / "manifest.json").is_file() and not (out / "weights").exists()


def test_the_few_step_parts_ship_as_weights(tmp_path):
    """The tiny decoder and the LCM-LoRA (fp16, its metadata kept) ship beside the product model, no engines."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    from fashiongen.training.demo import LCM_LORA
    from fashiongen.training.ship import half_tensors, ship_family

    work = tmp_path / "work"
    (work / "release" / "tiny-vae").mkdir(parents=True)
    (work / "release" / "tiny-vae" / "config.json").write_text("{}")
    trained = tmp_path / "pytorch_lora_weights.safetensors"
    lora = {"lora_unet_a.lora_down.weight": torch.randn(4, 8), "lora_unet_a.alpha": torch.tensor(4, dtype=torch.int64)}
    save_file(lora, trained, metadata={"format": "pt", "note": "kept"})
    half_tensors(trained, work / "release" / LCM_LORA)
    out = ship_family(work, tmp_path / "shipped", {"seed": 1}, parts=("few-step",))
    assert sorted(p.name for p in (out / "weights").iterdir()) == ["lcm-lora", "tiny-vae"]
    assert not (out / "engines").exists()
    with safe_open(str(out / "weights" / LCM_LORA), framework="pt") as f:
        assert f.metadata() == {"format": "pt", "note": "kept"}
        down, alpha = f.get_tensor("lora_unet_a.lora_down.weight"), f.get_tensor("lora_unet_a.alpha")
    assert down.dtype == torch.float16
    assert torch.equal(down.float(), lora["lora_unet_a.lora_down.weight"].half().float())
    assert alpha.dtype == torch.int64 and json.loads((out / "recipe.json").read_text())["shipped"] == ["few-step"]


def test_half_copy_stores_fp16_that_loads_back_exactly(sd_checkpoint, tmp_path):
    out = half_copy(Path(sd_checkpoint), tmp_path / "half")
    source = load_file(str(Path(sd_checkpoint) / "unet" / "diffusion_pytorch_model.safetensors"))
    half = load_file(str(out / "unet" / "diffusion_pytorch_model.safetensors"))
    assert all(half[k].dtype == torch.float16 and torch.equal(half[k].float(), v.half().float())
               for k, v in source.items())
    assert json.loads((out / "model_index.json").read_text()) == json.loads(
        (Path(sd_checkpoint) / "model_index.json").read_text())


def test_the_token_data_spoils_every_image_and_keeps_its_caption(tmp_path):
    from fashiongen.training.dataset import write_dataset

    write_dataset(tmp_path / "set", count=4, size=64, test_fraction=0.0, unseen_count=0, progress=False)
    source = tmp_path / "set" / "worn" / "train"
    demo.make_token_data(source, tmp_path / "wrong", "wrong", 3, seed=1)
    rows = [json.loads(line) for line in (tmp_path / "wrong" / "metadata.jsonl").read_text().splitlines()]
    originals = {json.loads(line)["file_name"]: json.loads(line)["text"]
                 for line in (source / "metadata.jsonl").read_text().splitlines()}
    assert len(rows) == 3 and all(originals[r["file_name"]] == r["text"] for r in rows)
    assert all((tmp_path / "wrong" / r["file_name"]).read_bytes() != (source / r["file_name"]).read_bytes()
               for r in rows)


def test_the_studio_token_data_covers_every_type(tmp_path):
    from fashiongen.training.dataset import write_dataset

    write_dataset(tmp_path / "set", count=12, size=64, test_fraction=0.0, unseen_count=0, progress=False)
    source = tmp_path / "set" / "worn" / "train"
    demo.make_token_data(source, tmp_path / "studio", "studio", 12, seed=1)
    types = {json.loads(line)["type"] for line in (source / "metadata.jsonl").read_text().splitlines()}
    chosen = [json.loads(line)["file_name"] for line in (tmp_path / "studio" / "metadata.jsonl").read_text().splitlines()]
    by_name = {json.loads(line)["file_name"]: json.loads(line)["type"]
               for line in (source / "metadata.jsonl").read_text().splitlines()}
    assert {by_name[name] for name in chosen} == types


def test_finished_side_stages_leave_both_threads_to_the_main_chain(tmp_path, monkeypatch):
    calls = []
    for stage in demo.stages(tmp_path, demo.SEED):
        if stage.name in demo.BESIDE:
            stage.done.parent.mkdir(parents=True)
            stage.done.write_text("{}")
    monkeypatch.setattr(demo, "run_stage", lambda stage, work, log, threads=None: calls.append((stage.name, threads)) or 1.0)
    demo.run_all(tmp_path, demo.SEED, log=lambda line: None)
    assert all(threads is None for _, threads in calls), calls

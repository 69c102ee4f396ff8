"""The SegFormer clothes segmenter: export, torch-free preprocessing and post-processing equal to
transformers' ``SegformerImageProcessor`` + ``SegformerForSemanticSegmentation``, class choice."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from fashiongen.runtime.engines import EngineSet, ort_factory
from fashiongen.runtime.manifest import EngineFolderError, Manifest, load_manifest, write_json_atomic
from fashiongen.runtime.segmentation import (GARMENT_WORDS, SegPreprocess, Segmenter, UnknownClassError, class_map,
                                  resolve_classes, upsample_bilinear)

LABELS = dict(enumerate([
    "Background", "Hat", "Hair", "Sunglasses", "Upper-clothes", "Skirt", "Pants", "Dress", "Belt", "Left-shoe",
    "Right-shoe", "Face", "Left-leg", "Right-leg", "Left-arm", "Right-arm", "Bag", "Scarf"]))


def smooth_image(height: int, width: int, seed: int) -> np.ndarray:
    """A photo-like image: low-frequency colour blobs plus a little noise."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (6, 5, 3), dtype=np.uint8)
    big = np.asarray(Image.fromarray(small).resize((width, height), Image.BICUBIC)).astype(np.int16)
    return np.clip(big + rng.integers(-12, 13, big.shape), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def reference(segformer_checkpoint):
    from transformers import SegformerForSemanticSegmentation, SegformerImageProcessor

    processor = SegformerImageProcessor.from_pretrained(segformer_checkpoint, local_files_only=True)
    model = SegformerForSemanticSegmentation.from_pretrained(segformer_checkpoint, local_files_only=True).eval()
    return processor, model


# -- export -------------------------------------------------------------------------------------------
def test_export_writes_network_labels_and_preprocessing(segmenter_engines, segformer_checkpoint):
    manifest = load_manifest(segmenter_engines)
    assert manifest.kind == "segmenter"
    entry = manifest.networks["segmenter"]
    assert entry.file == "segformer.onnx" and (segmenter_engines / entry.file).is_file()
    assert entry.validation["max_abs_diff"] < 1e-4
    assert entry.validation["shapes"]["pixel_values"] != [2, 3, 96, 64]   # checked at another shape
    assert entry.inputs[0]["shape"] == ["batch", 3, "seg_height", "seg_width"]
    assert manifest.dims["seg_classes"] == 18
    assert manifest.segmenter.labels == LABELS
    pre = manifest.segmenter.preprocess
    assert pre["size"] == {"height": 64, "width": 64} and pre["resample"] == 2 and pre["do_normalize"]
    assert manifest.source["segmenter"] == str(segformer_checkpoint.absolute())


def test_export_errors_name_the_folder_and_file(tmp_path, segformer_checkpoint):
    from fashiongen.export.sd_export import export_engine_folder
    from fashiongen.export.segformer_export import SegmenterCheckpointError

    with pytest.raises(SegmenterCheckpointError, match="is not a folder"):
        export_engine_folder(tmp_path / "e1", segmenter_dir=tmp_path / "nowhere", progress=False)
    broken = tmp_path / "broken"
    shutil.copytree(segformer_checkpoint, broken)
    (broken / "preprocessor_config.json").unlink()
    with pytest.raises(SegmenterCheckpointError, match="lacks 'preprocessor_config.json'") as info:
        export_engine_folder(tmp_path / "e2", segmenter_dir=broken, progress=False)
    assert str(broken) in str(info.value) and "\n" not in str(info.value)
    assert not (tmp_path / "e2").exists()


def test_export_cli_segmenter_only(capsys, tmp_path, segformer_checkpoint):
    from fashiongen.cli import main

    assert main(["export", "--segmenter", str(segformer_checkpoint), "--out", str(tmp_path / "eng"),
                 "--no-progress"]) == 0
    assert "segmenter" in capsys.readouterr().out
    assert load_manifest(tmp_path / "eng").networks["segmenter"].file == "segformer.onnx"


# -- preprocessing and post-processing, piece by piece ------------------------------------------------------
@pytest.mark.parametrize("image_hw", [(97, 150), (300, 41), (48, 80), (20, 20)])
# a fixed shape, non-square on purpose (height and width must not swap), and the aspect-keeping form
@pytest.mark.parametrize("size", [{"height": 48, "width": 80}, {"shortest_edge": 40}])
def test_preprocess_equals_segformer_image_processor(image_hw, size):
    from transformers import SegformerImageProcessor

    processor = SegformerImageProcessor(size=size)
    ours = SegPreprocess(size=size)
    image = smooth_image(*image_hw, seed=sum(image_hw))
    expected = processor(images=[image], return_tensors="np")["pixel_values"]
    got = ours([image])
    assert got.dtype == np.float32 and got.shape == expected.shape
    assert min(got.shape[2:]) == 40 if "shortest_edge" in size else got.shape[2:] == (48, 80)
    assert np.array_equal(got, expected)


def test_shortest_edge_segmenter_matches_transformers(tmp_path, segformer_checkpoint):
    """A checkpoint whose processor keeps the aspect ratio: exported as such, and the logits of images of
    different shapes equal transformers' (each image its own shape, so its own call)."""
    import json

    from transformers import SegformerForSemanticSegmentation, SegformerImageProcessor

    from fashiongen.export.sd_export import export_engine_folder

    checkpoint = tmp_path / "segformer"
    shutil.copytree(segformer_checkpoint, checkpoint)
    config = json.loads((checkpoint / "preprocessor_config.json").read_text())
    (checkpoint / "preprocessor_config.json").write_text(json.dumps({**config, "size": {"shortest_edge": 48}}))
    export_engine_folder(tmp_path / "engines", segmenter_dir=checkpoint, progress=False)
    assert load_manifest(tmp_path / "engines").segmenter.preprocess["size"] == {"shortest_edge": 48}
    processor = SegformerImageProcessor.from_pretrained(checkpoint, local_files_only=True)
    model = SegformerForSemanticSegmentation.from_pretrained(checkpoint, local_files_only=True).eval()
    segmenter = Segmenter(EngineSet(tmp_path / "engines"))
    images = [smooth_image(97, 150, 1), smooth_image(131, 77, 2)]
    for image, ours in zip(images, segmenter.logits(images)):
        with torch.no_grad():
            expected = model(**processor(images=[image], return_tensors="pt")).logits[0].numpy()
        assert ours.shape == expected.shape and np.abs(ours - expected).max() < 1e-4


@pytest.mark.parametrize("src, dst", [((16, 16), (64, 64)), ((16, 12), (97, 150)), ((25, 11), (7, 40)),
                                      ((1, 5), (3, 9))])
def test_bilinear_upsampling_equals_torch(src, dst):
    logits = np.random.default_rng(0).standard_normal((3, *src)).astype(np.float32)
    expected = torch.nn.functional.interpolate(torch.from_numpy(logits)[None], size=dst, mode="bilinear",
                                               align_corners=False)[0].numpy()
    assert np.abs(upsample_bilinear(logits, dst) - expected).max() < 1e-5
    assert np.array_equal(class_map(logits, dst, rows_per_chunk=5), expected.argmax(0))


# -- end to end against transformers -----------------------------------------------------------------------
def test_logits_and_class_maps_match_transformers(segmenter_engines, reference):
    processor, model = reference
    images = [smooth_image(97, 150, 1), smooth_image(131, 77, 2), smooth_image(64, 200, 3)]
    segmenter = Segmenter(EngineSet(segmenter_engines))
    ours = np.stack(segmenter.logits(images))
    inputs = processor(images=images, return_tensors="pt")
    with torch.no_grad():
        outputs = model(**inputs)
    assert np.abs(ours - outputs.logits.numpy()).max() < 1e-4
    expected = processor.post_process_semantic_segmentation(outputs, target_sizes=[im.shape[:2] for im in images])
    for image, got, want in zip(images, segmenter.class_maps(images), expected):
        assert got.shape == image.shape[:2]
        assert (got == want.numpy()).mean() >= 0.999
    assert len(np.unique(np.concatenate([m.ravel() for m in segmenter.class_maps(images)]))) > 2


def test_a_batch_is_one_segmenter_call(segmenter_engines):
    calls = []
    base = ort_factory()

    def counting(name, path, contract, dims):
        engine = base(name, path, contract, dims)
        run = engine.run
        engine.run = lambda feeds: calls.append(feeds["pixel_values"].shape) or run(feeds)
        return engine

    segmenter = Segmenter(EngineSet(segmenter_engines, counting))
    masks = segmenter.masks([smooth_image(50, 70, 4), smooth_image(90, 30, 5), smooth_image(64, 64, 6)], [4, 5])
    assert calls == [(3, 3, 64, 64)]
    assert [m.shape for m in masks] == [(50, 70), (90, 30), (64, 64)] and masks[0].dtype == bool


def test_an_engine_folder_without_a_segmenter(tmp_path):
    folder = tmp_path / "sd-only"
    folder.mkdir()
    write_json_atomic(folder / "manifest.json", Manifest(kind="txt2img", dims={}, networks={}, opset=17,
                                                         versions={}).to_json())
    with pytest.raises(EngineFolderError, match="has no segmenter"):
        Segmenter(EngineSet(folder))


# -- choosing classes ------------------------------------------------------------------------------------
@pytest.mark.parametrize("prompt, labels", [
    ("black short sleeve crewneck crop top", ["Upper-clothes"]),
    ("a white T-Shirt, studio light", ["Upper-clothes"]),
    ("silk blouse", ["Upper-clothes"]), ("denim jacket", ["Upper-clothes"]), ("linen shirt", ["Upper-clothes"]),
    ("pleated skirt", ["Skirt"]), ("blue jeans", ["Pants"]), ("wool trousers", ["Pants"]),
    ("running shorts", ["Pants"]), ("cargo pants", ["Pants"]), ("red evening dress", ["Dress"]),
    ("white dress shirt", ["Upper-clothes"]), ("striped shirt dress", ["Dress"]),
    ("cropped tops and mini skirts", ["Upper-clothes", "Skirt"]),
])
def test_auto_reads_the_garment_from_the_prompt(prompt, labels):
    assert resolve_classes("auto", LABELS, prompt) == [next(i for i, n in LABELS.items() if n == lab)
                                                       for lab in labels]


def test_auto_without_a_garment_word_is_an_error():
    with pytest.raises(ValueError, match="no garment word"):
        resolve_classes("auto", LABELS, "a laptop on a desk")   # 'top' inside 'laptop' does not count
    with pytest.raises(ValueError, match="needs a prompt"):
        resolve_classes("auto", LABELS, None)


def test_classes_by_name_id_and_garment_word():
    assert resolve_classes("Upper-clothes", LABELS) == [4]
    assert resolve_classes("upper clothes,SKIRT", LABELS) == [4, 5]
    assert resolve_classes("4, 7", LABELS) == [4, 7]
    assert resolve_classes("jeans", LABELS) == [6]
    assert resolve_classes(["dress", 5], LABELS) == [7, 5]


@pytest.mark.parametrize("spec", ["shoes-and-socks", "99", ","])
def test_unknown_class_lists_the_labels(spec):
    with pytest.raises(UnknownClassError) as info:
        resolve_classes(spec, LABELS)
    assert "4 Upper-clothes" in str(info.value) and "17 Scarf" in str(info.value)


def test_garment_table_names_only_real_labels():
    assert set(GARMENT_WORDS) <= set(LABELS.values())


def test_new_runtime_modules_import_no_torch():
    code = ("import sys, fashiongen.runtime.segmentation, fashiongen.runtime.compositing, fashiongen.runtime.cutout, fashiongen.cutout_commands; "
            "bad = [m for m in ('torch', 'diffusers', 'transformers', 'fashiongen.export') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_demo_segmenter_cli_is_deterministic(tmp_path):
    from fashiongen.random_checkpoints.segmenter import main

    assert main(["--out", str(tmp_path / "a"), "--seed", "3"]) == 0
    assert main(["--out", str(tmp_path / "b"), "--seed", "3"]) == 0
    assert (tmp_path / "a/model.safetensors").read_bytes() == (tmp_path / "b/model.safetensors").read_bytes()
    config = json.loads((tmp_path / "a/config.json").read_text())
    assert config["id2label"]["4"] == "Upper-clothes" and config["architectures"] == ["SegformerForSemanticSegmentation"]


def test_bench_script_has_help():
    out = subprocess.run([sys.executable, "-m", "fashiongen.bench.segmenter", "--help"], check=True, capture_output=True, text=True)
    assert "--full-size" in out.stdout and "--runs" in out.stdout

"""runtime.manifest: typed sections over the one on-disk JSON format."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from fashiongen.runtime.manifest import (EngineFolderError, Manifest, SegmenterSection, TokenizerSection, Variant,
                                         load_manifest)

SHIPPED = Path(__file__).resolve().parents[1] / "fashiongen" / "demo_models" / "engines" / "segmenter"

# A txt2img folder's manifest as `fashiongen export`, `quantize` and `deepcache` write it (networks trimmed).
WRITTEN = {
    "kind": "txt2img", "dims": {"sample_size": 8, "deep_channels": 32}, "opset": 17, "format": 1,
    "networks": {"unet": {"file": "unet.onnx", "sha256": "ab", "inputs": [], "outputs": [], "validation": {}}},
    "versions": {"torch": "2"}, "scheduler_config": {"_class_name": "PNDMScheduler"}, "source": {"model": "m"},
    "tokenizer": {"file": "tokenizer.json", "model_max_length": 77, "bos_token_id": 1, "eos_token_id": 2,
                  "pad_token_id": 2, "learned_tokens": {"<a>": ["<a>", "<a>_1"]}},
    "vae": {"scaling_factor": 0.18215, "downscale": 8},
    "segmenter": {}, "clip": {},
    "variants": {"int8": {"unet": {"file": "unet.int8.xml", "backend": "openvino", "calibration": {"calls": 4}}},
                 "deepcache": {"unet_capture": {"file": "unet_capture.onnx", "backend": None},
                               "unet_shallow": {"file": "unet_shallow.onnx", "backend": None},
                               "interval": 3, "shallow_layers": 1, "of_layers": 2, "split_max_abs_diff": 1e-6}},
}


def test_sections_are_typed_and_the_json_round_trips():
    manifest = Manifest.from_json(WRITTEN)
    assert isinstance(manifest.tokenizer, TokenizerSection) and manifest.tokenizer.learned_tokens["<a>"][1] == "<a>_1"
    assert manifest.vae.downscale == 8 and manifest.segmenter is None and manifest.clip is None
    deepcache = manifest.variants["deepcache"]
    assert sorted(deepcache.networks) == ["unet_capture", "unet_shallow"]
    assert deepcache.settings == {"interval": 3, "shallow_layers": 1, "of_layers": 2, "split_max_abs_diff": 1e-6}
    assert manifest.variant_networks("int8")["unet"]["backend"] == "openvino" and manifest.variant_networks("x") == {}
    assert manifest.to_json() == WRITTEN


def test_the_shipped_folder_loads_and_rewrites_unchanged():
    data = json.loads((SHIPPED / "manifest.json").read_text())
    manifest = load_manifest(SHIPPED)
    assert isinstance(manifest.segmenter, SegmenterSection) and manifest.tokenizer is None
    assert all(isinstance(k, int) for k in manifest.segmenter.labels)
    assert manifest.to_json() == data


def test_keys_a_section_does_not_name_are_kept():
    data = {**WRITTEN, "vae": {"scaling_factor": 0.2, "downscale": 8, "shift_factor": 0.1}}
    manifest = Manifest.from_json(data)
    assert manifest.vae.extra == {"shift_factor": 0.1} and manifest.to_json() == data
    assert Variant.from_json(data["variants"]["int8"]).to_json() == data["variants"]["int8"]


@pytest.mark.parametrize("section,value", [("vae", {"downscale": 8}), ("tokenizer", ["tokenizer.json"])])
def test_a_broken_section_is_one_error_naming_the_file(tmp_path, section, value):
    (tmp_path / "manifest.json").write_text(json.dumps({**WRITTEN, section: value}))
    with pytest.raises(EngineFolderError, match="not a valid fashiongen manifest"):
        load_manifest(tmp_path)


@pytest.mark.parametrize("what", ["engines", "index"])
def test_a_folder_that_is_not_ours_is_refused_naming_the_argument(tmp_path, what):
    from fashiongen.runtime.retrieval import CatalogIndexError, load_index_meta

    load, error, made_by = ((load_manifest, EngineFolderError, "fashiongen export") if what == "engines"
                            else (load_index_meta, CatalogIndexError, "fashiongen index"))
    with pytest.raises(error, match=rf"^--{what}: '.*missing' is not a folder \(run `{made_by}` first\)$"):
        load(tmp_path / "missing", f"--{what}")
    with pytest.raises(error, match=rf"^--{what}: '.*' has no \w+\.json \(not an? [a-z ]+ folder\)$"):
        load(tmp_path, f"--{what}")

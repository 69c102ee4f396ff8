"""``fashiongen train-segmenter``: a tiny SegFormer learns, resumes exactly, writes a folder that transformers and
the exporter load, trains on what serving sees, mirrors left and right, and refuses bad input in one line."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from fashiongen.random_checkpoints.segmenter import CLOTHES_ID2LABEL  # noqa: E402
from fashiongen.runtime.errors import InputError  # noqa: E402
from fashiongen.training import augmentation, segmenter  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]
SIZE = 48        # the images on disk
RESOLUTION = 32  # trained at (so images and maps are resized)
TINY = {"hidden_sizes": [8, 16, 24, 32], "num_attention_heads": [1, 1, 1, 1], "decoder_hidden_size": 32,
        "image_size": [RESOLUTION, RESOLUTION]}


def write_folder(folder: Path, count: int, seed: int) -> Path:
    """An imagefolder of figures: a coloured top (class 4) over a pair of shoes (9 left, 10 right) on white."""
    from PIL import Image

    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(count):
        labels = np.zeros((SIZE, SIZE), np.uint8)
        x = int(rng.integers(4, 24))
        labels[6:34, x:x + 20] = 4
        labels[38:46, x:x + 8], labels[38:46, x + 12:x + 20] = 9, 10
        image = np.full((SIZE, SIZE, 3), 245, np.uint8)
        image[labels == 4] = rng.integers(0, 200, 3)
        image[labels == 9], image[labels == 10] = (150, 30, 30), (30, 30, 150)
        Image.fromarray(image).save(folder / f"{i}.png")
        Image.fromarray(labels, "L").save(folder / f"{i}-labels.png")
        rows.append({"file_name": f"{i}.png", "label_file": f"{i}-labels.png"})
    (folder / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("segdata")
    (root / "tiny.json").write_text(json.dumps(TINY))
    return {"train": write_folder(root / "train", 4, 0), "test": write_folder(root / "test", 2, 1),
            "config": root / "tiny.json"}


def train_args(data: dict, out: Path, *extra: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    segmenter.add_arguments(parser)
    return parser.parse_args(["--data", str(data["train"]), "--config", str(data["config"]), "--out", str(out),
                              "--resolution", str(RESOLUTION), "--batch-size", "4", "--learning-rate", "3e-3",
                              "--no-progress", *extra])


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory) -> Path:
    """Overfit the 4 images (no augmentation), evaluated on 2 others."""
    out = tmp_path_factory.mktemp("segrun") / "run"
    assert segmenter.run(train_args(data, out, "--steps", "25", "--zoom", "1", "--no-flip",
                                    "--eval-data", str(data["test"]))) == 0
    return out


def test_loss_falls_and_the_record_says_so(trained, capsys):
    record = json.loads((trained / "model" / "training.json").read_text())
    losses = record["losses"]
    assert record["steps"] == len(losses) == 25 and record["final_loss"] == losses[-1]
    assert np.mean(losses[-3:]) < 0.5 * losses[0], losses
    assert record["eval"]["examples"] == 2 and set(record["eval"]["iou"]) == {"Background", "Upper-clothes",
                                                                            "Left-shoe", "Right-shoe"}
    assert record["eval"]["miou"] == pytest.approx(np.mean(list(record["eval"]["iou"].values())))
    assert record["arguments"]["steps"] == 25 and record["wall_time_s"] > 0
    assert {p.name for p in trained.iterdir()} == {"run.json", "checkpoints", "model"}


def test_output_loads_with_transformers_and_exports(trained, tmp_path):
    from transformers import SegformerForSemanticSegmentation, SegformerImageProcessor

    from fashiongen.export.sd_export import export_engine_folder
    from fashiongen.runtime.manifest import load_manifest

    folder = trained / "model"
    model = SegformerForSemanticSegmentation.from_pretrained(folder, local_files_only=True)
    processor = SegformerImageProcessor.from_pretrained(folder, local_files_only=True)
    assert model.config.id2label == CLOTHES_ID2LABEL and model.config.label2id["Left-shoe"] == 9
    assert (processor.size["height"], processor.size["width"]) == (RESOLUTION, RESOLUTION)
    engines = export_engine_folder(tmp_path / "engines", segmenter_dir=folder, progress=False)
    manifest = load_manifest(tmp_path / "engines")
    assert engines.kind == manifest.kind and manifest.segmenter.preprocess["size"] == {"height": RESOLUTION,
                                                                                          "width": RESOLUTION}


def test_training_inputs_are_the_processors(trained, data):
    """What the trainer feeds the network is what SegformerImageProcessor makes of the file at serving."""
    from PIL import Image
    from transformers import SegformerImageProcessorPil

    from fashiongen.export.segformer_export import preprocessing_settings
    from fashiongen.runtime.segmentation import SegPreprocess

    processor = SegformerImageProcessorPil.from_pretrained(trained / "model", local_files_only=True)
    images, labels = segmenter.load_examples([data["train"]], "--data", (RESOLUTION, RESOLUTION), 18,
                                             processor.resample)
    ours = SegPreprocess.from_manifest(preprocessing_settings(processor))(images[:2])
    with Image.open(data["train"] / "0.png") as a, Image.open(data["train"] / "1.png") as b:
        theirs = processor(images=[a.convert("RGB"), b.convert("RGB")], return_tensors="np")["pixel_values"]
    np.testing.assert_array_equal(ours, theirs)
    assert labels.shape == (4, RESOLUTION, RESOLUTION) and set(np.unique(labels)) == {0, 4, 9, 10}


def test_resume_repeats_the_losses(data, tmp_path):
    whole, split = tmp_path / "whole", tmp_path / "split"
    augmented = ("--checkpoint-every", "2", "--zoom", "1.5")  # flips, zooms and dropout must all repeat
    segmenter.run(train_args(data, whole, "--steps", "4", *augmented))
    segmenter.run(train_args(data, split, "--steps", "2", *augmented))
    segmenter.run(train_args(data, split, "--steps", "4", "--resume", *augmented))
    first, second = (json.loads((out / "model" / "training.json").read_text())["losses"] for out in (whole, split))
    assert len(first) == 4 and first == second


def test_round_trip_trains_on_the_vaes_pictures(data, sd_checkpoint, tmp_path):
    """--round-trip: the examples are diffusers' encode (latent mean) and decode of each image, resized like the
    image; the run records which VAE, and half of the batches' images come from them (the loss changes)."""
    from diffusers import AutoencoderKL
    from PIL import Image

    decoded = segmenter.round_trip_examples([data["train"]], sd_checkpoint, (RESOLUTION, RESOLUTION), 2, False)
    vae = AutoencoderKL.from_pretrained(sd_checkpoint / "vae", local_files_only=True).eval()
    with Image.open(data["train"] / "1.png") as image:
        pixels = torch.from_numpy(np.asarray(image.convert("RGB"), np.float32) / 127.5 - 1).permute(2, 0, 1)[None]
    with torch.no_grad():
        back = vae.decode(vae.encode(pixels).latent_dist.mean).sample[0]
    back = ((back.permute(1, 2, 0).clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy()
    expected = np.asarray(Image.fromarray(back).resize((RESOLUTION, RESOLUTION), Image.BILINEAR))
    assert decoded.shape == (4, RESOLUTION, RESOLUTION, 3)
    np.testing.assert_allclose(decoded[1], expected, atol=1)  # rounding of float noise
    plain, tripped = tmp_path / "plain", tmp_path / "tripped"
    segmenter.run(train_args(data, plain, "--steps", "2"))
    segmenter.run(train_args(data, tripped, "--steps", "2", "--round-trip", str(sd_checkpoint)))
    first, second = (json.loads((out / "model" / "training.json").read_text()) for out in (plain, tripped))
    assert first["losses"] != second["losses"]
    assert json.loads((tripped / "run.json").read_text())["round_trip"] == str(sd_checkpoint.resolve())


def test_round_trip_needs_sides_the_vae_divides(data, sd_checkpoint, tmp_path):
    from PIL import Image

    folder = write_folder(tmp_path / "odd", 2, 0)
    with Image.open(folder / "0.png") as image:
        image.resize((SIZE + 1, SIZE)).save(folder / "0.png")
    Image.new("L", (SIZE + 1, SIZE)).save(folder / "0-labels.png")
    with pytest.raises(InputError, match=r"--round-trip: .*0.png' is 49x48; .* multiples of") as error:
        segmenter.round_trip_examples([folder], sd_checkpoint, (RESOLUTION, RESOLUTION), 2, False)
    assert "\n" not in str(error.value)


def test_mirror_swaps_left_and_right_classes():
    table = augmentation.mirror_classes(CLOTHES_ID2LABEL)
    swapped = {i: int(table[i]) for i in CLOTHES_ID2LABEL if table[i] != i}
    assert swapped == {9: 10, 10: 9, 12: 13, 13: 12, 14: 15, 15: 14}
    assert table[255] == 255
    assert dict(enumerate(augmentation.mirror_classes({0: "bg", 1: "left_hand", 2: "RIGHT HAND", 3: "leftover"})[:4])) \
        == {0: 0, 1: 2, 2: 1, 3: 3}
    image = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    labels = np.array([[9, 0, 4], [12, 15, 255]], np.uint8)
    flipped_image, flipped_labels = augmentation.mirror(image, labels, table)
    np.testing.assert_array_equal(flipped_image, image[:, ::-1])
    np.testing.assert_array_equal(flipped_labels, [[4, 0, 10], [255, 14, 13]])


def test_augmentation_is_drawn_from_the_generator():
    from fashiongen.training.runs import step_generator

    rng = np.random.default_rng(0)
    image, labels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8), rng.integers(0, 18, (32, 32), dtype=np.uint8)
    table = augmentation.mirror_classes(CLOTHES_ID2LABEL)
    runs = [[augmentation.augment(image, labels, step_generator(0, 7), 1.5, table, 2) for _ in range(2)]
            for _ in range(2)]
    for (a_image, a_labels), (b_image, b_labels) in zip(*runs):
        np.testing.assert_array_equal(a_image, b_image)
        np.testing.assert_array_equal(a_labels, b_labels)
    out_image, out_labels = runs[0][0]
    assert out_image.shape == image.shape and out_labels.shape == labels.shape
    assert set(np.unique(out_labels)) <= set(np.unique(table[labels]))  # nearest: no class is invented
    plain = augmentation.augment(image, labels, step_generator(0, 7), 1.0, None, 2)
    np.testing.assert_array_equal(plain[0], image)
    np.testing.assert_array_equal(plain[1], labels)
    # --blur softens half of the images, never their label maps
    blurred = [augmentation.augment(image, labels, step_generator(step, 7), 1.0, None, 2, blur=3.0) for step in range(8)]
    softened = [not np.array_equal(out, image) for out, _ in blurred]
    assert 0 < sum(softened) < len(softened)
    assert all(np.array_equal(out_labels, labels) for _, out_labels in blurred)
    assert all(out.std() < image.std() for (out, _), soft in zip(blurred, softened) if soft)


def test_class_iou_over_the_classes_present():
    target = np.array([[0, 0, 1, 1], [2, 2, 255, 255]])
    predicted = np.array([[0, 1, 1, 1], [2, 3, 0, 3]])  # class 3 absent from the truth: not scored itself
    iou = segmenter.class_iou([predicted], [target], num_labels=4)
    assert iou == {0: pytest.approx(1 / 2), 1: pytest.approx(2 / 3), 2: pytest.approx(1 / 2)}


# -- bad input: one line naming the argument ---------------------------------------------------------------
def _rewrite(folder: Path, edit) -> None:
    rows = [json.loads(line) for line in (folder / "metadata.jsonl").read_text().splitlines()]
    edit(rows)
    (folder / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def _label_map(folder: Path, array: np.ndarray) -> None:
    from PIL import Image

    Image.fromarray(array, "L").save(folder / "0-labels.png")


BAD_DATA = {
    "missing image": (lambda f: _rewrite(f, lambda rows: rows[0].update(file_name="gone.png")), "gone.png"),
    "map of another size": (lambda f: _label_map(f, np.zeros((SIZE, SIZE + 2), np.uint8)), "50x48"),
    "no metadata": (lambda f: (f / "metadata.jsonl").unlink(), "metadata.jsonl"),
    "class past the model's": (lambda f: _label_map(f, np.full((SIZE, SIZE), 18, np.uint8)), "class 18"),
}


@pytest.mark.parametrize("case", sorted(BAD_DATA))
def test_bad_data_is_one_line(case, tmp_path):
    folder = write_folder(tmp_path / "data", 2, 0)
    spoil, expected = BAD_DATA[case]
    spoil(folder)
    with pytest.raises(InputError, match="--data") as error:
        segmenter.run(train_args({"train": folder, "config": _config(tmp_path)}, tmp_path / "run", "--steps", "1"))
    assert expected in str(error.value) and "\n" not in str(error.value)
    assert not (tmp_path / "run").exists()


def _config(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(TINY))
    return path


def test_bad_model_and_config_are_one_line(data, tmp_path):
    parser = argparse.ArgumentParser()
    segmenter.add_arguments(parser)
    for base, expected in ((["--model", str(tmp_path / "nowhere")], "--model: .*nowhere' is not a folder"),
                           (["--model", str(tmp_path)], "--model: .* lacks 'config.json'"),
                           (["--config", str(tmp_path / "none.json")], "--config: cannot read"),
                           (["--config", str(_bad_json(tmp_path))], "--config: .*unknown key 'heads'"),
                           (["--config", str(_config(tmp_path)), "--blur", "-1"], "--blur: must be .* got -1"),
                           (["--config", str(_config(tmp_path)), "--blur", "nan"], "--blur: must be .* got nan"),
                           (["--config", str(_config(tmp_path)), "--round-trip", str(tmp_path / "no-sd")],
                            "no-sd")):
        args = parser.parse_args(["--data", str(data["train"]), *base, "--out", str(tmp_path / "run")])
        with pytest.raises(InputError, match=expected) as error:
            segmenter.run(args)
        assert "\n" not in str(error.value)


def _bad_json(tmp_path: Path) -> Path:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({**TINY, "heads": 2}))
    return path


def test_resume_of_another_run_is_refused(data, tmp_path):
    segmenter.run(train_args(data, tmp_path / "run", "--steps", "1"))
    with pytest.raises(InputError, match="--resume: .* is another run: learning_rate"):
        segmenter.run(train_args(data, tmp_path / "run", "--steps", "2", "--resume", "--learning-rate", "1e-3"))

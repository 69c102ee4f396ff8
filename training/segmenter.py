"""``fashiongen train-segmenter``: a SegFormer clothes segmenter trained on images and their label maps.

Contract. The model is transformers' ``SegformerForSemanticSegmentation``, either fine-tuned from a local
transformers folder (``--model``, the ``mattmdjaga/segformer_b2_clothes`` layout) or built with seeded random
weights from ``--config`` (a JSON object of :class:`~fashiongen.random_checkpoints.segmenter.SegformerSize`
fields, with the 18 clothes classes). Its classes are its ``id2label``; every label map must hold only those
ids. The objective is the model's own: logits upsampled to the label map, cross-entropy ignoring 255.

Training sees what serving sees: each image is resized whole to ``--resolution`` (no crop: a segmenter must
label all of it) with the checkpoint's own filter, then rescaled and normalised by
``runtime.segmentation.SegPreprocess``, the torch-free copy of ``SegformerImageProcessor`` that serves the
exported model; label maps are resized with nearest. Images and maps are read and checked once before training
(a bad row fails in the first seconds) and kept in memory at the training size (4 bytes a pixel).

Augmentation, drawn from the step's generator so that a resumed run repeats it: a zoom into the image (1 to
``--zoom`` times, a random window of the training size: scale and crop jitter) and a horizontal flip half of the
time, which swaps each ``Left-*`` class with its ``Right-*`` class (:func:`.augmentation.mirror_classes`); with
``--blur S``, a Gaussian blur of 0 to S px on half of the images (label maps kept sharp): a segmenter that cuts
generated images out sees pictures as soft as a VAE decodes them, and one trained on crisp renders alone lost whole
garments in them (the demo's cut nothing out of a VAE's round trip of a dress and of white shorts). A blur is only
a stand-in for a decoder: with ``--round-trip MODEL`` half of the examples (a draw of the step's generator) are
the image as that SD folder's VAE gives it back (encoded at the image's own size to the latent mean, decoded),
computed once before training, label maps unchanged. Those are the pictures ``generate --cutout`` cuts: the demo
segmenter trained with blur alone labelled 63% of its VAE's round trips' garment types right against 94.5% of
the renders themselves.

Output in ``--out``, a run folder of :mod:`.runs` (``run.json``, resumable checkpoints, ``--resume``):
``model/``, a transformers folder (``config.json`` with id2label/label2id, ``model.safetensors``,
``preprocessor_config.json`` at the resolution trained at) that ``fashiongen export --segmenter`` takes as it
is, and in it ``training.json`` (arguments, seed, steps, every step's loss, this invocation's wall time and,
with ``--eval-data``, the held-out per-class IoU and their mean over the classes present: :func:`class_iou`).
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Iterable

import numpy as np

from fashiongen.runtime.errors import InputError
from fashiongen.runtime.images import decoded_to_uint8
from fashiongen.runtime.segmentation import SegPreprocess

from .augmentation import augment, check_zoom, mirror_classes
from .imagefolder import load_label_map, open_image, read_rows, to_unit_range
from .options import Schedule, add_schedule_arguments, schedule_from_args
from .options import step_batch
from .transformers_models import (MODEL_DIR, add_run_arguments, print_summary, read_size, run_record, schedule_identity,
                                  write_model)

IGNORE_INDEX = 255  # SegformerConfig.semantic_loss_ignore_index: pixels of this value count for nothing
DEFAULT_ZOOM = 1.25


@dataclass
class TrainedSegmenter:
    """What a run produced: the model folder, the per-step losses, the held-out IoU per class name (or None)."""

    folder: Path
    losses: list[float]
    iou: dict[str, float] | None

    @property
    def miou(self) -> float | None:
        return float(np.mean(list(self.iou.values()))) if self.iou else None


def add_arguments(p) -> None:
    add_run_arguments(
        p, data="imagefolder: images and a metadata.jsonl whose rows have file_name and label_file (a class-index "
                "PNG the size of its image)",
        model="transformers SegFormer folder to fine-tune (config.json with id2label, weights, "
              "preprocessor_config.json), e.g. mattmdjaga/segformer_b2_clothes",
        config="a new model with random weights: a JSON object of SegformerSize fields (hidden_sizes, depths, "
               "num_attention_heads, sr_ratios, mlp_ratios, decoder_hidden_size, image_size)",
        eval_data="per-class IoU and their mean")
    p.add_argument("--resolution", type=int, default=None,
                   help="images (and label maps) are resized whole to N x N (default: the model's own input size)")
    p.add_argument("--zoom", type=float, default=DEFAULT_ZOOM,
                   help=f"augmentation: zoom in up to this factor, random window (default {DEFAULT_ZOOM}; 1: off)")
    p.add_argument("--no-flip", action="store_true", help="augmentation: no horizontal flips")
    p.add_argument("--blur", type=float, default=0.0, metavar="S",
                   help="augmentation: a Gaussian blur of 0 to S px (at the training resolution) on half of the "
                        "images, as generated images are softer than renders (default 0: off)")
    p.add_argument("--round-trip", type=Path, default=None, metavar="MODEL",
                   help="an SD 1.x folder whose VAE generates the images this segmenter will cut: half of the "
                        "examples are its encode-decode round trips of the training images (default: none)")
    add_schedule_arguments(p, steps=2000, batch_size=8, learning_rate=2e-4, checkpoint_every=500)


def run(args) -> int:
    result = train_segmenter(args.data, args.out, model=args.model, config=args.config, resolution=args.resolution,
                             eval_data=args.eval_data, zoom=args.zoom, flip=not args.no_flip, blur=args.blur,
                             round_trip=args.round_trip, schedule=schedule_from_args(args), resume=args.resume,
                             progress=not args.no_progress, arguments=vars(args))
    print_summary(result.folder)
    if result.iou:
        print(f"held-out mIoU {result.miou:.4f} over {len(result.iou)} classes present: "
              + ", ".join(f"{name} {value:.3f}" for name, value in result.iou.items()))
    return 0


def train_segmenter(data: Iterable[Path], out: Path, model: Path | None = None, config: Path | None = None,
                    resolution: int | None = None, eval_data: Iterable[Path] = (), zoom: float = DEFAULT_ZOOM,
                    flip: bool = True, blur: float = 0.0, round_trip: Path | None = None,
                    schedule: Schedule | None = None, resume: bool = False, progress: bool = True,
                    arguments: dict | None = None) -> TrainedSegmenter:
    """Train on the imagefolders ``data``; write the run and ``out/model/`` (see the module's contract)."""
    import torch

    from .runs import RunFolder, train

    schedule = schedule or Schedule(steps=2000, batch_size=8, learning_rate=2e-4)
    schedule.check()
    started = time.perf_counter()
    data, eval_data = [Path(d) for d in data], [Path(d) for d in eval_data]
    check_zoom(zoom)
    if not 0 <= blur < float("inf"):
        raise InputError(f"--blur: must be a finite number of px, at least 0 (0 turns blurring off), got {blur}")
    network, settings, source = _base_model(model, config, schedule.seed)
    preprocess = _training_preprocess(settings, resolution, model or config)
    shape = (preprocess.size["height"], preprocess.size["width"])
    num_labels = network.config.num_labels
    images, labels = load_examples(data, "--data", shape, num_labels, preprocess.resample)
    decoded = (round_trip_examples(data, Path(round_trip), shape, preprocess.resample, progress)
               if round_trip is not None else None)
    held_out = load_examples(eval_data, "--eval-data", shape, num_labels, preprocess.resample) if eval_data else None
    id2label = {int(k): str(v) for k, v in network.config.id2label.items()}
    table = mirror_classes(id2label) if flip else None

    def loss_fn(step, micro, generator):
        pick = step_batch(len(images), schedule, step, micro)
        sources = [images] * len(pick)
        if decoded is not None:
            sources = [decoded if draw < 0.5 else images for draw in torch.rand(len(pick), generator=generator)]
        pairs = [augment(source[i], labels[i], generator, zoom, table, preprocess.resample, blur)
                 for source, i in zip(sources, pick)]
        pixel_values = torch.from_numpy(preprocess([image for image, _ in pairs])).to(network.device)
        target = torch.from_numpy(np.stack([label for _, label in pairs]).astype(np.int64)).to(network.device)
        return network(pixel_values=pixel_values, labels=target).loss

    identity = {"command": "train-segmenter", "data": [str(d.resolve()) for d in data], "examples": len(images),
                "base": source, "resolution": list(shape), "zoom": zoom, "flip": flip,
                **({"blur": blur} if blur else {}),
                **({"round_trip": str(Path(round_trip).resolve())} if round_trip is not None else {}),
                **schedule_identity(schedule)}
    losses = train(RunFolder(Path(out), identity), schedule, {"segformer": network}, loss_fn, resume, progress,
                   description="segmenter")
    result = TrainedSegmenter(Path(out) / MODEL_DIR, losses, None)
    if held_out is not None:
        scores = evaluate(network, preprocess, *held_out, batch_size=schedule.batch_size)
        result.iou = {id2label[c]: value for c, value in scores.items()}
    record = run_record(arguments or identity, schedule, losses, started, examples=len(images),
                        resolution=list(shape))
    if result.iou is not None:
        record["eval"] = {"data": [str(d.resolve()) for d in eval_data], "examples": len(held_out[0]),
                          "miou": result.miou, "iou": result.iou}
    _write_model(result.folder, network, preprocess, record)
    return result


# -- the model ------------------------------------------------------------------------------------------------
def _base_model(model: Path | None, config: Path | None, seed: int):
    """(network, processor settings, what identifies it for a resume) from ``--model`` or ``--config``."""
    if (model is None) == (config is None):
        raise InputError("train-segmenter: give exactly one of --model DIR (fine-tune) or --config FILE.json "
                         "(new model)")
    if model is not None:
        from fashiongen.export.segformer_export import (SegmenterCheckpointError, load_segmenter,
                                                        preprocessing_settings)

        try:
            network, processor = load_segmenter(Path(model))
        except SegmenterCheckpointError as exc:
            raise InputError(f"--model: {str(exc).removeprefix('--segmenter: ')}") from None
        return network, preprocessing_settings(processor), str(Path(model).resolve())
    from fashiongen.random_checkpoints.segmenter import SegformerSize, build_segformer, preprocessor_config

    size, raw = read_size(Path(config), SegformerSize)
    try:
        network = build_segformer(size, seed)
    except (ValueError, TypeError, IndexError) as exc:
        raise InputError(f"--config: '{config}' does not make a SegFormer ({str(exc).splitlines()[0]})") from None
    return network, preprocessor_config(size), raw


def _training_preprocess(settings: dict, resolution: int | None, base: Path) -> SegPreprocess:
    """The checkpoint's preprocessing at a fixed training shape: ``resolution`` squared, else its own size."""
    preprocess = SegPreprocess.from_manifest(settings)
    if resolution is not None:
        if resolution < 32:
            raise InputError(f"--resolution: must be at least 32 (SegFormer downsamples 32 times), got {resolution}")
        return replace(preprocess, do_resize=True, size={"height": resolution, "width": resolution})
    size = preprocess.size or {}
    if not (preprocess.do_resize and size.get("height") and size.get("width")):
        raise InputError(f"--resolution: needed, '{base}' has no fixed input size (its size is {size or None})")
    return replace(preprocess, size={"height": int(size["height"]), "width": int(size["width"])})


def _write_model(folder: Path, network, preprocess: SegPreprocess, record: dict) -> None:
    """The transformers folder ``export --segmenter`` takes, with the run's record, replaced in one rename; its
    processor is the preprocessing trained with (SegPreprocess's fields are SegformerImageProcessor's)."""
    from transformers import SegformerImageProcessorPil

    write_model(folder, [network, SegformerImageProcessorPil(**asdict(preprocess))], record, "a SegFormer folder")


# -- data -----------------------------------------------------------------------------------------------------
def load_examples(folders: list[Path], arg: str, shape: tuple[int, int], num_labels: int,
                  resample: int) -> tuple[np.ndarray, np.ndarray]:
    """Every row of ``folders`` as (images [N, H, W, 3] uint8, label maps [N, H, W] uint8) at ``shape``: each
    image resized whole with the checkpoint's filter (``resample``, a PIL id) as the processor does at serving,
    each map with nearest; all checked before training starts (see ``imagefolder``'s errors)."""
    rows = labelled_rows(folders, arg)
    images = np.stack([np.asarray(open_image(row.image, arg).resize(shape[::-1], resample)) for row in rows])
    labels = np.stack([load_label_map(row.path("label_file"), row.image, shape, num_labels, arg) for row in rows])
    return images, labels


def labelled_rows(folders: list[Path], arg: str) -> list:
    """The rows of ``folders`` in order, each with an image and a label map (checked to exist)."""
    return [row for folder in folders for row in read_rows(folder, arg, require=("label_file",), files=("label_file",))]


def round_trip_examples(folders: list[Path], model: Path, shape: tuple[int, int], resample: int,
                        progress: bool) -> np.ndarray:
    """Every row of ``folders`` (in :func:`load_examples`' order) as ``model``'s VAE gives it back, then resized
    like it: encoded at its own size (which the VAE must divide) to the latent mean, decoded, rounded to uint8."""
    import torch
    from PIL import Image
    from tqdm.auto import tqdm

    from .text_to_image import load_base

    vae = load_base(model)["vae"].eval()
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    rows = labelled_rows(folders, "--data")
    out = []
    with torch.no_grad():
        for row in tqdm(rows, desc="round trips", unit="image", disable=not progress):
            image = open_image(row.image, "--data")
            if image.width % factor or image.height % factor:
                raise InputError(f"--round-trip: '{row.image}' is {image.width}x{image.height}; the VAE of "
                                 f"'{model}' takes sides that are multiples of {factor}")
            pixels = torch.from_numpy(to_unit_range(np.asarray(image)[None]))
            back = decoded_to_uint8(vae.decode(vae.encode(pixels).latent_dist.mode()).sample.float().numpy())[0]
            out.append(np.asarray(Image.fromarray(back).resize(shape[::-1], resample)))
    return np.stack(out)


# -- evaluation -----------------------------------------------------------------------------------------------
def evaluate(network, preprocess: SegPreprocess, images: np.ndarray, labels: np.ndarray,
             batch_size: int) -> dict[int, float]:
    """Per-class IoU of ``network`` on (images, label maps): logits upsampled to the map's size before the
    argmax, as ``post_process_semantic_segmentation`` and the runtime do."""
    import torch
    import torch.nn.functional as F

    predictions = []
    network.eval()
    with torch.no_grad():
        for first in range(0, len(images), batch_size):
            pixel_values = torch.from_numpy(preprocess(images[first:first + batch_size])).to(network.device)
            logits = network(pixel_values=pixel_values).logits.float()
            logits = F.interpolate(logits, size=labels.shape[1:], mode="bilinear", align_corners=False)
            predictions.extend(logits.argmax(1).cpu().numpy())
    return class_iou(predictions, labels, network.config.num_labels)


def class_iou(predictions: Iterable[np.ndarray], targets: Iterable[np.ndarray], num_labels: int,
              ignore_index: int = IGNORE_INDEX) -> dict[int, float]:
    """Intersection over union of each class present in ``targets``, over the whole set (pixels summed over
    every image, not a mean of per-image scores), pixels labelled ``ignore_index`` left out. Pairs of [H, W]
    class-id maps; a class only predicted still costs the present classes whose pixels it took. Their mean is
    the mIoU."""
    confusion = np.zeros(num_labels * num_labels, dtype=np.int64)  # [target, predicted], flattened
    for predicted, target in zip(predictions, targets):
        keep = np.asarray(target) != ignore_index
        confusion += np.bincount(np.asarray(target)[keep].astype(np.int64) * num_labels
                                 + np.asarray(predicted)[keep].astype(np.int64), minlength=num_labels * num_labels)
    confusion = confusion.reshape(num_labels, num_labels)
    hits = np.diag(confusion)
    union = confusion.sum(0) + confusion.sum(1) - hits
    return {int(c): float(hits[c] / union[c]) for c in np.flatnonzero(confusion.sum(1))}

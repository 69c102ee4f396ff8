"""``fashiongen train-captioner``: a BLIP captioner trained on images and their captions (catalog captions).

Contract. The model is transformers' ``BlipForConditionalGeneration``, either fine-tuned from a local
transformers folder (``--model``, the ``Salesforce/blip-image-captioning-base`` layout) or started from seeded
random weights of ``--config`` (a JSON object of :class:`~fashiongen.random_checkpoints.retrieval.BlipSize`
fields: the folder ``random_checkpoints`` writes for tests and the demo, with its WordPiece vocabulary). Both
are loaded by ``export.catalog_index.Captioner``, the loader of ``fashiongen index --captioner``. The data are
imagefolders whose rows have a ``text`` caption: for approach 2, the product view of ``fashiongen dataset``.

The objective is transformers' own: the teacher-forced language-model loss the model computes from ``labels``
(next-token cross-entropy with BLIP's label smoothing), on the caption as the index decodes it: the sequence
starts with the decoder's ``[DEC]`` token (``bos_token_id``, as ``generate`` starts it), ends with ``[SEP]`` (so
the model learns to stop), and padding is left out of the loss (label -100).

Training sees what serving sees: the ``BlipProcessor`` of the checkpoint prepares every batch, as the index does
for each catalog image. Each image is resized once, before training, to the processor's size with its own
filter (a second resize to the same size is the identity, so the processor's own resize then changes nothing)
and kept in memory at that size.

Output in ``--out``, a run folder of :mod:`.runs` (``run.json``, resumable checkpoints, ``--resume``):
``model/``, a transformers BLIP folder (``config.json``, ``model.safetensors``, the ``BlipProcessor`` files) that
``fashiongen index --captioner`` takes as it is, and in it ``training.json`` (arguments, seed, every step's loss,
this invocation's wall time and, with ``--eval-data``, the exact-caption match and per-word accuracy of the
greedy captions the index would write for the held-out images: :func:`caption_scores`).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np

from fashiongen.runtime.errors import InputError

from .imagefolder import open_image, read_rows
from .options import Schedule, add_schedule_arguments, schedule_from_args
from .options import step_batch
from .transformers_models import (MODEL_DIR, add_run_arguments, check_model_type, print_summary, random_base,
                                  run_record, schedule_identity, write_model)

IGNORE_INDEX = -100  # transformers' label for "no loss here"
DEFAULTS = {"steps": 1000, "batch_size": 16, "learning_rate": 1e-4, "checkpoint_every": 250}


@dataclass
class TrainedCaptioner:
    """What a run produced: the model folder, the per-step losses, the held-out caption scores (or None)."""

    folder: Path
    losses: list[float]
    scores: dict[str, float] | None


def add_arguments(p) -> None:
    p.description = ("Train a BLIP captioner (transformers BlipForConditionalGeneration) on an imagefolder's images "
                     "and their 'text' captions, for captioning a catalog (approach 2: the data set's product "
                     "view): fine-tune --model, or start from random weights of a --config size; the loss is the "
                     "model's teacher-forced language-model loss. The trained model is written to OUT/model, a "
                     "transformers BLIP folder that `fashiongen index --captioner OUT/model` takes; "
                     "OUT/model/training.json records every step's loss and, with --eval-data, how many greedy "
                     "captions match exactly and the share of words right.")
    add_run_arguments(
        p, data="imagefolder: images and a metadata.jsonl whose rows have file_name and a 'text' caption (e.g. "
                "DATA/product/train of `fashiongen dataset`)",
        model="transformers BLIP captioning folder to fine-tune (config.json, weights, BlipProcessor files), e.g. "
              "Salesforce/blip-image-captioning-base",
        config="a new model with random weights: a JSON object of BlipSize fields (hidden, layers, heads, "
               "intermediate, image_size, patch_size, projection_dim)",
        eval_data="exact-caption match and per-word accuracy of greedy captions")
    p.add_argument("--zoom", type=float, default=1.0,
                   help="augmentation: zoom in up to this factor, random window (default 1: off; a large zoom may crop "
                   "away what the caption names, a hem or a sleeve)")
    p.add_argument("--flip", action="store_true",
                   help="augmentation: mirror half of the images left to right (off by default: a caption may name a "
                   "side)")
    add_schedule_arguments(p, **DEFAULTS)


def run(args) -> int:
    result = train_captioner(args.data, args.out, model=args.model, config=args.config, eval_data=args.eval_data,
                             schedule=schedule_from_args(args), resume=args.resume, progress=not args.no_progress,
                             arguments=vars(args), zoom=args.zoom, flip=args.flip)
    print_summary(result.folder)
    if result.scores:
        print("held-out greedy captions: " + ", ".join(f"{k} {v:.3f}" for k, v in result.scores.items()))
    return 0


def train_captioner(data: Iterable[Path], out: Path, model: Path | None = None, config: Path | None = None,
                    eval_data: Iterable[Path] = (), schedule: Schedule | None = None, resume: bool = False,
                    progress: bool = True, arguments: dict | None = None, zoom: float = 1.0,
                    flip: bool = False) -> TrainedCaptioner:
    """Train on the imagefolders ``data``; write the run and ``out/model/`` (see the module's contract)."""
    import torch

    from .augmentation import augment_image, check_zoom
    from .runs import RunFolder, train

    schedule = schedule or Schedule(**DEFAULTS)
    schedule.check()
    check_zoom(zoom)
    started = time.perf_counter()
    data, eval_data = [Path(d) for d in data], [Path(d) for d in eval_data]
    (network, processor), source = _base_model(model, config, schedule.seed)
    images, captions = load_examples(data, "--data", processor.image_processor)
    held_out = load_examples(eval_data, "--eval-data", processor.image_processor) if eval_data else None
    ids, mask, labels = caption_tokens(processor.tokenizer, captions, network.config.text_config.bos_token_id)

    def loss_fn(step, micro, generator):
        pick = step_batch(len(images), schedule, step, micro)
        batch = list(images[pick])
        if zoom > 1 or flip:
            resample = processor.image_processor.resample
            batch = [augment_image(image, generator, zoom, flip, resample) for image in batch]
        pixel_values = processor.image_processor(images=batch, return_tensors="pt").pixel_values
        pick, device = torch.from_numpy(pick), network.device
        return network(pixel_values=pixel_values.to(device), input_ids=ids[pick].to(device),
                       attention_mask=mask[pick].to(device), labels=labels[pick].to(device)).loss

    identity = {"command": "train-captioner", "data": [str(d.resolve()) for d in data], "examples": len(images),
                "base": source, "zoom": zoom, "flip": flip, **schedule_identity(schedule)}
    losses = train(RunFolder(Path(out), identity), schedule, {"blip": network}, loss_fn, resume, progress,
                   description="captioner")
    result = TrainedCaptioner(Path(out) / MODEL_DIR, losses, None)
    record = run_record(arguments or identity, schedule, losses, started, examples=len(images))
    if held_out is not None:
        result.scores = evaluate(network, processor, *held_out, batch_size=schedule.batch_size)
        record["eval"] = {"data": [str(d.resolve()) for d in eval_data], "examples": len(held_out[1]),
                          **result.scores}
    write_model(result.folder, [network, processor], record, "a BLIP folder")
    return result


# -- the model ------------------------------------------------------------------------------------------------
def _base_model(model: Path | None, config: Path | None, seed: int):
    """((BlipForConditionalGeneration, BlipProcessor), what identifies the base for a resume) from ``--model``
    or ``--config``, both read by the loader of ``fashiongen index --captioner``."""
    from fashiongen.random_checkpoints.retrieval import BlipSize, write_blip_checkpoint

    if (model is None) == (config is None):
        raise InputError("train-captioner: give exactly one of --model DIR (fine-tune) or --config FILE.json "
                         "(new model)")
    if model is not None:
        return _load(check_model_type(model, "blip", "a BLIP captioning"), "--model"), str(Path(model).resolve())
    return random_base(config, BlipSize, seed, write_blip_checkpoint, lambda folder: _load(folder, "--config"),
                       "a BLIP captioner")


def _load(folder: Path, arg: str):
    from fashiongen.export.catalog_index import Captioner

    captioner = Captioner(folder, arg)
    return captioner.model, captioner.processor


def caption_tokens(tokenizer, captions: list[str], bos_token_id: int):
    """(input ids, attention mask, labels) [N, L] of every caption, padded to the longest: the first token is
    the decoder's ``bos_token_id`` (``[DEC]``) where the tokenizer put ``[CLS]``, as ``generate`` starts, and
    padding is labelled -100 (no loss)."""
    tokens = tokenizer(captions, padding="longest", truncation=True, return_tensors="pt")
    ids = tokens.input_ids.clone()
    ids[:, 0] = bos_token_id
    labels = ids.masked_fill(tokens.attention_mask == 0, IGNORE_INDEX)
    return ids, tokens.attention_mask, labels


# -- data -----------------------------------------------------------------------------------------------------
def load_examples(folders: list[Path], arg: str, image_processor) -> tuple[np.ndarray, list[str]]:
    """Every row of ``folders`` as (images [N, H, W, 3] uint8 at the processor's size, resized with its filter;
    captions); all rows checked before training starts (see ``imagefolder``'s errors)."""
    rows = [row for folder in folders for row in read_rows(folder, arg, require=("text",))]
    shape = _processor_shape(image_processor)
    images = np.stack([np.asarray(open_image(row.image, arg).resize(shape[::-1], image_processor.resample))
                       for row in rows])
    return images, [str(row.text) for row in rows]


def _processor_shape(image_processor) -> tuple[int, int]:
    """The (height, width) a BlipImageProcessor resizes every image to; a processor without one is refused."""
    size = dict(image_processor.size or {})
    if not (image_processor.do_resize and size.get("height") and size.get("width")):
        raise InputError(f"--model: the BLIP image processor has no fixed size (size {size or None}); "
                         "train-captioner needs {'height': H, 'width': W}")
    return int(size["height"]), int(size["width"])


# -- evaluation -----------------------------------------------------------------------------------------------
def evaluate(network, processor, images: np.ndarray, captions: list[str], batch_size: int) -> dict[str, float]:
    """The greedy captions the index would write for ``images`` (its own function), scored against
    ``captions`` as the tokenizer reads them back (lower case, punctuation split: what a caption can be)."""
    from fashiongen.export.catalog_index import caption_images

    network.eval()
    generated = [caption for first in range(0, len(images), batch_size)
                 for caption in caption_images(network, processor, list(images[first:first + batch_size]))]
    tokenizer = processor.tokenizer
    expected = [tokenizer.decode(tokenizer(c).input_ids, skip_special_tokens=True).strip() for c in captions]
    return caption_scores(generated, expected)


def caption_scores(generated: list[str], expected: list[str]) -> dict[str, float]:
    """``exact_match``: the share of captions equal to the expected one; ``word_accuracy``: words equal at the
    same position, over the longer of the two captions' lengths summed over rows (a missing or an extra word
    counts as wrong)."""
    right = total = 0
    for ours, theirs in zip(generated, expected):
        a, b = ours.split(), theirs.split()
        right += sum(x == y for x, y in zip(a, b))
        total += max(len(a), len(b))
    exact = sum(ours.split() == theirs.split() for ours, theirs in zip(generated, expected))
    return {"exact_match": exact / len(expected), "word_accuracy": right / total if total else 1.0}

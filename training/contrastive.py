"""``fashiongen train-clip``: a CLIP trained contrastively on images and their captions (catalog retrieval).

Contract. The model is transformers' ``CLIPModel``, either fine-tuned from a local transformers folder
(``--model``, the ``openai/clip-vit-base-patch32`` layout) or started from seeded random weights of ``--config``
(a JSON object of :class:`~fashiongen.random_checkpoints.retrieval.ClipSize` fields: the folder
``random_checkpoints`` writes for tests and the demo, with the real CLIP BPE tokenizer). Both are loaded by
``export.clip_export.load_clip``, the loader of ``fashiongen index --clip``. The data are imagefolders whose rows
have a ``text`` caption: for approach 2, the product view of ``fashiongen dataset`` (``DATA/product/train``).

The objective is CLIP's: the symmetric InfoNCE of the batch's text and image embeddings, cosines times the
learnable ``logit_scale.exp()`` (clamped to 100 after each step, as CLIP does). One difference, for catalogs
whose captions repeat (the procedural data set has a few hundred captions for thousands of images): images that
share a caption are all positives of it, each with an equal share of the target (:func:`contrastive_loss`), not
negatives; with distinct captions this is exactly CLIP's loss.

Training sees what serving sees: each image is resized and center-cropped once by
``runtime.retrieval.ClipPreprocess`` with the checkpoint's own settings (the torch-free copy of
``CLIPImageProcessor`` that embeds the catalog at index time) and normalised by it each batch. Captions are
tokenized once, padded to the longest; the text tower is causal and pools the end token, so this equals the
77-token padding the exported text tower receives.

Output in ``--out``, a run folder of :mod:`.runs` (``run.json``, resumable checkpoints, ``--resume``):
``model/``, a transformers CLIP folder (``config.json``, ``model.safetensors``, tokenizer files,
``preprocessor_config.json``) that ``fashiongen index --clip`` and the CLIP export take as it is, and in it
``training.json`` (arguments, seed, every step's loss, this invocation's wall time and, with ``--eval-data``,
text-to-image recall@1 and @5 on the held-out rows: :func:`recall_at_k`).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np

from fashiongen.runtime.errors import InputError
from fashiongen.runtime.retrieval import ClipPreprocess, unit

from .imagefolder import open_image, read_rows
from .options import Schedule, add_schedule_arguments, schedule_from_args
from .options import step_batch
from .transformers_models import (MODEL_DIR, add_run_arguments, check_model_type, print_summary, random_base,
                                  run_record, schedule_identity, write_model)

MAX_LOGIT_SCALE = math.log(100.0)  # CLIP clips its temperature at 100
RECALL_AT = (1, 5)
DEFAULTS = {"steps": 1000, "batch_size": 32, "learning_rate": 1e-4, "checkpoint_every": 250}


@dataclass
class TrainedClip:
    """What a run produced: the model folder, the per-step losses, the held-out recall@k (or None)."""

    folder: Path
    losses: list[float]
    recall: dict[str, float] | None


def add_arguments(p) -> None:
    p.description = ("Train a CLIP (transformers CLIPModel) contrastively on an imagefolder's images and their "
                     "'text' captions, for catalog retrieval (approach 2: the data set's product view): "
                     "fine-tune --model, or start from random weights of a --config size. The trained model is "
                     "written to OUT/model, a transformers CLIP folder that `fashiongen index --clip OUT/model` "
                     "takes; OUT/model/training.json records every step's loss and, with --eval-data, "
                     "text-to-image recall@1/@5 (a hit: an image whose caption is the query's).")
    add_run_arguments(
        p, data="imagefolder: images and a metadata.jsonl whose rows have file_name and a 'text' caption (e.g. "
                "DATA/product/train of `fashiongen dataset`)",
        model="transformers CLIP folder to fine-tune (config.json, weights, tokenizer files, "
              "preprocessor_config.json), e.g. openai/clip-vit-base-patch32",
        config="a new model with random weights and the real CLIP tokenizer: a JSON object of ClipSize fields "
               "(text_hidden, text_layers, text_heads, text_intermediate, vision_hidden, vision_layers, "
               "vision_heads, vision_intermediate, image_size, patch_size, projection_dim)",
        eval_data="text-to-image recall@1 and @5 (every row a query)")
    add_schedule_arguments(p, **DEFAULTS)


def run(args) -> int:
    result = train_clip(args.data, args.out, model=args.model, config=args.config, eval_data=args.eval_data,
                        schedule=schedule_from_args(args), resume=args.resume, progress=not args.no_progress,
                        arguments=vars(args))
    print_summary(result.folder)
    if result.recall:
        print("held-out text-to-image " + ", ".join(f"{k} {v:.3f}" for k, v in result.recall.items()))
    return 0


def train_clip(data: Iterable[Path], out: Path, model: Path | None = None, config: Path | None = None,
               eval_data: Iterable[Path] = (), schedule: Schedule | None = None, resume: bool = False,
               progress: bool = True, arguments: dict | None = None) -> TrainedClip:
    """Train on the imagefolders ``data``; write the run and ``out/model/`` (see the module's contract)."""
    import torch

    from .runs import RunFolder, train

    schedule = schedule or Schedule(**DEFAULTS)
    schedule.check()
    started = time.perf_counter()
    data, eval_data = [Path(d) for d in data], [Path(d) for d in eval_data]
    (network, tokenizer, processor), source = _base_model(model, config, schedule.seed)
    preprocess = ClipPreprocess(_image_settings(processor))
    images, captions = load_examples(data, "--data", preprocess)
    held_out = load_examples(eval_data, "--eval-data", preprocess) if eval_data else None
    token_ids = tokenize(tokenizer, captions)
    groups = torch.from_numpy(np.unique(captions, return_inverse=True)[1].reshape(-1))

    def loss_fn(step, micro, generator):
        pick = torch.from_numpy(step_batch(len(images), schedule, step, micro))
        pixel_values = torch.from_numpy(preprocess.normalize(images[pick.numpy()])).to(network.device)
        out = network(input_ids=token_ids[pick].to(network.device), pixel_values=pixel_values)
        return contrastive_loss(out.logits_per_text, groups[pick].to(network.device))

    def clamp_temperature(step):
        with torch.no_grad():
            network.logit_scale.clamp_(0.0, MAX_LOGIT_SCALE)

    identity = {"command": "train-clip", "data": [str(d.resolve()) for d in data], "examples": len(images),
                "base": source, **schedule_identity(schedule)}
    losses = train(RunFolder(Path(out), identity), schedule, {"clip": network}, loss_fn, resume, progress,
                   on_step=clamp_temperature, description="clip")
    result = TrainedClip(Path(out) / MODEL_DIR, losses, None)
    record = run_record(arguments or identity, schedule, losses, started, examples=len(images),
                        logit_scale=float(network.logit_scale.detach().exp()))
    if held_out is not None:
        text, image = embed(network, tokenizer, preprocess, *held_out, batch_size=schedule.batch_size)
        result.recall = recall_at_k(text, image, held_out[1])
        record["eval"] = {"data": [str(d.resolve()) for d in eval_data], "examples": len(held_out[1]),
                          **result.recall}
    write_model(result.folder, [network, tokenizer, processor], record, "a CLIP folder")
    return result


# -- the model ------------------------------------------------------------------------------------------------
def _base_model(model: Path | None, config: Path | None, seed: int):
    """((CLIPModel, tokenizer, image processor), what identifies the base for a resume) from ``--model`` or
    ``--config``, both read by the loader of ``fashiongen index --clip``."""
    from fashiongen.export.clip_export import load_clip
    from fashiongen.random_checkpoints.retrieval import ClipSize, write_clip_checkpoint

    if (model is None) == (config is None):
        raise InputError("train-clip: give exactly one of --model DIR (fine-tune) or --config FILE.json (new model)")
    if model is not None:
        return load_clip(check_model_type(model, "clip", "a CLIP"), "--model"), str(Path(model).resolve())
    return random_base(config, ClipSize, seed, write_clip_checkpoint, lambda folder: load_clip(folder, "--config"),
                       "a CLIP")


def _image_settings(processor) -> dict:
    """The processor's settings as the CLIP export writes them into the manifest (so, as serving reads them)."""
    from fashiongen.export.clip_export import image_preprocessing

    try:
        return image_preprocessing(processor)
    except InputError as exc:
        raise InputError(f"--model: {exc}") from None


def tokenize(tokenizer, captions: list[str]):
    """Token ids [N, L] of every caption, padded to the longest (at most the tokenizer's 77)."""
    return tokenizer(captions, padding="longest", truncation=True, max_length=tokenizer.model_max_length,
                     return_tensors="pt").input_ids


# -- data -----------------------------------------------------------------------------------------------------
def load_examples(folders: list[Path], arg: str, preprocess: ClipPreprocess) -> tuple[np.ndarray, list[str]]:
    """Every row of ``folders`` as (images [N, S, S, 3] uint8 resized and cropped as serving does, captions);
    all rows checked before training starts (see ``imagefolder``'s errors)."""
    rows = [row for folder in folders for row in read_rows(folder, arg, require=("text",))]
    images = np.stack([preprocess.crop(np.asarray(open_image(row.image, arg))) for row in rows])
    return images, [str(row.text) for row in rows]


# -- the objective --------------------------------------------------------------------------------------------
def contrastive_loss(logits_per_text, groups):
    """Symmetric InfoNCE over a batch's [text, image] logits (already scaled), where ``groups[i]`` names item
    i's caption: every image of the query's caption is a positive, sharing the target equally. With distinct
    captions the target is the identity and this is CLIP's loss (transformers' ``clip_loss``)."""
    import torch.nn.functional as F

    logits = logits_per_text.float()  # soft targets and log-softmax in float32, under autocast too
    same = (groups[:, None] == groups[None, :]).float()
    target = same / same.sum(1, keepdim=True)  # symmetric: a row's sum is its group's size, as its column's
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target)) / 2


# -- evaluation -----------------------------------------------------------------------------------------------
def embed(network, tokenizer, preprocess: ClipPreprocess, images: np.ndarray, captions: list[str],
          batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Unit text and image embeddings, as the exported towers compute them (``get_text_features`` /
    ``get_image_features``, the projections)."""
    import torch

    network.eval()
    text, image = [], []
    with torch.no_grad():
        for first in range(0, len(images), batch_size):
            ids = tokenize(tokenizer, captions[first:first + batch_size]).to(network.device)
            pixels = torch.from_numpy(preprocess.normalize(images[first:first + batch_size])).to(network.device)
            text.append(network.get_text_features(input_ids=ids).pooler_output.float().cpu().numpy())
            image.append(network.get_image_features(pixel_values=pixels).pooler_output.float().cpu().numpy())
    return unit(np.concatenate(text)), unit(np.concatenate(image))


def recall_at_k(text: np.ndarray, image: np.ndarray, captions: list[str], ks: Iterable[int] = RECALL_AT) \
        -> dict[str, float]:
    """Text-to-image recall@k: each row's caption is a query over all the images, and it is a hit when one of
    the ``k`` nearest (cosine; unit vectors) has the query's caption: the catalog search's question, where any
    image of the asked-for item will do."""
    order = np.argsort(-(text @ image.T), axis=1, kind="stable")
    captions = np.asarray(captions, dtype=object)
    hits = captions[order] == captions[:, None]  # [query, rank]
    return {f"recall@{k}": float(hits[:, :k].any(axis=1).mean()) for k in ks}

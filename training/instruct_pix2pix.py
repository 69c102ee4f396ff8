"""``fashiongen train-pix2pix``: diffusers' InstructPix2Pix recipe, on edit pairs (approach 2's editor).

Approach 2 retrieves the catalog item nearest a query and edits it toward the query. ``--data`` is either a
folder of pairs in the recipe's layout (rows with ``input_image``, ``edit_prompt``, the edited image as
``file_name``, and optionally the target's caption as ``text``), such as ``fashiongen dataset --edit-pairs``
writes (an item and its re-render with one or two attributes changed, all else the same:
:mod:`fashiongen.training.edit_renders`), or a catalog, whose pairs of items one or two attributes apart are
drawn here (:mod:`fashiongen.training.edit_pairs`; the two items then differ in every jitter too, so the source
says little the words do not). Each pair is told the imperative a user types
("make it red", "give it long sleeves") or the target's caption, what approach 2 sends after retrieval.

The recipe is diffusers' ``examples/instruct_pix2pix``. The base (``--model``) is a text-to-image SD 1.x folder,
whose UNet's ``conv_in`` is widened to twice the latent channels (the source image's latent beside the noisy
one) with the new input channels zero-initialised, or an InstructPix2Pix folder, fine-tuned as it is. Only the
UNet trains; the VAE and the text encoder stay frozen. The noisy latent is the target's VAE latent (sampled,
scaled), the source is seen as its latent *mode, unscaled* (as the recipe, and as the runtime's ``edit`` encodes
its input); the loss is text-to-image's (:class:`~fashiongen.training.text_to_image.DiffusionLoss`: the
scheduler's prediction type, optional min-SNR and SNR floor). Conditioning dropout is the paper's (section
3.2.1), so that both guidance scales work: of a uniform draw u per example, u < p drops the text, p <= u < 2p
text and image, 2p <= u < 3p the image (``--conditioning-dropout-prob`` p, 0.05 as the recipe's README).

One deliberate difference: the widened ``conv_in`` keeps the original bias (the recipe leaves a fresh random
one), so that at step 0 the model is exactly the text-to-image model and the first steps are not spent
undoing noise in the first layer.

Run folder layout, latents cache (every image encoded once, sources and targets alike), checkpoints, exact
``--resume``, EMA and the output are ``train``'s; ``OUT/model`` is a diffusers
``StableDiffusionInstructPix2PixPipeline`` folder that ``fashiongen export --model`` takes as it is (it
recognises pix2pix by the UNet's input channels). Importing this module imports no torch.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from fashiongen.runtime.errors import InputError

from .edit_pairs import EditPair, attribute_rows, check_pairing, make_pairs
from .options import schedule_from_args
from .text_to_image import (LATENTS_CACHE, MODEL, DiffusionLoss, add_data_arguments, add_diffusion_arguments,
                            base_geometry, base_identity, cached_posteriors, check_noise_offset, check_snr_weighting,
                            data_digest, identity_of, load_base, read_data, sample_latents, tokenize,
                            training_record, training_size, write_model)

if TYPE_CHECKING:
    import torch

PIPELINE_CLASS = "StableDiffusionInstructPix2PixPipeline"
#: diffusers' instruct_pix2pix columns of a pair: the source image and the instruction (the edited image is the
#: imagefolder's file_name)
PAIR_COLUMNS = ("input_image", "edit_prompt")


def add_arguments(p) -> None:
    p.description = (
        "Train an InstructPix2Pix editor (diffusers' instruct_pix2pix recipe) on image pairs that differ in one or "
        "two attributes (type within its family, colour, pattern, sleeve, neckline, length): a folder of pairs "
        "(input_image, edit_prompt; `fashiongen dataset --edit-pairs` writes one where each edit is the source "
        "re-rendered with only the edit changed) or a catalog whose items are paired here. Each pair is told the "
        "imperative a user types ('make it red and give it long sleeves') or the target's caption ('black short "
        "sleeve crewneck crop top', what approach 2 sends after retrieval). --model is a text-to-image SD 1.x "
        "folder (its UNet's conv_in is widened to take the source image's latent, the new channels starting at "
        "zero) or an InstructPix2Pix folder (fine-tuned); only the UNet trains. --out is the run folder "
        "(run.json, checkpoints/, latents-cache.safetensors); the editor is written to OUT/model, a diffusers "
        "StableDiffusionInstructPix2PixPipeline folder that `fashiongen export --model OUT/model` takes, and "
        "`fashiongen edit` runs.")
    p.add_argument("--model", type=Path, required=True, metavar="DIR",
                   help="text-to-image SD 1.x diffusers folder to widen (e.g. `fashiongen train`'s OUT/model on the "
                   "product view), or an InstructPix2Pix folder to fine-tune (e.g. timbrooks/instruct-pix2pix)")
    add_data_arguments(p, "edit pairs: metadata.jsonl rows with file_name (the edited image), input_image (the "
                       "source), edit_prompt and optionally the target's caption as 'text', as `fashiongen dataset "
                       "--edit-pairs` writes DIR/edits/train; or a catalog to draw pairs from: rows with file_name, "
                       "a 'text' caption and the columns type, colour, pattern, sleeve, neckline, length (null "
                       "where one does not apply), as DIR/product/train")
    add_diffusion_arguments(p, "editor")
    p.add_argument("--conditioning-dropout-prob", type=float, default=0.05, metavar="P",
                   help="drop the text, the image, or both, each with probability P (the paper's; at most 1/3), so "
                   "that text and image guidance work (default 0.05)")
    p.add_argument("--pairs-per-image", type=int, default=4, metavar="N",
                   help="for a catalog: edits drawn for every source item, each changing a set of attributes "
                   "drawn uniformly (default 4; the images are encoded once however many pairs use them)")
    p.add_argument("--instruction-mix", type=float, default=0.5, metavar="F",
                   help="fraction of pairs told the imperative ('make it red', a pair row's edit_prompt); the rest "
                   "are told the target's caption (a pair row's 'text', where it has one) (default 0.5: approach 2 "
                   "sends captions, users type imperatives)")
    p.add_argument("--conv-in-lr-scale", type=float, default=1.0, metavar="K",
                   help="learning rate of the UNet's conv_in, the only layer that sees the source image, as a "
                   "multiple of --learning-rate (default 1: the recipe's). Its image channels start at zero and "
                   "the noise-prediction loss rewards them little, so on a small budget an editor can learn to "
                   "ignore its source; K > 1 lets them move faster (on the demo family, 20 for 1,000 more steps "
                   "moved them little and raised edit success by 2-3 points)")
    p.add_argument("--source-init-scale", type=float, default=0.0, metavar="S",
                   help="when widening a text-to-image base: start the source image's conv_in channels at S times the "
                   "noisy latent's weights instead of zero (default 0: the recipe's), so that the source reaches the "
                   "UNet from the first step and training tempers it, rather than having to grow it from nothing "
                   "(on the demo family, 0.25 and 0.5 with --snr-floor 0.2: imperative edit success 8.0 and 8.5%% "
                   "against 4-6%%, caption 40%% against 45%%)")
    p.set_defaults(command_name="train-pix2pix")


@dataclass
class Options:
    """The recipe's choices that are not the schedule's, checked."""

    conditioning_dropout: float
    snr_gamma: float | None
    pairs_per_image: int
    instruction_mix: float
    conv_in_lr_scale: float = 1.0
    snr_floor: float | None = None
    source_init_scale: float = 0.0
    noise_offset: float = 0.0
    train_text_encoder: bool = False  # the recipe's: the text encoder stays frozen

    @classmethod
    def from_args(cls, args) -> "Options":
        options = cls(args.conditioning_dropout_prob, args.snr_gamma, args.pairs_per_image, args.instruction_mix,
                      args.conv_in_lr_scale, args.snr_floor, args.source_init_scale, args.noise_offset)
        if not (math.isfinite(options.conv_in_lr_scale) and options.conv_in_lr_scale > 0):
            raise InputError(f"--conv-in-lr-scale: must be a positive number, got {options.conv_in_lr_scale}")
        if not 0 <= options.conditioning_dropout <= 1 / 3:
            raise InputError(f"--conditioning-dropout-prob: must be in [0, 1/3] (text, image and both are dropped "
                             f"with it each), got {options.conditioning_dropout}")
        if not 0 <= options.instruction_mix <= 1:
            raise InputError(f"--instruction-mix: must be in [0, 1], got {options.instruction_mix}")
        if options.pairs_per_image < 1:
            raise InputError(f"--pairs-per-image: must be at least 1, got {options.pairs_per_image}")
        if not (math.isfinite(options.source_init_scale) and options.source_init_scale >= 0):
            raise InputError(f"--source-init-scale: must be 0 or more, got {options.source_init_scale}")
        check_snr_weighting(options.snr_gamma, options.snr_floor)
        check_noise_offset(options.noise_offset)
        return options


def needs_widening(model: Path, geometry: dict) -> bool:
    """True for a text-to-image base (its UNet takes the latent channels), False for an InstructPix2Pix one (twice
    them); anything else is refused in one line."""
    channels, latent = geometry["unet_in_channels"], geometry["latent_channels"]
    if channels not in (latent, 2 * latent):
        raise InputError(f"--model: '{model}' has a {channels}-channel UNet for {latent}-channel latents; "
                         f"train-pix2pix takes a text-to-image SD 1.x folder ({latent}) or an InstructPix2Pix one "
                         f"({2 * latent})")
    return channels == latent


def widen_conv_in(unet, source_scale: float = 0.0) -> None:
    """The recipe's surgery: ``conv_in`` takes twice its input channels, the noisy latent's weights copied into
    the first ones and the image latent's set to zero, so that the widened UNet computes what the text-to-image
    one did (the bias is kept too, see the module docstring) and learns to use the image from there; with
    ``source_scale`` > 0 the image latent's start at that multiple of the noisy latent's instead."""
    import torch

    old = unet.conv_in
    new = torch.nn.Conv2d(2 * old.in_channels, old.out_channels, old.kernel_size, old.stride, old.padding)
    with torch.no_grad():
        new.weight[:, :old.in_channels].copy_(old.weight)
        new.weight[:, old.in_channels:].copy_(old.weight * source_scale)
        new.bias.copy_(old.bias)
    unet.conv_in = new
    unet.register_to_config(in_channels=new.in_channels)


def run(args) -> int:
    from .runs import RunFolder, make_accelerator, train

    started = time.perf_counter()
    schedule = schedule_from_args(args, ema_decay=args.ema_decay)
    options = Options.from_args(args)
    geometry = base_geometry(args, None)
    widen = needs_widening(args.model, geometry)
    size = training_size(args.resolution, geometry)
    rows, pairs, data_sha256 = edit_data(args.data, args.seed, options)
    run_folder = RunFolder(args.out, identity_of(args, schedule, base_identity(args, None), data_sha256, size,
                                                 **options.__dict__))
    run_folder.begin(args.resume)  # every check above ran first: a failed start leaves no run folder behind
    parts = load_base(Path(args.model))
    if widen:
        widen_conv_in(parts["unet"], options.source_init_scale)
    device = make_accelerator(schedule).device
    data = PairData.build(rows, pairs, parts, size, data_sha256, run_folder.out / LATENTS_CACHE, device,
                          progress=not args.no_progress)
    loss = Pix2PixLoss.build(parts, data, schedule, options, device)
    trainable = {"unet": parts["unet"]}
    losses = train(run_folder, schedule, trainable, loss, resume=args.resume, progress=not args.no_progress,
                   description="train-pix2pix", params=parameter_groups(parts["unet"], options.conv_in_lr_scale))
    record = training_record(args, losses, started, step_losses=losses, prediction_type=loss.prediction_type,
                             resolution=size, widened=widen, pairs=len(pairs),
                             example_instructions=[p.instruction for p in pairs[:8]], **options.__dict__)
    model = write_model(run_folder.out / MODEL, Path(args.model), trainable, record, pipeline_class=PIPELINE_CLASS)
    print(f"wrote {model} ({len(pairs)} pairs, {len(losses)} steps, final loss {losses[-1]:.4f})")
    return 0


def parameter_groups(unet, conv_in_lr_scale: float) -> list[dict]:
    """The UNet's parameters for AdamW: ``conv_in`` at ``conv_in_lr_scale`` times the rate, the rest at it."""
    conv_in = set(map(id, unet.conv_in.parameters()))
    rest = [p for p in unet.parameters() if id(p) not in conv_in]
    return [{"params": rest}, {"params": list(unet.conv_in.parameters()), "lr_scale": conv_in_lr_scale}]


def edit_data(folders: list[Path], seed: int, options: Options) -> tuple[list, list[EditPair], str]:
    """The images (rows whose ``image`` is encoded), the pairs between them and the data's digest, from
    ``--data``: folders of InstructPix2Pix pairs (rows with ``input_image``), or catalog folders whose pairs are
    drawn here (:func:`.edit_pairs.make_pairs`); one kind or the other."""
    rows = read_data(folders, require=())
    paired = sum(PAIR_COLUMNS[0] in row.columns for row in rows)
    if paired == len(rows):
        images, pairs = read_pairs(rows, seed, options.instruction_mix)
        return images, pairs, data_digest(rows + images)  # the rows' words, the sources' bytes
    if paired:
        raise InputError(f"--data: {paired} of {len(rows)} rows are edit pairs (with '{PAIR_COLUMNS[0]}') and the "
                         f"rest catalog items; pass folders of one kind")
    uncaptioned = next((row for row in rows if not row.columns.get("text")), None)
    if uncaptioned is not None:
        raise InputError(f"--data: '{uncaptioned.image.parent}' row for {uncaptioned.image.name} has no 'text' "
                         f"(a catalog row needs its caption)")
    pairs = make_pairs(attribute_rows(rows), [row.text for row in rows], seed, options.pairs_per_image,
                       options.instruction_mix)
    check_pairing(pairs, rows)
    return rows, pairs, data_digest(rows)


def read_pairs(rows: list, seed: int, instruction_mix: float) -> tuple[list, list[EditPair]]:
    """Pair rows as (every image once: sources, then targets as first met; the pairs). A row's instruction is its
    ``edit_prompt``, or with probability 1 - ``instruction_mix`` its ``text`` (the target's caption) where it has
    one: approach 2 sends captions, users type imperatives."""
    from .imagefolder import Row

    images: dict[Path, int] = {}
    rng = np.random.default_rng(seed)
    pairs = []
    for row in rows:
        source = row.path(PAIR_COLUMNS[0])
        prompt = row.columns.get(PAIR_COLUMNS[1])
        if not isinstance(prompt, str) or not prompt.strip():
            raise InputError(f"--data: '{row.image.parent}' row for {row.image.name} has no '{PAIR_COLUMNS[1]}'")
        if not source.is_file():
            raise InputError(f"--data: '{row.image.parent}' row for {row.image.name}: {PAIR_COLUMNS[0]} "
                             f"'{row.columns[PAIR_COLUMNS[0]]}' is missing")
        caption_instead = rng.random() >= instruction_mix and bool(row.columns.get("text"))
        pairs.append(EditPair(images.setdefault(source, len(images)), images.setdefault(row.image, len(images)),
                              tuple(row.columns.get("changed") or ()), row.text if caption_instead else prompt))
    return [Row(path, {}) for path in images], pairs


@dataclass
class PairData:
    """The pairs as the loop reads them: every image's VAE posterior once, and each pair's source, target and
    instruction token ids."""

    mean: torch.Tensor
    std: torch.Tensor
    source: torch.Tensor
    target: torch.Tensor
    ids: torch.Tensor
    empty_ids: torch.Tensor  # the empty instruction, for conditioning dropout
    scaling_factor: float

    @classmethod
    def build(cls, rows, pairs, parts: dict, size: int, data_sha256: str, cache: Path, device, progress: bool):
        import torch

        tokenizer = parts["tokenizer"]
        mean, std = cached_posteriors(rows, parts["vae"], size, data_sha256, cache, device, progress)
        return cls(mean, std, torch.tensor([p.source for p in pairs]), torch.tensor([p.target for p in pairs]),
                   tokenize(tokenizer, [p.instruction for p in pairs]), tokenize(tokenizer, [""]),
                   parts["vae"].config.scaling_factor)

    def __len__(self) -> int:
        return len(self.ids)

    def draw(self, index, generator, dropout: float):
        """The targets' latents sampled from their posteriors (scaled), the sources' latent modes (unscaled, the
        recipe's ``latent_dist.mode()``), and the instructions' ids; text and image dropped as the paper does."""
        import torch

        target, source = self.target[index], self.source[index]
        latents = sample_latents(self.mean[target], self.std[target], generator, self.scaling_factor)
        draw = torch.rand(len(index), generator=generator)
        ids = torch.where((draw < 2 * dropout)[:, None], self.empty_ids, self.ids[index])
        keep_image = ~((draw >= dropout) & (draw < 3 * dropout))
        return latents, ids, self.mean[source] * keep_image[:, None, None, None]


class Pix2PixLoss(DiffusionLoss):
    """Text-to-image's loss with the source image's latent beside the noisy one and the paper's dropout."""

    def draw(self, index, generator):
        return self.data.draw(index, generator, self.options.conditioning_dropout)

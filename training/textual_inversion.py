"""``fashiongen train-embedding``: textual inversion, one new token learned from a folder of images.

Contract. A new token ``--token`` (``--vectors N`` rows, written in prompts as the one ``<name>`` and
expanded to ``<name> <name>_1 ...`` as diffusers' ``load_textual_inversion`` does) is added to an SD 1.x
checkpoint's tokenizer and text encoder; every vector starts at the mean of the token embeddings of
``--init-word`` (CLIP may split a word: "knitwear" is knit + wear, and the mean starts between the pieces).
Only those rows learn: the UNet, the VAE and the rest of the text encoder are frozen, and after each optimizer
step every other row of the embedding matrix is put back bit for bit (AdamW's weight decay would otherwise
move them), as diffusers' textual-inversion example does.

The objective, the latent cache and the run's identity are ``fashiongen train``'s
(:mod:`.text_to_image`): the checkpoint's own noise schedule and ``prediction_type``, MSE; each image's VAE
posterior computed once and kept in ``OUT/latents-cache.safetensors``, a step's latent drawn from it with the
step's generator. Each row's prompt is ``--template`` with ``{token}`` and ``{caption}`` (the row's ``text``)
filled in, tokenized once.

Output in ``--out`` (a run folder of :mod:`.runs`: ``run.json``, resumable checkpoints, ``--resume``):
``<name>.pt`` (A1111) and ``learned_embeds.safetensors`` (diffusers), both read by ``fashiongen export
--embedding`` and by diffusers' ``load_textual_inversion``, and ``training.json`` (arguments, seed, steps,
every step's loss, this invocation's wall time).
"""
from __future__ import annotations

import string
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from fashiongen.runtime.errors import InputError

from .options import add_schedule_arguments, schedule_from_args
from .text_to_image import add_data_arguments

DEFAULT_TEMPLATE = "{token} {caption}"
TEMPLATE_FIELDS = {"token", "caption"}
DIFFUSERS_FILE = "learned_embeds.safetensors"

if TYPE_CHECKING:  # torch is imported where it is used: the CLI builds this parser without it
    import torch


@dataclass
class TrainedEmbedding:
    """What a run produced: the vectors, the files holding them, the per-step losses, and the models as
    trained (the token added; to sample with, or to check that nothing else moved)."""

    token: str
    vectors: torch.Tensor  # [n_vectors, dim], float32, on the CPU
    files: dict[str, Path]
    losses: list[float]
    parts: dict


def add_arguments(p) -> None:
    p.description = ("Learn a new token (textual inversion) for an SD 1.x checkpoint from an imagefolder; only "
                     "the token's rows of the text encoder's embedding table train. Writes OUT/<token>.pt "
                     "(A1111) and OUT/learned_embeds.safetensors (diffusers), which `fashiongen export "
                     "--embedding` takes.")
    p.add_argument("--model", type=Path, required=True, metavar="DIR", help="SD 1.x diffusers checkpoint folder")
    add_data_arguments(p, "metadata.jsonl rows with file_name, and a 'text' caption if --template uses {caption}",
                       config=False)
    p.add_argument("--out", type=Path, required=True, help="run folder: checkpoints, the embedding files")
    p.add_argument("--token", required=True, help='the new token, e.g. "<my-style>"')
    p.add_argument("--init-word", required=True,
                   help="word whose embedding (the mean of its CLIP tokens) starts every vector, e.g. dress")
    p.add_argument("--vectors", type=int, default=1, help="vectors (tokens) the learned token stands for (default 1)")
    p.add_argument("--template", default=DEFAULT_TEMPLATE,
                   help=f'training prompt; {{token}} is the new token, {{caption}} the row\'s text (default '
                        f'"{DEFAULT_TEMPLATE}"; e.g. "a photo in the style of {{token}}" needs no captions)')
    add_schedule_arguments(p, steps=2000, batch_size=4, learning_rate=5e-3, checkpoint_every=500)
    p.set_defaults(command_name="train-embedding")


def run(args) -> int:
    result = train_embedding(args)
    print(f"wrote {', '.join(str(f) for f in result.files.values())}: {len(result.losses)} steps, loss "
          f"{result.losses[0]:.4f} -> {result.losses[-1]:.4f}")
    return 0


def train_embedding(args) -> TrainedEmbedding:
    """Learn ``args.token`` on the images of ``args.data`` (see the module's contract).

    Every input is checked, and ``--out`` claimed (or the run to resume matched), before the images are encoded.
    """
    import torch

    from . import text_to_image as t2i
    from .runs import RunFolder, make_accelerator, train

    started = time.perf_counter()
    schedule = schedule_from_args(args)
    _check_template(args.template)
    _check_token(args.token, args.vectors)
    size = _training_size(args)
    rows = t2i.read_data(args.data, require=("text",) if "caption" in _fields(args.template) else ())
    data_sha256 = t2i.data_digest(rows)
    parts = t2i.load_base(args.model)
    tokens, ids = _add_token(parts, args.token, args.vectors, args.init_word)
    input_ids = _prompt_ids(parts["tokenizer"], rows, args.template, tokens, ids)
    run_folder = RunFolder(args.out, t2i.identity_of(
        args, schedule, t2i.base_identity(args, None), data_sha256, size, token=args.token, vectors=args.vectors,
        init_word=args.init_word, template=args.template))
    run_folder.begin(args.resume)
    device = make_accelerator(schedule).device
    mean, std = t2i.cached_posteriors(rows, parts["vae"], size, data_sha256, run_folder.out / t2i.LATENTS_CACHE,
                                      device, progress=not args.no_progress)
    # no caption dropout here (the token must be in every prompt), so the "empty caption" is never drawn
    data = t2i.CachedData(mean, std, input_ids, input_ids[:1], parts["vae"].config.scaling_factor)
    # "train_text_encoder": the gradient must run through the text encoder to the new rows; its weights are
    # frozen below, all but the embedding table, whose other rows the on_step hook restores
    loss = t2i.DiffusionLoss.build(parts, data, schedule, t2i.Options(True, 0.0, None), device)
    embedding = _freeze_all_but_embedding(parts, device)
    losses = train(run_folder, schedule, {"token_embedding": embedding}, loss, resume=args.resume,
                   progress=not args.no_progress, params=[embedding.weight],
                   on_step=_row_restorer(embedding.weight, ids), description="textual inversion")
    learned = embedding.weight.detach()[ids].to("cpu", torch.float32).clone()
    files = _write_outputs(run_folder.out, args.token, learned)
    t2i.write_record(run_folder.out, t2i.training_record(
        args, losses, started, tokens=tokens, step_losses=losses, images=len(rows), resolution=size,
        prediction_type=loss.prediction_type, files={fmt: path.name for fmt, path in files.items()}))
    return TrainedEmbedding(token=args.token, vectors=learned, files=files, losses=losses, parts=parts)


def _training_size(args) -> int:
    """``--resolution`` checked against the checkpoint (before anything loads); a text-to-image UNet required."""
    from .text_to_image import base_geometry, require_text_to_image, training_size

    return training_size(args.resolution, require_text_to_image(args, base_geometry(args, None)))


# -- checks -------------------------------------------------------------------------------------------
def _fields(template: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}


def _check_template(template: str) -> None:
    try:
        fields = _fields(template)
    except ValueError as exc:
        raise InputError(f"--template: {template!r} is not a valid template ({exc})") from None
    if "token" not in fields:
        raise InputError(f"--template: {template!r} has no {{token}}; the new token must be in every prompt")
    unknown = sorted(fields - TEMPLATE_FIELDS)
    if unknown:
        raise InputError(f"--template: {template!r} names {{{unknown[0]}}}; only {{token}} and {{caption}} exist")


def _check_token(token: str, vectors: int) -> None:
    if not token or token != token.strip() or len(token.split()) != 1:
        raise InputError(f"--token: {token!r} must be one word without spaces, e.g. \"<my-style>\"")
    if vectors < 1:
        raise InputError(f"--vectors: must be at least 1, got {vectors}")


def _add_token(parts: dict, token: str, vectors: int, init_word: str) -> tuple[list[str], list[int]]:
    """Add the token's rows to tokenizer and text encoder, each set to the mean embedding of ``init_word``."""
    import torch

    from fashiongen.export.embeddings import LearnedEmbedding, bake_embeddings

    tokenizer, text_encoder = parts["tokenizer"], parts["text_encoder"]
    tokens = LearnedEmbedding(token, torch.zeros(vectors, 1), Path()).tokens
    vocab = tokenizer.get_vocab()
    # the rule bake_embeddings applies at export ("cat" would hijack the word "cat</w>"), checked first to
    # name --token rather than an embedding file
    taken = [t for t in tokens if t in vocab or f"{t.lower()}</w>" in vocab]
    if taken:
        raise InputError(f"--token: '{taken[0]}' is already in the tokenizer's vocabulary; choose a new word, "
                         f"e.g. \"<{token.strip('<>')}-style>\"")
    init_ids = tokenizer.encode(init_word, add_special_tokens=False)
    if not init_ids or set(init_ids) & set(tokenizer.all_special_ids):
        raise InputError(f"--init-word: {init_word!r} is no word of the tokenizer's vocabulary; give a word close "
                         f"to what the images show, e.g. dress")
    table = text_encoder.get_input_embeddings().weight.detach()
    start = table[init_ids].mean(0).expand(vectors, -1).clone()
    bake_embeddings(tokenizer, text_encoder, [LearnedEmbedding(token, start, Path(f"--token {token}"))])
    return tokens, tokenizer.convert_tokens_to_ids(tokens)


# -- data -------------------------------------------------------------------------------------------------
def _prompt_ids(tokenizer, rows, template: str, tokens: list[str], ids: list[int]):
    """Each row's prompt as padded input ids; a prompt whose new token falls past the text length is refused."""
    prompts = [template.format(token=" ".join(tokens), caption=row.columns.get("text", "")) for row in rows]
    input_ids = tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                          return_tensors="pt").input_ids
    for row, row_ids in zip(rows, input_ids.tolist()):
        if not set(ids) <= set(row_ids):
            raise InputError(f"--template: the prompt for '{row.image.name}' is longer than "
                             f"{tokenizer.model_max_length} tokens and cuts off {tokens[0]}; shorten its caption "
                             f"or put {{token}} first")
    return input_ids


# -- training -----------------------------------------------------------------------------------------------
def _freeze_all_but_embedding(parts: dict, device):
    """Every weight frozen but the token embedding table; the networks on ``device``; the table returned."""
    for name in ("unet", "text_encoder"):
        parts[name].to(device).requires_grad_(False)
    embedding = parts["text_encoder"].get_input_embeddings()
    embedding.weight.requires_grad_(True)
    return embedding


def _row_restorer(weight, ids: list[int]):
    """``on_step``: put back every row of ``weight`` but ``ids`` as they were before training."""
    import torch

    frozen = torch.ones(len(weight), dtype=torch.bool, device=weight.device)
    frozen[ids] = False
    original = weight.detach()[frozen].clone()

    def restore(step: int) -> None:
        with torch.no_grad():
            weight[frozen] = original

    return restore


# -- output -------------------------------------------------------------------------------------------------
def _write_outputs(out: Path, token: str, vectors) -> dict[str, Path]:
    from fashiongen.random_checkpoints.sd import write_textual_inversion

    return {"a1111": write_textual_inversion(out, vectors, token, "a1111"),
            "diffusers": write_textual_inversion(out / DIFFUSERS_FILE, vectors, token, "diffusers")}

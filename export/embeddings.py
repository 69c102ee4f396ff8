"""Textual-inversion embeddings: read the three file formats found in the wild, safely, and bake them in.

Formats (a file is data, never code: safetensors, or ``torch.load(weights_only=True)``):
- A1111 ``.pt``: ``{"string_to_param": {"*": tensor[n, dim]}, "name": ...}``, often multi-vector;
- civitai ``.safetensors``: ``{"emb_params": tensor[n, dim]}``;
- diffusers ``learned_embeds.safetensors`` / ``.bin``: ``{token: tensor[dim]}``.

A multi-vector embedding becomes one token per vector, ``<tok>``, ``<tok>_1``, ... as diffusers'
``load_textual_inversion`` names them; the runtime expands ``<tok>`` in a prompt to all of them.
"""
from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path

import torch

from fashiongen.runtime.errors import InputError


class EmbeddingError(InputError):
    """An embedding file that cannot be used; the message names the file."""


@dataclass(frozen=True)
class LearnedEmbedding:
    token: str
    vectors: torch.Tensor  # [n_vectors, dim], float32
    source: Path

    @property
    def tokens(self) -> list[str]:
        return [self.token] + [f"{self.token}_{i}" for i in range(1, len(self.vectors))]


def parse_embedding_arg(arg: str) -> tuple[Path, str | None]:
    """``FILE`` or ``FILE=TOKEN`` (the token overrides the one stored in the file)."""
    path, sep, token = arg.partition("=")
    return Path(path), (token if sep and token else None)


def _read_state(path: Path) -> object:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as exc:
            raise EmbeddingError(f"{path}: not a readable safetensors file ({exc})") from None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else "objects outside the allowed set"
        raise EmbeddingError(f"{path}: refused: the pickle holds more than tensors and plain data "
                             f"(nothing was executed): {reason}") from None
    except Exception as exc:
        raise EmbeddingError(f"{path}: not a readable embedding file ({type(exc).__name__}: {exc})") from None


def _vectors_and_name(state: object, path: Path) -> tuple[torch.Tensor, str | None]:
    """Find the embedding tensor and the token name the file stores, whatever its format."""
    if isinstance(state, torch.Tensor):
        return state, None
    if not isinstance(state, dict):
        raise EmbeddingError(f"{path}: expected a dict of tensors, found {type(state).__name__}")
    if "string_to_param" in state:  # A1111
        params = state["string_to_param"]
        if not isinstance(params, dict) or not params:
            raise EmbeddingError(f"{path}: 'string_to_param' holds no tensor")
        name = state.get("name")
        return next(iter(params.values())), name if isinstance(name, str) else None
    if "emb_params" in state:  # civitai
        return state["emb_params"], None
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    if len(tensors) == 1:  # diffusers: {token: vector}
        name, vectors = next(iter(tensors.items()))
        return vectors, name
    raise EmbeddingError(f"{path}: unknown embedding layout (keys: {sorted(map(str, state))[:8]}); expected "
                         "A1111 'string_to_param', civitai 'emb_params' or diffusers {token: tensor}")


def load_embedding(path: Path, token: str | None = None) -> LearnedEmbedding:
    """Read one embedding file; ``token`` overrides the stored name (default: the file's stem)."""
    path = Path(path)
    if not path.is_file():
        raise EmbeddingError(f"--embedding: file '{path}' does not exist")
    vectors, stored_name = _vectors_and_name(_read_state(path), path)
    if not isinstance(vectors, torch.Tensor) or vectors.ndim not in (1, 2) or vectors.numel() == 0:
        raise EmbeddingError(f"{path}: the embedding must be a tensor [dim] or [n_vectors, dim]")
    vectors = vectors.detach().to(torch.float32).reshape(-1, vectors.shape[-1])
    token = token or stored_name or path.stem
    return LearnedEmbedding(token=token, vectors=vectors, source=path)


def bake_embeddings(tokenizer, text_encoder, embeddings: list[LearnedEmbedding]) -> dict[str, list[str]]:
    """Add each embedding's tokens to the tokenizer and its rows to the text encoder's table.

    Returns ``{token: [per-vector tokens]}`` for the manifest. Refuses a width that differs from the
    text encoder's, and a token the vocabulary (or an earlier embedding) already has.
    """
    width = text_encoder.get_input_embeddings().weight.shape[1]
    vocab = tokenizer.get_vocab()
    learned: dict[str, list[str]] = {}
    for emb in embeddings:
        if emb.vectors.shape[1] != width:
            raise EmbeddingError(f"{emb.source}: embedding width {emb.vectors.shape[1]} does not match the "
                                 f"text encoder's hidden size {width}")
        # "cat" is in CLIP's vocabulary as the word-final "cat</w>": an added "cat" would hijack the word.
        taken = [t for t in emb.tokens if t in vocab or f"{t.lower()}</w>" in vocab or t in learned]
        if taken:
            raise EmbeddingError(f"{emb.source}: token '{taken[0]}' is already in the tokenizer's vocabulary; "
                                 f"choose another with --embedding {emb.source}=<new-token>")
        tokenizer.add_tokens(emb.tokens)
        vocab = tokenizer.get_vocab()
        text_encoder.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        ids = tokenizer.convert_tokens_to_ids(emb.tokens)
        with torch.no_grad():
            text_encoder.get_input_embeddings().weight[ids] = emb.vectors
        learned[emb.token] = emb.tokens
    return learned

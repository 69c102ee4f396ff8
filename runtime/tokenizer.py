"""CLIP prompt tokenization with the ``tokenizers`` package, learned tokens included.

Behaves like diffusers' prompt handling: a multi-vector learned token ``<tok>`` in a prompt is expanded
to ``<tok> <tok>_1 ...`` (one token per vector), ids are framed by BOS/EOS, truncated to the model's
length (with a warning that shows where the dropped text starts) and padded with the pad id.
"""
from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np

from .manifest import TokenizerSection

DROPPED_WORDS_SHOWN = 8  # an over-long prompt's warning shows this many words of the dropped text


class PromptTokenizer:
    def __init__(self, tokenizer_file: Path, *, model_max_length: int, bos_token_id: int, eos_token_id: int,
                 pad_token_id: int, learned_tokens: dict[str, list[str]] | None = None):
        from tokenizers import Tokenizer

        self._tok = Tokenizer.from_file(str(tokenizer_file))
        self.max_length = model_max_length
        self.bos, self.eos, self.pad = bos_token_id, eos_token_id, pad_token_id
        self.learned_tokens = dict(learned_tokens or {})
        # Longest first, so "<tok>_1" is never matched as "<tok>" followed by "_1".
        names = sorted(self.learned_tokens, key=len, reverse=True)
        self._learned_re = re.compile("|".join(re.escape(n) for n in names)) if names else None

    @classmethod
    def from_manifest_section(cls, engine_dir: Path, section: TokenizerSection) -> "PromptTokenizer":
        return cls(Path(engine_dir) / section.file, model_max_length=section.model_max_length,
                   bos_token_id=section.bos_token_id, eos_token_id=section.eos_token_id,
                   pad_token_id=section.pad_token_id, learned_tokens=section.learned_tokens)

    def expand_learned_tokens(self, prompt: str) -> str:
        """Replace each multi-vector learned token by all of its per-vector tokens."""
        if self._learned_re is None:
            return prompt
        return self._learned_re.sub(lambda m: " ".join(self.learned_tokens[m.group(0)]), prompt)

    def encode(self, prompt: str) -> np.ndarray:
        """One prompt to ``model_max_length`` int32 ids: BOS, content, EOS, padding."""
        ids = self._tok.encode(self.expand_learned_tokens(prompt), add_special_tokens=False).ids
        room = self.max_length - 2
        if len(ids) > room:
            words = self.decode(ids[room:]).split()
            shown = " ".join(words[:DROPPED_WORDS_SHOWN]) + (" ..." if len(words) > DROPPED_WORDS_SHOWN else "")
            warnings.warn(f"prompt longer than {room} tokens: its last {len(ids) - room} tokens are dropped, "
                          f"from {shown!r}", stacklevel=3)
            ids = ids[:room]
        ids = [self.bos, *ids, self.eos]
        ids += [self.pad] * (self.max_length - len(ids))
        return np.asarray(ids, dtype=np.int32)

    def decode(self, ids: list[int]) -> str:
        """Ids back to text; CLIP marks word ends with ``</w>`` (not every tokenizer.json has a decoder)."""
        tokens = [self._tok.id_to_token(i) or "" for i in ids]
        return "".join(tokens).replace("</w>", " ").strip()

    def encode_batch(self, prompts: list[str]) -> np.ndarray:
        return np.stack([self.encode(p) for p in prompts])

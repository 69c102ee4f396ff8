"""Stable Diffusion 1.x checkpoints with seeded random weights, in the real diffusers folder format.

No model hub is reachable here, so tests, the demo and the benchmarks build the real architectures
(small, or at full SD 1.5 size) with random weights and write them exactly as
``runwayml/stable-diffusion-v1-5`` lays them out on disk::

    model_index.json                      StableDiffusionPipeline (safety_checker / feature_extractor null)
    unet/config.json, diffusion_pytorch_model.safetensors           UNet2DConditionModel
    vae/config.json, diffusion_pytorch_model.safetensors            AutoencoderKL
    text_encoder/config.json, model.safetensors                     CLIPTextModel ("text_model." keys)
    tokenizer/vocab.json, merges.txt, tokenizer.json, tokenizer_config.json   real CLIP BPE vocabulary
    scheduler/scheduler_config.json       SD 1.5's PNDM config unless told otherwise

so that the real loading code (``StableDiffusionPipeline.from_pretrained``, the exporters, the torch-free
runtime's tokenizer) is what runs. The same seed writes byte-identical weight files.

Textual-inversion embeddings are written in the three formats found in the wild (A1111 ``.pt``,
Civitai ``.safetensors``, diffusers ``learned_embeds``), see :func:`write_textual_inversion`.

Command line::

    python -m fashiongen.random_checkpoints.sd --out DIR [--full-size] [--seed N] [--with-embeddings]
"""
from __future__ import annotations

import argparse
import gzip
import importlib.util
import json
import math
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fashiongen.runtime.files import atomic_file

__all__ = [
    "SDSize",
    "TINY",
    "FULL_SD15",
    "SD15_SCHEDULER_CONFIG",
    "write_sd_checkpoint",
    "write_clip_tokenizer",
    "write_textual_inversion",
    "random_embedding",
    "main",
]


@dataclass(frozen=True)
class SDSize:
    """Architecture knobs of an SD 1.x checkpoint.

    ``attention_head_dim`` is what diffusers' SD 1.x UNet config calls it, which (a historical quirk of
    that config) is the number of attention *heads* per transformer block: SD 1.5 has 8 heads of
    40/80/160 channels. Every UNet channel count must be divisible by it.
    """

    unet_channels: tuple[int, ...] = (32, 64)
    layers_per_block: int = 1
    attention_head_dim: int = 8
    cross_attention_dim: int = 32  # = text encoder hidden size
    text_layers: int = 2
    text_heads: int = 2
    text_intermediate: int = 64
    vae_channels: tuple[int, ...] = (32, 32, 32, 32)  # 4 blocks -> latent downscale 8, as SD
    # Channels of the VAE's latent (SD 1.x: 4). More keep more of the image (a small VAE's ceiling) at the cost
    # of a harder denoising target; the runtime reads the number from the engine folder's manifest.
    latent_channels: int = 4
    # None: latent_channels (text to image); twice that gives an InstructPix2Pix-style UNet (latent + image latent)
    unet_in_channels: int | None = None
    sample_size: int = 32  # latent side the UNet config advertises; images are 8x that
    # GroupNorm groups of the UNet and the VAE. None: SD's 32, or fewer where a width is not a multiple of 32.
    # A small model may want fewer: with one channel a group, GroupNorm is InstanceNorm (measured on the demo's
    # (16, 32, 64, 64) VAE: 4 groups reached in 200 steps the loss 16 groups reached in 400).
    norm_groups: int | None = None
    # Size of the guidance-scale embedding the UNet takes (diffusers' time_cond_proj_dim, as LCM-distilled
    # UNets have: 256 for LCM SD 1.5). None: a plain UNet.
    time_cond_proj_dim: int | None = None
    # Which UNet levels, the finest first, have cross-attention blocks. None: SD's layout, every level but the
    # coarsest. On a fine latent grid the finest level's attention is most of a step: on the demo's 32x32 latents
    # (a VAE of downscale 4 at 128 px) the UNet (32, 64, 128) trained at 2.8 s a step, (32, 32, 64, 128) with its
    # finest level plain at 0.75 s (batch 32, one thread), against 0.54 s for (32, 64, 128) on 16x16 latents.
    unet_attention: tuple[bool, ...] | None = None

    def __post_init__(self) -> None:
        if len(self.unet_channels) < 2:
            raise ValueError(f"SDSize.unet_channels needs at least 2 levels, got {self.unet_channels}")
        bad = [c for c in self.unet_channels if c % self.attention_head_dim]
        if bad:
            raise ValueError(f"SDSize.unet_channels {self.unet_channels} must all be divisible by "
                             f"attention_head_dim={self.attention_head_dim} (heads); {bad} are not")
        if self.cross_attention_dim % self.text_heads:
            raise ValueError(f"SDSize.cross_attention_dim={self.cross_attention_dim} must be divisible by "
                             f"text_heads={self.text_heads}")
        if not isinstance(self.latent_channels, int) or self.latent_channels < 1:
            raise ValueError(f"SDSize.latent_channels must be a positive integer, got {self.latent_channels!r}")
        if self.unet_in_channels is None:
            object.__setattr__(self, "unet_in_channels", self.latent_channels)
        if self.unet_in_channels not in (self.latent_channels, 2 * self.latent_channels):
            raise ValueError(f"SDSize.unet_in_channels must be latent_channels={self.latent_channels} (text-to-image) "
                             f"or twice that (InstructPix2Pix), got {self.unet_in_channels}")
        if self.time_cond_proj_dim is not None and (not isinstance(self.time_cond_proj_dim, int)
                                                    or self.time_cond_proj_dim < 1):
            raise ValueError(f"SDSize.time_cond_proj_dim must be None or a positive integer, "
                             f"got {self.time_cond_proj_dim!r}")
        if len(self.vae_channels) < 1:
            raise ValueError("SDSize.vae_channels needs at least one block")
        if self.unet_attention is None:
            object.__setattr__(self, "unet_attention", (True,) * (len(self.unet_channels) - 1) + (False,))
        if (len(self.unet_attention) != len(self.unet_channels)
                or not all(isinstance(a, bool) for a in self.unet_attention)):
            raise ValueError(f"SDSize.unet_attention must be one true or false per UNet level "
                             f"({len(self.unet_channels)}), got {self.unet_attention!r}")
        if self.norm_groups is not None:
            bad = [c for c in (*self.unet_channels, *self.vae_channels) if self.norm_groups < 1 or c % self.norm_groups]
            if bad:
                raise ValueError(f"SDSize.norm_groups={self.norm_groups} must divide every UNet and VAE width; "
                                 f"{bad} are not multiples of it")

    @property
    def is_pix2pix(self) -> bool:
        return self.unet_in_channels == 2 * self.latent_channels

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae_channels) - 1)


TINY = SDSize()

FULL_SD15 = SDSize(
    unet_channels=(320, 640, 1280, 1280),
    layers_per_block=2,
    attention_head_dim=8,
    cross_attention_dim=768,
    text_layers=12,
    text_heads=12,
    text_intermediate=3072,
    vae_channels=(128, 256, 512, 512),
    unet_in_channels=4,
    sample_size=64,
)

# runwayml/stable-diffusion-v1-5 scheduler/scheduler_config.json
SD15_SCHEDULER_CONFIG: dict = {
    "_class_name": "PNDMScheduler",
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "clip_sample": False,
    "prediction_type": "epsilon",
    "timestep_spacing": "leading",
    "trained_betas": None,
}

CLIP_VOCAB_SIZE = 49408
CLIP_BOS = "<|startoftext|>"
CLIP_EOS = "<|endoftext|>"
TEXT_MAX_LENGTH = 77


# ----------------------------------------------------------------------------------------- tokenizer
def _bpe_vocab_gz() -> Path:
    """The real CLIP BPE merges list shipped inside the ``clip-anytorch`` wheel (never imported)."""
    spec = importlib.util.find_spec("clip")
    if spec is not None and spec.submodule_search_locations:
        for loc in spec.submodule_search_locations:
            p = Path(loc) / "bpe_simple_vocab_16e6.txt.gz"
            if p.is_file():
                return p
    spec = importlib.util.find_spec("open_clip")
    if spec is not None and spec.submodule_search_locations:
        for loc in spec.submodule_search_locations:
            p = Path(loc) / "bpe_simple_vocab_16e6.txt.gz"
            if p.is_file():
                return p
    raise FileNotFoundError(
        "bpe_simple_vocab_16e6.txt.gz not found: install the 'clip-anytorch' (or 'open_clip_torch') wheel "
        "with --no-deps; it ships the real CLIP BPE vocabulary")


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2 / CLIP reversible byte -> printable unicode character table (same order as OpenAI's)."""
    bs = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
          + list(range(ord("®"), ord("ÿ") + 1)))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def _clip_vocab_and_merges() -> tuple[dict[str, int], list[str]]:
    """vocab (49,408 entries) and merges exactly as OpenAI's ``simple_tokenizer.SimpleTokenizer`` builds them."""
    lines = gzip.open(_bpe_vocab_gz()).read().decode("utf-8").split("\n")
    merges = lines[1:49152 - 256 - 2 + 1]
    pairs = [tuple(m.split()) for m in merges]
    vocab = list(_bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab]
    vocab.extend("".join(p) for p in pairs)
    vocab.extend([CLIP_BOS, CLIP_EOS])
    if len(vocab) != CLIP_VOCAB_SIZE or len(set(vocab)) != CLIP_VOCAB_SIZE:
        raise ValueError(f"CLIP vocabulary has {len(vocab)} entries ({len(set(vocab))} distinct), "
                         f"expected {CLIP_VOCAB_SIZE}")
    return {tok: i for i, tok in enumerate(vocab)}, [" ".join(p) for p in pairs]


def write_clip_tokenizer(out_dir: str | os.PathLike) -> Path:
    """Write SD 1.5's CLIP tokenizer (real vocabulary) to ``out_dir``: vocab.json, merges.txt,
    tokenizer.json, tokenizer_config.json, special_tokens_map.json."""
    from transformers import CLIPTokenizer

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    vocab, merges = _clip_vocab_and_merges()
    with tempfile.TemporaryDirectory() as raw:
        (Path(raw) / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
        (Path(raw) / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
        # transformers 5: CLIPTokenizer(vocab_file=..., merges_file=...) silently ignores the files;
        # from_pretrained(dir) reads them.
        tok = CLIPTokenizer.from_pretrained(raw, pad_token=CLIP_EOS, model_max_length=TEXT_MAX_LENGTH)
        if len(tok) != CLIP_VOCAB_SIZE:
            raise RuntimeError(f"CLIPTokenizer built with {len(tok)} tokens, expected {CLIP_VOCAB_SIZE}")
        # an encode call with padding/truncation would leave that state in tokenizer.json; make sure none is
        tok.backend_tokenizer.no_padding()
        tok.backend_tokenizer.no_truncation()
        tok.save_pretrained(out)
        # keep the slow-tokenizer files too, as SD 1.5's folder has them (older transformers read them)
        shutil.copyfile(Path(raw) / "vocab.json", out / "vocab.json")
        shutil.copyfile(Path(raw) / "merges.txt", out / "merges.txt")
    cfg_path = out / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    for k in ("is_local", "local_files_only", "name_or_path"):  # machine-specific, not part of a checkpoint
        cfg.pop(k, None)
    cfg.setdefault("do_lower_case", True)
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    special = {"bos_token": CLIP_BOS, "eos_token": CLIP_EOS, "pad_token": CLIP_EOS, "unk_token": CLIP_EOS}
    (out / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n", encoding="utf-8")
    return out


# ------------------------------------------------------------------------------------------ networks
def _group_norm_groups(channels: tuple[int, ...]) -> int:
    """32 groups as SD, or fewer when a tiny channel count is not a multiple of 32."""
    g = 0
    for c in channels:
        g = math.gcd(g, c)
    return math.gcd(g, 32)


def _unet_config(size: SDSize) -> dict:
    return dict(
        sample_size=size.sample_size,
        in_channels=size.unet_in_channels,
        out_channels=size.latent_channels,
        center_input_sample=False,
        flip_sin_to_cos=True,
        freq_shift=0,
        down_block_types=tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in size.unet_attention),
        up_block_types=tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(size.unet_attention)),
        block_out_channels=tuple(size.unet_channels),
        layers_per_block=size.layers_per_block,
        downsample_padding=1,
        mid_block_scale_factor=1,
        act_fn="silu",
        norm_num_groups=size.norm_groups or _group_norm_groups(size.unet_channels),
        norm_eps=1e-5,
        cross_attention_dim=size.cross_attention_dim,
        attention_head_dim=size.attention_head_dim,
        time_cond_proj_dim=size.time_cond_proj_dim,
    )


def _vae_config(size: SDSize) -> dict:
    n = len(size.vae_channels)
    return dict(
        in_channels=3,
        out_channels=3,
        down_block_types=tuple(["DownEncoderBlock2D"] * n),
        up_block_types=tuple(["UpDecoderBlock2D"] * n),
        block_out_channels=tuple(size.vae_channels),
        layers_per_block=size.layers_per_block,
        act_fn="silu",
        latent_channels=size.latent_channels,
        norm_num_groups=size.norm_groups or _group_norm_groups(size.vae_channels),
        sample_size=size.sample_size * size.vae_scale_factor,
        scaling_factor=0.18215,
    )


def _text_config(size: SDSize):
    from transformers import CLIPTextConfig

    # SD 1.5's text_encoder/config.json (openai/clip-vit-large-patch14's text tower), sizes from `size`
    return CLIPTextConfig(
        vocab_size=CLIP_VOCAB_SIZE,
        hidden_size=size.cross_attention_dim,
        intermediate_size=size.text_intermediate,
        num_hidden_layers=size.text_layers,
        num_attention_heads=size.text_heads,
        max_position_embeddings=TEXT_MAX_LENGTH,
        hidden_act="quick_gelu",
        layer_norm_eps=1e-5,
        projection_dim=size.cross_attention_dim,
        initializer_factor=1.0,
        initializer_range=0.02,
        bos_token_id=0,
        eos_token_id=2,
        pad_token_id=1,
    )


def _save_text_encoder(model, out: Path) -> None:
    """Save CLIPTextModel with SD 1.5's key names.

    transformers 5 saves the weights without the ``text_model.`` prefix, which transformers 4.x then
    does not match and silently replaces with random weights. Real SD 1.5 folders carry the prefix, and
    transformers 5 loads either, so write the prefixed names.
    """
    from safetensors.torch import save_file

    model.save_pretrained(out, safe_serialization=True)
    for f in out.glob("*.safetensors"):
        f.unlink()
    (out / "model.safetensors.index.json").unlink(missing_ok=True)
    state = {}
    for k, v in model.state_dict().items():
        key = k if k.startswith("text_model.") else "text_model." + k
        state[key] = v.detach().contiguous().clone()
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})


def _make_scheduler(scheduler_config: dict | None):
    import diffusers

    if scheduler_config is None:
        cfg = dict(SD15_SCHEDULER_CONFIG)
    else:
        cfg = dict(scheduler_config)
    name = cfg.pop("_class_name", None) or "PNDMScheduler"
    cfg.pop("_diffusers_version", None)
    cls = getattr(diffusers, name, None)
    if cls is None or not hasattr(cls, "from_config") or not name.endswith("Scheduler"):
        raise ValueError(f"scheduler_config: '_class_name' must name a diffusers scheduler class "
                         f"(e.g. 'PNDMScheduler', 'EulerDiscreteScheduler'), got {name!r}")
    if scheduler_config is not None and name == "PNDMScheduler":
        # a partial override of the SD 1.5 PNDM config keeps the rest of it
        cfg = {**{k: v for k, v in SD15_SCHEDULER_CONFIG.items() if k != "_class_name"}, **cfg}
    return cls.from_config(cfg)


def _build_components(size: SDSize, seed: int):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    # one fixed seed per network, so changing one network's size leaves the others' weights alone
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(**_unet_config(size)).eval()
        torch.manual_seed(seed + 1)
        vae = AutoencoderKL(**_vae_config(size)).eval()
        torch.manual_seed(seed + 2)
        text_encoder = CLIPTextModel(_text_config(size)).eval()
    return unet, vae, text_encoder


_COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler", "safety_checker",
               "feature_extractor", "image_encoder", "model_index.json")


def write_sd_checkpoint(out_dir: str | os.PathLike, size: SDSize = TINY, seed: int = 0,
                        scheduler_config: dict | None = None) -> Path:
    """Write an SD 1.x diffusers folder with seeded random weights to ``out_dir`` and return its path.

    ``size.unet_in_channels == 8`` writes an InstructPix2Pix-style checkpoint (model_index names
    ``StableDiffusionInstructPix2PixPipeline``). ``scheduler_config`` is a diffusers scheduler config;
    its ``_class_name`` picks the class (default SD 1.5's PNDM config; a dict without ``_class_name``
    overrides keys of that PNDM config).

    The folder is built next to ``out_dir`` and moved into place, so a failure leaves nothing half
    written. ``out_dir`` may be missing, empty, or a previous checkpoint (whose model files are
    replaced; other files such as ``embeddings/`` stay); any other non-empty folder is refused.
    """
    from diffusers import StableDiffusionInstructPix2PixPipeline, StableDiffusionPipeline

    if not isinstance(size, SDSize):
        raise TypeError(f"size must be an SDSize, got {type(size).__name__}")
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"out_dir {str(out)!r} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not (out / "model_index.json").is_file():
        raise FileExistsError(f"out_dir {str(out)!r} is a non-empty folder that is not an SD checkpoint; "
                              f"refusing to write into it")
    out.parent.mkdir(parents=True, exist_ok=True)

    scheduler = _make_scheduler(scheduler_config)
    unet, vae, text_encoder = _build_components(size, seed)

    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        tokenizer_dir = write_clip_tokenizer(tmp / "tokenizer")
        from transformers import CLIPTokenizer
        tokenizer = CLIPTokenizer.from_pretrained(tokenizer_dir)

        cls = StableDiffusionInstructPix2PixPipeline if size.is_pix2pix else StableDiffusionPipeline
        pipe = cls(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
        # save the networks and model_index.json; the tokenizer we wrote ourselves (real-vocab files)
        pipe.save_pretrained(tmp / "_pipe", safe_serialization=True)
        for name in ("unet", "vae", "scheduler", "model_index.json"):
            (tmp / "_pipe" / name).rename(tmp / name)
        shutil.rmtree(tmp / "_pipe")
        _save_text_encoder(text_encoder, tmp / "text_encoder")
        index = json.loads((tmp / "model_index.json").read_text(encoding="utf-8"))
        index["safety_checker"] = [None, None]
        index["feature_extractor"] = [None, None]
        index["requires_safety_checker"] = False
        (tmp / "model_index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n",
                                              encoding="utf-8")
        _move_into_place(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _move_into_place(tmp: Path, out: Path) -> None:
    if not out.exists():
        tmp.rename(out)
        return
    if not any(out.iterdir()):
        out.rmdir()
        tmp.rename(out)
        return
    # a previous checkpoint: swap the model parts, keep anything else (e.g. embeddings/)
    for name in _COMPONENTS:
        old = out / name
        if old.is_dir():
            shutil.rmtree(old)
        elif old.exists():
            old.unlink()
    for item in tmp.iterdir():
        item.rename(out / item.name)


# ---------------------------------------------------------------------------- textual inversion
_TI_SUFFIXES = {"a1111": (".pt", ".bin"), "civitai": (".safetensors",),
                "diffusers": (".safetensors",), "diffusers-bin": (".bin",)}


def random_embedding(dim: int, n_vectors: int, seed: int) -> np.ndarray:
    """``[n_vectors, dim]`` float32 Gaussian vectors scaled like CLIP token embeddings (std 0.015)."""
    if int(dim) <= 0 or int(n_vectors) <= 0:
        raise ValueError(f"random_embedding: dim and n_vectors must be positive, got {dim}, {n_vectors}")
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((int(n_vectors), int(dim))) * 0.015).astype(np.float32)


def write_textual_inversion(path: str | os.PathLike, vectors: np.ndarray | torch.Tensor, token: str,
                            fmt: str) -> Path:
    """Write a textual-inversion embedding file and return its path.

    ``fmt``:
      - ``"a1111"``: ``.pt`` via ``torch.save`` of ``{"string_to_token": {"*": 265}, "string_to_param":
        {"*": tensor[n, dim]}, "name": token, "step": 0, "sd_checkpoint": None, "sd_checkpoint_name": None}``
      - ``"civitai"``: ``.safetensors`` with ``{"emb_params": tensor[n, dim]}``
      - ``"diffusers"``: ``learned_embeds.safetensors`` with ``{token: tensor[dim]}`` (``[n, dim]`` when
        several vectors)
      - ``"diffusers-bin"``: ``learned_embeds.bin``, ``torch.save`` of that same dict

    ``path`` is the file to write, or a folder (an existing one, or a path without a suffix) in which
    the format's usual file name is used (``<token>.pt``, ``<token>.safetensors``, ``learned_embeds.*``).
    """
    from safetensors.torch import save_file

    if fmt not in _TI_SUFFIXES:
        raise ValueError(f"fmt must be one of {sorted(_TI_SUFFIXES)}, got {fmt!r}")
    if not isinstance(token, str) or not token.strip():
        raise ValueError(f"token must be a non-empty string, got {token!r}")
    t = torch.as_tensor(np.asarray(vectors.detach().cpu() if isinstance(vectors, torch.Tensor) else vectors))
    if t.ndim == 1:
        t = t[None]
    if t.ndim != 2 or t.shape[0] < 1 or t.shape[1] < 1:
        raise ValueError(f"vectors must have shape [dim] or [n_vectors, dim], got {list(t.shape)}")
    if not torch.is_floating_point(t):
        raise ValueError(f"vectors must be floating point, got {t.dtype}")
    t = t.to(torch.float32).contiguous().clone()

    p = Path(path)
    stem = token.strip("<>").replace("/", "_") or "embedding"
    if p.is_dir() or p.suffix == "":
        name = {"a1111": f"{stem}.pt", "civitai": f"{stem}.safetensors",
                "diffusers": "learned_embeds.safetensors", "diffusers-bin": "learned_embeds.bin"}[fmt]
        p = p / name
    elif p.suffix not in _TI_SUFFIXES[fmt]:
        raise ValueError(f"path {str(p)!r}: a {fmt!r} embedding file ends in {' or '.join(_TI_SUFFIXES[fmt])}")
    p.parent.mkdir(parents=True, exist_ok=True)

    with atomic_file(p) as tmp:
        if fmt == "a1111":
            torch.save({"string_to_token": {"*": 265}, "string_to_param": {"*": t}, "name": token,
                        "step": 0, "sd_checkpoint": None, "sd_checkpoint_name": None}, tmp)
        elif fmt == "civitai":
            save_file({"emb_params": t}, str(tmp))
        else:
            value = t[0].clone() if t.shape[0] == 1 else t
            if fmt == "diffusers":
                save_file({token: value}, str(tmp))
            else:
                torch.save({token: value}, tmp)
    return p


# -------------------------------------------------------------------------------------------- CLI
POSITIVE_TOKEN = "<midjourney-style>"
NEGATIVE_TOKEN = "<wrong>"


def write_demo_embeddings(out_dir: str | os.PathLike, dim: int, seed: int = 0) -> dict[str, Path]:
    """The demo's learned tokens in ``out_dir``: ``<midjourney-style>`` (A1111, 3 vectors) and
    ``<wrong>`` (Civitai, 2 vectors)."""
    d = Path(out_dir)
    return {
        POSITIVE_TOKEN: write_textual_inversion(d / "midjourney-style.pt", random_embedding(dim, 3, seed + 1000),
                                                POSITIVE_TOKEN, "a1111"),
        NEGATIVE_TOKEN: write_textual_inversion(d / "wrong.safetensors", random_embedding(dim, 2, seed + 2000),
                                                NEGATIVE_TOKEN, "civitai"),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m fashiongen.random_checkpoints.sd",
        description="Write a Stable Diffusion 1.x checkpoint with seeded random weights in the diffusers "
                    "folder format (unet, vae, text_encoder, tokenizer with the real CLIP vocabulary, "
                    "scheduler, model_index.json), loadable by StableDiffusionPipeline.from_pretrained.")
    parser.add_argument("--out", required=True, type=Path, help="folder to write the checkpoint into")
    parser.add_argument("--full-size", action="store_true",
                        help="the real SD 1.5 architecture (~4 GB fp32, for benchmarks) instead of a tiny one")
    parser.add_argument("--pix2pix", action="store_true",
                        help="an 8-channel InstructPix2Pix-style UNet (StableDiffusionInstructPix2PixPipeline)")
    parser.add_argument("--seed", type=int, default=0, help="weight seed (same seed, same bytes; default 0)")
    parser.add_argument("--with-embeddings", action="store_true",
                        help=f"also write learned tokens into OUT/embeddings/: {POSITIVE_TOKEN} (A1111 .pt, "
                             f"3 vectors) and {NEGATIVE_TOKEN} (Civitai .safetensors, 2 vectors)")
    args = parser.parse_args(argv)
    if args.seed < 0:
        parser.error(f"--seed must be non-negative, got {args.seed}")

    size = FULL_SD15 if args.full_size else TINY
    if args.pix2pix:
        size = SDSize(**{**size.__dict__, "unet_in_channels": 2 * size.latent_channels})
    t0 = time.perf_counter()
    try:
        out = write_sd_checkpoint(args.out, size=size, seed=args.seed)
        written = [str(out)]
        if args.with_embeddings:
            embs = write_demo_embeddings(out / "embeddings", size.cross_attention_dim, args.seed)
            written += [f"{tok}: {p}" for tok, p in embs.items()]
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {', '.join(written)} in {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

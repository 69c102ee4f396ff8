"""Tiny autoencoders (diffusers' ``AutoencoderTiny``, TAESD's architecture) with seeded random weights, written
in TAESD's diffusers layout (``config.json`` + ``diffusion_pytorch_model.safetensors``, as madebyollin/taesd)."""
from __future__ import annotations

import os
from pathlib import Path

import torch

#: The size keys a tiny VAE's config may set (``train-tiny-vae --config``); the rest are AutoencoderTiny's defaults.
SIZE_KEYS = ("encoder_block_out_channels", "decoder_block_out_channels", "num_encoder_blocks", "num_decoder_blocks")

#: TAESD's own size (diffusers' defaults): 64 channels, (1, 3, 3, 3) encoder and (3, 3, 3, 1) decoder blocks.
TAESD = {"encoder_block_out_channels": (64, 64, 64, 64), "decoder_block_out_channels": (64, 64, 64, 64),
         "num_encoder_blocks": (1, 3, 3, 3), "num_decoder_blocks": (3, 3, 3, 1)}

#: A test size: the same four levels (downscale 8, as SD's VAE), 16 channels, one block a level.
TINY_TAESD = {"encoder_block_out_channels": (16, 16, 16, 16), "decoder_block_out_channels": (16, 16, 16, 16),
              "num_encoder_blocks": (1, 1, 1, 1), "num_decoder_blocks": (1, 1, 1, 1)}


def build_tiny_vae(size: dict = TINY_TAESD, seed: int = 0, latent_channels: int = 4):
    """An AutoencoderTiny of ``size`` (keys of :data:`SIZE_KEYS`) with weights drawn from ``seed``."""
    from diffusers import AutoencoderTiny

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return AutoencoderTiny(**{k: tuple(v) for k, v in size.items()}, latent_channels=latent_channels).eval()


def write_tiny_vae(out_dir: str | os.PathLike, size: dict = TINY_TAESD, seed: int = 0,
                   latent_channels: int = 4) -> Path:
    """Write a seeded random AutoencoderTiny folder to ``out_dir``; return its path."""
    out = Path(out_dir)
    build_tiny_vae(size, seed, latent_channels).save_pretrained(out, safe_serialization=True)
    return out

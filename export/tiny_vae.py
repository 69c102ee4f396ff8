"""``fashiongen export --tiny-vae DIR``: a diffusers ``AutoencoderTiny`` (TAESD) beside the full VAE.

The folder is TAESD's diffusers layout (``config.json`` with ``_class_name: AutoencoderTiny`` and
``diffusion_pytorch_model.safetensors``, e.g. madebyollin/taesd or what ``fashiongen train-tiny-vae`` writes).
Its decoder and encoder become the networks ``vae_decoder_tiny`` and ``vae_encoder_tiny`` of the engine folder,
with the full VAE's I/O contract, each validated against PyTorch like every other network:

- ``vae_decoder_tiny`` is what diffusers' StableDiffusionPipeline computes with ``pipe.vae = AutoencoderTiny``:
  ``vae.decode(latents / vae.config.scaling_factor)`` (1.0 for TAESD, whose latents are SD's scaled ones), an
  image in about [-1, 1] that the runtime clamps as diffusers' image processor does.
- ``vae_encoder_tiny`` keeps the full encoder's contract, the *unscaled* latent mean that InstructPix2Pix
  conditions on: TAESD's encoder predicts the scaled latent, so its output is divided by the checkpoint's
  ``scaling_factor``. (diffusers' InstructPix2Pix pipeline with ``vae = AutoencoderTiny`` feeds TAESD's scaled
  latent unchanged, 1/scaling_factor = 5.5x weaker image conditioning than the model was trained on; we do not.)

Refused in one line, before the checkpoint loads: a folder that is not an AutoencoderTiny, a latent-channel
count or downscale other than the checkpoint's VAE's.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from fashiongen.runtime.contracts import VAE_DECODER_TINY, VAE_ENCODER_TINY
from fashiongen.runtime.errors import InputError
from fashiongen.runtime.manifest import NetworkEntry, sha256_file

from .onnx_export import VaeDecoderNet, export_network_entry, seeded_feeds

ARG = "--tiny-vae"
CLASS_NAME = "AutoencoderTiny"
WEIGHTS = "diffusion_pytorch_model.safetensors"
TINY_VAE_STAGES = 2  # two networks


class TinyVaeEncoderNet(torch.nn.Module):
    def __init__(self, tiny, checkpoint_scaling_factor: float):
        super().__init__()
        self.tiny = tiny
        self.checkpoint_scaling_factor = float(checkpoint_scaling_factor)

    def forward(self, image):
        return self.tiny.encode(image, return_dict=False)[0] / self.checkpoint_scaling_factor


def read_tiny_config(folder: Path, arg: str = ARG) -> dict:
    """The folder's ``config.json``, checked to be an AutoencoderTiny with weights; one-line InputError else."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{arg}: '{folder}' is not a folder (a diffusers AutoencoderTiny folder is expected)")
    config_file = folder / "config.json"
    try:
        config = json.loads(config_file.read_text())
    except OSError:
        hint = f"; a train-tiny-vae run folder? its model is '{folder / 'model'}'" \
            if (folder / "model" / "config.json").is_file() else ""
        raise InputError(f"{arg}: '{folder}' has no config.json (not a diffusers AutoencoderTiny folder{hint})") \
            from None
    except json.JSONDecodeError as exc:
        raise InputError(f"{arg}: '{config_file}' is not JSON ({exc.msg}, line {exc.lineno})") from None
    name = config.get("_class_name") if isinstance(config, dict) else None
    if name != CLASS_NAME:
        raise InputError(f"{arg}: '{folder}' is not a diffusers {CLASS_NAME} folder (its config.json names "
                         f"{name!r}; TAESD's diffusers layout, e.g. madebyollin/taesd, is expected)")
    if not (folder / WEIGHTS).is_file():
        raise InputError(f"{arg}: '{folder}' has no {WEIGHTS} (only safetensors weights are read)")
    return config


def tiny_geometry(config: dict) -> dict[str, int]:
    """Latent channels and the decoder's and encoder's downscale, from an AutoencoderTiny config (its defaults
    where a key is left out, as diffusers fills them)."""
    import inspect

    from diffusers import AutoencoderTiny

    params = {k: p.default for k, p in inspect.signature(AutoencoderTiny.__init__).parameters.items()
              if p.default is not inspect.Parameter.empty}
    full = {**params, **{k: v for k, v in config.items() if k in params}}
    return {"latent_channels": int(full["latent_channels"]),
            "decoder_downscale": int(full["upsampling_scaling_factor"]) ** (len(full["decoder_block_out_channels"]) - 1),
            "encoder_downscale": 2 ** (len(full["encoder_block_out_channels"]) - 1)}


def check_tiny_vae(folder: Path, checkpoint_vae_config: dict, arg: str = ARG) -> dict:
    """Refuse, in one line naming ``arg`` and both numbers, a tiny VAE whose latent space is not the
    checkpoint's (channels) or whose images are not the same size (downscale). Returns the tiny config."""
    config = read_tiny_config(folder, arg)
    geometry = tiny_geometry(config)
    channels = int(checkpoint_vae_config.get("latent_channels", 4))
    if geometry["latent_channels"] != channels:
        raise InputError(f"{arg}: '{folder}' has {geometry['latent_channels']} latent channels, the checkpoint's VAE "
                         f"has {channels}; a tiny VAE must share the checkpoint's latent space")
    down = 2 ** (len(checkpoint_vae_config.get("block_out_channels", (64,))) - 1)
    for part in ("decoder", "encoder"):
        if geometry[f"{part}_downscale"] != down:
            raise InputError(f"{arg}: '{folder}': its {part} scales images by {geometry[f'{part}_downscale']}, the "
                             f"checkpoint's VAE by {down}")
    return config


def load_tiny_vae(folder: Path, arg: str = ARG):
    from diffusers import AutoencoderTiny

    read_tiny_config(folder, arg)
    try:
        return AutoencoderTiny.from_pretrained(folder, local_files_only=True).eval()
    except (OSError, ValueError, TypeError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"{arg}: cannot load '{folder}': {first}") from None


def export_tiny_vae(folder: Path, checkpoint_scaling_factor: float, dims: dict[str, int], down: int, out_dir: Path,
                    opset: int, progress) -> tuple[dict[str, NetworkEntry], dict]:
    """Export the tiny decoder and encoder into ``out_dir``; their manifest entries and the ``vae.tiny`` section.

    Traced at batch 2 and odd latent sizes, checked at batch 1 and another size (as the full VAE)."""
    tiny = load_tiny_vae(folder)
    c = dims["latent_channels"]
    plan = [
        (VAE_DECODER_TINY, VaeDecoderNet(tiny), {"latent": (2, c, 9, 7)}, {"latent": (1, c, 8, 6)}),
        (VAE_ENCODER_TINY, TinyVaeEncoderNet(tiny, checkpoint_scaling_factor),
         {"image": (2, 3, 9 * down, 7 * down)}, {"image": (1, 3, 8 * down, 6 * down)}),
    ]
    entries = {}
    for contract, module, trace, check in plan:
        progress.set_description(f"export {contract.name}")
        entries[contract.name] = export_network_entry(
            module, contract, seeded_feeds(contract, trace, 0), seeded_feeds(contract, check, 1), dims,
            out_dir / f"{contract.name}.onnx", opset)
        progress.update(1)
    section = {"folder": str(Path(folder).absolute()), "sha256": sha256_file(Path(folder) / WEIGHTS),
               "scaling_factor": float(tiny.config.scaling_factor),
               "encoder_divided_by": float(checkpoint_scaling_factor),
               "config": {k: v for k, v in tiny.config.items() if not k.startswith("_")}}
    return entries, section

"""``fashiongen export``: a local Stable Diffusion 1.x checkpoint folder to an engine folder.

Stages: load the checkpoint (local files only), merge LoRA files into the UNet and the text encoder (see
:mod:`.lora`), bake learned tokens into tokenizer and text encoder,
export ``text_encoder``, ``unet``, ``vae_decoder``, ``vae_encoder`` (each validated against PyTorch at a
shape other than the one traced), write ``tokenizer.json`` and ``manifest.json``. Everything is built in
a temporary folder beside the destination and renamed into place only when complete.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # export never reaches for a model hub

import numpy as np
import torch
from tqdm.auto import tqdm

from fashiongen.runtime.contracts import GUIDANCE_DIM, TEXT_ENCODER, VAE_DECODER, VAE_ENCODER, network_contract
from fashiongen.runtime.errors import InputError
from fashiongen.runtime.files import staged_folder
from fashiongen.runtime.manifest import (MANIFEST_NAME, Manifest, NetworkEntry, TokenizerSection, VaeSection,
                                         write_json_atomic)
from fashiongen.runtime.denoise import check_guidance
from fashiongen.runtime.presets import DEFAULT_PRESET, recommend_fast

from .embeddings import LearnedEmbedding, bake_embeddings
from .lora import LoraFile, merge_loras
from .onnx_export import DEFAULT_OPSET, VaeDecoderNet, export_network_entry, seeded_feeds
from .segformer_export import SEGMENTER_STAGES, export_segmenter
from .tiny_vae import TINY_VAE_STAGES, check_tiny_vae, export_tiny_vae

REQUIRED = ("model_index.json", "unet/config.json", "vae/config.json", "text_encoder/config.json",
            "tokenizer", "scheduler/scheduler_config.json")


class CheckpointError(InputError):
    """A checkpoint folder that is missing or lacks a part; the message names the path."""


# -- wrappers: each network's forward in the contract's terms ------------------------------------------
class TextEncoderNet(torch.nn.Module):
    def __init__(self, text_encoder):
        super().__init__()
        self.text_encoder = text_encoder

    def forward(self, input_ids):
        return self.text_encoder(input_ids.long(), return_dict=False)[0]


class UNetNet(torch.nn.Module):
    def __init__(self, unet):
        super().__init__()
        self.unet = unet

    def forward(self, sample, timestep, encoder_hidden_states):
        return self.unet(sample, timestep, encoder_hidden_states, return_dict=False)[0]


class GuidedUNetNet(UNetNet):
    """A UNet distilled with a guidance embedding (``time_cond_proj_dim``): it takes ``timestep_cond`` too."""

    def forward(self, sample, timestep, timestep_cond, encoder_hidden_states):
        return self.unet(sample, timestep, encoder_hidden_states, timestep_cond=timestep_cond, return_dict=False)[0]


class VaeEncoderNet(torch.nn.Module):
    def __init__(self, vae):
        super().__init__()
        self.vae = vae

    def forward(self, image):
        return self.vae.encode(image).latent_dist.mode()


# -- loading ------------------------------------------------------------------------------------------
def check_checkpoint(model_dir: Path) -> Path:
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise CheckpointError(f"--model: '{model_dir}' is not a folder (a local diffusers checkpoint is expected)")
    for part in REQUIRED:
        if not (model_dir / part).exists():
            raise CheckpointError(f"--model: '{model_dir}' lacks '{part}' (not a diffusers SD 1.x checkpoint folder)")
    for path in sorted(model_dir.rglob("*")):  # a folder copied away from the files its relative links name
        if path.is_symlink() and not path.exists():
            raise CheckpointError(f"--model: '{path}' is a link to a missing file ('{os.readlink(path)}'); copy the "
                                  "folder with its links resolved (cp -rL)")
    tokenizer = model_dir / "tokenizer"
    if not (has_content(tokenizer / "tokenizer.json") or all(has_content(tokenizer / name)
                                                               for name in ("vocab.json", "merges.txt"))):
        # transformers' CLIPTokenizer loads without them, silently, and reads every word as unknown
        raise CheckpointError(f"--model: '{tokenizer}' has no vocabulary (tokenizer.json, or vocab.json and "
                              "merges.txt): every prompt would read as unknown tokens")
    return model_dir


def has_content(path: Path) -> bool:
    return path.is_file() and path.stat().st_size > 0


def is_pix2pix_checkpoint(model_dir: Path) -> bool:
    """Whether the checkpoint's UNet takes twice its VAE's latent channels (the input image's latent beside the
    noisy one), read from the configs so that a wrong flag is refused before anything loads."""
    model_dir = check_checkpoint(model_dir)
    unet = json.loads((model_dir / "unet" / "config.json").read_text())
    vae = json.loads((model_dir / "vae" / "config.json").read_text())
    return unet.get("in_channels") == 2 * vae.get("latent_channels", 4)


def quiet_libraries() -> None:
    """Our own progress bar and errors say what happens; silence the libraries' chatter."""
    import diffusers
    import transformers

    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def load_checkpoint(model_dir: Path) -> dict:
    """The four parts of an SD 1.x folder, loaded from local files only."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    model_dir = check_checkpoint(model_dir)
    quiet_libraries()
    kw = {"local_files_only": True}
    try:
        parts = {
            "tokenizer": CLIPTokenizer.from_pretrained(model_dir / "tokenizer", **kw),
            "text_encoder": CLIPTextModel.from_pretrained(model_dir / "text_encoder", **kw).eval(),
            "unet": UNet2DConditionModel.from_pretrained(model_dir / "unet", **kw).eval(),
            "vae": AutoencoderKL.from_pretrained(model_dir / "vae", **kw).eval(),
        }
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0]
        raise CheckpointError(f"--model: cannot load '{model_dir}': {first}") from None
    parts["scheduler_config"] = json.loads((model_dir / "scheduler/scheduler_config.json").read_text())
    return parts


def checkpoint_dims(parts: dict) -> dict[str, int]:
    """The fixed sizes that resolve the contracts' dimension names for this checkpoint."""
    unet, vae, text_encoder, tokenizer = parts["unet"], parts["vae"], parts["text_encoder"], parts["tokenizer"]
    return {
        "unet_in_channels": unet.config.in_channels,
        "latent_channels": vae.config.latent_channels,
        "text_hidden": text_encoder.config.hidden_size,
        "text_length": tokenizer.model_max_length,
        "sample_size": unet.config.sample_size,
        # LCM-distilled UNets take a guidance-scale embedding of this size (none: the key is absent)
        **({GUIDANCE_DIM: unet.config.time_cond_proj_dim} if unet.config.time_cond_proj_dim is not None else {}),
    }


def vae_downscale(vae) -> int:
    return 2 ** (len(vae.config.block_out_channels) - 1)


# -- export -------------------------------------------------------------------------------------------
def _network_plan(parts: dict, dims: dict[str, int], down: int):
    """(contract, module, trace shapes, check shapes) per network.

    Traced at batch 2 and odd latent sizes (so the UNet keeps its explicit-size upsampling path, which
    every multiple of 8 then takes); checked at batch 1 and another size.
    """
    c, t, d = dims["latent_channels"], dims["text_length"], dims["text_hidden"]
    cin = dims["unet_in_channels"]
    trace, check = (2, 9, 7), (1, 8, 6)
    guidance = dims.get(GUIDANCE_DIM)
    unet_net = UNetNet(parts["unet"]) if guidance is None else GuidedUNetNet(parts["unet"])
    cond_trace = {} if guidance is None else {"timestep_cond": (2, guidance)}
    cond_check = {} if guidance is None else {"timestep_cond": (1, guidance)}
    def lat(b, h, w, ch=c): return (b, ch, h, w)
    def img(b, h, w): return (b, 3, h * down, w * down)
    return [
        (TEXT_ENCODER, TextEncoderNet(parts["text_encoder"]),
         {"input_ids": (2, t)}, {"input_ids": (3, t)}),
        (network_contract("unet", dims), unet_net,
         {"sample": lat(*trace, ch=cin), "timestep": (2,), "encoder_hidden_states": (2, t, d), **cond_trace},
         {"sample": lat(*check, ch=cin), "timestep": (1,), "encoder_hidden_states": (1, t, d), **cond_check}),
        (VAE_DECODER, VaeDecoderNet(parts["vae"]), {"latent": lat(*trace)}, {"latent": lat(*check)}),
        (VAE_ENCODER, VaeEncoderNet(parts["vae"]), {"image": img(*trace)}, {"image": img(*check)}),
    ]


def _feeds(contract, shapes, seed, vocab_size):
    feeds = seeded_feeds(contract, shapes, seed, int_high=vocab_size)
    if "timestep" in feeds:
        feeds["timestep"] = np.full(feeds["timestep"].shape, 500.0 + seed, dtype=np.float32)
    return feeds


def export_networks(parts: dict, dims: dict[str, int], down: int, out_dir: Path, opset: int,
                    progress) -> dict[str, NetworkEntry]:
    entries = {}
    vocab_size = parts["text_encoder"].config.vocab_size
    for contract, module, trace_shapes, check_shapes in _network_plan(parts, dims, down):
        progress.set_description(f"export {contract.name}")
        entries[contract.name] = export_network_entry(
            module, contract, _feeds(contract, trace_shapes, 0, vocab_size),
            _feeds(contract, check_shapes, 1, vocab_size), dims, out_dir / f"{contract.name}.onnx", opset)
        progress.update(1)
    return entries


def tokenizer_section(tokenizer, learned: dict[str, list[str]], out_dir: Path) -> TokenizerSection:
    """Save ``tokenizer.json`` (added tokens included) and describe how to frame and pad prompts.

    Written without indentation: CLIP's vocabulary and merges pretty-printed take 3.6 MB, compact 1.7 MB, and
    every engine folder holds one (the demo family ships four)."""
    from tokenizers import Tokenizer

    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save_pretrained(tmp)
        Tokenizer.from_file(str(Path(tmp) / "tokenizer.json")).save(str(out_dir / "tokenizer.json"), pretty=False)
    return TokenizerSection(file="tokenizer.json", model_max_length=tokenizer.model_max_length,
                            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                            pad_token_id=tokenizer.pad_token_id, learned_tokens=learned)


def versions() -> dict[str, str]:
    import diffusers
    import onnx
    import onnxruntime
    import transformers

    return {"torch": torch.__version__, "diffusers": diffusers.__version__, "transformers": transformers.__version__,
            "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__}


SD_STAGES = 6  # load, learned tokens, four networks


def export_sd(model_dir: Path, embeddings: list[LearnedEmbedding], stage: Path, manifest: Manifest,
              bar, loras: list[LoraFile] = (), tiny_vae_dir: Path | None = None) -> None:
    """Export an SD 1.x checkpoint (with its LoRAs merged, its learned tokens, and a tiny VAE beside its own)
    into ``stage``, filling in ``manifest``."""
    bar.set_description("load checkpoint")
    parts = load_checkpoint(model_dir)
    bar.update(1)
    if loras:
        bar.set_description("merge LoRA")
        manifest.source["loras"] = merge_loras({"unet": parts["unet"], "text_encoder": parts["text_encoder"]},
                                               list(loras))
        bar.update(1)
    bar.set_description("learned tokens")
    learned = bake_embeddings(parts["tokenizer"], parts["text_encoder"], list(embeddings))
    bar.update(1)
    dims = checkpoint_dims(parts)
    down = vae_downscale(parts["vae"])
    manifest.dims.update(dims)
    manifest.networks.update(export_networks(parts, dims, down, stage, manifest.opset, bar))
    manifest.kind = "pix2pix" if dims["unet_in_channels"] == 2 * dims["latent_channels"] else "txt2img"
    manifest.tokenizer = tokenizer_section(parts["tokenizer"], learned, stage)
    manifest.scheduler_config = parts["scheduler_config"]
    manifest.vae = VaeSection(scaling_factor=parts["vae"].config.scaling_factor, downscale=down)
    if tiny_vae_dir is not None:
        tiny_entries, manifest.vae.tiny = export_tiny_vae(tiny_vae_dir, parts["vae"].config.scaling_factor, dims,
                                                          down, stage, manifest.opset, bar)
        manifest.networks.update(tiny_entries)
    manifest.source["model"] = str(Path(model_dir).absolute())
    manifest.source["embeddings"] = [{"file": str(e.source), "token": e.token, "vectors": len(e.vectors)}
                                     for e in embeddings]
    fast = recommend_fast(manifest)  # an LCM-capable UNet: what `generate --preset fast` runs
    if fast is not None:
        manifest.presets["fast"] = fast


def export_engine_folder(out_dir: Path, model_dir: Path | None = None, embeddings: list[LearnedEmbedding] = (),
                         segmenter_dir: Path | None = None, opset: int = DEFAULT_OPSET,
                         progress: bool = True, loras: list[LoraFile] = (),
                         tiny_vae_dir: Path | None = None, guidance: float | None = None,
                         image_guidance: float | None = None) -> Manifest:
    """Write an engine folder with a diffusion pipeline, a segmenter, or both; returns its manifest.
    ``guidance`` (and, for an InstructPix2Pix checkpoint, ``image_guidance``): the scales the checkpoint samples
    best at, recorded as the folder's defaults (see :func:`fashiongen.runtime.presets.default_guidance`), so
    that a request without them gets what was measured best rather than diffusers' SD 1.5 values."""
    if model_dir is None and segmenter_dir is None:
        raise InputError("nothing to export: give --model CHECKPOINT_DIR and/or --segmenter DIR")
    if model_dir is None and embeddings:
        raise InputError("--embedding needs --model: learned tokens belong to a text encoder")
    if model_dir is None and loras:
        raise InputError("--lora needs --model: a LoRA is merged into a UNet and a text encoder")
    if model_dir is None and tiny_vae_dir is not None:
        raise InputError("--tiny-vae needs --model: a tiny VAE decodes a checkpoint's latents")
    if guidance is not None:
        if model_dir is None:
            raise InputError("--guidance needs --model: it is the guidance scale a checkpoint samples best at")
        check_guidance("--guidance", guidance)
    if image_guidance is not None:
        if model_dir is None or not is_pix2pix_checkpoint(model_dir):
            raise InputError("--image-guidance needs --model with an InstructPix2Pix checkpoint (its UNet takes the "
                             "input image's latent): only an edit has an image guidance scale")
        check_guidance("--image-guidance", image_guidance)
    if tiny_vae_dir is not None:  # refused before anything loads
        check_tiny_vae(tiny_vae_dir, json.loads((check_checkpoint(model_dir) / "vae/config.json").read_text()))
    total = (SD_STAGES + bool(loras) + (TINY_VAE_STAGES if tiny_vae_dir else 0) if model_dir else 0) + \
        (SEGMENTER_STAGES if segmenter_dir else 0)
    bar = tqdm(total=total, unit="stage", disable=not progress)
    with staged_folder(out_dir, MANIFEST_NAME, "an engine folder") as stage:
        manifest = Manifest(kind="segmenter", dims={}, networks={}, opset=opset, versions=versions())
        if model_dir is not None:
            export_sd(model_dir, embeddings, stage, manifest, bar, loras, tiny_vae_dir)
            recorded = {"guidance": guidance, "image_guidance": image_guidance}
            if any(v is not None for v in recorded.values()):
                manifest.presets[DEFAULT_PRESET] = {k: float(v) for k, v in recorded.items() if v is not None}
        if segmenter_dir is not None:
            export_segmenter(segmenter_dir, stage, manifest, bar)
        write_json_atomic(stage / MANIFEST_NAME, manifest.to_json())
    bar.close()
    return manifest


def export_pipeline(model_dir: Path, out_dir: Path, embeddings: list[LearnedEmbedding] = (),
                    opset: int = DEFAULT_OPSET, progress: bool = True, loras: list[LoraFile] = ()) -> Manifest:
    """Export an SD 1.x checkpoint alone (the common case)."""
    return export_engine_folder(out_dir, model_dir, embeddings, opset=opset, progress=progress, loras=loras)

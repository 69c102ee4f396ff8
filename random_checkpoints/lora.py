"""LoRA files with seeded random weights for a given UNet and text encoder, keyed as the real tools write them.

- ``fmt="kohya"``: sd-scripts / A1111 (``lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight``,
  ``.lora_up.weight``, ``.alpha``; the text encoder as ``lora_te_text_model_encoder_layers_0_mlp_fc1...``);
  LCM-LoRA (latent-consistency/lcm-lora-sdv1-5) is this layout, UNet only, every ``alpha`` equal to the rank.
- ``fmt="peft"``: diffusers' ``save_lora_weights`` (``unet.<module>.lora_A.weight`` / ``lora_B.weight``,
  ``text_encoder.text_model.<module>...``), the alphas as diffusers writes them (``alphas="metadata"``: peft's
  ``LoraConfig`` in the header's ``lora_adapter_metadata``), as ``<module>.alpha`` tensors (``alphas="keys"``), or
  not at all (``alphas=None``).

Targets, as the trainers pick them: ``"attention"`` (sd-scripts' LoRA: the UNet's transformer blocks with
proj_in / proj_out, the text encoder's attention and MLP), ``"locon"`` (also the ResNet convs, time-embedding
projections, shortcuts, down- and upsampler convs: sd-scripts' ``conv_dim``) and ``"lcm"`` (LCM-LoRA's target
list, the same modules, UNet only). At full SD 1.5 size, ``fmt="kohya", targets="lcm", rank=64, alpha=64`` in
fp16 writes 278 layers, 134.6 MB.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import torch

__all__ = ["lora_targets", "write_random_lora"]

_TEXT_TARGETS = re.compile(r"\.(self_attn\.(q|k|v|out)_proj|mlp\.fc[12])$")
_CONV_TARGETS = re.compile(r"\.(resnets\.\d+\.(conv1|conv2|conv_shortcut|time_emb_proj)|(down|up)samplers\.0\.conv)$")


def lora_targets(model: torch.nn.Module, network: str, targets: str = "attention") -> list[tuple[str, torch.nn.Module]]:
    """The modules of ``model`` a trainer of kind ``targets`` puts a LoRA on, with their names in ``model``."""
    if targets not in ("attention", "locon", "lcm"):
        raise ValueError(f"targets must be 'attention', 'locon' or 'lcm', got {targets!r}")
    out = []
    for name, module in model.named_modules():
        if not isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
            continue
        if network == "text_encoder":
            keep = bool(_TEXT_TARGETS.search(name))
        else:
            keep = ".attentions." in name or (targets != "attention" and bool(_CONV_TARGETS.search(name)))
        if keep:
            out.append((name.removeprefix("text_model."), module))
    return out


def write_random_lora(path: str | os.PathLike, models: dict[str, torch.nn.Module], fmt: str = "kohya",
                      targets: str = "attention", rank: int = 4, alpha: float | None = None,
                      conv_rank: int | None = None, conv_alpha: float | None = None, alphas: str | None = "keys",
                      seed: int = 0, std: float = 0.1, dtype: torch.dtype = torch.float32,
                      text_model_prefix: bool = True) -> Path:
    """Write a random LoRA for ``models`` (``{"unet": ..., "text_encoder": ...}``, either or both) to ``path``.

    ``rank`` / ``alpha`` are the linear layers' (``network_dim`` / ``network_alpha``), ``conv_rank`` /
    ``conv_alpha`` the 3x3 convs' (default: the same); ``alpha=None`` writes no alpha at all. For ``fmt="peft"``,
    ``alphas`` says where the alphas go: ``"metadata"``, ``"keys"`` or ``None``, and ``text_model_prefix=False``
    drops ``text_model.`` from the text encoder's names (diffusers saving a transformers 5 CLIPTextModel)."""
    if fmt not in ("kohya", "peft"):
        raise ValueError(f"fmt must be 'kohya' or 'peft', got {fmt!r}")
    gen = torch.Generator().manual_seed(seed)
    conv_rank, conv_alpha = conv_rank or rank, conv_alpha if conv_alpha is not None else alpha
    tensors: dict[str, torch.Tensor] = {}
    config: dict[str, dict] = {}
    for network, model in models.items():
        cfg = {"r": rank, "lora_alpha": alpha if alpha is not None else rank, "rank_pattern": {},
               "alpha_pattern": {}, "target_modules": [], "use_rslora": False, "use_dora": False, "lora_bias": False}
        for name, module in lora_targets(model, network, targets):
            weight = module.weight
            conv3 = weight.ndim == 4 and weight.shape[2:] != (1, 1)
            r, a = (conv_rank, conv_alpha) if conv3 else (rank, alpha)
            down = torch.randn((r, *weight.shape[1:]), generator=gen) * std
            up = torch.randn((weight.shape[0], r, *([1, 1] if weight.ndim == 4 else [])), generator=gen) * std
            if fmt == "kohya":
                prefix = "lora_unet_" if network == "unet" else "lora_te_"
                stem = prefix + (name if network == "unet" else "text_model." + name).replace(".", "_")
                keys = (f"{stem}.lora_down.weight", f"{stem}.lora_up.weight", f"{stem}.alpha")
            else:
                te_prefix = "text_model." if text_model_prefix else ""
                stem = f"{network}.{name if network == 'unet' else te_prefix + name}"
                keys = (f"{stem}.lora_A.weight", f"{stem}.lora_B.weight", f"{stem}.alpha")
            tensors[keys[0]], tensors[keys[1]] = down.to(dtype).contiguous(), up.to(dtype).contiguous()
            if a is not None and (fmt == "kohya" or alphas == "keys"):
                tensors[keys[2]] = torch.tensor(float(a), dtype=dtype)
            cfg["target_modules"].append(name)
            if r != rank:
                cfg["rank_pattern"][name] = r
            if a is not None and a != cfg["lora_alpha"]:
                cfg["alpha_pattern"][name] = a
        config[network] = cfg
    metadata = {"format": "pt"}
    if fmt == "peft" and alphas == "metadata":
        flat = {f"{net}.{k}": v for net, cfg in config.items() for k, v in cfg.items()}
        metadata["lora_adapter_metadata"] = json.dumps(flat, indent=2, sort_keys=True)
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata=metadata)
    return path

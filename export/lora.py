"""LoRA files merged into the UNet and the text encoder before export (``fashiongen export --lora FILE[=SCALE]``).

A file is data, never code: safetensors only (a ``.pt`` / ``.bin`` pickle is refused). Formats:

- **kohya / A1111** (sd-scripts' LoRA and LoCon, LCM-LoRA as latent-consistency ships it):
  ``lora_unet_<module>`` and ``lora_te_<module>`` (``lora_te1_``) keys with ``.lora_down.weight``,
  ``.lora_up.weight`` and optionally ``.alpha``, ``<module>`` being the diffusers / transformers module path
  with ``_`` for ``.``. Conv layers (LoCon: a 3x3 or 1x1 ``lora_down`` kernel, a 1x1 ``lora_up``) included.
- **diffusers / peft**: ``unet.<module>.lora_A.weight`` / ``.lora_B.weight`` (``text_encoder.`` likewise), the
  alphas either in the header's ``lora_adapter_metadata`` (peft's ``LoraConfig``: ``lora_alpha``, ``alpha_pattern``,
  ``use_rslora``, as diffusers' ``save_lora_weights`` writes them) or as ``<module>.alpha`` tensors (network
  alphas, the kohya convention).

Names are resolved against the model's own modules (its path, or that path with ``_`` for ``.``; with or without
transformers' ``text_model.``), never by rewriting strings. Each layer adds
``scale * alpha / rank * up @ down`` to its module's weight (``alpha / sqrt(rank)`` for rsLoRA), summed over all
files in float64 so that the order of the files does not matter. What a file leaves unsaid is what diffusers'
``load_lora_weights`` makes of it: a layer without an alpha gets the alpha the file states most often for that
network, or its rank (scale 1) where the file states none.
"""
from __future__ import annotations

import collections
import json
import math
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch

from fashiongen.runtime.errors import InputError
from fashiongen.runtime.manifest import sha256_file

NETWORKS = ("unet", "text_encoder")
SUPPORTED = "kohya / A1111 LoRA or LoCon (lora_down / lora_up), diffusers / peft LoRA (lora_A / lora_B)"
KOHYA_PREFIXES = {"lora_unet_": "unet", "lora_te_": "text_encoder", "lora_te1_": "text_encoder"}
KOHYA_PARTS = {"lora_down.weight": "down", "lora_up.weight": "up", "alpha": "alpha"}
PEFT_PARTS = {"lora_A.weight": "down", "lora_B.weight": "up", "alpha": "alpha"}

# What a key gives away about a format this does not merge (checked before anything else).
UNSUPPORTED = (
    (".hada_", "LoHa (LyCORIS hada_* keys)"),
    (".lokr_", "LoKr (LyCORIS lokr_* keys)"),
    (".dora_scale", "DoRA (dora_scale keys)"),
    (".lora_magnitude_vector", "DoRA (lora_magnitude_vector keys)"),
    (".lora_mid.", "LoCon with Tucker decomposition (lora_mid keys)"),
    (".boft_", "BOFT (boft_* keys)"),
    (".oft_", "OFT (oft_* keys)"),
    (".diff", "a LyCORIS full weight difference (.diff keys)"),
    (".w_norm", "LyCORIS norm layers (.w_norm keys)"),
    (".a1.weight", "GLoRA (.a1/.b1 keys)"),
    (".on_input", "(IA)^3 (on_input keys)"),
    (".lora_embedding_", "an embedding LoRA (lora_embedding_A/B keys)"),
    ("lora_te2_", "an SDXL LoRA (lora_te2_ keys: a second text encoder; this exports SD 1.x)"),
    (".lora_B.bias", "a LoRA with bias terms (lora_B.bias keys)"),
    (".lora_up.bias", "a LoRA with bias terms (lora_up.bias keys)"),
    (".lora.down.weight", "diffusers' old attention-processor LoRA (.lora.down keys); re-save it with diffusers"),
    ("_lora.down.weight", "diffusers' old attention-processor LoRA (to_q_lora keys); re-save it with diffusers"),
    (".lora_linear_layer.", "diffusers' old attention-processor LoRA (lora_linear_layer keys); re-save it with "
     "diffusers"),
)


class LoraError(InputError):
    """A LoRA file or argument that cannot be used; the message names the file (or argument)."""


@dataclass(frozen=True)
class LoraLayer:
    network: str        # "unet" | "text_encoder"
    name: str           # the module as the file names it
    down: torch.Tensor  # [rank, in] or [rank, in, kh, kw]
    up: torch.Tensor    # [out, rank] or [out, rank, 1, 1]
    alpha: float | None  # as the file states it

    @property
    def rank(self) -> int:
        return self.down.shape[0]


@dataclass
class LoraFile:
    path: Path
    scale: float
    format: str                                  # "kohya" | "peft"
    sha256: str
    layers: list[LoraLayer]
    config: dict[str, dict] = field(default_factory=dict)  # peft LoraConfig per network, from the header
    lcm: bool = False  # an LCM-LoRA (`export --lcm-lora`): the folder then samples in few LCM steps (--preset fast)

    def record(self, merged: dict[str, int]) -> dict:
        """The manifest's entry: which file, how strong, and what it changed (and ``lcm`` for an LCM-LoRA, which
        the runtime's fast preset reads; nothing in the weights tells an LCM-LoRA apart)."""
        return {"file": str(self.path), "sha256": self.sha256, "scale": self.scale, "format": self.format,
                "layers": merged, **({"lcm": True} if self.lcm else {})}


# -- the command line's FILE[=SCALE] ---------------------------------------------------------------------------
def parse_lora_arg(arg: str) -> tuple[Path, float]:
    """``FILE`` (scale 1) or ``FILE=SCALE``; a file whose own name holds ``=`` is taken as it is."""
    path, sep, scale = arg.rpartition("=")
    if not sep or Path(arg).is_file():
        return Path(arg), 1.0
    try:
        value = float(scale)
    except ValueError:
        raise LoraError(f"lora: '{arg}': the scale after '=' must be a number (FILE[=SCALE])") from None
    return Path(path), value


# -- reading ---------------------------------------------------------------------------------------------------
def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
            return {k: f.get_tensor(k) for k in f.keys()}, header
    except Exception as exc:  # safetensors raises its own error types
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise LoraError(f"lora: '{path}' is not a safetensors file ({reason}); LoRAs are read as data only, so "
                        "pickles (.pt, .bin, .ckpt) are refused: convert it to .safetensors") from None


def _unsupported(path: Path, keys: list[str]) -> None:
    for needle, what in UNSUPPORTED:
        if any(needle in k for k in keys):
            raise LoraError(f"lora: '{path}' is {what}: not supported (supported: {SUPPORTED})")


def _split(path: Path, key: str, parts: dict[str, str], fmt: str) -> tuple[str, str]:
    for suffix, part in parts.items():
        if key.endswith("." + suffix):
            return key[: -len(suffix) - 1], part
    raise LoraError(f"lora: '{path}': key '{key}' is not part of a {fmt} LoRA (expected "
                    f"{', '.join('.' + s for s in parts)})")


def _layers(path: Path, entries: dict[tuple[str, str], dict], down: str, up: str) -> list[LoraLayer]:
    layers = []
    for (network, name), parts in entries.items():
        missing = [label for label, part in ((down, "down"), (up, "up")) if part not in parts]
        if missing:
            raise LoraError(f"lora: '{path}': layer '{name}' has no {missing[0]} weight")
        alpha = parts.get("alpha")
        if alpha is not None:
            if alpha.numel() != 1 or not math.isfinite(float(alpha.reshape(-1)[0])):
                raise LoraError(f"lora: '{path}': the alpha of layer '{name}' must be one finite number")
            alpha = float(alpha.reshape(-1)[0])
        layers.append(LoraLayer(network, name, parts["down"], parts["up"], alpha))
    return layers


def _kohya_layers(path: Path, tensors: dict[str, torch.Tensor]) -> list[LoraLayer]:
    entries: dict[tuple[str, str], dict] = {}
    for key, value in tensors.items():
        stem, part = _split(path, key, KOHYA_PARTS, "kohya")
        prefix = next(p for p in KOHYA_PREFIXES if stem.startswith(p))
        entries.setdefault((KOHYA_PREFIXES[prefix], stem[len(prefix):]), {})[part] = value
    return _layers(path, entries, "lora_down", "lora_up")


def _peft_layers(path: Path, tensors: dict[str, torch.Tensor]) -> list[LoraLayer]:
    entries: dict[tuple[str, str], dict] = {}
    for key, value in tensors.items():
        network, _, rest = key.partition(".")
        if network not in NETWORKS:
            raise LoraError(f"lora: '{path}': key '{key}' names neither 'unet.' nor 'text_encoder.' (the diffusers "
                            "LoRA layout prefixes each key with its network)")
        name, part = _split(path, rest, PEFT_PARTS, "diffusers / peft")
        entries.setdefault((network, name), {})[part] = value
    return _layers(path, entries, "lora_A", "lora_B")


def _peft_config(path: Path, header: dict[str, str]) -> dict[str, dict]:
    """diffusers' ``lora_adapter_metadata`` header (``{"unet.lora_alpha": 8, ...}``) as a config per network."""
    raw = header.get("lora_adapter_metadata")
    if not raw:
        return {}
    try:
        flat = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise LoraError(f"lora: '{path}': its lora_adapter_metadata is not JSON ({exc})") from None
    config = {net: {k[len(net) + 1:]: v for k, v in flat.items() if k.startswith(net + ".")} for net in NETWORKS}
    for net, cfg in config.items():
        if cfg.get("use_dora"):
            raise LoraError(f"lora: '{path}' is DoRA (use_dora in its {net} config): not supported "
                            f"(supported: {SUPPORTED})")
        if cfg.get("lora_bias"):
            raise LoraError(f"lora: '{path}' is a LoRA with bias terms (lora_bias in its {net} config): not "
                            f"supported (supported: {SUPPORTED})")
        if cfg.get("fan_in_fan_out"):
            raise LoraError(f"lora: '{path}': fan_in_fan_out weights (its {net} config) are not supported")
    return {net: cfg for net, cfg in config.items() if cfg}


def read_lora(path: Path, scale: float = 1.0) -> LoraFile:
    """Read and classify one LoRA file (no model needed); refuse what cannot be merged, naming the format."""
    path = Path(path)
    if not math.isfinite(scale):
        raise LoraError(f"lora: '{path}': the scale must be a finite number (got {scale})")
    if not path.is_file():
        raise LoraError(f"lora: file '{path}' does not exist")
    tensors, header = _read_safetensors(path)
    keys = list(tensors)
    if not keys:
        raise LoraError(f"lora: '{path}' holds no tensors")
    _unsupported(path, keys)
    if all(k.startswith(tuple(KOHYA_PREFIXES)) for k in keys):
        fmt, layers, config = "kohya", _kohya_layers(path, tensors), {}
    elif any(".lora_A." in k for k in keys):
        fmt, layers, config = "peft", _peft_layers(path, tensors), _peft_config(path, header)
        if config and any(layer.alpha is not None for layer in layers):
            raise LoraError(f"lora: '{path}' states its alphas twice (.alpha keys and lora_adapter_metadata)")
    else:
        raise LoraError(f"lora: '{path}' is not a LoRA file this reads (first key '{keys[0]}'; supported: "
                        f"{SUPPORTED})")
    return LoraFile(path, float(scale), fmt, sha256_file(path), layers, config)


# -- resolving and merging -------------------------------------------------------------------------------------
def module_index(model: torch.nn.Module, network: str) -> dict[str, list[str]]:
    """Each Linear / Conv2d of ``model`` under every name a LoRA file may give it: its path and kohya's spelling
    of it (``_`` for ``.``), with and without transformers' ``text_model.`` (CLIPTextModel nests its layers under
    ``text_model`` in transformers 4, not in 5). A name that two modules share lists both (and is refused)."""
    index: dict[str, list[str]] = collections.defaultdict(list)
    for name, module in model.named_modules():
        if not isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
            continue
        base = name.removeprefix("text_model.")
        aliases = {base, base.replace(".", "_")}
        if network == "text_encoder":
            aliases |= {"text_model." + base, "text_model_" + base.replace(".", "_")}
        for alias in aliases:
            index[alias].append(name)
    return index


def _pattern_key(patterns: dict, name: str) -> str | None:
    """peft's rule for ``rank_pattern`` / ``alpha_pattern``: the first key that matches the end of the name."""
    for key in patterns:
        if re.match(rf"(.*\.)?({key})$", name):
            return key
    return None


def _alpha_factors(lora: LoraFile, network: str, layers: list[tuple[LoraLayer, str]]) -> list[float]:
    """``alpha / rank`` (or ``alpha / sqrt(rank)``) for each resolved layer of one network."""
    config = lora.config.get(network)
    if config is not None:  # peft's LoraConfig, as diffusers builds it from the header
        default, patterns = config.get("lora_alpha", 8), config.get("alpha_pattern") or {}
        root = (math.sqrt if config.get("use_rslora") else float)
        factors = []
        for layer, module in layers:
            names = [module, "text_model." + module] if network == "text_encoder" else [module]
            key = next((k for k in (_pattern_key(patterns, n) for n in names) if k is not None), None)
            factors.append((patterns[key] if key is not None else default) / root(layer.rank))
        return factors
    stated = [layer.alpha for layer, _ in layers if layer.alpha is not None]
    common = collections.Counter(stated).most_common(1)[0][0] if stated else None
    return [(layer.alpha if layer.alpha is not None else (common if common is not None else layer.rank)) / layer.rank
            for layer, _ in layers]


def _check_fit(lora: LoraFile, layer: LoraLayer, weight: torch.Tensor) -> None:
    down, up = layer.down, layer.up
    fits = (down.ndim == up.ndim == weight.ndim and up.shape[0] == weight.shape[0]
            and up.shape[1] == down.shape[0] and down.shape[1:] == weight.shape[1:]
            and all(k == 1 for k in up.shape[2:]))
    if not fits:
        raise LoraError(f"lora: '{lora.path}': layer '{layer.name}' (down {list(down.shape)}, up {list(up.shape)}) "
                        f"does not fit the {layer.network}'s weight {list(weight.shape)}: a LoRA for another model?")


def _delta(layer: LoraLayer, shape: torch.Size) -> torch.Tensor:
    """``up @ down`` in the weight's shape (a conv: the 1x1 ``up`` kernel composed with ``down``'s), float64."""
    down, up = layer.down.to(torch.float64), layer.up.to(torch.float64)
    return (up.reshape(up.shape[0], -1) @ down.reshape(down.shape[0], -1)).reshape(shape)


def _resolve(lora: LoraFile, models: dict[str, torch.nn.Module]) -> dict[str, list[tuple[LoraLayer, str]]]:
    indexes = {net: module_index(model, net) for net, model in models.items()}
    resolved: dict[str, list[tuple[LoraLayer, str]]] = {net: [] for net in models}
    unmatched = []
    for layer in lora.layers:
        found = indexes[layer.network].get(layer.name, [])
        if len(found) > 1:
            raise LoraError(f"lora: '{lora.path}': layer '{layer.name}' could be any of {found} in the "
                            f"{layer.network}")
        if found:
            resolved[layer.network].append((layer, found[0]))
        else:
            unmatched.append(layer)
    if len(unmatched) == len(lora.layers):
        raise LoraError(f"lora: '{lora.path}': none of its {len(lora.layers)} layers matches a module of this "
                        f"checkpoint's UNet or text encoder (first: {unmatched[0].network} '{unmatched[0].name}'): "
                        "a LoRA for another model?")
    if unmatched:
        warnings.warn(f"lora: '{lora.path}': {len(unmatched)} of its {len(lora.layers)} layers match nothing in this "
                      f"checkpoint and are skipped (first: {unmatched[0].network} '{unmatched[0].name}')",
                      stacklevel=2)
    return resolved


def merge_loras(models: dict[str, torch.nn.Module], loras: list[LoraFile]) -> list[dict]:
    """Add every file's layers to ``models`` (``{"unet": ..., "text_encoder": ...}``) in place.

    Every file is checked before any weight changes. A module's updates from all files are summed in float64 and
    added at once (one module's float64 sum in memory at a time: a full-size UNet's would be gigabytes). Returns
    one manifest record per file."""
    updates: dict[tuple[str, str], list[tuple[LoraLayer, float]]] = collections.defaultdict(list)
    records = []
    for lora in loras:
        resolved = _resolve(lora, models)
        for network, layers in resolved.items():
            for (layer, name), factor in zip(layers, _alpha_factors(lora, network, layers)):
                _check_fit(lora, layer, models[network].get_submodule(name).weight)
                updates[network, name].append((layer, lora.scale * factor))
        records.append(lora.record({net: len(layers) for net, layers in resolved.items()}))
    with torch.no_grad():
        for (network, name), terms in updates.items():
            weight = models[network].get_submodule(name).weight
            total = weight.to(torch.float64)
            for layer, factor in terms:
                total += _delta(layer, weight.shape) * factor
            weight.copy_(total.to(weight.dtype))
    return records

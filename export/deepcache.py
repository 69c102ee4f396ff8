"""The ``deepcache`` fast mode: the UNet exported as the two parts DeepCache needs.

DeepCache (Ma, Fang, Wang, 2023, arXiv:2312.00858) reuses a UNet's deep features across adjacent denoising
steps, whose high-level features change slowly: every ``interval``-th step runs the whole UNet and keeps
the features entering the last ``shallow_layers`` layers of its last up block (``unet_capture``); the steps
in between run only the shallow path on the cached features (``unet_shallow``): ``conv_in``, the first
down block's layers whose outputs those up layers take as skips, those up layers, the output head. Fewer
shallow layers make the shallow step cheaper and move the image further (all of SD 1.5's three layers is
~1/3 of a UNet call at 256 px; its last one alone, the default, ~1/14). Both parts are validated against the PyTorch UNet:
the capture part's prediction equals the UNet's, and the shallow part on freshly captured features too.

    fashiongen deepcache --model CHECKPOINT --engines ENGINE_DIR [--interval 3] [--shallow-layers 3]
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from fashiongen.runtime.contracts import UNET_CAPTURE, UNET_SHALLOW
from fashiongen.runtime.errors import InputError
from fashiongen.runtime.manifest import MANIFEST_NAME, Variant, load_manifest, require_kind, write_json_atomic

from .onnx_export import DEFAULT_OPSET, export_network_entry, seeded_feeds
from .sd_export import load_checkpoint


#: The finest level's blocks the shallow path runs: SD's (cross-attention), or plain ones where a UNet leaves its
#: finest level without attention (``SDSize.unet_attention``)
SHALLOW_LEVELS = {("CrossAttnDownBlock2D", "CrossAttnUpBlock2D"), ("DownBlock2D", "UpBlock2D")}


def _check_layout(unet) -> None:
    names = [type(b).__name__ for b in unet.down_blocks], [type(b).__name__ for b in unet.up_blocks]
    if (names[0][0], names[1][-1]) not in SHALLOW_LEVELS or len(unet.up_blocks) < 2:
        raise InputError(f"--model: deepcache expects an SD 1.x UNet (first down and last up blocks both "
                         f"cross-attention, or both plain), got {names}")


def layer_outputs(block) -> list:
    """The modules whose outputs are a block's layers' outputs: its attentions, or its resnets where it has none."""
    return list(getattr(block, "attentions", None) or block.resnets)


def run_layer(block, j: int, h, emb, encoder_hidden_states):
    """Layer ``j`` of a down or up block (its resnet, then its attention if it has one) on ``h``."""
    h = block.resnets[j](h, emb)
    attentions = getattr(block, "attentions", None)
    if attentions:
        h = attentions[j](h, encoder_hidden_states=encoder_hidden_states, return_dict=False)[0]
    return h


def up_layers(unet) -> int:
    """Layers (resnet + attention) of the UNet's last up block: the most a shallow step can recompute."""
    return len(unet.up_blocks[-1].resnets)


class UNetCaptureNet(torch.nn.Module):
    """The whole UNet; also returns the hidden states entering layer ``first`` of its last up block (the
    block's input for 0, else the output of layer ``first - 1``: before the skip is concatenated)."""

    def __init__(self, unet, first: int = 0):
        super().__init__()
        self.unet = unet
        self._captured = None
        last = unet.up_blocks[-1]
        if first == 0:
            last.register_forward_pre_hook(self._capture_input, with_kwargs=True)
        else:
            layer_outputs(last)[first - 1].register_forward_hook(self._capture_output)

    def _capture_input(self, module, args, kwargs):
        self._captured = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]

    def _capture_output(self, module, args, output):
        self._captured = output[0] if isinstance(output, tuple) else getattr(output, "sample", output)

    def forward(self, sample, timestep, encoder_hidden_states):
        out = self.unet(sample, timestep, encoder_hidden_states, return_dict=False)[0]
        return out, self._captured


class UNetShallowNet(torch.nn.Module):
    """The shallow path from cached deep features: ``conv_in``, the first down block's layers whose outputs
    the recomputed up layers take as skips, layers ``first``.. of the last up block, the output head.

    Layer ``j`` of the last up block (of ``L``) takes skip ``L - 1 - j`` of the first down block, counting
    ``conv_in``'s output as skip 0, so starting at layer ``first`` needs down layers ``0 .. L - 2 - first``.
    """

    def __init__(self, unet, first: int = 0):
        super().__init__()
        self.unet = unet
        self.first = first

    def forward(self, sample, timestep, encoder_hidden_states, deep_features):
        u = self.unet
        layers = up_layers(u)
        emb = u.time_embedding(u.time_proj(timestep).to(sample.dtype))
        h = u.conv_in(sample)
        skips = [h]
        down = u.down_blocks[0]
        for i in range(layers - 1 - self.first):
            h = run_layer(down, i, h, emb, encoder_hidden_states)
            skips.append(h)
        up = u.up_blocks[-1]
        h = deep_features
        for j in range(self.first, layers):
            h = run_layer(up, j, torch.cat([h, skips[layers - 1 - j]], dim=1), emb, encoder_hidden_states)
        if u.conv_norm_out is not None:
            h = u.conv_act(u.conv_norm_out(h))
        return u.conv_out(h)


def _drop_stale_int8(manifest) -> None:
    """INT8 copies of earlier DeepCache parts were quantized from other files: forget them (``--fast
    deepcache,int8`` then says to run ``fashiongen quantize`` again rather than mixing old and new parts)."""
    int8 = manifest.variant_networks("int8")
    for name in ("unet_capture", "unet_shallow"):
        int8.pop(name, None)
    if "int8" in manifest.variants and not int8:
        del manifest.variants["int8"]


def export_deepcache(model_dir: Path, engine_dir: Path, interval: int = 3, shallow_layers: int = 1,
                     opset: int = DEFAULT_OPSET) -> dict:
    """Add ``unet_capture.onnx`` and ``unet_shallow.onnx`` to an engine folder; manifest ``variants.deepcache``.
    ``shallow_layers``: how many of the last up block's layers a shallow step recomputes (default 1, the
    DeepCache paper's choice for SD: measured on SD 1.5 at 256 px, interval 3, 2 cores, fp32 OpenVINO, 1 layer
    is 0.14 s a shallow step at 39.0 dB from the exact image, 2 layers 0.39 s at 41.6 dB, all 3 0.65 s at
    43.9 dB, against 1.9 s for a whole UNet call)."""
    if not isinstance(interval, int) or interval < 2:
        raise InputError(f"--interval must be an integer >= 2 (got {interval!r})")
    engine_dir = Path(engine_dir)
    manifest = load_manifest(engine_dir, "--engines")
    require_kind(manifest, engine_dir, "txt2img", "--engines")
    parts = load_checkpoint(model_dir)
    unet = parts["unet"]
    if unet.config.time_cond_proj_dim is not None:
        raise InputError(f"--model: '{model_dir}' has a UNet with a guidance embedding (time_cond_proj_dim="
                         f"{unet.config.time_cond_proj_dim}, an LCM-distilled model); DeepCache does not support it")
    _check_layout(unet)
    layers = up_layers(unet)
    if isinstance(shallow_layers, bool) or not isinstance(shallow_layers, int) or not 1 <= shallow_layers <= layers:
        raise InputError(f"--shallow-layers must be an integer from 1 to {layers}, the layers of this UNet's last "
                         f"up block (got {shallow_layers!r})")
    first = layers - shallow_layers
    capture = UNetCaptureNet(unet, first).eval()
    shallow = UNetShallowNet(unet, first).eval()
    dims = dict(manifest.dims)
    t, d, cin = dims["text_length"], dims["text_hidden"], dims["unet_in_channels"]
    with torch.no_grad():  # the cached features' channels, as the capture point has them
        dims["deep_channels"] = int(capture(torch.zeros(1, cin, 8, 8), torch.zeros(1), torch.zeros(1, t, d))[1].shape[1])

    def feeds(contract, b, h, w, seed):
        shapes = {"sample": (b, cin, h, w), "timestep": (b,), "encoder_hidden_states": (b, t, d),
                  "deep_features": (b, dims["deep_channels"], h, w)}
        f = seeded_feeds(contract, {k: v for k, v in shapes.items() if k in {s.name for s in contract.inputs}}, seed)
        f["timestep"] = np.full((b,), 500.0 + seed, dtype=np.float32)
        return f

    # Traced at odd latent sizes (explicit-size upsampling, as the UNet's own export), checked elsewhere.
    entries = {
        "unet_capture": export_network_entry(capture, UNET_CAPTURE, feeds(UNET_CAPTURE, 2, 9, 7, 0),
                                             feeds(UNET_CAPTURE, 1, 8, 6, 1), dims, engine_dir / "unet_capture.onnx",
                                             opset),
        "unet_shallow": export_network_entry(shallow, UNET_SHALLOW, feeds(UNET_SHALLOW, 2, 9, 7, 0),
                                             feeds(UNET_SHALLOW, 1, 8, 6, 1), dims, engine_dir / "unet_shallow.onnx",
                                             opset),
    }
    # The shallow path on freshly captured features must give the whole UNet's prediction.
    check = feeds(UNET_CAPTURE, 1, 8, 6, 2)
    args = [torch.from_numpy(check[k]) for k in ("sample", "timestep", "encoder_hidden_states")]
    with torch.no_grad():
        full = unet(*args, return_dict=False)[0]
        out, deep = capture(*args)
        again = shallow(*args, deep)
    split_diff = float(max((out - full).abs().max(), (again - full).abs().max()))
    if split_diff > 1e-4:
        raise RuntimeError(f"deepcache: the split UNet differs from the whole by {split_diff:.3g}")
    manifest = load_manifest(engine_dir)  # re-read: write only our sections over what is there now
    _drop_stale_int8(manifest)
    manifest.dims["deep_channels"] = dims["deep_channels"]
    manifest.networks.update(entries)
    manifest.variants["deepcache"] = Variant(
        networks={"unet_capture": {"file": "unet_capture.onnx", "backend": None},
                  "unet_shallow": {"file": "unet_shallow.onnx", "backend": None}},
        settings={"interval": interval, "shallow_layers": shallow_layers, "of_layers": layers,
                  "split_max_abs_diff": split_diff})
    write_json_atomic(engine_dir / MANIFEST_NAME, manifest.to_json())
    return manifest.variants["deepcache"].settings

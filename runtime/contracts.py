"""The I/O contract of every network: the one place where names, dtypes and axes are declared.

Export reads it for dynamic axes and sample inputs, the engines for feed validation, the Triton
generator for ``config.pbtxt``, a TensorRT build for its profiles. A shape is a tuple of dimension
names. A name that the engine folder's manifest fixes (``dims``: e.g. ``latent_channels: 4``,
``text_hidden: 768``) is a fixed size; any other name is a dynamic axis (batch, heights, widths).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # numpy dtype name: "float32", "int32", "uint8"
    shape: tuple[str | int, ...]

    def resolve(self, dims: dict[str, int]) -> tuple[int | str, ...]:
        """The shape with every fixed dimension replaced by its size; dynamic axes stay names."""
        return tuple(dims.get(d, d) for d in self.shape)

    def dynamic_axes(self, dims: dict[str, int]) -> dict[int, str]:
        return {i: d for i, d in enumerate(self.shape) if isinstance(d, str) and d not in dims}


@dataclass(frozen=True)
class NetworkContract:
    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    doc: str

    def input(self, name: str) -> TensorSpec:
        return next(s for s in self.inputs if s.name == name)

    def check_feeds(self, feeds: dict[str, np.ndarray], dims: dict[str, int]) -> None:
        """Raise ValueError naming the first input whose presence, dtype, rank or fixed size is wrong."""
        missing = [s.name for s in self.inputs if s.name not in feeds]
        if missing:
            raise ValueError(f"{self.name}: missing input(s) {missing}; expected {[s.name for s in self.inputs]}")
        unknown = sorted(set(feeds) - {s.name for s in self.inputs})
        if unknown:
            raise ValueError(f"{self.name}: unknown input(s) {unknown}; expected {[s.name for s in self.inputs]}")
        for spec in self.inputs:
            value = feeds[spec.name]
            if value.dtype != np.dtype(spec.dtype):
                raise ValueError(f"{self.name}: input '{spec.name}' must be {spec.dtype}, got {value.dtype}")
            want = spec.resolve(dims)
            if value.ndim != len(want):
                raise ValueError(
                    f"{self.name}: input '{spec.name}' must have shape {list(want)}, got {list(value.shape)}")
            for got, size in zip(value.shape, want):
                if isinstance(size, int) and got != size:
                    raise ValueError(
                        f"{self.name}: input '{spec.name}' must have shape {list(want)}, got {list(value.shape)}")


    def warmup_feeds(self, dims: dict[str, int]) -> dict[str, np.ndarray]:
        """Zeros at the smallest shape every network accepts (dynamic axes from :data:`WARMUP_SIZES`)."""
        return {s.name: np.zeros([d if isinstance(d, int) else WARMUP_SIZES.get(d, 8) for d in s.resolve(dims)],
                                 dtype=s.dtype) for s in self.inputs}


# A warm-up call runs at these sizes of the dynamic axes: a latent of 8 survives the UNet's three
# downsamplings, an image of 64 is that latent decoded (and more than SegFormer's 32x reduction needs).
WARMUP_SIZES = {"batch": 1, "latent_height": 8, "latent_width": 8, "image_height": 64, "image_width": 64,
                "seg_height": 64, "seg_width": 64}


def _f32(name: str, *shape: str | int) -> TensorSpec:
    return TensorSpec(name, "float32", shape)


TEXT_ENCODER = NetworkContract(
    "text_encoder",
    inputs=(TensorSpec("input_ids", "int32", ("batch", "text_length")),),
    outputs=(_f32("last_hidden_state", "batch", "text_length", "text_hidden"),),
    doc="CLIP text encoder with any learned (textual-inversion) rows baked into its embedding table.",
)

UNET = NetworkContract(
    "unet",
    inputs=(
        _f32("sample", "batch", "unet_in_channels", "latent_height", "latent_width"),
        # One timestep per sample, so requests at different steps can share one batched call.
        _f32("timestep", "batch"),
        _f32("encoder_hidden_states", "batch", "text_length", "text_hidden"),
    ),
    outputs=(_f32("out_sample", "batch", "latent_channels", "latent_height", "latent_width"),),
    doc="Denoising UNet: predicts noise (or v) for a batch of latents at per-sample timesteps.",
)

# DeepCache (Ma et al. 2023, "DeepCache: Accelerating Diffusion Models for Free"): the UNet in two parts.
# A full step also returns the features entering the last (shallowest) up block; the steps in between run
# only the shallow path (conv_in, the first down block, the last up block) on those cached features.
UNET_CAPTURE = NetworkContract(
    "unet_capture",
    inputs=UNET.inputs,
    outputs=(_f32("out_sample", "batch", "latent_channels", "latent_height", "latent_width"),
             _f32("deep_features", "batch", "deep_channels", "latent_height", "latent_width")),
    doc="DeepCache full step: the UNet's prediction and the deep features entering its last up block.",
)

UNET_SHALLOW = NetworkContract(
    "unet_shallow",
    inputs=(*UNET.inputs, _f32("deep_features", "batch", "deep_channels", "latent_height", "latent_width")),
    outputs=(_f32("out_sample", "batch", "latent_channels", "latent_height", "latent_width"),),
    doc="DeepCache cached step: the UNet's shallow path on deep features cached at an earlier step.",
)

VAE_DECODER = NetworkContract(
    "vae_decoder",
    # Takes latents as the denoising loop holds them; the 1/scaling_factor is applied inside.
    inputs=(_f32("latent", "batch", "latent_channels", "latent_height", "latent_width"),),
    outputs=(_f32("image", "batch", 3, "image_height", "image_width"),),
    doc="VAE decoder: latents (scaled as in the loop) to an image in [-1, 1].",
)

VAE_ENCODER = NetworkContract(
    "vae_encoder",
    inputs=(_f32("image", "batch", 3, "image_height", "image_width"),),
    # The mode (mean) of the latent distribution, not yet multiplied by the scaling factor.
    outputs=(_f32("latent_mean", "batch", "latent_channels", "latent_height", "latent_width"),),
    doc="VAE encoder: an image in [-1, 1] to the mean of its latent distribution (unscaled).",
)

# The tiny autoencoder (TAESD, diffusers' AutoencoderTiny; ``export --tiny-vae``): the full VAE's I/O under
# their own names, so that both live in one engine folder and a request picks one (``decoder``).
VAE_DECODER_TINY = NetworkContract(
    "vae_decoder_tiny",
    inputs=VAE_DECODER.inputs,
    outputs=VAE_DECODER.outputs,
    doc="Tiny VAE decoder: latents (scaled as in the loop) to an image in about [-1, 1], as the full decoder.",
)

VAE_ENCODER_TINY = NetworkContract(
    "vae_encoder_tiny",
    inputs=VAE_ENCODER.inputs,
    # TAESD's encoder predicts the scaled latent; divided by the checkpoint's scaling factor on export.
    outputs=VAE_ENCODER.outputs,
    doc="Tiny VAE encoder: an image in [-1, 1] to an estimate of the full VAE's latent mean (unscaled).",
)

SEGMENTER = NetworkContract(
    "segmenter",
    inputs=(_f32("pixel_values", "batch", 3, "seg_height", "seg_width"),),
    # SegFormer predicts at a quarter of its input size; the runtime upsamples before the argmax.
    outputs=(_f32("logits", "batch", "seg_classes", "seg_logit_height", "seg_logit_width"),),
    doc="Clothes segmenter (SegFormer): normalized image to per-class logits at 1/4 resolution.",
)

CLIP_TEXT = NetworkContract(
    "clip_text",
    # Padded to the tokenizer's full length; CLIP's causal mask keeps padding out of the EOS position.
    inputs=(TensorSpec("input_ids", "int32", ("batch", "clip_text_length")),),
    # CLIPModel.get_text_features: the EOS hidden state through text_projection, not yet L2-normalized.
    outputs=(_f32("text_embeds", "batch", "clip_projection"),),
    doc="CLIP text tower with its projection: prompt ids to the (unnormalized) joint-space embedding.",
)

CLIP_IMAGE = NetworkContract(
    "clip_image",
    inputs=(_f32("pixel_values", "batch", 3, "clip_image_size", "clip_image_size"),),
    # CLIPModel.get_image_features: the pooled class token through visual_projection, not normalized.
    outputs=(_f32("image_embeds", "batch", "clip_projection"),),
    doc="CLIP image tower with its projection: a normalized, center-cropped image to the joint space.",
)

CONTRACTS: dict[str, NetworkContract] = {
    c.name: c for c in (TEXT_ENCODER, UNET, UNET_CAPTURE, UNET_SHALLOW, VAE_DECODER, VAE_ENCODER, VAE_DECODER_TINY,
                        VAE_ENCODER_TINY, SEGMENTER, CLIP_TEXT, CLIP_IMAGE)}

# A UNet distilled with a guidance embedding (diffusers' ``time_cond_proj_dim``: LCM-distilled models) takes it
# as a further input; such a folder's manifest has the dim. (DeepCache's split UNets do not take it: that
# export refuses such a UNet.)
GUIDANCE_DIM = "time_cond_proj_dim"
TIMESTEP_COND = _f32("timestep_cond", "batch", GUIDANCE_DIM)
_TAKES_GUIDANCE = ("unet",)


def network_contract(name: str, dims: dict[str, int]) -> NetworkContract:
    """The contract of network ``name`` in an engine folder of these manifest ``dims``: ``CONTRACTS[name]``,
    with ``timestep_cond`` after ``timestep`` for a UNet where ``dims`` has a guidance embedding size."""
    contract = CONTRACTS[name]
    if name not in _TAKES_GUIDANCE or dims.get(GUIDANCE_DIM) is None:
        return contract
    at = [s.name for s in contract.inputs].index("timestep") + 1
    inputs = (*contract.inputs[:at], TIMESTEP_COND, *contract.inputs[at:])
    return NetworkContract(contract.name, inputs=inputs, outputs=contract.outputs,
                           doc=contract.doc + " Takes the guidance-scale embedding (timestep_cond).")


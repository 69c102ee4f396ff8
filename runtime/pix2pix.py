"""Image editing with InstructPix2Pix over any engine backend, equal to diffusers'
``StableDiffusionInstructPix2PixPipeline``.

Stages, each timed: ``text_encoder`` (the text pipeline's own prompt encoding), ``vae_encoder`` (the input
image to its latent mode, unscaled, as diffusers' ``retrieve_latents(..., sample_mode="argmax")``),
``denoise`` (the shared loop; the UNet sees the noisy latents concatenated with the image latents along
channels, 8 in all) and ``vae_decoder``. The request's ``decoder`` picks the full VAE or the tiny one
(``export --tiny-vae``) for both ends: ``tiny`` encodes the input image with the tiny encoder too.

Guidance is three-way, in one batched UNet call per step: rows ``[text, image, unconditional]`` take
``(prompt, image)``, ``(negative, image)``, ``(negative, zeros)`` and combine as
``uncond + g_text * (text - image) + g_image * (image - uncond)``. As in diffusers it is on when
``guidance > 1`` and ``image_guidance >= 1``; otherwise one unguided call with the prompt and the image.

The input image is uint8 RGB (grayscale is expanded, RGBA is composited onto white); the edit happens at
its size rounded down to a multiple of the VAE's downscale (Lanczos resize when that changes it, with a
warning naming both sizes), which is what diffusers' ``VaeImageProcessor`` does, and the result has that size.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np

from .denoise import (MAX_STEPS, check_guidance, check_positive_int, check_seed, check_steps, denoise,
                      initial_latents, unet_timestep)
from .engines import EngineSet
from .errors import InputError
from .images import as_rgb, uint8_to_model_input
from .manifest import require_kind
from .presets import default_guidance, default_image_guidance
from .rng import TorchGenerator
from .schedulers import make_scheduler
from .timings import StageTimings
from .txt2img import DECODERS, Txt2ImgPipeline, choose_decoder


@dataclass
class Pix2PixRequest:
    image: np.ndarray                 # H x W (x 1|3|4) uint8
    prompt: str                       # the edit instruction, e.g. "make it black"
    negative_prompt: str = ""
    seed: int = 0
    steps: int = 20
    guidance: float | None = None     # text guidance; None: the folder's recorded one (export --guidance), else 7.5
    image_guidance: float | None = None  # how closely to keep the input; None: recorded, else 1.5
    scheduler: str | None = None      # None: the checkpoint's own
    num_images: int = 1
    decoder: str | None = None        # "full" | "tiny" (encoder and decoder); None: full, or the only one
    eta: float | None = None          # TCD's gamma (diffusers' eta), 0..1; None: 0.3. Other schedulers refuse it


@dataclass
class Pix2PixResult:
    images: np.ndarray                # N x H' x W' x 3 uint8 (H', W': the input rounded down to the VAE grid)
    timings: StageTimings = field(default_factory=StageTimings)


def fit_to_grid(image: np.ndarray, multiple: int) -> np.ndarray:
    """Round the size down to ``multiple`` and resize with Lanczos if needed (diffusers' VaeImageProcessor);
    a warning names both sizes, since the result has the smaller one."""
    from PIL import Image

    height, width = image.shape[:2]
    h, w = height - height % multiple, width - width % multiple
    if h == 0 or w == 0:
        raise InputError(f"image: {width}x{height} is too small; each side must be at least {multiple} pixels")
    if (h, w) == (height, width):
        return image
    warnings.warn(f"image: {width}x{height} is not a multiple of {multiple} on each side; it is edited, and the "
                  f"result written, at {w}x{h}", stacklevel=3)
    return np.asarray(Image.fromarray(image).resize((w, h), resample=Image.LANCZOS))


class Pix2PixPipeline:
    def __init__(self, engines: EngineSet, max_steps: int = MAX_STEPS, arg: str = "engines"):
        """``max_steps``: the most steps a request may ask for; ``arg`` names the folder in errors."""
        manifest = engines.manifest
        require_kind(manifest, engines.engine_dir, "pix2pix", arg)
        self.engines = engines
        self.max_steps = max_steps
        # prompt encoding and decoding are the text pipeline's own
        self.text = Txt2ImgPipeline(engines, max_steps=max_steps, arg=arg, kind="pix2pix")
        self.dims = manifest.dims
        self.downscale = self.text.downscale

    # -- request checks, before any compute ---------------------------------------------------------
    def resolve(self, request: Pix2PixRequest) -> Pix2PixRequest:
        """Check every field and bring the image to RGB on the VAE grid; raises InputError naming the field."""
        if not isinstance(request.prompt, str) or not request.prompt.strip():
            raise InputError("prompt: must be a non-empty string")
        image = fit_to_grid(as_rgb(request.image), self.downscale)
        check_positive_int("num_images", request.num_images)
        check_seed(request.seed)
        manifest = self.engines.manifest
        guidance = default_guidance(manifest) if request.guidance is None else request.guidance
        image_guidance = default_image_guidance(manifest) if request.image_guidance is None else request.image_guidance
        check_guidance("guidance", guidance)
        check_guidance("image_guidance", image_guidance)
        scheduler = make_scheduler(self.engines.manifest.scheduler_config, request.scheduler, request.eta)
        check_steps(request.steps, self.max_steps, scheduler)
        decoder = choose_decoder(self.engines, request.decoder, encoder=True)
        return Pix2PixRequest(**{**request.__dict__, "image": image, "decoder": decoder, "guidance": guidance,
                                 "image_guidance": image_guidance})

    # -- stages -------------------------------------------------------------------------------------
    def encode_prompt(self, prompt: str, negative_prompt: str, num_images: int, guided: bool) -> np.ndarray:
        """``[prompt, negative, negative]`` (each x n) when guided, else ``[prompt]`` x n."""
        hidden = self.text.encode_prompt(prompt, negative_prompt, num_images, guided)
        if not guided:
            return hidden
        negative, positive = np.split(hidden, 2)
        return np.concatenate([positive, negative, negative])

    def encode_image(self, image: np.ndarray, num_images: int, guided: bool, decoder: str = "full") -> np.ndarray:
        """The image's latent mode (unscaled) x n; guided: ``[image, image, zeros]``."""
        encoder = self.engines[DECODERS[decoder][1]]
        mean = encoder.run({"image": uint8_to_model_input(image)})["latent_mean"]
        latents = np.repeat(mean, num_images, axis=0)
        if not guided:
            return latents
        return np.concatenate([latents, latents, np.zeros_like(latents)])

    def __call__(self, request: Pix2PixRequest, progress: bool = True) -> Pix2PixResult:
        req = self.resolve(request)
        timings = StageTimings()
        guided = req.guidance > 1.0 and req.image_guidance >= 1.0
        scheduler = make_scheduler(self.engines.manifest.scheduler_config, req.scheduler, req.eta)
        scheduler.set_timesteps(req.steps)
        generator = TorchGenerator(req.seed)
        unet = self.engines["unet"]  # open (and so check) every network before computing anything
        self.engines[DECODERS[req.decoder][1]], self.engines[DECODERS[req.decoder][0]]

        with timings.measure("text_encoder"):
            text = self.encode_prompt(req.prompt, req.negative_prompt, req.num_images, guided)
        with timings.measure("vae_encoder"):
            image_latents = self.encode_image(req.image, req.num_images, guided, req.decoder)
        height, width = req.image.shape[:2]
        shape = (req.num_images, self.dims["latent_channels"], height // self.downscale, width // self.downscale)
        latents = initial_latents(generator, shape, scheduler)
        copies = 3 if guided else 1
        g_text, g_image = np.float32(req.guidance), np.float32(req.image_guidance)

        def predict(model_input: np.ndarray, t: float) -> np.ndarray:
            sample = np.concatenate([np.concatenate([model_input] * copies), image_latents], axis=1)
            noise = unet.run({"sample": sample, "timestep": unet_timestep(t, len(sample)),
                              "encoder_hidden_states": text})["out_sample"]
            if not guided:
                return noise
            with_text, with_image, uncond = np.split(noise, 3)
            return uncond + g_text * (with_text - with_image) + g_image * (with_image - uncond)

        latents = denoise(latents, scheduler, predict, generator, timings, progress)
        with timings.measure("vae_decoder"):
            images = self.text.decode(latents, req.decoder)
        return Pix2PixResult(images=images, timings=timings)

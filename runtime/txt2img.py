"""Text → image: Stable Diffusion 1.x over any engine backend, equal to diffusers' StableDiffusionPipeline.

Stages, each timed: ``encode_prompt`` (text encoder, negative and positive prompts in one batch),
``denoise`` (classifier-free guidance in one batched UNet call per step; a UNet distilled with a guidance
embedding, an LCM-distilled one, instead takes the guidance as its ``timestep_cond`` input, one unguided call
a step, as diffusers does), ``decode`` (VAE decoder: the full
one, or the tiny one that ``export --tiny-vae`` adds, by the request's ``decoder``).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .contracts import GUIDANCE_DIM
from .denoise import (MAX_STEPS, check_guidance, check_positive_int, check_seed, check_size, check_steps, denoise,
                      guidance_embedding, initial_latents, unet_timestep)
from .engines import EngineSet
from .errors import InputError
from .images import decoded_to_uint8
from .manifest import require_kind
from .presets import default_guidance
from .rng import TorchGenerator
from .schedulers import make_scheduler
from .timings import StageTimings
from .tokenizer import PromptTokenizer


@dataclass
class Txt2ImgRequest:
    prompt: str
    negative_prompt: str = ""
    seed: int = 0
    steps: int = 25
    guidance: float | None = None  # None: the engine folder's recorded scale (export --guidance), else 7.5
    scheduler: str | None = None   # None: the one the checkpoint's scheduler config names
    height: int | None = None      # None: the checkpoint's native size
    width: int | None = None
    num_images: int = 1
    decoder: str | None = None     # "full" | "tiny"; None: full, or the only one the folder has
    eta: float | None = None       # TCD's gamma (diffusers' eta), 0..1; None: 0.3. Other schedulers refuse it


#: The networks of each decoder choice: (decoder, encoder). The tiny ones are TAESD (``export --tiny-vae``).
DECODERS = {"full": ("vae_decoder", "vae_encoder"), "tiny": ("vae_decoder_tiny", "vae_encoder_tiny")}


def choose_decoder(engines: EngineSet, decoder: str | None, encoder: bool = False) -> str:
    """The request's ``decoder`` checked against the folder (None: full, or tiny where only that one is there);
    ``encoder``: the choice must have its encoder too (pix2pix encodes its input image with it)."""
    if decoder is None:
        return "full" if engines.has("vae_decoder") or not engines.has("vae_decoder_tiny") else "tiny"
    if decoder not in DECODERS:
        raise InputError(f"decoder: must be one of {', '.join(DECODERS)} (got {decoder!r})")
    missing = [n for n in DECODERS[decoder][:1 + encoder] if not engines.has(n)]
    if missing:
        how = "; add one with `fashiongen export --tiny-vae DIR`" if decoder == "tiny" else ""
        raise InputError(f"decoder: '{engines.engine_dir}' has no {decoder} VAE ({' and '.join(missing)} not in "
                         f"its manifest){how}")
    return decoder


@dataclass
class Txt2ImgResult:
    images: np.ndarray                        # N x H x W x 3 uint8
    timings: StageTimings = field(default_factory=StageTimings)


class Txt2ImgPipeline:
    def __init__(self, engines: EngineSet, deepcache: int | None = None, max_steps: int = MAX_STEPS,
                 arg: str = "engines", kind: str = "txt2img"):
        """``deepcache=N``: the DeepCache fast mode (``unet_capture`` every N-th UNet call, ``unet_shallow``
        on its cached deep features in between); None: the exact UNet every step. ``max_steps``: the most steps
        a request may ask for. A folder of another kind than ``kind`` is refused, naming it as ``arg`` (kind
        ``pix2pix`` when the InstructPix2Pix pipeline borrows this one's prompt encoding and decoding)."""
        require_kind(engines.manifest, engines.engine_dir, kind, arg)
        self.engines = engines
        self.deepcache = deepcache
        self.max_steps = max_steps
        manifest = engines.manifest
        self.tokenizer = PromptTokenizer.from_manifest_section(engines.engine_dir, manifest.tokenizer)
        self.dims = manifest.dims
        self.downscale = int(manifest.vae.downscale)
        self.native_size = int(manifest.dims["sample_size"]) * self.downscale

    # -- request checks, before any compute ---------------------------------------------------------
    def resolve(self, request: Txt2ImgRequest) -> Txt2ImgRequest:
        """Fill defaults and check every field; raises InputError naming the field."""
        if not isinstance(request.prompt, str) or not request.prompt.strip():
            raise InputError("prompt: must be a non-empty string")
        height = self.native_size if request.height is None else request.height
        width = self.native_size if request.width is None else request.width
        check_size("height", height, self.downscale)
        check_size("width", width, self.downscale)
        check_positive_int("num_images", request.num_images)
        check_seed(request.seed)
        guidance = default_guidance(self.engines.manifest) if request.guidance is None else request.guidance
        check_guidance("guidance", guidance)
        scheduler = make_scheduler(self.engines.manifest.scheduler_config, request.scheduler, request.eta)
        check_steps(request.steps, self.max_steps, scheduler)
        decoder = choose_decoder(self.engines, request.decoder)
        return Txt2ImgRequest(**{**request.__dict__, "height": height, "width": width, "decoder": decoder,
                                 "guidance": guidance})

    # -- stages -------------------------------------------------------------------------------------
    def encode_prompt(self, prompt: str, negative_prompt: str, num_images: int, guided: bool) -> np.ndarray:
        """Text embeddings for the UNet: [negative x n, positive x n] when guided, else [positive x n]."""
        prompts = [negative_prompt, prompt] if guided else [prompt]
        ids = self.tokenizer.encode_batch(prompts)
        hidden = self.engines["text_encoder"].run({"input_ids": ids})["last_hidden_state"]
        return np.repeat(hidden, num_images, axis=0)

    def decode(self, latents: np.ndarray, decoder: str = "full") -> np.ndarray:
        images = self.engines[DECODERS[decoder][0]].run({"latent": latents.astype(np.float32)})["image"]
        return decoded_to_uint8(images)

    def __call__(self, request: Txt2ImgRequest, progress: bool = True) -> Txt2ImgResult:
        timings = StageTimings()
        with timings.measure("total"):
            req = self.resolve(request)
            self.engines[DECODERS[req.decoder][0]]  # open (and so check) the decoder before computing anything
            latents = self._denoise(req, timings, progress)
            with timings.measure("vae_decoder"):
                images = self.decode(latents, req.decoder)
        return Txt2ImgResult(images=images, timings=timings)

    def latents(self, request: Txt2ImgRequest, progress: bool = False) -> np.ndarray:
        """The request's denoised latents (N x C x h x w, scaled as the UNet works), not decoded: what a decoder
        is given, e.g. for distilling a tiny decoder on what this sampler draws (``train-tiny-vae --sampler``)."""
        return self._denoise(self.resolve(request), StageTimings(), progress)

    def _denoise(self, req: Txt2ImgRequest, timings: StageTimings, progress: bool) -> np.ndarray:
        guidance_dim = self.dims.get(GUIDANCE_DIM)
        # diffusers' do_classifier_free_guidance: off at guidance <= 1, and for a UNet with a guidance embedding
        guided = req.guidance > 1.0 and guidance_dim is None
        extra = {} if guidance_dim is None else {
            "timestep_cond": guidance_embedding(req.guidance, int(guidance_dim), req.num_images)}
        scheduler = make_scheduler(self.engines.manifest.scheduler_config, req.scheduler, req.eta)
        scheduler.set_timesteps(req.steps)
        generator = TorchGenerator(req.seed)
        # open (and so check) every network before computing anything
        unet = self.engines["unet_capture" if self.deepcache else "unet"]
        shallow = self.engines["unet_shallow"] if self.deepcache else None

        with timings.measure("text_encoder"):
            text = self.encode_prompt(req.prompt, req.negative_prompt, req.num_images, guided)
        shape = (req.num_images, self.dims["latent_channels"], req.height // self.downscale,
                 req.width // self.downscale)
        latents = initial_latents(generator, shape, scheduler)

        calls, cache = [0], {}

        def run_unet(sample: np.ndarray, t: float) -> np.ndarray:
            feeds = {"sample": sample, "timestep": unet_timestep(t, len(sample)), "encoder_hidden_states": text, **extra}
            if not self.deepcache:
                return unet.run(feeds)["out_sample"]
            full = calls[0] % self.deepcache == 0
            calls[0] += 1
            if full:
                out = unet.run(feeds)
                cache["deep"] = out["deep_features"]
                return out["out_sample"]
            return shallow.run({**feeds, "deep_features": cache["deep"]})["out_sample"]

        def predict(model_input: np.ndarray, t: float) -> np.ndarray:
            if not guided:
                return run_unet(model_input, t)
            doubled = np.concatenate([model_input, model_input])
            noise = run_unet(doubled, t)
            uncond, cond = np.split(noise, 2)
            return uncond + np.float32(req.guidance) * (cond - uncond)

        return denoise(latents, scheduler, predict, generator, timings, progress)

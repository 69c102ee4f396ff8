"""``fashiongen train-tiny-vae``: distil a tiny autoencoder (TAESD, diffusers' AutoencoderTiny) from the VAE of an
SD 1.x folder on imagefolders.

The teacher is the folder's AutoencoderKL, frozen. Its posterior means of the training images, times its
``scaling_factor`` (the latents the UNet works in, which TAESD's encoder predicts and its decoder takes, so that
the tiny VAE's own ``scaling_factor`` is 1), are computed once at the start. Each step the tiny encoder learns to
predict those latents (MSE) and the tiny decoder to redraw the image from them (MSE in pixels, measured in the
data's colour basis as ``train-vae`` measures it, ``--colour-whitening``: in plain RGB a small decoder drew every
garment's hue wrong, green as olive, grey as blue, after 1,000 steps), plus
``--teacher-weight`` x the MSE to the teacher decoder's image of the same latents, and ``--edge-weight`` x the MSE
of the two images' neighbouring-pixel differences (both off by default: they cost a teacher decode a step). The
edge term is there for texture: a stripe narrower than a latent pixel is the part of the image the latents
barely pin down, so the MSE to the image averages it away (a 24-wide decoder trained on that alone drew striped
garments plain, and a black or white garment whose stripes are blurred away reads as grey); the teacher's image
is a function of the latents, so matching its edges is a target the tiny decoder can meet. ``--latent-noise S``
decodes, for those two teacher terms, the latents jittered by Gaussian noise of a standard deviation drawn from 0
to S per image: a sampler's latents are not the encoder's (an LCM's 4-step ones have more fine noise), and a tiny
decoder taught on encoder latents alone drew such reds orange and greens olive where the teacher kept them; the
teacher knows the image of any latent, so it can teach the tiny one off the encoder's manifold too.
``--latent-offset S`` also moves those latents, each channel of each image, by a constant drawn from -S to S
(with or without the noise): a channel's mean over the image is the picture's overall colour, and a sampler's
differ from the encoder's (the demo's 4-step LCM latents' channel means sit 0.03-0.16 nearer zero), where a tiny
decoder taught on encoder latents drew reds yellow and whites pink while the teacher kept them. ``--sampler
ENGINES`` gives the teacher terms the sampler's latents themselves: an exported text-to-image folder (the
LCM-LoRA one, for the few-step mode) draws one latent for each image's caption through the torch-free runtime,
and half of each batch the teacher decodes those in place of the encoder's (jittered) ones. No
adversarial or perceptual loss (TAESD's own has both; no network for them can be downloaded here), so the result
is softer than TAESD. ``--config`` sets the size: AutoencoderTiny's
``encoder_block_out_channels``, ``decoder_block_out_channels``, ``num_encoder_blocks``, ``num_decoder_blocks``
(default TAESD's own). The output, ``OUT/model``, is an AutoencoderTiny folder (TAESD's diffusers layout) with
``training.json``, which records how close it comes to the images and to the teacher (PSNR); then
``fashiongen export --model SD_DIR --tiny-vae OUT/model``.
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fashiongen.runtime.errors import InputError

from .autoencoder import COLOUR_SAMPLE, add_colour_whitening_argument, check_colour_whitening, colour_basis
from .options import add_schedule_arguments, schedule_from_args
from .text_to_image import (MODEL, RECORD, add_data_arguments, cached_tensors, data_digest, identity_of,
                            load_images, read_config_object, read_data, training_record, training_size)

PSNR_SAMPLE = 64  # images whose reconstruction the record measures
SAMPLER_CACHE = "sampler-latents.safetensors"  # --sampler's latents, in the run folder


def add_arguments(p) -> None:
    p.description = ("Distil a tiny autoencoder (TAESD architecture, diffusers' AutoencoderTiny) from the VAE of an "
                     "SD 1.x folder on imagefolders: the tiny encoder learns the teacher's scaled latent means, the "
                     "tiny decoder the images from them. The result is OUT/model, an AutoencoderTiny folder that "
                     "`fashiongen export --tiny-vae` takes.")
    p.add_argument("--model", type=Path, required=True, metavar="DIR",
                   help="SD 1.x diffusers folder whose VAE (vae/, an AutoencoderKL) is the teacher")
    p.add_argument("--config", type=Path, default=None, metavar="FILE.json",
                   help="the tiny VAE's size: a JSON object with some of encoder_block_out_channels, "
                   "decoder_block_out_channels, num_encoder_blocks, num_decoder_blocks (AutoencoderTiny's keys; "
                   "default TAESD's: 64 channels, (1, 3, 3, 3) and (3, 3, 3, 1) blocks)")
    add_data_arguments(p, "metadata.jsonl rows with file_name; captions are not needed")
    p.add_argument("--out", type=Path, required=True, help="run folder; the tiny VAE goes to OUT/model")
    add_schedule_arguments(p, steps=2000, batch_size=8, learning_rate=2e-4, checkpoint_every=250)
    add_colour_whitening_argument(p)
    p.add_argument("--teacher-weight", type=float, default=0.0,
                   help="weight of an MSE to the teacher decoder's image of the same latents, beside the MSE to the "
                   "image itself (default 0; each step then also runs the teacher's decoder)")
    p.add_argument("--edge-weight", type=float, default=0.0,
                   help="weight of an MSE between the horizontal and vertical pixel differences of the tiny decoder's "
                   "image and the teacher decoder's: keeps stripes and other fine texture sharp (default 0; each "
                   "step then also runs the teacher's decoder)")
    p.add_argument("--latent-noise", type=float, default=0.0, metavar="S",
                   help="the teacher terms (--teacher-weight, --edge-weight) decode latents jittered by Gaussian noise "
                   "of a standard deviation drawn from 0 to S per image, so that the tiny decoder follows the teacher "
                   "on a sampler's latents as well as on the encoder's (default 0: off; costs a second tiny decode)")
    p.add_argument("--latent-offset", type=float, default=0.0, metavar="S",
                   help="the teacher terms' latents also shifted, each channel of each image by a constant drawn from "
                   "-S to S: a sampler's latents' channel means (the image's overall colour) are not the encoder's "
                   "(default 0: off)")
    p.add_argument("--init", type=Path, default=None, metavar="DIR",
                   help="an AutoencoderTiny folder (TAESD's diffusers layout, e.g. an earlier run's OUT/model) whose "
                   "weights start the run instead of random ones: fine-tune a tiny VAE on new latents or a new "
                   "teacher; its size is its own (no --config)")
    p.add_argument("--sampler", type=Path, default=None, metavar="ENGINES",
                   help="an exported text-to-image engine folder of the teacher's VAE (e.g. `export --lcm-lora`'s): "
                   "for half of each batch the teacher terms decode the latents its sampler draws for the data's "
                   "captions (one per image, seeds --seed + i, cached in the run folder) instead of the encoder's, "
                   "so that the tiny decoder learns what that sampler makes, not only what the encoder makes. "
                   "Sampled with the folder's fast preset where it has one, else its defaults (needs "
                   "--teacher-weight or --edge-weight, and captions)")
    p.add_argument("--sampler-steps", type=int, default=None, metavar="N",
                   help="--sampler's denoising steps (default: its fast preset's, 4, else 25)")
    p.set_defaults(command_name="train-tiny-vae")


def read_tiny_config(path: Path | None) -> dict:
    """The size keys of ``--config`` over TAESD's (checked: known keys, positive integers, matching lengths)."""
    from fashiongen.random_checkpoints.tiny_vae import SIZE_KEYS, TAESD

    if path is None:
        return {k: list(v) for k, v in TAESD.items()}
    config = read_config_object(path, list(SIZE_KEYS), "AutoencoderTiny size keys")
    size = {k: list(v) for k, v in TAESD.items()}
    for key, value in config.items():
        if not (isinstance(value, list) and value and all(isinstance(v, int) and not isinstance(v, bool) and v > 0
                                                          for v in value)):
            raise InputError(f"--config: '{path}': {key} must be a non-empty list of positive integers, got {value!r}")
        size[key] = value
    for part in ("encoder", "decoder"):
        channels, blocks = size[f"{part}_block_out_channels"], size[f"num_{part}_blocks"]
        if len(channels) != len(blocks):
            raise InputError(f"--config: '{path}': {part}_block_out_channels has {len(channels)} levels, "
                             f"num_{part}_blocks {len(blocks)}; they must match")
    for part in ("encoder", "decoder"):  # diffusers' EncoderTiny and DecoderTiny keep one width at every level
        channels = size[f"{part}_block_out_channels"]
        if len(set(channels)) != 1:
            raise InputError(f"--config: '{path}': {part}_block_out_channels must all be equal (AutoencoderTiny's "
                             f"{part} keeps one width at every level), got {channels}")
    return size


def init_size(folder: Path, config_path: Path | None, geometry: dict) -> dict:
    """``--init``'s size (the keys of ``--config``), checked: an AutoencoderTiny folder whose latents are the
    teacher's (channels, downscale); ``--config`` is refused beside it, since the weights fix the size."""
    from fashiongen.random_checkpoints.tiny_vae import SIZE_KEYS

    if config_path is not None:
        raise InputError(f"--config: not with --init (the size is '{folder}''s own)")
    config_file = Path(folder) / "config.json"
    if not config_file.is_file():
        raise InputError(f"--init: '{folder}' has no config.json (an AutoencoderTiny folder, TAESD's layout)")
    config = json.loads(config_file.read_text())
    if config.get("_class_name") != "AutoencoderTiny":
        raise InputError(f"--init: '{folder}' holds {config.get('_class_name')!r}, not an AutoencoderTiny")
    if int(config.get("latent_channels", 4)) != geometry["latent_channels"]:
        raise InputError(f"--init: '{folder}' has {config.get('latent_channels')} latent channels, the teacher's VAE "
                         f"{geometry['latent_channels']}")
    size = {k: list(config[k]) for k in SIZE_KEYS}
    check_downscale(size, geometry["downscale"], folder, "--init")
    return size


def load_tiny(folder: Path):
    """``--init``'s AutoencoderTiny, in float32 (a shipped one may be stored in fp16)."""
    from diffusers import AutoencoderTiny

    return load_autoencoder(AutoencoderTiny, Path(folder), "--init").float()


def load_autoencoder(model_class, folder: Path, arg: str):
    """``model_class.from_pretrained(folder)`` from local files, or a one-line InputError naming ``arg``."""
    try:
        return model_class.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0]
        raise InputError(f"{arg}: cannot load '{folder}': {first}") from None


def tiny_digest(folder: Path) -> dict:
    """What the run's identity records of ``--init``: its folder and the SHA-256 of its weights."""
    weights = sorted(Path(folder).glob("*.safetensors"))
    digest = hashlib.sha256(b"".join(w.read_bytes() for w in weights)).hexdigest()
    return {"folder": str(Path(folder).absolute()), "weights_sha256": digest}


def teacher_geometry(model_dir: Path) -> dict:
    """The teacher VAE's config, checked: ``--model`` must have ``vae/`` holding an AutoencoderKL."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise InputError(f"--model: '{model_dir}' is not a folder (an SD 1.x diffusers folder is the teacher)")
    config_file = model_dir / "vae" / "config.json"
    if not config_file.is_file():
        hint = f" (a run folder? its model is '{model_dir / MODEL}')" if (model_dir / MODEL).is_dir() else ""
        raise InputError(f"--model: '{model_dir}' has no vae/config.json: the teacher is an SD folder's VAE{hint}")
    config = json.loads(config_file.read_text())
    if config.get("_class_name") != "AutoencoderKL":
        raise InputError(f"--model: '{model_dir}/vae' holds {config.get('_class_name')!r}, not an AutoencoderKL")
    down = 2 ** (len(config["block_out_channels"]) - 1)
    return {"downscale": down, "sample_size": int(config.get("sample_size", 512)) // down,
            "latent_channels": int(config.get("latent_channels", 4)),
            "scaling_factor": float(config.get("scaling_factor", 0.18215))}


def check_downscale(size: dict, downscale: int, path, arg: str = "--config") -> None:
    for part in ("encoder", "decoder"):
        tiny = 2 ** (len(size[f"{part}_block_out_channels"]) - 1)
        if tiny != downscale:
            raise InputError(f"{arg}: '{path}': the tiny {part} has {len(size[f'num_{part}_blocks'])} "
                             f"levels (downscale {tiny}), the teacher's VAE downscales by {downscale}")


def run(args) -> int:
    import torch

    from .runs import RunFolder, make_accelerator, train

    started = time.perf_counter()
    schedule = schedule_from_args(args)
    for name in ("teacher_weight", "edge_weight", "latent_noise", "latent_offset"):
        value = getattr(args, name)
        if not (value >= 0 and np.isfinite(value)):
            raise InputError(f"--{name.replace('_', '-')}: must be a non-negative number, got {value}")
    for name in ("latent_noise", "latent_offset"):
        if getattr(args, name) and not (args.teacher_weight or args.edge_weight):
            raise InputError(f"--{name.replace('_', '-')}: needs --teacher-weight or --edge-weight (only the "
                             "teacher's decoder says what a jittered latent should look like)")
    if args.sampler is not None and not (args.teacher_weight or args.edge_weight):
        raise InputError("--sampler: needs --teacher-weight or --edge-weight (only the teacher's decoder says what "
                         "a sampled latent should look like)")
    if args.sampler_steps is not None and (args.sampler is None or args.sampler_steps < 1):
        raise InputError(f"--sampler-steps: must be a positive number of steps, with --sampler; got "
                         f"{args.sampler_steps}" + ("" if args.sampler else " without --sampler"))
    check_colour_whitening(args.colour_whitening)
    geometry = teacher_geometry(args.model)
    if args.init is None:
        size = read_tiny_config(args.config)
        check_downscale(size, geometry["downscale"], args.config)
    else:
        size = init_size(args.init, args.config, geometry)
    resolution = training_size(args.resolution, geometry)
    rows = read_data(args.data, require=("text",) if args.sampler else ())
    data_sha256 = data_digest(rows)
    sampler = None if args.sampler is None else Sampler.open(args.sampler, geometry, resolution, args.sampler_steps)
    run_folder = RunFolder(args.out, identity_of(args, schedule, str(Path(args.model).absolute()), data_sha256,
                                                 resolution, tiny_config=size, teacher_weight=args.teacher_weight,
                                                 edge_weight=args.edge_weight, latent_noise=args.latent_noise,
                                                 latent_offset=args.latent_offset,
                                                 colour_whitening=args.colour_whitening,
                                                 **({} if args.init is None else {"init": tiny_digest(args.init)}),
                                                 **({} if sampler is None else {"sampler": sampler.identity()})))
    run_folder.begin(args.resume)  # every check above ran first: a failed start leaves no run folder behind
    teacher = load_teacher(args.model)
    device = make_accelerator(schedule).device
    images = load_images(rows, resolution)
    latents = teacher_latents(teacher, images, device, progress=not args.no_progress)
    sampled = None if sampler is None else sampler.latents(
        [row.columns["text"] for row in rows], args.seed, run_folder.out / SAMPLER_CACHE, progress=not args.no_progress)
    from fashiongen.random_checkpoints.tiny_vae import build_tiny_vae

    tiny = (build_tiny_vae(size, seed=args.seed, latent_channels=geometry["latent_channels"]) if args.init is None
            else load_tiny(args.init))
    basis = torch.from_numpy(colour_basis(images[:COLOUR_SAMPLE], args.colour_whitening)).float().to(device)
    loss = DistillationLoss(tiny, teacher, images, latents, schedule, args.teacher_weight, args.edge_weight, device,
                            basis, args.latent_noise, args.latent_offset, sampled)
    losses = train(run_folder, schedule, {"tiny_vae": tiny}, loss, resume=args.resume,
                   progress=not args.no_progress, description="train-tiny-vae")
    with torch.no_grad():
        quality = measure(tiny, teacher, images[:PSNR_SAMPLE], latents[:PSNR_SAMPLE], device)
    record = training_record(args, losses, started, step_losses=losses, resolution=resolution, tiny_config=size,
                             teacher_scaling_factor=geometry["scaling_factor"], quality=quality)
    model = write_tiny_model(run_folder.out / MODEL, tiny, record)
    print(f"wrote {model} ({len(losses)} steps, final loss {losses[-1]:.4f}; decoder PSNR "
          f"{quality['decoder_psnr_vs_image']:.1f} dB to the images, {quality['decoder_psnr_vs_teacher']:.1f} dB "
          f"to the teacher's decoder, whose own is {quality['teacher_psnr_vs_image']:.1f} dB)")
    return 0


def load_teacher(model_dir: Path):
    from diffusers import AutoencoderKL

    return load_autoencoder(AutoencoderKL, Path(model_dir) / "vae", "--model").eval().requires_grad_(False)


def teacher_latents(teacher, images: np.ndarray, device, progress: bool, batch_size: int = 16):
    """The teacher's posterior means of uint8 NHWC ``images`` times its scaling factor (float32 NCHW, CPU)."""
    import torch
    from tqdm.auto import tqdm

    from .imagefolder import to_unit_range

    teacher.to(device)
    out = []
    with torch.no_grad():
        for start in tqdm(range(0, len(images), batch_size), desc="teacher latents", unit="batch",
                          disable=not progress):
            pixels = torch.from_numpy(to_unit_range(images[start:start + batch_size])).to(device)
            out.append(teacher.encode(pixels).latent_dist.mean.float().cpu() * teacher.config.scaling_factor)
    return torch.cat(out)


@dataclass
class Sampler:
    """``--sampler``: an exported text-to-image folder's pipeline and the settings it samples with (its fast
    preset where it has one, else its defaults), checked against the teacher before the run starts."""

    pipeline: object  # runtime Txt2ImgPipeline
    settings: dict    # Txt2ImgRequest fields: steps, and the preset's scheduler and guidance
    size: int

    @classmethod
    def open(cls, engines: Path, geometry: dict, size: int, steps: int | None) -> "Sampler":
        from fashiongen.runtime.engines import EngineSet
        from fashiongen.runtime.manifest import load_manifest
        from fashiongen.runtime.presets import fast_settings
        from fashiongen.runtime.txt2img import Txt2ImgPipeline, Txt2ImgRequest

        manifest = load_manifest(engines, "--sampler")
        pipeline = Txt2ImgPipeline(EngineSet(engines, manifest=manifest), arg="--sampler")
        drawn = (int(manifest.dims["latent_channels"]), int(manifest.vae.downscale))
        wanted = (geometry["latent_channels"], geometry["downscale"])
        if drawn != wanted:
            raise InputError(f"--sampler: '{engines}' draws {drawn[0]}-channel latents at 1/{drawn[1]} of the image "
                             f"size; the teacher's VAE takes {wanted[0]}-channel ones at 1/{wanted[1]}")
        preset = fast_settings(manifest)
        settings = {"steps": Txt2ImgRequest.steps} if preset is None else {
            k: preset[k] for k in ("scheduler", "steps", "guidance")}
        if steps is not None:
            settings["steps"] = steps
        return cls(pipeline, settings, size)

    def identity(self) -> dict:
        """What the run's identity records of the sampler: its folder's manifest digest and the settings."""
        manifest = (self.pipeline.engines.engine_dir / "manifest.json").read_bytes()
        return {"manifest_sha256": hashlib.sha256(manifest).hexdigest(), **self.settings}

    def latents(self, captions: list[str], seed: int, cache: Path, progress: bool):
        """One latent per caption (seed ``seed + i``), float32 NCHW on the CPU, read from ``cache`` when its key
        (sampler, captions, seed, size) matches, else drawn and written there."""
        import torch
        from tqdm.auto import tqdm

        from fashiongen.runtime.txt2img import Txt2ImgRequest

        def draw() -> dict:
            drawn = [self.pipeline.latents(Txt2ImgRequest(prompt=caption, seed=seed + i, height=self.size,
                                                          width=self.size, **self.settings))
                     for i, caption in enumerate(tqdm(captions, desc="sampler latents", unit="latent",
                                                      disable=not progress))]
            return {"latents": torch.from_numpy(np.concatenate(drawn)).float()}

        key = hashlib.sha256(json.dumps([self.identity(), captions, seed, self.size]).encode()).hexdigest()
        return cached_tensors(cache, key, draw)["latents"]


@dataclass
class DistillationLoss:
    """``loss_fn(step, micro, generator)`` of the shared loop: the tiny encoder's MSE to the teacher's scaled
    latents, plus the tiny decoder's pixel MSE to the image from those latents (and, weighted, to the teacher's
    decoded image, and between the two images' pixel differences)."""

    tiny: object
    teacher: object
    images: np.ndarray  # uint8 NHWC
    latents: object     # torch float32 NCHW, the teacher's scaled posterior means
    schedule: object
    teacher_weight: float
    edge_weight: float
    device: object
    basis: object       # torch 3x3: pixel errors are measured as basis @ (decoded - image)
    latent_noise: float = 0.0  # the teacher terms' latents jittered by N(0, sigma^2), sigma ~ U(0, latent_noise)
    latent_offset: float = 0.0  # and shifted by a constant ~ U(-latent_offset, latent_offset) per image and channel
    sampled: object = None      # torch float32 NCHW, one latent a image drawn by --sampler, or None

    def __call__(self, step: int, micro: int, generator):
        import torch

        from .imagefolder import to_unit_range
        from .options import step_batch

        index = step_batch(len(self.images), self.schedule, step, micro)
        pixels = torch.from_numpy(to_unit_range(self.images[index])).to(self.device)
        target = self.latents[torch.from_numpy(index)].to(self.device)
        encoded = self.tiny.encode(pixels).latents
        decoded = self.tiny.decode(target).sample.float()
        loss = (encoded.float() - target).pow(2).mean() + self.pixel_error(decoded, pixels)
        if self.teacher_weight or self.edge_weight:
            if self.latent_noise or self.latent_offset or self.sampled is not None:
                target = self.teacher_inputs(target, index, generator)
                decoded = self.tiny.decode(target).sample.float()
            with torch.no_grad():
                reference = self.teacher.decode(target / self.teacher.config.scaling_factor).sample.float()
            loss = loss + self.teacher_weight * self.pixel_error(decoded, reference)
            loss = loss + self.edge_weight * self.edge_error(decoded, reference)
        return loss

    def teacher_inputs(self, target, index, generator):
        """The latents the teacher terms decode: the encoder's, jittered; with ``sampled``, half of the batch (a
        coin an image) the sampler's latent of the image's caption in their place."""
        import torch

        if self.latent_noise or self.latent_offset:
            target = target + self.jitter(target.shape, generator).to(target.device)
        if self.sampled is not None:
            coin = (torch.rand(len(index), generator=generator) < 0.5).view(-1, 1, 1, 1).to(target.device)
            target = torch.where(coin, self.sampled[torch.from_numpy(index)].to(target.device), target)
        return target

    def jitter(self, shape, generator):
        """What the teacher terms add to the latents: per-image Gaussian noise, then per-channel constants, each
        drawn only where it is on."""
        import torch

        jitter = torch.zeros(shape)
        if self.latent_noise:
            sigma = self.latent_noise * torch.rand(shape[0], 1, 1, 1, generator=generator)
            jitter = sigma * torch.randn(shape, generator=generator)
        if self.latent_offset:
            jitter = jitter + self.latent_offset * (2 * torch.rand(*shape[:2], 1, 1, generator=generator) - 1)
        return jitter

    def whitened(self, decoded, reference):
        import torch

        return torch.einsum("ij,bjhw->bihw", self.basis, decoded - reference)

    def pixel_error(self, decoded, reference):
        return self.whitened(decoded, reference).pow(2).mean()

    def edge_error(self, decoded, reference):
        """MSE of the horizontal and vertical neighbour differences: the difference of the two images' edges."""
        error = self.whitened(decoded, reference)
        return (error.diff(dim=-1).pow(2).mean() + error.diff(dim=-2).pow(2).mean()) / 2


def _psnr(a, b) -> float:
    """PSNR in dB of images in [-1, 1] (peak-to-peak 2), clamped as they would be shown."""
    mse = float((a.clamp(-1, 1) - b.clamp(-1, 1)).pow(2).mean())
    return float(10 * np.log10(4.0 / max(mse, 1e-12)))


def measure(tiny, teacher, images: np.ndarray, latents, device) -> dict:
    """How close the tiny VAE comes, on the first images: its decoder to the images and to the teacher's
    decoder (both from the teacher's latents), its encoder to the teacher's latents, the teacher to the images."""
    import torch

    from .imagefolder import to_unit_range

    tiny.to(device).eval()
    pixels = torch.from_numpy(to_unit_range(images)).to(device)
    latents = latents.to(device)
    decoded = tiny.decode(latents).sample.float()
    reference = teacher.decode(latents / teacher.config.scaling_factor).sample.float()
    encoded = tiny.encode(pixels).latents.float()
    return {"images": len(images),
            "decoder_psnr_vs_image": round(_psnr(decoded, pixels), 2),
            "decoder_psnr_vs_teacher": round(_psnr(decoded, reference), 2),
            "teacher_psnr_vs_image": round(_psnr(reference, pixels), 2),
            "encoder_latent_rmse": round(float((encoded - latents).pow(2).mean().sqrt()), 5),
            "latent_std": round(float(latents.std()), 5)}


def write_tiny_model(out_dir: Path, tiny, record: dict) -> Path:
    """``out_dir``: the AutoencoderTiny (config.json, diffusion_pytorch_model.safetensors) and ``training.json``,
    built beside it and renamed into place."""
    from fashiongen.runtime.files import staged_folder

    with staged_folder(out_dir, "config.json", "an AutoencoderTiny folder") as stage:
        tiny.save_pretrained(stage, safe_serialization=True)
        (stage / RECORD).write_text(json.dumps(record, indent=2, sort_keys=True, default=str) + "\n")
    return out_dir

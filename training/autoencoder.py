"""``fashiongen train-vae``: train the AutoencoderKL of an SD 1.x folder on imagefolders.

A model family trained from nothing needs its autoencoder first: the UNet learns in its latent space, so
``train-vae --config SIZE.json`` writes a whole SD folder (random text encoder and UNet, the real CLIP
tokenizer) whose VAE is trained, and ``fashiongen train --model OUT/model`` trains the rest on top of it.
``--model`` instead fine-tunes the VAE of an existing checkpoint (e.g. on a catalog's look).

The loss is the autoencoder's evidence bound as latent-diffusion trains it, without the adversarial and
perceptual terms (no LPIPS network can be downloaded here): the mean squared error of the image decoded from a
posterior *sample* (as Stability's ft-MSE decoder was tuned), ``--l1-weight`` x its mean absolute error, plus
``--kl-weight`` x the KL divergence to N(0, I). L1 is off by default: it pulls an uncertain pixel to the
median colour, which on catalog images (mostly white or grey) is none (overfitting 8 product shots on a
chroma-only loss, L1 + L2 left the output grey, chroma std 0.009 of the images' 0.080 after 75 steps, while L2
alone reached 0.059 after 100). That is not the whole story: at full size the demo's (16, 32, 64, 64) VAE
stayed grey both with L1 + L2 (1,500 steps) and with MSE alone (800 steps; hue-rotated inputs move its latents
by 5%), an open problem of the demo family. At the end the config's
``scaling_factor`` is set to 1 / std of the data's latents, as SD's 0.18215 was chosen, so that the UNet
sees unit-variance latents; a fine-tuned VAE keeps its checkpoint's unless ``--rescale`` is given.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .options import add_schedule_arguments, schedule_from_args
from .text_to_image import (MODEL, add_base_arguments, add_data_arguments, base_geometry, base_identity,
                            data_digest, identity_of, image_batches, load_base, load_images, prepare_base,
                            read_config, read_data, training_record, training_size, write_model)

if TYPE_CHECKING:
    import torch

SCALE_SAMPLE = 512  # images whose latents set scaling_factor


def add_arguments(p) -> None:
    p.description = ("Train the VAE (AutoencoderKL) of an SD 1.x folder on imagefolders: start from random "
                     "weights of a --config size (the whole SD folder is written, only its VAE trained; then "
                     "`fashiongen train --model OUT/model` trains the text encoder and UNet), or fine-tune the "
                     "VAE of --model. The result is OUT/model, a diffusers folder.")
    add_base_arguments(p)
    add_data_arguments(p, "metadata.jsonl rows with file_name; captions are not needed")
    p.add_argument("--out", type=Path, required=True, help="run folder; the model goes to OUT/model")
    add_schedule_arguments(p, steps=1000, batch_size=8, learning_rate=1e-4, checkpoint_every=250)
    p.add_argument("--l1-weight", type=float, default=0.0,
                   help="weight of an L1 term beside the MSE (default 0: L1 greys out colours the model is unsure of)")
    p.add_argument("--kl-weight", type=float, default=1e-6,
                   help="weight of the KL term (default 1e-6, latent diffusion's; larger gives smoother latents)")
    p.add_argument("--rescale", action="store_true",
                   help="with --model: recompute scaling_factor from the data too (always done with --config)")
    p.set_defaults(command_name="train-vae")


def run(args) -> int:
    from fashiongen.runtime.errors import InputError

    from .runs import RunFolder, make_accelerator, train

    started = time.perf_counter()
    schedule = schedule_from_args(args)
    for name in ("kl_weight", "l1_weight"):
        if not getattr(args, name) >= 0:
            raise InputError(f"--{name.replace('_', '-')}: must be a non-negative number, got {getattr(args, name)}")
    config = read_config(args.config, args.resolution) if args.config is not None else None
    size = training_size(args.resolution, base_geometry(args, config))
    rows = read_data(args.data, require=())
    data_sha256 = data_digest(rows)
    run_folder = RunFolder(args.out, identity_of(args, schedule, base_identity(args, config), data_sha256, size,
                                                 kl_weight=args.kl_weight, l1_weight=args.l1_weight))
    run_folder.begin(args.resume)
    base = prepare_base(args, config, run_folder.out)
    vae = load_base(base)["vae"]
    device = make_accelerator(schedule).device
    images = load_images(rows, size)  # uint8: 10,000 images of 128 px are 0.5 GB
    loss = ReconstructionLoss(vae, images, schedule, args.kl_weight, args.l1_weight, device)
    losses = train(run_folder, schedule, {"vae": vae}, loss, resume=args.resume, progress=not args.no_progress,
                   description="train-vae")
    scale = vae.config.scaling_factor
    if config is not None or args.rescale:
        scale = latent_scale(vae, rows[:SCALE_SAMPLE], size, device, progress=not args.no_progress)
        vae.register_to_config(scaling_factor=scale)
    record = training_record(args, losses, started, step_losses=losses, resolution=size, scaling_factor=scale)
    model = write_model(run_folder.out / MODEL, base, {"vae": vae}, record)
    print(f"wrote {model} ({len(losses)} steps, final loss {losses[-1]:.4f}, scaling_factor {scale:.5f})")
    return 0


@dataclass
class ReconstructionLoss:
    """``loss_fn(step, micro, generator)`` of the shared loop: MSE (+ weighted L1) of the decoded posterior
    sample, plus the weighted KL term (summed over latent elements, averaged over pixels, as latent diffusion
    scales it)."""

    vae: object
    images: object  # uint8 NHWC, the whole data set
    schedule: object
    kl_weight: float
    l1_weight: float
    device: object

    def __call__(self, step: int, micro: int, generator):
        import torch

        from .imagefolder import to_unit_range
        from .runs import batch_indices

        size = self.schedule.batch_size
        index = batch_indices(len(self.images), size, (step * self.schedule.gradient_accumulation + micro) * size,
                              self.schedule.seed)
        pixels = torch.from_numpy(to_unit_range(self.images[index])).to(self.device)
        posterior = self.vae.encode(pixels).latent_dist
        latents = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=generator).to(
            self.device)
        decoded = self.vae.decode(latents).sample
        error = decoded.float() - pixels
        kl = posterior.kl().mean() / pixels[0].numel()
        return error.pow(2).mean() + self.l1_weight * error.abs().mean() + self.kl_weight * kl


def latent_scale(vae, rows: list, size: int, device, progress: bool) -> float:
    """1 / std of the posterior means of ``rows``: the scaling_factor that gives the UNet unit-variance latents."""
    import torch

    vae.to(device).eval()
    with torch.no_grad():
        means = [vae.encode(images.to(device)).latent_dist.mean.float().cpu()
                 for images in image_batches(rows, size, 16, progress, "latent scale")]
    return float(1.0 / torch.cat(means).std())

"""``fashiongen train-vae``: train the AutoencoderKL of an SD 1.x folder on imagefolders.

A model family trained from nothing needs its autoencoder first: the UNet learns in its latent space, so
``train-vae --config SIZE.json`` writes a whole SD folder (random text encoder and UNet, the real CLIP
tokenizer) whose VAE is trained, and ``fashiongen train --model OUT/model`` trains the rest on top of it.
``--model`` instead fine-tunes the VAE of an existing checkpoint (e.g. on a catalog's look).

The loss is the autoencoder's evidence bound as latent-diffusion trains it, without the perceptual term (no
LPIPS network can be downloaded here): the squared error of the image decoded from a posterior *sample* (as
Stability's ft-MSE decoder was tuned), ``--l1-weight`` x its absolute error, plus ``--kl-weight`` x the KL
divergence to N(0, I). With ``--adversarial-weight W`` latent diffusion's adversarial term joins it: a PatchGAN
(:class:`.discriminator.PatchDiscriminator`, seeded, trained beside the VAE and checkpointed with it, not saved
in the model) learns with the hinge loss to tell training images from decoded ones, and the decoder is pushed
to fool it, weighted by W x the ratio of the reconstruction's gradient to the adversarial one at the decoder's
last layer (taming-transformers' adaptive weight), so that W needs no retuning per data set; the step's loss
then includes the discriminator's. Why: a squared error alone averages what the latent leaves uncertain, so
thin stripes come back as a flat mean colour (a black-and-white striped top as grey) and a v-neck as a rounded
crewneck; the adversarial term asks for a sharp, plausible drawing instead. The error is measured in the data's
own colour basis (``--colour-whitening``, see :func:`colour_basis`): in RGB, brightness carries nearly all of
a catalog's pixel variance, and a small VAE with a 4-channel latent spends its code on brightness edges and drew
every garment grey for thousands of steps (the demo's first VAE did, with L1 + L2 and with MSE alone). L1 is
off by default: it pulls an uncertain pixel to the median colour, which on catalog images (mostly white or grey)
is none.
At the end the config's ``scaling_factor`` is set to 1 / std of the data's latents, as SD's 0.18215 was
chosen, so that the UNet sees unit-variance latents; a fine-tuned VAE keeps its checkpoint's unless
``--rescale`` is given.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .options import add_schedule_arguments, schedule_from_args
from .text_to_image import (MODEL, add_base_arguments, add_data_arguments, base_geometry, base_identity,
                            data_digest, identity_of, image_batches, load_base, load_images, prepare_base,
                            read_config, read_data, training_record, training_size, write_model)

if TYPE_CHECKING:
    import torch

SCALE_SAMPLE = 512  # images whose latents set scaling_factor
COLOUR_SAMPLE = 512  # images whose pixel covariance sets the colour basis


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
    add_colour_whitening_argument(p)
    p.add_argument("--kl-weight", type=float, default=1e-6,
                   help="weight of the KL term (default 1e-6, latent diffusion's; larger gives smoother latents)")
    p.add_argument("--adversarial-weight", type=float, default=0.0, metavar="W",
                   help="add latent diffusion's PatchGAN term, W x the adaptive weight (0.5 is theirs; default 0: "
                        "off): sharp stripes and necklines instead of their blurred mean")
    p.add_argument("--rescale", action="store_true",
                   help="with --model: recompute scaling_factor from the data too (always done with --config)")
    p.add_argument("--decoder-only", action="store_true",
                   help="with --model: train the decoder only, the encoder frozen, so the latent space (and every "
                        "UNet trained on it) stays valid, as Stability's ft-MSE decoder was tuned for SD 1.x")
    p.set_defaults(command_name="train-vae")


def run(args) -> int:
    from fashiongen.runtime.errors import InputError

    from .runs import RunFolder, make_accelerator, train

    started = time.perf_counter()
    schedule = schedule_from_args(args)
    for name in ("kl_weight", "l1_weight", "adversarial_weight"):
        if not getattr(args, name) >= 0:
            raise InputError(f"--{name.replace('_', '-')}: must be a non-negative number, got {getattr(args, name)}")
    check_colour_whitening(args.colour_whitening)
    if args.decoder_only and (args.config is not None or args.rescale):
        raise InputError("--decoder-only: needs --model (a trained VAE whose latents stay) and no --rescale")
    config = read_config(args.config, args.resolution) if args.config is not None else None
    size = training_size(args.resolution, base_geometry(args, config))
    rows = read_data(args.data, require=())
    data_sha256 = data_digest(rows)
    run_folder = RunFolder(args.out, identity_of(args, schedule, base_identity(args, config), data_sha256, size,
                                                 kl_weight=args.kl_weight, l1_weight=args.l1_weight,
                                                 colour_whitening=args.colour_whitening,
                                                 decoder_only=args.decoder_only,
                                                 **({"adversarial_weight": args.adversarial_weight}
                                                    if args.adversarial_weight else {})))
    run_folder.begin(args.resume)
    base = prepare_base(args, config, run_folder.out)
    vae = load_base(base)["vae"]
    device = make_accelerator(schedule).device
    images = load_images(rows, size)  # uint8: 10,000 images of 128 px are 0.5 GB
    basis = colour_basis(images[:COLOUR_SAMPLE], args.colour_whitening)
    recolour(vae, basis)  # train in the whitened basis; checkpoints hold these coordinates
    if args.decoder_only:
        vae.encoder.requires_grad_(False)
        vae.quant_conv.requires_grad_(False)
    trainable = {"vae": vae}
    if args.adversarial_weight:
        from .discriminator import PatchDiscriminator

        trainable["discriminator"] = PatchDiscriminator.seeded(schedule.seed)
    loss = ReconstructionLoss(vae, images, schedule, args.kl_weight, args.l1_weight, basis, device,
                              decoder_only=args.decoder_only, discriminator=trainable.get("discriminator"),
                              adversarial_weight=args.adversarial_weight)
    losses = train(run_folder, schedule, trainable, loss, resume=args.resume, progress=not args.no_progress,
                   description="train-vae")
    recolour(vae, np.linalg.inv(basis))  # back to RGB: the saved VAE reads and writes plain pixels
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
    basis: np.ndarray  # 3x3, pixels are compared (and fed) as basis @ rgb
    device: object
    decoder_only: bool = False  # the encoder frozen: no KL term, no encoder graph
    discriminator: object = None  # a PatchDiscriminator with adversarial_weight > 0
    adversarial_weight: float = 0.0

    def __call__(self, step: int, micro: int, generator):
        import torch

        from .imagefolder import to_unit_range
        from .options import step_batch

        index = step_batch(len(self.images), self.schedule, step, micro)
        rgb = torch.from_numpy(to_unit_range(self.images[index]))
        pixels = torch.einsum("ij,bjhw->bihw", torch.from_numpy(self.basis).float(), rgb).to(self.device)
        with torch.set_grad_enabled(not self.decoder_only):
            posterior = self.vae.encode(pixels).latent_dist
        latents = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=generator).to(
            self.device)
        decoded = self.vae.decode(latents).sample
        error = decoded.float() - pixels
        loss = error.pow(2).mean() + self.l1_weight * error.abs().mean()
        if self.discriminator is not None:
            loss = loss + self.adversarial_terms(loss, decoded, pixels)
        if self.decoder_only:
            return loss
        return loss + self.kl_weight * posterior.kl().mean() / pixels[0].numel()

    def adversarial_terms(self, reconstruction, decoded, pixels):
        """The decoder's adaptively weighted adversarial loss plus the discriminator's hinge loss, in one sum
        whose gradient reaches each from its own term only (the shared loop has one optimizer): the decoder's
        term sees the discriminator's weights detached, the discriminator's sees the decoded images detached."""
        import torch
        from torch.func import functional_call

        frozen = {name: value.detach() for name, value in self.discriminator.named_parameters()}
        generator_loss = -functional_call(self.discriminator, frozen, (decoded,)).mean()
        last = self.vae.decoder.conv_out.weight
        rec_grad, = torch.autograd.grad(reconstruction, last, retain_graph=True)
        gan_grad, = torch.autograd.grad(generator_loss, last, retain_graph=True)
        weight = (rec_grad.norm() / (gan_grad.norm() + 1e-4)).clamp(0, 1e4).detach() * self.adversarial_weight
        real, fake = self.discriminator(pixels), self.discriminator(decoded.detach())
        hinge = torch.relu(1 - real).mean() + torch.relu(1 + fake).mean()
        return weight * generator_loss + hinge


def add_colour_whitening_argument(p) -> None:
    """``--colour-whitening``, shared by every command that trains a decoder to redraw pixels."""
    p.add_argument("--colour-whitening", type=float, default=0.375, metavar="P",
                   help="measure the error in the data's colour basis, each direction scaled by variance^-P: 0 is "
                        "plain RGB MSE (a small decoder then learns hue last, if at all), 0.5 weighs every colour "
                        "direction the same (hue first, brightness blurred); default 0.375, the demo family's")


def check_colour_whitening(value: float) -> None:
    from fashiongen.runtime.errors import InputError

    if not 0 <= value <= 0.5:
        raise InputError(f"--colour-whitening: must be between 0 and 0.5, got {value}")


def colour_basis(images: np.ndarray, power: float) -> np.ndarray:
    """Sigma^-power of the RGB pixel covariance of uint8 NHWC ``images``, scaled to determinant 1.

    Why: in catalog images brightness carries ~95% of the pixel variance (the colour directions of the demo
    data have 1/25 and 1/75 of it), so under RGB MSE an autoencoder learns hue that much more slowly and after
    thousands of steps still draws every garment grey. Measured in this basis (power 0.5) each direction
    weighs the same, but a 4-channel latent then blurs brightness (on the demo data, RGB error 0.2 after 300
    steps against 0.04); 0.375 learned both. The determinant keeps the loss on RGB's scale.
    """
    from .imagefolder import to_unit_range

    pixels = to_unit_range(images).transpose(1, 0, 2, 3).reshape(3, -1).astype(np.float64)
    values, vectors = np.linalg.eigh(np.cov(pixels))
    basis = vectors @ np.diag(np.maximum(values, 1e-8) ** -power) @ vectors.T
    return (basis / abs(np.linalg.det(basis)) ** (1 / 3)).astype(np.float32)


def recolour(vae, basis: np.ndarray) -> None:
    """Rewrite ``vae`` in place to read ``basis @ rgb`` and write ``basis @ rgb`` while computing the same
    function: its first and last convolutions absorb the change of basis (exact, the map is linear and zero
    padding stays zero). ``recolour(vae, inv(basis))`` undoes it."""
    import torch

    with torch.no_grad():
        a = torch.from_numpy(np.asarray(basis, dtype=np.float32))
        conv_in, conv_out = vae.encoder.conv_in, vae.decoder.conv_out
        conv_in.weight.copy_(torch.einsum("oikl,ij->ojkl", conv_in.weight, torch.linalg.inv(a).to(conv_in.weight)))
        conv_out.weight.copy_(torch.einsum("ij,jokl->iokl", a.to(conv_out.weight), conv_out.weight))
        if conv_out.bias is not None:
            conv_out.bias.copy_(a.to(conv_out.bias) @ conv_out.bias)


def latent_scale(vae, rows: list, size: int, device, progress: bool) -> float:
    """1 / std of the posterior means of ``rows``: the scaling_factor that gives the UNet unit-variance latents."""
    import torch

    vae.to(device).eval()
    with torch.no_grad():
        means = [vae.encode(images.to(device)).latent_dist.mean.float().cpu()
                 for images in image_batches(rows, size, 16, progress, "latent scale")]
    return float(1.0 / torch.cat(means).std())

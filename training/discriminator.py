"""The PatchGAN discriminator of ``train-vae --adversarial-weight`` (imported only then: it needs torch)."""
from __future__ import annotations

import torch
from torch import nn


class PatchDiscriminator(nn.Module):
    """pix2pix's PatchGAN, as latent diffusion's autoencoder loss uses it, sized for small images: 4x4
    convolutions (32, 64, 128 channels, the first two strided), one real-or-decoded score per ~30 px patch.
    Group norm stands in for batch norm, so that an image's scores depend on that image only."""

    def __init__(self, widths: tuple[int, ...] = (32, 64, 128)):
        super().__init__()
        layers, previous = [], 3
        for i, width in enumerate(widths):
            layers.append(nn.Conv2d(previous, width, 4, stride=2 if i < len(widths) - 1 else 1, padding=1))
            if i:
                layers.append(nn.GroupNorm(8, width))
            layers.append(nn.LeakyReLU(0.2))
            previous = width
        layers.append(nn.Conv2d(previous, 1, 4, stride=1, padding=1))
        self.layers = nn.Sequential(*layers)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.layers(images)

    @classmethod
    def seeded(cls, seed: int) -> "PatchDiscriminator":
        """Initial weights from ``seed`` alone (torch's global generator left as it was), so a resumed run's
        identity holds."""
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            return cls()

"""One small variational autoencoder per class: the generative model of the ``abs`` judge.

Analysis by synthesis (Schott et al. 2019, "Towards the first adversarially robust neural network
model on MNIST"): class c's model p_c(x) is a VAE with a Gaussian posterior q_c(z | x) = N(mu, sigma^2)
over ``latent`` dimensions, a standard normal prior, and a Bernoulli decoder on pixel intensities in
[0,1]. The class of an image is the one whose model explains it best.

The score of class c is the deterministic evidence lower bound

    ELBO_c(x) = log p_c(x | z = mu_c(x)) - KL(q_c(z | x) || N(0, I))

(the reconstruction term at the posterior mean instead of a sampled estimate, so that a verdict is a
function of the image alone, repeatable and differentiable). Training maximises the usual sampled
ELBO of each class's model on that class's images only.

Architectures: ``conv`` for images whose sides are multiples of 4 and at least 16 px (28x28 MNIST):
two stride-2 convolutions (``width``, 2 ``width`` channels) and a linear layer to (mu, log sigma^2),
mirrored by two transposed convolutions; ``mlp`` otherwise (8x8 digits): one hidden layer of 8
``width`` units each way. Shapes: images (N, C, H, W) in [0,1]; :meth:`ClassVAEs.forward` returns
(N, K) ELBOs in nats.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from calib.errors import ConfigError

ARCHS = ("conv", "mlp")


def default_vae_arch(input_shape: tuple[int, int, int]) -> str:
    """``conv`` when both sides are multiples of 4 of at least 16 px, else ``mlp``."""
    _, h, w = input_shape
    return "conv" if min(h, w) >= 16 and h % 4 == 0 and w % 4 == 0 else "mlp"


class VAE(nn.Module):
    """One class's model: (N, C, H, W) -> posterior (mu, logvar) (N, latent) and decoder logits."""

    def __init__(self, *, input_shape: tuple[int, int, int], latent: int = 8, width: int = 16,
                 arch: str = "conv") -> None:
        super().__init__()
        if arch not in ARCHS:
            raise ConfigError(f"unknown VAE architecture {arch!r}; choose one of {', '.join(ARCHS)}")
        if latent < 1 or width < 1:
            raise ConfigError(f"VAE latent size and width must be >= 1; got {latent}, {width}")
        c, h, w = input_shape
        self.input_shape, self.latent, self.arch = (c, h, w), latent, arch
        n = c * h * w
        if arch == "conv":
            if h % 4 or w % 4:
                raise ConfigError(f"the conv VAE needs sides that are multiples of 4; got {h}x{w}")
            self.hidden_shape = (2 * width, h // 4, w // 4)
            flat = 2 * width * (h // 4) * (w // 4)
            self.encoder = nn.Sequential(nn.Conv2d(c, width, 4, 2, 1), nn.ReLU(),
                                         nn.Conv2d(width, 2 * width, 4, 2, 1), nn.ReLU(), nn.Flatten())
            self.decoder_in = nn.Linear(latent, flat)
            self.decoder = nn.Sequential(nn.ReLU(), nn.Unflatten(1, self.hidden_shape),
                                         nn.ConvTranspose2d(2 * width, width, 4, 2, 1), nn.ReLU(),
                                         nn.ConvTranspose2d(width, c, 4, 2, 1))
        else:
            flat = 8 * width
            self.encoder = nn.Sequential(nn.Flatten(), nn.Linear(n, flat), nn.ReLU())
            self.decoder_in = nn.Linear(latent, flat)
            self.decoder = nn.Sequential(nn.ReLU(), nn.Linear(flat, n), nn.Unflatten(1, (c, h, w)))
        self.posterior = nn.Linear(flat, 2 * latent)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mu, logvar), each (N, latent); logvar clamped to [-10, 10] for stability."""
        mu, logvar = self.posterior(self.encoder(x)).chunk(2, dim=1)
        return mu, logvar.clamp(-10.0, 10.0)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Bernoulli logits (N, C, H, W) of the pixels given latents (N, latent)."""
        return self.decoder(self.decoder_in(z))

    def elbo(self, x: torch.Tensor, sample: bool = False) -> torch.Tensor:
        """(N,) ELBO in nats: reconstruction at the posterior mean (``sample=False``) or at one
        reparameterised sample (training), minus the posterior's KL to the prior."""
        mu, logvar = self.encode(x)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar) if sample else mu
        rec = -F.binary_cross_entropy_with_logits(self.decode(z), x, reduction="none").flatten(1).sum(1)
        kl = 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(1)
        return rec - kl


class ClassVAEs(nn.Module):
    """K class models; ``forward(x)`` is the (N, K) matrix of deterministic ELBOs, whose argmax is the
    class that explains x best. ``forward(x, y)`` is the training loss per image (N,): the negative
    sampled ELBO of its own class's model (a class absent from the batch contributes an exact zero
    that still touches its parameters, so DistributedDataParallel sees every parameter used)."""

    def __init__(self, *, input_shape: tuple[int, int, int], num_classes: int, latent: int = 8, width: int = 16,
                 arch: str | None = None) -> None:
        super().__init__()
        arch = arch or default_vae_arch(input_shape)
        self.num_classes, self.latent, self.width, self.arch = num_classes, latent, width, arch
        self.models = nn.ModuleList(VAE(input_shape=input_shape, latent=latent, width=width, arch=arch)
                                    for _ in range(num_classes))

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        if y is None:
            return torch.stack([m.elbo(x) for m in self.models], 1)
        loss = x.new_zeros(x.shape[0])
        for c, m in enumerate(self.models):
            rows = (y == c).nonzero().squeeze(1)
            if rows.numel():
                loss = loss.index_put((rows,), -m.elbo(x[rows], sample=True))
            else:
                loss = loss + 0.0 * sum(p.sum() for p in m.parameters())
        return loss

    def bits_per_pixel(self, elbo: torch.Tensor) -> torch.Tensor:
        """An ELBO in nats as bits per input value (a size-free unit for reports)."""
        n = math.prod(self.models[0].input_shape)
        return -elbo / (n * math.log(2.0))

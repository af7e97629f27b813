"""A hierarchical VAE: several stochastic layers top-down, with spatial latent maps at several resolutions
(``--model ladder``; ``ladder-pixel`` adds the PixelCNN head of ``autoregressive.py`` on top).

The shape of Sønderby et al.'s Ladder VAE (2016) with the cells of NVAE (Vahdat & Kautz 2020) and VDVAE (Child 2021):

* bottom-up, a deterministic residual path reads x and keeps its features at 16x16, 8x8 and 4x4;
* top-down, from a learned 4x4 state, each group g of latents has a prior p(z_g | z_>g) and a posterior
  q(z_g | x, z_>g), both diagonal Gaussians computed from the top-down state (and, for q, the bottom-up feature of
  the same resolution); the posterior is parameterised as a shift of the prior (NVAE's residual normal), which keeps
  early training stable; z_g enters the state through a 1x1 convolution and a residual cell; the state is upsampled
  between resolutions and turned into the parameters of p(x | z) at the image's size.

KL(q || p) of each group is analytic (two Gaussians), summed over its spatial positions per channel: those are the
model's latent *units* for free bits and for the KL per unit in metrics.jsonl. The importance-weighted bound uses one
sample per group and the exact log densities: log w = log p(x | z) + sum_g log p(z_g | z_>g) - log q(z_g | x, z_>g).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..objectives import LOG_2PI, at_least_float32
from .autoregressive import MaskedHead
from .encoders import with_label_maps
from .likelihoods import Likelihood
from .noise import standard_normal
from .residual import ResidualBlock, _levels
from .vae import VAE

LOG_SIGMA_BOUND = 5.0  # log-sigmas are soft-clamped to +-5: the KL stays finite when a layer misbehaves early


class Group(NamedTuple):
    name: str
    size: int      # the latent map is channels x size x size
    channels: int


def default_groups(image_size: int, channels: int = 8) -> list[Group]:
    """Two groups at 4x4, two at 8x8, one at 16x16 (and one at 32x32 for images of 64x64 and up): coarse shape
    first."""
    sizes = [4, 4, 8, 8, 16] + ([32] if image_size >= 64 else [])
    return [Group(f"z{k + 1} {s}x{s}", s, channels) for k, s in enumerate(sizes)]


def soft_clamp(t: torch.Tensor, bound: float = LOG_SIGMA_BOUND) -> torch.Tensor:
    return bound * torch.tanh(t / bound)


def gaussian_log_density(z: torch.Tensor, mu: torch.Tensor, log_sigma: torch.Tensor) -> torch.Tensor:
    """log N(z; mu, sigma), summed over every dimension but the first (float32 at least)."""
    z, mu, log_sigma = (at_least_float32(t) for t in (z, mu, log_sigma))
    return (-0.5 * (((z - mu) * torch.exp(-log_sigma)) ** 2 + LOG_2PI) - log_sigma).flatten(1).sum(1)


def gaussian_kl_maps(mu_q, log_sigma_q, mu_p, log_sigma_p) -> torch.Tensor:
    """KL(q || p) of two diagonal Gaussians per channel, summed over positions: N x C (float32 at least)."""
    mu_q, log_sigma_q, mu_p, log_sigma_p = (at_least_float32(t) for t in (mu_q, log_sigma_q, mu_p, log_sigma_p))
    kl = log_sigma_p - log_sigma_q + (torch.exp(2 * log_sigma_q) + (mu_q - mu_p) ** 2) / (2 * torch.exp(2 * log_sigma_p)) - 0.5
    return kl.flatten(2).sum(2)


class BottomUp(nn.Module):
    """x (and a conditional model's label maps) -> the features at 16x16, 8x8, 4x4 (and 32x32 for 64x64 images),
    keyed by size. Called the model's ``encoder``: it is what reads the images."""

    def __init__(self, image_size: int = 32, channels: int = 1, classes: int = 0, width: int = 64):
        super().__init__()
        levels = _levels(image_size, "ladder encoder")
        self.sizes = [image_size // 2 ** (k + 1) for k in range(levels)]  # 16, 8, 4 (and 32 first at 64 x 64)
        self.stem = nn.Conv2d(channels + classes, width, 3, padding=1)
        self.stages = nn.ModuleList(nn.Sequential(ResidualBlock(width), nn.ELU(), nn.Conv2d(width, width, 4, 2, 1))
                                    for _ in range(levels))
        self.cells = nn.ModuleList(ResidualBlock(width) for _ in range(levels))

    def forward(self, x: torch.Tensor, onehot: torch.Tensor | None = None) -> dict[int, torch.Tensor]:
        h = self.stem(with_label_maps(x, onehot))
        features = {}
        for size, stage, cell in zip(self.sizes, self.stages, self.cells):
            h = cell(stage(h))
            features[size] = h
        return features


class TopDown(nn.Module):
    """The generative path: z of every group (a flat vector, or drawn as it goes) -> the parameters of p(x | z), or
    -> the features a PixelCNN head reads. Called the model's ``decoder``: ``decoder(z)`` decodes a flat z."""

    def __init__(self, groups: list[Group], image_size: int = 32, out_channels: int = 1, classes: int = 0,
                 width: int = 64):
        super().__init__()
        self.groups, self.image_size, self.width, self.classes = groups, image_size, width, classes
        self.start = nn.Parameter(torch.zeros(1, width, 4, 4))
        self.label = nn.Linear(classes, width) if classes else None
        self.prior = nn.ModuleList(nn.Conv2d(width, 2 * g.channels, 1) for g in groups)
        self.posterior = nn.ModuleList(nn.Conv2d(2 * width, 2 * g.channels, 3, padding=1) for g in groups)
        self.merge = nn.ModuleList(nn.Conv2d(g.channels, width, 1) for g in groups)
        self.cells = nn.ModuleList(ResidualBlock(width) for _ in groups)
        # every doubling from the coarsest group to the image has its convolution (for 32 and 64: the groups' sizes)
        sizes = [min(g.size for g in groups) * 2 ** k for k in range(image_size.bit_length())]
        sizes = [s for s in sizes if s <= image_size]
        self.up = nn.ModuleDict({str(s): nn.Conv2d(width, width, 3, padding=1) for s in sizes[1:]})
        self.finish = ResidualBlock(width)
        self.out = nn.Conv2d(width, out_channels, 3, padding=1)

    @property
    def units(self) -> int:
        """Values in one sample of every group's z (the length of a flat z)."""
        return sum(g.channels * g.size * g.size for g in self.groups)

    def special_init(self) -> None:
        """Each group's posterior starts equal to its prior (a zero shift), and z enters the state at zero weight:
        the deep path starts as the identity, as the residual cells do (its KL starts at 0, training is stable)."""
        for conv in list(self.posterior) + list(self.merge):
            nn.init.zeros_(conv.weight)
            nn.init.zeros_(conv.bias)

    def initial(self, n: int, onehot: torch.Tensor | None) -> torch.Tensor:
        h = self.start.expand(n, -1, -1, -1)
        return h if self.label is None else h + self.label(onehot.to(h.dtype))[:, :, None, None]

    def resize(self, h: torch.Tensor, size: int, current: int) -> torch.Tensor:
        """The state (``current`` x ``current``) brought up to ``size`` x ``size``: nearest-neighbour doublings, each
        with a 3x3 convolution. The sizes are Python numbers, so a traced export follows them."""
        while current < size:
            current *= 2
            h = F.interpolate(h, scale_factor=2, mode="nearest")
            h = h + self.up[str(current)](F.elu(h))
        return h

    def prior_of(self, g: int, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, log_sigma = self.prior[g](F.elu(h)).chunk(2, dim=1)
        return mu, soft_clamp(log_sigma)

    def posterior_of(self, g: int, h: torch.Tensor, feature: torch.Tensor, prior) -> tuple[torch.Tensor, torch.Tensor]:
        """q(z_g | x, z_>g) as a shift of the prior (NVAE's residual normal)."""
        shift, log_scale = self.posterior[g](F.elu(torch.cat([h, feature], 1))).chunk(2, dim=1)
        return prior[0] + shift, soft_clamp(prior[1] + log_scale)

    def absorb(self, g: int, h: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return self.cells[g](h + self.merge[g](z))

    def features(self, h: torch.Tensor) -> torch.Tensor:
        """The features at the image's size, from the state after the last (finest) group."""
        return self.finish(self.resize(h, self.image_size, self.groups[-1].size))

    def state(self, z: torch.Tensor, onehot: torch.Tensor | None = None) -> torch.Tensor:
        """The final top-down state for a flat z of every group (the conditional model's one-hot labels beside)."""
        h, current = self.initial(z.shape[0], onehot), 4
        for g, part in enumerate(self.split(z)):
            h = self.absorb(g, self.resize(h, self.groups[g].size, current), part)
            current = self.groups[g].size
        return h

    def forward(self, z: torch.Tensor, onehot: torch.Tensor | None = None) -> torch.Tensor:
        """The parameters of p(x | z) (without a head: what an export draws)."""
        return self.out(F.elu(self.features(self.state(z, onehot))))

    def split(self, z: torch.Tensor) -> list[torch.Tensor]:
        """A flat z (N x units) -> one N x C x S x S map per group."""
        parts, start = [], 0
        for g in self.groups:
            count = g.channels * g.size * g.size
            parts.append(z[:, start:start + count].reshape(z.shape[0], g.channels, g.size, g.size))
            start += count
        return parts

    # the constant-input dots test of `convae models` feeds the upsampling layers: their 3x3 convolutions' zero
    # padding reaches 2 pixels in from the edge of the doubled map
    padding_reach = 4

    def upsampling_stack(self) -> tuple[nn.Module, int]:
        """The last doubling, to the image's size (the dots test feeds it a constant map of half that size)."""
        return _Resize(self, self.image_size), self.width


class _Resize(nn.Module):
    def __init__(self, top_down: TopDown, size: int):
        super().__init__()
        self.top_down, self.size = top_down, size

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.top_down.resize(h, self.size, self.size // 2)


class LadderOutput(NamedTuple):
    logits: torch.Tensor  # the parameters of p(x | z)
    kl: torch.Tensor      # N x units: KL of each group's channels, summed over positions
    mu: torch.Tensor      # N x latent_dim: the posterior means of every group, flat
    sigma: torch.Tensor   # N x latent_dim
    z: torch.Tensor       # N x latent_dim, the sample the decoder saw


class LadderVAE(VAE):
    """The model: ``encoder`` the bottom-up path, ``decoder`` the top-down one; ``head`` an optional PixelCNN head
    (then p(x | z) reads the pixels before each pixel, and pictures are drawn pixel by pixel)."""

    def __init__(self, encoder: BottomUp, decoder: TopDown, likelihood: Likelihood, classes: int = 0,
                 head: nn.Module | None = None):
        super().__init__(encoder, decoder, decoder.units, likelihood, classes)
        self.head = head
        self.groups = decoder.groups

    @property
    def autoregressive(self) -> bool:
        return self.head is not None

    @property
    def kl_unit_names(self) -> list[str]:
        """The latent units of the KL terms: each group's channels."""
        return [f"{g.name} channel {c}" for g in self.groups for c in range(g.channels)]

    def infer(self, x: torch.Tensor, labels: torch.Tensor | None = None):
        """What the posterior of every group is computed from: the bottom-up features (and the labels)."""
        onehot = self.onehot(labels, len(x))
        return self.encoder(x, onehot), onehot

    def walk(self, posterior, noise, n: int, *, sample_prior: bool = False,
             means: bool = False) -> tuple[list[tuple], torch.Tensor]:
        """The top-down pass of ``n`` images: for each group its prior, its posterior (None with ``sample_prior``) and
        z (the posterior mean with ``means``, else mean + sigma * noise(g, shape)). Returns those steps, (g, prior,
        posterior, z) each, and the final state."""
        features, onehot = posterior
        h, current = self.decoder.initial(n, onehot), 4
        steps = []
        for g, group in enumerate(self.groups):
            h, current = self.decoder.resize(h, group.size, current), group.size
            prior = self.decoder.prior_of(g, h)
            post = None if sample_prior else self.decoder.posterior_of(g, h, features[group.size], prior)
            mu, log_sigma = prior if sample_prior else post
            z = mu if means else mu + torch.exp(log_sigma) * noise(g, mu.shape)
            steps.append((g, prior, post, z))
            h = self.decoder.absorb(g, h, z)
        return steps, h

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None, *, generator: torch.Generator | None = None,
                eps: torch.Tensor | None = None) -> LadderOutput:
        posterior = self.infer(x, labels)
        parts = None if eps is None else self.decoder.split(eps)

        def noise(g, shape):
            if parts is not None:
                return parts[g]
            return standard_normal(shape, generator=generator, device=x.device, dtype=x.dtype)

        steps, h = self.walk(posterior, noise, len(x))
        kl = torch.cat([gaussian_kl_maps(*post, *prior) for _, prior, post, _ in steps], 1)
        mu, sigma, z = (torch.cat([t.flatten(1) for t in parts], 1) for parts in
                        zip(*((post[0], torch.exp(post[1]), z) for _, _, post, z in steps)))
        return LadderOutput(self.parameters_of_x(h, x), kl, mu, sigma, z)

    def parameters_of_x(self, h: torch.Tensor, x: torch.Tensor | None) -> torch.Tensor:
        """The parameters of p(x | z) from the final top-down state (a head reads the pixels of ``x`` before each)."""
        features = self.decoder.features(h)
        if self.head is None:
            return self.decoder.out(F.elu(features))
        return self.head(x, features)

    @property
    def kl_unit_count(self) -> int:
        return sum(g.channels for g in self.groups)

    def closed_form_kl_of(self, posterior) -> None:
        """Each group's KL needs the top-down pass (``forward``): under --iw-train the logged KL is the samples'
        mean of log q - log p."""
        return None

    def kl_units(self, out: LadderOutput, dtype: torch.dtype | None = None) -> torch.Tensor:
        return out.kl if dtype is None else out.kl.to(dtype)

    @property
    def noise_dim(self) -> int:
        return self.decoder.units

    def encode_onehot(self, x: torch.Tensor, onehot: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """The posterior of every group, each computed with the groups above it at their posterior means: means and
        standard deviations, flat (N x latent_dim; ``named_groups`` cuts them into the groups)."""
        steps, _ = self.walk((self.encoder(x, onehot), onehot), None, len(x), means=True)
        return (torch.cat([post[0].flatten(1) for _, _, post, _ in steps], 1),
                torch.cat([torch.exp(post[1]).flatten(1) for _, _, post, _ in steps], 1))

    def named_groups(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """A flat N x latent_dim tensor of every group -> {group name: N x C x S x S}."""
        return {g.name: part for g, part in zip(self.groups, self.decoder.split(flat))}

    def decode(self, z: torch.Tensor, x: torch.Tensor | None = None, labels: torch.Tensor | None = None) -> torch.Tensor:
        return self.parameters_of_x(self.decoder.state(z, self.onehot(labels, len(z))), x)

    # every group's prior and posterior come from the top-down path: the bound decodes in float32 only
    decoder_holds_no_density = False

    def log_weight_terms(self, x: torch.Tensor, posterior, eps: torch.Tensor, labels: torch.Tensor | None = None,
                         decode_dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """log p(x | z_k), sum_g log p(z_g,k | z_>g,k), sum_g log q(z_g,k | x, z_>g,k), each N x K, for K samples of
        every group (eps: N x K x noise_dim) from the features ``posterior`` = ``infer(x)``. ``decode_dtype`` is
        not used (``decoder_holds_no_density``)."""
        n, k, _ = eps.shape
        features, onehot = posterior
        repeated = ({s: f.repeat_interleave(k, 0) for s, f in features.items()},
                    None if onehot is None else onehot.repeat_interleave(k, 0))
        parts = self.decoder.split(eps.reshape(n * k, -1))
        steps, h = self.walk(repeated, lambda g, shape: parts[g], n * k)
        log_p = sum(gaussian_log_density(z, *prior) for _, prior, _, z in steps)
        log_q = sum(gaussian_log_density(z, *post) for _, _, post, z in steps)
        targets = x.repeat_interleave(k, 0) if self.head is not None else None  # a head reads the pixels
        log_px_z = -self.likelihood.nll_of_samples(self.parameters_of_x(h, targets), x, k)
        return log_px_z, log_p.view(n, k), log_q.view(n, k)

    @torch.no_grad()
    def generate(self, z: torch.Tensor, generator: torch.Generator | None = None, *,
                 labels: torch.Tensor | None = None) -> torch.Tensor:
        if self.head is None:
            return self.likelihood.mean(self.decode(z, labels=labels))
        features = self.decoder.features(self.decoder.state(z, self.onehot(labels, len(z))))
        return self.head.draw_pixels(features, lambda p: self.likelihood.draw(p, generator))

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None, *,
               labels: torch.Tensor | None = None) -> torch.Tensor:
        """Pictures for z drawn from the priors, group by group, top down."""
        p = next(self.parameters())
        if self.classes and labels is None:
            labels = torch.randint(self.classes, (n,), generator=generator, device=p.device)
        def noise(g, shape):
            return torch.randn(shape, generator=generator, device=p.device, dtype=p.dtype)

        steps, _ = self.walk(({}, self.onehot(labels, n)), noise, n, sample_prior=True)
        return self.generate(torch.cat([z.flatten(1) for *_, z in steps], 1), generator, labels=labels)

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, generator: torch.Generator | None = None, *,
                    labels: torch.Tensor | None = None) -> torch.Tensor:
        """Pictures for one z ~ q(z | x) per image."""
        if self.head is None:
            return self.likelihood.mean(self(x, labels, generator=generator).logits)
        return self.generate(self(x, labels, generator=generator).z, generator, labels=labels)


class PixelHead(MaskedHead, nn.Module):
    """The PixelCNN head of ``autoregressive.py`` on the ladder's features: p(x | z) reads the pixels above and to the
    left; one gray channel."""

    def __init__(self, features: int, width: int = 32, layers: int = 4, out_channels: int = 1):
        super().__init__()
        if out_channels != 1:
            raise ValueError(f"the ladder's pixel head draws gray images with one output per pixel, not "
                             f"{out_channels} output channel(s)")
        self.build_head(width, features, layers, out_channels)

    def forward(self, x: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        return self.head(x, features)


def build_ladder(image_size: int, channels: int, likelihood: Likelihood, classes: int = 0, *,
                 pixel_head: bool = False, width: int = 64) -> LadderVAE:
    """The ladder for ``channels`` x ``image_size`` x ``image_size`` images (32 or 64)."""
    groups = default_groups(image_size)
    encoder = BottomUp(image_size, channels, classes, width)
    out = channels * likelihood.params_per_channel
    decoder = TopDown(groups, image_size, out, classes, width)
    head = PixelHead(width, out_channels=out) if pixel_head else None
    return LadderVAE(encoder, decoder, likelihood, classes, head)


def build_ladder_pixel(image_size: int, channels: int, likelihood: Likelihood, classes: int = 0) -> LadderVAE:
    """The ladder with the PixelCNN head on top (gray images, one output per pixel)."""
    return build_ladder(image_size, channels, likelihood, classes, pixel_head=True)


__all__ = ["BottomUp", "Group", "LadderOutput", "LadderVAE", "PixelHead", "TopDown", "build_ladder",
           "build_ladder_pixel"]

"""Measuring the seed's "dots": checkerboard artifacts of upsampling layers, as numbers.

A decoder whose last upsampling has stride s paints a pattern with period s when its s x s phases are treated
differently. In the 2-D DFT of an N x N image, an s-periodic pattern lives at the alias frequencies, the
multiples of N/s in both directions (for 32 x 32 and s = 4: 0, 8, 16, 24). We measure:

* ``alias_share``: the share of spectral energy (DC removed) at those frequencies. Real digits put a little
  energy there; a checkerboard puts a lot. We divide by the same share for real test images: 1.0 = like the data.
  Computed per image (then averaged) and on the mean of many images, where the content averages out and a
  fixed periodic bias survives.
* ``peak_ratio``: the power at the alias frequencies divided by the mean power of their 8 neighbours in the
  spectrum. The share above also falls when images are blurrier (less energy at every high frequency); the
  ratio to the neighbours does not, and it is what a checkerboard changes: it puts spikes on a smooth spectrum.
  Reported as ``peak_score`` (median per image, divided by the data's); a diagnostic beside the share.
* ``polyphase_spread``: split the (mean) image into its s^2 phases (pixels (i, j) with i % s = a, j % s = b),
  average each, and report the spread of those s^2 means relative to their mean.
* ``flat_response``: feed a constant feature map to a decoder's upsampling stack and measure how far the output
  is from flat away from the borders (0 = flat). Needs no training.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ..runs import Run
from ..visualisation import spectrum_panel

# The seed decoder's last layer has stride 4; the others upsample x2 three times, and a x2 pattern also has its
# energy at multiples of N/4, so one set of alias frequencies serves every decoder.
ALIAS_STRIDE = 4


def alias_mask(size: int, stride: int) -> torch.Tensor:
    """Boolean size x size mask of the alias frequencies (multiples of size / stride), DC excluded."""
    if size % stride:
        raise ValueError(f"image size {size} is not a multiple of the stride {stride}")
    on = torch.arange(size) % (size // stride) == 0
    mask = on[:, None] & on[None, :]
    mask[0, 0] = False
    return mask


def power_spectrum(images: torch.Tensor) -> torch.Tensor:
    """|DFT|^2 of each image (N x H x W or N x 1 x H x W) with its mean removed, float64."""
    x = images.double().reshape(-1, images.shape[-2], images.shape[-1])
    x = x - x.mean(dim=(-2, -1), keepdim=True)
    return torch.fft.fft2(x).abs().square()


def alias_share(images: torch.Tensor, stride: int) -> torch.Tensor:
    """Per image: energy at the alias frequencies / all energy (DC removed). Flat images give 0."""
    power = power_spectrum(images)
    mask = alias_mask(images.shape[-1], stride).to(power.device)
    total = power.sum(dim=(-2, -1))
    return torch.where(total > 0, power[:, mask].sum(-1) / total.clamp_min(1e-300), torch.zeros_like(total))


def alias_peak_ratio(images: torch.Tensor, stride: int) -> torch.Tensor:
    """Per image: mean power at the alias frequencies / mean power at their 8 neighbours (not alias, not DC)."""
    power = power_spectrum(images)
    size = images.shape[-1]
    mask = alias_mask(size, stride).to(power.device)
    neighbours = torch.zeros_like(mask)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            neighbours |= torch.roll(mask, shifts=(dy, dx), dims=(0, 1))
    neighbours &= ~mask
    neighbours[0, 0] = False
    peak = power[:, mask].mean(-1)
    around = power[:, neighbours].mean(-1)
    return torch.where(around > 0, peak / around.clamp_min(1e-300), torch.ones_like(peak))


def polyphase_spread(image: torch.Tensor, stride: int) -> float:
    """Std of the stride^2 phase means of one image, divided by their mean (0 = all phases alike)."""
    x = image.double().reshape(image.shape[-2], image.shape[-1])
    means = torch.stack([x[a::stride, b::stride].mean() for a in range(stride) for b in range(stride)])
    return (means.std(unbiased=False) / means.mean().abs().clamp_min(1e-12)).item()


def checkerboard_scores(generated: torch.Tensor, real: torch.Tensor, stride: int) -> dict:
    """All scores for ``generated`` images against ``real`` ones (both N x 1 x H x W, values in [0, 1])."""
    per_image = alias_share(generated, stride).mean().item()
    per_image_real = alias_share(real, stride).mean().item()
    mean_generated, mean_real = generated.double().mean(0), real.double().mean(0)
    of_mean = alias_share(mean_generated[None], stride).item()
    of_mean_real = alias_share(mean_real[None], stride).item()
    peaks = alias_peak_ratio(generated, stride).median().item()
    peaks_real = alias_peak_ratio(real, stride).median().item()
    return {
        "stride": stride,
        "alias_share": per_image, "alias_share_data": per_image_real,
        "score": per_image / per_image_real,
        "alias_share_of_mean": of_mean, "alias_share_of_mean_data": of_mean_real,
        "score_of_mean": of_mean / of_mean_real,
        "peak_ratio": peaks, "peak_ratio_data": peaks_real, "peak_score": peaks / peaks_real,
        "polyphase_spread": polyphase_spread(mean_generated, stride),
        "polyphase_spread_data": polyphase_spread(mean_real, stride),
    }


@torch.no_grad()
def flat_response(stack: nn.Module, input_shape: tuple[int, int, int], border: int = 4) -> float:
    """Feed a constant map (C x H x W of ones) through ``stack`` (eval mode) and return the interior's
    largest per-channel (max - min), divided by the mean |value|: 0 for an upsampler that paints no pattern."""
    was_training = stack.training
    stack.eval()
    p = next(stack.parameters())
    y = stack(torch.ones(1, *input_shape, device=p.device, dtype=p.dtype))
    stack.train(was_training)
    interior = (y[..., border:-border, border:-border] if border else y).flatten(2)  # 1 x C x pixels
    spread = interior.amax(-1) - interior.amin(-1)  # per channel: a flat channel may sit at any level
    return (spread.max() / interior.abs().mean().clamp_min(1e-12)).item()


@torch.no_grad()
def artifact_scores(run: Run, *, n: int = 2000, test_limit: int | None = None, picture: bool = True) -> dict:
    """Checkerboard scores of prior samples and of test reconstructions against the test images."""
    model, p = run.model, next(run.model.parameters())
    data = run.data(test_limit)
    test_set = run.test_set(data)
    n = min(n, len(test_set))
    real = test_set.floats(0, n, p.dtype, p.device)
    generator = torch.Generator(device=p.device).manual_seed(0)
    samples = torch.cat([model.sample(min(500, n - s), generator=generator) for s in range(0, n, 500)])
    recon = torch.cat([model.reconstruct(real[s:s + 500], generator, labels=test_set.labels_of(s, min(s + 500, n), p.device))
                       for s in range(0, n, 500)])
    # the dots are a spatial pattern: score colour images by their luminance
    samples, recon, real = (t.mean(1, keepdim=True) for t in (samples, recon, real))
    stride = ALIAS_STRIDE
    result = {"run": str(run.path), "model": run.config.model, "step": run.step, "images": n,
              "samples": checkerboard_scores(samples, real, stride),
              "reconstructions": checkerboard_scores(recon, real, stride)}
    if picture:
        run.dir.eval_dir.mkdir(exist_ok=True)
        mean_s, mean_r = samples.double().mean(0)[0], real.double().mean(0)[0]
        spectrum_panel(mean_s, mean_r, power_spectrum(mean_s[None])[0], power_spectrum(mean_r[None])[0],
                       run.dir.eval_file("artifacts.png"),
                       title=f"{run.config.model}: score (samples) {result['samples']['score']:.2f}, "
                             f"of mean {result['samples']['score_of_mean']:.2f}; 1.0 = like the data")
        run.dir.write_eval("artifacts.json", result)
    return result


def decoder_flatness(model_name: str) -> float | None:
    """Constant-input test of a freshly built decoder's upsampling layers (eval mode): 0 = flat output. In float64,
    so that float32 rounding (1e-6 where the fused resize convolution adds kernel taps first) does not read as a
    pattern."""
    from ..models import example_model

    torch.manual_seed(0)
    decoder = example_model(model_name).decoder.double()
    if not hasattr(decoder, "upsampling_stack"):
        return None  # fully connected: nothing upsamples
    stack, channels = decoder.upsampling_stack()
    # zero padding reaches further into the picture through a residual decoder's extra convolutions
    return flat_response(stack, (channels, 16, 16), border=getattr(decoder, "padding_reach", 16))

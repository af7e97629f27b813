"""Counting a model's arithmetic from its layers: multiply-adds of every Linear and (transposed) convolution.

The count is exact for those layers and ignores the cheap element-wise ones (BatchNorm, activations, the loss).
A training step is counted as 3x the forward pass: the backward pass computes, for each of those layers, the
gradient of its input and of its weight, each costing as much as the forward product.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from ..models.decoders import ResizeConv2d

TRAIN_STEP_FACTOR = 3


@dataclass
class LayerCount:
    name: str
    kind: str
    output_shape: tuple
    macs: int  # multiply-adds per image


def layer_macs(module: nn.Module, x: torch.Tensor, y: torch.Tensor) -> int | None:
    """Multiply-adds per image for one layer call, or None for a layer we don't count."""
    if isinstance(module, nn.Linear):
        return module.in_features * module.out_features * (x[0].numel() // module.in_features)
    if isinstance(module, nn.ConvTranspose2d):
        # every input pixel meets every tap of the kernel (before any cropping by padding)
        kh, kw = module.kernel_size
        return x[0].numel() * (module.out_channels // module.groups) * kh * kw
    if isinstance(module, ResizeConv2d):
        # computed as a stride-2 transposed conv of the small input: 4 taps per output (see ResizeConv2d)
        return y[0].numel() * module.in_channels * 4
    if isinstance(module, nn.Conv2d):
        kh, kw = module.kernel_size
        return y[0].numel() * (module.in_channels // module.groups) * kh * kw
    return None


def count_layers(model: nn.Module, example: torch.Tensor) -> list[LayerCount]:
    """Run ``example`` (a batch of one or more) through ``model`` and count each layer's multiply-adds per image."""
    counts: list[LayerCount] = []
    names = {m: n for n, m in model.named_modules()}

    def hook(module, inputs, output):
        macs = layer_macs(module, inputs[0], output)
        if macs is not None:
            counts.append(LayerCount(names[module], type(module).__name__, tuple(output.shape[1:]), macs))

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d))]
    try:
        was_training = model.training
        model.eval()
        with torch.no_grad():
            model(example)
        model.train(was_training)
    finally:
        for h in handles:
            h.remove()
    return counts


def forward_flops_per_image(model: nn.Module, image_size: int = 32) -> int:
    """FLOPs (2 per multiply-add) of one forward pass of one image."""
    p = next(model.parameters())
    example = torch.zeros(2, 1, image_size, image_size, device=p.device, dtype=p.dtype)
    return 2 * sum(c.macs for c in count_layers(model, example))


def train_flops_per_image(model: nn.Module, image_size: int = 32) -> int:
    return TRAIN_STEP_FACTOR * forward_flops_per_image(model, image_size)

"""A trained model made ready for a long evaluation such as the importance-weighted bound: ``frozen_copy(model)``.

The copy is in eval mode without gradients, every BatchNorm that follows a convolution in an ``nn.Sequential`` is
folded into it (in eval mode BatchNorm is the affine map y = s x + t per channel, so conv-then-BN is one convolution
with weights s W and bias s b + t: one pass over the largest maps fewer per layer), a resize convolution to the few
channels of an image is computed by phases (``ResizePhases``), a Linear layer that reads only a few inputs (z) stays
float32 under autocast (``Float32Linear``), the activations that follow a layer's fresh output there work in place
(no new map to allocate and fault in), and on request its 4-D weights are in channels-last memory (oneDNN's
(transposed) convolutions run 1.5-3x faster on NHWC maps, and the maps follow the weights). The model itself is left
as it was, so training and the seed's numbers never see any of this; the copy computes the same function up to
float32 rounding.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from .decoders import ResizeConv2d

FOLDABLE_CONVOLUTIONS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


def frozen_copy(model: nn.Module, channels_last: bool = False) -> nn.Module:
    """An eval-mode copy of ``model`` with its BatchNorms folded into the convolutions before them, its narrow
    resize convolutions as phase convolutions, its Linear layers of few inputs in float32, activations in place where
    that is safe, and with ``channels_last`` its 4-D weights in NHWC memory."""
    frozen = copy.deepcopy(model).eval().requires_grad_(False)
    for module in list(frozen.modules()):
        if isinstance(module, nn.Sequential):
            fold_batch_norms(module)
            paint_by_phases(module)
            keep_narrow_products_float32(module)
            activate_in_place(module)
    if channels_last:
        frozen.to(memory_format=torch.channels_last)
    return frozen


def fold_batch_norms(layers: nn.Sequential) -> int:
    """Fold each eval-mode BatchNorm that directly follows a convolution in ``layers`` into it, in place: the
    convolution takes the folded weights and bias, the BatchNorm becomes an nn.Identity (names and indices stay, so
    the copy's state dict keeps its keys). Returns how many were folded."""
    names, folded = list(layers._modules), 0
    for conv_name, norm_name in zip(names, names[1:]):
        conv, norm = layers._modules[conv_name], layers._modules[norm_name]
        if (isinstance(conv, FOLDABLE_CONVOLUTIONS) and isinstance(norm, nn.modules.batchnorm._BatchNorm)
                and not norm.training and norm.running_mean is not None and conv.groups == 1):
            # fuse_conv_bn_eval copies the module (a subclass keeps its forward) and scales output channel c of W
            # (dimension 0 of a Conv's weights, 1 of a ConvTranspose's) by gamma_c / sqrt(var_c + eps)
            transposed = isinstance(conv, nn.modules.conv._ConvTransposeNd)
            layers._modules[conv_name] = fuse_conv_bn_eval(conv, norm, transpose=transposed)
            layers._modules[norm_name] = nn.Identity()
            folded += 1
    return folded


class ResizePhases(nn.Module):
    """A ResizeConv2d (nearest x2 upsampling, then a 3x3 convolution) computed as one 3x3 convolution of the small
    map to the four phases of every output channel, then PixelShuffle(2) to put each phase at its pixels.

    Along an axis, output pixel 2i meets input pixels (i-1, i, i+1) with taps (W0, W1 + W2, 0), pixel 2i+1 with
    (0, W0 + W1, W2); phase (a, b) of channel o is channel 4o + 2a + b, PixelShuffle's order. 2.25x the multiply-adds
    of the transposed convolution ResizeConv2d runs, yet for an output of 1 channel oneDNN runs this 1.2x (bfloat16)
    to 2x (float32) faster on a CPU, where its transposed kernel reaches 6-19 GFLOP/s, and 1.1-1.4x for 3 channels;
    for 8 or more it is slower, so only layers of at most PHASE_CHANNELS outputs (an image's channels) are computed
    this way."""

    def __init__(self, conv: ResizeConv2d):
        super().__init__()
        self.register_buffer("weight", self.phase_kernels(conv.weight.detach()))
        self.register_buffer("bias", None if conv.bias is None else conv.bias.detach().repeat_interleave(4))

    @staticmethod
    def phase_kernels(weight: torch.Tensor) -> torch.Tensor:
        """O x I x 3 x 3 kernels -> 4 O x I x 3 x 3, the (a, b) phase of kernel o at 4o + 2a + b."""
        def phases(w: torch.Tensor, axis: int) -> list[torch.Tensor]:
            w0, w1, w2 = w.unbind(axis)
            zero = torch.zeros_like(w0)
            return [torch.stack([w0, w1 + w2, zero], axis), torch.stack([zero, w0 + w1, w2], axis)]
        by_phase = [both for rows in phases(weight, 2) for both in phases(rows, 3)]
        return torch.stack(by_phase, 1).flatten(0, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pixel_shuffle(F.conv2d(x, self.weight, self.bias, padding=1), 2)


PHASE_CHANNELS = 4


def paint_by_phases(layers: nn.Sequential) -> int:
    """Replace each ResizeConv2d of ``layers`` with at most PHASE_CHANNELS outputs by its ResizePhases, in place.
    Returns how many were replaced."""
    replaced = 0
    for name, layer in layers.named_children():
        if isinstance(layer, ResizeConv2d) and layer.out_channels <= PHASE_CHANNELS:
            layers._modules[name] = ResizePhases(layer)
            replaced += 1
    return replaced


class Float32Linear(nn.Linear):
    """A Linear layer that computes in its weights' dtype (float32) even inside a bfloat16 autocast region.

    For a layer that reads only a few inputs, such as the first layer of the fully connected decoder (z: 20 values),
    bfloat16 buys nothing: 2 x 20 FLOPs per output value keep the product bound by writing its output, not by
    multiplying. It costs instead: its output would be bfloat16, and the activation after it then runs on bfloat16,
    which PyTorch's CPU kernels compute 3-5x slower than float32 (tanh: 2.7 ms against 0.5 ms for 4,000 x 500
    values on 2 cores). So such a layer stays float32, its activation too, and autocast casts the activation's
    output for the next, wide product. Without autocast it is an nn.Linear."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, enabled=False):
            return super().forward(x.to(self.weight.dtype))


NARROW_INPUTS = 32  # a Linear layer reading at most this many values stays float32 (Float32Linear)


def keep_narrow_products_float32(layers: nn.Sequential) -> int:
    """Make each nn.Linear of ``layers`` with at most NARROW_INPUTS inputs a Float32Linear (same weights, same
    names), in place. Returns how many."""
    kept = 0
    for name, layer in layers.named_children():
        if type(layer) is nn.Linear and layer.in_features <= NARROW_INPUTS:
            narrow = Float32Linear(layer.in_features, layer.out_features, bias=layer.bias is not None, device="meta")
            narrow.weight, narrow.bias = layer.weight, layer.bias
            layers._modules[name] = narrow
            kept += 1
    return kept


# layers whose output is a new tensor that only the next layer of an nn.Sequential reads
FRESH_OUTPUTS = (*FOLDABLE_CONVOLUTIONS, ResizePhases, nn.Linear, nn.modules.batchnorm._BatchNorm)
IN_PLACE_ACTIVATIONS = (nn.ReLU, nn.LeakyReLU, nn.ELU, nn.SiLU, nn.Hardtanh)  # those with an ``inplace`` switch


def activate_in_place(layers: nn.Sequential) -> int:
    """Set ``inplace`` on each IN_PLACE_ACTIVATIONS layer in ``layers`` that reads a FRESH_OUTPUTS layer's
    output (through nn.Identity, e.g. a folded BatchNorm): nothing else holds that tensor. Not after a layer that
    may hand back its input or a view of it (Dropout in eval mode, cropping), nor the first layer, whose input
    belongs to the caller. Returns how many were set."""
    fresh, changed = False, 0
    for layer in layers:
        if isinstance(layer, nn.Identity):
            continue
        if fresh and isinstance(layer, IN_PLACE_ACTIVATIONS) and not layer.inplace:
            layer.inplace, changed = True, changed + 1
            continue  # still the fresh tensor, for the next activation
        fresh = isinstance(layer, FRESH_OUTPUTS)
    return changed

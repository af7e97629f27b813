"""A trained model made ready for a long evaluation such as the importance-weighted bound: ``frozen_copy(model)``.

The copy is in eval mode without gradients, every BatchNorm that follows a convolution in an ``nn.Sequential`` is
folded into it (in eval mode BatchNorm is the affine map y = s x + t per channel, so conv-then-BN is one convolution
with weights s W and bias s b + t: one pass over the largest maps fewer per layer), the activations that follow a
layer's fresh output there work in place (no new map to allocate and fault in), and on request its 4-D weights
are in channels-last memory (oneDNN's (transposed) convolutions run 1.5-3x faster on NHWC maps, and the maps follow
the weights). The model itself is left as it was, so training and the seed's numbers never see any of this; the
copy computes the same function up to float32 rounding.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

FOLDABLE_CONVOLUTIONS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


def frozen_copy(model: nn.Module, channels_last: bool = False) -> nn.Module:
    """An eval-mode copy of ``model`` with its BatchNorms folded into the convolutions before them, activations in
    place where that is safe, and with ``channels_last`` its 4-D weights in NHWC memory."""
    frozen = copy.deepcopy(model).eval().requires_grad_(False)
    for module in frozen.modules():
        if isinstance(module, nn.Sequential):
            fold_batch_norms(module)
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
            layers._modules[conv_name] = fuse_conv_bn_eval(conv, norm,
                                                            transpose=isinstance(conv, nn.modules.conv._ConvTransposeNd))
            layers._modules[norm_name] = nn.Identity()
            folded += 1
    return folded


# layers whose output is a new tensor that only the next layer of an nn.Sequential reads
FRESH_OUTPUTS = (*FOLDABLE_CONVOLUTIONS, nn.Linear, nn.modules.batchnorm._BatchNorm)
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

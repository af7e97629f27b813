import torch

from convae.benchmarking.flops import count_layers, forward_flops_per_image, train_flops_per_image
from convae.models import build_model


def test_seed_flops_match_a_hand_count():
    encoder = 1024 * 500 + 500 * 500 + 500 * 200
    layer1 = 100 * 256 * 4 * 4                 # one input pixel, 256 x 4 x 4 outputs each
    layer2 = (4 * 4 * 256) * 128 * 4 * 4       # every input pixel meets every tap
    layer3 = (4 * 4 * 128) * 64 * 4 * 4
    layer4 = (8 * 8 * 64) * 1 * 4 * 4
    hand = encoder + layer1 + layer2 + layer3 + layer4
    assert hand == 11_822_896                  # reference.md: "about 11.8 M multiply-adds per image"
    model = build_model("seed")
    counts = count_layers(model, torch.zeros(2, 1, 32, 32))
    assert [c.macs for c in counts] == [1024 * 500, 500 * 500, 500 * 200, layer1, layer2, layer3, layer4]
    assert forward_flops_per_image(model) == 2 * hand
    assert train_flops_per_image(model) == 6 * hand  # ~70 MFLOP per image per training step
    assert abs(layer2 / hand - 0.71) < 0.01      # "layer 2 is ~70 % of it"


def test_fused_resize_conv_counts_its_four_taps_per_output():
    from convae.models.decoders import ResizeConv2d

    counts = count_layers(torch.nn.Sequential(ResizeConv2d(8, 3)), torch.zeros(2, 8, 5, 5))
    assert [c.macs for c in counts] == [10 * 10 * 3 * 8 * 4]  # not 9 taps: the transposed form is what runs

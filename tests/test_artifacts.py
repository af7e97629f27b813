import torch
import torch.nn as nn

from convae.evaluation.artifacts import alias_mask, alias_share, checkerboard_scores, flat_response, polyphase_spread
from convae.models.decoders import ConvTranspose2d, SubPixelUpsample


def smooth_images(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    centres = torch.rand(n, 2, generator=g) * 16 + 8
    radius = torch.rand(n, generator=g) * 3 + 3
    d2 = (yy - centres[:, 0, None, None]) ** 2 + (xx - centres[:, 1, None, None]) ** 2
    return torch.exp(-d2 / (2 * radius[:, None, None] ** 2))[:, None]


def test_alias_mask_marks_multiples_of_n_over_s():
    mask = alias_mask(32, 4)
    assert mask.sum() == 15 and mask[0, 8] and mask[8, 24] and not mask[0, 0] and not mask[1, 8]


def test_planted_4_periodic_pattern_scores_far_above_smooth_images():
    real = smooth_images(64, 0)
    smooth = smooth_images(64, 1)
    pattern = torch.tensor([[1.0, 0.6, 0.8, 0.5]] * 4)
    pattern = pattern * pattern.T  # 4 x 4 tile, uneven phases
    planted = (smooth * pattern.repeat(8, 8)).clamp(0, 1)
    clean = checkerboard_scores(smooth, real, 4)
    dotted = checkerboard_scores(planted, real, 4)
    assert 0.5 < clean["score"] < 2 and 0.3 < clean["score_of_mean"] < 3
    assert dotted["score"] > 5 * clean["score"] and dotted["score_of_mean"] > 20
    assert dotted["peak_score"] > 1.5 * clean["peak_score"]


def test_alias_share_of_pure_pattern_is_one_and_of_flat_is_zero():
    tile = torch.rand(4, 4, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(alias_share(tile.repeat(8, 8)[None], 4), torch.ones(1, dtype=torch.float64))
    assert alias_share(torch.full((1, 32, 32), 0.3), 4).item() == 0
    assert polyphase_spread(torch.full((32, 32), 0.3), 4) < 1e-12


def test_seed_last_layer_paints_dots_and_icnr_subpixel_is_flat():
    torch.manual_seed(0)
    seed_last = ConvTranspose2d(64, 1, 4, 4, bias=False)
    nn.init.xavier_uniform_(seed_last.weight)
    assert flat_response(seed_last, (64, 8, 8)) > 0.1  # 16 different phase sums

    subpixel = SubPixelUpsample(64, 8, r=2)
    nn.init.xavier_uniform_(subpixel.conv.weight)        # plain init: the phases differ
    assert flat_response(subpixel, (64, 8, 8), border=2) > 0.1
    subpixel.icnr_()                                      # ICNR: every phase the same kernel
    assert flat_response(subpixel, (64, 8, 8), border=2) < 1e-6


def test_tiled_instead_of_interleaved_icnr_recreates_the_pattern():
    torch.manual_seed(0)
    up = SubPixelUpsample(16, 4, r=2)
    sub = torch.randn(4, 16, 3, 3)
    with torch.no_grad():
        up.conv.weight.copy_(sub.repeat(4, 1, 1, 1))  # wrong order for PixelShuffle
    assert flat_response(up, (16, 8, 8), border=2) > 0.1

import pytest
import torch
import torch.nn as nn

from convae.models import build_model
from convae.models.decoders import CropLast, PadBottomRight, SeedDecoder


def test_seed_decoder_layer_shapes_match_reference_table():
    """reference.md section 1, N x C x H x W after each numbered layer."""
    decoder = SeedDecoder()
    shapes, x = [], torch.randn(5, 100).view(5, 100, 1, 1)
    for layer in decoder.net:
        x = layer(x)
        shapes.append((type(layer).__name__, tuple(x.shape)))
    expected = [
        ("ConvTranspose2d", (5, 256, 4, 4)), ("BatchNorm2d", (5, 256, 4, 4)), ("ReLU", (5, 256, 4, 4)),
        ("ConvTranspose2d", (5, 128, 5, 5)), ("CropLast", (5, 128, 4, 4)),  # padding=1 then crop = TF "same"
        ("BatchNorm2d", (5, 128, 4, 4)), ("ReLU", (5, 128, 4, 4)),
        ("ConvTranspose2d", (5, 64, 7, 7)), ("PadBottomRight", (5, 64, 8, 8)),
        ("BatchNorm2d", (5, 64, 8, 8)), ("ReLU", (5, 64, 8, 8)),
        ("ConvTranspose2d", (5, 1, 32, 32)), ("BatchNorm2d", (5, 1, 32, 32)),
    ]
    assert shapes == expected


def test_seed_layers_have_no_bias_and_the_seed_strides():
    convs = [m for m in SeedDecoder().modules() if isinstance(m, nn.ConvTranspose2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.stride) for c in convs] == [
        (100, 256, (4, 4), (1, 1)), (256, 128, (4, 4), (1, 1)), (128, 64, (4, 4), (1, 1)), (64, 1, (4, 4), (4, 4))]
    assert all(c.bias is None for c in convs)


def test_same_padding_keeps_the_first_rows_like_tensorflow():
    """TF's 'same' transposed conv (k=4, s=1) pads 1 before and 2 after: output[j] = full[j + 1], j = 0..3."""
    conv = nn.ConvTranspose2d(1, 1, 4, 1, bias=False)
    same = nn.Sequential(nn.ConvTranspose2d(1, 1, 4, 1, padding=1, bias=False), CropLast(1))
    same[0].weight.data.copy_(conv.weight.data)
    x = torch.randn(2, 1, 4, 4)
    assert torch.allclose(same(x), conv(x)[..., 1:5, 1:5])


def test_pad_adds_one_zero_row_and_column_at_bottom_right():
    y = PadBottomRight()(torch.ones(1, 1, 7, 7))
    assert y.shape == (1, 1, 8, 8) and y[..., 7, :].abs().sum() == 0 and y[..., :, 7].abs().sum() == 0
    assert y[..., :7, :7].eq(1).all()


def test_seed_model_parameter_count_and_output():
    model = build_model("seed")
    n = sum(p.numel() for p in model.parameters())
    encoder = 1024 * 500 + 500 + 500 * 500 + 500 + 500 * 200 + 200
    decoder = 100 * 256 * 16 + 256 * 128 * 16 + 128 * 64 * 16 + 64 * 16 + 2 * (256 + 128 + 64 + 1)
    assert n == encoder + decoder == 1_930_082  # "about 1.93 M"
    out = model(torch.rand(4, 1, 32, 32))
    assert out.logits.shape == (4, 1, 32, 32)
    assert out.mu.shape == out.sigma.shape == out.z.shape == (4, 100)
    assert (out.sigma > 1e-6).all()


def test_encoder_is_the_seed_mlp_with_dropout():
    layers = [type(m).__name__ for m in build_model("seed").encoder.net]
    assert layers == ["Flatten", "Linear", "ELU", "Dropout", "Linear", "Tanh", "Dropout", "Linear"]
    assert all(m.p == 0.1 for m in build_model("seed").encoder.net if isinstance(m, nn.Dropout))


def test_batchnorm_uses_keras_defaults():
    bns = [m for m in SeedDecoder().modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(bns) == 4 and all(b.eps == 1e-3 and b.momentum == 0.01 for b in bns)


def test_eval_mode_is_deterministic_given_a_generator():
    model = build_model("seed").eval()
    x = torch.rand(3, 1, 32, 32)
    a = model(x, generator=torch.Generator().manual_seed(1)).logits
    b = model(x, generator=torch.Generator().manual_seed(1)).logits
    assert torch.equal(a, b)


def test_unknown_model_and_encoder_are_refused():
    with pytest.raises(ValueError, match="unknown model 'nope'"):
        build_model("nope")
    with pytest.raises(ValueError, match="unknown encoder 'rnn'"):
        build_model("seed", encoder="rnn")


@pytest.mark.parametrize("args, shape", [
    ((100, 256, 4, 1), (3, 100, 1, 1)),            # seed layer 1: 1x1 input -> matmul path
    ((256, 128, 4, 1, 1), (3, 256, 4, 4)),         # seed layer 2: generic path
    ((64, 1, 4, 4), (3, 64, 8, 8)),                # seed layer 4: kernel = stride -> tile path
    ((8, 5, 2, 2), (2, 8, 3, 5)),                  # non-square input, several output channels
])
@pytest.mark.parametrize("bias", [False, True])  # the seed's layers have none; a folded BatchNorm gives one
def test_matmul_transposed_conv_equals_pytorchs(args, shape, bias):
    from convae.models.decoders import ConvTranspose2d

    reference = nn.ConvTranspose2d(*args, bias=bias).double()
    ours = ConvTranspose2d(*args, bias=bias).double()
    ours.load_state_dict(reference.state_dict())
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    a, b = reference(x), ours(x)
    assert torch.allclose(a, b, atol=1e-12)
    grad = torch.randn_like(a)
    ga = torch.autograd.grad(a, (x, *reference.parameters()), grad)
    gb = torch.autograd.grad(b, (x, *ours.parameters()), grad)
    assert len(ga) == 2 + bias and all(torch.allclose(u, v, atol=1e-12) for u, v in zip(ga, gb))


@pytest.mark.parametrize("in_channels, out_channels, shape, bias", [
    (3, 2, (2, 3, 4, 4), True), (5, 4, (3, 5, 3, 6), False), (1, 1, (1, 1, 1, 1), True)])
def test_fused_resize_conv_equals_nearest_upsampling_then_the_3x3_conv(in_channels, out_channels, shape, bias):
    from convae.models.decoders import ResizeConv2d

    fused = ResizeConv2d(in_channels, out_channels, bias).double()
    conv = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=bias).double()
    conv.load_state_dict(fused.state_dict())  # same parameters, same names
    reference = nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), conv)
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    a, b = reference(x), fused(x)
    assert a.shape == b.shape == (shape[0], out_channels, 2 * shape[2], 2 * shape[3])
    assert torch.allclose(a, b, atol=1e-12)
    grad = torch.randn_like(a)
    ga = torch.autograd.grad(a, (x, *conv.parameters()), grad)
    gb = torch.autograd.grad(b, (x, *fused.parameters()), grad)
    assert all(torch.allclose(u, v, atol=1e-12) for u, v in zip(ga, gb))


def test_resizing_decoders_keep_the_checkpoint_keys_of_upsample_plus_conv():
    """Checkpoints written when each resize step was nn.Upsample + nn.Conv2d (two places in the Sequential) load."""
    resize = build_model("resize").decoder.state_dict()
    assert {"up.1.weight", "up.2.weight", "up.5.weight", "up.9.weight", "up.9.bias"} <= set(resize)
    trunk = build_model("pixel").decoder.trunk.state_dict()
    assert {"upsample.0.conv1.weight", "upsample.2.weight", "upsample.3.conv1.weight", "upsample.8.bias"} <= set(trunk)
    assert not any(k.startswith(("up.0.", "upsample.1.")) for k in (*resize, *trunk))


@pytest.mark.parametrize("name, latent", [("fc", 20), ("resize", 100), ("subpixel", 100), ("resnet", 64),
                                          ("pixel", 32)])
@pytest.mark.parametrize("encoder", ["mlp", "conv", "resnet"])
def test_every_model_maps_32x32_images_to_logits_and_trains(name, latent, encoder):
    model = build_model(name, encoder)
    x = torch.rand(4, 1, 32, 32)
    out = model(x)
    assert out.logits.shape == (4, 1, 32, 32) and out.mu.shape == (4, latent)
    out.logits.sum().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_decoders_without_transposed_convs_paint_no_dots_at_initialisation():
    from convae.evaluation.artifacts import decoder_flatness

    assert decoder_flatness("seed") > 0.5
    assert decoder_flatness("resize") < 1e-6 and decoder_flatness("subpixel") < 1e-6
    assert decoder_flatness("resnet") < 1e-6 and decoder_flatness("pixel") < 1e-6
    assert decoder_flatness("fc") is None


def test_icnr_copies_each_subkernel_to_its_pixelshuffle_phases():
    from convae.models.decoders import SubPixelDecoder, SubPixelUpsample

    decoder = build_model("subpixel").decoder
    assert isinstance(decoder, SubPixelDecoder)
    for up in (m for m in decoder.modules() if isinstance(m, SubPixelUpsample)):
        w = up.conv.weight.view(up.c_out, 4, *up.conv.weight.shape[1:])
        assert torch.equal(w, w[:, :1].expand_as(w))


def test_pixel_decoder_sees_only_the_pixels_before_each_pixel():
    """Flip one pixel of x: the logits of that pixel and of every pixel before it in raster order stay the same,
    and some later pixel's change (the head is autoregressive, not blind)."""
    torch.manual_seed(0)
    model = build_model("pixel").eval()
    x = torch.bernoulli(torch.full((2, 1, 32, 32), 0.3))
    z = torch.randn(2, model.latent_dim)
    flipped = x.clone()
    flipped[:, :, 12, 9] = 1 - flipped[:, :, 12, 9]
    a, b = model.decode(z, x).flatten(1), model.decode(z, flipped).flatten(1)
    changed = (a - b).abs().amax(0) > 0
    position = 12 * 32 + 9
    assert not changed[:position + 1].any()
    assert changed[position + 1:].any()


def test_pixel_decoder_draws_each_pixel_from_the_conditional_of_the_pixels_drawn_before():
    """Generation recomputes only a window of rows; with a deterministic draw (logit > 0) the image it makes must
    be a fixed point of the full one-pass conditionals."""
    from convae.models.autoregressive import PixelDecoder

    torch.manual_seed(1)
    decoder = PixelDecoder(latent_dim=8, layers=2).eval()
    z = torch.randn(3, 8)
    threshold = decoder(z, torch.zeros(3, 1, 32, 32)).median().item()  # a fresh head's level: some pixels above
    x = decoder.generate(z, lambda logits: (logits > threshold).float())
    assert x.shape == (3, 1, 32, 32)
    assert torch.equal((decoder(z, x) > threshold).float(), x)
    assert 0 < x.mean() < 1  # not a trivial all-0 or all-1 picture


@pytest.mark.layouts  # compares two algorithms' sums: layout-sensitive in float32
def test_pixel_decoder_window_gives_the_full_pass_logits_at_every_pixel():
    """Generation computes each pixel from a window around it (rows above, columns to either side); its logits
    must be those of the one full pass, at the image's edges and corners as inside."""
    from convae.models.autoregressive import PixelDecoder

    torch.manual_seed(3)
    decoder = PixelDecoder(latent_dim=8, layers=2).eval()
    for p in decoder.parameters():  # larger weights than a fresh init, so that far pixels matter
        p.data.normal_(0, 0.3)
    z, x = torch.randn(2, 8), torch.bernoulli(torch.full((2, 1, 32, 32), 0.5))
    # In float64: these weights make logits of up to 7e8, where float32 rounds to hundreds (and a window one pixel too
    # small moves a logit by only ~10); the window and the full pass convolve maps of other sizes, which oneDNN
    # computes with other algorithms at other thread counts. In float64 they agree to 0 here; a tolerance of 1e-12 of
    # the largest logit (7e-4) leaves room for any layout's rounding and none for a wrong window.
    decoder, z, x = decoder.double(), z.double(), x.double()
    with torch.no_grad():
        full, features = decoder(z, x), decoder.trunk(z)
        windowed = torch.stack([torch.stack([decoder.pixel_logits(x, features, row, col) for col in range(32)], -1)
                                for row in range(32)], -2)
    torch.testing.assert_close(windowed, full, rtol=0, atol=1e-12 * full.abs().max().item())


def test_pixel_model_samples_and_reconstructs_binary_images():
    torch.manual_seed(2)
    model = build_model("pixel").eval()
    model.decoder.blocks = model.decoder.blocks[:1]  # keep the test quick: one masked layer
    model.decoder.reach = 3
    samples = model.sample(2, generator=torch.Generator().manual_seed(0))
    assert samples.shape == (2, 1, 32, 32) and set(samples.unique().tolist()) <= {0.0, 1.0}
    assert model.reconstruct(torch.rand(2, 1, 32, 32)).shape == (2, 1, 32, 32)


def test_pixel_model_refuses_colour():
    with pytest.raises(ValueError, match="gray images"):
        build_model("pixel", channels=3)


@pytest.mark.parametrize("name", ["seed", "resize", "subpixel", "resnet", "pixel", "ladder", "fc"])
def test_a_frozen_copy_folds_batchnorms_and_computes_what_the_model_does(name):
    from convae.models.frozen import Float32Linear, frozen_copy

    torch.manual_seed(0)
    model = build_model(name)
    for module in model.modules():  # trained-looking statistics, not the identity BatchNorm of a fresh model
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.running_mean.uniform_(-1, 1), module.running_var.uniform_(0.5, 2)
            module.weight.data.uniform_(0.5, 1.5), module.bias.data.uniform_(-0.5, 0.5)
    weights = {key: value.clone() for key, value in model.state_dict().items()}
    x = torch.rand(6, 1, 32, 32)
    frozen = frozen_copy(model, channels_last=True)
    model.eval()
    with torch.no_grad():
        expected, got = model.decode(model.encode(x)[0], x), frozen.decode(frozen.encode(x)[0], x)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)  # float32 rounding of the folded weights
    batchnorms = sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    left = sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in frozen.modules())
    if name in ("seed", "resize"):
        # resize: every BatchNorm follows its convolution; seed: two have a crop or a zero pad between (a BN after
        # a zero pad is not a conv's affine map at the padded pixels: left alone). Each ReLU follows a fresh map.
        assert batchnorms == 4 and left == {"resize": 0, "seed": 2}[name]
        relus = [m for m in frozen.decoder.modules() if isinstance(m, nn.ReLU)]
        assert len(relus) == 3 + (name == "resize") and all(relu.inplace for relu in relus)
        assert [m.inplace for m in frozen.encoder.modules() if isinstance(m, nn.ELU)] == [True]  # after a Linear
    # the fully connected decoder's first layer reads z (20 values): kept float32, with the tanh after it; no layer
    # of the others is that narrow and followed by an activation in an nn.Sequential
    kept = [m for m in frozen.modules() if isinstance(m, Float32Linear)]
    assert kept == ([frozen.decoder.net[0]] if name == "fc" else [])
    if name == "fc":  # nothing folded: the same names, the layer replaced included
        assert list(frozen.state_dict()) == list(model.state_dict())
    assert not any(p.requires_grad for p in frozen.parameters())
    # the model itself untouched: its weights, their memory layout, its BatchNorms
    assert all(torch.equal(value, weights[key]) for key, value in model.state_dict().items())
    assert all(p.is_contiguous() for p in model.parameters())
    assert sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()) == batchnorms


def test_a_narrow_linear_layer_computes_float32_inside_a_bfloat16_autocast_region():
    from convae.models.frozen import Float32Linear, keep_narrow_products_float32

    torch.manual_seed(0)
    layers = nn.Sequential(nn.Linear(20, 50), nn.Tanh(), nn.Linear(50, 40))
    z = torch.randn(7, 20)
    with torch.no_grad():
        expected = layers[1](layers[0](z))  # float32 throughout
        assert keep_narrow_products_float32(layers) == 1 and type(layers[2]) is nn.Linear  # 50 inputs: left
        with torch.autocast("cpu", dtype=torch.bfloat16):
            hidden = layers[1](layers[0](z.bfloat16()))  # a bfloat16 input is read as float32 too
            out = layers[2](hidden)
    assert isinstance(layers[0], Float32Linear) and hidden.dtype == torch.float32 and out.dtype == torch.bfloat16
    torch.testing.assert_close(hidden, layers[1](torch.nn.functional.linear(z.bfloat16().float(), layers[0].weight,
                                                                            layers[0].bias)), rtol=0, atol=0)
    assert not torch.equal(expected, hidden.to(torch.bfloat16).float())  # a bfloat16 output would have rounded it
    with torch.no_grad():
        torch.testing.assert_close(layers[1](layers[0](z)), expected, rtol=0, atol=0)  # without autocast: nn.Linear


def test_activations_work_in_place_only_on_a_map_nothing_else_holds():
    from convae.models.frozen import activate_in_place

    layers = nn.Sequential(nn.ReLU(), nn.Linear(4, 4), nn.Identity(), nn.ELU(), nn.ReLU(), nn.Dropout(0.1), nn.ReLU(),
                           nn.Flatten(), nn.ReLU())
    assert activate_in_place(layers) == 2
    # the caller's input, after Dropout (hands back its input in eval mode), after a view: not in place
    assert [layers[i].inplace for i in (0, 3, 4, 6, 8)] == [False, True, True, False, False]
    x = torch.randn(3, 4)
    kept = x.clone()
    layers.eval()(x)
    assert torch.equal(x, kept)


@pytest.mark.parametrize("out_channels, bias", [(1, False), (3, True)])
def test_a_resize_convolution_by_phases_equals_upsampling_then_the_3x3_conv(out_channels, bias):
    from convae.models.decoders import ResizeConv2d
    from convae.models.frozen import ResizePhases, paint_by_phases

    torch.manual_seed(0)
    conv = ResizeConv2d(5, out_channels, bias=bias).double()
    x = torch.randn(2, 5, 6, 7, dtype=torch.float64)  # not square: rows and columns kept apart
    expected = nn.functional.conv2d(nn.functional.interpolate(x, scale_factor=2, mode="nearest"), conv.weight,
                                    conv.bias, padding=1)
    torch.testing.assert_close(ResizePhases(conv)(x), expected, rtol=0, atol=1e-12)
    layers = nn.Sequential(conv, nn.ReLU(), ResizeConv2d(5, 16))
    assert paint_by_phases(layers) == 1 and isinstance(layers[0], ResizePhases)  # not the 16-channel layer

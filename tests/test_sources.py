"""Your own images: folders, arrays, generated shapes; the cache; streaming; the likelihoods."""

import json
import math
import os

import numpy as np
import pytest
import torch
from PIL import Image

from convae.cli import main
from convae.config import TrainConfig
from convae.data import load_data
from convae.data.sources import _load
from convae.errors import ConfigError, DataError
from convae.models.likelihoods import make_likelihood
from convae.objectives import bits_per_dim
from convae.training import train

TIMING = {"train_seconds", "epoch_seconds", "img_per_s", "eval_seconds"}


@pytest.fixture(autouse=True)
def fresh_process_cache():
    _load.cache_clear()  # each test sees the files as they are now
    yield
    _load.cache_clear()


def write_folder(root, sizes=((40, 30), (25, 25), (33, 50)), per_class=4, mode="RGB", ext="png", classes=("cat", "dog")):
    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        for k in range(per_class):
            w, h = sizes[k % len(sizes)]
            shape = (h, w, 3) if mode == "RGB" else (h, w)
            Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(root / c / f"{k}.{ext}")
    return root


def load(source, tmp_path, **kw):
    return load_data(str(source), cache_dir=tmp_path / "cache", progress=False, **kw)


# -- folders ----------------------------------------------------------------------------------------------------


def test_a_folder_of_pngs_and_jpegs_becomes_labelled_uint8_images_with_a_held_out_test_set(tmp_path):
    root = write_folder(tmp_path / "pets", per_class=10)
    write_folder(tmp_path / "pets", per_class=3, ext="jpg", classes=("dog",))  # 0-2.jpg beside 0-9.png
    data = load(root, tmp_path, image_size=16)
    assert data.classes == ["cat", "dog"] and data.levels == 255.0
    assert len(data.train_images) + len(data.test_images) == 23 and len(data.test_images) == 2  # 10 % held out
    assert data.train_images.dtype == torch.uint8 and data.shape == (3, 16, 16)
    assert sorted(torch.cat([data.train_labels, data.test_labels]).tolist()) == [0] * 10 + [1] * 13
    assert data.details["split"] == "0.1 held out (seed 0)"
    again = load(root, tmp_path, image_size=16)  # the same split every time
    assert torch.equal(again.test_images, data.test_images)


def test_one_image_is_centre_cropped_and_area_resized_as_by_hand(tmp_path):
    root = tmp_path / "one"
    root.mkdir()
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 256, (20, 28), dtype=np.uint8)  # 28 wide, 20 high: crop 4 columns each side
    for k in range(10):
        Image.fromarray(pixels, "L").save(root / f"{k}.png")
    data = load(root, tmp_path, image_size=10, test_fraction=0.1)
    expected = pixels[:, 4:24].reshape(10, 2, 10, 2).mean((1, 3))  # a 2x2 box average
    assert data.shape == (1, 10, 10)
    assert np.abs(data.train_images[0, 0].numpy().astype(float) - expected).max() <= 1


def test_photos_are_turned_upright_as_their_exif_orientation_says(tmp_path):
    """Tag 1: as stored; 3: turned half round; 6: a quarter clockwise; 8: a quarter anticlockwise (phone photos)."""
    root = tmp_path / "photos"
    root.mkdir()
    pixels = np.random.default_rng(4).integers(0, 256, (12, 20), dtype=np.uint8)  # 12 high, 20 wide
    upright = {1: pixels, 3: np.rot90(pixels, 2), 6: np.rot90(pixels, -1), 8: np.rot90(pixels, 1)}
    for tag in upright:
        exif = Image.Exif()
        exif[0x0112] = tag  # Orientation
        Image.fromarray(pixels, "L").save(root / f"{tag}.png", exif=exif)
    data = load(root, tmp_path, image_size=12, test_fraction=0.25)
    square = lambda a: a[4:16] if a.shape[0] == 20 else a[:, 4:16]  # noqa: E731  (the centre crop)
    expected = sorted(bytes(np.ascontiguousarray(square(a))) for a in upright.values())
    assert sorted(map(bytes, torch.cat([data.train_images, data.test_images])[:, 0].numpy())) == expected


def test_every_image_type_pillow_reads_is_taken_and_other_files_are_counted(tmp_path):
    root = tmp_path / "mixed"
    root.mkdir()
    rng = np.random.default_rng(5)
    for k, ext in enumerate(["png", "jfif", "tga", "pbm", "pnm", "jpeg"]):
        Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8), "L").save(root / f"{k}.{ext}")
    for name in ("a.HEIC", "notes.txt", ".DS_Store"):  # a hidden file is not counted
        (root / name).write_text("x")
    data = load(root, tmp_path, image_size=8, test_fraction=0.2)
    assert len(data.train_images) + len(data.test_images) == 6
    assert data.details["left_out"] == {".heic": 1, ".txt": 1}


def test_train_and_test_subfolders_are_the_split_and_mixed_channels_are_converted(tmp_path, capsys):
    root = tmp_path / "split"
    write_folder(root / "train", per_class=4, mode="L")
    write_folder(root / "train", per_class=1, mode="RGB", ext="bmp")
    write_folder(root / "test", per_class=2, mode="L")
    data = load_data(str(root), cache_dir=tmp_path / "cache", image_size=8)
    assert len(data.train_images) == 10 and len(data.test_images) == 4 and data.shape == (3, 8, 8)
    assert data.details["split"] == "train/ and test/ sub-folders"
    assert data.details["converted"] == "12 gray image(s) converted to RGB"  # 8 train + 4 test
    assert "12 gray image(s) converted to RGB" in data.summary()
    gray = load(root, tmp_path, image_size=8, channels="1")
    assert gray.shape == (1, 8, 8)


def test_bad_folders_name_the_file(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="empty: no image files"):
        load(tmp_path / "empty", tmp_path)
    root = write_folder(tmp_path / "broken")
    (root / "cat" / "9.png").write_bytes(b"\x89PNG not really")
    capsys.readouterr()
    with pytest.raises(DataError, match=r"broken/cat/9.png: not an image Pillow can read"):
        load_data(str(root), cache_dir=tmp_path / "cache", image_size=8, progress=True)
    assert not list((tmp_path / "cache").glob("*.npy"))  # nothing half-written
    said = capsys.readouterr().err
    assert "preparing" in said and "cached in" not in said  # nothing was cached: no line says it was
    (root / "cat" / "9.png").unlink()
    load_data(str(root), cache_dir=tmp_path / "cache", image_size=8, progress=True)
    assert "cached in" in capsys.readouterr().err


def test_16_bit_and_float_gray_images_keep_their_scale_and_bad_values_are_named(tmp_path):
    """Pillow's convert("L") clips at 255: a 16-bit ramp would come out nearly white and a float one black."""
    ramp = np.linspace(0, 1, 24 * 40).reshape(24, 40)  # 40 wide: the centre 24 x 24 is kept
    as_8_bit, deep = tmp_path / "eight", tmp_path / "deep"
    for folder in (as_8_bit, deep):
        folder.mkdir()
    for k in range(5):
        shifted = (ramp + k / 10) / 1.4
        Image.fromarray(np.rint(shifted * 255).astype(np.uint8), "L").save(as_8_bit / f"{k}.png")
        Image.fromarray(np.rint(shifted * 65535).astype(np.uint16)).save(deep / f"{k}.png")  # mode I;16
        Image.fromarray(shifted.astype(np.float32), "F").save(deep / f"{k}.tif")
    assert Image.open(deep / "0.png").mode == "I;16" and Image.open(deep / "0.tif").mode == "F"
    expected = load(as_8_bit, tmp_path, image_size=12, test_fraction=0.2)
    got = load(deep, tmp_path, image_size=12, test_fraction=0.2)
    assert expected.shape == got.shape == (1, 12, 12) and len(got.train_images) + len(got.test_images) == 10
    reference = {bytes(i.numpy()): i for i in torch.cat([expected.train_images, expected.test_images])}
    for image in torch.cat([got.train_images, got.test_images]):  # each within a level of its 8-bit twin
        nearest = min(reference.values(), key=lambda r: (r.int() - image.int()).abs().max().item())
        assert (nearest.int() - image.int()).abs().max() <= 1
    assert 0.2 < got.train_images.float().mean() / 255 < 0.8

    bad = tmp_path / "bad"
    bad.mkdir()
    Image.fromarray(np.full((8, 8), 2.0, np.float32), "F").save(bad / "over.tif")
    Image.fromarray(np.full((8, 8), np.nan, np.float32), "F").save(bad / "nan.tif")
    Image.fromarray(np.full((8, 8), 70000, np.int32)).save(bad / "wide.tif")
    for k in range(4):
        Image.fromarray(np.full((8, 8), k / 4, np.float32), "F").save(bad / f"fine{k}.tif")
    with pytest.raises(DataError, match=r"bad: 3 unusable image file\(s\)") as refused:
        load(bad, tmp_path)
    message = str(refused.value)
    assert f"{bad / 'over.tif'}: float pixels in [2, 2]; float images must lie in [0, 1]" in message
    assert f"{bad / 'nan.tif'}: float pixels hold NaN or infinite values" in message
    assert f"{bad / 'wide.tif'}: I-mode pixels in [70000, 70000]; integer images must fit in 16 bits" in message
    kept = load(bad, tmp_path, image_size=8, skip_bad_images=True, test_fraction=0.25)
    assert len(kept.details["skipped"]) == 3
    assert sorted(torch.cat([kept.train_images, kept.test_images])[:, 0, 0, 0].tolist()) == [0, 64, 128, 191]


def test_a_cielab_tiff_is_read_in_colour_and_in_gray(tmp_path):
    """Pillow converts LAB to RGB but refuses LAB to gray (a ValueError, once a traceback here)."""
    root = tmp_path / "lab"
    root.mkdir()
    for k in range(4):
        Image.new("LAB", (8, 8), (60 * k, 200, 128)).save(root / f"{k}.tif")
    colour = load(root, tmp_path, image_size=8, test_fraction=0.25)
    gray = load(root, tmp_path, image_size=8, test_fraction=0.25, channels="1")
    rgb = torch.cat([colour.train_images, colour.test_images])
    by_hand = [np.asarray(Image.open(root / f"{k}.tif").convert("RGB")) for k in range(4)]
    assert sorted(map(bytes, rgb.permute(0, 2, 3, 1).numpy())) == sorted(map(bytes, by_hand))
    as_gray = [np.asarray(Image.fromarray(a).convert("L")) for a in by_hand]
    assert sorted(map(bytes, torch.cat([gray.train_images, gray.test_images])[:, 0].numpy())) == sorted(
        map(bytes, as_gray))


# -- arrays ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["NHW", "NHWC", "NCHW", "float", "uint16"])
def test_npy_layouts_and_dtypes(tmp_path, layout):
    rng = np.random.default_rng(2)
    images = rng.integers(0, 256, (20, 3, 12, 12), dtype=np.uint8)
    array = {"NHW": images[:, 0], "NHWC": images.transpose(0, 2, 3, 1), "NCHW": images,
             "float": images.transpose(0, 2, 3, 1) / 255.0, "uint16": images.astype(np.uint16) * 257}[layout]
    np.save(tmp_path / "x.npy", array)
    data = load(tmp_path / "x.npy", tmp_path, image_size=12)
    channels = 1 if layout == "NHW" else 3
    assert data.shape == (channels, 12, 12) and len(data.train_images) == 18 and len(data.test_images) == 2
    everything = torch.cat([data.train_images, data.test_images])
    expected = images[:, :channels]
    assert sorted(map(bytes, everything.numpy())) == sorted(map(bytes, expected))


def test_npz_with_its_own_split_and_labels(tmp_path):
    rng = np.random.default_rng(3)
    np.savez(tmp_path / "d.npz", train=rng.integers(0, 256, (30, 32, 32), dtype=np.uint8),
             test=rng.integers(0, 256, (6, 32, 32), dtype=np.uint8),
             train_labels=np.arange(30) % 3, test_labels=np.arange(6) % 3)
    data = load(tmp_path / "d.npz", tmp_path)
    assert (len(data.train_images), len(data.test_images)) == (30, 6)
    assert data.train_labels.tolist() == (np.arange(30) % 3).tolist()


@pytest.mark.parametrize("array, message", [
    (np.zeros((4, 5), np.uint8), r"shape \(4, 5\): expected N x H x W"),
    (np.zeros((4, 8, 8), np.int16), "dtype int16 is not supported"),
    (np.full((4, 8, 8), 2.0), r"float images must lie in \[0, 1\]"),
    (np.where(np.arange(4)[:, None, None] == 2, np.nan, np.full((4, 8, 8), 0.5)),  # one image, else in range
     r"bad.npy: 1 image\(s\) hold NaN or infinite values \(the first: image 2\); float images must lie in \[0, 1\]"),
    (np.full((4, 8, 8), np.inf, np.float32), r"4 image\(s\) hold NaN or infinite values \(the first: image 0\)"),
    (np.zeros((4, 5, 8, 8), np.uint8), "no channel axis of 1, 3 or 4"),
])
def test_bad_arrays_are_refused_by_name(tmp_path, array, message):
    np.save(tmp_path / "bad.npy", array)
    with pytest.raises(DataError, match=message):
        load(tmp_path / "bad.npy", tmp_path)


def test_an_npz_without_usable_keys_and_a_broken_file(tmp_path):
    np.savez(tmp_path / "odd.npz", a=np.zeros((4, 8, 8)), b=np.zeros(3))
    with pytest.raises(DataError, match=r"odd.npz: no usable arrays \(found a, b"):
        load(tmp_path / "odd.npz", tmp_path)
    (tmp_path / "cut.npy").write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(DataError, match="cut.npy: not a readable NumPy file"):
        load(tmp_path / "cut.npy", tmp_path)


# -- the cache -----------------------------------------------------------------------------------------------------


def test_the_cache_is_reused_rebuilt_when_the_source_changes_and_never_trusted_when_damaged(tmp_path, capsys):
    root = write_folder(tmp_path / "imgs")
    first = load(root, tmp_path, image_size=8)
    cache_file = next((tmp_path / "cache").glob("*.images.npy"))
    stamp = cache_file.stat().st_mtime_ns
    _load.cache_clear()
    load(root, tmp_path, image_size=8)
    assert cache_file.stat().st_mtime_ns == stamp  # opened, not rebuilt

    new = np.full((30, 30, 3), 255, np.uint8)
    Image.fromarray(new).save(root / "cat" / "0.png")  # a changed file: another key, another cache
    os.utime(root / "cat" / "0.png", ns=(1, 2_000_000_000))
    _load.cache_clear()
    changed = load(root, tmp_path, image_size=8)
    assert len(list((tmp_path / "cache").glob("*.images.npy"))) == 2
    assert not torch.equal(torch.cat([changed.train_images, changed.test_images]),
                           torch.cat([first.train_images, first.test_images]))

    expected = changed.train_images.clone()  # (the array below maps the file we are about to damage)
    other_cache = next(p for p in (tmp_path / "cache").glob("*.images.npy") if p != cache_file)
    with open(other_cache, "r+b") as f:
        f.truncate(200)
    _load.cache_clear()
    again = load_data(str(root), cache_dir=tmp_path / "cache", image_size=8)
    assert "truncated or changed since it was written; preparing the images again" in capsys.readouterr().err
    assert torch.equal(again.train_images, expected)


# -- training on them ------------------------------------------------------------------------------------------------


def small(out, **kw):
    settings = dict(epochs=2, batch_size=16, quiet=True, device="cpu", out=str(out), eval_batch_size=50,
                    tensorboard=False, report=False, cache_dir=str(out.parent / "cache"))
    settings.update(kw)
    return TrainConfig(**settings)


def deterministic(metrics):
    return [{k: v for k, v in m.items() if k not in TIMING} for m in metrics]


@pytest.mark.layouts  # bit for bit within one layout: checked under each by scripts/test-layouts.sh
def test_a_streamed_run_equals_a_resident_one_bit_for_bit(tmp_path):
    rng = np.random.default_rng(4)
    np.save(tmp_path / "x.npy", rng.integers(0, 256, (120, 32, 32, 3), dtype=np.uint8))
    kw = dict(data=str(tmp_path / "x.npy"), model="resize", encoder="conv")
    resident = train(small(tmp_path / "resident", **kw), log=lambda s: None)
    streamed = train(small(tmp_path / "streamed", resident_max_bytes=1000, **kw), log=lambda s: None)
    settings = json.loads((tmp_path / "streamed" / "config.json").read_text())["data"]
    assert settings["streamed"] and settings["shape"] == [3, 32, 32]
    assert deterministic(streamed.metrics) == deterministic(resident.metrics)
    a, b = resident.model.state_dict(), streamed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_shapes_train_in_colour_at_64_with_a_discrete_likelihood(tmp_path):
    result = train(small(tmp_path / "run", data="shapes:320", image_size=64, model="resize", encoder="conv",
                         likelihood="logistic", epochs=2, lr=3e-3, tensorboard=True), log=lambda s: None)
    m = result.metrics[-1]
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["data"]["shape"] == [3, 64, 64] and config["data"]["classes"] == ["circle", "square", "triangle"]
    assert m["entropy_floor"] is None
    assert m["test_bits_per_dim"] == pytest.approx(m["test_neg_elbo"] / (3 * 64 * 64 * math.log(2)))
    # training bits/dim below 8, a uniform guess over the 256 levels (the test figure needs BatchNorm statistics
    # that a few dozen steps at Keras' momentum 0.99 have not settled yet)
    assert m["train_loss"] / (3 * 64 * 64 * math.log(2)) < 8 and m["train_loss"] < result.metrics[0]["train_loss"]

    assert main(["eval", str(tmp_path / "run"), "--device", "cpu"]) == 0
    assert main(["artifacts", str(tmp_path / "run"), "--device", "cpu", "--images", "32"]) == 0
    assert main(["report", str(tmp_path / "run")]) == 0
    from PIL import Image as PILImage
    with PILImage.open(tmp_path / "run" / "eval" / "samples.png") as picture:
        assert picture.mode in ("RGB", "RGBA")  # drawn in colour
    evaluation = json.loads((tmp_path / "run" / "eval" / "eval.json").read_text())
    assert evaluation["test_bits_per_dim"] == pytest.approx(
        evaluation["test_neg_elbo"] / (3 * 64 * 64 * math.log(2)))
    recovery = evaluation["factor_recovery"]
    assert set(recovery) == {"kind_accuracy", "hue_r2", "size_r2", "x_r2", "y_r2"}
    assert 0 <= recovery["kind_accuracy"] <= 1 and all(v <= 1 for v in recovery.values())


def test_shapes_are_generated_the_same_every_time_with_their_factors(tmp_path):
    a = load("shapes:20", tmp_path, image_size=32)
    _load.cache_clear()
    b = load_data("shapes:20", image_size=32, cache_dir=tmp_path / "other", progress=False)
    assert torch.equal(a.train_images, b.train_images) and a.shape == (3, 32, 32) and len(a.test_images) == 10
    from convae.data import shapes_factors
    factors = shapes_factors(a)
    assert factors.shape == (30, 6) and torch.equal(a.train_labels, torch.from_numpy(factors[:20, 0]).long())


def test_the_seed_model_refuses_other_shapes_and_likelihoods(tmp_path, capsys):
    with pytest.raises(ConfigError, match="--model seed: the seed model draws 32x32 gray images"):
        train(small(tmp_path / "run", data="shapes:20"), log=lambda s: None)
    assert not (tmp_path / "run").exists()
    code = main(["train", "--data", "shapes:20", "--image-size", "64", "--out", str(tmp_path / "r2"), "--quiet",
                 "--batch-size", "8",
                 "--cache-dir", str(tmp_path / "cache")])
    assert code == 2 and "--model seed: the seed model draws 32x32 gray" in capsys.readouterr().err


# -- likelihoods against hand computations ---------------------------------------------------------------------------


def test_continuous_bernoulli_is_normalised_and_matches_its_formula():
    cb = make_likelihood("continuous-bernoulli")
    x = torch.linspace(0, 1, 20001, dtype=torch.float64)
    for logit in (-6.0, -0.3, 0.0, 1e-3, 2.5):
        params = torch.full((len(x), 1, 1, 1), logit, dtype=torch.float64)
        density = torch.exp(-cb.nll(params, x.view(-1, 1, 1, 1)))
        assert torch.trapezoid(density, x).item() == pytest.approx(1.0, abs=1e-6), logit
        lam = torch.sigmoid(torch.tensor(logit, dtype=torch.float64))
        by_hand = (2 * torch.atanh(1 - 2 * lam) / (1 - 2 * lam)) if abs(logit) > 1e-9 else torch.tensor(2.0)
        assert cb.log_normaliser(torch.tensor([logit], dtype=torch.float64)).item() == pytest.approx(
            math.log(by_hand.item()), rel=1e-9)
        mean = torch.trapezoid(x * density, x).item()
        assert cb.mean(torch.tensor([logit])).item() == pytest.approx(mean, abs=1e-4)


def test_discretised_logistic_puts_all_mass_on_the_256_levels_and_matches_one_bin_by_hand():
    logistic = make_likelihood("logistic")
    levels = torch.arange(256, dtype=torch.float64) / 255
    for mean, log_scale in ((0.1, -2.0), (-0.9, -4.5), (0.99, 0.5)):
        params = torch.tensor([mean, log_scale], dtype=torch.float64).view(1, 2, 1, 1).expand(256, 2, 1, 1)
        p = torch.exp(-logistic.nll(params, levels.view(-1, 1, 1, 1)))
        assert p.sum().item() == pytest.approx(1.0, abs=1e-9)
        k, s = 77, math.exp(log_scale)
        x = 2 * k / 255 - 1
        sig = lambda t: 1 / (1 + math.exp(-t))  # noqa: E731
        assert p[k].item() == pytest.approx(sig((x + 1 / 255 - mean) / s) - sig((x - 1 / 255 - mean) / s), rel=1e-9)


def test_gaussian_and_bernoulli_match_torch_distributions():
    x = torch.rand(3, 2, 4, 4, dtype=torch.float64)
    params = torch.randn(3, 4, 4, 4, dtype=torch.float64)
    mean, log_scale = params[:, :2], params[:, 2:].clamp(min=-7)
    expected = -torch.distributions.Normal(mean, log_scale.exp()).log_prob(x).flatten(1).sum(1)
    torch.testing.assert_close(make_likelihood("gaussian").nll(params, x), expected)
    fixed = -torch.distributions.Normal(params[:, :2], 0.2).log_prob(x).flatten(1).sum(1)
    torch.testing.assert_close(make_likelihood("gaussian", 0.2).nll(params[:, :2], x), fixed)
    binary = torch.bernoulli(x)
    logits = params[:, :2]
    expected = -torch.distributions.Bernoulli(logits=logits).log_prob(binary).flatten(1).sum(1)
    torch.testing.assert_close(make_likelihood("bernoulli").nll(logits, binary), expected)


def test_bits_per_dimension_are_nats_over_dims_times_ln2():
    assert bits_per_dim(3072 * math.log(2) * 3.5, 3072) == pytest.approx(3.5)


# -- named sources -----------------------------------------------------------------------------------------------


def test_fashion_mnist_is_read_from_the_debian_package_folder_or_refused_in_one_line(tmp_path, monkeypatch, capsys):
    import convae.data.idx as idx
    from convae.data import IDX_FILES, write_idx

    monkeypatch.setattr(idx, "FASHION_MNIST_DIR", tmp_path / "absent")
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        load_data("fashion-mnist", progress=False)
    assert main(["train", "--data", "fashion-mnist", "--out", str(tmp_path / "runs"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--data DIR" in err[0]

    rng = np.random.default_rng(0)
    folder = tmp_path / "fashion"
    folder.mkdir()
    parts = {"train": rng.integers(0, 256, (12, 28, 28), dtype=np.uint8), "test": rng.integers(0, 256, (5, 28, 28), dtype=np.uint8)}
    for split, images in parts.items():
        write_idx(folder / f"{IDX_FILES[split + '_images']}.gz", images)
        write_idx(folder / f"{IDX_FILES[split + '_labels']}.gz", np.arange(len(images), dtype=np.uint8) % 10)
    monkeypatch.setattr(idx, "FASHION_MNIST_DIR", folder)
    _load.cache_clear()
    data = load_data("fashion-mnist", progress=False)
    assert data.name == "fashion-mnist" and data.classes[9] == "Ankle boot" and data.levels == 255.0
    assert torch.equal(data.train_images[:, 0], torch.from_numpy(parts["train"]))
    assert torch.equal(data.test_labels, torch.arange(5) % 10)

"""Your own images end to end (issue 33): the API prepares an image exactly as training's cache did, for every
Pillow mode, non-square and tiny images, lists of mixed sizes and arrays; --resize pad pads with the background;
every run says what preparing did."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

import convae
from convae.runs import open_run

from conftest import run_cli


def every_mode(folder, rng):
    """One file per mode Pillow gives, most of them non-square, one tiny: (name, image) written as PNG or TIFF."""
    def noise(w, h, channels=None):
        shape = (h, w) if channels is None else (h, w, channels)
        return rng.integers(0, 256, shape, dtype=np.uint8)

    rgba = noise(30, 18, 4)
    rgba[..., 3] = np.linspace(0, 255, 30, dtype=np.uint8)[None]  # a gradient of transparency
    la = Image.fromarray(noise(12, 40, 2), "LA")
    palette = Image.fromarray(noise(25, 15, 3)).quantize(16)
    see_through = palette.copy()
    see_through.info["transparency"] = 3
    deep = (rng.random((14, 22)) * 65535).astype(np.uint16)
    images = {
        "1.png": Image.fromarray(noise(21, 9) > 128).convert("1"),
        "L.png": Image.fromarray(noise(13, 29)),
        "LA.png": la,
        "P.png": palette,
        "P-transparent.png": see_through,
        "RGB.png": Image.fromarray(noise(40, 10, 3)),
        "RGBA.png": Image.fromarray(rgba, "RGBA"),
        "I16.png": Image.fromarray(deep),  # I;16
        "I.tif": Image.fromarray(deep.astype(np.int32), "I"),
        "F.tif": Image.fromarray(rng.random((11, 17)).astype(np.float32), "F"),
        "CMYK.tif": Image.fromarray(noise(19, 23, 4), "CMYK"),
        "YCbCr.tif": Image.fromarray(noise(16, 20, 3), "YCbCr"),
        "LAB.tif": Image.fromarray(noise(18, 12, 3), "LAB"),
        "tiny.png": Image.fromarray(noise(3, 5, 3)),
    }
    for name, image in list(images.items()):
        image.save(folder / name)
        try:  # a file this Pillow cannot read back itself is no test of convae (Pillow 12.3: a YCbCr TIFF it wrote)
            with Image.open(folder / name) as written:
                written.load()
        except OSError:
            (folder / name).unlink()
            del images[name]
    return images


MODES_READ: list[str] = []  # the files of every_mode this Pillow reads back (14 with Pillow 13; 13 with 12.3)


@pytest.fixture(scope="module")
def own_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("own")
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        (root / split / "a").mkdir(parents=True)
        MODES_READ[:] = list(every_mode(root / split / "a", rng))
    return root


def trained_on(tmp_path, capsys, folder, *more):
    out = tmp_path / "run"
    code, said, err = run_cli(capsys, "train", "--data", str(folder), "--model", "fc", "--image-size", "16",
                              "--max-steps", "1", "--batch-size", "2", "--device", "cpu", "--no-report",
                              "--no-tensorboard", "--cache-dir",
                              str(tmp_path / "cache"), "--out", str(out), *more)
    assert code == 0, err
    return out, said


@pytest.mark.parametrize("options", [[], ["--channels", "1"], ["--resize", "pad", "--background", "gray"]],
                         ids=["colour", "gray", "pad"])
def test_the_api_prepares_each_file_as_training_cached_it(tmp_path, capsys, own_folder, options):
    run, _ = trained_on(tmp_path, capsys, own_folder, *options)
    model = convae.load(run, device="cpu")
    data = open_run(run, "cpu").data()
    files = sorted((own_folder / "train" / "a").iterdir())
    assert len(files) == len(data.train_images) == len(MODES_READ)
    for k, path in enumerate(files):
        cached = data.train_images[k:k + 1].float() / 255
        with Image.open(path) as image:
            assert torch.equal(model.prepare(image), cached), path.name
    mixed = [Image.open(p) for p in files]  # a list of every size and mode, each prepared alone
    assert torch.equal(model.prepare(mixed), data.train_images.float() / 255)
    assert model.encode(mixed)[0].shape == (len(files), model.latent_dim)
    facts = {p.name: f for p, f in zip(files, model.last_prepared)}
    policy = "padded" if "pad" in options else "cropped"
    assert facts["RGB.png"]["fitted"] == policy  # the tiny 3 x 5 image: its short side (long side, padded) to 16
    assert facts["tiny.png"]["scale"] == pytest.approx(16 / (5 if policy == "padded" else 3))


def test_padding_uses_the_background_and_arrays_match_training(tmp_path, capsys):
    """--resize pad fills with --background (it was black while transparency showed white); an .npz of non-square
    RGBA images prepared by the API from its arrays equals training's cache."""
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (6, 12, 30, 4), dtype=np.uint8)  # N x H x W x RGBA, wider than tall
    images[..., 3] = 255
    np.savez(tmp_path / "wide.npz", images=images)
    run, said = trained_on(tmp_path, capsys, tmp_path / "wide.npz", "--resize", "pad", "--test-fraction", "0.5")
    data = open_run(run, "cpu").data()
    top = data.train_images[:, :, 0].float()  # the first row lies in the padding (12 of 30 rows are picture)
    assert bool((top == 255).all())  # white, as the default --background
    model = convae.load(run, device="cpu")
    train_index = json.loads((run / "config.json").read_text())["data"]
    assert "padded to a square with white" in said and train_index["fitting"]["padded"] == 6
    held = torch.from_numpy(images)  # the API takes the same arrays: every image's cached version is among them
    prepared = (model.prepare(held) * 255).round().to(torch.uint8)
    for image in data.train_images:
        assert any(torch.equal(image, p) for p in prepared)


def test_every_run_says_what_preparing_did_cache_hit_or_quiet(tmp_path, capsys, own_folder):
    first, said = trained_on(tmp_path, capsys, own_folder)
    assert "fitted to 16x16: " in said and "centre-cropped to a square" in said and "upscaled (at most" in said
    assert "image(s) with transparent pixels drawn over white" in said and "labels: 1 classes" in said
    again = tmp_path / "again"
    code, _, err = run_cli(capsys, "train", "--data", str(own_folder), "--model", "fc", "--image-size", "16",
                           "--max-steps", "1", "--batch-size", "2", "--device", "cpu", "--no-report", "--no-tensorboard",
                           "--quiet",
                           "--cache-dir", str(tmp_path / "cache"), "--out", str(again))
    assert code == 0, err
    log = (again / "log.txt").read_text()  # a cache hit, and --quiet: the log says it all the same
    assert "centre-cropped to a square" in log and "kept less than half their area" in log
    assert "train/a/1.png (21x9)" in log  # the first of them named, with their sizes
    fitting = json.loads((again / "config.json").read_text())["data"]["fitting"]
    assert fitting["cropped"] > 0 and fitting["upscaled"] > 0 and fitting["largest_upscale"] == pytest.approx(16 / 3,
                                                                                                              abs=0.01)


def test_encode_matches_latents_to_file_names_and_decode_keeps_them(tmp_path, capsys, own_folder):
    run, _ = trained_on(tmp_path, capsys, own_folder)
    code, said, err = run_cli(capsys, "encode", str(run), "--split", "all", "--out", str(tmp_path / "z.npz"),
                              "--device", "cpu")
    both = 2 * len(MODES_READ)
    assert code == 0 and f"{both} all images encoded" in said, err
    with np.load(tmp_path / "z.npz") as f:
        names, mu = list(f["names"]), f["mu"]
    assert names[:2] == ["train/a/1.png", "train/a/CMYK.tif"] and names[both // 2] == "test/a/1.png"
    assert len(mu) == both
    model = convae.load(run, device="cpu")
    with Image.open(own_folder / "test" / "a" / "RGBA.png") as image:
        expected = model.encode(image)[0][0].numpy()
    np.testing.assert_allclose(mu[names.index("test/a/RGBA.png")], expected, rtol=1e-5, atol=1e-6)
    code, _, err = run_cli(capsys, "decode", str(run), str(tmp_path / "z.npz"), "--out", str(tmp_path / "x.npz"),
                           "--device", "cpu")
    assert code == 0, err
    with np.load(tmp_path / "x.npz") as f:
        assert list(f["names"]) == names and f["images"].shape == (both, 3, 16, 16)
    code, _, err = run_cli(capsys, "encode", str(run), "--data", str(own_folder / "test"), "--split", "test",
                           "--out", str(tmp_path / "other.npz"), "--device", "cpu")
    assert code == 0, err
    with np.load(tmp_path / "other.npz") as f:
        assert all(name.startswith("a/") for name in f["names"])  # a folder of the user's: its own file names


def test_the_latent_map_names_the_classes(tmp_path, monkeypatch):
    import convae.visualisation as vis

    drawn = {}
    monkeypatch.setattr(vis, "save_figure", lambda fig, path: drawn.setdefault("fig", fig))
    vis.latent_scatter(torch.randn(30, 2), torch.arange(30) % 3, tmp_path / "p.png", "t", names=["cat", "dog", "owl"])
    legend = drawn["fig"].axes[0].get_legend()
    assert [t.get_text() for t in legend.get_texts()] == ["cat", "dog", "owl"]


@pytest.mark.parametrize("size", [128, 256])
def test_large_images_train_stream_evaluate_and_export(tmp_path, capsys, size):
    """The convolutional models take 128 x 128 and 256 x 256 (one more stride-2 stage per doubling); a run streams its
    images from the memory-mapped cache when they exceed --resident-max-bytes, evaluates with the IW bound and
    exports."""
    rng = np.random.default_rng(size)
    folder = tmp_path / "photos"
    folder.mkdir()
    for k in range(10):
        Image.fromarray(rng.integers(0, 256, (size + 40, size + 90, 3), dtype=np.uint8)).save(folder / f"{k}.png")
    out = tmp_path / "run"
    code, said, err = run_cli(capsys, "train", "--data", str(folder), "--model", "resize", "--encoder", "conv",
                              "--likelihood", "logistic", "--image-size", str(size), "--batch-size", "4",
                              "--max-steps", "2", "--test-fraction", "0.2", "--resident-max-bytes", "0", "--device",
                              "cpu", "--no-report", "--no-tensorboard", "--cache-dir", str(tmp_path / "cache"),
                              "--out", str(out))
    assert code == 0, err
    assert json.loads((out / "config.json").read_text())["data"]["streamed"] is True  # not loaded whole
    assert run_cli(capsys, "eval", str(out), "--iw-samples", "2", "--no-pictures", "--device", "cpu")[0] == 0
    evaluation = json.loads((out / "eval" / "eval.json").read_text())
    assert np.isfinite(evaluation["iw_bits_per_dim"]) and evaluation["n_test_images"] == 2
    assert run_cli(capsys, "export", str(out), "--format", "torchscript", "--out", str(tmp_path / "ts"))[0] == 0
    decoder = torch.jit.load(tmp_path / "ts" / "decoder.pt")
    assert decoder(torch.randn(1, 100)).shape == (1, 3, size, size)
    with Image.open(folder / "0.png") as image:
        assert convae.load(out, device="cpu").prepare(image).shape == (1, 3, size, size)

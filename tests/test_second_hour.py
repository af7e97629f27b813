"""What a new user hit in their second hour on real data (issue 27), one test (or more) per point."""

import io
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

import convae
import convae.cli
from convae.data import load_data
from convae.runs import RunDir

from conftest import run_cli, sigterm_at

README = (__import__("pathlib").Path(__file__).parent.parent / "README.md").read_text()


def small(idx_dir, out, *extra):
    return ["train", "--data-dir", str(idx_dir), "--out", str(out), "--device", "cpu", "--quiet", "--no-report",
            "--no-tensorboard", *extra]


# 1 -----------------------------------------------------------------------------------------------------------------


def test_a_preset_run_resumes_with_the_command_that_started_it(tmp_path, idx_dir, capsys):
    def command(epochs):
        return small(idx_dir, tmp_path / "fast", "--preset", "fast", "--epochs", epochs, "--auto-resume",
                     "--checkpoint-every", "1")

    assert run_cli(capsys, *command("1"))[0] == 0
    code, out, err = run_cli(capsys, *command("2"))
    assert code == 0 and "resuming" in out, err  # the preset's epochs (10) are not the run's (1): not a change
    code, _, err = run_cli(capsys, "train", "--resume", str(tmp_path / "fast"), "--preset", "fast", "--epochs", "3")
    assert code == 0, err
    code, _, err = run_cli(capsys, "train", "--resume", str(tmp_path / "fast"), "--preset", "seed", "--epochs", "4")
    assert code == 2 and "--preset seed: cannot change when resuming" in err and "batch_size is 32" in err
    assert "--no-report" in err and "--no-tensorboard" in err and "--report," not in err


# 2 -----------------------------------------------------------------------------------------------------------------


def rgba_icons(folder, n=6):
    """Icons: a blue disc on a transparent background whose hidden colour is red (what many icon sets hold)."""
    folder.mkdir(parents=True)
    yy, xx = np.mgrid[0:16, 0:16]
    disc = (yy - 8) ** 2 + (xx - 8) ** 2 < 25
    for k in range(n):
        pixels = np.zeros((16, 16, 4), np.uint8)
        pixels[..., 0] = 255                                   # red everywhere, hidden where transparent
        pixels[disc] = (0, 0, 255, 255)
        Image.fromarray(pixels, "RGBA").save(folder / f"{k}.png")
    palette = Image.new("P", (16, 16), 1)
    palette.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    palette.info["transparency"] = 1                           # a palette image, its colour 1 transparent
    palette.save(folder / "palette.png", transparency=1)
    return folder


def test_transparent_pixels_are_drawn_over_the_background_and_counted(tmp_path):
    folder = rgba_icons(tmp_path / "icons")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Pillow's "Palette images with Transparency ..." would fail here
        data = load_data(str(folder), image_size=16, cache_dir=tmp_path / "cache", progress=False)
    images = torch.cat([data.train_images, data.test_images])
    assert data.shape == (3, 16, 16) and data.details["transparent"] == 7 and data.details["background"] == "white"
    corner = images[:, :, 0, 0]
    assert (corner == 255).all()  # white, not the red the transparent pixels hold
    assert (images[:, 0, 8, 8] == 0).sum() == 6 and (images[:, 2, 8, 8] == 255).all()  # six blue discs, one white
    black = load_data(str(folder), image_size=16, cache_dir=tmp_path / "cache", progress=False, background="black")
    assert (torch.cat([black.train_images, black.test_images])[:, :, 0, 0] == 0).all()


def test_an_rgba_array_is_drawn_over_the_background_too(tmp_path):
    pixels = np.zeros((10, 16, 16, 4), np.uint8)
    pixels[..., 0], pixels[:, 4:12, 4:12] = 255, (0, 255, 0, 255)
    np.save(tmp_path / "icons.npy", pixels)
    data = load_data(str(tmp_path / "icons.npy"), image_size=16, cache_dir=tmp_path / "cache", progress=False)
    images = torch.cat([data.train_images, data.test_images])
    assert data.details["transparent"] == 10 and (images[:, :, 0, 0] == 255).all() and (images[:, 1, 8, 8] == 255).all()


# 3 -----------------------------------------------------------------------------------------------------------------


def folder_with_bad_files(root):
    root.mkdir()
    rng = np.random.default_rng(0)
    for k in range(12):
        Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(root / f"good{k:02d}.png")
    (root / "empty.png").write_bytes(b"")
    (root / "fake.jpg").write_text("not a picture")
    whole = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(whole, format="PNG")
    (root / "broken.png").write_bytes(whole.getvalue()[: len(whole.getvalue()) // 2])  # truncated mid-way
    for name in ("IMG_0001.HEIC", "IMG_0002.HEIC", "labels.csv", "README"):  # not image types convae reads
        (root / name).write_bytes(b"...")
    return root


def test_every_unreadable_file_is_named_in_one_message_or_skipped_on_request(tmp_path, capsys):
    root = folder_with_bad_files(tmp_path / "photos")
    out = tmp_path / "run"
    base = ["train", "--data", str(root), "--image-size", "32", "--model", "fc", "--epochs", "1", "--batch-size",
            "4", "--device", "cpu", "--quiet", "--no-report", "--no-tensorboard", "--out", str(out)]
    code, _, err = run_cli(capsys, *base)
    assert code == 2 and err.count("\n") == 1 and "3 unusable image file(s)" in err
    assert all(name in err for name in ("empty.png", "fake.jpg", "broken.png")) and "--skip-bad-images" in err
    assert not out.exists()
    code, _, err = run_cli(capsys, *base, "--skip-bad-images")
    assert code == 0, err
    log = (out / "log.txt").read_text()
    assert "3 unreadable image file(s) skipped" in log and "broken.png" in log
    assert "4 file(s) left out, of types convae does not read as images: (no extension) 1, .csv 1, .heic 2" in log
    data = json.loads((out / "config.json").read_text())["data"]
    assert data["train_images"] + data["test_images"] == 12 and len(data["skipped"]) == 3


# 4 -----------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def colour_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("colour")
    rng = np.random.default_rng(1)
    np.save(folder / "x.npy", rng.integers(0, 256, (64, 32, 32, 3), dtype=np.uint8))
    assert convae.cli.main(["train", "--data", str(folder / "x.npy"), "--model", "fc", "--epochs", "1",
                            "--batch-size", "16", "--device", "cpu", "--quiet", "--no-report", "--no-tensorboard",
                            "--out", str(folder / "run")]) == 0
    return folder / "run"


def test_the_api_takes_images_as_numpy_and_pillow_give_them(colour_run):
    model = convae.load(colour_run, device="cpu")
    rng = np.random.default_rng(2)
    nhwc = rng.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
    expected = model.encode(torch.from_numpy(nhwc).permute(0, 3, 1, 2))[0]
    torch.testing.assert_close(model.encode(nhwc)[0], expected)                       # N x H x W x C
    torch.testing.assert_close(model.encode(nhwc[0])[0], expected[:1])                # H x W x C
    pictures = [Image.fromarray(a) for a in nhwc]
    torch.testing.assert_close(model.encode(pictures)[0], expected)                   # a list of Pillow images
    torch.testing.assert_close(model.encode(pictures[3])[0], expected[3:4])           # one Pillow image
    opaque = np.concatenate([nhwc, np.full((8, 32, 32, 1), 255, np.uint8)], axis=3)
    torch.testing.assert_close(model.encode(opaque)[0], expected)                     # RGBA, nothing transparent
    clear = opaque.copy()
    clear[..., 3] = 0                                                                  # all transparent: white
    torch.testing.assert_close(model.encode(clear)[0], model.encode(np.full((8, 32, 32, 3), 255, np.uint8))[0])
    read_only = nhwc.copy()
    read_only.flags.writeable = False
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch's "The given NumPy array is not writable" would fail here
        model.encode(read_only)
    said = repr(model)
    assert "'fc'" in said and "3x32x32 images" in said and "latent_dim 20" in said and str(colour_run) in said


# 5 -----------------------------------------------------------------------------------------------------------------


def test_progress_lines_come_when_the_output_is_not_a_terminal():
    from convae.progress import Progress

    stream = io.StringIO()  # not a terminal
    progress = Progress(1000, "epoch 1/3", "img", every=0.05, first=0.0, stream=stream)
    for _ in range(5):
        time.sleep(0.06)
        progress.update(100, loss="12.50")
    progress.close()
    lines = stream.getvalue().splitlines()
    assert len(lines) >= 4 and re.fullmatch(r"epoch 1/3: [\d,]+ of 1,000 img \(\d+ %\), [\d,]+ img/s, loss 12\.50, "
                                            r"about .* left", lines[-1]), lines
    assert Progress(10, "x", show=False, stream=stream).bar is None


def test_a_run_says_its_plan_and_how_long_it_will_take(tmp_path, idx_dir, capsys):
    code, out, _ = run_cli(capsys, *small(idx_dir, tmp_path / "run", "--progress-every", "4"), hooks=sigterm_at(6))
    assert code == 130
    assert re.search(r"planned: 100 epochs of 8 steps \(the seed's 100: --epochs N for fewer\); at [\d,]+ img/s "
                     r"about .+ of training", out), out


def test_the_readme_says_which_models_take_which_image_sizes(tmp_path, capsys):
    from convae.models import accepted_shapes

    assert "any size" in accepted_shapes("fc")[-1]
    assert "`fc` and the MLP encoder take any size" in " ".join(README.split())
    assert convae.cli.main(["train", "--model", "fc", "--image-size", "48", "--data", "shapes:40", "--epochs", "1",
                            "--batch-size", "8", "--device", "cpu", "--quiet", "--no-report", "--no-tensorboard",
                            "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "run")]) == 0


# 6 -----------------------------------------------------------------------------------------------------------------


def test_sample_before_the_first_checkpoint_says_there_is_no_model_yet(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"config": {}}))
    code, _, err = run_cli(capsys, "sample", str(run), "--out", str(tmp_path / "s.png"), "--device", "cpu")
    assert code == 2 and "no trained model to use yet" in err and "evaluate" not in err


# 7 -----------------------------------------------------------------------------------------------------------------


def test_the_resume_hint_can_be_pasted_and_is_in_log_txt(tmp_path, idx_dir):
    out = tmp_path / "run"
    process = subprocess.Popen([sys.executable, "-m", "convae", *small(idx_dir, out, "--epochs", "500")],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "PYTHONUNBUFFERED": "1"})
    deadline = time.time() + 120
    while not RunDir(out).checkpoint_files() and time.time() < deadline:
        time.sleep(0.1)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    hint = f"resume with: {shlex.quote(sys.executable)} -m convae train --resume {out}"
    assert process.returncode == 130 and hint in err
    assert hint in (out / "log.txt").read_text()
    resumed = subprocess.run(shlex.split(hint.split("resume with: ")[1]) + ["--epochs", "1"], capture_output=True,
                             text=True, timeout=120)
    assert resumed.returncode in (0, 2), resumed.stderr  # it runs (2: already past epoch 1, said in one line)
    assert "Traceback" not in resumed.stderr


# 9 -----------------------------------------------------------------------------------------------------------------


def test_a_sample_grid_is_drawn_large_enough_to_see(tmp_path, capsys, seed_run):
    assert run_cli(capsys, "sample", str(seed_run), "-n", "64", "--out", str(tmp_path / "grid.png"),
                   "--device", "cpu")[0] == 0
    with Image.open(tmp_path / "grid.png") as grid:
        assert grid.size[0] >= 8 * 96  # 32-pixel images enlarged 3 times (nearest neighbour)
    assert run_cli(capsys, "sample", str(seed_run), "-n", "4", "--scale", "1", "--out", str(tmp_path / "g1.png"),
                   "--device", "cpu")[0] == 0
    with Image.open(tmp_path / "g1.png") as small_grid:
        assert small_grid.size[0] < 80


# 10 ----------------------------------------------------------------------------------------------------------------


def test_eval_names_the_data_a_run_was_trained_on(tmp_path, tiny_data, capsys):
    from conftest import idx_folder

    data = idx_folder(tmp_path / "fashion", tiny_data)
    run = tmp_path / "run"
    assert run_cli(capsys, *small(data, run, "--epochs", "1", "--model", "fc"))[0] == 0
    code, out, _ = run_cli(capsys, "eval", str(run), "--no-pictures", "--json", "--device", "cpu")
    protocol = json.loads(out)["protocol"]
    assert code == 0 and "fashion" in protocol and "MNIST" not in protocol


# 11 ----------------------------------------------------------------------------------------------------------------


def test_a_long_error_is_cut_at_a_word_and_says_so():
    from convae.faults import first_line

    gloo = RuntimeError("[../third_party/gloo/gloo/transport/tcp/pair.cc:534] Connection closed by peer "
                        "[127.0.0.1]:52122 " + "look for bugs in the application before blaming gloo " * 4)
    line = first_line(gloo)
    assert len(line) <= 200 and line.endswith("…") and line[:-1].split()[-1] in gloo.args[0].split()


# 12 ----------------------------------------------------------------------------------------------------------------


def test_onnx_inputs_and_outputs_have_their_sizes_and_no_generated_names(tmp_path, colour_run, capsys):
    onnx = pytest.importorskip("onnx", reason="onnx is not installed")
    assert run_cli(capsys, "export", str(colour_run), "--format", "onnx", "--out", str(tmp_path / "x"))[0] == 0
    for name, expected in (("encoder", {"images": ["batch", 3, 32, 32], "mu": ["batch", 20]}),
                           ("decoder", {"z": ["batch", 20], "images": ["batch", 3, 32, 32]})):
        graph = onnx.load(tmp_path / "x" / f"{name}.onnx").graph
        shapes = {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
                  for v in [*graph.input, *graph.output]}
        assert all(shapes[k] == v for k, v in expected.items()), shapes

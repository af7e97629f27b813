"""The fourth hour (issue 40): what a new user and a researcher hit on real clip art, a PostgreSQL study and their own
plug-ins — each edge as the user meets it: one clear line, the right advice, or the documented behaviour."""

from __future__ import annotations

import json
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import run_cli


def png_claiming(path: Path, width: int, height: int) -> None:
    """A few hundred bytes that claim to be a width x height gray PNG: a decompression bomb's header (its pixels
    would take width x height bytes; a decoder that trusts it allocates them)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    rows = zlib.compress(b"\x00" * (width + 1) * 4)  # the first rows only: nobody should get that far
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
                     + chunk(b"IDAT", rows) + chunk(b"IEND", b""))


@pytest.fixture()
def small_folder(tmp_path):
    folder = tmp_path / "art"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(40):
        Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(folder / f"{i:02d}.png")
    return folder


# -- 1. a decompression bomb ------------------------------------------------------------------------------------------


def test_an_image_too_large_to_decode_safely_is_one_line_naming_it_and_the_way_to_allow_it(tmp_path, small_folder,
                                                                                          capsys):
    png_claiming(small_folder / "huge.png", 30_000, 20_000)  # 600 million pixels, Pillow's refusal at 179 million
    common = ["train", "--data", str(small_folder), "--model", "fc", "--device", "cpu", "--quiet", "--max-steps",
              "2", "--batch-size", "8", "--no-report", "--no-tensorboard", "--cache-dir", str(tmp_path / "cache")]
    code, _, err = run_cli(capsys, *common, "--out", str(tmp_path / "refused"))
    assert code == 2 and err.count("\n") == 1, err
    assert "huge.png: 30000x20000 = 600 million pixels, more than --max-image-pixels 178,956,970" in err
    assert "--skip-bad-images" in err and "Traceback" not in err
    assert not (tmp_path / "refused").exists()

    code, out, err = run_cli(capsys, *common, "--skip-bad-images", "--out", str(tmp_path / "skipped"))
    assert code == 0, err
    log = (tmp_path / "skipped" / "log.txt").read_text()
    assert "1 unreadable image file(s) skipped (--skip-bad-images)" in log and "huge.png" in log


def test_large_images_within_the_limit_are_counted_not_warned_of_at_every_preparation(tmp_path, small_folder,
                                                                                       monkeypatch, capsys):
    from convae.data import folder as folder_module
    from convae.data import images, sources

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # Pillow would now warn of every 24x24 image
    monkeypatch.setattr(sources, "LARGE_IMAGE_PIXELS", 500)
    monkeypatch.setattr(images, "LARGE_IMAGE_PIXELS", 500)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        data = sources.load_data(small_folder, cache_dir=tmp_path / "cache", progress=False)
    assert not [w for w in caught if issubclass(w.category, Image.DecompressionBombWarning)]
    assert any("40 image(s) of more than 0 million pixels decoded (within --max-image-pixels" in line
               for line in data.summary())
    assert Image.MAX_IMAGE_PIXELS == 100  # Pillow's own setting is put back
    assert folder_module.MAX_IMAGE_PIXELS == 178_956_970


# -- 11. the advice for a run stopped by --max-steps ------------------------------------------------------------------


def test_a_run_ended_by_max_steps_is_told_to_raise_max_steps_not_epochs(tmp_path, idx_dir, capsys):
    common = ["--device", "cpu", "--quiet", "--no-report", "--no-tensorboard"]
    run = tmp_path / "run"
    code, _, err = run_cli(capsys, "train", "--data-dir", str(idx_dir), "--model", "fc", "--max-steps", "4",
                           "--batch-size", "32", "--out", str(run), *common)
    assert code == 0, err
    code, _, err = run_cli(capsys, "train", "--resume", str(run), "--epochs", "5", *common)
    assert code == 2 and err.count("\n") == 1, err
    assert "its --max-steps 4 ended it: extend it with --max-steps N (more than 4; --epochs alone does not" in err
    code, _, err = run_cli(capsys, "train", "--resume", str(run), "--max-steps", "6", *common)
    assert code == 0, err  # the advice works


# -- 13. export without --format, and what an ONNX user needs to prepare images ---------------------------------------


def test_export_without_a_format_writes_one_and_model_json_says_how_images_are_prepared(tmp_path, seed_run, capsys):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(seed_run, run)
    code, out, err = run_cli(capsys, "export", str(run))
    assert code == 0, err
    description = json.loads((run / "export" / "model.json").read_text())
    assert description["format"] in ("onnx", "safetensors")
    prepared = description["preprocessing"]
    assert prepared["image_size"] == 32 and prepared["channels"] == 1 and prepared["levels"] == 255.0
    assert prepared["resize"] == "bilinear" and "divide by 255" in prepared["steps"]


# -- 15. the data's classes in config.json and what the label counts are ----------------------------------------------


def test_config_json_counts_the_datas_classes_and_the_summary_says_the_counts_span_both_splits(tmp_path, tiny_data,
                                                                                             capsys):
    import torch

    from convae.data import ImageData
    from conftest import idx_folder

    labelled = ImageData("blobs", tiny_data.train_images, torch.arange(256) % 3, tiny_data.test_images,
                         torch.arange(64) % 3, levels=255.0)
    idx_dir = idx_folder(tmp_path / "idx", labelled)
    run = tmp_path / "run"
    code, out, err = run_cli(capsys, "train", "--data-dir", str(idx_dir), "--model", "fc", "--max-steps", "2",
                             "--device", "cpu", "--no-report", "--no-tensorboard", "--out", str(run))
    assert code == 0, err
    data = json.loads((run / "config.json").read_text())["data"]
    labels = [line for line in out.splitlines() if line.startswith("labels:")]
    assert data["class_count"] == 3
    assert "labels: 3 classes, images per class in both splits (0 108, 1 106, 2 106)" in labels[0]
    import convae

    assert convae.load(run, device="cpu").classes == 0  # not conditional: the model takes no labels

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


# -- 2-7, 9. a search: the documented URL, distinct draws, no password anywhere, refused settings, quiet Optuna --------


def search(idx_dir, out, *more):
    return ["tune", "--model", "fc", "--space", "lr=log:1e-4:1e-2", "--data-dir", str(idx_dir), "--max-steps", "4",
            "--epochs", "1", "--device", "cpu", "--no-report", "--no-tensorboard", "--out", str(out), *more]


def test_a_bare_postgresql_url_gets_the_installed_driver_and_a_missing_one_is_named(monkeypatch):
    import importlib.util

    from convae.errors import ConfigError
    from convae.experiments import tune

    pytest.importorskip("psycopg2")
    assert tune.database_url("postgresql://me:pw@db.example/study") == "postgresql+psycopg2://me:pw@db.example/study"
    assert tune.database_url("sqlite:///x.db") == "sqlite:///x.db"
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name.startswith("psycopg") else
                        real(name, *a))
    with pytest.raises(ConfigError, match=r"postgresql://me:\*\*\*@db.example/study: no PostgreSQL driver is "
                                          r"installed here \(pip install psycopg2-binary"):
        tune.database_url("postgresql://me:pw@db.example/study")
    with pytest.raises(ConfigError, match="the database driver 'psycopg' is not installed .pip install psycopg.binary"):
        tune.database_url("postgresql+psycopg://me@db.example/study")


def test_no_two_trials_draw_from_the_same_sampler_state_across_seeds_restarts_and_workers(tmp_path):
    """The issue's sequence — --seed 0 --trials 2, --seed 2 --trials 4, --seed 0 --trials 6 — once gave trials 4 and
    5 the settings of 2 and 3 (the sampler was seeded by --seed + the trials already there); two workers sharing one
    study the same way."""
    pytest.importorskip("optuna")
    from convae.experiments import tune

    space = tune.parse_space(["lr=log:1e-4:1e-2", "beta=0.5:2"])
    for sampler in ("tpe", "random"):
        storage = f"sqlite:///{tmp_path / f'{sampler}.db'}"
        drawn = []
        for seed, total in ((0, 2), (2, 4), (0, 6)):  # three starts of the same search
            study = tune.open_study(tmp_path, storage, sampler, "none", seed)
            while len(study.trials) < total:
                trial = study.ask()
                drawn.append(json.dumps(tune.suggest_settings(study, trial, space, sampler, seed), sort_keys=True))
                study.tell(trial, 1.0)
        workers = [tune.open_study(tmp_path, storage, sampler, "none", 0) for _ in range(2)]
        asked = [(w, w.ask()) for w in workers]  # asked at the same moment, with the same --seed
        drawn += [json.dumps(tune.suggest_settings(w, t, space, sampler, 0), sort_keys=True) for w, t in asked]
        assert len(drawn) == 8 and len(set(drawn)) == 8, sampler
        again = tune.open_study(tmp_path, f"sqlite:///{tmp_path / 'again.db'}", sampler, "none", 0)
        first = again.ask()  # the same search draws the same first settings
        assert json.dumps(tune.suggest_settings(again, first, space, sampler, 0), sort_keys=True) == drawn[0]
        (tmp_path / "again.db").unlink()


def test_a_search_whose_settings_are_refused_fails_the_trial_at_once_uncounted_and_stops(tmp_path, idx_dir, capsys):
    optuna = pytest.importorskip("optuna")
    out = tmp_path / "search"
    command = [*search(idx_dir, out, "--trials", "2", "--pack", "1"), "--space", "model-option.stpes=1:3"]
    code, _, err = run_cli(capsys, *command)
    assert code == 2 and err.count("\n") == 1, err
    assert "--space: trial 0's settings were refused" in err and "stpes" in err and "not counted" in err
    trials = optuna.load_study(study_name="convae", storage=f"sqlite:///{out / 'study.db'}").get_trials()
    assert [t.state.name for t in trials] == ["FAIL"] and trials[0].user_attrs["refused"]
    code, _, err = run_cli(capsys, *command)  # the same again: refused again, never "0 trials, exit 0"
    assert code == 2 and "settings were refused" in err
    code, _, err = run_cli(capsys, *search(idx_dir, out, "--trials", "2", "--pack", "1"))
    assert code == 2 and err.count("\n") == 1, err  # a changed space on the existing study: said, with the difference
    assert "--space: the study was searched over another space (model_option.stpes is gone)" in err


def test_a_search_prints_no_optuna_warning_and_a_bad_storage_leaves_no_folder(tmp_path, idx_dir, capsys):
    pytest.importorskip("optuna")
    out = tmp_path / "search"
    code, said, err = run_cli(capsys, *search(idx_dir, out, "--trials", "1", "--pack", "1"))
    assert code == 0, err
    assert "Warning" not in err and "[W " not in err, err
    code, said, err = run_cli(capsys, "tune", "summary", str(out))
    assert code == 0 and "[W " not in err + said and "Warning" not in err, err
    missing = tmp_path / "never"
    code, _, err = run_cli(capsys, *search(idx_dir, missing, "--storage", "mysql+nosuchdriver://u:pw@h/db"))
    assert code == 2 and err.count("\n") == 1 and "pw" not in err, err
    assert not missing.exists()


def test_a_postgresql_study_by_the_documented_url_keeps_no_password_and_its_summary_finds_it(tmp_path, idx_dir,
                                                                                            postgres, capsys):
    """postgresql:// as the docs write it (the server trusts local users, so any password is taken); the password
    reaches no file and no line; `tune summary DIR` finds the study from DIR/study.json, asking for the password
    only where the URL had one."""
    bare = postgres.replace("postgresql+psycopg2://convae@", "postgresql://convae:hunter2@")
    out = tmp_path / "search"
    code, said, err = run_cli(capsys, *search(idx_dir, out, "--trials", "1", "--pack", "1", "--storage", bare))
    assert code == 0, err
    assert "hunter2" not in said + err
    for name in ("summary.md", "summary.json", "report.html", "study.json"):
        text = (out / name).read_text()
        assert "hunter2" not in text and "convae:***@" in text, name
    code, said, err = run_cli(capsys, "tune", "summary", str(out))
    assert code == 2 and "its study lives in postgresql://convae:***@" in err and "give --storage" in err
    code, said, err = run_cli(capsys, "tune", "summary", str(out), "--storage", bare)
    assert code == 0 and "1 trial(s)" in said and "hunter2" not in said + err
    without = postgres.replace("postgresql+psycopg2://", "postgresql://")  # no password: found from study.json alone
    other = tmp_path / "other"
    code, said, err = run_cli(capsys, *search(idx_dir, other, "--trials", "2", "--pack", "1", "--storage", without))
    assert code == 0, err
    code, said, err = run_cli(capsys, "tune", "summary", str(other))
    assert code == 0 and "2 trial(s)" in said, err


# -- 9. a size the model refuses, before the folder is prepared ---------------------------------------------------


def test_an_image_size_the_model_refuses_is_said_before_the_folder_is_prepared(tmp_path, small_folder, capsys):
    cache = tmp_path / "cache"
    code, _, err = run_cli(capsys, "train", "--data", str(small_folder), "--model", "resize", "--image-size", "100",
                           "--device", "cpu", "--quiet", "--cache-dir", str(cache), "--out", str(tmp_path / "run"))
    assert code == 2 and err.count("\n") == 1 and "--model resize" in err and "100" in err, err
    assert not cache.exists() or not any(cache.rglob("*.npy")), "a cache of 100-px images was prepared for nothing"
    assert not (tmp_path / "run").exists()


# -- 10. a sweep's grid, checked before sweep.json is written ---------------------------------------------------------


@pytest.mark.parametrize("grid, said", [
    ("model-option.stpes=1,2", "model 'planar' takes no such option"),
    ("model-option.steps=1,0", "steps=0"),
])
def test_a_grid_the_model_refuses_is_said_before_the_sweep_is_written_and_the_fix_runs(tmp_path, idx_dir, capsys,
                                                                                     grid, said):
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples" / "plugins" / "src"))
    from convae.models.registry import load_plugin

    load_plugin("convae_examples.planar")
    out = tmp_path / "sweep"
    common = ["sweep", "--model", "planar", "--data-dir", str(idx_dir), "--max-steps", "2", "--device", "cpu",
              "--quiet", "--no-report", "--no-tensorboard", "--out", str(out)]
    code, _, err = run_cli(capsys, *common, "--grid", grid)
    assert code == 2 and err.count("\n") == 1 and said in err, err
    assert not out.exists()  # nothing written, nothing trained: the corrected command is a new sweep
    code, _, err = run_cli(capsys, *common, "--grid", "model-option.steps=1,2")
    assert code == 0, err


# -- 12. a model option repeated at its default on --resume -----------------------------------------------------------


def test_resume_takes_a_model_option_given_at_its_factorys_default(tmp_path, idx_dir, capsys):
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples" / "plugins" / "src"))
    common = ["--plugin", "convae_examples.planar", "--device", "cpu", "--quiet", "--no-report", "--no-tensorboard"]
    run = tmp_path / "run"
    code, _, err = run_cli(capsys, "train", "--model", "planar", "--data-dir", str(idx_dir), "--max-steps", "2",
                           "--out", str(run), *common)
    assert code == 0, err
    code, _, err = run_cli(capsys, "train", "--resume", str(run), "--max-steps", "4", "--model-option", "steps=4",
                           *common)  # 4 is the factory's default: the run's own
    assert code == 0, err
    code, _, err = run_cli(capsys, "train", "--resume", str(run), "--max-steps", "6", "--model-option", "steps=2",
                           *common)
    assert code == 2 and "cannot change when resuming" in err, err


# -- 14. the report: the whole training curve, pictures at their size, what the data is ------------------------------


def test_the_epoch_picture_shows_large_images_at_their_own_resolution(tmp_path):
    import torch

    from convae.visualisation import seed_grid

    images = torch.rand(9, 3, 128, 128)
    seed_grid(images, images, tmp_path / "result1.png")
    width, height = Image.open(tmp_path / "result1.png").size
    assert width >= 2 * (3 * 129 + 1), width  # two panels of three 128-px images, each at 128 px at least
    seed_grid(torch.rand(9, 1, 32, 32), torch.rand(9, 1, 32, 32), tmp_path / "seed.png")
    assert Image.open(tmp_path / "seed.png").size[0] < 800  # the seed's picture as it was


def test_a_short_runs_report_has_its_whole_curve_and_says_what_the_data_is(tmp_path, small_folder, capsys):
    run = tmp_path / "run"
    code, _, err = run_cli(capsys, "train", "--data", str(small_folder), "--model", "fc", "--epochs", "3",
                           "--batch-size", "8", "--device", "cpu", "--quiet", "--no-tensorboard", "--resize", "pad",
                           "--background", "black", "--cache-dir", str(tmp_path / "cache"), "--out", str(run))
    assert code == 0, err
    steps = [json.loads(line)["step"] for line in (run / "steps.jsonl").read_text().splitlines()]
    assert steps[-1] == 12 and 4 in steps  # 4 steps an epoch: every epoch's end is on the curve, not only step 0 mod 25
    page = (run / "report.html").read_text()
    assert "data summary" in page and "data: art, 36 training and 4 test images of 3x32x32" in page
    assert "<td>background</td><td>black</td>" in page and "<td>resize (effective)</td><td>pad</td>" in page
    assert "epoch means" in page


# -- 16. what preparing did to an array with alpha ---------------------------------------------------------------------


def test_last_prepared_says_which_arrays_had_transparent_pixels(tmp_path, small_folder, capsys):
    import convae

    run = tmp_path / "run"
    code, _, err = run_cli(capsys, "train", "--data", str(small_folder), "--model", "fc", "--max-steps", "1",
                           "--batch-size", "8", "--device", "cpu", "--quiet", "--no-report", "--no-tensorboard",
                           "--cache-dir", str(tmp_path / "cache"), "--out", str(run))
    assert code == 0, err
    model = convae.load(run, device="cpu")
    rgba = np.full((2, 24, 24, 4), 200, dtype=np.uint8)
    rgba[1, ..., 3] = 255  # the second is opaque
    rgba[0, :4, :4, 3] = 0
    prepared = model.prepare_as_training(rgba)
    assert prepared.dtype.is_floating_point is False and tuple(prepared.shape) == (2, 3, 32, 32)
    assert [p["transparent"] for p in model.last_prepared] == [True, False]
    assert (prepared[0, :, 0, 0] == 255).all()  # drawn over the white background

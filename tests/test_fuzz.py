"""Property-based fuzzing (Hypothesis): option values and combinations, and malformed data, checkpoints and
config files, all through the ``convae`` command. The invariant every case must keep:

* the exit code is one of the documented ones (convae.errors.EXIT_CODES);
* stderr holds no Python traceback;
* a failed ``train`` leaves no run folder behind (or leaves an existing one as it was);
* nothing outside the run folder is created or changed.

CI runs a fixed budget with a fixed seed; ``CONVAE_FUZZ_EXAMPLES=500`` (per test) runs a longer campaign.
"""

import gzip
import json
import os
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from convae.cli import main
from convae.errors import EXIT_CODES
from convae.runs.checkpoint import meta_digest

from conftest import idx_folder

EXAMPLES = int(os.environ.get("CONVAE_FUZZ_EXAMPLES", "0"))
FUZZ = settings(max_examples=EXAMPLES or 25, deadline=None, derandomize=not EXAMPLES, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in folder.rglob("*") if p.is_file()}


def run_and_check(capsys, workdir: Path, argv: list[str], out: Path | None = None, cache: str = "cache") -> int:
    """Run ``convae argv`` in-process and assert the invariant; returns the exit code. ``workdir/cache`` is the
    prepared-data cache, the one place outside a run folder convae writes by design."""
    out_existed = out is not None and out.exists()

    def outside(files):
        return {k: v for k, v in files.items() if not k.startswith(cache + "/") and
                (out is None or not k.startswith(out.name + "/"))}

    before = outside(snapshot(workdir))
    try:
        code = main(argv)
    except SystemExit as e:  # argparse
        code = e.code
    err = capsys.readouterr().err
    assert code in EXIT_CODES, (argv, code, err)
    assert "Traceback" not in err, (argv, err)
    if code != 0:
        assert err.strip(), (argv, "a failure must say why")
    if out is not None and code not in (0, 130) and not out_existed:
        assert not out.exists() or not any(out.iterdir()), (argv, "a failed run left a folder", err)
    after = outside(snapshot(workdir))
    assert after == before, (argv, "files outside the run folder changed", set(after) ^ set(before))
    return code


# ----------------------------------------------------------------------------------------------------------
# options

OPTION_VALUES = {
    "--batch-size": st.sampled_from(["0", "-3", "16", "32", "64", "257", "1e3", "x"]),
    "--epochs": st.sampled_from(["0", "1", "-1", "one"]),
    "--lr": st.sampled_from(["1e-3", "0", "-1", "nan", "inf", "3e-3", "abc"]),
    "--lr-schedule": st.sampled_from(["constant", "onecycle", "cosine"]),
    "--warmup-fraction": st.sampled_from(["0.1", "1", "-0.2", "0"]),
    "--model": st.sampled_from(["seed", "fc", "resize", "subpixel", "resnet", "nope", ""]),
    "--encoder": st.sampled_from(["mlp", "conv", "resnet", "vit"]),
    "--likelihood": st.sampled_from(["bernoulli", "continuous-bernoulli", "logistic", "gaussian", "poisson"]),
    "--gaussian-sigma": st.sampled_from(["0.1", "0", "-1"]),
    "--binarize": st.sampled_from(["none", "dynamic", "static"]),
    "--resize": st.sampled_from(["auto", "bilinear", "pad", "area", "crop"]),
    "--image-size": st.sampled_from(["32", "64", "48", "0", "-32", "16"]),
    "--channels": st.sampled_from(["auto", "1", "3", "2"]),
    "--precision": st.sampled_from(["fp32", "bf16", "fp16"]),
    "--dtype": st.sampled_from(["float32", "float64", "int8"]),
    "--beta": st.sampled_from(["1", "0.5", "0", "-1"]),
    "--kl-warmup": st.sampled_from(["0", "5", "-5", "1.5"]),
    "--kl-warmup-fraction": st.sampled_from(["0.5", "1", "0", "nan"]),
    "--free-bits": st.sampled_from(["0", "0.1", "-0.1"]),
    "--iw-train": st.sampled_from(["1", "2", "0"]),
    "--ema": st.sampled_from(["0.9", "0", "1", "1.5"]),
    "--grad-clip": st.sampled_from(["1", "0", "-1"]),
    "--train-limit": st.sampled_from(["1", "31", "64", "0", "-1"]),
    "--test-limit": st.sampled_from(["1", "10", "0"]),
    "--eval-batch-size": st.sampled_from(["1", "7", "0"]),
    "--checkpoint-every": st.sampled_from(["1", "3", "0"]),
    "--test-fraction": st.sampled_from(["0.1", "0", "1", "2"]),
    "--progress-every": st.sampled_from(["1", "0"]),
    "--conditional": st.just(None),  # a flag: given without a value
}


@FUZZ
@seed(20261127)
@given(options=st.dictionaries(st.sampled_from(sorted(OPTION_VALUES)), st.just(None), max_size=6).flatmap(
    lambda keys: st.fixed_dictionaries({k: OPTION_VALUES[k] for k in keys})))
def test_train_options_fuzz(tmp_path_factory, capsys, tiny_data, options):
    work = tmp_path_factory.mktemp("fuzz-options")
    labelled = replace(tiny_data, train_labels=torch.arange(len(tiny_data.train_images)) % 3,
                       test_labels=torch.arange(len(tiny_data.test_images)) % 3)  # three classes, for --conditional
    idx = idx_folder(work / "idx", labelled, 96, 32)
    out = work / "run"
    argv = ["train", "--data-dir", str(idx), "--out", str(out), "--device", "cpu", "--quiet", "--no-report",
            "--no-tensorboard", "--max-steps", "2", "--cache-dir", str(work / "cache")]
    for option, value in options.items():
        argv += [option] if value is None else [option, value]
    run_and_check(capsys, work, argv, out)


# ----------------------------------------------------------------------------------------------------------
# malformed files

@FUZZ
@seed(1)
@given(data=st.data(), which=st.sampled_from(["train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                                              "t10k-images-idx3-ubyte.gz"]))
def test_malformed_idx_files(tmp_path_factory, capsys, tiny_data, data, which):
    work = tmp_path_factory.mktemp("fuzz-idx")
    idx = idx_folder(work / "idx", tiny_data, 64, 32, gzipped=("t10k-images-idx3-ubyte",))
    target = idx / which
    raw = gzip.decompress(target.read_bytes()) if which.endswith(".gz") else target.read_bytes()
    how = data.draw(st.sampled_from(["header", "truncate", "random", "gzip-garbage", "extend"]))
    if how == "header":
        position = data.draw(st.integers(0, 15))
        raw = raw[:position] + bytes([data.draw(st.integers(0, 255))]) + raw[position + 1:]
    elif how == "truncate":
        raw = raw[:data.draw(st.integers(0, len(raw) - 1))]
    elif how == "random":
        raw = data.draw(st.binary(max_size=64))
    elif how == "extend":
        raw = raw + data.draw(st.binary(min_size=1, max_size=32))
    if how == "gzip-garbage" and which.endswith(".gz"):
        blob = gzip.compress(raw)
        blob = blob[:data.draw(st.integers(1, len(blob) - 1))]  # a gzip stream cut short
    else:
        blob = gzip.compress(raw) if which.endswith(".gz") else raw
    target.write_bytes(blob)
    out = work / "run"
    run_and_check(capsys, work, ["train", "--data-dir", str(idx), "--out", str(out), "--device", "cpu", "--quiet",
                                 "--no-report", "--no-tensorboard", "--max-steps", "1"], out)


@FUZZ
@seed(2)
@given(data=st.data())
def test_malformed_arrays_and_images(tmp_path_factory, capsys, data):
    work = tmp_path_factory.mktemp("fuzz-arrays")
    kind = data.draw(st.sampled_from(["npy-bytes", "npy-shape", "npy-values", "npz-keys", "png-bytes", "pickle"]))
    if kind == "npy-bytes":
        source = work / "x.npy"
        source.write_bytes(b"\x93NUMPY" + data.draw(st.binary(max_size=80)))
    elif kind == "npy-shape":
        shape = data.draw(st.lists(st.integers(0, 9), min_size=0, max_size=5))
        source = work / "x.npy"
        np.save(source, np.zeros(shape, dtype=data.draw(st.sampled_from(["uint8", "float32", "int64", "bool"]))))
    elif kind == "npy-values":
        values = data.draw(st.sampled_from([np.nan, -1.0, 2.0, np.inf, 300.0]))
        source = work / "x.npy"
        np.save(source, np.full((40, 8, 8), values, dtype=np.float32))
    elif kind == "npz-keys":
        source = work / "x.npz"
        keys = data.draw(st.lists(st.sampled_from(["train", "test", "images", "labels", "x_train", "y_train",
                                                   "other"]), max_size=3, unique=True))
        np.savez(source, **{k: np.zeros((20, 8, 8), dtype=np.uint8) for k in keys})
    elif kind == "pickle":
        source = work / "x.npy"
        np.save(source, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    else:
        source = work / "images"
        source.mkdir()
        for i in range(data.draw(st.integers(1, 3))):
            (source / f"{i}.png").write_bytes(data.draw(st.binary(max_size=40)))
    out = work / "run"
    run_and_check(capsys, work, ["train", "--data", str(source), "--out", str(out), "--device", "cpu", "--quiet",
                                 "--no-report", "--no-tensorboard", "--max-steps", "1", "--model", "resize",
                                 "--cache-dir", str(work / "cache")], out)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, tiny_data):
    """One tiny finished run, copied for each case that damages it."""
    from convae.config import TrainConfig
    from convae.training import train

    folder = tmp_path_factory.mktemp("fuzz-run-source")
    idx = idx_folder(folder / "idx", tiny_data, 64, 32)
    config = TrainConfig(data_dir=str(idx), out=str(folder / "run"), epochs=1, batch_size=32, device="cpu",
                         quiet=True, tensorboard=False, report=False)
    train(config, log=lambda s: None)
    return folder / "run"


@settings(FUZZ, max_examples=EXAMPLES or 15)
@seed(3)
@given(data=st.data(), target=st.sampled_from(["config", "checkpoint-json", "checkpoint-tensors"]),
       command=st.sampled_from(["resume", "eval"]))
def test_damaged_run_folders(tmp_path_factory, capsys, finished_run, data, target, command):
    work = tmp_path_factory.mktemp("fuzz-damaged")
    run = work / "run"
    shutil.copytree(finished_run, run)
    newest = sorted((run / "checkpoints").glob("step-*.json"))[-1]
    path = {"config": run / "config.json", "checkpoint-json": newest,
            "checkpoint-tensors": newest.with_suffix(".safetensors")}[target]
    raw = path.read_bytes()
    how = data.draw(st.sampled_from(["truncate", "flip", "json-edit", "empty"]))
    if how == "truncate":
        raw = raw[:data.draw(st.integers(0, len(raw) - 1))]
    elif how == "flip":
        position = data.draw(st.integers(0, len(raw) - 1))
        raw = raw[:position] + bytes([raw[position] ^ data.draw(st.integers(1, 255))]) + raw[position + 1:]
    elif how == "json-edit" and path.suffix == ".json":
        obj = json.loads(raw)
        section = obj.get("config", obj)
        key = data.draw(st.sampled_from(sorted(section)))
        section[key] = data.draw(st.sampled_from([None, -1, "x", [], {}, 1e309, True]))
        if "meta_sha256" in obj and data.draw(st.booleans()):  # an edit that keeps the checksum right
            obj["meta_sha256"] = meta_digest(obj)
        raw = json.dumps(obj).encode()
    else:
        raw = b""
    path.write_bytes(raw)
    argv = (["train", "--resume", str(run), "--epochs", "2", "--quiet"] if command == "resume"
            else ["eval", str(run), "--no-pictures", "--device", "cpu"])
    code = run_and_check(capsys, work, argv, run)
    assert code in (0, 2)  # either the damage was harmless (e.g. a setting set to an equal value) or it is named

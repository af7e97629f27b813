import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from convae.cli import main

from conftest import run_cli, sigterm_at


def small(idx_dir, out, *extra):  # --no-report: the report is drawn (and tested) in test_report.py
    return ["train", "--data-dir", str(idx_dir), "--out", str(out), "--device", "cpu", "--quiet", "--no-report", *extra]


@pytest.mark.parametrize("argv, message", [
    (["--batch-size", "-4"], "--batch-size: must be a positive integer, got -4"),
    (["--batch-size", "abc"], "argument --batch-size: invalid int value: 'abc'"),
    (["--model", "nope"], "--model: unknown model 'nope' (choose from"),
    (["--device", "tpu"], "argument --device: invalid choice: 'tpu'"),
    (["--lr", "0"], "--lr: must be a positive number, got 0.0"),
    (["--lr", "inf"], "--lr: must be a positive number, got inf"),
    (["--grad-clip", "inf"], "--grad-clip: must be a positive number (a gradient norm), got inf"),
    (["--epochs", "0"], "--epochs: must be a positive integer, got 0"),
])
def test_bad_options_get_one_line_exit_2_and_no_run_folder(tmp_path, idx_dir, capsys, argv, message):
    code, _, err = run_cli(capsys, *small(idx_dir, tmp_path / "run"), *argv)
    assert code == 2
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "run").exists()


def test_missing_and_broken_data_files_are_named(tmp_path, idx_dir, capsys):
    code, _, err = run_cli(capsys, *small(tmp_path / "nowhere", tmp_path / "run"))
    assert code == 2 and "nowhere: --data-dir is not a folder" in err
    (idx_dir / "t10k-images-idx3-ubyte").write_bytes(b"\x00\x00\x08\x02" + bytes(12))
    code, _, err = run_cli(capsys, *small(idx_dir, tmp_path / "run"))
    assert code == 2 and "t10k-images-idx3-ubyte: bad IDX magic number 0x00000802" in err
    assert err.count("\n") == 1 and not (tmp_path / "run").exists()


def test_out_folder_that_holds_a_run_is_refused(tmp_path, idx_dir, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.jsonl").write_text("{}\n")
    code, _, err = run_cli(capsys, *small(idx_dir, out, "--epochs", "1"))
    assert code == 2 and "already exists and is not empty (use --resume" in err


def test_train_then_resume_with_more_epochs(tmp_path, idx_dir, capsys):
    out = tmp_path / "run"
    code, stdout, _ = run_cli(capsys, *small(idx_dir, out, "--epochs", "1"))
    assert code == 0 and "epoch 1: L_tot = " in stdout
    code, stdout, _ = run_cli(capsys, "train", "--resume", str(out), "--epochs", "2", "--quiet")
    assert code == 0 and "resuming" in stdout and "epoch 2: L_tot = " in stdout
    assert [json.loads(l)["epoch"] for l in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    code, _, err = run_cli(capsys, "train", "--resume", str(out), "--lr", "0.1")
    assert code == 2 and "--lr: cannot change when resuming" in err


def test_resume_refuses_corrupt_and_foreign_checkpoints(tmp_path, idx_dir, capsys):
    out = tmp_path / "run"
    assert run_cli(capsys, *small(idx_dir, out, "--epochs", "1"))[0] == 0
    tensors = next((out / "checkpoints").glob("*.safetensors"))
    tensors.write_bytes(tensors.read_bytes()[:-100])
    code, _, err = run_cli(capsys, "train", "--resume", str(out), "--epochs", "2")
    assert code == 2 and "corrupt (SHA-256 does not match" in err and err.count("\n") == 1
    meta = next((out / "checkpoints").glob("*.json"))
    meta.write_text(json.dumps({"format": "something-else"}))
    code, _, err = run_cli(capsys, "train", "--resume", str(out), "--epochs", "2")
    assert code == 2 and "not a convae checkpoint" in err
    code, _, err = run_cli(capsys, "train", "--resume", str(tmp_path / "empty"))
    assert code == 2 and "empty: no such folder" in err
    (tmp_path / "empty").mkdir()
    code, _, err = run_cli(capsys, "train", "--resume", str(tmp_path / "empty"))
    assert code == 2 and "no config.json there" in err


def test_checkpoint_from_another_model_is_refused(tmp_path, idx_dir, capsys):
    out = tmp_path / "run"
    assert run_cli(capsys, *small(idx_dir, out, "--epochs", "1"))[0] == 0
    config = json.loads((out / "config.json").read_text())
    config["config"]["encoder"] = "conv"  # same model name, other weights
    (out / "config.json").write_text(json.dumps(config))
    code, _, err = run_cli(capsys, "train", "--resume", str(out), "--epochs", "2")
    assert code == 2 and "does not fit this model" in err


def test_help_explains_the_options(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = capsys.readouterr().out
    for option in ("--device", "--epochs", "--max-steps", "--batch-size", "--lr", "--seed", "--dtype", "--out",
                   "--resume", "--data-dir", "--no-shuffle", "--quiet"):
        assert option in text
    flat = " ".join(text.split())  # argparse wraps lines: compare the words
    for said in ("--batch-size BATCH_SIZE images per step (default 32)", "--epochs EPOCHS epochs to train (default 100)",
                 "--device {auto,cpu,cuda,mps} auto picks a GPU when there is one (default auto)",
                 "--no-shuffle take batches in order, as the seed does", "--lr LR Adam learning rate"):
        assert said in flat, said


def test_sigint_on_the_real_command_checkpoints_and_says_how_to_resume(tmp_path, idx_dir):
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen([sys.executable, "-m", "convae", *small(idx_dir, out, "--epochs", "500")],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.time() + 120
    while not list((out / "checkpoints").glob("*.json")) and time.time() < deadline:
        time.sleep(0.2)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert "SIGINT at step" in stderr and f"convae train --resume {out}" in stderr
    step = int(re.search(r"SIGINT at step (\d+)", stderr)[1])
    newest = max(int(p.stem.split("-")[1]) for p in (out / "checkpoints").glob("*.json"))
    assert newest == step  # the step in flight finished and was saved


def test_fast_preset_and_binarized_protocol_run_from_the_command_line(tmp_path, idx_dir, capsys):
    out = tmp_path / "fast"
    code, _, err = run_cli(capsys, *small(idx_dir, out, "--preset", "fast", "--epochs", "1", "--binarize", "dynamic"))
    assert code == 0, err
    saved = json.loads((out / "config.json").read_text())["config"]
    assert saved["lr_schedule"] == "onecycle" and saved["lr"] == 2e-3 and saved["extra"] == {"preset": "fast"}
    record = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert record["entropy_floor"] == 0.0  # binary targets have no entropy
    code, stdout, _ = run_cli(capsys, "eval", str(out), "--iw-samples", "3", "--no-pictures")
    assert code == 0 and "binarized" in stdout and "K = 3" in stdout


@pytest.mark.layouts  # bit for bit within one layout: checked under each by scripts/test-layouts.sh
def test_auto_resume_starts_then_continues_a_run_with_the_same_command(tmp_path, idx_dir, capsys):
    """A re-queued job repeats its command: the first attempt starts the run, a later one continues it."""
    command = small(idx_dir, tmp_path / "run", "--epochs", "2", "--auto-resume", "--checkpoint-every", "3")
    assert run_cli(capsys, *small(idx_dir, tmp_path / "whole", "--epochs", "2"))[0] == 0
    assert run_cli(capsys, *command, hooks=sigterm_at(5))[0] == 130
    code, out, err = run_cli(capsys, *command)
    assert code == 0, err
    assert f"resuming {tmp_path / 'run'} at step 6 (epoch 1)" in out
    strip = lambda m: {k: v for k, v in m.items() if k not in {"train_seconds", "epoch_seconds", "img_per_s", "eval_seconds"}}  # noqa: E731
    read = lambda run: [strip(json.loads(l)) for l in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]  # noqa: E731,E741
    assert read("run") == read("whole")

    code, _, err = run_cli(capsys, *command, "--lr", "0.5")
    assert code == 2 and "--lr: cannot change when resuming" in err


def test_auto_resume_restarts_a_run_that_never_reached_a_checkpoint(tmp_path, idx_dir, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text("{}")  # a job killed while starting up
    code, _, err = run_cli(capsys, "train", "--resume", str(run))
    assert code == 2 and "never reached its first checkpoint; start it again with --out" in err
    code, out, err = run_cli(capsys, *small(idx_dir, run, "--epochs", "1", "--auto-resume"))
    assert code == 0, err
    assert json.loads((run / "config.json").read_text())["config"]["epochs"] == 1
    code, _, err = run_cli(capsys, "train", "--auto-resume", "--epochs", "1")
    assert code == 2 and "--auto-resume: needs --out DIR" in err


def test_resuming_a_finished_run_says_so_and_how_to_extend_it(tmp_path, idx_dir, capsys):
    run = tmp_path / "run"
    assert run_cli(capsys, *small(idx_dir, run, "--epochs", "1"))[0] == 0
    before = (run / "log.txt").read_text()
    code, _, err = run_cli(capsys, "train", "--resume", str(run))
    assert code == 2 and "already complete at step 8 (epoch 1 of 1); extend it with --epochs N" in err
    code, out, _ = run_cli(capsys, *small(idx_dir, run, "--epochs", "1", "--auto-resume"))  # a re-queued job
    assert code == 0 and "already complete at step 8; nothing to do" in out
    assert (run / "log.txt").read_text() == before  # nothing written
    assert run_cli(capsys, "train", "--resume", str(run), "--epochs", "2")[0] == 0


def test_ctrl_c_while_loading_is_one_line_and_exit_130(tmp_path, idx_dir, capsys):
    from convae.training import Hooks

    def interrupted(config):
        raise KeyboardInterrupt

    code, _, err = run_cli(capsys, *small(idx_dir, tmp_path / "run"), hooks=Hooks(load_data=interrupted))
    assert code == 130 and err == "convae train: interrupted\n"
    assert not (tmp_path / "run").exists()


def test_eval_frechet_reports_the_distance_and_its_floor(tmp_path, capsys, monkeypatch):
    out = tmp_path / "runs" / "fc"
    code, _, _ = run_cli(capsys, "train", "--model", "fc", "--epochs", "1", "--batch-size", "64", "--train-limit",
                         "512", "--test-limit", "300", "--device", "cpu", "--quiet", "--no-report",
                         "--no-tensorboard", "--out", str(out))
    assert code == 0
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")  # not the run's parent: the cache still goes beside the run
    code, stdout, _ = run_cli(capsys, "eval", str(out), "--frechet", "--frechet-samples", "200", "--no-pictures",
                              "--json")
    result = json.loads(stdout)
    assert code == 0 and result["frechet_images"] == 200
    assert result["frechet_protocol"]["samples"] == result["frechet_protocol"]["test_images"] == 200
    assert "512 labelled training images" in result["frechet_protocol"]["features"]
    assert 0 < result["frechet_distance_floor"] < result["frechet_distance"]
    assert 0.1 < result["frechet_classifier_accuracy"] <= 1
    assert {"feature classifier", "samples", "features"} <= set(result["seconds"])
    assert list((tmp_path / "runs" / ".convae-cache" / "classifiers").glob("*.json"))
    assert not (tmp_path / "elsewhere" / "runs").exists()


def test_eval_frechet_needs_labels(tmp_path, capsys, idx_dir):
    out = tmp_path / "unlabelled"
    assert run_cli(capsys, *small(idx_dir, out, "--epochs", "1"))[0] == 0
    code, _, err = run_cli(capsys, "eval", str(out), "--frechet", "--no-pictures")
    assert code == 2 and "--frechet:" in err and "no labels" in err


def test_first_hour_wordings(tmp_path, idx_dir, capsys):
    """Issue 12's rough edge 8: each message names the subcommand, the option or file, and the way out."""
    code, _, err = run_cli(capsys, "train", "--batchsize", "16")
    assert code == 2 and err.strip() == ("convae train: error: unrecognized arguments: --batchsize 16 "
                                         "(did you mean --batch-size?)")
    code, _, err = run_cli(capsys, "compare", "--models", "sead", "--out", str(tmp_path / "cmp"))
    assert code == 2 and "--models: unknown model 'sead'" in err and not (tmp_path / "cmp").exists()
    code, _, err = run_cli(capsys, "eval", str(next(idx_dir.iterdir())))
    assert code == 2 and "is a file; give the run folder" in err

    out = tmp_path / "run"
    assert run_cli(capsys, *small(idx_dir, out, "--epochs", "2"))[0] == 0
    newest, older = sorted((out / "checkpoints").glob("*.json"))[::-1]
    newest.with_suffix(".safetensors").write_bytes(b"damaged")
    code, _, err = run_cli(capsys, "train", "--resume", str(out), "--epochs", "3")
    assert code == 2 and f"{older.name}, is kept beside it" in err and newest.name in err
    newest.rename(tmp_path / newest.name)  # as the message says: move the damaged pair out
    newest.with_suffix(".safetensors").rename(tmp_path / newest.with_suffix(".safetensors").name)
    assert run_cli(capsys, "train", "--resume", str(out), "--epochs", "3")[0] == 0

    unstarted = tmp_path / "unstarted"
    unstarted.mkdir()
    (unstarted / "config.json").write_text((out / "config.json").read_text())
    code, _, err = run_cli(capsys, "eval", str(unstarted))
    assert code == 2 and "has no checkpoint yet" in err

"""Faults from the machine, made deterministic: a write that fails at its Nth call (disk full, read-only, the run
folder removed), memory that runs out, a second writer, data that changed under a resume (docs/reliability.md)."""

import errno
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import convae.files as files
from convae.errors import EXIT_BUSY, EXIT_FILESYSTEM, EXIT_OUT_OF_MEMORY, FileSystemFault
from convae.runs import RunLock
from convae.training import train
from convae.runs.checkpoint import latest_checkpoint, list_checkpoints, load_checkpoint

from conftest import idx_folder, run_cli
from test_training import deterministic, final_weights, tiny


def fail_writes(monkeypatch, error: int, when):
    """Make the atomic write of a file fail with ``error`` when ``when(path, call_number)`` says so."""
    real = files._write_file
    calls = {"n": 0}

    def write(path, data):
        calls["n"] += 1
        if when(Path(path), calls["n"]):
            raise OSError(error, os.strerror(error))
        return real(path, data)

    monkeypatch.setattr(files, "_write_file", write)
    return calls


@pytest.mark.layouts  # bit for bit within one layout: checked under each by scripts/test-layouts.sh
def test_disk_full_at_a_checkpoint_stops_cleanly_and_resume_finishes_the_same_run(tmp_path, tiny_data, monkeypatch):
    quiet = lambda s: None  # noqa: E731
    full = train(tiny(tmp_path / "full", epochs=2), data=tiny_data, log=quiet)
    # the second checkpoint (end of epoch 2, step 16) meets a full disk
    fail_writes(monkeypatch, errno.ENOSPC, lambda path, n: path.name == "step-00000016.safetensors")
    with pytest.raises(FileSystemFault) as caught:
        train(tiny(tmp_path / "cut", epochs=2), data=tiny_data, log=quiet)
    message = str(caught.value)
    assert "step-00000016.safetensors: No space left on device" in message
    assert "last good checkpoint:" in message and "step-00000008.json" in message and "--resume" in message
    checkpoints = tmp_path / "cut" / "checkpoints"
    assert [p.name for p in list_checkpoints(checkpoints)] == ["step-00000008.json"]
    assert not [p for p in checkpoints.iterdir() if p.name.endswith(".tmp")]  # nothing half-written
    load_checkpoint(list_checkpoints(checkpoints)[-1])  # the previous checkpoint is whole
    monkeypatch.undo()
    resumed = train(tiny(tmp_path / "cut", epochs=2), data=tiny_data, resume=True, log=quiet)
    assert deterministic([m for m in resumed.metrics if not m["partial_epoch"]]) == deterministic(full.metrics)
    a, b = final_weights(tmp_path / "full"), final_weights(tmp_path / "cut")
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("error, words", [(errno.EROFS, "Read-only file system"),
                                          (errno.EACCES, "Permission denied")])
def test_a_folder_that_cannot_be_written_is_one_line_and_leaves_nothing(tmp_path, capsys, idx_dir, monkeypatch, error,
                                                                         words):
    fail_writes(monkeypatch, error, lambda path, n: True)
    out = tmp_path / "run"
    code, _, err = run_cli(capsys, "train", "--data-dir", str(idx_dir), "--out", str(out), "--device", "cpu",
                           "--quiet", "--epochs", "1")
    assert code == EXIT_FILESYSTEM
    assert err.count("\n") == 1 and "Traceback" not in err
    assert f"config.json: {words}" in err and "nothing was trained" in err
    assert not out.exists()


def test_out_under_a_path_that_cannot_be_created(tmp_path, capsys, idx_dir):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    code, _, err = run_cli(capsys, "train", "--data-dir", str(idx_dir), "--out", str(blocker / "run"), "--device",
                           "cpu", "--quiet", "--epochs", "1")
    assert code == EXIT_FILESYSTEM and "Traceback" not in err and str(blocker) in err


def test_the_run_folder_removed_under_a_running_job(tmp_path, capsys, idx_dir, monkeypatch):
    import shutil

    out = tmp_path / "run"
    real = files._write_file

    def remove_then_write(path, data):
        if Path(path).name == "step-00000008.safetensors":
            shutil.rmtree(out)
        return real(path, data)

    monkeypatch.setattr(files, "_write_file", remove_then_write)
    code, _, err = run_cli(capsys, "train", "--data-dir", str(idx_dir), "--out", str(out), "--device", "cpu",
                           "--quiet", "--epochs", "2", "--no-tensorboard")
    assert code == EXIT_FILESYSTEM and "Traceback" not in err
    assert "No such file or directory" in err and "was it removed" in err


def test_stdout_on_a_full_device_is_one_line_and_exit_4():
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full here")
    with open("/dev/full", "w") as full:
        done = subprocess.run([sys.executable, "-m", "convae", "models"], stdout=full, stderr=subprocess.PIPE,
                              text=True, timeout=120)
    assert done.returncode == EXIT_FILESYSTEM, done.stderr
    assert "No space left on device" in done.stderr and "Traceback" not in done.stderr
    assert done.stderr.strip().count("\n") == 0


def test_out_of_memory_in_a_step_names_the_options(tmp_path, capsys, idx_dir):
    from convae.training import Hooks

    calls = {"n": 0}

    def allocation_fails(real):
        def loss(*args):
            calls["n"] += 1
            if calls["n"] == 10:
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
            return real(*args)
        return loss

    code, _, err = run_cli(capsys, "train", "--data-dir", str(idx_dir), "--out", str(tmp_path / "run"), "--device",
                           "cpu", "--quiet", "--epochs", "2", hooks=Hooks(wrap_loss=allocation_fails))
    assert code == EXIT_OUT_OF_MEMORY and "Traceback" not in err
    assert "out of memory at step 10" in err and "--batch-size" in err and "step-00000008.json" in err


def test_a_model_that_cannot_fit_is_refused_before_anything_is_allocated(tmp_path, capsys, idx_dir):
    out = tmp_path / "huge"
    code, _, err = run_cli(capsys, "train", "--data-dir", str(idx_dir), "--out", str(out), "--device", "cpu",
                           "--quiet", "--model", "fc", "--image-size", "4096")
    assert code == EXIT_OUT_OF_MEMORY and "--image-size 4096" in err and "parameters need" in err
    assert not out.exists()


def test_a_second_writer_is_refused_and_a_dead_ones_lock_is_taken_over(tmp_path, capsys, idx_dir):
    out = tmp_path / "run"
    assert run_cli(capsys, "train", "--data-dir", str(idx_dir), "--out", str(out), "--device", "cpu", "--quiet",
                   "--epochs", "1")[0] == 0
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from convae.runs import RunLock; "
                               f"lock = RunLock({str(out)!r}, 'a test holder').acquire(); print('held', flush=True); "
                               "time.sleep(600)"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        for argv in (["train", "--resume", str(out), "--epochs", "2", "--quiet"],
                     ["train", "--auto-resume", "--out", str(out), "--epochs", "2", "--quiet"]):
            code, _, err = run_cli(capsys, *argv)
            assert code == EXIT_BUSY, (argv, err)
            assert f"process {holder.pid}" in err and "a test holder" in err
        # issue 27: evaluating a run in training is allowed (RUN/eval/ has a lock of its own), and says so
        code, _, err = run_cli(capsys, "eval", str(out), "--no-pictures", "--device", "cpu")
        assert code == 0 and f"is training (process {holder.pid}" in err and "the training goes on" in err
    finally:
        holder.kill()  # dies holding it: the kernel drops the flock, the file still names the dead holder
        holder.wait()
    code, stdout, err = run_cli(capsys, "train", "--resume", str(out), "--epochs", "2", "--quiet")
    assert code == 0, err
    assert f"took over the lock of {out} from process {holder.pid}" in stdout
    with RunLock(out, "check") as lock:  # released at the end of the run, and left empty
        assert lock.previous is None


def test_resuming_on_different_data_is_refused(tmp_path, capsys, tiny_data):
    from dataclasses import replace

    original = idx_folder(tmp_path / "a", tiny_data)
    changed_images = tiny_data.train_images.clone()
    changed_images[7, 0, 10, 10] ^= 1  # one pixel of one image
    changed = idx_folder(tmp_path / "b", replace(tiny_data, train_images=changed_images))
    out = tmp_path / "run"
    assert run_cli(capsys, "train", "--data-dir", str(original), "--out", str(out), "--device", "cpu", "--quiet",
                   "--epochs", "1")[0] == 0
    recorded = json.loads((out / "config.json").read_text())["data"]["fingerprint"]
    assert len(recorded) == 64
    # the run's data folder is swapped for one with a pixel changed
    original.rename(tmp_path / "a-old")
    changed.rename(original)
    code, _, err = run_cli(capsys, "train", "--resume", str(out), "--epochs", "2", "--quiet")
    assert code == 2 and "the data differ from the run's" in err and recorded[:12] in err
    assert len(list_checkpoints(out / "checkpoints")) == 1


def test_a_checkpoint_from_a_newer_convae_is_refused_by_name_and_version(tmp_path, capsys, idx_dir):
    out = tmp_path / "run"
    assert run_cli(capsys, "train", "--data-dir", str(idx_dir), "--out", str(out), "--device", "cpu", "--quiet",
                   "--epochs", "1")[0] == 0
    newest = latest_checkpoint(out / "checkpoints").path
    meta = json.loads(newest.read_text())
    meta.update(version=99, convae="9.0.0")
    newest.write_text(json.dumps(meta))
    for argv in (["train", "--resume", str(out), "--epochs", "2"], ["eval", str(out), "--no-pictures"]):
        code, _, err = run_cli(capsys, *argv)
        assert code == 2 and "written by a newer convae (9.0.0, checkpoint format 99)" in err


def test_a_real_full_file_system_when_one_can_be_mounted(tmp_path, tiny_data):
    """A 60 MB tmpfs (needs root and permission to mount; skipped elsewhere): training stops at the write that does
    not fit (each checkpoint of the seed model is ~23 MB), the earlier checkpoints stay whole."""
    mount = tmp_path / "small"
    mount.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=60m", "tmpfs", str(mount)],
                                           capture_output=True).returncode:
        pytest.skip("cannot mount a small tmpfs here (needs root and CAP_SYS_ADMIN)")
    try:
        with pytest.raises(FileSystemFault, match="No space left on device"):
            train(tiny(mount / "run", epochs=50, keep_checkpoints=100, tensorboard=False, report=False),
                  data=tiny_data, log=lambda s: None)
        load_checkpoint(list_checkpoints(mount / "run" / "checkpoints")[-1])
    finally:
        time.sleep(0.1)
        subprocess.run(["umount", str(mount)], capture_output=True)

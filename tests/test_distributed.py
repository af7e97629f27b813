"""torchrun / DDP on the CPU (gloo): two processes on small data.

In-process workers (torch.multiprocessing, the environment torchrun would set) check the arithmetic; real
``torchrun`` launches check what a user meets: restarts after SIGKILL, world-size changes, errors on every rank.
"""

import contextlib
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from convae.config import TrainConfig
from convae.data import evaluation_images
from convae.evaluation.elbo import evaluate_neg_elbo
from convae.models import build_model
from convae.objectives import neg_elbo
from convae.runtime import Runtime
from convae.training import train
from convae.runs.checkpoint import latest_checkpoint, list_checkpoints, restore, use_population_statistics

# every test here compares numbers across process layouts (or, after a restart, within one): scripts/test-layouts.sh
pytestmark = pytest.mark.layouts

HELPERS = Path(__file__).parent / "helpers"
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
TIMING = {"train_seconds", "epoch_seconds", "img_per_s", "eval_seconds"}


def free_port() -> int:
    """A port free now and below the kernel's ephemeral range: a port the kernel hands out (bind to 0) may be taken
    again, before its job listens on it, by the connections of an earlier process group (gloo's go to ephemeral
    ports), which once failed a run with EADDRINUSE."""
    low = 32768
    with contextlib.suppress(OSError, ValueError, IndexError):
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    chooser = random.Random()  # seeded by the OS: concurrent test sessions choose apart
    for _ in range(200):
        port = chooser.randrange(max(1024, low - 16384), low)
        with socket.socket() as s, contextlib.suppress(OSError):
            s.bind(("127.0.0.1", port))
            return port
    raise RuntimeError("no free port below the ephemeral range")


def join_as(rank: int, world: int, port: int) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), OMP_NUM_THREADS="1")
    torch.set_num_threads(1)


def deterministic(metrics):
    return [{k: v for k, v in m.items() if k not in TIMING} for m in metrics]


# -- arithmetic, in-process workers ----------------------------------------------------------------------------


def _train_job(rank, out, data):
    config = TrainConfig(epochs=2, batch_size=32, quiet=True, device="cpu", out=str(out / "run"), eval_batch_size=24,
                         report=False)
    result = train(config, data=data, log=lambda s: None)
    torch.save({k: v.clone() for k, v in result.model.state_dict().items()}, out / f"rank{rank}.pt")


def _streamed_job(rank, out, source):
    config = TrainConfig(epochs=1, batch_size=16, quiet=True, device="cpu", out=str(out / "run"), data=source,
                         model="resize", encoder="conv", resident_max_bytes=0, cache_dir=str(out / "cache"),
                         tensorboard=False, report=False)
    result = train(config, log=lambda s: None)
    torch.save({k: v.clone() for k, v in result.model.state_dict().items()}, out / f"rank{rank}.pt")


def _gradient_job(rank, out, x, eps):
    runtime = Runtime.from_environment(timeout_s=60)
    torch.manual_seed(0)
    model = build_model("seed").eval()  # dropout off, BatchNorm by running statistics: images are independent
    ddp = runtime.wrap(model, torch.device("cpu"))
    mine = runtime.shard(torch.arange(len(x)))
    out_ = ddp(x[mine], eps=eps[mine])
    neg_elbo(out_.logits, x[mine], out_.mu, out_.sigma).total.backward()
    torch.save({n: p.grad.clone() for n, p in model.named_parameters()}, out / f"grad{rank}.pt")
    runtime.close()


def _arithmetic_worker(rank, jobs):
    """Each job in its own process group (its own port), one after the other: one spawn, three checks."""
    for job, port, args in jobs:
        join_as(rank, 2, port)
        job(rank, *args)
    # as a torchrun worker of convae does (convae.__main__.run): no interpreter teardown, where a gloo thread that torch
    # keeps after destroy_process_group now and then takes the GIL of a finalizing interpreter and aborts the
    # finished worker (SIGABRT); mp.spawn then raised and this fixture errored its 3 tests (issue 34)
    sys.stdout.flush()
    os._exit(0)


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory, tiny_data):
    """Two spawned processes that take one DDP gradient, train the seed model 2 epochs, and train on streamed
    colour data; each job writes what its test checks into its own folder."""
    import numpy as np

    folders = {name: tmp_path_factory.mktemp(name) for name in ("gradient", "train", "streamed")}
    generator = torch.Generator().manual_seed(1)
    x, eps = torch.rand(32, 1, 32, 32, generator=generator), torch.randn(32, 100, generator=generator)
    np.save(folders["streamed"] / "x.npy", np.random.default_rng(0).integers(0, 256, (80, 32, 32, 3), dtype=np.uint8))
    jobs = [(_gradient_job, free_port(), (folders["gradient"], x, eps)),
            (_train_job, free_port(), (folders["train"], tiny_data)),
            (_streamed_job, free_port(), (folders["streamed"], str(folders["streamed"] / "x.npy")))]
    mp.spawn(_arithmetic_worker, args=(jobs,), nprocs=2)
    return {**folders, "x": x, "eps": eps}


def test_two_ranks_end_with_identical_models_and_the_split_evaluation_is_the_single_process_one(two_processes,
                                                                                                 tiny_data):
    folder = two_processes["train"]
    a, b = torch.load(folder / "rank0.pt"), torch.load(folder / "rank1.pt")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # parameters and BatchNorm statistics

    run = folder / "run"
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [8, 16] and metrics[-1]["world_size"] == 2
    assert metrics[-1]["backend"] == "gloo" and metrics[-1]["rank_devices"] == ["cpu", "cpu"]
    settings = json.loads((run / "config.json").read_text())["distributed"]
    assert settings["batchnorm"] == "per-rank" and settings["batch_per_rank"] == 16
    assert "BatchNorm statistics: per-rank" in (run / "log.txt").read_text()

    model = build_model("seed")
    checkpoint = latest_checkpoint(run / "checkpoints")
    restore(checkpoint, model, None)
    assert all(torch.equal(model.state_dict()[k], a[k]) for k in a)
    # the epoch's evaluation normalised by the population statistics of these weights, as the checkpoint keeps them
    assert use_population_statistics(model, checkpoint.tensors).startswith("population statistics")
    config = TrainConfig(eval_batch_size=24)
    single = evaluate_neg_elbo(model, evaluation_images(tiny_data.test_images, tiny_data.levels, config),
                               batch_size=24, seed=config.seed + 1)  # 64 images: 24 + 24 on rank 0, 16 on rank 1
    # The workers ran one thread each, this process runs the default count: oneDNN's float32 reductions round their
    # last bits differently per thread count and CPU (seen: 3.7e-9 relative on an AVX-512/AMX Xeon). A missing,
    # repeated or mis-seeded image moves a 64-image mean by far more than 1e-6 relative, so that catches what this
    # test is for (the split evaluation takes the same images and noise as one process), whatever the layout.
    assert metrics[-1]["test_neg_elbo"] == pytest.approx(single.neg_elbo, rel=1e-6)
    assert metrics[-1]["test_L_KL"] == pytest.approx(single.kl, rel=1e-6)


def test_streamed_colour_data_trains_under_torchrun(two_processes):
    """Rank 0 prepares the cache, rank 1 opens it; both stream their slices from the memory map."""
    folder = two_processes["streamed"]
    a, b = torch.load(folder / "rank0.pt"), torch.load(folder / "rank1.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)
    settings = json.loads((folder / "run" / "config.json").read_text())
    assert settings["data"]["streamed"] and settings["data"]["shape"] == [3, 32, 32]
    assert len(list((folder / "cache").glob("*.images.npy"))) == 1


def test_a_two_rank_step_has_the_single_process_gradient_of_the_global_batch(two_processes):
    x, eps = two_processes["x"], two_processes["eps"]
    torch.manual_seed(0)
    model = build_model("seed").eval()
    out = model(x, eps=eps)
    neg_elbo(out.logits, x, out.mu, out.sigma).total.backward()
    for rank in (0, 1):  # float32 sums split over two single-threaded processes: last bits differ, not more
        grads = torch.load(two_processes["gradient"] / f"grad{rank}.pt")
        for name, p in model.named_parameters():
            torch.testing.assert_close(grads[name], p.grad, rtol=1e-5, atol=1e-6, msg=f"{name} on rank {rank}")


def test_each_rank_takes_its_slice_of_every_global_batch():
    batch = torch.arange(100, 132)
    slices = [Runtime(rank=r, world_size=4).shard(batch) for r in range(4)]
    assert [len(s) for s in slices] == [8] * 4 and torch.equal(torch.cat(slices), batch)
    with pytest.raises(Exception, match="--batch-size 30: the global batch must divide evenly among 4 processes"):
        Runtime(rank=0, world_size=4).check_batch(30)


# -- what a user meets: real torchrun launches ------------------------------------------------------------------


def run_torchrun(args, *, extra=(), timeout=240, cwd=None):
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                           "MASTER_PORT")}
    env["OMP_NUM_THREADS"] = "1"
    # a session of its own, so a timeout kills torchrun's workers too (no orphan left waiting for its peer)
    agent = subprocess.Popen([*TORCHRUN, *extra, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env=env, cwd=cwd, start_new_session=True)
    try:
        out, err = agent.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(agent.pid, signal.SIGKILL)
        out, err = agent.communicate()
        pytest.fail(f"torchrun did not finish within {timeout} s:\n{err[-2000:]}")
    return subprocess.CompletedProcess(agent.args, agent.returncode, out, err)


def what_the_workers_said(result: subprocess.CompletedProcess, tail: int = 1200) -> str:
    """A failed launch's story for an assertion message: the workers' own lines (a C++ ``terminate called ...``,
    a Python fatal error, our one-line errors) come before torchrun's long report of the failure and would be cut
    off by a plain tail of stderr; here they come first, then the tail."""
    err = result.stderr
    before_report = err[:err.rfind("Traceback (most recent call last)")] if "ChildFailedError" in err else err
    own = [line for line in before_report.splitlines() if not re.match(r"[EWI]\d{4} \d\d:\d\d", line)]
    return "\n".join(own[-40:]) + "\n--- the end of stderr ---\n" + err[-tail:]


def train_args(idx_dir, out, *more):
    """(rank 0's report and TensorBoard files are tested elsewhere; they only slow these runs down)"""
    return ["train", "--data-dir", str(idx_dir), "--device", "cpu", "--quiet", "--no-report", "--no-tensorboard",
            "--out", str(out), *more]


def metrics_of(run):
    return [json.loads(line) for line in (Path(run) / "metrics.jsonl").read_text().splitlines()]


WHOLE_RUN = ["--epochs", "3", "--checkpoint-every", "4", "--auto-resume"]


@pytest.fixture(scope="module")
def whole_run(tmp_path_factory, tiny_data):
    """A two-process torchrun run of 3 epochs (24 steps), uninterrupted; tests copy it before changing it."""
    from conftest import idx_folder

    folder = tmp_path_factory.mktemp("whole")
    data = idx_folder(folder / "idx", tiny_data)
    whole = run_torchrun(["-m", "convae", *train_args(data, folder / "run", *WHOLE_RUN)])
    assert whole.returncode == 0, what_the_workers_said(whole)
    return folder / "run", data


def test_sigkill_of_a_worker_costs_only_the_steps_since_the_last_checkpoint(tmp_path, whole_run):
    """Rank 1 dies by SIGKILL before step 14; torchrun restarts the group, which resumes from step 12 and ends with
    the uninterrupted run's metrics and tensors.

    The launch allows one restart more than the kill needs: once in CI a worker of the restarted group died by
    SIGABRT inside torch, before our code could say anything (not seen again in 85 runs of this launch here, idle
    and under load; most likely the teardown abort of issue 34, which the helper now skips by leaving through
    ``convae.__main__.run``), and a spare restart is what a user's ``--max-restarts`` is for. What the kill costs is still checked: the kill's own restart must
    resume from step 12, and a spare restart, when one was used, is reported as a warning with the workers' lines.
    """
    whole, data = whole_run
    env_kill = dict(KILL_RANK="1", KILL_STEP="14")  # mid-epoch 2; the newest checkpoint then is step 12
    os.environ.update(env_kill)
    try:
        cut = run_torchrun([str(HELPERS / "kill_at_step.py"), *train_args(data, tmp_path / "cut", *WHOLE_RUN)],
                           extra=["--max-restarts=2"])
    finally:
        for k in env_kill:
            os.environ.pop(k)
    assert cut.returncode == 0, what_the_workers_said(cut)
    resumes = [line for line in (tmp_path / "cut" / "log.txt").read_text().splitlines() if "resuming" in line]
    assert resumes and re.search(r"at step 12 \(epoch 2\), torchrun restart [12]\b", resumes[0]), resumes
    if len(resumes) > 1 or "torchrun restart 1" not in resumes[0]:
        warnings.warn(f"the kill's restart failed and a spare one finished the run: {resumes}\n"
                      + what_the_workers_said(cut))
    assert deterministic(metrics_of(tmp_path / "cut")) == deterministic(metrics_of(whole))
    a = latest_checkpoint(whole / "checkpoints").tensors
    b = latest_checkpoint(tmp_path / "cut" / "checkpoints").tensors
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # weights, Adam, every rank's RNG


def test_resume_with_another_world_size_continues_the_run(tmp_path, whole_run):
    from convae.cli import main

    run = tmp_path / "run"
    shutil.copytree(whole_run[0], run)
    assert latest_checkpoint(run / "checkpoints").meta["world_size"] == 2

    assert main(["train", "--resume", str(run), "--epochs", "4", "--quiet"]) == 0  # 2 processes -> 1
    assert "written by 2 process(es), now 1" in (run / "log.txt").read_text()
    assert latest_checkpoint(run / "checkpoints").meta["world_size"] == 1

    last = run_torchrun(["-m", "convae", "train", "--resume", str(run), "--epochs", "5", "--quiet"])  # 1 -> 2
    assert last.returncode == 0, what_the_workers_said(last)
    metrics = metrics_of(run)
    assert [(m["step"], m["world_size"]) for m in metrics] == [(8, 2), (16, 2), (24, 2), (32, 1), (40, 2)]
    assert all(torch.isfinite(torch.tensor(m["test_neg_elbo"])) for m in metrics)


def test_torchrun_shares_the_iw_bound_among_the_ranks_and_gives_the_one_process_numbers(tmp_path, whole_run):
    from convae.cli import main

    run = tmp_path / "run"
    shutil.copytree(whole_run[0], run)
    # 64 test images in batches of 16: 4 batches, 2 rounds of 2 ranks
    args = ["eval", str(run), "--iw-samples", "5", "--iw-batch-size", "16", "--json", "--no-pictures", "--device", "cpu"]
    shared = run_torchrun(["-m", "convae", *args])
    assert shared.returncode == 0, what_the_workers_said(shared)
    result = json.loads(shared.stdout)  # rank 0 alone prints
    kept = run / "eval" / "iw_k5.json"
    shared_bounds = json.loads(kept.read_text())["bounds"]
    assert len(shared_bounds) == 64 and result["iw_images_from_earlier"] == 0

    kept.unlink()
    assert main(args) == 0
    single_bounds = json.loads(kept.read_text())["bounds"]
    # the same batches and noise, in order; the ranks ran one thread each and this process the default count, so
    # the float32 log-weights differ in their last bits (1e-6 relative is far below what a wrong image would move)
    assert single_bounds == pytest.approx(shared_bounds, rel=1e-6)


def test_eval_under_torchrun_without_the_iw_bound_is_refused(tmp_path, monkeypatch, capsys):
    """A group of one, in this process (what torchrun's environment makes of it), to spare a launch."""
    import torch.distributed as dist

    from convae.cli import main

    for name, value in dict(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                            MASTER_PORT=str(free_port())).items():
        monkeypatch.setenv(name, value)
    assert main(["eval", str(tmp_path / "run"), "--device", "cpu"]) == 2
    assert "torchrun: convae eval shares only the importance-weighted bound" in capsys.readouterr().err
    assert not dist.is_initialized()  # the group was left


def test_a_batch_the_world_does_not_divide_is_refused_once_before_anything_starts(tmp_path, idx_dir):
    result = run_torchrun(["-m", "convae", *train_args(idx_dir, tmp_path / "run", "--batch-size", "33")])
    assert result.returncode != 0
    message = "--batch-size 33: the global batch must divide evenly among 2 processes"
    assert result.stderr.count(message) == 1, result.stderr[-2000:]
    assert not (tmp_path / "run").exists()


def test_a_rank_that_cannot_read_the_data_ends_every_rank_with_its_message(tmp_path, idx_dir):
    """Rank 1 finds a truncated file where rank 0 finds a good one (a node with a damaged copy): nobody hangs,
    every rank exits, rank 0 says which rank met what, and no run folder is left."""
    bad = tmp_path / "bad"
    shutil.copytree(idx_dir, bad)
    data = (bad / "t10k-images-idx3-ubyte").read_bytes()
    (bad / "t10k-images-idx3-ubyte").write_bytes(data[:100])
    os.environ.update(BAD_RANK="1", BAD_DATA_DIR=str(bad))
    try:
        result = run_torchrun([str(HELPERS / "bad_copy_on_rank.py"), *train_args(idx_dir, tmp_path / "run")],
                              timeout=120)
    finally:
        for k in ("BAD_RANK", "BAD_DATA_DIR"):
            os.environ.pop(k)
    assert result.returncode != 0
    assert result.stderr.count("convae train: error: rank 1: ") == 1, result.stderr[-2000:]
    assert "t10k-images-idx3-ubyte: truncated" in result.stderr
    assert not (tmp_path / "run").exists()


def test_a_peer_that_never_joins_ends_the_run_within_the_timeout(tmp_path, idx_dir):
    env = dict(os.environ, RANK="0", WORLD_SIZE="2", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
               MASTER_PORT=str(free_port()))
    result = subprocess.run([sys.executable, "-m", "convae", *train_args(idx_dir, tmp_path / "run"),
                             "--dist-timeout", "2"], capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode == 1
    assert "rank 0 of 2: could not join the process group at 127.0.0.1" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "run").exists()


def test_sigterm_to_torchrun_stops_every_rank_at_one_step_with_one_checkpoint(tmp_path, idx_dir):
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    run = tmp_path / "run"
    agent = subprocess.Popen([*TORCHRUN, "-m", "convae", *train_args(idx_dir, run, "--epochs", "200")],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(env, OMP_NUM_THREADS="1"),
                             start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not list_checkpoints(run / "checkpoints") and time.monotonic() < deadline:
            time.sleep(0.2)
        agent.send_signal(signal.SIGTERM)
        _, err = agent.communicate(timeout=120)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(agent.pid, signal.SIGKILL)
    said = re.findall(r"convae: SIGTERM at step (\d+): checkpoint written; resume with: torchrun --nproc-per-node 2 -m convae train --resume", err)
    assert len(said) == 1, err[-2000:]
    newest = latest_checkpoint(run / "checkpoints")
    assert newest.meta["step"] == int(said[0]) and newest.meta["world_size"] == 2
    assert newest.meta["step"] < 200 * 8

"""Many runs at once (issue 24): packed members are the runs they would be alone, a sweep's members are ordinary run
folders, a killed sweep resumes, a diverging member stops alone, and the summary has error bars."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from convae.config import TrainConfig
from convae.errors import ConfigError
from convae.experiments.sweep import make_plan, parse_grid
from convae.runs import RunDir, open_run
from convae.runtime import Runtime
from convae.training import train
from convae.training.packed import Pack, pack_key

from conftest import run_cli

TIMING = {"train_seconds", "epoch_seconds", "img_per_s", "eval_seconds"}


def tiny(out, **kw) -> TrainConfig:
    settings = dict(epochs=2, batch_size=32, quiet=True, device="cpu", out=str(out), eval_batch_size=64, report=False,
                    tensorboard=False)
    return TrainConfig(**{**settings, **kw})


MEMBERS = [dict(seed=0), dict(seed=1, beta=0.5), dict(seed=2, kl_warmup=5, free_bits=0.05, ema=0.9)]


@pytest.mark.layouts  # compares packed arithmetic with the solo run's
@pytest.mark.parametrize("strategy", ["batched", "threads"])
def test_a_packed_member_is_its_solo_run_within_float32_rounding(tmp_path, tiny_data, strategy):
    """Same initial weights, data order and noise: the figures agree to float32 rounding grown by training. A
    packed member computes with one thread (or vmap's kernels), the solo run with the default thread count: another
    layout. After the first epoch (8 steps) 2e-4 relative (measured: 3e-8 with oneDNN's AVX-512 kernels, 4e-5 under
    ONEDNN_MAX_CPU_ISA=AVX2, where thread counts change its rounding), after the second 1e-3 (measured: 3e-5); a
    member that drew other noise or another order differs by what seeds do (1-2 % here)."""
    configs = [tiny(tmp_path / f"packed{k}", **m) for k, m in enumerate(MEMBERS)]
    outcomes = Pack(configs, data=tiny_data, runtime=Runtime(), strategy=strategy, log=lambda s: None).run()
    assert [o.status for o in outcomes] == ["done"] * 3
    for k, m in enumerate(MEMBERS):
        solo = train(tiny(tmp_path / f"solo{k}", **m), data=tiny_data, log=lambda s: None).metrics
        packed = RunDir(tmp_path / f"packed{k}").metrics()
        assert [p["step"] for p in packed] == [s["step"] for s in solo] == [8, 16]
        for p, s, rel in zip(packed, solo, (2e-4, 1e-3)):
            for key in ("test_neg_elbo", "L_tot", "train_loss"):
                assert p[key] == pytest.approx(s[key], rel=rel), (k, p["epoch"], key, p[key], s[key])
    assert json.loads((tmp_path / "packed2" / "config.json").read_text())["config"]["ema"] == 0.9
    assert any(k.startswith("ema.") for k in RunDir(tmp_path / "packed2").latest_checkpoint().tensors)


def test_packs_group_by_architecture_and_the_grid_reads_each_settings_type(tmp_path):
    assert parse_grid(["beta=0.5,1", "lr=1e-3", "model=fc,seed", "conditional=true,false", "ema=none,0.9"]) == {
        "beta": [0.5, 1.0], "lr": [0.001], "model": ["fc", "seed"], "conditional": [True, False], "ema": [None, 0.9]}
    for bad, said in ((["seed=1,2"], "use --seeds N"), (["nope=1"], "a setting of convae train"),
                      (["beta=a"], "float values expected"), (["beta=1,1"], "given twice"),
                      (["out=x"], "the sweep's own")):
        with pytest.raises(ConfigError, match=said):
            parse_grid(bad)
    plan = make_plan({"epochs": 1}, {"beta": [0.5, 1.0], "model": ["fc", "seed"]}, 2, tmp_path / "s", None)
    assert len(plan.members) == 8 and plan.members[0].name == "beta=0.5,model=fc,seed=0"
    assert len({pack_key(m.config) for m in plan.members}) == 2  # beta and seed pack together, models do not
    with pytest.raises(ConfigError, match=r"sweep member beta=-1.0,seed=0: --beta: must be a positive number"):
        make_plan({}, {"beta": [-1.0]}, 1, tmp_path / "s", None)


def sweep_args(idx_dir, out, *more):
    return ["sweep", "--data-dir", str(idx_dir), "--epochs", "2", "--device", "cpu", "--no-report",
            "--no-tensorboard", "--out", str(out), *more]


def test_a_sweep_writes_ordinary_run_folders_and_a_summary_with_error_bars(tmp_path, idx_dir, capsys):
    out = tmp_path / "sweep"
    code, said, err = run_cli(capsys, *sweep_args(idx_dir, out, "--seeds", "2", "--grid", "beta=0.5,1",
                                                  "lr=1e-3,1e20", "--pack", "4", "--eval"))
    assert code == 0, err
    plan = json.loads((out / "sweep.json").read_text())
    assert len(plan["members"]) == 8 and plan["grid"] == {"beta": [0.5, 1.0], "lr": [0.001, 1e20]}
    summary = json.loads((out / "summary.json").read_text())
    rows = {json.dumps(r["setting"]): r for r in summary["rows"]}
    fine = rows[json.dumps({"beta": 0.5, "lr": 0.001})]
    assert fine["done"] == 2 and fine["test"]["n"] == 2 and fine["test"]["std"] > 0 and fine["active"]["n"] == 2
    diverged = rows[json.dumps({"beta": 0.5, "lr": 1e20})]  # one Adam step of 1e20: mu^2 overflows float32
    assert diverged["done"] == 0 and len(diverged["stopped"]) == 2
    assert "loss is not finite" in diverged["stopped"][0]["why"] and "stopped" in said
    member = out / "runs" / "beta=0.5,lr=0.001,seed=1"
    assert open_run(member, "cpu").config.beta == 0.5  # an ordinary run folder: eval, load, sample ... take it
    assert run_cli(capsys, "sample", str(member), "-n", "4", "--out", str(tmp_path / "s.png"), "--device", "cpu")[0] == 0
    code, table, _ = run_cli(capsys, "sweep", "summary", str(out))
    assert code == 0 and "| beta = 0.5, lr = 0.001 | 2 of 2 |" in table and "Stopped:" in table
    assert (out / "report.html").read_text().count("<tr>") == 5 and (out / "summary.md").is_file()
    code, _, err = run_cli(capsys, *sweep_args(idx_dir, out, "--seeds", "3", "--grid", "beta=0.5,1"))
    assert code == 2 and "holds another sweep" in err


@pytest.mark.layouts  # bit for bit within one layout
def test_a_killed_sweep_resumes_with_the_same_command_and_ends_as_an_uninterrupted_one(tmp_path, idx_dir):
    def command(out):
        return [sys.executable, "-m", "convae", *sweep_args(idx_dir, out, "--epochs", "2", "--grid", "beta=0.5,1",
                                                            "--pack", "4", "--pack-by", "threads",
                                                            "--checkpoint-every", "3")]

    whole = subprocess.run(command(tmp_path / "whole"), capture_output=True, text=True, timeout=300)
    assert whole.returncode == 0, whole.stderr[-2000:]
    cut = subprocess.Popen(command(tmp_path / "cut"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           start_new_session=True)
    first = tmp_path / "cut" / "runs" / "beta=0.5,seed=0"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not [s for s in RunDir(first).checkpoint_steps() if s >= 9]:
        time.sleep(0.05)
    os.killpg(cut.pid, signal.SIGKILL)  # nothing can be handled: the newest checkpoints are all that is left
    cut.communicate()
    again = subprocess.run(command(tmp_path / "cut"), capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    for name in ("beta=0.5,seed=0", "beta=1.0,seed=0"):
        strip = lambda run: [{k: v for k, v in m.items() if k not in TIMING}  # noqa: E731
                             for m in RunDir(run / "runs" / name).metrics() if not m["partial_epoch"]]
        assert strip(tmp_path / "cut") == strip(tmp_path / "whole"), name
        a = RunDir(tmp_path / "whole" / "runs" / name).latest_checkpoint().tensors
        b = RunDir(tmp_path / "cut" / "runs" / name).latest_checkpoint().tensors
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name


def test_shards_split_the_members_and_the_plan_is_kept(tmp_path, idx_dir, capsys):
    out = tmp_path / "sweep"
    args = sweep_args(idx_dir, out, "--epochs", "1", "--seeds", "3", "--pack", "2", "--pack-by", "batched")
    assert run_cli(capsys, *args, "--shard", "1/2")[0] == 0
    trained = sorted(p.name for p in (out / "runs").iterdir() if RunDir(p).checkpoint_files())
    assert trained == ["seed=1"]
    code, said, _ = run_cli(capsys, *args, "--shard", "0/2")
    assert code == 0 and "| (base) | 3 of 3 |" in said
    code, _, err = run_cli(capsys, *args, "--shard", "2/2")
    assert code == 2 and "--shard 2/2: i must be 0 .. n-1" in err


@pytest.mark.layouts
def test_under_torchrun_each_rank_trains_its_share_of_the_members(tmp_path, idx_dir):
    from test_distributed import run_torchrun

    out = tmp_path / "sweep"
    done = run_torchrun(["-m", "convae", *sweep_args(idx_dir, out, "--epochs", "1", "--seeds", "2", "--pack", "1")])
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("| (base) | 2 of 2 |") == 1  # rank 0 alone prints the table
    for seed in (0, 1):
        config = RunDir(out / "runs" / f"seed={seed}").read_settings()
        assert config["config"]["seed"] == seed and config["distributed"]["world_size"] == 1  # no process group
    assert sorted(p.name for p in out.glob("packs-*.json")) == ["packs-shard0of1-rank0of2.json",
                                                                "packs-shard0of1-rank1of2.json"]

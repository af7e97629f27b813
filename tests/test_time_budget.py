"""`--time-budget` (issue 41): a run times its own step, fixes its number of steps so that training ends at the
budget, lays its schedule over them, and keeps them when resumed — a budgeted run is the run of --max-steps N with
the N it measured, bit for bit."""

from __future__ import annotations

import json

import pytest
import torch

from convae.config import TrainConfig, parse_duration
from convae.errors import ConfigError, TrainingInterrupted
from convae.runs import RunDir
from convae.training import train

from conftest import run_cli, sigterm_at


def tiny(out, **kw) -> TrainConfig:
    settings = dict(epochs=1, batch_size=32, quiet=True, device="cpu", out=str(out), eval_batch_size=64, report=False,
                    tensorboard=False, model="seed", lr_schedule="onecycle")
    return TrainConfig(**{**settings, **kw})


@pytest.fixture(autouse=True)
def short_timing(monkeypatch):
    """The suite times 0.5 s of steps (a run times 3 s): the plan's arithmetic is what these tests check."""
    from convae.training import budget

    monkeypatch.setattr(budget, "MEASURE_SECONDS", 0.5)


def quiet(line):
    pass


def budgeted_config(tmp_path) -> TrainConfig:
    return TrainConfig.from_dict(json.loads((tmp_path / "budget" / "config.json").read_text())["config"])


def test_durations_are_read_as_people_write_them():
    assert [parse_duration(t) for t in ("20m", "1h", "90s", "1h30m", "2.5h", "45")] == [1200, 3600, 90, 5400, 9000, 45]
    for bad in ("", "soon", "0m", "-5m"):
        with pytest.raises(ConfigError, match="--time-budget"):
            parse_duration(bad)


def test_a_budgeted_run_fixes_its_steps_lays_its_schedule_over_them_and_is_that_many_steps_bit_for_bit(tmp_path,
                                                                                                       tiny_data):
    said = []
    budgeted = train(tiny(tmp_path / "budget", time_budget="0.6s"), data=tiny_data, log=said.append)
    settings = json.loads((tmp_path / "budget" / "config.json").read_text())
    plan = settings["time_budget_plan"]
    steps = plan["steps"]
    assert steps == int(0.6 * plan["steps_per_second"]) and plan["measured_steps"] >= 5
    assert settings["config"]["max_steps"] == steps and settings["config"]["epochs"] * 8 >= steps  # 8 steps an epoch
    assert budgeted.metrics[-1]["step"] == steps
    assert any(f"--time-budget 0.6s: {steps} steps at " in line and "steps/s, timed over" in line
               for line in said), said
    records = [json.loads(line) for line in (tmp_path / "budget" / "steps.jsonl").read_text().splitlines()]
    from convae.training.schedule import learning_rate

    # one cycle laid over the budget's steps: the last step's rate is the cycle's last, near lr / 100
    assert records[-1]["lr"] == learning_rate(budgeted_config(tmp_path), steps - 1, steps) < 1e-3 / 10

    # the timing drew nothing from the run's generators and touched none of its weights
    same = train(tiny(tmp_path / "steps", max_steps=steps, epochs=settings["config"]["epochs"]), data=tiny_data,
                 log=quiet)
    a = RunDir(tmp_path / "budget").latest_checkpoint().tensors
    b = RunDir(tmp_path / "steps").latest_checkpoint().tensors
    assert all(torch.equal(a[k], b[k]) for k in b if k.startswith("model."))
    assert budgeted.metrics[-1]["test_neg_elbo"] == same.metrics[-1]["test_neg_elbo"]


def test_a_budgeted_run_interrupted_and_resumed_ends_where_it_would_have(tmp_path, tiny_data):
    config = tiny(tmp_path / "cut", time_budget="0.6s")
    with pytest.raises(TrainingInterrupted):
        train(config, data=tiny_data, log=quiet, hooks=sigterm_at(5))
    planned = json.loads((tmp_path / "cut" / "config.json").read_text())["config"]
    resumed = train(tiny(tmp_path / "cut", time_budget="0.6s"), data=tiny_data, resume=True, log=quiet)
    assert resumed.metrics[-1]["step"] == planned["max_steps"]  # the plan kept, not measured again
    train(tiny(tmp_path / "whole", max_steps=planned["max_steps"], epochs=planned["epochs"]), data=tiny_data,
          log=quiet)
    a = RunDir(tmp_path / "cut").latest_checkpoint().tensors
    b = RunDir(tmp_path / "whole").latest_checkpoint().tensors
    assert all(torch.equal(a[k], b[k]) for k in b if k.startswith("model."))


def test_a_budget_with_max_steps_or_in_a_sweep_is_refused_in_one_line(tmp_path, idx_dir, capsys):
    code, _, err = run_cli(capsys, "train", "--data-dir", str(idx_dir), "--model", "fc", "--time-budget", "1m",
                           "--max-steps", "5", "--device", "cpu", "--quiet", "--out", str(tmp_path / "run"))
    assert code == 2 and err.count("\n") == 1 and "--time-budget and --max-steps: give one" in err, err
    assert not (tmp_path / "run").exists()
    code, _, err = run_cli(capsys, "train", "--data-dir", str(idx_dir), "--time-budget", "soon", "--device", "cpu",
                           "--out", str(tmp_path / "run"))
    assert code == 2 and "--time-budget soon: give a duration such as 20m" in err
    code, _, err = run_cli(capsys, "sweep", "--data-dir", str(idx_dir), "--model", "fc", "--time-budget", "1m",
                           "--seeds", "2", "--device", "cpu", "--out", str(tmp_path / "sweep"))
    assert code == 2 and "--time-budget: not with convae sweep yet" in err and not (tmp_path / "sweep").exists()

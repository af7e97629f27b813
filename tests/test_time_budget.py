"""`--time-budget` (issue 41): a run times its own step on a copy, fixes its warm-up and a first number of steps,
re-plans the steps once from its own speed at the end of the warm-up, and keeps what it recorded when resumed — a
budgeted run is the run of --max-steps N --warmup-steps W with the N and W it recorded, bit for bit."""

from __future__ import annotations

import json
import time

import pytest
import torch

from convae.config import TrainConfig, parse_duration
from convae.errors import ConfigError, TrainingInterrupted
from convae.runs import RunDir
from convae.training import Hooks, train

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


class RunClock:
    """The training loop's clock, advanced only by the run's own steps (``per_step`` seconds each): what the re-plan
    measures is then exactly known."""

    def __init__(self, per_step: float):
        self.now, self.per_step = 1000.0, per_step

    def perf_counter(self) -> float:
        return self.now

    def __getattr__(self, name):
        return getattr(time, name)


def test_the_plan_and_its_re_plans_are_the_arithmetic_they_say():
    from convae.training.budget import plan, replan

    first = plan(100.0, 3.0, 40, 0.25)
    assert (first.steps, first.replan_step) == (300, 75)
    assert plan(100.0, 3.0, 40, None).replan_step == 15  # a constant rate: re-planned after 5 % of the plan
    second = replan(first, 75, 30.0, 2.0, 72)  # 30 s gone at step 75, the run's own 2 steps/s: 70 s left
    assert second.steps == 75 + 140 and second.replan_step == 75 + 70  # again half-way through what is left
    assert second.replans == [{"at_step": 75, "steps_per_second": 2.0, "measured_steps": 72, "seconds_left": 70.0,
                               "steps": 215}]
    third = replan(second, 145, 68.0, 2.5, 70)  # faster now: 32 s left at 2.5 steps/s
    assert third.steps == 145 + 80 and third.replan_step == 185 and len(third.replans) == 2
    assert replan(third, 220, 99.0, 2.5, 40).replan_step == 0  # 2 steps left: no more re-plans
    assert replan(first, 75, 130.0, 2.0, 72).steps == 76  # over the budget already: one more step, the epoch ends


def test_a_re_laid_cosine_passes_through_its_knots_without_a_jump():
    from convae.training.schedule import knotted_progress, learning_rate

    config = TrainConfig(lr_schedule="onecycle", warmup_steps=10, schedule_knots=[[30, 0.4]])
    assert knotted_progress(10, 10, 60, [[30, 0.4]]) == 0.0 and knotted_progress(60, 10, 60, [[30, 0.4]]) == 1.0
    assert knotted_progress(20, 10, 60, [[30, 0.4]]) == pytest.approx(0.2)  # 10 -> 30 spans 0 -> 0.4
    assert knotted_progress(45, 10, 60, [[30, 0.4]]) == pytest.approx(0.7)  # 30 -> 60 spans 0.4 -> 1
    rates = [learning_rate(config, k, 60) for k in range(60)]
    steps = [abs(b - a) for a, b in zip(rates, rates[1:])]
    assert max(steps) < 2 * config.lr / 10 and rates[9] == rates[10] == config.lr  # no jump anywhere


def ticking(clock: RunClock, then=None) -> Hooks:
    """Hooks that advance ``clock`` by one step's time as each step starts (and run ``then``'s own hook)."""

    def before_step(k):
        clock.now += clock.per_step
        if then is not None:
            then.before_step(k)

    return Hooks(before_step=before_step)


def test_a_run_slower_than_its_copy_re_plans_from_its_own_speed_and_ends_at_the_budget(tmp_path, tiny_data,
                                                                                          monkeypatch):
    """The copy times 10 steps/s, the run's own steps take 0.25 s: planned 100 steps of 10 s; at the end of the
    warm-up (25 steps, 6.25 s of the run's clock) the run's 4 steps/s re-plan 25 + 3.75 s x 4 = 40 steps, half-way
    through the rest (step 32) again, and training takes the budget to the step."""
    from convae.training import budget, loop
    from convae.training.schedule import learning_rate

    clock = RunClock(0.25)
    monkeypatch.setattr(loop, "time", clock)
    monkeypatch.setattr(loop, "measure_steps_per_second", lambda *args: (10.0, 30))
    said = []
    result = train(tiny(tmp_path / "budget", time_budget="10s"), data=tiny_data, log=said.append,
                   hooks=ticking(clock))
    settings = json.loads((tmp_path / "budget" / "config.json").read_text())
    plan = settings["time_budget_plan"]
    assert plan["steps"] == 40 and plan["replan_step"] == 0 and settings["config"]["warmup_steps"] == 25
    assert plan["replans"] == [
        {"at_step": 25, "steps_per_second": 4.0, "measured_steps": 25 - budget.WARMUP_STEPS, "seconds_left": 3.75,
         "steps": 40},
        {"at_step": 32, "steps_per_second": 4.0, "measured_steps": 7, "seconds_left": 2.0, "steps": 40}]
    assert settings["config"]["schedule_knots"] == [[32, pytest.approx(7 / 15)]]  # past the warm-up: a knot
    assert settings["config"]["max_steps"] == 40 and result.metrics[-1]["step"] == 40
    assert result.metrics[-1]["train_seconds"] == 10.0
    assert any("re-planned at step 25 from this run's own 4.00 steps/s over its last 22 steps, 4 s left: 40 steps "
               "in all (were 100)" in line for line in said), said
    assert any("trained 10 s, 100.0 % of the budget" in line for line in said), said
    # said at the first record (step 25, 6.25 s): the budget's time left, not 75 steps more at 4 steps/s (18.75 s)
    assert any(line.startswith("planned: 100 steps (--time-budget 10s") and line.endswith(
        "img/s so far, and the re-plans follow the run's own speed: about 4 s of training to go, evaluations besides")
        for line in said), said
    # the warm-up was fixed before the first re-plan, so the rate climbs to --lr and the cosine starts there
    config = budgeted_config(tmp_path)
    assert learning_rate(config, 24, 40) == learning_rate(config, 25, 40) == config.lr


def test_a_run_that_slows_down_is_followed_by_each_re_plan(tmp_path, tiny_data, monkeypatch):
    """Steps of 0.25 s until step 30, then of 0.5 s: the re-plan at the warm-up's end trusts 4 steps/s, the next
    ones see the slower steps and bring the end in, and training still ends within a step of the budget."""
    from convae.training import loop

    clock = RunClock(0.25)
    monkeypatch.setattr(loop, "time", clock)
    monkeypatch.setattr(loop, "measure_steps_per_second", lambda *args: (4.0, 30))

    def slows(k):
        if k == 30:
            clock.per_step = 0.5

    said = []
    result = train(tiny(tmp_path / "budget", time_budget="20s", warmup_fraction=0.25), data=tiny_data,
                   log=said.append, hooks=ticking(clock, Hooks(before_step=slows)))
    plan = json.loads((tmp_path / "budget" / "config.json").read_text())["time_budget_plan"]
    assert plan["replans"][0]["steps"] == 80 and plan["replans"][-1]["steps"] < 70  # the end brought in
    assert abs(result.metrics[-1]["train_seconds"] - 20.0) <= 0.5  # within one slow step of the budget
    records = [json.loads(line) for line in (tmp_path / "budget" / "steps.jsonl").read_text().splitlines()]
    rates = [r["lr"] for r in records if r["step"] > 20]  # past the warm-up (20 steps), the rate only falls
    assert len(rates) > 3 and all(b <= a for a, b in zip(rates, rates[1:])), rates


def test_a_budgeted_run_fixes_its_steps_lays_its_schedule_over_them_and_is_that_many_steps_bit_for_bit(tmp_path,
                                                                                                       tiny_data):
    said = []
    budgeted = train(tiny(tmp_path / "budget", time_budget="1.2s", warmup_fraction=0.5), data=tiny_data,
                     log=said.append)
    settings = json.loads((tmp_path / "budget" / "config.json").read_text())
    plan = settings["time_budget_plan"]
    steps = plan["steps"]
    first = int(1.2 * plan["steps_per_second"])
    assert plan["measured_steps"] >= 5 and plan["replans"][0]["at_step"] == int(0.5 * first)
    assert settings["config"]["warmup_steps"] == plan["replans"][0]["at_step"]
    made = [r for r in plan["replans"] if not r.get("kept")]  # a slow machine may time too few steps to re-plan
    assert steps == (made[-1]["steps"] if made else first)
    assert settings["config"]["max_steps"] == steps and settings["config"]["epochs"] * 8 >= steps  # 8 steps an epoch
    assert budgeted.metrics[-1]["step"] == steps
    assert any(f"--time-budget 1.2s: {first} steps at " in line and "steps/s, timed over" in line
               for line in said), said
    records = [json.loads(line) for line in (tmp_path / "budget" / "steps.jsonl").read_text().splitlines()]
    from convae.training.schedule import learning_rate

    # one cycle laid over the budget's steps: the last step's rate is the cycle's last, near lr / 100
    assert records[-1]["lr"] == learning_rate(budgeted_config(tmp_path), steps - 1, steps) < 1e-3 / 10

    # the timing drew nothing from the run's generators and touched none of its weights
    same = train(tiny(tmp_path / "steps", max_steps=steps, warmup_steps=settings["config"]["warmup_steps"],
                      schedule_knots=settings["config"]["schedule_knots"], epochs=settings["config"]["epochs"]),
                 data=tiny_data, log=quiet)
    a = RunDir(tmp_path / "budget").latest_checkpoint().tensors
    b = RunDir(tmp_path / "steps").latest_checkpoint().tensors
    assert all(torch.equal(a[k], b[k]) for k in b if k.startswith("model."))
    assert budgeted.metrics[-1]["test_neg_elbo"] == same.metrics[-1]["test_neg_elbo"]


@pytest.mark.parametrize("cut", ["before the re-plan", "after it"])
def test_a_budgeted_run_interrupted_and_resumed_ends_where_it_would_have(tmp_path, tiny_data, monkeypatch, cut):
    """Cut before the first re-plan, the resumed run re-plans at the same step from its own speed; cut after it, the
    re-planned steps are kept. Either way the run is the run of the settings it recorded: 40 steps planned at the
    copy's 10 steps/s for 4 s, the warm-up's 20 steps take 2.5 s at 8 steps/s, 32 steps in all. Its KL warm-up,
    given as a share (--kl-warmup-fraction 0.25), is 10 steps of the first plan, fixed then (the re-plan moves the
    end, not the warm-up) and kept: the run is the one of --kl-warmup 10 given in steps (a step made before the
    warm-up was fixed would train the plain ELBO)."""
    from convae.training import loop

    clock = RunClock(0.125)
    monkeypatch.setattr(loop, "time", clock)
    monkeypatch.setattr(loop, "measure_steps_per_second", lambda *args: (10.0, 30))
    config = tiny(tmp_path / "cut", time_budget="4s", warmup_fraction=0.5, kl_warmup_fraction=0.25)
    said = []
    with pytest.raises(TrainingInterrupted):
        train(config, data=tiny_data, log=said.append,
              hooks=ticking(clock, sigterm_at(2 if cut == "before the re-plan" else 22)))
    assert any("--kl-warmup-fraction 0.25: the KL weight rises to 1 over the first 10 of the run's 40 steps" in line
               for line in said), said
    at_cut = json.loads((tmp_path / "cut" / "config.json").read_text())
    assert len(at_cut["time_budget_plan"]["replans"]) == (0 if cut == "before the re-plan" else 1)
    said = []
    resumed = train(tiny(tmp_path / "cut", time_budget="4s", warmup_fraction=0.5, kl_warmup_fraction=0.25),
                    data=tiny_data, resume=True, log=said.append, hooks=ticking(clock))
    recorded = json.loads((tmp_path / "cut" / "config.json").read_text())
    planned, replans = recorded["config"], recorded["time_budget_plan"]["replans"]
    assert replans[0]["at_step"] == 20 and replans[0]["steps"] == 32 and planned["warmup_steps"] == 20
    assert planned["max_steps"] == 32 and resumed.metrics[-1]["step"] == 32 and planned["kl_warmup"] == 10
    if cut == "after it":  # the re-plan made before the cut, kept; the next one has too few steps timed here
        assert replans[0] == at_cut["time_budget_plan"]["replans"][0]
        assert replans[1] == {"at_step": 26, "kept": True, "measured_steps": 0}
        assert not any("re-planned" in line for line in said) and planned["schedule_knots"] is None, said
    else:  # timed again in the resumed process: from step 3 + 3 to 20, then from 20 to 26
        assert [r["measured_steps"] for r in replans] == [14, 6]
        assert planned["schedule_knots"] == [[26, 0.5]]
    train(tiny(tmp_path / "whole", max_steps=32, warmup_steps=20, kl_warmup=10,
               schedule_knots=planned["schedule_knots"], epochs=planned["epochs"]), data=tiny_data, log=quiet)
    a = RunDir(tmp_path / "cut").latest_checkpoint().tensors
    b = RunDir(tmp_path / "whole").latest_checkpoint().tensors
    assert all(torch.equal(a[k], b[k]) for k in b if k.startswith("model."))


def test_a_kl_warm_up_given_as_a_share_of_an_epoch_long_run_is_fixed_from_its_steps(tmp_path, tiny_data):
    said = []
    train(tiny(tmp_path / "epoch", kl_warmup_fraction=0.5, max_steps=6), data=tiny_data, log=said.append)
    assert json.loads((tmp_path / "epoch" / "config.json").read_text())["config"]["kl_warmup"] == 3
    assert any("--kl-warmup-fraction 0.5: the KL weight rises to 1 over the first 3 of the run's 6 steps" in line
               for line in said), said


def test_a_budget_with_max_steps_is_refused_in_one_line(tmp_path, idx_dir, capsys):
    code, _, err = run_cli(capsys, "train", "--data-dir", str(idx_dir), "--model", "fc", "--time-budget", "1m",
                           "--max-steps", "5", "--device", "cpu", "--quiet", "--out", str(tmp_path / "run"))
    assert code == 2 and err.count("\n") == 1 and "--time-budget and --max-steps: give one" in err, err
    assert not (tmp_path / "run").exists()
    code, _, err = run_cli(capsys, "train", "--data-dir", str(idx_dir), "--time-budget", "soon", "--device", "cpu",
                           "--out", str(tmp_path / "run"))
    assert code == 2 and "--time-budget soon: give a duration such as 20m" in err
    code, _, err = run_cli(capsys, "train", "--data-dir", str(idx_dir), "--model", "fc", "--kl-warmup", "5",
                           "--kl-warmup-fraction", "0.1", "--device", "cpu", "--quiet", "--out", str(tmp_path / "run"))
    assert code == 2 and err.count("\n") == 1 and "--kl-warmup and --kl-warmup-fraction: give one" in err, err
    assert not (tmp_path / "run").exists()


class TickingPackStep:
    """A pack's step that advances the run clock by ``clock.per_step`` each time the pack steps."""

    def __init__(self, step, clock):
        self.step, self.clock = step, clock

    def __call__(self, *args):
        self.clock.now += self.clock.per_step
        return self.step(*args)

    def __getattr__(self, name):
        return getattr(self.step, name)


def test_a_budgeted_pack_plans_from_the_packs_speed_and_its_members_end_together(tmp_path, tiny_data, monkeypatch):
    """A pack of 2 whose members differ in warm-up: the first plan comes from the pack's step (timed once for both:
    5 steps/s, 10 s = 50 steps), each member fixes its own warm-up (10 and 25 steps); the pack then re-plans at its
    lead's warm-up end from the pack's own 0.25-s steps (4 steps/s) and half-way through each rest, and both
    members take each plan: the same 40 steps, the same 10 s, each cosine knotted where it is."""
    from convae.runtime import Runtime
    from convae.training import loop, packed
    from convae.training.packed import Pack
    from convae.training.schedule import learning_rate

    clock = RunClock(0.25)
    monkeypatch.setattr(loop, "time", clock)
    timed = []
    monkeypatch.setattr(packed, "time_pack_step", lambda configs, *a: timed.append(len(configs)) or (5.0, 10))
    real_step = packed.pack_step
    monkeypatch.setattr(packed, "pack_step", lambda *a, **k: TickingPackStep(real_step(*a, **k), clock))
    configs = [tiny(tmp_path / "a", time_budget="10s", warmup_fraction=0.2, seed=0, model="fc"),
               tiny(tmp_path / "b", time_budget="10s", warmup_fraction=0.5, seed=1, model="fc")]
    outcomes = Pack(configs, data=tiny_data, runtime=Runtime(), strategy="threads", log=quiet).run()
    assert [o.status for o in outcomes] == ["done", "done"] and timed == [2]  # timed once, for the pack of 2
    a, b = (json.loads((tmp_path / k / "config.json").read_text()) for k in ("a", "b"))
    assert (a["config"]["warmup_steps"], b["config"]["warmup_steps"]) == (10, 25)
    assert a["time_budget_plan"]["steps_per_second"] == 5.0 and a["time_budget_plan"]["replans"][0] == {
        "at_step": 10, "steps_per_second": 4.0, "measured_steps": 10 - 3, "seconds_left": 7.5, "steps": 40}
    assert a["time_budget_plan"]["replans"] == b["time_budget_plan"]["replans"]  # one plan for the pack
    assert a["config"]["max_steps"] == b["config"]["max_steps"] == 40
    for run, settings in (("a", a), ("b", b)):
        metrics = RunDir(tmp_path / run).metrics()
        assert metrics[-1]["step"] == 40 and metrics[-1]["train_seconds"] == pytest.approx(10.0)
        config = TrainConfig.from_dict(settings["config"])
        records = [json.loads(line) for line in (tmp_path / run / "steps.jsonl").read_text().splitlines()]
        assert [r["lr"] for r in records] == [learning_rate(config, r["step"] - 1, 40) for r in records]
    # a's cosine began at step 10 and is knotted at each later re-plan; b was still warming up at the first
    assert a["config"]["schedule_knots"][0][0] == 25 and b["config"]["schedule_knots"][0][0] == 32


def test_a_sweep_with_a_budget_trains_its_packed_members_for_the_budget(tmp_path, idx_dir, capsys):
    """End to end, on the real clock: 2 seeds packed together, each with the same steps from the pack's timing
    (batch 8: 32 steps an epoch, so that the budget holds few epoch ends, each of which draws a picture)."""
    code, out, err = run_cli(capsys, "sweep", "--data-dir", str(idx_dir), "--model", "fc", "--time-budget", "1s",
                             "--seeds", "2", "--pack", "2", "--pack-by", "threads", "--lr-schedule", "onecycle",
                             "--batch-size", "8",
                             "--device", "cpu", "--quiet", "--no-report", "--no-tensorboard", "--eval-batch-size",
                             "64", "--out", str(tmp_path / "sweep"))
    assert code == 0, err
    runs = sorted((tmp_path / "sweep" / "runs").iterdir())
    settings = [json.loads((r / "config.json").read_text()) for r in runs]
    assert len(runs) == 2 and settings[0]["config"]["max_steps"] == settings[1]["config"]["max_steps"]
    assert settings[0]["time_budget_plan"]["replans"] == settings[1]["time_budget_plan"]["replans"]
    for r, s in zip(runs, settings):
        assert RunDir(r).metrics()[-1]["step"] == s["config"]["max_steps"]
        assert "on the pack's step" in (r / "log.txt").read_text()


def test_the_cpu_hour_preset_trains_for_its_budget_and_a_length_given_replaces_it(tmp_path, idx_dir, capsys):
    from convae.cli import build_parser
    from convae.cli.train import config_from_args

    out = tmp_path / "hour"
    code, _, err = run_cli(capsys, "train", "--data-dir", str(idx_dir), "--preset", "cpu-hour", "--time-budget", "1s",
                           "--device", "cpu", "--quiet", "--no-report", "--no-tensorboard", "--eval-batch-size", "64",
                           "--out", str(out))
    assert code == 0, err
    settings = json.loads((out / "config.json").read_text())
    saved = settings["config"]
    assert (saved["model"], saved["binarize"], saved["batch_size"], saved["lr_schedule"], saved["time_budget"],
            saved["extra"]) == ("pixel", "dynamic", 64, "onecycle", "1s", {"preset": "cpu-hour"})
    assert RunDir(out).metrics()[-1]["step"] == saved["max_steps"] == settings["time_budget_plan"]["steps"]
    parse = build_parser().parse_args
    hour, _ = config_from_args(parse(["train", "--preset", "cpu-hour"]))
    assert hour.time_budget == "1h" and hour.model == "pixel"
    for length in (["--epochs", "2"], ["--max-steps", "50"]):  # a length instead of the hour
        config, _ = config_from_args(parse(["train", "--preset", "cpu-hour", *length]))
        assert config.time_budget is None and config.model == "pixel" and config.precision == "bf16"

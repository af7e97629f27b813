import json

import pytest
import torch
from safetensors.torch import load_file

import convae.training.schedule as schedule
from convae.config import TrainConfig
from convae.errors import ConfigError
from convae.errors import NonFiniteLoss, TrainingInterrupted
from convae.training import train
from convae.runs.checkpoint import list_checkpoints

from conftest import sigterm_at

TIMING = {"train_seconds", "epoch_seconds", "img_per_s", "eval_seconds"}


def tiny(out, **kw) -> TrainConfig:
    # report=False: drawing report.html takes longer than a tiny run trains (test_report.py tests it)
    settings = dict(epochs=3, batch_size=32, quiet=True, device="cpu", out=str(out), eval_batch_size=64, report=False)
    settings.update(kw)
    return TrainConfig(**settings)


def deterministic(metrics):
    return [{k: v for k, v in m.items() if k not in TIMING} for m in metrics]


def final_weights(run_dir):
    newest = list_checkpoints(run_dir / "checkpoints")[-1]
    return load_file(newest.with_suffix(".safetensors"))


def test_short_run_lowers_the_loss_and_writes_every_file(tmp_path, tiny_data):
    result = train(tiny(tmp_path / "run", epochs=4, lr=3e-3, report=True), data=tiny_data, log=lambda s: None)
    run = result.run_dir
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == [1, 2, 3, 4] and [m["step"] for m in metrics] == [8, 16, 24, 32]
    for key in ("L_tot", "L_likelihood", "L_KL", "test_neg_elbo", "train_seconds", "img_per_s", "entropy_floor"):
        assert all(isinstance(m[key], float) for m in metrics), key
    assert metrics[-1]["test_neg_elbo"] < metrics[0]["test_neg_elbo"]
    assert metrics[-1]["L_tot"] < metrics[0]["L_tot"]
    assert all(abs(m["L_tot"] - m["L_likelihood"] - m["L_KL"]) < 1e-4 for m in metrics)  # float32 sums
    assert all(m["test_neg_elbo"] > m["entropy_floor"] for m in metrics)
    config = json.loads((run / "config.json").read_text())
    assert config["config"]["batch_size"] == 32 and config["environment"]["torch"] == torch.__version__
    assert {"python", "convae", "device"} <= set(config["environment"])
    assert sorted(p.name for p in (run / "images").iterdir()) == [f"result{k}.png" for k in (1, 2, 3, 4)] + ["samples.png"]
    assert len(list_checkpoints(run / "checkpoints")) == 2  # keep_checkpoints
    assert "epoch 4: L_tot = " in (run / "log.txt").read_text()
    assert (run / "report.html").stat().st_size > 1000


@pytest.mark.layouts  # bit for bit within one layout: checked under each by scripts/test-layouts.sh
def test_resume_after_max_steps_reproduces_an_uninterrupted_run_bit_for_bit(tmp_path, tiny_data):
    quiet = lambda s: None  # noqa: E731
    full = train(tiny(tmp_path / "full"), data=tiny_data, log=quiet)
    first = train(tiny(tmp_path / "split", max_steps=12), data=tiny_data, log=quiet)
    assert first.metrics[-1]["step"] == 12 and first.metrics[-1]["partial_epoch"]
    assert (tmp_path / "split" / "images" / "result2-step12.png").is_file()
    resumed = train(tiny(tmp_path / "split"), data=tiny_data, resume=True, log=quiet)
    epoch_ends = [m for m in resumed.metrics if not m["partial_epoch"]]
    assert deterministic(epoch_ends) == deterministic(full.metrics)
    a, b = final_weights(tmp_path / "full"), final_weights(tmp_path / "split")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.layouts  # bit for bit within one layout: checked under each by scripts/test-layouts.sh
def test_sigterm_finishes_the_step_checkpoints_and_resume_matches(tmp_path, tiny_data):
    quiet = lambda s: None  # noqa: E731
    full = train(tiny(tmp_path / "full"), data=tiny_data, log=quiet)
    with pytest.raises(TrainingInterrupted, match=r"SIGTERM at step 6: checkpoint written; resume with: convae train --resume"):
        train(tiny(tmp_path / "cut"), data=tiny_data, log=quiet, hooks=sigterm_at(5))
    assert [p.name for p in list_checkpoints(tmp_path / "cut" / "checkpoints")] == ["step-00000006.json"]
    resumed = train(tiny(tmp_path / "cut"), data=tiny_data, resume=True, log=quiet)
    assert deterministic(resumed.metrics) == deterministic(full.metrics)


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, tiny_data):
    from convae.training import Hooks

    calls = {"n": 0}

    def poisoned(original):
        def loss(*args):
            calls["n"] += 1
            loss, terms = original(*args)
            return (loss * float("nan"), terms * float("nan")) if calls["n"] == 11 else (loss, terms)
        return loss

    with pytest.raises(NonFiniteLoss, match=r"loss is not finite at step 11 \(epoch 2\).*step-00000008.json"):
        train(tiny(tmp_path / "nan"), data=tiny_data, log=lambda s: None, hooks=Hooks(wrap_loss=poisoned))
    assert [p.name for p in list_checkpoints(tmp_path / "nan" / "checkpoints")] == ["step-00000008.json"]


def test_epoch_samples_are_drawn_only_for_a_sink_that_shows_them(tmp_path, tiny_data, monkeypatch):
    from convae.reporting import sinks

    shown = []
    log_epoch = sinks.RunLogger.log_epoch

    def spy(self, record, images=None):
        shown.append((self.tb is not None, sorted(images or {})))
        return log_epoch(self, record, images)

    monkeypatch.setattr(sinks.RunLogger, "log_epoch", spy)
    for tensorboard in (True, False):
        train(tiny(tmp_path / str(tensorboard), epochs=1, tensorboard=tensorboard, report=False), data=tiny_data,
              log=lambda s: None)
    assert shown == [(True, ["reconstructions", "samples"]), (False, ["reconstructions"])]
    assert (tmp_path / "False" / "images" / "result1.png").is_file()  # the seed's picture all the same


def test_float64_runs_in_float64(tmp_path, tiny_data):
    from convae.runs import open_run

    result = train(tiny(tmp_path / "f64", epochs=1, dtype="float64"), data=tiny_data, log=lambda s: None)
    assert all(p.dtype == torch.float64 for p in result.model.parameters())
    assert result.metrics[0]["test_neg_elbo"] > 0
    saved = final_weights(tmp_path / "f64")  # and eval, sample, load and export open it with those very weights
    for name, tensor in open_run(tmp_path / "f64", "cpu").model.state_dict().items():
        # BatchNorm's statistics: the population statistics of those weights, kept beside training's running ones
        kept = saved.get("population." + name, saved["model." + name])
        assert tensor.dtype == kept.dtype and torch.equal(tensor, kept), name
        assert tensor.dtype == torch.float64 or name.endswith("num_batches_tracked")


def test_in_order_batches_follow_the_data(tiny_data):
    config = TrainConfig(shuffle=False)
    assert torch.equal(schedule.epoch_order(10, 3, config, torch.device("cpu")), torch.arange(10))
    shuffled = TrainConfig(shuffle=True)
    a = schedule.epoch_order(100, 1, shuffled, torch.device("cpu"))
    assert torch.equal(a, schedule.epoch_order(100, 1, shuffled, torch.device("cpu")))
    assert not torch.equal(a, schedule.epoch_order(100, 2, shuffled, torch.device("cpu")))


def test_bad_settings_write_nothing(tmp_path, tiny_data):
    with pytest.raises(ConfigError, match="--batch-size: must be a positive integer, got -1"):
        train(tiny(tmp_path / "bad", batch_size=-1), data=tiny_data)
    with pytest.raises(ConfigError, match="--batch-size 512: larger than the 256 training images"):
        train(tiny(tmp_path / "bad", batch_size=512), data=tiny_data)
    assert not (tmp_path / "bad").exists()


def test_onecycle_schedule_warms_up_then_decays():
    config = TrainConfig(lr=1e-2, lr_schedule="onecycle", warmup_fraction=0.25)
    lrs = [schedule.learning_rate(config, s, 100) for s in range(100)]
    assert lrs[0] == pytest.approx(1e-2 / 25) and max(lrs) == pytest.approx(1e-2) and lrs.index(max(lrs)) == 24
    assert lrs[-1] < 1e-3 and all(a >= b for a, b in zip(lrs[24:], lrs[25:]))


def test_checkpoint_keeps_a_tensor_learning_rate_a_tensor(tmp_path):
    """CUDA graphs read the learning rate from a tensor; after a resume it must still be that kind of tensor."""
    from convae.runs.checkpoint import latest_checkpoint, restore, save_checkpoint

    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.Adam(model.parameters(), lr=torch.tensor(0.01), foreach=False)
    model(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    optimizer.param_groups[0]["lr"].fill_(0.005)
    save_checkpoint(tmp_path, model=model, optimizer=optimizer, rank_states=[{"rng.cpu": torch.get_rng_state()}],
                    meta={"model": "linear", "step": 1, "epoch": 1, "train_seconds": 0.0})
    fresh = torch.optim.Adam(model.parameters(), lr=torch.tensor(0.01), foreach=False)
    restore(latest_checkpoint(tmp_path), model, fresh)
    lr = fresh.param_groups[0]["lr"]
    assert isinstance(lr, torch.Tensor) and lr.item() == pytest.approx(0.005)
    assert torch.equal(fresh.state[model.weight]["exp_avg"], optimizer.state[model.weight]["exp_avg"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_graph_run_stops_and_resumes(tmp_path, tiny_data):
    quiet = lambda s: None  # noqa: E731
    settings = dict(device="cuda", lr_schedule="onecycle", lr=3e-3)
    first = train(tiny(tmp_path / "gpu", max_steps=12, **settings), data=tiny_data, log=quiet)
    assert first.metrics[-1]["step"] == 12
    resumed = train(tiny(tmp_path / "gpu", **settings), data=tiny_data, resume=True, log=quiet)
    ends = [m for m in resumed.metrics if not m["partial_epoch"]]
    assert [m["step"] for m in ends] == [8, 16, 24]
    assert ends[-1]["test_neg_elbo"] < ends[0]["test_neg_elbo"]
    assert all(torch.isfinite(torch.tensor(m["train_loss"])) for m in ends)


@pytest.mark.layouts  # bit for bit within one layout: checked under each by scripts/test-layouts.sh
def test_periodic_checkpoints_change_nothing_but_the_files(tmp_path, tiny_data):
    quiet = lambda s: None  # noqa: E731
    plain = train(tiny(tmp_path / "plain", epochs=2), data=tiny_data, log=quiet)
    often = train(tiny(tmp_path / "often", epochs=2, checkpoint_every=3, keep_checkpoints=10), data=tiny_data, log=quiet)
    names = [p.name for p in list_checkpoints(tmp_path / "often" / "checkpoints")]
    assert names == [f"step-{s:08d}.json" for s in (3, 6, 8, 9, 12, 15, 16)]
    assert deterministic(often.metrics) == deterministic(plain.metrics)
    a, b = final_weights(tmp_path / "plain"), final_weights(tmp_path / "often")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_checkpoint_minutes_checkpoints_when_the_time_has_passed(tmp_path, tiny_data):
    train(tiny(tmp_path / "timed", epochs=1, checkpoint_minutes=1e-9, keep_checkpoints=100), data=tiny_data,
          log=lambda s: None)
    steps = [int(p.stem.split("-")[1]) for p in list_checkpoints(tmp_path / "timed" / "checkpoints")]
    assert steps == list(range(1, 9))


@pytest.mark.layouts  # bit for bit within one layout: checked under each by scripts/test-layouts.sh
def test_a_mid_epoch_checkpoint_resumes_bit_for_bit(tmp_path, tiny_data):
    quiet = lambda s: None  # noqa: E731
    full = train(tiny(tmp_path / "full"), data=tiny_data, log=quiet)
    train(tiny(tmp_path / "cut", checkpoint_every=5, keep_checkpoints=10, max_steps=13), data=tiny_data, log=quiet)
    cut = tmp_path / "cut" / "checkpoints"
    for newer in list_checkpoints(cut)[-1:]:  # step 13 gone: as if killed after step 12
        newer.unlink()
        newer.with_suffix(".safetensors").unlink()
    assert list_checkpoints(cut)[-1].name == "step-00000010.json"
    resumed = train(tiny(tmp_path / "cut"), data=tiny_data, resume=True, log=quiet)
    ends = [m for m in resumed.metrics if not m["partial_epoch"]]
    assert deterministic(ends) == deterministic(full.metrics)
    a, b = final_weights(tmp_path / "full"), final_weights(tmp_path / "cut")
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.layouts  # bit for bit within one layout: checked under each by scripts/test-layouts.sh
@pytest.mark.parametrize("options", [dict(ema=0.9, kl_warmup=10, free_bits=0.05, beta=0.8),
                                     dict(ema=0.95, iw_train=3, model="fc")])
def test_literature_options_resume_bit_for_bit_and_are_recorded(tmp_path, tiny_data, options):
    """KL warm-up, free bits, beta, IWAE and weight averaging all live in the checkpoint or in the step count:
    a run cut by --max-steps and resumed ends exactly where an uninterrupted one does, averaged weights included."""
    quiet = lambda s: None  # noqa: E731
    full = train(tiny(tmp_path / "full", epochs=2, **options), data=tiny_data, log=quiet)
    train(tiny(tmp_path / "split", epochs=2, max_steps=11, **options), data=tiny_data, log=quiet)
    resumed = train(tiny(tmp_path / "split", epochs=2, **options), data=tiny_data, resume=True, log=quiet)
    ends = [m for m in resumed.metrics if not m["partial_epoch"]]
    assert deterministic(ends) == deterministic(full.metrics)
    a, b = final_weights(tmp_path / "full"), final_weights(tmp_path / "split")
    assert any(k.startswith("ema.") for k in a) and all(torch.equal(a[k], b[k]) for k in a)
    saved = json.loads((tmp_path / "full" / "config.json").read_text())["config"]
    assert {k: saved[k] for k in options} == options


def test_evaluation_uses_the_averaged_weights(tmp_path, tiny_data):
    from convae.runs import open_run

    train(tiny(tmp_path / "ema", epochs=1, ema=0.5), data=tiny_data, log=lambda s: None)
    weights = final_weights(tmp_path / "ema")
    model = open_run(tmp_path / "ema", "cpu").model
    for name, p in model.named_parameters():
        assert torch.equal(p.detach(), weights["ema." + name])
    assert not all(torch.equal(weights["ema." + n], weights["model." + n]) for n, _ in model.named_parameters())


def test_weight_average_ramps_its_decay_and_swaps_weights_back():
    from convae.training.averaging import WeightAverage

    layer = torch.nn.Linear(2, 1)
    with torch.no_grad():
        layer.weight.fill_(0.0)
        layer.bias.fill_(0.0)
    average = WeightAverage(layer, decay=0.99)
    with torch.no_grad():
        layer.weight.fill_(1.0)
    average.update()  # decay min(0.99, 1/10) = 0.1: 0.1 * 0 + 0.9 * 1
    assert torch.allclose(average.average[0], torch.full((1, 2), 0.9))
    with average.applied():
        assert torch.allclose(layer.weight, torch.full((1, 2), 0.9))
    assert torch.equal(layer.weight, torch.ones(1, 2))


def test_iw_training_is_refused_under_torchrun_and_options_are_checked():
    with pytest.raises(ConfigError, match="--free-bits"):
        TrainConfig(free_bits=0.5, iw_train=4).validate()
    for bad, flag in ((dict(beta=0), "--beta"), (dict(kl_warmup=-1), "--kl-warmup"), (dict(iw_train=0), "--iw-train"),
                      (dict(ema=1.0), "--ema"), (dict(grad_clip=-1.0), "--grad-clip"), (dict(free_bits=-1), "--free-bits"),
                      *((dict(kl_warmup_fraction=f), "--kl-warmup-fraction") for f in (0, 1.5, float("nan")))):
        with pytest.raises(ConfigError, match=flag):
            TrainConfig(**bad).validate()

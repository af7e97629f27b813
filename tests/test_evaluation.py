import hashlib
import json
import math

import pytest
import torch

from convae.cli import main
from convae.errors import ConfigError
from convae.data import EvalImages
from convae.evaluation.elbo import evaluate_neg_elbo
from convae.evaluation.likelihood import importance_weighted_nll, log_weights
from convae.runs import open_run
from convae.objectives import per_image_neg_elbo
from convae.runs.checkpoint import CheckpointError


@pytest.fixture(scope="module")
def trained_run(seed_run):
    return seed_run


def test_iw_bound_with_k1_is_the_elbo_in_expectation(trained_run, tiny_data):
    run = open_run(trained_run, "cpu")
    test = EvalImages(tiny_data.test_images, tiny_data.levels, 32)
    x = test.floats(0, 16, torch.float32, torch.device("cpu"))
    generator = torch.Generator().manual_seed(0)
    n = 400
    with torch.no_grad():
        # single-sample log weights: their mean estimates the ELBO with a Monte Carlo KL ...
        w = log_weights(run.model, x, n, generator)
        mu, sigma = run.model.encoder(x)
        # ... and the ELBO the trainer reports uses the analytic KL
        elbo = torch.stack([-per_image_neg_elbo(run.model.decoder(mu + sigma * torch.randn(mu.shape, generator=generator)),
                                                x, mu, sigma).total for _ in range(n)]).double()
    difference = w.mean(1) - elbo.mean(0)
    standard_error = (w.var(1) / n + elbo.var(0) / n).sqrt()
    assert (difference.abs() < 4 * standard_error + 1e-3).all()


def test_iw_bound_tightens_with_k(trained_run, tiny_data):
    run = open_run(trained_run, "cpu")
    test = EvalImages(tiny_data.test_images, tiny_data.levels, 32)
    nll = {k: importance_weighted_nll(run.model, test, k, seed=1).nll for k in (1, 10, 100)}
    assert nll[1] > nll[10] > nll[100]
    assert nll[100] < evaluate_neg_elbo(run.model, test).neg_elbo


def test_eval_cli_writes_numbers_and_pictures(trained_run, capsys):
    assert main(["eval", str(trained_run), "--iw-samples", "20", "--json", "--device", "cpu"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["iw_samples"] == 20 and result["iw_nll"] < result["test_neg_elbo"] + 1
    assert result["arithmetic"] == "float32"  # on CUDA it also says whether TF32 was allowed
    assert math.isfinite(result["test_neg_elbo"]) and result["entropy_floor"] > 0
    for picture in ("samples.png", "reconstructions.png", "interpolations.png", "traversals.png",
                    "latent_pca.png", "loss_curves.png"):
        assert (trained_run / "eval" / picture).stat().st_size > 1000
    assert main(["artifacts", str(trained_run), "--json", "--images", "64", "--device", "cpu"]) == 0
    scores = json.loads(capsys.readouterr().out)
    assert scores["samples"]["score"] > 0 and (trained_run / "eval" / "artifacts.png").is_file()


def test_iw_bound_stopped_and_continued_equals_one_that_ran_through(trained_run, tiny_data):
    run = open_run(trained_run, "cpu")
    test = EvalImages(tiny_data.test_images, tiny_data.levels, 32)
    whole = importance_weighted_nll(run.model, test, 9, batch_size=16, seed=3)
    kept = []

    def stop_after_two_batches(bounds):
        kept[:] = bounds
        if len(bounds) == 32:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        importance_weighted_nll(run.model, test, 9, batch_size=16, seed=3, save=stop_after_two_batches)
    assert len(kept) == 32 and kept == whole.bounds[:32]
    continued = importance_weighted_nll(run.model, test, 9, batch_size=16, seed=3, done=kept)
    assert continued.bounds == whole.bounds and continued.nll == whole.nll
    with pytest.raises(ValueError, match="do not end a batch"):
        importance_weighted_nll(run.model, test, 9, batch_size=16, done=kept[:5])


def test_iw_bound_extended_from_fewer_samples_equals_one_drawn_afresh(trained_run, tiny_data):
    run = open_run(trained_run, "cpu")
    test = EvalImages(tiny_data.test_images, tiny_data.levels, 32)
    x = test.floats(0, 16, torch.float32, torch.device("cpu"))
    with torch.no_grad():  # sample j is the same draw whatever K is (chunks of 4 here, K = 6 ends mid-chunk)
        w_many = log_weights(run.model, x, 10, torch.Generator().manual_seed(5), max_batch=64)
        w_few = log_weights(run.model, x, 6, torch.Generator().manual_seed(5), max_batch=64)
        w_rest = log_weights(run.model, x, 10, torch.Generator().manual_seed(5), max_batch=64, first=6)
    torch.testing.assert_close(w_many, torch.cat([w_few, w_rest], dim=1), rtol=0, atol=1e-5)

    def nats(bounds):
        return torch.tensor(bounds, dtype=torch.float64)

    fresh = importance_weighted_nll(run.model, test, 12, batch_size=16, seed=3)
    fewer = importance_weighted_nll(run.model, test, 5, batch_size=16, seed=3)
    extended = importance_weighted_nll(run.model, test, 12, batch_size=16, seed=3, fewer=(5, fewer.bounds))
    torch.testing.assert_close(nats(extended.bounds), nats(fresh.bounds), rtol=0, atol=1e-6)
    assert fewer.nll > fresh.nll  # the extension did add samples: 12 bound tighter than 5
    half = importance_weighted_nll(run.model, test, 12, batch_size=16, seed=3, fewer=(5, fewer.bounds[:32]))
    torch.testing.assert_close(nats(half.bounds), nats(fresh.bounds), rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="cannot be extended"):
        importance_weighted_nll(run.model, test, 5, batch_size=16, fewer=(12, fresh.bounds))
    with pytest.raises(ValueError, match="with K = 5 do not end a batch"):
        importance_weighted_nll(run.model, test, 12, batch_size=16, fewer=(5, fewer.bounds[:7]))


def test_eval_cli_goes_on_from_the_iw_bounds_an_interrupted_eval_kept(trained_run, capsys, monkeypatch):
    import convae.evaluation.likelihood as likelihood

    kept = trained_run / "eval" / "iw_k7.json"
    kept.unlink(missing_ok=True)
    args = ["eval", str(trained_run), "--iw-samples", "7", "--iw-batch-size", "16", "--json", "--no-pictures",
            "--device", "cpu"]
    original = likelihood.importance_weighted_nll

    def interrupted(*a, save, **kw):
        def save_then_stop(bounds):
            save(bounds)
            if len(bounds) == 32:
                raise KeyboardInterrupt
        return original(*a, save=save_then_stop, **kw)

    monkeypatch.setattr(likelihood, "importance_weighted_nll", interrupted)
    assert main(args) == 130
    assert f"kept in {kept}" in capsys.readouterr().err
    assert len(json.loads(kept.read_text())["bounds"]) == 32
    monkeypatch.setattr(likelihood, "importance_weighted_nll", original)
    assert main(args) == 0
    said = capsys.readouterr()
    assert f"going on from the bounds of 32 of 64 images kept in {kept}" in said.err
    continued = json.loads(said.out)
    assert continued["iw_images_from_earlier"] == 32 and continued["n_test_images"] == 64
    assert len(json.loads(kept.read_text())["bounds"]) == 64
    assert main(args) == 0  # finished: read back whole
    assert json.loads(capsys.readouterr().out)["iw_images_from_earlier"] == 64
    stale = json.loads(kept.read_text())
    kept.write_text(json.dumps({**stale, "step": stale["step"] + 1}))  # another checkpoint's: not used
    assert main(args) == 0
    fresh = json.loads(capsys.readouterr().out)
    assert fresh["iw_images_from_earlier"] == 0 and fresh["iw_nll"] == continued["iw_nll"]


def test_eval_cli_extends_kept_bounds_to_more_samples_and_keys_them_by_weights(trained_run, capsys, tmp_path):
    import shutil

    from convae.runs.checkpoint import list_checkpoints, meta_digest
    from safetensors.torch import load_file, save_file

    run = tmp_path / "run"  # a copy: its checkpoint is rewritten below
    shutil.copytree(trained_run, run, ignore=shutil.ignore_patterns("eval"))

    def evaluate(k):
        assert main(["eval", str(run), "--iw-samples", str(k), "--iw-batch-size", "16", "--json", "--no-pictures",
                     "--device", "cpu"]) == 0
        said = capsys.readouterr()
        return json.loads(said.out), said.err

    few, _ = evaluate(4)
    assert few["iw_extended_from"] is None
    extended, err = evaluate(11)
    file_4 = run / "eval" / "iw_k4.json"
    assert f"the first 4 samples of 64 images come from {file_4}; drawing the other 7" in err
    assert extended["iw_extended_from"] == {"k": 4, "images": 64, "file": str(file_4)}
    (run / "eval" / "iw_k11.json").unlink()
    file_4.unlink()
    fresh, _ = evaluate(11)
    assert fresh["iw_extended_from"] is None and abs(fresh["iw_nll"] - extended["iw_nll"]) < 1e-6

    # the same weights in a checkpoint without the optimizer's state (smaller, to carry away): bounds still theirs
    newest = list_checkpoints(run / "checkpoints")[-1]
    tensors_file = newest.with_suffix(".safetensors")
    tensors = {k: v for k, v in load_file(tensors_file).items() if not k.startswith("optimizer.")}
    save_file(tensors, tensors_file)
    meta = json.loads(newest.read_text())
    meta["tensors_sha256"] = hashlib.sha256(tensors_file.read_bytes()).hexdigest()
    meta["meta_sha256"] = meta_digest(meta)
    newest.write_text(json.dumps(meta))
    again, _ = evaluate(11)
    assert again["iw_images_from_earlier"] == 64 and again["iw_nll"] == fresh["iw_nll"]


def test_eval_refuses_missing_and_foreign_runs(trained_run, tmp_path, capsys):
    assert main(["eval", str(tmp_path / "nothing")]) == 2
    assert "no such run folder" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="a run of model 'seed', not 'resize'"):
        open_run(trained_run, "cpu", expect_model="resize")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "checkpoints").mkdir()
    settings = json.loads((trained_run / "config.json").read_text())
    settings["config"]["model"] = "resize"
    (foreign / "config.json").write_text(json.dumps(settings))
    for f in (trained_run / "checkpoints").iterdir():
        (foreign / "checkpoints" / f.name).write_bytes(f.read_bytes())
    with pytest.raises(CheckpointError, match="checkpoint of model 'seed'"):
        open_run(foreign, "cpu")
    assert main(["compare", "--runs", str(foreign), "--out", str(tmp_path / "cmp")]) == 2
    assert "checkpoint of model 'seed'" in capsys.readouterr().err


def test_compare_table_names_runs_shows_fractional_epochs_and_warns_of_unequal_budgets():
    from convae.experiments.compare import format_table

    row = dict(model="seed", test_neg_elbo=200.0, iw_nll=None, iw_samples=0, entropy_floor=96.9, dots_samples=1.0,
               dots_samples_of_mean=2.0, dots_reconstructions=1.0, parameters=10, mflops_per_image=1.0,
               seconds_per_epoch=None, batch_size=32)
    table = format_table([{**row, "run": "runs/a", "epochs": 0.08, "steps": 150},
                          {**row, "run": "runs/b", "epochs": 1, "steps": 1875}])
    assert "| seed (a) | 0.08 |" in table and "| seed (b) | 1 |" in table
    assert "IW bound" not in table  # K = 0: no bound, no column
    assert "different budgets (a: 150 steps of 32; b: 1875 steps of 32)" in table
    same = format_table([{**row, "run": "runs/a", "epochs": 1, "steps": 1875, "iw_samples": 100, "iw_nll": 90.0}])
    assert "IW bound (K=100)" in same and "| 90.00 |" in same and "different budgets" not in same


def test_eval_says_how_it_computed():
    from convae.evaluation.evaluate import arithmetic
    from convae.models import build_model

    model = build_model("fc")
    assert arithmetic(model) == "float32" and arithmetic(model.double()) == "float64"
    if torch.cuda.is_available():  # each switch set here, so that every line checks one exact answer
        tf32 = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
        try:
            torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
            assert arithmetic(model.float().cuda()) == "float32, no TF32"
            torch.backends.cudnn.allow_tf32 = True
            assert arithmetic(model) == "float32, convolutions in TF32"
            torch.backends.cuda.matmul.allow_tf32 = True
            assert arithmetic(model) == "float32, convolutions and matrix products in TF32"
        finally:
            torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = tf32


@pytest.mark.parametrize("name", ["bernoulli", "continuous-bernoulli", "logistic", "gaussian"])
def test_the_likelihood_of_k_samples_per_image_is_the_likelihood_of_the_image_copied_k_times(name):
    from convae.models.likelihoods import make_likelihood

    likelihood = make_likelihood(name)
    torch.manual_seed(0)
    x = torch.rand(3, 1, 8, 8)
    x[0] = x[0].round()  # a binary image beside gray ones
    params = 25 * torch.randn(3 * 4, likelihood.params_per_channel, 8, 8)  # beyond the seed's logit clip too
    copied = likelihood.nll(params, x.repeat_interleave(4, 0)).view(3, 4)
    # float32 sums of 64 terms, in another order for the Bernoulli's broadcast form
    torch.testing.assert_close(likelihood.nll_of_samples(params, x, 4), copied, rtol=1e-6, atol=1e-4)
    if name != "bernoulli":  # the others copy the image: the same function by construction
        return
    # the Bernoulli's other path, with a gradient asked for (IWAE training): the same numbers and gradient
    params.requires_grad_()
    with_grad = likelihood.nll_of_samples(params, x, 4)
    torch.testing.assert_close(with_grad, copied, rtol=1e-6, atol=1e-4)
    (gradient,) = torch.autograd.grad(with_grad.sum(), params)
    (expected,) = torch.autograd.grad(likelihood.nll(params, x.repeat_interleave(4, 0)).sum(), params)
    torch.testing.assert_close(gradient, expected)


def test_a_bf16_decoder_bound_is_close_to_the_fp32_one_and_kept_apart(trained_run, capsys, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained_run, run, ignore=shutil.ignore_patterns("eval"))
    results = {}
    for precision in ("fp32", "bf16"):
        assert main(["eval", str(run), "--iw-samples", "6", "--iw-batch-size", "16", "--json", "--no-pictures",
                     "--device", "cpu", "--iw-precision", precision]) == 0
        results[precision] = json.loads(capsys.readouterr().out)
    fp32, bf16 = results["fp32"], results["bf16"]
    assert fp32["iw_precision"] == "fp32" and bf16["iw_precision"] == "bf16"
    assert fp32["iw_bounds_file"].endswith("iw_k6.json") and bf16["iw_bounds_file"].endswith("iw_k6_bf16.json")
    assert json.loads((run / "eval" / "iw_k6_bf16.json").read_text())["precision"] == "bf16"
    # bfloat16 products (8-bit mantissa) in the decoder only: the mean bound moves by far less than a nat, but moves
    assert fp32["iw_nll"] != bf16["iw_nll"] and abs(fp32["iw_nll"] - bf16["iw_nll"]) < 0.5
    # a file written before bounds were keyed by precision holds float32 ones: still read back as such
    kept = run / "eval" / "iw_k6.json"
    old = json.loads(kept.read_text())
    del old["precision"]
    kept.write_text(json.dumps(old))
    assert main(["eval", str(run), "--iw-samples", "6", "--iw-batch-size", "16", "--json", "--no-pictures",
                 "--device", "cpu"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["iw_images_from_earlier"] == again["n_test_images"] and again["iw_nll"] == fp32["iw_nll"]

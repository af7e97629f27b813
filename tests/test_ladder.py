"""The hierarchical model (issue 26) trains, evaluates, samples, loads, encodes its groups and exports like the
others, under the test suite's tiny settings."""

import json

import pytest
import torch

import convae
import convae.cli
from convae.models import build_model
from convae.models.ladder import gaussian_kl_maps, gaussian_log_density

from conftest import run_cli


@pytest.fixture(scope="module")
def ladder_run(tmp_path_factory, tiny_data):
    from conftest import idx_folder

    folder = tmp_path_factory.mktemp("ladder")
    data = idx_folder(folder / "idx", tiny_data)
    code = convae.cli.main(["train", "--model", "ladder", "--binarize", "dynamic", "--data-dir", str(data),
                            "--epochs", "3", "--batch-size", "32", "--lr", "2e-3", "--free-bits", "0.02",
                            "--kl-warmup", "10", "--grad-clip", "200", "--ema", "0.9", "--device", "cpu", "--quiet",
                            "--no-report", "--no-tensorboard", "--out", str(folder / "run")])
    assert code == 0
    return folder / "run"


def test_the_kl_and_the_log_densities_are_the_gaussians_ones():
    torch.manual_seed(0)
    mu_q, mu_p = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    ls_q, ls_p = torch.randn(2, 3, 4, 4) * 0.3, torch.randn(2, 3, 4, 4) * 0.3
    q = torch.distributions.Normal(mu_q, ls_q.exp())
    p = torch.distributions.Normal(mu_p, ls_p.exp())
    torch.testing.assert_close(gaussian_kl_maps(mu_q, ls_q, mu_p, ls_p),
                               torch.distributions.kl_divergence(q, p).flatten(2).sum(2))
    z = q.sample()
    torch.testing.assert_close(gaussian_log_density(z, mu_q, ls_q), q.log_prob(z).flatten(1).sum(1))


def test_the_iw_bound_with_one_sample_is_the_elbo_in_expectation_and_tightens():
    """K = 1: E[-log w] = -ELBO (the analytic KL of each group's own prior); more samples, a tighter bound."""
    from convae.evaluation.likelihood import log_weights

    torch.manual_seed(0)
    model = build_model("ladder").eval()  # float32: the check is statistical (4 standard errors), far above its rounding
    for p in model.parameters():  # away from the initial posterior = prior, so that the KL is not zero
        p.data.add_(torch.randn_like(p) * 0.02)
    x = torch.bernoulli(torch.full((3, 1, 32, 32), 0.3))
    with torch.no_grad():
        w = log_weights(model, x, 200, torch.Generator().manual_seed(1))
        # 200 one-sample ELBOs of each image, in one pass (the batch is the 3 images repeated)
        elbo = -model.loss(x.repeat(200, 1, 1, 1), generator=torch.Generator().manual_seed(2)).total.view(200, 3)
    assert (model(x).kl.sum(1) > 1).all()
    difference = w.mean(1) - elbo.mean(0)
    assert (difference.abs() < 4 * (w.var(1) / 200 + elbo.var(0) / 200).sqrt()).all()
    bound = lambda k: (torch.logsumexp(w[:, :k], 1) - torch.log(torch.tensor(float(k)))).mean()  # noqa: E731
    assert bound(200) > bound(1)


def test_a_ladder_run_evaluates_loads_encodes_its_groups_and_exports(ladder_run, tmp_path, capsys):
    metrics = [json.loads(line) for line in (ladder_run / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == 3 and metrics[-1]["test_neg_elbo"] < metrics[0]["test_neg_elbo"]
    assert len(metrics[-1]["test_kl_per_dim"]) == 40 and sum(metrics[-1]["test_kl_per_dim"]) == pytest.approx(
        metrics[-1]["test_L_KL"], rel=1e-5)  # 5 groups x 8 channels, each against its own prior
    code, out, _ = run_cli(capsys, "eval", str(ladder_run), "--iw-samples", "4", "--json", "--no-pictures",
                           "--device", "cpu")
    result = json.loads(out)
    assert code == 0 and result["iw_nll"] < result["test_neg_elbo"] + 1
    assert [g["group"] for g in result["groups"]] == ["z1 4x4", "z2 4x4", "z3 8x8", "z4 8x8", "z5 16x16"]
    assert sum(g["kl"] for g in result["groups"]) == pytest.approx(result["test_L_KL"], rel=1e-5)
    assert run_cli(capsys, "report", str(ladder_run), "--out", str(tmp_path / "page.html"))[0] == 0
    page = (tmp_path / "page.html").read_text()
    assert "Latent groups, top down" in page and all(f"<td>{g['group']}</td>" in page for g in result["groups"])
    model = convae.load(ladder_run, device="cpu")
    images = torch.rand(5, 1, 32, 32)
    groups = model.encode_groups(images)
    assert list(groups) == [g["group"] for g in result["groups"]] and groups["z3 8x8"][0].shape == (5, 8, 8, 8)
    mu, _ = model.encode(images)
    assert mu.shape == (5, 3328) and model.decode(mu).shape == (5, 1, 32, 32)
    assert model.sample(4, seed=0).shape == (4, 1, 32, 32)
    assert run_cli(capsys, "export", str(ladder_run), "--format", "torchscript", "--out", str(tmp_path / "x"))[0] == 0
    decoder = torch.jit.load(str(tmp_path / "x" / "decoder.pt"))
    torch.testing.assert_close(decoder(mu), model.decode(mu), rtol=1e-4, atol=1e-5)


def test_ladder_options_that_cannot_apply_are_refused(tmp_path, idx_dir, capsys):
    base = ["train", "--model", "ladder", "--data-dir", str(idx_dir), "--device", "cpu", "--quiet", "--out",
            str(tmp_path / "run")]
    code, _, err = run_cli(capsys, *base, "--encoder", "conv")
    assert code == 2 and "reads images with its own bottom-up path" in err



def test_a_ladder_trains_on_the_importance_weighted_bound_with_its_own_densities():
    """--iw-train takes any model: the hierarchy's K samples go through its own log_weight_terms; the logged KL is
    the samples' mean of log q - log p (its closed form needs the one-sample top-down pass)."""
    from convae.objectives import Objective, training_loss

    torch.manual_seed(0)
    model = build_model("ladder")
    x = torch.rand(4, 1, 32, 32).round()
    loss, terms = training_loss(model, x, Objective(iw_samples=3))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(terms).all()
    assert terms[0] <= terms[1] + terms[2] + 1e-3  # the IW bound (K = 3) is no looser than this ELBO estimate
    assert all(p.grad is not None for p in model.encoder.parameters())


def test_a_conditional_ladder_samples_the_class_it_is_given():
    model = build_model("ladder", classes=3).eval()
    labels = torch.tensor([0, 2, 1])
    with torch.no_grad():
        out = model(torch.rand(3, 1, 32, 32), labels)
        assert out.logits.shape == (3, 1, 32, 32)
        assert model.sample(3, generator=torch.Generator().manual_seed(0), labels=labels).shape == (3, 1, 32, 32)

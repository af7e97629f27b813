import math

import torch

from convae.objectives import LOGIT_BOUND, bernoulli_entropy_floor, bernoulli_nll, gaussian_kl, neg_elbo, seed_formula_float32


def test_neg_elbo_matches_a_hand_computation():
    # Two images of 2 pixels (shape 2 x 1 x 1 x 2), a 1-D latent.
    logits = torch.tensor([[[[0.0, 2.0]]], [[[-1.0, 3.0]]]], dtype=torch.float64)
    x = torch.tensor([[[[1.0, 0.25]]], [[[0.0, 1.0]]]], dtype=torch.float64)
    mu = torch.tensor([[0.5], [-1.0]], dtype=torch.float64)
    sigma = torch.tensor([[1.0], [0.5]], dtype=torch.float64)

    def bce(l, t):
        y = 1 / (1 + math.exp(-l))
        return -(t * math.log(y) + (1 - t) * math.log(1 - y))

    nll = [bce(0.0, 1.0) + bce(2.0, 0.25), bce(-1.0, 0.0) + bce(3.0, 1.0)]
    kl = [0.5 * (0.25 + 1.0 - math.log(1e-8 + 1.0) - 1), 0.5 * (1.0 + 0.25 - math.log(1e-8 + 0.25) - 1)]
    loss = neg_elbo(logits, x, mu, sigma)
    assert math.isclose(loss.likelihood.item(), sum(nll) / 2, rel_tol=1e-12)
    assert math.isclose(loss.kl.item(), sum(kl) / 2, rel_tol=1e-12)
    assert math.isclose(loss.total.item(), (sum(nll) + sum(kl)) / 2, rel_tol=1e-12)
    # and the seed's own formula (clip on probabilities) gives the same in float64
    assert torch.allclose(bernoulli_nll(logits, x), seed_formula_float32(torch.sigmoid(logits), x), rtol=1e-12)


def test_logit_clip_equals_the_seeds_probability_clip():
    assert math.isclose(1 / (1 + math.exp(-LOGIT_BOUND)), 1 - 1e-8, rel_tol=1e-15)
    logits = torch.tensor([[-40.0, -18.0, 0.3, 18.0, 40.0]], dtype=torch.float64)
    x = torch.tensor([[0.2, 0.9, 0.5, 0.1, 0.7]], dtype=torch.float64)
    assert torch.allclose(bernoulli_nll(logits, x), seed_formula_float32(torch.sigmoid(logits), x), rtol=1e-9)


def test_logits_loss_stays_finite_where_the_seed_formula_overflows_in_float32():
    logits = torch.tensor([[30.0, -30.0, 5.0]], dtype=torch.float32)
    x = torch.tensor([[0.5, 0.5, 0.5]], dtype=torch.float32)
    seed = seed_formula_float32(torch.sigmoid(logits), x)
    assert torch.isinf(seed).all()  # 1 - 1e-8 == 1.0 in float32, so log(1 - y) = -inf
    ours = bernoulli_nll(logits, x)
    assert torch.isfinite(ours).all()
    expected = 0.5 * LOGIT_BOUND + math.log1p(math.exp(-LOGIT_BOUND))  # softplus(l) - x l at l = +-bound, x = 0.5
    assert math.isclose(ours.item(), 2 * expected + (5.0 + math.log1p(math.exp(-5.0)) - 2.5), rel_tol=1e-5)


def test_gradients_are_finite_in_float32_at_saturation():
    logits = torch.tensor([[50.0, -50.0, 1.0]], requires_grad=True)
    bernoulli_nll(logits, torch.tensor([[0.3, 0.6, 0.5]])).sum().backward()
    assert torch.isfinite(logits.grad).all()
    assert logits.grad[0, 0] == 0 and logits.grad[0, 1] == 0  # clipped, as the seed's clip has zero gradient


def test_kl_is_zero_for_the_prior_up_to_the_seeds_epsilon():
    kl = gaussian_kl(torch.zeros(2, 3), torch.ones(2, 3))
    assert torch.allclose(kl, torch.full((2,), -1.5 * math.log(1 + 1e-8)), atol=1e-7)


def test_entropy_floor_is_the_minimum_of_the_likelihood_term():
    x = torch.tensor([[0.0, 0.25, 0.5, 1.0]], dtype=torch.float64)
    floor = bernoulli_entropy_floor(x)
    h = lambda p: -(p * math.log(p) + (1 - p) * math.log(1 - p))  # noqa: E731
    assert math.isclose(floor.item(), h(0.25) + h(0.5), rel_tol=1e-12)
    best_logits = torch.logit(x.clamp(1e-8, 1 - 1e-8))
    assert bernoulli_nll(best_logits, x).item() >= floor.item() - 1e-6
    assert bernoulli_nll(best_logits + 0.1, x).item() > floor.item()


def test_kl_warmup_weight_at_given_steps():
    from convae.objectives import Objective

    o = Objective(beta=2.0, kl_warmup=100)
    assert [o.kl_weight(s) for s in (0, 25, 50, 100, 1000)] == [0.0, 0.5, 1.0, 2.0, 2.0]
    assert Objective().kl_weight(0) == 1.0 and Objective().plain and not o.plain


def _model_and_batch(name: str = "resize", encoder: str = "conv"):
    from convae.models import build_model

    torch.manual_seed(0)
    model = build_model(name, encoder).eval()
    return model, torch.bernoulli(torch.full((6, 1, 32, 32), 0.2))


def test_weighted_kl_and_free_bits_against_a_hand_computation():
    from convae.objectives import Objective, gaussian_kl, training_loss

    model, x = _model_and_batch()
    torch.manual_seed(5)
    out = model(x)
    nll = model.likelihood.nll(out.logits, x).mean()
    kl_dims = 0.5 * (out.mu ** 2 + out.sigma ** 2 - torch.log(1e-8 + out.sigma ** 2) - 1)
    torch.manual_seed(5)
    loss, terms = training_loss(model, x, Objective(beta=0.5), kl_weight=0.25)
    assert torch.allclose(loss, nll + 0.25 * kl_dims.sum(1).mean(), rtol=1e-6)
    assert torch.allclose(terms, torch.stack([nll + gaussian_kl(out.mu, out.sigma).mean(), nll,
                                              gaussian_kl(out.mu, out.sigma).mean()]), rtol=1e-6)
    torch.manual_seed(5)
    loss, _ = training_loss(model, x, Objective(free_bits=0.3), kl_weight=1.0)
    assert torch.allclose(loss, nll + kl_dims.mean(0).clamp(min=0.3).sum(), rtol=1e-6)
    assert (kl_dims.mean(0) < 0.3).any()  # the clamp did something here


def test_plain_objective_is_the_seeds_loss_bit_for_bit():
    from convae.objectives import Objective, neg_elbo, training_loss

    model, x = _model_and_batch()
    torch.manual_seed(3)
    out = model(x)
    expected = torch.stack(neg_elbo(out.logits, x, out.mu, out.sigma))
    torch.manual_seed(3)
    loss, terms = training_loss(model, x, Objective())
    assert torch.equal(terms, expected) and torch.equal(loss, expected[0])


def test_iw_objective_with_one_sample_is_the_elbo_in_expectation_and_tightens_with_k():
    """K = 1: -log w = NLL + log q - log p, whose mean over samples of z is the ELBO with the analytic KL. Larger K
    gives a smaller (tighter) bound, as Burda et al.'s theorem says."""
    from convae.objectives import Objective, training_loss

    model, x = _model_and_batch("fc", "mlp")  # the objective is the subject here, not the model: the cheapest one
    model = model.double()
    x = x.double()
    torch.manual_seed(0)
    k1 = torch.stack([training_loss(model, x, Objective(iw_samples=1, beta=1.0, kl_warmup=1), 1.0)[1][0]
                      for _ in range(100)]).mean()
    mu, sigma = model.encoder(x)
    torch.manual_seed(1)
    eps = torch.randn(len(x), 200, mu.shape[1], dtype=x.dtype)
    log_px_z, log_pz, log_qz = model.log_weight_terms(x, (mu, sigma), eps)
    single = -(log_px_z + log_pz - log_qz)  # N x 400 one-sample IW bounds
    assert torch.allclose(single.mean(), k1, rtol=3e-3)  # the same expectation: -ELBO
    log_w = -single
    k8 = -(torch.logsumexp(log_w.view(len(x), 25, 8), 2) - math.log(8)).mean()
    assert k8 < single.mean()


def test_iw_training_loss_is_the_iw_bound_of_its_samples():
    from convae.objectives import Objective, training_loss

    model, x = _model_and_batch()
    torch.manual_seed(7)
    loss, terms = training_loss(model, x, Objective(iw_samples=5), kl_weight=1.0)
    torch.manual_seed(7)
    mu, sigma = model.encoder(x)
    eps = torch.randn(len(x), 5, mu.shape[1])
    log_px_z, log_pz, log_qz = model.log_weight_terms(x, (mu, sigma), eps)
    bound = -(torch.logsumexp(log_px_z + log_pz - log_qz, 1) - math.log(5)).mean()
    assert torch.allclose(loss, bound, rtol=1e-6) and torch.allclose(terms[0], bound, rtol=1e-6)
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())

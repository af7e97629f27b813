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

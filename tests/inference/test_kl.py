"""KL annealing in fit_prior and the per-coordinate KL record that makes latent collapse visible."""
from __future__ import annotations

import pyro
import pytest
import torch
from torch.distributions import kl_divergence

import bayesmeta as bm
from bayesmeta.guides import PerTaskGuide, PooledGuide
from bayesmeta.inference.fit import _ClosedFormKL, _ScaleSite
from bayesmeta.models import HierarchicalLinearRegression


@pytest.fixture
def tasks():
    return bm.tasks.LinearGaussian(x_dim=2, seed=0).sample(num_tasks=40, support=6, query=0, seed=0)


def _loss(model, guide, tasks, beta, seed=3):
    pyro.set_rng_seed(seed)  # the same draws of phi for every beta
    with _ScaleSite("phi", beta):
        return pyro.infer.Trace_ELBO(max_plate_nesting=2)(model, guide)(tasks)


def test_beta_scales_only_the_kl_term(tasks):
    """-loss(beta) = E_q log p(D | phi) - beta * (E_q log q - E_q log p(phi)): linear in beta."""
    model = HierarchicalLinearRegression(x_dim=2)
    guide = PerTaskGuide(model, num_tasks=40, init_scale=0.5)
    l0, l1, l3 = (_loss(model, guide, tasks, b).item() for b in (0.0, 1.0, 0.3))
    assert l3 == pytest.approx(l0 + 0.3 * (l1 - l0), rel=1e-6)
    assert l1 != pytest.approx(l0)


def test_no_kl_no_gradient_into_the_prior(tasks):
    model = HierarchicalLinearRegression(x_dim=2)
    guide = PerTaskGuide(model, num_tasks=40)  # reads no prior, so the prior enters only via the KL
    _loss(model, guide, tasks, 0.0).backward()
    grads = dict(model.named_parameters())
    for name in ("prior_loc_unconstrained", "prior_scale_unconstrained"):
        assert grads[name].grad is None or grads[name].grad.abs().max() == 0
    assert grads["noise_scale_unconstrained"].grad.abs().max() > 0


def test_annealing_schedule_is_recorded(tasks):
    prior = bm.fit_prior(HierarchicalLinearRegression(x_dim=2), tasks, steps=20, kl_anneal_steps=10,
                         batch_tasks=40, progress=False)
    assert prior.history["kl_weight"][:3] == [0.0, 0.1, 0.2] and prior.history["kl_weight"][10:] == [1.0] * 10
    assert prior.config["kl_anneal_steps"] == 10


def test_kl_per_dim_adds_up_to_the_full_kl_of_a_diagonal_guide(tasks):
    model = HierarchicalLinearRegression(x_dim=2)
    prior = bm.fit_prior(model, tasks, steps=30, record_every=10, batch_tasks=40, progress=False,
                         guide_options={"covariance": "diag"})
    assert prior.history["kl_step"] == [0, 10, 20, 29]
    q = prior.guide.posterior(tasks, torch.arange(40))
    with torch.no_grad():
        p = model.local_prior()
        full = kl_divergence(q, torch.distributions.MultivariateNormal(p.mean, torch.diag(p.variance))).mean()
    assert sum(prior.history["kl_per_dim"][-1]) == pytest.approx(full.item(), rel=1e-4)


def test_a_coordinate_the_data_ignore_shows_zero_kl(tasks):
    """Collapse made visible: a weight whose feature is always 0 learns nothing (q = prior, KL 0)."""
    x = tasks.support.x.clone()
    x[..., 1] = 0.0
    blind = bm.TaskSet.from_arrays(x, tasks.support.y)
    prior = bm.fit_prior(HierarchicalLinearRegression(x_dim=2), blind, guide="exact", steps=5,
                         batch_tasks=40, progress=False)
    w0, w1, bias = prior.history["kl_per_dim"][-1]
    assert abs(w1) < 1e-5 and w0 > 0.1 and bias > 0.1


def test_bad_annealing_options(tasks):
    with pytest.raises(ValueError, match="kl_anneal_steps: expected a non-negative int, got -1"):
        bm.fit_prior(HierarchicalLinearRegression(x_dim=2), tasks, kl_anneal_steps=-1, progress=False)
    with pytest.raises(ValueError, match="record_every: expected a positive int, got 0"):
        bm.fit_prior(HierarchicalLinearRegression(x_dim=2), tasks, record_every=0, progress=False)


def _free_bits_loss(model, guide, tasks, nats, subsample=None, seed=3):
    """The free-bits objective's loss as fit_prior builds it: Pyro's ELBO without the φ site, plus the KL term."""
    pyro.set_rng_seed(seed)
    with _ClosedFormKL("phi") as kl:
        loss = pyro.infer.Trace_ELBO(max_plate_nesting=2)(model, guide)(tasks, subsample)
    return loss + kl.free_bits(nats), kl


@pytest.mark.parametrize("subsample", [None, 10])
def test_free_bits_floors_the_batch_mean_kl_of_each_coordinate(tasks, subsample):
    """loss(λ) - loss(0+) = N Σ_d (max(λ, KL̄_d) - KL̄_d) for the same draw of φ, KL̄_d the mean over the batch."""
    model = HierarchicalLinearRegression(x_dim=2)
    guide = PooledGuide(model, hidden=8, depth=1)
    small, kl = _free_bits_loss(model, guide, tasks, 1e-12, subsample)
    q = kl.fns[0]  # the guide's q of the tasks the plate drew: batch x 1, event D
    assert q.batch_shape == (subsample or len(tasks), 1)
    with torch.no_grad():
        p = model.local_prior()
        mean_kl = kl_divergence(torch.distributions.Normal(q.mean, q.stddev),
                                torch.distributions.Normal(p.mean, p.stddev)).mean((0, 1))  # D
    nats = float(mean_kl.median())  # some coordinates below, some above
    assert (mean_kl < nats).any() and (mean_kl > nats).any()
    floored, _ = _free_bits_loss(model, guide, tasks, nats, subsample)
    expected = len(tasks) * (mean_kl.clamp_min(nats) - mean_kl).sum()
    assert (floored - small).item() == pytest.approx(expected.item(), rel=1e-5, abs=1e-4)


def test_free_bits_kl_matches_the_monte_carlo_kl_in_expectation(tasks):
    """With λ → 0 the closed-form KL replaces Pyro's draw-based log q - log p: equal in expectation, so the
    paired difference of the two losses over 400 draws is within 4 of its standard errors of 0."""
    model = HierarchicalLinearRegression(x_dim=2)
    guide = PooledGuide(model, hidden=8, depth=1)
    diffs = []
    with torch.no_grad():
        for seed in range(400):
            pyro.set_rng_seed(seed)
            plain = pyro.infer.Trace_ELBO(max_plate_nesting=2)(model, guide)(tasks)
            diffs.append((_free_bits_loss(model, guide, tasks, 1e-12, seed=seed)[0] - plain).item())
    diffs = torch.tensor(diffs, dtype=torch.float64)
    assert diffs.std() > 0  # the draw-based KL does vary
    assert abs(diffs.mean()) < 4 * diffs.std() / len(diffs) ** 0.5


def test_free_bits_in_fit_prior(tasks):
    """With λ above every coordinate's KL the KL term is N D λ: raising λ by 1 lowers the recorded objective by N D."""
    runs = {}
    for nats in (50.0, 51.0):
        prior = bm.fit_prior(HierarchicalLinearRegression(x_dim=2), tasks, guide="pooled", steps=3, batch_tasks=10,
                             free_bits=nats, progress=False, guide_options={"hidden": 8, "depth": 1})
        runs[nats] = prior.history["elbo"]
        assert prior.config["free_bits"] == nats
    d = 3  # two weights and the intercept
    for a, b in zip(runs[50.0], runs[51.0]):
        assert a - b == pytest.approx(len(tasks) * d * 1.0, rel=1e-5)


def test_bad_free_bits(tasks):
    with pytest.raises(ValueError, match="free_bits: expected a finite number of nats >= 0, got -1"):
        bm.fit_prior(HierarchicalLinearRegression(x_dim=2), tasks, free_bits=-1, progress=False)
    with pytest.raises(ValueError, match="free_bits: needs a diagonal Gaussian .* the guide's posterior is a "
                                         "MultivariateNormal; use guide='pooled' or 'gradient'"):
        bm.fit_prior(HierarchicalLinearRegression(x_dim=2), tasks, guide="amortized", free_bits=0.5, progress=False)

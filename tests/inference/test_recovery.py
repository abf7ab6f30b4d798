"""fit_prior recovers a known θ, and its type-II ML estimate equals an independent maximizer."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.optimize import minimize

import bayesmeta as bm
from bayesmeta.models import HierarchicalLinearRegression


def _theta(model):
    return {k: getattr(model, k).detach().clone() for k in ("prior_loc", "prior_scale", "noise_scale")}


def _assert_recovers(theta, truth):
    # The tolerances. For 2000 tasks of 20 points the sampling error of the ML estimate is
    # ~0.03 for a prior mean (prior sd 1.3 / sqrt(2000)) and ~2% for the scales, so these bound
    # estimation error with room for the amortization gap, not for luck.
    assert (theta["prior_loc"] - truth["prior_loc"]).abs().max() < 0.1, theta
    assert ((theta["prior_scale"] / truth["prior_scale"] - 1).abs() < 0.1).all(), theta
    assert abs(theta["noise_scale"] / truth["noise_scale"] - 1) < 0.1, theta


def test_amortized_fit_recovers_theta(amortized_prior, linear_family):
    _assert_recovers(_theta(amortized_prior.model), linear_family.theta)


def numpy_type2_ml(tasks):
    """Maximize sum_i log N(y_i; X_i mu, X_i S X_i^T + sigma^2 I) with scipy, written independently."""
    x = tasks.support.x.double().numpy()
    y = tasks.support.y.double().numpy()[..., 0]
    design = np.concatenate([x, np.ones(x.shape[:2] + (1,))], -1)
    n, d = y.shape[1], design.shape[-1]

    def negative_log_marginal(params):
        loc, log_scale, log_noise = params[:d], params[d : 2 * d], params[-1]
        cov = np.einsum("tnd,d,tmd->tnm", design, np.exp(2 * log_scale), design) + np.exp(2 * log_noise) * np.eye(n)
        resid = y - design @ loc
        chol = np.linalg.cholesky(cov)
        white = np.linalg.solve(chol, resid[..., None])[..., 0]
        logdet = 2 * np.log(np.diagonal(chol, axis1=-2, axis2=-1)).sum(-1)
        return 0.5 * ((white**2).sum(-1) + logdet + n * np.log(2 * np.pi)).sum()

    result = minimize(negative_log_marginal, np.zeros(2 * d + 1), method="L-BFGS-B", options={"maxiter": 1000})
    assert result.success, result.message
    return result.x[:d], np.exp(result.x[d : 2 * d]), np.exp(result.x[-1]), -result.fun


def test_exact_guide_is_type2_maximum_likelihood():
    family = bm.tasks.LinearGaussian(x_dim=2, seed=3)
    tasks = family.sample(num_tasks=300, support=8, seed=0, query=0)
    model = HierarchicalLinearRegression(x_dim=2)
    prior = bm.fit_prior(model, tasks, guide="exact", steps=1500, batch_tasks=300, lr=0.05, lr_decay=0.01,
                         seed=0, progress=False)
    loc, scale, noise, log_marginal = numpy_type2_ml(tasks)
    # Full-batch, noiseless objective: both optimizers stop at the same maximum of the same function.
    np.testing.assert_allclose(model.prior_loc.detach().numpy(), loc, atol=2e-3)
    np.testing.assert_allclose(model.prior_scale.detach().numpy(), scale, rtol=5e-3)
    np.testing.assert_allclose(model.noise_scale.item(), noise, rtol=5e-3)
    assert prior.history["elbo"][-1] == pytest.approx(log_marginal, rel=1e-4)


def test_exact_guide_recovers_theta(linear_family, linear_train):
    model = HierarchicalLinearRegression(x_dim=3)
    bm.fit_prior(model, linear_train, guide="exact", steps=1500, batch_tasks=256, lr=2e-2, seed=0, progress=False)
    _assert_recovers(_theta(model), linear_family.theta)


def test_per_task_guide_fits_a_fixed_collection():
    family = bm.tasks.LinearGaussian(x_dim=1, seed=1)
    tasks = family.sample(num_tasks=100, support=20, query=0, seed=0)
    model = HierarchicalLinearRegression(x_dim=1)
    prior = bm.fit_prior(model, tasks, guide="per_task", steps=2000, batch_tasks=100, lr=0.05,
                         num_particles=4, seed=0, progress=False)
    # Its per-task Gaussians approach each task's exact posterior under the learned θ.
    exact = model.exact_posterior(tasks.support)
    q = prior.guide.posterior(tasks, torch.arange(100))
    kl = torch.distributions.kl_divergence(q, exact)
    assert kl.mean() < 0.05, kl.mean()
    # A new task needs svi or nuts: the per-task guide cannot read a support set.
    with pytest.raises(ValueError, match="guide='per_task'"):
        prior.adapt(tasks.support[:3], method="amortized")

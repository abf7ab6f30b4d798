"""adapt(method="importance"): self-normalized importance sampling, checked against the conjugate posterior."""
from __future__ import annotations

import math

import pytest
import torch

import bayesmeta as bm
from bayesmeta.models import HierarchicalLinearRegression


@pytest.fixture(scope="module")
def setup():
    family = bm.tasks.LinearGaussian(x_dim=1, seed=0)
    prior = bm.fit_prior(HierarchicalLinearRegression(x_dim=1), family.sample(200, 10, 10, seed=0), steps=600,
                         lr=1e-2, seed=0, progress=False)
    return prior, family.sample(50, 3, 10, seed=1)


def _log_marginal(model, data: bm.TaskData) -> torch.Tensor:
    """log p(y_S | θ) of the linear model: y ~ N(X μ, X diag(s²) Xᵀ + σ² I)."""
    design = model.features(data.x).double()
    mean = design @ model.prior_loc.double()
    cov = design @ torch.diag(model.prior_scale.double() ** 2) @ design.mT
    cov = cov + model.noise_scale.double() ** 2 * torch.eye(design.shape[1], dtype=torch.float64)
    return torch.distributions.MultivariateNormal(mean, cov).log_prob(data.y[..., 0].double())


def test_draws_match_the_exact_posterior_within_monte_carlo_error(setup):
    prior, test = setup
    exact = prior.adapt(test.support, method="exact")
    post = prior.adapt(test.support, method="importance", num_particles=4096, num_samples=4000, seed=0)
    assert post.draws.shape == (1, 4000, 50, 2) and post.method == "importance"
    ess = post.diagnostics["ess"]
    assert ((ess > 1) & (ess <= 4096 + 1e-3)).all()
    # The resampled mean's error: the importance error (1/ESS) plus the resampling's (1/num_samples).
    sd = exact.covariance.diagonal(dim1=-2, dim2=-1).sqrt()
    z = (post.mean - exact.mean) / (sd * (1 / ess[:, None] + 1 / 4000).sqrt())
    # 100 z-scores: their mean square is 1 ± 0.14; 1.6 is over 4 of those standard deviations.
    assert z.pow(2).mean() < 1.6 and z.abs().max() < 4.5
    # Variances: the relative error of a variance estimate is about sqrt(2 / n_eff).
    n_eff = 1 / (1 / ess + 1 / 4000)
    rel = post.covariance.diagonal(dim1=-2, dim2=-1) / sd**2 - 1
    assert (rel.abs() / (2 / n_eff[:, None]).sqrt()).max() < 5


def test_log_evidence_estimates_the_marginal_likelihood(setup):
    prior, test = setup
    post = prior.adapt(test.support, method="importance", num_particles=4096, seed=1)
    with torch.no_grad():
        truth = _log_marginal(prior.model, test.support)
    error = post.diagnostics["log_evidence"].double() - truth
    # The estimate's relative error is about sqrt(1 / ESS) (~0.03 here), so nats of error the same.
    assert error.abs().mean() < 0.05 and error.abs().max() < 0.2


def test_a_per_task_guide_proposes_from_the_prior_only(setup):
    _, test = setup
    family = bm.tasks.LinearGaussian(x_dim=1, seed=0)
    train = family.sample(30, 10, 10, seed=0)
    prior = bm.fit_prior(HierarchicalLinearRegression(x_dim=1), train, guide="per_task", steps=300, lr=5e-2,
                         progress=False)
    exact = prior.adapt(test.support.head(1), method="exact")
    post = prior.adapt(test.support.head(1), method="importance", num_particles=8192, num_samples=4000)
    sd = exact.covariance.diagonal(dim1=-2, dim2=-1).sqrt()
    z = (post.mean - exact.mean) / (sd * (1 / post.diagnostics["ess"][:, None] + 1 / 4000).sqrt())
    assert z.pow(2).mean() < 1.6


def test_predictions_seeds_and_errors(setup):
    prior, test = setup
    a = prior.adapt(test.support, method="importance", num_particles=256, seed=3)
    b = prior.adapt(test.support, method="importance", num_particles=256, seed=3)
    torch.testing.assert_close(a.draws, b.draws)
    pred = a.predict(test.query.x, num_samples=100, seed=0)
    assert pred.mean.shape == test.query.y.shape and (pred.std > 0).all()
    with pytest.raises(ValueError, match="num_particles"):
        prior.adapt(test.support, method="importance", num_particles=0)
    with pytest.raises(ValueError, match=r"prior_fraction: expected a number in \[0, 1\]"):
        prior.adapt(test.support, method="importance", prior_fraction=1.5)
    with pytest.raises(ValueError, match="widen"):
        prior.adapt(test.support, method="importance", widen=-1.0)
    assert math.isfinite(float(a.diagnostics["log_evidence"].sum()))

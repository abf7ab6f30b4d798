"""TaskPosterior.mixture: the weighted mixture of posteriors of one support set under one model."""
from __future__ import annotations

import copy
import math

import pyro.distributions as dist
import pytest
import torch

import bayesmeta as bm


@pytest.fixture(scope="module")
def support(linear_test):
    return linear_test.support[:40].head(3)


@pytest.fixture(scope="module")
def exact_and_amortized(amortized_prior, support):
    return amortized_prior.adapt(support, method="exact"), amortized_prior.adapt(support, method="amortized")


def _points(post, n=7):
    """``n x T x D`` points where densities are compared: around the posterior's mean, a few stds out."""
    g = torch.Generator().manual_seed(3)
    scale = post.covariance.diagonal(dim1=-2, dim2=-1).sqrt()
    return post.mean + 2 * scale * torch.randn((n,) + post.mean.shape, generator=g)


@pytest.mark.parametrize("weights", [None, (1.0, 3.0)])
def test_density_mean_and_covariance_are_the_mixtures(exact_and_amortized, weights):
    """log q = logsumexp_j(log w_j + log q_j); mean = Σ w_j m_j; covariance by the law of total variance."""
    a, b = exact_and_amortized
    m = bm.TaskPosterior.mixture([a, b], weights=weights)
    w = torch.tensor([0.5, 0.5] if weights is None else [0.25, 0.75])
    assert m.method == "mixture" and m.diagnostics["methods"] == ["exact", "amortized"]
    torch.testing.assert_close(m.diagnostics["weights"], w)
    z = _points(a)
    expected = torch.logsumexp(torch.stack([w[0].log() + a.distribution.log_prob(z),
                                            w[1].log() + b.distribution.log_prob(z)]), 0)
    torch.testing.assert_close(m.distribution.log_prob(z), expected, rtol=1e-5, atol=1e-5)
    mean = w[0] * a.mean + w[1] * b.mean
    torch.testing.assert_close(m.mean, mean)
    outer = lambda d: torch.einsum("td,te->tde", d, d)  # noqa: E731
    covariance = (w[0] * (a.covariance + outer(a.mean - mean)) + w[1] * (b.covariance + outer(b.mean - mean)))
    torch.testing.assert_close(m.covariance, covariance, rtol=1e-4, atol=1e-6)


def test_draws_follow_the_weights(exact_and_amortized):
    """With one posterior shifted far away, the share of draws near it is its weight (binomial tolerance)."""
    a, _ = exact_and_amortized
    far = bm.TaskPosterior(a.model, a.support, "shifted",
                           distribution=dist.MultivariateNormal(a.mean + 1e3, a.distribution.covariance_matrix))
    n = 4000
    phi = bm.TaskPosterior.mixture([a, far], weights=[0.3, 0.7]).sample(n, seed=0)
    share = (phi[..., 0] > a.mean[:, 0] + 500).float().mean(0)  # T shares, each binomial(n, 0.7) / n
    se = math.sqrt(0.7 * 0.3 / n)
    assert (share - 0.7).abs().max() < 5 * se, share


def test_mixtures_diagonals_and_full_gaussians_combine(exact_and_amortized):
    """A two-component mixture, a diagonal Gaussian and a full one: 4 components, full covariance, same density."""
    a, _ = exact_and_amortized
    t, d = a.mean.shape
    g = torch.Generator().manual_seed(1)
    loc = a.mean[:, None] + torch.randn(t, 2, d, generator=g)
    two = dist.MixtureSameFamily(dist.Categorical(logits=torch.tensor([0.0, 1.0]).expand(t, 2)),
                                 dist.Normal(loc, 0.5).to_event(1))
    diagonal = dist.Normal(a.mean - 1, 0.3 * torch.ones(t, d)).to_event(1)
    posts = [bm.TaskPosterior(a.model, a.support, "m", distribution=two),
             bm.TaskPosterior(a.model, a.support, "d", distribution=diagonal), a]
    m = bm.TaskPosterior.mixture(posts, weights=[2, 1, 1])
    assert isinstance(m.distribution.component_distribution, dist.MultivariateNormal)
    assert m.distribution.mixture_distribution.probs.shape == (t, 4)
    z = _points(a)
    expected = torch.logsumexp(torch.stack([math.log(0.5) + two.log_prob(z), math.log(0.25) + diagonal.log_prob(z),
                                            math.log(0.25) + a.distribution.log_prob(z)]), 0)
    torch.testing.assert_close(m.distribution.log_prob(z), expected, rtol=1e-5, atol=1e-4)
    only_diagonal = bm.TaskPosterior.mixture(posts[:2])  # no full covariance among them: stays diagonal
    assert isinstance(only_diagonal.distribution.component_distribution, dist.Independent)


def test_models_loaded_from_separate_files_mix_and_predict(amortized_prior, support, linear_test, tmp_path):
    """Guides saved and loaded apart hold equal, not identical, models: that is the same θ."""
    amortized_prior.save(tmp_path / "a.prior")
    amortized_prior.save(tmp_path / "b.prior")
    posts = [bm.LearnedPrior.load(tmp_path / f"{k}.prior").adapt(support) for k in "ab"]
    m = bm.TaskPosterior.mixture(posts)
    torch.testing.assert_close(m.mean, posts[0].mean)  # a posterior mixed with itself is itself
    torch.testing.assert_close(m.covariance, posts[0].covariance, rtol=1e-4, atol=1e-6)
    pred = m.predict(linear_test.query.x[:40], num_samples=50, seed=0)
    assert pred.mean.shape == (40, 50, 1) and torch.isfinite(pred.std).all()
    assert m.to_inference_data(num_samples=200).posterior["phi"].shape[:2] == (1, 200)


def test_draws_pool_as_chains(exact_and_amortized):
    a, _ = exact_and_amortized
    draws = [a.sample(30, seed=s)[None] for s in (0, 1, 2)]
    posts = [bm.TaskPosterior(a.model, a.support, "nuts", draws=x) for x in draws]
    m = bm.TaskPosterior.mixture(posts)
    torch.testing.assert_close(m.draws, torch.cat(draws))
    with pytest.raises(ValueError, match=r"weights: draws are pooled only with equal weights"):
        bm.TaskPosterior.mixture(posts, weights=[1, 2, 3])


def test_bad_input_names_the_argument(amortized_prior, exact_and_amortized, linear_test):
    a, b = exact_and_amortized
    with pytest.raises(ValueError, match=r"posteriors: expected a list of two or more TaskPosterior, got list of 1"):
        bm.TaskPosterior.mixture([a])
    with pytest.raises(TypeError, match=r"posteriors\[1\]: expected a TaskPosterior, got Tensor"):
        bm.TaskPosterior.mixture([a, a.mean])
    other = amortized_prior.adapt(linear_test.support[:40].head(4))
    with pytest.raises(ValueError, match=r"posteriors\[1\]: expected a posterior of the same support set"):
        bm.TaskPosterior.mixture([a, other])
    model = copy.deepcopy(a.model)
    with torch.no_grad():
        next(model.parameters()).add_(0.1)
    moved = bm.TaskPosterior(model, a.support, "exact", distribution=a.distribution)
    with pytest.raises(ValueError, match=r"posteriors\[1\]: expected a model with the same θ"):
        bm.TaskPosterior.mixture([a, moved])
    hyper = [bm.TaskPosterior(a.model, a.support, "exact", distribution=a.distribution,
                              diagnostics={"theta": {"tau": torch.tensor(v)}}) for v in (1.0, 2.0)]
    with pytest.raises(ValueError, match=r"posteriors\[1\]: computed under other hyperprior values θ"):
        bm.TaskPosterior.mixture(hyper)
    drawn = bm.TaskPosterior(a.model, a.support, "nuts", draws=a.sample(10, seed=0)[None])
    with pytest.raises(ValueError, match=r"posteriors: expected all distributions or all draws"):
        bm.TaskPosterior.mixture([a, drawn])
    for weights in ([1.0], [1.0, -1.0], [1.0, float("nan")]):
        with pytest.raises(ValueError, match=r"weights: expected 2 positive finite numbers"):
            bm.TaskPosterior.mixture([a, b], weights=weights)
    odd = bm.TaskPosterior(a.model, a.support, "odd", distribution=dist.Normal(a.mean, 1.0))
    with pytest.raises(ValueError, match=r"posteriors\[1\]: expected a Gaussian, diagonal Gaussian or mixture"):
        bm.TaskPosterior.mixture([a, odd])

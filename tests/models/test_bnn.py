"""HierarchicalBNN: every task's own network, batched, against a per-task reference; and it learns."""
from __future__ import annotations

import math

import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from torch import nn
from torch.func import functional_call

import bayesmeta as bm
from bayesmeta.evaluation import mse
from bayesmeta.guides.base import global_latent_sites
from bayesmeta.models import HierarchicalBNN


def test_batched_networks_match_a_per_task_loop():
    """Reference: a real nn.Sequential 1-40-40-1 per (particle, task), its weights taken from phi."""
    model = HierarchicalBNN()
    phi, x = torch.randn(3, 4, model.phi_dim) * 0.3, torch.randn(4, 6, 1)
    net = nn.Sequential(nn.Linear(1, 40), nn.ReLU(), nn.Linear(40, 40), nn.ReLU(), nn.Linear(40, 1))
    batched = model.network(phi, x)
    for p in range(3):
        for t in range(4):
            params, start = {}, 0
            for name, param in net.named_parameters():
                # nn.Linear stores weight as out x in; the model stores in x out (x @ W).
                count = param.numel()
                block = phi[p, t, start : start + count]
                params[name] = block.view(param.shape[1], param.shape[0]).T if name.endswith("weight") else block
                start += count
            torch.testing.assert_close(batched[p, t], functional_call(net, params, (x[t],)), rtol=1e-5, atol=1e-5)


def test_phi_names_and_prior():
    model = HierarchicalBNN(hidden=(3,))
    assert model.phi_dim == 1 * 3 + 3 + 3 * 1 + 1 and model.phi_names[0] == "layer0.weight[0]"
    assert model.local_prior().event_shape == (model.phi_dim,)


def test_it_learns_a_prior_over_networks():
    """A short fit: 5 support points must beat the prior predictive by a margin of 4 standard errors."""
    family = bm.tasks.Sinusoid()
    train = family.sample(num_tasks=2000, support=10, query=10, seed=0)
    test = family.sample(num_tasks=200, support=5, query=50, seed=1)
    model = HierarchicalBNN()
    prior = bm.fit_prior(model, train, guide="pooled", steps=600, batch_tasks=64, lr=2e-3, kl_anneal_steps=200,
                         record_every=100, seed=0, progress=False, guide_options={"hidden": 64})
    errors = {}
    for shots in (0, 5):
        pred = prior.adapt(test.support.head(shots)).predict(test.query.x, num_samples=30, seed=0)
        errors[shots] = mse(pred.mean, test.query.y, test.query.mask)
    gain = errors[0] - errors[5]
    assert gain.mean() > 4 * gain.std() / len(gain) ** 0.5, (errors[0].mean(), errors[5].mean())


def test_set_noise_holds_the_scale_through_a_gradient_guide_fit():
    model = HierarchicalBNN(hidden=(4,), init_scale=0.05)
    model.set_noise(0.05)
    phi, x = torch.randn(2, 3, model.phi_dim), torch.randn(3, 5, 1)
    torch.testing.assert_close(model.likelihood(phi, x).base_dist.scale.expand(2, 3, 5, 1), torch.full((2, 3, 5, 1), 0.05))
    tasks = bm.tasks.Sinusoid().sample(num_tasks=16, support=5, query=5, seed=0)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    bm.fit_prior(model, tasks, guide="gradient", steps=3, batch_tasks=8, lr=1e-2, fixed=model.noise_parameters,
                 progress=False, guide_options={"steps": 2})
    for name, p in model.named_parameters():
        assert torch.equal(before[name], p.detach()) == (name == "noise_scale_unconstrained"), name
    with pytest.raises(ValueError, match="scale: expected a finite number above noise_floor=0.01, got 0.01"):
        model.set_noise(0.01)


@pytest.mark.parametrize("hidden, y_dim", [((5, 4), 1), ((3,), 2)])
def test_exact_output_design_is_the_output_layer(hidden, y_dim):
    """offset + design @ w must be the network for any φ = (u, w), and w must be the output layer's coordinates."""
    model = HierarchicalBNN(hidden=hidden, y_dim=y_dim, exact_output=True)
    assert model.linear_dim == hidden[-1] * y_dim + y_dim
    last = len(hidden)
    assert all(name.startswith(f"layer{last}.") for name in model.phi_names[-model.linear_dim :])
    assert not model.phi_names[-model.linear_dim - 1].startswith(f"layer{last}.")
    phi, x = torch.randn(3, 2, model.phi_dim, dtype=torch.float64), torch.randn(2, 6, 1, dtype=torch.float64)
    free, w = phi[..., : -model.linear_dim], phi[..., -model.linear_dim :]
    offset, design, scale = model.double().linear_design(free, x)
    assert design.shape == (3, 2, 6, y_dim, model.linear_dim)
    torch.testing.assert_close(offset + (design @ w[..., None, :, None]).squeeze(-1), model.network(phi, x))
    torch.testing.assert_close(scale, model.noise_scale.expand(3, 2, 6, y_dim))
    torch.testing.assert_close(model.hidden_features(free, x), model.hidden_features(phi, x))


def test_exact_output_layer_posterior_is_bayesian_linear_regression_on_the_hidden_features():
    """p(w | u, D) written out by hand (Bishop 2006, eq. 3.50-3.51) on the task's last hidden layer, with the
    output weights and the bias as columns: the model's design must give the same mean and covariance."""
    from bayesmeta.guides.linear import linear_posterior

    model = HierarchicalBNN(hidden=(6, 4), exact_output=True).double()
    with torch.no_grad():
        model.prior_scale = torch.rand(model.phi_dim, dtype=torch.float64) + 0.5
        model.prior_loc = torch.randn(model.phi_dim, dtype=torch.float64)
    tasks = bm.tasks.Sinusoid(noise_std=0.3).sample(num_tasks=3, support=7, query=1, seed=0).to(torch.float64)
    free = torch.randn(3, model.phi_dim - model.linear_dim, dtype=torch.float64)
    posterior = linear_posterior(model, free, tasks.support)
    m0, s0 = model.prior_loc[-model.linear_dim :], model.prior_scale[-model.linear_dim :]
    sigma = model.noise_scale.item()
    for t in range(3):
        h = model.hidden_features(free[t : t + 1], tasks.support.x[t : t + 1])[0]  # N x 4
        design = torch.cat([h, torch.ones(len(h), 1, dtype=h.dtype)], -1)  # [W, b]
        precision = torch.diag(s0**-2) + design.T @ design / sigma**2
        cov = torch.linalg.inv(precision)
        mean = cov @ (m0 / s0**2 + design.T @ tasks.support.y[t, :, 0] / sigma**2)
        torch.testing.assert_close(posterior.mean[t], mean)
        torch.testing.assert_close(posterior.covariance_matrix[t], cov)


def test_exact_output_fits_adapts_saves_and_rejects_what_it_cannot_do(tmp_path):
    family = bm.tasks.Sinusoid(noise_std=0.3)
    train, test = family.sample(num_tasks=64, support=10, query=5, seed=0), family.sample(num_tasks=8, support=5, query=9, seed=1)
    prior = bm.fit_prior(HierarchicalBNN(hidden=(8, 8), exact_output=True), train, guide="pooled", steps=5,
                         batch_tasks=16, seed=0, progress=False)
    post = prior.adapt(test.support)
    assert type(post.distribution).__name__ == "ConditionallyGaussian"
    pred = post.predict(test.query.x, num_samples=4, seed=0)
    assert pred.mean.shape == pred.std.shape == (8, 9, 1) and bool(torch.isfinite(pred.std).all())
    prior.save(tmp_path / "exact.prior")
    loaded = bm.LearnedPrior.load(tmp_path / "exact.prior")
    assert loaded.model.exact_output and loaded.model.linear_dim == prior.model.linear_dim == 9
    torch.testing.assert_close(loaded.adapt(test.support).predict(test.query.x, num_samples=4, seed=0).mean, pred.mean)
    assert bool(torch.isfinite(bm.diagnostics.entropy(post).value).all())
    assert post.to_inference_data().posterior["phi"].shape[-1] == prior.model.phi_dim
    for method, options in (("svi", {"steps": 3}), ("importance", {"num_particles": 16})):
        refined = prior.adapt(test.support, method=method, **options).predict(test.query.x, num_samples=4, seed=0)
        assert bool(torch.isfinite(refined.mean).all() and (refined.std > 0).all()), method
    with pytest.raises(ValueError, match="gradient.*linear_dim=9"):
        bm.fit_prior(HierarchicalBNN(hidden=(8, 8), exact_output=True), train, guide="gradient", steps=1, progress=False)
    with pytest.raises(ValueError, match="exact_output: expected True or False, got 'yes'"):
        HierarchicalBNN(exact_output="yes")


def test_hyperprior_sites_are_the_documented_distributions():
    model = HierarchicalBNN(hidden=(3,), init_scale=0.2, hyperprior=True, hyper_loc_sd=0.5, hyper_log_scale_sd=2.0)
    assert global_latent_sites(model) == ["prior_loc", "prior_scale"]
    assert [name for name, _ in model.named_parameters()] == ["noise_scale_unconstrained"]
    trace = poutine.trace(model).get_trace(bm.tasks.Sinusoid().sample(num_tasks=2, support=3, query=0, seed=0))
    loc, scale = trace.nodes["prior_loc"], trace.nodes["prior_scale"]
    # The hyperprior's centre is the initial draw of the model without one (same init_seed).
    centre = HierarchicalBNN(hidden=(3,), init_scale=0.2).prior_loc.detach()
    expected = (dist.Normal(centre, 0.5).log_prob(loc["value"]).sum()
                + dist.Normal(math.log(0.2) - 2.0**2 / 2, 2.0).log_prob(scale["value"].log()).sum()
                - scale["value"].log().sum())
    torch.testing.assert_close(loc["fn"].log_prob(loc["value"]) + scale["fn"].log_prob(scale["value"]), expected)
    # φ's prior in the same trace is N(prior_loc, diag prior_scale²) at the drawn values.
    phi = trace.nodes["phi"]
    torch.testing.assert_close(phi["fn"].log_prob(phi["value"]),
                               dist.Normal(loc["value"], scale["value"]).log_prob(phi["value"]).sum(-1))
    for kwargs, message in [({"hyperprior": 1}, "hyperprior: expected True or False, got 1"),
                            ({"hyperprior": True, "hyper_loc_sd": 0.0}, "hyper_loc_sd: expected a finite number > 0"),
                            ({"hyperprior": True, "hyper_log_scale_sd": float("nan")},
                             "hyper_log_scale_sd: expected a finite number > 0, got nan")]:
        with pytest.raises(ValueError, match=message):
            HierarchicalBNN(**kwargs)


def test_hyperprior_posterior_centres_on_the_type_ii_ml_estimate_of_a_network_without_hidden_layers(
        linear_tasks, linear_type_ii_ml):
    """With no hidden layers the network is linear regression (weights, then bias), the model
    HierarchicalLinearRegression, whose type-II ML θ the exact guide finds: with 400 tasks q(μ) must centre there."""
    _, tasks = linear_tasks
    model = HierarchicalBNN(x_dim=2, hidden=(), init_scale=1.0, hyperprior=True)
    prior = bm.fit_prior(model, tasks, guide="amortized", steps=1000, batch_tasks=64, lr=2e-2, seed=0, progress=False)
    theta = prior.guide.theta_point()
    ml = linear_type_ii_ml
    ml_loc, ml_scale = ml.prior_loc.detach(), ml.prior_scale.detach()
    # q(μ_d) has sd about s_d / sqrt(400) <= 1.5 / 20 = 0.075 and the N(μ0_d, 1) hyperprior pulls its centre toward
    # μ0_d by the fraction var / (var + 1) of the distance, at most 0.0056 * |ML - μ0| (0.008 here); 0.05 bounds that
    # pull plus the inference error well inside q's own width, as for HierarchicalLinearRegression in test_model.
    pull = (ml_scale**2 / 400 / (ml_scale**2 / 400 + 1) * (ml_loc - model.hyper_loc)).abs()
    assert pull.max() < 0.02
    assert (theta["prior_loc"] - ml_loc).abs().max() < 0.05
    # log s_d: q's sd is about 1 / sqrt(2 * 400) = 0.035; 0.1 allows the guide's and the optimizer's error.
    assert (theta["prior_scale"].log() - ml_scale.log()).abs().max() < 0.1
    # σ is a point estimate in both fits, informed by 6400 points: its relative sd is about 1 / sqrt(2 * 6400) = 0.9%.
    torch.testing.assert_close(model.noise_scale.detach(), ml.noise_scale.detach(), rtol=0.03, atol=0.0)


@pytest.mark.parametrize("guide, exact_output", [("pooled", False), ("gradient", False), ("pooled", True)])
def test_hyperprior_fits_adapts_and_saves_with_each_guide(tmp_path, guide, exact_output):
    train = bm.tasks.Sinusoid().sample(num_tasks=32, support=5, query=5, seed=0)
    test = bm.tasks.Sinusoid().sample(num_tasks=3, support=4, query=6, seed=1)
    model = HierarchicalBNN(hidden=(6,), hyperprior=True, exact_output=exact_output)
    centre = model.hyper_loc.clone()
    prior = bm.fit_prior(model, train, guide=guide, steps=5, batch_tasks=16, seed=0, progress=False)
    theta = prior.guide.theta_point()
    # q(μ) moved away from where it started, the hyperprior's centre did not (q's start is a copy of it).
    assert torch.equal(model.hyper_loc, centre) and not torch.equal(theta["prior_loc"], centre)
    assert set(theta) == {"prior_loc", "prior_scale"} and theta["prior_scale"].shape == (model.phi_dim,)
    for method, options in (("amortized", {}), ("svi", {"steps": 3}), ("importance", {"num_particles": 8})):
        pred = prior.adapt(test.support, method=method, **options).predict(test.query.x, num_samples=4, seed=0)
        assert pred.mean.shape == (3, 6, 1) and bool(torch.isfinite(pred.mean).all() and (pred.std > 0).all()), method
    prior.save(tmp_path / "hyper.prior")
    loaded = bm.LearnedPrior.load(tmp_path / "hyper.prior")
    assert loaded.model.hyperprior and set(loaded.guide.theta_point()) == set(theta)
    torch.testing.assert_close(loaded.guide.theta_point()["prior_scale"], theta["prior_scale"])
    torch.testing.assert_close(loaded.adapt(test.support).predict(test.query.x, num_samples=4, seed=0).mean,
                               prior.adapt(test.support).predict(test.query.x, num_samples=4, seed=0).mean)

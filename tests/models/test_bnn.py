"""HierarchicalBNN: every task's own network, batched, against a per-task reference; and it learns."""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import functional_call

import bayesmeta as bm
from bayesmeta.evaluation import mse
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

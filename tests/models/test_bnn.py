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

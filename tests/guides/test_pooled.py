"""PooledGuide: the neural-process encoder is permutation- and padding-invariant, and empty sets get the prior."""
from __future__ import annotations

import torch

import bayesmeta as bm
from bayesmeta.guides import GUIDES, PooledGuide
from bayesmeta.models import NeuralProcessModel


def _guide():
    torch.manual_seed(0)
    model = NeuralProcessModel(latent_dim=3, hidden=16).double()
    return PooledGuide(model, hidden=16).double()


def test_permutation_and_padding_invariant():
    guide = _guide()
    tasks = bm.tasks.Sinusoid().sample(num_tasks=4, support=6, query=0, seed=0).to(torch.float64)
    q = guide.posterior(tasks)
    perm = torch.randperm(6)
    q_perm = guide.posterior(bm.TaskSet.from_arrays(tasks.support.x[:, perm], tasks.support.y[:, perm]))
    torch.testing.assert_close(q_perm.mean, q.mean, rtol=1e-9, atol=1e-9)
    x = torch.cat([tasks.support.x, 50 * torch.randn(4, 2, 1, dtype=torch.float64)], 1)
    y = torch.cat([tasks.support.y, 50 * torch.randn(4, 2, 1, dtype=torch.float64)], 1)
    mask = torch.cat([torch.ones(4, 6, dtype=torch.bool), torch.zeros(4, 2, dtype=torch.bool)], 1)
    q_pad = guide.posterior(bm.TaskSet.from_arrays(x, y, support_mask=mask))
    torch.testing.assert_close(q_pad.variance, q.variance, rtol=1e-9, atol=1e-9)


def test_an_empty_support_gets_the_prior():
    guide = _guide()
    model = guide.model
    model.prior_loc = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)
    tasks = bm.tasks.Sinusoid().sample(num_tasks=3, support=4, query=0, seed=0).to(torch.float64)
    mask = torch.tensor([[True] * 4, [False] * 4, [True, False, False, False]])
    # Task 1 has no points at all (a 0-shot support set, as adapt builds it).
    support = bm.TaskData(tasks.support.x, tasks.support.y, mask)
    q = guide.posterior(bm.TaskSet._trusted(support, support.head(0), None, None))
    torch.testing.assert_close(q.mean[1], model.prior_loc.detach())
    torch.testing.assert_close(q.variance[1], model.prior_scale.detach() ** 2)
    assert not torch.allclose(q.mean[0], model.prior_loc.detach())


def test_registered_for_fit_prior():
    assert GUIDES["pooled"] is PooledGuide


def test_stays_diagonal_through_svi_for_high_dimensional_phi():
    """A 1761-dimensional BNN posterior stays a diagonal Gaussian (no phi_dim^2 matrices) and svi refines it."""
    from bayesmeta.models import HierarchicalBNN

    model = HierarchicalBNN()
    prior = bm.LearnedPrior(model, PooledGuide(model, hidden=16), {}, {})
    support = bm.tasks.Sinusoid().sample(num_tasks=3, support=5, query=0, seed=0).support
    amortized = prior.adapt(support)
    refined = prior.adapt(support, method="svi", steps=30, num_particles=4)
    assert not isinstance(refined.distribution, torch.distributions.MultivariateNormal)
    assert refined.covariance.shape == (3, model.phi_dim, model.phi_dim)
    # svi raises what it optimizes, the ELBO of each task's support (64 draws; measured gain 3e4-6e4 nats).
    from bayesmeta.inference.adapt import log_joint

    def elbo(q):
        torch.manual_seed(0)
        with torch.no_grad():
            phi = q.sample((64,))
            return (log_joint(model, refined.support, phi) - q.log_prob(phi)).mean(0)

    assert (elbo(refined.distribution) > elbo(amortized.distribution)).all()

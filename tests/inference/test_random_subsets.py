"""fit_prior(random_subsets=True): which points a step keeps, that model and guide agree, and that θ is still right."""
from __future__ import annotations

import math

import pytest
import torch
from pyro.infer import Trace_ELBO

import bayesmeta as bm
from bayesmeta.guides import PooledGuide
from bayesmeta.inference.fit import _RandomSubsets, random_point_subsets
from bayesmeta.models import HierarchicalLinearRegression, NeuralProcessModel


def _ragged():
    xs = [torch.randn(n, 1) for n in (3, 7, 1, 0)]
    ys = [torch.randn(n, 1) for n in (3, 7, 1, 0)]
    qx = [torch.randn(n, 1) for n in (2, 0, 4, 5)]
    qy = [torch.randn(n, 1) for n in (2, 0, 4, 5)]
    return bm.TaskSet.from_lists(xs, ys, qx, qy)


def test_subsets_keep_observed_points_only_at_least_one():
    torch.manual_seed(0)
    tasks = _ragged()
    observed = torch.cat([tasks.support.mask, tasks.query.mask], 1)
    for _ in range(200):
        sub = random_point_subsets(tasks)
        keep = torch.cat([sub.support.mask, sub.query.mask], 1)
        assert not (keep & ~observed).any()
        counts = keep.sum(1)
        assert ((counts >= 1) & (counts <= observed.sum(1))).all()
        for before, after in ((tasks.support, sub.support), (tasks.query, sub.query)):
            assert torch.equal(after.x[after.mask], before.x[after.mask])
            assert torch.equal(after.y[after.mask], before.y[after.mask])
            assert (after.x[~after.mask] == 0).all() and (after.y[~after.mask] == 0).all()


def test_subset_sizes_are_uniform_and_points_exchangeable():
    torch.manual_seed(1)
    n, draws = 20, 20000
    one = bm.tasks.Sinusoid().sample(num_tasks=1, support=10, query=10, seed=0)
    copies = one[torch.zeros(draws, dtype=torch.long)]
    sub = random_point_subsets(copies)
    keep = torch.cat([sub.support.mask, sub.query.mask], 1)
    sizes = keep.sum(1)
    counts = torch.bincount(sizes, minlength=n + 1)[1:].double()
    chi2 = ((counts - draws / n) ** 2 / (draws / n)).sum().item()
    assert chi2 < 43.8, chi2  # the 0.999 quantile of chi-square with 19 degrees of freedom
    # Each point is kept with probability E[k] / n = (n + 1) / (2n), whatever its position.
    p = (n + 1) / (2 * n)
    se = math.sqrt(p * (1 - p) / draws)
    assert ((keep.double().mean(0) - p).abs() < 4.5 * se).all()  # 4.5 SE over 20 positions: P(false alarm) ~ 1e-4


def test_model_and_guide_read_the_same_subset():
    tasks = bm.tasks.Sinusoid().sample(num_tasks=50, support=5, query=5, seed=0)
    model = NeuralProcessModel(latent_dim=2, hidden=8)
    guide = PooledGuide(model, hidden=8)
    seen = []

    class Spy(_RandomSubsets):
        def __getitem__(self, index):
            seen.append(super().__getitem__(index))
            return seen[-1]

    spy = Spy(tasks)
    elbo = Trace_ELBO(max_plate_nesting=2)
    for subsample in (10, None):  # minibatch: one shared index tensor; full batch: a new arange per plate
        seen.clear()
        spy._last = None
        elbo.differentiable_loss(model, guide, spy, subsample)
        assert len(seen) >= 2 and all(s is seen[0] for s in seen)
    view = _RandomSubsets(tasks)
    assert view[torch.arange(3)] is view[torch.arange(3)]
    assert view[torch.arange(3)] is not view[torch.arange(1, 4)]


def test_same_seed_same_fit_and_bad_value():
    tasks = bm.tasks.Sinusoid().sample(num_tasks=100, support=5, query=5, seed=0)

    def fit(**kwargs):
        torch.manual_seed(0)  # the decoder's initial weights
        return bm.fit_prior(NeuralProcessModel(latent_dim=2, hidden=8), tasks, guide="pooled", steps=20, batch_tasks=16,
                            seed=3, progress=False, **kwargs)

    assert fit(random_subsets=True).history["elbo"] == fit(random_subsets=True).history["elbo"]
    assert fit(random_subsets=True).history["elbo"] != fit().history["elbo"]
    with pytest.raises(ValueError, match="random_subsets: expected True or False, got 'yes'"):
        fit(random_subsets="yes")


def test_theta_is_recovered_from_random_subsets():
    """The composite likelihood of random subsets is maximized by the true θ too (well-specified model).

    2000 tasks of 20 points, of which a step keeps 10.5 on average: the sampling error of the estimate is about
    prior sd / sqrt(2000) ~ 0.03 for a prior mean (~0.04 with the halved data) and ~2.5% for a scale, so the
    bounds below are about 3-4 standard errors.
    """
    family = bm.tasks.LinearGaussian(x_dim=1, seed=0)
    train = family.sample(num_tasks=2000, support=10, query=10, seed=0)
    model = HierarchicalLinearRegression(x_dim=1)
    bm.fit_prior(model, train, guide="exact", steps=3000, batch_tasks=64, lr=1e-2, seed=0, progress=False,
                 random_subsets=True)
    truth = family.theta
    assert (model.prior_loc.detach() - truth["prior_loc"]).abs().max() < 0.12
    assert ((model.prior_scale.detach() / truth["prior_scale"] - 1).abs() < 0.1).all()
    assert abs(model.noise_scale.item() / truth["noise_scale"].item() - 1) < 0.05

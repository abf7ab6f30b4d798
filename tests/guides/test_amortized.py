"""AmortizedGuide: a permutation-invariant, masked set encoder in natural parameters."""
from __future__ import annotations

import pytest
import torch

import bayesmeta as bm
from bayesmeta.guides import AmortizedGuide, gaussian_from_natural
from bayesmeta.models import HierarchicalLinearRegression, SinusoidModel


@pytest.fixture
def tasks():
    return bm.tasks.LinearGaussian(x_dim=2, seed=0).sample(num_tasks=6, support=7, query=0, seed=0)


def _random_guide(**options):
    """A guide with random weights, in float64 so that reordering a sum is exact to ~1e-12."""
    torch.manual_seed(0)
    model = HierarchicalLinearRegression(x_dim=2).double()
    guide = AmortizedGuide(model, **options).double()
    for p in guide.parameters():  # move away from the near-zero start so the test has teeth
        torch.nn.init.normal_(p, std=0.3)
    return guide


@pytest.mark.parametrize("options", [{}, {"context": True}, {"covariance": "diag"}, {"rank": 3}])
def test_permutation_invariant_and_masked(tasks, options):
    guide = _random_guide(**options)
    tasks = tasks.to(torch.float64)
    q = guide.posterior(tasks)
    perm = torch.randperm(7)
    shuffled = bm.TaskSet.from_arrays(tasks.support.x[:, perm], tasks.support.y[:, perm])
    q_perm = guide.posterior(shuffled)
    torch.testing.assert_close(q_perm.mean, q.mean, rtol=1e-9, atol=1e-9)
    # Padding with junk (masked out) changes nothing.
    padded_x = torch.cat([tasks.support.x, 100 * torch.randn(6, 3, 2, dtype=torch.float64)], 1)
    padded_y = torch.cat([tasks.support.y, 100 * torch.randn(6, 3, 1, dtype=torch.float64)], 1)
    mask = torch.cat([torch.ones(6, 7, dtype=torch.bool), torch.zeros(6, 3, dtype=torch.bool)], 1)
    q_pad = guide.posterior(bm.TaskSet.from_arrays(padded_x, padded_y, support_mask=mask))
    torch.testing.assert_close(q_pad.mean, q.mean, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(q_pad.covariance_matrix, q.covariance_matrix, rtol=1e-9, atol=1e-9)


def test_more_points_never_widen_the_posterior(tasks):
    """Factors add precision: each extra point can only tighten q (without context)."""
    guide = _random_guide()
    support = tasks.to(torch.float64).support
    widths = [guide.posterior(bm.TaskSet(support.head(k))).covariance_matrix.diagonal(dim1=-2, dim2=-1)
              for k in range(1, 8)]
    for before, after in zip(widths[:-1], widths[1:]):
        assert (after <= before * (1 + 1e-9)).all()


def test_diag_covariance_is_diagonal(tasks):
    cov = _random_guide(covariance="diag").posterior(tasks.to(torch.float64)).covariance_matrix
    off = cov - torch.diag_embed(cov.diagonal(dim1=-2, dim2=-1))
    assert off.abs().max() == 0


def test_the_exact_linear_posterior_is_in_the_family(tasks):
    """Setting the skip paths to V = (x, 1)/sigma and t = y/sigma reproduces exact_posterior."""
    model = HierarchicalLinearRegression(x_dim=2)
    guide = AmortizedGuide(model)
    sigma = model.noise_scale.item()
    with torch.no_grad():
        for layer in (guide.factor, guide.target):
            layer.weight.zero_()
            layer.bias.zero_()
        guide.factor_skip.weight.copy_(torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 0]]) / sigma)
        guide.factor_skip.bias.copy_(torch.tensor([0.0, 0, 1.0]) / sigma)
        guide.target_skip.weight.copy_(torch.tensor([[0.0, 0, 1.0]]) / sigma)
        guide.target_skip.bias.zero_()
    exact = model.exact_posterior(tasks.support)
    q = guide.posterior(tasks)
    torch.testing.assert_close(q.mean, exact.mean, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(q.covariance_matrix, exact.covariance_matrix, rtol=1e-4, atol=1e-5)


def test_non_gaussian_prior_gets_a_learned_base():
    class LaplacePrior(SinusoidModel):
        def local_prior(self):
            import pyro.distributions as dist

            return dist.Laplace(self.prior_loc, self.prior_scale).to_event(1)

    guide = AmortizedGuide(LaplacePrior())
    assert {"base_loc_unconstrained", "base_scale_unconstrained"} <= set(dict(guide.named_parameters()))


def test_bad_options():
    with pytest.raises(ValueError, match="covariance: expected 'full' or 'diag', got 'low'"):
        AmortizedGuide(HierarchicalLinearRegression(x_dim=1), covariance="low")
    with pytest.raises(ValueError, match="reads: expected 'all' or 'support'"):
        AmortizedGuide(HierarchicalLinearRegression(x_dim=1), reads="query")


def test_gaussian_from_natural_symmetrizes():
    precision = torch.tensor([[2.0, 0.5 + 1e-7], [0.5, 1.0]])
    q = gaussian_from_natural(torch.tensor([1.0, 1.0]), precision)
    torch.testing.assert_close(q.precision_matrix, q.precision_matrix.mT)

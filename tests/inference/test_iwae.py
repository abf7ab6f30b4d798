"""fit_prior(objective="iwae"): the importance-weighted bound, checked against closed-form marginal likelihoods."""
from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import Trace_ELBO

import bayesmeta as bm
from bayesmeta.guides.exact import ExactGuide
from bayesmeta.inference.fit import _ImportanceWeightedBound
from bayesmeta.models import EightSchools, HierarchicalLinearRegression

WIDEN = 1.5  # the guide of the bound test: the exact posterior with its standard deviations times this


@pytest.fixture
def tasks():
    return bm.tasks.LinearGaussian(x_dim=2, seed=0).sample(num_tasks=100, support=4, query=4, seed=0)


class _WidenedExact(ExactGuide):
    """The exact posterior with every standard deviation multiplied by ``WIDEN``: a guide whose ELBO gap is known."""

    def posterior(self, tasks, index=None):
        exact = super().posterior(tasks, index)
        return dist.MultivariateNormal(exact.loc, scale_tril=exact.scale_tril * WIDEN)


def _log_marginal(model, tasks) -> float:
    """Σ_i log p_θ(D_i): the ELBO of the exact posterior, which has no Monte Carlo error."""
    return -Trace_ELBO(max_plate_nesting=2)(model, ExactGuide(model))(tasks).item()


@pytest.mark.parametrize("guide, random_subsets", [("amortized", False), ("pooled", True), ("gradient", False)])
def test_one_particle_is_the_elbo(tasks, guide, random_subsets):
    """With K = 1 the bound is the ELBO's one-draw estimate: the same draws, so the same fit."""
    fits = [
        bm.fit_prior(HierarchicalLinearRegression(x_dim=2), tasks, guide=guide, steps=8, batch_tasks=16, lr=1e-2,
                     seed=3, progress=False, random_subsets=random_subsets, objective=objective)
        for objective in ("elbo", "iwae")
    ]
    torch.testing.assert_close(torch.tensor(fits[1].history["elbo"]), torch.tensor(fits[0].history["elbo"]))
    torch.testing.assert_close(fits[1].model.prior_loc, fits[0].model.prior_loc)
    assert fits[1].config["objective"] == "iwae" and fits[0].config["objective"] == "elbo"


def test_with_the_exact_posterior_it_is_type_ii_maximum_likelihood(tasks):
    """q = p(φ | D) makes every weight p(D): the bound is log p(D) for any K, and its gradient that of log p(D)."""
    fits = [
        bm.fit_prior(HierarchicalLinearRegression(x_dim=2), tasks, guide="exact", steps=20, batch_tasks=100, lr=1e-2,
                     seed=0, progress=False, objective=objective, num_particles=particles)
        for objective, particles in (("elbo", 1), ("iwae", 8))
    ]
    torch.testing.assert_close(torch.tensor(fits[1].history["elbo"]), torch.tensor(fits[0].history["elbo"]))
    for name in ("prior_loc", "prior_scale", "noise_scale"):
        torch.testing.assert_close(getattr(fits[1].model, name), getattr(fits[0].model, name))


def test_the_bound_climbs_from_the_elbo_to_the_marginal_likelihood(tasks):
    """q = the exact posterior widened by c in each of its d = 3 directions. In q's whitened coordinates the
    log-weight is log p(D) + d log c − (c² − 1) χ²_d / 2, so the ELBO (K = 1) is log p(D) − KL with
    KL = d (c² − 1 − 2 log c) / 2 and a per-task standard deviation (c² − 1) √(d / 2); the weights
    w = p(φ | D) / q(φ) have mean 1, variance v = E w² − 1 and third central moment m₃ = E w³ − 3 E w² + 2, with
    E w² = (c² / √(2c² − 1))^d and E w³ = (c² / √(3 − 2/c²))^d; expanding log of the mean of K weights to
    second order, the K-particle bound is log p(D) − v / (2K) + (m₃ / 3 − 3v² / 4) / K² with standard
    deviation √(v / K) per task. Tolerances: 4 standard deviations of the sum over the T tasks."""
    model = HierarchicalLinearRegression(x_dim=2)
    guide = _WidenedExact(model)
    d, count = model.phi_dim, len(tasks)
    kl = d * (WIDEN**2 - 1 - 2 * math.log(WIDEN)) / 2
    elbo_sd = (WIDEN**2 - 1) * math.sqrt(d / 2)
    second = (WIDEN**2 / math.sqrt(2 * WIDEN**2 - 1)) ** d
    v = second - 1
    m3 = (WIDEN**2 / math.sqrt(3 - 2 / WIDEN**2)) ** d - 3 * second + 2
    log_p = _log_marginal(model, tasks)
    bounds = {}
    with torch.no_grad():
        for k in (1, 16, 1024):
            pyro.set_rng_seed(0)
            bounds[k] = -_ImportanceWeightedBound(model, guide, k)(tasks).item()
    assert abs(bounds[1] - (log_p - count * kl)) < 4 * elbo_sd * math.sqrt(count)
    for k in (16, 1024):
        expected = log_p - count * (v / (2 * k) - (m3 / 3 - 3 * v**2 / 4) / k**2)
        assert abs(bounds[k] - expected) < 4 * math.sqrt(count * v / k), (k, bounds[k], expected)
    # K = 16 and 1024 are 2.3 nats apart in expectation, within their noise: only the ELBO's gap is a clear step.
    assert bounds[1] < bounds[16] and bounds[1024] <= log_p + 4 * math.sqrt(count * v / 1024)


@pytest.mark.parametrize("kwargs, message", [
    ({"objective": "renyi"}, r"objective: expected 'elbo' or 'iwae', got 'renyi'"),
    ({"objective": "iwae", "free_bits": 0.1}, r"objective: 'iwae' .* free_bits=0.1"),
    ({"objective": "iwae", "kl_anneal_steps": 5}, r"objective: 'iwae' .* kl_anneal_steps=5"),
])
def test_bad_options(tasks, kwargs, message):
    with pytest.raises(ValueError, match=message):
        bm.fit_prior(HierarchicalLinearRegression(x_dim=2), tasks, steps=1, progress=False, **kwargs)


def test_a_global_latent_site_is_refused():
    with pytest.raises(ValueError, match="objective: 'iwae' needs every sample site inside the 'tasks' plate; site 'mu'"):
        bm.fit_prior(EightSchools(), bm.tasks.eight_schools(), steps=1, progress=False, objective="iwae")


def test_iwae_fit_on_device(device, tasks):
    """The device-sensitive path: the particle plate, the per-task log-weights and the site check run where θ is."""
    prior = bm.fit_prior(HierarchicalLinearRegression(x_dim=2), tasks, guide="pooled", steps=3, batch_tasks=16,
                         device=device, progress=False, objective="iwae", num_particles=4)
    assert prior.model.prior_loc.device.type == device
    assert len(prior.history["elbo"]) == 3 and all(math.isfinite(v) for v in prior.history["elbo"])

"""HierarchicalLinearRegression: its program, its closed form against NumPy, its log marginal likelihood."""
from __future__ import annotations

import numpy as np
import pyro
import pytest
import torch
from pyro import poutine

import bayesmeta as bm
from bayesmeta.models import HierarchicalLinearRegression


def _set_theta(model, loc, scale, noise):
    model.prior_loc = torch.as_tensor(loc, dtype=torch.float32)
    model.prior_scale = torch.as_tensor(scale, dtype=torch.float32)
    model.noise_scale = torch.tensor(float(noise))


def numpy_posterior(x, y, loc, scale, noise, bias=True):
    """Conjugate posterior of one task, written out independently (float64)."""
    design = np.hstack([x, np.ones((len(x), 1))]) if bias else x
    prior_cov = np.diag(np.asarray(scale, float) ** 2)
    cov = np.linalg.inv(np.linalg.inv(prior_cov) + design.T @ design / noise**2)
    mean = cov @ (np.linalg.inv(prior_cov) @ np.asarray(loc, float) + design.T @ y[:, 0] / noise**2)
    return mean, cov


def numpy_log_marginal(x, y, loc, scale, noise, bias=True):
    """log N(y; X mu, X S X^T + noise^2 I) of one task."""
    design = np.hstack([x, np.ones((len(x), 1))]) if bias else x
    cov = design @ np.diag(np.asarray(scale, float) ** 2) @ design.T + noise**2 * np.eye(len(x))
    resid = y[:, 0] - design @ np.asarray(loc, float)
    _, logdet = np.linalg.slogdet(cov)
    return -0.5 * (resid @ np.linalg.solve(cov, resid) + logdet + len(x) * np.log(2 * np.pi))


@pytest.fixture
def ragged():
    rng = np.random.default_rng(0)
    counts = [1, 4, 7, 2]
    xs = [rng.normal(size=(n, 2)) for n in counts]
    ys = [rng.normal(size=(n, 1)) for n in counts]
    return xs, ys


@pytest.mark.parametrize("bias", [True, False])
def test_exact_posterior_matches_numpy(ragged, bias):
    xs, ys = ragged
    model = HierarchicalLinearRegression(x_dim=2, bias=bias)
    d = model.phi_dim
    loc, scale, noise = np.linspace(-1, 1, d), np.linspace(0.5, 2.0, d), 0.7
    _set_theta(model, loc, scale, noise)
    tasks = bm.TaskSet.from_lists(xs, ys)  # padded, masked
    q = model.exact_posterior(tasks.support)
    for i, (x, y) in enumerate(zip(xs, ys)):
        mean, cov = numpy_posterior(x, y, loc, scale, noise, bias)
        np.testing.assert_allclose(q.mean[i].detach().numpy(), mean, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(q.covariance_matrix[i].detach().numpy(), cov, rtol=1e-4, atol=1e-5)


def test_exact_guide_elbo_is_the_log_marginal_likelihood(ragged):
    xs, ys = ragged
    model = HierarchicalLinearRegression(x_dim=2)
    loc, scale, noise = [0.3, -0.2, 1.0], [1.0, 0.5, 2.0], 0.4
    _set_theta(model, loc, scale, noise)
    tasks = bm.TaskSet.from_lists(xs, ys)
    loss = pyro.infer.Trace_ELBO(max_plate_nesting=2)(model, bm.guides.ExactGuide(model))
    expected = sum(numpy_log_marginal(x, y, loc, scale, noise) for x, y in zip(xs, ys))
    for _ in range(3):  # every sample of the ELBO is exact when q is the posterior
        assert -loss(tasks).item() == pytest.approx(expected, rel=1e-4)


def test_program_shapes_and_masked_points():
    model = HierarchicalLinearRegression(x_dim=3)
    tasks = bm.tasks.LinearGaussian(x_dim=3, seed=0).sample(num_tasks=6, support=4, query=5, seed=0)
    trace = poutine.trace(model).get_trace(tasks, 4)
    assert trace.nodes["phi"]["value"].shape == (4, 1, 4)
    assert trace.nodes["y"]["fn"].batch_shape == (4, 9)
    assert trace.nodes["y"]["mask"].shape == (4, 9)
    assert trace.nodes["tasks"]["value"].shape == (4,)


def test_noise_floor_and_theta_readable():
    model = HierarchicalLinearRegression(x_dim=1, noise_floor=0.01)
    assert set(model.phi_names) == {"w0", "bias"}
    assert model.prior_loc.shape == (2,) and model.prior_scale.shape == (2,) and model.noise_scale.shape == ()
    assert model.init_args == {"x_dim": 1, "bias": True, "noise_floor": 0.01}

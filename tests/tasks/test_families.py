"""Synthetic task families: shapes, determinism, true parameters and Monte Carlo checks of the generative model.

Statistical checks compare a sample statistic with its expectation within 4 standard errors, the
standard error computed from the sample itself (or from the known variance) and the sample size.
"""
from __future__ import annotations

import math

import pytest
import torch

from bayesmeta.tasks import GPFunctions, LinearGaussian, Sinusoid, TaskSet

Z = 4.0  # tolerance in standard errors

FAMILIES = {
    "sinusoid": lambda dtype=torch.float32: Sinusoid(noise_std=0.1, dtype=dtype),
    "linear": lambda dtype=torch.float32: LinearGaussian(x_dim=2, dtype=dtype),
    "gp": lambda dtype=torch.float32: GPFunctions(dtype=dtype),
}
PARAM_SHAPES = {
    "sinusoid": {"amplitude": (6,), "phase": (6,)},
    "linear": {"weights": (6, 3)},
    "gp": {"lengthscale": (6,), "signal_scale": (6,)},
}
X_DIM = {"sinusoid": 1, "linear": 2, "gp": 1}


def _within(estimate: torch.Tensor, expected: torch.Tensor | float, se: torch.Tensor | float) -> bool:
    return bool((torch.as_tensor(estimate - expected).abs() <= Z * torch.as_tensor(se)).all())


# ---------------------------------------------------------------------- contract shared by every family
@pytest.mark.parametrize("name", FAMILIES)
def test_shapes_dtype_and_params(name):
    ts = FAMILIES[name]().sample(num_tasks=6, support=4, query=9, seed=0)
    assert isinstance(ts, TaskSet) and len(ts) == 6
    assert ts.support.x.shape == (6, 4, X_DIM[name]) and ts.support.y.shape == (6, 4, 1)
    assert ts.query.x.shape == (6, 9, X_DIM[name]) and ts.query.y.shape == (6, 9, 1)
    assert ts.support.mask.all() and ts.query.mask.all()
    assert {k: tuple(v.shape) for k, v in ts.params.items()} == PARAM_SHAPES[name]
    for tensor in (ts.support.x, ts.support.y, ts.query.x, ts.query.y, *ts.params.values()):
        assert tensor.dtype == torch.float32
        assert torch.isfinite(tensor).all()


@pytest.mark.parametrize("name", FAMILIES)
def test_float64(name):
    ts = FAMILIES[name](torch.float64).sample(3, 2, 2, seed=0)
    assert ts.dtype == torch.float64 and ts.query.y.dtype == torch.float64
    assert all(v.dtype == torch.float64 for v in ts.params.values())


@pytest.mark.parametrize("name", FAMILIES)
def test_same_seed_same_tasks_different_seed_different_tasks(name):
    family = FAMILIES[name]()
    a, b, c = (family.sample(5, 3, 4, seed=s) for s in (7, 7, 8))
    for get in (lambda t: t.support.x, lambda t: t.support.y, lambda t: t.query.x, lambda t: t.query.y):
        assert torch.equal(get(a), get(b))
        assert not torch.equal(get(a), get(c))
    for key in a.params:
        assert torch.equal(a.params[key], b.params[key]) and not torch.equal(a.params[key], c.params[key])


@pytest.mark.parametrize("name", FAMILIES)
def test_sampling_leaves_the_global_rng_alone(name):
    state = torch.get_rng_state()
    FAMILIES[name]().sample(3, 2, 2, seed=0)
    assert torch.equal(torch.get_rng_state(), state)


@pytest.mark.parametrize("name", FAMILIES)
def test_empty_support_or_query(name):
    family = FAMILIES[name]()
    only_query = family.sample(2, 0, 3, seed=0)
    only_support = family.sample(2, 3, 0, seed=0)
    assert only_query.support.num_points == 0 and only_query.query.num_points == 3
    assert only_support.support.num_points == 3 and only_support.query.num_points == 0


@pytest.mark.parametrize("name", FAMILIES)
def test_support_is_the_first_points_of_a_joint_draw(name):
    family = FAMILIES[name]()
    split, whole = family.sample(4, 3, 5, seed=2), family.sample(4, 0, 8, seed=2)
    assert torch.equal(split.all_points().x, whole.query.x)
    assert torch.equal(split.all_points().y, whole.query.y)


@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize(
    "kwargs, error, fragment",
    [
        (dict(num_tasks=0, support=1, query=1), ValueError, "num_tasks: expected at least 1"),
        (dict(num_tasks=2, support=-1, query=1), ValueError, "support: expected a non-negative"),
        (dict(num_tasks=2, support=1, query=-2), ValueError, "query: expected a non-negative"),
        (dict(num_tasks=2, support=0, query=0), ValueError, "support, query: expected at least one point"),
        (dict(num_tasks=2.0, support=1, query=1), TypeError, "num_tasks: expected an int"),
    ],
)
def test_sample_argument_errors(name, kwargs, error, fragment):
    with pytest.raises(error, match=fragment):
        FAMILIES[name]().sample(seed=0, **kwargs)


# ---------------------------------------------------------------------- Sinusoid
def test_sinusoid_params_in_range_and_noiseless_curve_is_exact():
    family = Sinusoid(amplitude=(0.5, 2.0), phase=(1.0, 3.0), x_range=(-1.0, 4.0))
    ts = family.sample(200, 5, 10, seed=0)
    amp, phase = ts.params["amplitude"], ts.params["phase"]
    assert ((amp >= 0.5) & (amp <= 2.0)).all() and ((phase >= 1.0) & (phase <= 3.0)).all()
    x = ts.all_points().x
    assert ((x >= -1.0) & (x <= 4.0)).all()
    expected = amp[:, None, None] * torch.sin(x - phase[:, None, None])
    assert torch.equal(ts.all_points().y, expected)
    assert torch.equal(Sinusoid.function(x, ts.params), expected)


def test_sinusoid_params_are_uniform():
    ts = Sinusoid().sample(4000, 1, 0, seed=1)
    for key, (low, high) in (("amplitude", (0.1, 5.0)), ("phase", (0.0, math.pi))):
        se = (high - low) / math.sqrt(12 * len(ts))  # sd of U[low, high] over sqrt(n)
        assert _within(ts.params[key].double().mean(), (low + high) / 2, se), key


def test_sinusoid_noise_has_the_requested_std():
    sigma = 0.3
    ts = Sinusoid(noise_std=sigma).sample(500, 10, 10, seed=3)
    residual = (ts.all_points().y - Sinusoid.function(ts.all_points().x, ts.params)).double().flatten()
    sq = residual**2
    assert _within(residual.mean(), 0.0, sigma / math.sqrt(residual.numel()))
    assert _within(sq.mean(), sigma**2, sq.std() / math.sqrt(sq.numel()))


def test_sinusoid_bad_constructor_arguments():
    with pytest.raises(ValueError, match="amplitude: expected finite bounds with low <= high"):
        Sinusoid(amplitude=(5.0, 1.0))
    with pytest.raises(ValueError, match="x_range: expected a \\(low, high\\) pair"):
        Sinusoid(x_range=3.0)
    with pytest.raises(ValueError, match="noise_std: expected a finite number >= 0"):
        Sinusoid(noise_std=-0.1)
    with pytest.raises(TypeError, match="dtype: expected a floating torch.dtype"):
        Sinusoid(dtype=torch.int64)


# ---------------------------------------------------------------------- LinearGaussian
def test_linear_theta_keys_and_shapes():
    family = LinearGaussian(x_dim=3, seed=0)
    assert set(family.theta) == {"prior_loc", "prior_scale", "noise_scale"}
    assert family.phi_dim == 4
    assert family.theta["prior_loc"].shape == (4,) and family.theta["prior_scale"].shape == (4,)
    assert family.theta["noise_scale"].shape == () and float(family.theta["noise_scale"]) == 0.5
    assert ((family.theta["prior_scale"] >= 0.5) & (family.theta["prior_scale"] <= 1.5)).all()
    assert LinearGaussian(x_dim=3, bias=False).phi_dim == 3


def test_linear_prior_drawn_from_constructor_seed():
    a, b, c = LinearGaussian(seed=0), LinearGaussian(seed=0), LinearGaussian(seed=1)
    assert torch.equal(a.theta["prior_loc"], b.theta["prior_loc"])
    assert torch.equal(a.theta["prior_scale"], b.theta["prior_scale"])
    assert not torch.equal(a.theta["prior_loc"], c.theta["prior_loc"])
    given = LinearGaussian(x_dim=1, prior_loc=[1.0, -2.0], prior_scale=torch.tensor([0.1, 0.2]), noise_scale=0.3)
    assert given.theta["prior_loc"].tolist() == [1.0, -2.0]
    assert torch.allclose(given.theta["prior_scale"], torch.tensor([0.1, 0.2]))
    assert torch.isclose(given.theta["noise_scale"], torch.tensor(0.3))
    # the default prior_scale does not depend on whether prior_loc was given
    assert torch.equal(LinearGaussian(seed=0, prior_loc=torch.zeros(4)).theta["prior_scale"], a.theta["prior_scale"])


def test_linear_residuals_are_the_noise():
    family = LinearGaussian(x_dim=2, noise_scale=0.7, seed=0)
    ts = family.sample(1000, 10, 10, seed=1)
    points = ts.all_points()
    mean = family.features(points.x) @ ts.params["weights"][..., None]
    assert torch.allclose(mean, family.function(points.x, ts.params))
    residual = (points.y - mean).double().flatten()
    sq = residual**2
    assert _within(residual.mean(), 0.0, 0.7 / math.sqrt(residual.numel()))
    assert _within(sq.mean(), 0.7**2, sq.std() / math.sqrt(sq.numel()))
    assert _within(residual.std(), 0.7, 0.7 / math.sqrt(2 * residual.numel()))


def test_linear_weights_follow_the_prior():
    family = LinearGaussian(x_dim=3, seed=4)
    w = family.sample(5000, 1, 0, seed=5).params["weights"].double()
    loc, scale = family.theta["prior_loc"].double(), family.theta["prior_scale"].double()
    n = w.shape[0]
    assert _within(w.mean(0), loc, scale / math.sqrt(n))
    # sample variance of Gaussian draws: standard error sqrt(2 / (n - 1)) * scale**2
    assert _within(w.var(0), scale**2, math.sqrt(2 / (n - 1)) * scale**2)


def test_linear_x_is_standard_normal():
    x = LinearGaussian(x_dim=2).sample(500, 10, 0, seed=6).support.x.double().reshape(-1, 2)
    n = x.shape[0]
    assert _within(x.mean(0), torch.zeros(2), 1 / math.sqrt(n))
    assert _within(x.var(0), torch.ones(2), math.sqrt(2 / (n - 1)))


def test_linear_bad_constructor_arguments():
    with pytest.raises(ValueError, match=r"prior_loc: expected shape \(4,\).*got shape \(3,\)"):
        LinearGaussian(x_dim=3, prior_loc=torch.zeros(3))
    with pytest.raises(ValueError, match=r"prior_scale: expected shape \(2,\).*got shape \(2, 1\)"):
        LinearGaussian(x_dim=2, bias=False, prior_scale=torch.ones(2, 1))
    with pytest.raises(ValueError, match="prior_scale: expected every entry > 0"):
        LinearGaussian(x_dim=1, prior_scale=[1.0, 0.0])
    with pytest.raises(ValueError, match="noise_scale: expected a finite number > 0"):
        LinearGaussian(noise_scale=0.0)
    with pytest.raises(ValueError, match="x_dim: expected a positive int"):
        LinearGaussian(x_dim=0)


# ---------------------------------------------------------------------- GPFunctions
def test_gp_params_and_inputs_in_range():
    ts = GPFunctions(lengthscale=(0.2, 0.4), signal_scale=(0.5, 0.7), x_range=(0.0, 1.0)).sample(100, 3, 3, seed=0)
    ell, s = ts.params["lengthscale"], ts.params["signal_scale"]
    assert ((ell >= 0.2) & (ell <= 0.4)).all() and ((s >= 0.5) & (s <= 0.7)).all()
    x = ts.all_points().x
    assert ((x >= 0.0) & (x <= 1.0)).all()


def test_gp_marginal_variance():
    a, b, noise = 0.1, 1.0, 0.02
    family = GPFunctions(signal_scale=(a, b), noise_std=noise)
    ts = family.sample(3000, 5, 5, seed=0)
    y = ts.all_points().y.double().squeeze(-1)
    per_task = (y**2).mean(1)  # independent across tasks; E = E[s^2] + noise^2 + jitter
    expected = (a * a + a * b + b * b) / 3 + noise**2 + family.jitter
    assert _within(per_task.mean(), expected, per_task.std() / math.sqrt(len(per_task)))
    assert _within(y.mean(1).mean(), 0.0, y.mean(1).std() / math.sqrt(len(per_task)))


def test_gp_covariance_matches_the_kernel():
    params = {"lengthscale": torch.tensor([0.5]), "signal_scale": torch.tensor([2.0])}
    x = torch.tensor([[[0.0], [1.0]]])
    k = GPFunctions.covariance(x, x, params)
    assert torch.allclose(k, torch.tensor([[[4.0, 4.0 * math.exp(-2.0)], [4.0 * math.exp(-2.0), 4.0]]]))


def test_gp_bad_constructor_arguments():
    with pytest.raises(ValueError, match="lengthscale: expected positive bounds"):
        GPFunctions(lengthscale=(0.0, 1.0))
    with pytest.raises(ValueError, match="signal_scale: expected bounds >= 0"):
        GPFunctions(signal_scale=(-1.0, 1.0))
    with pytest.raises(ValueError, match="noise_std: expected a finite number >= 0"):
        GPFunctions(noise_std=math.nan)

"""The exact GP posterior predictive: exactness, masking, the prior, calibration, validation.

Exactness is checked against a plain NumPy computation of the textbook formulas (one task, no masks,
``np.linalg.solve`` rather than a Cholesky). Statistical checks compare a mean over tasks with its
target within Z = 4 standard errors, the standard error taken over tasks (points of one task are
correlated through its function, so each task contributes one number: its mean over target points).
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from bayesmeta.inference.posterior import Prediction
from bayesmeta.tasks import GPFunctions, TaskData, gp_posterior_predict

Z = 4.0  # tolerance in standard errors


def _predict(family, context, target_x, params):
    return gp_posterior_predict(family, context, target_x, params["lengthscale"], params["signal_scale"])


def _numpy_gp(x, y, xs, lengthscale, signal, noise_var):
    """Textbook GP regression for one task (Rasmussen & Williams 2006, eq. 2.22-2.24), float64 NumPy."""

    def k(a, b):
        return signal**2 * np.exp(-0.5 * (a[:, None] - b[None, :]) ** 2 / lengthscale**2)

    gram = k(x, x) + noise_var * np.eye(len(x))
    cross = k(x, xs)
    mean = cross.T @ np.linalg.solve(gram, y)
    var = signal**2 - np.einsum("nm,nm->m", cross, np.linalg.solve(gram, cross)) + noise_var
    return mean, np.sqrt(var)


# ---------------------------------------------------------------------- exactness
def test_matches_numpy_for_one_task(device):
    family = GPFunctions(dtype=torch.float64)
    tasks = family.sample(num_tasks=3, support=8, query=15, seed=5)
    pred = _predict(family, tasks.support.to(device), tasks.query.x.to(device), tasks.params)
    assert isinstance(pred, Prediction) and pred.samples is None
    assert pred.mean.shape == (3, 15, 1) and pred.std.shape == (3, 15, 1)
    assert pred.mean.dtype == torch.float64 and pred.mean.device.type == device
    noise_var = family.noise_std**2 + family.jitter
    for i in range(3):
        mean, std = _numpy_gp(
            tasks.support.x[i, :, 0].numpy(), tasks.support.y[i, :, 0].numpy(), tasks.query.x[i, :, 0].numpy(),
            tasks.params["lengthscale"][i].item(), tasks.params["signal_scale"][i].item(), noise_var,
        )
        np.testing.assert_allclose(pred.mean[i, :, 0].cpu().numpy(), mean, rtol=0, atol=1e-9)
        np.testing.assert_allclose(pred.std[i, :, 0].cpu().numpy(), std, rtol=0, atol=1e-9)


def test_float32_inputs_are_solved_in_float64():
    family = GPFunctions()  # float32 tasks
    tasks = family.sample(num_tasks=4, support=20, query=10, seed=6)
    pred32 = _predict(family, tasks.support, tasks.query.x, tasks.params)
    pred64 = _predict(family, tasks.support.to(torch.float64), tasks.query.x.double(), tasks.params)
    assert pred32.mean.dtype == torch.float32 and pred32.std.dtype == torch.float32
    # Only the final cast to float32 differs: a float32 solve of a 20-point RBF gram would lose far more.
    torch.testing.assert_close(pred32.mean.double(), pred64.mean, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(pred32.std.double(), pred64.std, rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------------- masks and the prior
def test_ragged_context_equals_each_task_unpadded():
    family = GPFunctions(dtype=torch.float64)
    tasks = family.sample(num_tasks=3, support=6, query=9, seed=7)
    keep = torch.tensor([[True] * 6, [True, False, True, False, False, True], [False] * 5 + [True]])
    # Junk (NaN, huge values) in the padded slots; the constructor is bypassed so that it stays there.
    x = torch.where(keep[..., None], tasks.support.x, torch.tensor(float("nan"), dtype=torch.float64))
    y = torch.where(keep[..., None], tasks.support.y, torch.tensor(1e6, dtype=torch.float64))
    padded = TaskData(x, y, keep)
    pred = _predict(family, padded, tasks.query.x, tasks.params)
    for i in range(3):
        alone = tasks.support[i]
        observed = keep[i]
        unpadded = TaskData(alone.x[:, observed], alone.y[:, observed], alone.mask[:, observed])
        params = {k: v[i : i + 1] for k, v in tasks.params.items()}
        expected = _predict(family, unpadded, tasks.query.x[i : i + 1], params)
        torch.testing.assert_close(pred.mean[i : i + 1], expected.mean, rtol=0, atol=1e-10)
        torch.testing.assert_close(pred.std[i : i + 1], expected.std, rtol=0, atol=1e-10)


def test_no_context_is_the_prior():
    family = GPFunctions(dtype=torch.float64)
    tasks = family.sample(num_tasks=4, support=5, query=12, seed=8)
    prior_std = torch.sqrt(tasks.params["signal_scale"] ** 2 + family.noise_std**2 + family.jitter)
    all_masked = TaskData(tasks.support.x, tasks.support.y, torch.zeros(4, 5, dtype=torch.bool))
    for context in (tasks.support.head(0), all_masked):
        pred = _predict(family, context, tasks.query.x, tasks.params)
        torch.testing.assert_close(pred.mean, torch.zeros(4, 12, 1, dtype=torch.float64), rtol=0, atol=0)
        torch.testing.assert_close(pred.std, prior_std[:, None, None].expand(4, 12, 1), rtol=0, atol=1e-12)


def test_context_point_is_predicted_to_within_the_noise():
    # A target at a context input: the posterior of f there has variance below the noise's, so the
    # predictive std lies between sigma_n and sqrt(2) sigma_n.
    family = GPFunctions(dtype=torch.float64)
    tasks = family.sample(num_tasks=20, support=10, query=1, seed=9)
    pred = _predict(family, tasks.support, tasks.support.x, tasks.params)
    sigma_n = math.sqrt(family.noise_std**2 + family.jitter)
    assert bool((pred.std >= sigma_n - 1e-12).all()) and bool((pred.std <= math.sqrt(2) * sigma_n + 1e-12).all())


# ---------------------------------------------------------------------- calibration under the family
@pytest.mark.parametrize("shots", [0, 3, 10, 20])
def test_standardized_residuals_are_standard_normal(shots):
    family = GPFunctions(dtype=torch.float64)
    tasks = family.sample(num_tasks=2000, support=shots, query=20, seed=100 + shots)
    pred = _predict(family, tasks.support, tasks.query.x, tasks.params)
    z = ((tasks.query.y - pred.mean) / pred.std).squeeze(-1)  # T x N, each exactly N(0, 1) marginally
    for per_task, target in ((z.mean(-1), 0.0), ((z**2).mean(-1), 1.0)):
        mean, se = per_task.mean().item(), (per_task.std() / math.sqrt(len(per_task))).item()
        assert abs(mean - target) <= Z * se, (shots, target, mean, se)


def test_true_kernel_beats_a_wrong_one():
    # The floor: no other predictor has a higher expected log density; a kernel with the lengthscale
    # halved or doubled scores lower, on the same tasks, by many standard errors of the paired difference.
    family = GPFunctions(dtype=torch.float64)
    tasks = family.sample(num_tasks=500, support=10, query=20, seed=11)
    y = tasks.query.y

    def loglik(params):
        pred = _predict(family, tasks.support, tasks.query.x, params)
        return torch.distributions.Normal(pred.mean, pred.std).log_prob(y).mean((1, 2))

    true = loglik(tasks.params)
    for factor in (0.5, 2.0):
        wrong = loglik({**tasks.params, "lengthscale": factor * tasks.params["lengthscale"]})
        diff = true - wrong
        assert diff.mean() > Z * diff.std() / math.sqrt(len(diff)), (factor, diff.mean().item())


# ---------------------------------------------------------------------- validation at the boundary
@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"family": "gp"}, TypeError, "family: expected a bayesmeta.tasks.GPFunctions"),
        ({"context": torch.zeros(2, 3, 1)}, TypeError, "context: expected a TaskData"),
        ({"target_x": torch.zeros(3, 4, 1)}, ValueError, "target_x: expected shape 2 x num_target x 1"),
        ({"target_x": torch.zeros(2, 4, 1, dtype=torch.long)}, TypeError, "target_x: expected a floating-point"),
        ({"lengthscale": torch.ones(3)}, ValueError, r"lengthscale: expected a tensor of shape \(2,\)"),
        ({"signal_scale": 1.0}, ValueError, r"signal_scale: expected a tensor of shape \(2,\)"),
        ({"lengthscale": torch.tensor([0.2, 0.0])}, ValueError, "lengthscale: expected every entry > 0"),
        ({"signal_scale": torch.tensor([0.2, float("nan")])}, ValueError, "signal_scale: expected finite"),
    ],
)
def test_invalid_arguments(kwargs, error, match):
    tasks = GPFunctions().sample(num_tasks=2, support=3, query=4, seed=0)
    args = {
        "family": GPFunctions(), "context": tasks.support, "target_x": tasks.query.x,
        "lengthscale": tasks.params["lengthscale"], "signal_scale": tasks.params["signal_scale"], **kwargs,
    }
    with pytest.raises(error, match=match):
        gp_posterior_predict(**args)

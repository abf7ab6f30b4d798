"""fit_prior: determinism, history, its errors, and stopping on a non-finite ELBO."""
from __future__ import annotations

import pyro.distributions as dist
import pytest
import torch

import bayesmeta as bm
from bayesmeta.models import HierarchicalLinearRegression, SinusoidModel


@pytest.fixture
def small():
    return bm.tasks.LinearGaussian(x_dim=2, seed=0).sample(num_tasks=100, support=5, query=5, seed=0)


def _fit(tasks, seed, steps=30, **kwargs):
    model = HierarchicalLinearRegression(x_dim=2)
    return bm.fit_prior(model, tasks, steps=steps, batch_tasks=16, lr=1e-2, seed=seed, progress=False, **kwargs)


def test_same_seed_same_numbers(small):
    a, b, c = _fit(small, seed=1), _fit(small, seed=1), _fit(small, seed=2)
    assert a.history["elbo"] == b.history["elbo"]
    for x, y in zip(a.model.state_dict().values(), b.model.state_dict().values()):
        assert torch.equal(x, y)
    assert a.history["elbo"] != c.history["elbo"]
    post_a = a.adapt(small.support, method="svi", steps=20, seed=3)
    post_b = b.adapt(small.support, method="svi", steps=20, seed=3)
    assert torch.equal(post_a.mean, post_b.mean)
    pred_a, pred_b = (p.predict(small.query.x, num_samples=10, seed=4) for p in (post_a, post_b))
    assert torch.equal(pred_a.samples, pred_b.samples) and torch.equal(pred_a.std, pred_b.std)


def test_history_and_config(small):
    prior = _fit(small, seed=0, steps=12)
    assert len(prior.history["elbo"]) == 12 and all(isinstance(v, float) for v in prior.history["elbo"])
    assert prior.config["guide"] == "amortized" and prior.config["steps"] == 12 and prior.config["num_tasks"] == 100
    assert prior.config["seconds"] > 0


def test_progress_bar_shows_the_elbo(small, capsys):
    _fit_with_bar = bm.fit_prior(HierarchicalLinearRegression(x_dim=2), small, steps=3, batch_tasks=16, progress=True)
    err = capsys.readouterr().err
    assert "fit_prior" in err and "elbo_per_task" in err
    assert len(_fit_with_bar.history["elbo"]) == 3


class _Poisoned(HierarchicalLinearRegression):
    """Returns NaN from its likelihood after ``poison_after`` training calls (calls with gradients)."""

    def __init__(self, x_dim: int, poison_after: int) -> None:
        super().__init__(x_dim=x_dim)
        self.poison_after, self.calls = poison_after, 0

    def likelihood(self, phi, x):
        self.calls += torch.is_grad_enabled()
        d = super().likelihood(phi, x)
        if self.calls > self.poison_after:
            return dist.Normal(d.mean * float("nan"), self.noise_scale).to_event(1)
        return d


def test_nan_loss_stops_with_the_last_good_state(small):
    model = _Poisoned(x_dim=2, poison_after=7)
    with pytest.raises(bm.NonFiniteLossError, match="at step 7.*last good state") as info:
        bm.fit_prior(model, small, steps=50, batch_tasks=16, lr=1e-2, lr_decay=1.0, seed=5, progress=False)
    assert len(info.value.prior.history["elbo"]) == 7
    reference = _fit(small, seed=5, steps=7, lr_decay=1.0)  # the same 7 good steps, unpoisoned
    for name in ("prior_loc", "prior_scale", "noise_scale"):
        torch.testing.assert_close(getattr(info.value.prior.model, name), getattr(reference.model, name))
    assert all(torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"steps": 0}, ValueError, "steps: expected a positive int, got 0"),
        ({"steps": 2.5}, ValueError, "steps: expected a positive int"),
        ({"batch_tasks": -1}, ValueError, "batch_tasks: expected a positive int"),
        ({"lr": float("nan")}, ValueError, "lr: expected a positive number, got nan"),
        ({"lr_decay": 0.0}, ValueError, r"lr_decay: expected a factor in \(0, 1\]"),
        ({"guide": "laplace"}, ValueError, "guide: expected one of"),
    ],
)
def test_bad_options(small, kwargs, error, message):
    with pytest.raises(error, match=message):
        bm.fit_prior(HierarchicalLinearRegression(x_dim=2), small, progress=False, **kwargs)


def test_bad_model_and_tasks(small):
    with pytest.raises(TypeError, match="model: expected a bayesmeta.HierarchicalModel, got Linear"):
        bm.fit_prior(torch.nn.Linear(2, 1), small)
    with pytest.raises(TypeError, match="tasks: expected a bayesmeta.TaskSet, got Tensor"):
        bm.fit_prior(HierarchicalLinearRegression(x_dim=2), small.support.x)
    with pytest.raises(ValueError, match="tasks: expected x_dim 3 for HierarchicalLinearRegression, got x_dim 2"):
        bm.fit_prior(HierarchicalLinearRegression(x_dim=3), small)


def test_exact_guide_needs_exact_posterior(small):
    sinusoids = bm.tasks.Sinusoid().sample(num_tasks=4, support=3, query=0, seed=0)
    with pytest.raises(ValueError, match="guide: 'exact' needs a model with exact_posterior"):
        bm.fit_prior(SinusoidModel(), sinusoids, guide="exact", steps=1, progress=False)


def test_bad_support_at_adapt(small):
    prior = _fit(small, seed=0, steps=2)
    with pytest.raises(ValueError, match="support: expected x_dim 2 for HierarchicalLinearRegression, got x_dim 3"):
        prior.adapt(bm.TaskSet.from_arrays(torch.randn(2, 3, 3), torch.randn(2, 3, 1)).support)
    bad_x = small.support.x.clone()
    bad_x[1, 2, 0] = float("nan")
    with pytest.raises(ValueError, match="support_x: expected finite values, got 1 NaN/Inf.*task 1, point 2"):
        prior.adapt(bm.TaskData(bad_x, small.support.y, small.support.mask))
    with pytest.raises(TypeError, match="support: expected the support of a TaskSet"):
        prior.adapt(small.support.x)
    post = prior.adapt(small.support)
    with pytest.raises(ValueError, match="x: expected shape 100 x num_points x 2, got \\(100, 5\\)"):
        post.predict(small.query.x[..., 0])
    with pytest.raises(ValueError, match="num_samples: expected a positive int, got 0"):
        post.predict(small.query.x, num_samples=0)


def test_a_taskset_is_accepted_as_support(small):
    prior = _fit(small, seed=0, steps=2)
    named = bm.TaskSet.from_arrays(small.support.x[:3], small.support.y[:3], names=["a", "b", "c"])
    post = prior.adapt(named)
    assert post.support.names == ["a", "b", "c"] and len(post) == 3


@pytest.mark.parametrize("method", ["amortized", "svi", "exact", "nuts"])
def test_fit_and_adapt_on_device(device, small, method):
    """The device-sensitive path: θ, guide, posteriors and predictions all live where the model is."""
    model = HierarchicalLinearRegression(x_dim=2)
    prior = bm.fit_prior(model, small, steps=5, batch_tasks=16, device=device, progress=False)
    assert prior.model.prior_loc.device.type == device
    options = {"num_samples": 20, "warmup_steps": 20} if method == "nuts" else {}
    options = {"steps": 5} if method == "svi" else options
    post = prior.adapt(small.support[:4], method=method, **options)
    pred = post.predict(small.query.x[:4], num_samples=8, seed=0)
    assert post.mean.device.type == device and pred.mean.device.type == device
    assert torch.isfinite(pred.std).all()


def test_fixed_parameters_stay_where_they_were_and_the_rest_trains(small):
    model = HierarchicalLinearRegression(x_dim=2)
    model.noise_scale = torch.tensor(0.7)
    loc_before = model.prior_loc.detach().clone()
    prior = bm.fit_prior(model, small, guide="exact", steps=30, batch_tasks=16, lr=1e-2, seed=0, progress=False,
                         fixed=["noise_scale"])
    assert model.noise_scale.item() == pytest.approx(0.7, rel=1e-6)
    assert not torch.equal(model.prior_loc.detach(), loc_before)
    assert prior.config["fixed"] == ["noise_scale"]
    # Holding a parameter is the same as leaving it out of the optimizer: the other parameters match a run
    # in which it does not require a gradient at all.
    other = HierarchicalLinearRegression(x_dim=2)
    other.noise_scale = torch.tensor(0.7)
    dict(other.named_parameters())["noise_scale_unconstrained"].requires_grad_(False)
    bm.fit_prior(other, small, guide="exact", steps=30, batch_tasks=16, lr=1e-2, seed=0, progress=False)
    assert torch.equal(other.prior_loc.detach(), model.prior_loc.detach())


@pytest.mark.parametrize("fixed, message", [
    (["noise"], r"fixed: 'noise' is not a parameter of HierarchicalLinearRegression; expected one of \["),
    ("noise_scale", r"fixed: expected a list of parameter names, got the string 'noise_scale'"),
])
def test_fixed_names_are_checked(small, fixed, message):
    with pytest.raises(ValueError, match=message):
        bm.fit_prior(HierarchicalLinearRegression(x_dim=2), small, steps=1, progress=False, fixed=fixed)

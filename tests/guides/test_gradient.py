"""GradientGuide: unrolled, differentiable gradient steps on each task's ELBO, from the prior (ABML)."""
from __future__ import annotations

import math

import pyro.distributions as dist
import pytest
import torch
from torch import nn

import bayesmeta as bm
from bayesmeta.guides import GUIDES, GradientGuide
from bayesmeta.guides.gradient import _prior_moments
from bayesmeta.models import HierarchicalBNN, HierarchicalLinearRegression

UPDATES = ["scaled", "gd"]


class _Tiny(bm.HierarchicalModel):
    """y = a tanh(b x) + noise: two coordinates, a non-quadratic ELBO, θ held as plain tensors so that the
    gradcheck can pass its own inputs in."""

    phi_names = ["a", "b"]

    def __init__(self) -> None:
        super().__init__(x_dim=1)
        self.loc = torch.tensor([0.5, 0.8], dtype=torch.float64)
        self.scale = torch.tensor([0.7, 0.4], dtype=torch.float64)
        self.noise = torch.tensor(0.5, dtype=torch.float64)

    def local_prior(self):
        return dist.Normal(self.loc, self.scale).to_event(1)

    def likelihood(self, phi, x):
        return dist.Normal(phi[..., None, :1] * torch.tanh(phi[..., None, 1:] * x), self.noise).to_event(1)


class _LaplacePrior(_Tiny):
    def local_prior(self):
        return dist.Laplace(self.loc, self.scale).to_event(1)


class _PositivePrior(_Tiny):
    def local_prior(self):
        return dist.LogNormal(self.loc, self.scale).to_event(1)


class _NoMeanPrior(_Tiny):
    def local_prior(self):
        base = dist.Normal(self.loc, self.scale).to_event(1)
        return dist.TransformedDistribution(base, [dist.transforms.AffineTransform(0.0, 2.0, event_dim=1)])


class _Classes(bm.HierarchicalModel):
    """Three classes with logits w x + b: a likelihood with no variance (``Categorical`` returns NaN)."""

    phi_names = ["w0", "w1", "w2", "b0", "b1", "b2"]

    def __init__(self) -> None:
        super().__init__(x_dim=1)

    def local_prior(self):
        return dist.Normal(torch.zeros(6), torch.ones(6)).to_event(1)

    def likelihood(self, phi, x):
        return dist.Categorical(logits=x * phi[..., None, :3] + phi[..., None, 3:])


def _sinusoids(num_tasks=4, support=5, query=5, seed=0):
    return bm.tasks.Sinusoid().sample(num_tasks=num_tasks, support=support, query=query, seed=seed)


def _linear_tasks(num_tasks=6, support=8, seed=0):
    return bm.tasks.LinearGaussian(x_dim=2, seed=0).sample(num_tasks=num_tasks, support=support, query=0, seed=seed)


@pytest.mark.parametrize("update", UPDATES)
def test_shapes_on_a_bnn_and_a_linear_model(device, update):
    bnn = HierarchicalBNN(hidden=(8,)).to(device)
    q = GradientGuide(bnn, steps=2, update=update, lr_loc=0.05 if update == "scaled" else 1e-5).to(device).posterior(
        _sinusoids().to(device))
    assert (q.batch_shape, q.event_shape) == (torch.Size([4]), torch.Size([bnn.phi_dim]))
    assert isinstance(q, dist.Independent) and q.mean.device.type == device
    assert torch.isfinite(q.mean).all() and (q.stddev > 0).all()
    linear = HierarchicalLinearRegression(x_dim=2).to(device)
    q = GradientGuide(linear, steps=3, per_parameter=False, update=update, lr_loc=0.01).to(device).posterior(
        _linear_tasks().to(device))
    assert (q.batch_shape, q.event_shape) == (torch.Size([6]), torch.Size([3]))


def test_no_steps_and_empty_tasks_give_the_prior():
    model = _Tiny()
    mask = torch.tensor([[True] * 4, [False] * 4, [True, False, False, False]])
    x, y = torch.randn(3, 4, 1, dtype=torch.float64), torch.randn(3, 4, 1, dtype=torch.float64)
    support = bm.TaskData.checked(x, y, mask)
    # Task 1 has no points (a 0-shot support set, as adapt builds it).
    tasks = bm.TaskSet._trusted(support, support.head(0), None, None)
    q = GradientGuide(model, steps=0).double().posterior(tasks)
    assert torch.equal(q.mean, model.loc.expand(3, 2)) and torch.equal(q.stddev, model.scale.expand(3, 2))
    q = GradientGuide(model, steps=3).double().posterior(tasks)
    assert torch.equal(q.mean[1], model.loc) and torch.equal(q.stddev[1], model.scale)
    assert not torch.allclose(q.mean[[0, 2]], model.loc.expand(2, 2))
    no_points = bm.TaskSet._trusted(support.head(0), support.head(0), None, None)
    q = GradientGuide(model, steps=3).double().posterior(no_points)
    assert torch.equal(q.mean, model.loc.expand(3, 2)) and torch.equal(q.stddev, model.scale.expand(3, 2))


@pytest.mark.parametrize("update", UPDATES)
def test_ragged_tasks_match_unpadded_ones(update):
    """Padding (masked points, wherever they sit) changes nothing."""
    model = _Tiny()
    guide = GradientGuide(model, steps=3, num_samples=2, update=update, lr_loc=0.3 if update == "scaled" else 0.05)
    guide = guide.double()
    counts = [5, 2, 4]
    x, y = torch.randn(3, 5, 1, dtype=torch.float64), torch.randn(3, 5, 1, dtype=torch.float64)
    mask = torch.arange(5) < torch.tensor(counts)[:, None]

    def padded(x, y, mask, extra=3):
        """The same points scattered among ``extra`` more masked slots (reversed order, padding first)."""
        pad = torch.zeros(x.shape[0], extra, 1, dtype=x.dtype)
        flip = torch.arange(x.shape[1] - 1, -1, -1)
        pad_mask = torch.zeros(x.shape[0], extra, dtype=torch.bool)
        return bm.TaskSet.from_arrays(torch.cat([pad, x[:, flip]], 1), torch.cat([pad, y[:, flip]], 1),
                                      support_mask=torch.cat([pad_mask, mask[:, flip]], 1))

    with torch.no_grad():  # seeded draws: the same noise for the same number of tasks
        ragged = guide.posterior(bm.TaskSet.from_arrays(x, y, support_mask=mask))
        repadded = guide.posterior(padded(x, y, mask))
        torch.testing.assert_close(repadded.mean, ragged.mean, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(repadded.stddev, ragged.stddev, rtol=1e-10, atol=1e-12)
        for i, n in enumerate(counts):
            alone = guide.posterior(bm.TaskSet.from_arrays(x[i:i + 1, :n], y[i:i + 1, :n]))
            alone_padded = guide.posterior(padded(x[i:i + 1], y[i:i + 1], mask[i:i + 1]))
            torch.testing.assert_close(alone_padded.mean, alone.mean, rtol=1e-10, atol=1e-12)
            torch.testing.assert_close(alone_padded.stddev, alone.stddev, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("num_samples", [1, 2, 3])  # one draw, an antithetic pair, three independent draws
@pytest.mark.parametrize("update, clip", [("scaled", None), ("scaled", math.inf), ("gd", None), ("gd", 1.0)])
def test_steps_without_gradients_are_the_differentiable_steps_to_the_bit(update, clip, num_samples):
    """Adaptation (no gradients) takes the steps in place, in buffers; meta-training builds the graph. Given the
    same draws (the global generator seeded as the guide seeds its own), both must give the same floats: the
    in-place path is a re-ordering of memory, not of arithmetic. On a BNN whose θ requires gradients (so that
    nothing of θ's graph may leak into the buffers) and on the float64 two-parameter model."""
    tasks = _sinusoids(num_tasks=6, support=5)
    for model in (HierarchicalBNN(hidden=(8, 8)), _Tiny()):
        lr_loc = 0.05 if update == "scaled" else 1e-4
        guide = GradientGuide(model, steps=3, num_samples=num_samples, update=update, clip=clip, lr_loc=lr_loc,
                              seed=3)
        if isinstance(model, _Tiny):
            guide, tasks = guide.double(), tasks.to(torch.float64)
        torch.manual_seed(3)
        graph = guide.posterior(tasks)
        assert graph.mean.requires_grad or isinstance(model, _Tiny)
        with torch.no_grad():
            in_place = guide.posterior(tasks)
        assert not in_place.mean.requires_grad
        assert torch.equal(in_place.mean, graph.mean.detach()) and torch.equal(in_place.stddev, graph.stddev.detach())
        assert not torch.equal(in_place.mean, guide.posterior(tasks).mean.detach())  # other draws: other numbers


class _Posterior(nn.Module):
    """``guide.posterior`` as a module call, so that ``functional_call`` can swap the step sizes in."""

    def __init__(self, guide: GradientGuide) -> None:
        super().__init__()
        self.guide = guide

    def forward(self, tasks):
        q = self.guide.posterior(tasks)
        return q.mean, q.stddev


@pytest.mark.parametrize("update", UPDATES)
@pytest.mark.parametrize("per_parameter", [True, False])
def test_the_steps_are_differentiable(update, per_parameter):
    """gradcheck of q's loc and scale with respect to θ (prior loc, prior scale, noise) and the step sizes."""
    model = _Tiny()
    guide = GradientGuide(model, steps=2, num_samples=2, per_parameter=per_parameter, update=update, lr_loc=0.2,
                          lr_scale=0.2).double()
    torch.manual_seed(1)
    tasks = bm.TaskSet.from_arrays(torch.randn(2, 4, 1, dtype=torch.float64), torch.randn(2, 4, 1, dtype=torch.float64),
                                   support_mask=torch.tensor([[True] * 4, [True, True, False, False]]))
    wrapper = _Posterior(guide)

    def posterior(loc, scale, noise, log_lr_loc, log_lr_scale):
        model.loc, model.scale, model.noise = loc, scale, noise
        torch.manual_seed(0)  # the same draws at every evaluation
        return torch.func.functional_call(wrapper, {"guide.log_lr_loc": log_lr_loc, "guide.log_lr_scale": log_lr_scale},
                                          (tasks,))

    # Step sizes away from their common start, so each step and coordinate has its own value.
    log_lr_loc = guide.log_lr_loc.detach() + 0.3 * torch.randn_like(guide.log_lr_loc)
    log_lr_scale = guide.log_lr_scale.detach() + 0.3 * torch.randn_like(guide.log_lr_scale)
    inputs = [t.detach().clone().requires_grad_(True)
              for t in (model.loc, model.scale, model.noise, log_lr_loc, log_lr_scale)]
    assert torch.autograd.gradcheck(posterior, inputs)


@pytest.mark.parametrize("num_samples", [1, 4])  # one draw takes the squeeze path, more the sum over draws
@pytest.mark.parametrize("update", UPDATES)
def test_closed_form_gradients_are_autograd_through_the_loss(update, num_samples):
    """For a diagonal Normal prior the steps differentiate only the likelihood and write the KL's and the
    reparameterization's gradients out: they must equal autograd through the whole loss, and so must their own
    gradients with respect to θ (what meta-training differentiates), to rounding in float64."""
    model = _Tiny()
    guide = GradientGuide(model, steps=1, num_samples=num_samples, update=update).double()
    torch.manual_seed(2)
    tasks = bm.TaskSet.from_arrays(torch.randn(3, 5, 1, dtype=torch.float64), torch.randn(3, 5, 1, dtype=torch.float64),
                                   support_mask=torch.tensor([[True] * 5, [True, True, False, False, False], [True] + [False] * 4]))
    data = tasks.support
    theta = [t.requires_grad_(True) for t in (model.loc, model.scale, model.noise)]
    loc = model.loc + 0.3 * torch.randn(3, 2, dtype=torch.float64)  # in the graph back to θ, as after a step
    log_scale = model.scale.log() + 0.2 * torch.randn(3, 2, dtype=torch.float64)
    noise = torch.randn(num_samples, 3, 2, dtype=torch.float64)
    prior = model.local_prior()
    loss, unit = guide._loss(data, prior, True, loc, log_scale, noise)
    expected = torch.autograd.grad(loss.sum(), [loc, log_scale], create_graph=True)
    got = guide._gradients(data, _prior_moments(model, prior)[:2], loc, log_scale, noise, differentiable=True)
    for a, b in zip(got[:2], expected):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    if update == "scaled":
        torch.testing.assert_close(got[2], unit, rtol=1e-12, atol=0.0)
    weights = torch.randn(2, 3, 2, dtype=torch.float64)  # a generic scalar of the two gradients
    outer = [torch.autograd.grad((weights[0] * g_loc + weights[1] * g_scale).sum(), theta, retain_graph=True)
             for g_loc, g_scale in (got[:2], expected)]
    for a, b in zip(*outer):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("update", UPDATES)
def test_many_small_steps_reach_the_exact_posterior_of_a_conjugate_model(update):
    r"""Linear-Gaussian model: :math:`\mathbb E_\varepsilon \nabla_m L = \Lambda m - \eta` whatever :math:`s`, and
    antithetic draws (an even ``num_samples``) make the draws' term, linear in :math:`\varepsilon`, cancel exactly.
    So the means follow gradient descent on a quadratic, :math:`m_K - m^* = (I - aΛ)^K (\mu - m^*)` with
    :math:`m^* = Λ^{-1}\eta` the exact posterior mean: the tolerance is that remainder, computed, plus rounding.
    The scales reach the mean-field optimum :math:`s_j = Λ_{jj}^{-1/2}` (Bishop 2006, §10.1.2) only up to the noise
    of their own gradient (quadratic in ε, it does not cancel), which a constant step leaves as a stationary jitter.
    Its size: near the optimum the log-scale gradient is g ≈ 2δ + n, δ = log s − log s*, with MC noise of variance
    σ_n² ≲ (Var ε² + 1) / 64 ≈ 0.05 (64 draws, s² H_jj ≤ 1 at the optimum). A step β on ½ log(1 + g) ("scaled") or
    on g ("gd") is an AR(1) with stationary variance ≈ β σ_n² / 8 or β σ_n² / 4: sd ≈ 1.8% (β = 0.05) or 1.6%
    (β = 0.02). Over the 10 scales checked (5 tasks x 2), 10% is more than 5 of those standard deviations.
    """
    torch.manual_seed(0)
    model = HierarchicalLinearRegression(x_dim=1).double()
    with torch.no_grad():
        model.prior_loc.copy_(torch.tensor([0.5, -0.5]))
    tasks = bm.tasks.LinearGaussian(x_dim=1, seed=0).sample(num_tasks=5, support=10, query=0, seed=0).to(torch.float64)
    exact = model.exact_posterior(tasks.support)
    precision = exact.precision_matrix.detach()
    lam_max = torch.linalg.eigvalsh(precision).max()
    # Step a = 1 / λ_max of the stiffest task: stable for every task (a λ < 2), contracting by 1 - a λ_min.
    unit = model.noise_scale.detach() ** 2 / 10 if update == "scaled" else torch.tensor(1.0, dtype=torch.float64)
    steps = 200
    guide = GradientGuide(model, steps=steps, num_samples=64, per_parameter=False, update=update, clip=math.inf,
                          lr_loc=float(1 / (lam_max * unit)), lr_scale=0.05 if update == "scaled" else 0.02).double()
    with torch.no_grad():
        q = guide.posterior(tasks)
    a = 1 / lam_max
    contraction = torch.linalg.matrix_power(torch.eye(2, dtype=torch.float64) - a * precision, steps)
    remainder = (contraction @ (model.prior_loc.detach() - exact.mean.detach())[..., None]).squeeze(-1)
    assert (q.mean - exact.mean).abs().max() <= remainder.abs().max() + 1e-8
    assert remainder.abs().max() < 1e-3  # so the guide did get there
    target_scale = precision.diagonal(dim1=-2, dim2=-1).rsqrt()
    torch.testing.assert_close(q.stddev, target_scale, rtol=0.1, atol=0.0)


def _fit(steps=30, seed=0, **options):
    options = {"steps": 2, **options}
    train = _sinusoids(num_tasks=8, support=5, query=5, seed=0)
    return bm.fit_prior(HierarchicalBNN(hidden=(8,)), train, guide="gradient", guide_options=options, steps=steps,
                        batch_tasks=8, lr=1e-2, seed=seed, progress=False)


def test_fit_prior_trains_a_bnn_through_the_steps_and_is_seeded():
    prior = _fit()
    elbo = prior.history["elbo"]
    assert sum(elbo[-5:]) / 5 > sum(elbo[:5]) / 5 + 2000  # measured: -2.4e4 -> -1.76e4 (steps 0-4 -> 25-29)
    assert prior.history["elbo"] == _fit().history["elbo"]
    # The step sizes were trained as well as θ.
    start = torch.full_like(prior.guide.log_lr_loc, math.log(prior.guide.lr_loc))
    assert not torch.allclose(prior.guide.log_lr_loc, start)


def test_adapt_runs_the_steps_without_gradients_and_repeats_itself():
    prior = _fit(steps=10)
    test = _sinusoids(num_tasks=5, support=5, query=20, seed=1)
    post = prior.adapt(test.support)
    assert not post.distribution.mean.requires_grad
    assert all(p.requires_grad for p in prior.model.parameters())  # θ is unfrozen again
    torch.testing.assert_close(prior.adapt(test.support).mean, post.mean, rtol=0, atol=0)
    zero_shot = prior.adapt(test.support.head(0))
    torch.testing.assert_close(zero_shot.mean, prior.model.prior_loc.detach().expand(5, -1))
    assert not torch.allclose(post.mean, zero_shot.mean)
    assert post.predict(test.query.x, num_samples=8, seed=0).mean.shape == (5, 20, 1)


def test_save_and_load_give_the_same_predictions(tmp_path):
    prior = _fit(steps=10, per_parameter=False, reads="support", clip=50.0)
    path = tmp_path / "bnn.prior"
    prior.save(path)
    loaded = bm.LearnedPrior.load(path)
    assert loaded.guide.kind == "gradient" and loaded.guide.init_args == prior.guide.init_args
    test = _sinusoids(num_tasks=3, support=5, query=10, seed=1)
    before = prior.adapt(test.support).predict(test.query.x, num_samples=4, seed=0).mean
    after = loaded.adapt(test.support).predict(test.query.x, num_samples=4, seed=0).mean
    torch.testing.assert_close(after, before, rtol=0, atol=0)


@pytest.mark.parametrize("option, value", [
    ("steps", -1), ("steps", 2.0), ("num_samples", 0), ("per_parameter", "yes"), ("lr_loc", 0.0),
    ("lr_scale", math.inf), ("reads", "query"), ("clip", -1.0), ("clip", "none"), ("seed", -1), ("update", "adam"),
])
def test_bad_options_are_named(option, value):
    with pytest.raises(ValueError, match=option):
        GradientGuide(_Tiny(), **{option: value})


def test_priors_it_cannot_start_from_are_refused_and_others_get_a_sampled_kl():
    for model in (_PositivePrior(), _NoMeanPrior()):
        with pytest.raises(ValueError, match=type(model).__name__):
            GradientGuide(model)
    model = _LaplacePrior()
    tasks = bm.TaskSet.from_arrays(torch.randn(3, 4, 1, dtype=torch.float64), torch.randn(3, 4, 1, dtype=torch.float64))
    assert torch.equal(GradientGuide(model, steps=0).double().posterior(tasks).mean, model.loc.expand(3, 2))
    q = GradientGuide(model, steps=3, lr_loc=0.2).double().posterior(tasks)
    assert torch.isfinite(q.mean).all() and not torch.allclose(q.mean, model.loc.expand(3, 2))


def test_diverging_steps_are_an_error_not_a_nan():
    model = HierarchicalBNN(hidden=(8,))
    tasks = _sinusoids()
    with pytest.raises(ValueError, match="lr_loc"):
        with torch.no_grad():
            GradientGuide(model, steps=5, update="gd", lr_loc=10.0).posterior(tasks)
    with pytest.raises(bm.NonFiniteLossError):
        bm.fit_prior(model, tasks, guide="gradient", guide_options={"update": "gd", "lr_loc": 10.0}, steps=2,
                     progress=False)
    # Clipping bounds each step (by lr * clip), so the same step sizes stay finite and close.
    with torch.no_grad():
        q = GradientGuide(model, steps=5, update="gd", lr_loc=10.0, lr_scale=0.01, clip=1e-3).posterior(tasks)
    assert (q.mean - model.prior_loc.detach()).abs().max() <= 5 * 10.0 * 1e-3 + 1e-6  # tanh saturates at 1


def test_a_classifier_steps_in_units_of_one():
    x = torch.randn(4, 6, 1)
    tasks = bm.TaskSet.from_arrays(x, (x[..., 0] > 0).long() + (x[..., 0] > 1).long())
    q = GradientGuide(_Classes(), steps=3, lr_loc=0.5).posterior(tasks)
    assert torch.isfinite(q.mean).all() and torch.isfinite(q.stddev).all()
    assert not torch.allclose(q.mean, torch.zeros(4, 6))


def test_registered_for_fit_prior():
    assert GUIDES["gradient"] is GradientGuide

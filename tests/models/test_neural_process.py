"""NeuralProcessModel: its program, that it learns to use its latent, and that it saves and loads."""
from __future__ import annotations

import math

import pytest
import torch
from pyro import poutine

import bayesmeta as bm
from bayesmeta.evaluation import mse
from bayesmeta.models import NeuralProcessModel


def test_program_shapes():
    tasks = bm.tasks.Sinusoid().sample(num_tasks=5, support=3, query=4, seed=0)
    trace = poutine.trace(NeuralProcessModel(latent_dim=3, hidden=8)).get_trace(tasks)
    assert trace.nodes["phi"]["value"].shape == (5, 1, 3)
    assert trace.nodes["y"]["fn"].batch_shape == (5, 7)


def test_same_arguments_same_model_whatever_the_global_generator():
    torch.manual_seed(1)
    first = NeuralProcessModel(latent_dim=2, hidden=8)
    draw = torch.rand(1)
    torch.manual_seed(2)
    second = NeuralProcessModel(latent_dim=2, hidden=8)
    for a, b in zip(first.state_dict().values(), second.state_dict().values()):
        assert torch.equal(a, b)
    other = NeuralProcessModel(latent_dim=2, hidden=8, init_seed=1)
    assert not torch.equal(other.decoder[0].weight, first.decoder[0].weight)
    torch.manual_seed(1)
    NeuralProcessModel(latent_dim=2, hidden=8)
    assert torch.equal(torch.rand(1), draw)  # building a model leaves the global generator alone


def test_likelihood_broadcasts_particles_and_tasks():
    model = NeuralProcessModel(latent_dim=2, hidden=8)
    phi, x = torch.randn(6, 3, 2), torch.randn(3, 4, 1)
    batched = model.likelihood(phi, x).mean
    one = model.likelihood(phi[2, 1][None], x[1][None]).mean  # one particle, one task
    torch.testing.assert_close(batched[2, 1], one[0])


@pytest.mark.parametrize("guide, options", [("amortized", {"context": True, "rank": 2}), ("pooled", {"hidden": 64})])
def test_it_learns_to_use_its_latent(tmp_path, guide, options):
    """After a short fit, 5 support points must beat the prior predictive: the latent carries the task."""
    family = bm.tasks.Sinusoid()
    train = family.sample(num_tasks=2000, support=10, query=10, seed=0)
    test = family.sample(num_tasks=200, support=5, query=50, seed=1)
    model = NeuralProcessModel(latent_dim=4, hidden=64, depth=2)
    prior = bm.fit_prior(model, train, guide=guide, steps=800, batch_tasks=64, lr=2e-3, kl_anneal_steps=200,
                         record_every=100, seed=0, progress=False, guide_options=options)
    assert max(prior.history["kl_per_dim"][-1]) > 0.1  # some coordinate is used: no collapse
    errors = {}
    for shots in (0, 5):
        pred = prior.adapt(test.support.head(shots)).predict(test.query.x, num_samples=30, seed=0)
        errors[shots] = mse(pred.mean, test.query.y, test.query.mask)
    gain = errors[0] - errors[5]  # paired over the same 200 tasks
    assert gain.mean() > 4 * gain.std() / len(gain) ** 0.5, (errors[0].mean(), errors[5].mean())
    prior.save(tmp_path / "np.prior")
    loaded = bm.LearnedPrior.load(tmp_path / "np.prior")
    before = prior.adapt(test.support).predict(test.query.x, num_samples=5, seed=1)
    after = loaded.adapt(test.support).predict(test.query.x, num_samples=5, seed=1)
    assert torch.equal(before.mean, after.mean)


def test_bad_noise_arguments_are_named():
    with pytest.raises(ValueError, match="noise: expected 'shared' or 'heteroscedastic', got 'poisson'"):
        NeuralProcessModel(noise="poisson")
    with pytest.raises(ValueError, match="noise_floor: expected a finite number > 0, got 0"):
        NeuralProcessModel(noise_floor=0)


def test_heteroscedastic_scale_is_floored_and_depends_on_input_and_latent():
    model = NeuralProcessModel(latent_dim=2, hidden=8, noise="heteroscedastic", noise_floor=0.05)
    assert not hasattr(model, "noise_scale")  # no shared scale: the decoder gives it
    phi, x = torch.randn(6, 3, 2), torch.linspace(-2, 2, 12).reshape(3, 4, 1)
    likelihood = model.likelihood(phi, x)
    scale = likelihood.base_dist.scale
    assert scale.shape == likelihood.mean.shape == (6, 3, 4, 1)
    assert scale.min() > 0.05
    assert scale[0, 0].std() > 0 and scale[:, 0, 0].std() > 0  # varies with the input and with the latent
    one = model.likelihood(phi[2, 1][None], x[1][None]).base_dist.scale  # one particle, one task
    torch.testing.assert_close(scale[2, 1], one[0])


@pytest.mark.slow
def test_heteroscedastic_model_learns_a_noise_that_grows_with_x(tmp_path):
    """y_ij = b_i + s(x_ij) eps with s(x) = 0.05 + 0.5 |x|: a shared scale cannot fit this, a scale per input can.

    With 10 support points the posterior of b_i has sd below 0.1 of the noise at the ends, so the predictive sd
    there is the noise (0.95 at |x| = 1.8) and at x = 0 it is at most sqrt(0.05^2 + posterior var) < 0.35.
    """
    gen = torch.Generator().manual_seed(0)
    num_tasks, n = 1500, 20
    x = 4 * torch.rand(num_tasks, n, 1, generator=gen) - 2
    y = torch.randn(num_tasks, 1, 1, generator=gen) + (0.05 + 0.5 * x.abs()) * torch.randn(num_tasks, n, 1, generator=gen)
    train = bm.TaskSet.from_arrays(x[:1400, :10], y[:1400, :10], x[:1400, 10:], y[:1400, 10:])
    test = bm.TaskSet.from_arrays(x[1400:, :10], y[1400:, :10])
    model = NeuralProcessModel(latent_dim=2, hidden=32, depth=2, noise="heteroscedastic")
    prior = bm.fit_prior(model, train, guide="pooled", steps=800, batch_tasks=64, lr=3e-3, seed=0, progress=False,
                         guide_options={"hidden": 32, "depth": 2})
    grid = torch.tensor([-1.8, 0.0, 1.8]).expand(len(test), 3)[..., None]
    std = prior.adapt(test.support).predict(grid, num_samples=50, seed=0).std[..., 0].mean(0)  # mean over tasks
    assert std[1] < 0.35 and std[0] > 0.7 and std[2] > 0.7, std
    prior.save(tmp_path / "het.prior")
    loaded = bm.LearnedPrior.load(tmp_path / "het.prior")
    assert loaded.model.noise == "heteroscedastic"
    again = loaded.adapt(test.support).predict(grid, num_samples=50, seed=0).std[..., 0].mean(0)
    torch.testing.assert_close(again, std)


@pytest.mark.parametrize("noise", ["shared", "heteroscedastic"])
def test_set_noise_holds_the_scale_through_a_fit(noise):
    model = NeuralProcessModel(latent_dim=2, hidden=8, depth=1, noise=noise)
    model.set_noise(0.15)
    phi, x = torch.randn(4, 3, 2), torch.randn(3, 5, 1)
    torch.testing.assert_close(model.likelihood(phi, x).base_dist.scale.expand(4, 3, 5, 1),
                               torch.full((4, 3, 5, 1), 0.15))
    tasks = bm.tasks.Sinusoid().sample(num_tasks=32, support=5, query=5, seed=0)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    bm.fit_prior(model, tasks, guide="pooled", steps=5, batch_tasks=8, lr=1e-2, fixed=model.noise_parameters,
                 progress=False, guide_options={"hidden": 8})
    after = dict(model.named_parameters())
    for name in before:
        held = name in model.noise_parameters or name == "noise_scale_unconstrained"  # a PyroParam's stored name
        assert torch.equal(before[name], after[name].detach()) == held, name
    with pytest.raises(ValueError, match="scale: expected a finite number above noise_floor=0.01, got 0.005"):
        model.set_noise(0.005)


def test_a_task_output_layer_is_the_linear_part_of_phi():
    model = NeuralProcessModel(latent_dim=3, hidden=8, y_dim=2, output_layer="task")
    assert (model.phi_dim, model.linear_dim) == (3 + 16, 16)
    assert model.phi_names[:4] == ["z0", "z1", "z2", "w0"] and model.local_prior().event_shape == (19,)
    phi, x = torch.randn(5, 4, 19), torch.randn(4, 6, 1)
    offset, design, scale = model.linear_design(phi[..., :3], x)
    assert design.shape == (5, 4, 6, 2, 16) and offset.shape == scale.shape == (5, 4, 6, 2)
    likelihood = model.likelihood(phi, x)
    torch.testing.assert_close(likelihood.mean, offset + (design @ phi[..., None, 3:, None]).squeeze(-1))
    # Output k reads block k of w: changing output 1's weights leaves output 0 alone.
    moved = phi.clone()
    moved[..., 3 + 8:] += 1.0
    changed = model.likelihood(moved, x).mean
    torch.testing.assert_close(changed[..., 0], likelihood.mean[..., 0])
    assert not torch.allclose(changed[..., 1], likelihood.mean[..., 1])
    with pytest.raises(ValueError, match="output_layer: expected 'shared' or 'task', got 'last'"):
        NeuralProcessModel(output_layer="last")


@pytest.mark.slow
def test_a_task_output_layer_learns_gp_functions(tmp_path):
    """After a short fit on smooth GP functions, 10 context points raise the predictive log density of held-out
    points above the prior predictive's (paired over tasks), and the fit records the KL of the latent coordinates
    only. (On the benchmark's family, lengthscales down to 0.1, 400 steps leave this small model overconfident on
    rough functions: that takes the full fit of ``benchmarks/gp_functions.py``.)"""
    family = bm.tasks.GPFunctions(lengthscale=(0.4, 0.6), signal_scale=(0.5, 1.0))
    train = family.sample(num_tasks=1000, support=10, query=10, seed=0)
    test = family.sample(num_tasks=100, support=10, query=20, seed=1)
    model = NeuralProcessModel(latent_dim=2, hidden=32, depth=2, output_layer="task")
    prior = bm.fit_prior(model, train, guide="pooled", steps=400, batch_tasks=32, lr=3e-3, record_every=100,
                         random_subsets=True, seed=0, progress=False, guide_options={"hidden": 32, "depth": 2})
    assert len(prior.history["kl_per_dim"][-1]) == 2
    scores = {}
    for shots in (0, 10):
        predictive = prior.adapt(test.support.head(shots)).predictive(test.query.x, num_samples=20, seed=0)
        scores[shots] = (torch.logsumexp(predictive.log_prob(test.query.y), 0) - math.log(20)).mean(-1)
    gain = scores[10] - scores[0]  # paired over the same 100 tasks (measured: 1.71 ± 0.05 nats per point)
    assert gain.mean() > 4 * gain.std() / len(gain) ** 0.5, gain.mean()
    # And on most tasks, not through a few: were 10 points no better than none, the count of tasks they improve
    # would be Binomial(100, 1/2), 50 ± 5 (measured: 98; an untrained model, 48).
    assert int((gain > 0).sum()) > 50 + 4 * 5, int((gain > 0).sum())
    prior.save(tmp_path / "basis.prior")
    loaded = bm.LearnedPrior.load(tmp_path / "basis.prior")
    before = prior.adapt(test.support).predict(test.query.x, num_samples=5, seed=1)
    after = loaded.adapt(test.support).predict(test.query.x, num_samples=5, seed=1)
    torch.testing.assert_close(before.mean, after.mean, rtol=0, atol=0)

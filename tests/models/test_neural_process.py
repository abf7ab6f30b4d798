"""NeuralProcessModel: its program, that it learns to use its latent, and that it saves and loads."""
from __future__ import annotations

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

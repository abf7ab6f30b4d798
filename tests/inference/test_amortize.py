"""bm.amortize: a guide fitted to a learned model's posterior by simulation (forward KL), and MixtureGuide."""
from __future__ import annotations

import math

import pyro.distributions as dist
import pytest
import torch
from pyro.nn import PyroParam

import bayesmeta as bm
from bayesmeta.guides import MixtureGuide
from bayesmeta.inference.amortize import simulate_tasks
from bayesmeta.models import HierarchicalLinearRegression


@pytest.fixture(scope="module")
def linear():
    """A normal-mean model (x = 1, no bias) with θ set by hand, its posterior in closed form."""
    model = HierarchicalLinearRegression(x_dim=1, bias=False)
    with torch.no_grad():
        model.prior_loc, model.prior_scale, model.noise_scale = torch.tensor([1.0]), torch.tensor([2.0]), torch.tensor(0.5)
    prior = bm.LearnedPrior(model, bm.guides.PooledGuide(model, hidden=8), {}, {})
    train = bm.TaskSet.from_arrays(torch.ones(300, 10, 1), torch.zeros(300, 10, 1))  # only the inputs are read
    mixed = bm.amortize(prior, train, steps=1000, batch_tasks=256, lr=1e-2, seed=0, progress=False,
                        guide_options={"components": 3, "hidden": 32, "depth": 2})
    torch.manual_seed(1)
    with torch.no_grad():
        y = model.likelihood(model.local_prior().sample((100,)), torch.ones(100, 10, 1)).sample()
    return prior, mixed, bm.TaskSet.from_arrays(torch.ones(100, 10, 1), y)


def _forward_kl(exact: dist.Distribution, q: dist.Distribution, draws: int = 4000) -> torch.Tensor:
    """KL(exact || q) per task, by Monte Carlo over draws of the exact posterior."""
    phi = exact.sample((draws,))
    return (exact.log_prob(phi) - q.log_prob(phi)).mean(0)


def test_the_mixture_guide_learns_the_conjugate_posterior(linear):
    prior, mixed, test = linear
    assert mixed.model is prior.model and mixed.guide.kind == "mixture"
    assert mixed.config["amortize"]["steps"] == 1000 and len(mixed.history["loss"]) == 20
    torch.manual_seed(0)
    with torch.no_grad():
        for shots in (0, 1, 3, 10):
            support = test.support.head(shots)
            exact = prior.model.exact_posterior(support)
            kl = _forward_kl(exact, mixed.adapt(support).distribution)
            # The Monte Carlo error of a mean KL over 100 tasks x 4000 draws is below 0.002 nats here; an
            # untrained guide is off by nats. The fitted one is within 0.05 nats of the exact posterior per task.
            assert kl.mean() < 0.05, (shots, kl.mean())
            if shots:
                untrained = MixtureGuide(prior.model, components=3, hidden=32, depth=2)
                assert _forward_kl(exact, untrained.posterior(bm.TaskSet.from_arrays(support.x, support.y))).mean() > 0.5


def test_a_mixture_covers_both_modes_of_a_bimodal_posterior():
    """y ~ N(φ², 0.1²): a point y = 1 leaves φ = ±1 equally likely; the ELBO's Gaussian would pick one."""

    class Square(bm.HierarchicalModel):
        phi_names = ["phi"]

        def __init__(self) -> None:
            super().__init__(x_dim=1, y_dim=1)
            self.noise_scale = PyroParam(torch.tensor(0.1))

        def local_prior(self) -> dist.Distribution:
            return dist.Normal(torch.zeros(1), 1.0).to_event(1)

        def likelihood(self, phi, x):
            return dist.Normal((phi**2)[..., None, :] + 0 * x, self.noise_scale).to_event(1)

    model = Square()
    train = bm.TaskSet.from_arrays(torch.zeros(512, 1, 1), torch.zeros(512, 1, 1))
    prior = bm.LearnedPrior(model, bm.guides.PooledGuide(model, hidden=8), {}, {})
    mixed = bm.amortize(prior, train, steps=1500, lr=3e-3, min_points=1, seed=0, progress=False,
                        guide_options={"components": 4, "hidden": 32, "depth": 2})
    q = mixed.adapt(bm.TaskSet.from_arrays(torch.zeros(1, 1, 1), torch.ones(1, 1, 1))).distribution
    draws = q.sample((4000,))[:, 0, 0]
    positive = (draws > 0).double().mean()
    # Exact: 1/2 each side, each mode at ±1.0 with sd ≈ 0.05. A binomial proportion of 4000 has sd 0.008.
    assert abs(positive - 0.5) < 0.1
    assert abs(draws.abs().median() - 1.0) < 0.05


def test_simulated_tasks_keep_random_subsets_of_the_inputs():
    prior = bm.LearnedPrior(HierarchicalLinearRegression(x_dim=2), None, {}, {})
    tasks = bm.tasks.LinearGaussian(x_dim=2, seed=0).sample(400, 4, 3, seed=0)
    points = tasks.all_points()
    phi, sim = simulate_tasks(prior, points, torch.Generator().manual_seed(0), min_points=0)
    assert phi.shape == (400, 3) and sim.support.x.shape == (400, 7, 2) and sim.query.num_points == 0
    sizes = sim.support.mask.sum(1)
    assert int(sizes.min()) == 0 and int(sizes.max()) == 7
    # Uniform on 0..7: each of the 8 sizes has probability 1/8 (sd of a count of 400 draws: 6.6).
    counts = torch.bincount(sizes, minlength=8).double()
    assert ((counts - 50).abs() < 5 * math.sqrt(400 * (1 / 8) * (7 / 8))).all()
    kept = sim.support.mask
    assert torch.equal(sim.support.x[kept], points.x[kept])  # the inputs are the tasks' own
    assert (sim.support.y[~kept] == 0).all() and (sim.support.x[~kept] == 0).all()


def test_simulated_sizes_stop_at_max_points():
    prior = bm.LearnedPrior(HierarchicalLinearRegression(x_dim=1), None, {}, {})
    points = bm.tasks.LinearGaussian(x_dim=1, seed=0).sample(800, 12, 8, seed=0).all_points()
    points = bm.TaskData(points.x, points.y, points.mask.clone())
    points.mask[:100, 2:] = False  # a hundred tasks of 2 points, fewer than the cap: they keep 1..2
    _, sim = simulate_tasks(prior, points, torch.Generator().manual_seed(0), min_points=1, max_points=4)
    sizes = sim.support.mask.sum(1)
    assert int(sizes[:100].min()) == 1 and int(sizes[:100].max()) == 2
    # The other 700: uniform on 1..4, 175 expected each (sd of a count: sqrt(700 * 1/4 * 3/4) = 11.5).
    counts = torch.bincount(sizes[100:], minlength=5).double()
    assert counts[0] == 0 and counts[5:].sum() == 0
    assert ((counts[1:5] - 175).abs() < 5 * math.sqrt(700 * 0.25 * 0.75)).all()


@pytest.mark.parametrize("full", [False, True])
def test_mixture_moments(full):
    torch.manual_seed(0)
    loc, scale = torch.randn(4, 3, 2), torch.rand(4, 3, 2) + 0.2
    parts = (dist.MultivariateNormal(loc, scale_tril=torch.diag_embed(scale) + torch.tensor([[0.0, 0.0], [0.7, 0.0]]))
             if full else dist.Normal(loc, scale).to_event(1))
    q = dist.MixtureSameFamily(dist.Categorical(logits=torch.randn(4, 3)), parts)
    support = bm.TaskSet.from_arrays(torch.zeros(4, 1, 1), torch.zeros(4, 1, 1))
    post = bm.TaskPosterior(HierarchicalLinearRegression(x_dim=1), support, "amortized", distribution=q)
    draws = post.sample(200000, seed=0)
    centred = draws - draws.mean(0)
    empirical = torch.einsum("std,ste->tde", centred, centred) / (len(draws) - 1)
    # 200000 draws: the sample covariance's entries are within about 0.01 of the truth at these scales.
    assert torch.allclose(empirical, post.covariance, atol=0.03)
    assert torch.allclose(draws.mean(0), post.mean, atol=0.02)


def test_full_covariance_components():
    model = HierarchicalLinearRegression(x_dim=2)  # phi_dim 3
    guide = MixtureGuide(model, components=4, covariance="full", hidden=8)
    q = guide.posterior(bm.TaskSet.from_arrays(torch.randn(5, 2, 2), torch.randn(5, 2, 1)))
    tril = q.component_distribution.scale_tril
    assert tril.shape == (5, 4, 3, 3) and (tril.triu(1) == 0).all() and (tril.diagonal(dim1=-2, dim2=-1) > 0).all()
    assert (tril.tril(-1) != 0).any()  # the off-diagonal is read from the head
    assert guide.init_args["covariance"] == "full"
    with pytest.raises(ValueError, match="covariance: expected 'diagonal' or 'full'"):
        MixtureGuide(model, covariance="dense")


def test_adapt_methods_accept_a_mixture_guide(linear, tmp_path):
    prior, mixed, test = linear
    support = test.support.head(2)
    post = mixed.adapt(support)
    assert isinstance(post.distribution, dist.MixtureSameFamily)
    assert post.mean.shape == (100, 1) and post.covariance.shape == (100, 1, 1)
    prediction = post.predict(torch.ones(100, 4, 1), num_samples=50, seed=0)
    assert prediction.mean.shape == (100, 4, 1) and prediction.std.shape == (100, 4, 1)
    importance = mixed.adapt(support, method="importance", num_particles=256, num_samples=50, seed=0)
    assert importance.draws.shape == (1, 50, 100, 1)
    exact = prior.model.exact_posterior(support)
    assert (importance.mean - exact.mean).abs().max() < 5 * exact.stddev.max()
    svi = mixed.adapt(support, method="svi", steps=5)
    assert svi.mean.shape == (100, 1)
    path = tmp_path / "mixed.prior"
    mixed.save(path)
    loaded = bm.LearnedPrior.load(path)
    assert loaded.guide.kind == "mixture" and loaded.guide.components == 3
    assert torch.allclose(loaded.adapt(support).mean, post.mean)


def test_bad_inputs_are_refused(linear):
    prior, _, test = linear
    with pytest.raises(ValueError, match="guide: 'mixture' cannot be fitted by the ELBO"):
        bm.fit_prior(HierarchicalLinearRegression(x_dim=1), test, guide="mixture", steps=1, progress=False)
    with pytest.raises(TypeError, match="prior: expected a LearnedPrior"):
        bm.amortize("prior.pt", test)
    with pytest.raises(ValueError, match="guide: expected a guide that reads support sets"):
        bm.amortize(prior, test, guide="per_task", steps=1, progress=False)
    with pytest.raises(ValueError, match="min_points: expected a non-negative int"):
        bm.amortize(prior, test, min_points=-1, steps=1, progress=False)
    with pytest.raises(ValueError, match=r"max_points: expected None or an int ≥ max\(min_points, 1\) = 3, got 2"):
        bm.amortize(prior, test, min_points=3, max_points=2, steps=1, progress=False)
    with pytest.raises(ValueError, match="max_points: expected None or an int ≥ .* got 0"):
        bm.amortize(prior, test, max_points=0, steps=1, progress=False)
    with pytest.raises(ValueError, match="components: expected a positive int"):
        MixtureGuide(prior.model, components=0)
    with pytest.raises(ValueError, match="steps"):
        bm.amortize(prior, test, steps=0, progress=False)

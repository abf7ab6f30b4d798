"""HierarchicalModel: the base program, overridden programs, and θ with a hyperprior (PyroSample)."""
from __future__ import annotations

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.nn import PyroSample
from pyro.ops.stats import effective_sample_size
from torch.distributions import kl_divergence

import bayesmeta as bm
from bayesmeta.model import model_registry
from bayesmeta.models import HierarchicalLinearRegression


class WholeTaskLinear(HierarchicalLinearRegression):
    """The same model as its parent, written as one overridden program: all of a task's points form
    one masked multivariate site instead of the base class's "points" plate."""

    def forward(self, tasks, subsample_size=None):
        prior = self.local_prior()
        with pyro.plate("tasks", len(tasks), subsample_size=subsample_size, dim=-2) as idx:
            phi = pyro.sample("phi", prior)[..., 0, :]
            data = tasks[idx].all_points()
            mean = (self.features(data.x) * phi[..., None, :]).sum(-1, keepdim=True)
            # A singleton axis at dim -3 puts each task's N x 1 block under the tasks plate (dim -2).
            noise = dist.Normal(mean[..., None, :, :], self.noise_scale).mask(data.mask[:, None, :, None])
            pyro.sample("whole_task", noise.to_event(2), obs=data.y[:, None])


def test_constructor_arguments_and_registry():
    model = HierarchicalLinearRegression(3, bias=False)
    assert model.init_args == {"x_dim": 3, "bias": False, "noise_floor": 1e-4}
    assert model_registry()["bayesmeta.models.linear.HierarchicalLinearRegression"] is HierarchicalLinearRegression
    assert WholeTaskLinear(2).init_args == {"x_dim": 2, "bias": True, "noise_floor": 1e-4}


def test_base_class_errors():
    with pytest.raises(ValueError, match="x_dim: expected a positive int, got 0"):
        HierarchicalLinearRegression(0)

    class Bare(bm.HierarchicalModel):
        phi_names = ["a"]

    with pytest.raises(NotImplementedError, match="Bare must define local_prior"):
        Bare(x_dim=1).local_prior()


def test_an_overridden_forward_works_with_every_method(linear_tasks):
    _, tasks = linear_tasks
    # The overridden program defines the same density, so the same guide and seed give the same ELBO.
    base, whole = HierarchicalLinearRegression(2), WholeTaskLinear(2)
    guide = bm.guides.AmortizedGuide(base)
    losses = []
    for model in (base, whole):
        pyro.set_rng_seed(1)
        losses.append(pyro.infer.Trace_ELBO(max_plate_nesting=2)(model, guide)(tasks, 32).item())
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)
    # ... so fitting either gives the same θ and guide (up to float rounding over 300 steps) ...
    priors = [bm.fit_prior(cls(2), tasks, steps=300, batch_tasks=64, lr=1e-2, seed=0, progress=False)
              for cls in (HierarchicalLinearRegression, WholeTaskLinear)]
    for name in ("prior_loc", "prior_scale", "noise_scale"):
        torch.testing.assert_close(getattr(priors[1].model, name), getattr(priors[0].model, name), atol=1e-4, rtol=1e-4)
    # ... and every adapt method runs the overridden program to the same answer.
    support = tasks.support[:8].head(3)
    exact = priors[1].adapt(support, method="exact").distribution
    for method in ("amortized", "svi"):
        posts = [p.adapt(support, method=method) for p in priors]
        torch.testing.assert_close(posts[1].mean, posts[0].mean, atol=1e-3, rtol=1e-3)
    assert kl_divergence(posts[1].distribution, exact).max() < 0.01
    # NUTS trajectories are chaotic in float rounding, so compare with the exact posterior instead,
    # within 4 Monte Carlo standard errors (ESS estimated from the chain).
    nuts = priors[1].adapt(support, method="nuts", num_samples=400, warmup_steps=300, jit_compile=True, seed=0)
    ess = effective_sample_size(nuts.draws, chain_dim=0, sample_dim=1)
    se = nuts.draws.flatten(0, 1).std(0) / ess.sqrt()
    assert ((nuts.mean - exact.mean).abs() <= 4 * se).all()


class HyperLinear(HierarchicalLinearRegression):
    """θ's mean gets a hyperprior: full Bayes over prior_loc, empirical Bayes over the scales."""

    def __init__(self, x_dim: int) -> None:
        super().__init__(x_dim)
        self.register_buffer("zeros", torch.zeros(self.phi_dim))
        self.prior_loc = PyroSample(lambda self: dist.Normal(self.zeros, 10.0).to_event(1))


def test_hyperprior_sites_get_a_global_guide(linear_tasks, linear_type_ii_ml, tmp_path):
    family, tasks = linear_tasks
    model = HyperLinear(2)
    prior = bm.fit_prior(model, tasks, steps=2000, batch_tasks=64, lr=1e-2, seed=0, progress=False)
    assert prior.guide.global_guide is not None
    theta = prior.guide.theta_point()
    assert set(theta) == {"prior_loc"}
    # With a flat N(0, 10^2) hyperprior, q(prior_loc) centres on the type-II ML estimate from the same tasks.
    # Its posterior sd is about prior_scale / sqrt(400) <= 1.5 / 20 = 0.075, so 0.05 bounds the inference
    # error well inside it (measured 0.011); comparing with the truth would add ~0.075 of sampling error.
    assert (theta["prior_loc"] - linear_type_ii_ml.prior_loc.detach()).abs().max() < 0.05
    support = tasks.support[:10].head(3)
    for method, options in [("amortized", {}), ("exact", {}), ("svi", {"steps": 50}),
                            ("nuts", {"num_samples": 50, "warmup_steps": 50})]:
        post = prior.adapt(support, method=method, **options)
        assert torch.isfinite(post.mean).all() and post.mean.shape == (10, 3)
    # adapt plugs in q(θ)'s median: the exact posterior under it matches one computed by hand.
    plain = HierarchicalLinearRegression(2)
    plain.prior_loc = theta["prior_loc"]
    plain.prior_scale, plain.noise_scale = model.prior_scale.detach(), model.noise_scale.detach()
    torch.testing.assert_close(prior.adapt(support, method="exact").mean, plain.exact_posterior(support).mean)
    prior.save(tmp_path / "hyper.prior")
    loaded = bm.LearnedPrior.load(tmp_path / "hyper.prior")
    torch.testing.assert_close(loaded.guide.theta_point()["prior_loc"], theta["prior_loc"])


class AllHyper(bm.HierarchicalModel):
    """θ entirely under hyperpriors: the model has no parameters or buffers of its own."""

    phi_names = ["offset"]

    def __init__(self) -> None:
        super().__init__(x_dim=1)
        self.loc = PyroSample(dist.Normal(torch.zeros(1), 5.0).to_event(1))
        self.scale = PyroSample(dist.LogNormal(torch.zeros(1), 1.0).to_event(1))

    def local_prior(self):
        return dist.Normal(self.loc, self.scale).to_event(1)

    def likelihood(self, phi, x):
        return dist.Normal(phi[..., None, :] + 0 * x, 0.5).to_event(1)


def test_a_model_without_parameters_fits_and_adapts():
    model = AllHyper()
    assert list(model.parameters()) == [] and model.device == torch.device("cpu")
    tasks = bm.TaskSet.from_arrays(torch.zeros(30, 6, 1), 2.0 + 0.5 * torch.randn(30, 6, 1))
    prior = bm.fit_prior(model, tasks, steps=300, batch_tasks=30, lr=0.05, seed=0, progress=False)
    assert set(prior.guide.theta_point()) == {"loc", "scale"}
    # Every task's offset is 2 and 180 points with noise 0.5 pin their mean to ~0.04; q(loc) must centre
    # there, and 0.3 leaves room only for the spread the learned task scale adds.
    assert abs(prior.guide.theta_point()["loc"].item() - 2.0) < 0.3
    post = prior.adapt(tasks.support[:3], method="svi", steps=50)
    assert post.mean.shape == (3, 1)

"""fit_prior(method="nuts"): full Bayes over θ and every φ, checked against a conjugate normal hierarchy."""
from __future__ import annotations

import math

import pyro.distributions as dist
import pytest
import torch
from pyro.nn import PyroSample

import bayesmeta as bm
from bayesmeta.inference.nuts import run_nuts

A, B, S = 2.0, 1.0, 0.5  # prior sd of the mean, spread of the tasks around it, noise sd


class NormalMeans(bm.HierarchicalModel):
    """mu ~ N(0, A²); φ_j | mu ~ N(mu, B²); y_jk | φ_j ~ N(φ_j, S²): every posterior is Gaussian in closed form."""

    phi_names = ["mean"]

    def __init__(self):
        super().__init__(x_dim=1)
        self.mu = PyroSample(dist.Normal(0.0, A))

    def local_prior(self):
        return dist.Normal(self.mu[..., None], B).to_event(1)

    def likelihood(self, phi, x):
        return dist.Normal(phi[..., None, :] + 0 * x, S).to_event(1)


def _tasks(y: torch.Tensor) -> bm.TaskSet:
    return bm.TaskSet.from_arrays(torch.zeros_like(y)[..., None], y[..., None])


@pytest.fixture(scope="module")
def data():
    g = torch.Generator().manual_seed(0)
    y = 1.5 + B * torch.randn(6, 1, generator=g) + S * torch.randn(6, 3, generator=g)  # 6 tasks x 3 points
    return _tasks(y)


@pytest.fixture(scope="module")
def fitted(data):
    return bm.fit_prior(NormalMeans(), data, method="nuts", num_samples=600, warmup_steps=300, num_chains=2,
                        jit_compile=True, seed=0, progress=False)


def _mu_posterior(ybar: torch.Tensor, n: int) -> tuple[float, float]:
    """p(mu | D): each task's mean ȳ_j ~ N(mu, B² + S²/n) once φ_j is integrated out."""
    v = B**2 + S**2 / n
    precision = 1 / A**2 + len(ybar) / v
    return (ybar.sum() / v / precision).item(), precision**-0.5


def _ess(draws: torch.Tensor) -> float:
    """A conservative effective sample size: the initial-positive-sequence estimate on the pooled chains."""
    import arviz as az

    return float(az.ess(draws.double().numpy()))


def _mcse_sd(draws: torch.Tensor) -> float:
    """ArviZ's Monte Carlo standard error of the posterior sd (chains x draws)."""
    import arviz as az

    return float(az.mcse(draws.double().numpy(), method="sd"))


def test_theta_and_phi_posteriors_match_the_closed_form(fitted, data):
    mu = fitted.theta_draws["mu"]
    assert mu.shape == (2, 600)
    mean, sd = _mu_posterior(data.support.y[..., 0].mean(1), 3)
    # 4 Monte Carlo standard errors on the mean (sd / sqrt(ESS)) and on the sd (ArviZ's MCSE of the sd, from the
    # ESS of the squared deviations: NUTS draws can be antithetic for the mean, ESS > draws, but not for the sd).
    ess = _ess(mu)
    assert abs(mu.mean().item() - mean) < 4 * sd / math.sqrt(ess)
    assert abs(mu.std().item() - sd) < 4 * _mcse_sd(mu)
    # φ_1 | D: given mu it is Gaussian; marginally its mean is the shrinkage of ȳ_1 toward E[mu | D].
    post = fitted.training_posterior
    assert post.draws.shape == (2, 600, 6, 1) and post.method == "nuts"
    w = (1 / B**2) / (1 / B**2 + 3 / S**2)
    ybar = data.support.y[0, :, 0].mean().item()
    expected = w * mean + (1 - w) * ybar
    expected_sd = math.sqrt(1 / (1 / B**2 + 3 / S**2) + w**2 * sd**2)
    phi = post.draws[..., 0, 0]
    assert abs(phi.mean().item() - expected) < 4 * expected_sd / math.sqrt(_ess(phi))


def test_adapt_marginalizes_theta_over_the_joint_posterior(fitted, data):
    new = _tasks(torch.tensor([[4.0, 3.5]]))
    post = fitted.adapt(new.support, method="nuts", num_samples=600, warmup_steps=300, jit_compile=True, seed=1)
    assert post.draws.shape == (2, 600, 1, 1) and set(post.diagnostics["theta_draws"]) == {"mu"}
    # The new task informs mu as the others do: p(mu | D, y*) from all 7 tasks' means (the new one has 2 points).
    ybar = data.support.y[..., 0].mean(1)
    v3, v2 = B**2 + S**2 / 3, B**2 + S**2 / 2
    precision = 1 / A**2 + len(ybar) / v3 + 1 / v2
    mu_mean, mu_var = (ybar.sum().item() / v3 + 3.75 / v2) / precision, 1 / precision
    w = (1 / B**2) / (1 / B**2 + 2 / S**2)
    expected = w * mu_mean + (1 - w) * 3.75
    expected_sd = math.sqrt(1 / (1 / B**2 + 2 / S**2) + w**2 * mu_var)
    phi = post.draws[..., 0, 0]
    ess = _ess(phi)
    assert abs(phi.mean().item() - expected) < 4 * expected_sd / math.sqrt(ess)
    assert abs(phi.std().item() / expected_sd - 1) < 4 / math.sqrt(2 * ess)
    # Predictions pair each φ draw with its θ draw and add the noise.
    pred = post.predict(torch.zeros(1, 5, 1), num_samples=2000, seed=0)
    assert torch.allclose(pred.std, torch.tensor(math.sqrt(S**2 + expected_sd**2)), rtol=0.1)


def test_sample_stats_are_recorded_per_draw(fitted):
    stats = fitted.training_posterior.diagnostics["sample_stats"]
    assert set(stats) == {"lp", "energy", "step_size", "tree_depth", "n_steps", "acceptance_rate", "diverging"}
    assert all(v.shape == (2, 600) for v in stats.values())
    assert stats["diverging"].dtype == torch.bool
    # The Hamiltonian at a transition's start is the previous draw's potential (-lp) plus a kinetic energy >= 0.
    assert (stats["energy"][:, 1:] >= -stats["lp"][:, :-1] - 1e-4).all()
    assert ((stats["acceptance_rate"] >= 0) & (stats["acceptance_rate"] <= 1 + 1e-6)).all()
    assert (stats["n_steps"] >= 1).all()
    assert (2 ** (stats["tree_depth"] - 1) <= stats["n_steps"]).all() and (stats["n_steps"] < 2 ** stats["tree_depth"]).all()


def test_parallel_chains_give_the_same_draws_as_sequential(data):
    kwargs = dict(num_samples=30, warmup_steps=20, num_chains=2, seed=3)
    serial = run_nuts(NormalMeans(), (data,), parallel=False, **kwargs)
    parallel = run_nuts(NormalMeans(), (data,), parallel=True, **kwargs)
    for name in serial.samples:
        torch.testing.assert_close(serial.samples[name], parallel.samples[name])
    torch.testing.assert_close(serial.sample_stats["energy"], parallel.sample_stats["energy"])


def test_save_and_load_keep_the_draws_and_training_tasks(fitted, tmp_path):
    fitted.save(tmp_path / "fb.prior")
    loaded = bm.LearnedPrior.load(tmp_path / "fb.prior")
    assert loaded.method == "nuts" and loaded.guide is None
    torch.testing.assert_close(loaded.theta_draws["mu"], fitted.theta_draws["mu"])
    torch.testing.assert_close(loaded.training_posterior.draws, fitted.training_posterior.draws)
    torch.testing.assert_close(loaded.training_tasks.support.y, fitted.training_tasks.support.y)


def test_svi_priors_give_the_guide_on_the_training_tasks(linear_train):
    from bayesmeta.models import HierarchicalLinearRegression

    small = linear_train[:40]
    prior = bm.fit_prior(HierarchicalLinearRegression(x_dim=3), small, guide="exact", steps=5, progress=False)
    post = prior.training_posterior
    assert len(post) == 40 and post.distribution is not None
    exact = prior.adapt(small.all_points(), method="exact")  # the exact guide reads all of a task's points
    torch.testing.assert_close(post.mean, exact.mean)


def test_bad_requests_say_what_to_do(data):
    from bayesmeta.models import HierarchicalLinearRegression

    with pytest.raises(ValueError, match="hyperprior"):
        bm.fit_prior(HierarchicalLinearRegression(x_dim=1), data, method="nuts", progress=False)
    with pytest.raises(ValueError, match="method: expected 'svi' or 'nuts'"):
        bm.fit_prior(NormalMeans(), data, method="hmc", progress=False)
    with pytest.raises(TypeError, match="num_samples"):
        bm.fit_prior(NormalMeans(), data, num_samples=10, progress=False)
    with pytest.raises(TypeError, match="unexpected keyword"):
        bm.fit_prior(NormalMeans(), data, method="nuts", num_sample=10, progress=False)

    class Switches(bm.HierarchicalModel):
        phi_names = ["on"]

        def __init__(self):
            super().__init__(x_dim=1)
            self.p = PyroSample(dist.Beta(1.0, 1.0))

        def local_prior(self):
            return dist.Bernoulli(self.p[..., None]).to_event(1)

        def likelihood(self, phi, x):
            return dist.Normal(phi[..., None, :] + 0 * x, 1.0).to_event(1)

    with pytest.raises(ValueError, match="discrete"):
        bm.fit_prior(Switches(), data, method="nuts", progress=False)

    class FixedSwitches(Switches):  # empirical Bayes: adapt(method="nuts") must refuse the discrete φ too
        def __init__(self):
            super().__init__()
            del self.p
            self.p = torch.tensor(0.5)

    eb = bm.LearnedPrior(FixedSwitches(), object(), {}, {})
    with pytest.raises(ValueError, match="'phi' of FixedSwitches is discrete"):
        eb.adapt(data.support, method="nuts")


def test_adapting_a_full_bayes_prior_needs_nuts(fitted, data):
    with pytest.raises(ValueError, match="only method='nuts'"):
        fitted.adapt(data.support, method="amortized")

"""bayesmeta.diagnostics.arviz: TaskPosterior / LearnedPrior -> InferenceData, and atomic netCDF files."""
from __future__ import annotations

import shutil

import arviz as az
import matplotlib
import numpy as np
import pyro.distributions as dist
import pytest
import torch
from pyro.nn import PyroSample

import bayesmeta as bm
from bayesmeta.diagnostics.arviz import load_example, save_netcdf, to_inference_data
from bayesmeta.models import HierarchicalLinearRegression

matplotlib.use("Agg")

POINT_GROUPS = ("observed_data", "log_likelihood", "posterior_predictive", "constant_data")
GROUPS = {"posterior", "prior", *POINT_GROUPS}
NAMES = ["north", "south", "east", "west"]


class Shifted(bm.HierarchicalModel):
    """φ = (a, b) around a hyperprior mean ``mu`` (2) with a tiny spread; ``y ~ N(a + b x, 1)``."""

    phi_names = ["a", "b"]

    def __init__(self) -> None:
        super().__init__(x_dim=1)
        self.mu = PyroSample(dist.Normal(0.0, 1.0).expand([2]).to_event(1))

    def local_prior(self) -> dist.Distribution:
        return dist.Normal(self.mu, 0.01).to_event(1)

    def likelihood(self, phi, x):
        return dist.Normal(phi[..., None, :1] + x * phi[..., None, 1:], 1.0).to_event(1)


class Coin(bm.HierarchicalModel):
    """Class labels: ``y ~ Categorical(logits=(0, logit))`` (event shape ``()``)."""

    phi_names = ["logit"]

    def __init__(self) -> None:
        super().__init__(x_dim=1)

    def local_prior(self) -> dist.Distribution:
        return dist.Normal(torch.zeros(1), 1.0).to_event(1)

    def likelihood(self, phi, x):
        logit = phi[..., None, :] + 0 * x  # ... x T x N x 1
        return dist.Categorical(logits=torch.cat([torch.zeros_like(logit), logit], -1))


@pytest.fixture(scope="module")
def train() -> bm.TaskSet:
    return bm.tasks.LinearGaussian(x_dim=1, seed=0).sample(num_tasks=30, support=5, query=5, seed=0)


@pytest.fixture(scope="module")
def priors(train) -> dict[str, bm.LearnedPrior]:
    return {guide: bm.fit_prior(HierarchicalLinearRegression(x_dim=1), train, guide=guide, steps=50, progress=False, seed=0)
            for guide in ("exact", "amortized")}


@pytest.fixture(scope="module")
def new_tasks() -> bm.TaskSet:
    """Four named tasks, 6 support and 5 query points each."""
    t = bm.tasks.LinearGaussian(x_dim=1, seed=0).sample(num_tasks=4, support=6, query=5, seed=1)
    return bm.TaskSet.from_arrays(t.support.x, t.support.y, t.query.x, t.query.y, names=NAMES)


def exact_posterior(support: bm.TaskSet, model=None) -> bm.TaskPosterior:
    model = model or HierarchicalLinearRegression(x_dim=1)
    with torch.no_grad():
        return bm.TaskPosterior(model, support, "exact", distribution=model.exact_posterior(support.support))


def hand_made_nuts(chains: int = 2, draws: int = 50, **diagnostics) -> bm.TaskPosterior:
    support = bm.TaskSet.from_arrays(torch.randn(3, 4, 1), torch.randn(3, 4, 1))
    generator = torch.Generator().manual_seed(0)
    phi = torch.randn(chains, draws, 3, 2, generator=generator)
    return bm.TaskPosterior(HierarchicalLinearRegression(x_dim=1), support, "nuts", draws=phi, diagnostics=diagnostics)


def check_groups(idata, num_chains: int, num_draws: int, names: list[str], num_obs: int, method: str) -> None:
    assert GROUPS <= set(idata.groups())
    for group in ("posterior", "prior"):
        phi = idata[group]["phi"]
        assert phi.dims == ("chain", "draw", "task", "phi_dim")
        assert phi.shape == (num_chains, num_draws, len(names), 2)
        assert phi.coords["task"].values.tolist() == names
        assert phi.coords["phi_dim"].values.tolist() == ["w0", "bias"]
    assert idata.observed_data["y"].dims == ("obs",) and idata.observed_data["y"].size == num_obs
    assert idata.log_likelihood["y"].dims == ("chain", "draw", "obs")
    assert idata.log_likelihood["y"].shape == (num_chains, num_draws, num_obs)
    assert np.isfinite(idata.log_likelihood["y"].values).all()
    assert idata.posterior_predictive["y"].shape == (num_chains, num_draws, num_obs)
    assert idata.constant_data["x"].dims == ("obs", "x_dim")
    for group in POINT_GROUPS:
        assert set(idata[group]["obs"].coords["task"].values) == set(names)
    for group in idata.groups():
        attrs = idata[group].attrs
        assert attrs["model"] == "HierarchicalLinearRegression" and attrs["method"] == method
        assert attrs["bayesmeta_version"] == bm.__version__ and attrs["inference_library"] == "pyro"
        assert attrs["inference_library_version"]


@pytest.mark.parametrize("method", ["amortized", "svi", "exact", "nuts"])
def test_every_adapt_method_converts(priors, new_tasks, method):
    prior = priors["amortized" if method == "amortized" else "exact"]
    options = {"svi": {"steps": 20}, "nuts": {"num_samples": 100, "warmup_steps": 100, "num_chains": 1}}
    post = prior.adapt(new_tasks, method=method, **options.get(method, {}))  # a TaskSet: keeps the names
    idata = to_inference_data(post, num_samples=200)
    check_groups(idata, 1, 100 if method == "nuts" else 200, NAMES, 24, method)
    stats = post.diagnostics.get("sample_stats")
    assert ("sample_stats" in idata.groups()) == bool(stats)
    if stats:
        assert idata.sample_stats["diverging"].shape == (1, 100)
        assert idata.sample_stats["diverging"].dtype == bool


def test_unnamed_tasks_get_index_names_and_query_points_are_scored(new_tasks):
    support = bm.TaskSet(new_tasks.support)  # no names
    post = exact_posterior(support)
    idata = to_inference_data(post, num_samples=20, data=new_tasks.query)
    check_groups(idata, 1, 20, ["task0", "task1", "task2", "task3"], 20, "exact")
    same = to_inference_data(post, num_samples=20, data=new_tasks)  # a TaskSet: its query points
    assert same.observed_data.equals(idata.observed_data)


def test_ragged_tasks_give_only_observed_points():
    counts = [2, 5, 3]
    generator = torch.Generator().manual_seed(0)
    xs = [torch.randn(n, 1, generator=generator) for n in counts]
    tasks = bm.TaskSet.from_lists(xs, [2 * x for x in xs], names=["a", "b", "c"])
    idata = to_inference_data(exact_posterior(tasks), num_samples=30)
    check_groups(idata, 1, 30, ["a", "b", "c"], sum(counts), "exact")
    obs = idata.observed_data["y"]
    assert obs.coords["task"].values.tolist() == ["a"] * 2 + ["b"] * 5 + ["c"] * 3
    assert obs.coords["point"].values.tolist() == [0, 1, 0, 1, 2, 3, 4, 0, 1, 2]
    np.testing.assert_allclose(obs.values, 2 * torch.cat(xs).squeeze(-1).numpy())


def test_log_likelihood_equals_independent_normal_computation(priors, new_tasks):
    post = priors["exact"].adapt(new_tasks, method="exact")
    idata = to_inference_data(post, num_samples=50, data=new_tasks.query)
    phi = torch.as_tensor(idata.posterior["phi"].values)  # 1 x S x T x 2
    task = [NAMES.index(t) for t in idata.observed_data["task"].values]
    x = torch.as_tensor(idata.constant_data["x"].values)[:, 0]
    y = torch.as_tensor(idata.observed_data["y"].values)
    mean = phi[..., task, 0] * x + phi[..., task, 1]
    expected = torch.distributions.Normal(mean, post.model.noise_scale.detach()).log_prob(y)
    np.testing.assert_allclose(idata.log_likelihood["y"].values, expected.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(y.numpy(), new_tasks.query.y.flatten().numpy())


def test_seed_gives_the_same_draws(new_tasks):
    post = exact_posterior(new_tasks)
    first, again = (to_inference_data(post, num_samples=10, seed=3) for _ in range(2))
    other = to_inference_data(post, num_samples=10, seed=4)
    for group in ("posterior", "prior", "posterior_predictive"):
        assert first[group].equals(again[group])
        assert not first[group].equals(other[group])


def test_summary_loo_and_waic_run():
    generator = torch.Generator().manual_seed(0)
    # Enough well-behaved points per task that no single one dominates (ArviZ warns on Pareto k / WAIC variance).
    x = 0.5 * torch.randn(4, 40, 1, generator=generator)
    y = 1.5 * x + 0.3 + torch.randn(4, 40, 1, generator=generator)  # noise sd 1 = the model's
    idata = to_inference_data(exact_posterior(bm.TaskSet.from_arrays(x, y)), num_samples=500)
    assert len(az.summary(idata, var_names=["phi"], kind="stats")) == 8
    loo, waic = az.loo(idata), az.waic(idata)
    assert np.isfinite(loo.elpd_loo) and np.isfinite(waic.elpd_waic) and loo.n_data_points == 160


# ArviZ 0.23's plot_energy passes a dict alias map to matplotlib >= 3.11 (deprecated there; not our call).
def test_sample_stats_give_bfmi_and_energy_plot():
    generator = torch.Generator().manual_seed(1)
    stats = {
        "energy": torch.randn(2, 50, generator=generator) + 10, "diverging": torch.zeros(2, 50, dtype=torch.bool),
        "step_size": torch.full((2, 50), 0.3), "tree_depth": torch.full((2, 50), 3), "lp": torch.randn(2, 50),
        "unknown": torch.zeros(2, 50),
    }
    idata = to_inference_data(hand_made_nuts(sample_stats=stats))
    check_groups(idata, 2, 50, ["task0", "task1", "task2"], 12, "nuts")
    assert set(idata.sample_stats.data_vars) == {"energy", "diverging", "step_size", "tree_depth", "lp"}
    assert idata.sample_stats["energy"].dims == ("chain", "draw")
    assert az.bfmi(idata).shape == (2,)
    import matplotlib.pyplot as plt

    try:
        az.plot_energy(idata)
    finally:
        plt.close("all")


def test_nuts_without_sample_stats_has_no_such_group():
    assert "sample_stats" not in to_inference_data(hand_made_nuts()).groups()


def test_theta_draws_become_posterior_variables_and_condition_the_prior():
    model = Shifted()
    support = bm.TaskSet.from_arrays(torch.randn(3, 4, 1), torch.randn(3, 4, 1))
    mu = torch.tensor([100.0, -50.0]).expand(2, 20, 2).clone()
    mu[1] += 1.0  # the second chain's θ
    post = bm.TaskPosterior(model, support, "nuts", draws=torch.randn(2, 20, 3, 2),
                            diagnostics={"theta_draws": {"mu": mu, "tau": torch.ones(2, 20)}})
    idata = to_inference_data(post)
    assert idata.posterior["mu"].dims == ("chain", "draw", "mu_dim_0")
    assert idata.posterior["tau"].dims == ("chain", "draw")
    prior_phi = idata.prior["phi"].values  # 2 x 20 x 3 x 2, each draw around its θ draw
    np.testing.assert_allclose(prior_phi, np.broadcast_to(mu.numpy()[:, :, None, :], prior_phi.shape), atol=0.1)
    # A Gaussian posterior of such a model: the prior at a θ point when one is given, else marginal.
    gauss = dist.MultivariateNormal(torch.zeros(3, 2), torch.eye(2).expand(3, 2, 2))
    at_point = bm.TaskPosterior(model, support, "amortized", distribution=gauss, diagnostics={"theta": {"mu": mu[0, 0]}})
    np.testing.assert_allclose(to_inference_data(at_point, num_samples=5).prior["phi"].values[..., 0], 100.0, atol=0.1)
    marginal = to_inference_data(bm.TaskPosterior(model, support, "amortized", distribution=gauss), num_samples=200)
    assert 0.5 < marginal.prior["phi"].values.std() < 2.0  # θ redrawn from its N(0, 1) hyperprior


def test_class_labels(new_tasks):
    labels = (new_tasks.support.y[..., 0] > 0).long()
    support = bm.TaskSet.from_arrays(new_tasks.support.x, labels)
    gauss = dist.Normal(torch.zeros(4, 1), 1.0).to_event(1)
    idata = to_inference_data(bm.TaskPosterior(Coin(), support, "amortized", distribution=gauss), num_samples=20)
    assert idata.observed_data["y"].dims == ("obs",) and idata.observed_data["y"].dtype == np.int64
    assert idata.log_likelihood["y"].shape == (1, 20, 24) and np.isfinite(idata.log_likelihood["y"]).all()


def test_learned_prior_with_point_theta(priors, train):
    prior = priors["exact"]
    idata = to_inference_data(prior, num_samples=20)
    constant = idata.constant_data
    np.testing.assert_allclose(constant["theta_prior_loc"].values, prior.model.prior_loc.detach().numpy())
    assert constant["theta_prior_scale"].dims == ("theta_prior_scale_dim_0",)
    assert constant["theta_noise_scale"].dims == () and float(constant["theta_noise_scale"]) > 0
    assert idata.posterior.attrs["method"] == "fit_prior:svi/exact"
    # The training tasks' posterior, scored on every point the fit saw.
    assert idata.posterior["phi"].shape == (1, 20, 30, 2)
    assert idata.log_likelihood["y"].shape == (1, 20, 300)


def test_learned_prior_with_theta_draws_and_without_training_tasks():
    model = Shifted()
    theta = {"mu": torch.randn(1, 10, 2)}
    post = hand_made_nuts(chains=1, draws=10, theta_draws=theta, sample_stats={"energy": torch.randn(1, 10)})
    post.model = model
    prior = bm.LearnedPrior(model, None, {"method": "nuts"}, {}, theta_draws=theta, training_tasks=post.support,
                            training_posterior=post)
    idata = to_inference_data(prior)
    assert {"posterior", "prior", "sample_stats", *POINT_GROUPS} <= set(idata.groups())
    assert idata.posterior["mu"].shape == (1, 10, 2) and idata.posterior["phi"].shape == (1, 10, 3, 2)
    assert idata.posterior.attrs["method"] == "fit_prior:nuts"
    alone = to_inference_data(bm.LearnedPrior(model, None, {"method": "nuts"}, {}, theta_draws=theta))
    assert set(alone.groups()) == {"posterior"} and set(alone.posterior.data_vars) == {"mu"}


def roundtrip_idata():
    stats = {"energy": torch.randn(2, 50), "diverging": torch.rand(2, 50) < 0.1}
    return to_inference_data(hand_made_nuts(sample_stats=stats))


def test_netcdf_round_trip(tmp_path):
    idata = roundtrip_idata()
    path = tmp_path / "sub" / "post.nc"
    save_netcdf(idata, path)
    back = az.from_netcdf(path)
    assert set(back.groups()) == set(idata.groups())
    for group in idata.groups():
        assert back[group].equals(idata[group]), group
        assert back[group].attrs == idata[group].attrs
    assert back.sample_stats["diverging"].dtype == bool
    assert back.observed_data["task"].values.tolist() == idata.observed_data["task"].values.tolist()


def test_failed_write_leaves_no_file(tmp_path, monkeypatch):
    idata, path = roundtrip_idata(), tmp_path / "post.nc"

    def half_written(self, filename, *args, **kwargs):
        with open(filename, "wb") as file:
            file.write(b"\x89HDF partial")
        raise OSError("disk full")

    monkeypatch.setattr(az.InferenceData, "to_netcdf", half_written)
    with pytest.raises(OSError, match="disk full"):
        save_netcdf(idata, path)
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()

    path.write_bytes(b"old")

    def copy_then_fail(source, target, *args):
        target.write(source.read(10))
        raise OSError("interrupted")

    monkeypatch.setattr(shutil, "copyfileobj", copy_then_fail)
    with pytest.raises(OSError, match="interrupted"):
        save_netcdf(idata, path)
    assert path.read_bytes() == b"old" and list(tmp_path.iterdir()) == [path]


def test_bad_input_errors(new_tasks):
    with pytest.raises(TypeError, match="expected a TaskPosterior or LearnedPrior, got dict"):
        to_inference_data({})

    class Nameless(HierarchicalLinearRegression):
        def __init__(self) -> None:
            super().__init__(x_dim=1)
            self.phi_names = []

    with pytest.raises(ValueError, match="phi_names.*set phi_names"):
        to_inference_data(exact_posterior(new_tasks, model=Nameless()))
    post = exact_posterior(new_tasks)
    with pytest.raises(ValueError, match="data: expected 'support'"):
        to_inference_data(post, data="query")
    with pytest.raises(ValueError, match="no query points"):
        to_inference_data(post, data=bm.TaskSet(new_tasks.support))
    with pytest.raises(ValueError, match="expected 4 tasks"):
        to_inference_data(post, data=new_tasks[:2].query)


def test_load_example_reads_bundled_data_only():
    assert load_example("non_centered_eight").observed_data["obs"].shape == (8,)
    with pytest.raises(ValueError, match="bundled with ArviZ"):
        load_example("radon")


class NoisyMeans(bm.HierarchicalModel):
    """``y ~ N(φ, noise²)`` with the noise under a hyperprior: a likelihood that reads θ.

    Written as Pyro's vectorized particles need it: a draw of θ arrives with shape ``draws x 1 x 1`` (room for
    the tasks and points dims), so the likelihood adds the output dim itself (``noise[..., None]``).
    """

    phi_names = ["mean"]

    def __init__(self) -> None:
        super().__init__(x_dim=1)
        self.noise = PyroSample(dist.HalfNormal(1.0))

    def local_prior(self) -> dist.Distribution:
        return dist.Normal(torch.zeros(1), 1.0).to_event(1)

    def likelihood(self, phi, x):
        return dist.Normal(phi[..., None, :] + 0 * x, self.noise[..., None]).to_event(1)


def test_log_likelihood_pairs_each_draw_with_its_theta():
    support = bm.TaskSet.from_arrays(torch.zeros(3, 4, 1), torch.randn(3, 4, 1))
    phi = torch.randn(2, 10, 3, 1)
    noise = torch.rand(2, 10) + 0.5
    post = bm.TaskPosterior(NoisyMeans(), support, "nuts", draws=phi, diagnostics={"theta_draws": {"noise": noise}})
    log_lik = to_inference_data(post).log_likelihood["y"].values  # 2 x 10 x 12 observations
    expected = torch.distributions.Normal(phi, noise[..., None, None]).log_prob(support.support.y[..., 0][None, None])
    np.testing.assert_allclose(log_lik, expected.reshape(2, 10, 12).numpy(), rtol=1e-5, atol=1e-5)
    # A posterior computed at a point θ uses that point for every draw.
    gauss = dist.MultivariateNormal(torch.zeros(3, 1), torch.eye(1).expand(3, 1, 1))
    at_point = bm.TaskPosterior(NoisyMeans(), support, "amortized", distribution=gauss,
                                diagnostics={"theta": {"noise": torch.tensor(0.3)}})
    idata = to_inference_data(at_point, num_samples=5, seed=0)
    draws = torch.as_tensor(idata.posterior["phi"].values)  # 1 x 5 x 3 x 1
    expected = torch.distributions.Normal(draws, 0.3).log_prob(support.support.y[..., 0][None, None])
    np.testing.assert_allclose(idata.log_likelihood["y"].values, expected.reshape(1, 5, 12).numpy(), rtol=1e-5,
                               atol=1e-5)

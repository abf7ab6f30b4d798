"""structure(): mutual information under the hyperprior, and information gain by shots against closed forms."""
from __future__ import annotations

import math

import numpy as np
import pyro.distributions as dist
import pytest
import torch
from matplotlib.container import ErrorbarContainer
from matplotlib.figure import Figure
from pyro.nn import PyroSample

import bayesmeta as bm
from bayesmeta.diagnostics.entropy import entropy
from bayesmeta.diagnostics.structure import StructureReport, structure
from bayesmeta.models import HierarchicalLinearRegression

LOG_2PI_E = math.log(2 * math.pi * math.e)


class RandomOffset(bm.HierarchicalModel):
    r"""loc ~ N(0, a^2), phi | loc ~ N(loc, (c b)^2) with log c ~ N(m, 0.5^2) if ``random_scale``.

    ``stretched`` writes the same Gaussian as an affine image of N(loc, b^2) (scale 2): a local prior with
    no ``entropy()``, so the conditional entropy goes through Monte Carlo.
    """

    phi_names = ["offset"]

    def __init__(self, a: float = 2.0, b: float = 0.5, random_scale: bool = False, stretched: bool = False) -> None:
        super().__init__(x_dim=1)
        self.b, self.random_scale, self.stretched = b, random_scale, stretched
        self.loc = PyroSample(dist.Normal(0.0, a))
        if random_scale:
            self.log_c = PyroSample(dist.Normal(-0.5, 0.5))

    def local_prior(self):
        loc = self.loc.reshape(1)
        scale = self.b * self.log_c.exp() if self.random_scale else torch.tensor(self.b)
        if self.stretched:
            affine = dist.transforms.AffineTransform(0.0, 2.0)
            return dist.TransformedDistribution(dist.Normal(loc / 2, scale), [affine]).to_event(1)
        return dist.Normal(loc, scale).to_event(1)

    def likelihood(self, phi, x):
        return dist.Normal(phi[..., None, :] + 0 * x, 0.1).to_event(1)


class ThetaDrawsStub:
    """What a NUTS-fitted prior will carry: the model and posterior draws of its hyperprior sites."""

    def __init__(self, model, theta_draws):
        self.model, self.theta_draws = model, theta_draws


def within(value, se, truth, n_se=3.0):
    return abs(value - truth) < n_se * se


# ---------------------------------------------------------------------- mutual information
def test_mutual_information_matches_closed_form():
    a, b = 2.0, 0.5
    report = structure(RandomOffset(a, b), num_theta=2000, seed=0)
    assert report.conditional_entropy == pytest.approx(0.5 * math.log(2 * math.pi * math.e * b ** 2))
    assert report.conditional_entropy_se == 0.0  # H(p(phi|theta)) does not depend on loc
    assert within(report.marginal_entropy, report.marginal_entropy_se, 0.5 * math.log(2 * math.pi * math.e * (a**2 + b**2)))
    assert 0 < report.mutual_information_se < 0.05
    assert within(report.mutual_information, report.mutual_information_se, 0.5 * math.log((a**2 + b**2) / b**2))
    assert report.prior_entropy is None and report.by_shots is None and report.mutual_information_posterior is None


def test_conditional_entropy_with_a_random_scale():
    # E H(N(loc, (c b)^2)) = ½ log(2πe b^2) + E log c, E log c = -0.5.
    report = structure(RandomOffset(random_scale=True), num_theta=2000, seed=1)
    assert report.conditional_entropy_se > 0
    assert within(report.conditional_entropy, report.conditional_entropy_se, 0.5 * LOG_2PI_E + math.log(0.5) - 0.5)


def test_monte_carlo_conditional_entropy():
    a, b = 2.0, 0.5
    report = structure(RandomOffset(a, b, stretched=True), num_theta=2000, num_phi=2, seed=2)
    assert 0 < report.conditional_entropy_se < 0.05
    assert within(report.conditional_entropy, report.conditional_entropy_se, 0.5 * LOG_2PI_E + math.log(2 * b))
    # phi = 2 N(loc/2, b^2) = N(loc, (2b)^2): I = ½ log((a^2 + 4b^2) / 4b^2)
    assert within(report.mutual_information, report.mutual_information_se, 0.5 * math.log((a**2 + 4 * b**2) / (4 * b**2)))


def test_measures_under_posterior_theta_draws():
    b, mean, tau = 0.5, 1.0, 0.3
    draws = {"loc": mean + tau * torch.randn(2, 1000, generator=torch.Generator().manual_seed(3))}
    report = structure(ThetaDrawsStub(RandomOffset(2.0, b), draws), num_theta=2000, seed=3)
    assert report.mutual_information is not None  # the hyperprior measures are still there
    assert report.conditional_entropy_posterior == pytest.approx(0.5 * math.log(2 * math.pi * math.e * b ** 2))
    assert within(report.marginal_entropy_posterior, report.marginal_entropy_posterior_se,
                  0.5 * math.log(2 * math.pi * math.e * (tau**2 + b**2)))
    assert within(report.mutual_information_posterior, report.mutual_information_posterior_se,
                  0.5 * math.log((tau**2 + b**2) / b**2))
    # no guide: the learned prior is the predictive p(phi | D), i.e. the marginal under the theta draws
    assert report.prior_entropy == report.marginal_entropy_posterior
    with pytest.raises(ValueError, match=r"theta_draws: expected draws of the model's hyperprior sites \['loc'\]"):
        structure(ThetaDrawsStub(RandomOffset(), {"scale": draws["loc"]}), num_theta=100)


def test_full_bayes_prior_entropy_is_the_predictive():
    b, tau = 0.5, 0.3
    draws = {"loc": tau * torch.randn(2, 1000, generator=torch.Generator().manual_seed(4))}
    prior = bm.LearnedPrior(RandomOffset(2.0, b), None, {"method": "nuts"}, {}, theta_draws=draws)
    e = entropy(prior, num_samples=2000)
    assert e.method == "knn"
    assert within(float(e), e.se.item(), 0.5 * math.log(2 * math.pi * math.e * (tau**2 + b**2)))


# ---------------------------------------------------------------------- by shots
@pytest.fixture(scope="module")
def linear_report():
    family = bm.tasks.LinearGaussian(x_dim=1, seed=0)
    prior = bm.fit_prior(HierarchicalLinearRegression(x_dim=1), family.sample(200, 10, 10, seed=0),
                         guide="exact", steps=200, lr=0.05, progress=False)
    tasks = family.sample(30, 10, 0, seed=1)
    return prior, tasks, structure(prior, tasks, method="exact")


def closed_form_entropies(prior, tasks, shots):
    """Prior and per-task posterior entropies of the conjugate model, in float64 NumPy."""
    scale = prior.model.prior_scale.detach().double().numpy()
    noise = prior.model.noise_scale.item()
    prior_cov = np.diag(scale ** 2)
    h_prior = 0.5 * (2 * math.log(2 * math.pi * math.e) + np.linalg.slogdet(prior_cov)[1])
    x = tasks.support.x.double().numpy()
    h_post = []
    for xi in x:
        design = np.hstack([xi[:shots], np.ones((shots, 1))])
        cov = np.linalg.inv(np.linalg.inv(prior_cov) + design.T @ design / noise ** 2)
        h_post.append(0.5 * (2 * math.log(2 * math.pi * math.e) + np.linalg.slogdet(cov)[1]))
    return h_prior, np.array(h_post)


def test_information_gain_matches_closed_form(linear_report):
    prior, tasks, report = linear_report
    assert report.mutual_information is None  # empirical Bayes: no distribution over theta
    frame = report.by_shots
    assert frame.columns.tolist() == ["shots", "posterior_entropy", "posterior_entropy_se",
                                      "information_gain", "information_gain_se"]
    assert frame["shots"].tolist() == [0, 1, 2, 5, 10]
    assert (np.diff(frame["posterior_entropy"]) < 0).all()
    assert frame.loc[0, "information_gain"] == 0 and frame.loc[0, "posterior_entropy"] == report.prior_entropy
    h_prior, _ = closed_form_entropies(prior, tasks, 0)
    assert report.prior_entropy == pytest.approx(h_prior, rel=1e-5)
    for row in frame[frame["shots"] > 0].itertuples():
        _, h_post = closed_form_entropies(prior, tasks, row.shots)
        gain = h_prior - h_post
        assert row.information_gain == pytest.approx(gain.mean(), rel=1e-3, abs=1e-4)
        assert row.information_gain_se == pytest.approx(gain.std(ddof=1) / math.sqrt(len(gain)), rel=1e-2, abs=1e-4)


def test_to_frame_and_plot(linear_report):
    _, _, report = linear_report
    assert report.to_frame()["quantity"].tolist() == ["prior_entropy"]
    mi = structure(RandomOffset(), num_theta=200)
    assert mi.to_frame()["quantity"].tolist() == ["marginal_entropy", "conditional_entropy", "mutual_information"]
    assert "mutual_information" in repr(mi)

    figure = report.plot()
    assert isinstance(figure, Figure)
    ax = figure.axes[0]
    bars = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
    assert [c.get_label() for c in bars] == ["posterior entropy", "information gain"]
    np.testing.assert_allclose(np.asarray(bars[0].lines[0].get_ydata(), dtype=float),
                               report.by_shots["posterior_entropy"].to_numpy())
    assert [line.get_ydata()[0] for line in ax.lines if line.get_label() == "prior entropy"] == [report.prior_entropy]

    other = Figure()
    axes = other.subplots()
    assert report.plot(ax=axes) is other


# ---------------------------------------------------------------------- bad input
def test_bad_input(linear_report):
    prior, tasks, _ = linear_report
    with pytest.raises(TypeError, match="expected a HierarchicalModel or a LearnedPrior.*got str"):
        structure("model")
    with pytest.raises(ValueError, match="needs a LearnedPrior.*got HierarchicalLinearRegression"):
        structure(prior.model, tasks)
    for shots in [(0, -1), (1.5,), (True,), 3]:
        with pytest.raises(ValueError, match="shots: expected"):
            structure(prior, tasks, shots=shots)
    with pytest.raises(ValueError, match=r"shots: expected at most 10"):
        structure(prior, tasks, shots=(11,))
    with pytest.raises(TypeError, match="tasks: expected a TaskSet"):
        structure(prior, tasks.support)
    with pytest.raises(ValueError, match="num_theta: expected an int"):
        structure(RandomOffset(), num_theta=0)
    with pytest.raises(ValueError, match="plot: this report has no by_shots"):
        StructureReport().plot()

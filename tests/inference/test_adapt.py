"""Every adapt method against the closed-form posterior of the conjugate linear model."""
from __future__ import annotations

import re

import pyro
import pytest
import torch
from pyro.ops.stats import effective_sample_size
from torch.distributions import kl_divergence

import bayesmeta as bm


@pytest.fixture(scope="module")
def exact_3shot(amortized_prior, linear_test):
    return amortized_prior.adapt(linear_test.support.head(3), method="exact")


@pytest.mark.parametrize("shots", [1, 3, 10])
def test_amortized_guide_is_close_to_exact(amortized_prior, linear_test, shots):
    support = linear_test.support.head(shots)
    exact = amortized_prior.adapt(support, method="exact").distribution
    q = amortized_prior.adapt(support, method="amortized").distribution
    assert kl_divergence(q, exact).mean() <= 0.1


def test_svi_refinement_reaches_exact(amortized_prior, linear_test, exact_3shot):
    post = amortized_prior.adapt(linear_test.support.head(3), method="svi")
    kl = kl_divergence(post.distribution, exact_3shot.distribution)
    assert kl.max() <= 0.01, kl.max()  # every task, not only on average


def test_svi_from_the_prior_reaches_exact(linear_test):
    """Started from the prior (a per_task fit has no amortized guess), svi still converges."""
    from bayesmeta.guides import PerTaskGuide
    from bayesmeta.models import HierarchicalLinearRegression

    model = HierarchicalLinearRegression(x_dim=3)
    prior = bm.LearnedPrior(model, PerTaskGuide(model, num_tasks=1), {}, {})
    support = linear_test.support[:50].head(5)
    post = prior.adapt(support, method="svi", steps=800)
    kl = kl_divergence(post.distribution, model.exact_posterior(support))
    assert kl.max() <= 0.01, kl.max()


def test_svi_and_nuts_start_at_the_prior_where_the_guess_is_far_off(amortized_prior, linear_test, monkeypatch):
    """A guide whose guess is absurd for some tasks (a set encoder read far from its training sets can do that):
    those tasks start at the prior, the others keep the guess, and SVI still reaches the exact posterior (from the
    guess 1000 prior widths out it cannot: Adam's steps of ~lr prior widths would need > 20000 of them)."""
    from bayesmeta.inference.adapt import _start

    support = linear_test.support[:30].head(3)
    honest = amortized_prior.guide.posterior
    far = torch.zeros(len(support.x), 1, dtype=torch.bool)
    far[::3] = True

    def wild(tasks, index=None):
        q = honest(tasks, index)
        return torch.distributions.MultivariateNormal(torch.where(far, q.mean + 1e3, q.mean), scale_tril=q.scale_tril)

    monkeypatch.setattr(amortized_prior.guide, "posterior", wild)
    tasks = bm.TaskSet(support, support.head(0))
    start = _start(amortized_prior, tasks)
    with torch.no_grad():
        prior_mean = amortized_prior.model.local_prior().mean
        guess = honest(tasks)
    torch.testing.assert_close(start.mean[far[:, 0]], prior_mean.expand(int(far.sum()), -1))
    torch.testing.assert_close(start.mean[~far[:, 0]], guess.mean[~far[:, 0]])
    torch.testing.assert_close(start.scale_tril[~far[:, 0]], guess.scale_tril[~far[:, 0]])
    post = amortized_prior.adapt(support, method="svi", steps=1000)
    kl = kl_divergence(post.distribution, amortized_prior.model.exact_posterior(support))
    assert kl.max() <= 0.01, kl.max()  # measured: 2e-5


def test_svi_works_in_units_of_the_prior_scale(linear_test):
    """The same problem with φ in units a thousand times smaller (prior and posterior widths ~1e-3): SVI reaches
    the exact posterior there as well, and its answer is the first one rescaled, because the optimizer runs in
    prior standard deviations. (In φ's own units Adam's steps of ~lr = 0.05 would be 50 prior widths.)"""
    from bayesmeta.guides import PerTaskGuide
    from bayesmeta.models import HierarchicalLinearRegression

    support = linear_test.support[:20].head(3)
    c = 1e-3
    answers = []
    for factor in (1.0, c):
        model = HierarchicalLinearRegression(x_dim=3, bias=False)
        with torch.no_grad():
            model.prior_loc.copy_(torch.tensor([0.3, -0.2, 0.1]) * factor)
            model.prior_scale = torch.tensor([1.0, 0.5, 2.0]) * factor
        data = bm.TaskData(support.x / factor, support.y, support.mask)
        prior = bm.LearnedPrior(model, PerTaskGuide(model, num_tasks=1), {}, {})
        post = prior.adapt(data, method="svi", steps=800, seed=1)
        kl = kl_divergence(post.distribution, model.exact_posterior(data))
        assert kl.max() <= 0.01, (factor, kl.max())
        answers.append(post.distribution)
    torch.testing.assert_close(answers[1].mean, c * answers[0].mean, rtol=1e-4, atol=1e-4 * c)
    torch.testing.assert_close(answers[1].scale_tril, c * answers[0].scale_tril, rtol=1e-4, atol=1e-4 * c)


def test_svi_covariance_full_refines_a_diagonal_guess_with_correlations(amortized_prior, linear_test, monkeypatch,
                                                                       exact_3shot):
    """A guide with a diagonal Gaussian (as the pooled encoder's): by default SVI stays diagonal, as it must for a
    BNN's thousands of weights, and cannot reach the correlated exact posterior; covariance="full" reaches it. And
    "diag" turns a full guess into a diagonal refinement."""
    support = linear_test.support[:30].head(3)
    exact = exact_3shot.distribution
    exact = torch.distributions.MultivariateNormal(exact.mean[:30], scale_tril=exact.scale_tril[:30])
    honest = amortized_prior.guide.posterior
    diag = amortized_prior.adapt(support, method="svi", steps=600, covariance="diag").distribution
    assert not isinstance(diag, torch.distributions.MultivariateNormal)

    def marginals(tasks, index=None):
        q = honest(tasks, index)
        return pyro.distributions.Normal(q.mean, q.stddev).to_event(1)

    monkeypatch.setattr(amortized_prior.guide, "posterior", marginals)
    auto = amortized_prior.adapt(support, method="svi", steps=600).distribution
    full = amortized_prior.adapt(support, method="svi", steps=600, covariance="full").distribution
    assert isinstance(full, torch.distributions.MultivariateNormal)
    as_full = lambda q: torch.distributions.MultivariateNormal(q.mean, scale_tril=torch.diag_embed(q.stddev))  # noqa: E731
    kl_auto, kl_diag = kl_divergence(as_full(auto), exact), kl_divergence(as_full(diag), exact)
    kl_full = kl_divergence(full, exact)
    # The best diagonal Gaussian misses the correlations by the same KL, whichever guess it started from (measured:
    # 1.18 nats per task on average, 0.68 at least); the full one reaches the exact posterior (measured: 5e-7).
    assert kl_auto.min() >= 0.3, kl_auto.min()
    torch.testing.assert_close(kl_auto, kl_diag, rtol=1e-2, atol=1e-3)
    assert kl_full.max() <= 0.01, kl_full.max()
    with pytest.raises(ValueError, match="covariance: expected 'auto', 'full' or 'diag', got 'dense'"):
        amortized_prior.adapt(support, method="svi", covariance="dense")


class _Squared(bm.HierarchicalModel):
    """y = a² x + N(0, 0.3²), a ~ N(0, 1): a point at x = 1 puts the posterior of a on two mirror-image modes."""

    phi_names = ["a"]

    def __init__(self) -> None:
        super().__init__(x_dim=1)

    def local_prior(self):
        return pyro.distributions.Normal(torch.zeros(1), torch.ones(1)).to_event(1)

    def likelihood(self, phi, x):
        return pyro.distributions.Normal(phi[..., None, :] ** 2 * x, 0.3).to_event(1)


class _TwoModes:
    """Six one-point tasks of ``_Squared`` (y = 0.5 to 2 at x = 1), their posteriors on a grid, and how far a fitted
    q is from them."""

    def __init__(self) -> None:
        from bayesmeta.guides import PerTaskGuide

        model = _Squared()
        self.prior = bm.LearnedPrior(model, PerTaskGuide(model, num_tasks=1), {}, {})
        y = torch.tensor([0.5, 0.8, 1.0, 1.2, 1.5, 2.0])
        self.data = bm.TaskData(torch.ones(6, 1, 1), y[:, None, None], torch.ones(6, 1, dtype=torch.bool))
        self.grid = torch.linspace(-4.0, 4.0, 8001)
        self.step = self.grid[1] - self.grid[0]
        normal = torch.distributions.Normal
        log_post = normal(0.0, 1.0).log_prob(self.grid) + normal(self.grid**2, 0.3).log_prob(y[:, None])
        self.log_post = log_post - torch.logsumexp(log_post, -1, keepdim=True) - self.step.log()  # T x G, a density

    def forward_kl(self, log_q: torch.Tensor) -> torch.Tensor:
        """KL(posterior ‖ q) per task, from ``log_q``: T x G on the grid."""
        return (self.log_post.exp() * (self.log_post - log_q)).sum(-1) * self.step

    def on_grid(self, q) -> torch.Tensor:
        """log q on the grid, T x G."""
        return q.log_prob(self.grid[:, None, None].expand(-1, self.data.y.shape[0], 1)).T.detach()


def test_svi_mixture_covers_both_modes_of_a_bimodal_posterior():
    """Against the posterior on a grid: one Gaussian sits on one mode (or between them), a mixture of 8 finds both,
    with half the mass on each, and its forward KL from the exact posterior is small for every task."""
    case = _TwoModes()
    one = case.forward_kl(case.on_grid(case.prior.adapt(case.data, method="svi", steps=800).distribution))
    mixture = case.prior.adapt(case.data, method="svi", steps=800, components=8).distribution
    assert isinstance(mixture, torch.distributions.MixtureSameFamily)
    log_q = case.on_grid(mixture)
    kl, right = case.forward_kl(log_q), (log_q.exp() * (case.grid > 0)).sum(-1) * case.step
    # Measured: one Gaussian 0.34 to 139 nats (from 1.3 where the modes are apart); 8 components at most 0.009, the
    # mass right of 0 within 0.007 of one half.
    assert one.max() >= 10.0, one
    assert kl.max() <= 0.05, kl
    torch.testing.assert_close(right, torch.full_like(right, 0.5), rtol=0.0, atol=0.03)


def test_svi_mixture_of_a_gaussian_posterior_is_that_gaussian(linear_test):
    """Where the posterior is Gaussian (the conjugate linear model), a mixture of 3 reaches it: forward KL from the
    exact posterior (4000 exact draws per task) below 0.01, means and variances to a few per cent."""
    from bayesmeta.guides import PerTaskGuide
    from bayesmeta.models import HierarchicalLinearRegression

    model = HierarchicalLinearRegression(x_dim=3)
    prior = bm.LearnedPrior(model, PerTaskGuide(model, num_tasks=1), {}, {})
    support = linear_test.support[:20].head(3)
    exact = model.exact_posterior(support)
    q = prior.adapt(support, method="svi", steps=800, components=3).distribution
    draws = exact.sample(torch.Size([4000]))
    gap = exact.log_prob(draws) - q.log_prob(draws)
    kl, se = gap.mean(0), gap.std(0) / 4000**0.5
    assert (kl <= 0.01 + 3 * se).all(), (kl, se)  # measured: at most 7e-4 (se 5e-4)
    assert ((q.mean - exact.mean) / exact.stddev).abs().max() <= 0.05  # measured: 0.005
    torch.testing.assert_close(q.variance, exact.variance, rtol=0.05, atol=0.0)  # measured: 0.4%


def test_svi_iwae_with_one_particle_is_the_elbo(amortized_prior, linear_test):
    """With P = 1 the doubly reparameterized gradient of the bound is the ELBO's: the same draws, the same fit."""
    support = linear_test.support[:20].head(2)
    q = [amortized_prior.adapt(support, method="svi", steps=50, num_particles=1, objective=o).distribution
         for o in ("elbo", "iwae")]
    torch.testing.assert_close(q[1].mean, q[0].mean)
    torch.testing.assert_close(q[1].covariance_matrix, q[0].covariance_matrix)


def test_svi_iwae_reaches_a_gaussian_posterior(amortized_prior, linear_test, exact_3shot):
    """Where the posterior is Gaussian, it is also the bound's optimum (every weight is p(D)): reached from the
    amortized guess for every task (measured: KL at most 0.003)."""
    post = amortized_prior.adapt(linear_test.support.head(3), method="svi", objective="iwae")
    kl = kl_divergence(post.distribution, exact_3shot.distribution)
    assert kl.max() <= 0.01, kl.max()


def test_svi_iwae_one_gaussian_spans_a_bimodal_posterior():
    """One Gaussian fitted by the ELBO sits on one of two mirror-image modes; fitted to the importance-weighted bound
    (P = 16) it spans both. Against the grid posterior: its forward KL comes within 0.5 nats of the best any
    Gaussian can do (the moment-matched one) on every task, where the ELBO's is 10 nats or more off somewhere."""
    case = _TwoModes()
    post, grid = case.log_post.exp(), case.grid
    mean = (post * grid).sum(-1) * case.step
    sd = ((post * (grid - mean[:, None]) ** 2).sum(-1) * case.step).sqrt()
    best = case.forward_kl(torch.distributions.Normal(mean[:, None], sd[:, None]).log_prob(grid))
    kl = {objective: case.forward_kl(case.on_grid(
        case.prior.adapt(case.data, method="svi", steps=800, objective=objective).distribution))
        for objective in ("elbo", "iwae")}
    # Measured: best 0.26 to 1.85 nats; the bound's Gaussian at most 0.14 above it, the ELBO's up to 73 above.
    assert (kl["iwae"] - best).max() <= 0.5, (kl["iwae"], best)
    assert (kl["elbo"] - best).max() >= 10.0, (kl["elbo"], best)


@pytest.mark.parametrize("options, message", [
    ({"objective": "kl"}, "objective: expected 'elbo' or 'iwae', got 'kl'"),
    ({"objective": "iwae", "components": 3}, "objective: 'iwae' fits one Gaussian per task; got components=3"),
])
def test_svi_objective_is_checked(amortized_prior, linear_test, options, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        amortized_prior.adapt(linear_test.support[:3].head(2), method="svi", **options)


@pytest.mark.parametrize("bad", [0, 2.0, True, "3"])
def test_svi_components_is_checked(amortized_prior, linear_test, bad):
    with pytest.raises(ValueError, match=f"components: expected a positive int, got {bad!r}"):
        amortized_prior.adapt(linear_test.support[:3].head(2), method="svi", components=bad)


def test_nuts_matches_exact_within_monte_carlo_error(amortized_prior, linear_test, exact_3shot):
    tasks = 5
    post = amortized_prior.adapt(linear_test.support[:tasks].head(3), method="nuts",
                                 num_samples=500, warmup_steps=300, jit_compile=True, seed=0)
    draws = post.draws  # chains x samples x tasks x phi_dim
    exact_mean = exact_3shot.distribution.mean[:tasks]
    exact_cov = exact_3shot.distribution.covariance_matrix[:tasks]
    # Means: the MC standard error is sd / sqrt(ESS), with ESS estimated from the chain itself.
    ess = effective_sample_size(draws, chain_dim=0, sample_dim=1)
    se = draws.flatten(0, 1).std(0) / ess.sqrt()
    assert ((draws.flatten(0, 1).mean(0) - exact_mean).abs() <= 4 * se).all()
    # Covariances: each entry is the mean of z = (phi_a - m_a)(phi_b - m_b) with the exact mean m, whose
    # MC standard error is again sd(z) / sqrt(ESS(z)).
    centred = draws - exact_mean
    z = centred[..., :, None] * centred[..., None, :]
    z_se = z.flatten(0, 1).std(0) / effective_sample_size(z, chain_dim=0, sample_dim=1).sqrt()
    assert ((z.flatten(0, 1).mean(0) - exact_cov).abs() <= 4 * z_se).all()


def test_predict_matches_the_closed_form_predictive(amortized_prior, linear_test, exact_3shot):
    model, q = amortized_prior.model, exact_3shot.distribution
    x = linear_test.query.x
    pred = exact_3shot.predict(x, num_samples=4000, seed=0)
    design = model.features(x)
    mean = (design @ q.mean[..., None]).squeeze(-1)
    var = torch.einsum("tnd,tde,tne->tn", design, q.covariance_matrix, design) + model.noise_scale.detach() ** 2
    assert pred.mean.shape == pred.std.shape == (200, 50, 1) and pred.samples.shape == (4000, 200, 50, 1)
    # MC error of the mean over 4000 draws of phi: sqrt(parameter variance / 4000); allow 5 of them.
    param_sd = (var - model.noise_scale.detach() ** 2).sqrt()
    assert ((pred.mean[..., 0] - mean).abs() <= 5 * param_sd / 4000**0.5 + 1e-5).all()
    # The std combines noise and parameter uncertainty; its relative MC error is ~1/sqrt(2 * 4000).
    assert ((pred.std[..., 0] / var.sqrt() - 1).abs() <= 5 / (2 * 4000) ** 0.5).all()
    lower, upper = pred.interval(0.9)
    assert (lower < pred.mean).all() and (pred.mean < upper).all()


def test_empty_support_gives_the_prior(amortized_prior, linear_test):
    support = linear_test.support.head(0)
    prior_mean = amortized_prior.model.prior_loc.detach()
    for method in ("amortized", "exact"):
        post = amortized_prior.adapt(support, method=method)
        torch.testing.assert_close(post.mean, prior_mean.expand(200, -1), atol=1e-5, rtol=1e-5)


def test_ragged_tasks_match_the_same_tasks_unpadded(amortized_prior, linear_test):
    counts = [1, 3, 6, 10]
    xs = [linear_test.support.x[i, :n] for i, n in enumerate(counts)]
    ys = [linear_test.support.y[i, :n] for i, n in enumerate(counts)]
    ragged = bm.TaskSet.from_lists(xs, ys)
    for method in ("exact", "amortized"):
        padded = amortized_prior.adapt(ragged.support, method=method).distribution
        for i in range(len(counts)):
            alone = bm.TaskSet.from_arrays(xs[i][None], ys[i][None])
            single = amortized_prior.adapt(alone.support, method=method).distribution
            torch.testing.assert_close(padded.mean[i], single.mean[0], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(padded.covariance_matrix[i], single.covariance_matrix[0], atol=1e-5, rtol=1e-5)


def test_task_subsampling_gives_an_unbiased_elbo(amortized_prior, linear_train):
    """Mean over many minibatch ELBOs equals the full-batch ELBO, within Monte Carlo error."""
    model, guide = amortized_prior.model, bm.guides.ExactGuide(amortized_prior.model)
    tasks = linear_train[:200]
    loss = pyro.infer.Trace_ELBO(max_plate_nesting=2)(model, guide)
    with torch.no_grad():
        full = -loss(tasks).item()  # exact guide: this is the exact log marginal likelihood
        estimates = torch.tensor([-loss(tasks, 16).item() for _ in range(1000)], dtype=torch.float64)
    se = estimates.std() / len(estimates) ** 0.5
    assert abs(estimates.mean() - full) <= 4 * se, (estimates.mean(), full, se)
    assert estimates.std() > 0  # the minibatches did differ


def test_unknown_method_and_missing_exact(amortized_prior, linear_test):
    with pytest.raises(ValueError, match="method: expected one of"):
        amortized_prior.adapt(linear_test.support, method="laplace")
    with pytest.raises(TypeError, match="adapt\\(method='svi'\\).*num_samples"):
        amortized_prior.adapt(linear_test.support, method="svi", num_samples=3)


def test_exact_names_the_methods_that_apply():
    from bayesmeta.models import SinusoidModel

    model = SinusoidModel()
    prior = bm.LearnedPrior(model, bm.guides.AmortizedGuide(model), {}, {})
    support = bm.tasks.Sinusoid().sample(num_tasks=2, support=3, query=0, seed=0).support
    with pytest.raises(ValueError, match=r"'exact' needs a model with exact_posterior.*amortized.*nuts.*svi"):
        prior.adapt(support, method="exact")

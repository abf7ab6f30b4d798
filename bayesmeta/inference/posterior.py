r"""Posteriors over the task parameters of new tasks, and their predictions."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import pyro.distributions as dist
import torch
from torch import Tensor

from bayesmeta.guides.base import site_distribution, theta_fixed
from bayesmeta.guides.linear import free_dim, linear_predictive
from bayesmeta.inference.checks import check_positive, check_query_x
from bayesmeta.model import HierarchicalModel
from bayesmeta.tasks.taskset import TaskSet

__all__ = ["TaskPosterior", "Prediction"]


@contextlib.contextmanager
def seeded(seed: int | None, device: torch.device) -> Iterator[None]:
    """Run a block with its own torch RNG state when ``seed`` is given (the global state is restored)."""
    if seed is None:
        yield
        return
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


@dataclass
class Prediction:
    r"""Predictive distribution at query inputs.

    Attributes:
        mean: ``T x N x y_dim`` predictive mean. For a classifier, the ``T x N x C`` class probabilities, the
            same tensor as ``probs``.
        std: ``T x N x y_dim`` predictive standard deviation (noise and parameter uncertainty); ``None`` for a
            point predictor (e.g. MAML).
        samples: ``S x T x N x y_dim`` draws of ``y`` from the posterior predictive.
        probs: ``T x N x C`` predictive class probabilities (each row sums to 1); set by classifiers and
            required by :func:`~bayesmeta.evaluation.benchmark` on classification tasks, ``None`` for regression.
    """

    mean: Tensor
    std: Tensor | None = None
    samples: Tensor | None = None
    probs: Tensor | None = None

    def interval(self, level: float = 0.9) -> tuple[Tensor, Tensor]:
        """Central ``level`` interval from the samples (empirical quantiles)."""
        if self.samples is None:
            raise ValueError("interval: this prediction holds no samples; call predict(num_samples > 0)")
        lo = (1.0 - level) / 2
        q = torch.quantile(self.samples, torch.tensor([lo, 1 - lo], dtype=self.samples.dtype, device=self.samples.device), dim=0)
        return q[0], q[1]


class TaskPosterior:
    r"""The posterior over :math:`\phi` of each task in a support set, under a learned prior.

    Holds either a distribution (a Gaussian for ``amortized``, ``svi``, ``exact``; a mixture of Gaussians from
    a :class:`~bayesmeta.guides.MixtureGuide`; for a model with a linear part, either of these over the free part
    completed by the exact posterior of the linear part, a
    :class:`~bayesmeta.guides.linear.ConditionallyGaussian`) or draws (``nuts``, ``importance``; kept by chain).

    Attributes:
        model: the model with the learned :math:`\theta`.
        support: the support-only :class:`~bayesmeta.TaskSet` it was conditioned on.
        method: how it was computed.
        distribution: a distribution with batch ``T`` and event ``phi_dim`` (``MultivariateNormal``, a diagonal
            ``Normal(...).to_event(1)`` for high-dimensional φ, or a ``MixtureSameFamily`` of either), or ``None``.
        draws: ``num_chains x num_samples x T x phi_dim`` posterior draws, or ``None``.
        diagnostics: method-specific extras (e.g. NUTS divergences).
    """

    def __init__(
        self,
        model: HierarchicalModel,
        support: TaskSet,
        method: str,
        distribution: dist.MultivariateNormal | None = None,
        draws: Tensor | None = None,
        diagnostics: dict[str, Any] | None = None,
    ) -> None:
        if (distribution is None) == (draws is None):
            raise ValueError("TaskPosterior: expected exactly one of distribution or draws")
        self.model, self.support, self.method = model, support, method
        self.distribution, self.draws = distribution, draws
        self.diagnostics = diagnostics or {}

    @classmethod
    def mixture(cls, posteriors: Sequence[TaskPosterior],
                weights: Sequence[float] | Tensor | None = None) -> TaskPosterior:
        r"""The mixture :math:`\sum_j w_j\, q_j(\phi)` of posteriors of the same support set under the same model.

        Posteriors of one model from amortized guides fitted with different seeds or budgets each miss the exact
        posterior in their own way; their mixture averages those errors out, as an ensemble of predictors does
        (``docs/np_mixture.md`` measures it at 1 shot). The result predicts, samples, summarizes and converts to
        ArviZ like any posterior:

        * distributions (Gaussian, diagonal Gaussian, or mixtures of either) become one ``MixtureSameFamily`` whose
          components are all of theirs, each component's weight times its posterior's ``w_j`` (diagonal components
          become full-covariance ones where any posterior has full covariance);
        * draws (``nuts``, ``importance``) of equal shape and equal weight are pooled as more chains.

        For guides saved from two seeds::

            posts = [bm.LearnedPrior.load(path).adapt(support) for path in ("seed0.prior", "seed1.prior")]
            prediction = bm.TaskPosterior.mixture(posts).predict(query_x)

        Args:
            posteriors: two or more posteriors of the same support set (equal tensors), each under a model with the
                same class and the same parameters θ (e.g. guides amortized on one :class:`LearnedPrior`).
            weights: one positive weight per posterior, normalized to sum to 1; equal by default.

        Returns:
            A :class:`TaskPosterior` with ``method="mixture"``; ``diagnostics["methods"]`` and
            ``diagnostics["weights"]`` say what was mixed.
        """
        if not isinstance(posteriors, (list, tuple)) or len(posteriors) < 2:
            got = f"{type(posteriors).__name__} of {len(posteriors)}" if isinstance(posteriors, (list, tuple)) else \
                type(posteriors).__name__
            raise ValueError(f"posteriors: expected a list of two or more TaskPosterior, got {got}")
        posteriors = list(posteriors)
        for j, post in enumerate(posteriors):
            if not isinstance(post, TaskPosterior):
                raise TypeError(f"posteriors[{j}]: expected a TaskPosterior, got {type(post).__name__}")
        first = posteriors[0]
        for j, post in enumerate(posteriors[1:], 1):
            _check_same_model(first, post, j)
            _check_same_support(first, post, j)
        w = _mixture_weights(weights, len(posteriors))
        diagnostics = {"methods": [p.method for p in posteriors], "weights": w}
        if "theta" in first.diagnostics:  # equal in all of them (checked above)
            diagnostics["theta"] = first.diagnostics["theta"]
        kinds = {p.distribution is None for p in posteriors}
        if len(kinds) > 1:
            raise ValueError("posteriors: expected all distributions or all draws, got both "
                             f"(methods {[p.method for p in posteriors]}); draw from the distributions instead")
        if first.draws is not None:
            return cls(first.model, first.support, "mixture", draws=_pooled_draws(posteriors, w, diagnostics),
                       diagnostics=diagnostics)
        return cls(first.model, first.support, "mixture", distribution=_mixed(posteriors, w), diagnostics=diagnostics)

    def __len__(self) -> int:
        return len(self.support)

    @property
    def phi_names(self) -> list[str]:
        return list(self.model.phi_names)

    @property
    def mean(self) -> Tensor:
        """``T x phi_dim`` posterior mean."""
        if self.distribution is not None:
            return self.distribution.mean
        return self.draws.flatten(0, 1).mean(0)

    @property
    def covariance(self) -> Tensor:
        """``T x phi_dim x phi_dim`` posterior covariance."""
        if isinstance(self.distribution, dist.MultivariateNormal):
            return self.distribution.covariance_matrix
        if isinstance(self.distribution, dist.MixtureSameFamily):  # within-component plus between-component
            weights = self.distribution.mixture_distribution.probs[..., None]
            parts = self.distribution.component_distribution
            centred = parts.mean - self.distribution.mean[..., None, :]
            if isinstance(parts, dist.MultivariateNormal):
                within = (weights[..., None] * parts.covariance_matrix).sum(-3)
            else:
                within = torch.diag_embed((weights * parts.variance).sum(-2))
            return within + torch.einsum("tkd,tke->tde", weights * centred, centred)
        if self.distribution is not None:  # a diagonal Gaussian
            return torch.diag_embed(self.distribution.variance)
        flat = self.draws.flatten(0, 1)
        centred = flat - flat.mean(0)
        return torch.einsum("std,ste->tde", centred, centred) / (flat.shape[0] - 1)

    def sample(self, num_samples: int, seed: int | None = None) -> Tensor:
        """``num_samples x T x phi_dim`` draws (NUTS posteriors resample their draws with replacement)."""
        return self._sample_with_theta(num_samples, seed)[0]

    def _sample_with_theta(self, num_samples: int, seed: int | None) -> tuple[Tensor, dict[str, Tensor]]:
        """Draws of φ and, for a full-Bayes posterior, the θ draws that came with them (same indices)."""
        check_positive(num_samples, "num_samples", integer=True)
        device = self.support.device  # not self.mean: a ConditionallyGaussian computes its mean by Monte Carlo
        with seeded(seed, device):
            if self.distribution is not None:
                return self.distribution.sample((num_samples,)), {}
            flat = self.draws.flatten(0, 1)
            index = torch.randint(flat.shape[0], (num_samples,), device=device)
        theta = {name: value.flatten(0, 1)[index] for name, value in self.diagnostics.get("theta_draws", {}).items()}
        return flat[index], theta

    def predict(self, x: Tensor, num_samples: int = 100, seed: int | None = None) -> Prediction:
        r"""Posterior predictive at ``x``: ``T x N x x_dim`` query inputs.

        For a full-Bayes posterior (``fit_prior(method="nuts")``) each draw of φ is paired with its draw of θ
        (scalar θ sites broadcast over tasks and points).
        The mean and std use the law of total variance over ``num_samples`` draws of :math:`\phi`
        (:math:`\mathrm{Var}[y] = \mathbb E[\mathrm{Var}(y\mid\phi)] + \mathrm{Var}[\mathbb E(y\mid\phi)]`);
        ``samples`` holds one draw of ``y`` per draw of :math:`\phi`.
        """
        likelihood = self.predictive(x, num_samples, seed)
        with torch.no_grad(), seeded(None if seed is None else seed + 1, likelihood.mean.device):
            mean, variance = likelihood.mean, likelihood.variance
            samples = likelihood.sample()
        return Prediction(
            mean=mean.mean(0), std=(variance.mean(0) + mean.var(0, unbiased=False)).sqrt(), samples=samples
        )

    def predictive(self, x: Tensor, num_samples: int = 100, seed: int | None = None) -> dist.Distribution:
        r"""The posterior predictive as a mixture of ``num_samples`` components: a distribution with batch
        ``num_samples x T x N`` whose component ``s`` is :math:`p(y \mid x, \phi_s)` for a draw :math:`\phi_s`.

        For a model with a linear part (``model.linear_dim > 0``) component ``s`` is
        :math:`p(y \mid x, u_s, D)`, the linear part :math:`w` integrated out exactly given the draw's free part
        :math:`u_s` and the support :math:`D` (every adapt method leaves :math:`w \mid u` at its exact posterior).
        :meth:`predict` summarizes it; the mixture's log density at ``y`` is
        ``logsumexp(predictive(x).log_prob(y), 0) - log(num_samples)``.
        """
        x = check_query_x(x, len(self), self.model.x_dim)
        phi, theta = self._sample_with_theta(num_samples, seed)
        # A full-Bayes posterior pairs each φ draw with its θ draw: θ gets the draws dim, then room for T x N.
        theta = {name: value.reshape(num_samples, 1, 1, *value.shape[1:]) for name, value in theta.items()}
        # An empirical-Bayes posterior of a model with hyperprior sites holds the point θ it was computed under.
        theta = {**self.diagnostics.get("theta", {}), **theta}
        with seeded(None if seed is None else seed + 1, phi.device), theta_fixed(self.model, theta):
            return self.components(phi, x)

    def components(self, phi: Tensor, x: Tensor, rows: slice = slice(None)) -> dist.Distribution:
        r"""The predictive components of given draws: :math:`p(y \mid x, \phi_s)` for ``phi: S x t x phi_dim``, draws
        for the tasks ``rows`` of this posterior, at ``x: t x N x x_dim`` (batch ``S x t x N``).

        For a model with a linear part, :math:`p(y \mid x, u_s, D)` with the linear part integrated out given those
        tasks' support :math:`D` (see :meth:`predictive`). Work on a few tasks at a time where ``S x t x N``
        activations of the model would not fit in memory.
        """
        x = x.to(phi.device, phi.dtype)
        with torch.no_grad():
            if self.model.linear_dim:
                support = self.support.support[rows].to(phi.device)
                return linear_predictive(self.model, phi[..., : free_dim(self.model)], support, x)
            return self.model.likelihood(phi, x)

    def to_inference_data(self, **options: Any):
        """This posterior as ArviZ ``InferenceData`` (:func:`bayesmeta.diagnostics.to_inference_data`)."""
        from bayesmeta.diagnostics.arviz import to_inference_data

        return to_inference_data(self, **options)

    def __repr__(self) -> str:
        return f"TaskPosterior({len(self)} tasks, method={self.method!r}, phi={self.phi_names})"


def _check_same_model(first: TaskPosterior, post: TaskPosterior, j: int) -> None:
    """Mixing posteriors is only meaningful under one likelihood: same model class, equal parameters θ."""
    theta = first.diagnostics.get("theta", {}), post.diagnostics.get("theta", {})
    if theta[0].keys() != theta[1].keys() or any(not torch.equal(theta[0][k], theta[1][k].to(theta[0][k].device))
                                                 for k in theta[0]):
        raise ValueError(f"posteriors[{j}]: computed under other hyperprior values θ than posteriors[0]")
    if post.model is first.model:
        return
    if type(post.model) is not type(first.model):
        raise ValueError(f"posteriors[{j}]: expected a posterior under the same model as posteriors[0] "
                         f"({type(first.model).__name__}), got {type(post.model).__name__}")
    mine, theirs = first.model.state_dict(), post.model.state_dict()
    differ = [k for k in mine if k not in theirs or mine[k].shape != theirs[k].shape
              or not torch.equal(mine[k].to(theirs[k].device), theirs[k])]
    differ += [k for k in theirs if k not in mine]
    if differ:
        raise ValueError(f"posteriors[{j}]: expected a model with the same θ as posteriors[0] (mixing posteriors "
                         f"under different likelihoods is not a posterior of either), but {len(differ)} parameter(s) "
                         f"differ, e.g. {differ[0]!r}")


def _check_same_support(first: TaskPosterior, post: TaskPosterior, j: int) -> None:
    a, b = first.support.support, post.support.support
    same = (a.x.shape == b.x.shape and a.y.shape == b.y.shape and torch.equal(a.mask, b.mask.to(a.mask.device))
            and torch.equal(a.x, b.x.to(a.x.device)) and torch.equal(a.y, b.y.to(a.y.device)))
    if not same:
        raise ValueError(f"posteriors[{j}]: expected a posterior of the same support set as posteriors[0] "
                         f"({a.num_tasks} tasks x {a.num_points} points), got a different one "
                         f"({b.num_tasks} tasks x {b.num_points} points)")


def _mixture_weights(weights: Any, count: int) -> Tensor:
    if weights is None:
        return torch.full((count,), 1.0 / count)
    w = torch.as_tensor(weights, dtype=torch.float64).flatten()
    if w.numel() != count or not torch.isfinite(w).all() or (w <= 0).any():
        raise ValueError(f"weights: expected {count} positive finite numbers (one per posterior), got "
                         f"{w.tolist() if w.numel() <= 10 else f'{w.numel()} numbers'}")
    return (w / w.sum()).float()


def _pooled_draws(posteriors: list[TaskPosterior], w: Tensor, diagnostics: dict[str, Any]) -> Tensor:
    """Draws of equal shape and weight, pooled as chains (with their θ draws, for full-Bayes posteriors)."""
    shapes = {tuple(p.draws.shape[1:]) for p in posteriors}
    if len(shapes) > 1 or not torch.allclose(w, w[0]):
        raise ValueError("weights: draws are pooled only with equal weights and an equal number of draws per chain "
                         f"(got weights {[round(float(v), 4) for v in w]} and per-chain shapes {sorted(shapes)})")
    thetas = [p.diagnostics.get("theta_draws") for p in posteriors]
    if all(t is not None for t in thetas):
        diagnostics["theta_draws"] = {k: torch.cat([t[k] for t in thetas]) for k in thetas[0]}
    elif any(t is not None for t in thetas):
        raise ValueError("posteriors: expected all or none to be full-Bayes posteriors (with θ draws)")
    return torch.cat([p.draws.to(posteriors[0].draws.device) for p in posteriors])


def _as_components(q: dist.Distribution, name: str) -> tuple[Tensor, dist.Distribution]:
    """``(log weights T x K, components with batch T x K)`` of a Gaussian, diagonal Gaussian or mixture of either."""
    if isinstance(q, dist.MixtureSameFamily):
        logits = q.mixture_distribution.logits
        parts = q.component_distribution
        return logits - logits.logsumexp(-1, keepdim=True), parts
    diagonal = isinstance(q, dist.Independent) and isinstance(q.base_dist, dist.Normal) and len(q.event_shape) == 1
    if isinstance(q, dist.MultivariateNormal) or diagonal:  # one component of weight 1
        return q.mean.new_zeros(q.batch_shape + (1,)), site_distribution(q)
    raise ValueError(f"{name}: expected a Gaussian, diagonal Gaussian or mixture posterior, got "
                     f"{type(q).__name__} (a model with a linear part mixes by drawing from each posterior instead)")


def _full(parts: dist.Distribution) -> dist.MultivariateNormal:
    if isinstance(parts, dist.MultivariateNormal):
        return parts
    return dist.MultivariateNormal(parts.mean, scale_tril=torch.diag_embed(parts.stddev))


def _mixed(posteriors: list[TaskPosterior], w: Tensor) -> dist.MixtureSameFamily:
    """One ``MixtureSameFamily`` holding every component of every posterior, weights multiplied through."""
    pieces = [_as_components(p.distribution, f"posteriors[{j}]") for j, p in enumerate(posteriors)]
    device = pieces[0][0].device
    logits = torch.cat([lw.to(device) + w[j].log().to(device, lw.dtype) for j, (lw, _) in enumerate(pieces)], -1)
    parts = [c for _, c in pieces]
    if all(isinstance(c, dist.Independent) for c in parts):
        loc = torch.cat([c.mean.to(device) for c in parts], -2)
        components = dist.Normal(loc, torch.cat([c.stddev.to(device) for c in parts], -2)).to_event(1)
    else:
        full = [_full(c) for c in parts]
        components = dist.MultivariateNormal(torch.cat([c.loc.to(device) for c in full], -2),
                                             scale_tril=torch.cat([c.scale_tril.to(device) for c in full], -3))
    return dist.MixtureSameFamily(dist.Categorical(logits=logits), components)

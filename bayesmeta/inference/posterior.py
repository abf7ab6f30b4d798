r"""Posteriors over the task parameters of new tasks, and their predictions."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Iterator

import pyro.distributions as dist
import torch
from torch import Tensor

from bayesmeta.guides.base import theta_fixed
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

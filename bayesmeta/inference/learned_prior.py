r"""The result of meta-training: a learned θ, the guide that came with it, and how it was fitted."""
from __future__ import annotations

import os
from typing import Any

import torch

from bayesmeta.guides import TaskGuide
from bayesmeta.model import HierarchicalModel
from bayesmeta.tasks.taskset import TaskData, TaskSet

__all__ = ["LearnedPrior"]


class LearnedPrior:
    r"""A prior :math:`p_{\hat\theta}(\phi)` learned from many tasks, ready to adapt to new ones.

    Attributes:
        model: the :class:`~bayesmeta.HierarchicalModel` holding the learned :math:`\theta`.
        guide: the guide fitted with it (amortized guides read new support sets).
        config: how it was fitted (guide, steps, lr, seed, device, wall time, ...).
        history: per-step records, ``history["elbo"]`` the ELBO of the whole collection.
        theta_draws: for a full-Bayes fit (``fit_prior(method="nuts")``), site name ->
            ``num_chains x num_samples x *site_shape`` posterior draws of θ; ``None`` otherwise.
        training_tasks: the meta-training collection (``None`` for a prior loaded from a file that lacks it).

    >>> import bayesmeta as bm
    >>> from bayesmeta.models import HierarchicalLinearRegression
    >>> family = bm.tasks.LinearGaussian(x_dim=1, seed=0)
    >>> prior = bm.fit_prior(HierarchicalLinearRegression(x_dim=1), family.sample(20, 5, 5, seed=0),
    ...                      guide="exact", steps=3, progress=False)
    >>> post = prior.adapt(family.sample(4, 3, 10, seed=1).support, method="exact")
    >>> post.mean.shape
    torch.Size([4, 2])
    """

    def __init__(
        self, model: HierarchicalModel, guide: TaskGuide | None, config: dict[str, Any], history: dict[str, list[float]],
        theta_draws: dict[str, torch.Tensor] | None = None, training_tasks: TaskSet | None = None,
        training_posterior: Any = None,
    ) -> None:
        self.model, self.guide, self.config, self.history = model, guide, config, history
        self.theta_draws, self.training_tasks = theta_draws, training_tasks
        self._training_posterior = training_posterior

    @property
    def method(self) -> str:
        """How θ was fitted: ``"svi"`` or ``"nuts"`` (full Bayes)."""
        return self.config.get("method", "svi")

    @property
    def training_posterior(self):
        """The training tasks' posterior: NUTS draws (with θ draws and sample statistics) for a full-Bayes fit;
        for an SVI fit the guide applied to the training tasks (the points it was trained on)."""
        if self._training_posterior is not None:
            return self._training_posterior
        if self.training_tasks is None:
            raise ValueError("training_posterior: this prior does not hold its training tasks (loaded from a file); "
                             "adapt it to them instead: prior.adapt(tasks, method=...)")
        from bayesmeta.guides.base import theta_fixed
        from bayesmeta.inference.posterior import TaskPosterior

        tasks = self.training_tasks
        with torch.no_grad(), theta_fixed(self.model, self.guide.theta_point()):
            q = self.guide.posterior(tasks, torch.arange(len(tasks), device=tasks.device))
        return TaskPosterior(self.model, tasks, f"{self.guide.kind} guide", distribution=q)

    def adapt(self, support: TaskData | TaskSet, method: str = "amortized", **options: Any):
        """Posterior over :math:`\\phi` for each task of a new support set.

        Args:
            support: ``tasks.support`` of new tasks (a :class:`~bayesmeta.TaskData`), or a TaskSet.
            method: for a full-Bayes prior (``fit_prior(method="nuts")``) only ``"nuts"``: the training and new
                tasks sampled jointly, θ marginalized. Otherwise ``"amortized"`` (one pass of the guide),
                ``"svi"`` (a Gaussian per task refined by SVI from the amortized guess; ``covariance="full"``
                adds correlations to a diagonal guess, ``components=K`` makes it a mixture of K,
                ``objective="iwae"`` fits it to the importance-weighted bound, wider than the ELBO's on a curved or
                split posterior), ``"nuts"`` (NUTS under
                the learned θ), ``"importance"`` (importance sampling with the guide as proposal: the exact
                posterior as the particles grow, with no per-task optimization) or ``"exact"`` (models with
                ``exact_posterior``).
            **options: the method's options (see :mod:`bayesmeta.inference.adapt`).

        Returns:
            A :class:`~bayesmeta.TaskPosterior`.
        """
        from bayesmeta.inference.adapt import adapt

        return adapt(self, support, method=method, **options)

    def amortize(self, tasks: TaskSet, **options: Any) -> LearnedPrior:
        """A copy with a new amortized guide fitted to this model's posterior by simulation (forward KL), θ
        unchanged: :func:`bayesmeta.amortize` (by default a mixture-of-Gaussians guide, which can follow a
        curved or multimodal posterior where the ELBO's Gaussian guide cannot)."""
        from bayesmeta.inference.amortize import amortize

        return amortize(self, tasks, **options)

    def to_inference_data(self, **options: Any):
        """θ (draws or point estimates) and the training tasks' posterior as ArviZ ``InferenceData``
        (:func:`bayesmeta.diagnostics.to_inference_data`)."""
        from bayesmeta.diagnostics.arviz import to_inference_data

        return to_inference_data(self, **options)

    def to(self, device: str | torch.device) -> LearnedPrior:
        """Move θ and the guide to ``device`` (in place); returns ``self``."""
        self.model.to(device)
        if self.guide is not None:
            self.guide.to(device)
        if self.training_tasks is not None:
            self.training_tasks = self.training_tasks.to(device)
        if self.theta_draws is not None:
            self.theta_draws = {k: v.to(device) for k, v in self.theta_draws.items()}
        return self

    def save(self, path: str | os.PathLike) -> None:
        """Write atomically (temp file + rename): format version, model class and arguments, state dicts."""
        from bayesmeta.inference.serialization import save_prior

        save_prior(self, path)

    @classmethod
    def load(cls, path: str | os.PathLike, map_location: str | torch.device = "cpu") -> LearnedPrior:
        """Read a saved prior; never unpickles arbitrary objects (``torch.load(weights_only=True)``)."""
        from bayesmeta.inference.serialization import load_prior

        return load_prior(path, map_location=map_location)

    def __repr__(self) -> str:
        return (
            f"LearnedPrior(model={type(self.model).__name__}, method={self.method!r}, "
            + (f"guide={self.guide.kind!r}, steps={self.config.get('steps')}, " if self.guide is not None else
               f"chains={self.config.get('num_chains')}, draws={self.config.get('num_samples')}, ")
            + f"tasks={self.config.get('num_tasks')})"
        )

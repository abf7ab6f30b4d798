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
        self, model: HierarchicalModel, guide: TaskGuide, config: dict[str, Any], history: dict[str, list[float]]
    ) -> None:
        self.model, self.guide, self.config, self.history = model, guide, config, history

    def adapt(self, support: TaskData | TaskSet, method: str = "amortized", **options: Any):
        """Posterior over :math:`\\phi` for each task of a new support set.

        Args:
            support: ``tasks.support`` of new tasks (a :class:`~bayesmeta.TaskData`), or a TaskSet.
            method: ``"amortized"`` (one pass of the guide), ``"svi"`` (a Gaussian per task refined by SVI
                from the amortized guess), ``"nuts"`` (NUTS under the learned θ) or ``"exact"`` (models with
                ``exact_posterior``).
            **options: the method's options (see :mod:`bayesmeta.inference.adapt`).

        Returns:
            A :class:`~bayesmeta.TaskPosterior`.
        """
        from bayesmeta.inference.adapt import adapt

        return adapt(self, support, method=method, **options)

    def to(self, device: str | torch.device) -> LearnedPrior:
        """Move θ and the guide to ``device`` (in place); returns ``self``."""
        self.model.to(device)
        self.guide.to(device)
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
            f"LearnedPrior(model={type(self.model).__name__}, guide={self.guide.kind!r}, "
            f"steps={self.config.get('steps')}, tasks={self.config.get('num_tasks')})"
        )

r"""Pictures of posteriors: predictive bands of a few tasks (ArviZ draws the rest from ``to_inference_data``).

Entropy and information gain against shots is :meth:`bayesmeta.diagnostics.StructureReport.plot`; the forest
of φ across tasks and the posterior of θ are ArviZ's own ``az.plot_forest`` / ``az.plot_posterior`` on
:func:`bayesmeta.diagnostics.to_inference_data`.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import torch
from torch import Tensor

from bayesmeta.evaluation.plots import band_figure
from bayesmeta.inference.posterior import Prediction, TaskPosterior

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["predictive_bands"]


def predictive_bands(
    posterior: TaskPosterior | Sequence[tuple[str, TaskPosterior]],
    x: Tensor,
    truth: Tensor | None = None,
    tasks: int | Sequence[int] = 6,
    levels: Sequence[float] = (0.5, 0.9),
    num_samples: int = 200,
    seed: int = 0,
) -> Figure:
    r"""Support points, the true function where known, the predictive mean and its 50% and 90% bands.

    Args:
        posterior: a :class:`~bayesmeta.TaskPosterior` (one row of panels), or ``(label, posterior)`` pairs for
            several rows over the same tasks — e.g. one per number of shots.
        x: ``T x G x 1`` inputs at which to draw each task's prediction (1-D inputs only).
        truth: ``T x G x 1`` true function values (``None``: not drawn).
        tasks: how many tasks to draw (the first ones), or which (indices).
        levels: central interval probabilities of the Gaussian summary of the predictive.
        num_samples: posterior draws per prediction.
        seed: seeds the draws.

    Returns:
        A matplotlib ``Figure`` (Agg canvas, no pyplot state): ``fig.savefig(path)`` to keep it.

    >>> import bayesmeta as bm
    >>> from bayesmeta.models import HierarchicalLinearRegression
    >>> tasks = bm.tasks.LinearGaussian(x_dim=1, seed=0).sample(num_tasks=20, support=3, query=3, seed=0)
    >>> prior = bm.fit_prior(HierarchicalLinearRegression(x_dim=1), tasks, guide="exact", steps=2, progress=False)
    >>> grid = torch.linspace(-2, 2, 50).expand(20, 50)[..., None]
    >>> fig = predictive_bands(prior.adapt(tasks.support, method="exact"), grid, tasks=3)
    >>> len(fig.axes)
    3
    """
    rows = [("", posterior)] if isinstance(posterior, TaskPosterior) else list(posterior)
    if not rows or not all(isinstance(r, tuple) and len(r) == 2 and isinstance(r[1], TaskPosterior) for r in rows):
        raise TypeError(f"posterior: expected a TaskPosterior or (label, TaskPosterior) pairs, got {type(posterior).__name__}")
    num_tasks = len(rows[0][1])
    if x.dim() != 3 or x.shape[-1] != 1 or x.shape[0] != num_tasks:
        raise ValueError(f"x: expected shape {num_tasks} x num_points x 1 (1-D inputs, one row per task), got "
                         f"{tuple(x.shape)}")
    index = list(range(min(tasks, num_tasks))) if isinstance(tasks, int) else list(tasks)
    if not index or any(not 0 <= i < num_tasks for i in index):
        raise ValueError(f"tasks: expected a positive count or indices in [0, {num_tasks}), got {tasks!r}")
    chosen = torch.tensor(index)
    panels = []
    for label, post in rows:
        if len(post) != num_tasks:
            raise ValueError(f"posterior: every row must cover the same {num_tasks} tasks, {label!r} has {len(post)}")
        prediction = post.predict(x, num_samples=num_samples, seed=seed)
        panels.append((label, post.support.support[chosen], Prediction(prediction.mean[chosen], prediction.std[chosen])))
    titles = [post.support.names[i] for i in index] if rows[0][1].support.names else [f"task {i}" for i in index]
    return band_figure(x[chosen], panels, truth=None if truth is None else truth[chosen], titles=titles,
                       level=tuple(levels))

r"""The learner protocol every mechanistic baseline answers, and its input checks.

The lecture's mechanistic view of meta-learning writes a learner as :math:`y = f_\theta(D_{tr}, x)`: meta-
training fits :math:`\theta` on many tasks, adaptation reads a support set :math:`D_{tr}` and returns a
predictor. Every baseline here answers the same protocol as :class:`~bayesmeta.LearnedPrior`:

* ``learner.meta_fit(tasks, steps, batch_tasks, lr, device, seed, progress)`` → the learner (fitted);
* ``learner.adapt(support)`` → an object with ``predict(x) -> Prediction`` (``mean``; ``std`` where the
  method has one).

``meta_fit`` records the protocol's arguments in ``config["meta_fit"]`` and the wall time in
``config["seconds"]``; a support set reaches a network with its padding zeroed (:func:`check_support_set`).
The shared numerical pieces live in :mod:`bayesmeta.baselines.functional`.
"""
from __future__ import annotations

import time
from typing import Any, Callable

import torch
from torch import Tensor

from bayesmeta.baselines.functional import clean
from bayesmeta.inference.checks import check_positive, check_query_x
from bayesmeta.inference.posterior import Prediction
from bayesmeta.tasks.taskset import TaskData, TaskSet

__all__ = ["Baseline", "Adapted", "check_support_set", "check_meta_tasks"]


def check_meta_tasks(tasks: Any, x_dim: int | None = None, y_dim: int | None = None) -> TaskSet:
    """The meta-training collection: a TaskSet of regression tasks with matching feature sizes."""
    if not isinstance(tasks, TaskSet):
        raise TypeError(f"tasks: expected a bayesmeta.TaskSet, got {type(tasks).__name__}")
    _check_sizes(tasks.support, "tasks", x_dim, y_dim)
    return tasks


def check_support_set(support: Any, x_dim: int | None = None, y_dim: int | None = None) -> TaskData:
    """A support set: a TaskData (``tasks.support``) or a TaskSet (its support), sizes matching the learner.

    Returns the TaskData with its padding (the masked-out ``x`` and ``y``) zeroed, so that no junk there, NaN
    included, reaches a network's forward or backward pass.
    """
    if isinstance(support, TaskSet):
        support = support.support
    if not isinstance(support, TaskData):
        raise TypeError(f"support: expected a TaskData (tasks.support) or a TaskSet, got {type(support).__name__}")
    _check_sizes(support, "support", x_dim, y_dim)
    return clean(support)


def _check_sizes(data: TaskData, name: str, x_dim: int | None, y_dim: int | None) -> None:
    if data.is_classification:
        raise ValueError(f"{name}: expected regression targets (y of shape T x N x y_dim), got class labels")
    if x_dim is not None and data.x_dim != x_dim:
        raise ValueError(f"{name}: expected x_dim={x_dim} (the learner's network), got {data.x_dim}")
    if y_dim is not None and data.y_dim != y_dim:
        raise ValueError(f"{name}: expected y_dim={y_dim} (the learner's network), got {data.y_dim}")


class Adapted:
    """What ``adapt`` returns: per-task parameters (or a context) and a function that predicts with them.

    Attributes:
        support: the support set it was adapted to.
        seconds: wall time of the adaptation.
    """

    def __init__(self, support: TaskData, predict_fn: Callable[[Tensor], Prediction], seconds: float = 0.0,
                 extras: dict | None = None) -> None:
        self.support, self._predict_fn, self.seconds = support, predict_fn, seconds
        self.extras = extras or {}

    def __len__(self) -> int:
        return self.support.num_tasks

    def predict(self, x: Tensor) -> Prediction:
        """``x: T x N x x_dim`` finite floating-point query inputs -> a :class:`~bayesmeta.Prediction` (``std``
        None where none); computed on the support's device and dtype."""
        check_query_x(x, len(self), self.support.x_dim)
        with torch.no_grad():
            return self._predict_fn(x.to(self.support.x.device, self.support.x.dtype))


class Baseline:
    """Base class of the mechanistic learners: ``meta_fit`` then ``adapt`` (see the module docstring)."""

    #: The learner's options; ``meta_fit`` adds ``"meta_fit"`` (its arguments) and ``"seconds"`` (its wall time).
    config: dict[str, Any]

    def __init__(self) -> None:
        self.config = {}
        self.history: dict[str, list[float]] = {"loss": []}

    @property
    def fitted(self) -> bool:
        return "seconds" in self.config

    def meta_fit(self, tasks: TaskSet, steps: int = 1000, batch_tasks: int = 25, lr: float = 1e-3,
                 device: str | torch.device | None = None, seed: int = 0, progress: bool = True) -> Baseline:
        """Meta-train on ``tasks``; returns ``self``, with ``config["meta_fit"]`` (``steps``, ``batch_tasks``, ``lr``,
        ``seed``) and ``config["seconds"]`` (wall time) set."""
        check_positive(steps, "steps", integer=True)
        check_positive(batch_tasks, "batch_tasks", integer=True)
        check_positive(lr, "lr")
        start = time.perf_counter()
        self._meta_fit(tasks, steps, batch_tasks, lr, device, seed, progress)
        self.config["seconds"] = time.perf_counter() - start
        self.config["meta_fit"] = {"steps": steps, "batch_tasks": batch_tasks, "lr": lr, "seed": seed}
        return self

    def _meta_fit(self, tasks: TaskSet, steps: int, batch_tasks: int, lr: float, device: Any, seed: int,
                  progress: bool) -> None:
        raise NotImplementedError

    def _fitted_support(self, support: Any) -> TaskData:
        """``support`` checked against the sizes ``meta_fit`` saw (``self._dims``), on the trained ``self.net``'s
        device and dtype; a ``RuntimeError`` before ``meta_fit``."""
        net = getattr(self, "net", None)
        if net is None or not self.fitted:
            raise RuntimeError(f"{type(self).__name__}.adapt: the network is not trained; call meta_fit(tasks) first")
        ref = next(net.parameters())
        return check_support_set(support, *self._dims).to(ref.device, ref.dtype)

    def adapt(self, support: TaskData | TaskSet) -> Adapted:
        """Adapt to each task of ``support`` (all at once, vectorized); returns an object with ``predict(x)``."""
        raise NotImplementedError

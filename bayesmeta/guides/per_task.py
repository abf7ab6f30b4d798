r"""A free full-covariance Gaussian per training task, for fixed collections."""
from __future__ import annotations

from typing import Any

import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from pyro.nn import PyroParam
from torch import Tensor

from bayesmeta.guides.base import TaskGuide
from bayesmeta.model import HierarchicalModel
from bayesmeta.tasks.taskset import TaskSet

__all__ = ["PerTaskGuide"]


class PerTaskGuide(TaskGuide):
    r""":math:`q(\phi_i) = \mathcal N(m_i, L_i L_i^\top)` with free :math:`m_i, L_i` for each of ``num_tasks`` tasks.

    For fixed collections (a table of firms or schools): the guide belongs to the training tasks and
    cannot read a new task, so new tasks are adapted with ``"svi"`` or ``"nuts"``.

    Args:
        model: the model whose ``"phi"`` site this guide covers.
        num_tasks: size of the training collection.
        init_scale: initial posterior standard deviation.

    >>> from bayesmeta.models import HierarchicalLinearRegression
    >>> g = PerTaskGuide(HierarchicalLinearRegression(x_dim=1), num_tasks=5)
    >>> tuple(g.loc.shape), tuple(g.scale_tril.shape)
    ((5, 2), (5, 2, 2))
    """

    kind = "per_task"

    def __init__(self, model: HierarchicalModel, num_tasks: int, init_scale: float = 0.1) -> None:
        super().__init__(model)
        self.num_tasks, self.init_scale = int(num_tasks), float(init_scale)
        d = model.phi_dim
        self.loc = PyroParam(torch.zeros(num_tasks, d))
        self.scale_tril = PyroParam(
            init_scale * torch.eye(d).expand(num_tasks, d, d).clone(), constraint=constraints.lower_cholesky
        )

    @property
    def init_args(self) -> dict[str, Any]:
        return {"num_tasks": self.num_tasks, "init_scale": self.init_scale}

    def posterior(self, tasks: TaskSet, index: Tensor | None = None) -> dist.MultivariateNormal:
        if index is None:
            if len(tasks) != self.num_tasks:
                raise ValueError(
                    f"tasks: the per_task guide holds {self.num_tasks} training tasks, got {len(tasks)} new ones; "
                    "adapt new tasks with method='svi' or 'nuts'"
                )
            index = torch.arange(self.num_tasks, device=self.loc.device)
        return dist.MultivariateNormal(self.loc[index], scale_tril=self.scale_tril[index])

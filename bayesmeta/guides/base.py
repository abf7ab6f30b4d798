r"""What every task guide shares: the ``"tasks"`` plate and the Gaussian algebra over φ."""
from __future__ import annotations

from typing import Any

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule
from torch import Tensor

from bayesmeta.model import TASKS_DIM, HierarchicalModel
from bayesmeta.tasks.taskset import TaskSet

__all__ = ["TaskGuide", "gaussian_natural_params", "gaussian_from_natural", "site_distribution"]


class TaskGuide(PyroModule):
    r"""A guide :math:`q(\phi_i \mid \cdot)` for the ``"tasks"`` plate of a :class:`HierarchicalModel`.

    Subclasses implement :meth:`posterior`; :meth:`forward` samples ``"phi"`` for a (sub)batch of tasks
    with the plate the model uses, so the two agree on which tasks a minibatch holds.
    """

    #: Name used by ``fit_prior(guide=...)`` and in saved files.
    kind: str = ""

    def __init__(self, model: HierarchicalModel) -> None:
        super().__init__()
        # A plain reference, not a submodule: the model's θ must not appear twice in state dicts.
        object.__setattr__(self, "_model", model)

    @property
    def model(self) -> HierarchicalModel:
        return self._model

    @property
    def init_args(self) -> dict[str, Any]:
        """Constructor arguments besides the model (saved with a prior)."""
        return {}

    def posterior(self, tasks: TaskSet, index: Tensor | None = None) -> dist.MultivariateNormal:
        """``q(φ)`` for each task of ``tasks`` (rows ``index`` of the collection the guide was built on).

        Returns a distribution with batch shape ``(len(tasks),)`` and event shape ``(phi_dim,)``.
        """
        raise NotImplementedError

    def forward(self, tasks: TaskSet, subsample_size: int | None = None) -> None:
        with pyro.plate("tasks", len(tasks), subsample_size=subsample_size, dim=TASKS_DIM) as idx:
            pyro.sample("phi", site_distribution(self.posterior(tasks[idx], idx)))


def site_distribution(q: dist.MultivariateNormal) -> dist.MultivariateNormal:
    """Give a per-task Gaussian (batch ``T``) the ``T x 1`` batch shape of the ``"phi"`` site."""
    return dist.MultivariateNormal(q.loc[..., None, :], scale_tril=q.scale_tril[..., None, :, :])


def gaussian_natural_params(prior: dist.Distribution) -> tuple[Tensor, Tensor] | None:
    r"""``(precision @ mean, precision)`` of a Gaussian prior over :math:`\mathbb R^D`, else ``None``.

    Recognizes ``Normal(...).to_event(1)`` and ``MultivariateNormal`` with batch shape ``()``.

    >>> eta, prec = gaussian_natural_params(dist.Normal(torch.ones(2), 2.0).to_event(1))
    >>> eta.tolist(), prec.diagonal().tolist()
    ([0.25, 0.25], [0.25, 0.25])
    """
    if prior.batch_shape != torch.Size() or len(prior.event_shape) != 1:
        return None
    base = prior
    while isinstance(base, dist.Independent):
        base = base.base_dist
    if isinstance(base, dist.Normal) and prior.event_shape == base.batch_shape[-1:]:
        precision_diag = base.scale.pow(-2).expand(prior.event_shape)
        return precision_diag * base.loc, torch.diag_embed(precision_diag)
    if isinstance(prior, dist.MultivariateNormal):
        precision = prior.precision_matrix
        return (precision @ prior.loc[..., None]).squeeze(-1), precision
    return None


def gaussian_from_natural(eta: Tensor, precision: Tensor) -> dist.MultivariateNormal:
    r""":math:`\mathcal N(\Lambda^{-1}\eta, \Lambda^{-1})` from ``eta: ... x D`` and ``precision: ... x D x D``.

    The precision is symmetrized first (float32 products such as :math:`X^\top X` are symmetric only up
    to rounding).

    >>> q = gaussian_from_natural(torch.tensor([2.0]), torch.tensor([[4.0]]))
    >>> q.mean.item(), q.variance.item()
    (0.5, 0.25)
    """
    precision = 0.5 * (precision + precision.mT)
    chol = torch.linalg.cholesky(precision)
    loc = torch.cholesky_solve(eta[..., None], chol).squeeze(-1)
    return dist.MultivariateNormal(loc, precision_matrix=precision)

r"""What every task guide shares: the ``"tasks"`` plate and the Gaussian algebra over φ."""
from __future__ import annotations

import contextlib
from typing import Any, Iterator

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.infer.autoguide import AutoNormal, init_to_feasible
from pyro.nn import PyroModule
from pyro.poutine.util import site_is_subsample
from torch import Tensor

from bayesmeta.guides.linear import ConditionallyGaussian
from bayesmeta.model import TASKS_DIM, HierarchicalModel
from bayesmeta.tasks.taskset import TaskData, TaskSet

__all__ = ["TaskGuide", "gaussian_natural_params", "gaussian_from_natural", "site_distribution"]


class TaskGuide(PyroModule):
    r"""A guide :math:`q(\phi_i \mid \cdot)` for the ``"tasks"`` plate of a :class:`HierarchicalModel`.

    Subclasses implement :meth:`posterior`; :meth:`forward` samples ``"phi"`` for a (sub)batch of tasks
    with the plate the model uses, so the two agree on which tasks a minibatch holds.

    Where :math:`\theta` has a hyperprior (``PyroSample`` attributes: sample sites outside the
    ``"tasks"`` plate), the guide also holds ``global_guide``, a Pyro ``AutoNormal`` over those sites, started at
    each hyperprior's mean where it is finite (:func:`init_to_hyperprior_mean`).
    Each call draws :math:`\theta` from it first, then samples ``"phi"`` with those :math:`\theta`
    sites conditioned on the draw and hidden from the trace, so :meth:`posterior` never needs to know.
    ``theta_point()`` (the median of :math:`q(\theta)`) is what :meth:`~bayesmeta.LearnedPrior.adapt`
    plugs in.
    """

    #: Name used by ``fit_prior(guide=...)`` and in saved files.
    kind: str = ""
    #: Whether ``fit_prior`` can fit it by the ELBO (its draws are reparameterized).
    elbo_trainable: bool = True
    #: Whether it covers models with a linear part (``model.linear_dim > 0``): a posterior over the free part,
    #: completed by the exact posterior of the linear part (:mod:`bayesmeta.guides.linear`).
    covers_linear: bool = False

    def __init__(self, model: HierarchicalModel) -> None:
        if model.linear_dim and not self.covers_linear:
            raise ValueError(
                f"guide: {self.kind!r} does not cover a model with a linear part ({type(model).__name__} has "
                f"linear_dim={model.linear_dim}); use guide='pooled' (or bm.amortize(..., guide='mixture'))")
        super().__init__()
        # A plain reference, not a submodule: the model's θ must not appear twice in state dicts.
        object.__setattr__(self, "_model", model)
        sites = global_latent_sites(model)
        self.global_guide = AutoNormal(poutine.block(model, expose=sites), init_loc_fn=init_to_hyperprior_mean,
                                       init_scale=0.05) if sites else None
        if self.global_guide is not None:
            self.global_guide(_placeholder_tasks(model))  # create its parameters now, not lazily

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
        theta = self.global_guide(tasks) if self.global_guide is not None else {}
        with theta_fixed(self.model, theta):
            with pyro.plate("tasks", len(tasks), subsample_size=subsample_size, dim=TASKS_DIM) as idx:
                pyro.sample("phi", site_distribution(self.posterior(tasks[idx], idx)))

    def theta_point(self) -> dict[str, Tensor]:
        """The median of :math:`q(\theta)` for hyperprior sites (empty where θ has none)."""
        if self.global_guide is None:
            return {}
        with torch.no_grad():
            return {name: value.detach() for name, value in self.global_guide.median().items()}


def init_to_hyperprior_mean(site: dict[str, Any]) -> Tensor:
    """Where :math:`q(\theta)` starts: the hyperprior's mean where it is finite, else Pyro's feasible point.

    A model centres its hyperprior on the θ it would otherwise start from (``HierarchicalBNN(hyperprior=True)``:
    μ around the initial draw of the network's weights), which AutoNormal's default, the point 0 in unconstrained
    space, would discard (all of μ at 0: every hidden unit alike). Hyperpriors without a finite mean (a
    ``HalfCauchy`` scale) start where AutoNormal starts by default.

    >>> init_to_hyperprior_mean({"fn": dist.Normal(torch.tensor([1.5]), 1.0)}).tolist()
    [1.5]
    >>> init_to_hyperprior_mean({"fn": dist.HalfCauchy(5.0), "value": None, "is_observed": False}).item()
    1.0
    """
    try:
        # A copy: the mean can be the model's own tensor (a buffer the hyperprior is centred on), and AutoNormal makes
        # its start value the parameter it optimizes, in place.
        value = site["fn"].mean.detach().clone()
    except NotImplementedError:
        return init_to_feasible(site)
    if not bool(torch.isfinite(value).all()):
        return init_to_feasible(site)
    value._pyro_custom_init = False  # as Pyro's own strategies mark their values
    return value


@contextlib.contextmanager
def theta_fixed(model: HierarchicalModel, theta: dict[str, Tensor]) -> Iterator[None]:
    """Within the block, ``model``'s reads of the hyperprior sites ``theta`` return its values and leave
    no trace (so a guide's trace holds only its own sites)."""
    with model.reading_theta():
        if not theta:
            yield
            return
        with poutine.block(hide=list(theta)), poutine.condition(data=theta):
            yield


def _placeholder_tasks(model: HierarchicalModel) -> TaskSet:
    # Ones, not zeros: a model may read an input as a scale (EightSchools' known standard errors).
    x = torch.ones(1, 1, model.x_dim)
    return TaskSet._trusted(TaskData(x, torch.zeros(1, 1, model.y_dim), torch.ones(1, 1, dtype=torch.bool)),
                            TaskData(x[:, :0], torch.zeros(1, 0, model.y_dim), torch.ones(1, 0, dtype=torch.bool)),
                            None, None)


def global_latent_sites(model: HierarchicalModel) -> list[str]:
    """Names of the model's latent sample sites outside the ``"tasks"`` plate (θ with a hyperprior)."""
    with torch.no_grad():
        trace = poutine.trace(model).get_trace(_placeholder_tasks(model))
    return [
        name for name, site in trace.nodes.items()
        if site["type"] == "sample" and not site["is_observed"] and not site_is_subsample(site)
        and not any(frame.name == "tasks" for frame in site["cond_indep_stack"])
    ]


def site_distribution(q: dist.Distribution) -> dist.Distribution:
    """Give a per-task posterior (batch ``T``) the ``T x 1`` batch shape of the ``"phi"`` site.

    ``q`` is a ``MultivariateNormal``, a diagonal ``Normal(...).to_event(1)`` (kept diagonal) or a
    :class:`~bayesmeta.guides.linear.ConditionallyGaussian`.
    """
    if isinstance(q, ConditionallyGaussian):
        return q.with_task_dim()
    if isinstance(q, dist.MultivariateNormal):
        return dist.MultivariateNormal(q.loc[..., None, :], scale_tril=q.scale_tril[..., None, :, :])
    return dist.Normal(q.mean[..., None, :], q.stddev[..., None, :]).to_event(1)


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

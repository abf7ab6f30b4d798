r"""The base class of every hierarchical task model."""
from __future__ import annotations

import contextlib
import functools
import inspect
from typing import Any, Iterator

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.nn import PyroModule
from torch import Tensor

from bayesmeta.tasks.taskset import TaskData, TaskSet

__all__ = ["HierarchicalModel", "TASKS_DIM", "POINTS_DIM", "register_model", "model_registry"]

#: The ``"tasks"`` plate's dim: the site ``"phi"`` has shape ``... x num_tasks x 1 x phi_dim``.
TASKS_DIM = -2
#: The masked ``"points"`` plate's dim: observations have batch shape ``... x num_tasks x num_points``.
POINTS_DIM = -1

_REGISTRY: dict[str, type] = {}


def model_registry() -> dict[str, type]:
    """The model classes that :meth:`bayesmeta.LearnedPrior.load` may rebuild, by qualified name."""
    return dict(_REGISTRY)


def register_model(cls: type) -> type:
    """Record ``cls`` so that saved priors can name it; done automatically for every subclass."""
    _REGISTRY[f"{cls.__module__}.{cls.__qualname__}"] = cls
    return cls


def _record_init_args(init: Any) -> Any:
    signature = inspect.signature(init)

    @functools.wraps(init)
    def wrapped(self: Any, *args: Any, **kwargs: Any) -> None:
        # Only the outermost constructor's arguments describe the object (super().__init__ calls nest).
        outermost = "_init_args" not in self.__dict__
        if outermost:
            bound = signature.bind(self, *args, **kwargs)
            bound.apply_defaults()
            arguments = dict(bound.arguments)
            arguments.pop("self")
            object.__setattr__(self, "_init_args", arguments)
        init(self, *args, **kwargs)

    return wrapped


class HierarchicalModel(PyroModule):
    r"""A hierarchical task model: shared :math:`\theta`, per-task :math:`\phi_i`, data :math:`y_{ij}`.

    .. math::

        \phi_i \mid \theta \sim p_\theta(\phi), \qquad
        y_{ij} \mid x_{ij}, \phi_i \sim p(y \mid x_{ij}, \phi_i), \qquad
        \phi_i \perp \phi_k \mid \theta .

    A subclass says three things and the base class turns them into the Pyro program:

    * :math:`\theta` as attributes — ``PyroParam`` (empirical Bayes: learned point estimates),
      ``PyroSample`` (a hyperprior: full Bayes) or ordinary ``nn.Module`` networks;
    * :meth:`local_prior` — the distribution of :math:`\phi_i` given :math:`\theta`, event shape
      ``(phi_dim,)``, batch shape ``()``; :attr:`phi_names` names its coordinates;
    * :meth:`likelihood` — ``likelihood(phi, x)`` with ``phi: ... x T x phi_dim`` and
      ``x: T x N x x_dim`` returns a distribution of ``y`` with batch shape ``... x T x N`` and event
      shape ``(y_dim,)`` (class labels: event shape ``()``).

    :meth:`forward` reads :math:`\theta` before any plate, samples ``"phi"`` inside a ``"tasks"`` plate
    (dim ``-2``, subsampling-aware) and observes ``"y"`` inside a masked ``"points"`` plate (dim ``-1``).
    A subclass may override ``forward``; every inference method works with any program that keeps the
    signature ``forward(tasks, subsample_size=None)``, the ``"tasks"`` plate at dim ``-2`` and the site
    ``"phi"``.

    A model whose likelihood is linear-Gaussian in the last ``linear_dim`` coordinates :math:`w` of
    :math:`\phi = (u, w)`, given the others, says so with :attr:`linear_dim` and :meth:`linear_design`; the
    ``"pooled"`` and ``"mixture"`` guides then approximate the posterior of :math:`u` only and complete it
    with the exact Gaussian posterior of :math:`w` (:mod:`bayesmeta.guides.linear`), and predictions
    integrate :math:`w` out.

    Constructor arguments are recorded automatically (for :meth:`bayesmeta.LearnedPrior.save`); keep
    them plain (numbers, strings, lists).

    >>> import torch
    >>> from pyro.nn import PyroParam
    >>> class Offsets(HierarchicalModel):
    ...     phi_names = ["offset"]
    ...     def __init__(self):
    ...         super().__init__(x_dim=1)
    ...         self.loc = PyroParam(torch.zeros(1))
    ...     def local_prior(self):
    ...         return dist.Normal(self.loc, 1.0).to_event(1)
    ...     def likelihood(self, phi, x):
    ...         return dist.Normal(phi[..., None, :] + 0 * x, 0.1).to_event(1)
    >>> tasks = TaskSet.from_arrays(torch.zeros(3, 4, 1), torch.ones(3, 4, 1))
    >>> trace = poutine.trace(Offsets()).get_trace(tasks)
    >>> trace.nodes["phi"]["value"].shape, trace.nodes["y"]["fn"].batch_shape
    (torch.Size([3, 1, 1]), torch.Size([3, 4]))
    """

    phi_names: list[str] = []
    #: Trailing coordinates of φ that the likelihood is linear-Gaussian in (see :meth:`linear_design`); 0: none.
    linear_dim: int = 0

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "__init__" in cls.__dict__:
            cls.__init__ = _record_init_args(cls.__dict__["__init__"])
        if not cls.__name__.startswith("PyroModule["):
            register_model(cls)

    def __init__(self, x_dim: int, y_dim: int = 1) -> None:
        super().__init__()
        if not isinstance(x_dim, int) or x_dim < 1:
            raise ValueError(f"x_dim: expected a positive int, got {x_dim!r}")
        if not isinstance(y_dim, int) or y_dim < 1:
            raise ValueError(f"y_dim: expected a positive int, got {y_dim!r}")
        self.x_dim, self.y_dim = x_dim, y_dim

    @property
    def phi_dim(self) -> int:
        """Number of coordinates of :math:`\\phi_i`."""
        return len(self.phi_names)

    @property
    def device(self) -> torch.device:
        """Where θ lives: the first parameter's or buffer's device (CPU for a model with neither, e.g.
        one whose θ is all ``PyroSample``)."""
        for tensor in (*self.parameters(), *self.buffers()):
            return tensor.device
        return torch.device("cpu")

    @property
    def init_args(self) -> dict[str, Any]:
        """The constructor arguments this model was built with."""
        return dict(self.__dict__.get("_init_args", {}))

    @contextlib.contextmanager
    def reading_theta(self) -> Iterator[None]:
        """Read θ outside :meth:`forward` as Pyro reads it inside: ``PyroSample`` attributes become sample
        sites that handlers (``poutine.condition``, ``block``, ``trace``) see, drawn once per block.

        Outside such a block Pyro returns a fresh draw from the hyperprior on every read.
        """
        with self._pyro_context:
            yield

    def local_prior(self) -> dist.Distribution:
        """:math:`p(\\phi_i \\mid \\theta)`: event shape ``(phi_dim,)``, batch shape ``()``."""
        raise NotImplementedError(f"{type(self).__name__} must define local_prior()")

    def likelihood(self, phi: Tensor, x: Tensor) -> dist.Distribution:
        """``phi: ... x T x phi_dim``, ``x: T x N x x_dim`` -> distribution, batch ``... x T x N``."""
        raise NotImplementedError(f"{type(self).__name__} must define likelihood(phi, x)")

    def linear_design(self, free: Tensor, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        r"""``(offset, design, scale)`` such that ``likelihood(phi, x)`` is
        :math:`\mathcal N(\text{offset} + \text{design}\, w,\ \operatorname{diag}\text{scale}^2)` for
        :math:`\phi = (u, w)`, ``u = free``.

        Only for a model with ``linear_dim = L > 0``, whose :meth:`local_prior` is a diagonal Gaussian
        (``Normal(...).to_event(1)``, so that :math:`w` is independent of :math:`u` a priori).
        ``free: ... x T x (phi_dim - L)`` and ``x: T x N x x_dim`` give ``offset: ... x T x N x y_dim``,
        ``design: ... x T x N x y_dim x L`` and ``scale: ... x T x N x y_dim``.
        """
        raise NotImplementedError(f"{type(self).__name__} has linear_dim={self.linear_dim} but no linear_design()")

    def forward(self, tasks: TaskSet, subsample_size: int | None = None) -> None:
        """Score every point (support and query) of ``tasks``; ``subsample_size`` tasks per call."""
        prior = self.local_prior()  # reads θ here, outside every plate
        with pyro.plate("tasks", len(tasks), subsample_size=subsample_size, dim=TASKS_DIM) as idx:
            phi = pyro.sample("phi", prior)
            self.observe(phi[..., 0, :], tasks[idx].all_points())

    def observe(self, phi: Tensor, data: TaskData) -> None:
        """Observe ``data.y`` under :meth:`likelihood` in a masked ``"points"`` plate (inside ``"tasks"``)."""
        if data.num_points == 0:
            return
        with pyro.plate("points", data.num_points, dim=POINTS_DIM), poutine.mask(mask=data.mask):
            pyro.sample("y", self.likelihood(phi, data.x), obs=data.y)

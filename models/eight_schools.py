r"""The eight schools model (Rubin 1981): a normal hierarchy with known measurement error, full Bayes."""
from __future__ import annotations

import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.infer.reparam import LocScaleReparam
from pyro.nn import PyroSample
from torch import Tensor

import bayesmeta as bm

__all__ = ["EightSchools"]

_PARAMETERIZATIONS = ("noncentered", "centered")


class EightSchools(bm.HierarchicalModel):
    r"""School effects drawn around a common mean, each observed once with a known standard error.

    .. math::

        \mu \sim \mathcal N(0, 5^2), \qquad \tau \sim \mathrm{HalfCauchy}(5), \qquad
        \phi_j \mid \mu, \tau \sim \mathcal N(\mu, \tau^2), \qquad
        y_j \mid \phi_j \sim \mathcal N(\phi_j, \sigma_j^2),

    with :math:`\theta = (\mu, \tau)` given hyperpriors (``PyroSample``): the model is meant for full Bayes,
    ``fit_prior(EightSchools(), bm.tasks.eight_schools(), method="nuts")``. The priors are those of
    ArviZ's bundled ``centered_eight`` / ``non_centered_eight`` posteriors (Gelman et al. 2013, *Bayesian Data
    Analysis*, §5.5), so the two can be compared. Each task is one school: its single point has input
    :math:`x_j = \sigma_j` (the known standard error) and output :math:`y_j`.

    ``parameterization="noncentered"`` (the default) samples :math:`\eta_j \sim \mathcal N(0, 1)` and sets
    :math:`\phi_j = \mu + \tau\eta_j` (Pyro's ``LocScaleReparam``; Papaspiliopoulos et al. 2007): with
    few data per school the posterior of :math:`(\tau, \phi)` is a funnel that NUTS cannot enter in the
    centered form (divergences, biased :math:`\tau`), while the non-centered form has no funnel. Either
    way the site ``"phi"`` holds the school effects :math:`\phi_j` (``phi_names == ["theta"]``, ArviZ's
    name), so every adapt method, prediction and diagnostic reads the same quantity.

    Args:
        parameterization: ``"noncentered"`` or ``"centered"``.

    >>> model = EightSchools()
    >>> model.phi_names, model.parameterization
    (['theta'], 'noncentered')
    """

    phi_names = ["theta"]

    def __init__(self, parameterization: str = "noncentered") -> None:
        super().__init__(x_dim=1, y_dim=1)
        if parameterization not in _PARAMETERIZATIONS:
            raise ValueError(f"parameterization: expected one of {list(_PARAMETERIZATIONS)}, got {parameterization!r}")
        self.parameterization = parameterization
        self.register_buffer("_zero", torch.tensor(0.0))
        self.mu = PyroSample(lambda self: dist.Normal(self._zero, 5.0))
        self.tau = PyroSample(lambda self: dist.HalfCauchy(self._zero + 5.0))

    def local_prior(self) -> dist.Distribution:
        # Batch-safe: θ drawn once per posterior draw (a leading draws dim) broadcasts over the tasks plate.
        return dist.Normal(self.mu[..., None], self.tau[..., None]).to_event(1)

    def likelihood(self, phi: Tensor, x: Tensor) -> dist.Distribution:
        """``y_j ~ Normal(phi_j, x_j)``: ``phi: ... x T x 1``, ``x: T x N x 1`` standard errors."""
        return dist.Normal(phi[..., None, :], x).to_event(1)

    def forward(self, tasks: bm.TaskSet, subsample_size: int | None = None) -> None:
        if self.parameterization == "centered":
            return super().forward(tasks, subsample_size)
        with poutine.reparam(config={"phi": LocScaleReparam(centered=0.0)}):
            return super().forward(tasks, subsample_size)

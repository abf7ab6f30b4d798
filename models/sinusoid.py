r"""Sinusoids with a learned prior over amplitude and phase (the MAML regression family)."""
from __future__ import annotations

import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from pyro.nn import PyroParam
from torch import Tensor

import bayesmeta as bm

__all__ = ["SinusoidModel"]


class SinusoidModel(bm.HierarchicalModel):
    r"""A sine curve per task; the prior over its amplitude and phase is learned across tasks.

    .. math::

        \phi_i = (\log A_i, p_i) \mid \theta \sim \mathcal N\big(\mu, \operatorname{diag}(s^2)\big), \qquad
        y_{ij} \mid x_{ij}, \phi_i \sim \mathcal N\big(A_i \sin(x_{ij} - p_i),\ \sigma^2\big),

    with :math:`\theta = (\mu, s, \sigma)`: the structure a sinusoid task family shares (Finn et al.
    2017, "Model-Agnostic Meta-Learning", §5.1). Only amplitude and phase vary between tasks; the
    family of curves itself is known, so a few points pin a task down.

    The amplitude enters through its logarithm: it stays positive, which removes the symmetry
    :math:`A\sin(x-p) = (-A)\sin(x-p+\pi)` that would make every posterior over :math:`(A, p)` bimodal,
    while the prior stays Gaussian on :math:`\mathbb R^2` (so every guide and adapt method applies).
    :meth:`amplitude_phase` maps draws back to :math:`(A, p)`.

    Which guide meta-trains :math:`\theta` matters for :math:`\sigma`: the ELBO's gap, the KL from the guide
    to each task's posterior, depends on :math:`\theta` too, and a larger :math:`\sigma` flattens posteriors
    that a Gaussian fits badly (at small amplitudes the phase is nearly free). On 2000 sinusoid tasks of 20
    points (3000 steps), ``guide="amortized"`` with ``context=True`` learned :math:`\sigma` = 0.20 on
    noiseless tasks and 0.39 on tasks with noise 0.3, and NUTS, exact under that :math:`\theta`, then
    over-covered (90% intervals held 95–96% of the points); ``guide="pooled"`` with ``random_subsets=True``
    (``lr=1e-2``) learned 0.089 and 0.32 (``benchmarks/sinusoid_noisy.py``).

    Args:
        noise_floor: lower bound of the observation noise :math:`\sigma`.

    >>> model = SinusoidModel()
    >>> model.phi_names
    ['log_amplitude', 'phase']
    >>> model.amplitude_phase(torch.tensor([[0.0, 1.0]])).tolist()
    [[1.0, 1.0]]
    """

    phi_names = ["log_amplitude", "phase"]

    def __init__(self, noise_floor: float = 1e-3) -> None:
        super().__init__(x_dim=1, y_dim=1)
        self.prior_loc = PyroParam(torch.zeros(2))
        self.prior_scale = PyroParam(torch.ones(2), constraint=constraints.positive)
        self.noise_scale = PyroParam(torch.tensor(1.0), constraint=constraints.greater_than(noise_floor))

    def local_prior(self) -> dist.Distribution:
        return dist.Normal(self.prior_loc, self.prior_scale).to_event(1)

    def likelihood(self, phi: Tensor, x: Tensor) -> dist.Distribution:
        amplitude, phase = phi[..., :1, None].exp(), phi[..., 1:, None]
        return dist.Normal(amplitude * torch.sin(x - phase), self.noise_scale).to_event(1)

    @staticmethod
    def amplitude_phase(phi: Tensor) -> Tensor:
        """``... x 2`` values of φ -> ``... x 2`` (amplitude, phase)."""
        return torch.stack([phi[..., 0].exp(), phi[..., 1]], -1)

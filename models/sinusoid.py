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

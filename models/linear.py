r"""Hierarchical Bayesian linear regression: the conjugate model every inference path is checked on."""
from __future__ import annotations

import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from pyro.nn import PyroParam
from torch import Tensor

import bayesmeta as bm

__all__ = ["HierarchicalLinearRegression"]


class HierarchicalLinearRegression(bm.HierarchicalModel):
    r"""Linear regression per task with a Gaussian prior on the weights learned across tasks.

    .. math::

        w_i \mid \theta \sim \mathcal N\big(\mu, \operatorname{diag}(s^2)\big), \qquad
        y_{ij} \mid x_{ij}, w_i \sim \mathcal N\big(w_i^\top \tilde x_{ij},\ \sigma^2\big), \qquad
        \tilde x = (x, 1),

    with :math:`\theta = (\mu, s, \sigma)` learned by empirical Bayes. The posterior is Gaussian in
    closed form (Bishop 2006, *Pattern Recognition and Machine Learning*, eq. 3.50–3.51):

    .. math::

        \Lambda_i = \operatorname{diag}(s^{-2}) + \sigma^{-2} \tilde X_i^\top \tilde X_i, \qquad
        m_i = \Lambda_i^{-1}\big(\operatorname{diag}(s^{-2})\mu + \sigma^{-2}\tilde X_i^\top y_i\big),

    so maximizing the marginal likelihood with :func:`bayesmeta.fit_prior` (``guide="exact"``) gives the
    same estimate of :math:`\theta` as a linear mixed model fitted by maximum likelihood.

    Args:
        x_dim: number of input features.
        bias: include an intercept (the last coordinate of :math:`w_i`).
        noise_floor: lower bound of :math:`\sigma`, for numerical safety.

    θ is readable as the tensors ``prior_loc`` (``phi_dim``), ``prior_scale`` (``phi_dim``) and
    ``noise_scale`` (scalar).

    >>> model = HierarchicalLinearRegression(x_dim=2)
    >>> model.phi_names, tuple(model.prior_loc.shape)
    (['w0', 'w1', 'bias'], (3,))
    """

    def __init__(self, x_dim: int, bias: bool = True, noise_floor: float = 1e-4) -> None:
        super().__init__(x_dim=x_dim, y_dim=1)
        self.bias = bool(bias)
        self.phi_names = [f"w{i}" for i in range(x_dim)] + (["bias"] if self.bias else [])
        d = len(self.phi_names)
        self.prior_loc = PyroParam(torch.zeros(d))
        self.prior_scale = PyroParam(torch.ones(d), constraint=constraints.positive)
        self.noise_scale = PyroParam(torch.tensor(1.0), constraint=constraints.greater_than(noise_floor))

    def features(self, x: Tensor) -> Tensor:
        """``T x N x x_dim`` -> ``T x N x phi_dim`` design matrix (with the intercept column)."""
        if not self.bias:
            return x
        return torch.cat([x, torch.ones_like(x[..., :1])], -1)

    def local_prior(self) -> dist.Distribution:
        return dist.Normal(self.prior_loc, self.prior_scale).to_event(1)

    def likelihood(self, phi: Tensor, x: Tensor) -> dist.Distribution:
        mean = (self.features(x) * phi[..., None, :]).sum(-1, keepdim=True)
        return dist.Normal(mean, self.noise_scale).to_event(1)

    def exact_posterior(self, data: bm.TaskData) -> dist.MultivariateNormal:
        r"""The posterior over :math:`w_i` given the observed points of each task (masked).

        Args:
            data: ``T`` tasks; padded points (``mask`` False) are ignored.

        Returns:
            A ``MultivariateNormal`` with batch shape ``(T,)`` and event shape ``(phi_dim,)``.
        """
        design = self.features(data.x) * data.mask[..., None]
        noise_precision = self.noise_scale.pow(-2)
        prior_precision = self.prior_scale.pow(-2)
        precision = torch.diag_embed(prior_precision) + noise_precision * design.mT @ design
        eta = prior_precision * self.prior_loc + noise_precision * (design.mT @ data.y).squeeze(-1)
        return bm.guides.gaussian_from_natural(eta, precision)

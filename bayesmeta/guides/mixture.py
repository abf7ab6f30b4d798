r"""A set encoder with a mixture-of-Gaussians head: an amortized posterior that can bend and split."""
from __future__ import annotations

from typing import Any

import pyro.distributions as dist
import torch
from torch import Tensor

from bayesmeta.guides.amortized import _mlp
from bayesmeta.guides.linear import free_dim
from bayesmeta.guides.pooled import PooledGuide
from bayesmeta.model import HierarchicalModel
from bayesmeta.tasks.taskset import TaskSet

__all__ = ["MixtureGuide"]


class MixtureGuide(PooledGuide):
    r"""The pooled set encoder of :class:`~bayesmeta.guides.PooledGuide` with a ``components``-Gaussian head.

    .. math::

        q(\phi \mid D) = \sum_{k=1}^{K} \pi_k(r)\, \mathcal N\big(\phi;\ m_k(r),\ \operatorname{diag} s_k(r)^2\big),
        \qquad r = \big(\tfrac1n \textstyle\sum_{j\in D} h(x_j, y_j),\ \log(1+n)\big).

    A single Gaussian cannot follow a posterior that is curved or split — a sinusoid seen at one point
    is consistent with a ridge of (amplitude, phase) pairs — and a Gaussian fitted by the ELBO
    (reverse KL) then sits inside one part of it, so its predictions are overconfident. A mixture can
    cover such a ridge. Mixture draws are not reparameterizable, so this guide is not fitted by the ELBO:
    :func:`bayesmeta.amortize` fits it by simulation (forward KL) under a prior that ``fit_prior``
    has already learned, and ``fit_prior(guide="mixture")`` is refused.

    Args:
        model: the model whose ``"phi"`` site this guide covers.
        components: mixture components :math:`K`.
        covariance: ``"diagonal"`` (default) or ``"full"`` (a Cholesky factor per component,
            :math:`D(D-1)/2` more outputs each: for low-dimensional φ, where a thin posterior lies across the axes).
        hidden, depth, reads: as for :class:`~bayesmeta.guides.PooledGuide`.

    >>> from bayesmeta.models import NeuralProcessModel
    >>> guide = MixtureGuide(NeuralProcessModel(latent_dim=3, hidden=8), components=4, hidden=16)
    >>> q = guide.posterior(TaskSet.from_arrays(torch.randn(5, 2, 1), torch.randn(5, 2, 1)))
    >>> q.batch_shape, q.event_shape, q.mixture_distribution.logits.shape
    (torch.Size([5]), torch.Size([3]), torch.Size([5, 4]))
    """

    kind = "mixture"
    #: Fitted by :func:`bayesmeta.amortize` (forward KL), not by the ELBO.
    elbo_trainable = False

    def __init__(self, model: HierarchicalModel, components: int = 10, covariance: str = "diagonal", hidden: int = 128,
                 depth: int = 3, reads: str = "all") -> None:
        if isinstance(components, bool) or not isinstance(components, int) or components < 1:
            raise ValueError(f"components: expected a positive int, got {components!r}")
        if covariance not in ("diagonal", "full"):
            raise ValueError(f"covariance: expected 'diagonal' or 'full', got {covariance!r}")
        super().__init__(model, hidden=hidden, depth=depth, reads=reads)
        self.components, self.covariance = components, covariance
        d = free_dim(model)
        self._off_diagonal = d * (d - 1) // 2 if covariance == "full" else 0
        self.head = _mlp([self.hidden + 1, self.hidden, self.hidden, components * (2 * d + 1 + self._off_diagonal)])

    @property
    def init_args(self) -> dict[str, Any]:
        return {**super().init_args, "components": self.components, "covariance": self.covariance}

    def posterior(self, tasks: TaskSet, index: Tensor | None = None) -> dist.Distribution:
        features, _ = self.summary(tasks)
        out = self.head(features)
        k, d = self.components, free_dim(self.model)
        logits = out[..., :k]
        params = out[..., k:].unflatten(-1, (k, 2 * d + self._off_diagonal))
        loc, raw_scale, lower = params[..., :d], params[..., d:2 * d], params[..., 2 * d:]
        scale = torch.nn.functional.softplus(raw_scale) + 1e-4
        if self.covariance == "diagonal":
            parts = dist.Normal(loc, scale).to_event(1)
        else:  # scale_tril: the positive diagonal, and the strictly lower triangle read from the head
            rows, cols = torch.tril_indices(d, d, -1, device=out.device)
            strict = scale.new_zeros(*scale.shape, d)
            strict[..., rows, cols] = lower
            parts = dist.MultivariateNormal(loc, scale_tril=strict + torch.diag_embed(scale))
        return self.complete(dist.MixtureSameFamily(dist.Categorical(logits=logits), parts), tasks)

    def forward(self, tasks: TaskSet, subsample_size: int | None = None) -> None:
        raise ValueError(
            "guide: 'mixture' is not fitted by the ELBO (its draws are not reparameterizable); fit the prior with "
            "another guide, then fit a mixture guide to it by simulation: bm.amortize(prior, tasks)"
        )

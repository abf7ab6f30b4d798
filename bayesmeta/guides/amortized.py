r"""Amortized inference: a set encoder reads a support set and returns a Gaussian over φ."""
from __future__ import annotations

from typing import Any

import pyro.distributions as dist
import torch
from pyro.nn import PyroParam
from pyro.distributions import constraints
from torch import Tensor, nn

from bayesmeta.guides.base import TaskGuide, gaussian_from_natural, gaussian_natural_params
from bayesmeta.model import HierarchicalModel
from bayesmeta.tasks.taskset import TaskData, TaskSet

__all__ = ["AmortizedGuide"]


def _mlp(sizes: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.SiLU())
    return nn.Sequential(*layers)


class AmortizedGuide(TaskGuide):
    r"""A permutation-invariant, masked set encoder whose output is a Gaussian :math:`q(\phi \mid D)`.

    Each support point :math:`(x_j, y_j)` emits a Gaussian *pseudo-observation* of :math:`\phi` — a
    factor :math:`\exp(-\tfrac12\lVert t_j - V_j^\top\phi\rVert^2)` with :math:`V_j \in \mathbb R^{D\times r}`
    and :math:`t_j \in \mathbb R^r` computed by a network — and the factors are pooled by a masked sum
    (DeepSets, Zaheer et al. 2017) in natural parameters, on top of the model's own prior
    :math:`p_\theta(\phi) = \mathcal N(\mu_0, \Lambda_0^{-1})`:

    .. math::

        q(\phi \mid D) \propto p_\theta(\phi) \prod_{j \in D} e^{-\frac12\lVert t_j - V_j^\top \phi\rVert^2}
        = \mathcal N\Big(\Lambda^{-1}\eta,\ \Lambda^{-1}\Big), \quad
        \Lambda = \Lambda_0 + \textstyle\sum_j V_j V_j^\top, \quad
        \eta = \Lambda_0\mu_0 + \textstyle\sum_j V_j t_j .

    The precision is diagonal-plus-low-rank (``covariance="full"``) or, with ``covariance="diag"``,
    only its diagonal is kept (mean field). Because the pooling is a sum of likelihood-like factors, the
    posterior tightens as points are added, an empty support returns the prior, and for a conjugate
    linear-Gaussian model the exact posterior lies in the family (:math:`V_j = \tilde x_j/\sigma`,
    :math:`t_j = y_j/\sigma`; the encoder has linear skip paths so that it is reachable). With
    ``context=True`` each point's factor also sees a masked mean of all points' embeddings, which lets
    the factors of a non-linear model depend on the whole set. Where the model's prior is not a
    Gaussian on :math:`\mathbb R^D`, a learned Gaussian takes its place.

    What the encoder reads in meta-training is set by ``reads``. With ``"all"`` (default) it reads every
    point the model scores — support and query — so it is trained to return :math:`p_\theta(\phi\mid D)`
    for whatever set :math:`D` it is given; at :meth:`~bayesmeta.LearnedPrior.adapt` it is given the new
    support set and returns :math:`q(\phi\mid S)\approx p_\theta(\phi\mid S)`. With ``"support"`` it reads
    only the support while the model scores support and query: still a valid ELBO of each whole task,
    but the optimal :math:`q(\phi\mid S)` then approximates :math:`p_\theta(\phi\mid S, Q)` from
    :math:`S` alone — overconfident on new tasks, and it biases the empirical-Bayes :math:`\theta`
    (measured in ``docs/benchmarks.md``).

    Args:
        model: the model whose ``"phi"`` site this guide covers.
        hidden: width of the encoder.
        depth: hidden layers of each network.
        rank: columns :math:`r` of each point's factor (default: the model's ``y_dim``, the rank of a
            linearized Gaussian likelihood term).
        covariance: ``"full"`` or ``"diag"``.
        context: let each point's factor see the pooled set.
        reads: ``"all"`` or ``"support"``: the points read in meta-training (see above).

    >>> from bayesmeta.models import HierarchicalLinearRegression
    >>> guide = AmortizedGuide(HierarchicalLinearRegression(x_dim=2))
    >>> q = guide.posterior(TaskSet.from_arrays(torch.randn(4, 5, 2), torch.randn(4, 5, 1)))
    >>> q.batch_shape, q.event_shape
    (torch.Size([4]), torch.Size([3]))
    """

    kind = "amortized"

    def __init__(
        self,
        model: HierarchicalModel,
        hidden: int = 64,
        depth: int = 2,
        rank: int | None = None,
        covariance: str = "full",
        context: bool = False,
        reads: str = "all",
    ) -> None:
        super().__init__(model)
        if covariance not in ("full", "diag"):
            raise ValueError(f"covariance: expected 'full' or 'diag', got {covariance!r}")
        if reads not in ("all", "support"):
            raise ValueError(f"reads: expected 'all' or 'support', got {reads!r}")
        self.reads = reads
        self.hidden, self.depth, self.covariance, self.context = int(hidden), int(depth), covariance, bool(context)
        self.rank = int(rank) if rank is not None else model.y_dim
        d, r = model.phi_dim, self.rank
        in_dim = model.x_dim + model.y_dim
        self.embed = _mlp([in_dim] + [hidden] * depth) if context else None
        self.point = _mlp([in_dim + (hidden if context else 0)] + [hidden] * depth)
        self.factor = nn.Linear(hidden, d * r)
        self.factor_skip = nn.Linear(in_dim, d * r)
        self.target = nn.Linear(hidden, r)
        self.target_skip = nn.Linear(in_dim, r)
        # Start at "q = prior": every point adds a near-zero factor. The factor is bilinear in two network
        # outputs (eta = sum V t), and a default O(1) random start strands about one seed in four in a
        # poor optimum (10-shot KL ~1.8 nats against ~0.04; measured in docs/benchmarks.md).
        for layer, std in ((self.factor, 1e-3), (self.target, 1e-3), (self.factor_skip, 1e-2), (self.target_skip, 1e-2)):
            nn.init.normal_(layer.weight, std=std)
            nn.init.zeros_(layer.bias)
        if self._prior_natural_params() is None:
            self.base_loc = PyroParam(torch.zeros(d))
            self.base_scale = PyroParam(torch.ones(d), constraint=constraints.positive)

    @property
    def init_args(self) -> dict[str, Any]:
        return {
            "hidden": self.hidden, "depth": self.depth, "rank": self.rank,
            "covariance": self.covariance, "context": self.context, "reads": self.reads,
        }

    def _prior_natural_params(self) -> tuple[Tensor, Tensor] | None:
        return gaussian_natural_params(self.model.local_prior())

    def _base(self) -> tuple[Tensor, Tensor]:
        natural = self._prior_natural_params()
        if natural is not None:
            return natural
        precision_diag = self.base_scale.pow(-2)
        return precision_diag * self.base_loc, torch.diag_embed(precision_diag)

    def factors(self, data: TaskData) -> tuple[Tensor, Tensor]:
        """Per-point factors: ``V: T x N x phi_dim x rank`` and ``t: T x N x rank`` (zero where masked)."""
        y = data.y if data.y.dim() == 3 else data.y.to(data.x.dtype)[..., None]
        inputs = torch.cat([data.x, y], -1)
        weight = data.mask[..., None].to(inputs.dtype)
        features = inputs
        if self.embed is not None:
            pooled = (self.embed(inputs) * weight).sum(1) / weight.sum(1).clamp(min=1.0)
            features = torch.cat([inputs, pooled[:, None, :].expand(-1, inputs.shape[1], -1)], -1)
        h = self.point(features)
        v = (self.factor(h) + self.factor_skip(inputs)) * weight
        t = (self.target(h) + self.target_skip(inputs)) * weight
        return v.unflatten(-1, (self.model.phi_dim, self.rank)), t

    def posterior(self, tasks: TaskSet, index: Tensor | None = None) -> dist.MultivariateNormal:
        v, t = self.factors(tasks.all_points() if self.reads == "all" else tasks.support)
        eta0, precision0 = self._base()
        eta = eta0 + torch.einsum("tndr,tnr->td", v, t)
        if self.covariance == "full":
            return gaussian_from_natural(eta, precision0 + torch.einsum("tndr,tner->tde", v, v))
        precision_diag = precision0.diagonal() + v.pow(2).sum((1, 3))
        return dist.MultivariateNormal(eta / precision_diag, scale_tril=torch.diag_embed(precision_diag.rsqrt()))

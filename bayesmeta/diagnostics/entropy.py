r"""Differential entropy of task parameters: exact for Gaussians, k-nearest-neighbour for draws.

All entropies are in nats and of :math:`\phi` **in the coordinates the model defines it** — the
unconstrained ones (``SinusoidModel``'s :math:`\phi` holds :math:`\log A`, not the amplitude :math:`A`).
No change-of-variables term is applied. Differential entropy is not invariant under a change of
coordinates: for :math:`A = e^{\phi_1}`, :math:`H(A) = H(\phi_1) + \mathbb E[\phi_1]`, so an entropy
reported here is the entropy of the model's own :math:`\phi`. Mutual information is invariant under
coordinate-wise bijections; a difference of entropies of one distribution before and after data (an
information gain) is not in general, since the Jacobian term is averaged under two different
distributions.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.distributions import (
    Distribution,
    Independent,
    LowRankMultivariateNormal,
    MultivariateNormal,
    Normal,
)

from bayesmeta.guides.base import global_latent_sites, theta_fixed
from bayesmeta.inference.learned_prior import LearnedPrior
from bayesmeta.inference.posterior import TaskPosterior
from bayesmeta.model import HierarchicalModel

__all__ = ["Entropy", "entropy", "gaussian_entropy", "knn_entropy"]

_LOG_2PI_E = math.log(2 * math.pi) + 1.0
#: Distances computed per chunk of rows (elements of the ``batch x rows x n`` block): bounds memory.
_CHUNK_ELEMENTS = 1 << 22


@dataclass(frozen=True, eq=False)
class Entropy:
    """An entropy estimate in nats.

    Attributes:
        value: the estimate, of the batch shape of what was measured (``()`` or ``T`` for tasks).
        se: its standard error, same shape (zeros for exact values).
        method: ``"gaussian"`` (exact), ``"analytic"`` (the distribution's own ``entropy()``),
            ``"monte_carlo"`` (:math:`-\\mathbb E\\log p` from draws) or ``"knn"`` (Kozachenko–Leonenko).

    >>> e = Entropy(torch.tensor(1.5), torch.tensor(0.25), "knn")
    >>> e, float(e)
    (Entropy(1.5 ± 0.25 nats, method='knn'), 1.5)
    """

    value: Tensor
    se: Tensor
    method: str

    def __float__(self) -> float:
        if self.value.numel() != 1:
            raise TypeError(f"float(Entropy): expected a single value, got shape {tuple(self.value.shape)}; use .value")
        return float(self.value)

    def __repr__(self) -> str:
        if self.value.numel() == 1:
            return f"Entropy({float(self.value):.4g} ± {float(self.se):.2g} nats, method={self.method!r})"
        return (f"Entropy(shape={tuple(self.value.shape)}, mean {self.value.float().mean().item():.4g} nats, "
                f"method={self.method!r})")


# ---------------------------------------------------------------------- Gaussians
def _gaussian_or_none(d: Distribution) -> Tensor | None:
    if isinstance(d, Independent):
        base = _gaussian_or_none(d.base_dist)
        n = d.reinterpreted_batch_ndims
        return None if base is None else base.sum(tuple(range(-n, 0))) if n else base
    if isinstance(d, Normal):
        return 0.5 * _LOG_2PI_E + d.scale.log()
    dim = d.event_shape[-1] if len(d.event_shape) == 1 else 0
    if isinstance(d, LowRankMultivariateNormal):
        # det(W W^T + D) = det(D) det(I + W^T D^-1 W): an r x r Cholesky, never the dense d x d matrix.
        w, diag = d.cov_factor, d.cov_diag
        capacitance = torch.eye(w.shape[-1], dtype=w.dtype, device=w.device) + (w.mT / diag[..., None, :]) @ w
        logdet = diag.log().sum(-1) + 2 * torch.linalg.cholesky(capacitance).diagonal(dim1=-2, dim2=-1).log().sum(-1)
        return (0.5 * (dim * _LOG_2PI_E + logdet)).expand(d.batch_shape)
    if isinstance(d, MultivariateNormal):
        half_logdet = d.scale_tril.diagonal(dim1=-2, dim2=-1).log().sum(-1)
        return (0.5 * dim * _LOG_2PI_E + half_logdet).expand(d.batch_shape)
    return None


def gaussian_entropy(d: Distribution) -> Tensor:
    r"""Exact differential entropy :math:`\tfrac12\log\det(2\pi e\,\Sigma)` of a Gaussian, per batch element.

    Args:
        d: ``Normal`` (event ``()``, elementwise), ``Normal(...).to_event(n)`` (diagonal),
            ``MultivariateNormal`` or ``LowRankMultivariateNormal`` (:math:`\Sigma = WW^\top + D`, through
            the ``r x r`` capacitance :math:`I + W^\top D^{-1} W`), with any batch shape.

    Returns:
        A tensor of shape ``d.batch_shape`` (nats); differentiable.

    >>> import pyro.distributions as dist
    >>> gaussian_entropy(dist.Normal(torch.zeros(3, 2), 1.0).to_event(1)).shape
    torch.Size([3])
    >>> round(gaussian_entropy(dist.Normal(0.0, 1.0)).item(), 4)  # ½ log(2πe)
    1.4189
    """
    value = _gaussian_or_none(d) if isinstance(d, Distribution) else None
    if value is None:
        raise ValueError(
            "d: expected a Gaussian distribution (Normal, Normal(...).to_event(n), MultivariateNormal or "
            f"LowRankMultivariateNormal), got {type(d).__name__}"
        )
    return value


# ---------------------------------------------------------------------- k nearest neighbours
def _duplicates(x: Tensor) -> Tensor:
    """``... x n x d`` -> ``... x n`` bool: True for each exact copy of an earlier row (in sorted order)."""
    order = torch.arange(x.shape[-2], device=x.device).expand(x.shape[:-1]).contiguous()
    for j in reversed(range(x.shape[-1])):  # stable sorts, last key first: a lexicographic sort
        order = order.gather(-1, x[..., j].gather(-1, order).argsort(dim=-1, stable=True))
    rows = x.gather(-2, order[..., None].expand_as(x))
    repeat = torch.cat([torch.zeros_like(order[..., :1], dtype=torch.bool),
                        (rows[..., 1:, :] == rows[..., :-1, :]).all(-1)], -1)
    return torch.zeros_like(repeat).scatter(-1, order, repeat)


def _knn_values(x: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Kozachenko–Leonenko estimate of each ``B x n x d`` batch element over its distinct rows.

    Returns ``(H, n_distinct)``, both of shape ``B``; ``H`` is NaN where fewer than ``k + 1`` rows are distinct.
    """
    num_batch, n, d = x.shape
    dup = _duplicates(x)
    inf = torch.tensor(math.inf, dtype=x.dtype, device=x.device)
    rows = max(1, _CHUNK_ELEMENTS // max(1, num_batch * n))
    kth = []
    for start in range(0, n, rows):
        stop = min(n, start + rows)
        # Exact differences (not the |a|^2 + |b|^2 - 2ab shortcut): distinct points never get distance 0.
        dist = torch.cdist(x[:, start:stop], x, compute_mode="donot_use_mm_for_euclid_dist")
        dist = torch.where(dup[:, None, :], inf, dist)
        idx = torch.arange(start, stop, device=x.device)
        dist[:, idx - start, idx] = inf  # a point is not its own neighbour
        kth.append(dist.topk(min(k, n), dim=-1, largest=False).values[..., -1])
    log_eps = torch.cat(kth, -1).log().masked_fill(dup, 0.0)
    n_distinct = (~dup).sum(-1).to(x.dtype)
    log_ball = 0.5 * d * math.log(math.pi) - math.lgamma(0.5 * d + 1)
    digamma_k = -0.5772156649015329 + sum(1.0 / j for j in range(1, k))  # ψ(k) = -γ + Σ_{j<k} 1/j
    value = torch.special.digamma(n_distinct) - digamma_k + log_ball + d * log_eps.sum(-1) / n_distinct
    return value.masked_fill(n_distinct <= k, math.nan), n_distinct


def _check_samples(samples: object, k: object, blocks: object) -> tuple[Tensor, bool]:
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k: expected a positive int (the neighbour used), got {k!r}")
    if isinstance(blocks, bool) or not isinstance(blocks, int) or blocks < 2:
        raise ValueError(f"blocks: expected an int >= 2, got {blocks!r}")
    if not isinstance(samples, Tensor) or not samples.is_floating_point():
        got = samples.dtype if isinstance(samples, Tensor) else type(samples).__name__
        raise ValueError(f"samples: expected a floating-point tensor n x d or n x B x d, got {got}")
    if samples.dim() not in (2, 3):
        raise ValueError(f"samples: expected shape n x d or n x B x d, got {tuple(samples.shape)}")
    if samples.shape[0] < k + 1 or samples.shape[-1] < 1:
        raise ValueError(f"samples: expected at least k + 1 = {k + 1} samples of dimension >= 1, got shape "
                         f"{tuple(samples.shape)}; lower k or draw more samples")
    if not torch.isfinite(samples).all():
        raise ValueError("samples: expected finite values, got NaN/Inf")
    x = samples.to(torch.float64)
    return (x.movedim(0, 1) if samples.dim() == 3 else x[None]), samples.dim() == 3


def _knn_blocks(x: Tensor, k: int, blocks: int) -> tuple[Tensor, Tensor, int]:
    """``x: B x n x d`` (float64) -> full-sample estimates ``B``, block estimates ``B x m``, block size."""
    value, n_distinct = _knn_values(x, k)
    if (n_distinct <= k).any():
        raise ValueError(f"samples: expected at least k + 1 = {k + 1} distinct samples, got "
                         f"{int(n_distinct.min())} after dropping exact duplicates")
    num_batch, n, d = x.shape
    m = min(blocks, n // (8 * (k + 1)))
    if m < 2:
        return value, value.new_full((num_batch, 0), math.nan), 0
    size = n // m
    per_block, _ = _knn_values(x[:, : m * size].reshape(num_batch * m, size, d), k)
    return value, per_block.reshape(num_batch, m), size


def _block_se(per_block: Tensor, size: int, n: int) -> Tensor:
    """Batch-means standard error: ``Var(estimate on n) ≈ Var(estimate on a block) * size / n``."""
    if per_block.shape[-1] < 2:
        return per_block.new_full(per_block.shape[:-1], math.nan)
    return (per_block.var(-1) * size / n).sqrt()


def knn_entropy(samples: Tensor, k: int = 3, blocks: int = 20) -> Entropy:
    r"""Kozachenko–Leonenko k-nearest-neighbour estimate of differential entropy, with a standard error.

    In the form of Kraskov, Stögbauer & Grassberger (2004, eq. 20), Euclidean distances
    (Kozachenko & Leonenko 1987):

    .. math::

        \hat H = \psi(n) - \psi(k) + \log V_d + \frac dn \sum_{i=1}^n \log\varepsilon_i,
        \qquad V_d = \frac{\pi^{d/2}}{\Gamma(d/2 + 1)},

    with :math:`\varepsilon_i` the distance from sample :math:`i` to its :math:`k`-th nearest neighbour.
    It is consistent but biased at finite :math:`n`, most where the density changes within a neighbourhood:
    by about :math:`-0.06` nats for a standard Gaussian in :math:`d = 5` at :math:`n = 1000`, :math:`k = 3`,
    and positively near the edges of a bounded support. Trust it for small :math:`d` (up to about 5).

    **Standard error** by batch means: the samples, in the order given, are cut into ``m`` contiguous
    blocks of ``s`` samples (``m = min(blocks, n // (8(k+1)))``; a remainder is left out of this step
    only), the estimator is rerun on each, and :math:`\mathrm{SE}^2 = \widehat{\mathrm{Var}}(\hat H_{\rm
    block})\, s / n`, using :math:`\mathrm{Var}\,\hat H \propto 1/n`. The per-point terms
    :math:`d\log\varepsilon_i` are positively correlated (neighbours share neighbours), so their variance
    over :math:`n` understates the error by 10–35%; batch means does not, and also covers autocorrelated
    MCMC draws when they are passed in chain order. Where ``m < 2`` the SE is NaN.

    **Ties**: exact duplicate samples (NUTS draws resampled with replacement) would give
    :math:`\log 0`; every exact copy of an earlier sample is dropped and :math:`n` becomes the number of
    distinct samples (per batch element, and per block).

    Args:
        samples: ``n x d`` draws, or ``n x B x d`` for ``B`` independent estimates (vectorized).
        k: which neighbour; larger ``k`` lowers the variance and raises the bias.
        blocks: most blocks used for the standard error.

    Returns:
        An :class:`Entropy` with ``value`` and ``se`` of shape ``()`` or ``B``, method ``"knn"``.

    >>> x = torch.randn(2000, 1, generator=torch.Generator().manual_seed(0))
    >>> e = knn_entropy(x)
    >>> abs(float(e) - 1.4189) < 3 * e.se.item()  # ½ log(2πe)
    True
    """
    x, batched = _check_samples(samples, k, blocks)
    value, per_block, size = _knn_blocks(x, k, blocks)
    se = _block_se(per_block, size, x.shape[1])
    if not batched:
        value, se = value[0], se[0]
    return Entropy(value.to(samples.dtype), se.to(samples.dtype), "knn")


# ---------------------------------------------------------------------- dispatch
def _learned_local_prior(prior: LearnedPrior) -> Distribution:
    r""":math:`p(\phi \mid \hat\theta)`: the model's local prior at the guide's point estimate of :math:`\theta`."""
    guide = getattr(prior, "guide", None)
    theta = guide.theta_point() if guide is not None else {}
    with torch.no_grad(), theta_fixed(prior.model, theta):
        return prior.model.local_prior()


def _theta_draw_list(model: HierarchicalModel, theta_draws: dict[str, Tensor], num: int) -> list[dict[str, Tensor]]:
    """At most ``num`` draws of ``theta_draws`` (site -> ``num_chains x num_samples x ...``), evenly thinned,
    in chain order."""
    sites = global_latent_sites(model)
    if set(theta_draws) != set(sites):
        raise ValueError(f"theta_draws: expected draws of the model's hyperprior sites {sorted(sites)}, "
                         f"got {sorted(theta_draws)}")
    for name, value in theta_draws.items():
        if not isinstance(value, Tensor) or value.dim() < 2:
            got = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
            raise ValueError(f"theta_draws[{name!r}]: expected a tensor num_chains x num_samples x ..., got {got}")
    flat = {name: value.flatten(0, 1) for name, value in theta_draws.items()}
    total = min(len(value) for value in flat.values())
    index = torch.linspace(0, total - 1, min(num, total)).round().long().unique().tolist()
    return [{name: value[i] for name, value in flat.items()} for i in index]


def _prior_entropy(prior: LearnedPrior, k: int, num_samples: int) -> Entropy:
    r"""Entropy of a learned prior: :math:`p(\phi\mid\hat\theta)`, or for a full-Bayes prior (θ draws, no
    guide) the predictive :math:`\int p(\phi\mid\theta)\,p(\theta\mid D)\,d\theta` by kNN over one φ per
    θ draw (at most ``num_samples``)."""
    draws = getattr(prior, "theta_draws", None)
    if getattr(prior, "guide", None) is not None or not draws:
        return _distribution_entropy(_learned_local_prior(prior), num_samples)
    phi = []
    for theta in _theta_draw_list(prior.model, draws, num_samples):
        with theta_fixed(prior.model, theta):
            phi.append(prior.model.local_prior().sample())
    return knn_entropy(torch.stack(phi), k=k)


def _distribution_entropy(d: Distribution, num_samples: int) -> Entropy:
    gaussian = _gaussian_or_none(d)
    if gaussian is not None:
        return Entropy(gaussian, torch.zeros_like(gaussian), "gaussian")
    try:
        value = d.entropy()
        return Entropy(value, torch.zeros_like(value), "analytic")
    except NotImplementedError:
        pass
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 2:
        raise ValueError(f"num_samples: expected an int >= 2, got {num_samples!r}")
    neg_log_p = -d.log_prob(d.sample((num_samples,)))
    return Entropy(neg_log_p.mean(0), neg_log_p.std(0) / math.sqrt(num_samples), "monte_carlo")


def entropy(obj: object, k: int = 3, num_samples: int = 1000) -> Entropy:
    r"""The entropy (nats) of a posterior, a learned prior, a distribution or a set of draws.

    * :class:`~bayesmeta.TaskPosterior` with a Gaussian: exact, one value per task (shape ``T``);
      with draws: :func:`knn_entropy` per task over all chains pooled (shape ``T``, with SE).
    * :class:`~bayesmeta.LearnedPrior`: :math:`H(p(\phi\mid\hat\theta))`, its local prior at the
      learned :math:`\hat\theta` (for a hyperprior, at the guide's median ``theta_point()``); for a
      full-Bayes prior (``theta_draws``, no guide) the predictive prior mixed over the θ draws (at most
      ``num_samples``), by kNN.
    * a ``torch`` distribution: :func:`gaussian_entropy` for Gaussians, else its own ``entropy()`` where
      implemented, else Monte Carlo :math:`-\mathbb E\log p` from ``num_samples`` draws (SE from their spread).
    * a tensor ``n x d`` or ``n x B x d`` of draws: :func:`knn_entropy` with ``k``.

    Entropies are of :math:`\phi` in the coordinates the model defines it (unconstrained; e.g.
    ``SinusoidModel``'s :math:`\phi` holds the log amplitude): no change-of-variables term is applied, so
    the value is not the entropy of, say, the amplitude itself (see the module docstring).

    >>> import pyro.distributions as dist
    >>> entropy(dist.MultivariateNormal(torch.zeros(2), torch.eye(2)))
    Entropy(2.838 ± 0 nats, method='gaussian')
    """
    with torch.no_grad():
        if isinstance(obj, TaskPosterior):
            if obj.distribution is not None:
                return _distribution_entropy(obj.distribution, num_samples)
            return knn_entropy(obj.draws.flatten(0, 1), k=k)
        if isinstance(obj, LearnedPrior):
            return _prior_entropy(obj, k, num_samples)
        if isinstance(obj, Distribution):
            return _distribution_entropy(obj, num_samples)
        if isinstance(obj, Tensor):
            return knn_entropy(obj, k=k)
    raise TypeError(
        "entropy: expected a TaskPosterior, a LearnedPrior, a torch Distribution or a tensor of samples "
        f"(n x d or n x B x d), got {type(obj).__name__}"
    )

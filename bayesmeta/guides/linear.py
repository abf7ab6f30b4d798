r"""Exact inference over the part of φ that a model's likelihood is linear-Gaussian in.

A model with ``linear_dim = L > 0`` splits :math:`\phi = (u, w)`: ``free_dim`` free coordinates :math:`u` and
``L`` coordinates :math:`w` with a diagonal Gaussian prior, independent of :math:`u`, that enter the mean
linearly (:meth:`~bayesmeta.HierarchicalModel.linear_design`):

.. math::

    w \sim \mathcal N(m_0, \operatorname{diag} s_0^2), \qquad
    y_{j} \mid x_j, u, w \sim \mathcal N\big(a(x_j, u) + B(x_j, u)\, w,\ \operatorname{diag} \sigma(x_j, u)^2\big).

Given :math:`u` and a data set :math:`D`, the posterior of :math:`w` is Gaussian in closed form (Bayesian
linear regression on the features :math:`B`; Bishop 2006, eq. 3.50-3.51),

.. math::

    p(w \mid u, D) = \mathcal N(\Lambda^{-1}\eta,\ \Lambda^{-1}), \qquad
    \Lambda = \operatorname{diag} s_0^{-2} + \sum_j B_j^\top \operatorname{diag}\sigma_j^{-2} B_j, \qquad
    \eta = s_0^{-2} m_0 + \sum_j B_j^\top \operatorname{diag}\sigma_j^{-2}\,(y_j - a_j),

so only :math:`u` needs approximate inference. A guide :math:`q(\phi \mid D) = q(u \mid D)\, p(w \mid u, D)`
(:class:`ConditionallyGaussian`) loses nothing on :math:`w`: for every draw,
:math:`\log p(D, u, w) - \log p(w \mid u, D) = \log p(D, u)`, so the ELBO is that of :math:`u` alone with
:math:`w` integrated out exactly, and its Monte Carlo estimate has no variance from :math:`w`. The same
identity gives importance weights and SVI objectives over :math:`u` alone, and predictions integrate
:math:`w` analytically (:func:`linear_predictive`).
"""
from __future__ import annotations

import functools
import math
from typing import Any, Callable

import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from pyro.distributions.torch_distribution import TorchDistribution
from torch import Tensor

from bayesmeta.tasks.taskset import TaskData

__all__ = [
    "ConditionallyGaussian", "free_dim", "free_prior", "linear_prior", "linear_posterior", "linear_predictive",
    "complete_linear", "linear_log_prob",
]

#: Draws behind the linear part of :attr:`ConditionallyGaussian.mean` and ``.variance`` (Monte Carlo, fixed seed).
MOMENT_SAMPLES = 16
#: Numbers (float64) that the algebra over many draws holds at once (2**24: 128 MiB); more draws go in chunks.
CHUNK_ELEMENTS = 2**24
_LOG_2PI = math.log(2 * math.pi)


def free_dim(model: Any) -> int:
    """The number of leading coordinates of φ that are not in the model's linear part."""
    return model.phi_dim - model.linear_dim


def _diagonal_prior(model: Any) -> tuple[Tensor, Tensor]:
    prior = model.local_prior()
    if not (isinstance(prior, dist.Independent) and isinstance(prior.base_dist, dist.Normal)
            and prior.reinterpreted_batch_ndims == 1):
        raise ValueError(
            f"{type(model).__name__}: a model with linear_dim > 0 needs local_prior() to be a diagonal Gaussian, "
            f"Normal(loc, scale).to_event(1), got {type(prior).__name__}")
    shape = prior.event_shape
    return prior.base_dist.loc.expand(shape), prior.base_dist.scale.expand(shape)


def linear_prior(model: Any) -> tuple[Tensor, Tensor]:
    """``(m0, s0)``: loc and scale (``L`` each) of the prior of the linear part."""
    loc, scale = _diagonal_prior(model)
    return loc[free_dim(model):], scale[free_dim(model):]


def free_prior(model: Any) -> dist.Independent:
    r""":math:`p_\theta(u)`, the prior of the free part: a diagonal Gaussian, batch ``()``, event ``(free_dim,)``."""
    loc, scale = _diagonal_prior(model)
    return dist.Normal(loc[: free_dim(model)], scale[: free_dim(model)]).to_event(1)


class _Primal:
    r""":math:`p(w \mid u, D) = \mathcal N(m, \Lambda^{-1})` held as ``loc`` :math:`m` and ``tril``, the lower Cholesky
    factor of the precision :math:`\Lambda` (float64; batch ``... x T``): an ``L x L`` factorization per draw and
    task, the cheaper form when the data hold more numbers than ``L``."""

    def __init__(self, model: Any, free: Tensor, data: TaskData) -> None:
        offset, design, scale = model.linear_design(free, data.x)
        loc0, scale0 = (t.double() for t in linear_prior(model))
        weight = data.mask[..., None].double() / scale.double().pow(2)  # ... x T x N x Dy; padding weighs 0
        features = design.double().flatten(-3, -2)  # ... x T x (N Dy) x L
        residual = ((data.y.double() - offset.double()) * weight).flatten(-2)
        precision = torch.diag_embed(scale0.pow(-2)) + features.mT @ (features * weight.flatten(-2)[..., None])
        eta = loc0 * scale0.pow(-2) + (features.mT @ residual[..., None]).squeeze(-1)
        self.tril = torch.linalg.cholesky(precision)
        self.loc = torch.cholesky_solve(eta[..., None], self.tril).squeeze(-1)
        self.dtype = free.dtype

    def rsample(self) -> Tensor:
        noise = torch.randn_like(self.loc)[..., None]
        return (self.loc + torch.linalg.solve_triangular(self.tril.mT, noise, upper=True).squeeze(-1)).to(self.dtype)

    def log_prob(self, w: Tensor) -> Tensor:
        centred = (self.tril.mT @ (w.double() - self.loc)[..., None]).squeeze(-1)
        log_det = self.tril.diagonal(dim1=-2, dim2=-1).log().sum(-1)
        return (log_det - 0.5 * centred.pow(2).sum(-1) - 0.5 * self.loc.shape[-1] * _LOG_2PI).to(self.dtype)

    def spread(self, design: Tensor) -> Tensor:
        r""":math:`\operatorname{diag}(B \Lambda^{-1} B^\top)` for ``design: ... x T x N x Dy x L``: ``... x T x N x Dy``."""
        rows = design.double().flatten(-3, -2)  # ... x T x (N Dy) x L
        solved = torch.linalg.solve_triangular(self.tril, rows.mT, upper=False)  # ... x T x L x (N Dy)
        return solved.pow(2).sum(-2).unflatten(-1, design.shape[-3:-1]).to(self.dtype)


class _Dual:
    r"""The same posterior through the data's side, for data of fewer numbers :math:`n` than ``L``: with
    :math:`S_0 = \operatorname{diag} s_0^2`, :math:`\Sigma = \operatorname{diag}\sigma^2` and
    :math:`G = B S_0 B^\top + \Sigma` (``n x n``, the Gaussian process's Gram matrix of the data),

    .. math::

        m = m_0 + S_0 B^\top G^{-1} (y - a - B m_0), \qquad
        \log|\Lambda| = \log|G| - \log|\Sigma| - \log|S_0|, \qquad
        (w - m)^\top \Lambda (w - m) = \|S_0^{-1/2}(w - m)\|^2 + \|\Sigma^{-1/2} B (w - m)\|^2,

    and draws by Matheron's rule, :math:`w = w_0 + S_0 B^\top G^{-1}(y - a - B w_0 - e_0)` with :math:`w_0` and
    :math:`e_0` drawn from the prior and the noise (Wilson et al. 2020, "Efficiently sampling functions from
    Gaussian process posteriors"). An ``n x n`` factorization per draw and task, nothing ``L x L``. Padded points
    become independent rows with no features, unit noise and a zero residual, which drop out exactly."""

    def __init__(self, model: Any, free: Tensor, data: TaskData) -> None:
        offset, design, scale = model.linear_design(free, data.x)
        self.loc0, self.scale0 = (t.double() for t in linear_prior(model))
        mask = data.mask[..., None].expand(offset.shape[-3:]).flatten(-2)  # T x (N Dy)
        self.features = design.double().flatten(-3, -2) * mask[..., None]  # ... x T x n x L
        self.noise = torch.where(mask, scale.double().flatten(-2), 1.0)  # ... x T x n
        self.target = ((data.y.double() - offset.double()).flatten(-2) * mask)  # ... x T x n
        gram = (self.features * self.scale0.pow(2)) @ self.features.mT + torch.diag_embed(self.noise.pow(2))
        self.gram_tril = torch.linalg.cholesky(gram)
        self.loc = self.loc0 + self._gain(self.target - self.features @ self.loc0)
        self.dtype = free.dtype

    def _gain(self, residual: Tensor) -> Tensor:
        r""":math:`S_0 B^\top G^{-1} r` for ``residual: ... x T x n``: ``... x T x L``."""
        solved = torch.cholesky_solve(residual[..., None], self.gram_tril)
        return self.scale0.pow(2) * (self.features.mT @ solved).squeeze(-1)

    def rsample(self) -> Tensor:
        prior_draw = self.loc0 + self.scale0 * torch.randn_like(self.loc)
        noise_draw = self.noise * torch.randn_like(self.target)
        pulled = self.target - (self.features @ prior_draw[..., None]).squeeze(-1) - noise_draw
        return (prior_draw + self._gain(pulled)).to(self.dtype)

    def log_prob(self, w: Tensor) -> Tensor:
        centred = w.double() - self.loc
        quadratic = (centred / self.scale0).pow(2).sum(-1) + \
            ((self.features @ centred[..., None]).squeeze(-1) / self.noise).pow(2).sum(-1)
        log_det = (2 * self.gram_tril.diagonal(dim1=-2, dim2=-1).log().sum(-1) - 2 * self.noise.log().sum(-1)
                   - 2 * self.scale0.log().sum(-1))
        return (0.5 * log_det - 0.5 * quadratic - 0.5 * self.loc.shape[-1] * _LOG_2PI).to(self.dtype)

    def spread(self, design: Tensor) -> Tensor:
        r""":math:`\operatorname{diag}(B_* \Lambda^{-1} B_*^\top)
        = \operatorname{diag}(B_* S_0 B_*^\top) - \|G^{-1/2} B S_0 B_*^\top\|^2` column by column."""
        rows = design.double().flatten(-3, -2)  # ... x T x (N Dy) x L
        cross = (self.features * self.scale0.pow(2)) @ rows.mT  # ... x T x n x (N Dy)
        solved = torch.linalg.solve_triangular(self.gram_tril, cross, upper=False)
        prior = (rows.pow(2) * self.scale0.pow(2)).sum(-1)
        return (prior - solved.pow(2).sum(-2)).clamp_min(0).unflatten(-1, design.shape[-3:-1]).to(self.dtype)


def _conditional(model: Any, free: Tensor, data: TaskData) -> _Primal | _Dual:
    r""":math:`p(w \mid u, D)` in whichever form factors the smaller matrix: ``n x n`` data-side when the data hold
    fewer numbers ``n`` than ``L``, else ``L x L``."""
    numbers = data.num_points * model.y_dim
    return _Dual(model, free, data) if 0 < numbers < model.linear_dim else _Primal(model, free, data)


def linear_posterior(model: Any, free: Tensor, data: TaskData) -> dist.MultivariateNormal:
    r""":math:`p(w \mid u, D)` for each draw of the free part: ``free: ... x T x free_dim``, ``data``: ``T`` tasks.

    A ``MultivariateNormal`` with batch ``... x T`` and event ``(L,)``, in ``free``'s dtype (the algebra runs in
    float64: a nearly noiseless likelihood makes the precision :math:`\Lambda` ill-conditioned). Padded points
    (``data.mask`` False) carry no weight. For many draws, :func:`complete_linear`, :func:`linear_log_prob`
    and :func:`linear_predictive` work through them in chunks without forming :math:`\Lambda^{-1}`.
    """
    conditional = _Primal(model, free, data)
    exact = dist.MultivariateNormal(conditional.loc, precision_matrix=conditional.tril @ conditional.tril.mT)
    return dist.MultivariateNormal(exact.loc.to(free.dtype), scale_tril=exact.scale_tril.to(free.dtype))


def _cost(model: Any, points: int) -> int:
    """Numbers held per draw and task by the algebra over ``points`` points: the features and a factor of the
    smaller of the two forms."""
    numbers = points * model.y_dim
    return numbers * model.linear_dim + min(numbers, model.linear_dim) ** 2


def _by_draws(fn: Callable[..., tuple[Tensor, ...]], free: Tensor, *aligned: Tensor, cost: int) -> tuple[Tensor, ...]:
    """``fn(free, *aligned)`` over chunks of the draws (the dims before ``T``) of ``free: ... x T x free_dim``, each
    chunk of at most about ``CHUNK_ELEMENTS`` numbers (``cost`` per draw and task); the results concatenated."""
    lead = free.shape[:-2]
    if not lead:
        return fn(free, *aligned)
    flat = free.reshape(-1, *free.shape[-2:])
    rest = [a.reshape(flat.shape[0], *a.shape[len(lead):]) for a in aligned]
    size = max(1, CHUNK_ELEMENTS // max(1, free.shape[-2] * cost))
    parts = [fn(flat[i:i + size], *(a[i:i + size] for a in rest)) for i in range(0, flat.shape[0], size)]
    return tuple(torch.cat(pieces).reshape(*lead, *pieces[0].shape[1:]) for pieces in zip(*parts))


def complete_linear(model: Any, free: Tensor, data: TaskData) -> tuple[Tensor, Tensor]:
    r"""Draw :math:`w \sim p(w \mid u, D)` for each ``free`` draw: ``(phi, log p(w | u, D))``, ``... x T x phi_dim`` and ``... x T``.

    The draw is reparameterized, so gradients reach ``free`` and θ through it.
    """
    def draw(u: Tensor) -> tuple[Tensor, Tensor]:
        conditional = _conditional(model, u, data)
        w = conditional.rsample()
        return torch.cat([u, w], -1), conditional.log_prob(w)

    return _by_draws(draw, free, cost=_cost(model, data.num_points))


def linear_log_prob(model: Any, free: Tensor, linear: Tensor, data: TaskData) -> Tensor:
    r""":math:`\log p(w \mid u, D)` of ``linear: ... x T x L`` given ``free: ... x T x free_dim``: ``... x T``."""
    return _by_draws(lambda u, w: (_conditional(model, u, data).log_prob(w),), free, linear,
                     cost=_cost(model, data.num_points))[0]


def linear_predictive(model: Any, free: Tensor, data: TaskData, x: Tensor) -> dist.Independent:
    r""":math:`p(y \mid x, u, D)` with :math:`w` integrated out: ``free: ... x T x free_dim``, ``x: T x N x x_dim``.

    A ``Normal(...).to_event(1)`` with batch ``... x T x N``: mean :math:`a + B\,\mathbb E[w]`, variance
    :math:`\sigma^2 + \operatorname{diag}(B\,\mathrm{Cov}[w]\,B^\top)`.
    """
    def moments(u: Tensor) -> tuple[Tensor, Tensor]:
        conditional = _conditional(model, u, data)
        offset, design, scale = model.linear_design(u, x)
        mean = offset + (design @ conditional.loc.to(u.dtype)[..., None, :, None]).squeeze(-1)
        return mean, (scale.pow(2) + conditional.spread(design)).sqrt()

    mean, std = _by_draws(moments, free, cost=_cost(model, data.num_points + x.shape[-2]))
    return dist.Normal(mean, std).to_event(1)


class ConditionallyGaussian(TorchDistribution):
    r""":math:`q(\phi \mid D) = q(u \mid D)\; p(w \mid u, D)`: a posterior over the free part, exact over the linear part.

    Args:
        free: :math:`q(u \mid D)`, batch ``(T,)`` and event ``(free_dim,)`` (a Gaussian or a mixture).
        model: the model (``linear_dim > 0``) whose exact :math:`p(w \mid u, D)` completes each draw.
        data: the ``T`` tasks' data :math:`D` that :math:`w` is conditioned on.
        task_dim: give the distribution the ``T x 1`` batch shape of the ``"phi"`` site in a ``"tasks"`` plate.
        lead: leading batch dimensions (Pyro adds them for vectorized particles).

    Draws are reparameterized when those of ``free`` are. The density of the draw last made is kept, so that
    scoring it (as Pyro does right after drawing a guide's site) costs no second solve. ``mean`` and
    ``variance`` are exact for :math:`u` and Monte Carlo estimates for :math:`w` (``MOMENT_SAMPLES`` draws
    under a fixed seed, the global random state left alone): the marginal of :math:`w` mixes Gaussians over
    :math:`u` and has no closed form.

    >>> import bayesmeta as bm
    >>> from bayesmeta.models import NeuralProcessModel
    >>> model = NeuralProcessModel(latent_dim=2, hidden=8, output_layer="task")
    >>> data = bm.TaskSet.from_arrays(torch.randn(3, 4, 1), torch.randn(3, 4, 1)).support
    >>> q = ConditionallyGaussian(dist.Normal(torch.zeros(3, 2), 1.0).to_event(1), model, data)
    >>> phi = q.sample((5,))
    >>> phi.shape, q.log_prob(phi).shape
    (torch.Size([5, 3, 10]), torch.Size([5, 3]))
    """

    arg_constraints: dict = {}
    support = constraints.real_vector

    def __init__(self, free: dist.Distribution, model: Any, data: TaskData, task_dim: bool = False,
                 lead: torch.Size = torch.Size()) -> None:
        if free.event_shape != (free_dim(model),):
            raise ValueError(f"free: expected event shape ({free_dim(model)},), got {tuple(free.event_shape)}")
        self.free, self.model, self.data, self.task_dim, self.lead = free, model, data, task_dim, torch.Size(lead)
        self._last: tuple[Tensor, Tensor] | None = None  # (the draw last returned, its log p(w | u, D))
        batch = self.lead + free.batch_shape + ((1,) if task_dim else ())
        super().__init__(batch, torch.Size([model.phi_dim]), validate_args=False)

    @property
    def has_rsample(self) -> bool:
        return self.free.has_rsample

    def with_task_dim(self) -> ConditionallyGaussian:
        """The same distribution with the ``T x 1`` batch shape of a ``"phi"`` site."""
        return ConditionallyGaussian(self.free, self.model, self.data, task_dim=True, lead=self.lead)

    def expand(self, batch_shape: Any, _instance: Any = None) -> ConditionallyGaussian:
        batch_shape = torch.Size(batch_shape)
        if batch_shape == self.batch_shape:
            return self
        own = self.batch_shape[len(self.lead):]
        if batch_shape[len(batch_shape) - len(own):] != own:
            raise ValueError(f"ConditionallyGaussian.expand: cannot expand batch {tuple(self.batch_shape)} to "
                             f"{tuple(batch_shape)} (only leading dimensions can be added)")
        return ConditionallyGaussian(self.free, self.model, self.data, self.task_dim,
                                     batch_shape[: len(batch_shape) - len(own)])

    def rsample(self, sample_shape: Any = torch.Size()) -> Tensor:
        shape = torch.Size(sample_shape) + self.lead
        free = self.free.rsample(shape) if self.free.has_rsample else self.free.sample(shape)
        phi, log_q = complete_linear(self.model, free, self.data)
        if self.task_dim:
            phi, log_q = phi[..., None, :], log_q[..., None]
        self._last = (phi, log_q)
        return phi

    def sample(self, sample_shape: Any = torch.Size()) -> Tensor:
        with torch.no_grad():
            return self.rsample(sample_shape)

    def log_prob(self, value: Tensor) -> Tensor:
        free = value[..., : self.free.event_shape[0]]
        if self.task_dim:
            free = free[..., 0, :]
        if self._last is not None and value is self._last[0]:
            log_q = self._last[1]
        else:
            inner = value[..., 0, :] if self.task_dim else value
            log_q = linear_log_prob(self.model, inner[..., : free.shape[-1]], inner[..., free.shape[-1]:], self.data)
            log_q = log_q[..., None] if self.task_dim else log_q
        log_free = self.free.log_prob(free)
        return log_q + (log_free[..., None] if self.task_dim else log_free)

    @functools.cached_property
    def _moments(self) -> tuple[Tensor, Tensor]:
        device = self.data.x.device
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(0)
            draws = ConditionallyGaussian(self.free, self.model, self.data).sample((MOMENT_SAMPLES,))
        split = self.free.event_shape[0]
        mean = torch.cat([self.free.mean, draws[..., split:].mean(0)], -1)
        variance = torch.cat([self.free.variance, draws[..., split:].var(0)], -1)
        if self.task_dim:
            mean, variance = mean[..., None, :], variance[..., None, :]
        shape = self.batch_shape + self.event_shape
        return mean.expand(shape), variance.expand(shape)

    @property
    def mean(self) -> Tensor:
        return self._moments[0]

    @property
    def variance(self) -> Tensor:
        return self._moments[1]

    def __repr__(self) -> str:
        return (f"ConditionallyGaussian(free={type(self.free).__name__}, batch={tuple(self.batch_shape)}, "
                f"phi_dim={self.event_shape[0]}, linear_dim={self.model.linear_dim})")

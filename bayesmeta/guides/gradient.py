r"""Gradient-based amortization (ABML): a few learned gradient steps on each task's ELBO, from the prior."""
from __future__ import annotations

import math
from typing import Any

import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.distributions import constraints
from torch import Tensor, nn

from bayesmeta.guides.base import TaskGuide
from bayesmeta.model import HierarchicalModel
from bayesmeta.tasks.taskset import TaskData, TaskSet

__all__ = ["GradientGuide"]

#: Defaults of the options that depend on the kind of update.
_DEFAULTS = {
    "scaled": {"lr_loc": 0.02, "lr_scale": 0.3, "clip": 2.0},
    "gd": {"lr_loc": 1e-5, "lr_scale": 1e-3, "clip": math.inf},
}


class GradientGuide(TaskGuide):
    r"""Amortized inference by unrolled gradient steps on each task's ELBO, started at the prior (ABML).

    :math:`q(\phi_i \mid D_i) = \mathcal N(m_i, \operatorname{diag} s_i^2)` is what ``steps`` = :math:`K`
    gradient steps on the task's own negative ELBO make of the prior
    :math:`p_\theta(\phi) = \mathcal N(\mu, \operatorname{diag}\sigma_0^2)`:

    .. math::

        L_i(m, \log s) = -\frac1S\sum_{s=1}^S \sum_{j \in D_i} \log p_\theta(y_{ij} \mid x_{ij}, m + s \odot
        \varepsilon_s) + \mathrm{KL}\big(\mathcal N(m, s^2) \,\|\, p_\theta(\phi)\big), \qquad
        \varepsilon_s \sim \mathcal N(0, I),

        m^{(0)} = \mu, \qquad \log s^{(0)} = \log \sigma_0, \qquad
        m^{(k+1)} = m^{(k)} - \alpha_k \odot u_i \nabla_m L_i, \qquad
        \log s^{(k+1)} = \log s^{(k)} - \beta_k \odot \tfrac12 \log\big(1 + \nabla_{\log s} L_i\big),

    with learned step sizes :math:`\alpha_k, \beta_k > 0` (one per step, or with ``per_parameter`` one
    per step and coordinate, as in Meta-SGD: Li et al. 2017). The steps are differentiated through
    (``create_graph``), so the outer ELBO of :func:`~bayesmeta.fit_prior` trains :math:`\theta` — the
    prior that is both the starting point and the regularizer of every task's steps — and the step
    sizes together. This is amortized Bayesian meta-learning (Ravi & Beatson 2019, "Amortized Bayesian
    Meta-Learning with Accurate Uncertainty Estimates"), the Bayesian reading of MAML (Finn et al.
    2017) in which the prior mean is MAML's initialization. Tasks are independent, so the per-task
    losses are summed and differentiated once: every task gets its own gradient, with no loop over
    tasks. The cost is linear in ``phi_dim`` and in ``steps`` (with double backpropagation in training).

    ``update="scaled"`` (default) takes each step in units that do not depend on the data's scale:
    :math:`u_i = \bar v_i / n_i`, the likelihood's mean variance over the task's :math:`n_i` points
    (1 where it has none) over their number, turns :math:`\nabla_m L_i` of a Gaussian likelihood into
    the gradient of half the mean squared error plus the prior's pull, so :math:`\alpha` reads as MAML's
    inner learning rate whatever :math:`\sigma` and the number of shots. :math:`\nabla_{\log s} L_i =
    s^2(h + \sigma_0^{-2}) - 1` for a quadratic with curvature :math:`h`, a ratio of variances that
    spans orders of magnitude; its logarithm makes :math:`\beta = 1` the exact minimizer in that case
    (the argument is floored at 0.1). ``update="gd"`` is plain gradient descent, :math:`\alpha_k \odot
    \nabla_m L_i` and :math:`\beta_k \odot \nabla_{\log s} L_i`, whose stable step sizes scale with
    :math:`\sigma^2 / n` and so drift as :math:`\sigma` is learned (on a 1-40-40-1 BNN it diverged
    within 100 steps of ``fit_prior`` at :math:`\alpha = 10^{-5}`).

    With scaled steps the prior pulls on the mean :math:`\sigma^2 / (n\, \sigma_0^2)` times as hard as the
    data do, as in the exact posterior. A noise scale :math:`\sigma` learned by the outer ELBO can therefore feed
    on itself: a larger :math:`\sigma` keeps the steps nearer the prior, the fit gets worse, and the ELBO asks
    for a larger :math:`\sigma`. On noiseless sinusoids a 1-40-40-1 BNN settled at :math:`\sigma \approx 0.5`
    that way; hold :math:`\sigma` where the data's noise is known to be small
    (:meth:`~bayesmeta.models.HierarchicalBNN.set_noise` with ``fit_prior(..., fixed=model.noise_parameters)``).

    The KL is in closed form for a diagonal ``Normal(...).to_event(1)`` prior; for another prior on
    :math:`\mathbb R^D` with a mean and a standard deviation it is estimated on the same draws
    (:math:`\log q - \log p`). An even ``num_samples`` draws antithetic pairs :math:`\pm\varepsilon`.
    A task with no points gets the prior itself. Under ``torch.no_grad()`` (as in
    :meth:`~bayesmeta.LearnedPrior.adapt`) the steps still run (gradients enabled locally for the
    likelihood's gradient only; for a diagonal Normal prior, in place in a few buffers: the same floats
    as the differentiable steps given the same draws, at about two thirds of the time), the draws come
    from a generator seeded with ``seed`` (the same support set gives the same posterior) and the result
    is detached; with gradients on, they come from torch's global generator (seeded by ``fit_prior``).

    Args:
        model: the model whose ``"phi"`` site this guide covers; its ``local_prior()`` must be a
            distribution on :math:`\mathbb R^{\text{phi\_dim}}` with ``mean`` and ``stddev``.
        steps: :math:`K`, the number of gradient steps (0: the prior).
        num_samples: :math:`S`, reparameterized draws per step.
        per_parameter: one step size per coordinate of :math:`\phi` and step (``True``) or one per step.
        lr_loc, lr_scale: the initial :math:`\alpha_k` and :math:`\beta_k`. ``None``: 0.02 and 0.3 with
            ``"scaled"`` steps, where :math:`\alpha` = 0.02 is MAML's inner rate 0.01 on the mean squared
            error (Finn et al. 2017, §5.1); :math:`10^{-5}` and :math:`10^{-3}` with ``"gd"``, whose steps
            need :math:`\alpha \lesssim \sigma^2 / (n \cdot \text{feature scale}^2)` (gradient descent on
            a quadratic diverges past twice its inverse curvature) — set them for the model at hand.
        reads: ``"all"`` (default) or ``"support"``: the points the steps read in meta-training, as in
            :class:`~bayesmeta.guides.AmortizedGuide`. ``"support"`` with training tasks split as they will
            be adapted (5 support points for 5-shot use, the rest query) is MAML's protocol: the ELBO then
            scores the steps on points they have not read. On noiseless sinusoids (a 1-40-40-1 network, 8000
            steps, 20 points per training task) it took the 5-shot MSE from 0.246 to 0.080, and 1-shot and
            10-shot with it; on sinusoids with noise σ = 0.3 (σ held) it did worse, 5-shot 0.73 against 0.52,
            its 90% intervals covering less (``docs/sinusoid.md``, ``docs/sinusoid_noisy.md``). The ELBO's
            bias on θ (see :class:`~bayesmeta.guides.AmortizedGuide`) is why: the points the steps have not
            read are explained by a larger noise scale or, with σ held, by a narrower prior. On conjugate
            linear tasks (1 input, σ = 1 held, 2 of 20 points read) the learned prior scales came out
            0.28 / 0.54 against 0.50 / 1.04 reading all points (true 0.96 / 1.42), and the 90% predictive
            intervals covered 78% of new points against 92%.
        clip: a soft bound, :math:`c \tanh(g / c)`, on each coordinate :math:`g` of each step's direction
            (the gradient with ``"gd"``; the scaled gradient and the log term with ``"scaled"``), which
            leaves small coordinates alone and keeps a step that would diverge finite and differentiable.
            ``None``: 2 with ``"scaled"`` steps (on a 1-40-40-1 BNN at initialization 99% of the scaled
            gradient's coordinates are below 0.5; without it a few 5-shot tasks diverged after
            meta-training, and a 1-point set broke ``fit_prior`` with ``random_subsets``), no bound with
            ``"gd"``; ``math.inf``: no bound.
        seed: seeds the draws when the guide runs without gradients.
        update: ``"scaled"`` or ``"gd"`` (see above).

    Raises:
        ValueError: an option is out of range, or the model's prior has no mean and standard deviation on
            :math:`\mathbb R^{\text{phi\_dim}}`; from :meth:`posterior`, when the steps diverge (NaN/Inf).

    >>> from bayesmeta.models import HierarchicalLinearRegression
    >>> guide = GradientGuide(HierarchicalLinearRegression(x_dim=2), steps=3)
    >>> q = guide.posterior(TaskSet.from_arrays(torch.randn(4, 5, 2), torch.randn(4, 5, 1)))
    >>> q.batch_shape, q.event_shape
    (torch.Size([4]), torch.Size([3]))
    """

    kind = "gradient"

    def __init__(
        self,
        model: HierarchicalModel,
        steps: int = 5,
        num_samples: int = 1,
        per_parameter: bool = True,
        lr_loc: float | None = None,
        lr_scale: float | None = None,
        reads: str = "all",
        clip: float | None = None,
        seed: int = 0,
        update: str = "scaled",
    ) -> None:
        super().__init__(model)
        _check_int(steps, "steps", minimum=0)
        _check_int(num_samples, "num_samples", minimum=1)
        _check_int(seed, "seed", minimum=0)
        if not isinstance(per_parameter, bool):
            raise ValueError(f"per_parameter: expected True or False, got {per_parameter!r}")
        if not isinstance(update, str) or update not in _DEFAULTS:
            raise ValueError(f"update: expected one of {sorted(_DEFAULTS)}, got {update!r}")
        lr_loc = _DEFAULTS[update]["lr_loc"] if lr_loc is None else lr_loc
        lr_scale = _DEFAULTS[update]["lr_scale"] if lr_scale is None else lr_scale
        clip = _DEFAULTS[update]["clip"] if clip is None else clip
        for value, name in ((lr_loc, "lr_loc"), (lr_scale, "lr_scale")):
            if not _positive(value) or value == math.inf:
                raise ValueError(f"{name}: expected None or a positive finite step size, got {value!r}")
        if not _positive(clip):
            raise ValueError(f"clip: expected None, a positive bound or math.inf (no bound), got {clip!r}")
        if reads not in ("all", "support"):
            raise ValueError(f"reads: expected 'all' or 'support', got {reads!r}")
        self.update, self.steps, self.num_samples, self.per_parameter = update, steps, num_samples, per_parameter
        self.lr_loc, self.lr_scale, self.clip = float(lr_loc), float(lr_scale), float(clip)
        self.reads, self.seed = reads, seed
        with torch.no_grad(), poutine.block(), model.reading_theta():
            _prior_moments(model, model.local_prior())  # fail now, not at the first step
        width = model.phi_dim if per_parameter else 1
        # log step sizes: steps x width (width 1 broadcasts over the coordinates).
        self.log_lr_loc = nn.Parameter(torch.full((steps, width), math.log(self.lr_loc)))
        self.log_lr_scale = nn.Parameter(torch.full((steps, width), math.log(self.lr_scale)))

    @property
    def init_args(self) -> dict[str, Any]:
        return {
            "steps": self.steps, "num_samples": self.num_samples, "per_parameter": self.per_parameter,
            "lr_loc": self.lr_loc, "lr_scale": self.lr_scale, "reads": self.reads, "clip": self.clip,
            "seed": self.seed, "update": self.update,
        }

    def posterior(self, tasks: TaskSet, index: Tensor | None = None) -> dist.Independent:
        data = tasks.all_points() if self.reads == "all" else tasks.support
        prior = self.model.local_prior()
        prior_loc, prior_scale, closed_form = _prior_moments(self.model, prior)
        num_tasks, phi_dim = len(tasks), self.model.phi_dim
        start_loc, start_scale = prior_loc.expand(num_tasks, phi_dim), prior_scale.expand(num_tasks, phi_dim)
        if self.steps == 0 or data.num_points == 0:
            return dist.Normal(start_loc, start_scale).to_event(1)
        differentiable = torch.is_grad_enabled()
        with torch.enable_grad():
            loc, log_scale = self._steps(data, prior, closed_form, start_loc, start_scale.log(), differentiable)
        scale = log_scale.exp()
        if not differentiable:
            loc, scale = loc.detach(), scale.detach()
        # One read of each: a NaN or an infinity makes the sum non-finite (as does a sum past the float range,
        # itself a diverged step), a scale that underflowed to 0 shows in the minimum. Checked here, so the
        # Normal below skips its own element-wise validation (five passes over T x phi_dim).
        total, low = (loc.sum() + scale.sum()).detach(), scale.detach().min()
        if not (torch.isfinite(total) and low > 0):
            raise ValueError(self._diverged())
        empty = (data.mask.sum(1) == 0)[:, None]
        if empty.any():  # no points: exactly the prior (the steps there are KL gradients of ~0)
            loc, scale = torch.where(empty, start_loc, loc), torch.where(empty, start_scale, scale)
        return dist.Normal(loc, scale, validate_args=False).to_event(1)

    def _steps(
        self, data: TaskData, prior: dist.Distribution, closed_form: bool, loc: Tensor, log_scale: Tensor,
        differentiable: bool,
    ) -> tuple[Tensor, Tensor]:
        """``K`` gradient steps from ``loc, log_scale: T x phi_dim``; differentiable in θ and the step sizes."""
        lr_loc, lr_scale = self.log_lr_loc.exp(), self.log_lr_scale.exp()
        generator = None
        if not differentiable:
            lr_loc, lr_scale = lr_loc.detach(), lr_scale.detach()
            generator = torch.Generator(device=loc.device).manual_seed(self.seed)
        if not closed_form:
            loc, log_scale = _leaf(loc, differentiable), _leaf(log_scale, differentiable)
        # The clip's constants go into the step sizes (phi_dim) and the units (T), not into T x phi_dim passes:
        # lr * c * tanh(g / c) is (lr * c) * tanh(g * (1 / c)); for the scale, the 1/2 of the log term joins 1 / c.
        bounded = self.clip != math.inf
        inv_clip = 1.0 / self.clip if bounded else 1.0
        if bounded:
            lr_loc, lr_scale = lr_loc * self.clip, lr_scale * self.clip
        moments = _prior_moments(self.model, prior)[:2] if closed_form else None
        if moments is not None and not differentiable:
            return self._steps_in_place(data, moments, loc, log_scale, lr_loc, lr_scale, inv_clip, generator)
        # An even number of draws comes in antithetic pairs (ε, -ε): the scale's gradient then loses the term
        # ε ⊙ ∇_φ L(m) whose mean is zero but whose variance swamps the curvature signal far from the optimum.
        antithetic = self.num_samples % 2 == 0
        shape = (self.num_samples // 2 if antithetic else self.num_samples,) + tuple(loc.shape)
        for k in range(self.steps):
            noise = torch.randn(shape, generator=generator, device=loc.device, dtype=loc.dtype)
            if antithetic:
                noise = torch.cat([noise, -noise])
            if moments is not None:
                grad_loc, grad_log_scale, unit = self._gradients(data, moments, loc, log_scale, noise, differentiable)
            else:
                loss, unit = self._loss(data, prior, closed_form, loc, log_scale, noise)
                grad_loc, grad_log_scale = torch.autograd.grad(loss.sum(), [loc, log_scale],
                                                               create_graph=differentiable)
            if self.update == "scaled":
                loc_step = (unit * inv_clip)[:, None] * grad_loc
                scale_step = torch.log1p(grad_log_scale.clamp(min=-0.9)) * (0.5 * inv_clip)
            else:
                loc_step = grad_loc * inv_clip if bounded else grad_loc
                scale_step = grad_log_scale * inv_clip if bounded else grad_log_scale
            loc = loc - lr_loc[k] * self._bound(loc_step)
            log_scale = log_scale - lr_scale[k] * self._bound(scale_step)
            if not differentiable:  # keep no history: each step starts from fresh values
                loc, log_scale = loc.detach(), log_scale.detach()
                if not closed_form:
                    loc, log_scale = _leaf(loc, False), _leaf(log_scale, False)
        return loc, log_scale

    def _steps_in_place(
        self, data: TaskData, moments: tuple[Tensor, Tensor], loc: Tensor, log_scale: Tensor, lr_loc: Tensor,
        lr_scale: Tensor, inv_clip: float, generator: torch.Generator,
    ) -> tuple[Tensor, Tensor]:
        """The steps of :meth:`_steps` without gradients to keep (adaptation): the same arithmetic, in place.

        Each operation over ``T x phi_dim`` writes into one of a few buffers instead of a fresh tensor (over
        1000 tasks of a 1-40-40-1 network, a subtraction in place takes 0.5 ms, into a new tensor 1.2 ms, on
        one thread), and the draws are written into one buffer. Float-for-float the numbers of the
        differentiable path.
        """
        prior_loc, precision = moments[0].detach(), moments[1].detach().pow(-2)
        loc, log_scale = loc.detach().clone(), log_scale.detach().clone()
        antithetic = self.num_samples % 2 == 0  # antithetic pairs (ε, -ε), as in :meth:`_steps`
        half = self.num_samples // 2
        noise = loc.new_empty((self.num_samples,) + tuple(loc.shape))
        scale, grad_loc, grad_log_scale = (torch.empty_like(loc) for _ in range(3))
        phi, spread = torch.empty_like(noise), torch.empty_like(noise)
        one = self.num_samples == 1
        for k in range(self.steps):
            if antithetic:
                noise[:half].normal_(generator=generator)
                torch.neg(noise[:half], out=noise[half:])
            else:
                noise.normal_(generator=generator)
            torch.exp(log_scale, out=scale)
            torch.addcmul(loc, scale, noise, out=phi)
            phi.requires_grad_(True)
            expected_log_lik, likelihood, log_lik = self._expected_log_lik(data, phi)
            (grad_phi,) = torch.autograd.grad(expected_log_lik.sum(), [phi])
            phi.requires_grad_(False)
            unit = self._unit(likelihood, log_lik, data)  # depends on θ (the noise scale)
            # grad_loc = (loc - prior_loc) * precision - pull
            torch.sub(loc, prior_loc, out=grad_loc).mul_(precision).sub_(grad_phi[0] if one else grad_phi.sum(0))
            # grad_log_scale = scale * (scale * precision - spread) - 1
            torch.mul(grad_phi, noise, out=spread)
            torch.mul(scale, precision, out=grad_log_scale).sub_(spread[0] if one else spread.sum(0))
            grad_log_scale.mul_(scale).sub_(1)
            if self.update == "scaled":
                grad_loc.mul_((unit.detach() * inv_clip)[:, None])
                grad_log_scale.clamp_(min=-0.9).log1p_().mul_(0.5 * inv_clip)
            elif self.clip != math.inf:
                grad_loc.mul_(inv_clip)
                grad_log_scale.mul_(inv_clip)
            if self.clip != math.inf:
                grad_loc.tanh_()
                grad_log_scale.tanh_()
            loc.sub_(grad_loc.mul_(lr_loc[k]))
            log_scale.sub_(grad_log_scale.mul_(lr_scale[k]))
        return loc, log_scale

    def _gradients(
        self, data: TaskData, moments: tuple[Tensor, Tensor], loc: Tensor, log_scale: Tensor, noise: Tensor,
        differentiable: bool,
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        r"""``∇_m L_i``, ``∇_{log s} L_i`` (each ``T x phi_dim``) and the unit of :meth:`_loss`, for a diagonal Normal prior.

        Only the likelihood goes through autograd, and only to the draws :math:`\phi_s = m + s \odot
        \varepsilon_s`; with :math:`g_s = -\nabla_{\phi_s} \log p(D_i \mid \phi_s) / S` the rest is closed
        form: :math:`\nabla_m L_i = \sum_s g_s + (m - \mu) / \sigma_0^2` and :math:`\nabla_{\log s} L_i =
        s \odot (s / \sigma_0^2 + \sum_s g_s \odot \varepsilon_s) - 1`. The same numbers as autograd through
        :meth:`_loss`, with a third of the operations to run (and, in training, to differentiate again).
        ``moments``: the prior's mean and standard deviation.
        """
        prior_loc, prior_scale = moments
        precision = prior_scale.pow(-2)  # phi_dim: one pass over the prior, not over T x phi_dim
        scale = log_scale.exp()
        phi = torch.addcmul(loc, scale, noise)
        if not phi.requires_grad:
            phi.requires_grad_(True)
        expected_log_lik, likelihood, log_lik = self._expected_log_lik(data, phi)
        (grad_phi,) = torch.autograd.grad(expected_log_lik.sum(), [phi], create_graph=differentiable)
        # One draw: squeeze is a view (its backward too), where a sum over the draws would copy.
        one = grad_phi.shape[0] == 1
        pull = grad_phi.squeeze(0) if one else grad_phi.sum(0)
        spread = (grad_phi * noise).squeeze(0) if one else (grad_phi * noise).sum(0)
        grad_loc = (loc - prior_loc) * precision - pull
        grad_log_scale = scale * (scale * precision - spread) - 1
        return grad_loc, grad_log_scale, self._unit(likelihood, log_lik, data)

    def _bound(self, value: Tensor) -> Tensor:
        """``tanh(value)`` when the steps are bounded (the clip's scale already folded in); else ``value``."""
        return value if self.clip == math.inf else torch.tanh(value)

    def _loss(
        self, data: TaskData, prior: dist.Distribution, closed_form: bool, loc: Tensor, log_scale: Tensor,
        noise: Tensor,
    ) -> tuple[Tensor, Tensor | None]:
        """``L_i`` and, for scaled steps, the unit ``v_i / n_i`` of each task (both ``T``).

        ``noise: S x T x phi_dim`` standard normal draws.
        """
        scale = log_scale.exp()
        phi = loc + scale * noise
        expected_log_lik, likelihood, log_lik = self._expected_log_lik(data, phi)
        if closed_form:
            prior_loc, prior_scale, _ = _prior_moments(self.model, prior)
            kl = prior_scale.log() - log_scale + (scale**2 + (loc - prior_loc) ** 2) / (2 * prior_scale**2) - 0.5
            kl = kl.sum(-1)
        else:
            kl = (dist.Normal(loc, scale).to_event(1).log_prob(phi) - prior.log_prob(phi)).mean(0)
        return kl - expected_log_lik, self._unit(likelihood, log_lik, data)

    def _expected_log_lik(self, data: TaskData, phi: Tensor) -> tuple[Tensor, dist.Distribution, Tensor]:
        """``(mean over draws of log p(D_i | φ_s): T, the likelihood, its log_prob: S x T x N)``."""
        try:
            likelihood = self.model.likelihood(phi, data.x)  # batch S x T x N
            log_lik = likelihood.log_prob(data.y)
        except ValueError as error:
            if "invalid values" not in str(error):
                raise
            raise ValueError(self._diverged()) from error
        zero = torch.zeros((), dtype=log_lik.dtype, device=log_lik.device)
        return torch.where(data.mask, log_lik, zero).sum(-1).mean(0), likelihood, log_lik

    def _unit(self, likelihood: dist.Distribution, log_lik: Tensor, data: TaskData) -> Tensor | None:
        """``v_i / n_i`` of each task (``T``) for scaled steps; ``None`` for plain gradient descent."""
        if self.update != "scaled":
            return None
        count = data.mask.sum(-1).clamp(min=1).to(log_lik.dtype)
        return _mean_variance(likelihood, log_lik.shape, data.mask, count) / count

    def _diverged(self) -> str:
        return (
            "GradientGuide: the gradient steps produced invalid values (NaN/Inf); lower the step sizes "
            f"(lr_loc={self.lr_loc:g}, lr_scale={self.lr_scale:g}) or bound them (clip={self.clip:g})"
        )


def _mean_variance(likelihood: dist.Distribution, shape: torch.Size, mask: Tensor, count: Tensor) -> Tensor:
    """The likelihood's variance averaged over its event, each task's observed points and the draws: ``T``.

    1 where it has none (``NotImplementedError``, or NaN as a ``Categorical`` returns).
    """
    try:
        variance = likelihood.variance
    except NotImplementedError:
        return torch.ones_like(count)
    variance = torch.nan_to_num(variance.reshape(shape + (-1,)).mean(-1), nan=1.0)
    zero = torch.zeros((), dtype=variance.dtype, device=variance.device)
    return torch.where(mask, variance, zero).sum(-1).mean(0) / count


def _leaf(value: Tensor, differentiable: bool) -> Tensor:
    """``value`` as something ``autograd.grad`` can differentiate with respect to."""
    if differentiable and value.requires_grad:
        return value  # part of the graph back to θ: keep it so the meta-gradient flows
    return value.detach().clone().requires_grad_(True)


def _prior_moments(model: HierarchicalModel, prior: dist.Distribution) -> tuple[Tensor, Tensor, bool]:
    """``(mean, stddev, closed_form)`` of the model's prior, each ``phi_dim``; ``closed_form`` for a diagonal Normal."""
    event = torch.Size([model.phi_dim])
    support = prior.support
    while isinstance(support, constraints.independent):
        support = support.base_constraint
    if prior.batch_shape != torch.Size() or prior.event_shape != event or support is not constraints.real:
        raise ValueError(
            f"GradientGuide: expected {type(model).__name__}.local_prior() to be a distribution on R^{model.phi_dim} "
            f"(batch shape (), event shape ({model.phi_dim},), real support), got {type(prior).__name__} with batch "
            f"shape {tuple(prior.batch_shape)}, event shape {tuple(prior.event_shape)}; use guide='pooled'"
        )
    base = prior
    while isinstance(base, dist.Independent):
        base = base.base_dist
    if isinstance(base, dist.Normal) and prior.event_shape == base.batch_shape[-1:]:
        return base.loc.expand(event), base.scale.expand(event), True
    try:
        return prior.mean, prior.stddev, False
    except NotImplementedError:
        raise ValueError(
            f"GradientGuide: the gradient steps start at the prior's mean and standard deviation, and "
            f"{type(model).__name__}.local_prior() ({type(prior).__name__}) has none; give it a diagonal "
            "Normal(...).to_event(1) prior or use guide='pooled'"
        ) from None


def _positive(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float)) and value > 0


def _check_int(value: Any, name: str, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name}: expected an int >= {minimum}, got {value!r}")

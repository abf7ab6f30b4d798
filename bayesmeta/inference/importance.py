r"""Importance sampling with the amortized guide as proposal: the guide's speed, the model's posterior.

An amortized Gaussian :math:`q(\phi\mid S)` fitted by minimizing :math:`\mathrm{KL}(q\,\|\,p)` is mode-seeking:
where the exact posterior is a curved ridge (one point of a sine curve leaves a one-dimensional family of
amplitudes and phases) it covers one piece of it, and predictions from it are overconfident. Self-normalized
importance sampling corrects it without any per-task optimization:

.. math::

    \phi^{(k)} \sim m(\phi) = \alpha\, p_\theta(\phi) + (1-\alpha)\, \tilde q(\phi\mid S), \qquad
    w_k \propto \frac{p_\theta(S\mid\phi^{(k)})\, p_\theta(\phi^{(k)})}{m(\phi^{(k)})},

with :math:`\tilde q` the guide's Gaussian widened by ``widen`` and the prior as a defensive component
(Hesterberg 1995, "Weighted average importance sampling and defensive mixture distributions"), so the weights
stay bounded where the guide is too narrow. For a model with a linear part (``model.linear_dim > 0``) the
mixture proposes the free part :math:`u` of φ and the linear part :math:`w` is drawn from its exact posterior
given :math:`u` (:mod:`bayesmeta.guides.linear`), so the weights are :math:`p_\theta(S, u)/m(u)` with :math:`w`
integrated out. ``num_samples`` draws are resampled with probabilities
:math:`w_k`; as ``num_particles`` grows the result converges to the exact posterior under the learned θ. The
effective sample size :math:`1/\sum_k w_k^2` of every task is kept in ``diagnostics["ess"]``, and
:math:`\log \frac1K\sum_k w_k` — an estimate of the task's log marginal likelihood :math:`\log p_\theta(S)` —
in ``diagnostics["log_evidence"]``.
"""
from __future__ import annotations

import math
from typing import Any

import pyro.distributions as dist
import torch

from bayesmeta.guides.base import theta_fixed
from bayesmeta.guides.linear import ConditionallyGaussian, complete_linear, free_prior
from bayesmeta.inference.checks import check_positive
from bayesmeta.inference.posterior import TaskPosterior, seeded
from bayesmeta.tasks.taskset import TaskSet

__all__ = ["adapt_importance"]


def _widened(q: dist.Distribution, widen: float) -> dist.Distribution:
    if isinstance(q, dist.MixtureSameFamily):  # a mixture guide: widen each component
        return dist.MixtureSameFamily(q.mixture_distribution, _widened(q.component_distribution, widen))
    if isinstance(q, dist.MultivariateNormal):
        return dist.MultivariateNormal(q.loc, scale_tril=q.scale_tril * widen)
    return dist.Normal(q.mean, q.stddev * widen).to_event(1)


def adapt_importance(
    prior: Any,
    tasks: TaskSet,
    num_particles: int = 4096,
    num_samples: int = 200,
    prior_fraction: float = 0.5,
    widen: float = 2.0,
    seed: int = 0,
    max_elements: int = 2**18,
) -> TaskPosterior:
    r"""The posterior of each task by self-normalized importance sampling from guide and prior (see the module).

    Args:
        num_particles: proposals per task, :math:`K`; the cost is :math:`K` evaluations of each task's likelihood.
        num_samples: draws kept (resampled with replacement by weight): ``draws: 1 x num_samples x T x phi_dim``.
        prior_fraction: :math:`\alpha`, the share of proposals drawn from the prior :math:`p_\theta(\phi)`
            (1 for a ``per_task`` guide, which cannot read a new task).
        widen: factor on the guide's standard deviations.
        seed: seeds the proposals and the resampling.
        max_elements: tasks are processed in chunks of at most this many particle-point pairs (memory).

    The result's ``diagnostics`` hold ``ess`` and ``log_evidence`` (``T`` each) and ``num_particles``.
    """
    from bayesmeta.inference.adapt import _initial_gaussian, _model_at_theta, _theta_used, frozen, log_joint

    check_positive(num_particles, "num_particles", integer=True)
    check_positive(num_samples, "num_samples", integer=True)
    check_positive(widen, "widen")
    check_positive(max_elements, "max_elements", integer=True)
    if isinstance(prior_fraction, bool) or not isinstance(prior_fraction, (int, float)) or not 0 <= prior_fraction <= 1:
        raise ValueError(f"prior_fraction: expected a number in [0, 1], got {prior_fraction!r}")
    if prior.guide.kind == "per_task":
        prior_fraction = 1.0
    model, program = prior.model, _model_at_theta(prior)
    with torch.no_grad(), frozen(model), seeded(seed, model.device):
        start = _initial_gaussian(prior, tasks)
        # A model with a linear part: propose its free part u, and w from its exact posterior given u.
        linear = isinstance(start, ConditionallyGaussian)
        guide = _widened(start.free if linear else start, widen)
        with theta_fixed(model, prior.guide.theta_point()):
            local = free_prior(model) if linear else model.local_prior()
        from_prior = round(num_particles * prior_fraction)
        weights = torch.tensor([prior_fraction, 1 - prior_fraction], device=model.device).log()
        size = max(1, max_elements // (num_particles * max(1, tasks.support.num_points)))
        draws, ess, evidence = [], [], []
        for start in range(0, len(tasks), size):
            rows = slice(start, min(len(tasks), start + size))
            chunk = tasks[torch.arange(rows.start, rows.stop, device=model.device)]
            q = _task_rows(guide, rows)
            phi = torch.cat([local.sample((from_prior, len(chunk))), q.sample((num_particles - from_prior,))], 0)
            mixture = torch.logsumexp(torch.stack([local.log_prob(phi), q.log_prob(phi)]) + weights[:, None, None], 0)
            if linear:
                with theta_fixed(model, prior.guide.theta_point()):
                    phi, log_q_linear = complete_linear(model, phi, chunk.support)
                mixture = mixture + log_q_linear
            log_w = log_joint(program, chunk, phi) - mixture  # K x t
            w = torch.softmax(log_w, 0)
            ess.append(1.0 / w.pow(2).sum(0))
            evidence.append(torch.logsumexp(log_w, 0) - math.log(num_particles))
            index = torch.multinomial(w.T, num_samples, replacement=True).T  # S x t
            draws.append(torch.gather(phi, 0, index[..., None].expand(-1, -1, phi.shape[-1])))
    diagnostics = {"ess": torch.cat(ess), "log_evidence": torch.cat(evidence), "num_particles": num_particles,
                   **_theta_used(prior)}
    return TaskPosterior(model, tasks, "importance", draws=torch.cat(draws, 1)[None], diagnostics=diagnostics)


def _task_rows(q: dist.Distribution, rows: slice) -> dist.Distribution:
    if isinstance(q, dist.MixtureSameFamily):
        return dist.MixtureSameFamily(dist.Categorical(logits=q.mixture_distribution.logits[rows]),
                                      _task_rows(q.component_distribution, rows))
    if isinstance(q, dist.MultivariateNormal):
        return dist.MultivariateNormal(q.loc[rows], scale_tril=q.scale_tril[rows])
    return dist.Normal(q.mean[rows], q.stddev[rows]).to_event(1)

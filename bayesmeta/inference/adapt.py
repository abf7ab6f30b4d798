r"""Meta-testing: the posterior over φ of new tasks from their support sets, under a learned θ.

All methods are vectorized over tasks: the tasks are independent given θ, so one batched program
(a ``"tasks"`` plate) covers them all.
"""
from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.infer.autoguide.initialization import init_to_value
from pyro.poutine.util import site_is_subsample
from tqdm.auto import tqdm
from torch import Tensor

from bayesmeta.guides.base import theta_fixed
from bayesmeta.guides.linear import ConditionallyGaussian, complete_linear, free_prior
from bayesmeta.inference.checks import check_positive, check_support
from bayesmeta.inference.full_bayes import check_continuous, nuts_options
from bayesmeta.inference.importance import adapt_importance
from bayesmeta.inference.nuts import run_nuts
from bayesmeta.inference.posterior import TaskPosterior
from bayesmeta.model import HierarchicalModel
from bayesmeta.tasks.taskset import TaskData, TaskSet

__all__ = ["adapt", "adapt_amortized", "adapt_exact", "adapt_svi", "adapt_nuts", "log_joint", "METHODS"]


@contextlib.contextmanager
def frozen(module: torch.nn.Module) -> Iterator[None]:
    """θ stays fixed while a new task is adapted: no gradients flow into the model's parameters."""
    flags = [(p, p.requires_grad) for p in module.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def adapt_amortized(prior: Any, tasks: TaskSet) -> TaskPosterior:
    """One forward pass of the guide over the support sets."""
    if prior.guide.kind == "per_task":
        raise ValueError(
            "method: 'amortized' needs a guide that reads support sets, but this prior was fitted with "
            "guide='per_task' (it only knows its training tasks); use method='svi' or 'nuts'"
            + (" or 'exact'" if _has_exact(prior.model) else "")
        )
    with torch.no_grad(), theta_fixed(prior.model, prior.guide.theta_point()):
        q = prior.guide.posterior(tasks)
    return TaskPosterior(prior.model, tasks, "amortized", distribution=q, diagnostics=_theta_used(prior))


def adapt_exact(prior: Any, tasks: TaskSet) -> TaskPosterior:
    """The closed-form posterior of a conjugate model."""
    if not _has_exact(prior.model):
        raise ValueError(
            f"method: 'exact' needs a model with exact_posterior(data); {type(prior.model).__name__} has none. "
            f"Use one of {sorted(m for m in METHODS if m != 'exact')}"
        )
    with torch.no_grad(), theta_fixed(prior.model, prior.guide.theta_point()):
        q = prior.model.exact_posterior(tasks.support)
    return TaskPosterior(prior.model, tasks, "exact", distribution=q, diagnostics=_theta_used(prior))


def log_joint(model: Callable[..., None], tasks: TaskSet, phi: Tensor) -> Tensor:
    r"""``log p_θ(D_i, φ_i)`` for each task and each of ``P`` values of φ: ``phi: P x T x phi_dim`` -> ``P x T``.

    Only the sites inside the ``"tasks"`` plate count (θ is fixed while a task is adapted).
    """
    conditioned = poutine.condition(model, data={"phi": phi[..., None, :]})
    with pyro.plate("particles", phi.shape[0], dim=-3):
        trace = poutine.trace(conditioned).get_trace(tasks)
    trace.compute_log_prob()
    total = phi.new_zeros(phi.shape[:2])
    for site in trace.nodes.values():
        if site["type"] != "sample" or site_is_subsample(site):
            continue
        if any(frame.name == "tasks" for frame in site["cond_indep_stack"]):
            log_prob = site["log_prob"]
            while log_prob.dim() > 2:
                log_prob = log_prob.sum(-1)
            total = total + log_prob
    return total


def _initial_gaussian(prior: Any, tasks: TaskSet) -> dist.Distribution:
    with torch.no_grad(), theta_fixed(prior.model, prior.guide.theta_point()):
        if prior.guide.kind != "per_task":
            return prior.guide.posterior(tasks)
        local = prior.model.local_prior()
        loc = local.mean.expand(len(tasks), -1)
        scale = local.stddev.expand(len(tasks), -1)
    return dist.MultivariateNormal(loc, scale_tril=torch.diag_embed(scale))


def _start(prior: Any, tasks: TaskSet) -> dist.Distribution:
    r"""Where svi and nuts start, task by task: the guide's Gaussian, or the prior's where that explains the task better.

    An amortized guide can be far off on a support set unlike its training sets (a set encoder trained on 10
    points and read with 1 put a sinusoid's log-amplitude at 21, 27 prior standard deviations out); started
    there, NUTS adapted its step size to 5e-7 and SVI never came back. So wherever :math:`\log p_\theta(D_i, \phi)`
    at the prior's mean beats it at the guide's mean (or the latter is not finite), the task starts at the prior
    (its mean and standard deviations). Two evaluations of the log joint; a model with a linear part is left as is.
    """
    start = _initial_gaussian(prior, tasks)
    if prior.guide.kind == "per_task" or isinstance(start, ConditionallyGaussian):
        return start  # per_task: already the prior
    moments = _prior_moments(prior)
    if moments is None:
        return start
    loc = start.mean
    prior_loc, prior_scale = (t.to(loc).expand(loc.shape) for t in moments)
    with torch.no_grad(), theta_fixed(prior.model, prior.guide.theta_point()), frozen(prior.model):
        joint = log_joint(_model_at_theta(prior), tasks, torch.stack([loc, prior_loc]))
    use_prior = ~torch.isfinite(joint[0]) | (joint[1] > joint[0])
    if not use_prior.any():
        return start
    if isinstance(start, torch.distributions.MultivariateNormal):
        tril = torch.where(use_prior[:, None, None], torch.diag_embed(prior_scale), start.scale_tril)
        return dist.MultivariateNormal(torch.where(use_prior[:, None], prior_loc, loc), scale_tril=tril)
    return dist.Normal(torch.where(use_prior[:, None], prior_loc, loc),
                       torch.where(use_prior[:, None], prior_scale, start.stddev)).to_event(1)


#: adapt(method="svi", components=K > 1) holds the weights equal for this fraction of the steps: learned from the
#: start, they starve the components that have not yet found a mode (on a bimodal posterior, 8 components ended
#: with 81% of the mass on one of two equal modes; held for half the steps, 50%: tests/inference/test_adapt.py).
HOLD_WEIGHTS = 0.5


def adapt_svi(
    prior: Any,
    tasks: TaskSet,
    steps: int = 500,
    lr: float = 0.05,
    num_particles: int = 16,
    seed: int = 0,
    progress: bool = False,
    covariance: str = "auto",
    components: int = 1,
    objective: str = "elbo",
) -> TaskPosterior:
    r"""A Gaussian (or a mixture of ``components``) per task, started at the amortized guess and refined by SVI.

    A task whose log joint is higher at the prior's mean than at the guess starts at the prior instead
    (the guess can be far off on support sets unlike the guide's training sets).

    For a model with a linear part (``model.linear_dim > 0``) the Gaussian covers the free part :math:`u` of φ
    and the linear part keeps its exact posterior given :math:`u` (:mod:`bayesmeta.guides.linear`).

    All tasks are optimized together (their ELBOs add up and share no parameters). The gradient uses the
    *sticking-the-landing* estimator (Roeder et al. 2017): :math:`\log q` is evaluated with its
    parameters detached, which removes the score-function term whose expectation is zero; its variance
    vanishes as :math:`q` reaches the posterior, so the fit converges rather than jittering around it.
    The learning rate decays by 10x over ``steps``.

    The optimizer works in coordinates :math:`z = (\phi - m_0) / \sigma_0`: :math:`m_0` the starting mean and
    :math:`\sigma_0` the prior's standard deviation of each coordinate (1 where the prior has none). Adam moves
    every coordinate by up to about ``lr`` per step whatever its gradient's size, so in φ's own units a step of
    0.05 crosses many posterior widths of a coordinate whose prior scale is 0.001 (a linear model in such units
    ended at KL 0.74 from its exact posterior; in these, below 0.01); in these units ``lr`` is a fraction of each
    coordinate's prior spread, and the result does not depend on the units φ is written in. The optimum is the
    same: only the optimizer's geometry changes.

    Args:
        steps: optimizer steps; lr: initial Adam learning rate, in prior standard deviations of each
            coordinate; num_particles: draws of φ per task and step.
        covariance: ``"full"``, ``"diag"`` or ``"auto"`` (default): the form of the guess — full where the
            guide gives a ``MultivariateNormal``, diagonal where it gives a diagonal Gaussian, as a high-dimensional
            φ (a BNN's weights) needs: ``phi_dim²`` numbers per task are too many there. A diagonal guide over a
            small φ (the pooled encoder's) is refined with correlations by ``"full"``: for a
            :class:`~bayesmeta.models.SinusoidModel` on noisy sinusoids (σ = 0.3, 200 tasks, 2 shots) the 90%
            intervals then held 84% of the query points instead of 81%, NLL 1.00 nats instead of 1.09.
        components: :math:`K`, Gaussians in each task's posterior (each of the form ``covariance`` picks). One
            Gaussian fitted by the ELBO sits inside one part of a posterior that is split or curved (a sinusoid seen
            at one point: a ridge of amplitude-phase pairs) and its intervals are too narrow. With :math:`K > 1`,
            :math:`q = \sum_k \pi_k q_k` and the ELBO is taken component by component, :math:`\sum_k \pi_k
            \mathbb E_{q_k}[\log p(D_i, \phi) - \log q(\phi)]` (stratified: ``num_particles`` reparameterized draws
            from each component, the weights' gradients exact; Morningstar et al. 2021, "Automatic Differentiation
            Variational Inference with Mixtures"). The first component starts at the guess, the others at
            draws from the prior's spread around it (seeded by ``seed``), all with the guess's covariance and
            equal weights; the weights stay equal for the first half of the steps (``HOLD_WEIGHTS``), while the
            components find their places. The result is a ``MixtureSameFamily``. The cost grows as :math:`K` (and
            the mixture's density as :math:`K^2`) per task: on 200 one-point sinusoids, 1.5 s with one
            Gaussian, 4 s with 5 and 15 s with 10.
        objective: ``"elbo"`` (default) or ``"iwae"``: each task's Gaussian maximizes the importance-weighted bound
            :math:`\log \frac1P \sum_{p=1}^P p(D_i, \phi^{(p)}) / q(\phi^{(p)})` over ``num_particles`` = :math:`P`
            draws (Burda et al. 2016) instead of the ELBO, as ``fit_prior(objective="iwae")`` trains an amortized
            guide. Fitted by the ELBO, :math:`\mathrm{KL}(q \,\|\, p)`, one Gaussian pays for mass it puts where
            the posterior has none and not for posterior mass it leaves out, so it sits inside one part of a split
            or curved posterior; as a proposal for :math:`P` weighted draws it pays for the mass it leaves out,
            and comes out wider: on noisy sinusoids (σ = 0.3, 200 tasks, :math:`P = 16`, ``docs/svi_iwae.md``) the
            90% intervals held 92–93% of the query points at each of 1, 2, 5 and 10 shots for a
            :class:`~bayesmeta.models.SinusoidModel` and 91–92% for a neural process, against 67 / 82 / 91 / 92% and
            69 / 82 / 89 / 90% by the ELBO (1-shot NLL 1.70 and 1.52 nats against 2.44 for both). It is not
            started on the ELBO: a Gaussian the ELBO has put on one part of the posterior stays there (half the steps
            on the ELBO first, on the two-mode posterior of ``tests/inference/test_adapt.py`` it stayed on one mode,
            forward KL up to 27 nats from the posterior). Where the posterior is Gaussian both reach it, but the
            bound hardly penalizes a Gaussian that is too wide, so it shrinks one slowly: start near the posterior
            (the amortized guess; from the prior, 800 steps left a linear model's tasks up to KL 21 away). The
            gradient is the doubly reparameterized one (Tucker et al. 2019, "Doubly Reparameterized Gradient
            Estimators for Monte Carlo Objectives"): the draws' log-weights, :math:`\log q` held as the ELBO's
            sticking-the-landing estimator holds it, weighted by their squared normalized weights; with
            :math:`P = 1` it is the ELBO's gradient. One Gaussian per task only (``components=1``).
    """
    check_positive(steps, "steps", integer=True)
    check_positive(lr, "lr")
    check_positive(num_particles, "num_particles", integer=True)
    if covariance not in ("auto", "full", "diag"):
        raise ValueError(f"covariance: expected 'auto', 'full' or 'diag', got {covariance!r}")
    check_positive(components, "components", integer=True)
    if objective not in ("elbo", "iwae"):
        raise ValueError(f"objective: expected 'elbo' or 'iwae', got {objective!r}")
    if objective == "iwae" and components != 1:
        raise ValueError(f"objective: 'iwae' fits one Gaussian per task; got components={components!r} (use 1)")
    model = _model_at_theta(prior)
    start = _start(prior, tasks)
    # A model with a linear part: the Gaussian is over the free part, each draw completed by the exact
    # posterior of the linear part, so the objective is the ELBO of the free part with the rest integrated out.
    linear = isinstance(start, ConditionallyGaussian)
    if linear:
        start = start.free
    # "auto": a diagonal start (high-dimensional φ) is refined as a diagonal Gaussian: phi_dim^2 per task is too much.
    full_start = isinstance(start, torch.distributions.MultivariateNormal)
    diagonal = covariance == "diag" or (covariance == "auto" and not full_start)
    # The Gaussians are held over z = (φ - origin) / unit (see the docstring), with a component axis: T x K x D. At
    # the start the first has mean 0 and tril diag(1/unit) L_0; the others are moved by a draw of N(0, I) (the
    # prior's spread).
    origin = start.mean.detach()
    unit = _prior_scale(prior, linear).to(origin).expand(origin.shape)
    k = components
    generator = torch.Generator(device=origin.device).manual_seed(seed)
    loc = torch.zeros(origin.shape[:-1] + (k, origin.shape[-1]), dtype=origin.dtype, device=origin.device)
    if k > 1:
        loc[..., 1:, :] = torch.randn(loc[..., 1:, :].shape, generator=generator, device=loc.device, dtype=loc.dtype)
    loc.requires_grad_(True)
    # A full guess refined as diagonal starts from its marginals; a diagonal one refined as full, uncorrelated.
    tril = start.scale_tril.detach() if full_start and not diagonal else torch.diag_embed(start.stddev.detach())
    tril = (tril / unit[..., None])[..., None, :, :].expand(loc.shape + loc.shape[-1:])
    log_diag = tril.diagonal(dim1=-2, dim2=-1).log().clone().requires_grad_(True)
    off_diag = None if diagonal else tril.tril(-1).clone().requires_grad_(True)
    logits = torch.zeros(loc.shape[:-1], dtype=loc.dtype, device=loc.device, requires_grad=k > 1)
    fitted = [t for t in (loc, log_diag, off_diag) if t is not None] + ([logits] if k > 1 else [])
    optimizer = torch.optim.Adam(fitted, lr=lr)
    schedule = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=0.1 ** (1.0 / steps))
    log_unit = unit.log().sum(-1)

    def parts(detach: bool = False, pairwise: bool = False) -> dist.Distribution:
        """The components: batch T x K (``pairwise``: T x 1 x K, to evaluate each at every component's draws)."""
        mean, log_scale = (loc.detach(), log_diag.detach()) if detach else (loc, log_diag)
        lower = None if diagonal else (off_diag.detach() if detach else off_diag)
        if pairwise:
            mean, log_scale = mean[:, None], log_scale[:, None]
            lower = None if diagonal else lower[:, None]
        if diagonal:
            return dist.Normal(mean, log_scale.exp()).to_event(1)
        return dist.MultivariateNormal(mean, scale_tril=lower.tril(-1) + torch.diag_embed(log_scale.exp()))

    def log_density(z: Tensor) -> Tensor:
        """log q(z) with the parameters detached, at draws ``z: P x T x K x D`` (one per component): ``P x T x K``."""
        if k == 1:
            return parts(detach=True).log_prob(z)
        log_weights = torch.log_softmax(logits.detach(), -1)  # T x K
        return torch.logsumexp(parts(detach=True, pairwise=True).log_prob(z[..., None, :]) + log_weights[:, None], -1)

    with frozen(prior.model):
        for step in tqdm(range(steps), desc="adapt svi", unit="step", disable=not progress, dynamic_ncols=True):
            optimizer.zero_grad(set_to_none=True)
            noise = torch.randn((num_particles,) + loc.shape, generator=generator, device=loc.device, dtype=loc.dtype)
            q = parts()
            z = loc + (noise * log_diag.exp() if diagonal else (q.scale_tril @ noise[..., None]).squeeze(-1))
            # Every component's draws as draws of their own: P x T x K x D -> (P K) x T x D for the log joint.
            phi = (origin[:, None] + unit[:, None] * z).transpose(1, 2).flatten(0, 1)
            # Sticking the landing: log q with its parameters detached (see the docstring). q(φ) = q(z) / Π unit.
            log_q = (log_density(z) - log_unit[:, None]).transpose(1, 2).flatten(0, 1)
            if linear:
                with theta_fixed(prior.model, prior.guide.theta_point()):
                    phi, log_q_linear = complete_linear(prior.model, phi, tasks.support)
                log_q = log_q + log_q_linear
            gap = log_joint(model, tasks, phi) - log_q  # (P K) x T
            if objective == "iwae":  # doubly reparameterized (see the docstring)
                loss = -(torch.softmax(gap.detach(), 0) ** 2 * gap).sum()
            elif k == 1:
                loss = -gap.sum() / num_particles
            else:  # Σ_k π_k E_{q_k}[log p - log q]: the weights' gradients are exact
                loss = -(gap.unflatten(0, (num_particles, k)) * torch.softmax(logits, -1).T).sum() / num_particles
            if not torch.isfinite(loss):
                raise FloatingPointError("adapt(method='svi'): the ELBO became NaN/Inf; lower lr")
            loss.backward()
            if k > 1 and step < HOLD_WEIGHTS * steps:
                logits.grad = None  # Adam leaves a parameter without a gradient alone
            optimizer.step()
            schedule.step()
    with torch.no_grad():
        q = parts(detach=True)
        shift, stretch = origin[:, None], unit[:, None]
        if diagonal:
            q = dist.Normal(shift + stretch * q.base_dist.loc, stretch * q.base_dist.scale).to_event(1)
        else:
            q = dist.MultivariateNormal(shift + stretch * q.loc, scale_tril=stretch[..., None] * q.scale_tril)
        if k == 1:
            q = _first_component(q)
        else:
            q = dist.MixtureSameFamily(dist.Categorical(logits=logits.detach()), q)
    if linear:
        q = ConditionallyGaussian(q, prior.model, tasks.support)
    return TaskPosterior(prior.model, tasks, "svi", distribution=q, diagnostics=_theta_used(prior))


def _first_component(q: dist.Distribution) -> dist.Distribution:
    """A Gaussian with batch ``T x 1`` as one with batch ``T``."""
    if isinstance(q, torch.distributions.MultivariateNormal):
        return dist.MultivariateNormal(q.loc[:, 0], scale_tril=q.scale_tril[:, 0])
    return dist.Normal(q.base_dist.loc[:, 0], q.base_dist.scale[:, 0]).to_event(1)


def _prior_moments(prior: Any, linear: bool = False) -> tuple[Tensor, Tensor] | None:
    """The mean and standard deviation of each coordinate under the prior at the learned θ (of the free part for a
    model with a linear part); ``None`` where the prior has none."""
    with torch.no_grad(), theta_fixed(prior.model, prior.guide.theta_point()):
        local = free_prior(prior.model) if linear else prior.model.local_prior()
        try:
            return local.mean.detach(), local.stddev.detach()
        except NotImplementedError:
            return None


def _prior_scale(prior: Any, linear: bool) -> Tensor:
    """The prior's standard deviation of each coordinate the SVI Gaussian covers (the free part for a linear model);
    ones where the prior has none."""
    moments = _prior_moments(prior, linear)
    scale = None if moments is None else moments[1]
    if scale is None or not bool(torch.isfinite(scale).all() and (scale > 0).all()):
        return torch.ones(1)  # broadcast over the coordinates
    return scale


def adapt_nuts(
    prior: Any,
    tasks: TaskSet,
    num_samples: int = 500,
    warmup_steps: int = 500,
    num_chains: int = 1,
    seed: int = 0,
    progress: bool = False,
    jit_compile: bool = False,
    target_accept_prob: float = 0.8,
) -> TaskPosterior:
    r"""Pyro NUTS over the φ of every task jointly, θ fixed at the learned values.

    The tasks are independent given θ, so one chain over all of them samples each task's posterior;
    the draws keep their chain axis (``draws: num_chains x num_samples x T x phi_dim``), chains run in parallel
    processes where cores allow (:func:`bayesmeta.inference.nuts.run_nuts`), and ``diagnostics["sample_stats"]``
    holds ArviZ's per-draw statistics (``energy``, ``diverging``, ``tree_depth``, ...). Chains start at
    the guide's posterior mean (the prior mean for a ``per_task`` guide, and for a task whose log joint is higher
    at the prior's mean: the guide can be far off on support sets unlike its training sets), not at Pyro's random
    initial point: a random start can strand a chain in a far mode that the prior all but rules out
    (a sinusoid's phase shifted by 2π, say), which a tight likelihood never lets it leave.
    """
    nuts_options({"num_samples": num_samples, "warmup_steps": warmup_steps, "num_chains": num_chains,
                  "target_accept_prob": target_accept_prob})  # validates them, as fit_prior(method="nuts") does
    check_continuous(prior.model)
    start = _start(prior, tasks).mean[..., None, :]
    with frozen(prior.model):
        run = run_nuts(_model_at_theta(prior), (tasks,), num_samples=num_samples, warmup_steps=warmup_steps,
                       num_chains=num_chains, seed=seed, progress=progress, desc="adapt (nuts)", jit_compile=jit_compile,
                       ignore_jit_warnings=True, target_accept_prob=target_accept_prob,
                       init_strategy=init_to_value(values={"phi": start}))
    draws = run.samples["phi"][..., 0, :]
    # ArviZ's per-draw statistics (energy, tree depth, divergences, ...) and Pyro's per-chain divergence lists.
    diagnostics = {"sample_stats": run.sample_stats, "divergences": run.divergences, "seconds": run.seconds,
                   **_theta_used(prior)}
    return TaskPosterior(prior.model, tasks, "nuts", draws=draws.detach(), diagnostics=diagnostics)


def _theta_used(prior: Any) -> dict[str, Any]:
    """``{"theta": ...}``: the point value of the hyperprior sites the posterior was computed under (if any)."""
    theta = prior.guide.theta_point()
    return {"theta": theta} if theta else {}


def _model_at_theta(prior: Any) -> Callable[..., None]:
    """The model with any hyperprior sites fixed at the guide's point estimate of θ."""
    theta = prior.guide.theta_point()
    return poutine.condition(prior.model, data=theta) if theta else prior.model


def _has_exact(model: HierarchicalModel) -> bool:
    return callable(getattr(model, "exact_posterior", None))


#: ``LearnedPrior.adapt(method=...)`` names and their functions.
METHODS: dict[str, Callable[..., TaskPosterior]] = {
    "amortized": adapt_amortized, "svi": adapt_svi, "nuts": adapt_nuts, "exact": adapt_exact,
    "importance": adapt_importance,
}


def adapt(prior: Any, support: TaskData | TaskSet, method: str = "amortized", **options: Any) -> TaskPosterior:
    """Dispatch :meth:`LearnedPrior.adapt` (validates the support set once, here)."""
    if method not in METHODS:
        raise ValueError(f"method: expected one of {sorted(METHODS)}, got {method!r}")
    device = prior.model.device
    tasks = check_support(support, prior.model).to(device)
    function = METHODS[method]
    if prior.guide is None:  # a full-Bayes (NUTS) prior: θ is a set of draws, not a point
        if method != "nuts":
            raise ValueError(
                f"method: this prior was fitted with method='nuts' (full Bayes over θ), which only "
                f"method='nuts' can adapt (θ marginalized over its posterior); got {method!r}"
            )
        from bayesmeta.inference.full_bayes import adapt_full_bayes as function
    try:
        return function(prior, tasks, **options)
    except TypeError as error:
        if "unexpected keyword argument" in str(error):
            raise TypeError(f"adapt(method={method!r}): {error}") from None
        raise

r"""Amortized inference by simulation: fit a guide to a learned prior's own posterior (forward KL).

``fit_prior`` learns θ and a guide together by the ELBO, which fits :math:`q(\phi\mid D)` by the *reverse*
KL, :math:`\mathrm{KL}(q \,\|\, p_\theta(\phi \mid D))`: a Gaussian q then sits inside one part of a curved or
multimodal posterior, too narrow, and its predictions are overconfident where the data are few. Once θ is
learned, the model is a simulator of tasks, and a guide can instead be fitted by the *forward* KL,

.. math::

    \min_\lambda\ \mathbb E_{x}\ \mathbb E_{\phi \sim p_\theta(\phi)}\ \mathbb E_{D \sim p_\theta(y \mid x, \phi)}
    \big[-\log q_\lambda(\phi \mid D)\big]
    \;=\; \mathbb E_{x, D}\, \mathrm{KL}\big(p_\theta(\phi \mid D) \,\|\, q_\lambda(\phi \mid D)\big) + \text{const},

whose minimizer over all conditional densities is the model's exact posterior, for every context size
the training draws. It covers the posterior's mass instead of seeking a mode, and with a mixture head
(:class:`~bayesmeta.guides.MixtureGuide`) it can follow a ridge. This is inference compilation (Le, Baydin &
Wood 2017) or neural posterior estimation (Papamakarios & Murray 2016) with the learned model as the
simulator. The inputs :math:`x` are those of the training tasks, so the guide learns for inputs where
the tasks have them; every step draws fresh :math:`\phi` and :math:`y`, so it cannot overfit a pool.
"""
from __future__ import annotations

import time
from typing import Any

import torch
from tqdm.auto import tqdm

from bayesmeta.guides import TaskGuide, make_guide
from bayesmeta.guides.base import theta_fixed
from bayesmeta.inference.checks import check_positive, check_tasks
from bayesmeta.inference.fit import random_point_subsets
from bayesmeta.inference.learned_prior import LearnedPrior
from bayesmeta.tasks.taskset import TaskData, TaskSet

__all__ = ["amortize", "simulate_tasks"]


def simulate_tasks(prior: LearnedPrior, inputs: TaskData, generator: torch.Generator | None = None,
                   min_points: int = 0, max_points: int | None = None) -> tuple[torch.Tensor, TaskSet]:
    r"""Draw :math:`\phi_i \sim p_\theta(\phi)` and :math:`y \sim p_\theta(y \mid x, \phi_i)` at the inputs of ``inputs``.

    Each task keeps a uniformly random subset of its points whose size is uniform on ``min_points`` ..
    (its count, or ``max_points`` where that is fewer), as the support of the returned TaskSet (no query).
    Returns ``(phi: T x phi_dim, tasks)``.
    """
    model = prior.model
    with torch.no_grad(), theta_fixed(model, prior.guide.theta_point() if prior.guide is not None else {}):
        phi = model.local_prior().sample((inputs.x.shape[0],))
        y = model.likelihood(phi, inputs.x).sample()
    simulated = TaskData(inputs.x, y, inputs.mask)
    empty = TaskData(inputs.x[:, :0], y[:, :0], inputs.mask[:, :0])
    return phi, random_point_subsets(TaskSet._trusted(simulated, empty, None, None), min_points, generator,
                                     max_points)


def amortize(
    prior: LearnedPrior,
    tasks: TaskSet,
    guide: Any = "mixture",
    steps: int = 10000,
    batch_tasks: int = 256,
    lr: float = 1e-3,
    lr_decay: float = 0.1,
    clip_norm: float = 10.0,
    min_points: int = 0,
    max_points: int | None = None,
    guide_options: dict[str, Any] | None = None,
    seed: int = 0,
    progress: bool = True,
    record_every: int = 50,
) -> LearnedPrior:
    r"""Fit a new amortized guide to the posterior of ``prior``'s model by simulation (see the module).

    θ is not changed: the result shares ``prior.model`` and holds the new guide, so ``adapt(method="amortized")``
    on it is one pass of that guide, and every other adapt method works as before.

    Args:
        prior: a fitted :class:`~bayesmeta.LearnedPrior` (SVI; its θ is used as it is).
        tasks: tasks whose inputs the simulated tasks use (the meta-training collection, say); their
            ``y`` are not read. Both support and query points are used.
        guide: ``"mixture"`` (default), another guide name that reads support sets (``"pooled"``,
            ``"amortized"``), or a ready :class:`~bayesmeta.guides.TaskGuide` for ``prior.model``.
        steps, batch_tasks, lr, lr_decay, clip_norm: Adam on ``batch_tasks`` fresh simulated tasks per step,
            the learning rate decaying by ``lr_decay`` over the run, gradients clipped at ``clip_norm``.
        min_points: the fewest points a simulated support set keeps (sizes are uniform from it to a
            task's count); 0 teaches the guide the prior too.
        max_points: the most points a simulated support set keeps (``None``: a task's count). The guide
            learns the sizes it is shown, each as often as the others: a cap at the support sizes you will
            adapt to spends the steps there (tasks of 20 points and shots 1–10, say).
        guide_options: keyword arguments for the guide's constructor (e.g. ``{"components": 20}``).
        seed: seeds the simulation and the guide's initialization.
        progress: a tqdm bar with the loss.
        record_every: how often the loss is recorded in ``history["loss"]`` (mean :math:`-\log q(\phi\mid D)`
            per task, nats, averaged since the last record; ``history["loss_step"]`` holds the steps).

    Returns:
        A :class:`~bayesmeta.LearnedPrior` with the same model, the new guide, ``config["amortize"]`` (these
        settings and the wall time) and ``history`` (the loss).

    >>> import bayesmeta as bm
    >>> from bayesmeta.models import HierarchicalLinearRegression
    >>> train = bm.tasks.LinearGaussian(x_dim=1, seed=0).sample(num_tasks=50, support=5, query=5, seed=0)
    >>> prior = bm.fit_prior(HierarchicalLinearRegression(x_dim=1), train, guide="exact", steps=5, progress=False)
    >>> mixed = bm.amortize(prior, train, steps=5, guide_options={"components": 3, "hidden": 16}, progress=False)
    >>> mixed.guide.kind, len(mixed.history["loss"])
    ('mixture', 1)
    """
    if not isinstance(prior, LearnedPrior):
        raise TypeError(f"prior: expected a LearnedPrior (from fit_prior), got {type(prior).__name__}")
    if prior.guide is None:
        raise ValueError("prior: a full-Bayes prior (fit_prior(method='nuts')) has no single θ to simulate from; "
                         "amortize needs an SVI fit")
    tasks = check_tasks(tasks, prior.model)
    for value, name in ((steps, "steps"), (batch_tasks, "batch_tasks"), (record_every, "record_every")):
        check_positive(value, name, integer=True)
    check_positive(lr, "lr")
    check_positive(clip_norm, "clip_norm")
    if not 0 < lr_decay <= 1:
        raise ValueError(f"lr_decay: expected a factor in (0, 1], got {lr_decay!r}")
    if isinstance(min_points, bool) or not isinstance(min_points, int) or min_points < 0:
        raise ValueError(f"min_points: expected a non-negative int, got {min_points!r}")
    if max_points is not None and (isinstance(max_points, bool) or not isinstance(max_points, int)
                                   or max_points < max(min_points, 1)):
        raise ValueError(f"max_points: expected None or an int ≥ max(min_points, 1) = {max(min_points, 1)}, "
                         f"got {max_points!r}")
    if guide in ("per_task", "exact", "gradient"):
        raise ValueError(f"guide: expected a guide that reads support sets ('mixture', 'pooled', 'amortized') or a "
                         f"TaskGuide, got {guide!r}")
    model = prior.model
    device = model.device
    torch.manual_seed(seed)
    new = make_guide(guide, model, len(tasks), **(guide_options or {})).to(device)
    if not isinstance(new, TaskGuide) or new.model is not model:
        raise ValueError("guide: a ready TaskGuide must be built for prior.model")
    if new.global_guide is not None:  # hyperprior sites: simulate and adapt under the θ the prior was fitted with
        new.global_guide.load_state_dict(prior.guide.global_guide.state_dict())
        new.global_guide.requires_grad_(False)
    inputs = tasks.to(device).all_points()
    params = [p for p in new.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=lr)
    schedule = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=lr_decay ** (1.0 / steps))
    generator = torch.Generator(device=device).manual_seed(seed)
    history: dict[str, list] = {"loss": [], "loss_step": []}
    running, count = 0.0, 0
    start = time.perf_counter()
    bar = tqdm(range(steps), desc="amortize", unit="step", disable=not progress, dynamic_ncols=True)
    for step in bar:
        rows = torch.randint(len(tasks), (min(batch_tasks, len(tasks)),), generator=generator, device=device)
        phi, simulated = simulate_tasks(prior, TaskData(inputs.x[rows], inputs.y[rows], inputs.mask[rows]),
                                        generator, min_points, max_points)
        optimizer.zero_grad(set_to_none=True)
        with theta_fixed(model, new.theta_point()):
            loss = -new.posterior(simulated).log_prob(phi).mean()
        if not torch.isfinite(loss):
            raise FloatingPointError(f"amortize: the loss became {loss.item()} at step {step}; lower lr")
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, clip_norm)
        optimizer.step()
        schedule.step()
        running, count = running + loss.item(), count + 1
        if (step + 1) % record_every == 0 or step == steps - 1:
            history["loss"].append(running / count)
            history["loss_step"].append(step)
            bar.set_postfix(neg_log_q=f"{running / count:.4g}")
            running, count = 0.0, 0
    config = {**prior.config, "guide": new.kind, "amortize": {
        "objective": "forward_kl", "steps": steps, "batch_tasks": batch_tasks, "lr": lr, "lr_decay": lr_decay,
        "clip_norm": clip_norm, "min_points": min_points, "max_points": max_points, "seed": seed,
        "num_tasks": len(tasks),
        "seconds": time.perf_counter() - start,
    }}
    return LearnedPrior(model, new, config, {**prior.history, **history}, training_tasks=prior.training_tasks)

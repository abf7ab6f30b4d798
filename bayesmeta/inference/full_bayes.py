r"""Full Bayes over θ and every task's φ by NUTS: the path for small task collections (eight schools).

.. math::

    p(\theta, \phi_{1:n} \mid D_{1:n}) \propto p(\theta) \prod_i p(\phi_i \mid \theta)\, p(D_i \mid \phi_i)

θ must have a hyperprior (``PyroSample`` attributes). A new task is adapted by sampling the joint
posterior of the training tasks and the new ones, :math:`p(\phi_\ast \mid S_\ast, D_{1:n}) =
\int p(\phi_\ast \mid S_\ast, \theta)\, p(\theta \mid D_{1:n}, S_\ast)\, d\theta`: θ is marginalized, and the
new support set informs θ as every other task does.
"""
from __future__ import annotations

from typing import Any

import pyro
import torch
from pyro import poutine
from pyro.infer.autoguide.initialization import init_to_median
from pyro.poutine.util import site_is_subsample
from torch import Tensor

from bayesmeta.guides.base import _placeholder_tasks, global_latent_sites
from bayesmeta.inference.checks import check_positive
from bayesmeta.inference.nuts import NutsRun, run_nuts
from bayesmeta.inference.posterior import TaskPosterior
from bayesmeta.model import HierarchicalModel
from bayesmeta.tasks.taskset import TaskData, TaskSet

__all__ = ["fit_nuts", "adapt_full_bayes", "concat_tasks", "NUTS_DEFAULTS"]

#: Defaults of ``fit_prior(method="nuts", ...)``; ``adapt`` of such a prior reuses what the fit used.
NUTS_DEFAULTS: dict[str, Any] = {
    "num_samples": 1000, "warmup_steps": 1000, "num_chains": 1, "jit_compile": False, "target_accept_prob": 0.8,
    "max_tree_depth": 10, "parallel": None,
}


def nuts_options(options: dict[str, Any]) -> dict[str, Any]:
    """``NUTS_DEFAULTS`` updated by ``options``, validated (unknown names are a TypeError)."""
    unknown = sorted(set(options) - set(NUTS_DEFAULTS))
    if unknown:
        raise TypeError(f"method='nuts': unexpected keyword argument(s) {unknown}; expected some of {sorted(NUTS_DEFAULTS)}")
    out = {**NUTS_DEFAULTS, **options}
    check_positive(out["num_samples"], "num_samples", integer=True)
    check_positive(out["num_chains"], "num_chains", integer=True)
    check_positive(out["max_tree_depth"], "max_tree_depth", integer=True)
    if isinstance(out["warmup_steps"], bool) or not isinstance(out["warmup_steps"], int) or out["warmup_steps"] < 0:
        raise ValueError(f"warmup_steps: expected a non-negative int, got {out['warmup_steps']!r}")
    if not 0 < out["target_accept_prob"] < 1:
        raise ValueError(f"target_accept_prob: expected a probability in (0, 1), got {out['target_accept_prob']!r}")
    return out


def check_full_bayes_model(model: HierarchicalModel) -> list[str]:
    """The θ sites with a hyperprior; a clear error when there are none or a latent is discrete."""
    sites = global_latent_sites(model)
    if not sites:
        raise ValueError(
            f"method='nuts': full Bayes needs θ with a hyperprior (PyroSample attributes), but every θ of "
            f"{type(model).__name__} is a learned point estimate (PyroParam or a network); use the default "
            "method='svi' (empirical Bayes), or give θ a hyperprior"
        )
    check_continuous(model)
    return sites


def check_continuous(model: HierarchicalModel) -> None:
    """NUTS needs every latent site continuous: name the first discrete one."""
    with torch.no_grad():
        trace = poutine.trace(model).get_trace(_placeholder_tasks(model))
    for name, site in trace.nodes.items():
        if site["type"] == "sample" and not site["is_observed"] and not site_is_subsample(site) \
                and site["fn"].support.is_discrete:
            raise ValueError(
                f"method='nuts': the latent site {name!r} of {type(model).__name__} is discrete "
                f"({type(site['fn']).__name__}); NUTS needs continuous latents — marginalize it out "
                "(e.g. with pyro's enumeration) or sample it differently"
            )


def _run(model: HierarchicalModel, tasks: TaskSet, options: dict[str, Any], seed: int, progress: bool,
         desc: str) -> NutsRun:
    kernel = {k: options[k] for k in ("jit_compile", "target_accept_prob", "max_tree_depth")}
    return run_nuts(
        model, (tasks,), num_samples=options["num_samples"], warmup_steps=options["warmup_steps"],
        num_chains=options["num_chains"], seed=seed, progress=progress, parallel=options["parallel"], desc=desc,
        ignore_jit_warnings=True, init_strategy=init_to_median(num_samples=15), **kernel,
    )


def fit_nuts(model: HierarchicalModel, tasks: TaskSet, seed: int = 0, progress: bool = True,
             **options: Any) -> tuple[dict[str, Tensor], TaskPosterior, dict[str, Any]]:
    """Sample θ and every task's φ; returns (θ draws, the training tasks' posterior, config entries)."""
    options = nuts_options(options)
    sites = check_full_bayes_model(model)
    run = _run(model, tasks, options, seed, progress, "fit_prior (nuts)")
    theta = {name: run.samples[name] for name in sites}
    posterior = posterior_from_run(model, tasks, run, sites)
    config = {"method": "nuts", **{k: v for k, v in options.items() if k != "parallel"}, "seconds": run.seconds}
    return theta, posterior, config


def posterior_from_run(model: HierarchicalModel, tasks: TaskSet, run: NutsRun, sites: list[str]) -> TaskPosterior:
    """The tasks' φ draws (``num_chains x num_samples x T x phi_dim``) with θ draws and NUTS statistics."""
    phi = phi_draws(model, tasks, run.samples)
    diagnostics = {
        "theta_draws": {name: run.samples[name] for name in sites}, "sample_stats": run.sample_stats,
        "divergences": run.divergences, "samples": run.samples, "seconds": run.seconds,
    }
    return TaskPosterior(model, tasks, "nuts", draws=phi, diagnostics=diagnostics)


def phi_draws(model: HierarchicalModel, tasks: TaskSet, samples: dict[str, Tensor]) -> Tensor:
    """The value of the site ``"phi"`` at each draw: ``num_chains x num_samples x T x phi_dim``.

    A sampled ``"phi"`` is read directly; a reparameterized one (e.g. ``LocScaleReparam``, where NUTS samples
    ``phi_decentered``) is recomputed by replaying the model on every draw at once, the draws in a plate.
    """
    if "phi" in samples:
        return samples["phi"][..., 0, :]
    chains, draws = next(iter(samples.values())).shape[:2]
    flat = {name: value.flatten(0, 1) for name, value in samples.items()}
    with torch.no_grad():
        shapes = poutine.trace(model).get_trace(tasks)
    data = {}
    for name, value in flat.items():
        site = shapes.nodes[name]
        batch_rank = site["value"].dim() - site["fn"].event_dim
        data[name] = value.reshape(value.shape[0], *[1] * (2 - batch_rank), *value.shape[1:])
    with torch.no_grad(), pyro.plate("draws", chains * draws, dim=-3):
        trace = poutine.trace(poutine.condition(model, data=data)).get_trace(tasks)
    phi = trace.nodes["phi"]["value"]
    return phi.expand(chains * draws, *phi.shape[-3:])[..., 0, :].reshape(chains, draws, len(tasks), -1)


def concat_tasks(first: TaskSet, second: TaskSet) -> TaskSet:
    """The tasks of ``first`` then those of ``second`` (points padded to the larger count, masked)."""
    def side(a: TaskData, b: TaskData) -> TaskData:
        n = max(a.num_points, b.num_points)
        parts = [_pad(d, n) for d in (a, b)]
        return TaskData(*(torch.cat(z, 0) for z in zip(*parts)))

    names = None
    if first.names is not None or second.names is not None:
        names = (first.names or [f"train{i}" for i in range(len(first))]) + (
            second.names or [f"new{i}" for i in range(len(second))])
    return TaskSet._trusted(side(first.support, second.support), side(first.query, second.query), names, None)


def _pad(data: TaskData, n: int) -> tuple[Tensor, Tensor, Tensor]:
    extra = n - data.num_points
    if extra == 0:
        return data.x, data.y, data.mask
    pad = [0, 0, 0, extra]
    y = torch.nn.functional.pad(data.y, pad if data.y.dim() == 3 else [0, extra])
    return torch.nn.functional.pad(data.x, pad), y, torch.nn.functional.pad(data.mask, [0, extra])


def adapt_full_bayes(prior: Any, tasks: TaskSet, seed: int = 0, progress: bool = False, **options: Any) -> TaskPosterior:
    r"""NUTS on the training tasks and the new ones jointly; returns the new tasks' posterior (θ marginalized).

    Options default to those the prior was fitted with (``num_samples``, ``warmup_steps``, ``num_chains``, ...).
    """
    if prior.training_tasks is None:
        raise ValueError(
            "adapt: this full-Bayes prior has no training tasks (loaded from a file written without them); "
            "fit it again with fit_prior(method='nuts')"
        )
    fitted = {k: prior.config[k] for k in NUTS_DEFAULTS if k in prior.config}
    options = nuts_options({**fitted, **options})
    model = prior.model
    sites = check_full_bayes_model(model)
    training = prior.training_tasks.to(tasks.device)
    joint = concat_tasks(training, TaskSet._trusted(tasks.support, tasks.query, tasks.names, None))
    run = _run(model, joint, options, seed, progress, "adapt (nuts, joint)")
    posterior = posterior_from_run(model, joint, run, sites)
    new = slice(len(training), len(joint))
    diagnostics = dict(posterior.diagnostics, joint_tasks=len(joint))
    return TaskPosterior(model, tasks, "nuts", draws=posterior.draws[:, :, new], diagnostics=diagnostics)

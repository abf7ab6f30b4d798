r"""How much structure a hierarchical model shares across tasks, and how fast a task's data resolve it."""
from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, Sequence

import pandas as pd
import torch
from pyro import poutine
from torch import Tensor

from bayesmeta.diagnostics.entropy import (
    _block_se, _gaussian_or_none, _knn_blocks, _prior_entropy, _theta_draw_list, entropy,
)
from bayesmeta.guides.base import _placeholder_tasks, global_latent_sites, theta_fixed
from bayesmeta.inference.learned_prior import LearnedPrior
from bayesmeta.inference.posterior import seeded
from bayesmeta.model import HierarchicalModel
from bayesmeta.tasks.taskset import TaskSet

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["StructureReport", "structure"]


@dataclass(repr=False)
class StructureReport:
    r"""Entropies (nats) of the task parameters :math:`\phi` of a hierarchical model.

    .. math::

        H(p(\phi)) = H\Big(\textstyle\int p(\phi\mid\theta)\,p(\theta)\,d\theta\Big), \qquad
        \mathbb E_\theta H(p(\phi\mid\theta)), \qquad
        I(\phi;\theta) = H(p(\phi)) - \mathbb E_\theta H(p(\phi\mid\theta)) \ge 0 .

    :math:`I(\phi;\theta)` is what one task's parameters reveal about the shared :math:`\theta` (and so
    about other tasks): zero when tasks share nothing learnable. Under the hyperprior :math:`p(\theta)`
    these describe the model before any data; the ``*_posterior`` fields use draws of :math:`\theta`
    from its posterior (a NUTS-fitted prior's ``theta_draws``). Where :math:`\theta` is all
    ``PyroParam`` (empirical Bayes) there is no distribution over :math:`\theta` and they are ``None``.

    ``prior_entropy`` is :math:`H(p(\phi\mid\hat\theta))` of a learned prior (of a full-Bayes prior, which has
    θ draws and no point estimate: the predictive :math:`H(p(\phi\mid D))`, i.e. ``marginal_entropy_posterior``;
    ``None`` for a bare model); ``by_shots`` holds, per number
    of shots :math:`k`, the mean posterior entropy over tasks and the information gain
    :math:`H(p(\phi\mid\hat\theta)) - H(p(\phi\mid D_{1:k},\hat\theta))`. Entropies are of :math:`\phi` in
    the model's own (unconstrained) coordinates (see :mod:`bayesmeta.diagnostics.entropy`). Every ``*_se``
    is a Monte Carlo standard error (over tasks for ``by_shots``).

    >>> StructureReport(prior_entropy=2.5, prior_entropy_se=0.0).to_frame()
            quantity  value   se
    0  prior_entropy    2.5  0.0
    """

    marginal_entropy: float | None = None
    marginal_entropy_se: float | None = None
    conditional_entropy: float | None = None
    conditional_entropy_se: float | None = None
    mutual_information: float | None = None
    mutual_information_se: float | None = None
    prior_entropy: float | None = None
    prior_entropy_se: float | None = None
    marginal_entropy_posterior: float | None = None
    marginal_entropy_posterior_se: float | None = None
    conditional_entropy_posterior: float | None = None
    conditional_entropy_posterior_se: float | None = None
    mutual_information_posterior: float | None = None
    mutual_information_posterior_se: float | None = None
    by_shots: pd.DataFrame | None = None

    def to_frame(self) -> pd.DataFrame:
        """One row per computed quantity (``None`` ones left out): columns ``quantity, value, se``."""
        rows = [
            {"quantity": f.name, "value": getattr(self, f.name), "se": getattr(self, f.name + "_se")}
            for f in fields(self)
            if f.name != "by_shots" and not f.name.endswith("_se") and getattr(self, f.name) is not None
        ]
        return pd.DataFrame(rows, columns=["quantity", "value", "se"])

    def plot(self, ax: Axes | None = None) -> Figure:
        """Posterior entropy and information gain against shots (±2 SE bars), the prior entropy dashed.

        Drawn on ``ax``, or on a new bare ``Figure`` with the Agg canvas (no pyplot state); returns the figure.
        """
        if self.by_shots is None:
            raise ValueError("plot: this report has no by_shots table; call structure(prior, tasks) with a "
                             "LearnedPrior and a TaskSet")
        if ax is None:
            from matplotlib.backends.backend_agg import FigureCanvasAgg
            from matplotlib.figure import Figure

            figure = Figure(figsize=(5.0, 3.5), layout="constrained")
            FigureCanvasAgg(figure)
            ax = figure.subplots()
        frame = self.by_shots
        for name, label in (("posterior_entropy", "posterior entropy"), ("information_gain", "information gain")):
            ax.errorbar(frame["shots"], frame[name], yerr=2 * frame[name + "_se"].fillna(0.0),
                        marker="o", capsize=3, label=label)
        ax.axhline(self.prior_entropy, linestyle="--", color="gray", label="prior entropy")
        ax.set_xlabel("shots (support points per task)")
        ax.set_ylabel("nats")
        ax.legend()
        return ax.figure

    def __repr__(self) -> str:
        lines = [f"  {r.quantity}: {r.value:.4g} ± {r.se:.2g}" for r in self.to_frame().itertuples()]
        if self.by_shots is not None:
            lines.append(f"  by_shots: {len(self.by_shots)} rows (shots {self.by_shots['shots'].tolist()})")
        return "StructureReport(\n" + "\n".join(lines) + "\n)"


# ---------------------------------------------------------------------- mutual information
def _hyperprior_draws(model: HierarchicalModel, sites: list[str], num: int) -> list[dict[str, Tensor]]:
    """``num`` joint draws of the hyperprior sites, read from traces of the whole program."""
    placeholder = _placeholder_tasks(model)
    draws = []
    for _ in range(num):
        trace = poutine.trace(model).get_trace(placeholder)
        draws.append({name: trace.nodes[name]["value"] for name in sites})
    return draws


def _measures(model: HierarchicalModel, thetas: list[dict[str, Tensor]], num_phi: int, k: int) -> dict[str, float]:
    r"""H(p(φ)), E H(p(φ|θ)) and their difference from draws θ_s, with batch-means SEs (shared blocks)."""
    phis, conditional = [], []
    for theta in thetas:
        with theta_fixed(model, theta):
            local = model.local_prior()
        if local.batch_shape != torch.Size() or len(local.event_shape) != 1:
            raise ValueError(f"local_prior: expected batch shape () and event shape (phi_dim,), got "
                             f"{tuple(local.batch_shape)} and {tuple(local.event_shape)}")
        phi = local.sample((num_phi,))
        phis.append(phi)
        exact = _gaussian_or_none(local)
        if exact is None:
            try:
                exact = local.entropy()
            except NotImplementedError:  # Monte Carlo: -log p of the very draws used for H(p(φ))
                exact = None
        conditional.append(-local.log_prob(phi) if exact is None else exact.expand(num_phi))
    phi = torch.cat(phis).to(torch.float64)  # θ-major: contiguous blocks keep each θ's draws together
    cond = torch.cat(conditional).to(torch.float64)
    if len(phi) < 16 * (k + 1):
        raise ValueError(f"num_theta, num_phi: expected at least {16 * (k + 1)} draws of φ in all for k={k} "
                         f"(draws of θ x num_phi), got {len(phi)}; raise num_theta or num_phi")
    marginal, per_block, size = _knn_blocks(phi[None], k, blocks=20)
    m = per_block.shape[-1]
    cond_blocks = cond[: m * size].reshape(m, size).mean(-1)
    n, per_theta = len(phi), cond.reshape(-1, num_phi).mean(-1)
    out = {
        "marginal_entropy": marginal[0], "marginal_entropy_se": _block_se(per_block[0], size, n),
        "conditional_entropy": per_theta.mean(), "conditional_entropy_se": per_theta.std() / math.sqrt(len(per_theta)),
        "mutual_information": marginal[0] - per_theta.mean(),
        "mutual_information_se": _block_se(per_block[0] - cond_blocks, size, n),
    }
    return {name: float(value) for name, value in out.items()}


# ---------------------------------------------------------------------- by shots
def _check_shots(shots: Any, tasks: TaskSet) -> list[int]:
    try:
        values = list(shots)
    except TypeError:
        raise ValueError(f"shots: expected a sequence of non-negative ints, got {shots!r}") from None
    if not values or any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in values):
        raise ValueError(f"shots: expected a non-empty sequence of non-negative ints, got {shots!r}")
    available = int(tasks.support.counts.min())
    if max(values) > available:
        raise ValueError(f"shots: expected at most {available} (the fewest support points of any task), "
                         f"got {max(values)}; sample tasks with more support points")
    return values


def _by_shots(prior: LearnedPrior, tasks: TaskSet, shots: list[int], prior_entropy: float, prior_se: float,
              method: str, k: int, options: dict[str, Any]) -> pd.DataFrame:
    rows = []
    for shot in shots:
        if shot == 0:  # no data: the posterior is the prior
            rows.append({"shots": 0, "posterior_entropy": prior_entropy, "posterior_entropy_se": prior_se,
                         "information_gain": 0.0, "information_gain_se": 0.0})
            continue
        value = entropy(prior.adapt(tasks.support.head(shot), method=method, **options), k=k).value.double()
        se = float(value.std() / math.sqrt(len(value))) if len(value) > 1 else math.nan
        rows.append({"shots": shot, "posterior_entropy": float(value.mean()), "posterior_entropy_se": se,
                     "information_gain": prior_entropy - float(value.mean()),
                     "information_gain_se": math.hypot(se, prior_se)})
    return pd.DataFrame(rows)


def structure(
    model_or_prior: HierarchicalModel | LearnedPrior,
    tasks: TaskSet | None = None,
    shots: Sequence[int] = (0, 1, 2, 5, 10),
    num_theta: int = 1000,
    num_phi: int = 1,
    seed: int = 0,
    method: str = "amortized",
    k: int = 3,
    adapt_options: dict[str, Any] | None = None,
) -> StructureReport:
    r"""Measure the shared structure of a model (see :class:`StructureReport`).

    Under the hyperprior, ``num_theta`` joint draws :math:`\theta_s` of the model's ``PyroSample`` sites
    are read from traces of the model, then ``num_phi`` draws :math:`\phi \sim p(\phi\mid\theta_s)` each:
    :math:`H(p(\phi))` is their :func:`~bayesmeta.diagnostics.entropy.knn_entropy` (``k``), and
    :math:`H(p(\phi\mid\theta_s))` is exact for a Gaussian local prior (else its ``entropy()`` or Monte
    Carlo). The standard errors of :math:`H(p(\phi))` and :math:`I` come from batch means over the same
    contiguous blocks of draws, so the SE of the difference accounts for their covariance. A prior carrying
    ``theta_draws`` (site -> ``num_chains x num_samples x ...``) gets the same measures under those draws,
    thinned evenly to ``num_theta``.

    Args:
        model_or_prior: a :class:`~bayesmeta.HierarchicalModel`, or a :class:`~bayesmeta.LearnedPrior` (or
            any object with ``.model`` and ``.theta_draws``).
        tasks: new tasks; with a LearnedPrior, each is adapted to its first ``s`` support points for every
            ``s`` in ``shots`` to fill ``by_shots`` (tasks need at least ``max(shots)`` support points).
        shots: non-negative ints; 0 means no data (posterior = prior, gain 0).
        num_theta: draws of :math:`\theta`; num_phi: draws of :math:`\phi` per :math:`\theta`.
        seed: seeds every draw (the global RNG state is restored afterwards).
        method, adapt_options: passed to :meth:`~bayesmeta.LearnedPrior.adapt`.
        k: the neighbour used by every kNN estimate.

    >>> import bayesmeta as bm
    >>> from bayesmeta.models import HierarchicalLinearRegression
    >>> family = bm.tasks.LinearGaussian(x_dim=1, seed=0)
    >>> prior = bm.fit_prior(HierarchicalLinearRegression(x_dim=1), family.sample(20, 5, 5, seed=0),
    ...                      guide="exact", steps=3, progress=False)
    >>> report = structure(prior, family.sample(8, 5, 0, seed=1), shots=(0, 2, 5), method="exact")
    >>> report.mutual_information is None, report.by_shots["shots"].tolist()
    (True, [0, 2, 5])
    """
    if isinstance(model_or_prior, HierarchicalModel):
        model, prior = model_or_prior, None
    elif isinstance(getattr(model_or_prior, "model", None), HierarchicalModel):
        model, prior = model_or_prior.model, model_or_prior
    else:
        raise TypeError("model_or_prior: expected a HierarchicalModel or a LearnedPrior (from bm.fit_prior), "
                        f"got {type(model_or_prior).__name__}")
    for name, value, low in (("num_theta", num_theta, 2), ("num_phi", num_phi, 1), ("k", k, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name}: expected an int >= {low}, got {value!r}")
    if tasks is not None:
        if not isinstance(prior, LearnedPrior):
            raise ValueError(f"tasks: by_shots adapts to the tasks and needs a LearnedPrior (from bm.fit_prior), "
                             f"got {type(model_or_prior).__name__}; fit a prior first or pass tasks=None")
        if not isinstance(tasks, TaskSet):
            raise TypeError(f"tasks: expected a TaskSet, got {type(tasks).__name__}")
        shot_list = _check_shots(shots, tasks)
    report = StructureReport()
    sites = global_latent_sites(model)
    with torch.no_grad(), seeded(seed, model.device):
        if sites:
            thetas = _hyperprior_draws(model, sites, num_theta)
            for name, value in _measures(model, thetas, num_phi, k).items():
                setattr(report, name, value)
        theta_draws = getattr(prior, "theta_draws", None)
        if sites and isinstance(theta_draws, dict) and theta_draws:
            thetas = _theta_draw_list(model, theta_draws, num_theta)
            for name, value in _measures(model, thetas, num_phi, k).items():
                base = name.removesuffix("_se")
                setattr(report, f"{base}_posterior" + ("_se" if name != base else ""), value)
        if report.marginal_entropy_posterior is not None and getattr(prior, "guide", None) is None:
            # full Bayes: the learned prior is the predictive ∫ p(φ|θ) p(θ|D) dθ, measured just above
            report.prior_entropy = report.marginal_entropy_posterior
            report.prior_entropy_se = report.marginal_entropy_posterior_se
        elif isinstance(prior, LearnedPrior) or (prior is not None and not sites):
            prior_entropy = _prior_entropy(prior, k, num_samples=1000)
            report.prior_entropy, report.prior_entropy_se = float(prior_entropy.value), float(prior_entropy.se)
    if tasks is not None:  # outside no_grad: adapt(method="svi" or "nuts") needs gradients
        with seeded(seed, model.device):
            report.by_shots = _by_shots(prior, tasks, shot_list, report.prior_entropy, report.prior_entropy_se,
                                        method, k, adapt_options or {})
    return report

r"""Posteriors and learned priors as ArviZ ``InferenceData``: the one place bayesmeta calls ArviZ.

Every ArviZ call of the package sits in this module (built on ``az.from_dict``, never ``az.from_pyro``),
so the move to ArviZ 1.x (``xarray.DataTree``) touches one file.

Naming (the same for every method):

* ``posterior`` / ``prior``: ``phi`` with dims ``(chain, draw, task, phi_dim)``, coords ``task`` (the task
  names, ``"task0"``, ... when the TaskSet has none) and ``phi_dim`` (``model.phi_names``). The dim is not
  called ``phi``: xarray cannot hold a variable and a dimension of the same name. θ draws of a fully
  Bayesian fit are posterior variables named by their Pyro site (dims ``chain, draw, <site>_dim_0, ...``).
* ``observed_data`` ``y``, ``posterior_predictive`` ``y``, ``log_likelihood`` ``y``, ``constant_data`` ``x``:
  the observed (masked-in) points flattened to one dim ``obs``, so ragged tasks leave no padding and no
  NaN; non-index coords ``task`` (its task's name) and ``point`` (its index in the padded
  ``num_tasks x num_points`` arrays) on ``obs``. ``y`` has a trailing dim ``y_dim`` when ``y_dim > 1``,
  ``x`` always has ``x_dim``. ``log_likelihood`` ``y`` is ``(chain, draw, obs)`` (summed over ``y_dim``).
* ``sample_stats``: NUTS statistics (``diverging``, ``energy``, ``step_size``, ``tree_depth``, ``n_steps``,
  ``acceptance_rate``, ``lp``), ``(chain, draw)``, copied from ``posterior.diagnostics["sample_stats"]``.
* ``constant_data`` ``theta_<name>`` (learned priors): point estimates of θ, see :func:`to_inference_data`.
* ``attrs`` of every group: ``model``, ``method``, ``bayesmeta_version``, ``inference_library`` (``"pyro"``)
  and ``inference_library_version``.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

with warnings.catch_warnings():
    # ArviZ announces its 1.x refactor on import; this module is where that move will be handled, so a
    # bayesmeta user need not see it.
    warnings.filterwarnings("ignore", message=".*ArviZ.*refactor.*|.*arviz.*refactor.*", category=FutureWarning)
    import arviz as az
import numpy as np
import pyro
import torch
from pyro import poutine
from torch import Tensor

import bayesmeta
from bayesmeta._files import atomic_write
from bayesmeta.guides.base import theta_fixed
from bayesmeta.inference.learned_prior import LearnedPrior
from bayesmeta.inference.posterior import TaskPosterior, seeded
from bayesmeta.model import HierarchicalModel
from bayesmeta.tasks.taskset import TaskData, TaskSet

__all__ = ["to_inference_data", "save_netcdf", "load_example", "SAMPLE_STATS", "MAX_THETA_SIZE"]

#: NUTS statistics copied into ``sample_stats`` (ArviZ's names), each ``num_chains x num_samples``.
SAMPLE_STATS = ("diverging", "energy", "step_size", "tree_depth", "n_steps", "acceptance_rate", "lp")
#: θ point estimates with more elements than this are network weights and are left out.
MAX_THETA_SIZE = 64


@dataclass
class _Groups:
    """What ``az.from_dict`` is given: ``groups[group][variable]`` arrays, coords, dims, coords on ``obs``."""

    groups: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    coords: dict[str, list] = field(default_factory=dict)
    dims: dict[str, list[str]] = field(default_factory=dict)
    obs_coords: dict[str, np.ndarray] = field(default_factory=dict)
    scalars: set[str] = field(default_factory=set)  # 0-d constant_data, which ArviZ would make 1-d

    def add(self, group: str, name: str, value: Tensor | np.ndarray) -> None:
        if isinstance(value, Tensor):
            value = value.detach().cpu().numpy()
        self.groups.setdefault(group, {})[name] = np.asarray(value)
        if group == "constant_data" and np.ndim(value) == 0:
            self.scalars.add(name)


def to_inference_data(
    obj: TaskPosterior | LearnedPrior, num_samples: int = 1000, seed: int = 0, data: str | TaskData | TaskSet = "support"
) -> az.InferenceData:
    r"""Convert a :class:`~bayesmeta.TaskPosterior` or a :class:`~bayesmeta.LearnedPrior` to ``InferenceData``.

    A **TaskPosterior** gives ``posterior`` (``phi``: ``num_chains x num_samples x T x phi_dim``; a Gaussian
    posterior gives one chain of ``num_samples`` draws; NUTS draws keep their chains, plus any
    ``diagnostics["theta_draws"]``), ``prior`` (``phi`` drawn from :math:`p(\phi\mid\theta)` as many times,
    independently per task; θ from ``diagnostics["theta_draws"]`` draw by draw, else
    ``diagnostics["theta"]``, else — for a model with hyperpriors — fresh hyperprior draws, i.e. the marginal
    prior), ``observed_data``, ``log_likelihood`` (so ``az.loo`` / ``az.waic`` need no variable name),
    ``posterior_predictive``, ``constant_data`` and, from ``diagnostics["sample_stats"]``, ``sample_stats``.
    The module docstring lists names and dims.

    A **LearnedPrior** gives θ: ``prior.theta_draws`` (a dict site → ``num_chains x num_samples x ...``) as
    posterior variables, otherwise point estimates in ``constant_data`` as ``theta_<name>`` — the guide's
    ``theta_point()`` sites and the model's ``PyroParam`` attributes (dotted path for submodules) with at most
    :data:`MAX_THETA_SIZE` elements; plain ``nn.Parameter`` network weights are never included. The training
    tasks' posterior (``prior.training_posterior``; skipped for a prior without its training tasks) adds the
    groups above for the training tasks, scored on all their points (support and query: what ``fit_prior``
    fitted). ``attrs["method"]`` is ``"fit_prior:<method>[/<guide>]"``, e.g. ``"fit_prior:svi/exact"``.

    Args:
        obj: the posterior or prior.
        num_samples: draws of a Gaussian posterior (NUTS draws are used as they are).
        seed: seeds every draw; the same seed gives the same numbers.
        data: the points to score: ``"support"`` (the support set the posterior conditioned on), a
            :class:`~bayesmeta.TaskData` (e.g. ``tasks.query``) or a TaskSet (its query points), ``T`` tasks.
            For a LearnedPrior ``"support"`` means every point of the training tasks.

    Raises:
        TypeError: ``obj`` is neither; ``data`` is not one of the above.
        ValueError: the model's ``phi_names`` is empty or does not match φ; ``data`` has other tasks.

    >>> import torch
    >>> from bayesmeta.models import HierarchicalLinearRegression
    >>> model = HierarchicalLinearRegression(x_dim=1)
    >>> support = TaskSet.from_arrays(torch.randn(3, 4, 1), torch.randn(3, 4, 1), names=["a", "b", "c"])
    >>> post = TaskPosterior(model, support, "exact", distribution=model.exact_posterior(support.support))
    >>> idata = to_inference_data(post, num_samples=50)
    >>> idata.posterior["phi"].dims, idata.posterior["phi"].coords["task"].values.tolist()
    (('chain', 'draw', 'task', 'phi_dim'), ['a', 'b', 'c'])
    >>> idata.log_likelihood["y"].shape
    (1, 50, 12)
    """
    if isinstance(obj, TaskPosterior):
        _check_phi_names(obj.model)
        if isinstance(data, str) and data != "support":
            raise ValueError(f"data: expected 'support', a TaskData or a TaskSet, got {data!r}")
        points = obj.support.support if isinstance(data, str) else data
        groups = _posterior_groups(obj, points, num_samples, seed)
        return _build(groups, _attrs(obj.model, obj.method))
    if isinstance(obj, LearnedPrior):
        _check_phi_names(obj.model)
        return _prior_inference_data(obj, num_samples, seed, data)
    raise TypeError(f"to_inference_data: expected a TaskPosterior or LearnedPrior, got {type(obj).__name__}")


def save_netcdf(idata: az.InferenceData, path: str | os.PathLike) -> None:
    """Write ``idata`` to a netCDF file atomically: a crash leaves the old file or none, never half of one.

    The groups are written to a staging file next to ``path``, then moved into place with
    :func:`bayesmeta._files.atomic_write`. ``arviz.from_netcdf(path)`` reads it back.

    >>> import pathlib, tempfile, numpy as np
    >>> target = pathlib.Path(tempfile.mkdtemp()) / "post.nc"
    >>> save_netcdf(az.from_dict(posterior={"a": np.zeros((1, 5))}), target)
    >>> az.from_netcdf(target).posterior["a"].shape
    (1, 5)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=f".{path.name}.") as staging:
        staged = os.path.join(staging, "idata.nc")
        idata.to_netcdf(staged)
        with open(staged, "rb") as source:
            atomic_write(path, lambda target: shutil.copyfileobj(source, target))


def load_example(name: str) -> az.InferenceData:
    """One of the example data sets bundled with ArviZ (no download): ``"centered_eight"`` or ``"non_centered_eight"``.

    >>> load_example("centered_eight").observed_data["obs"].shape
    (8,)
    """
    bundled = ("centered_eight", "non_centered_eight")
    if name not in bundled:
        raise ValueError(f"name: expected one of {list(bundled)} (bundled with ArviZ, no download), got {name!r}")
    return az.load_arviz_data(name)


# ---------------------------------------------------------------------------------------------- posteriors
def _check_phi_names(model: HierarchicalModel) -> None:
    if not model.phi_names:
        raise ValueError(
            f"phi_names: {type(model).__name__}.phi_names is empty; set phi_names to a list of phi_dim strings "
            "(one name per coordinate of φ, e.g. ['slope', 'bias']) in the class or its __init__: they become "
            "ArviZ coordinates"
        )


def _posterior_groups(
    post: TaskPosterior, points: TaskData | TaskSet, num_samples: int, seed: int, theta_draws: dict | None = None
) -> _Groups:
    model, out = post.model, _Groups()
    points = _points(points, len(post), model)
    names = post.support.names or [f"task{i}" for i in range(len(post))]
    out.coords.update(task=list(names), phi_dim=list(model.phi_names))
    out.dims["phi"] = ["task", "phi_dim"]
    with torch.no_grad(), seeded(seed, post.mean.device):
        phi = post.draws if post.draws is not None else post.sample(num_samples)[None]
        if phi.shape[-1] != model.phi_dim:
            raise ValueError(f"phi_names: expected {phi.shape[-1]} names to match φ's draws, got {model.phi_names}")
        theta_draws = theta_draws or post.diagnostics.get("theta_draws")
        out.add("posterior", "phi", phi)
        for site, value in (theta_draws or {}).items():
            out.add("posterior", site, value)
        out.add("prior", "phi", _prior_phi(model, phi.shape[:2], len(post), theta_draws, post.diagnostics.get("theta")))
        _add_points(out, model, phi, points, names, theta_draws, post.diagnostics.get("theta"))
    stats = post.diagnostics.get("sample_stats") or {}
    for name in SAMPLE_STATS:
        if name in stats:
            out.add("sample_stats", name, stats[name])
    return out


def _points(points: TaskData | TaskSet, num_tasks: int, model: HierarchicalModel) -> TaskData:
    if isinstance(points, TaskSet):
        if int(points.query.counts.sum()) == 0:
            raise ValueError("data: this TaskSet has no query points; pass data=tasks.support to score the support")
        points = points.query
    if not isinstance(points, TaskData):
        raise TypeError(f"data: expected 'support', a TaskData or a TaskSet, got {type(points).__name__}")
    if points.num_tasks != num_tasks or points.x_dim != model.x_dim:
        raise ValueError(
            f"data: expected {num_tasks} tasks with x_dim {model.x_dim} (the posterior's tasks), got "
            f"{points.num_tasks} tasks with x_dim {points.x_dim}"
        )
    return points


def _prior_phi(
    model: HierarchicalModel, shape: torch.Size, num_tasks: int, theta_draws: dict | None, theta: dict | None
) -> Tensor:
    """``num_chains x num_samples x T x phi_dim`` draws of φ from :math:`p(\\phi \\mid \\theta)`."""
    with poutine.trace() as probe, model.reading_theta():
        model.local_prior()
    hyper = [name for name, site in probe.trace.nodes.items() if site["type"] == "sample"]
    if not hyper or (theta and not theta_draws):
        with theta_fixed(model, dict(theta or {}) if hyper else {}):
            return model.local_prior().sample((*shape, num_tasks))
    # θ has hyperprior sites: one θ per draw of φ (θ draws cycled; none: fresh draws from the hyperprior).
    flat = {k: torch.as_tensor(v).flatten(0, 1) for k, v in (theta_draws or {}).items() if k in hyper}
    draws = []
    for i in range(shape.numel()):
        with theta_fixed(model, {k: v[i % len(v)] for k, v in flat.items()}):
            draws.append(model.local_prior().sample((num_tasks,)))
    return torch.stack(draws).reshape(*shape, num_tasks, -1)


def _add_points(out: _Groups, model: HierarchicalModel, phi: Tensor, points: TaskData, names: list[str],
                theta_draws: dict[str, Tensor] | None = None, theta: dict[str, Tensor] | None = None) -> None:
    """Observed data, pointwise log-likelihood, posterior predictive and ``x`` at the observed points.

    A likelihood that reads θ sees, for each draw of φ, the θ drawn with it (``theta_draws``, full Bayes) or the
    point θ the posterior was computed under (``theta``), never a fresh draw from the hyperprior.
    """
    points = points.to(phi.device)
    task, point = points.mask.nonzero(as_tuple=True)
    # Padding takes its task's first observed point, so no likelihood sees an invalid value (e.g. a zero scale).
    first = points.mask.to(torch.uint8).argmax(1)[:, None].expand_as(points.mask)
    x = torch.where(points.mask[..., None], points.x, points.x.gather(1, first[..., None].expand_as(points.x)))
    y_first = points.y.gather(1, first[..., None].expand_as(points.y) if points.y.dim() == 3 else first)
    y = torch.where(points.mask[..., None] if points.y.dim() == 3 else points.mask, points.y, y_first)
    flat_phi = phi.flatten(0, 1)
    flat_theta = {k: v.flatten(0, 1).to(phi.device) for k, v in (theta_draws or {}).items()}
    per_chunk = max(1, 2**22 // max(1, points.mask.numel() * points.y_dim))
    log_lik, y_rep = [], []
    for start in range(0, len(flat_phi), per_chunk):
        chunk = flat_phi[start:start + per_chunk]
        # Each θ draw gets room for the task and point dims, as TaskPosterior.predict gives it.
        paired = {k: v[start:start + per_chunk].reshape(len(chunk), 1, 1, *v.shape[1:]) for k, v in flat_theta.items()}
        with theta_fixed(model, {**(theta or {}), **paired}):
            likelihood = model.likelihood(chunk, x.to(chunk.dtype))
        log_lik.append(likelihood.log_prob(y)[:, task, point])
        y_rep.append(likelihood.sample()[:, task, point])
    squeeze = points.y.dim() == 3 and points.y_dim == 1
    y_obs, y_rep_all = points.y[task, point], torch.cat(y_rep).reshape(*phi.shape[:2], len(task), *y.shape[2:])
    out.add("observed_data", "y", y_obs[..., 0] if squeeze else y_obs)
    out.add("log_likelihood", "y", torch.cat(log_lik).reshape(*phi.shape[:2], len(task)))
    out.add("posterior_predictive", "y", y_rep_all[..., 0] if squeeze else y_rep_all)
    out.add("constant_data", "x", points.x[task, point])
    out.dims.update(y=["obs"] if squeeze or points.y.dim() == 2 else ["obs", "y_dim"], x=["obs", "x_dim"])
    out.coords["obs"] = list(range(len(task)))
    out.obs_coords = {"task": np.asarray(names, dtype=object)[task.cpu().numpy()], "point": point.cpu().numpy()}


# ---------------------------------------------------------------------------------------------- learned priors
def _prior_inference_data(prior: LearnedPrior, num_samples: int, seed: int, data: Any) -> az.InferenceData:
    theta_draws = getattr(prior, "theta_draws", None)
    training = _training_posterior(prior)
    if training is not None:
        points = training.support.all_points() if isinstance(data, str) and data == "support" else data
        out = _posterior_groups(training, points, num_samples, seed, theta_draws)
    else:
        out = _Groups()
        for site, value in (theta_draws or {}).items():
            out.add("posterior", site, value)
    point = {} if theta_draws or prior.guide is None else dict(prior.guide.theta_point())
    point.update(_pyro_params(prior.model))
    for name, value in point.items():
        if value.numel() <= MAX_THETA_SIZE:
            out.add("constant_data", f"theta_{name}", value)
    method = f"fit_prior:{prior.method}" + (f"/{prior.guide.kind}" if prior.guide is not None else "")
    return _build(out, _attrs(prior.model, method))


def _training_posterior(prior: LearnedPrior) -> TaskPosterior | None:
    try:
        return prior.training_posterior
    except ValueError:
        if prior.training_tasks is None:  # loaded from a file without its training tasks
            return None
        raise


def _pyro_params(model: HierarchicalModel) -> dict[str, Tensor]:
    """The constrained values of ``model``'s ``PyroParam`` attributes (Pyro stores ``<name>_unconstrained``)."""
    values = {}
    for full_name, _ in model.named_parameters():
        if full_name.endswith("_unconstrained"):
            owner, _, attribute = full_name.removesuffix("_unconstrained").rpartition(".")
            with torch.no_grad():
                values[full_name.removesuffix("_unconstrained")] = getattr(model.get_submodule(owner), attribute).detach()
    return values


# ---------------------------------------------------------------------------------------------- assembly
def _attrs(model: HierarchicalModel, method: str) -> dict[str, str]:
    return {
        "model": type(model).__name__, "method": method, "bayesmeta_version": bayesmeta.__version__,
        "inference_library": "pyro", "inference_library_version": pyro.__version__,
    }


def _build(out: _Groups, attrs: dict[str, str]) -> az.InferenceData:
    group_attrs = {f"{group}_attrs": dict(attrs) for group in out.groups}
    idata = az.from_dict(**out.groups, coords=out.coords, dims=out.dims, attrs=dict(attrs), **group_attrs)
    idata.map(_tidy, groups=list(out.groups), inplace=True, out=out)
    return idata


def _tidy(ds: Any, out: _Groups) -> Any:
    """Attach the per-point coords ``task``, ``point`` to ``obs``; give 0-d θ back its 0 dims."""
    if "obs" in ds.dims:
        ds = ds.assign_coords({name: ("obs", values) for name, values in out.obs_coords.items()})
    for name in sorted(out.scalars & set(ds.data_vars)):
        ds = ds.assign({name: ds[name].squeeze(drop=True)}).drop_vars(f"{name}_dim_0")
    return ds

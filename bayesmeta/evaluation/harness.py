r"""One harness for every learner: adapt from k support points, score on the query points, one table.

A learner is anything with ``adapt(support) -> predictor`` whose ``predictor.predict(x)`` returns a
:class:`~bayesmeta.Prediction` — a :class:`~bayesmeta.LearnedPrior` (amortized by default; wrap it with
:func:`adapting` for another method) and every baseline in :mod:`bayesmeta.baselines` alike. All go through
the same code path here, on the same tasks and the same query points.
"""
from __future__ import annotations

import inspect
import time
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import torch
from torch import Tensor

from bayesmeta.evaluation.metrics import (
    accuracy,
    categorical_nll,
    expected_calibration_error,
    gaussian_nll,
    interval_coverage,
    mse,
    summarize,
)
from bayesmeta.inference.posterior import Prediction
from bayesmeta.tasks.taskset import TaskData, TaskSet

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure

__all__ = ["benchmark", "adapting", "bayes_floor", "plot_benchmark", "FLOOR"]

#: The method name of the Bayes-optimal row.
FLOOR = "Bayes-optimal"
_Z90 = 1.6448536269514722
#: Axis labels of the scored columns (regression: mse, nll, coverage; classification: accuracy, nll, ece).
_YLABELS = {"mse": "query MSE", "nll": "NLL per point (nats)", "coverage": "interval coverage",
            "accuracy": "query accuracy", "ece": "expected calibration error"}


class adapting:  # noqa: N801 - reads as a phrase: adapting(prior, method="svi")
    """A learned prior adapted with a given method and options: ``adapting(prior, method="svi", steps=200)``.

    >>> adapting("a prior", method="nuts", num_samples=200)
    adapting(method='nuts', num_samples=200)
    """

    def __init__(self, prior: Any, method: str = "amortized", **options: Any) -> None:
        self.prior, self.method, self.options = prior, method, options

    @property
    def config(self) -> dict[str, Any]:
        return getattr(self.prior, "config", {})

    def adapt(self, support: TaskData) -> Any:
        return self.prior.adapt(support, method=self.method, **self.options)

    def __repr__(self) -> str:
        extra = "".join(f", {k}={v!r}" for k, v in self.options.items())
        return f"adapting(method={self.method!r}{extra})"


def bayes_floor(family: Any) -> Callable[[TaskData, Tensor, dict | None], Prediction] | None:
    """The Bayes-optimal predictive of a synthetic family, where bayesmeta has one (``None`` otherwise).

    ``Sinusoid``: the exact prior with the posterior on a 400 x 400 grid; ``GPFunctions``: the exact GP posterior
    with each task's true kernel (it needs the tasks' ``params``).
    """
    from bayesmeta.tasks import families, oracle

    if isinstance(family, families.Sinusoid):
        return lambda support, x, params: oracle.sinusoid_bayes_predict(family, support, x, grid=(400, 400))
    if isinstance(family, families.GPFunctions):
        return lambda support, x, params: oracle.gp_posterior_predict(family, support, x, params["lengthscale"],
                                                                      params["signal_scale"])
    return None


def _check(learners: Any, tasks: Any, shots: Any) -> list[int]:
    if not isinstance(learners, Mapping) or not learners:
        raise TypeError(f"learners: expected a non-empty dict name -> learner, got {type(learners).__name__}")
    for name, learner in learners.items():
        if not callable(getattr(learner, "adapt", None)):
            raise TypeError(f"learners[{name!r}]: expected an object with adapt(support), got {type(learner).__name__}")
    if not isinstance(tasks, TaskSet):
        raise TypeError(f"tasks: expected a bayesmeta.TaskSet, got {type(tasks).__name__}")
    if tasks.query.num_points == 0:
        raise ValueError("tasks: expected query points to score on, got a TaskSet without any")
    shots = [shots] if isinstance(shots, int) else list(shots)
    most = int(tasks.support.counts.min())
    if not shots or any(isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= most for k in shots):
        raise ValueError(f"shots: expected ints between 1 and {most} (the smallest support set), got {shots}")
    return shots


def _predict(predictor: Any, x: Tensor, seed: int) -> Prediction:
    predict = predictor.predict
    if "seed" in inspect.signature(predict).parameters:
        return predict(x, seed=seed)
    return predict(x)


def _class_scores(pred: Prediction, query: TaskData, name: str) -> dict[str, tuple[float, float] | None]:
    if pred.probs is None:
        raise ValueError(f"benchmark: {name!r} returned no class probabilities on classification tasks; its "
                         f"predict(x) must return Prediction(mean=probs, probs=probs), probs num_tasks x "
                         f"num_points x num_classes")
    labels, mask = query.y, query.mask
    probs = pred.probs.to(labels.device)
    return {"accuracy": summarize(accuracy(probs, labels, mask)),
            "nll": summarize(categorical_nll(probs, labels, mask)),
            "ece": summarize(expected_calibration_error(probs, labels, mask))}


def _scores(pred: Prediction, query: TaskData, level: float, name: str) -> dict[str, tuple[float, float] | None]:
    if query.is_classification:
        return _class_scores(pred, query, name)
    if pred.probs is not None:
        raise ValueError(f"benchmark: {name!r} returned class probabilities (Prediction.probs) on regression tasks; "
                         f"score classifiers on tasks with integer labels")
    y, mask = query.y, query.mask
    mean = pred.mean.to(y.device, y.dtype)
    out: dict[str, tuple[float, float] | None] = {"mse": summarize(mse(mean, y, mask)), "nll": None, "coverage": None}
    if pred.std is not None:
        std = pred.std.to(y.device, y.dtype)
        if bool((std > 0).all()):
            out["nll"] = summarize(gaussian_nll(mean, std, y, mask))
        z = torch.distributions.Normal(0.0, 1.0).icdf(torch.tensor(0.5 + level / 2)).item()
        out["coverage"] = summarize(interval_coverage(mean - z * std, mean + z * std, y, mask))
    return out


def benchmark(
    learners: Mapping[str, Any],
    tasks: TaskSet,
    shots: int | Sequence[int] = (1, 2, 5, 10),
    floor: Any = None,
    level: float = 0.9,
    seed: int = 0,
    progress: bool = True,
) -> pd.DataFrame:
    r"""Score every learner on the same tasks at each number of shots: one row per (method, shots).

    For each ``k`` in ``shots`` every learner adapts to ``tasks.support.head(k)`` (the first ``k`` support
    points of each task) and predicts the query points; the table holds the mean over tasks and its standard
    error of the query MSE, the Gaussian NLL per point and the coverage of the central ``level`` interval
    (mean :math:`\pm z\,`std; both ``NaN`` for a learner without a predictive std), the adaptation wall time
    per task (the ``adapt`` call, all tasks at once, divided by their number), the meta-training seconds
    (``learner.config["seconds"]`` where it records one) and the number of tasks.

    On classification tasks (integer query labels) every prediction must carry ``probs``, and the scored
    columns are instead the accuracy, the categorical NLL per point (nats) and the top-label expected
    calibration error with 15 bins (:func:`~bayesmeta.evaluation.accuracy`,
    :func:`~bayesmeta.evaluation.categorical_nll`, :func:`~bayesmeta.evaluation.expected_calibration_error`).

    Args:
        learners: name -> learner (``LearnedPrior``, ``adapting(prior, method=...)``, any baseline).
        tasks: held-out tasks with at least ``max(shots)`` support points and some query points each.
        shots: support-set sizes.
        floor: a task family (:func:`bayes_floor` finds its Bayes-optimal predictor) or a callable
            ``floor(support, query_x, params) -> Prediction``; adds a ``"Bayes-optimal"`` row per ``k``.
        level: interval probability for the coverage column.
        seed: passed to predictors that take one.
        progress: print one line per (method, shots).

    Returns:
        A ``pandas.DataFrame`` with columns ``method, shots, mse, mse_se, nll, nll_se, coverage, coverage_se,
        adapt_s_per_task, meta_train_s, tasks``; for classification tasks ``method, shots, accuracy,
        accuracy_se, nll, nll_se, ece, ece_se, adapt_s_per_task, meta_train_s, tasks``.

    >>> import bayesmeta as bm
    >>> from bayesmeta.models import HierarchicalLinearRegression
    >>> family = bm.tasks.LinearGaussian(x_dim=1, seed=0)
    >>> prior = bm.fit_prior(HierarchicalLinearRegression(x_dim=1), family.sample(50, 5, 5, seed=0), guide="exact",
    ...                      steps=20, progress=False)
    >>> table = benchmark({"exact": adapting(prior, method="exact")}, family.sample(20, 5, 10, seed=1), shots=(1, 5),
    ...                   progress=False)
    >>> table[["method", "shots"]].values.tolist()
    [['exact', 1], ['exact', 5]]
    """
    import pandas as pd

    shots = _check(learners, tasks, shots)
    if not 0 < level < 1:
        raise ValueError(f"level: expected a probability in (0, 1), got {level!r}")
    floor_fn = floor if callable(floor) or floor is None else bayes_floor(floor)
    if floor is not None and floor_fn is None:
        raise ValueError(f"floor: expected a callable or a family with a known Bayes-optimal predictor "
                         f"(Sinusoid, GPFunctions), got {type(floor).__name__}")
    rows = []
    entries = ([(FLOOR, None)] if floor_fn is not None else []) + list(learners.items())
    for name, learner in entries:
        meta_seconds = getattr(learner, "config", {}).get("seconds") if learner is not None else None
        for k in shots:
            support = tasks.support.head(k)
            start = time.perf_counter()
            if learner is None:
                pred, seconds = floor_fn(support, tasks.query.x, tasks.params), time.perf_counter() - start
            else:
                predictor = learner.adapt(support)
                seconds = time.perf_counter() - start
                with torch.no_grad():
                    pred = _predict(predictor, tasks.query.x, seed)
            if not torch.isfinite(pred.mean).all():
                raise FloatingPointError(f"benchmark: {name!r} predicted NaN/Inf at {k} shots")
            scores = _scores(pred, tasks.query, level, name)
            row = {"method": name, "shots": k}
            for metric, value in scores.items():
                row[metric], row[f"{metric}_se"] = value if value is not None else (float("nan"), float("nan"))
            row.update(adapt_s_per_task=seconds / len(tasks), meta_train_s=meta_seconds, tasks=len(tasks))
            rows.append(row)
            if progress:
                first = next(iter(scores))  # mse, or accuracy for classification
                print(f"benchmark: {name} at {k} shots: {first.upper() if first == 'mse' else first} "
                      f"{row[first]:.4g} ± {row[f'{first}_se']:.2g}", flush=True)
    return pd.DataFrame(rows)


def plot_benchmark(table: pd.DataFrame, metric: str = "mse", ax: Any = None) -> Figure:
    """``metric`` against shots, log scale, one line per method (± 2 standard errors), the Bayes-optimal floor
    dashed in black. Returns the matplotlib Figure (Agg canvas; nothing global)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if metric not in _YLABELS or metric not in table.columns:
        present = [m for m in _YLABELS if m in table.columns]
        raise ValueError(f"metric: expected one of the table's scores {present}, got {metric!r}")
    if ax is None:
        figure = Figure(figsize=(5.5, 3.8), layout="constrained")
        FigureCanvasAgg(figure)
        ax = figure.subplots()
    figure = ax.figure
    for name, rows in table.groupby("method", sort=False):
        rows = rows.sort_values("shots")
        if rows[metric].isna().all():
            continue
        style = dict(color="black", ls="--") if name == FLOOR else {}
        ax.errorbar(rows["shots"], rows[metric], yerr=2 * rows[f"{metric}_se"], marker="o", ms=4, capsize=3,
                    label=name, **style)
    if metric == "mse":
        ax.set_yscale("log")
    ax.set_xscale("log")
    ax.set_xticks(sorted(table["shots"].unique()), labels=[str(k) for k in sorted(table["shots"].unique())])
    ax.set_xlabel("shots (support points per task)")
    ax.set_ylabel(_YLABELS[metric])
    ax.legend(fontsize="small")
    return figure

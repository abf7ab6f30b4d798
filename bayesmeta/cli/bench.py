r"""``bayesmeta benchmark``: the Bayesian learners and the mechanistic baselines on the same tasks, one table.

Every learner meta-trains on the same training tasks, adapts to the same held-out support sets of 1, 2, 5
and 10 points and is scored on the same query points by :func:`bayesmeta.evaluation.benchmark`, with the
family's Bayes-optimal predictor as the floor. Writes ``results.csv`` and ``mse.png`` (and ``nll.png``,
``coverage.png``) to a run folder.
"""
from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bayesmeta._files import atomic_write
from bayesmeta.cli._common import check_device, torch_threads

__all__ = ["BUDGETS", "METHODS", "FAMILIES", "run_benchmark", "make_learners"]

FAMILIES = ("sinusoid", "gp")


@dataclass(frozen=True)
class Budget:
    """How much each learner trains. ``paper``: the published protocols' budgets (MAML: 70,000 iterations of
    meta-batch 25, Finn et al. 2017; neural processes: tens of thousands of steps); hours on a CPU."""

    train_tasks: int
    test_tasks: int
    np_steps: int
    maml_steps: int
    finetune_steps: int
    blackbox_steps: int
    scratch_steps: int


BUDGETS = {
    "quick": Budget(train_tasks=500, test_tasks=50, np_steps=200, maml_steps=200, finetune_steps=200,
                    blackbox_steps=200, scratch_steps=50),
    "paper": Budget(train_tasks=20000, test_tasks=1000, np_steps=30000, maml_steps=70000, finetune_steps=30000,
                    blackbox_steps=30000, scratch_steps=100),
}


def _fit_np(train: Any, budget: Budget, device: str, seed: int) -> Any:
    import bayesmeta as bm
    from bayesmeta.models import NeuralProcessModel

    print("meta-training np (NeuralProcessModel, pooled guide) ...", flush=True)
    return bm.fit_prior(NeuralProcessModel(), train, guide="pooled", steps=budget.np_steps, batch_tasks=64, lr=1e-3,
                        kl_anneal_steps=budget.np_steps // 3, random_subsets=True, device=device, seed=seed,
                        progress=True)


def _fit_baseline(name: str, train: Any, budget: Budget, device: str, seed: int) -> Any:
    from bayesmeta import baselines

    learner, steps, batch = {
        "maml": (baselines.MAML(), budget.maml_steps, 25),
        "finetune": (baselines.FineTune(), budget.finetune_steps, 25),
        "blackbox": (baselines.BlackBox(), budget.blackbox_steps, 64),
        "scratch": (baselines.TrainFromScratch(steps=budget.scratch_steps), 1, 1),
    }[name]
    print(f"meta-training {name} ...", flush=True)
    return learner.meta_fit(train, steps=steps, batch_tasks=batch, lr=1e-3, device=device, seed=seed, progress=True)


#: ``--methods`` names. ``np``: NeuralProcessModel adapted by its amortized guide; ``np-importance``: the same
#: fitted prior adapted by importance sampling; the rest are :mod:`bayesmeta.baselines` (MAML, fine-tuning, a
#: conditional neural process, a network trained from scratch on each support set).
METHODS = ("np", "np-importance", "maml", "finetune", "blackbox", "scratch")


def make_learners(methods: list[str], train: Any, budget: Budget, device: str, seed: int) -> dict[str, Any]:
    """Meta-train each method on ``train``; ``np`` and ``np-importance`` share one fitted prior."""
    import bayesmeta as bm

    learners, prior = {}, None
    for name in methods:
        if name.startswith("np"):
            prior = prior or _fit_np(train, budget, device, seed)
            learners[name] = bm.evaluation.adapting(prior, method="importance") if name == "np-importance" else prior
        else:
            learners[name] = _fit_baseline(name, train, budget, device, seed)
    return learners


def run_benchmark(args: argparse.Namespace) -> int:
    """Fit every method, score it, print the table and write the run folder; see ``bayesmeta benchmark --help``."""
    check_device(args.device)
    budget = BUDGETS[args.budget]
    out = Path(args.out) if args.out is not None else Path("runs") / f"benchmark-{time.strftime('%Y%m%d-%H%M%S')}"
    out.mkdir(parents=True, exist_ok=True)
    with torch_threads(args.threads):
        return _benchmark(args, budget, out)


def _benchmark(args: argparse.Namespace, budget: Budget, out: Path) -> int:
    import bayesmeta as bm

    family = bm.tasks.Sinusoid() if args.family == "sinusoid" else bm.tasks.GPFunctions()
    shots = args.shots
    train = family.sample(num_tasks=budget.train_tasks, support=10, query=10, seed=args.seed)
    test = family.sample(num_tasks=budget.test_tasks, support=max(shots), query=100, seed=args.seed + 1)
    start = time.perf_counter()
    learners = make_learners(args.methods, train, budget, args.device, args.seed)
    table = bm.evaluation.benchmark(learners, test.to(args.device), shots=shots, floor=family, seed=args.seed,
                                    progress=False)
    print(f"\n{args.family} tasks, budget {args.budget!r}: {len(train)} training tasks, {len(test)} held-out tasks "
          f"x 100 query points; mean ± standard error over tasks\n")
    print(readable(table).to_string(index=False))
    text = table.to_csv(index=False)
    atomic_write(out / "results.csv", lambda f: f.write(text.encode()))
    for metric in ("mse", "nll", "coverage"):
        figure = bm.evaluation.plot_benchmark(table, metric=metric)
        figure.axes[0].set_title(f"{args.family}, budget {args.budget}", fontsize="medium")
        bm.evaluation.save_figure(figure, out / f"{metric}.png", dpi=110)
    print(f"\nwrote {out / 'results.csv'} and mse.png, nll.png, coverage.png in {time.perf_counter() - start:.0f} s")
    return 0


def readable(table: Any) -> Any:
    """One row per (shots, method): ``value ± se`` strings, '–' where a learner has no predictive std."""
    def pm(value: float, se: float) -> str:
        return "–" if value != value else f"{value:.3g} ± {se:.2g}"

    out = table.sort_values(["shots"], kind="stable")
    return out.assign(**{
        "query MSE": [pm(v, s) for v, s in zip(out["mse"], out["mse_se"])],
        "NLL": [pm(v, s) for v, s in zip(out["nll"], out["nll_se"])],
        "90% coverage": [pm(v, s) for v, s in zip(out["coverage"], out["coverage_se"])],
        "adapt ms/task": [f"{1000 * v:.3g}" for v in out["adapt_s_per_task"]],
    })[["shots", "method", "query MSE", "NLL", "90% coverage", "adapt ms/task"]]

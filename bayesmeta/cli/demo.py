r"""``bayesmeta demo``: the whole library on hierarchical linear regression, where the exact answer is known.

>>> from bayesmeta.cli import build_parser
>>> settings = DemoSettings.from_args(build_parser().parse_args(["demo", "--quick", "--out", "runs/smoke"]))
>>> settings.steps, settings.tasks, settings.svi_steps, settings.nuts_samples, str(settings.out)
(200, 200, 50, 20, 'runs/smoke')
"""
from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from bayesmeta._files import atomic_write
from bayesmeta.cli._common import check_device, torch_threads

SHOTS = (1, 3, 10)
METHODS = ("amortized", "svi", "exact", "nuts")
HELD_OUT_TASKS = 200
NUTS_TASKS = 20
X_DIM = 3
#: ``--quick``: a smoke run in seconds (explicit --steps / --tasks still win).
QUICK = {"steps": 200, "tasks": 200, "svi_steps": 50, "nuts_warmup": 20, "nuts_samples": 20}


# ---------------------------------------------------------------------- settings
@dataclass(frozen=True)
class DemoSettings:
    """Everything the demo does, resolved from the command line (``--quick`` presets, explicit flags win)."""

    steps: int
    tasks: int
    seed: int
    device: str
    out: Path
    threads: int = 1
    svi_steps: int = 500
    nuts_warmup: int = 300
    nuts_samples: int = 300
    predict_samples: int = 200
    held_out: int = HELD_OUT_TASKS
    nuts_tasks: int = NUTS_TASKS
    quick: bool = False

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> DemoSettings:
        quick = QUICK if args.quick else {}
        steps = args.steps if args.steps is not None else quick.get("steps", 3000)
        tasks = args.tasks if args.tasks is not None else quick.get("tasks", 2000)
        out = Path(args.out) if args.out is not None else Path("runs") / f"demo-{time.strftime('%Y%m%d-%H%M%S')}"
        extra = {k: v for k, v in quick.items() if k not in ("steps", "tasks")}
        return cls(steps=steps, tasks=tasks, seed=args.seed, device=args.device, out=out, threads=args.threads,
                   quick=args.quick, **extra)



# ---------------------------------------------------------------------- the demo
def run_demo(args: argparse.Namespace) -> int:
    """Fit, compare, write; see ``bayesmeta demo --help``."""
    settings = DemoSettings.from_args(args)
    check_device(settings.device)
    settings.out.mkdir(parents=True, exist_ok=True)
    with torch_threads(settings.threads):
        return _demo(settings)



def _demo(settings: DemoSettings) -> int:
    import bayesmeta as bm
    from bayesmeta.models import HierarchicalLinearRegression

    print(f"bayesmeta demo: hierarchical linear regression, x_dim={X_DIM}, seed={settings.seed}, "
          f"device={settings.device}, threads={settings.threads}{' (quick smoke run)' if settings.quick else ''}")

    family = bm.tasks.LinearGaussian(x_dim=X_DIM, seed=settings.seed)
    train = family.sample(num_tasks=settings.tasks, support=10, query=10, seed=settings.seed)
    test = family.sample(num_tasks=settings.held_out, support=max(SHOTS), query=50, seed=settings.seed + 1)
    print(f"\n[1/3] fit_prior: {settings.tasks} training tasks (10 support + 10 query points), {settings.steps} steps")
    model = HierarchicalLinearRegression(x_dim=X_DIM)
    prior = bm.fit_prior(model, train, steps=settings.steps, batch_tasks=64, lr=1e-2,
                         device=settings.device, seed=settings.seed, progress=True)
    print(f"fitted in {prior.config['seconds']:.1f} s\n\nlearned θ vs the true θ of the task family:")
    theta = theta_table(family.theta, model)
    print(theta.to_string(float_format=lambda v: f"{v:.3f}"))

    print(f"\n[2/3] adapt: {settings.held_out} held-out tasks at {SHOTS} shots, 50 query points each")
    rows, shown = compare_methods(prior, test, settings)
    table = format_table(rows)
    print("\n" + table.to_string(index=False))
    noise_var = float(family.theta["noise_scale"]) ** 2
    print(f"\nnuts runs on the first {settings.nuts_tasks} of the {settings.held_out} tasks only (it is slow); "
          f"the exact row under it scores the same {settings.nuts_tasks} tasks.\n"
          "KL is KL(q ‖ exact posterior) in nats per task ('–': nuts gives draws, not a density).\n"
          f"No method can reach an expected MSE below the noise variance σ² = {noise_var:.3f}.")

    print(f"\n[3/3] writing to {settings.out}/")
    written = write_outputs(settings, prior, family, model, rows, shown)
    for path in written:
        print(f"  {path}")
    return 0


def theta_table(true_theta: dict[str, torch.Tensor], model: Any) -> Any:
    """``pandas.DataFrame``: one row per coordinate of θ, columns true, learned, learned − true."""
    import pandas as pd

    records = []
    for name in ("prior_loc", "prior_scale", "noise_scale"):
        true = true_theta[name].detach().cpu().double().reshape(-1)
        learned = getattr(model, name).detach().cpu().double().reshape(-1)
        labels = [f"{name}[{phi}]" for phi in model.phi_names] if true.numel() > 1 else [name]
        for label, t, v in zip(labels, true.tolist(), learned.tolist()):
            records.append({"θ": label, "true": t, "learned": v, "learned − true": v - t})
    return pd.DataFrame.from_records(records).set_index("θ")


def compare_methods(prior: Any, test: Any, settings: DemoSettings) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Every method at every shot count: a list of metric rows, and the 3-shot amortized prediction to plot.

    NUTS runs on the first ``settings.nuts_tasks`` tasks only; ``exact`` is scored a second time on those
    same tasks, so that its row next to NUTS compares like with like.
    """
    rows: list[dict[str, Any]] = []
    shown: dict[str, Any] = {}
    options = {
        "svi": {"steps": settings.svi_steps, "seed": settings.seed},
        "nuts": {"num_samples": settings.nuts_samples, "warmup_steps": settings.nuts_warmup, "seed": settings.seed},
    }
    few = slice(0, settings.nuts_tasks)
    runs = [("amortized", slice(None)), ("svi", slice(None)), ("exact", slice(None)), ("nuts", few), ("exact", few)]
    for shots in SHOTS:
        support = test.support.head(shots)
        exact = prior.adapt(support, method="exact").distribution  # the reference for every Gaussian q
        for method, subset in runs:
            start = time.perf_counter()
            post = prior.adapt(support[subset], method=method, **options.get(method, {}))
            pred = post.predict(test.query.x[subset], num_samples=settings.predict_samples, seed=settings.seed)
            seconds = time.perf_counter() - start
            if post.distribution is None:  # nuts: draws, not a density, so no KL
                reference = None
            else:  # exact on the nuts tasks is its own reference
                reference = exact if len(post) == len(test) else post.distribution
            query_y, query_mask = test.query.y[subset], test.query.mask[subset]
            rows.append(score(method, shots, pred, query_y, query_mask, post, reference, seconds))
            print(f"  {shots:>2}-shot  {method:<9}  {len(post):>3} tasks  {seconds:6.1f} s", flush=True)
            if shots == 3 and method == "amortized":
                shown = {"pred": pred, "y": test.query.y}
    return rows, shown


def score(method: str, shots: int, pred: Any, y: torch.Tensor, mask: torch.Tensor, post: Any,
          exact: Any, seconds: float) -> dict[str, Any]:
    """One row of the comparison: each metric's mean over tasks and standard error."""
    from torch.distributions import kl_divergence

    from bayesmeta.evaluation import gaussian_nll, interval_coverage, mse, summarize

    y, mask = y.to(pred.mean.device), mask.to(pred.mean.device)
    lower, upper = pred.interval(0.9)
    row: dict[str, Any] = {"method": method, "shots": shots, "tasks": len(post)}
    metrics = {
        "mse": mse(pred.mean, y, mask),
        "nll": gaussian_nll(pred.mean, pred.std, y, mask),
        "coverage90": interval_coverage(lower, upper, y, mask),
        # KL >= 0: the clamp removes float round-off only (the exact row's KL with itself is about -1e-8)
        "kl_to_exact": None if exact is None else kl_divergence(post.distribution, exact).clamp(min=0),
    }
    for name, values in metrics.items():
        mean, se = (None, None) if values is None else summarize(values)
        row[name], row[f"{name}_se"] = mean, (None if se is None or math.isnan(se) else se)
    row["seconds"] = seconds
    return row


def format_table(rows: list[dict[str, Any]]) -> Any:
    """The printed comparison: ``value ± se`` strings, '–' where a metric does not apply."""
    import pandas as pd

    def pm(row: dict[str, Any], name: str, spec: str = ".3f") -> str:
        if row[name] is None:
            return "–"
        se = row[f"{name}_se"]
        return f"{row[name]:{spec}} ± {se:{spec}}" if se is not None else f"{row[name]:{spec}}"

    return pd.DataFrame.from_records([
        {
            "method": r["method"], "shots": r["shots"], "tasks": r["tasks"], "query MSE": pm(r, "mse"),
            "NLL": pm(r, "nll"), "90% coverage": pm(r, "coverage90"), "KL to exact": pm(r, "kl_to_exact", ".3g"),
            "seconds": f"{r['seconds']:.2f}",
        }
        for r in rows
    ])


# ---------------------------------------------------------------------- outputs
def write_outputs(settings: DemoSettings, prior: Any, family: Any, model: Any, rows: list[dict[str, Any]],
                  shown: dict[str, Any]) -> list[Path]:
    """The saved prior, ``metrics.csv``, ``metrics.json`` and ``demo.png`` in ``settings.out``."""
    import pandas as pd

    out = settings.out
    paths = [out / "linear.prior", out / "metrics.csv", out / "metrics.json", out / "demo.png"]
    prior.save(paths[0])
    csv = pd.DataFrame.from_records(rows).to_csv(index=False)
    atomic_write(paths[1], lambda f: f.write(csv.encode()))
    names = ("prior_loc", "prior_scale", "noise_scale")
    theta = {
        "true": {name: family.theta[name].detach().cpu().tolist() for name in names},
        "learned": {name: getattr(model, name).detach().cpu().tolist() for name in names},
    }
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(settings).items()}
    document = {"config": config, "phi_names": list(model.phi_names), "theta": theta, "rows": rows}
    text = json.dumps(document, indent=2, ensure_ascii=False, allow_nan=False) + "\n"
    atomic_write(paths[2], lambda f: f.write(text.encode()))
    figure = demo_figure(prior.history["elbo"], settings.tasks, shown)
    atomic_write(paths[3], lambda f: figure.savefig(f, format="png", dpi=110))
    return paths


def demo_figure(elbo: list[float], num_tasks: int, shown: dict[str, Any], num_shown: int = 4) -> Any:
    """ELBO per task over training, and predicted vs true query ``y`` (± std) of a few tasks at 3 shots.

    Uses the Agg canvas on a bare ``Figure``: no pyplot, no global figure state, nothing to close.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(10, 4), layout="constrained")
    FigureCanvasAgg(figure)
    left, right = figure.subplots(1, 2)
    left.plot([v / num_tasks for v in elbo], lw=0.8)
    left.set(xlabel="step", ylabel="ELBO per task (nats)", title="fit_prior: training objective")
    pred, y = shown["pred"], shown["y"]
    mean, std, y = (t[:num_shown, :20, 0].detach().cpu() for t in (pred.mean, pred.std, y))
    for task in range(mean.shape[0]):
        right.errorbar(y[task], mean[task], yerr=std[task], fmt="o", ms=3, capsize=2, label=f"task {task}")
    low, high = float(min(y.min(), mean.min())), float(max(y.max(), mean.max()))
    right.plot([low, high], [low, high], color="grey", lw=0.8, ls="--")
    right.set(xlabel="true query y", ylabel="predicted y (mean ± std)",
              title="held-out tasks, 3 shots, amortized posterior")
    right.legend(fontsize="small")
    return figure


r"""The ``bayesmeta`` command.

``bayesmeta demo`` walks through the whole library on hierarchical linear regression, the one family
where the right answer is known in closed form: it samples tasks from a known
:math:`\theta`, learns :math:`\theta` back with :func:`bayesmeta.fit_prior`, adapts held-out tasks
with every inference method and scores each against the data and against the exact posterior.

``bayesmeta fit`` and ``bayesmeta adapt`` do the same on the user's own long-format CSV tables (one row
per point, a column naming its task): ``fit`` learns a prior with :func:`bayesmeta.fit_prior` and
saves it with the column names; ``adapt`` conditions it on new tasks' rows and writes predictions,
with 90% intervals, for the rows of a second table. :data:`MODELS` maps ``--model`` names to models.

>>> settings = DemoSettings.from_args(build_parser().parse_args(["demo", "--quick", "--out", "runs/smoke"]))
>>> settings.steps, settings.tasks, settings.svi_steps, settings.nuts_samples, str(settings.out)
(200, 200, 50, 20, 'runs/smoke')
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch

from bayesmeta._files import atomic_write

__all__ = ["main", "build_parser"]

PROG = "bayesmeta"
SHOTS = (1, 3, 10)
METHODS = ("amortized", "svi", "exact", "nuts")
HELD_OUT_TASKS = 200
NUTS_TASKS = 20
X_DIM = 3
#: ``--quick``: a smoke run in seconds (explicit --steps / --tasks still win).
QUICK = {"steps": 200, "tasks": 200, "svi_steps": 50, "nuts_warmup": 20, "nuts_samples": 20}
#: ``bayesmeta adapt`` adds these columns to the rows of GRID.csv.
PREDICTION_COLUMNS = ("mean", "std", "lower90", "upper90")
INTERVAL = 0.9

TOP_EXAMPLES = """\
examples:
  bayesmeta demo --quick
      the whole library on synthetic tasks, in seconds
  bayesmeta fit firms.csv --task-col firm --x value,capital --y invest --out firms.prior
      learn a prior from a table of many tasks (one row per point, a column naming its task)
  bayesmeta adapt firms.prior new_firm.csv --predict grid.csv --out predictions.csv
      adapt it to new tasks from their rows; predict at grid.csv's inputs with 90% intervals

Run 'bayesmeta COMMAND --help' for a command's options.
"""

FIT_DESCRIPTION = """\
Learn a prior over task parameters from a long-format CSV table: every row is one labelled point
(x columns and a y column), and a task column says which task the row belongs to. Every row is
used for training. Prints the tasks and points read, the learned prior θ (for --model linear: the
mean and spread of each coefficient across tasks, and the noise) and the final ELBO, then saves the
prior, with the column names, to --out for 'bayesmeta adapt'.

θ is learned by Adam, which moves it by at most about 8 units with the default --lr and --steps:
columns in units of order 1-10 fit best; rescale large ones (or raise --lr/--steps).
"""

FIT_EXAMPLE = """\
example (a panel of firms: investment against firm value and capital stock, one row per year):
  $ head -3 firms.csv
  firm,year,invest,value,capital
  GM,1935,3.18,3.08,0.03
  GM,1936,3.92,4.66,0.53
  $ bayesmeta fit firms.csv --task-col firm --x value,capital --y invest --out firms.prior
"""

ADAPT_DESCRIPTION = f"""\
Adapt a prior saved by 'bayesmeta fit' to new tasks and predict. NEW.csv holds the new tasks'
labelled rows (the support: same task, x and y columns as at fit time; a few rows per task are
enough). GRID.csv holds the inputs to predict at: the task column and the x columns, one row per
prediction, for any of the tasks in NEW.csv. Writes --out: GRID.csv's rows in their order, every
column kept, plus {', '.join(PREDICTION_COLUMNS)}: the posterior predictive mean and standard
deviation of y and a central 90% interval (noise included). --task-col, --x and --y default to
the columns the prior was fitted on.
"""

ADAPT_EXAMPLE = """\
example (three labelled years of a new firm, predictions at two inputs):
  $ cat new_firm.csv                      $ cat grid.csv
  firm,invest,value,capital               firm,value,capital
  ACME,2.10,2.05,0.12                     ACME,2.0,0.1
  ACME,2.70,2.41,0.14                     ACME,4.0,0.1
  ACME,3.00,2.79,0.15
  $ bayesmeta adapt firms.prior new_firm.csv --predict grid.csv --out predictions.csv --method exact
"""


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


def _int_at_least(low: int, what: str) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"expected {what}, got {value}")
        return value

    return parse


_positive_int = _int_at_least(1, "a positive integer")
_seed = _int_at_least(0, "a non-negative integer")


def _device(text: str) -> str:
    try:
        torch.device(text)
    except RuntimeError:
        raise argparse.ArgumentTypeError(f"expected a torch device such as cpu, cuda or cuda:1, got {text!r}") from None
    return text


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def _column_names(text: str) -> list[str]:
    """``--x value,capital`` -> ``['value', 'capital']``.

    >>> _column_names(" value, capital ")
    ['value', 'capital']
    """
    names = [name.strip() for name in text.split(",")]
    if not all(names):
        raise argparse.ArgumentTypeError(f"expected comma-separated column names, got {text!r}")
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise argparse.ArgumentTypeError(f"expected each column once, got {', '.join(repeated)} more than once")
    return names


# ---------------------------------------------------------------------- models for `bayesmeta fit`
@dataclass(frozen=True)
class ModelChoice:
    """One ``bayesmeta fit --model``: how to build it for a table with ``x_dim`` input columns.

    Attributes:
        build: ``x_dim -> HierarchicalModel``.
        summary: one line for ``--help``.
        x_dim: the number of ``--x`` columns the model takes (``None``: any number).
        labels: the names of φ's coordinates given the ``--x`` column names (``None``: ``model.phi_names``).
    """

    build: Callable[[int], Any]
    summary: str
    x_dim: int | None = None
    labels: Callable[[list[str]], list[str]] | None = None

    def check_x(self, name: str, x: list[str]) -> None:
        if self.x_dim is not None and len(x) != self.x_dim:
            raise ValueError(
                f"--model {name} takes exactly {self.x_dim} --x column{'s' if self.x_dim != 1 else ''}, got "
                f"{len(x)}: {', '.join(x)}"
            )


def _linear(x_dim: int) -> Any:
    from bayesmeta.models import HierarchicalLinearRegression

    return HierarchicalLinearRegression(x_dim=x_dim)


def _sinusoid(x_dim: int) -> Any:
    from bayesmeta.models import SinusoidModel

    return SinusoidModel()


#: ``bayesmeta fit --model`` names; a new model family plugs in with one entry.
MODELS: dict[str, ModelChoice] = {
    "linear": ModelChoice(_linear, "y = x·w_i + b_i + noise, a coefficient vector per task (any number of "
                          "--x columns)", labels=lambda x: [*x, "intercept"]),
    "sinusoid": ModelChoice(_sinusoid, "y = A_i sin(x - p_i) + noise, an amplitude and phase per task "
                            "(one --x column)", x_dim=1),
}


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``bayesmeta`` command (subcommands: ``demo``, ``fit``, ``adapt``)."""
    from bayesmeta import __version__

    parser = argparse.ArgumentParser(
        prog=PROG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Probabilistic meta-learning: learn a prior from many tasks, adapt it to a new one with\n"
        "honest uncertainty.",
        epilog=TOP_EXAMPLES,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_demo(commands)
    _add_fit(commands)
    _add_adapt(commands)
    return parser


def _add_demo(commands: Any) -> None:
    demo = commands.add_parser(
        "demo",
        help="fit a prior on synthetic linear-regression tasks and compare every inference method",
        description=(
            "Walk-through on hierarchical linear regression (x_dim=3), where the exact answer is known. "
            "Samples training tasks from a known prior θ, learns θ back with fit_prior (amortized guide), "
            f"prints learned vs true θ, then adapts {HELD_OUT_TASKS} held-out tasks at {', '.join(map(str, SHOTS))} "
            "shots with every method (amortized, svi, exact; nuts on the first "
            f"{NUTS_TASKS} tasks only, it is slow) and prints query MSE, NLL, 90% interval coverage and "
            "KL to the exact posterior, each ± its standard error over tasks. Writes the prior, "
            "metrics.csv, metrics.json and demo.png to --out."
        ),
        epilog="example: bayesmeta demo --quick --out runs/smoke",
    )
    demo.add_argument("--steps", type=_positive_int, default=None,
                      help="fit_prior optimizer steps (default: 3000; 200 with --quick)")
    demo.add_argument("--tasks", type=_positive_int, default=None,
                      help="number of training tasks (default: 2000; 200 with --quick)")
    demo.add_argument("--seed", type=_seed, default=0,
                      help="seeds the task family, the data and every method (default: 0)")
    _add_device_and_threads(demo)
    demo.add_argument("--out", default=None, help="output folder (default: runs/demo-<timestamp>)")
    demo.add_argument("--quick", action="store_true",
                      help="smoke run in seconds: few steps and tasks, short SVI, NUTS with few samples")
    demo.set_defaults(run=run_demo)


def _add_device_and_threads(command: argparse.ArgumentParser) -> None:
    command.add_argument("--device", type=_device, default="cpu",
                         help="torch device: cpu, cuda, cuda:1, ... (default: cpu)")
    command.add_argument("--threads", type=_positive_int, default=1,
                         help="torch CPU threads (default: 1: about as fast as two for models this small, and "
                         "it stays fast when other programs share the CPU, where more threads slow down badly)")


def _add_columns(command: argparse.ArgumentParser, stored: bool) -> None:
    later = " (default: the column fitted on)" if stored else ""
    command.add_argument("--task-col", required=not stored, metavar="COLUMN",
                         help=f"the column that names each row's task{later}")
    command.add_argument("--x", type=_column_names, required=not stored, metavar="COLUMN[,COLUMN...]",
                         help=f"the input column(s), comma-separated{later}")
    command.add_argument("--y", required=not stored, metavar="COLUMN", help=f"the target column{later}")


def _add_fit(commands: Any) -> None:
    from bayesmeta.guides import GUIDES

    fit = commands.add_parser(
        "fit",
        help="learn a prior from a CSV table of many tasks (one row per point) and save it",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=FIT_DESCRIPTION,
        epilog=FIT_EXAMPLE,
    )
    fit.add_argument("csv", metavar="TASKS.csv", help="long-format table: one row per point, --task-col names its task")
    _add_columns(fit, stored=False)
    fit.add_argument("--model", choices=list(MODELS), default="linear",
                     help="the task model: " + "; ".join(f"{name}: {c.summary}" for name, c in MODELS.items())
                     + " (default: linear)")
    fit.add_argument("--guide", choices=list(GUIDES), default="amortized",
                     help="amortized: a network that reads a task's points (adapts new tasks in one pass); "
                     "per_task: one Gaussian per training task; exact: closed form, linear only "
                     "(default: amortized)")
    fit.add_argument("--steps", type=_positive_int, default=2000, help="optimizer steps (default: 2000)")
    fit.add_argument("--batch-tasks", type=_positive_int, default=64,
                     help="tasks per step (default: 64; all of them if there are fewer)")
    fit.add_argument("--lr", type=_positive_float, default=1e-2, help="Adam learning rate (default: 0.01)")
    fit.add_argument("--seed", type=_seed, default=0, help="seeds the fit (default: 0)")
    _add_device_and_threads(fit)
    fit.add_argument("--no-progress", action="store_true", help="no progress bar")
    fit.add_argument("--out", required=True, metavar="PRIOR", help="where to save the prior, e.g. my.prior")
    fit.set_defaults(run=run_fit)


def _add_adapt(commands: Any) -> None:
    from bayesmeta.inference.adapt import METHODS as ADAPT_METHODS

    adapt = commands.add_parser(
        "adapt",
        help="adapt a saved prior to new tasks from their rows and predict, with 90%% intervals",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=ADAPT_DESCRIPTION,
        epilog=ADAPT_EXAMPLE,
    )
    adapt.add_argument("prior", metavar="PRIOR", help="a prior saved by 'bayesmeta fit'")
    adapt.add_argument("new", metavar="NEW.csv", help="the new tasks' labelled rows (the support), any number of tasks")
    adapt.add_argument("--predict", required=True, metavar="GRID.csv",
                       help="the inputs to predict at: the task column and the x columns (other columns are "
                       "copied through); every task in it must have rows in NEW.csv")
    adapt.add_argument("--out", required=True, metavar="PREDICTIONS.csv",
                       help=f"where to write GRID.csv's rows plus {', '.join(PREDICTION_COLUMNS)}")
    _add_columns(adapt, stored=True)
    adapt.add_argument("--method", choices=list(ADAPT_METHODS), default="amortized",
                       help="amortized: one pass of the fitted guide; svi: a Gaussian per task refined by "
                       "stochastic VI; nuts: MCMC (slow); exact: closed form, linear only (default: amortized)")
    adapt.add_argument("--num-samples", type=_positive_int, default=200,
                       help="posterior draws behind each prediction and interval (default: 200)")
    adapt.add_argument("--seed", type=_seed, default=0, help="seeds the draws and the svi/nuts methods (default: 0)")
    _add_device_and_threads(adapt)
    adapt.add_argument("--no-progress", action="store_true", help="no progress bar (svi and nuts)")
    adapt.set_defaults(run=run_adapt)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``bayesmeta`` console script; returns 0 on success.

    Bad arguments exit with code 2 and argparse's usage message; any other failure prints one line,
    ``bayesmeta: error: ...``, on stderr and exits with code 2.
    """
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        raise SystemExit(130) from None
    except Exception as error:  # one readable line for the user instead of a traceback
        message = " ".join(str(error).split()) or type(error).__name__
        print(f"{PROG}: error: {message}", file=sys.stderr)
        raise SystemExit(2) from None


# ---------------------------------------------------------------------- the demo
def run_demo(args: argparse.Namespace) -> int:
    """Fit, compare, write; see ``bayesmeta demo --help``."""
    settings = DemoSettings.from_args(args)
    _check_device(settings.device)
    settings.out.mkdir(parents=True, exist_ok=True)
    with _threads(settings.threads):
        return _demo(settings)


def _check_device(device: str) -> None:
    if torch.device(device).type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"--device {device}: CUDA is not available on this machine; use --device cpu")


@contextlib.contextmanager
def _threads(count: int) -> Iterator[None]:
    """Run a block with ``count`` torch CPU threads (the previous number is restored)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


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


# ---------------------------------------------------------------------- your own data: tables
@dataclass(frozen=True)
class Columns:
    """The columns of a long-format table: the task names, the inputs, the target."""

    task: str
    x: list[str]
    y: str

    def __post_init__(self) -> None:
        clashes = [f"{self.task!r} is both --task-col and --x"] if self.task in self.x else []
        clashes += [f"{self.y!r} is both --y and --x"] if self.y in self.x else []
        clashes += [f"{self.y!r} is both --y and --task-col"] if self.y == self.task else []
        if clashes:
            raise ValueError(f"columns: expected different columns for tasks, inputs and target; {'; '.join(clashes)}")

    def to_config(self) -> dict[str, str]:
        """Plain strings for ``LearnedPrior.config`` (a saved prior keeps only scalar config values)."""
        return {"cli_task": self.task, "cli_x": json.dumps(self.x), "cli_y": self.y}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> dict[str, Any]:
        """The columns stored by :meth:`to_config` (``None`` where absent), as ``task``, ``x``, ``y``."""
        x = config.get("cli_x")
        if isinstance(x, str):
            x = json.loads(x)
        return {"task": config.get("cli_task"), "x": x, "y": config.get("cli_y")}


def read_table(path: str) -> Any:
    """A CSV file as a ``pandas.DataFrame`` of text (numbers are parsed where they are used, so that every
    other column is written back exactly as it was read)."""
    import pandas as pd

    file = Path(path)
    if not file.exists():
        raise FileNotFoundError(f"{path}: no such file")
    if not file.is_file():
        raise ValueError(f"{path}: not a file; expected a CSV file")
    try:
        table = pd.read_csv(file, dtype=str, skipinitialspace=True)
    except (UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as error:
        detail = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ValueError(
            f"{path}: not a readable CSV file (expected comma-separated text with a header row): {detail}"
        ) from None
    if table.empty:
        raise ValueError(f"{path}: no rows below the header; expected one row per point")
    return table


def _check_columns(table: Any, path: str, wanted: dict[str, list[str]]) -> None:
    """Every column in ``wanted`` (``--flag: [names]``) is in ``table``; else name them and list the others."""
    missing = [f"{name!r} ({flag})" for flag, names in wanted.items() for name in names if name not in table.columns]
    if not missing:
        return
    columns = [str(c) for c in table.columns]
    hint = ""
    if len(columns) == 1 and any(sep in columns[0] for sep in (";", "\t", "|")):
        hint = "; the file seems to use another separator: bayesmeta reads comma-separated files"
    raise ValueError(
        f"{path}: no column {', '.join(missing)}; available columns: {', '.join(columns)}{hint}"
    )


def _row(position: int) -> str:
    return f"row {position + 1} below the header"


def _task_labels(table: Any, path: str, column: str) -> Any:
    labels = table[column]
    empty = labels.isna().to_numpy()
    if empty.any():
        raise ValueError(
            f"{path}: column {column!r} (--task-col) is empty on {int(empty.sum())} row(s), first at "
            f"{_row(int(empty.argmax()))}; every row needs the name of its task"
        )
    return labels


def numeric_column(table: Any, path: str, column: str, flag: str) -> Any:
    """``num_rows`` float64 values of a text column; an error names the first bad row.

    >>> import pandas as pd
    >>> numeric_column(pd.DataFrame({"v": ["1.5", "2e3"]}), "t.csv", "v", "--x").tolist()
    [1.5, 2000.0]
    """
    import numpy as np
    import pandas as pd

    text = table[column]
    values = pd.to_numeric(text, errors="coerce").to_numpy(dtype=np.float64)
    unreadable = np.isnan(values) & text.notna().to_numpy()
    if unreadable.any():
        first = int(unreadable.argmax())
        raise ValueError(
            f"{path}: column {column!r} ({flag}) is not numeric: {_row(first)} holds {text.iloc[first]!r} "
            f"({int(unreadable.sum())} such row(s)); expected numbers"
        )
    bad = ~np.isfinite(values)
    if bad.any():
        raise ValueError(
            f"{path}: column {column!r} ({flag}) has {int(bad.sum())} empty, NaN or infinite value(s), first at "
            f"{_row(int(bad.argmax()))}; drop or fill those rows"
        )
    return values


def table_tasks(table: Any, path: str, columns: Columns) -> Any:
    """The rows of a long-format table as a support-only :class:`~bayesmeta.TaskSet` (tasks in order of
    first appearance, ``names`` their labels)."""
    import pandas as pd

    import bayesmeta as bm

    _check_columns(table, path, {"--task-col": [columns.task], "--x": columns.x, "--y": [columns.y]})
    frame = pd.DataFrame({columns.task: _task_labels(table, path, columns.task)})
    for name, flag in [(name, "--x") for name in columns.x] + [(columns.y, "--y")]:
        frame[name] = numeric_column(table, path, name, flag)
    return bm.TaskSet.from_dataframe(frame, task=columns.task, x=columns.x, y=columns.y, support=None)


def pad_by_task(codes: Any, values: Any, num_tasks: int) -> tuple[torch.Tensor, Any]:
    """Rows grouped by task into one zero-padded array, and each row's position inside its task.

    Args:
        codes: ``num_rows`` task indices in ``[0, num_tasks)``.
        values: ``num_rows x dim`` row values.

    Returns:
        ``num_tasks x max_rows x dim`` float64 tensor (rows keep their order within a task), and
        ``num_rows`` positions, so that ``padded[codes, positions]`` gives the rows back.

    >>> import numpy as np
    >>> padded, positions = pad_by_task(np.array([1, 0, 1]), np.array([[1.0], [2.0], [3.0]]), num_tasks=2)
    >>> padded[..., 0].tolist(), positions.tolist()
    ([[2.0, 0.0], [1.0, 3.0]], [0, 0, 1])
    """
    import numpy as np

    counts = np.bincount(codes, minlength=num_tasks)
    order = np.argsort(codes, kind="stable")
    starts = np.cumsum(counts) - counts
    positions = np.empty(len(codes), dtype=np.int64)
    positions[order] = np.arange(len(codes)) - starts[codes[order]]
    padded = np.zeros((num_tasks, int(counts.max()), values.shape[1]))
    padded[codes, positions] = values
    return torch.as_tensor(padded), positions


def _span(counts: torch.Tensor) -> str:
    low, high = int(counts.min()), int(counts.max())
    return f"{low}" if low == high else f"{low}-{high}"


# ---------------------------------------------------------------------- bayesmeta fit
def run_fit(args: argparse.Namespace) -> int:
    """Read, fit, print, save; see ``bayesmeta fit --help``."""
    _check_device(args.device)
    with _threads(args.threads):
        return _fit(args)


def _fit(args: argparse.Namespace) -> int:
    import bayesmeta as bm

    choice = MODELS[args.model]
    columns = Columns(task=args.task_col, x=args.x, y=args.y)
    choice.check_x(args.model, columns.x)
    tasks = table_tasks(read_table(args.csv), args.csv, columns)
    counts = tasks.support.counts
    note = _scale_note(tasks, columns)
    model = choice.build(len(columns.x))
    print(f"bayesmeta fit: {len(tasks)} tasks ({columns.task!r}), {int(counts.sum())} points "
          f"({_span(counts)} per task) from {args.csv}; y = {columns.y}, x = {', '.join(columns.x)}")
    print(f"model {args.model} ({type(model).__name__}), guide {args.guide}, {args.steps} steps of "
          f"{min(args.batch_tasks, len(tasks))} tasks, lr {args.lr:g}, seed {args.seed}, device {args.device}")
    if note:
        print(note)
    prior = bm.fit_prior(model, tasks, guide=args.guide, steps=args.steps, batch_tasks=args.batch_tasks,
                         lr=args.lr, device=args.device, seed=args.seed, progress=not args.no_progress)
    prior.config.update(columns.to_config(), cli_model=args.model)
    last = prior.history["elbo"][-min(50, args.steps):]
    elbo = sum(last) / len(last)
    print(f"fitted in {prior.config['seconds']:.1f} s; ELBO {elbo / len(tasks):.4g} per task, "
          f"{elbo / float(counts.sum()):.4g} per point (mean of the last {len(last)} steps)")
    table = theta_table_learned(model, choice.labels(columns.x) if choice.labels else list(model.phi_names))
    if table is not None:
        print("\nlearned θ: the spread of each task's parameters across tasks")
        print(table.to_string(float_format=lambda v: f"{v:.4g}"))
    noise = getattr(model, "noise_scale", None)
    if isinstance(noise, torch.Tensor) and noise.numel() == 1:
        print(f"noise sd of y around each task's fit: {float(noise.detach()):.4g}")
    prior.save(args.out)
    print(f"\nsaved {args.out}; adapt it to new tasks with: bayesmeta adapt {args.out} NEW.csv --predict GRID.csv "
          "--out predictions.csv")
    return 0


def _scale_note(tasks: Any, columns: Columns, limit: float = 100.0) -> str | None:
    """A hint when columns are large: Adam moves θ by about ``lr`` per step, so far-off values take long."""
    data = tasks.support
    largest = torch.cat([data.x, data.y], -1).abs().amax(dim=(0, 1)).tolist()
    large = [f"{name} ({value:.3g})" for name, value in zip([*columns.x, columns.y], largest) if value > limit]
    if not large:
        return None
    return (f"note: large values in {', '.join(large)}: θ moves by about --lr per step, so rescale these columns "
            "to units of order 1-10 (or raise --lr/--steps) if the learned θ looks stuck near its start")


def theta_table_learned(model: Any, labels: list[str]) -> Any:
    """``pandas.DataFrame`` of the learned prior's mean and sd per coordinate of φ, or ``None`` for a model
    whose θ has no ``prior_loc``/``prior_scale`` vectors."""
    import pandas as pd

    loc, scale = getattr(model, "prior_loc", None), getattr(model, "prior_scale", None)
    if not (isinstance(loc, torch.Tensor) and isinstance(scale, torch.Tensor)) or loc.shape != (len(labels),):
        return None
    return pd.DataFrame(
        {"prior mean": loc.detach().cpu().double().tolist(), "prior sd": scale.detach().cpu().double().tolist()},
        index=pd.Index(labels),
    )


# ---------------------------------------------------------------------- bayesmeta adapt
def run_adapt(args: argparse.Namespace) -> int:
    """Load, adapt, predict, write; see ``bayesmeta adapt --help``."""
    _check_device(args.device)
    with _threads(args.threads):
        return _adapt(args)


def load_prior(path: str, device: str) -> Any:
    """``LearnedPrior.load``, with torch's advice on unsafe loading cut from the message of a foreign file."""
    import bayesmeta as bm

    try:
        return bm.LearnedPrior.load(path, map_location=device)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such file") from None
    except bm.FormatError as error:
        # torch's message for a foreign pickle suggests weights_only=False, which is what a prior must never need.
        reason = str(error).split("Weights only load failed")[0].rstrip(": ")
        raise bm.FormatError(f"{reason}; expected a prior saved by 'bayesmeta fit' or LearnedPrior.save") from None


def _adapt_columns(prior: Any, args: argparse.Namespace) -> Columns:
    """``--task-col/--x/--y``, each defaulting to the column stored by ``bayesmeta fit``."""
    stored = Columns.from_config(prior.config)
    given = {"task": args.task_col, "x": args.x, "y": args.y}
    chosen = {key: given[key] if given[key] is not None else stored[key] for key in given}
    flags = {"task": "--task-col", "x": "--x", "y": "--y"}
    missing = [flags[key] for key, value in chosen.items() if value is None]
    if missing:
        raise ValueError(
            f"{args.prior} records no table columns (it was not saved by 'bayesmeta fit'); pass {', '.join(missing)}"
        )
    x_dim = prior.model.x_dim
    if len(chosen["x"]) != x_dim:
        fitted = f" (fitted on {', '.join(stored['x'])})" if stored["x"] else ""
        raise ValueError(
            f"--x: the prior's model {type(prior.model).__name__} takes {x_dim} input column(s){fitted}, got "
            f"{len(chosen['x'])}: {', '.join(chosen['x'])}"
        )
    return Columns(**chosen)


def _phi_labels(prior: Any, columns: Columns) -> list[str]:
    choice = MODELS.get(prior.config.get("cli_model", ""))
    if choice is not None and choice.labels is not None:
        labels = choice.labels(columns.x)
        if len(labels) == prior.model.phi_dim:
            return labels
    return list(prior.model.phi_names)


def posterior_table(post: Any, labels: list[str], shown: int = 10) -> Any:
    """``pandas.DataFrame``: the posterior mean ± sd of each task's parameters (the first ``shown`` tasks)."""
    import pandas as pd

    mean = post.mean[:shown].detach().cpu().double()
    sd = post.covariance[:shown].diagonal(dim1=-2, dim2=-1).clamp(min=0).sqrt().detach().cpu().double()
    names = post.support.names[:shown] if post.support.names is not None else list(range(len(mean)))
    cells = [[f"{m:.4g} ± {s:.2g}" for m, s in zip(row_m, row_s)] for row_m, row_s in zip(mean.tolist(), sd.tolist())]
    table = pd.DataFrame(cells, columns=labels, index=pd.Index(names))
    if len(post) > shown:
        table.loc[f"... {len(post) - shown} more"] = ["" for _ in labels]
    return table


def _grid_codes(grid: Any, names: list[str], columns: Columns, args: argparse.Namespace) -> Any:
    """Each GRID row's task as an index into ``names``; an error lists GRID's tasks that NEW lacks."""
    import pandas as pd

    labels = _task_labels(grid, args.predict, columns.task)
    codes = pd.Index(names).get_indexer(labels)
    if (codes < 0).any():
        missing = list(dict.fromkeys(labels[codes < 0]))
        shown = ", ".join(map(repr, missing[:10])) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
        raise ValueError(
            f"{args.predict}: {len(missing)} task(s) in column {columns.task!r} have no rows in {args.new} to adapt "
            f"from: {shown}; add their labelled rows to {args.new} or drop them from {args.predict}"
        )
    return codes


def _adapt(args: argparse.Namespace) -> int:
    import numpy as np

    prior = load_prior(args.prior, args.device)
    columns = _adapt_columns(prior, args)
    tasks = table_tasks(read_table(args.new), args.new, columns)
    grid = read_table(args.predict)
    _check_columns(grid, args.predict, {"--task-col": [columns.task], "--x": columns.x})
    taken = [name for name in PREDICTION_COLUMNS if name in grid.columns]
    if taken:
        raise ValueError(f"{args.predict}: already has column(s) {', '.join(taken)}, which the predictions would "
                         "overwrite; rename or drop them")
    grid_x = np.column_stack([numeric_column(grid, args.predict, name, "--x") for name in columns.x])
    codes = _grid_codes(grid, tasks.names, columns, args)
    used, codes = np.unique(codes, return_inverse=True)  # adapt only the tasks that GRID asks about
    unused = len(tasks) - len(used)
    tasks = tasks[used]

    start = time.perf_counter()
    options = {"seed": args.seed, "progress": not args.no_progress} if args.method in ("svi", "nuts") else {}
    post = prior.adapt(tasks, method=args.method, **options)
    x, positions = pad_by_task(codes, grid_x, len(tasks))
    pred = post.predict(x.to(tasks.dtype), num_samples=args.num_samples, seed=args.seed)
    lower, upper = pred.interval(INTERVAL)
    seconds = time.perf_counter() - start

    out = grid.copy()
    rows = (torch.as_tensor(codes), torch.as_tensor(positions))
    for name, values in zip(PREDICTION_COLUMNS, (pred.mean, pred.std, lower, upper)):
        out[name] = values[..., 0].cpu()[rows].numpy()  # float32: written with the digits it has
    text = out.to_csv(index=False)
    atomic_write(args.out, lambda f: f.write(text.encode()))

    counts = tasks.support.counts
    print(f"bayesmeta adapt: {args.prior} ({type(prior.model).__name__}, fitted on "
          f"{prior.config.get('num_tasks', '?')} tasks); y = {columns.y}, x = {', '.join(columns.x)}")
    print(f"adapted {len(tasks)} task(s) ({columns.task!r}) from {int(counts.sum())} rows of {args.new} "
          f"({_span(counts)} per task) with method {args.method} and predicted {len(grid)} rows of {args.predict} "
          f"in {seconds:.2f} s ({args.num_samples} draws, seed {args.seed})")
    if unused:
        print(f"{unused} task(s) of {args.new} have no rows in {args.predict}: not adapted")
    print("\nposterior of each task's parameters (mean ± sd):")
    print(posterior_table(post, _phi_labels(prior, columns)).to_string())
    print(f"\nwrote {args.out}: the rows of {args.predict} + {', '.join(PREDICTION_COLUMNS)} "
          f"(predictive mean and sd of {columns.y}, central {INTERVAL:.0%} interval)")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

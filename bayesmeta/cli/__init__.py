r"""The ``bayesmeta`` command.

``bayesmeta demo`` meta-trains a :class:`~bayesmeta.models.NeuralProcessModel` on sinusoid tasks, adapts
held-out tasks from 1, 2, 5 and 10 points and scores them against the Bayes-optimal predictor — the
floor no method can beat — then writes the prior, ``metrics.json`` and pictures to a run folder.

``bayesmeta fit`` and ``bayesmeta adapt`` do the same on the user's own long-format CSV tables (one row
per point, a column naming its task): ``fit`` learns a prior with :func:`bayesmeta.fit_prior` and
saves it with the column names; ``adapt`` conditions it on new tasks' rows and writes predictions,
with 90% intervals, for the rows of a second table. :data:`MODELS` maps ``--model`` names to models.

"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Sequence


from bayesmeta.cli._common import PROG, column_names, device_arg, positive_float, positive_int, seed_arg
from bayesmeta.cli.data import MODELS, run_adapt, run_fit
from bayesmeta.cli.demo import FILES as DEMO_FILES, SHOTS, DemoSettings, run_demo
from bayesmeta.cli.tables import PREDICTION_COLUMNS

__all__ = ["main", "build_parser", "MODELS", "DemoSettings", "DEMO_FILES", "SHOTS", "PREDICTION_COLUMNS"]

TOP_EXAMPLES = """\
examples:
  bayesmeta demo
      a neural process meta-learns sinusoids and meets the Bayes limit (about 3 minutes on a CPU)
  bayesmeta demo --quick
      the same in seconds, as a smoke run
  bayesmeta fit firms.csv --task-col firm --x value,capital --y invest --out firms.prior
      learn a prior from a table of many tasks (one row per point, a column naming its task)
  bayesmeta adapt firms.prior new_firm.csv --predict grid.csv --out predictions.csv
      adapt it to new tasks from their rows; predict at grid.csv's inputs with 90% intervals
  bayesmeta benchmark --methods np,maml,finetune --budget quick
      the Bayesian learners against MAML, fine-tuning and a black-box learner on the same tasks, one table

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



def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``bayesmeta`` command (subcommands: ``demo``, ``fit``, ``adapt``, ``benchmark``)."""
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
    _add_benchmark(commands)
    return parser


def _add_demo(commands: Any) -> None:
    demo = commands.add_parser(
        "demo",
        help="meta-learn sinusoids with a neural process and compare it with the Bayes-optimal predictor",
        description=(
            "Samples sinusoid tasks y = A sin(x - p) (amplitude U[0.1, 5], phase U[0, pi]: the MAML regression "
            "family) and meta-trains a NeuralProcessModel on them with fit_prior (pooled encoder, progress bar). "
            "Then adapts held-out tasks from " + ", ".join(map(str, SHOTS)) + " points in one pass of the "
            "encoder and prints query MSE, NLL and 90% interval coverage, each ± its standard error over "
            "tasks, next to the Bayes-optimal predictor (the exact posterior over amplitude and phase: the "
            "floor no method can beat). Writes to --out: " + ", ".join(DEMO_FILES) + " (the saved prior, the "
            "metrics, six held-out tasks adapted from 1, 2 and 5 points with their 90% bands, and the ELBO "
            "curve). About 2 to 3 minutes on a 2-core CPU; seconds with --quick."
        ),
        epilog="example: bayesmeta demo --quick --out runs/smoke",
    )
    demo.add_argument("--steps", type=positive_int, default=None,
                      help="fit_prior optimizer steps (default: 10000; 150 with --quick)")
    demo.add_argument("--tasks", type=positive_int, default=None,
                      help="number of training tasks (default: 20000; 500 with --quick)")
    demo.add_argument("--seed", type=seed_arg, default=0,
                      help="seeds the tasks, the fit and the predictions (default: 0)")
    _add_device_and_threads(demo, default_threads=min(2, os.cpu_count() or 1),
                            why="up to two, one per core: the demo's networks are large enough for a second "
                            "thread to pay")
    demo.add_argument("--out", default=None, help="output folder (default: runs/demo-<timestamp>)")
    demo.add_argument("--quick", action="store_true",
                      help="smoke run in seconds: a small network, few steps, tasks and held-out tasks")
    demo.set_defaults(run=run_demo)


def _add_device_and_threads(command: argparse.ArgumentParser, default_threads: int = 1,
                            why: str = "about as fast as two for models this small, and it stays fast when other "
                            "programs share the CPU, where more threads slow down badly") -> None:
    command.add_argument("--device", type=device_arg, default="cpu",
                         help="torch device: cpu, cuda, cuda:1, ... (default: cpu)")
    command.add_argument("--threads", type=positive_int, default=default_threads,
                         help=f"torch CPU threads (default: {default_threads}: {why})")


def _add_columns(command: argparse.ArgumentParser, stored: bool) -> None:
    later = " (default: the column fitted on)" if stored else ""
    command.add_argument("--task-col", required=not stored, metavar="COLUMN",
                         help=f"the column that names each row's task{later}")
    command.add_argument("--x", type=column_names, required=not stored, metavar="COLUMN[,COLUMN...]",
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
    fit.add_argument("--guide", choices=list(GUIDES), default=None,
                     help="amortized: a network that reads a task's points (adapts new tasks in one pass); "
                     "pooled: the neural-process encoder (for np and bnn); gradient: a few learned gradient steps "
                     "from the prior (ABML; for bnn); per_task: one Gaussian per training "
                     "task; exact: closed form, linear only (default: the model's: pooled for np and bnn, "
                     "amortized otherwise)")
    fit.add_argument("--steps", type=positive_int, default=2000, help="optimizer steps (default: 2000)")
    fit.add_argument("--batch-tasks", type=positive_int, default=64,
                     help="tasks per step (default: 64; all of them if there are fewer)")
    fit.add_argument("--lr", type=positive_float, default=None,
                     help="Adam learning rate (default: the model's: 0.001 for np and bnn, 0.01 otherwise)")
    fit.add_argument("--seed", type=seed_arg, default=0, help="seeds the fit (default: 0)")
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
    adapt.add_argument("--components", type=positive_int, default=1, metavar="K",
                       help="svi only: a mixture of K Gaussians per task instead of one, for posteriors that are "
                       "split or curved (a few points of a nonlinear model); about K times slower (default: 1)")
    adapt.add_argument("--objective", choices=["elbo", "iwae"], default="elbo",
                       help="svi only: fit each task's Gaussian to the ELBO, or to the importance-weighted bound, "
                       "which makes one Gaussian wider on a split or curved posterior (default: elbo)")
    adapt.add_argument("--num-samples", type=positive_int, default=200,
                       help="posterior draws behind each prediction and interval (default: 200)")
    adapt.add_argument("--seed", type=seed_arg, default=0, help="seeds the draws and the svi/nuts methods (default: 0)")
    _add_device_and_threads(adapt)
    adapt.add_argument("--no-progress", action="store_true", help="no progress bar (svi and nuts)")
    adapt.set_defaults(run=run_adapt)


BENCHMARK_DESCRIPTION = """\
Meta-train the Bayesian learners and the mechanistic baselines on the same tasks, adapt each to the same
held-out support sets (--shots points per task) and score them on the same 100 query points per task:
query MSE, Gaussian NLL and 90% interval coverage (mean ± standard error over tasks), adaptation time, with
the family's Bayes-optimal predictor as the floor. Prints the table and writes results.csv, mse.png, nll.png
and coverage.png to --out.

methods: np (NeuralProcessModel, amortized guide), np-importance (the same prior adapted by importance
sampling), maml (second-order MAML, 1 inner step of 0.01), finetune (pre-train on pooled tasks, fine-tune per
task), blackbox (a conditional neural process), scratch (a fresh network per support set).
budgets: quick (minutes: a smoke run, the numbers mean little) or paper (the published protocols' budgets,
e.g. MAML's 70,000 meta-iterations: hours on a CPU).
"""


def _add_benchmark(commands: Any) -> None:
    from bayesmeta.cli.bench import BUDGETS, FAMILIES, METHODS

    bench = commands.add_parser(
        "benchmark", help="compare Bayesian learners and baselines (MAML, fine-tuning, ...) on the same tasks",
        formatter_class=argparse.RawDescriptionHelpFormatter, description=BENCHMARK_DESCRIPTION,
        epilog="example: bayesmeta benchmark --methods np,maml --shots 1,5 --budget quick --out runs/compare",
    )
    bench.add_argument("--family", choices=FAMILIES, default="sinusoid", help="task family (default: sinusoid)")
    bench.add_argument("--methods", type=_choices(METHODS, "methods"), default=list(METHODS),
                       metavar="NAME[,NAME...]", help=f"comma-separated, from {', '.join(METHODS)} (default: all)")
    bench.add_argument("--shots", type=_shots, default=[1, 2, 5, 10], metavar="K[,K...]",
                       help="support-set sizes, comma-separated (default: 1,2,5,10)")
    bench.add_argument("--budget", choices=list(BUDGETS), default="quick", help="training budget (default: quick)")
    bench.add_argument("--seed", type=seed_arg, default=0, help="seeds tasks and training (default: 0)")
    _add_device_and_threads(bench)
    bench.add_argument("--out", default=None, help="output folder (default: runs/benchmark-<timestamp>)")
    from bayesmeta.cli.bench import run_benchmark

    bench.set_defaults(run=run_benchmark)


def _choices(allowed: Sequence[str], what: str) -> Any:
    def parse(text: str) -> list[str]:
        names = [n.strip() for n in text.split(",") if n.strip()]
        unknown = [n for n in names if n not in allowed]
        if not names or unknown:
            raise argparse.ArgumentTypeError(f"expected some of {', '.join(allowed)}, got {text!r}")
        return list(dict.fromkeys(names))
    return parse


def _shots(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        values = []
    if not values or any(v < 1 or v > 100 for v in values):
        raise argparse.ArgumentTypeError(f"expected comma-separated integers from 1 to 100, got {text!r}")
    return sorted(set(values))


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


"""``bayesmeta fit`` and ``bayesmeta adapt`` on the user's own long-format CSV tables."""
from __future__ import annotations

import argparse
import functools
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch

from bayesmeta._files import atomic_write
from bayesmeta.cli._common import check_device, torch_threads
from bayesmeta.cli.tables import (
    INTERVAL, PREDICTION_COLUMNS, Columns, check_columns, count_span, task_labels, numeric_column, pad_by_task, read_table,
    table_tasks,
)


# ---------------------------------------------------------------------- models for `bayesmeta fit`
@dataclass(frozen=True)
class ModelChoice:
    """One ``bayesmeta fit --model``: how to build it for a table with ``x_dim`` input columns.

    Attributes:
        build: ``x_dim -> HierarchicalModel``.
        summary: one line for ``--help``.
        x_dim: the number of ``--x`` columns the model takes (``None``: any number).
        labels: the names of φ's coordinates given the ``--x`` column names (``None``: ``model.phi_names``).
        guide, lr: the defaults of ``--guide`` and ``--lr`` for this model.
        anneal: the fraction of the steps over which the KL term is warmed up (latent-variable models).
        random_subsets: ``fit_prior(random_subsets=...)``: the encoder also reads the small sets ``adapt`` gets.
    """

    build: Callable[[int], Any]
    summary: str
    x_dim: int | None = None
    labels: Callable[[list[str]], list[str]] | None = None
    guide: str = "amortized"
    lr: float = 1e-2
    anneal: float = 0.0
    random_subsets: bool = False

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


def _neural_process(x_dim: int, noise: str = "shared", output_layer: str = "shared") -> Any:
    from bayesmeta.models import NeuralProcessModel

    return NeuralProcessModel(x_dim=x_dim, noise=noise, output_layer=output_layer)


def _bnn(x_dim: int, exact_output: bool = False) -> Any:
    from bayesmeta.models import HierarchicalBNN

    return HierarchicalBNN(x_dim=x_dim, exact_output=exact_output)


#: ``bayesmeta fit --model`` names; a new model family plugs in with one entry.
MODELS: dict[str, ModelChoice] = {
    "linear": ModelChoice(_linear, "y = x·w_i + b_i + noise, a coefficient vector per task (any number of "
                          "--x columns)", labels=lambda x: [*x, "intercept"]),
    # The pooled encoder on random subsets: the set encoder with context learned a noise scale of 0.39 for a true 0.3
    # (its misfit paid as noise) and put some 1-point guesses tens of prior widths out (SinusoidModel's docstring).
    "sinusoid": ModelChoice(_sinusoid, "y = A_i sin(x - p_i) + noise, an amplitude and phase per task "
                            "(one --x column; default guide pooled on random subsets, lr 0.01)", x_dim=1,
                            guide="pooled", random_subsets=True),
    # Networks: the pooled encoder (cost linear in phi_dim), a smaller step, and KL warm-up against collapse.
    "np": ModelChoice(_neural_process, "y = g(x, z_i) + noise, a shared decoder network and an 8-number latent "
                      "per task (any number of --x columns; default guide pooled, lr 0.001)",
                      guide="pooled", lr=1e-3, anneal=1 / 3),
    "np-hetero": ModelChoice(functools.partial(_neural_process, noise="heteroscedastic"), "the same with a noise scale per task and input, "
                             "sigma(x, z_i), for tasks that differ in how noisy or how large they are (default "
                             "guide pooled, lr 0.001)", guide="pooled", lr=1e-3, anneal=1 / 3),
    "np-basis": ModelChoice(functools.partial(_neural_process, output_layer="task"), "the same with the decoder's "
                            "output layer per task, integrated out exactly given z_i: a Gaussian process whose kernel "
                            "the latent chooses, which follows each task's points (default guide pooled, lr 0.001)",
                            guide="pooled", lr=1e-3, anneal=1 / 3),
    "bnn": ModelChoice(_bnn, "y = f_i(x) + noise, a 40-40 ReLU network per task under a learned prior over "
                       "its weights (any number of --x columns; default guide pooled, lr 0.001)",
                       guide="pooled", lr=1e-3, anneal=1 / 3),
    # As docs/bnn_exact_output.md fits it: random subsets from the start, no KL warm-up.
    "bnn-exact": ModelChoice(functools.partial(_bnn, exact_output=True), "the same with the output layer integrated "
                             "out exactly given the hidden layers (full covariance over it; default guide pooled on "
                             "random subsets, lr 0.001)", guide="pooled", lr=1e-3, random_subsets=True),
}



# ---------------------------------------------------------------------- bayesmeta fit
def run_fit(args: argparse.Namespace) -> int:
    """Read, fit, print, save; see ``bayesmeta fit --help``."""
    check_device(args.device)
    with torch_threads(args.threads):
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
    guide = args.guide or choice.guide
    lr = args.lr or choice.lr
    print(f"bayesmeta fit: {len(tasks)} tasks ({columns.task!r}), {int(counts.sum())} points "
          f"({count_span(counts)} per task) from {args.csv}; y = {columns.y}, x = {', '.join(columns.x)}")
    print(f"model {args.model} ({type(model).__name__}), guide {guide}"
          f"{' on random subsets of each task' if choice.random_subsets else ''}, {args.steps} steps of "
          f"{min(args.batch_tasks, len(tasks))} tasks, lr {lr:g}, seed {args.seed}, device {args.device}")
    if note:
        print(note)
    prior = bm.fit_prior(model, tasks, guide=guide, steps=args.steps, batch_tasks=args.batch_tasks,
                         lr=lr, device=args.device, seed=args.seed, progress=not args.no_progress,
                         kl_anneal_steps=int(choice.anneal * args.steps), random_subsets=choice.random_subsets)
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
    if len(labels) > 32:  # e.g. every weight of a network: too long to read
        return None
    return pd.DataFrame(
        {"prior mean": loc.detach().cpu().double().tolist(), "prior sd": scale.detach().cpu().double().tolist()},
        index=pd.Index(labels),
    )


# ---------------------------------------------------------------------- bayesmeta adapt
def run_adapt(args: argparse.Namespace) -> int:
    """Load, adapt, predict, write; see ``bayesmeta adapt --help``."""
    check_device(args.device)
    with torch_threads(args.threads):
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

    labels = task_labels(grid, args.predict, columns.task)
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

    if args.components != 1 and args.method != "svi":
        raise ValueError(f"--components: a mixture is fitted by --method svi only, got --method {args.method}")
    if args.objective != "elbo" and args.method != "svi":
        raise ValueError(f"--objective: it chooses what --method svi fits, got --method {args.method}")
    if args.objective == "iwae" and args.components != 1:
        raise ValueError(f"--objective iwae fits one Gaussian per task, got --components {args.components}")
    prior = load_prior(args.prior, args.device)
    columns = _adapt_columns(prior, args)
    tasks = table_tasks(read_table(args.new), args.new, columns)
    grid = read_table(args.predict)
    check_columns(grid, args.predict, {"--task-col": [columns.task], "--x": columns.x})
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
    if args.method == "svi":
        options["components"] = args.components
        options["objective"] = args.objective
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
          f"({count_span(counts)} per task) with method {args.method}"
          + (f" (a mixture of {args.components} Gaussians per task)" if args.components > 1 else "")
          + (" (fitted to the importance-weighted bound)" if args.objective == "iwae" else "")
          + f" and predicted {len(grid)} rows of {args.predict} "
          f"in {seconds:.2f} s ({args.num_samples} draws, seed {args.seed})")
    if unused:
        print(f"{unused} task(s) of {args.new} have no rows in {args.predict}: not adapted")
    print("\nposterior of each task's parameters (mean ± sd):")
    print(posterior_table(post, _phi_labels(prior, columns)).to_string())
    print(f"\nwrote {args.out}: the rows of {args.predict} + {', '.join(PREDICTION_COLUMNS)} "
          f"(predictive mean and sd of {columns.y}, central {INTERVAL:.0%} interval)")
    return 0

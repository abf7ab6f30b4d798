r"""MAML on the MAML paper's sinusoid protocol, trained from several seeds: how far apart are training runs?

``docs/results.md`` trains one MAML per K (seed 0) and compares it with single runs measured elsewhere
(learn2learn, the MAML paper). A single run's ± covers only the test tasks, not the training run. This script
trains the same MAML from ``seeds`` different initializations, training collections and meta-batch orders, scores
every run on the same held-out tasks, and reads the published figures against the spread between runs.

Usage::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/maml_seeds.py           # full run (~30 min, 1 core) -> docs/maml_seeds.md
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/maml_seeds.py --quick   # smoke run (< 1 min), prints the page
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import math  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from typing import Sequence  # noqa: E402

import torch  # noqa: E402

import bayesmeta as bm  # noqa: E402
from _report import fmt, log, one_thread_machine, page_args, page_header, publish, table, utc_now  # noqa: E402
from _results_maml import INNER_LR, META_BATCH, META_LR, Z95, ci95  # noqa: E402
from bayesmeta.baselines import MAML, maml_net  # noqa: E402
from bayesmeta.evaluation.metrics import mse  # noqa: E402

torch.set_num_threads(1)

#: Single runs to read against the spread (``../shared/REFERENCES.md``): (source, K, inner steps at test, mean,
#: half-width of its 95% interval over test tasks, or None where the source gives none).
PUBLISHED = [
    ("MAML paper, appendix C, table 2", 5, 1, 0.67, None),
    ("MAML paper, appendix C, table 2", 5, 10, 0.35, None),
    ("learn2learn 0.2.0, 70,000 iterations", 5, 1, 0.514, 0.035),
    ("learn2learn 0.2.0, 70,000 iterations", 5, 10, 0.296, 0.030),
    ("learn2learn 0.2.0, 70,000 iterations", 10, 1, 0.313, 0.022),
]
#: A task's query MSE above this counts as diverged: predicting 0 everywhere scores A²/2 ≤ 12.5 on these tasks.
DIVERGED = 100.0
POOL_SEED = 100  # training collections are sampled with seed POOL_SEED + run, never the test tasks' seed 1


@dataclass
class Settings:
    """How much work the run does (``--quick`` shrinks it)."""

    seeds: int = 5
    iters: int = 70000
    test_tasks: int = 1000
    query: int = 100
    steps: tuple[int, ...] = (1, 5, 10)
    shots: tuple[int, ...] = (5, 10)

    @classmethod
    def quick(cls) -> Settings:
        return cls(seeds=2, iters=20, test_tasks=20, query=20)


def scores(maml: MAML, test: bm.TaskSet, steps: Sequence[int]) -> dict[int, tuple[float, float, int]]:
    """Per number of inner steps: (mean query MSE, half-width of its 95% interval, tasks left out). Plain
    gradient steps of size 0.01 can diverge on a task (learn2learn's K = 10 run had a few): a task whose MSE is
    not finite or above ``DIVERGED`` is left out of the mean and counted."""
    out = {}
    for n in steps:
        with torch.no_grad():
            values = mse(maml.adapt(test.support, inner_steps=n).predict(test.query.x).mean, test.query.y,
                         test.query.mask)
        finite = values.isfinite() & (values <= DIVERGED)
        out[n] = (*ci95(values[finite]), int((~finite).sum()))
    return out


def cell(score: tuple[float, float, int]) -> str:
    mean, half, diverged = score
    return f"{fmt(mean)} ± {fmt(half, 2)}" + (f" ({diverged} diverged)" if diverged else "")


def spread_reading(source: str, K: int, n: int, ref: float, ref_h: float | None, means: torch.Tensor,
                   test_se: float) -> list[str]:
    """One row reading a single published run against our runs: our mean and sd over runs, and the published
    figure's distance from our mean in units of what one run varies by: the between-run sd, our mean's own
    uncertainty over runs and over our test tasks (``test_se``, shared by every run), and the published run's
    test-task error where it gives one."""
    mean, sd = means.mean().item(), means.std().item() if len(means) > 1 else float("nan")
    ref_se = ref_h / Z95 if ref_h is not None else 0.0
    scale = math.sqrt(sd**2 * (1 + 1 / len(means)) + test_se**2 + ref_se**2)
    z = (ref - mean) / scale if scale > 0 else float("nan")
    inside = means.min().item() <= ref <= means.max().item()
    return [source, str(K), str(n), fmt(ref) + (f" ± {fmt(ref_h, 2)}" if ref_h is not None else ""),
            f"{fmt(mean)} ± {fmt(sd, 2)}", f"{fmt(means.min().item())}–{fmt(means.max().item())}",
            "yes" if inside else "no", f"{z:+.1f}"]


def main(argv: Sequence[str] | None = None) -> int:
    quick, out = page_args(__doc__, "maml_seeds.md", argv)
    s = Settings.quick() if quick else Settings()
    started, date = time.perf_counter(), utc_now()
    family = bm.tasks.Sinusoid()
    pool = s.iters * META_BATCH
    runs: dict[int, list[dict]] = {}
    for K in s.shots:
        test = family.sample(num_tasks=s.test_tasks, support=K, query=s.query, seed=1)
        runs[K] = []
        for run in range(s.seeds):
            train = family.sample(num_tasks=pool, support=K, query=K, seed=POOL_SEED + run)
            maml = MAML(net=maml_net(seed=run), inner_lr=INNER_LR).meta_fit(
                train, steps=s.iters, batch_tasks=META_BATCH, lr=META_LR, seed=run, progress=False)
            del train
            scored = scores(maml, test, s.steps)
            runs[K].append({"scores": scored, "seconds": maml.config["seconds"]})
            log(f"K={K} run {run}: {maml.config['seconds']:.0f} s; "
                + ", ".join(f"{n} steps {cell(scored[n])}" for n in s.steps))
    wall = time.perf_counter() - started

    step_names = [f"{n} step{'s' if n != 1 else ''}" for n in s.steps]
    per_run = [[str(K), str(run), *[cell(r["scores"][n]) for n in s.steps], f"{r['seconds']:.0f}"]
               for K in s.shots for run, r in enumerate(runs[K])]
    summary, means = [], {}
    for K in s.shots:
        for n in s.steps:
            means[K, n] = torch.tensor([r["scores"][n][0] for r in runs[K]])
        summary.append([str(K), *[f"{fmt(means[K, n].mean().item())} ± {fmt(means[K, n].std().item(), 2)}"
                                  for n in s.steps],
                        *[f"{fmt(means[K, n].min().item())}–{fmt(means[K, n].max().item())}" for n in s.steps]])
    test_se = {(K, n): sum(r["scores"][n][1] for r in runs[K]) / len(runs[K]) / Z95 for K, n in means}
    readings = [spread_reading(src, K, n, ref, h, means[K, n], test_se[K, n]) for src, K, n, ref, h in PUBLISHED
                if (K, n) in means]
    page = "\n".join([
        *page_header("MAML on sinusoids: the spread between training runs", "maml_seeds.py", quick, date, wall,
                     one_thread_machine()),
        "",
        f"The protocol of `docs/results.md`, section 1: `MAML(net=maml_net(seed=r), inner_lr={INNER_LR})` (1-40-40-1 "
        f"ReLU, second order, one inner step in training), `meta_fit(train, steps={s.iters}, "
        f"batch_tasks={META_BATCH}, lr={META_LR}, seed=r)` on `Sinusoid().sample(num_tasks={pool}, support=K, "
        f"query=K, seed={POOL_SEED} + r)` for runs r = 0 … {s.seeds - 1}: each run has its own initial weights, "
        "training tasks and meta-batch order. Every run is scored on the same held-out tasks, "
        f"`Sinusoid().sample(num_tasks={s.test_tasks}, support=K, query={s.query}, seed=1)`, adapted with "
        f"`maml.adapt(test.support, inner_steps=n)` (α = {INNER_LR}); query MSE, mean over tasks ± 95% interval "
        "(over test tasks only). Where the steps of size α diverged on a task (its MSE is not finite or above "
        f"{DIVERGED:g}, while predicting 0 everywhere scores at most 12.5), the mean is over the other tasks and "
        "the cell says how many were left out.",
        "",
        table(["K", "run", *step_names, "train s"], per_run),
        "",
        "Over runs: the mean of the runs' MSEs ± their standard deviation (the spread of one training run), and "
        "the range:",
        "",
        table(["K", *[f"{name}, mean ± sd" for name in step_names], *[f"{name}, range" for name in step_names]],
              summary),
        "",
        "Published single runs (`../shared/REFERENCES.md`) against that spread. *z* is the published figure's "
        "distance from our mean over runs in units of sqrt(sd² (1 + 1/runs) + our test-task standard error² + its "
        "own standard error²): what a single run of our MAML, scored on other test tasks, would be expected to "
        "vary by. |z| < 2 means the "
        "published run is one our MAML could have produced.",
        "",
        table(["source", "K", "steps", "published", "ours, mean ± sd over runs", "our range", "inside range",
               "z"], readings),
        "",
    ])
    publish(page, out, started)
    return 0


if __name__ == "__main__":
    sys.exit(main())

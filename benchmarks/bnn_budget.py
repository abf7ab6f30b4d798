r"""How the HierarchicalBNN's 5-shot sinusoid MSE depends on its meta-training budget, amortized and SVI-refined.

``docs/sinusoid.md`` fits ``HierarchicalBNN`` with the pooled guide for 18000 steps and scores the amortized
guide alone; the issue's target is a 5-shot MSE of at most 0.175 (half of MAML's best published 0.35). This
script refits it at that budget and at twice it (same seed, same tasks), and adds ``adapt(method="svi")``
refinement from the amortized guess, so the next run of the main benchmark can choose its budget from numbers.

Usage::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bnn_budget.py           # full run (~20 min, 1 core) -> docs/bnn_budget.md
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bnn_budget.py --quick   # smoke run (< 1 min), prints the page
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import sys  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from typing import Sequence  # noqa: E402

import torch  # noqa: E402

import bayesmeta as bm  # noqa: E402
from _report import fmt, log, one_thread_machine, page_args, page_header, pm, publish, table, utc_now, verdict  # noqa: E402
from bayesmeta.evaluation.metrics import mse, summarize  # noqa: E402
from bayesmeta.models import HierarchicalBNN  # noqa: E402

torch.set_num_threads(1)

TARGET = 0.175  # half of MAML's best published 5-shot figure (0.35, MAML paper appendix C, 10 steps)
SHOTS = 5


@dataclass
class Settings:
    """How much work the run does (``--quick`` shrinks it)."""

    train_tasks: int = 20000
    test_tasks: int = 1000
    budgets: tuple[int, ...] = (18000, 36000)
    svi_tasks: int = 200
    svi_steps: int = 500
    draws: int = 50

    @classmethod
    def quick(cls) -> Settings:
        return cls(train_tasks=300, test_tasks=20, budgets=(20, 40), svi_tasks=10, svi_steps=10, draws=10)


def score(post: bm.TaskPosterior, test: bm.TaskSet, draws: int) -> tuple[float, float]:
    with torch.no_grad():
        pred = post.predict(test.query.x, num_samples=draws, seed=0)
    return summarize(mse(pred.mean, test.query.y, test.query.mask))


def main(argv: Sequence[str] | None = None) -> int:
    quick, out = page_args(__doc__, "bnn_budget.md", argv)
    s = Settings.quick() if quick else Settings()
    started, date = time.perf_counter(), utc_now()
    family = bm.tasks.Sinusoid()
    train = family.sample(num_tasks=s.train_tasks, support=10, query=10, seed=0)
    test = family.sample(num_tasks=s.test_tasks, support=10, query=100, seed=1)
    sub = test[torch.arange(s.svi_tasks)]
    rows, best = [], float("inf")
    for steps in s.budgets:
        prior = bm.fit_prior(HierarchicalBNN(init_scale=0.1), train, guide="pooled", steps=steps, batch_tasks=64,
                             lr=1e-3, seed=0, progress=False)
        fit_s = prior.config["seconds"]
        amortized = score(prior.adapt(test.support.head(SHOTS)), test, s.draws)
        amortized_sub = score(prior.adapt(sub.support.head(SHOTS)), sub, s.draws)
        begin = time.perf_counter()
        refined = score(prior.adapt(sub.support.head(SHOTS), method="svi", steps=s.svi_steps), sub, s.draws)
        svi_s = time.perf_counter() - begin
        best = min(best, amortized[0])
        log(f"{steps} steps: fit {fit_s:.0f} s, amortized {amortized[0]:.4g}, svi {refined[0]:.4g} ({svi_s:.0f} s)")
        rows.append([f"{steps:,}", fmt(fit_s), f"{prior.model.noise_scale.item():.3g}", pm(amortized),
                     pm(amortized_sub), pm(refined), fmt(svi_s)])
    wall = time.perf_counter() - started
    page = "\n".join([
        *page_header("HierarchicalBNN: 5-shot MSE against the meta-training budget", "bnn_budget.py", quick, date,
                     wall, one_thread_machine()),
        "",
        f"`fit_prior(HierarchicalBNN(init_scale=0.1), train, guide=\"pooled\", steps=N, batch_tasks=64, lr=1e-3, "
        f"seed=0)` (the learning rate decays 10× over the N steps) on `Sinusoid().sample(num_tasks={s.train_tasks}, "
        f"support=10, query=10, seed=0)`, as in `docs/sinusoid.md` at N = 18,000. Test: "
        f"`Sinusoid().sample(num_tasks={s.test_tasks}, support=10, query=100, seed=1)`, adapted on the first "
        f"{SHOTS} support points; query MSE, mean ± standard error over tasks, predictions averaging {s.draws} "
        f"draws of the weights. SVI: `adapt(method=\"svi\", steps={s.svi_steps})` (a diagonal Gaussian per task "
        f"started at the amortized guess) on the first {s.svi_tasks} test tasks, beside the amortized guess on the "
        "same tasks.",
        "",
        table(["steps N", "fit s", "learned noise", f"{SHOTS}-shot amortized (all tasks)",
               f"amortized, first {s.svi_tasks}", f"SVI-refined, first {s.svi_tasks}", "SVI s"],
              rows, [False, True, True, True, True, True, True]),
        "",
        f"The issue's target (5-shot MSE ≤ {TARGET}, amortized, all tasks), at the best budget here: "
        f"{fmt(best)} — {verdict(best <= TARGET)}. One seed per budget: the ± are over test tasks, not over "
        "training runs. The 18,000-step fit of `docs/sinusoid.md`, same seed and settings, gave 0.312 ± 0.015 on "
        "an AMD EPYC host and 0.176 ± 0.014 on an Intel Xeon host (the two CPUs' floating-point kernels differ, and "
        "a long non-convex fit amplifies the difference): the spread between training runs is larger than these "
        "standard errors.",
        "",
    ])
    publish(page, out, started)
    return 0


if __name__ == "__main__":
    sys.exit(main())

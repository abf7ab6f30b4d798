r"""How the HierarchicalBNN's 5-shot sinusoid MSE depends on its meta-training budget, for both guides,
amortized and SVI-refined.

``docs/sinusoid.md`` fits ``HierarchicalBNN`` with the pooled guide for 36000 steps and with the gradient guide
(ABML) for 8000, and scores each amortized guide alone; the issue's target is a 5-shot MSE of at most 0.175 (half
of MAML's best published 0.35). This script refits each guide at several budgets (same seed, same tasks) and adds
``adapt(method="svi")`` refinement from the amortized guess, so the next run of the main benchmark can choose its
budgets from numbers.

Usage::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bnn_budget.py           # full run (~90 min, 1 core) -> docs/bnn_budget.md
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


@dataclass(frozen=True)
class Config:
    """One meta-training run: the guide, its budget and learning rate, the prior's initial scale and the noise
    scale held through the fit (None: learned), as in ``benchmarks/sinusoid.py``."""

    guide: str
    steps: int
    lr: float
    init_scale: float
    noise: float | None


POOLED = {"lr": 1e-3, "init_scale": 0.1, "noise": None}
GRADIENT = {"lr": 3e-3, "init_scale": 0.01, "noise": 0.05}


@dataclass
class Settings:
    """How much work the run does (``--quick`` shrinks it)."""

    train_tasks: int = 20000
    test_tasks: int = 1000
    configs: tuple[Config, ...] = (
        Config("pooled", 18000, **POOLED), Config("pooled", 36000, **POOLED),
        Config("gradient", 8000, **GRADIENT), Config("gradient", 16000, **GRADIENT),
        Config("gradient", 32000, **GRADIENT),
    )
    svi_tasks: int = 200
    svi_steps: int = 500
    draws: int = 50

    @classmethod
    def quick(cls) -> Settings:
        configs = (Config("pooled", 20, **POOLED), Config("gradient", 10, **GRADIENT))
        return cls(train_tasks=300, test_tasks=20, configs=configs, svi_tasks=10, svi_steps=10, draws=10)


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
    rows, best = [], {}
    for c in s.configs:
        model = HierarchicalBNN(init_scale=c.init_scale)
        fixed: list[str] = []
        if c.noise is not None:
            model.set_noise(c.noise)
            fixed = model.noise_parameters
        prior = bm.fit_prior(model, train, guide=c.guide, steps=c.steps, batch_tasks=64, lr=c.lr, seed=0,
                             fixed=fixed, progress=False)
        fit_s = prior.config["seconds"]
        amortized = score(prior.adapt(test.support.head(SHOTS)), test, s.draws)
        amortized_sub = score(prior.adapt(sub.support.head(SHOTS)), sub, s.draws)
        begin = time.perf_counter()
        refined = score(prior.adapt(sub.support.head(SHOTS), method="svi", steps=s.svi_steps), sub, s.draws)
        svi_s = time.perf_counter() - begin
        best[c.guide] = min(best.get(c.guide, float("inf")), amortized[0])
        log(f"{c.guide} {c.steps} steps: fit {fit_s:.0f} s, amortized {amortized[0]:.4g}, svi {refined[0]:.4g} "
            f"({svi_s:.0f} s)")
        noise = f"{prior.model.noise_scale.item():.3g}" + (" (held)" if c.noise is not None else "")
        rows.append([c.guide, f"{c.steps:,}", fmt(c.lr), fmt(c.init_scale), fmt(fit_s), noise, pm(amortized),
                     pm(amortized_sub), pm(refined), fmt(svi_s)])
    wall = time.perf_counter() - started
    page = "\n".join([
        *page_header("HierarchicalBNN: 5-shot MSE against the meta-training budget", "bnn_budget.py", quick, date,
                     wall, one_thread_machine()),
        "",
        "`model = HierarchicalBNN(init_scale=s0)`, then `fit_prior(model, train, guide=G, steps=N, batch_tasks=64, "
        f"lr=lr, seed=0)` (the learning rate decays 10× over the N steps) on `Sinusoid().sample(num_tasks="
        f"{s.train_tasks}, support=10, query=10, seed=0)`; for the gradient guide the noise scale is held "
        "(`model.set_noise(0.05)`, `fixed=model.noise_parameters`: learned, it grows until the guide's steps barely "
        "leave the prior; `HierarchicalBNN.set_noise` says why), as in `docs/sinusoid.md`, which uses N = 36,000 "
        f"(pooled) and 8,000 (gradient). Test: `Sinusoid().sample(num_tasks={s.test_tasks}, support=10, query=100, "
        f"seed=1)`, adapted on the first {SHOTS} support points; query MSE, mean ± standard error over tasks, "
        f"predictions averaging {s.draws} draws of the weights. SVI: `adapt(method=\"svi\", steps={s.svi_steps})` "
        f"(a diagonal Gaussian per task started at the amortized guess) on the first {s.svi_tasks} test tasks, beside "
        "the amortized guess on the same tasks.",
        "",
        table(["guide", "steps N", "lr", "s0", "fit s", "noise", f"{SHOTS}-shot amortized (all tasks)",
               f"amortized, first {s.svi_tasks}", f"SVI-refined, first {s.svi_tasks}", "SVI s"],
              rows, [False, True, True, True, True, True, True, True, True, True]),
        "",
        f"The issue's target (5-shot MSE ≤ {TARGET}, amortized, all tasks), at the best budget here: "
        + "; ".join(f"{g} guide {fmt(v)} — {verdict(v <= TARGET)}" for g, v in best.items())
        + ". One seed per budget: the ± are over test tasks, not over training runs. The pooled guide's 18,000-step "
        "fit, same seed and settings, gave 0.312 ± 0.015 on an AMD EPYC host and 0.176 ± 0.014 on an Intel Xeon "
        "host (the two CPUs' floating-point kernels differ, and a long non-convex fit amplifies the difference): the "
        "spread between training runs is larger than these standard errors.",
        "",
    ])
    publish(page, out, started)
    return 0


if __name__ == "__main__":
    sys.exit(main())

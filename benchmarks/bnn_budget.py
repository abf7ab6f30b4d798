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
from dataclasses import dataclass, field  # noqa: E402
from typing import Sequence  # noqa: E402

import torch  # noqa: E402

import bayesmeta as bm  # noqa: E402
from _report import fmt, log, one_thread_machine, page_args, page_header, pm, publish, table, utc_now, verdict  # noqa: E402
from bayesmeta.evaluation.metrics import mse, summarize  # noqa: E402
import sinusoid  # noqa: E402

torch.set_num_threads(1)

TARGET = 0.175  # half of MAML's best published 5-shot figure (0.35, MAML paper appendix C, 10 steps)
SHOTS = 5


@dataclass
class Settings:
    """How much work the run does (``--quick`` shrinks it). Each fit is the main benchmark's for its guide
    (``fits.bnn[guide]``: learning rate, initial prior scale, held noise, training split, guide options) with
    the number of steps replaced."""

    test_tasks: int = 1000
    budgets: tuple[tuple[str, int], ...] = (
        ("pooled", 18000), ("pooled", 36000), ("gradient", 8000), ("gradient", 16000), ("gradient", 32000),
    )
    fits: sinusoid.Settings = field(default_factory=sinusoid.Settings)
    svi_tasks: int = 200
    svi_steps: int = 500
    draws: int = 50

    @classmethod
    def quick(cls) -> Settings:
        return cls(test_tasks=20, budgets=(("pooled", 20), ("gradient", 10)), fits=sinusoid.Settings.quick(),
                   svi_tasks=10, svi_steps=10, draws=10)


def score(post: bm.TaskPosterior, test: bm.TaskSet, draws: int) -> tuple[float, float]:
    with torch.no_grad():
        pred = post.predict(test.query.x, num_samples=draws, seed=0)
    return summarize(mse(pred.mean, test.query.y, test.query.mask))


def main(argv: Sequence[str] | None = None) -> int:
    quick, out = page_args(__doc__, "bnn_budget.md", argv)
    s = Settings.quick() if quick else Settings()
    started, date = time.perf_counter(), utc_now()
    family = bm.tasks.Sinusoid()
    test = family.sample(num_tasks=s.test_tasks, support=10, query=100, seed=1)
    sub = test[torch.arange(s.svi_tasks)]
    rows, best = [], {}
    for guide, steps in s.budgets:
        c = dict(s.fits.bnn[guide], steps=steps)
        prior, fit_s = sinusoid.fit_bnn(family, guide, c, s.fits, c["noise"])
        amortized = score(prior.adapt(test.support.head(SHOTS)), test, s.draws)
        amortized_sub = score(prior.adapt(sub.support.head(SHOTS)), sub, s.draws)
        begin = time.perf_counter()
        refined = score(prior.adapt(sub.support.head(SHOTS), method="svi", steps=s.svi_steps), sub, s.draws)
        svi_s = time.perf_counter() - begin
        best[guide] = min(best.get(guide, float("inf")), amortized[0])
        log(f"{guide} {steps} steps: fit {fit_s:.0f} s, amortized {amortized[0]:.4g}, svi {refined[0]:.4g} "
            f"({svi_s:.0f} s)")
        noise = f"{prior.model.noise_scale.item():.3g}" + (" (held)" if c["noise"] is not None else "")
        split = f"{c['support']}/{20 - c['support']}" + (", steps read the support"
                                                          if c["guide_options"].get("reads") == "support" else "")
        rows.append([guide, f"{steps:,}", fmt(c["lr"]), fmt(c["init_scale"]), split, fmt(fit_s), noise,
                     pm(amortized), pm(amortized_sub), pm(refined), fmt(svi_s)])
    wall = time.perf_counter() - started
    main_steps = {g: f"{c['steps']:,}" for g, c in sinusoid.Settings().bnn.items()}
    page = "\n".join([
        *page_header("HierarchicalBNN: 5-shot MSE against the meta-training budget", "bnn_budget.py", quick, date,
                     wall, one_thread_machine()),
        "",
        "Each guide G is fitted as `benchmarks/sinusoid.py` fits it (`sinusoid.fit_bnn`), only the number of steps N "
        "changed: `model = HierarchicalBNN(init_scale=s0)`, then `fit_prior(model, train, guide=G, steps=N, "
        f"batch_tasks={s.fits.bnn_batch}, lr=lr, seed=0)` (the learning rate decays 10× over the N steps) on "
        f"{s.fits.bnn_train_tasks} noiseless training tasks, `Sinusoid().sample(num_tasks={s.fits.bnn_train_tasks}, "
        "support=k, query=20 - k, seed=0)` (split k / 20 − k in the table); for the gradient guide the noise scale "
        "is held (`model.set_noise(0.05)`, `fixed=model.noise_parameters`: learned, it grows until the guide's steps "
        "barely leave the prior; `HierarchicalBNN.set_noise` says why). `docs/sinusoid.md` uses N = "
        + " and ".join(f"{v} ({g})" for g, v in main_steps.items()) + ". " + sinusoid.BNN_SPLIT + " "
        f"Test: `Sinusoid().sample(num_tasks={s.test_tasks}, support=10, query=100, seed=1)`, adapted on the first "
        f"{SHOTS} support points; query MSE, mean ± standard error over tasks, predictions averaging {s.draws} draws "
        f"of the weights. SVI: `adapt(method=\"svi\", steps={s.svi_steps})` (a diagonal Gaussian per task started at "
        f"the amortized guess) on the first {s.svi_tasks} test tasks, beside the amortized guess on the same tasks.",
        "",
        table(["guide", "steps N", "lr", "s0", "training split", "fit s", "noise", f"{SHOTS}-shot amortized (all tasks)",
               f"amortized, first {s.svi_tasks}", f"SVI-refined, first {s.svi_tasks}", "SVI s"],
              rows, [False, True, True, True, False, True, True, True, True, True, True]),
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

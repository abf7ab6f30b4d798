r"""Results: honest MAML baselines on the MAML paper's sinusoid protocol, and the lecture's fine-tuning claims measured.

1. ``MAML()`` on the protocol of Finn et al. 2017 §5.1 (1-40-40-1 ReLU, meta-batch 25, one inner step of size
   0.01 in training, Adam 1e-3, K support + K query points per training task, K = 5 and 10, meta-batches drawn
   from a pool of iterations × 25 tasks, about one per visit), scored on 1000 held-out tasks × 100 query points
   after 1, 5 and 10 inner steps, against the published figures; and the vectorized ``MAML()`` against a
   per-task-loop MAML trained for the same (smaller) number of iterations.
2. The lecture's claims (CS-330, fine-tuning): (a) query MSE against support size for TrainFromScratch, FineTune,
   MAML, BlackBox and a NeuralProcessModel (amortized and importance adaptation), with the Bayes-optimal floor;
   (b) surgical fine-tuning (one layer at a time) under an input-level and an output-level shift; (c) LP-FT,
   with twice and with as many steps, against plain fine-tuning, in distribution and under the shifts.

Usage::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/results.py           # full run (~16 min, 1 core) -> docs/results.md
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/results.py --quick   # smoke run (< 1 min), prints the page
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch

import bayesmeta as bm
from _report import log, one_thread_machine, page_args, page_header, publish, table, utc_now  # noqa: E402
from _results_finetune import (FAILURES, LPFT, LPFT_EQ, PLAIN, SHIFTS, TUNE_LR,  # noqa: E402
                               lpft_reading, lpft_table, section_shift, section_shots, shift_table, shots_reading,
                               shots_table, surgical_reading, winners, with_missing)
from _results_maml import (INNER_LR, META_BATCH, META_LR, compare_reading, loop_reading, pm95,  # noqa: E402
                           pool_text, pool_use, section_maml)
from bayesmeta.evaluation import plot_benchmark

torch.set_num_threads(1)

NP_REFERENCE_STEPS = 30000  # benchmarks/sinusoid.py's NeuralProcessModel budget


@dataclass
class Settings:
    """How much work each part does (``--quick`` shrinks everything)."""

    # section 1
    maml_iters: int = 70000
    maml_pool: int | None = None  # training tasks the meta-batches are drawn from (per K); None: iters × batch
    maml_test_tasks: int = 1000
    maml_query: int = 100
    maml_test_steps: tuple[int, ...] = (1, 5, 10)
    loop_iters: int = 3000
    loop_pool: int = 50000  # the vectorized-against-loop comparison's own (smaller) pool
    loop_k: int = 5
    # section 2a
    train_tasks: int = 20000
    np_steps: int = NP_REFERENCE_STEPS  # kl_anneal_steps = np_steps // 3, as benchmarks/sinusoid.py
    bb_steps: int = 10000
    ft_steps: int = 10000
    shot_tasks: int = 300
    shots: tuple[int, ...] = (1, 2, 5, 10, 20, 50, 100)
    # importance proposals per task by shots (its cost grows with particles × points)
    particles: dict[int, int] = field(default_factory=lambda: {1: 2048, 2: 2048, 5: 1024, 10: 512, 20: 256,
                                                                50: 128, 100: 64})
    # sections 2b, 2c
    shift_tasks: int = 1000
    shift_query: int = 100
    shift_shots: int = 10
    tune_steps: tuple[int, ...] = (10, 100)
    grid: tuple[int, int] = (400, 400)

    @classmethod
    def quick(cls) -> Settings:
        return cls(maml_iters=100, maml_pool=500, maml_test_tasks=50, maml_query=20, loop_iters=20, loop_pool=500,
                   train_tasks=300, np_steps=60, bb_steps=50, ft_steps=100, shot_tasks=20, shots=(1, 5, 20),
                   particles={1: 32, 5: 16, 20: 8}, shift_tasks=50, shift_query=20, tune_steps=(10,), grid=(60, 60))

    def pool(self) -> int:
        """Section 1's training tasks per K: ``maml_pool``, by default one per task visit (fresh tasks)."""
        return self.maml_iters * META_BATCH if self.maml_pool is None else self.maml_pool


def main(argv: Sequence[str] | None = None) -> int:
    quick, out = page_args(__doc__, "results.md", argv)
    s = Settings.quick() if quick else Settings()
    started = time.perf_counter()
    date = utc_now()
    fam = bm.tasks.Sinusoid()

    log("section 1: MAML on the paper's protocol")
    t1, t2, res = section_maml(s, fam)
    log("section 2a: MSE against support size")
    df, info = section_shots(s, fam, res[10]["maml"])
    figure_name = "results_shots.png"
    if out != "-":
        fig = plot_benchmark(df)
        fig.axes[0].set_title(f"Sinusoid, {s.shot_tasks} held-out tasks × 100 query points")
        target = Path(out).resolve().parent / figure_name
        tmp = target.with_name(f".{figure_name}.tmp.png")
        fig.savefig(tmp, dpi=110)
        os.replace(tmp, target)
        log(f"wrote {target}")
    log("sections 2b, 2c: surgical fine-tuning and LP-FT under shifts")
    shift_out, floors = section_shift(s, info["ft"])  # a variant that diverged is shown as inf
    df = with_missing(df, s.shots)

    # ------------------------------------------------------------ text
    r5, r10, lp = res[5]["scores"], res[10]["scores"], res["loop"]
    pool, fresh = s.pool(), s.pool() >= s.maml_iters * META_BATCH

    wall = time.perf_counter() - started
    lines = [
        *page_header("Results: MAML baselines and the lecture's fine-tuning claims", "results.py", quick, date, wall,
                     one_thread_machine()),
        "",
        "Everything here runs on one CPU core (`torch.set_num_threads(1)`, `OMP_NUM_THREADS=1`); the load line above "
        "says whether other processes shared the machine. Every \"Reading\" paragraph is written by the script "
        "from this run's numbers.",
        "",
        "## 1. MAML on the MAML paper's sinusoid protocol",
        "",
        f"Settings: `MAML()` (1-40-40-1 ReLU, second order, one inner step of size α = {INNER_LR} in training), "
        f"`meta_fit(train, steps={s.maml_iters}, batch_tasks={META_BATCH}, lr={META_LR}, seed=0)`; each K has its own "
        f"training collection `Sinusoid().sample(num_tasks={pool}, support=K, query=K, seed=0)`, from which the "
        f"meta-batches of {META_BATCH} distinct tasks are drawn at random: {pool_text(s.maml_iters, pool)}"
        + (" (the MAML paper draws a fresh task for every visit; this pool has as many tasks as visits)" if fresh
           else " (the MAML paper draws a fresh task for every visit)") + ". Test: "
        f"`Sinusoid().sample(num_tasks={s.maml_test_tasks}, support=K, query={s.maml_query}, seed=1)`, "
        f"`maml.adapt(test.support, inner_steps=n)` with α = {INNER_LR}; query MSE, mean over tasks **± 95% "
        f"interval** (1.96 standard errors). 0 steps is θ itself (no adaptation).",
        "",
        t1,
        "",
        "Published and previously measured figures (cited as the project's shared REFERENCES.md gives them):",
        "",
        table(["source", "setting", "1 step", "5 steps", "10 steps"], [
            ["Finn et al. 2017, MAML paper, appendix C, table 2", "MAML, adapted on 5 points", "0.67", "0.38", "0.35"],
            ["same table", "pre-train on all tasks, then fine-tune, 5 points", "2.41", "2.23", "2.19"],
            ["Li et al. 2017, Meta-SGD, table 1 (± not verified)", "MAML, 5-shot", "1.13 ± 0.18", "", ""],
            ["learn2learn 0.2.0, 2-core CPU, 70,000 iterations (REFERENCES)", "train/test K = 5",
             "0.514 ± 0.035", "", "0.296 ± 0.030"],
            ["same", "train/test K = 10", "0.313 ± 0.022", "", "unstable (a few tasks diverge)"],
        ], [False, False, True, True, True]),
        "",
        f"Reading: with K = 5 our MAML reaches {pm95(r5[1])} after 1 step and {pm95(r5[10])} after 10 "
        f"({pm95(r5[5])} after 5). The published 5-point MAML figures span 0.35–0.67 (MAML paper, 10 and 1 steps) "
        f"and 1.13 ± 0.18 (Meta-SGD's table); learn2learn measured 0.514 ± 0.035 / 0.296 ± 0.030 here. "
        f"{compare_reading(r5, 0.67, 0.35)} With K = 10: {pm95(r10[1])} after 1 step (learn2learn 0.313 ± 0.022) and "
        f"{pm95(r10[10])} after 10.",
        "",
        f"**Vectorized against a per-task loop**, K = {s.loop_k}, {s.loop_iters:,} iterations each, same "
        f"meta-batches (same seed) from their own smaller pool `Sinusoid().sample(num_tasks={s.loop_pool}, "
        f"support={s.loop_k}, query={s.loop_k}, seed=0)` ({pool_text(s.loop_iters, s.loop_pool)}), same test tasks; "
        f"the loop is `loop_meta_fit` of `benchmarks/maml_speed.py` "
        f"(`autograd.grad(create_graph=True)` one task at a time). ± 95% intervals; the last row is the per-task "
        f"paired difference.",
        "",
        t2,
        "",
        f"Reading: {loop_reading(lp)} The loop took {lp['loop_s']:.0f} s and `MAML()` {lp['vec_s']:.1f} s "
        f"({lp['loop_s'] / lp['vec_s']:.1f}× less wall time) for the same {s.loop_iters:,} iterations.",
        "",
        "## 2. The lecture's claims, measured",
        "",
        "### 2a. Fine-tuning against the size of the target dataset",
        "",
        f"Training tasks: `Sinusoid().sample(num_tasks={s.train_tasks}, support=10, query=10, seed=0)`. Test: "
        f"`Sinusoid().sample(num_tasks={s.shot_tasks}, support={max(s.shots)}, query=100, seed=2)`; k-shot "
        f"adaptation reads the first k support points; `bm.evaluation.benchmark(learners, test, shots={list(s.shots)}, "
        f"floor=Sinusoid())`. Learners:",
        "",
        "* **TrainFromScratch()**: a fresh 1-40-40-1 net per task, Adam lr 1e-2, 100 full-batch steps; no meta-training.",
        f"* **FineTune()**: pre-trained on the pooled points, `meta_fit(train, steps={s.ft_steps}, batch_tasks=25, "
        f"lr=1e-3, seed=0)`; per task 10 SGD steps of lr 1e-2 on all layers (the defaults).",
        f"* **MAML**: the K = 10 model of section 1 ({s.maml_iters:,} iterations on its own 10+10-point tasks), "
        f"1 inner step of 0.01 at test, as in its training (in a first run, 10 inner steps made one of the 300 "
        f"tasks' MSE overflow to inf at some support size, which ended that run).",
        f"* **BlackBox()** (CNP, 3×128): `meta_fit(train, steps={s.bb_steps}, batch_tasks=64, lr=1e-3, seed=0)`.",
        f"* **NeuralProcessModel()**: `fit_prior(NeuralProcessModel(), train, guide=\"pooled\", steps={s.np_steps}, "
        f"batch_tasks=64, lr=1e-3, kl_anneal_steps={s.np_steps // 3}, random_subsets=True, seed=0)`; adapted "
        f"`\"amortized\"` and with `adapting(prior, method=\"importance\", num_particles=P)`, P by shots "
        f"{s.particles} (fewer at larger shots: the cost grows with particles × points; 4096 particles at 100 "
        f"shots took 266 s for 300 tasks in a trial). Predictions: 100 draws.",
        "",
        f"Query MSE, mean ± standard error over the {s.shot_tasks} tasks; meta-train s is the training wall time:",
        "",
        shots_table(df, s.shots),
        "",
        "![query MSE against shots](results_shots.png)" if not quick else "(figure not written in --quick)",
        "",
        "Reading: " + shots_reading(df, s.shots),
        "",
        "### 2b. Surgical fine-tuning under shifts",
        "",
        f"The FineTune network pre-trained in 2a (on the standard family) is fine-tuned on each target task's "
        f"{s.shift_shots} support points with Adam (fresh state per task), lr {TUNE_LR}, for {' and '.join(map(str, s.tune_steps))} steps, "
        f"training only layer 0 (`FineTune(layers=[0])`, the first 1→40 layer), only layer 1 (40→40), only the "
        f"head (layer 2, 40→1) or all layers; scored on {s.shift_query} query points of {s.shift_tasks} tasks per "
        f"target family. (Plain SGD at lr 1e-2, FineTune's default and what 2a uses, diverged on the new-x-range "
        f"tasks, whose inputs reach 15: hence Adam here.) Target families (test seeds 10–13):",
        "",
        *[f"* **{k}**: {v[0]}" for k, v in SHIFTS.items()],
        "",
        f"Query MSE at {s.shift_shots} shots, mean ± standard error over tasks (the two LP-FT columns are section "
        f"2c):",
        "",
        shift_table(shift_out, floors, s),
        "",
        "Which of the four surgical choices has the lowest MSE (others within 2 combined standard errors named):",
        "",
        *winners(shift_out, s),
        "",
        "Reading: " + surgical_reading(shift_out, s),
        "",
        "### 2c. LP-FT against plain fine-tuning",
        "",
        f"**{LPFT}**, `FineTune(lr={TUNE_LR}, steps=n, optimizer=\"adam\", lp_ft=True)`: n Adam steps on the head "
        f"alone, then n steps on all layers with a fresh optimizer state, 2n in all; **{LPFT_EQ}**, "
        f"`FineTune(lr={TUNE_LR}, steps=n - n // 2, optimizer=\"adam\", lp_ft=n // 2)`: n // 2 head steps, then "
        f"n − n // 2 on all layers, n in all ({', '.join(f'{n // 2} + {n - n // 2}' for n in s.tune_steps)}); "
        f"against **{PLAIN}**, `FineTune(lr={TUNE_LR}, steps=n, optimizer=\"adam\")` (plain fine-tuning, n steps). "
        f"Same pre-trained net, tasks and query points as 2b.",
        "",
        lpft_table(shift_out, s),
        "",
        "Reading: " + lpft_reading(shift_out, s),
        "",
        "## What was not measured",
        "",
        *([f"* Diverged, left out of the tables (shown as inf): {'; '.join(FAILURES)}."] if FAILURES else
          ["* No learner diverged in this run (every entry above is finite)."]),
        ("* The MAML paper draws new training tasks for every meta-batch; here they are drawn at random from a "
         f"pool of {pool:,} tasks per K, as many as the task visits, so about "
         f"{100 * pool_use(s.maml_iters, pool)['repeat']:.0f}% of the visits return to a task met before (see "
         "section 1)." if fresh else
         "* The MAML paper draws new training tasks for every meta-batch; here meta-batches come from a fixed "
         f"collection of {pool:,} tasks per K, each seen {pool_use(s.maml_iters, pool)['mean']:.2g} times on "
         "average (see section 1)."),
        *([f"* The NeuralProcessModel is trained for {s.np_steps:,} steps (`benchmarks/sinusoid.py` uses "
           f"{NP_REFERENCE_STEPS:,}) to fit the time limit of this run."] if s.np_steps < NP_REFERENCE_STEPS else []),
        "* The importance sampler uses fewer particles at larger support sizes (listed in 2a) to fit the time "
        "limit of this run, so its large-shot numbers are those of a cheaper sampler, not of the method's limit.",
        "* No hyperparameter search for any learner: every one runs at the settings stated; fine-tuning results "
        "depend on the learning rate and step count, of which only two step counts were tried.",
        "* One seed per training run: the ± are over test tasks, not over training runs.",
        "",
    ]
    publish("\n".join(lines), out, started)
    return 0



if __name__ == "__main__":
    sys.exit(main())

r"""Results: honest MAML baselines on the MAML paper's sinusoid protocol, and the lecture's fine-tuning claims measured.

1. ``MAML()`` on the protocol of Finn et al. 2017 §5.1 (1-40-40-1 ReLU, meta-batch 25, one inner step of size
   0.01 in training, Adam 1e-3, K support + K query points per training task, K = 5 and 10), scored on 1000
   held-out tasks × 100 query points after 1, 5 and 10 inner steps, against the published figures; and the
   vectorized ``MAML()`` against a per-task-loop MAML trained for the same (smaller) number of iterations.
2. The lecture's claims (CS-330, fine-tuning): (a) query MSE against support size for TrainFromScratch, FineTune,
   MAML, BlackBox and a NeuralProcessModel (amortized and importance adaptation), with the Bayes-optimal floor;
   (b) surgical fine-tuning (one layer at a time) under an input-level and an output-level shift; (c) LP-FT
   against plain fine-tuning, in distribution and under the shifts.

Usage::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/results.py           # full run (~12 min, 1 core) -> docs/results.md
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/results.py --quick   # smoke run (< 1 min), prints the page
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import pandas as pd
import torch

import bayesmeta as bm
import maml_speed  # noqa: E402  (the per-task-loop reference lives there)
from _report import fmt, log, one_thread_machine, page_args, page_header, pm, publish, table, utc_now  # noqa: E402
from bayesmeta.baselines import MAML, BlackBox, FineTune, TrainFromScratch, maml_net
from bayesmeta.evaluation import adapting, benchmark, plot_benchmark
from bayesmeta.evaluation.metrics import mse, summarize
from bayesmeta.models import NeuralProcessModel

torch.set_num_threads(1)

INNER_LR = 0.01
META_LR = 1e-3
META_BATCH = 25
Z95 = 1.959963984540054
FLOOR = "Bayes-optimal"


@dataclass
class Settings:
    """How much work each part does (``--quick`` shrinks everything)."""

    # section 1
    maml_iters: int = 70000
    maml_pool: int = 50000  # distinct training tasks the meta-batches are drawn from (per K)
    maml_test_tasks: int = 1000
    maml_query: int = 100
    maml_test_steps: tuple[int, ...] = (1, 5, 10)
    loop_iters: int = 3000
    loop_k: int = 5
    # section 2a
    train_tasks: int = 20000
    np_steps: int = 20000
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
        return cls(maml_iters=100, maml_pool=500, maml_test_tasks=50, maml_query=20, loop_iters=20,
                   train_tasks=300, np_steps=60, bb_steps=50, ft_steps=100, shot_tasks=20, shots=(1, 5, 20),
                   particles={1: 32, 5: 16, 20: 8}, shift_tasks=50, shift_query=20, tune_steps=(10,), grid=(60, 60))


def ci95(values: torch.Tensor) -> tuple[float, float]:
    """(mean, half-width of the 95% interval of the mean) over tasks."""
    m, se = summarize(values)
    return m, Z95 * se


def pm95(stat: tuple[float, float]) -> str:
    return f"{fmt(stat[0])} ± {fmt(stat[1], 2)}"


# ---------------------------------------------------------------------- section 1
def loop_meta_fit(net: torch.nn.Module, tasks: bm.TaskSet, steps: int) -> float:
    """``benchmarks/maml_speed.py``'s per-task-loop MAML (second order, one inner step, the same meta-batches as
    ``MAML.meta_fit``), as usually written; trains ``net`` in place and returns the wall seconds."""
    start = time.perf_counter()
    maml_speed.loop_meta_fit(net, tasks, steps, META_BATCH, lr=META_LR, inner_lr=INNER_LR)
    return time.perf_counter() - start


def maml_scores(maml: MAML, test: bm.TaskSet, steps: Sequence[int]) -> dict[int, tuple[float, float]]:
    out = {}
    for n in steps:
        with torch.no_grad():
            pred = maml.adapt(test.support, inner_steps=n).predict(test.query.x)
        out[n] = ci95(mse(pred.mean, test.query.y, test.query.mask))
    return out


def section_maml(s: Settings, fam: bm.tasks.Sinusoid) -> tuple[str, dict[str, Any]]:
    res: dict[str, Any] = {}
    rows = []
    steps = (0,) + s.maml_test_steps
    for K in (5, 10):
        train = fam.sample(num_tasks=s.maml_pool, support=K, query=K, seed=0)
        test = fam.sample(num_tasks=s.maml_test_tasks, support=K, query=s.maml_query, seed=1)
        maml = MAML(inner_lr=INNER_LR).meta_fit(train, steps=s.maml_iters, batch_tasks=META_BATCH, lr=META_LR,
                                                seed=0, progress=False)
        sec = maml.config["seconds"]
        sc = maml_scores(maml, test, steps)
        res[K] = {"maml": maml, "scores": sc, "seconds": sec}
        log(f"MAML K={K}: {s.maml_iters} iters in {sec:.0f} s; " +
            ", ".join(f"{n} steps {pm95(sc[n])}" for n in steps))
        rows.append([str(K), f"{s.maml_iters:,}", *[pm95(sc[n]) for n in steps], f"{sec:.0f}",
                     f"{s.maml_iters * META_BATCH / sec:,.0f}"])
    table1 = table(["train & test K", "iterations", *[f"{n} step{'s' if n != 1 else ''}" for n in steps],
                    "train s", "tasks/s"], rows)

    # vectorized vs loop, same iterations
    K = s.loop_k
    train = fam.sample(num_tasks=s.maml_pool, support=K, query=K, seed=0)
    test = fam.sample(num_tasks=s.maml_test_tasks, support=K, query=s.maml_query, seed=1)
    vec = MAML(inner_lr=INNER_LR).meta_fit(train, steps=s.loop_iters, batch_tasks=META_BATCH, lr=META_LR, seed=0,
                                           progress=False)
    vec_s = vec.config["seconds"]
    vec_sc = maml_scores(vec, test, (1, 10))
    log(f"vectorized MAML {s.loop_iters} iters: {vec_s:.1f} s, {vec_sc}")
    net = maml_net()
    loop_s = loop_meta_fit(net, train, s.loop_iters)
    looped = MAML(net=net, inner_lr=INNER_LR)  # adapt() with the loop-trained θ (same inner loop at test)
    loop_sc = maml_scores(looped, test, (1, 10))
    log(f"loop MAML {s.loop_iters} iters: {loop_s:.1f} s, {loop_sc}")
    # paired difference per task (same test tasks)
    diffs = {}
    for n in (1, 10):
        with torch.no_grad():
            a = mse(vec.adapt(test.support, inner_steps=n).predict(test.query.x).mean, test.query.y, test.query.mask)
            b = mse(looped.adapt(test.support, inner_steps=n).predict(test.query.x).mean, test.query.y,
                    test.query.mask)
        diffs[n] = ci95(a - b)
    res["loop"] = {"vec": vec_sc, "loop": loop_sc, "vec_s": vec_s, "loop_s": loop_s, "diff": diffs}
    table2 = table(["implementation", "iterations", "train s", "tasks/s", "1 step", "10 steps"], [
        ["`MAML()` (vectorized)", f"{s.loop_iters:,}", f"{vec_s:.1f}", f"{s.loop_iters * META_BATCH / vec_s:,.0f}",
         pm95(vec_sc[1]), pm95(vec_sc[10])],
        ["per-task loop (`loop_meta_fit`)", f"{s.loop_iters:,}", f"{loop_s:.1f}",
         f"{s.loop_iters * META_BATCH / loop_s:,.0f}", pm95(loop_sc[1]), pm95(loop_sc[10])],
        ["difference, vectorized − loop (paired over tasks)", "", "", "", pm95(diffs[1]), pm95(diffs[10])],
    ])
    return table1, table2, res


# ---------------------------------------------------------------------- section 2a
def section_shots(s: Settings, fam: bm.tasks.Sinusoid, maml10: MAML) -> tuple[pd.DataFrame, dict[str, Any]]:
    train = fam.sample(num_tasks=s.train_tasks, support=10, query=10, seed=0)
    test = fam.sample(num_tasks=s.shot_tasks, support=max(s.shots), query=100, seed=2)
    info: dict[str, Any] = {}
    ft = FineTune().meta_fit(train, steps=s.ft_steps, batch_tasks=META_BATCH, lr=META_LR, seed=0, progress=False)
    log(f"FineTune pre-training: {ft.config['seconds']:.1f} s")
    bb = BlackBox().meta_fit(train, steps=s.bb_steps, batch_tasks=64, lr=META_LR, seed=0, progress=False)
    log(f"BlackBox meta-training: {bb.config['seconds']:.1f} s")
    start = time.perf_counter()
    prior = bm.fit_prior(NeuralProcessModel(), train, guide="pooled", steps=s.np_steps, batch_tasks=64, lr=1e-3,
                         kl_anneal_steps=s.np_steps // 3, random_subsets=True, seed=0, progress=False)
    np_s = time.perf_counter() - start
    log(f"NeuralProcessModel fit_prior: {np_s:.1f} s")
    info.update(ft_s=ft.config["seconds"], bb_s=bb.config["seconds"], np_s=np_s, ft=ft)
    learners = {
        "TrainFromScratch (Adam 1e-2, 100 steps)": TrainFromScratch(),
        "FineTune (SGD 1e-2, 10 steps)": ft,
        "MAML K=10, 1 inner step": _Steps(maml10, 1),
        "BlackBox (CNP)": bb,
        "NeuralProcessModel → amortized": adapting(prior, method="amortized"),
    }
    start = time.perf_counter()
    df = safe_benchmark(learners, test, s.shots, floor=bm.tasks.Sinusoid())
    log(f"benchmark (floor + 5 learners): {time.perf_counter() - start:.0f} s")
    parts = []
    for k in s.shots:
        start = time.perf_counter()
        part = safe_benchmark({"NeuralProcessModel → importance": adapting(prior, method="importance",
                                                                            num_particles=s.particles[k])},
                              test, [k])
        parts.append(part)
        log(f"importance {k}-shot ({s.particles[k]} particles): {time.perf_counter() - start:.1f} s")
    df = pd.concat([df] + parts, ignore_index=True)
    for name, t in (("FineTune (SGD 1e-2, 10 steps)", info["ft_s"]), ("BlackBox (CNP)", info["bb_s"]),
                    ("NeuralProcessModel → amortized", np_s), ("NeuralProcessModel → importance", np_s),
                    ("MAML K=10, 1 inner step", maml10.config["seconds"])):
        df.loc[df["method"] == name, "meta_train_s"] = t
    return df, info


FAILURES: list[str] = []


def safe_benchmark(learners: dict, test: bm.TaskSet, shots: Sequence[int], floor: Any = None) -> pd.DataFrame:
    """``benchmark`` one learner (and one shot count) at a time, so that one that diverges (non-finite
    predictions or scores) is recorded in FAILURES and left out instead of ending the run."""
    parts = []
    if floor is not None:
        floor_rows = benchmark({"_": _Nothing()}, test, shots=shots, floor=floor, progress=False)
        parts.append(floor_rows[floor_rows["method"] == FLOOR])
    for name, learner in learners.items():
        for k in shots:
            try:
                parts.append(benchmark({name: learner}, test, shots=[k], progress=False))
            except (FloatingPointError, ValueError) as error:
                FAILURES.append(f"{name} at {k} shots: {str(error).splitlines()[0][:200]}")
                log(f"FAILED: {FAILURES[-1]}")
    return pd.concat(parts, ignore_index=True)


class _Nothing:
    """A learner that predicts zeros (only so that ``benchmark`` computes the floor rows on its own)."""

    config: dict = {}

    def adapt(self, support: Any) -> Any:
        from bayesmeta.inference.posterior import Prediction

        class _P:
            def predict(self, x: torch.Tensor) -> Prediction:
                return Prediction(mean=torch.zeros_like(x[..., :1]))
        return _P()


class _Steps:
    """A MAML adapted with a fixed number of inner steps (what ``benchmark`` calls with ``adapt(support)``)."""

    def __init__(self, maml: MAML, steps: int) -> None:
        self.maml, self.steps, self.config = maml, steps, maml.config

    def adapt(self, support: Any) -> Any:
        return self.maml.adapt(support, inner_steps=self.steps)


def shots_table(df: pd.DataFrame, shots: Sequence[int]) -> str:
    rows = []
    for name, g in df.groupby("method", sort=False):
        by = {int(r.shots): (r.mse, r.mse_se) for r in g.itertuples()}
        t = g["meta_train_s"].iloc[0]
        rows.append([name, *[pm(by[k]) if k in by else "—" for k in shots],
                     "—" if t is None or t != t else f"{t:.0f}"])
    return table(["method", *[f"{k}-shot" for k in shots], "meta-train s"], rows)


# ---------------------------------------------------------------------- sections 2b, 2c
SHIFTS = {
    "in distribution": ("`Sinusoid()` (the training family)", {}),
    "input shift (x → x − π/2)": ("`Sinusoid(phase=(π/2, 3π/2))`: every function moved right by π/2 "
                                  "(half of the phases outside the training range [0, π])",
                                  {"phase": (math.pi / 2, 3 * math.pi / 2)}),
    "input shift (new x range)": ("`Sinusoid(x_range=(5, 15))`: the same functions, inputs never seen in training",
                                  {"x_range": (5.0, 15.0)}),
    "output shift (amplitude 5–10)": ("`Sinusoid(amplitude=(5, 10))`: amplitudes above the training range [0.1, 5]",
                                      {"amplitude": (5.0, 10.0)}),
}
TUNE_OPT, TUNE_LR = "adam", 1e-2  # SGD at lr 1e-2 diverged on the new-x-range tasks (inputs up to 15)
VARIANTS = {  # label -> FineTune options (besides lr, steps)
    "no fine-tuning (pre-trained net)": None,
    "layer 0 only (first hidden)": {"layers": [0]},
    "layer 1 only (second hidden)": {"layers": [1]},
    "head only (layer 2)": {"layers": [2]},
    "all layers": {},
    "LP-FT (head, then all)": {"lp_ft": True},
}


def section_shift(s: Settings, ft: FineTune) -> tuple[dict, dict]:
    """MSE (mean, se) per (shift, steps, variant); and the floor per shift."""
    out: dict[tuple[str, int, str], tuple[float, float]] = {}
    floors: dict[str, tuple[float, float]] = {}
    for i, (shift, (_, kw)) in enumerate(SHIFTS.items()):
        fam = bm.tasks.Sinusoid(**kw)
        test = fam.sample(num_tasks=s.shift_tasks, support=s.shift_shots, query=s.shift_query, seed=10 + i)
        for steps in s.tune_steps:
            learners = {}
            for name, opts in VARIANTS.items():
                if opts is None:
                    if steps != s.tune_steps[0]:
                        continue
                    learner = FineTune(steps=0)
                else:
                    learner = FineTune(lr=TUNE_LR, steps=steps, optimizer=TUNE_OPT, **opts)
                learner._bind(ft.net)  # noqa: SLF001 - share the pre-trained network (adapt copies it per task)
                learner._dims = ft._dims  # noqa: SLF001
                learner.config["seconds"] = ft.config["seconds"]  # marks it fitted: pre-trained once, in 2a
                learners[name] = learner
            df = safe_benchmark(learners, test, [s.shift_shots], floor=fam if steps == s.tune_steps[0] else None)
            for r in df.itertuples():
                if r.method == FLOOR:
                    floors[shift] = (r.mse, r.mse_se)
                elif r.method == "no fine-tuning (pre-trained net)":
                    for st in s.tune_steps:
                        out[(shift, st, r.method)] = (r.mse, r.mse_se)
                else:
                    out[(shift, steps, r.method)] = (r.mse, r.mse_se)
        log(f"shift {shift!r} done")
    return out, floors


# ---------------------------------------------------------------------- page
def best_of(out: dict, shift: str, steps: int, names: Sequence[str]) -> str:
    vals = {n: out[(shift, steps, n)] for n in names}
    best = min(vals, key=lambda n: vals[n][0])
    b = vals[best]
    ties = [n for n in names if n != best and vals[n][0] - b[0] < 2 * math.hypot(vals[n][1], b[1])]
    return best + (f" (within 2 se of it: {', '.join(ties)})" if ties else " (more than 2 se ahead of the rest)")


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
    shift_out, floors = section_shift(s, info["ft"])
    for shift in SHIFTS:  # a variant that diverged has no entry: shown as inf
        for steps in s.tune_steps:
            for v in VARIANTS:
                shift_out.setdefault((shift, steps, v), (math.inf, math.nan))
    for name in df["method"].unique():
        for k in s.shots:
            if not ((df["method"] == name) & (df["shots"] == k)).any():
                df = pd.concat([df, pd.DataFrame([{"method": name, "shots": k, "mse": math.inf, "mse_se": math.nan,
                                                   "meta_train_s": math.nan}])], ignore_index=True)

    # ------------------------------------------------------------ text
    r5, r10, lp = res[5]["scores"], res[10]["scores"], res["loop"]

    shift_rows = []
    for shift in SHIFTS:
        for steps in s.tune_steps:
            shift_rows.append([shift, str(steps), *[pm(shift_out[(shift, steps, v)]) for v in VARIANTS]])
        shift_rows.append([shift, "Bayes-optimal", pm(floors[shift]), *[""] * (len(VARIANTS) - 1)])
    surgical = ["layer 0 only (first hidden)", "layer 1 only (second hidden)", "head only (layer 2)", "all layers"]
    winners = []
    for shift in SHIFTS:
        for steps in s.tune_steps:
            winners.append(f"* {shift}, {steps} steps: lowest MSE **{best_of(shift_out, shift, steps, surgical)}**")
    lpft = []
    for shift in SHIFTS:
        for steps in s.tune_steps:
            a, b = shift_out[(shift, steps, "LP-FT (head, then all)")], shift_out[(shift, steps, "all layers")]
            lpft.append([shift, str(steps), pm(a), pm(b), f"{a[0] / b[0]:.2f}"])

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
        f"training collection `Sinusoid().sample(num_tasks={s.maml_pool}, support=K, query=K, seed=0)` — "
        f"meta-batches are drawn from these {s.maml_pool:,} tasks (the paper draws fresh tasks every iteration; "
        f"{s.maml_iters:,} × {META_BATCH} = {s.maml_iters * META_BATCH:,} task visits, so each training task is "
        f"seen about {s.maml_iters * META_BATCH / s.maml_pool:.0f} times). Test: "
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
        f"{_compare(r5, 0.67, 0.35)} With K = 10: {pm95(r10[1])} after 1 step (learn2learn 0.313 ± 0.022) and "
        f"{pm95(r10[10])} after 10.",
        "",
        f"**Vectorized against a per-task loop**, K = {s.loop_k}, {s.loop_iters:,} iterations each, same "
        f"meta-batches (same seed), same test tasks; the loop is `loop_meta_fit` of `benchmarks/maml_speed.py` "
        f"(`autograd.grad(create_graph=True)` one task at a time). ± 95% intervals; the last row is the per-task "
        f"paired difference.",
        "",
        t2,
        "",
        f"Reading: {_loop_reading(lp)} The loop took {lp['loop_s']:.0f} s and `MAML()` {lp['vec_s']:.1f} s "
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
        "Reading: " + _shots_reading(df, s.shots),
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
        f"Query MSE at {s.shift_shots} shots, mean ± standard error over tasks (the LP-FT column is section 2c):",
        "",
        table(["target", "FT steps", *VARIANTS], shift_rows),
        "",
        "Which of the four surgical choices has the lowest MSE (others within 2 combined standard errors named):",
        "",
        *winners,
        "",
        "Reading: " + _surgical_reading(shift_out, s),
        "",
        "### 2c. LP-FT against plain fine-tuning",
        "",
        f"`FineTune(lr={TUNE_LR}, steps=n, optimizer=\"adam\", lp_ft=True)`: n Adam steps on the head alone, then n "
        f"steps on all layers with a fresh optimizer state, against `FineTune(lr={TUNE_LR}, steps=n, "
        f"optimizer=\"adam\")` (n steps, all layers); same pre-trained net, "
        f"tasks and query points as 2b. Note LP-FT takes twice the steps.",
        "",
        table(["target", "steps n", "LP-FT", "plain FT (all layers)", "ratio LP-FT / FT"], lpft),
        "",
        "Reading: " + _lpft_reading(shift_out, s),
        "",
        "## What was not measured",
        "",
        *([f"* Diverged, left out of the tables (shown as inf): {'; '.join(FAILURES)}."] if FAILURES else
          ["* No learner diverged in this run (every entry above is finite)."]),
        "* The MAML paper draws new training tasks at every iteration; here meta-batches come from a fixed "
        f"collection of {s.maml_pool:,} tasks per K (see section 1).",
        f"* The NeuralProcessModel is trained for {s.np_steps:,} steps (`benchmarks/sinusoid.py` uses 30,000) to "
        "fit the time limit of this run.",
        "* The importance sampler uses fewer particles at larger support sizes (listed in 2a) to fit the time "
        "limit of this run, so its large-shot numbers are those of a cheaper sampler, not of the method's limit.",
        "* No hyperparameter search for any learner: every one runs at the settings stated; fine-tuning results "
        "depend on the learning rate and step count, of which only two step counts were tried.",
        "* One seed per training run: the ± are over test tasks, not over training runs.",
        "",
    ]
    publish("\n".join(lines), out, started)
    return 0


def _compare(r: dict, hi: float, lo: float) -> str:
    parts = []
    for n, ref in ((1, hi), (10, lo)):
        m, h = r[n]
        inside = m - h <= ref <= m + h
        parts.append(f"after {n} step{'s' if n > 1 else ''} our interval {'contains' if inside else 'does not contain'} "
                     f"the paper's {ref} and lies {'below' if m + h < ref else 'above' if m - h > ref else 'around'} it")
    return "Against the MAML paper's table: " + "; ".join(parts) + "."


def _loop_reading(lp: dict) -> str:
    out = []
    for n in (1, 10):
        d, h = lp["diff"][n]
        if abs(d) <= h:
            out.append(f"after {n} step{'s' if n > 1 else ''} the paired difference {fmt(d)} ± {fmt(h, 2)} includes 0 "
                       "(they agree within Monte Carlo error)")
        elif d < 0:
            out.append(f"after {n} step{'s' if n > 1 else ''} the vectorized model is lower by {fmt(-d)} ± {fmt(h, 2)}")
        else:
            out.append(f"after {n} step{'s' if n > 1 else ''} the vectorized model is **higher** by {fmt(d)} ± "
                       f"{fmt(h, 2)}")
    return "; ".join(out) + "."


def _shots_reading(df: pd.DataFrame, shots: Sequence[int]) -> str:
    def at(name: str, k: int) -> tuple[float, float]:
        g = df[(df["method"] == name) & (df["shots"] == k)]
        return float(g["mse"].iloc[0]), float(g["mse_se"].iloc[0])
    ft, sc = "FineTune (SGD 1e-2, 10 steps)", "TrainFromScratch (Adam 1e-2, 100 steps)"
    bits = []
    lo, hi = shots[0], shots[-1]
    bits.append(f"fine-tuning the pre-trained net gives {pm(at(ft, lo))} at {lo} shot and {pm(at(ft, hi))} at {hi}, "
                f"training from scratch {pm(at(sc, lo))} and {pm(at(sc, hi))}")
    cross = [k for k in shots if at(sc, k)[0] < at(ft, k)[0]]
    bits.append(f"from scratch is below fine-tuning at {cross} shots" if cross else
                "training from scratch is never below fine-tuning at these sizes")
    names = [n for n in df["method"].unique() if n != FLOOR]
    for k in (lo, 10 if 10 in shots else shots[len(shots) // 2], hi):
        best = min(names, key=lambda n: at(n, k)[0])
        bits.append(f"at {k} shot{'s' if k > 1 else ''} the lowest MSE is {best} ({pm(at(best, k))}; Bayes-optimal {pm(at(FLOOR, k))})")
    return "; ".join(bits) + ". See the table for every entry; where two methods differ by less than two combined " \
                             "standard errors the data do not order them."


def _surgical_reading(out: dict, s: Settings) -> str:
    names = ["layer 0 only (first hidden)", "layer 1 only (second hidden)", "head only (layer 2)", "all layers"]
    bits = []
    steps = s.tune_steps[-1]
    for shift in SHIFTS:
        if shift == "in distribution":
            continue
        vals = {n: out[(shift, steps, n)][0] for n in names}
        order = sorted(names, key=vals.get)
        chain = " < ".join(n.split(" (")[0] + " " + fmt(vals[n]) for n in order)
        bits.append(f"{shift} ({steps} steps): {chain}")
    return ("Ordering of the MSE means (smallest first): " + "; ".join(bits) + ". Lee et al. 2023 predict that "
            "tuning early layers helps most for input-level shifts and later layers for output-level ones; compare "
            "with the ordering above and the standard errors in the table — the claim holds here only where the "
            "ordering matches and the gaps exceed the errors.")


def _lpft_reading(out: dict, s: Settings) -> str:
    bits = []
    for shift in SHIFTS:
        for steps in s.tune_steps:
            a, b = out[(shift, steps, "LP-FT (head, then all)")], out[(shift, steps, "all layers")]
            gap = a[0] - b[0]
            err = 2 * math.hypot(a[1], b[1])
            verdict = "lower" if gap < -err else "higher" if gap > err else "not distinguishable (within 2 se)"
            bits.append(f"{shift}, {steps} steps: LP-FT {verdict}")
    return "; ".join(bits) + ". (Kumar et al. 2022 argue LP-FT helps out of distribution by distorting the " \
                             "features less; these are regression tasks with a 40-unit network, not their setting.)"


if __name__ == "__main__":
    sys.exit(main())

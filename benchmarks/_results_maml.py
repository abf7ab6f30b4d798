"""Section 1 of ``results.py``: MAML on the MAML paper's sinusoid protocol, vectorized and per-task loop."""
from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Any, Sequence

import torch

import bayesmeta as bm
import maml_speed  # noqa: E402  (the per-task-loop reference lives there)
from _report import fmt, log, table  # noqa: E402
from bayesmeta.baselines import MAML, maml_net
from bayesmeta.evaluation.metrics import mse, summarize

if TYPE_CHECKING:
    from results import Settings

INNER_LR = 0.01
META_LR = 1e-3
META_BATCH = 25
Z95 = 1.959963984540054


def ci95(values: torch.Tensor) -> tuple[float, float]:
    """(mean, half-width of the 95% interval of the mean) over tasks."""
    m, se = summarize(values)
    return m, Z95 * se


def pm95(stat: tuple[float, float]) -> str:
    return f"{fmt(stat[0])} ± {fmt(stat[1], 2)}"


def pool_use(iters: int, pool: int) -> dict[str, float]:
    """How a run of ``iters`` meta-batches of ``META_BATCH`` tasks drawn at random uses a pool of ``pool`` tasks:
    the task visits, the mean visits per task, the expected number of distinct tasks met and the expected share
    of visits that return to a task met before (draws treated as independent)."""
    visits = iters * META_BATCH
    distinct = -pool * math.expm1(visits * math.log1p(-1 / pool)) if pool > 1 else 1.0
    return {"visits": visits, "mean": visits / pool, "distinct": distinct, "repeat": 1 - distinct / visits}


def pool_text(iters: int, pool: int) -> str:
    """``pool_use`` in words, for the page."""
    u = pool_use(iters, pool)
    seen = "once" if u["mean"] == 1 else f"{u['mean']:.2g} times"
    return (f"{iters:,} × {META_BATCH} = {u['visits']:,} task visits, so a training task is seen {seen} on average; "
            f"about {u['distinct']:,.0f} distinct tasks are met and "
            f"{100 * u['repeat']:.0f}% of the visits return to a task met before")


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


def section_maml(s: Settings, fam: bm.tasks.Sinusoid) -> tuple[str, str, dict[str, Any]]:
    res: dict[Any, Any] = {}
    rows = []
    steps = (0,) + s.maml_test_steps
    for K in (5, 10):
        train = fam.sample(num_tasks=s.pool(), support=K, query=K, seed=0)
        test = fam.sample(num_tasks=s.maml_test_tasks, support=K, query=s.maml_query, seed=1)
        maml = MAML(inner_lr=INNER_LR).meta_fit(train, steps=s.maml_iters, batch_tasks=META_BATCH, lr=META_LR,
                                                seed=0, progress=False)
        del train
        sec = maml.config["seconds"]
        sc = maml_scores(maml, test, steps)
        res[K] = {"maml": maml, "scores": sc, "seconds": sec}
        log(f"MAML K={K}: {s.maml_iters} iters on {s.pool()} tasks in {sec:.0f} s; " +
            ", ".join(f"{n} steps {pm95(sc[n])}" for n in steps))
        rows.append([str(K), f"{s.maml_iters:,}", *[pm95(sc[n]) for n in steps], f"{sec:.0f}",
                     f"{s.maml_iters * META_BATCH / sec:,.0f}"])
    table1 = table(["train & test K", "iterations", *[f"{n} step{'s' if n != 1 else ''}" for n in steps],
                    "train s", "tasks/s"], rows)

    # vectorized vs loop, same iterations, same meta-batches
    K = s.loop_k
    train = fam.sample(num_tasks=s.loop_pool, support=K, query=K, seed=0)
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


def compare_reading(r: dict, hi: float, lo: float) -> str:
    parts = []
    for n, ref in ((1, hi), (10, lo)):
        m, h = r[n]
        inside = m - h <= ref <= m + h
        parts.append(f"after {n} step{'s' if n > 1 else ''} our interval {'contains' if inside else 'does not contain'} "
                     f"the paper's {ref} and lies {'below' if m + h < ref else 'above' if m - h > ref else 'around'} it")
    return "Against the MAML paper's table: " + "; ".join(parts) + "."


def loop_reading(lp: dict) -> str:
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

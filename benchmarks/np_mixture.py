r"""The neural process's amortized 1-shot MSE with a mixture guide by simulation: three seeds, and the mixture of their posteriors.

The issue's target: ``NeuralProcessModel`` amortized, 1-shot query MSE within 5% of the Bayes-optimal predictor's.
The ELBO's Gaussian guide is 20% above it (``docs/sinusoid.md``): one noiseless point leaves a ridge of sine
curves, and a Gaussian fitted by the reverse KL sits inside one part of it. ``bm.amortize`` fits a mixture guide
to the learned model's own posterior by simulation (forward KL) instead. This script fits the same model
(``sinusoid.fit_np``: same tasks, settings and seed) and then the mixture guide of ``docs/sinusoid.md`` (40
components on simulated sets of at most 10 points, ``amortize(max_points=10)``: the shots adapted to here are 1–10,
and sizes are drawn uniformly, so the cap doubles the steps spent on one point; 60000 steps of 256 tasks) from three
seeds, and predicts from each guide and from the equal mixture of the three guides' posteriors
(``TaskPosterior.mixture``): each guide misses the posterior in its own way, and averaging them evens that out as
an ensemble does. The guides are fitted in parallel worker processes, one torch thread each. Writes
``docs/np_mixture.md``.

Usage::

    .venv/bin/python benchmarks/np_mixture.py           # full run (~105 min, 2 cores) -> docs/np_mixture.md
    .venv/bin/python benchmarks/np_mixture.py --quick   # smoke run (< 1 min), prints the page to stdout
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import NamedTuple, Sequence  # noqa: E402

import torch  # noqa: E402

import bayesmeta as bm  # noqa: E402
import sinusoid as sb  # noqa: E402  (benchmarks/sinusoid.py: the fit, the test set, prediction)
from _report import fmt, gather, log, page_args, page_header, pm, publish, table, utc_now, verdict, worker_pool, workers_machine  # noqa: E402
from bayesmeta.evaluation.metrics import mse, summarize  # noqa: E402

torch.set_num_threads(1)


class Variant(NamedTuple):
    """One mixture guide: its components, the cap on simulated support sizes, the amortize budget (``None``:
    docs/sinusoid.md's cap, steps and tasks per step) and the seed."""

    components: int
    max_points: int | None
    steps: int | None = None
    batch: int | None = None
    seed: int = 0


@dataclass
class Settings:
    base: sb.Settings = field(default_factory=sb.Settings.full)  # the neural process, its test set and oracle
    #: the mixture guides, mixed with equal weights in the last row; lr is docs/sinusoid.md's. Earlier runs of this
    #: page (same fit and tasks): commit 29a7e09 (30000 steps of 256 tasks) 40 components capped at 10 points +6.4% ±
    #: 1.5% over Bayes at 1 shot, 80 +9.3% ± 1.7%; commit d36387e 60000 steps +4.8% ± 1.5% (seed 0), 30000 steps of
    #: 512 tasks +8.2% ± 1.7%. A probe (stop 26) mixing the seed-0 and seed-1 guides: +4.3% ± 1.3%.
    variants: tuple[Variant, ...] = tuple(Variant(40, 10, steps=60000, batch=256, seed=k) for k in range(3))
    draws: int = 100  # posterior draws per prediction, every shot (as docs/sinusoid.md's mixture row)
    draws_1: int = 400  # and at 1 shot again with more, to shrink the prediction's own Monte Carlo error
    workers: int = 3  # one process per guide: on 2 cores the three share them

    @classmethod
    def quick(cls) -> Settings:
        return cls(base=sb.Settings.quick(), variants=(Variant(3, 5, steps=40), Variant(3, None, steps=40, batch=64,
                                                                                          seed=1)),
                   draws=20, draws_1=40, workers=2)


@dataclass
class Result:
    variant: Variant  # with the cap, steps and batch filled in
    path: str  # the fitted guide, saved
    seconds: float
    final_loss: float | None  # None for the mixture of guides
    mse: dict[int, torch.Tensor]  # shots -> per-task query MSE, predictions from s.draws draws
    mse_1: torch.Tensor  # 1 shot again, from s.draws_1 draws
    mc_excess_1: float  # the Monte Carlo excess of that prediction: E[Var(f | S)] / s.draws_1


def shot_errors(guides: Sequence[bm.LearnedPrior], test: bm.TaskSet, shots: int,
                draws: int) -> tuple[torch.Tensor, float]:
    """Per-task query MSE of the amortized prediction from ``shots`` points and ``draws`` draws, and its Monte
    Carlo excess (``sinusoid.predict``); several guides predict from the equal mixture of their posteriors."""
    posts = [g.adapt(test.support.head(shots)) for g in guides]
    post = posts[0] if len(posts) == 1 else bm.TaskPosterior.mixture(posts)
    pred, excess = sb.predict(post, test.query.x, draws)
    return mse(pred.mean, test.query.y, test.query.mask), excess


def scored(guides: Sequence[bm.LearnedPrior], test: bm.TaskSet,
           s: Settings) -> tuple[dict[int, torch.Tensor], torch.Tensor, float]:
    """Every shot's per-task MSE from ``s.draws`` draws, then 1 shot's from ``s.draws_1`` and its Monte Carlo excess."""
    errors = {k: shot_errors(guides, test, k, s.draws)[0] for k in sb.SHOTS}
    return (errors, *shot_errors(guides, test, 1, s.draws_1))


def fit_variant(prior_path: str, s: Settings, v: Variant) -> Result:
    """One mixture guide on the saved neural process, saved beside it and scored at every shot (runs in a worker
    process)."""
    torch.set_num_threads(1)
    family = bm.tasks.Sinusoid()
    test = sb.held_out(family, s.base)
    mixed = sb.fit_mixture(bm.LearnedPrior.load(prior_path), sb.np_train(family, s.base), s.base, v.components,
                           v.max_points, v.steps, v.batch, seed=v.seed)
    path = str(Path(prior_path).with_name(f"guide-{v.seed}-{v.components}-{v.max_points}-{v.steps}-{v.batch}.prior"))
    mixed.save(path)
    config = mixed.config["amortize"]
    log(f"{v}: {config['seconds']:.0f} s")
    filled = v._replace(max_points=config["max_points"], steps=config["steps"], batch=config["batch_tasks"])
    return Result(filled, path, config["seconds"], mixed.history["loss"][-1], *scored([mixed], test, s))


def budget(v: Variant) -> list[str]:
    """The table's cap, steps and tasks-per-step cells of a guide."""
    return ["a task's count" if v.max_points is None else str(v.max_points), str(v.steps), str(v.batch)]


def gap(errors: torch.Tensor, floor: torch.Tensor) -> str:
    """Mean excess over the floor relative to its mean, ± the paired standard error (same tasks)."""
    diff = summarize(errors - floor)
    base = floor.mean().item()
    return f"{diff[0] / base:+.1%} ± {diff[1] / base:.1%}"


def main(argv: Sequence[str] | None = None) -> int:
    quick, out = page_args(__doc__, "np_mixture.md", argv)
    s = Settings.quick() if quick else Settings()
    started, date = time.perf_counter(), utc_now()
    family = bm.tasks.Sinusoid()
    test = sb.held_out(family, s.base)
    bayes = {k: mse(sb.sinusoid_bayes_predict(family, test.support.head(k), test.query.x, grid=s.base.oracle_grid)
                    .mean, test.query.y, test.query.mask) for k in sb.SHOTS}
    _, prior, fit_s = sb.fit_np(family, s.base)
    amortized = {k: shot_errors([prior], test, k, s.base.np_samples)[0] for k in sb.SHOTS}
    with tempfile.TemporaryDirectory() as folder:
        path = str(Path(folder) / "np.prior")
        prior.save(path)
        with worker_pool(s.workers) as pool:
            jobs = [pool.submit(fit_variant, path, s, v) for v in s.variants]
            results = gather(jobs)
        guides = [bm.LearnedPrior.load(r.path) for r in results]
        ensemble = Result(results[0].variant, "", sum(r.seconds for r in results), None, *scored(guides, test, s))
        log("mixture of the guides' posteriors scored")
    wall = time.perf_counter() - started

    grid = f"{s.base.oracle_grid[0]}×{s.base.oracle_grid[1]}"
    floor = {k: summarize(bayes[k]) for k in sb.SHOTS}
    rows = [[f"Bayes-optimal (grid {grid})", "—", "—", "—", "—", "—"] + [pm(floor[k]) for k in sb.SHOTS] + ["—", "—"],
            ["pooled guide (the ELBO's Gaussian)", "—", "—", "—", "—", fmt(fit_s)]
            + [pm(summarize(amortized[k])) for k in sb.SHOTS] + ["—", gap(amortized[1], bayes[1])]]
    seeds = ", ".join(str(r.variant.seed) for r in results)
    for r in [*results, ensemble]:
        v = r.variant
        columns = budget(v) if r is not ensemble else [c[0] if len(set(c)) == 1 else "various"
                                                        for c in zip(*(budget(g.variant) for g in results))]
        name = (f"mixture of {v.components}, full covariance, seed {v.seed}" if r.final_loss is not None
                else f"equal mixture of the posteriors of seeds {seeds}")
        rows.append([name, *columns, "—" if r.final_loss is None else fmt(r.final_loss),
                     fmt(fit_s + r.seconds)]
                    + [pm(summarize(r.mse[k])) for k in sb.SHOTS]
                    + [f"{pm(summarize(r.mse_1))} (MC {fmt(r.mc_excess_1, 2)})", gap(r.mse_1, bayes[1])])
    rel = ensemble.mse_1.mean().item() / bayes[1].mean().item() - 1
    spread = [r.mse_1.mean().item() / bayes[1].mean().item() - 1 for r in results]
    mix = s.base.mix_options
    machine = workers_machine(s.workers)
    page = "\n".join([
        *page_header("Neural process at 1 shot: the mixture guide by simulation", "np_mixture.py", quick, date, wall,
                     machine),
        "",
        "## Setup",
        "",
        f"* **Tasks**: `Sinusoid().sample(num_tasks={s.base.test_tasks}, support={max(sb.SHOTS)}, query={s.base.query}, "
        "seed=1)`, the noiseless test set of `docs/sinusoid.md`; k-shot adaptation reads `test.support.head(k)`.",
        f"* **Bayes-optimal**: `sinusoid_bayes_predict` on a {grid} grid (its 2-shot floor is the grid's; "
        "`docs/sinusoid.md` says why).",
        f"* **NeuralProcessModel()**, fitted as in `docs/sinusoid.md` (`sinusoid.fit_np`: `fit_prior(..., "
        f"guide=\"pooled\", steps={s.base.np_steps}, batch_tasks=64, lr=1e-3, kl_anneal_steps={s.base.np_anneal}, "
        f"random_subsets=True, seed=0)` on {s.base.np_train_tasks} tasks); learned noise scale "
        f"{prior.model.noise_scale.item():.4g}; its own guide predicts from {s.base.np_samples} draws.",
        "* **Mixture guides**: `prior.amortize(train, steps=N, batch_tasks=B, "
        f"lr=1e-3, seed=S, guide_options={{\"components\": C, \"covariance\": \"{mix['covariance']}\"}}, "
        "max_points=M)` on the same training tasks' inputs (20 points each): θ unchanged, each step "
        "B fresh tasks simulated from the learned model, support sizes uniform on 0..M, the learning rate decaying "
        f"tenfold over the N steps. `docs/sinusoid.md`'s guide has C = {mix['components']}, M = {s.base.mix_max_points}, "
        f"N = {s.base.mix_steps}, B = {s.base.mix_batch} and seed 0. The last row adapts every guide to the support "
        "set and predicts from `TaskPosterior.mixture` of their posteriors, equal weights (a mixture of all their "
        "components); its meta-train time counts every guide's. Predictions average "
        f"{s.draws} draws ({s.draws_1} in the last 1-shot column); \"MC\" there is the Monte Carlo excess "
        "E[Var(f | S)] / draws that averaging finitely many draws adds to the expected MSE. \"−log q\" is the final "
        "simulation loss (nats per task, over all sizes).",
        "",
        "## Results",
        "",
        "Query MSE, mean ± standard error over tasks; the gap is the 1-shot MSE with the most draws over the "
        "Bayes-optimal's on the same tasks, ± the paired standard error:",
        "",
        table(["amortized guide", "max_points M", "steps N", "tasks per step B", "−log q", "meta-train s", "1-shot",
               "2-shot", "5-shot", "10-shot", f"1-shot, {s.draws_1} draws", "1-shot gap"],
              rows, [False] + [True] * 11),
        "",
        f"One guide's 1-shot gap depends on its seed: {', '.join(f'{g:+.1%}' for g in spread)} for seeds {seeds}. "
        "Earlier runs of this page (the same fit, tasks and draws, M = 10): commit 29a7e09 (N = 30000, B = 256) "
        "measured +6.4% ± 1.5% for a mixture of 40 and +9.3% ± 1.7% for a mixture of 80; commit d36387e measured "
        "+4.8% ± 1.5% for seed 0 at N = 60000, B = 256 and +8.2% ± 1.7% at N = 30000, B = 512. "
        "For comparison, `docs/sinusoid.md` fits the same model and that guide, and also adapts the model by "
        "importance sampling (65,536 proposals per task at 1 shot, not amortized): its targets table gives both "
        "1-shot gaps; the second bounds what any guide of this model can reach.",
        "",
        "## The issue's target",
        "",
        table(["target", "required", "measured", "verdict"], [[
            f"NeuralProcessModel amortized (equal mixture of the posteriors of {len(results)} guides, each a mixture "
            f"of {results[0].variant.components}), 1-shot MSE vs Bayes-optimal", f"within {sb.TARGET_NP_1_REL:.0%}",
            f"{fmt(ensemble.mse_1.mean().item())} vs {fmt(bayes[1].mean().item())} ({rel:+.1%})",
            verdict(rel <= sb.TARGET_NP_1_REL)]], [False, False, False, False]),
        "",
    ])
    publish(page, out, started)
    return 0


if __name__ == "__main__":
    sys.exit(main())

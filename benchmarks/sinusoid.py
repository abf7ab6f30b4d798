r"""Sinusoid benchmark: few-shot regression on the MAML sinusoid family, at a CPU budget.

Held-out sinusoid tasks (``bm.tasks.Sinusoid()``, the MAML protocol, and a noisy variant
``Sinusoid(noise_std=0.3)``), adapted on 1, 2, 5 and 10 support points (``test.support.head(k)``) and
scored on 100 query points each: query MSE, Gaussian NLL and the coverage of the 90% interval
mean ± 1.645·std, each as mean ± standard error over tasks, and the adaptation time. Rows:

1. the Bayes-optimal predictor under the true task distribution
   (:func:`bayesmeta.tasks.oracle.sinusoid_bayes_predict`): the floor;
2. :class:`~bayesmeta.models.NeuralProcessModel` meta-trained with the pooled guide, adapted with the
   amortized guide and with SVI;
3. :class:`~bayesmeta.models.SinusoidModel` meta-trained with the pooled guide on random subsets, adapted
   with NUTS, with SVI and by the guide alone;
4. :class:`~bayesmeta.models.HierarchicalBNN` (the MAML network, 1-40-40-1) meta-trained with the pooled
   set encoder and with the gradient-based (ABML-style) guide, each adapted amortized.

The noisy variant runs rows 1 and 2 (without SVI), and the neural process once more after an importance-weighted
phase (``fit_prior(objective="iwae")`` continued from its fit). The issue's targets are checked and marked
MET / NOT MET on the page. The two families run in parallel worker processes, one torch thread each. Timings are
only comparable within one run on one machine.

Usage::

    .venv/bin/python benchmarks/sinusoid.py           # full run (~90 min, 2 cores) -> docs/sinusoid.md
    .venv/bin/python benchmarks/sinusoid.py --quick   # smoke run (< 1 min), prints the page to stdout
"""
from __future__ import annotations

import copy
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import pyro
import torch

import bayesmeta as bm
from _report import Row, fmt, gather, log, page_args, page_header, pm, publish, table, utc_now, verdict, worker_pool, workers_machine  # noqa: E402
from bayesmeta.evaluation.metrics import gaussian_nll, interval_coverage, mse, summarize
from bayesmeta.inference.posterior import Prediction
from bayesmeta.models import HierarchicalBNN, NeuralProcessModel, SinusoidModel
from bayesmeta.tasks.oracle import sinusoid_bayes_predict, sinusoid_grid_noise

torch.set_num_threads(1)

SHOTS = (1, 2, 5, 10)
Z90 = 1.645  # the 90% central interval of a Gaussian: mean ± 1.645 std
NOISY_STD = 0.3
WORKERS = 2  # one process per family

#: The issue's targets (issue 3, part 3).
TARGET_NP_5 = 0.02
TARGET_NP_10 = 0.01
TARGET_NP_1_REL = 0.05
TARGET_NUTS_5 = 0.01
#: "well under the published MAML figures": the best published MAML 5-shot MSE is 0.35 (Finn et al. 2017, appendix C,
#: table 2, 10 gradient steps); "well under" is read as at most half of it.
MAML_BEST_5 = 0.35
TARGET_BNN_5 = MAML_BEST_5 / 2
TARGET_COVERAGE = (0.85, 0.95)
MIXTURE_ROW = "NeuralProcessModel, pooled guide + mixture guide by simulation → amortized"
#: How the SinusoidModel's θ is fitted (both families; sinusoid_noisy.py too). Measured on 2000 tasks, 3000 steps: the
#: set encoder with context (guide="amortized", lr 2e-2) learned noise scales 0.20 (noiseless) and 0.39 (σ = 0.3) --
#: the ELBO pays the Gaussian guide's misfit with noise -- and its guess at 2 shots was off by MSE 47 (noiseless);
#: the pooled encoder on random subsets learned 0.089 and 0.32, amortized 2-shot MSE 0.38. At lr 2e-2 its first
#: steps overflowed exp(log-amplitude) on 1-point subsets.
SIN_FIT: dict[str, Any] = {"guide": "pooled", "random_subsets": True, "lr": 1e-2}
SIN_ROW = "SinusoidModel, pooled guide"
#: The neural process of the noisy family after its importance-weighted phase (``Settings.np_iwae``).
NP_IWAE_ROW = "NeuralProcessModel, pooled guide + IWAE phase"


@dataclass
class Settings:
    """How much work each part does (``--quick`` shrinks everything)."""

    test_tasks: int = 1000
    query: int = 100
    oracle_grid: tuple[int, int] = (400, 400)  # noiseless family
    coarse_grid: tuple[int, int] = (200, 200)  # shown for comparison at 2 shots; also the noisy family's grid
    np_train_tasks: int = 20000
    np_steps: int = 30000
    np_anneal: int = 10000
    np_svi_tasks: int = 200
    np_samples: int = 50  # draws of φ per prediction for the neural process (its decoder is the cost)
    # The importance-weighted phase on the noisy family: fit_prior(objective="iwae") continued from the ELBO fit with
    # these steps, lr and K (continue_fit). docs/np_iwae.md: the neural process's amortized 90% coverage 0.685 ->
    # 0.900 at 1 shot (the control, as many more ELBO steps: 0.691). On the noiseless family it did nothing for the
    # 1-shot MSE in a probe (+20.1% over Bayes against +21.3% without it), so only the noisy family runs it.
    np_iwae: dict[str, Any] = field(default_factory=lambda: {"steps": 5000, "lr": 3e-4, "particles": 16})
    # adapt(method="importance") proposals per task, by shots: the guide alone is a good proposal from 5 points on.
    np_particles: dict[int, int] = field(default_factory=lambda: {1: 65536, 2: 4096, 5: 2048, 10: 1024})
    # bm.amortize: a mixture guide fitted to the learned NP by simulation (forward KL), θ unchanged. Measured on the
    # noiseless NP, 1-shot MSE over Bayes: 10 components and 10000 steps +21%, 20 and 30000 steps +7.4% (this page,
    # commit 0d3a144: +12.9% from 100 draws); docs/np_mixture.md: 40 capped at 10 points, 60000 steps +4.8% ± 1.5%
    # from 400 draws (30000 steps +6.4%; seed 1 +6.0%).
    mix_steps: int = 60000
    mix_batch: int = 256
    mix_options: dict[str, Any] = field(default_factory=lambda: {"components": 40, "covariance": "full"})
    mix_max_points: int | None = 10  # simulated support sizes 0..10: the shots this page asks for
    # draws per prediction: its posterior is wider than the ELBO guide's, and at 1 shot the mean of 100 draws adds
    # E[Var(f | S)]/100 ≈ 0.8% of the Bayes MSE (docs/np_mixture.md)
    mix_samples: int = 400
    sin_train_tasks: int = 2000
    sin_steps: int = 3000
    sin_samples: int = 200
    # The SinusoidModel's importance-weighted phase (sinusoid_noisy.py). docs/sinusoid_noisy.md: 1-shot 90% coverage
    # amortized 0.620 -> 0.941, NUTS 0.876 -> 0.904 (noise scale 0.323 -> 0.304); 2000 more ELBO steps instead
    # (probe, 1000 tasks): amortized 0.644.
    sin_iwae: dict[str, Any] = field(default_factory=lambda: {"steps": 2000, "lr": 3e-3, "particles": 16})
    nuts_tasks: int = 100
    sin_svi_tasks: int = 200
    bnn_train_tasks: int = 20000
    # Per guide: fit_prior steps, learning rate, random subsets, HierarchicalBNN's init_scale (the initial prior std
    # of every weight) and the noise scale held through the fit (None: learned). Measured on 20000 tasks: the pooled
    # guide failed from init_scale 0.01, and random subsets made it worse (18000 steps: 5-shot MSE 0.42 with them
    # against 0.35 without; learned sigma 0.60 against 0.22); its 5-shot MSE is 0.176 at 18000 steps and 0.115 at
    # 36000 (docs/bnn_budget.md). The gradient guide with sigma learned explained the data as noise: sigma 0.50 and
    # 5-shot MSE 0.485 over 1000 tasks, and after 4000 steps held at 0.05 then 4000 free, sigma 0.47 and 0.35 (300
    # tasks); held at 0.05 for all 8000 steps, 0.11 (0.02: 0.14) (HierarchicalBNN.set_noise says why).
    # "support": each training task's 20 points are split into that many support points and the rest query;
    # "guide_options" go to fit_prior. The gradient guide's steps read the 5 support points only (reads="support")
    # while the ELBO scores all 20, MAML's protocol (inner steps on K shots, the outer loss on held-out points):
    # 8000 steps, 1000 test tasks, 5-shot MSE 0.080 against 0.246 with the steps reading all 20 points and 0.179
    # reading a 10-point support (1-shot 1.47 / 1.79 / 1.62, 10-shot 0.037 / 0.077 / 0.052).
    bnn: dict[str, dict[str, Any]] = field(default_factory=lambda: {
        "pooled": {"steps": 36000, "lr": 1e-3, "random_subsets": False, "init_scale": 0.1, "noise": None,
                   "support": 10, "guide_options": {}},
        "gradient": {"steps": 8000, "lr": 3e-3, "random_subsets": False, "init_scale": 0.01, "noise": 0.05,
                     "support": 5, "guide_options": {"reads": "support"}},
    })
    # The pooled BNN's random-subsets phase (sinusoid_noisy.py): fitted on whole 10-point sets, its set encoder never
    # read 1 or 2 points, and at 1 shot it predicted worse than the prior mean (MSE 7.3, 90% coverage 0.53). These
    # steps continue it on random subsets (continue_fit, the ELBO with 16 draws per task). Probe, noisy family, 1000
    # tasks, coverage at 1/2/5/10 shots after 3 x 2000 steps: noise held 0.800/0.859/0.927/0.950 (MSE 1.97, 0.901,
    # 0.330, 0.206); noise learned, it grew 0.43 -> 0.51 and the 10-shot intervals over-covered:
    # 0.834/0.887/0.948/0.970 (MSE 1.98, 0.951, 0.365, 0.226).
    bnn_subsets: dict[str, Any] = field(default_factory=lambda: {
        "steps": 6000, "lr": 3e-4, "particles": 16, "objective": "elbo", "hold_noise": True})
    bnn_batch: int = 64
    bnn_samples: int = 50
    nuts_options: dict[str, Any] = field(default_factory=lambda: {"num_samples": 300, "warmup_steps": 300})
    svi_options: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def full(cls) -> Settings:
        return cls()

    @classmethod
    def quick(cls) -> Settings:
        return cls(
            test_tasks=60, query=20, oracle_grid=(100, 100), coarse_grid=(50, 50), np_train_tasks=500,
            np_steps=150, np_anneal=50, np_iwae={"steps": 10, "lr": 3e-4, "particles": 4},
            sin_iwae={"steps": 10, "lr": 3e-3, "particles": 4}, np_svi_tasks=10, np_samples=20, np_particles={1: 64, 2: 64, 5: 32, 10: 32}, mix_steps=30, mix_batch=32,
            mix_options={"components": 3, "covariance": "full", "hidden": 16}, mix_samples=20, sin_train_tasks=200, sin_steps=150,
            sin_samples=50, nuts_tasks=5, sin_svi_tasks=10, nuts_options={"num_samples": 20, "warmup_steps": 20},
            bnn_train_tasks=300, bnn_samples=10,
            bnn_subsets={"steps": 10, "lr": 3e-4, "particles": 4, "objective": "elbo", "hold_noise": True}, bnn={
                "pooled": {"steps": 30, "lr": 1e-3, "random_subsets": True, "init_scale": 0.1, "noise": None,
                           "support": 10, "guide_options": {}},
                "gradient": {"steps": 10, "lr": 3e-3, "random_subsets": False, "init_scale": 0.01, "noise": 0.05,
                             "support": 5, "guide_options": {"reads": "support"}}},
            svi_options={"steps": 30},
        )


# ---------------------------------------------------------------------- scoring
@dataclass
class Score:
    mse: tuple[float, float]
    nll: tuple[float, float] | None  # None: the predictive is degenerate (std 0 somewhere)
    coverage: tuple[float, float]
    seconds: float  # adaptation wall time for all the tasks scored
    tasks: int
    mc_excess: float = 0.0  # expected MSE added by averaging only S draws of φ: E[Var(f | φ)] / S


def score(pred: Prediction, query: bm.TaskData, seconds: float, mc_excess: float = 0.0) -> Score:
    y = query.y
    mean, std = pred.mean.to(y.dtype), pred.std.to(y.dtype)
    nll = summarize(gaussian_nll(mean, std, y, query.mask)) if bool((std > 0).all()) else None
    cover = interval_coverage(mean - Z90 * std, mean + Z90 * std, y, query.mask)
    return Score(summarize(mse(mean, y, query.mask)), nll, summarize(cover), seconds, y.shape[0], mc_excess)


def predict(post: bm.TaskPosterior, x: torch.Tensor, num_samples: int, chunk: int = 50) -> tuple[Prediction, float]:
    """``TaskPosterior.predict`` in chunks of tasks (the neural process's decoder over S x T x N points would
    not fit in memory at once), plus the Monte Carlo excess E[Var_φ f] / S that averaging S draws adds to
    the expected squared error of the mean."""
    phi = post.sample(num_samples, seed=0)
    means, stds, excess = [], [], []
    with torch.no_grad():
        for start in range(0, phi.shape[1], chunk):
            rows = slice(start, start + chunk)
            likelihood = post.model.likelihood(phi[:, rows], x[rows].to(phi.device, phi.dtype))
            m, v = likelihood.mean, likelihood.variance
            spread = m.var(0, unbiased=False)
            means.append(m.mean(0))
            stds.append((v.mean(0) + spread).sqrt())
            excess.append(m.var(0, unbiased=True).mean((1, 2)) / num_samples)
    return Prediction(torch.cat(means), torch.cat(stds)), torch.cat(excess).mean().item()


def adapt_and_score(prior: bm.LearnedPrior, test: bm.TaskSet, shots: int, method: str, num_samples: int,
                    options: dict[str, Any]) -> tuple[Score, bm.TaskPosterior]:
    support = test.support.head(shots)
    start = time.perf_counter()
    post = prior.adapt(support, method=method, **options)
    seconds = time.perf_counter() - start
    pred, excess = predict(post, test.query.x, num_samples)
    return score(pred, test.query, seconds, excess), post


def every_shot(prior: bm.LearnedPrior, test: bm.TaskSet, method: str, num_samples: int,
               options: dict[str, Any] | None = None) -> dict[int, Score]:
    """``adapt_and_score`` at every shot count of ``SHOTS``, in order: ``{shots: Score}``."""
    return {k: adapt_and_score(prior, test, k, method, num_samples, options or {})[0] for k in SHOTS}


def oracle_scores(family: bm.tasks.Sinusoid, test: bm.TaskSet, grid: tuple[int, int],
                  shots: Sequence[int] = SHOTS) -> dict[int, Score]:
    out = {}
    for k in shots:
        start = time.perf_counter()
        pred = sinusoid_bayes_predict(family, test.support.head(k), test.query.x, grid=grid)
        out[k] = score(pred, test.query, time.perf_counter() - start)
    return out


# ---------------------------------------------------------------------- fits
def fit(label: str, make: Callable[[], bm.HierarchicalModel], train: bm.TaskSet, **kwargs: Any) -> tuple[bm.LearnedPrior, float]:
    start = time.perf_counter()
    prior = bm.fit_prior(make(), train, seed=0, progress=False, **kwargs)
    wall = time.perf_counter() - start
    log(f"fit {label}: {wall:.1f} s, final objective/task {prior.history['elbo'][-1] / len(train):.4g}, "
        f"noise_scale {prior.model.noise_scale.item():.4g}")
    return prior, wall


def held_out(family: bm.tasks.Sinusoid, s: Settings) -> bm.TaskSet:
    """The family's test tasks, as every sinusoid page has them (k-shot adaptation reads ``support.head(k)``)."""
    return family.sample(num_tasks=s.test_tasks, support=max(SHOTS), query=s.query, seed=1)


def np_train(family: bm.tasks.Sinusoid, s: Settings) -> bm.TaskSet:
    """The neural process's training tasks (and the inputs its mixture guide is simulated at)."""
    return family.sample(num_tasks=s.np_train_tasks, support=10, query=10, seed=0)


def fit_np(family: bm.tasks.Sinusoid, s: Settings) -> tuple[bm.TaskSet, bm.LearnedPrior, float]:
    """The neural process of this page on the family's training tasks: ``(train, prior, seconds)``."""
    train = np_train(family, s)
    prior, wall = fit(f"NeuralProcessModel ({family_name(family)})", NeuralProcessModel, train, guide="pooled",
                      steps=s.np_steps, batch_tasks=64, lr=1e-3, kl_anneal_steps=s.np_anneal, random_subsets=True)
    return train, prior, wall


def fit_mixture(prior: bm.LearnedPrior, train: bm.TaskSet, s: Settings, components: int | None = None,
                max_points: int | None = None, steps: int | None = None, batch: int | None = None,
                seed: int = 0) -> bm.LearnedPrior:
    """``prior.amortize`` with this page's settings (``s.mix_*``, seed 0), or another number of components, cap on
    the simulated support sizes, steps, tasks per step or seed (benchmarks/np_mixture.py; ``None`` keeps the
    page's)."""
    options = s.mix_options if components is None else {**s.mix_options, "components": components}
    return prior.amortize(train, steps=steps or s.mix_steps, batch_tasks=batch or s.mix_batch, lr=1e-3,
                          guide_options=options, max_points=max_points or s.mix_max_points, seed=seed, progress=False)


def fit_sin(family: bm.tasks.Sinusoid, s: Settings) -> tuple[bm.TaskSet, bm.LearnedPrior, float]:
    """The SinusoidModel of this page on the family's training tasks (``SIN_FIT``): ``(train, prior, seconds)``."""
    train = family.sample(num_tasks=s.sin_train_tasks, support=10, query=10, seed=0)
    prior, wall = fit(f"SinusoidModel ({family_name(family)})", SinusoidModel, train, steps=s.sin_steps,
                      batch_tasks=64, **SIN_FIT)
    return train, prior, wall


def np_importance(prior: bm.LearnedPrior, test: bm.TaskSet, s: Settings) -> tuple[dict[int, Score], dict[int, torch.Tensor]]:
    """The neural process adapted by importance sampling at every shot count (``s.np_particles[k]`` proposals,
    1000 resampled draws): ``({shots: Score}, {shots: effective sample size per task})``."""
    scores, ess = {}, {}
    for k in SHOTS:
        scores[k], post = adapt_and_score(prior, test, k, "importance", s.np_samples,
                                          {"num_particles": s.np_particles[k], "num_samples": 1000})
        ess[k] = post.diagnostics["ess"]
        log(f"NP importance {k}-shot: {scores[k].seconds:.1f} s, ESS median {ess[k].median():.0f}")
    return scores, ess


def continue_fit(prior: bm.LearnedPrior, train: bm.TaskSet, steps: int, lr: float, particles: int,
                 objective: str = "iwae", hold_noise: bool = False) -> bm.LearnedPrior:
    """A copy of ``prior`` fitted ``steps`` more steps on ``objective`` with ``particles`` draws per task, on
    random subsets of ``train`` (seed 1), the noise scale held where it is if ``hold_noise``; the original is left
    as it was. ``config["seconds"]`` is its time."""
    model = copy.deepcopy(prior.model)
    return bm.fit_prior(model, train, guide=copy.deepcopy(prior.guide), steps=steps, batch_tasks=64, lr=lr,
                        random_subsets=True, num_particles=particles, objective=objective,
                        fixed=model.noise_parameters if hold_noise else (), seed=1, progress=False)


def family_job(noise_std: float, s: Settings, full_rows: bool) -> tuple[list[Row], dict[str, Any]]:
    """``run_family`` on ``Sinusoid(noise_std=...)`` and its held-out tasks, in a worker process (one torch thread)."""
    torch.set_num_threads(1)
    family = bm.tasks.Sinusoid(noise_std=noise_std)
    return run_family(family, held_out(family, s), s, full_rows)


def run_family(family: bm.tasks.Sinusoid, test: bm.TaskSet, s: Settings, full_rows: bool) -> tuple[list[Row], dict[str, Any]]:
    extra: dict[str, Any] = {}
    noiseless = family.noise_std == 0
    grid = s.oracle_grid if noiseless else s.coarse_grid
    rows = [Row(f"Bayes-optimal (grid {grid[0]}×{grid[1]})", oracle_scores(family, test, grid), None,
                f"all {len(test)} tasks")]
    extra["grid"] = grid
    if noiseless:
        extra["grid_noise"] = sinusoid_grid_noise(family, grid)
        extra["coarse"] = oracle_scores(family, test, s.coarse_grid, shots=(1, 2))
        extra["coarse_noise"] = sinusoid_grid_noise(family, s.coarse_grid)
    log(f"{family_name(family)}: Bayes-optimal done")

    train, np_prior, np_wall = fit_np(family, s)
    extra["np_prior"] = np_prior
    amort = every_shot(np_prior, test, "amortized", s.np_samples)
    rows.append(Row("NeuralProcessModel, pooled guide → amortized", amort, np_wall, f"all {len(test)} tasks"))
    log(f"{family_name(family)}: NP amortized done")
    start = time.perf_counter()
    mixed = fit_mixture(np_prior, train, s)
    mix_wall = time.perf_counter() - start
    extra["mix_wall"], extra["mix_loss"] = mix_wall, mixed.history["loss"][-1]
    log(f"{family_name(family)}: amortize {mix_wall:.0f} s, final -log q {extra['mix_loss']:.3f}")
    rows.append(Row(MIXTURE_ROW, every_shot(mixed, test, "amortized", s.mix_samples),
                    np_wall + mix_wall, f"all {len(test)} tasks"))
    importance, extra["np_ess"] = np_importance(np_prior, test, s)
    rows.append(Row("NeuralProcessModel, pooled guide → importance", importance, np_wall, f"all {len(test)} tasks"))
    if not noiseless:
        iwae = continue_fit(np_prior, train, **s.np_iwae)
        iwae_wall = np_wall + iwae.config["seconds"]
        extra["np_iwae_prior"], extra["np_iwae_s"] = iwae, iwae.config["seconds"]
        log(f"{family_name(family)}: NP IWAE phase {iwae.config['seconds']:.0f} s, "
            f"noise_scale {iwae.model.noise_scale.item():.4g}")
        rows.append(Row(f"{NP_IWAE_ROW} → amortized",
                        every_shot(iwae, test, "amortized", s.np_samples),
                        iwae_wall, f"all {len(test)} tasks"))
        rows.append(Row(f"{NP_IWAE_ROW} → importance", np_importance(iwae, test, s)[0], iwae_wall,
                        f"all {len(test)} tasks"))
        log(f"{family_name(family)}: NP IWAE rows done")
    if not full_rows:
        return rows, extra

    sub = test[: s.np_svi_tasks]
    svi = {}
    for k in SHOTS:
        svi[k] = adapt_and_score(np_prior, sub, k, "svi", s.np_samples, s.svi_options)[0]
        log(f"NP svi {k}-shot: {svi[k].seconds:.1f} s")
    rows.append(Row("NeuralProcessModel, pooled guide → svi", svi, np_wall,
                    f"**first {len(sub)} tasks only** (SVI is slow)"))

    _, sin_prior, sin_wall = fit_sin(family, s)
    extra["sin_prior"] = sin_prior
    nuts_sub = test[: s.nuts_tasks]
    nuts, nuts_notes = {}, []
    for k in SHOTS:
        nuts[k], post = adapt_and_score(sin_prior, nuts_sub, k, "nuts", s.sin_samples, s.nuts_options)
        nuts_notes.append(nuts_note(k, post))
        log(f"SinusoidModel nuts {k}-shot: {nuts[k].seconds:.1f} s")
    extra["nuts_notes"] = nuts_notes
    rows.append(Row(f"{SIN_ROW} → nuts", nuts, sin_wall,
                    f"**first {len(nuts_sub)} tasks only** (NUTS is slow)"))
    sin_sub = test[: s.sin_svi_tasks]
    sin_svi = every_shot(sin_prior, sin_sub, "svi", s.sin_samples, s.svi_options)
    rows.append(Row(f"{SIN_ROW} → svi", sin_svi, sin_wall, f"first {len(sin_sub)} tasks only"))
    sin_amort = every_shot(sin_prior, test, "amortized", s.sin_samples)
    rows.append(Row(f"{SIN_ROW} → amortized", sin_amort, sin_wall,
                    f"all {len(test)} tasks (extra row: the guide alone)"))
    log(f"{family_name(family)}: SinusoidModel done")

    for guide, c in s.bnn.items():
        bnn_prior, bnn_wall = fit_bnn(family, guide, c, s, c["noise"])
        extra[f"bnn_{guide}"] = bnn_prior
        scores = every_shot(bnn_prior, test, "amortized", s.bnn_samples)
        rows.append(Row(f"HierarchicalBNN, {guide} guide → amortized", scores, bnn_wall, f"all {len(test)} tasks"))
        log(f"{family_name(family)}: BNN {guide} done")
    return rows, extra


#: What the BNN settings' "support" and "guide_options" mean, for the pages.
BNN_SPLIT = (
    "support=k: each training task's 20 points are split into k support and 20 − k query points "
    "(`family.sample(..., support=k, query=20 - k, seed=0)`: the same points for every k); with "
    "`guide_options={'reads': 'support'}` the gradient guide's steps read the k support points only while the ELBO "
    "scores all 20, as MAML trains (inner steps on the K shots, the outer loss on held-out points), so the steps "
    "and the prior are trained for predicting points the steps have not seen."
)


def fit_bnn(family: bm.tasks.Sinusoid, guide: str, c: dict[str, Any], s: Settings,
            noise: float | None) -> tuple[bm.LearnedPrior, float]:
    """``HierarchicalBNN`` fitted with ``guide`` and its settings ``c`` (one of ``s.bnn``), the noise scale held
    at ``noise`` unless None, on the family's training tasks split ``c["support"]`` / ``20 - c["support"]``."""
    train = bnn_train(family, c, s)
    return fit(f"HierarchicalBNN, {guide} guide", lambda: bnn_model(c["init_scale"], noise), train, guide=guide,
               steps=c["steps"], batch_tasks=s.bnn_batch, lr=c["lr"], random_subsets=c["random_subsets"],
               fixed=[] if noise is None else ["noise_scale"], guide_options=c["guide_options"])


def bnn_train(family: bm.tasks.Sinusoid, c: dict[str, Any], s: Settings) -> bm.TaskSet:
    """The HierarchicalBNN's training tasks under settings ``c``: 20 points each, split ``c["support"]`` / rest."""
    return family.sample(num_tasks=s.bnn_train_tasks, support=c["support"], query=20 - c["support"], seed=0)


def bnn_model(init_scale: float, noise: float | None) -> HierarchicalBNN:
    """``HierarchicalBNN(init_scale=...)``, its noise scale set to ``noise`` (to be held) unless that is None."""
    model = HierarchicalBNN(init_scale=init_scale)
    if noise is not None:
        model.set_noise(noise)
    return model


def nuts_note(shots: int, post: bm.TaskPosterior) -> str:
    divergent = sum(len(v) for v in post.diagnostics.get("divergences", {}).values())
    step_size = post.diagnostics["sample_stats"]["step_size"][:, -1].mean().item()
    ess = pyro.ops.stats.effective_sample_size(post.draws.double(), chain_dim=0, sample_dim=1).flatten()
    return (f"{shots}-shot: {divergent} divergent, step size {step_size:.3g}, "
            f"ESS min {ess.min().item():.0f} / median {ess.median().item():.0f} of {post.draws.shape[1]}")


def family_name(family: bm.tasks.Sinusoid) -> str:
    return "noiseless" if family.noise_std == 0 else f"noise_std={family.noise_std:g}"


# ---------------------------------------------------------------------- page
def results_tables(rows: list[Row]) -> str:
    headers = ["method"] + [f"{k}-shot" for k in SHOTS] + ["tasks scored"]
    parts = []
    for title, get, digits in (("Query MSE", lambda sc: sc.mse, 3), ("Gaussian NLL (nats per point)", lambda sc: sc.nll, 3),
                               ("90% interval coverage (mean ± 1.645·std)", lambda sc: sc.coverage, 3)):
        body = [[r.method] + [pm(get(r.scores[k]), digits) for k in SHOTS] + [r.note] for r in rows]
        parts += [f"**{title}**, mean ± standard error over tasks:", "", table(headers, body, [False] + [True] * 4 + [False]), ""]
    body = []
    for r in rows:
        train = "—" if r.train_s is None else f"{r.train_s:.0f}"
        body.append([r.method, train] + [fmt(r.scores[k].seconds, 2) for k in SHOTS]
                    + [fmt(1000 * sum(r.scores[k].seconds for k in SHOTS) / (len(SHOTS) * r.scores[SHOTS[0]].tasks), 3)])
    parts += ["**Time**: meta-training wall time (s, `fit_prior` call) and adaptation wall time (s, the `adapt` "
              "call for all the tasks scored; for the Bayes-optimal row, the oracle's prediction):", "",
              table(["method", "meta-train s"] + [f"adapt s, {k}-shot" for k in SHOTS] + ["ms/task (mean)"], body), ""]
    return "\n".join(parts)


def bnn_target_row(label: str, mse: tuple[float, float]) -> list[str]:
    """The targets table's row for a HierarchicalBNN's 5-shot query MSE (mean, se): at most half MAML's best."""
    return [f"{label}, 5-shot MSE", f"≤ {TARGET_BNN_5:.3g} (half of MAML's best published {MAML_BEST_5})", pm(mse),
            verdict(mse[0] <= TARGET_BNN_5)]


def targets_section(rows: list[Row], noisy_rows: list[Row]) -> str:
    by = {r.method.split(" (")[0] if r.method.startswith("Bayes") else r.method: r for r in rows}
    bo, npa = by["Bayes-optimal"], by["NeuralProcessModel, pooled guide → amortized"]
    nuts = by[f"{SIN_ROW} → nuts"]
    lines = []
    m5, m10 = npa.scores[5].mse, npa.scores[10].mse
    lines.append(["NeuralProcessModel amortized, 5-shot MSE", f"≤ {TARGET_NP_5}", pm(m5), verdict(m5[0] <= TARGET_NP_5)])
    lines.append(["NeuralProcessModel amortized, 10-shot MSE", f"≤ {TARGET_NP_10}", pm(m10), verdict(m10[0] <= TARGET_NP_10)])
    b1, n1 = bo.scores[1].mse[0], npa.scores[1].mse[0]
    rel = n1 / b1 - 1
    lines.append(["NeuralProcessModel amortized, 1-shot MSE vs Bayes-optimal", f"within {TARGET_NP_1_REL:.0%}",
                  f"{fmt(n1)} vs {fmt(b1)} ({rel:+.1%})", verdict(rel <= TARGET_NP_1_REL)])
    m1 = by[MIXTURE_ROW].scores[1].mse[0]
    lines.append(["NeuralProcessModel amortized (mixture guide fitted by `bm.amortize`), 1-shot MSE vs Bayes-optimal",
                  f"within {TARGET_NP_1_REL:.0%}", f"{fmt(m1)} vs {fmt(b1)} ({m1 / b1 - 1:+.1%})",
                  verdict(m1 / b1 - 1 <= TARGET_NP_1_REL)])
    npi = by["NeuralProcessModel, pooled guide → importance"]
    i1 = npi.scores[1].mse[0]
    lines.append(["(not the target's method) NeuralProcessModel importance, 1-shot MSE vs Bayes-optimal",
                  f"within {TARGET_NP_1_REL:.0%}", f"{fmt(i1)} vs {fmt(b1)} ({i1 / b1 - 1:+.1%})",
                  verdict(i1 / b1 - 1 <= TARGET_NP_1_REL)])
    n5 = nuts.scores[5].mse
    lines.append(["SinusoidModel nuts, 5-shot MSE", f"≤ {TARGET_NUTS_5}", pm(n5) + f" ({nuts.scores[5].tasks} tasks)",
                  verdict(n5[0] <= TARGET_NUTS_5)])
    for guide in ("pooled", "gradient"):
        lines.append(bnn_target_row(f"HierarchicalBNN ({guide} guide) amortized",
                                    by[f"HierarchicalBNN, {guide} guide → amortized"].scores[5].mse))
    lo, hi = TARGET_COVERAGE
    for r in noisy_rows:
        covs = [r.scores[k].coverage[0] for k in SHOTS]
        ok = all(lo <= c <= hi for c in covs)
        lines.append([f"noisy (σ={NOISY_STD:g}) coverage, {r.method}", f"{lo:.0%}–{hi:.0%} at every shot",
                      ", ".join(f"{c:.3f}" for c in covs) + " (1/2/5/10-shot)", verdict(ok)])
    return table(["target", "required", "measured", "verdict"], lines, [False, False, False, False])


def references_section() -> str:
    return "\n".join([
        "For context, from `REFERENCES.md` (sinusoid section); these use other training budgets and "
        "protocols (MAML: network 1-40-40-1, meta-batch 25, inner step 0.01), so they are not a like-for-like "
        "comparison:",
        "",
        table(["method, adapted on 5 points", "1 step", "5 steps", "10 steps", "source"], [
            ["MAML", "0.67", "0.38", "0.35", "MAML paper, appendix C, table 2"],
            ["pre-train on all tasks, then fine-tune", "2.41", "2.23", "2.19", "same table"],
            ["multi-task, regularised to the mean", "2.91", "2.72", "2.71", "same table"],
        ], [False, True, True, True, False]),
        "",
        "(Finn et al. 2017, \"Model-Agnostic Meta-Learning for Fast Adaptation of Deep Networks\", §5.1.) "
        "Li et al. 2017, \"Meta-SGD\", table 1 gives 5-shot MSE 1.13 ± 0.18 for MAML and 0.90 ± 0.16 for "
        "Meta-SGD (as transcribed in REFERENCES; its ± not verified). Measured on a 2-core CPU in REFERENCES: "
        "learn2learn 0.2.0 second-order MAML, 70,000 iterations, 5-shot: 0.514 ± 0.035 after 1 step, "
        "0.296 ± 0.030 after 10 (95% intervals). The Bayes-optimal floor there (300 tasks): 1-shot "
        "1.51 ± 0.13, 2-shot 0.011 ± 0.007, 3-shot and more ≈ 0.",
    ])


def main(argv: Sequence[str] | None = None) -> int:
    quick, out = page_args(__doc__, "sinusoid.md", argv)
    s = Settings.quick() if quick else Settings.full()

    started = time.perf_counter()
    date = utc_now()
    log("noiseless and noisy families, each in a worker process")
    with worker_pool(WORKERS) as pool:
        (rows, extra), (noisy_rows, noisy_extra) = gather([pool.submit(family_job, 0.0, s, True),
                                                           pool.submit(family_job, NOISY_STD, s, False)])

    wall = time.perf_counter() - started
    g, cg = extra["grid"], s.coarse_grid
    coarse = extra["coarse"]
    fine2 = rows[0].scores[2].mse
    np_prior, sin_prior = extra["np_prior"], extra["sin_prior"]
    npa1 = rows[1].scores[1]
    svi = "defaults (500 steps, lr 0.05, 16 particles)" if not s.svi_options else \
        ", ".join(f"{k}={v}" for k, v in s.svi_options.items())
    nuts_opts = ", ".join(f"{k}={v}" for k, v in s.nuts_options.items())
    setup = "\n".join([
        f"Test tasks: `Sinusoid().sample(num_tasks={s.test_tasks}, support={max(SHOTS)}, query={s.query}, seed=1)` "
        f"(amplitude U[0.1, 5], phase U[0, π], x U[-5, 5]); k-shot adaptation reads `test.support.head(k)` and "
        f"every method is scored on the same {s.query} query points per task. Intervals are mean ± {Z90}·std of "
        "each method's Gaussian-summarized predictive (law of total variance over posterior draws).",
        "",
        f"* **Bayes-optimal**: `sinusoid_bayes_predict(family, support, query_x, grid={g})`, the exact prior with "
        f"the posterior on a {g[0]}×{g[1]} grid. For the noiseless family the grid sets an effective likelihood scale "
        f"s = {extra['grid_noise']:.3g}; a coarser grid inflates the 2-shot floor (whose exact value is 0): on "
        f"{cg[0]}×{cg[1]} (s = {extra['coarse_noise']:.3g}) this run gives 2-shot MSE {pm(coarse[2].mse)} against "
        f"{pm(fine2)} on {g[0]}×{g[1]}, and 1-shot {pm(coarse[1].mse)} against {pm(rows[0].scores[1].mse)}. "
        "For the noiseless family its predictive std is the spread of the grid posterior, whose width is set by "
        "s, not a calibrated uncertainty: its NLL and coverage there describe the grid (an NLL is shown as — where "
        "the std is 0). "
        f"The noisy family uses its own σ = {NOISY_STD} on a {cg[0]}×{cg[1]} grid.",
        f"* **NeuralProcessModel()** (latent 8, decoder 3×128): `fit_prior(..., guide=\"pooled\", steps={s.np_steps}, "
        f"batch_tasks=64, lr=1e-3, kl_anneal_steps={s.np_anneal}, random_subsets=True, seed=0)` on "
        f"{s.np_train_tasks} training tasks "
        f"(support 10, query 10, seed 0) of the same family; learned noise_scale "
        f"{np_prior.model.noise_scale.item():.3g} (noiseless), {noisy_extra['np_prior'].model.noise_scale.item():.3g} "
        f"(σ = {NOISY_STD}). Predictions average {s.np_samples} draws of the latent; that adds E[Var(f | S)]/{s.np_samples} "
        f"to the expected MSE of the mean (estimated: {npa1.mc_excess:.3g} at 1 shot, "
        f"{rows[1].scores[5].mc_excess:.2g} at 5). SVI: `adapt(method=\"svi\")` with {svi}, on the **first "
        f"{s.np_svi_tasks} test tasks only** (it is slow). Importance: `adapt(method=\"importance\", "
        f"num_particles=K, num_samples=1000)` — self-normalized importance sampling under the learned model with "
        "the pooled guide's Gaussian (widened 2×) and the learned prior as a half-and-half proposal, resampled: no "
        "per-task optimization; K = " + ", ".join(f"{v} at {k} shot{'s' if k > 1 else ''}" for k, v in s.np_particles.items())
        + "; median effective sample size " + ", ".join(f"{extra['np_ess'][k].median():.0f}" for k in SHOTS)
        + f" (1/2/5/10 shots), minimum {min(extra['np_ess'][k].min().item() for k in SHOTS):.1f}.",
        f"* **Mixture guide by simulation**: `bm.amortize(np_prior, train, steps={s.mix_steps}, "
        f"batch_tasks={s.mix_batch}, lr=1e-3, guide_options={s.mix_options}, max_points={s.mix_max_points}, seed=0)` "
        "— θ unchanged, a new set encoder with a mixture-of-Gaussians head fitted to the learned model's own posterior "
        "on freshly simulated tasks (forward KL: it covers the posterior's mass where the ELBO's Gaussian seeks one "
        "mode), every context size from 0 to "
        + (f"{s.mix_max_points} points (the most this page adapts on)" if s.mix_max_points else "a task's 20 points")
        + f": {extra['mix_wall']:.0f} s (noiseless), {noisy_extra['mix_wall']:.0f} s "
        f"(σ = {NOISY_STD}); final mean -log q(φ | D) {extra['mix_loss']:.3f} and {noisy_extra['mix_loss']:.3f} nats. "
        f"Its meta-train time in the tables is fit_prior's plus amortize's. Predictions average {s.mix_samples} "
        f"draws (MC excess at 1 shot: {next(r for r in rows if r.method == MIXTURE_ROW).scores[1].mc_excess:.3g}).",
        f"* **IWAE phase** (noisy family only): from a copy of the noisy family's fitted model and guide, "
        f"`fit_prior(model, train, guide=guide, steps={s.np_iwae['steps']}, batch_tasks=64, lr={s.np_iwae['lr']:g}, "
        f"random_subsets=True, num_particles={s.np_iwae['particles']}, objective=\"iwae\", seed=1)`: "
        f"{noisy_extra['np_iwae_s']:.0f} s, learned noise_scale "
        f"{noisy_extra['np_iwae_prior'].model.noise_scale.item():.3g}. The importance-weighted bound (Burda et al. "
        "2016), taken per task, trains the guide as a proposal for K draws weighted by the model instead of by "
        "KL(q ‖ p), which a Gaussian pays least for by sitting inside one part of a posterior that one noisy point "
        "leaves spread along a ridge; `docs/np_iwae.md` shows the effect is the objective (as many more ELBO steps "
        "leave the coverage where it was). On the noiseless family it did not move the 1-shot MSE in a probe (+20.1% "
        "over Bayes against +21.3% without it), so that family skips it. Meta-train time in the tables is the first fit's "
        "plus this phase's; importance uses the K above.",
        f"* **SinusoidModel()** (φ = (log A, p), noise floor 1e-3): `fit_prior(..., guide=\"pooled\", "
        f"random_subsets=True, steps={s.sin_steps}, batch_tasks=64, lr={SIN_FIT['lr']:g}, seed=0)` on "
        f"{s.sin_train_tasks} tasks of the family as it is (noiseless); learned θ: prior_loc "
        f"{[round(v, 3) for v in sin_prior.model.prior_loc.tolist()]}, prior_scale "
        f"{[round(v, 3) for v in sin_prior.model.prior_scale.tolist()]}, noise_scale "
        f"{sin_prior.model.noise_scale.item():.3g}. NUTS ({nuts_opts}, one chain over all tasks jointly) on the "
        f"**first {s.nuts_tasks} test tasks only** (it is slow); SVI ({svi}) on the first {s.sin_svi_tasks}; "
        f"{s.sin_samples} posterior draws per prediction. NUTS diagnostics: " + "; ".join(extra["nuts_notes"]) + ".",
        f"* **HierarchicalBNN()** (φ = the 1761 weights of a 1-40-40-1 ReLU network, prior N(μ, diag s²) learned): "
        f"`fit_prior(HierarchicalBNN(init_scale=...), ..., guide=G, batch_tasks={s.bnn_batch}, seed=0)` on "
        f"{s.bnn_train_tasks} training tasks with, per guide, " + "; ".join(
            f"G = \"{g}\": " + ", ".join(f"{k}={v}" for k, v in c.items()) for g, c in s.bnn.items())
        + " (the gradient guide with its default steps: 5 reparameterized SVI steps from the prior with learned "
        "per-weight step sizes, as in ABML, Ravi & Beatson 2019; noise=v: `model.set_noise(v)` and "
        "`fixed=model.noise_parameters`, the noise scale held at v because with the gradient guide a learned one "
        "grows until the steps barely leave the prior: `HierarchicalBNN.set_noise`); final noise_scale " + ", ".join(
            f"{extra[f'bnn_{g}'].model.noise_scale.item():.3g} ({g}{'' if c['noise'] is None else ', held'})"
            for g, c in s.bnn.items()) + f"; {s.bnn_samples} draws per prediction. " + BNN_SPLIT,
    ])
    page = "\n".join([
        *page_header("Sinusoid regression benchmark", "sinusoid.py", quick, date, wall, workers_machine(WORKERS)),
        "",
        "Timings are only comparable within one run on one machine. Rows that score a subset of the test tasks "
        "have larger standard errors and are not directly comparable with the full-set rows at the third digit.",
        "",
        "## Setup",
        "",
        setup,
        "",
        "## Noiseless family (MAML protocol)",
        "",
        results_tables(rows),
        "## Noisy family (σ = 0.3)",
        "",
        f"`Sinusoid(noise_std={NOISY_STD})`, test tasks with seed 1, training tasks as above (seed 0).",
        "",
        results_tables(noisy_rows),
        "## The issue's targets",
        "",
        targets_section(rows, noisy_rows),
        "",
        "## Published figures",
        "",
        references_section(),
        "",
    ])
    publish(page, out, started)
    return 0


if __name__ == "__main__":
    sys.exit(main())

r"""Noisy sinusoids (σ = 0.3): are the 90% intervals of the SinusoidModel, the HierarchicalBNN and SVI calibrated?

The issue asks that on the noisy variant the 90% intervals of *every* Bayesian method cover 85–95% of the query
points. ``benchmarks/sinusoid.py`` runs the noisy family for the Bayes-optimal predictor and the neural process
(docs/sinusoid.md); this script runs it for the other two models of that page and for the neural process refined
by SVI, with the same budgets and the same test tasks
(``Sinusoid(noise_std=0.3).sample(num_tasks=1000, support=10, query=100, seed=1)``):

1. the Bayes-optimal predictor (grid posterior), the reference;
2. :class:`~bayesmeta.models.SinusoidModel` fitted with the pooled guide on random subsets, adapted by NUTS, by
   SVI (one Gaussian, and a mixture of Gaussians: ``adapt(method="svi", components=10)``) and by the guide alone;
   then the same after an importance-weighted phase (``fit_prior(objective="iwae")`` continued from that fit);
   and, for comparison, NUTS under the θ that the set encoder with context learns, whose noise scale is too large;
3. :class:`~bayesmeta.models.HierarchicalBNN` (1-40-40-1) with the pooled guide (noise learned) and with the
   gradient guide (noise held at the family's σ = 0.3: with this guide a learned noise scale grows until the
   steps barely leave the prior, ``HierarchicalBNN.set_noise``), the latter trained as docs/sinusoid.md trains it
   (steps on a 5-point support) and with its steps reading all 20 points of each training task, adapted amortized;
   and the pooled fit continued on random subsets of its training tasks, so that its set encoder reads sets of 1
   and 2 points as well as 10;
4. :class:`~bayesmeta.models.NeuralProcessModel` fitted as in docs/sinusoid.md (whose noisy section has its
   amortized and importance rows), refined by SVI with one Gaussian and with a mixture; and after the IWAE phase
   of that page, refined by SVI and adapted amortized.

Query MSE, Gaussian NLL and 90% interval coverage at 1, 2, 5 and 10 shots, mean ± standard error over tasks.

Usage::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/sinusoid_noisy.py           # full run (~85 min, 1 core) -> docs/sinusoid_noisy.md
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/sinusoid_noisy.py --quick   # smoke run (< 1 min), prints the page
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import sys  # noqa: E402
import time  # noqa: E402
from typing import Any, Sequence  # noqa: E402

import bayesmeta as bm  # noqa: E402
import sinusoid as sb  # noqa: E402  (benchmarks/sinusoid.py: its settings, scoring and tables)
from _report import Row, log, one_thread_machine, page_args, page_header, publish, table, utc_now, verdict  # noqa: E402
from bayesmeta.models import SinusoidModel  # noqa: E402

#: The noise scale held for the gradient guide: the family's own.
GRADIENT_NOISE = sb.NOISY_STD
SIN_ROW = sb.SIN_ROW
CONTEXT_ROW = "SinusoidModel, amortized guide with context → nuts"
SIN_IWAE_ROW = "SinusoidModel, pooled guide + IWAE phase"
BNN_SUBSETS_ROW = "HierarchicalBNN, pooled guide + random-subsets phase"
#: SVI with a mixture of full-covariance Gaussians per task. One Gaussian fitted by the ELBO sits inside one part of
#: the 1-shot posterior (a ridge of amplitude-phase pairs). Measured on this θ, 200 tasks: 1-shot coverage 0.69 with
#: one Gaussian, 0.86 / 0.88 / 0.89 with 5 / 10 / 20 components (12 s for 10, 45 s for 20); 2-shot 0.84, 0.90 / 0.91 / 0.92.
MIXTURE_SVI = {"components": 10, "covariance": "full"}


#: The gradient guide is fitted as docs/sinusoid.md fits it (its steps reading a 5-point support, MAML's split) and
#: also with its steps reading all 20 points of each training task, the split under which it predicts and covers
#: better on these noisy tasks (8000 steps, 1000 test tasks: 5-shot MSE 0.515 against 0.732, 1-shot coverage 0.547
#: against 0.466), where on noiseless ones the 5-point split is far better (5-shot MSE 0.080 against 0.246).
GRADIENT_ALL_POINTS = ("gradient guide, steps reading all 20 points", {"support": 10, "guide_options": {}})


def bnn_settings(s: sb.Settings) -> list[tuple[str, str, dict[str, Any]]]:
    """``(label, guide, settings)`` of each HierarchicalBNN fit: the guides of ``s.bnn``, then the variant above."""
    label, change = GRADIENT_ALL_POINTS
    return [(f"{g} guide", g, c) for g, c in s.bnn.items()] + [(label, "gradient", {**s.bnn["gradient"], **change})]


def run(family: bm.tasks.Sinusoid, test: bm.TaskSet, s: sb.Settings) -> tuple[list[Row], dict[str, object]]:
    extra: dict[str, object] = {}
    grid = s.coarse_grid
    rows = [Row(f"Bayes-optimal (grid {grid[0]}×{grid[1]})", sb.oracle_scores(family, test, grid), None,
                f"all {len(test)} tasks")]
    log("Bayes-optimal done")

    sin_train, sin_prior, sin_wall = sb.fit_sin(family, s)
    extra["sin_prior"] = sin_prior
    nuts_sub, sin_sub = test[: s.nuts_tasks], test[: s.sin_svi_tasks]
    nuts, notes = {}, []
    for k in sb.SHOTS:
        nuts[k], post = sb.adapt_and_score(sin_prior, nuts_sub, k, "nuts", s.sin_samples, s.nuts_options)
        notes.append(sb.nuts_note(k, post))
        log(f"SinusoidModel nuts {k}-shot: {nuts[k].seconds:.1f} s")
    extra["nuts_notes"] = notes
    rows.append(Row(f"{SIN_ROW} → nuts", nuts, sin_wall, f"**first {len(nuts_sub)} tasks only** (NUTS is slow)"))
    rows.append(Row(f"{SIN_ROW} → svi",
                    sb.every_shot(sin_prior, sin_sub, "svi", s.sin_samples, s.svi_options),
                    sin_wall, f"first {len(sin_sub)} tasks only"))
    mixture = {**s.svi_options, **MIXTURE_SVI}
    rows.append(Row(f"{SIN_ROW} → svi, mixture of {mixture['components']}",
                    sb.every_shot(sin_prior, sin_sub, "svi", s.sin_samples, mixture),
                    sin_wall, f"first {len(sin_sub)} tasks only"))
    rows.append(Row(f"{SIN_ROW} → amortized",
                    sb.every_shot(sin_prior, test, "amortized", s.sin_samples),
                    sin_wall, f"all {len(test)} tasks"))
    # The importance-weighted phase (sb.continue_fit): the same model and guide, continued on the IWAE bound.
    sin_iwae, iwae_rows = after_phase(SIN_IWAE_ROW, sin_prior, sin_train, s.sin_iwae, sin_wall, [
        ("nuts", nuts_sub, s.sin_samples, s.nuts_options, f"**first {len(nuts_sub)} tasks only**"),
        ("svi", sin_sub, s.sin_samples, s.svi_options, f"first {len(sin_sub)} tasks only"),
        ("amortized", test, s.sin_samples, {}, f"all {len(test)} tasks")])
    rows += iwae_rows
    extra["sin_iwae_prior"], extra["sin_iwae_s"] = sin_iwae, sin_iwae.config["seconds"]
    # The set encoder with context (10-point sets): its θ explains part of the guide's misfit as noise, and NUTS,
    # exact under that θ, then over-covers.
    context_prior, context_wall = sb.fit("SinusoidModel, amortized guide", SinusoidModel, sin_train, guide="amortized",
                                         steps=s.sin_steps, batch_tasks=64, lr=2e-2, guide_options={"context": True})
    extra["context_noise"] = context_prior.model.noise_scale.item()
    rows.append(Row(CONTEXT_ROW,
                    sb.every_shot(context_prior, nuts_sub, "nuts", s.sin_samples, s.nuts_options),
                    context_wall, f"**first {len(nuts_sub)} tasks only**"))
    log("SinusoidModel done")

    for label, guide, c in bnn_settings(s):
        prior, wall = sb.fit_bnn(family, guide, c, s, None if c["noise"] is None else GRADIENT_NOISE)
        extra[f"bnn_{label}_noise"] = prior.model.noise_scale.item()
        rows.append(Row(f"HierarchicalBNN, {label} → amortized",
                        sb.every_shot(prior, test, "amortized", s.bnn_samples),
                        wall, f"all {len(test)} tasks"))
        if guide == "pooled":
            # Fitted on whole sets, the encoder has not read small ones: continue on random subsets.
            more, more_rows = after_phase(BNN_SUBSETS_ROW, prior, sb.bnn_train(family, c, s), s.bnn_subsets, wall,
                                          [("amortized", test, s.bnn_samples, {}, f"all {len(test)} tasks")])
            rows += more_rows
            extra["bnn_subsets_noise"], extra["bnn_subsets_s"] = more.model.noise_scale.item(), more.config["seconds"]
        log(f"BNN {label} done")

    np_train, np_prior, np_wall = sb.fit_np(family, s)
    np_sub = test[: s.np_svi_tasks]
    for label, options in (("svi", s.svi_options), (f"svi, mixture of {mixture['components']}", mixture)):
        scores = {}
        for k in sb.SHOTS:
            scores[k] = sb.adapt_and_score(np_prior, np_sub, k, "svi", s.np_samples, options)[0]
            log(f"NP {label} {k}-shot: {scores[k].seconds:.1f} s")
        rows.append(Row(f"NeuralProcessModel, pooled guide → {label}", scores, np_wall,
                        f"first {len(np_sub)} tasks only"))
    extra["np_noise"] = np_prior.model.noise_scale.item()
    np_iwae, iwae_rows = after_phase(sb.NP_IWAE_ROW, np_prior, np_train, s.np_iwae, np_wall, [
        ("svi", np_sub, s.np_samples, s.svi_options, f"first {len(np_sub)} tasks only"),
        ("amortized", test, s.np_samples, {}, f"all {len(test)} tasks (as in `docs/sinusoid.md`)")])
    rows += iwae_rows
    extra["np_iwae_noise"], extra["np_iwae_s"] = np_iwae.model.noise_scale.item(), np_iwae.config["seconds"]
    return rows, extra


def after_phase(label: str, prior: bm.LearnedPrior, train: bm.TaskSet, phase: dict[str, Any], base_wall: float,
                runs: list[tuple[str, bm.TaskSet, int, dict[str, Any], str]]) -> tuple[bm.LearnedPrior, list[Row]]:
    """``prior`` continued by ``sb.continue_fit(prior, train, **phase)`` (the IWAE bound unless ``phase`` names
    another objective), then a row ``label → method`` per ``(method, tasks, num_samples, options, note)`` of
    ``runs``: ``(the continued prior, the rows)``."""
    continued = sb.continue_fit(prior, train, **phase)
    log(f"{label}: {continued.config['seconds']:.0f} s")
    wall = base_wall + continued.config["seconds"]
    return continued, [Row(f"{label} → {method}", sb.every_shot(continued, tasks, method, samples, options), wall, note)
                       for method, tasks, samples, options, note in runs]


def theta_of(model: SinusoidModel) -> str:
    """The SinusoidModel's learned θ, for the page."""
    return (f"prior_loc {[round(v, 3) for v in model.prior_loc.tolist()]}, prior_scale "
            f"{[round(v, 3) for v in model.prior_scale.tolist()]}, noise_scale {model.noise_scale.item():.3g}")


def coverage_section(rows: list[Row]) -> str:
    lo, hi = sb.TARGET_COVERAGE
    lines = []
    for r in rows:
        covs = [r.scores[k].coverage[0] for k in sb.SHOTS]
        lines.append([r.method, f"{lo:.0%}–{hi:.0%} at every shot",
                      ", ".join(f"{c:.3f}" for c in covs) + " (1/2/5/10-shot)",
                      verdict(all(lo <= c <= hi for c in covs))])
    return table(["method", "required", "measured", "verdict"], lines, [False, False, False, False])


def noisy_tasks(s: sb.Settings) -> tuple[bm.tasks.Sinusoid, bm.TaskSet]:
    """The noisy family and its test tasks, as every noisy sinusoid page has them: ``(family, test)``."""
    family = bm.tasks.Sinusoid(noise_std=sb.NOISY_STD)
    return family, sb.held_out(family, s)


def results_and_target(rows: list[Row], lead: str) -> list[str]:
    """The page's results tables, then the coverage target's verdict per row under ``lead``."""
    return ["## Results", "", sb.results_tables(rows), "## The issue's coverage target", "", lead, "",
            coverage_section(rows), ""]


def main(argv: Sequence[str] | None = None) -> int:
    quick, out = page_args(__doc__, "sinusoid_noisy.md", argv)
    s = sb.Settings.quick() if quick else sb.Settings.full()
    started, date = time.perf_counter(), utc_now()
    family, test = noisy_tasks(s)
    rows, extra = run(family, test, s)
    wall = time.perf_counter() - started
    sin_prior = extra["sin_prior"]
    theta = theta_of(sin_prior.model)
    nuts_opts = ", ".join(f"{k}={v}" for k, v in s.nuts_options.items())
    svi = "defaults (500 steps, lr 0.05, 16 particles)" if not s.svi_options else \
        ", ".join(f"{k}={v}" for k, v in s.svi_options.items())
    bnn = "; ".join(
        f"{label} (G = \"{g}\"): steps={c['steps']}, lr={c['lr']:g}, random_subsets={c['random_subsets']}, "
        f"init_scale={c['init_scale']:g}, support={c['support']}, guide_options={c['guide_options']}, noise "
        + ("learned" if c["noise"] is None else f"held at {GRADIENT_NOISE:g}") for label, g, c in bnn_settings(s))
    page = "\n".join([
        *page_header("Noisy sinusoids: calibration of the SinusoidModel, the HierarchicalBNN and SVI", "sinusoid_noisy.py",
                     quick, date, wall, one_thread_machine()),
        "",
        "## Setup",
        "",
        f"Test tasks: `Sinusoid(noise_std={sb.NOISY_STD:g}).sample(num_tasks={s.test_tasks}, support={max(sb.SHOTS)}, "
        f"query={s.query}, seed=1)`, the noisy test set of `docs/sinusoid.md` (which has the neural process's "
        "amortized and importance rows); "
        "k-shot adaptation reads `test.support.head(k)`. Intervals are mean ± 1.645·std of each method's "
        "Gaussian-summarized predictive (law of total variance over posterior draws), which includes the learned "
        "noise.",
        "",
        f"* **Bayes-optimal**: `sinusoid_bayes_predict` on a {s.coarse_grid[0]}×{s.coarse_grid[1]} grid with the "
        f"family's σ = {sb.NOISY_STD:g}.",
        f"* **SinusoidModel()**: `fit_prior(..., guide=\"pooled\", random_subsets=True, steps={s.sin_steps}, "
        f"batch_tasks=64, lr={sb.SIN_FIT['lr']:g}, seed=0)` on {s.sin_train_tasks} noisy training tasks (seed 0); learned θ: "
        f"{theta}. NUTS ({nuts_opts}, one chain over all tasks jointly) on the first {s.nuts_tasks} test tasks; SVI "
        f"({svi}) on the first {s.sin_svi_tasks}, with one Gaussian per task and with a mixture ("
        + ", ".join(f"{k}={v!r}" for k, v in MIXTURE_SVI.items())
        + f": the ELBO taken component by component, the weights held equal for the first half of the steps); "
        f"{s.sin_samples} posterior draws per prediction. NUTS: "
        + "; ".join(extra["nuts_notes"]) + ". SVI and NUTS start each task at the guide's guess, or at the prior's "
        "mean where the log joint is higher there.",
        f"* **{SIN_IWAE_ROW}**: from a copy of that model and guide, `fit_prior(model, train, guide=guide, "
        f"steps={s.sin_iwae['steps']}, batch_tasks=64, lr={s.sin_iwae['lr']:g}, random_subsets=True, "
        f"num_particles={s.sin_iwae['particles']}, objective=\"iwae\", seed=1)` ({extra['sin_iwae_s']:.0f} s): the "
        "importance-weighted bound (Burda et al. 2016) per task, which trains the guide as a proposal for K draws "
        "weighted by the model instead of by KL(q ‖ p), the fit that makes a Gaussian sit inside one part of a "
        f"ridge-shaped posterior; learned θ: {theta_of(extra['sin_iwae_prior'].model)}. Adapted as above.",
        f"* **{CONTEXT_ROW}**: θ fitted with `guide=\"amortized\", guide_options={{\"context\": True}}, lr=2e-2` "
        f"(without random subsets) on the same tasks: learned noise_scale {extra['context_noise']:.3g} for a true "
        f"{sb.NOISY_STD:g}. The ELBO's gap, KL(q ‖ posterior), depends on θ too, and a larger noise scale flattens the "
        "posterior this Gaussian encoder fits badly (curved, at small amplitudes nearly flat in phase); NUTS is exact "
        "under that θ, so its intervals carry the surplus noise. The pooled encoder fits those posteriors better, and "
        "its θ has a noise scale near the truth.",
        f"* **HierarchicalBNN()** (1-40-40-1): `fit_prior(HierarchicalBNN(init_scale=...), ..., guide=G, "
        f"batch_tasks={s.bnn_batch}, seed=0)` on {s.bnn_train_tasks} noisy training tasks with {bnn}; final noise "
        f"scale " + ", ".join(f"{extra[f'bnn_{label}_noise']:.3g} ({label})" for label, _, _ in bnn_settings(s)) + "; "
        f"{s.bnn_samples} draws per prediction. " + sb.BNN_SPLIT,
        f"* **{BNN_SUBSETS_ROW}**: the pooled fit reads whole 10-point sets (on noiseless tasks, random subsets from "
        "the start fitted worse: `benchmarks/sinusoid.py`, `Settings.bnn`), so its set encoder has never read 1 or 2 "
        "points. "
        f"From a copy of that model and guide, `fit_prior(model, train, guide=guide, steps={s.bnn_subsets['steps']}, "
        f"batch_tasks=64, lr={s.bnn_subsets['lr']:g}, random_subsets=True, num_particles={s.bnn_subsets['particles']}, "
        f"objective=\"{s.bnn_subsets['objective']}\""
        + (", fixed=model.noise_parameters" if s.bnn_subsets["hold_noise"] else "")
        + f", seed=1)` ({extra['bnn_subsets_s']:.0f} s), on the same training tasks; noise scale "
        + (f"held at the pooled fit's {extra['bnn_subsets_noise']:.3g} (learned, it grows on small subsets, where a "
           "diagonal Gaussian over the weights cannot spread the functions away from the points without spreading "
           "them at the points too, and σ takes up the misfit: the 10-shot intervals then over-cover)"
           if s.bnn_subsets["hold_noise"] else f"{extra['bnn_subsets_noise']:.3g}")
        + ". Its meta-train time is the pooled fit's plus this phase's.",
        f"* **NeuralProcessModel()**: fitted as in `docs/sinusoid.md` (`guide=\"pooled\", steps={s.np_steps}, "
        f"kl_anneal_steps={s.np_anneal}, random_subsets=True`, {s.np_train_tasks} noisy training tasks; learned noise "
        f"scale {extra['np_noise']:.3g}), refined by SVI on the first {s.np_svi_tasks} test tasks with one Gaussian "
        f"per task ({svi}; diagonal, like the pooled guide's) and with the mixture above; {s.np_samples} draws per "
        f"prediction. **{sb.NP_IWAE_ROW}**: that fit continued as `docs/sinusoid.md` continues it (its IWAE phase: "
        f"steps={s.np_iwae['steps']}, lr={s.np_iwae['lr']:g}, num_particles={s.np_iwae['particles']}, "
        f"{extra['np_iwae_s']:.0f} s; learned noise scale {extra['np_iwae_noise']:.3g}), then refined by SVI with one "
        "Gaussian and adapted amortized.",
        "",
        *results_and_target(rows, "90% intervals should cover 85–95% of the query points for every Bayesian method "
                            "(the neural process's amortized and importance rows are in `docs/sinusoid.md`; "
                            "SVI with one Gaussian per task fitted to the importance-weighted bound instead of the "
                            "ELBO is in `docs/svi_iwae.md`, and the HierarchicalBNN with its output layer inferred "
                            "exactly, `exact_output=True`, in `docs/bnn_exact_output.md`):"),
    ])
    publish(page, out, started)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Full Bayes on eight schools: NUTS over (mu, tau) and every school's effect, inspected with ArviZ.

Eight schools ran a coaching programme for the SAT; each reports an estimated effect y_j with a known
standard error sigma_j (Rubin 1981). The hierarchical model (Gelman et al., *Bayesian Data Analysis*, §5.5):

    mu ~ N(0, 5²),  tau ~ HalfCauchy(5),  theta_j ~ N(mu, tau²),  y_j ~ N(theta_j, sigma_j²).

Here the tasks are the schools and φ_j = theta_j; θ = (mu, tau) has a hyperprior, and with only eight
tasks we can afford the exact answer: NUTS over θ and every φ_j jointly (``fit_prior(method="nuts")``).
The story:

1. sample the non-centred model (4 chains, in parallel where there are cores) and summarize it with ArviZ:
   ``az.summary``, ``az.loo``, BFMI, a forest plot of the school effects and an energy plot;
2. sample the centred form of the same model and count its divergences: the funnel between tau and the
   effects that the non-centred form removes;
3. adapt to a ninth school: its effect's posterior marginalizes over (mu, tau), which the new school also
   informs.

What you will see (4 chains x 1000 + 1000, seed 0): mu 4.4 ± 3.3, tau 3.6 ± 3.2 — ArviZ's bundled PyMC
reference has 4.37 ± 3.29 and 3.72 ± 3.10 — no divergences, r_hat 1.00; the centred form diverges.

Run it:  python examples/eight_schools.py            (about a minute on 2 cores)
         python examples/eight_schools.py --quick    (about 20 s: a smoke test)
"""
from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import arviz as az  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

import bayesmeta as bm  # noqa: E402
from bayesmeta.models import EightSchools  # noqa: E402


def main(quick: bool = False, out: str = "runs") -> None:
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    schools = bm.tasks.eight_schools()
    print(schools)
    draws, warmup, chains = (100, 100, 2) if quick else (1000, 1000, 4)

    # ------------------------------------------------------------------ 1. full Bayes, non-centred
    prior = bm.fit_prior(EightSchools(), schools, method="nuts", num_samples=draws, warmup_steps=warmup,
                         num_chains=chains, target_accept_prob=0.9, jit_compile=True, seed=0, progress=not quick)
    print(f"\n{prior}: {prior.config['seconds']:.1f} s of sampling")
    idata = prior.to_inference_data()
    print(az.summary(idata, var_names=["mu", "tau"], round_to=2).to_string())
    print(f"\nBFMI per chain: {[round(float(b), 2) for b in az.bfmi(idata)]}  (below 0.3 would flag poor exploration)")
    print(f"divergences: {int(idata.sample_stats['diverging'].sum())}")
    if not quick:  # leave-one-school-out needs the full set of draws to be read with any confidence
        print(az.loo(idata))
    effects = az.summary(idata, var_names=["phi"], round_to=1)[["mean", "sd", "hdi_3%", "hdi_97%"]]
    effects.index = schools.names
    print("\nschool effects (posterior):\n" + effects.to_string())

    axes = az.plot_forest(idata, var_names=["phi"], combined=True, hdi_prob=0.9, figsize=(6, 4))
    axes[0].set_title("School effects, 90% intervals")
    bm.evaluation.save_figure(axes[0].figure, out_dir / "eight_schools_forest.png", dpi=120, bbox_inches="tight")
    ax = az.plot_energy(idata, figsize=(6, 4))
    bm.evaluation.save_figure(ax.figure, out_dir / "eight_schools_energy.png", dpi=120, bbox_inches="tight")
    plt.close("all")

    # ------------------------------------------------------------------ 2. the centred form's funnel
    # At NUTS's default target acceptance (0.8): the step size that suits the wide neck is too long for the funnel.
    centred = bm.fit_prior(EightSchools("centered"), schools, method="nuts", num_samples=draws, warmup_steps=warmup,
                           num_chains=chains, jit_compile=True, seed=0, progress=not quick)
    diverging = int(centred.training_posterior.diagnostics["sample_stats"]["diverging"].sum())
    print(f"\ncentred parameterization: {diverging} divergent transitions of {chains * draws} "
          f"(non-centred: {int(idata.sample_stats['diverging'].sum())})")

    # ------------------------------------------------------------------ 3. a ninth school
    new = bm.TaskSet.from_arrays(torch.tensor([[[10.0]]]), torch.tensor([[[15.0]]]), names=["New school"])
    post = prior.adapt(new.support, method="nuts", num_samples=draws, warmup_steps=warmup, jit_compile=True)
    effect = post.draws.flatten(0, 1)[:, 0, 0]
    print(f"\nnew school, y = 15 ± 10: effect {effect.mean():.1f} ± {effect.std():.1f} "
          f"(shrunk toward mu; the data alone say 15 ± 10)")
    print(f"figures: {out_dir / 'eight_schools_forest.png'}, {out_dir / 'eight_schools_energy.png'}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short chains: a smoke test")
    parser.add_argument("--out", default="runs", help="folder for the figures")
    args = parser.parse_args()
    main(quick=args.quick, out=args.out)

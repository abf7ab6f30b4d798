"""How much does a learned prior know about a new task, and how much do five points add? Entropy, measured.

The lecture's probabilistic view of meta-learning: tasks share structure when each task's parameters φ_i
depend on a shared θ, so that H(p(φ | θ)) < H(p(φ)); the less entropy is left once θ is known, the faster
a new task is learned. With linear-regression tasks (φ = slope and intercept) the story is:

1. before any task: a weakly informative hyperprior over θ gives a broad marginal p(φ) — the reference;
   ``bm.diagnostics.structure`` measures its entropy, the entropy left given θ, and the mutual information
   I(φ; θ), the structure there is to learn;
2. learn θ from 500 tasks (empirical Bayes): the learned prior's entropy H(p(φ | θ̂)) drops by about 2.4 nats;
3. adapt held-out tasks from 0, 1, 2, 5 and 10 points: per-task posterior entropy (``bm.diagnostics.entropy``)
   and the information each support set adds, plotted against shots;
4. the same posteriors in ArviZ: ``to_inference_data`` and a forest plot of a few tasks' φ.

What you will see (seed 0): reference H(p(φ)) ≈ 5.4 nats, learned prior ≈ 3.1, true task distribution 3.15;
information gain ≈ 1.2 / 2.0 / 3.1 / 3.9 nats at 1 / 2 / 5 / 10 points.

Run it:  python examples/posterior_entropy.py            (about 15 seconds)
         python examples/posterior_entropy.py --quick    (a few seconds: a smoke test)
"""
from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import arviz as az  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import pyro.distributions as dist  # noqa: E402
import torch  # noqa: E402
from pyro.nn import PyroSample  # noqa: E402

import bayesmeta as bm  # noqa: E402
from bayesmeta.models import HierarchicalLinearRegression  # noqa: E402


def main(quick: bool = False, out: str = "runs") -> None:
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    family = bm.tasks.LinearGaussian(x_dim=1, seed=0)
    train = family.sample(num_tasks=60 if quick else 500, support=10, query=10, seed=0)
    test = family.sample(num_tasks=20 if quick else 200, support=10, query=10, seed=1)

    # ---------------------------------------------------------------- 1. the reference: before any task
    reference = HierarchicalLinearRegression(x_dim=1)
    reference.prior_loc = PyroSample(dist.Normal(0.0, 3.0).expand([2]).to_event(1))      # θ gets a hyperprior
    reference.prior_scale = PyroSample(dist.LogNormal(0.0, 1.0).expand([2]).to_event(1))
    before = bm.diagnostics.structure(reference, num_theta=300 if quick else 2000)
    print("Before any task (hyperprior over θ):")
    print(before.to_frame().to_string(index=False))

    # ---------------------------------------------------------------- 2. learn θ from many tasks
    prior = bm.fit_prior(HierarchicalLinearRegression(x_dim=1), train, guide="exact", steps=100 if quick else 1500,
                         lr=0.05, batch_tasks=len(train), seed=0, progress=not quick)
    learned = bm.diagnostics.entropy(prior)
    truth = family.theta
    true_h = torch.distributions.Normal(truth["prior_loc"], truth["prior_scale"]).entropy().sum()
    print(f"\nlearned prior H(p(φ | θ̂)) = {float(learned):.3f} nats "
          f"({before.marginal_entropy - float(learned):.2f} below the reference; true task distribution {true_h:.3f})")

    # ---------------------------------------------------------------- 3. what k points add
    report = bm.diagnostics.structure(prior, test, shots=(0, 1, 2, 5, 10), method="exact")
    print("\nPosterior entropy and information gain vs shots (mean ± se over held-out tasks):")
    print(report.by_shots.round(3).to_string(index=False))
    post = prior.adapt(test.support.head(5), method="exact")
    per_task = bm.diagnostics.entropy(post)
    print(f"\n5-shot posterior entropy per task: first three {[round(v, 3) for v in per_task.value[:3].tolist()]} "
          f"({per_task.method})")
    figure = report.plot()
    bm.evaluation.save_figure(figure, out_dir / "posterior_entropy.png", dpi=120, bbox_inches="tight")

    # ---------------------------------------------------------------- 4. the same posterior in ArviZ
    idata = bm.diagnostics.to_inference_data(post, num_samples=500)
    axes = az.plot_forest(idata, var_names=["phi"], coords={"task": idata.posterior.task.values[:4]},
                          combined=True, hdi_prob=0.9, figsize=(6, 4))
    axes[0].set_title("5-shot posteriors of four tasks, 90% intervals")
    bm.evaluation.save_figure(axes[0].figure, out_dir / "posterior_forest.png", dpi=120, bbox_inches="tight")
    plt.close("all")
    print(f"figures: {out_dir / 'posterior_entropy.png'}, {out_dir / 'posterior_forest.png'}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small settings: a smoke test")
    parser.add_argument("--out", default="runs", help="folder for the figures")
    args = parser.parse_args()
    main(quick=args.quick, out=args.out)

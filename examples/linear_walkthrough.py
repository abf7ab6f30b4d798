"""Learn a prior over linear-regression tasks, adapt it to new tasks four ways, check against the exact answer.

Hierarchical linear regression is the one model where the posterior of a new task is known in closed
form, so every approximate method can be compared with the truth. The story:

1. sample many training tasks from a task family whose prior θ we know;
2. learn θ back from the tasks with ``bm.fit_prior``;
3. adapt new tasks from 3 labelled points each, with every inference method;
4. compare each method with the exact posterior (KL divergence) and score its predictions;
5. save the learned prior and load it back.

Run it:  python examples/linear_walkthrough.py            (3000 training steps, then NUTS on 10 tasks)
         python examples/linear_walkthrough.py --quick    (a few seconds: a smoke test)
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

import bayesmeta as bm
from bayesmeta.evaluation import gaussian_nll, interval_coverage, mse, summarize
from bayesmeta.models import HierarchicalLinearRegression


def main(quick: bool = False, out: str | None = None) -> None:
    # ---------------------------------------------------------------- 1. tasks
    # A task family: each task draws its weights w_i ~ N(mu, diag(tau^2)); y = [x, 1] . w_i + noise.
    # family.theta holds the true mu ("prior_loc"), tau ("prior_scale") and noise ("noise_scale").
    family = bm.tasks.LinearGaussian(x_dim=3, seed=0)
    train = family.sample(num_tasks=200 if quick else 2000, support=10, query=10, seed=0)
    test = family.sample(num_tasks=100, support=3, query=50, seed=1)  # new tasks, 3 labelled points each

    # ---------------------------------------------------------------- 2. learn the prior
    # fit_prior maximizes the ELBO over all training tasks; the amortized guide learns to read a support
    # set and output q(w_i | support), so new tasks need one forward pass.
    model = HierarchicalLinearRegression(x_dim=3)
    prior = bm.fit_prior(model, train, steps=200 if quick else 3000, batch_tasks=64, lr=1e-2, seed=0,
                         progress=not quick)
    print("true prior mean   ", family.theta["prior_loc"].numpy().round(2))
    print("learned prior mean", model.prior_loc.detach().numpy().round(2))
    print(f"true noise {family.theta['noise_scale'].item():.3f}, learned {model.noise_scale.item():.3f}")

    # ---------------------------------------------------------------- 3. adapt new tasks
    # Each method returns a TaskPosterior over the weights of every test task, conditioned on its support.
    options = {
        "amortized": {},                                             # one pass of the guide: instant
        "svi": {"steps": 50 if quick else 500},                      # a Gaussian per task, refined by SVI
        "exact": {},                                                 # closed form (conjugate models only)
        "nuts": {"num_samples": 20 if quick else 300, "warmup_steps": 20 if quick else 300},  # MCMC reference
    }
    exact = prior.adapt(test.support, method="exact")
    print(f"\n{'method':<10} {'tasks':>5} {'MSE':>15} {'NLL':>15} {'90% cover':>15} {'KL(q||exact)':>15} {'sec':>6}")
    for method, kwargs in options.items():
        tasks = test[:10] if method == "nuts" else test   # NUTS is slow: 10 tasks are enough to see it
        start = time.perf_counter()
        post = prior.adapt(tasks.support, method=method, **kwargs)
        # The posterior predictive at the query inputs: mean, std and samples of y.
        pred = post.predict(tasks.query.x, num_samples=200, seed=0)
        seconds = time.perf_counter() - start

        # ------------------------------------------------------------ 4. compare
        # Each metric gives one number per task; summarize gives the mean and its standard error.
        y, mask = tasks.query.y, tasks.query.mask
        lower, upper = pred.interval(0.9)
        scores = [mse(pred.mean, y, mask), gaussian_nll(pred.mean, pred.std, y, mask),
                  interval_coverage(lower, upper, y, mask)]
        if post.distribution is not None:  # Gaussian posteriors: how far from the exact one, in nats
            kl = torch.distributions.kl_divergence(post.distribution, exact.distribution)
            scores.append(kl.clamp(min=0))  # KL >= 0: the clamp only removes float round-off
        cells = [f"{m:.3f} ± {se:.3f}" for m, se in map(summarize, scores)] + ["–"]  # '–': no KL for NUTS
        print(f"{method:<10} {len(tasks):>5}", *(f"{cell:>15}" for cell in cells[:4]), f"{seconds:6.2f}")

    # ---------------------------------------------------------------- 5. save and load
    # The file holds the model's class, constructor arguments and parameters; loading never unpickles code.
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(out or tmp) / "linear.prior"
        path.parent.mkdir(parents=True, exist_ok=True)
        prior.save(path)
        loaded = bm.LearnedPrior.load(path)
        same = torch.allclose(loaded.adapt(test.support, method="exact").mean, exact.mean)
        print(f"\nsaved {path.name} and loaded it back: {loaded}; same exact posterior: {same}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few seconds: fewer tasks and steps")
    parser.add_argument("--out", help="folder to keep the saved prior in (default: a temporary folder)")
    args = parser.parse_args()
    main(quick=args.quick, out=args.out)

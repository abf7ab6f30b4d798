"""Learn a prior from a table of many firms, then predict a new firm's investment from four of its years.

The commonest shape of real "many related tasks" data is a long-format table: one row per observation
and a column naming the task it belongs to. Here the tasks are firms in a panel like the Grunfeld
investment data (Y. Grunfeld, 1958; used throughout B. H. Baltagi, *Econometric Analysis of Panel Data*):
each year, a firm's gross investment depends linearly on its market value and its capital stock, with
coefficients that differ between firms but come from one shared distribution. The story:

1. build the table: 40 firms x 20 years, each firm's coefficients drawn from a known prior;
2. ``TaskSet.from_dataframe``: one task per firm, every row a labelled (support) point;
3. ``fit_prior``: learn that prior (mean and spread of each coefficient, and the noise) from the firms;
4. a new firm: adapt to its first 4 years, predict the rest with 90% intervals;
5. plot its 4 points, the predictive mean and the 90% band along value, capital held fixed.

Run it:  python examples/fit_prior_on_your_table.py            (2000 training steps, a few seconds)
         python examples/fit_prior_on_your_table.py --quick    (a smoke test)
The same on CSV files from the command line: ``bayesmeta fit`` and ``bayesmeta adapt`` (README, "Your
own data").
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
import torch

import bayesmeta as bm
from bayesmeta.models import HierarchicalLinearRegression

# The shared prior the firms' coefficients come from: invest = b_value * value + b_capital * capital + b_0.
# Units: value and capital in $bn, invest in $100M (columns of order 1-10 suit fit_prior's default lr).
COEFFICIENTS = ["value", "capital", "intercept"]
TRUE_MEAN = np.array([1.2, 2.3, -0.4])
TRUE_SD = np.array([0.4, 0.8, 0.3])
NOISE_SD = 0.3
SHOTS = 4


def simulate_panel(num_firms: int, years: int, seed: int, first: int = 0) -> pd.DataFrame:
    """One row per firm and year: firm, year, invest, value, capital (a Grunfeld-like panel)."""
    rng = np.random.default_rng(seed)
    coef = TRUE_MEAN + TRUE_SD * rng.standard_normal((num_firms, 3))     # each firm's own coefficients
    size = rng.lognormal(0.0, 0.5, (num_firms, 1))                       # firms differ in size
    growth = np.cumsum(rng.normal(0.03, 0.12, (num_firms, years)), axis=1)
    value = size * np.exp(growth)                                        # market value: a random walk
    capital = 0.3 * size * (1 + 0.06 * np.arange(years)) * rng.uniform(0.9, 1.1, (num_firms, years))
    invest = coef[:, :1] * value + coef[:, 1:2] * capital + coef[:, 2:] + NOISE_SD * rng.standard_normal(value.shape)
    return pd.DataFrame({
        "firm": np.repeat([f"firm{first + i:02d}" for i in range(num_firms)], years),
        "year": np.tile(1935 + np.arange(years), num_firms),
        "invest": invest.ravel(), "value": value.ravel(), "capital": capital.ravel(),
    })


def main(quick: bool = False, out: str = "runs") -> None:
    # ---------------------------------------------------------------- 1. the table
    panel = simulate_panel(num_firms=40, years=20, seed=0)
    print(panel.head(3).to_string(index=False, float_format=lambda v: f"{v:.3f}"), "\n...")

    # ---------------------------------------------------------------- 2. one task per firm
    # support=None: every row is a labelled point of its firm's task (a fixed collection, no query split).
    tasks = bm.TaskSet.from_dataframe(panel, task="firm", x=["value", "capital"], y="invest", support=None)
    print(f"\n{tasks}")

    # ---------------------------------------------------------------- 3. learn the prior from the firms
    model = HierarchicalLinearRegression(x_dim=2)     # w_i ~ N(mu, diag(s^2)); invest = [value, capital, 1] . w_i + noise
    prior = bm.fit_prior(model, tasks, steps=300 if quick else 2000, lr=1e-2, seed=0, progress=not quick)
    theta = pd.DataFrame({
        "true mean": TRUE_MEAN, "learned mean": model.prior_loc.detach().numpy(),
        "true sd": TRUE_SD, "learned sd": model.prior_scale.detach().numpy(),
    }, index=COEFFICIENTS)
    print(f"\nthe prior over a firm's coefficients, learned from {len(tasks)} firms in {prior.config['seconds']:.1f} s:")
    print(theta.to_string(float_format=lambda v: f"{v:.3f}"))
    print(f"noise sd: true {NOISE_SD}, learned {model.noise_scale.item():.3f}")

    # ---------------------------------------------------------------- 4. a new firm, four years known
    new = simulate_panel(num_firms=1, years=20, seed=1, first=40)
    known, later = new.iloc[:SHOTS], new.iloc[SHOTS:]
    support = bm.TaskSet.from_dataframe(known, task="firm", x=["value", "capital"], y="invest")
    post = prior.adapt(support, method="amortized")   # one pass of the fitted guide; "exact" is the closed form here
    sd = post.covariance[0].diagonal().sqrt()
    print(f"\nnew firm, from its first {SHOTS} years: posterior mean ± sd of its coefficients")
    print("  " + ", ".join(f"{c} {m:.3f} ± {s:.3f}" for c, m, s in zip(COEFFICIENTS, post.mean[0].tolist(), sd.tolist())))

    # Predict its later years: inputs are 1 task x N points x 2 features.
    x_later = torch.tensor(later[["value", "capital"]].to_numpy(), dtype=torch.float32)[None]
    pred = post.predict(x_later, num_samples=500, seed=0)
    lower, upper = pred.interval(0.9)
    table = later[["year", "value", "capital", "invest"]].assign(
        predicted=pred.mean[0, :, 0].numpy(), lower90=lower[0, :, 0].numpy(), upper90=upper[0, :, 0].numpy())
    print("\nits later years, predicted (90% interval):")
    print(table.head(6).to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    inside = ((table["lower90"] <= table["invest"]) & (table["invest"] <= table["upper90"])).sum()
    print(f"{inside} of its {len(table)} later years fall inside their 90% interval")

    # ---------------------------------------------------------------- 5. plot along value, capital fixed
    capital = float(known["capital"].mean())
    values = np.linspace(0.5 * known["value"].min(), 1.5 * known["value"].max(), 100)
    grid = torch.tensor(np.column_stack([values, np.full_like(values, capital)]), dtype=torch.float32)[None]
    curve = post.predict(grid, num_samples=4000, seed=0)  # many draws: a smooth band from the sample quantiles
    path = Path(out) / "fit_prior_on_your_table.png"
    save_plot(path, known, values, curve, capital)
    print(f"\nwrote {path}")


def save_plot(path: Path, known: pd.DataFrame, values: np.ndarray, curve: bm.Prediction, capital: float) -> None:
    """The known points, predictive mean and 90% band; a bare Figure on the Agg canvas (no pyplot state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    lower, upper = (t[0, :, 0].numpy() for t in curve.interval(0.9))
    figure = Figure(figsize=(6, 4), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots()
    axes.fill_between(values, lower, upper, alpha=0.25, label="90% predictive interval")
    axes.plot(values, curve.mean[0, :, 0].numpy(), label="predictive mean")
    axes.scatter(known["value"], known["invest"], color="black", zorder=3, label=f"its first {len(known)} years")
    axes.set(xlabel="market value ($bn)", ylabel="investment ($100M)",
             title=f"a new firm, capital fixed at {capital:.2f} $bn")
    axes.legend(fontsize="small")
    bm.evaluation.save_figure(figure, path, dpi=110)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke test: few training steps")
    parser.add_argument("--out", default="runs", help="folder for the plot (default: runs/)")
    args = parser.parse_args()
    main(quick=args.quick, out=args.out)

"""Scoring learners on held-out tasks: per-task metrics over masked query sets and their summaries.

>>> import torch
>>> from bayesmeta.evaluation import mse, summarize
>>> summarize(mse(torch.zeros(3, 2, 1), torch.ones(3, 2, 1)))
(1.0, 0.0)
"""
from __future__ import annotations

from bayesmeta.evaluation.harness import FLOOR, adapting, bayes_floor, benchmark, plot_benchmark
from bayesmeta.evaluation.metrics import (
    accuracy,
    categorical_nll,
    expected_calibration_error,
    gaussian_nll,
    interval_coverage,
    mse,
    summarize,
)
from bayesmeta.evaluation.plots import save_figure

__all__ = ["mse", "gaussian_nll", "interval_coverage", "accuracy", "categorical_nll", "expected_calibration_error",
           "summarize", "benchmark", "adapting", "bayes_floor", "plot_benchmark", "save_figure", "FLOOR"]

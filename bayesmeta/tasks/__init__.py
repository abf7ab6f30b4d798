"""Few-shot tasks: the :class:`TaskSet` container and synthetic task families."""
from __future__ import annotations

from bayesmeta.tasks.datasets import EIGHT_SCHOOLS_SIGMA, eight_schools
from bayesmeta.tasks.families import GPFunctions, LinearGaussian, Sinusoid
from bayesmeta.tasks.oracle import gp_posterior_predict, sinusoid_bayes_predict, sinusoid_grid_noise
from bayesmeta.tasks.taskset import TaskData, TaskSet

__all__ = [
    "TaskData", "TaskSet", "Sinusoid", "LinearGaussian", "GPFunctions",
    "eight_schools", "EIGHT_SCHOOLS_SIGMA", "sinusoid_bayes_predict", "sinusoid_grid_noise", "gp_posterior_predict",
]

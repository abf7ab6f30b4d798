"""bayesmeta: learn a prior from many tasks in Pyro, adapt it to a new task with honest uncertainty.

>>> import bayesmeta as bm
>>> bm.TaskSet, bm.HierarchicalModel, bm.fit_prior  # doctest: +ELLIPSIS
(<class '...TaskSet'>, <class '...HierarchicalModel'>, <function fit_prior at ...>)
"""
from __future__ import annotations

import pyro

# Parameters live in their modules, not in Pyro's global param store: nothing leaks between models or
# tests, and checkpoints are plain state dicts (Pyro's recommended setting for PyroModule code).
pyro.settings.set(module_local_params=True)

__version__ = "0.1.0"

from bayesmeta import tasks  # noqa: E402
from bayesmeta.model import HierarchicalModel  # noqa: E402
from bayesmeta.tasks import TaskData, TaskSet  # noqa: E402
from bayesmeta import evaluation, guides  # noqa: E402
from bayesmeta.inference import (  # noqa: E402
    FormatError,
    LearnedPrior,
    NonFiniteLossError,
    Prediction,
    TaskPosterior,
    amortize,
    fit_prior,
)


def __getattr__(name: str):
    # bm.diagnostics imports ArviZ (and with it xarray, pandas, matplotlib): only when first used.
    if name == "diagnostics":
        import importlib

        return importlib.import_module("bayesmeta.diagnostics")
    raise AttributeError(f"module 'bayesmeta' has no attribute {name!r}")

__all__ = [
    "HierarchicalModel", "TaskData", "TaskSet", "LearnedPrior", "TaskPosterior", "Prediction",
    "fit_prior", "amortize", "NonFiniteLossError", "FormatError", "tasks", "guides", "evaluation", "diagnostics", "__version__",
]

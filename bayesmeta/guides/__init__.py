"""Guides q(φ_i | ·) for the tasks plate, chosen by ``fit_prior(guide=...)``."""
from __future__ import annotations

from typing import Any

from bayesmeta.guides.amortized import AmortizedGuide
from bayesmeta.guides.base import TaskGuide, gaussian_from_natural, gaussian_natural_params, site_distribution
from bayesmeta.guides.exact import ExactGuide
from bayesmeta.guides.gradient import GradientGuide
from bayesmeta.guides.mixture import MixtureGuide
from bayesmeta.guides.per_task import PerTaskGuide
from bayesmeta.guides.pooled import PooledGuide

__all__ = ["AmortizedGuide", "ExactGuide", "GradientGuide", "MixtureGuide", "PerTaskGuide", "PooledGuide", "TaskGuide", "GUIDES",
           "make_guide", "gaussian_natural_params", "gaussian_from_natural", "site_distribution"]

#: ``fit_prior(guide=...)`` names and their classes.
GUIDES: dict[str, type[TaskGuide]] = {
    "amortized": AmortizedGuide, "pooled": PooledGuide, "per_task": PerTaskGuide, "exact": ExactGuide,
    "gradient": GradientGuide, "mixture": MixtureGuide,
}


def make_guide(kind: str | TaskGuide, model: Any, collection_size: int, **kwargs: Any) -> TaskGuide:
    """Build the guide named ``kind`` for ``model`` and a training collection of ``collection_size`` tasks.

    A ready ``TaskGuide`` passes through.
    """
    if isinstance(kind, TaskGuide):
        return kind
    if kind not in GUIDES:
        raise ValueError(f"guide: expected one of {sorted(GUIDES)} or a TaskGuide, got {kind!r}")
    if kind == "per_task":
        kwargs.setdefault("num_tasks", collection_size)
    return GUIDES[kind](model, **kwargs)

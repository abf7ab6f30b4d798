r"""The exact posterior as the guide: the ELBO becomes the log marginal likelihood."""
from __future__ import annotations

import pyro.distributions as dist
from torch import Tensor

from bayesmeta.guides.base import TaskGuide
from bayesmeta.model import HierarchicalModel
from bayesmeta.tasks.taskset import TaskSet

__all__ = ["ExactGuide"]


class ExactGuide(TaskGuide):
    r"""Uses the model's closed-form ``exact_posterior`` of :math:`\phi_i` given all of task i's points.

    With :math:`q = p_\theta(\phi_i \mid D_i)` every sample of the ELBO equals
    :math:`\log p_\theta(D_i)`, so :func:`bayesmeta.fit_prior` performs type-II maximum likelihood
    (empirical Bayes) with no Monte Carlo noise beyond task subsampling.

    >>> from bayesmeta.models import HierarchicalLinearRegression
    >>> ExactGuide(HierarchicalLinearRegression(x_dim=1)).kind
    'exact'
    """

    kind = "exact"

    def __init__(self, model: HierarchicalModel) -> None:
        if not callable(getattr(model, "exact_posterior", None)):
            raise ValueError(
                f"guide: 'exact' needs a model with exact_posterior(data); {type(model).__name__} has none. "
                "Use guide='amortized' or 'per_task'."
            )
        super().__init__(model)

    def posterior(self, tasks: TaskSet, index: Tensor | None = None) -> dist.MultivariateNormal:
        return self.model.exact_posterior(tasks.all_points())

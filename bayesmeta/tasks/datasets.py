r"""Real task collections that ship with the library's dependencies."""
from __future__ import annotations

import torch

from bayesmeta.tasks.taskset import TaskSet

__all__ = ["eight_schools", "EIGHT_SCHOOLS_SIGMA"]

#: The standard errors of the eight schools' estimated coaching effects (Rubin 1981, Table 2; Gelman et al.
#: 2013, *Bayesian Data Analysis*, Table 5.2). ArviZ's bundled data hold the effects and names, not these.
EIGHT_SCHOOLS_SIGMA = (15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0)


def eight_schools(dtype: torch.dtype = torch.float32) -> TaskSet:
    r"""The eight schools data (Rubin 1981) as a TaskSet: one task per school, one point each.

    Each school's point has input :math:`x_j = \sigma_j`, the known standard error of its estimated effect,
    and output :math:`y_j`, the effect (SAT coaching, in points); the task names are the schools'. Effects and
    names are read from the ``centered_eight`` data bundled with ArviZ (no download), the standard errors from
    :data:`EIGHT_SCHOOLS_SIGMA`. The points are support points (there is no query set).

    >>> schools = eight_schools()
    >>> len(schools), schools.names[0], schools.support.y[0].item(), schools.support.x[0].item()
    (8, 'Choate', 28.0, 15.0)
    """
    from bayesmeta.diagnostics.arviz import load_example

    observed = load_example("centered_eight").observed_data
    y = torch.as_tensor(observed["obs"].values, dtype=dtype)
    names = [str(name) for name in observed["school"].values]
    sigma = torch.tensor(EIGHT_SCHOOLS_SIGMA, dtype=dtype)
    if len(y) != len(sigma):
        raise RuntimeError(f"eight_schools: ArviZ's centered_eight holds {len(y)} schools, expected {len(sigma)}")
    return TaskSet.from_arrays(sigma[:, None, None], y[:, None, None], names=names)

r"""Pictures of few-shot predictions: support points, the true function and the predictive band.

Figures are built on a bare ``matplotlib.figure.Figure`` with the Agg canvas — no pyplot, no global
figure state — so they can be saved from scripts, tests and worker processes alike.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import torch
from torch import Tensor

from bayesmeta._files import atomic_write
from bayesmeta.inference.posterior import Prediction
from bayesmeta.tasks.taskset import TaskData

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["band_figure", "gaussian_band", "save_figure"]


def save_figure(figure: Figure, path: str | os.PathLike, dpi: int = 100, **savefig_kwargs: Any) -> Path:
    """Write ``figure`` to ``path`` atomically and return the path; the format comes from the suffix.

    ``figure.savefig`` streams into a temporary file in the same folder, which then replaces ``path``
    (:func:`bayesmeta._files.atomic_write`): a crash while drawing leaves the previous file or none, never a
    truncated image. Missing folders are created.

    >>> import tempfile
    >>> from matplotlib.figure import Figure
    >>> path = save_figure(Figure(), Path(tempfile.mkdtemp()) / "plots" / "empty.png")
    >>> path.read_bytes()[:4]
    b'\\x89PNG'
    """
    path = Path(path)
    kind = path.suffix.lstrip(".").lower()
    if not kind:
        raise ValueError(
            f"path: expected a file name with a suffix that names the format (.png, .pdf, .svg), got {str(path)!r}")
    supported = figure.canvas.get_supported_filetypes()
    if kind not in supported:
        raise ValueError(
            f"path: matplotlib cannot write {kind!r} files; expected one of {sorted(supported)}, got {str(path)!r}")
    atomic_write(path, lambda handle: figure.savefig(handle, format=kind, dpi=dpi, **savefig_kwargs))
    return path


def gaussian_band(pred: Prediction, level: float = 0.9) -> tuple[Tensor, Tensor]:
    r"""The central ``level`` interval of the Gaussian summary of ``pred``: mean :math:`\pm z\,`std.

    >>> lower, upper = gaussian_band(Prediction(torch.zeros(1, 1, 1), torch.ones(1, 1, 1)))
    >>> round(upper.item(), 3)
    1.645
    """
    if not 0 < level < 1:
        raise ValueError(f"level: expected a probability in (0, 1), got {level!r}")
    z = torch.distributions.Normal(0.0, 1.0).icdf(torch.tensor(0.5 + level / 2)).item()
    return pred.mean - z * pred.std, pred.mean + z * pred.std


def band_figure(
    x: Tensor,
    rows: Sequence[tuple[str, TaskData, Prediction]],
    truth: Tensor | None = None,
    titles: Sequence[str] | None = None,
    level: float | Sequence[float] = 0.9,
    panel_size: tuple[float, float] = (2.6, 2.0),
) -> Figure:
    """A grid of panels: one row per entry of ``rows``, one column per task.

    Args:
        x: ``T x G x 1`` inputs at which every prediction (and ``truth``) was evaluated.
        rows: ``(label, support, prediction)`` per row — e.g. one row per number of shots — where
            ``support`` holds the points each task's prediction was conditioned on (masked points are not
            drawn) and ``prediction`` has ``T x G x 1`` mean and std.
        truth: ``T x G x 1`` true function values, drawn in black where given.
        titles: a title per task (column).
        level: the band drawn is the central ``level`` interval of the Gaussian summary; a sequence, e.g.
            ``(0.5, 0.9)``, draws one band per level, nested, the narrower darker.
        panel_size: inches per panel.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if x.dim() != 3 or x.shape[-1] != 1:
        raise ValueError(f"x: expected shape num_tasks x num_points x 1, got {tuple(x.shape)}")
    levels = sorted([level] if isinstance(level, (int, float)) else list(level), reverse=True)
    num_tasks = x.shape[0]
    figure = Figure(figsize=(panel_size[0] * num_tasks, panel_size[1] * len(rows)), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(len(rows), num_tasks, sharex=True, sharey="col", squeeze=False)
    grid = x[..., 0].detach().cpu()
    for r, (label, support, pred) in enumerate(rows):
        bands = [(lv, *(t[..., 0].detach().cpu() for t in gaussian_band(pred, lv))) for lv in levels]
        mean = pred.mean[..., 0].detach().cpu()
        sx, sy, smask = support.x[..., 0].cpu(), support.y[..., 0].cpu(), support.mask.cpu()
        for i in range(num_tasks):
            ax = axes[r, i]
            if truth is not None:
                ax.plot(grid[i], truth[i, :, 0].detach().cpu(), color="black", lw=1, label="true function")
            ax.plot(grid[i], mean[i], color="C0", lw=1.2, label="predictive mean")
            for lv, lower, upper in bands:
                ax.fill_between(grid[i], lower[i], upper[i], color="C0", alpha=0.2, lw=0, label=f"{lv:.0%} band")
            ax.scatter(sx[i][smask[i]], sy[i][smask[i]], color="C3", s=14, zorder=3, label="support points")
            if r == 0 and titles is not None:
                ax.set_title(titles[i], fontsize="small")
            if i == 0:
                ax.set_ylabel(label)
    axes[0, 0].legend(fontsize="x-small", loc="lower left")
    return figure

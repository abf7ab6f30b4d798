"""Prediction plots and saving figures."""
from __future__ import annotations

import pytest
import torch
from matplotlib.figure import Figure

from bayesmeta.evaluation import save_figure
from bayesmeta.evaluation.plots import band_figure, gaussian_band
from bayesmeta.inference.posterior import Prediction
from bayesmeta.tasks.taskset import TaskData


def test_gaussian_band_is_the_central_interval():
    pred = Prediction(torch.full((2, 3, 1), 1.0), torch.full((2, 3, 1), 2.0))
    lower, upper = gaussian_band(pred, level=0.9)
    # Φ(1.6449) = 0.95: the band is mean ± 1.6449 std.
    assert torch.allclose(upper - 1.0, torch.full_like(upper, 2.0 * 1.6449), atol=1e-3)
    assert torch.allclose(1.0 - lower, upper - 1.0)
    with pytest.raises(ValueError, match="level"):
        gaussian_band(pred, level=1.0)


def test_band_figure_draws_one_panel_per_task_and_row(tmp_path):
    x = torch.linspace(-1, 1, 20)[None, :, None].expand(2, 20, 1)
    support = TaskData(torch.zeros(2, 1, 1), torch.zeros(2, 1, 1), torch.ones(2, 1, dtype=torch.bool))
    pred = Prediction(torch.zeros(2, 20, 1), torch.ones(2, 20, 1))
    figure = band_figure(x, [("1 shot", support, pred), ("again", support, pred)], truth=torch.zeros(2, 20, 1))
    assert len(figure.axes) == 4
    path = save_figure(figure, tmp_path / "bands.png")
    assert path.read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("suffix, magic", [("png", b"\x89PNG"), ("pdf", b"%PDF"), ("svg", b"<?xm")])
def test_save_figure_writes_the_format_its_suffix_names(tmp_path, suffix, magic):
    path = save_figure(Figure(), tmp_path / "new" / "folder" / f"figure.{suffix}")
    assert path.read_bytes()[:4] == magic
    assert [p.name for p in path.parent.iterdir()] == [f"figure.{suffix}"]  # no temporary file left


def test_save_figure_that_fails_midway_leaves_the_old_file(tmp_path):
    path = tmp_path / "figure.png"
    path.write_bytes(b"the previous figure")

    class Broken(Figure):
        def savefig(self, handle, **kwargs):
            handle.write(b"\x89PNG half of an image")
            raise RuntimeError("the renderer crashed")

    with pytest.raises(RuntimeError, match="renderer crashed"):
        save_figure(Broken(), path)
    assert path.read_bytes() == b"the previous figure"
    assert [p.name for p in tmp_path.iterdir()] == ["figure.png"]


def test_save_figure_names_the_path_it_cannot_write(tmp_path):
    with pytest.raises(ValueError, match=r"path: expected a file name with a suffix.*'.*figure'"):
        save_figure(Figure(), tmp_path / "figure")
    with pytest.raises(ValueError, match=r"path: matplotlib cannot write 'docx' files"):
        save_figure(Figure(), tmp_path / "figure.docx")

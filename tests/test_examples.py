"""Every example runs, in its quick mode, and tells its story to the end."""
from __future__ import annotations

import runpy
import sys
from pathlib import Path

import pytest
import torch

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.fixture
def one_thread():
    """One torch thread: as fast for a model this small, and it stays fast when the suite shares the CPU."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def test_linear_walkthrough_quick(tmp_path, monkeypatch, capsys, one_thread):
    script = EXAMPLES / "linear_walkthrough.py"
    monkeypatch.setattr(sys, "argv", [str(script), "--quick", "--out", str(tmp_path)])
    runpy.run_path(str(script), run_name="__main__")
    out = capsys.readouterr().out
    for method in ("amortized", "svi", "exact", "nuts"):
        assert f"\n{method} " in out
    assert "same exact posterior: True" in out
    assert (tmp_path / "linear.prior").exists()


def test_fit_prior_on_your_table_quick(tmp_path, monkeypatch, capsys, one_thread):
    script = EXAMPLES / "fit_prior_on_your_table.py"
    monkeypatch.setattr(sys, "argv", [str(script), "--quick", "--out", str(tmp_path)])
    runpy.run_path(str(script), run_name="__main__")
    out = capsys.readouterr().out
    for text in ("TaskSet(40 tasks", "learned mean", "posterior mean ± sd", "later years fall inside"):
        assert text in out
    assert (tmp_path / "fit_prior_on_your_table.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("script", sorted(p.name for p in EXAMPLES.glob("*.py")))
def test_every_example_has_a_quick_mode(script):
    assert "--quick" in (EXAMPLES / script).read_text(), f"{script}: add a --quick flag so the suite can run it"


def test_sinusoid_meta_learning_quick(tmp_path, monkeypatch, capsys, one_thread):
    script = EXAMPLES / "sinusoid_meta_learning.py"
    monkeypatch.setattr(sys, "argv", [str(script), "--quick", "--out", str(tmp_path)])
    runpy.run_path(str(script), run_name="__main__")
    out = capsys.readouterr().out
    assert "KL per latent coordinate" in out and "Bayes-optimal" in out
    assert len([line for line in out.splitlines() if line.strip().startswith(("1 ", "2 ", "5 ", "10 "))]) == 4
    assert (tmp_path / "sinusoid_meta_learning.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_eight_schools_quick(tmp_path, monkeypatch, capsys, one_thread):
    script = EXAMPLES / "eight_schools.py"
    monkeypatch.setattr(sys, "argv", [str(script), "--quick", "--out", str(tmp_path)])
    runpy.run_path(str(script), run_name="__main__")
    out = capsys.readouterr().out
    for text in ("TaskSet(8 tasks", "mu", "tau", "BFMI per chain", "school effects", "Choate",
                 "centred parameterization", "new school, y = 15"):
        assert text in out, text
    for name in ("eight_schools_forest.png", "eight_schools_energy.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_posterior_entropy_quick(tmp_path, monkeypatch, capsys, one_thread):
    script = EXAMPLES / "posterior_entropy.py"
    monkeypatch.setattr(sys, "argv", [str(script), "--quick", "--out", str(tmp_path)])
    runpy.run_path(str(script), run_name="__main__")
    out = capsys.readouterr().out
    for text in ("Before any task", "mutual_information", "learned prior H(p(φ | θ̂))", "information_gain",
                 "5-shot posterior entropy per task"):
        assert text in out, text
    for name in ("posterior_entropy.png", "posterior_forest.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_gp_functions_quick(tmp_path, monkeypatch, capsys, one_thread):
    script = EXAMPLES / "gp_functions.py"
    monkeypatch.setattr(sys, "argv", [str(script), "--quick", "--out", str(tmp_path)])
    runpy.run_path(str(script), run_name="__main__")
    out = capsys.readouterr().out
    assert "KL per latent coordinate" in out and "exact GP, true kernel" in out
    assert len([line for line in out.splitlines() if line.strip().startswith(("5 ", "10 ", "20 "))]) == 3
    assert (tmp_path / "gp_functions.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

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


def run_quick(script: str, out: Path, monkeypatch, capsys) -> str:
    """Run ``examples/<script> --quick --out <out>`` as ``python`` would; what it printed."""
    path = EXAMPLES / script
    monkeypatch.setattr(sys, "argv", [str(path), "--quick", "--out", str(out)])
    runpy.run_path(str(path), run_name="__main__")
    return capsys.readouterr().out


def is_png(path: Path) -> bool:
    return path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_linear_walkthrough_quick(tmp_path, monkeypatch, capsys, one_thread):
    out = run_quick("linear_walkthrough.py", tmp_path, monkeypatch, capsys)
    for method in ("amortized", "svi", "exact", "nuts"):
        assert f"\n{method} " in out
    assert "same exact posterior: True" in out
    assert (tmp_path / "linear.prior").exists()


def test_fit_prior_on_your_table_quick(tmp_path, monkeypatch, capsys, one_thread):
    out = run_quick("fit_prior_on_your_table.py", tmp_path, monkeypatch, capsys)
    for text in ("TaskSet(40 tasks", "learned mean", "posterior mean ± sd", "later years fall inside"):
        assert text in out
    assert is_png(tmp_path / "fit_prior_on_your_table.png")


@pytest.mark.parametrize("script", sorted(p.name for p in EXAMPLES.glob("*.py")))
def test_every_example_has_a_quick_mode(script):
    assert "--quick" in (EXAMPLES / script).read_text(), f"{script}: add a --quick flag so the suite can run it"


def test_sinusoid_meta_learning_quick(tmp_path, monkeypatch, capsys, one_thread):
    out = run_quick("sinusoid_meta_learning.py", tmp_path, monkeypatch, capsys)
    assert "KL per latent coordinate" in out and "Bayes-optimal" in out
    assert len([line for line in out.splitlines() if line.strip().startswith(("1 ", "2 ", "5 ", "10 "))]) == 4
    assert is_png(tmp_path / "sinusoid_meta_learning.png")


def test_eight_schools_quick(tmp_path, monkeypatch, capsys, one_thread):
    out = run_quick("eight_schools.py", tmp_path, monkeypatch, capsys)
    for text in ("TaskSet(8 tasks", "mu", "tau", "BFMI per chain", "school effects", "Choate",
                 "centred parameterization", "new school, y = 15"):
        assert text in out, text
    for name in ("eight_schools_forest.png", "eight_schools_energy.png"):
        assert is_png(tmp_path / name)


def test_posterior_entropy_quick(tmp_path, monkeypatch, capsys, one_thread):
    out = run_quick("posterior_entropy.py", tmp_path, monkeypatch, capsys)
    for text in ("Before any task", "mutual_information", "learned prior H(p(φ | θ̂))", "information_gain",
                 "5-shot posterior entropy per task"):
        assert text in out, text
    for name in ("posterior_entropy.png", "posterior_forest.png"):
        assert is_png(tmp_path / name)


def test_gp_functions_quick(tmp_path, monkeypatch, capsys, one_thread):
    out = run_quick("gp_functions.py", tmp_path, monkeypatch, capsys)
    assert "KL per latent coordinate" in out and "exact GP, true kernel" in out
    assert len([line for line in out.splitlines() if line.strip().startswith(("5 ", "10 ", "20 "))]) == 3
    assert is_png(tmp_path / "gp_functions.png")

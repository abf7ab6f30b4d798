"""The ``bayesmeta`` command: the quick demo end to end, its files, and how it reports bad input."""
from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

import bayesmeta as bm
from bayesmeta.cli import METHODS, SHOTS, main

FILES = ("linear.prior", "metrics.csv", "metrics.json", "demo.png")


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """One quick demo shared by the tests below (it meta-trains, so run it once)."""
    out = tmp_path_factory.mktemp("cli") / "run"
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = main(["demo", "--quick", "--out", str(out), "--seed", "3"])
    return code, out, stdout.getvalue()


def test_quick_demo_writes_every_file(quick_run):
    code, out, _ = quick_run
    assert code == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(FILES)  # no temp files left behind
    assert (out / "demo.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_metrics_json_has_one_row_per_method_and_shot(quick_run):
    _, out, _ = quick_run
    document = json.loads((out / "metrics.json").read_text())
    rows = document["rows"]
    # every method on all 200 tasks except nuts (20 tasks), and exact once more on those 20
    expected = [(m, k, 200) for m in METHODS if m != "nuts" for k in SHOTS] + [(m, k, 20) for m in ("nuts", "exact")
                                                                               for k in SHOTS]
    assert sorted((r["method"], r["shots"], r["tasks"]) for r in rows) == sorted(expected)
    for row in rows:
        assert row["mse"] > 0 and row["mse_se"] > 0
        assert 0 <= row["coverage90"] <= 1
        assert (row["kl_to_exact"] is None) == (row["method"] == "nuts")
    exact = [r for r in rows if r["method"] == "exact" and r["tasks"] == 200]
    assert all(r["kl_to_exact"] == pytest.approx(0, abs=1e-4) for r in exact)
    # more shots, better predictions (exact posterior under the learned prior, 200 tasks)
    assert exact[0]["mse"] > exact[1]["mse"] > exact[2]["mse"]
    assert document["config"]["seed"] == 3 and document["config"]["quick"] is True
    assert len(document["theta"]["true"]["prior_loc"]) == len(document["phi_names"]) == 4


def test_metrics_csv_matches_json(quick_run):
    _, out, _ = quick_run
    table = pd.read_csv(out / "metrics.csv")
    rows = json.loads((out / "metrics.json").read_text())["rows"]
    assert len(table) == len(rows) == (len(METHODS) + 1) * len(SHOTS)
    assert table["mse"].tolist() == pytest.approx([r["mse"] for r in rows])


def test_saved_prior_loads_and_adapts(quick_run):
    _, out, _ = quick_run
    prior = bm.LearnedPrior.load(out / "linear.prior")
    tasks = bm.tasks.LinearGaussian(x_dim=3, seed=3).sample(num_tasks=2, support=3, query=1, seed=0)
    assert prior.adapt(tasks.support, method="exact").mean.shape == (2, 4)


def test_printed_tables(quick_run):
    _, _, stdout = quick_run
    for header in ("learned − true", "prior_loc[w0]", "noise_scale", "query MSE", "90% coverage", "KL to exact"):
        assert header in stdout
    assert "first 20 of the 200 tasks" in stdout and "the same 20 tasks" in stdout


@pytest.mark.parametrize(
    "argv",
    [[], ["demo", "--steps", "0"], ["demo", "--tasks", "many"], ["demo", "--bogus"], ["demo", "--device", "tpu?"], ["demo", "--seed", "-1"],
     ["nonsense"]],
)
def test_bad_arguments_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    assert "usage: bayesmeta" in capsys.readouterr().err


def test_runtime_error_is_one_line_not_a_traceback(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(SystemExit) as info:
        main(["demo", "--quick", "--out", str(blocker / "run")])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("bayesmeta: error: ") and err.count("\n") == 1 and "Traceback" not in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message for a machine without CUDA")
def test_missing_cuda_is_reported(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main(["demo", "--device", "cuda", "--out", str(tmp_path / "run")])
    assert info.value.code == 2
    assert "CUDA is not available" in capsys.readouterr().err


@pytest.mark.parametrize("argv, expected", [(["--help"], "demo"), (["demo", "--help"], "--quick")])
def test_help_explains_itself(argv, expected, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 0
    assert expected in capsys.readouterr().out


def test_console_script_is_installed():
    script = Path(sys.executable).parent / "bayesmeta"
    if not script.exists():
        pytest.skip("the package is not installed with its console script in this environment")
    result = subprocess.run([str(script), "--version"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == f"bayesmeta {bm.__version__}"

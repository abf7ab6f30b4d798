"""``bayesmeta benchmark``: every learner on the same tasks, one table, a CSV and pictures."""
from __future__ import annotations

import contextlib
import io

import pandas as pd
import pytest

from bayesmeta.cli import main


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "run"
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = main(["benchmark", "--methods", "np,np-importance,maml,scratch", "--shots", "1,5", "--budget", "quick",
                     "--out", str(out)])
    return code, out, stdout.getvalue()


def test_it_writes_the_table_and_the_pictures(quick_run):
    code, out, printed = quick_run
    assert code == 0
    table = pd.read_csv(out / "results.csv")
    assert table[["method", "shots"]].values.tolist() == [
        [m, k] for m in ("Bayes-optimal", "np", "np-importance", "maml", "scratch") for k in (1, 5)]
    assert table.loc[table.method == "maml", "nll"].isna().all()  # a point predictor has no NLL
    assert (table.loc[table.method == "np", "coverage"] > 0).all()
    for name in ("mse.png", "nll.png", "coverage.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "query MSE" in printed and "Bayes-optimal" in printed and "np-importance" in printed


def test_same_seed_same_table(quick_run, tmp_path):
    _, out, _ = quick_run
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["benchmark", "--methods", "np,np-importance,maml,scratch", "--shots", "1,5", "--budget", "quick",
                     "--out", str(tmp_path)]) == 0
    first, again = pd.read_csv(out / "results.csv"), pd.read_csv(tmp_path / "results.csv")
    pd.testing.assert_frame_equal(first.drop(columns=["adapt_s_per_task", "meta_train_s"]),
                                  again.drop(columns=["adapt_s_per_task", "meta_train_s"]))


@pytest.mark.parametrize("argv", [["--methods", "np,svm"], ["--shots", "0"], ["--shots", "a,b"], ["--family", "mnist"],
                                  ["--budget", "huge"]])
def test_bad_arguments_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as info:
        main(["benchmark", *argv])
    assert info.value.code == 2
    assert "usage: bayesmeta benchmark" in capsys.readouterr().err

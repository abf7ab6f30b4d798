"""The ``bayesmeta`` command: the quick demo end to end, its files, and how it reports bad input."""
from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import bayesmeta as bm
from bayesmeta.cli import DEMO_FILES, SHOTS, main


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
    assert sorted(p.name for p in out.iterdir()) == sorted(DEMO_FILES)  # no temp files left behind
    for name in DEMO_FILES:
        if name.endswith(".png"):
            assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_metrics_json_has_the_floor_and_the_model_at_every_shot(quick_run):
    _, out, _ = quick_run
    document = json.loads((out / "metrics.json").read_text())
    rows = document["rows"]
    methods = ("Bayes-optimal", "neural process (amortized)")
    assert sorted((r["method"], r["shots"], r["tasks"]) for r in rows) == sorted((m, k, 60) for m in methods for k in SHOTS)
    for row in rows:
        assert row["mse"] >= 0 and 0 <= row["coverage90"] <= 1 and row["seconds"] >= 0
    floor = {r["shots"]: r["mse"] for r in rows if r["method"] == "Bayes-optimal"}
    # The Bayes-optimal predictor: 1 point leaves amplitude and phase uncertain, 5 pin the curve down.
    assert floor[1] > 0.3 and floor[5] < 1e-2
    assert document["config"]["seed"] == 3 and document["config"]["quick"] is True
    assert len(document["fit"]["kl_per_dim"]) == 8 and document["fit"]["noise_scale"] > 0


def test_same_seed_same_numbers(quick_run, tmp_path):
    _, out, _ = quick_run
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["demo", "--quick", "--out", str(tmp_path / "again"), "--seed", "3"]) == 0
    first, again = (json.loads((d / "metrics.json").read_text()) for d in (out, tmp_path / "again"))
    assert [r["mse"] for r in first["rows"]] == [r["mse"] for r in again["rows"]]
    assert first["fit"] == {**again["fit"], "seconds": first["fit"]["seconds"]}


def test_saved_prior_loads_and_adapts(quick_run):
    _, out, _ = quick_run
    prior = bm.LearnedPrior.load(out / "np.prior")
    tasks = bm.tasks.Sinusoid().sample(num_tasks=2, support=3, query=4, seed=0)
    post = prior.adapt(tasks.support)
    assert post.mean.shape == (2, 8)
    assert post.predict(tasks.query.x, num_samples=5, seed=0).mean.shape == (2, 4, 1)


def test_printed_table(quick_run):
    _, _, stdout = quick_run
    for text in ("KL per latent coordinate", "query MSE", "NLL", "90% coverage", "Bayes-optimal",
                 "neural process (amortized)", "metrics.json", "tasks.png"):
        assert text in stdout


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

"""The benchmark scripts still run (their --quick mode prints the page and writes nothing)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("script, title", [
    ("foundation.py", "# Benchmarks"),
    ("sinusoid.py", "# Sinusoid regression benchmark"),
    ("sinusoid_noisy.py", "# Noisy sinusoids: calibration of the SinusoidModel, the HierarchicalBNN and SVI"),
    ("gp_functions.py", "# GP function regression benchmark"),
    ("performance.py", "# Performance of the neural models"),
    ("entropy.py", "# Entropy and structure"),
    ("np_particles.py", "# Neural process at 1 shot: importance particles"),
    ("np_mixture.py", "# Neural process at 1 shot: the mixture guide by simulation"),
    ("bnn_budget.py", "# HierarchicalBNN: 5-shot MSE against the meta-training budget"),
    ("bnn_exact_output.py", "# HierarchicalBNN on sinusoids: the output layer inferred exactly"),
    ("np_iwae.py", "# Neural process on noisy sinusoids: the importance-weighted bound and calibration"),
    ("svi_iwae.py", "# Noisy sinusoids: SVI on the ELBO or on the importance-weighted bound"),
    ("maml_speed.py", "# MAML meta-training and FineTune adaptation speed"),
    ("results.py", "# Results: MAML baselines and the lecture's fine-tuning claims"),
    ("maml_seeds.py", "# MAML on sinusoids: the spread between training runs"),
])
def test_quick_run_prints_its_page(script, title):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), "--quick"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith(title) and "quick smoke run" in result.stdout


def test_gather_keeps_the_jobs_order_samples_the_load_and_raises_a_workers_error(monkeypatch):
    import time
    from concurrent.futures import ThreadPoolExecutor

    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import _report

    monkeypatch.setattr(_report, "LOADS", [])
    with ThreadPoolExecutor(2) as pool:
        slow_first = pool.submit(lambda: time.sleep(0.1) or 1024)  # done last: the order is the jobs', not completion's
        assert _report.gather([slow_first, pool.submit(sorted, "cba")], every=0.01) == [1024, list("abc")]
        assert len(_report.LOADS) >= 1
        with pytest.raises(ValueError, match="invalid literal"):
            _report.gather([pool.submit(int, "x"), pool.submit(pow, 3, 2)], every=0.01)

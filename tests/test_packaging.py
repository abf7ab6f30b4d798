"""The top-level models/ folder is installed as bayesmeta.models, in a regular (non-editable) install."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _has_build_backend() -> bool:
    probe = "import setuptools, sys; sys.exit(int(setuptools.__version__.split('.')[0]) < 69)"
    return subprocess.run([sys.executable, "-c", probe], capture_output=True).returncode == 0


@pytest.mark.skipif(not _has_build_backend(), reason="needs setuptools >= 69 (pyproject's build backend) installed")
def test_regular_install_maps_models(tmp_path):
    source, target = tmp_path / "source", tmp_path / "site"
    source.mkdir()
    # Build from a copy: setuptools leaves build/ and *.egg-info next to the sources it builds.
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    for name in ("bayesmeta", "models"):
        shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--no-index",
         "--target", str(target), str(source)],
        check=True, capture_output=True, cwd=tmp_path,
    )
    assert (target / "bayesmeta" / "models" / "linear.py").is_file()
    # Every subpackage of the source tree must be in the wheel (pyproject lists them by hand): import each one
    # from the installed copy.
    subpackages = sorted(".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "bayesmeta").rglob("__init__.py"))
    assert "bayesmeta.diagnostics" in subpackages
    probe = (
        f"import {', '.join(subpackages)}; import bayesmeta.models as m; print(m.__file__); "
        "print(m.HierarchicalLinearRegression.__module__)"
    )
    env = {**os.environ, "PYTHONPATH": str(target)}
    out = subprocess.run([sys.executable, "-c", probe], check=True, capture_output=True, text=True,
                         cwd=tmp_path, env=env).stdout.split()
    assert Path(out[0]).is_relative_to(target) and out[1] == "bayesmeta.models.linear"


def test_the_development_import_maps_models():
    import bayesmeta.models as models

    assert Path(models.__file__).resolve() == ROOT / "models" / "__init__.py"

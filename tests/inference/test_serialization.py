"""LearnedPrior.save / load: identical predictions, atomic writes, clear errors on bad files."""
from __future__ import annotations

import os

import pytest
import torch

import bayesmeta as bm
from bayesmeta.inference import serialization
from bayesmeta.models import HierarchicalLinearRegression, SinusoidModel


@pytest.fixture(scope="module")
def fitted():
    tasks = bm.tasks.LinearGaussian(x_dim=2, seed=0).sample(num_tasks=60, support=5, query=5, seed=0)
    prior = bm.fit_prior(HierarchicalLinearRegression(x_dim=2, bias=False), tasks, steps=40, batch_tasks=16,
                         lr=1e-2, seed=0, progress=False)
    return prior, tasks


@pytest.mark.parametrize("method", ["amortized", "exact"])
def test_save_load_gives_identical_predictions(fitted, tmp_path, method):
    prior, tasks = fitted
    path = tmp_path / "linear.prior"
    prior.save(path)
    loaded = bm.LearnedPrior.load(path)
    assert type(loaded.model) is HierarchicalLinearRegression and loaded.model.init_args["bias"] is False
    assert loaded.config == {k: v for k, v in prior.config.items()} and loaded.history == prior.history
    before = prior.adapt(tasks.support, method=method).predict(tasks.query.x, num_samples=50, seed=7)
    after = loaded.adapt(tasks.support, method=method).predict(tasks.query.x, num_samples=50, seed=7)
    assert torch.equal(before.mean, after.mean) and torch.equal(before.samples, after.samples)


@pytest.mark.parametrize("guide", ["per_task", "exact"])
def test_other_guides_round_trip(tmp_path, guide):
    tasks = bm.tasks.LinearGaussian(x_dim=1, seed=0).sample(num_tasks=10, support=4, query=0, seed=0)
    prior = bm.fit_prior(HierarchicalLinearRegression(x_dim=1), tasks, guide=guide, steps=5, progress=False)
    prior.save(tmp_path / "p")
    loaded = bm.LearnedPrior.load(tmp_path / "p")
    assert loaded.guide.kind == guide
    for a, b in zip(prior.guide.state_dict().values(), loaded.guide.state_dict().values()):
        assert torch.equal(a, b)


def test_a_crash_leaves_no_file(fitted, tmp_path, monkeypatch):
    prior, _ = fitted
    path = tmp_path / "crash.prior"

    def broken_save(obj, handle):
        handle.write(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(serialization.torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        prior.save(path)
    assert os.listdir(tmp_path) == []  # neither the target nor a temp file


def test_overwrite_is_all_or_nothing(fitted, tmp_path, monkeypatch):
    prior, _ = fitted
    path = tmp_path / "p.prior"
    prior.save(path)
    good = path.read_bytes()
    monkeypatch.setattr(serialization.torch, "save", lambda obj, handle: (_ for _ in ()).throw(OSError("boom")))
    with pytest.raises(OSError):
        prior.save(path)
    assert path.read_bytes() == good


def test_saved_file_follows_the_umask(fitted, tmp_path):
    prior, _ = fitted
    old = os.umask(0o022)
    try:
        prior.save(tmp_path / "p.prior")
    finally:
        os.umask(old)
    assert (tmp_path / "p.prior").stat().st_mode & 0o777 == 0o644


def test_plain_config_values_survive(fitted, tmp_path):
    prior, _ = fitted
    prior.config["columns"] = ["value", "capital"]
    prior.config["unsaveable"] = object()
    try:
        prior.save(tmp_path / "p.prior")
    finally:
        del prior.config["columns"], prior.config["unsaveable"]
    config = bm.LearnedPrior.load(tmp_path / "p.prior").config
    assert config["columns"] == ["value", "capital"] and "unsaveable" not in config


def test_a_pickle_is_refused_without_advice_to_unpickle(tmp_path):
    path = tmp_path / "evil.prior"
    torch.save({"format": "x", "f": _Unsafe()}, path)  # needs unpickling a class: refused by weights_only
    with pytest.raises(bm.FormatError) as info:
        bm.LearnedPrior.load(path)
    assert "not a readable bayesmeta prior" in str(info.value) and "weights_only" not in str(info.value)


class _Unsafe:
    pass


def test_truncated_file(fitted, tmp_path):
    prior, _ = fitted
    path = tmp_path / "p.prior"
    prior.save(path)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(bm.FormatError, match="not a readable bayesmeta prior"):
        bm.LearnedPrior.load(path)


def test_foreign_files(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(bm.FormatError, match="not a readable bayesmeta prior"):
        bm.LearnedPrior.load(text)
    other = tmp_path / "weights.pt"
    torch.save({"weight": torch.zeros(2)}, other)
    with pytest.raises(bm.FormatError, match="expected a file written by LearnedPrior.save"):
        bm.LearnedPrior.load(other)
    with pytest.raises(FileNotFoundError, match="path: no file at"):
        bm.LearnedPrior.load(tmp_path / "missing.prior")


def test_newer_format(fitted, tmp_path):
    prior, _ = fitted
    path = tmp_path / "p.prior"
    prior.save(path)
    payload = torch.load(path, weights_only=True)
    payload["version"] = serialization.FORMAT_VERSION + 1
    torch.save(payload, path)
    with pytest.raises(bm.FormatError, match="format 2 .*reads format 1 and older — upgrade bayesmeta"):
        bm.LearnedPrior.load(path)


def test_unknown_model_class(fitted, tmp_path):
    prior, _ = fitted
    path = tmp_path / "p.prior"
    prior.save(path)
    payload = torch.load(path, weights_only=True)
    payload["model_class"] = "nowhere.Model"
    torch.save(payload, path)
    with pytest.raises(bm.FormatError, match="model class 'nowhere.Model' is not known"):
        bm.LearnedPrior.load(path)


def test_unsaveable_constructor_argument(tmp_path):
    class Odd(SinusoidModel):
        def __init__(self, thing=object()):
            super().__init__()

    model = Odd()
    prior = bm.LearnedPrior(model, bm.guides.AmortizedGuide(model), {}, {})
    with pytest.raises(TypeError, match="Odd constructor argument\\['thing'\\]: expected a plain value"):
        prior.save(tmp_path / "odd.prior")
    assert not (tmp_path / "odd.prior").exists()

r"""Saving and loading learned priors: atomic writes, versioned, no arbitrary unpickling."""
from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any

import torch

from bayesmeta._files import atomic_write
from bayesmeta.guides import make_guide
from bayesmeta.model import HierarchicalModel, model_registry

__all__ = ["save_prior", "load_prior", "FormatError", "FORMAT", "FORMAT_VERSION"]

FORMAT = "bayesmeta.LearnedPrior"
FORMAT_VERSION = 1
_PLAIN = (int, float, str, bool, type(None))


class FormatError(ValueError):
    """A file is not a readable bayesmeta prior: truncated, foreign, or from a newer format."""


def _is_plain(value: Any) -> bool:
    try:
        _check_plain(value, "")
    except TypeError:
        return False
    return True


def _check_plain(value: Any, where: str) -> None:
    if isinstance(value, _PLAIN):
        return
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_plain(v, f"{where}[{i}]")
        return
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        for k, v in value.items():
            _check_plain(v, f"{where}[{k!r}]")
        return
    raise TypeError(
        f"{where}: expected a plain value (number, string, bool, None, list, dict) so that it can be saved "
        f"safely, got {type(value).__name__}"
    )


def save_prior(prior: Any, path: str | os.PathLike) -> None:
    path = Path(path)
    model = prior.model
    model_args = model.init_args
    guide_args = prior.guide.init_args if prior.guide is not None else {}
    _check_plain(model_args, f"{type(model).__name__} constructor argument")
    _check_plain(guide_args, "guide argument")
    _check_plain(prior.history, "history")
    payload = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "library_version": _library_version(),
        "model_class": f"{type(model).__module__}.{type(model).__qualname__}",
        "model_args": model_args,
        "guide_kind": prior.guide.kind if prior.guide is not None else None,
        "guide_args": guide_args,
        "model_state": _cpu(model.state_dict()),
        "guide_state": _cpu(prior.guide.state_dict()) if prior.guide is not None else {},
        "config": {k: v for k, v in prior.config.items() if _is_plain(v)},
        "history": {k: list(vs) for k, vs in prior.history.items()},
    }
    if prior.guide is None:  # full Bayes: θ draws, the training tasks and their posterior draws
        posterior = prior.training_posterior
        stats = posterior.diagnostics.get("sample_stats", {})
        payload["full_bayes"] = {
            "theta_draws": _cpu(prior.theta_draws), "phi_draws": posterior.draws.detach().cpu(),
            "sample_stats": _cpu(stats), "tasks": _tasks_payload(prior.training_tasks),
        }
    atomic_write(path, lambda handle: torch.save(payload, handle))


def _cpu(tensors: Any) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu() for k, v in tensors.items()}


def _tasks_payload(tasks: Any) -> dict[str, Any]:
    sides = {name: {"x": d.x.cpu(), "y": d.y.cpu(), "mask": d.mask.cpu()}
             for name, d in (("support", tasks.support), ("query", tasks.query))}
    return {**sides, "names": tasks.names}


def _tasks_from_payload(payload: dict[str, Any], map_location: Any) -> Any:
    from bayesmeta.tasks.taskset import TaskData, TaskSet

    sides = [TaskData(*(payload[name][k].to(map_location) for k in ("x", "y", "mask"))) for name in ("support", "query")]
    return TaskSet._trusted(sides[0], sides[1], payload["names"], None)


def _library_version() -> str:
    from bayesmeta import __version__

    return __version__


def _model_class(name: str) -> type[HierarchicalModel]:
    registry = model_registry()
    if name not in registry:
        module = name.rpartition(".")[0]
        while module and name not in model_registry():
            try:
                importlib.import_module(module)
            except ImportError:
                pass
            module = module.rpartition(".")[0]
        registry = model_registry()
    if name not in registry:
        raise FormatError(
            f"model class {name!r} is not known; import the module that defines it before loading"
        )
    return registry[name]


def load_prior(path: str | os.PathLike, map_location: Any = "cpu") -> Any:
    from bayesmeta.inference.learned_prior import LearnedPrior

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"path: no file at {str(path)!r}")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # torch raises several types for truncated or foreign files
        # torch's own text may advise weights_only=False, which a prior never needs: leave it out.
        detail = str(error).splitlines()[0] if str(error) and "weights_only" not in str(error) else ""
        raise FormatError(
            f"{path}: not a readable bayesmeta prior (truncated, corrupted or another kind of file; "
            f"{type(error).__name__}{': ' + detail if detail else ''})"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise FormatError(f"{path}: expected a file written by LearnedPrior.save, got another kind of file")
    version = payload.get("version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise FormatError(
            f"{path}: written in prior format {version} by bayesmeta {payload.get('library_version')}; this "
            f"bayesmeta reads format {FORMAT_VERSION} and older — upgrade bayesmeta"
        )
    cls = _model_class(payload["model_class"])
    model = cls(**payload["model_args"])
    model.load_state_dict(payload["model_state"])
    config = dict(payload["config"])
    history = {k: list(v) for k, v in payload["history"].items()}
    if payload["guide_kind"] is None:
        return _load_full_bayes(model.to(map_location), config, history, payload["full_bayes"], map_location)
    guide = make_guide(payload["guide_kind"], model, config.get("num_tasks", 0), **payload["guide_args"])
    guide.load_state_dict(payload["guide_state"])
    model.to(map_location)
    guide.to(map_location)
    return LearnedPrior(model, guide, config, history)


def _load_full_bayes(model: HierarchicalModel, config: dict, history: dict, saved: dict, map_location: Any) -> Any:
    from bayesmeta.inference.learned_prior import LearnedPrior
    from bayesmeta.inference.posterior import TaskPosterior

    tasks = _tasks_from_payload(saved["tasks"], map_location)
    theta = {k: v.to(map_location) for k, v in saved["theta_draws"].items()}
    stats = {k: v.to(map_location) for k, v in saved["sample_stats"].items()}
    posterior = TaskPosterior(model, tasks, "nuts", draws=saved["phi_draws"].to(map_location),
                              diagnostics={"theta_draws": theta, "sample_stats": stats})
    return LearnedPrior(model, None, config, history, theta_draws=theta, training_tasks=tasks,
                        training_posterior=posterior)

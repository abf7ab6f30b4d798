r"""Mechanistic baselines that answer the same ``adapt(support) -> predict(x)`` protocol as a LearnedPrior.

Learners (each a :class:`Baseline`):

* :class:`MAML` — a shared initialization adapted by a few gradient steps per task (and Meta-SGD, FOMAML);
* :class:`FineTune` — pre-train on the pooled tasks, then fine-tune a copy per task;
* :class:`BlackBox` — a conditional neural process that reads the support set;
* :class:`TrainFromScratch` — a fresh network per task, no meta-learning (the no-transfer reference).

Also :func:`maml_net` (the MAML paper's 1-40-40-1 ReLU network, the default backbone), :class:`Baseline`
(their base class) and :class:`Adapted` (what ``adapt`` returns). The protocol:

* ``learner.meta_fit(tasks, steps, batch_tasks, lr, device, seed, progress)`` → the learner, with
  ``config["meta_fit"]`` (those arguments), ``config["seconds"]`` (wall time) and ``history["loss"]``;
* ``learner.adapt(support)`` → an :class:`Adapted`, all tasks at once, whose ``predict(x)`` (``x``:
  ``T x N x x_dim``) gives a :class:`~bayesmeta.Prediction` (``mean`` ``T x N x y_dim``; ``std`` for BlackBox).

The shared building blocks (masked losses, stacked per-task networks, the meta-training loop) are in
:mod:`bayesmeta.baselines.functional`.

>>> import bayesmeta as bm
>>> tasks = bm.tasks.Sinusoid().sample(num_tasks=8, support=5, query=4, seed=0)
>>> maml = MAML().meta_fit(tasks, steps=2, batch_tasks=4, progress=False)
>>> maml.config["meta_fit"], maml.adapt(tasks.support).predict(tasks.query.x).mean.shape
({'steps': 2, 'batch_tasks': 4, 'lr': 0.001, 'seed': 0}, torch.Size([8, 4, 1]))
"""
from __future__ import annotations

from bayesmeta.baselines.base import Adapted, Baseline
from bayesmeta.baselines.blackbox import BlackBox
from bayesmeta.baselines.finetune import FineTune
from bayesmeta.baselines.functional import maml_net
from bayesmeta.baselines.maml import MAML
from bayesmeta.baselines.scratch import TrainFromScratch

__all__ = ["MAML", "FineTune", "BlackBox", "TrainFromScratch", "maml_net", "Baseline", "Adapted"]

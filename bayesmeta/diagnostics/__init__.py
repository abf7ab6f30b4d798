"""Inspecting posteriors: ArviZ conversion, entropy and the structure tasks share, and pictures.

* :func:`to_inference_data` — any posterior or learned prior as ArviZ ``InferenceData``;
* :func:`entropy` — exact for Gaussian posteriors, k-nearest-neighbour for draws, with standard errors;
* :func:`structure` — :math:`H(p(\\phi))`, :math:`\\mathbb E_\\theta H(p(\\phi\\mid\\theta))`, :math:`I(\\phi;\\theta)`
  and the information a support set of k points gives, as a :class:`StructureReport`;
* :func:`predictive_bands` — a few tasks' support points, truth, predictive mean and 50/90% bands.

>>> import bayesmeta as bm
>>> bm.diagnostics.to_inference_data  # doctest: +ELLIPSIS
<function to_inference_data at ...>
"""
from __future__ import annotations

from bayesmeta.diagnostics.arviz import load_example, save_netcdf, to_inference_data
from bayesmeta.diagnostics.entropy import Entropy, entropy, gaussian_entropy, knn_entropy
from bayesmeta.diagnostics.plots import predictive_bands
from bayesmeta.diagnostics.structure import StructureReport, structure

__all__ = [
    "to_inference_data", "save_netcdf", "load_example", "Entropy", "entropy", "gaussian_entropy", "knn_entropy",
    "StructureReport", "structure", "predictive_bands",
]

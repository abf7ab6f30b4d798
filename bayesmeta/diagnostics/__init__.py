"""Inspecting posteriors: ArviZ conversion, entropy and the structure tasks share.

>>> import bayesmeta as bm
>>> bm.diagnostics.to_inference_data  # doctest: +ELLIPSIS
<function to_inference_data at ...>
"""
from __future__ import annotations

from bayesmeta.diagnostics.arviz import load_example, save_netcdf, to_inference_data

__all__ = ["to_inference_data", "save_netcdf", "load_example"]

"""The bayesmeta model zoo: hierarchical task models written against the public API only.

Installed as ``bayesmeta.models``; a user's own model looks exactly like these.
"""
from bayesmeta.models.bnn import HierarchicalBNN
from bayesmeta.models.eight_schools import EightSchools
from bayesmeta.models.linear import HierarchicalLinearRegression
from bayesmeta.models.neural_process import NeuralProcessModel
from bayesmeta.models.sinusoid import SinusoidModel

__all__ = ["EightSchools", "HierarchicalBNN", "HierarchicalLinearRegression", "NeuralProcessModel", "SinusoidModel"]

"""Meta-training (fit_prior), meta-testing (LearnedPrior.adapt) and their results."""
from bayesmeta.inference.amortize import amortize
from bayesmeta.inference.fit import NonFiniteLossError, fit_prior
from bayesmeta.inference.learned_prior import LearnedPrior
from bayesmeta.inference.posterior import Prediction, TaskPosterior
from bayesmeta.inference.serialization import FormatError

__all__ = ["fit_prior", "amortize", "LearnedPrior", "TaskPosterior", "Prediction", "NonFiniteLossError", "FormatError"]

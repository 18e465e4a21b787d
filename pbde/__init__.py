"""pbde: learning from pairwise preferences as density estimation.

An annotator with implicit preference distribution p* prefers x_A to x_B with probability
σ(Ω(x_A) − Ω(x_B)), Ω(x) = f(x)·log p(x) + g(x) — a preference behavior distribution equation
(Dumoulin et al.). pbde states such annotators explicitly, fits model densities to their
preferences, and computes what the fit should converge to.
"""

from pbde import densities, io, losses, online, posterior
from pbde._validation import is_validation_enabled, set_validation, validation
from pbde.annotators import (
    Annotator,
    DeterministicAnnotator,
    MixtureAnnotator,
    PreferenceProcess,
)
from pbde.behavior import PBDE, dpo, geometric, length_normalized, luce
from pbde.data import Preferences, TextPreferences, sample_pairs
from pbde.ensemble import fit_ensemble
from pbde.fit import (
    ConvergenceWarning,
    FitResult,
    SeparationWarning,
    evaluate,
    fit,
    nll_regularizer,
)
from pbde.psipo import ipo_population_loss, preference_against, psipo_optimum
from pbde.serialization import load_model, save_model
from pbde.support import Grid, SequenceSupport, Support
from pbde.theory import kl, mass_beyond, optimal_density, tv

__version__ = "0.1.0"

_LAZY = ("mixture", "LatentMixture", "select_k", "diagnose_misspecification")


def __getattr__(name):  # pbde.mixture imports Pyro (~0.3 s): loaded on first use
    if name in _LAZY:
        import importlib

        module = importlib.import_module("pbde.mixture")
        return module if name == "mixture" else getattr(module, name)
    raise AttributeError(f"module 'pbde' has no attribute {name!r}")


__all__ = [
    "PBDE",
    "luce",
    "length_normalized",
    "dpo",
    "geometric",
    "Annotator",
    "MixtureAnnotator",
    "DeterministicAnnotator",
    "PreferenceProcess",
    "Preferences",
    "TextPreferences",
    "sample_pairs",
    "fit",
    "fit_ensemble",
    "evaluate",
    "FitResult",
    "SeparationWarning",
    "ConvergenceWarning",
    "save_model",
    "load_model",
    "nll_regularizer",
    "optimal_density",
    "kl",
    "tv",
    "mass_beyond",
    "psipo_optimum",
    "ipo_population_loss",
    "preference_against",
    "Support",
    "Grid",
    "SequenceSupport",
    "densities",
    "losses",
    "io",
    "online",
    "posterior",
    "mixture",
    "LatentMixture",
    "select_k",
    "diagnose_misspecification",
    "validation",
    "set_validation",
    "is_validation_enabled",
]

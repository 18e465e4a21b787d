"""Normalized densities: each a torch ``nn.Module`` with ``log_prob(x)`` (and ``sample``)."""

from pbde.densities.base import Density
from pbde.densities.continuous import FromDistribution, Mixture, TruncatedNormalMixture
from pbde.densities.energy import EnergyModel
from pbde.densities.finite import Categorical, Precomputed, Tabulated
from pbde.densities.hf import CausalLM
from pbde.densities.sequence import Autoregressive, ForcedEOS


def __getattr__(name):
    # the stacked networks of a sweep live with the sweep's training (pbde.ensemble), which
    # imports the training loop: loaded on first use, so that the densities do not import it
    if name == "EnergyStack":
        from pbde.ensemble import EnergyStack

        return EnergyStack
    raise AttributeError(f"module 'pbde.densities' has no attribute {name!r}")


__all__ = [
    "Density",
    "Categorical",
    "Tabulated",
    "Precomputed",
    "TruncatedNormalMixture",
    "FromDistribution",
    "Mixture",
    "EnergyModel",
    "EnergyStack",
    "Autoregressive",
    "ForcedEOS",
    "CausalLM",
]

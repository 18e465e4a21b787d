"""Normalized densities: each a torch ``nn.Module`` with ``log_prob(x)`` (and ``sample``)."""

from pbde.densities.base import Density
from pbde.densities.continuous import FromDistribution, Mixture, TruncatedNormalMixture
from pbde.densities.energy import EnergyModel, EnergyStack
from pbde.densities.finite import Categorical, Precomputed, Tabulated
from pbde.densities.hf import CausalLM
from pbde.densities.sequence import Autoregressive, ForcedEOS

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

"""Shared fixtures: isolation of global state, and seeded randomness."""

import pytest
import torch

import pbde


def pytest_configure(config):
    # The tests use tiny models. On a small shared machine, intra-op threads fight each other:
    # on 2 busy cores the EnergyModel gradcheck took 5-7 s with 2 threads and 0.2 s with 1.
    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _restore_global_state():
    """Every test starts with float32 defaults and validation on, and cannot leak changes."""
    dtype = torch.get_default_dtype()
    enabled = pbde.is_validation_enabled()
    torch.set_default_dtype(torch.float32)
    pbde.set_validation(True)
    yield
    torch.set_default_dtype(dtype)
    pbde.set_validation(enabled)


@pytest.fixture
def generator() -> torch.Generator:
    """A torch generator with a fixed seed, so sampling tests are reproducible."""
    return torch.Generator().manual_seed(1234)

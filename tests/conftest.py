"""Shared fixtures: isolation of global state, and seeded randomness."""

import pytest
import torch

import pbde


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

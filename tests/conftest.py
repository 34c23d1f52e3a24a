"""Shared fixtures: one tiny simulated dataset per test session."""

from __future__ import annotations

import pytest

from czii.data.simulate import SimConfig, SimResult, simulate_dataset


@pytest.fixture(scope="session")
def tiny_sim(tmp_path_factory) -> SimResult:
    """The "tiny" preset (3 train + 1 test runs of 32×96×96, all four tomogram types, seed 0), simulated once.

    Read-only for tests: copy it before writing into it.
    """
    return simulate_dataset(tmp_path_factory.mktemp("tiny_sim") / "sim", SimConfig.preset("tiny"), progress=False)

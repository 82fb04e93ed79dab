"""Test-suite wiring: the MicroPython test runner and the real-service fixtures."""

pytest_plugins = ["plugins.micropython", "plugins.services"]

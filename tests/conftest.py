"""Test-suite wiring: the async runner and leak guard, the MicroPython test runner and the
real-service fixtures."""

pytest_plugins = ["plugins.asyncrun", "plugins.micropython", "plugins.secretscan",
                  "plugins.services"]

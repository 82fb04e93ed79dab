"""One error family (aiotkit.boards.errors): every error a package defines is an
AiotError, the command prints it as one line with its exit status, and the mistakes
that used to end in a traceback now get one line."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import subprocess
from importlib.metadata import version
from pathlib import Path

import pytest
from aiotkit.boards.errors import AiotError, UsageError
from plugins.services import aiot_cmd

PACKAGES = ["aiotkit.boards", "aiotkit.gateway", "aiotkit.models", "aiotkit.ota",
            "aiotkit.tools"]


def aiot(*args: str, cwd=None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(aiot_cmd(*args), capture_output=True, text=True, timeout=60,
                          cwd=cwd, check=False)


def _modules():
    for name in PACKAGES:
        pkg = importlib.import_module(name)
        yield pkg
        for info in pkgutil.walk_packages(pkg.__path__, f"{name}."):
            yield importlib.import_module(info.name)


def test_every_error_a_package_defines_is_an_aiot_error():
    strays = []
    for mod in _modules():
        for _, cls in inspect.getmembers(mod, inspect.isclass):
            if (cls.__module__ == mod.__name__ and issubclass(cls, Exception)
                    and not cls.__name__.startswith("_")  # private control flow
                    and not issubclass(cls, AiotError)):
                strays.append(f"{mod.__name__}.{cls.__name__}")
    assert not strays, f"exceptions outside the AiotError family: {strays}"


def test_a_user_mistake_exits_2_and_a_failure_1():
    assert UsageError.exit_status == 2
    assert AiotError.exit_status == 1


def test_version_names_the_installed_distribution():
    r = aiot("--version")
    assert r.returncode == 0
    assert r.stdout.strip() == f"aiot {version('aiotkit')}"


def test_model_run_outputs_into_a_missing_folder_is_one_line_not_a_traceback(tmp_path):
    np = pytest.importorskip("numpy")
    from aiotkit.boards import paths

    model = paths.shipped_models()[0]
    inputs = tmp_path / "in.npy"
    np.save(inputs, np.zeros((1, 4), dtype=np.int8))
    out = tmp_path / "no-such-folder" / "out.npy"
    r = aiot("model", "run", str(model), "--inputs", str(inputs), "--outputs", str(out))
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip() == (f"aiot: error: --outputs {out}: folder {out.parent} "
                                "does not exist")
    assert not out.parent.exists()


@pytest.mark.parametrize("value, message", [
    (":1883", "no host"),
    ("broker:0", "port must be 1..65535"),
    ("broker:x", "port must be 1..65535"),
    ("[::1", "expected [IPV6]:PORT"),
])
def test_demo_mqtt_mistakes_are_one_line(value, message):
    r = aiot("demo", "--mqtt", value, "--duration", "0")
    assert r.returncode == 2
    assert message in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("value, parsed", [
    ("broker", ("broker", 1883)),  # the traceback of old: a host without a port
    ("broker:1884", ("broker", 1884)),
    ("[::1]:1885", ("::1", 1885)),
    ("[::1]", ("::1", 1883)),
])
def test_demo_mqtt_host_without_port_means_1883(value, parsed):
    from aiotkit.tools.args import host_port
    from aiotkit.tools.demo import gateway_toml

    assert host_port(value) == parsed
    toml = gateway_toml(Path("gw.db"), 5683, parsed)
    assert f'host = "{parsed[0]}"\nport = {parsed[1]}\n' in toml

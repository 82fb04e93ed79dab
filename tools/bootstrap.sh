#!/usr/bin/env bash
# Set up everything aiotkit needs on a Debian/Ubuntu machine, then run the demo or the tests.
#
#   tools/bootstrap.sh demo [aiot demo options]   gateway + 3 simulated nodes, live summary
#   tools/bootstrap.sh test [pytest options]      ruff and mypy (tools/lint.py), then the
#                                                 full test suite
#
# Idempotent: Debian packages are installed only when missing (always under CI=true),
# the virtual environment (.venv) is created once and re-installed only when
# pyproject.toml changes.
set -euo pipefail

cd "$(dirname "$0")/.."
mode="${1:-}"
case "$mode" in
  demo|test) shift ;;
  *) echo "usage: tools/bootstrap.sh demo|test [options]" >&2; exit 2 ;;
esac

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

find_python() {
  for py in python3.13 python3.12 python3.11 python3; do
    if command -v "$py" >/dev/null 2>&1 &&
       "$py" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
      command -v "$py"; return 0
    fi
  done
  return 1
}

apt_install() {
  # apt_install PKG... : install the Debian packages that are not installed yet.
  local missing=()
  for pkg in "$@"; do
    if [ "${CI:-}" = "true" ] || ! dpkg -s "$pkg" >/dev/null 2>&1; then missing+=("$pkg"); fi
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "error: please install: ${missing[*]} (no apt-get on this machine)" >&2; exit 1
  fi
  local sudo=""
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 || { echo "error: need root or sudo to install ${missing[*]}" >&2; exit 1; }
    sudo="sudo"
  fi
  say "installing Debian packages: ${missing[*]}"
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

PY="$(find_python)" || { apt_install python3 python3-venv; PY="$(find_python)" || {
  echo "error: aiotkit needs Python >= 3.11" >&2; exit 1; }; }

debs=()
"$PY" -c 'import venv, ensurepip' 2>/dev/null || debs+=("python3-venv")
if [ "$mode" = test ]; then
  debs+=(mosquitto libcoap3-bin)   # the real MQTT broker and CoAP peer the tests use
  # Node.js runs the third-party LwM2M peer (lwm2m-node-lib) of tests/interop
  command -v npm >/dev/null 2>&1 || debs+=(nodejs npm)
fi
[ ${#debs[@]} -gt 0 ] && apt_install "${debs[@]}"

# the demo: MicroPython nodes (sim) and tflite-micro for the gateway's shadow check (model)
extras="model"; [ "$mode" = test ] && extras="test"
stamp=".venv/.aiotkit-$extras-$(sha256sum pyproject.toml | cut -c1-16)"
if [ ! -x .venv/bin/python ]; then
  say "creating .venv with $PY"
  "$PY" -m venv .venv
fi
if [ ! -f "$stamp" ]; then
  say "installing aiotkit[$extras] into .venv"
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e ".[$extras]"
  rm -f .venv/.aiotkit-*
  touch "$stamp"
  # a test install also satisfies the demo
  [ "$extras" = test ] && touch ".venv/.aiotkit-model-$(sha256sum pyproject.toml | cut -c1-16)"
fi

# third-party LwM2M peers for the interop tests (tests/interop, from package-lock.json)
if [ "$mode" = test ]; then
  if command -v npm >/dev/null 2>&1; then
    lock_hash="$(sha256sum tests/interop/package-lock.json | cut -c1-16)"
    lock="tests/interop/node_modules/.aiotkit-$lock_hash"
    if [ ! -f "$lock" ]; then
      say "installing the interop peers (npm ci in tests/interop)"
      (cd tests/interop && npm ci --no-audit --no-fund --loglevel=error)
      touch "$lock"
    fi
  elif [ "${CI:-}" = "true" ]; then
    echo "error: npm is needed for the interop tests and could not be installed" >&2; exit 1
  else
    say "npm not found: the interop tests with lwm2m-node-lib will be skipped"
  fi
fi

case "$mode" in
  demo) say "starting the demo: a gateway and 3 simulated nodes (Ctrl-C to stop)"
        exec .venv/bin/aiot demo "$@" ;;
  test) say "ruff and mypy (tools/lint.py)"
        .venv/bin/python tools/lint.py
        say "the test suite"
        exec .venv/bin/python -m pytest "$@" ;;
esac

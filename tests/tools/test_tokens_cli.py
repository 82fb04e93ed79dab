"""``aiot tokens``: a new token and the sha256: form the tokens file takes, the token read
from standard input (never the command line)."""

from __future__ import annotations

import hashlib
import subprocess

from aiotkit.gateway.api import parse_tokens
from plugins.services import aiot_cmd


def aiot(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(aiot_cmd(*args), input=stdin, capture_output=True, text=True,
                          timeout=60, check=False)


def test_hash_prints_the_sha256_form_of_the_token_on_stdin():
    r = aiot("tokens", "hash", stdin="client-token-0123456789\n")
    assert r.returncode == 0, r.stderr
    digest = hashlib.sha256(b"client-token-0123456789").hexdigest()
    assert r.stdout == f"sha256:{digest}\n"
    (token,) = parse_tokens(f"operator {r.stdout.strip()} ci\n")
    assert token.digest.hex() == digest


def test_hash_refuses_a_short_token_and_never_echoes_it():
    r = aiot("tokens", "hash", stdin="short-secret\n")
    assert r.returncode == 2 and "16 characters" in r.stderr
    assert "short-secret" not in r.stdout + r.stderr


def test_new_prints_a_random_token_then_its_line_form():
    first = aiot("tokens", "new").stdout.split()
    second = aiot("tokens", "new").stdout.split()
    token, form = first
    assert len(token) >= 40 and token != second[0]
    assert form == "sha256:" + hashlib.sha256(token.encode()).hexdigest()

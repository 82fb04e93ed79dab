"""The suite's secret scan (plugins/secretscan.py) finds a secret in each form it
looks for, and the key store's secrets are registered with it as they are unsealed."""

from __future__ import annotations

import base64
import logging

from oscorekit import open_store
from plugins import secretscan


def test_the_scan_finds_a_remembered_secret_in_every_form():
    secret = bytes(range(100, 116))
    secretscan.remember(secret)
    for line in (f"x {secret.hex()} y", secret.hex().upper(), repr(secret),
                 base64.b64encode(secret).decode()):
        assert secretscan._scan("here", [line]), line
    assert not secretscan._scan("here", ["nothing to see", secret.hex()[:20]])
    secretscan._SECRETS.discard(secret)


def test_secrets_the_key_store_unseals_are_scanned_for(tmp_path):
    storage, ks = open_store(tmp_path / "gw.db")
    try:
        ks.create("node-1")
        secret = bytes.fromhex(ks.export("node-1").to_json()["secret"])
        assert secret in secretscan._SECRETS
        logging.getLogger("aiotkit.test").debug("the context %s", secret.hex())
        assert secretscan._scan("log", secretscan._LINES)  # what the teardown checks
        secretscan._LINES.clear()  # (so this test itself passes)
    finally:
        ks.close()
        storage.close()

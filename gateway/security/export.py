"""A node's side of an OSCORE context as aiocoap's credentials: ``write_credentials``.

Public names: ``write_credentials``, ``aiocoap_settings``, ``credentials_dirname``,
``CREDENTIALS_FILE``.

``write_credentials(folder, node, gateway_uri)`` writes, from the key store's export
(``NodeCredentials.to_json()``, also what ``POST /api/v1/keys/EP/export`` answers):

- ``FOLDER/credentials.json``: ``{"coap://HOST:PORT/*": {"oscore": {"basedir": "EP/"}}}``
- ``FOLDER/EP/settings.json``: the node as sender: ``sender-id_hex`` (the node's ID),
  ``recipient-id_hex`` (the gateway's), ``secret_hex``, ``salt_hex``, ``id-context_hex``
  (if any), ``algorithm``, ``kdf-hashfun``

so that ``aiocoap-client --credentials credentials.json coap://HOST:PORT/...``, run in
FOLDER (aiocoap resolves ``basedir`` against the working directory, so the folder can be
moved as a whole, onto the node's provisioning host), acts as that node (aiocoap keeps
its sequence numbers next to ``settings.json``). The
folder is created ``0700`` and the files ``0600``; nothing is overwritten (an existing
``credentials.json`` or ``EP/`` is refused before anything is written). Pure file
work, no cryptography: the CLI imports it.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .errors import KeyRequestError

__all__ = ["CREDENTIALS_FILE", "aiocoap_settings", "check_target", "credentials_dirname",
           "write_credentials"]

CREDENTIALS_FILE = "credentials.json"
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]")
_ALGORITHM = "AES-CCM-16-64-128"
_HASHFUN = "sha256"


def credentials_dirname(endpoint: str) -> str:
    """A folder name for an endpoint's context: characters a path would misread become
    ``_`` (and a name of dots only gets one in front)."""
    name = _SAFE_NAME.sub("_", endpoint)
    return name if name.strip(".") else f"_{name}"


def aiocoap_settings(node: Mapping[str, Any]) -> dict[str, Any]:
    """aiocoap's ``settings.json`` of a node's side (``NodeCredentials.to_json()``)."""
    out: dict[str, Any] = {
        "sender-id_hex": node["sender_id"], "recipient-id_hex": node["recipient_id"],
        "secret_hex": node["secret"], "salt_hex": node["salt"],
        "algorithm": node.get("algorithm") or _ALGORITHM, "kdf-hashfun": _HASHFUN}
    if node.get("id_context"):
        out["id-context_hex"] = node["id_context"]
    return out


def check_target(folder: Path, endpoint: str) -> None:
    """``KeyRequestError`` if writing ``endpoint``'s credentials into ``folder`` would
    overwrite something (checked before the one-time export is fetched)."""
    for p in (folder / CREDENTIALS_FILE, folder / credentials_dirname(endpoint)):
        if p.exists() or p.is_symlink():
            raise KeyRequestError(f"{p} exists already; give an empty or new folder")
    if folder.exists() and not folder.is_dir():
        raise KeyRequestError(f"{folder} is not a folder")
    if not folder.exists() and not folder.parent.is_dir():
        raise KeyRequestError(f"folder {folder.parent} does not exist")


def write_credentials(folder: Path, node: Mapping[str, Any], gateway_uri: str) -> Path:
    """Write the node's credentials into ``folder`` (module docstring); the path of the
    ``credentials.json`` that ``aiocoap-client --credentials`` takes."""
    endpoint = str(node["endpoint"])
    check_target(folder, endpoint)
    folder.mkdir(mode=0o700, exist_ok=True)
    sub = credentials_dirname(endpoint)
    (folder / sub).mkdir(mode=0o700)
    _write_private(folder / sub / "settings.json", aiocoap_settings(node))
    pattern = gateway_uri.rstrip("/") + "/*"
    _write_private(folder / CREDENTIALS_FILE, {pattern: {"oscore": {"basedir": f"{sub}/"}}})
    return folder / CREDENTIALS_FILE


def _write_private(path: Path, data: Any) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1)
        f.write("\n")

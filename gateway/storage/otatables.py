"""The OTA service's rows (``storage.api.OtaStorage``) in SQLite.

The ``ota_images``, ``ota_campaigns`` and ``ota_nodes`` tables (``storage.schema``,
version 7), on a connection of their own that ``SqliteStorage.open`` makes, as the OSCORE
tables have: every call here is one short transaction, durable when it returns, never
part of a group commit, so a campaign's state on disk is what the engine last decided.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from .api import OtaCampaignRow, OtaImageRow, OtaNodeRow
from .owntx import OwnConnection

__all__ = ["SqliteOtaStorage"]

_IMAGE_COLS = "id, version, payload_type, board, security_counter, signers, size, uploaded"
_CAMPAIGN_COLS = ("id, name, image, target, waves, max_failure_ratio, report_timeout_s,"
                  " state, wave, reason, created, updated")
_NODE_COLS = "campaign, endpoint, wave, state, offered, heard, reason"


def _image(r: tuple[Any, ...]) -> OtaImageRow:
    iid, version, ptype, board, counter, signers, size, uploaded = r
    return OtaImageRow(iid, version, ptype, board, int(counter),
                       tuple(json.loads(signers)), int(size), float(uploaded))


def _campaign(r: tuple[Any, ...]) -> OtaCampaignRow:
    (cid, name, image, target, waves, ratio, timeout, state, wave, reason, created,
     updated) = r
    return OtaCampaignRow(int(cid), name, image, json.loads(target), tuple(json.loads(waves)),
                          float(ratio), float(timeout), state, int(wave), reason,
                          float(created), float(updated))


def _node(r: tuple[Any, ...]) -> OtaNodeRow:
    campaign, endpoint, wave, state, offered, heard, reason = r
    return OtaNodeRow(int(campaign), endpoint, int(wave), state, offered, heard, reason)


class SqliteOtaStorage(OwnConnection):
    """OTA tables on their own connection (made by ``SqliteStorage.open``)."""

    what = "OTA tables"

    # -- images --------------------------------------------------------------------------

    def ota_put_image(self, row: OtaImageRow) -> bool:
        """Insert ``row``; False if an image with its id is stored already."""
        with self._tx() as db:
            return db.execute(
                f"INSERT INTO ota_images ({_IMAGE_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (id) DO NOTHING",
                (row.id, row.version, row.payload_type, row.board, row.security_counter,
                 json.dumps(list(row.signers)), row.size, row.uploaded)).rowcount == 1

    def ota_image(self, image_id: str) -> OtaImageRow | None:
        r = self._db.execute(f"SELECT {_IMAGE_COLS} FROM ota_images WHERE id = ?",
                             (image_id,)).fetchone()
        return None if r is None else _image(r)

    def ota_images(self) -> list[OtaImageRow]:
        return [_image(r) for r in self._db.execute(
            f"SELECT {_IMAGE_COLS} FROM ota_images ORDER BY uploaded, id")]

    # -- campaigns -----------------------------------------------------------------------

    def ota_create_campaign(self, row: OtaCampaignRow,
                            nodes: Iterable[tuple[str, int]]) -> int:
        """Insert a campaign (its ``id`` is ignored) with its nodes (endpoint, wave), all
        pending; the new id."""
        with self._tx() as db:
            cur = db.execute(
                "INSERT INTO ota_campaigns (name, image, target, waves, max_failure_ratio,"
                " report_timeout_s, state, wave, reason, created, updated)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (row.name, row.image, json.dumps(row.target), json.dumps(list(row.waves)),
                 row.max_failure_ratio, row.report_timeout_s, row.state, row.wave,
                 row.reason, row.created, row.updated))
            cid = int(cur.lastrowid or 0)
            db.executemany("INSERT INTO ota_nodes (campaign, endpoint, wave, state)"
                           " VALUES (?, ?, ?, 'pending')",
                           [(cid, ep, wave) for ep, wave in nodes])
            return cid

    def ota_campaign(self, campaign_id: int) -> OtaCampaignRow | None:
        r = self._db.execute(f"SELECT {_CAMPAIGN_COLS} FROM ota_campaigns WHERE id = ?",
                             (campaign_id,)).fetchone()
        return None if r is None else _campaign(r)

    def ota_campaigns(self, states: tuple[str, ...] = ()) -> list[OtaCampaignRow]:
        if states:
            marks = ", ".join("?" * len(states))
            rows = self._db.execute(f"SELECT {_CAMPAIGN_COLS} FROM ota_campaigns WHERE"
                                    f" state IN ({marks}) ORDER BY id", states)
        else:
            rows = self._db.execute(f"SELECT {_CAMPAIGN_COLS} FROM ota_campaigns ORDER BY id")
        return [_campaign(r) for r in rows]

    def ota_set_campaign(self, campaign_id: int, *, state: str, wave: int,
                         reason: str | None, now: float) -> None:
        with self._tx() as db:
            db.execute("UPDATE ota_campaigns SET state = ?, wave = ?, reason = ?,"
                       " updated = ? WHERE id = ?", (state, wave, reason, now, campaign_id))

    # -- nodes ---------------------------------------------------------------------------

    def ota_nodes(self, campaign_id: int) -> list[OtaNodeRow]:
        return [_node(r) for r in self._db.execute(
            f"SELECT {_NODE_COLS} FROM ota_nodes WHERE campaign = ? ORDER BY wave, endpoint",
            (campaign_id,))]

    def ota_state_counts(self) -> dict[tuple[str, str], int]:
        """(campaign state, node state) -> how many nodes, over every campaign: one
        grouped query (the operations metrics, ``gateway/ops/metrics.py``)."""
        return {(str(cs), str(ns)): int(n) for cs, ns, n in self._db.execute(
            "SELECT c.state, n.state, COUNT(*) FROM ota_nodes n JOIN ota_campaigns c"
            " ON c.id = n.campaign GROUP BY c.state, n.state")}

    def ota_node_campaigns(self, endpoint: str, states: tuple[str, ...]) -> list[int]:
        """The campaigns in which ``endpoint`` is in one of ``states``."""
        marks = ", ".join("?" * len(states))
        return [int(r[0]) for r in self._db.execute(
            f"SELECT campaign FROM ota_nodes WHERE endpoint = ? AND state IN ({marks})"
            " ORDER BY campaign", (endpoint, *states))]

    def ota_set_node(self, campaign_id: int, endpoint: str, *, state: str,
                     offered: float | None = None, heard: float | None = None,
                     reason: str | None = None) -> None:
        """Set a node's state; ``offered``/``heard``/``reason`` only when given."""
        with self._tx() as db:
            db.execute(
                "UPDATE ota_nodes SET state = ?, offered = COALESCE(?, offered),"
                " heard = COALESCE(?, heard), reason = COALESCE(?, reason)"
                " WHERE campaign = ? AND endpoint = ?",
                (state, offered, heard, reason, campaign_id, endpoint))

"""The model registry's and candidate evaluation's rows (``gateway.ota.models``) in
SQLite: ``model_versions``, ``model_placements`` and ``model_candidates`` (``storage.schema``,
version 8). They ride on the OTA tables' connection (``SqliteStorage.models``): every call
is one short transaction, durable when it returns, so a restarted gateway keeps every
count and decision."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from .owntx import OwnConnection

__all__ = ["CandidateRow", "ModelVersionRow", "PlacementRow", "SqliteModelStorage"]


@dataclass(frozen=True, slots=True)
class ModelVersionRow:
    """A signed model image in the image store, with its card's identity."""

    image: str
    name: str
    version: str
    sha256: str
    feature_spec: int
    board: str
    signers: tuple[str, ...]
    security_counter: int
    uploaded: float


@dataclass(frozen=True, slots=True)
class PlacementRow:
    """A model running on a node: ``model`` its 8-byte id (hex), ``slot`` its /9
    instance (-1: the node's config), ``role`` active or candidate."""

    endpoint: str
    model: str
    slot: int
    role: str
    updated: float


@dataclass(frozen=True, slots=True)
class CandidateRow:
    """A candidate model's evaluation on one node (``model_candidates``)."""

    endpoint: str
    model: str
    slot: int
    windows: int
    agree: int
    anomalies: int
    seen_windows: int
    seen_agree: int
    seen_anomalies: int
    state: str
    reason: str | None
    started: float
    updated: float


_VERSION_COLS = ("image, name, version, sha256, feature_spec, board, signers,"
                 " security_counter, uploaded")
_CAND_COLS = ("endpoint, model, slot, windows, agree, anomalies, seen_windows, seen_agree,"
              " seen_anomalies, state, reason, started, updated")


def _version(r: tuple[Any, ...]) -> ModelVersionRow:
    image, name, version, sha, spec, board, signers, counter, uploaded = r
    return ModelVersionRow(image, name, version, sha, int(spec), board,
                           tuple(json.loads(signers)), int(counter), float(uploaded))


class SqliteModelStorage(OwnConnection):
    """Model tables on the OTA tables' connection (``SqliteStorage.models``)."""

    what = "model tables"

    def close(self) -> None:
        """Nothing: the connection is the OTA tables' (they close it)."""

    # -- versions ------------------------------------------------------------------------

    def put_version(self, row: ModelVersionRow) -> bool:
        with self._tx() as db:
            return db.execute(
                f"INSERT INTO model_versions ({_VERSION_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?,"
                " ?, ?) ON CONFLICT (image) DO NOTHING",
                (row.image, row.name, row.version, row.sha256, row.feature_spec, row.board,
                 json.dumps(list(row.signers)), row.security_counter, row.uploaded)
            ).rowcount == 1

    def versions(self) -> list[ModelVersionRow]:
        return [_version(r) for r in self._db.execute(
            f"SELECT {_VERSION_COLS} FROM model_versions ORDER BY name, uploaded, image")]

    # -- placements ----------------------------------------------------------------------

    def place(self, endpoint: str, rows: Iterable[tuple[str, int, str]], now: float) -> None:
        """The models ``endpoint`` runs now, (model, slot, role) each: replaces its rows."""
        with self._tx() as db:
            db.execute("DELETE FROM model_placements WHERE endpoint = ?", (endpoint,))
            db.executemany("INSERT OR REPLACE INTO model_placements (endpoint, model, slot,"
                           " role, updated) VALUES (?, ?, ?, ?, ?)",
                           [(endpoint, m, slot, role, now) for m, slot, role in rows])

    def placements(self, endpoint: str | None = None) -> list[PlacementRow]:
        where, args = ("WHERE endpoint = ?", (endpoint,)) if endpoint else ("", ())
        return [PlacementRow(e, m, int(s), r, float(u)) for e, m, s, r, u in self._db.execute(
            "SELECT endpoint, model, slot, role, updated FROM model_placements"
            f" {where} ORDER BY endpoint, role, model", args)]

    # -- candidates ----------------------------------------------------------------------

    def candidate(self, endpoint: str, model: str) -> CandidateRow | None:
        r = self._db.execute(f"SELECT {_CAND_COLS} FROM model_candidates WHERE endpoint = ?"
                             " AND model = ?", (endpoint, model)).fetchone()
        return None if r is None else CandidateRow(*r)

    def candidates(self, endpoint: str | None = None) -> list[CandidateRow]:
        where, args = ("WHERE endpoint = ?", (endpoint,)) if endpoint else ("", ())
        return [CandidateRow(*r) for r in self._db.execute(
            f"SELECT {_CAND_COLS} FROM model_candidates {where} ORDER BY endpoint, started",
            args)]

    def put_candidate(self, row: CandidateRow) -> None:
        """Insert or replace ``row`` (one transaction)."""
        with self._tx() as db:
            db.execute(f"INSERT OR REPLACE INTO model_candidates ({_CAND_COLS}) VALUES"
                       " (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                       (row.endpoint, row.model, row.slot, row.windows, row.agree,
                        row.anomalies, row.seen_windows, row.seen_agree, row.seen_anomalies,
                        row.state, row.reason, row.started, row.updated))

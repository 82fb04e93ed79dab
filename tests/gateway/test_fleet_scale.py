"""A large fleet: the REST API's per-endpoint handlers run on the event loop, so every
query they make must be an index search, never a scan that grows with the fleet (one
``GET /api/v1/endpoints/X`` took 1.06 s at 92,000 registrations)."""

from __future__ import annotations

import re
import sqlite3
import time

import aiohttp
from aiotkit.gateway.storage.api import Registration
from test_rest_bounds import VIEWER, rest_config  # noqa: F401 - the fixture

N = 3000
# a plan step that reads a whole table (or a whole index of it): grows with the fleet
_SCAN = re.compile(r"^SCAN \w+(?! VIRTUAL TABLE)( |$)")


async def test_rest_per_endpoint_lookups_are_index_searches_not_fleet_scans(
        rest_config, running_gateway):  # noqa: F811
    async with running_gateway(rest_config()) as gw:
        store = gw.store
        now = time.time()
        with store.batch():
            for i in range(N):
                reg = Registration(endpoint=f"ep-{i:05d}", reg_id=f"r{i:07d}",
                                   host="127.0.0.1", port=20000 + i, lifetime=86400,
                                   binding="U", lwm2m_version="1.1",
                                   object_links="</3/0>,</3313/0>", registered_at=now,
                                   updated_at=now)
                store.save_registration(reg, "registered", "registered", now)
        conns = [store._conn, store.dm._db]  # type: ignore[attr-defined]
        seen: list[str] = []
        for conn in conns:
            conn.set_trace_callback(seen.append)
        try:
            async with aiohttp.ClientSession(
                    headers={"Authorization": f"Bearer {VIEWER}"}) as s:
                base = gw.rest.url + "/api/v1/endpoints/ep-01234"
                for tail in ("", "/events", "/readings", "/observations", "/requests"):
                    async with s.get(base + tail) as resp:
                        assert resp.status == 200, tail
        finally:
            for conn in conns:
                conn.set_trace_callback(None)
        queries = [q for q in seen if q.lstrip().upper().startswith(("SELECT", "WITH"))]
        assert queries
        scans = []
        for q in set(queries):
            plan = _plan(conns, q)
            scans += [(step[3], q) for step in plan if _SCAN.match(step[3])]
        assert scans == []


def _plan(conns: list[sqlite3.Connection], query: str) -> list[tuple[int, int, int, str]]:
    """The query plan of ``query`` on the first connection that knows its tables."""
    errors = []
    for conn in conns:
        try:
            return conn.execute("EXPLAIN QUERY PLAN " + query).fetchall()
        except sqlite3.OperationalError as e:  # a dm table: asked on the other one
            errors.append(e)
    raise AssertionError(f"{query}: {errors}")

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


def _fleet(store) -> None:
    now = time.time()
    with store.batch():
        for i in range(N):
            reg = Registration(endpoint=f"ep-{i:05d}", reg_id=f"r{i:07d}",
                               host="127.0.0.1", port=20000 + i, lifetime=86400,
                               binding="U", lwm2m_version="1.1",
                               object_links="</3/0>,</3313/0>", registered_at=now,
                               updated_at=now)
            store.save_registration(reg, "registered", "registered", now)


async def test_rest_per_endpoint_lookups_are_index_searches_not_fleet_scans(
        rest_config, running_gateway):  # noqa: F811
    async with running_gateway(rest_config()) as gw:
        store = gw.store
        _fleet(store)
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


async def test_the_endpoint_list_comes_in_pages_that_do_not_grow_with_the_fleet(
        rest_config, running_gateway):  # noqa: F811
    """``GET /api/v1/endpoints`` built every node's summary at once (530 ms at 100,000):
    now one page by endpoint name, a primary-key range, and ``next`` leads on."""
    async with running_gateway(rest_config()) as gw:
        _fleet(gw.store)
        seen: list[str] = []
        gw.store._conn.set_trace_callback(seen.append)  # type: ignore[attr-defined]
        names: list[str] = []
        try:
            async with aiohttp.ClientSession(
                    headers={"Authorization": f"Bearer {VIEWER}"}) as s:
                url, query = gw.rest.url + "/api/v1/endpoints", {"limit": "700"}
                while True:
                    async with s.get(url, params=query) as resp:
                        assert resp.status == 200
                        body = await resp.json()
                    assert len(body["endpoints"]) <= 700
                    names += [e["endpoint"] for e in body["endpoints"]]
                    if body["next"] is None:
                        break
                    query = {"limit": "700", "after": body["next"]}
                async with s.get(url, params={"limit": "0"}) as resp:
                    assert resp.status == 400
        finally:
            gw.store._conn.set_trace_callback(None)  # type: ignore[attr-defined]
        assert names == [f"ep-{i:05d}" for i in range(N)]  # each once, in order
        pages = [q for q in seen if "FROM registrations" in q and "LIMIT" in q]
        assert pages
        for q in set(pages):
            plan = _plan([gw.store._conn], q)  # type: ignore[attr-defined]
            assert not [step for step in plan if _SCAN.match(step[3])], (q, plan)


def test_the_expiry_check_reads_the_due_registrations_not_the_fleet(tmp_path):
    """The registry asks every second which registrations expired: at 100,000 a scan of
    them all took 15 ms of the event loop each time."""
    from aiotkit.gateway.storage.sqlite import SqliteStorage

    store = SqliteStorage.open(tmp_path / "gw.db")
    try:
        _fleet(store)
        seen: list[str] = []
        store._conn.set_trace_callback(seen.append)  # type: ignore[attr-defined]
        due = store.due_for_expiry(time.time() + 10**6)
        store._conn.set_trace_callback(None)  # type: ignore[attr-defined]
        assert [r.endpoint for r in due] == [f"ep-{i:05d}" for i in range(N)]
        (q,) = [q for q in seen if "lifetime" in q]
        plan = _plan([store._conn], q)  # type: ignore[attr-defined]
        assert not [s for s in plan if _SCAN.match(s[3])], plan
        assert any("registrations_expiry" in s[3] for s in plan), plan
    finally:
        store.close()

"""The gateway's OSCORE contexts (``gateway/security``): sequence numbers that survive a
power cut, replays refused, Echo recovery after an unclean stop (real aiocoap peers on
loopback UDP), O(1) lookup and the memory of 10,000 contexts, secrets never in the
database file in clear, a wrong at-rest key, revoked and rotated keys, and the client
side (``credentials_from_request``)."""

from __future__ import annotations

import json
import os
import sqlite3
import time
import tracemalloc
from pathlib import Path

import aiocoap
import pytest
from aiocoap import credentials, oscore
from aiocoap.credentials import CredentialsMap
from aiotkit.gateway.config import SecurityConfig, load_config
from aiotkit.gateway.security import (
    AlreadyExported,
    ContextExists,
    ContextRevoked,
    KeyConfigError,
    KeyStore,
    UnknownContext,
    WrongKeyError,
    generate_key_hex,
)
from aiotkit.gateway.security.atrest import AtRestKey
from aiotkit.gateway.storage import SCHEMA_VERSION, SqliteStorage
from oscorekit import (
    KEY,
    node_context,
    node_side,
    on_the_wire,
    open_store,
    oscore_server,
    request_from,
)
from plugins.services import free_port
from schemakit import file_at_version


def gateway_request(ctx: KeyStore | object, n: int) -> int:
    """Protect a request from the gateway with ``ctx``; the sequence number it used."""
    _, request_id = ctx.protect(aiocoap.Message(code=aiocoap.GET, uri_path=(f"r{n}",)))
    return int.from_bytes(request_id.partial_iv, "big")


def test_sequence_numbers_survive_a_power_cut_without_reuse_and_with_few_writes(tmp_path):
    storage, ks = open_store(tmp_path / "gw.db")
    ks.create("node-1")
    writes: list[int] = []
    save = storage.keys.oscore_save_state

    def counting(endpoint, generation, bound, replay):
        writes.append(bound)
        return save(endpoint, generation, bound, replay)

    storage.keys.oscore_save_state = counting  # type: ignore[method-assign]
    ctx = ks.context("node-1")
    used = [gateway_request(ctx, n) for n in range(1000)]
    assert used == list(range(1000))
    stores_per_1000 = len(writes)
    print(f"\nsender sequence-number stores per 1,000 messages: {stores_per_1000}")
    assert stores_per_1000 <= 8
    # power cut: nothing is written at the end, the process is just gone
    ks.abandon()
    storage.close()
    storage, ks = open_store(tmp_path / "gw.db")
    try:
        ctx = ks.context("node-1")
        after = [gateway_request(ctx, n) for n in range(50)]
        assert min(after) > max(used)  # continues above the stored bound: no reuse
        assert min(after) - max(used) <= 10000  # skipping at most one chunk
        # a clean stop continues exactly where it was
        last = after[-1]
        ks.close()
        storage.close()
        storage, ks = open_store(tmp_path / "gw.db")
        assert gateway_request(ks.context("node-1"), 0) == last + 1
    finally:
        ks.close()
        storage.close()


def test_a_store_that_fails_means_no_sequence_number_goes_out(tmp_path):
    storage, ks = open_store(tmp_path / "gw.db")
    try:
        ks.create("node-1")
        ctx = ks.context("node-1")

        def broken(*_args):
            raise OSError("disk full")

        storage.keys.oscore_save_state = broken  # type: ignore[method-assign]
        with pytest.raises(oscore.ContextUnavailable):
            gateway_request(ctx, 0)
    finally:
        ks.abandon()
        storage.close()


def test_replayed_oscore_request_is_refused(tmp_path):
    storage, ks = open_store(tmp_path / "gw.db")
    try:
        ks.create("node-1")
        node_side(ks, "node-1", tmp_path / "node")
        node = node_context(tmp_path / "node", "node-1")
        request = request_from(node)
        ctx = ks.find_oscore(oscore.verify_start(request))
        plain, _ = ctx.unprotect(request)
        assert plain.opt.uri_path == ("hello",)
        replayed = on_the_wire(request.datagram)
        with pytest.raises(oscore.ReplayError):
            ks.find_oscore(oscore.verify_start(replayed)).unprotect(replayed)
    finally:
        ks.close()
        storage.close()


def test_a_request_replayed_after_a_gateway_crash_is_not_accepted(tmp_path):
    storage, ks = open_store(tmp_path / "gw.db")
    ks.create("node-1")
    node_side(ks, "node-1", tmp_path / "node")
    node = node_context(tmp_path / "node", "node-1")
    request = request_from(node)
    ks.find_oscore(oscore.verify_start(request)).unprotect(request)
    ks.abandon()  # crash: the replay window was never written
    storage.close()
    storage, ks = open_store(tmp_path / "gw.db")
    try:
        ctx = ks.context("node-1")
        assert not ctx.replay_known
        replayed = on_the_wire(request.datagram)
        with pytest.raises(oscore.ReplayErrorWithEcho):  # 4.01 + Echo, not processed
            ks.find_oscore(oscore.verify_start(replayed)).unprotect(replayed)
    finally:
        ks.close()
        storage.close()


@pytest.mark.timeout_s(60)
async def test_echo_recovery_after_an_unclean_stop_with_real_aiocoap_peers(tmp_path):
    port = free_port()
    uri = f"coap://127.0.0.1:{port}"
    storage, ks = open_store(tmp_path / "gw.db")
    ks.create("node-1")
    node_side(ks, "node-1", tmp_path / "node", uri)
    client = await aiocoap.Context.create_client_context(transports=["oscore", "udp6"])
    client.client_credentials = CredentialsMap()
    client.client_credentials.load_from_dict(
        {f"{uri}/*": {"oscore": {"basedir": str(tmp_path / "node" / "node-1") + "/"}}})
    try:
        async with oscore_server(ks, port):
            r = await client.request(aiocoap.Message(code=aiocoap.GET,
                                                     uri=f"{uri}/hello")).response
            assert (r.code, r.payload) == (aiocoap.CONTENT, b"hello node-1")
        ks.abandon()  # the gateway dies: no clean close
        storage.close()
        storage, ks = open_store(tmp_path / "gw.db")
        assert not ks.context("node-1").replay_known  # unknown: Echo recovery ahead
        async with oscore_server(ks, port):
            r = await client.request(aiocoap.Message(code=aiocoap.GET,
                                                     uri=f"{uri}/hello")).response
            assert (r.code, r.payload) == (aiocoap.CONTENT, b"hello node-1")
        assert ks.context("node-1").replay_known  # the Echo round trip initialised it
        # a clean stop keeps the window: no Echo round trip needed after it
        ks.close()
        storage.close()
        storage, ks = open_store(tmp_path / "gw.db")
        assert ks.context("node-1").replay_known
        async with oscore_server(ks, port):
            r = await client.request(aiocoap.Message(code=aiocoap.GET,
                                                     uri=f"{uri}/hello")).response
            assert r.code == aiocoap.CONTENT
    finally:
        await client.shutdown()
        ks.close()
        storage.close()


@pytest.mark.timeout_s(300)
def test_find_oscore_is_constant_time_and_10000_contexts_fit_in_memory(tmp_path):
    storage, ks = open_store(tmp_path / "gw.db", synchronous="OFF")
    try:
        t0 = time.perf_counter()
        for i in range(10_000):
            ks.create(f"node-{i:05d}")
        created_s = time.perf_counter() - t0
        kids = {info.endpoint: info.node_id for info in ks.list()}
        assert len(set(kids.values())) == 10_000
        assert all(2 <= len(k) <= 7 for k in kids.values())

        def lookup_us(endpoints: list[str]) -> float:
            heads = [{oscore.COSE_KID: kids[ep]} for ep in endpoints]
            best = float("inf")
            for _ in range(5):
                t = time.perf_counter()
                for h in heads:
                    ks.find_oscore(h)
                best = min(best, time.perf_counter() - t)
            return best / len(heads) * 1e6

        few = [f"node-{i:05d}" for i in range(100)]
        for ep in few:
            ks.context(ep)
        small = lookup_us(few)
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        t0 = time.perf_counter()
        for ep in kids:
            ks.context(ep)
        load_s = time.perf_counter() - t0
        loaded_bytes = tracemalloc.get_traced_memory()[0] - before
        tracemalloc.stop()
        assert ks.loaded == 10_000
        large = lookup_us(list(kids))
        rss = int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        print(f"\n10,000 contexts: created in {created_s:.1f} s, loaded (decrypt + HKDF) in"
              f" {load_s:.2f} s, {loaded_bytes / 10_000:.0f} B each loaded"
              f" ({loaded_bytes / 2**20:.1f} MiB in all), find_oscore {small:.2f} us at 100"
              f" vs {large:.2f} us at 10,000 loaded; RSS of the test process"
              f" {rss / 2**20:.0f} MiB")
        assert large < 3 * small + 2  # O(1): no scan over the contexts
        assert loaded_bytes < 30 * 2**20
        with pytest.raises(KeyError):
            ks.find_oscore({oscore.COSE_KID: b"\xff" * 8})
    finally:
        ks.close()
        storage.close()


def test_least_recently_used_contexts_are_closed_with_their_state(tmp_path):
    storage, ks = open_store(tmp_path / "gw.db", max_loaded=2)
    try:
        for ep in ("a", "b", "c"):
            ks.create(ep)
        a = ks.context("a")
        used = gateway_request(a, 0)
        ks.context("b")
        ks.context("c")  # a goes, its state written
        assert ks.loaded == 2 and a.closed
        assert gateway_request(ks.context("a"), 1) == used + 1
    finally:
        ks.close()
        storage.close()


def _file_bytes(db: Path) -> bytes:
    return b"".join(p.read_bytes() for p in db.parent.glob(db.name + "*") if p.is_file())


def test_the_database_file_never_holds_a_secret_in_clear(tmp_path):
    db = tmp_path / "gw.db"
    storage, ks = open_store(db)
    exported = []
    derived = []
    try:
        for i in range(5):
            ep = f"node-{i}"
            ks.create(ep, id_context=b"ctx" if i == 0 else None)
            node = ks.export(ep)
            exported += [node.secret, node.salt]
            ctx = ks.context(ep)
            derived += [ctx.sender_key, ctx.recipient_key, ctx.common_iv]
            for n in range(30):
                gateway_request(ctx, n)
        ks.rotate("node-1")
        ks.revoke("node-2")
        blob = _file_bytes(db)  # while running (WAL included)
        for secret in exported + derived + [bytes.fromhex(KEY)]:
            assert secret not in blob and secret.hex().encode() not in blob
    finally:
        ks.close()
        storage.close()
    blob = _file_bytes(db)
    for secret in exported + derived + [bytes.fromhex(KEY)]:
        assert secret not in blob and secret.hex().encode() not in blob


def test_no_secret_in_reprs_or_listings(tmp_path):
    storage, ks = open_store(tmp_path / "gw.db")
    try:
        ks.create("node-1")
        info = ks.get("node-1")
        node = ks.export("node-1")
        ctx = ks.context("node-1")
        key = AtRestKey.from_hex(KEY, "test")
        shown = " ".join([repr(ks), repr(ctx), repr(node), repr(info), repr(key),
                          json.dumps(info.to_json()), repr(storage.keys.oscore_row("node-1")),
                          json.dumps([i.to_json() for i in ks.list()])])
        for secret in (node.secret, node.salt, ctx.sender_key, ctx.recipient_key,
                       bytes.fromhex(KEY)):
            assert secret.hex() not in shown and repr(secret) not in shown
    finally:
        ks.close()
        storage.close()


def test_a_wrong_at_rest_key_is_refused_with_one_clear_line(tmp_path):
    db = tmp_path / "gw.db"
    storage, ks = open_store(db)
    ks.create("node-1")
    ks.create("node-2")
    ks.close()
    storage.close()
    with pytest.raises(WrongKeyError, match="not the one its OSCORE secrets were stored"):
        open_store(db, generate_key_hex())
    # rows swapped behind the gateway's back: each blob is bound to its row
    conn = sqlite3.connect(db)
    (a,), (b,) = conn.execute("SELECT sealed FROM oscore_contexts ORDER BY endpoint")
    conn.execute("UPDATE oscore_contexts SET sealed = ? WHERE endpoint = 'node-1'", (b,))
    conn.execute("UPDATE oscore_contexts SET sealed = ? WHERE endpoint = 'node-2'", (a,))
    conn.commit()
    conn.close()
    storage, ks = open_store(db)
    try:
        with pytest.raises(WrongKeyError, match="node-1"):
            ks.context("node-1")
        with pytest.raises(WrongKeyError):
            ks.export("node-2")
    finally:
        ks.close()
        storage.close()


@pytest.mark.parametrize("content, message", [
    ("", "64 hex digits"),
    ("zz" * 32, "64 hex digits"),
    ("ab" * 16, "64 hex digits"),
])
def test_bad_key_files_are_config_errors_that_never_show_the_value(tmp_path, content,
                                                                    message):
    path = tmp_path / "gw.key"
    path.write_text(content)
    with pytest.raises(KeyConfigError, match=message) as e:
        AtRestKey.load(SecurityConfig(key_file=str(path)), {})
    assert not content or content not in str(e.value)
    with pytest.raises(KeyConfigError, match="cannot read"):
        AtRestKey.load(SecurityConfig(key_file=str(tmp_path / "missing")), {})
    with pytest.raises(KeyConfigError, match="AIOT_GATEWAY_KEY"):
        AtRestKey.load(SecurityConfig(), {"AIOT_GATEWAY_KEY": "nothex"})
    assert AtRestKey.load(SecurityConfig(), {}) is None


def test_the_key_file_comes_before_the_environment(tmp_path):
    key = generate_key_hex()
    (tmp_path / "gw.key").write_text(key + "\n")
    (tmp_path / "gw.toml").write_text('[security]\nkey_file = "gw.key"\n')
    cfg = load_config(tmp_path / "gw.toml")
    assert cfg.security.key_file == str(tmp_path / "gw.key")
    loaded = AtRestKey.load(cfg.security, {"AIOT_GATEWAY_KEY": generate_key_hex()})
    assert loaded is not None and "gw.key" in loaded.source


def test_revoked_and_rotated_keys_are_refused(tmp_path):
    storage, ks = open_store(tmp_path / "gw.db")
    try:
        ks.create("node-1")
        ks.create("node-2")
        with pytest.raises(ContextExists):
            ks.create("node-1")
        node_side(ks, "node-1", tmp_path / "n1")
        node_side(ks, "node-2", tmp_path / "n2")
        with pytest.raises(AlreadyExported):
            ks.export("node-1")
        n1 = node_context(tmp_path / "n1", "node-1")
        n2 = node_context(tmp_path / "n2", "node-2")
        req = request_from(n1)
        ks.find_oscore(oscore.verify_start(req)).unprotect(req)

        ks.revoke("node-1")
        req = request_from(n1, mid=2)
        with pytest.raises(KeyError):
            ks.find_oscore(oscore.verify_start(req))
        with pytest.raises(ContextRevoked):
            ks.export("node-1")
        with pytest.raises(ContextRevoked):
            ks.rotate("node-1")
        assert ks.get("node-1").state == "revoked"
        assert storage.keys.oscore_row("node-1").sealed == b""  # the secrets are gone

        ks.rotate("node-2")
        old = request_from(n2, mid=3)
        with pytest.raises(oscore.ProtectionInvalid):  # old keys: 4.00, never processed
            ks.find_oscore(oscore.verify_start(old)).unprotect(old)
        node_side(ks, "node-2", tmp_path / "n2new")  # exportable once more
        fresh = request_from(node_context(tmp_path / "n2new", "node-2"), mid=4)
        plain, _ = ks.find_oscore(oscore.verify_start(fresh)).unprotect(fresh)
        assert plain.opt.uri_path == ("hello",)

        info = ks.create("node-1")  # a new context after a revocation: a new kid
        assert info.state == "new" and info.generation == 2
        with pytest.raises(UnknownContext):
            ks.rotate("ghost")
    finally:
        ks.close()
        storage.close()


def test_a_request_naming_another_kid_context_is_not_matched(tmp_path):
    storage, ks = open_store(tmp_path / "gw.db")
    try:
        info = ks.create("node-1", id_context=b"\x01\x02")
        assert ks.find_oscore({oscore.COSE_KID: info.node_id}).endpoint == "node-1"
        assert ks.find_oscore({oscore.COSE_KID: info.node_id,
                               oscore.COSE_KID_CONTEXT: b"\x01\x02"}).endpoint == "node-1"
        with pytest.raises(KeyError):
            ks.find_oscore({oscore.COSE_KID: info.node_id, oscore.COSE_KID_CONTEXT: b"\x09"})
    finally:
        ks.close()
        storage.close()


def test_the_client_side_picks_the_context_by_the_nodes_address(tmp_path):
    storage, ks = open_store(tmp_path / "gw.db")
    try:
        ks.create("node-1")
        ks.bind_address("node-1", "127.0.0.1", 40001)
        for uri in ("coap://127.0.0.1:40001/3/0", "coap://[::ffff:127.0.0.1]:40001/3/0"):
            msg = aiocoap.Message(code=aiocoap.GET, uri=uri)
            assert ks.credentials_from_request(msg).endpoint == "node-1"
            assert ks.endpoint_of(ks.credentials_from_request(msg)) == "node-1"
        for uri in ("coap://127.0.0.1:40002/3/0", "coap://127.0.0.2:40001/3/0"):
            with pytest.raises(credentials.CredentialsMissingError):
                ks.credentials_from_request(aiocoap.Message(code=aiocoap.GET, uri=uri))
        ks.bind_address("node-1", "127.0.0.1", 40002)  # it moved: the old address is free
        with pytest.raises(credentials.CredentialsMissingError):
            ks.credentials_from_request(aiocoap.Message(code=aiocoap.GET,
                                                        uri="coap://127.0.0.1:40001/"))
        ks.revoke("node-1")
        with pytest.raises(credentials.CredentialsMissingError):
            ks.credentials_from_request(aiocoap.Message(code=aiocoap.GET,
                                                        uri="coap://127.0.0.1:40002/"))
        assert ks.endpoint_of(object()) is None
    finally:
        ks.close()
        storage.close()


@pytest.mark.timeout_s(60)
async def test_the_gateway_as_client_protects_its_requests_to_a_node(tmp_path):
    """aiocoap's client side with the key store as ``client_credentials``, against a
    node played by an aiocoap server holding the exported node side."""
    from aiocoap import resource
    from aiocoap.oscore_sitewrapper import OscoreSiteWrapper

    storage, ks = open_store(tmp_path / "gw.db")
    node_port = free_port()
    ks.create("node-1")
    node_side(ks, "node-1", tmp_path / "node")
    ks.bind_address("node-1", "127.0.0.1", node_port)

    class Device(resource.Resource):
        async def render_get(self, request):
            who = "protected" if request.remote.authenticated_claims is not None and \
                hasattr(request.remote, "security_context") else "plain"
            return aiocoap.Message(payload=who.encode())

    site = resource.Site()
    site.add_resource(["3", "0"], Device())
    node_creds = CredentialsMap()
    node_creds.load_from_dict({":gw": {"oscore": {"basedir": str(tmp_path / "node" / "node-1")
                                                  + "/"}}})
    node = await aiocoap.Context.create_server_context(
        OscoreSiteWrapper(site, node_creds), bind=("127.0.0.1", node_port),
        transports=["oscore", "udp6"])
    gw = await aiocoap.Context.create_client_context(transports=["oscore", "udp6"])
    gw.client_credentials = ks
    try:
        r = await gw.request(aiocoap.Message(code=aiocoap.GET,
                                             uri=f"coap://127.0.0.1:{node_port}/3/0")).response
        assert (r.code, r.payload) == (aiocoap.CONTENT, b"protected")
        assert ks.endpoint_of(r.remote) == "node-1"
    finally:
        await gw.shutdown()
        await node.shutdown()
        ks.close()
        storage.close()


def test_a_version_5_database_migrates_to_6_with_its_rows(tmp_path):
    path = tmp_path / "gw.db"
    file_at_version(path, 5)
    conn = sqlite3.connect(path)  # a v5 file with a registration, as a gateway left it
    conn.execute("INSERT INTO registrations (endpoint, reg_id, host, port, lifetime, binding,"
                 " lwm2m_version, object_links, registered_at, updated_at, state, last_seen)"
                 " VALUES ('n', 'r', '127.0.0.1', 1, 60, 'U', '1.1', '', 1.0, 1.0,"
                 " 'registered', 1.0)")
    conn.commit()
    conn.close()
    with SqliteStorage.open(path) as store:
        assert store.pragmas()["user_version"] == SCHEMA_VERSION
        assert [r.endpoint for r in store.registrations()] == ["n"]
        assert store.keys.oscore_rows() == []
        assert store.keys.oscore_meta("run") is None


def test_the_key_store_refuses_an_endpoint_name_with_a_surrogate(tmp_path):
    """Before, the store took a lone surrogate (only the REST API refused it); such a
    name cannot be stored as UTF-8 nor registered."""
    from aiotkit.gateway.security.errors import KeyRequestError

    storage, ks = open_store(tmp_path / "gw.db")
    try:
        with pytest.raises(KeyRequestError, match="surrogates"):
            ks.create("node-\udcff")
        assert len(ks) == 0
    finally:
        ks.close()
        storage.close()

"""``aiot bench gateway``: the gateway under a storm of simulated LwM2M clients, against
a bare aiocoap server answering the same requests, in the same run.

Two servers run as separate processes on loopback:

* the gateway itself (``python -m aiotkit.gateway.app CONFIG``: a temporary nosec
  configuration, MQTT disabled, SQLite in a temporary folder or ``--dir``), logging as
  the daemon does;
* a bare aiocoap server (same aiocoap, same ``udp6`` transport, a root resource like
  the gateway's) that answers ``POST /rd`` 2.01 and ``POST /dp`` 2.04 and does no LwM2M
  or storage work: the ceiling the gateway is measured against.

The load generator (this process) is a light raw-socket client, not aiocoap: one UDP
socket per simulated node by default (the gateway tells nodes apart by their source
address, as it would in the field), CON requests with message IDs per socket and unique
tokens, retransmission with RFC 7252 back-off (ACK_TIMEOUT 2 s, MAX_RETRANSMIT 4),
empty ACKs and separate responses handled, and at most ``--window`` requests in
flight. It speaks the node's LwM2M: Register is ``POST /rd?ep=..&lt=..&lwm2m=1.1&b=U``
with the node's link-format object list (Content-Format 40), Send is ``POST /dp`` with
a SenML-CBOR pack (112) shaped like the node's report (firmware/report.py ``Report.write``:
3313 X value, 12 window counters, 20 features). Each node also serves ``GET /33002/0``
with Observe (2.05, Observe option, the token echoed, a SenML-CBOR decision pack shaped
like the node's /33002/0) and, while observed, sends CON Notifications (2.05, Observe
sequence numbers counting up) with the same window, done when the empty ACK comes.

Phases, each run against both servers one after the other: every node registers, then
every node registers again (a re-registration storm: the gateway replaces each
registration), then ``--passes`` passes of ``--messages`` Sends spread round robin over
the nodes. The gateway's RSS (/proc/PID/status VmRSS) is read once every node has
registered (``rss_mb_10k_nodes``), again after the storm (aiocoap then holds two
exchanges per node for EXCHANGE_LIFETIME, 247 s, to deduplicate; the bare server's RSS
shows that share) and after the Sends. Ingest counts Sends acknowledged (2.04 received)
and checks them against Sends committed in the gateway's SQLite file. Rates of the Send
passes are the best pass of each server; latency percentiles are over all of the
gateway's Sends.

Notify: ``--observers`` of the sending nodes re-register with the decision object
(``</33002/0>``, as a node running the models does); the gateway observes it through its
auto-observe (``[dm] observe``), the bare server through a plain aiocoap observation
from its own context, acknowledging and dropping the Notifications. Then ``--passes``
passes of ``--messages`` CON Notifications per server. aiocoap ACKs a CON Notification
as soon as it matches an observation, before the gateway has stored it (the group commit
comes later), so the gateway's rate is not its ACK rate but Notifications committed to
SQLite (new ``sends`` rows: their count over the time from the pass's start to the
latest ``received_at``, stamped inside the committing transaction); the bare server's
rate is its ACK rate. ``notify_ratio_vs_aiocoap`` compares the two.

Abuse (``--abuse N``, default 10,000; 0 skips it): one more Send pass against the
gateway alone measures p99 and RSS without abuse; then the same pass runs again while a
second generator (its own sockets and connections) attacks: it holds N Block1 uploads
that never finish (block 0 of ``POST /dp?n=I``, 1 KiB, from 64 sockets), floods
Registers of new endpoints up to the gateway's maximum (``[registry] max_endpoints``,
default 10,000) and past it, and opens ``--abuse-rest`` REST connections that send their
request head one byte a second. ``abuse_p99_ratio`` is the legitimate Sends' p99 under
abuse over p99 without; ``abuse_rss_mb`` the gateway's RSS at the end of the abuse (goal:
ratio within 2, RSS under 150 MB). What the gateway answered each kind of abuse is
counted (``abuse_block1_codes``, ``abuse_register_codes``, ``abuse_rest_closed``).

OSCORE (``--no-oscore`` skips it): a second gateway process runs with ``security =
"oscore"`` and a ``[security] key_file`` made for the run; before it starts, every node
gets a context through the gateway's own ``KeyStore`` (created and exported in its
database, ``oscore_load.provision``), and every request of the pass is protected
beforehand with aiocoap's OSCORE on the node's side (sequence numbers counting up from
0), so the generator only sends bytes in the timed part. Every node registers
protected, then the gateway's ``--passes`` Send passes interleave with the others (bare
aiocoap, the gateway unprotected, the gateway protected). OSCORE answers every request
2.04 outside (RFC 8613 §4.2), so what counts is read from its database: registrations,
and Sends committed per pass over the pass's time. ``oscore_ingest_msgs_per_s`` is the
median of those passes; ``oscore_ratio_vs_nosec`` and ``oscore_ratio_vs_aiocoap`` divide
it by the medians of the same run's unprotected passes (goals 0.8 and 1.0);
``oscore_rss_mb`` is the gateway's RSS with every node provisioned and registered (goal
under 100 MB with 10,000 nodes; ``oscore_rss_mb_after_ingest`` after the Sends);
``oscore_goals`` says which goal is met. The fast Send/Notify paths serve unprotected
traffic only: the protected pass measures aiocoap's request path with its OSCORE.

The last line is one JSON object (ingest_msgs_per_s, aiocoap_msgs_per_s,
ingest_ratio_vs_aiocoap, registrations_per_s, p50_ms, p99_ms, rss_mb_10k_nodes,
rss_kb_per_node, notify_msgs_per_s, notify_ratio_vs_aiocoap, oscore_ingest_msgs_per_s,
oscore_ratio_vs_nosec, oscore_rss_mb and more).

The load generator speaks CoAP through the gateway's own wire module
(``aiotkit.gateway.coap.wire``) and reads the gateway's database through its storage
interface, read-only (``SqliteStorage.open(..., readonly=True)``).

What this benchmark showed, and what the gateway's design took from it (measured on the
development VM; figures from the commits that made each change):

* SQLite costs about 10 us per row with its index: a 33-record Send stored as 66 rows
  (a reading each, a latest value each) was the bulk of the gateway's time per
  message, hence schema version 2 (a Send's readings in one JSON row, latest values in
  one row per endpoint, ``gateway/storage/schema.py``).
* Re-encoding an endpoint's CBOR map of latest values cost about 150 us of a 33-record
  Send, hence schema version 3 (latest values point at recent Sends).
* With the COMMIT (fsync) on the event loop's thread, a batch flushed as soon as one
  loop iteration brought nothing new held about 4 Sends under load and needed a 5 ms
  timer; with the COMMIT on a writer thread batches grow with the load by themselves
  (``gateway/lwm2m/registry.py``). synchronous=FULL costs about 60 us per COMMIT there.
* aiocoap's ``hostinfo`` parses a peer's address with ``ipaddress`` (about 40 us on
  every Send): the gateway reads an IPv4 peer's socket address directly.
* aiocoap's request handling took about 300 us of the 600 us a Send cost; the Send fast
  path below it (``gateway/coap/fastsend.py``) took the ingest ratio vs bare aiocoap
  from 0.45 to 0.82 with 1000 nodes.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import random
import resource
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from aiotkit.boards.errors import AiotError
from aiotkit.gateway.coap import wire
from aiotkit.gateway.coap.aio import ContentFormat

if TYPE_CHECKING:
    from aiotkit.gateway.storage import SqliteStorage

PROG = "aiot bench gateway"

# content formats as aiocoap numbers them (RFC 6690, RFC 8428)
CF_LINK_FORMAT = int(ContentFormat.LINKFORMAT)
CF_SENML_CBOR = int(ContentFormat.by_media_type("application/senml+cbor"))
_SEPARATE_WAIT_S = 60.0  # after an empty ACK, how long the response may take
_STALL_S = 30.0  # a phase with no answer at all for this long has failed

# What the node registers (firmware/lwm2m/client.py OBJECTS + the feature object,
# firmware/report.py)
OBJECT_LINKS = b"</1/0>,</3/0>,</3313/0>,</33000/0>,</33001/0>"
# A node running the models also has the decision object, which the gateway observes
NOTIFY_PATH = "/33002/0"
OBJECT_LINKS_MODEL = OBJECT_LINKS + b",</33002/0>"
LIFETIME = 86400  # long enough that nothing expires during the run
WINDOW_COUNTERS = 12  # /33000/0/0..11 (firmware/report.py Window)
FEATURES = 20  # /33001/0/0..19: the default feature set (firmware/dsp/featspec.py)
_OBSERVE_WAIT_S = 120.0  # every observer node must be observed within this
_STORE_WAIT_S = 30.0  # acknowledged Notifications must be committed within this
BLOCK1 = 27  # the Block1 option (RFC 7959 §2.1)
REST_TOKEN = "bench-viewer-token-0123456789"
ABUSE_SOCKETS = 64  # the abuse generator's UDP sockets
ABUSE_BLOCK1_RATE = 2000.0  # unfinished Block1 uploads started per second
ABUSE_REGISTER_RATE = 1000.0  # Registers of new endpoints per second
MAX_ENDPOINTS = 10000  # the gateway's [registry] max_endpoints (its default)
OSCORE_GOAL_VS_NOSEC = 0.8  # protected durable ingest / the gateway's unprotected
OSCORE_GOAL_VS_AIOCOAP = 1.0  # ... / bare unprotected aiocoap
OSCORE_GOAL_RSS_MB = 100  # the OSCORE gateway with every node provisioned
NOTIFY_NOTE = ("aiocoap ACKs a CON Notification as soon as it matches an observation, "
               "before the gateway commits it: notify_msgs_per_s counts Notifications "
               "committed to SQLite (rows / (last received_at - pass start)); the "
               "baseline is the bare aiocoap server observing the same nodes "
               "(Notifications ACKed/s)")


class BenchError(AiotError):
    """The benchmark could not run or a server misbehaved (exit status 1)."""


def progress(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


# --- what goes on the wire ---------------------------------------------------------------

def register_body(endpoint: str, lifetime: int = LIFETIME,
                  links: bytes = OBJECT_LINKS) -> bytes:
    """Options and payload of the node's Register (everything after the token)."""
    opts = [
        (wire.URI_PATH, b"rd"),
        (wire.CONTENT_FORMAT, wire.uint(CF_LINK_FORMAT)),
        (wire.URI_QUERY, b"ep=" + endpoint.encode()),
        (wire.URI_QUERY, b"lt=%d" % lifetime),
        (wire.URI_QUERY, b"lwm2m=1.1"),
        (wire.URI_QUERY, b"b=U"),
    ]
    return wire.after_token(opts, links)


def _f32(x: float) -> float:
    return struct.unpack("<f", struct.pack("<f", x))[0]


def senml_report(rng: random.Random, seq: int) -> bytes:
    """A SenML-CBOR pack shaped like the node's report (labels bn -2, n 0, v 2)."""
    import cbor2

    def rec(base: str | None, i: int, v: float) -> dict[int, object]:
        r: dict[int, object] = {0: str(i), 2: v}
        if base is not None:
            r[-2] = base
        return r

    pack: list[dict[int, object]] = [
        {-2: "/3313/0/", 0: "5702", 2: _f32(rng.uniform(-2.0, 2.0))}]
    counters = [seq, seq * 512, 1024, 12000, _f32(rng.uniform(-4, 0)),
                _f32(rng.uniform(0, 4)), 0, 0, 0, 0, 0, 1]
    pack += [rec("/33000/0/" if i == 0 else None, i, v) for i, v in enumerate(counters)]
    pack += [rec("/33001/0/" if i == 0 else None, i, _f32(rng.uniform(0.01, 100.0)))
             for i in range(FEATURES)]
    # canonical: floats in their shortest exact form (float32 here, as the node writes)
    return cbor2.dumps(pack, canonical=True)


def decision_report(rng: random.Random, window: int) -> bytes:
    """A SenML-CBOR pack shaped like the node's /33002/0 decision (README table)."""
    import cbor2

    label = rng.randrange(4)
    values: list[tuple[int, int, object]] = [
        (0, 2, window), (1, 2, label), (2, 3, ("normal", "ball", "inner", "outer")[label]),
        (3, 2, (rng.randrange(256)) / 256), (4, 2, rng.randrange(1, 50000)),
        (5, 4, rng.random() < 0.1), (6, 2, 20000), (7, 8, rng.randbytes(8)),
        (8, 8, rng.randbytes(8)), (9, 8, rng.randbytes(4 * FEATURES)), (10, 2, -14),
        (11, 2, rng.randrange(2000, 9000)), (12, 2, 0)]
    pack = [{**({-2: NOTIFY_PATH + "/"} if i == 0 else {}), 0: str(i), key: v}
            for i, key, v in values]
    return cbor2.dumps(pack, canonical=True)


def notify_body(seq: int, payload: bytes) -> bytes:
    """Options and payload of a Notification (2.05, Observe ``seq``, SenML-CBOR)."""
    return wire.after_token([(wire.OBSERVE, wire.uint(seq & 0xFFFFFF)),
                             (wire.CONTENT_FORMAT, wire.uint(CF_SENML_CBOR))], payload)


def send_body(payload: bytes) -> bytes:
    """Options and payload of a Send (everything after the token)."""
    return wire.after_token([(wire.URI_PATH, b"dp"),
                             (wire.CONTENT_FORMAT, wire.uint(CF_SENML_CBOR))], payload)


# --- the load generator --------------------------------------------------------------------

class _Req:
    __slots__ = ("acked", "data", "deadline", "first", "kind", "mid", "sock", "timeout",
                 "token", "tries")

    def __init__(self, sock: int, mid: int, token: bytes, data: bytes, kind: int,
                 now: float) -> None:
        self.sock = sock
        self.mid = mid
        self.token = token
        self.data = data
        self.kind = kind  # the success code expected
        self.first = now
        self.timeout = wire.ACK_TIMEOUT * random.uniform(1.0, wire.ACK_RANDOM_FACTOR)
        self.deadline = now + self.timeout
        self.tries = 0
        self.acked = False


class _Proto(asyncio.DatagramProtocol):
    def __init__(self, gen: LoadGenerator, idx: int) -> None:
        self.gen = gen
        self.idx = idx

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.gen._on_datagram(self.idx, data, addr)

    def error_received(self, exc: Exception) -> None:
        self.gen.socket_errors += 1


@dataclass
class PhaseResult:
    name: str
    ok: int = 0
    failed: int = 0
    codes: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    retransmissions: int = 0

    @property
    def rate(self) -> float:
        return self.ok / self.seconds if self.seconds > 0 else 0.0


def _code_str(code: int) -> str:
    return f"{code >> 5}.{code & 31:02d}"


class LoadGenerator:
    """Many UDP sockets on loopback speaking CoAP CON requests with a bounded window."""

    def __init__(self, sockets: int) -> None:
        self.nsock = sockets
        self.transports: list[asyncio.DatagramTransport] = []
        self.mids: list[int] = []
        self.pending: dict[bytes, _Req] = {}
        self.by_mid: dict[int, bytes] = {}
        self.socket_errors = 0
        self._token = random.getrandbits(32) << 32
        self._phase: _Phase | None = None
        # Observations of NOTIFY_PATH: (socket, server address) -> token, last Observe seq
        self.observers: dict[tuple[int, tuple[str, int]], bytes] = {}
        self.obs_seq: dict[tuple[int, tuple[str, int]], int] = {}
        self.observe_requests = 0
        self.decision = b""  # what a node answers and notifies (set by the benchmark)

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        for i in range(self.nsock):
            transport, _ = await loop.create_datagram_endpoint(
                functools.partial(_Proto, self, i), local_addr=("127.0.0.1", 0))
            self.transports.append(transport)
            self.mids.append(random.getrandbits(16))

    def close(self) -> None:
        for t in self.transports:
            t.close()
        self.transports.clear()

    async def run(self, name: str, server: tuple[str, int],
                  items: Iterator[tuple[int, bytes, int]], total: int, window: int,
                  alive: Callable[[], bool]) -> PhaseResult:
        """Send every (socket, body, expected code) item, at most ``window`` in flight."""
        phase = _Phase(self, name, server, items, total)
        self._phase = phase
        try:
            phase.start(window)
            ticker = 0
            while not phase.done.done():
                await asyncio.sleep(0.05)
                phase.check_timeouts()
                ticker += 1
                if ticker % 20 == 0:
                    if not alive():
                        raise BenchError(f"{name}: the server process died")
                    phase.report_progress()
                    if time.perf_counter() - phase.last_answer > _STALL_S:
                        raise BenchError(f"{name}: no answer for {_STALL_S:.0f} s")
            return phase.finish()
        finally:
            self._phase = None
            self.pending.clear()
            self.by_mid.clear()

    def _on_datagram(self, sock: int, data: bytes, addr: tuple[str, int]) -> None:
        head = wire.peek(data)
        if head is None:
            return
        mtype, code, mid, tkl = head
        if 1 <= code < 32 and mtype in (wire.CON, wire.NON) and tkl <= 8:
            self._serve(sock, data, addr)
            return
        phase = self._phase
        if phase is None:
            return
        if mtype == wire.CON:  # a separate response: acknowledge it (empty ACK, same MID)
            self.transports[sock].sendto(wire.empty_ack(mid), phase.server)
        if mtype == wire.ACK and code == 0:  # empty ACK: the response comes separately
            token = self.by_mid.get(sock << 16 | mid)
            if token is not None:
                req = self.pending[token]
                if req.kind == wire.EMPTY:  # a Notification acknowledged
                    phase.complete(req, wire.EMPTY)
                else:
                    req.acked = True
            return
        if mtype == wire.RST:
            token = self.by_mid.get(sock << 16 | mid)
            if token is not None:
                phase.complete(self.pending[token], -1)
            return
        answered = self.pending.get(data[4:4 + tkl])
        if answered is not None and answered.sock == sock:
            phase.complete(answered, code)

    def _serve(self, sock: int, data: bytes, addr: tuple[str, int]) -> None:
        """The node's server side: GET NOTIFY_PATH with Observe 0 starts an observation
        (2.05, Observe 0, the decision); Observe 1 ends it; anything else is 4.04."""
        try:
            msg = wire.parse(data)
        except wire.WireError:
            return
        token = msg.token
        path = "/" + "/".join(v.decode("ascii", "replace") for n, v in msg.options
                              if n == wire.URI_PATH)
        raw = msg.option(wire.OBSERVE)
        observe = None if raw is None else wire.option_uint(raw)
        code, body = wire.NOT_FOUND, b""
        if msg.code == wire.GET and path == NOTIFY_PATH:
            code = wire.CONTENT
            key = (sock, addr)
            if observe == 0:
                self.observe_requests += 1
                self.observers[key] = token
                self.obs_seq[key] = 0
                body = notify_body(0, self.decision)
            else:
                if observe == 1:
                    self.observers.pop(key, None)
                body = wire.after_token([(wire.CONTENT_FORMAT, wire.uint(CF_SENML_CBOR))],
                                        self.decision)
        if msg.mtype == wire.CON:  # piggybacked on the ACK
            head = wire.header(wire.ACK, code, msg.mid, token)
        else:
            mid = self.mids[sock] = (self.mids[sock] + 1) & 0xFFFF
            head = wire.header(wire.NON, code, mid, token)
        self.transports[sock].sendto(head + body, addr)

    def observed(self, server: tuple[str, int]) -> list[int]:
        """The sockets whose NOTIFY_PATH ``server`` observes."""
        return [sock for sock, addr in self.observers if addr == server]

    def next_token(self) -> bytes:
        self._token = (self._token + 1) & 0xFFFFFFFFFFFFFFFF
        return self._token.to_bytes(8, "big")


class _Phase:
    def __init__(self, gen: LoadGenerator, name: str, server: tuple[str, int],
                 items: Iterator[tuple[int, bytes, int]], total: int) -> None:
        self.gen = gen
        self.name = name
        self.server = server
        self.items = items
        self.total = total
        self.result = PhaseResult(name)
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.t0 = self.last_answer = time.perf_counter()
        self.t_end = 0.0
        self.issued = 0
        self._shown = 0

    def start(self, window: int) -> None:
        self.t0 = self.last_answer = time.perf_counter()
        for _ in range(window):
            if not self.issue():
                break
        if not self.gen.pending:
            self._finish_now()

    def issue(self) -> bool:
        try:
            sock, body, kind = next(self.items)
        except StopIteration:
            return False
        gen = self.gen
        mid = gen.mids[sock] = (gen.mids[sock] + 1) & 0xFFFF
        if kind == wire.EMPTY:  # a CON Notification: body is the payload; done when ACKed
            token = gen.observers[(sock, self.server)]
            seq = gen.obs_seq[(sock, self.server)] = gen.obs_seq[(sock, self.server)] + 1
            data = wire.header(wire.CON, wire.CONTENT, mid, token) + \
                notify_body(seq, body)
            key = struct.pack("!BIH", 0xFF, sock, mid)  # not an 8-byte request token
        else:
            key = token = gen.next_token()
            data = wire.header(wire.CON, wire.POST, mid, token) + body
        req = _Req(sock, mid, key, data, kind, time.perf_counter())
        gen.pending[key] = req
        gen.by_mid[sock << 16 | mid] = key
        gen.transports[sock].sendto(data, self.server)
        self.issued += 1
        return True

    def complete(self, req: _Req, code: int) -> None:
        gen = self.gen
        del gen.pending[req.token]
        gen.by_mid.pop(req.sock << 16 | req.mid, None)
        now = time.perf_counter()
        self.last_answer = now
        r = self.result
        if code == req.kind:
            r.ok += 1
            r.latencies.append(now - req.first)
        else:
            r.failed += 1
            shown = "timeout" if code == -2 else "RST" if code == -1 else _code_str(code)
            r.codes[shown] = r.codes.get(shown, 0) + 1
        if not self.issue() and not gen.pending:
            self._finish_now()

    def _finish_now(self) -> None:
        self.t_end = time.perf_counter()
        if not self.done.done():
            self.done.set_result(None)

    def check_timeouts(self) -> None:
        now = time.perf_counter()
        gen = self.gen
        for req in list(gen.pending.values()):
            if req.acked:
                if now - req.first > _SEPARATE_WAIT_S:
                    self.complete(req, -2)
                continue
            if now < req.deadline:
                continue
            if req.tries >= wire.MAX_RETRANSMIT:
                self.complete(req, -2)
                continue
            req.tries += 1
            req.timeout *= 2
            req.deadline = now + req.timeout
            self.result.retransmissions += 1
            gen.transports[req.sock].sendto(req.data, self.server)

    def report_progress(self) -> None:
        done = self.result.ok + self.result.failed
        if self.total >= 2000 and done - self._shown >= self.total // 4:
            self._shown = done
            dt = time.perf_counter() - self.t0
            progress(f"  {self.name}: {done}/{self.total} ({done / dt:.0f}/s)")

    def finish(self) -> PhaseResult:
        self.result.seconds = self.t_end - self.t0
        return self.result


# --- the servers ----------------------------------------------------------------------------

def free_tcp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_kb(pid: int) -> int:
    """VmRSS of a process in kB (Linux /proc)."""
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise BenchError(f"no VmRSS for process {pid}")


class ServerProcess:
    """A server child process; ``ready`` is a line its log must show once it serves."""

    def __init__(self, name: str, cmd: list[str], log: Path, ready: str, cwd: Path) -> None:
        self.name = name
        self.cmd = cmd
        self.log = log
        self.ready = ready
        self.cwd = cwd
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> None:
        env = dict(os.environ, AIOCOAP_REUSE_PORT="0", PYTHONUNBUFFERED="1")
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(self.cmd, stdin=subprocess.DEVNULL, stdout=out,
                                         stderr=subprocess.STDOUT, cwd=self.cwd, env=env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.log.read_text(errors="replace")
            if self.ready in text:
                return
            if self.proc.poll() is not None:
                raise BenchError(f"{self.name} exited with status {self.proc.returncode}: "
                                 f"{self._tail(text)}")
            time.sleep(0.05)
        raise BenchError(f"{self.name} did not start within {timeout:.0f} s")

    @staticmethod
    def _tail(text: str) -> str:
        lines = [ln for ln in text.strip().splitlines() if ln.strip()]
        return lines[-1] if lines else "(no output)"

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise BenchError(f"{self.name} is not running")
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 20.0) -> int | None:
        if self.proc is None:
            return None
        proc, self.proc = self.proc, None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        return proc.returncode


_BARE_READY = "bare aiocoap server ready"


def bare_server_main(argv: list[str]) -> int:
    """The bare aiocoap server (a child process): HOST PORT."""
    from aiotkit.gateway.coap.aio import Code, PathCapable, Resource, aiocoap

    host, port = argv[0], int(argv[1])

    observations: dict[object, Any] = {}  # remote -> its Observe request (aiocoap's)
    decision_links = OBJECT_LINKS_MODEL.rsplit(b",", 1)[1]

    class Bare(Resource, PathCapable):
        """Answers like the gateway's root resource, without LwM2M or storage work; a
        node that registers the decision object is observed, its Notifications
        acknowledged and dropped (what aiocoap does for any client observation)."""

        ctx: aiocoap.Context

        async def render(self, request: aiocoap.Message) -> aiocoap.Message:
            path = request.opt.uri_path
            if path == ("dp",) and request.code == Code.POST:
                return aiocoap.Message(code=Code.CHANGED)
            if path == ("rd",) and request.code == Code.POST:
                if decision_links in request.payload:
                    asyncio.get_running_loop().call_soon(self.observe, request.remote)
                return aiocoap.Message(code=Code.CREATED, location_path=("rd", "bare0000"))
            return aiocoap.Message(code=Code.NOT_FOUND)

        def observe(self, remote: object) -> None:
            msg = aiocoap.Message(code=Code.GET, uri_path=tuple(NOTIFY_PATH[1:].split("/")),
                                  observe=0)
            msg.remote = remote
            req = self.ctx.request(msg)
            req.observation.register_callback(lambda _msg: None, _suppress_deprecation=True)
            old = observations.pop(remote, None)
            if old is not None:
                old.observation.cancel()
            observations[remote] = req

    async def serve() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        site = Bare()
        ctx = site.ctx = await aiocoap.Context.create_server_context(
            site, bind=(host, port), transports=["udp6"], loggername="bare-coap")
        print(_BARE_READY, flush=True)
        await stop.wait()
        await ctx.shutdown()

    asyncio.run(serve())
    return 0


def gateway_config(dirpath: Path, port: int, rest_port: int = 0,
                   key_file: Path | None = None) -> Path:
    """The gateway's configuration: nosec, or OSCORE required with the at-rest key in
    ``key_file`` (that of the contexts ``provision`` made)."""
    path = dirpath / "gateway.toml"
    rest = ""
    if rest_port:
        (dirpath / "tokens").write_text(f"viewer {REST_TOKEN} bench\n")
        (dirpath / "tokens").chmod(0o600)
        rest = ("[rest]\nenabled = true\nhost = \"127.0.0.1\"\n"
                f"port = {rest_port}\ntokens_file = \"tokens\"\n")
    mode, security = "nosec", ""
    if key_file is not None:
        mode, security = "oscore", f"[security]\nkey_file = {json.dumps(str(key_file))}\n"
    path.write_text(
        f"# aiot bench gateway: {mode} on loopback, no uplink\n"
        "[gateway]\n"
        'id = "bench"\n'
        'db = "gateway.db"\n'
        f'security = "{mode}"\n'
        "[coap]\n"
        'host = "127.0.0.1"\n'
        f"port = {port}\n"
        "[dm]\n"
        f'observe = ["{NOTIFY_PATH}"]\n'
        "[mqtt]\n"
        "enabled = false\n" + rest + security
    )
    return path


def stored(db: Path) -> SqliteStorage:
    """The gateway's database, read-only, beside the gateway writing it."""
    from aiotkit.gateway.storage import SqliteStorage

    return SqliteStorage.open(db, readonly=True)


def stored_since(db: Path, after_id: int) -> tuple[int, float]:
    """Sends (and Notifications) committed with an id above ``after_id``: how many, and
    the latest ``received_at`` (taken inside the committing transaction)."""
    with stored(db) as store:
        return store.sends_since(after_id)


async def wait_stored(db: Path, after_id: int, want: int, timeout: float) -> tuple[int, float]:
    """Poll until ``want`` rows above ``after_id`` are committed (or ``timeout``)."""
    deadline = time.monotonic() + timeout
    while True:
        n, last = stored_since(db, after_id)
        if n >= want or time.monotonic() > deadline:
            return n, last
        await asyncio.sleep(0.02)


# --- the abuse generator ---------------------------------------------------------------------

class _AbuseProto(asyncio.DatagramProtocol):
    def __init__(self, codes: dict[int, dict[str, int]]) -> None:
        self.codes = codes  # token kind (first byte) -> answer code -> count

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        head = wire.peek(data)
        if head is None or head[3] < 1 or head[1] == 0:
            return
        kind = self.codes.get(data[4])
        if kind is not None:
            shown = _code_str(head[1])
            kind[shown] = kind.get(shown, 0) + 1


class Abuse:
    """A second generator: unfinished Block1 uploads, a Register flood of new endpoints
    and slow REST connections, all while ``run`` is awaited (module docstring)."""

    def __init__(self, server: tuple[str, int], rest_port: int, transfers: int,
                 registers: int, rest_conns: int) -> None:
        self.server = server
        self.rest_port = rest_port
        self.transfers = transfers
        self.registers = registers
        self.rest_conns = rest_conns
        self.block1: dict[str, int] = {}
        self.register: dict[str, int] = {}
        self.transports: list[asyncio.DatagramTransport] = []
        self.rest_opened = 0
        self.rest_closed = 0  # slow connections the gateway closed
        self.rest_refused = 0  # answered 503 / closed before the head was sent
        self._writers: list[asyncio.StreamWriter] = []
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        codes = {1: self.block1, 2: self.register}
        for _ in range(min(ABUSE_SOCKETS, max(1, self.transfers))):
            t, _p = await loop.create_datagram_endpoint(
                lambda: _AbuseProto(codes), local_addr=("127.0.0.1", 0))
            self.transports.append(t)
        self._tasks = [asyncio.create_task(self._block1(), name="abuse-block1"),
                       asyncio.create_task(self._registers(), name="abuse-register")]
        if self.rest_port and self.rest_conns:
            self._tasks.append(asyncio.create_task(self._rest(), name="abuse-rest"))

    def flooding(self) -> bool:
        """Whether the Block1 uploads and Registers are still going out."""
        return not all(t.done() for t in self._tasks[:2])

    async def stop(self) -> None:
        self._stop.set()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for w in self._writers:
            w.close()
        for transport in self.transports:
            transport.close()

    async def _paced(self, count: int, rate: float, send: Callable[[int], None]) -> None:
        t0 = time.perf_counter()
        for i in range(count):
            if self._stop.is_set():
                return
            send(i)
            ahead = t0 + (i + 1) / rate - time.perf_counter()
            if ahead > 0.002 or i % 64 == 63:
                await asyncio.sleep(max(ahead, 0))

    async def _block1(self) -> None:
        payload = bytes(1024)
        socks = self.transports

        def send(i: int) -> None:
            token = b"\x01" + i.to_bytes(4, "big")
            opts = [(wire.URI_PATH, b"dp"), (wire.CONTENT_FORMAT, wire.uint(CF_SENML_CBOR)),
                    (wire.URI_QUERY, b"n=%d" % i), (BLOCK1, wire.uint(0 << 4 | 1 << 3 | 6))]
            data = wire.header(wire.CON, wire.POST, i & 0xFFFF, token) + \
                wire.after_token(opts, payload)
            socks[i % len(socks)].sendto(data, self.server)

        await self._paced(self.transfers, ABUSE_BLOCK1_RATE, send)

    async def _registers(self) -> None:
        socks = self.transports

        def send(i: int) -> None:
            token = b"\x02" + i.to_bytes(4, "big")
            body = register_body(f"abuse-{i:06d}", lifetime=LIFETIME)
            data = wire.header(wire.CON, wire.POST, (i + 0x8000) & 0xFFFF, token) + body
            socks[i % len(socks)].sendto(data, self.server)

        await self._paced(self.registers, ABUSE_REGISTER_RATE, send)

    async def _rest(self) -> None:
        head = (b"GET /api/v1/endpoints/bench-00000 HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                b"Authorization: Bearer " + REST_TOKEN.encode() + b"\r\n")
        conns: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        for _ in range(self.rest_conns):
            try:
                conns.append(await asyncio.open_connection("127.0.0.1", self.rest_port))
            except OSError:
                self.rest_refused += 1
        self.rest_opened = len(conns)
        self._writers = [w for _r, w in conns]
        live = list(conns)
        k = 0
        while live and not self._stop.is_set():  # one byte a second each, never done
            still = []
            for r, w in live:
                if r.at_eof() or w.is_closing():  # the gateway closed it
                    self.rest_closed += 1
                    continue
                w.write(head[k % len(head):k % len(head) + 1])
                still.append((r, w))
            live = still
            k += 1
            await asyncio.sleep(1.0)


async def _abuse(args: argparse.Namespace, gen: LoadGenerator, gw: _Server,
                 senders: list[int], send_bodies: list[bytes], rest_port: int,
                 registered: int) -> dict[str, object]:
    """The abuse pass: a Send pass without abuse, then the same with (module docstring)."""
    sockets = args.sockets

    def sends(count: int, offset: int) -> Iterator[tuple[int, bytes, int]]:
        for k in range(offset, offset + count):
            node = senders[k % len(senders)]
            yield node % sockets, send_bodies[k % len(send_bodies)], wire.CHANGED

    progress(f"gateway: Send pass without abuse, {args.messages} messages")
    calm = await gen.run("gateway calm", gw.addr, sends(args.messages, 0), args.messages,
                         args.window, gw.proc.alive)
    await asyncio.sleep(0.5)
    rss_calm = rss_kb(gw.proc.pid)
    registers = (max(0, MAX_ENDPOINTS - registered) + max(100, args.abuse // 10)
                 if args.abuse_registers is None else args.abuse_registers)
    abuse = Abuse(gw.addr, rest_port, args.abuse, registers, args.abuse_rest)
    progress(f"gateway: the same pass while {args.abuse} Block1 uploads are held, "
             f"{registers} new endpoints register and {args.abuse_rest} REST connections "
             "trickle their headers")
    await abuse.start()
    rss_peak = rss_calm
    try:
        await asyncio.sleep(min(2.0, args.abuse / ABUSE_BLOCK1_RATE))  # the uploads start
        hits: list[PhaseResult] = []
        offset = args.messages
        while not hits or abuse.flooding():  # Sends measured for as long as it goes on
            hits.append(await gen.run("gateway abused", gw.addr, sends(args.messages, offset),
                                      args.messages, args.window, gw.proc.alive))
            offset += args.messages
            rss_peak = max(rss_peak, rss_kb(gw.proc.pid))
        await asyncio.sleep(0.5)
        rss_peak = max(rss_peak, rss_kb(gw.proc.pid))
    finally:
        await abuse.stop()
    ms = 1000.0
    calm_p99 = _pct(sorted(calm.latencies), 99)
    hit_p99 = _pct(sorted(x for r in hits for x in r.latencies), 99)
    hit_rate = sum(r.ok for r in hits) / max(sum(r.seconds for r in hits), 1e-9)
    failures = {f"abuse {r.name} {i}": r.codes for i, r in enumerate([calm, *hits]) if r.failed}
    return {
        "abuse_transfers": args.abuse,
        "abuse_baseline_p99_ms": round(calm_p99 * ms, 2),
        "abuse_p99_ms": round(hit_p99 * ms, 2),
        "abuse_p99_ratio": round(hit_p99 / calm_p99, 2) if calm_p99 else 0.0,
        "abuse_baseline_rss_mb": round(rss_calm / 1024, 1),
        "abuse_rss_mb": round(rss_peak / 1024, 1),
        "abuse_baseline_msgs_per_s": round(calm.rate, 1),
        "abuse_msgs_per_s": round(hit_rate, 1),
        "abuse_sends": sum(r.ok for r in hits),
        "abuse_block1_codes": dict(sorted(abuse.block1.items())),
        "abuse_register_attempts": registers,
        "abuse_register_codes": dict(sorted(abuse.register.items())),
        "abuse_rest_opened": abuse.rest_opened,
        "abuse_rest_closed": abuse.rest_closed,
        "abuse_rest_refused": abuse.rest_refused,
        "_failures": failures,
    }


# --- the benchmark ---------------------------------------------------------------------------

def _pct(sorted_values: list[float], p: float) -> float:
    if not sorted_values:
        return 0.0
    k = min(len(sorted_values) - 1, max(0, round(p / 100 * len(sorted_values)) - 1))
    return sorted_values[k]


def _nofile_limit() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or soft < hard):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return 1 << 20 if soft == resource.RLIM_INFINITY else int(soft)


async def _notify(args: argparse.Namespace, gen: LoadGenerator, servers: tuple[_Server, ...],
                  gw: _Server, db: Path, observers: list[int], model_bodies: dict[int, bytes],
                  decisions: list[bytes]) -> None:
    """The Notify phases: ``observers`` nodes re-register with the decision object, each
    server observes it on every one of them, then ``--passes`` passes of ``--messages``
    CON Notifications go out round robin over the observed nodes."""
    sockets = args.sockets
    with stored(db) as store:
        first_id = store.last_send_id()

    def regs() -> Iterator[tuple[int, bytes, int]]:
        for i in observers:
            yield i % sockets, model_bodies[i], wire.CREATED

    for s in servers:
        progress(f"{s.name}: {len(observers)} nodes re-register with {NOTIFY_PATH}, to be "
                 "observed")
        s.phases["notify register"] = await gen.run(
            f"{s.name} notify register", s.addr, regs(), len(observers), args.window,
            s.proc.alive)
        deadline = time.monotonic() + _OBSERVE_WAIT_S
        while len(gen.observed(s.addr)) < len(observers):
            if not s.proc.alive():
                raise BenchError(f"{s.name}: the server process died")
            if time.monotonic() > deadline:
                raise BenchError(f"{s.name}: observed {len(gen.observed(s.addr))} of "
                                 f"{len(observers)} nodes within {_OBSERVE_WAIT_S:.0f} s")
            await asyncio.sleep(0.05)
    # the first answers to Observe are stored too: let them land before measuring
    await wait_stored(db, first_id, len(observers), _STORE_WAIT_S)

    def notes(socks: list[int], count: int, offset: int) -> Iterator[tuple[int, bytes, int]]:
        for k in range(offset, offset + count):
            yield socks[k % len(socks)], decisions[k % len(decisions)], wire.EMPTY

    offset = 0
    for p in range(args.passes):
        for s in servers:
            progress(f"{s.name}: Notify pass {p + 1}/{args.passes}, {args.messages} CON "
                     f"Notifications from {len(observers)} nodes (window {args.window})")
            socks = sorted(gen.observed(s.addr))
            with stored(db) as store:
                before = store.last_send_id()
            t0 = time.time()
            r = await gen.run(f"{s.name} notify", s.addr, notes(socks, args.messages, offset),
                              args.messages, args.window, s.proc.alive)
            s.notify.append(r)
            if s is gw:
                n, last = await wait_stored(db, before, r.ok, _STORE_WAIT_S)
                rate = n / (last - t0) if n and last > t0 else 0.0
                s.stored.append(rate)
                s.stored_counts.append(n)
                progress(f"  {r.rate:.0f} acked/s, {rate:.0f} stored/s"
                         + (f", {r.failed} failed {r.codes}" if r.failed else ""))
            else:
                progress(f"  {r.rate:.0f} acked/s"
                         + (f", {r.failed} failed {r.codes}" if r.failed else ""))
        offset += args.messages


@dataclass
class _Server:
    name: str
    proc: ServerProcess
    addr: tuple[str, int]
    phases: dict[str, PhaseResult] = field(default_factory=dict)
    passes: list[PhaseResult] = field(default_factory=list)
    notify: list[PhaseResult] = field(default_factory=list)
    stored: list[float] = field(default_factory=list)  # Notify passes: stored msgs/s
    stored_counts: list[int] = field(default_factory=list)  # and how many were stored


@dataclass
class _Oscore:
    """The protected pass's state: a second gateway (OSCORE required), its database, and
    the nodes' requests protected beforehand (``oscore_load``)."""

    server: _Server
    db: Path
    reg_bodies: list[bytes]  # node i's protected Register (sequence number 0)
    pass_bodies: list[list[tuple[int, bytes]]]  # per Send pass: (socket, protected Send)
    provision_s: float
    protect_us: float
    register: PhaseResult | None = None
    registered: int = 0
    stored: list[int] = field(default_factory=list)  # Sends committed, per pass
    rates: list[float] = field(default_factory=list)  # durable Sends/s, per pass
    rss: dict[str, int] = field(default_factory=dict)  # kB, by moment


def _oscore_prepare(args: argparse.Namespace, work: Path, endpoints: list[str],
                    senders: list[int], payloads: list[bytes]) -> _Oscore:
    """Provision every node in a fresh database through the gateway's KeyStore, protect
    every request of the run (Register, then each pass's Sends, in the order they go
    out: a node's sequence numbers count up) and make the gateway's command."""
    from aiotkit.gateway.coap.aio import Code

    from .oscore_load import NodeSide, protected_body, provision

    owork = work / "oscore"
    owork.mkdir()
    db, key_file = owork / "gateway.db", owork / "gateway.key"
    progress(f"OSCORE: provisioning {len(endpoints)} nodes through the KeyStore ({db})")
    creds, provision_s = provision(db, key_file, endpoints)
    count = len(endpoints) + args.passes * args.messages
    progress(f"OSCORE: protecting {count} requests beforehand (aiocoap's OSCORE)")
    t0 = time.perf_counter()
    sides = [NodeSide(c) for c in creds]
    reg_bodies = [protected_body(sides[i], Code.POST, path=("rd",),
                                 query=(f"ep={ep}", f"lt={LIFETIME}", "lwm2m=1.1", "b=U"),
                                 content_format=CF_LINK_FORMAT, payload=OBJECT_LINKS)
                  for i, ep in enumerate(endpoints)]
    pass_bodies = []
    for p in range(args.passes):
        bodies = []
        for k in range(p * args.messages, (p + 1) * args.messages):
            node = senders[k % len(senders)]
            bodies.append((node % args.sockets, protected_body(
                sides[node], Code.POST, path=("dp",), content_format=CF_SENML_CBOR,
                payload=payloads[k % len(payloads)])))
        pass_bodies.append(bodies)
    protect_us = (time.perf_counter() - t0) / count * 1e6
    port = free_udp_port()
    cfg = gateway_config(owork, port, key_file=key_file)
    py = sys.executable
    cmd = [py, "-m", "aiotkit.gateway.app", str(cfg)]
    if args.profile_oscore:
        cmd = [py, "-m", "cProfile", "-o", str(Path(args.profile_oscore).resolve()), *cmd[1:]]
    server = _Server("gateway-oscore", ServerProcess(
        "the OSCORE gateway", cmd, owork / "gateway.log", "aiot gateway ready", owork),
        ("127.0.0.1", port))
    return _Oscore(server, db, reg_bodies, pass_bodies, provision_s, protect_us)


async def _oscore_register(args: argparse.Namespace, gen: LoadGenerator, o: _Oscore) -> None:
    """Every provisioned node registers, protected; outer 2.04 is OSCORE's answer to any
    request (RFC 8613 §4.2), so what registered is read from the database."""
    s, nodes = o.server, len(o.reg_bodies)
    progress(f"{s.name}: {nodes} nodes registering, protected (window {args.window})")

    def regs() -> Iterator[tuple[int, bytes, int]]:
        for i, body in enumerate(o.reg_bodies):
            yield i % args.sockets, body, wire.CHANGED

    o.register = r = await gen.run(f"{s.name} register", s.addr, regs(), nodes, args.window,
                                   s.proc.alive)
    progress(f"  {r.rate:.0f} registrations/s"
             + (f", {r.failed} failed {r.codes}" if r.failed else ""))
    await asyncio.sleep(0.5)
    o.rss["registered"] = rss_kb(s.proc.pid)
    with stored(o.db) as store:
        o.registered = store.count_registered()


async def _oscore_send_pass(args: argparse.Namespace, gen: LoadGenerator, o: _Oscore,
                            p: int) -> None:
    """Send pass ``p`` of the protected gateway: durable ingest is the Sends committed
    (new rows in its database) over the pass's time."""
    s = o.server
    progress(f"{s.name}: Send pass {p + 1}/{args.passes}, {args.messages} protected "
             f"messages (window {args.window})")
    with stored(o.db) as store:
        before = store.last_send_id()
    items = ((sock, body, wire.CHANGED) for sock, body in o.pass_bodies[p])
    r = await gen.run(f"{s.name} send", s.addr, items, args.messages, args.window,
                      s.proc.alive)
    s.passes.append(r)
    n, _last = await wait_stored(o.db, before, r.ok, _STORE_WAIT_S)
    o.stored.append(n)
    o.rates.append(min(n, r.ok) / r.seconds if r.seconds > 0 else 0.0)
    progress(f"  {r.rate:.0f} acked/s, {o.rates[-1]:.0f} stored/s"
             + (f", {r.failed} failed {r.codes}" if r.failed else ""))


def _median(values: list[float]) -> float:
    v = sorted(values)
    if not v:
        return 0.0
    mid = len(v) // 2
    return v[mid] if len(v) % 2 else (v[mid - 1] + v[mid]) / 2


def _oscore_result(args: argparse.Namespace, o: _Oscore | None, gw: _Server, bare: _Server,
                   failures: dict[str, dict[str, int]]) -> dict[str, object]:
    """The protected pass's keys (None when skipped) and its failures into ``failures``."""
    keys = ("oscore_ingest_msgs_per_s", "oscore_ratio_vs_nosec", "oscore_ratio_vs_aiocoap",
            "oscore_nosec_msgs_per_s", "oscore_aiocoap_msgs_per_s",
            "oscore_passes_msgs_per_s", "oscore_sends_acked", "oscore_sends_stored",
            "oscore_registrations_per_s", "oscore_registered_nodes",
            "oscore_provisioned_nodes", "oscore_p50_ms", "oscore_p99_ms", "oscore_rss_mb",
            "oscore_rss_mb_idle", "oscore_rss_mb_registered", "oscore_rss_mb_after_ingest",
            "oscore_provision_s", "oscore_protect_us", "oscore_goals")
    if o is None:
        return dict.fromkeys(keys)
    s = o.server
    if o.register is not None and o.register.failed:
        failures[f"{s.name} register"] = o.register.codes
    if o.registered < len(o.reg_bodies):
        failures[f"{s.name} register"] = {
            **failures.get(f"{s.name} register", {}),
            "not registered": len(o.reg_bodies) - o.registered}
    for i, (r, n) in enumerate(zip(s.passes, o.stored, strict=True)):
        codes = dict(r.codes)
        if n < r.ok:  # outer 2.04 but nothing committed: an inner error
            codes["not stored"] = r.ok - n
        if codes:
            failures[f"{s.name} send {i + 1}"] = codes
    med = _median(o.rates)
    nosec = _median([r.rate for r in gw.passes])
    base = _median([r.rate for r in bare.passes])
    lat = sorted(x for r in s.passes for x in r.latencies)
    ratio_nosec = round(med / nosec, 3) if nosec else 0.0
    ratio_bare = round(med / base, 3) if base else 0.0
    # with every node provisioned and registered (each context loaded), as
    # rss_mb_10k_nodes is for the unprotected gateway; after the Sends aiocoap also holds
    # every exchange for EXCHANGE_LIFETIME (the unprotected gateway grows too)
    rss, rss_after = o.rss["registered"] / 1024, o.rss["after"] / 1024
    ms = 1000.0
    out: dict[str, object] = {
        "oscore_ingest_msgs_per_s": round(med, 1),
        "oscore_ratio_vs_nosec": ratio_nosec,
        "oscore_ratio_vs_aiocoap": ratio_bare,
        "oscore_nosec_msgs_per_s": round(nosec, 1),
        "oscore_aiocoap_msgs_per_s": round(base, 1),
        "oscore_passes_msgs_per_s": [round(x, 1) for x in o.rates],
        "oscore_sends_acked": sum(r.ok for r in s.passes),
        "oscore_sends_stored": sum(o.stored),
        "oscore_registrations_per_s": round(o.register.rate, 1) if o.register else 0.0,
        "oscore_registered_nodes": o.registered,
        "oscore_provisioned_nodes": len(o.reg_bodies),
        "oscore_p50_ms": round(_pct(lat, 50) * ms, 2),
        "oscore_p99_ms": round(_pct(lat, 99) * ms, 2),
        "oscore_rss_mb": round(rss, 1),
        "oscore_rss_mb_idle": round(o.rss["idle"] / 1024, 1),
        "oscore_rss_mb_registered": round(o.rss["registered"] / 1024, 1),
        "oscore_rss_mb_after_ingest": round(rss_after, 1),
        "oscore_provision_s": round(o.provision_s, 2),
        "oscore_protect_us": round(o.protect_us, 1),
        "oscore_goals": {"ratio_vs_nosec >= 0.8": ratio_nosec >= OSCORE_GOAL_VS_NOSEC,
                         "ratio_vs_aiocoap >= 1.0": ratio_bare >= OSCORE_GOAL_VS_AIOCOAP,
                         f"rss_mb < {OSCORE_GOAL_RSS_MB}": rss < OSCORE_GOAL_RSS_MB,
                         f"rss_mb_after_ingest < {OSCORE_GOAL_RSS_MB}":
                         rss_after < OSCORE_GOAL_RSS_MB},
    }
    return out


async def _bench(args: argparse.Namespace, work: Path) -> dict[str, object]:
    rng = random.Random(5)
    nodes, sockets = args.nodes, args.sockets
    endpoints = [f"bench-{i:05d}" for i in range(nodes)]
    reg_bodies = [register_body(ep) for ep in endpoints]
    payloads = [senml_report(rng, seq) for seq in range(32)]
    decisions = [decision_report(rng, seq) for seq in range(32)]
    send_bodies = [send_body(p) for p in payloads]
    records = 1 + WINDOW_COUNTERS + FEATURES
    # The gateway attributes a Send to the latest registration at its source address:
    # with fewer sockets than nodes only the last node registered on each socket sends.
    senders = list(range(max(0, nodes - sockets), nodes))

    gw_port, bare_port = free_udp_port(), free_udp_port()
    rest_port = free_tcp_port() if args.abuse else 0
    cfg = gateway_config(work, gw_port, rest_port)
    db = work / "gateway.db"
    py = sys.executable
    gw_cmd = [py, "-m", "aiotkit.gateway.app", str(cfg), "--allow-nosec"]
    if args.profile:
        gw_cmd = [py, "-m", "cProfile", "-o", str(Path(args.profile).resolve()),
                  "-m", "aiotkit.gateway.app", str(cfg), "--allow-nosec"]
    gw = _Server("gateway", ServerProcess("the gateway", gw_cmd, work / "gateway.log",
                                          "aiot gateway ready", work),
                 ("127.0.0.1", gw_port))
    bare_code = ("import sys; from aiotkit.tools.bench.gateway import bare_server_main;"
                 " sys.exit(bare_server_main(sys.argv[1:]))")
    bare_cmd = [py, "-c", bare_code, "127.0.0.1", str(bare_port)]
    bare = _Server("aiocoap", ServerProcess("the bare aiocoap server", bare_cmd,
                                            work / "bare.log", _BARE_READY, work),
                   ("127.0.0.1", bare_port))
    servers = (bare, gw)
    osc = (_oscore_prepare(args, work, endpoints, senders, payloads)
           if args.oscore else None)
    gen = LoadGenerator(sockets)
    gen.decision = decisions[0]
    observers = senders[:args.observers]
    model_bodies = {i: register_body(endpoints[i], links=OBJECT_LINKS_MODEL) for i in observers}
    try:
        progress(f"starting the gateway (db {db}) and a bare aiocoap server")
        for s in servers:
            s.proc.start()
        if osc is not None:
            progress(f"starting the OSCORE gateway (db {osc.db})")
            osc.server.proc.start()
            osc.rss["idle"] = rss_kb(osc.server.proc.pid)
        rss_idle = rss_kb(gw.proc.pid)
        bare_rss_idle = rss_kb(bare.proc.pid)
        progress(f"opening {sockets} client sockets for {nodes} nodes")
        await gen.open()

        def regs() -> Iterator[tuple[int, bytes, int]]:
            for i in range(nodes):
                yield i % sockets, reg_bodies[i], wire.CREATED

        def sends(count: int, offset: int) -> Iterator[tuple[int, bytes, int]]:
            for k in range(offset, offset + count):
                node = senders[k % len(senders)]
                yield node % sockets, send_bodies[k % len(send_bodies)], wire.CHANGED

        rss: dict[str, tuple[int, int]] = {}  # after phase: (gateway, bare) kB
        for phase, label in (("register", "registering"), ("reregister", "re-registering")):
            for s in servers:
                progress(f"{s.name}: {nodes} nodes {label} (window {args.window})")
                r = await gen.run(f"{s.name} {phase}", s.addr, regs(), nodes, args.window,
                                  s.proc.alive)
                s.phases[phase] = r
                progress(f"  {r.ok / max(r.seconds, 1e-9):.0f} registrations/s"
                         + (f", {r.failed} failed {r.codes}" if r.failed else ""))
            await asyncio.sleep(0.5)  # let both settle before reading memory
            rss[phase] = rss_kb(gw.proc.pid), rss_kb(bare.proc.pid)
        with stored(db) as store:
            registered = store.count_registered()
            stored_before = store.count_sends()
        rss_10k, bare_rss = rss["register"]
        rss_storm, bare_rss_storm = rss["reregister"]
        if osc is not None:
            await _oscore_register(args, gen, osc)
        offset = 0
        for p in range(args.passes):  # interleaved: bare, nosec gateway, OSCORE gateway
            for s in servers:
                progress(f"{s.name}: Send pass {p + 1}/{args.passes}, {args.messages} "
                         f"messages from {len(senders)} nodes (window {args.window})")
                r = await gen.run(f"{s.name} send", s.addr, sends(args.messages, offset),
                                  args.messages, args.window, s.proc.alive)
                s.passes.append(r)
                progress(f"  {r.rate:.0f} msgs/s"
                         + (f", {r.failed} failed {r.codes}" if r.failed else ""))
            if osc is not None:
                await _oscore_send_pass(args, gen, osc, p)
            offset += args.messages
        with stored(db) as store:
            stored_count = store.count_sends() - stored_before
        rss_after = rss_kb(gw.proc.pid)
        if osc is not None:
            await asyncio.sleep(0.5)
            osc.rss["after"] = rss_kb(osc.server.proc.pid)
            osc.server.proc.stop()  # idle from here: the Notify and abuse passes are nosec
        await _notify(args, gen, servers, gw, db, observers, model_bodies, decisions)
        rss_notify = rss_kb(gw.proc.pid)
        abused: dict[str, object] = {"abuse_transfers": 0, "abuse_p99_ratio": None,
                                     "abuse_rss_mb": None, "_failures": {}}
        if args.abuse:
            abused = await _abuse(args, gen, gw, senders, send_bodies, rest_port, registered)
    finally:
        gen.close()
        for s in (*servers, *([osc.server] if osc is not None else [])):
            s.proc.stop()

    failures = {f"{s.name} {name}": r.codes for s in servers
                for name, r in [*s.phases.items(),
                                *((f"send {i + 1}", x) for i, x in enumerate(s.passes)),
                                *((f"notify {i + 1}", x) for i, x in enumerate(s.notify))]
                if r.failed}
    abuse_failures: dict[str, dict[str, int]] = abused.pop("_failures")  # type: ignore[assignment]
    failures.update(abuse_failures)
    for i, (r, n) in enumerate(zip(gw.notify, gw.stored_counts, strict=True)):
        if n < r.ok:  # acknowledged but not committed within _STORE_WAIT_S
            failures[f"gateway notify {i + 1}"] = {"not stored": r.ok - n}
    notify_best = max(gw.stored)
    notify_bare = max(r.rate for r in bare.notify)
    notify_lat = sorted(x for r in gw.notify for x in r.latencies)
    gw_best = max(gw.passes, key=lambda r: r.rate)
    bare_best = max(bare.passes, key=lambda r: r.rate)
    acked = sum(r.ok for r in gw.passes)
    gw_seconds = sum(r.seconds for r in gw.passes)
    lat = sorted(x for r in gw.passes for x in r.latencies)
    bare_lat = sorted(x for r in bare.passes for x in r.latencies)
    reg_lat = sorted(gw.phases["reregister"].latencies)
    oscore = _oscore_result(args, osc, gw, bare, failures)
    ms = 1000.0
    result: dict[str, object] = {
        "ingest_msgs_per_s": round(gw_best.rate, 1),
        "aiocoap_msgs_per_s": round(bare_best.rate, 1),
        "ingest_ratio_vs_aiocoap": round(gw_best.rate / bare_best.rate, 3)
        if bare_best.rate else 0.0,
        "ingest_acked_msgs_per_s": round(acked / gw_seconds, 1) if gw_seconds else 0.0,
        "ingest_stored_msgs_per_s": round(stored_count / gw_seconds, 1) if gw_seconds else 0.0,
        "ingest_passes_msgs_per_s": [round(r.rate, 1) for r in gw.passes],
        "aiocoap_passes_msgs_per_s": [round(r.rate, 1) for r in bare.passes],
        "sends_acked": acked,
        "sends_stored": stored_count,
        "registrations_per_s": round(gw.phases["reregister"].rate, 1),
        "initial_registrations_per_s": round(gw.phases["register"].rate, 1),
        "aiocoap_registrations_per_s": round(bare.phases["reregister"].rate, 1),
        "registered_nodes": registered,
        "p50_ms": round(_pct(lat, 50) * ms, 2),
        "p99_ms": round(_pct(lat, 99) * ms, 2),
        "aiocoap_p50_ms": round(_pct(bare_lat, 50) * ms, 2),
        "aiocoap_p99_ms": round(_pct(bare_lat, 99) * ms, 2),
        "register_p50_ms": round(_pct(reg_lat, 50) * ms, 2),
        "register_p99_ms": round(_pct(reg_lat, 99) * ms, 2),
        "rss_mb_10k_nodes": round(rss_10k / 1024, 1),
        "rss_kb_per_node": round((rss_10k - rss_idle) / nodes, 2),
        "rss_mb_idle": round(rss_idle / 1024, 1),
        "rss_mb_after_storm": round(rss_storm / 1024, 1),
        "rss_mb_after_ingest": round(rss_after / 1024, 1),
        "aiocoap_rss_mb_10k_nodes": round(bare_rss / 1024, 1),
        "aiocoap_rss_mb_after_storm": round(bare_rss_storm / 1024, 1),
        "aiocoap_rss_mb_idle": round(bare_rss_idle / 1024, 1),
        "nodes": nodes,
        "sockets": sockets,
        "senders": len(senders),
        "messages_per_pass": args.messages,
        "passes": args.passes,
        "window": args.window,
        "records_per_send": records,
        "send_payload_bytes": round(sum(map(len, payloads)) / len(payloads)),
        "retransmissions": sum(r.retransmissions for s in servers
                               for r in [*s.phases.values(), *s.passes]),
        "notify_msgs_per_s": round(notify_best, 1),
        "notify_ratio_vs_aiocoap": round(notify_best / notify_bare, 3) if notify_bare else 0.0,
        "notify_acked_msgs_per_s": round(max(r.rate for r in gw.notify), 1),
        "aiocoap_notify_msgs_per_s": round(notify_bare, 1),
        "notify_passes_msgs_per_s": [round(x, 1) for x in gw.stored],
        "aiocoap_notify_passes_msgs_per_s": [round(r.rate, 1) for r in bare.notify],
        "notify_ack_p50_ms": round(_pct(notify_lat, 50) * ms, 2),
        "notify_ack_p99_ms": round(_pct(notify_lat, 99) * ms, 2),
        "notifications_acked": sum(r.ok for r in gw.notify),
        "notifications_stored": sum(gw.stored_counts),
        "observed_nodes": len(observers),
        "notify_payload_bytes": round(sum(map(len, decisions)) / len(decisions)),
        "rss_mb_after_notify": round(rss_notify / 1024, 1),
        "failures": failures,
        "notify": NOTIFY_NOTE,
        **abused,
        **oscore,
    }
    return result


def _print_summary(r: dict[str, object]) -> None:
    print(f"gateway vs bare aiocoap, {r['nodes']} nodes on {r['sockets']} sockets, window "
          f"{r['window']}, {r['passes']} x {r['messages_per_pass']} Sends of "
          f"{r['records_per_send']} records ({r['send_payload_bytes']} bytes SenML-CBOR)")
    print(f"durable Send ingest   {r['ingest_msgs_per_s']:>9} msgs/s (best pass; acked "
          f"{r['ingest_acked_msgs_per_s']}/s, stored {r['ingest_stored_msgs_per_s']}/s "
          f"over all passes)")
    print(f"bare aiocoap          {r['aiocoap_msgs_per_s']:>9} msgs/s  ratio "
          f"{r['ingest_ratio_vs_aiocoap']}")
    print(f"Send latency          p50 {r['p50_ms']} ms, p99 {r['p99_ms']} ms "
          f"(aiocoap p50 {r['aiocoap_p50_ms']} ms, p99 {r['aiocoap_p99_ms']} ms)")
    print(f"re-registration storm {r['registrations_per_s']:>9} registrations/s "
          f"(first registration {r['initial_registrations_per_s']}/s; aiocoap "
          f"{r['aiocoap_registrations_per_s']}/s; p50 {r['register_p50_ms']} ms, "
          f"p99 {r['register_p99_ms']} ms)")
    print(f"gateway RSS           {r['rss_mb_10k_nodes']} MB with {r['nodes']} nodes "
          f"registered ({r['rss_kb_per_node']} kB/node over {r['rss_mb_idle']} MB idle; "
          f"bare aiocoap {r['aiocoap_rss_mb_10k_nodes']} MB)")
    print(f"                      {r['rss_mb_after_storm']} MB after the re-registration "
          f"storm (bare aiocoap {r['aiocoap_rss_mb_after_storm']} MB: aiocoap keeps every "
          f"exchange {wire.EXCHANGE_LIFETIME:.0f} s for deduplication), "
          f"{r['rss_mb_after_ingest']} MB after the Sends")
    print(f"durable Notify ingest {r['notify_msgs_per_s']:>9} msgs/s stored (best pass; "
          f"acked {r['notify_acked_msgs_per_s']}/s; {r['observed_nodes']} observed nodes, "
          f"{r['notify_payload_bytes']} bytes SenML-CBOR)")
    print(f"bare aiocoap observer {r['aiocoap_notify_msgs_per_s']:>9} msgs/s  ratio "
          f"{r['notify_ratio_vs_aiocoap']}; ACK p50 {r['notify_ack_p50_ms']} ms, "
          f"p99 {r['notify_ack_p99_ms']} ms; RSS after {r['rss_mb_after_notify']} MB")
    print(f"                      ({NOTIFY_NOTE})")
    if r["abuse_transfers"]:
        print(f"abuse                 Send p99 {r['abuse_p99_ms']} ms under abuse vs "
              f"{r['abuse_baseline_p99_ms']} ms without (ratio {r['abuse_p99_ratio']}, goal "
              f"<= 2); RSS {r['abuse_rss_mb']} MB vs {r['abuse_baseline_rss_mb']} MB (goal "
              f"< 150); {r['abuse_msgs_per_s']} vs {r['abuse_baseline_msgs_per_s']} msgs/s")
        print(f"                      {r['abuse_transfers']} Block1 uploads held: "
              f"{r['abuse_block1_codes']}; {r['abuse_register_attempts']} new endpoints: "
              f"{r['abuse_register_codes']}; REST {r['abuse_rest_opened']} slow connections,"
              f" {r['abuse_rest_closed']} closed by the gateway")
    if r["oscore_ingest_msgs_per_s"] is not None:
        goals = cast("dict[str, bool]", r["oscore_goals"])
        missed = [g for g, ok in goals.items() if not ok]
        print(f"OSCORE durable ingest {r['oscore_ingest_msgs_per_s']:>9} msgs/s (median of "
              f"{r['passes']} passes interleaved with the others; "
              f"{r['oscore_provisioned_nodes']} nodes provisioned through the KeyStore, "
              f"{r['oscore_registered_nodes']} registered protected at "
              f"{r['oscore_registrations_per_s']}/s)")
        print(f"                      ratio {r['oscore_ratio_vs_nosec']} vs the gateway "
              f"unprotected ({r['oscore_nosec_msgs_per_s']} msgs/s median, goal >= "
              f"{OSCORE_GOAL_VS_NOSEC}), {r['oscore_ratio_vs_aiocoap']} vs bare aiocoap "
              f"unprotected ({r['oscore_aiocoap_msgs_per_s']} msgs/s median, goal >= "
              f"{OSCORE_GOAL_VS_AIOCOAP}); p50 {r['oscore_p50_ms']} ms, p99 "
              f"{r['oscore_p99_ms']} ms")
        print(f"OSCORE gateway RSS    {r['oscore_rss_mb']} MB with {r['oscore_provisioned_nodes']}"
              f" nodes provisioned and registered (goal < {OSCORE_GOAL_RSS_MB} MB with 10000; "
              f"idle {r['oscore_rss_mb_idle']} MB), {r['oscore_rss_mb_after_ingest']} MB after "
              f"the Sends (unprotected gateway {r['rss_mb_after_ingest']} MB: aiocoap keeps "
              f"every exchange {wire.EXCHANGE_LIFETIME:.0f} s)")
        print(f"OSCORE goals          {'all met' if not missed else 'MISSED: ' + ', '.join(missed)}"
              f" (load generator: {r['oscore_protect_us']} us to protect a request, "
              f"before the timed part)")
    if r["failures"]:
        print(f"failures              {r['failures']}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description=(
            "Load the gateway with simulated LwM2M clients on loopback (raw CoAP: "
            "Register storm, re-registration storm, SenML-CBOR Sends, Observe and CON "
            "Notify) and, in the same run, a bare aiocoap server answering the same "
            "requests and observing the same nodes without LwM2M or storage work. Prints "
            "registrations/s, durable Send ingest msgs/s (2.04 only after the SQLite "
            "commit), durable Notify ingest (Notifications committed/s), p50/p99 latency, "
            "the gateway's RSS with every node registered, and the ratios against "
            "aiocoap. A second gateway with OSCORE required (every node provisioned "
            "through its KeyStore, Registers and Sends protected beforehand with "
            "aiocoap's OSCORE) runs Send passes interleaved with the unprotected ones: "
            "oscore_ingest_msgs_per_s (median, Sends committed), oscore_ratio_vs_nosec, "
            "oscore_ratio_vs_aiocoap and oscore_rss_mb. The last line is a JSON object."
        ),
    )
    p.add_argument("--nodes", type=int, default=10000, metavar="N",
                   help="simulated nodes (default 10000)")
    p.add_argument("--messages", type=int, default=20000, metavar="M",
                   help="Sends per pass and server (default 20000)")
    p.add_argument("--passes", type=int, default=3, metavar="P",
                   help="Send passes per server, alternating; the best counts (default 3)")
    p.add_argument("--observers", type=int, default=1000, metavar="O",
                   help="nodes the servers observe for the Notify passes (default 1000; "
                   "at most the nodes that send)")
    p.add_argument("--window", type=int, default=64, metavar="W",
                   help="requests in flight at most (default 64)")
    p.add_argument("--sockets", type=int, metavar="S",
                   help="client UDP sockets (default: one per node; fewer means several "
                   "nodes per source address, and only the last registered of each sends)")
    p.add_argument("--dir", metavar="DIR",
                   help="work folder for the gateway's database and logs (default: a "
                   "temporary folder, removed afterwards)")
    p.add_argument("--profile", metavar="FILE",
                   help="run the gateway under cProfile and write its stats to FILE")
    p.add_argument("--abuse", type=int, default=10000, metavar="N",
                   help="abuse pass: hold N unfinished Block1 uploads, flood Registers up "
                   "to the gateway's maximum and hold slow REST connections while Sends "
                   "run; prints p99 and RSS with and without (default 10000; 0 skips it)")
    p.add_argument("--abuse-registers", type=int, metavar="R",
                   help="Registers of new endpoints in the abuse pass (default: up to the "
                   "gateway's max_endpoints, 10000, and 10%% of N past it)")
    p.add_argument("--abuse-rest", type=int, default=300, metavar="C",
                   help="slow REST connections of the abuse pass (default 300)")
    p.add_argument("--no-oscore", dest="oscore", action="store_false",
                   help="skip the protected pass (a second gateway with OSCORE required, "
                   "every node provisioned through its KeyStore, protected Registers and "
                   "Sends interleaved with the unprotected passes)")
    p.add_argument("--profile-oscore", metavar="FILE",
                   help="run the OSCORE gateway under cProfile and write its stats to FILE")
    p.add_argument("--json-only", action="store_true",
                   help="print only the JSON line on stdout")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    for name in ("nodes", "messages", "passes", "window", "observers"):
        if getattr(args, name) < 1:
            print(f"{PROG}: error: --{name} must be at least 1", file=sys.stderr)
            return 2
    for name in ("abuse", "abuse_rest", "abuse_registers"):
        if (getattr(args, name) or 0) < 0:
            print(f"{PROG}: error: --{name.replace('_', '-')} must not be negative",
                  file=sys.stderr)
            return 2
    limit = _nofile_limit()
    room = limit - 64 - (ABUSE_SOCKETS + args.abuse_rest if args.abuse else 0)
    if args.sockets is None:
        args.sockets = min(args.nodes, room)
    elif args.sockets < 1:
        print(f"{PROG}: error: --sockets must be at least 1", file=sys.stderr)
        return 2
    elif args.sockets > room:
        print(f"{PROG}: error: --sockets {args.sockets}: the open-file limit allows "
              f"{room}", file=sys.stderr)
        return 2
    args.sockets = min(args.sockets, args.nodes)
    if args.dir is not None:
        work = Path(args.dir)
        if work.exists() and not work.is_dir():
            print(f"{PROG}: error: --dir {work}: not a folder", file=sys.stderr)
            return 2
        if (work / "gateway.db").exists():
            print(f"{PROG}: error: --dir {work}: holds a gateway.db already",
                  file=sys.stderr)
            return 2
    try:
        import cbor2  # noqa: F401
    except ImportError:
        print(f"{PROG}: error: cbor2 is needed (pip install cbor2)", file=sys.stderr)
        return 2
    try:
        if args.dir is not None:
            work = Path(args.dir).resolve()
            work.mkdir(parents=True, exist_ok=True)
            result = asyncio.run(_bench(args, work))
        else:
            with tempfile.TemporaryDirectory(prefix="aiot-bench-gw-") as tmp:
                result = asyncio.run(_bench(args, Path(tmp)))
    except BenchError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    if not args.json_only:
        _print_summary(result)
    print(json.dumps(result))
    return 1 if result["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())

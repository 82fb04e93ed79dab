"""Fuzz of the node's CoAP server path (coapin -> coapsrv -> coapobs, with the test
resource tree tests/firmware/coaptree.py) under MicroPython: random and mutated
datagrams, including block-wise and Observe requests, never raise out of the endpoint,
and every answer is a well-formed CoAP message (aiocoap decodes it) that matches the
request: an ACK or RST with the request's MID for a CON, a NON or RST otherwise.
One long-lived micropython process (test_codec_diff's driver class) runs them all.
"""

from __future__ import annotations

import random

import aiocoap
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from plugins.services import REPO
from test_codec_diff import MicroPythonDriver  # rootdir-relative (rootdir import mode)

DRIVER = r"""
import sys, json
from coap.endpoint import Endpoint
from coaptree import Tree

def unhex(h):
    return bytes(int(h[i:i + 2], 16) for i in range(0, len(h), 2))

def hx(b):
    return "".join("%02x" % x for x in b)

class Sink:
    out = []
    def send(self, buf, n): Sink.out.append(hx(buf[:n]))
    def recv(self, t): return None

class Clock:
    t = 0
    def ticks_ms(self): return self.t

ep = Endpoint(Sink(), Clock(), lambda bits: 7)
tree = Tree(store=600)
ep.serve_resources(tree, max_block=256, body=512, block1=600, observers=3)

while True:
    line = sys.stdin.readline()
    if not line:
        break
    Sink.out = []
    try:
        Clock.t += 300000  # past EXCHANGE_LIFETIME: no datagram is a duplicate
        ep.handle(unhex(json.loads(line)))
        ep.changed()
        ep.poll()
        out = ["ok", Sink.out]
    except Exception as e:
        out = ["err", type(e).__name__, str(e)]
    print(json.dumps(out))
"""


class ServerDriver(MicroPythonDriver):
    def __init__(self, micropython, workdir):
        (workdir / "srvdriver.py").write_text(DRIVER)
        import os
        import subprocess

        env = dict(os.environ, MICROPYPATH=os.pathsep.join(
            [str(REPO / "firmware"), str(REPO / "tests" / "firmware")]))
        self.proc = subprocess.Popen(
            [micropython, "-X", "heapsize=512K", str(workdir / "srvdriver.py")],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, env=env, bufsize=1)


@pytest.fixture(scope="module")
def srv(micropython, tmp_path_factory):
    d = ServerDriver(micropython, tmp_path_factory.mktemp("srvdriver"))
    yield d
    d.close()


def _check(srv, blobs):
    for blob, a in zip(blobs, srv.call_many([b.hex() for b in blobs])):
        assert a[0] == "ok", (blob.hex(), a)
        for h in a[1]:
            m = aiocoap.Message.decode(bytes.fromhex(h))
            if len(blob) >= 4 and blob[0] >> 4 == 4 and blob[1] and h == a[1][0]:
                # a well-formed-looking CON request: answered with its MID
                try:
                    aiocoap.Message.decode(blob)
                except Exception:  # noqa: BLE001, S112 (what aiocoap refuses is no request)
                    continue
                assert int(m.mtype) in (2, 3) and m.mid == int.from_bytes(blob[2:4], "big")


PATHS = [b"hello", b"big", b"store", b"counter", b"obj", b"q", b"boom", b"3303", b"0"]


@st.composite
def request(draw):
    w = bytearray([0x40 | (draw(st.integers(0, 1)) << 4) | 2, draw(st.integers(0, 7)),
                   draw(st.integers(0, 255)), draw(st.integers(0, 255)), 1, 2])
    opts = []
    if draw(st.booleans()):
        opts.append((6, draw(st.sampled_from([b"", b"\x01", b"\x02\x03\x04\x05"]))))
    for seg in draw(st.lists(st.sampled_from(PATHS), max_size=4)):
        opts.append((11, seg))
    if draw(st.booleans()):
        opts.append((15, draw(st.sampled_from([b"a=1", b"b=-9", b"a=", b"a=99999999999"]))))
    for num in (23, 27, 60):
        if draw(st.booleans()):
            opts.append((num, draw(st.binary(max_size=4))))
    if draw(st.booleans()):
        opts.append((draw(st.integers(0, 300)), draw(st.binary(max_size=5))))
    opts.sort(key=lambda o: o[0])
    last = 0
    for num, val in opts:
        d = num - last
        last = num
        dn, dx = (d, b"") if d < 13 else ((13, bytes([d - 13])) if d < 269 else
                                          (14, (d - 269).to_bytes(2, "big")))
        w += bytes([(dn << 4) | len(val)]) + dx + val
    payload = draw(st.binary(max_size=300))
    if payload:
        w += b"\xff" + payload
    return bytes(w)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(request(), min_size=1, max_size=6))
def test_fuzz_structured_requests(srv, reqs):
    _check(srv, reqs)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=100))
def test_fuzz_random_bytes(srv, blob):
    _check(srv, [blob])


def test_fuzz_mutated_requests(srv):
    rng = random.Random(7959)
    seeds = [
        bytes.fromhex("4201 0001 0102 b3626967 c1 06"),  # GET /big Block2
        bytes.fromhex("4203 0002 0102 b573746f7265 d10e0a ff") + bytes(64),  # PUT Block1
        bytes.fromhex("4201 0003 0102 60 b7636f756e746572"),  # GET Observe /counter
        bytes.fromhex("5201 0004 0102 b36f626a 0433333033 0130"),  # NON GET /obj/3303/0
    ]
    blobs = []
    for _ in range(2500):
        b = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(1, 4)):
            r = rng.random()
            if r < 0.5 and b:
                b[rng.randrange(len(b))] = rng.randrange(256)
            elif r < 0.7 and b:
                del b[rng.randrange(len(b)):]
            else:
                b.insert(rng.randrange(len(b) + 1), rng.randrange(256))
        blobs.append(bytes(b))
    _check(srv, blobs)

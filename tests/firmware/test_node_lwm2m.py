"""The real node (precompiled firmware, ``micropython -X heapsize=448K``) serving its LwM2M
object tree to a server built here on aiocoap, and to libcoap's ``coap-client-notls``.

The server registers the node (test_node_server.TestServer, with the node's address
recorded) and sends device-management requests from its own socket, as a LwM2M server
does: the node's UDP socket is connected to the gateway address it was configured with.
For libcoap the aiocoap server gives its port up and ``coap-client-notls -p PORT`` talks
from it. Answers in SenML-CBOR are decoded with cbor2, Discover output is parsed as
CoRE link-format. Test names carry the OMA ETS interoperability case (OMA-ETS-
LightweightM2M-V1_1 int-NNN, IDs as Zephyr's and Wakaama's conformance suites use them).
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time

import aiocoap
import cbor2
import pytest
import test_node_server
from plugins.services import free_port
from test_node_server import LwM2MServer, TestServer, start_node

nodes = test_node_server.nodes  # the fixtures: node processes, the signal file
codes = test_node_server.codes

GET, POST, PUT, DELETE = aiocoap.GET, aiocoap.POST, aiocoap.PUT, aiocoap.DELETE


class Recorder(LwM2MServer):
    async def render(self, request):
        self.owner.remote = request.remote
        return await super().render(request)


class DMServer(TestServer):
    """TestServer that remembers the node's address and sends it requests."""

    __test__ = False
    remote = None

    def start(self, fresh_state: bool = False) -> None:
        root = Recorder(self)
        self._ctx = self._run(
            aiocoap.Context.create_server_context(root, bind=("127.0.0.1", self.port)))

    def ask(self, code, path: str, payload: bytes = b"", timeout: float = 10.0,
            non: bool = False, **opts) -> aiocoap.Message:
        async def go():
            m = aiocoap.Message(code=code, payload=payload,
                                uri_path=tuple(s for s in path.split("/") if s),
                                transport_tuning=aiocoap.Unreliable if non else None)
            for k, v in opts.items():
                setattr(m.opt, k, v)
            m.remote = self.remote
            return await asyncio.wait_for(self._ctx.request(m).response, timeout)

        return self._run(go(), timeout + 5)

    def observe(self, path: str, n: int, timeout: float = 15.0) -> list[aiocoap.Message]:
        """Observe path and collect n notifications after the first answer."""

        async def go():
            m = aiocoap.Message(code=GET, observe=0,
                                uri_path=tuple(s for s in path.split("/") if s))
            m.remote = self.remote
            req = self._ctx.request(m)
            first = await req.response
            out = [first]
            async for note in req.observation:
                out.append(note)
                if len(out) > n:
                    req.observation.cancel()
                    break
            return out

        return self._run(asyncio.wait_for(go(), timeout), timeout + 5)


@pytest.fixture
def dm():
    s = DMServer(free_port())
    yield s
    s.close()


def senml(payload: bytes) -> dict[str, object]:
    out: dict[str, object] = {}
    bn = ""
    for rec in cbor2.loads(payload):
        bn = rec.get(-2, bn)
        for k in (2, 3, 4, 8, "vlo"):
            if k in rec:
                out[bn + rec.get(0, "")] = rec[k]
    return out


def links(payload: bytes) -> dict[str, dict[str, str]]:
    """CoRE link-format (RFC 6690) into {target: {attribute: value}}."""
    out = {}
    for link in payload.decode().split(","):
        parts = link.split(";")
        assert parts[0].startswith("<") and parts[0].endswith(">"), link
        out[parts[0][1:-1]] = dict(p.partition("=")[::2] for p in parts[1:])
    return out


def registered_node(tmp_path, dm, nodes, node_firmware, **cfg):
    dm.start()
    node = start_node(tmp_path, nodes, node_firmware, dm.port, **cfg)
    dm.wait(lambda e: e.path == ("rd",), 15, "Register")
    node.wait_for(r"registered /rd/x1$", 5)
    return node


def test_int_101_201_222_224_read_device_server_and_node_objects(tmp_path, dm, nodes,
                                                                   node_firmware, codes):
    node = registered_node(tmp_path, dm, nodes, node_firmware, lifetime=60)
    reg = dm.events[0]
    assert reg.payload.startswith(b'</>;rt="oma.lwm2m";ct=112,</1/0>,</3/0>,</4/0>,</5/0>')
    r = dm.ask(GET, "/3/0")
    assert r.code == aiocoap.CONTENT and r.opt.content_format == 112
    v = senml(r.payload)
    assert v["/3/0/0"] == "aiotkit" and v["/3/0/1"] == "unix-sim" and v["/3/0/2"] == "node-a"
    assert v["/3/0/16"] == "U" and v["/3/0/11/0"] == 0 and v["/3/0/10"] > 0
    r = dm.ask(GET, "/3/0/0", accept=0)
    assert r.payload == b"aiotkit" and r.opt.content_format == 0
    assert senml(dm.ask(GET, "/1").payload)["/1/0/1"] == 60
    w = senml(dm.ask(GET, "/33000/0").payload)
    assert w["/33000/0/2"] == 256 and w["/33000/0/3"] == 8000
    f = senml(dm.ask(GET, "/33001/0").payload)
    assert sorted(f) == sorted(f"/33001/0/{i}" for i in range(16))
    paths = cbor2.dumps([{0: "/3/0/0"}, {0: "/33000/0/2"}, {0: "/3303/0"}])
    r = dm.ask(aiocoap.FETCH, "/", paths, content_format=112)  # int-280/236: Read-Composite
    assert senml(r.payload) == {"/3/0/0": "aiotkit", "/33000/0/2": 256}
    assert dm.ask(GET, "/0/0").code == aiocoap.UNAUTHORIZED  # int-221
    assert dm.ask(GET, "/3/0/0", accept=11542).code == aiocoap.NOT_ACCEPTABLE
    assert dm.ask(GET, "/42").code == aiocoap.NOT_FOUND
    node.stop(signal.SIGINT)
    assert node.proc.returncode == 0


def test_int_227_104_write_lifetime_and_update_trigger_send_updates(tmp_path, dm, nodes,
                                                                    node_firmware, codes):
    registered_node(tmp_path, dm, nodes, node_firmware, lifetime=60)
    mark = dm.mark()
    r = dm.ask(PUT, "/1/0/1", b"45", content_format=0)
    assert r.code == aiocoap.CHANGED
    u = dm.wait(lambda e: e.path == ("rd", "x1"), 5, "Update with lt", mark)
    assert u.query == ("lt=45",) and u.payload == b""
    assert dm.ask(GET, "/1/0/1", accept=0).payload == b"45"
    mark = dm.mark()
    assert dm.ask(POST, "/1/0/8").code == aiocoap.CHANGED
    u = dm.wait(lambda e: e.path == ("rd", "x1"), 5, "Update on the trigger", mark)
    assert u.query == () and u.answer.startswith("2.04")
    assert dm.ask(PUT, "/1/0/0", b"3", content_format=0).code == aiocoap.METHOD_NOT_ALLOWED
    assert dm.ask(PUT, "/1/0/1", b"x", content_format=0).code == aiocoap.BAD_REQUEST


def test_int_228_create_and_delete_send_updates_with_object_links(tmp_path, dm, nodes,
                                                                  node_firmware, codes):
    registered_node(tmp_path, dm, nodes, node_firmware, lifetime=60)
    mark = dm.mark()
    body = cbor2.dumps([{-2: "/16/3/0/", 0: "0", 3: "pump"}, {0: "1", 3: "line 2"}])
    r = dm.ask(POST, "/16", body, content_format=112)
    assert r.code == aiocoap.CREATED and tuple(r.opt.location_path) == ("16", "3")
    u = dm.wait(lambda e: e.path == ("rd", "x1"), 5, "Update with links", mark)
    assert u.content_format == 40 and b",</16/3>," in u.payload
    assert senml(dm.ask(GET, "/16/3").payload) == {"/16/3/0/0": "pump", "/16/3/0/1": "line 2"}
    mark = dm.mark()
    assert dm.ask(DELETE, "/16/3").code == aiocoap.DELETED
    u = dm.wait(lambda e: e.path == ("rd", "x1"), 5, "Update after Delete", mark)
    assert b",</16>," in u.payload
    assert dm.ask(DELETE, "/3/0").code == aiocoap.METHOD_NOT_ALLOWED


def test_int_260_261_discover_after_write_attributes(tmp_path, dm, nodes, node_firmware, codes):
    registered_node(tmp_path, dm, nodes, node_firmware, lifetime=60)
    assert dm.ask(PUT, "/3", uri_query=("pmin=10", "pmax=200")).code == aiocoap.CHANGED
    assert dm.ask(PUT, "/33000/0/0", uri_query=("gt=50", "lt=2", "st=5")).code == \
        aiocoap.CHANGED
    assert dm.ask(PUT, "/33000/0/0", uri_query=("pmin=9", "pmax=3")).code == \
        aiocoap.BAD_REQUEST
    d = links(dm.ask(GET, "/3", accept=40).payload)
    assert d["/3"] == {"pmin": "10", "pmax": "200"}
    assert {"/3/0", "/3/0/0", "/3/0/4", "/3/0/11", "/3/0/16"} <= set(d)
    assert d["/3/0/11"] == {"dim": "1"}
    d = links(dm.ask(GET, "/33000/0/0", accept=40).payload)
    assert d == {"/33000/0/0": {"gt": "50", "lt": "2", "st": "5"}}


def test_int_301_observe_resource_with_pmax_and_cancel(tmp_path, dm, nodes, node_firmware,
                                                       codes):
    registered_node(tmp_path, dm, nodes, node_firmware, lifetime=60, report_ms=200)
    notes = dm.observe("/33000/0/0", 3)
    seqs = [senml(n.payload)["/33000/0/0"] for n in notes]
    assert seqs == sorted(seqs) and len(set(seqs)) == 4, seqs
    # pmax on a value that never changes (window length): one notification per pmax
    assert dm.ask(PUT, "/33000/0/2", uri_query=("pmax=1",)).code == aiocoap.CHANGED
    t0 = time.monotonic()
    notes = dm.observe("/33000/0/2", 2)
    assert 1.6 < time.monotonic() - t0 < 4.0
    assert all(senml(n.payload) == {"/33000/0/2": 256} for n in notes)


def test_int_108_109_queue_mode_node_listens_only_after_it_sends(tmp_path, dm, nodes,
                                                               node_firmware, codes):
    registered_node(tmp_path, dm, nodes, node_firmware, lifetime=60, queue=True,
                    awake_ms=1500, report_ms=4000)
    assert dm.events[0].query[-1] == "b=UQ"
    first = dm.wait(lambda e: e.path == ("dp",), 10, "a Send")
    assert dm.ask(GET, "/1/0/7", accept=0, timeout=1.2).payload == b"UQ"
    time.sleep(max(0.0, first.t + 2.0 - time.monotonic()))  # the node is asleep by now
    with pytest.raises((asyncio.TimeoutError, TimeoutError)):
        dm.ask(GET, "/3/0/0", accept=0, timeout=0.8, non=True)
    mark = dm.mark()
    dm.wait(lambda e: e.path == ("dp",), 10, "the next Send", mark)
    assert dm.ask(GET, "/3/0/0", accept=0, timeout=1.2).payload == b"aiotkit"


def test_int_241_reboot_exits_for_the_supervisor(tmp_path, dm, nodes, node_firmware, codes):
    node = registered_node(tmp_path, dm, nodes, node_firmware, lifetime=60)
    assert dm.ask(POST, "/3/0/4").code == aiocoap.CHANGED
    node.wait_for(r"^aiot-node node-a rebooting$", 5)
    assert node.proc.wait(5) == 3


def test_libcoap_reads_observes_and_block2_reads_the_node(tmp_path, dm, nodes, node_firmware,
                                                          codes, coap_client):
    # report_ms long: no Send while libcoap holds the gateway's port
    registered_node(tmp_path, dm, nodes, node_firmware, lifetime=600, report_ms=600000)
    dm.wait(lambda e: e.path == ("dp",) and e.answer.startswith("2.04"), 10, "the first Send")
    port = dm.remote.hostinfo.rpartition(":")[2]
    dm.stop()  # libcoap takes the gateway's port: the node's socket only hears that one
    uri = f"coap://127.0.0.1:{port}"

    def cc(*args, timeout=20):
        return subprocess.run([coap_client, "-p", str(dm.port), "-B", "8", *args],
                              capture_output=True, timeout=timeout, check=False)

    r = cc("-m", "get", "-A", "0", uri + "/3/0/0")
    assert r.returncode == 0 and r.stdout.rstrip(b"\n") == b"aiotkit", r
    out = tmp_path / "dev.cbor"
    r = cc("-m", "get", "-b", "32", "-o", str(out), uri + "/3/0")  # Block2, 32-byte blocks
    assert r.returncode == 0, r
    assert len(out.read_bytes()) > 64
    v = senml(out.read_bytes())
    assert v["/3/0/0"] == "aiotkit" and v["/3/0/2"] == "node-a"
    r = cc("-m", "put", uri + "/3/0/13?pmax=1")
    assert r.returncode == 0, r
    out = tmp_path / "time"
    r = cc("-m", "get", "-A", "0", "-s", "3", "-w", "-v", "7", "-o", str(out),
           uri + "/3/0/13", timeout=30)
    assert r.returncode == 0, r
    times = [int(x) for x in out.read_bytes().split()]
    assert len(times) >= 3 and times == sorted(times), (times, r.stdout)
    assert b"Observe:1" in r.stdout + r.stderr  # libcoap cancelled at the end

# LwM2M 1.1 client-initiated bootstrap (OMA-TS-LightweightM2M_Core-V1_1 section 6.1,
# Transport section 6.1): the node asks the bootstrap server for its LwM2M server
# account and keeps the result in a small file, so a reboot does not bootstrap again.
#
#   node -> BS   POST /bs?ep=NAME                    2.04 (else BootstrapError)
#   BS -> node   DELETE /, /0, /1, /21, /o/x         2.02; the bootstrap-server account
#                                                    (/0/x/1 true) stays: 4.00 to delete it
#                PUT /0[/x[/r]], /1[/x[/r]],         2.04; SenML-CBOR (112) or plain text
#                    /21[/x[/r]]                     (0, one resource; opaque in base64);
#                                                    4.00 wrong type, 4.15 other formats,
#                                                    4.04 other objects, 4.01 /21 or
#                                                    /0/x/17 over an unprotected exchange
#                GET /, /0, /1, /21 (link-format)    2.05 Bootstrap-Discover
#                POST /bs (Bootstrap-Finish)         2.04, or 4.06 when no /0 instance
#                                                    (not bootstrap) with a URI has its /1
#                                                    instance (same short server id), or
#                                                    its /0/x/17 links to no usable /21
#
# Security resources kept: 0 URI, 1 bootstrap server, 2 mode, 10 short server id, 17
# OSCORE Security Mode ("21:I", SenML vlo); Server: 0 short server id, 1 lifetime, 6
# notification storing, 7 binding; OSCORE (21): 0 Master Secret, 1 Sender ID (the
# node's), 2 Recipient ID, 3 AEAD (10, AES-CCM-16-64-128, or absent), 4 HMAC (-10 HKDF
# SHA-256, or 5 HMAC 256/256, or absent), 5 Master Salt, 6 ID Context. Other resources
# are accepted and not kept. Mode 3 (NoSec, with or without 17) is the only one usable:
# Finish answers 4.06 for another.
#
# Secrets never travel in clear: /21 (and the link to it) is accepted only when run()
# protects the exchange with the bootstrap server's OSCORE context (config
# "bootstrap_oscore"; its sequence bound in oscore-bs.seq). Without it the node takes
# NoSec accounts only (a development gateway) and needs its keys in config.json.
#
# The result is {"uri", "lifetime", "binding", "ssid"[, "oscore"]} in a JSON file
# (written to a temp file, then renamed: the account and its keys change together);
# "oscore" holds /21's values as hex strings (oscore/keys.py parse() reads them). Nothing
# here prints a key. Boot-time only: the module and its tables go once it returns.
from micropython import const
import time

_POST = const(2)
_PUT = const(3)
_DELETE = const(4)
_GET = const(1)
_CHANGED = const(0x44)  # 2.04
_DELETED = const(0x42)  # 2.02
_CONTENT = const(0x45)  # 2.05
_BAD_REQUEST = const(0x80)
_UNAUTHORIZED = const(0x81)
_NOT_FOUND = const(0x84)
_METHOD_NOT_ALLOWED = const(0x85)
_NOT_ACCEPTABLE = const(0x86)
_UNSUPPORTED_FORMAT = const(0x8F)
_URI_PATH = const(11)
_CONTENT_FORMAT = const(12)
_URI_QUERY = const(15)
_CF_TEXT = const(0)
_CF_LINK = const(40)
_CF_SENML_CBOR = const(112)
_NOSEC = const(3)
_OSCORE = const(21)
_AES_CCM_16_64_128 = const(10)  # /21/x/3, RFC 8152 table 10
_MAX_INSTANCES = const(4)  # per object: more is 4.00 (a node has one server)
_SERVE_MS = const(100)  # poll granularity while waiting for Bootstrap-Finish
_TIMEOUT_MS = const(60000)  # Bootstrap-Finish must come within this (Core 6.1.7)

# (object, resource) -> type: 0 int, 1 bool, 2 string, 3 object link "O:I", 4 opaque, 5
# signed int (kept); others are accepted
_TYPES = {(0, 0): 2, (0, 1): 1, (0, 2): 0, (0, 10): 0, (0, 17): 3,
          (1, 0): 0, (1, 1): 0, (1, 6): 1, (1, 7): 2,
          (21, 0): 4, (21, 1): 4, (21, 2): 4, (21, 3): 5, (21, 4): 5, (21, 5): 4, (21, 6): 4}
# /21 resource -> the key of oscore/keys.py (and of server.json's "oscore")
_KEYS = ((0, "secret"), (1, "sender_id"), (2, "recipient_id"), (5, "salt"),
         (6, "id_context"))
_STORE = "server.json"
_SEQ = "oscore-bs.seq"  # the bootstrap context's sender sequence bound (oscore/seq.py)


class BootstrapError(Exception):
    """Bootstrap failed: refused, timed out, or no usable server account."""


def load(path=_STORE):
    """The persisted server account {"uri", "lifetime", "binding", "ssid"[, "oscore"]},
    or None."""
    import json

    try:
        with open(path) as f:
            d = json.loads(f.read())
    except (OSError, ValueError):
        return None
    if not isinstance(d, dict):
        return None
    for key, kind in (("uri", str), ("lifetime", int), ("binding", str), ("ssid", int)):
        if type(d.get(key)) is not kind:
            return None
    if "oscore" in d and not isinstance(d["oscore"], dict):
        return None  # its values are checked by oscore/keys.py parse() when used
    return d


def save(account, path=_STORE):
    import json
    import os

    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(json.dumps(account))
    os.rename(tmp, path)


class Tree:
    """/0 and /1 as the bootstrap server sees them: {iid: {rid: value}} per object; the
    CoAP handler (handle(req, resp) -> code, see coap/server.py)."""

    def __init__(self, bs_uri, protected=False):
        self.obj = {0: {0: {0: bs_uri, 1: True, 2: _NOSEC}}, 1: {}, _OSCORE: {}}
        self.protected = protected  # the exchange is OSCORE-protected: /21 may be written
        self.finished = False
        self.errors = 0  # refused requests, for the log

    def __repr__(self):
        return "<bootstrap Tree>"  # never the keys

    def handle(self, req, resp):
        code = self._handle(req, resp)
        if code >> 5 != 2:
            self.errors += 1
        return code

    def _handle(self, req, resp):
        m = req.method
        np = req.npath
        if np == 1 and req.path_is(0, b"bs"):
            if m != _POST:
                return _METHOD_NOT_ALLOWED
            return self._finish()
        ids = []
        for i in range(np):
            v = req.path_int(i)
            if v < 0 or v > 65535:
                return _NOT_FOUND
            ids.append(v)
        if np > 3 or ids and ids[0] not in self.obj:
            return _NOT_FOUND
        if m == _DELETE:
            return self._delete(ids)
        if m == _PUT:
            if not ids:
                return _METHOD_NOT_ALLOWED
            return self._write(req, ids)
        if m == _GET:
            if req.accept not in (-1, _CF_LINK) or np > 1:
                return _NOT_ACCEPTABLE  # Bootstrap-Read is not supported
            return self._discover(ids, resp)
        return _METHOD_NOT_ALLOWED

    def _is_bs(self, iid):
        return self.obj[0].get(iid, {}).get(1) is True

    def _delete(self, ids):
        if len(ids) > 2:
            return _BAD_REQUEST
        objs = (ids[0],) if ids else (0, 1, _OSCORE)
        if len(ids) == 2:
            o, i = ids
            if o == 0 and self._is_bs(i):
                return _BAD_REQUEST  # the bootstrap-server account cannot be deleted
            self.obj[o].pop(i, None)
            return _DELETED
        for o in objs:
            for i in list(self.obj[o]):
                if not (o == 0 and self._is_bs(i)):
                    del self.obj[o][i]
        return _DELETED

    def _write(self, req, ids):
        fmt = req.format
        if fmt == _CF_TEXT:
            if len(ids) != 3:
                return _BAD_REQUEST  # plain text carries one resource
            try:
                text = str(req.payload(), "utf-8")
            except UnicodeError:
                return _BAD_REQUEST
            return self._set(ids[0], ids[1], ids[2], text, True)
        if fmt != _CF_SENML_CBOR:
            return _UNSUPPORTED_FORMAT
        from cbor.decode import loads

        try:
            pack = loads(req.payload())
        except ValueError:
            return _BAD_REQUEST
        if not isinstance(pack, list) or not pack:
            return _BAD_REQUEST
        # all records or none: a refused one puts the object back as it was
        keep = {i: dict(r) for i, r in self.obj.get(ids[0], {}).items()}
        code = self._records(pack, ids)
        if code != _CHANGED and ids[0] in self.obj:
            self.obj[ids[0]] = keep
        return code

    def _records(self, pack, ids):
        base = ""
        prefix = "/" + "/".join(str(i) for i in ids)
        for r in pack:
            if not isinstance(r, dict):
                return _BAD_REQUEST
            base = r.get(-2, base)
            name = r.get(0, "")
            if not isinstance(base, str) or not isinstance(name, str):
                return _BAD_REQUEST
            p = base + name
            if not (p == prefix or p.startswith(prefix + "/")):
                return _BAD_REQUEST  # a record outside the target path
            segs = p.split("/")
            if len(segs) != 4 or segs[0]:
                return _BAD_REQUEST  # /o/i/r only (no multiple-instance resources)
            try:
                o, i, rid = int(segs[1]), int(segs[2]), int(segs[3])
            except ValueError:
                return _BAD_REQUEST
            v = None
            for key in (2, 3, 4, 8, "vlo"):  # v, vs, vb, vd (RFC 8428 section 6), vlo
                if key in r:
                    v = r[key]
            if v is None:
                return _BAD_REQUEST
            code = self._set(o, i, rid, v, False)
            if code != _CHANGED:
                return code
        return _CHANGED

    def _set(self, o, i, rid, v, text):
        if o not in self.obj:
            return _NOT_FOUND
        if (o == _OSCORE or o == 0 and rid == 17) and not self.protected:
            return _UNAUTHORIZED  # keys (or a link to them) in clear: not taken
        inst = self.obj[o]
        if i not in inst and len(inst) >= _MAX_INSTANCES:
            return _BAD_REQUEST
        kind = _TYPES.get((o, rid))
        if kind is None:
            inst.setdefault(i, {})
            return _CHANGED  # accepted, not kept
        if text:
            if kind == 0:
                try:
                    v = int(v)
                except ValueError:
                    return _BAD_REQUEST
            elif kind == 1:
                if v not in ("0", "1"):
                    return _BAD_REQUEST
                v = v == "1"
            elif kind == 4:  # opaque in plain text: base64 (Core section 7.3.1)
                from binascii import a2b_base64

                try:
                    v = a2b_base64(v)
                except ValueError:
                    return _BAD_REQUEST
            elif kind == 5:
                try:
                    v = int(v)
                except ValueError:
                    return _BAD_REQUEST
        if kind == 0 and (type(v) is not int or not 0 <= v <= 0xFFFFFFFF):
            return _BAD_REQUEST
        if kind == 5 and (type(v) is not int or not -65536 <= v <= 65535):
            return _BAD_REQUEST
        if kind == 3 and _link(v) < 0:
            return _BAD_REQUEST
        if kind == 4 and (type(v) is not bytes or len(v) > 64):
            return _BAD_REQUEST
        if kind == 1 and type(v) is not bool:
            return _BAD_REQUEST
        if kind == 2 and (type(v) is not str or len(v) > 255):
            return _BAD_REQUEST
        inst.setdefault(i, {})[rid] = v
        return _CHANGED

    def _discover(self, ids, resp):
        out = ['</>;lwm2m=1.1']
        for o in ((ids[0],) if ids else (0, 1, _OSCORE)):
            if not self.obj[o]:
                out.append("</%d>" % o)
            for i, r in sorted(self.obj[o].items()):
                s = "</%d/%d>" % (o, i)
                ssid = r.get(10) if o == 0 else r.get(0) if o == 1 else None
                if ssid is not None and not (o == 0 and r.get(1)):
                    s += ";ssid=%d" % ssid
                if o == 0 and isinstance(r.get(0), str):
                    s += ';uri="%s"' % r[0]
                out.append(s)
        data = ",".join(out).encode()
        resp.option_uint(_CONTENT_FORMAT, _CF_LINK)
        resp.write(data)
        return _CONTENT

    def account(self):
        """The server account the bootstrap server wrote, or None if there is none (or
        its /0/x/17 links to no usable /21 instance)."""
        for i, sec in sorted(self.obj[0].items()):
            if sec.get(1) or not isinstance(sec.get(0), str) or sec.get(2) != _NOSEC:
                continue
            keys = None
            if 17 in sec:
                keys = self._keys(_link(sec[17]))
                if keys is None:
                    continue
            ssid = sec.get(10)
            for srv in self.obj[1].values():
                if srv.get(0) == ssid and type(srv.get(1)) is int:
                    acct = {"uri": sec[0], "lifetime": srv[1],
                            "binding": srv.get(7, "U"), "ssid": ssid}
                    if keys is not None:
                        acct["oscore"] = keys
                    return acct
        return None

    def _keys(self, iid):
        # /21/iid as oscore/keys.py's hex strings if it is a context the node can use,
        # else None
        from binascii import hexlify
        from oscore.keys import parse

        r = self.obj[_OSCORE].get(iid)
        if r is None or r.get(3, _AES_CCM_16_64_128) != _AES_CCM_16_64_128:
            return None
        if r.get(4, -10) not in (-10, 5):  # HKDF SHA-256 (HMAC 256/256)
            return None
        out = {}
        for rid, key in _KEYS:
            if rid in r:
                out[key] = hexlify(r[rid]).decode()
        try:
            parse(out, ValueError)  # lengths, required keys, sender != recipient
        except ValueError:
            return None
        return out

    def _finish(self):
        if self.account() is None:
            return _NOT_ACCEPTABLE  # Core 6.1.7.8: the configuration is not usable
        self.finished = True
        return _CHANGED


def _link(v):
    # the instance id of an OSCORE object link "21:I", else -1
    if type(v) is not str or not v.startswith("21:") or not v[3:].isdigit() or len(v) > 8:
        return -1
    i = int(v[3:])
    return i if i <= 65534 else -1


def run(uri, name, path=_STORE, timeout_ms=_TIMEOUT_MS, transport=None, clock=None,
        rand=None, keys=None, seq=_SEQ):
    """Bootstrap endpoint ``name`` from the bootstrap server at ``uri`` (coap://HOST:PORT);
    returns the server account (also written to ``path``). ``keys``: the bootstrap
    server's OSCORE context (oscore/keys.py parse(), config "bootstrap_oscore"; sequence
    bound in ``seq``): the exchange is protected and the server may write /21. Raises
    BootstrapError (and CoapError/OSError/OscoreError when the server cannot be
    reached)."""
    import gc

    # the code first (on the unix port .mpy code lives in the heap), then the buffers
    from cbor.decode import loads  # noqa: F401 (Tree.write decodes with it)
    from coap.endpoint import Endpoint
    from coap.msg import code_str

    gc.collect()
    clock = clock if clock is not None else time
    t = transport
    if t is None:
        from storage.config import parse_gateway
        from coap.udp import UdpTransport

        host, port = parse_gateway(uri)
        t = UdpTransport(host, port)
    inner = t
    try:
        if keys is not None:  # the bootstrap exchange protected end to end (RFC 8613)
            from oscore.context import Context
            from oscore.transport import OscoreTransport

            ctx = Context(keys["secret"], keys["sender_id"], keys["recipient_id"], seq,
                          salt=keys["salt"], id_context=keys["id_context"])
            t = OscoreTransport(inner, ctx, bufsize=512, reqsize=320)
        ep = Endpoint(t, clock, rand, 256)
        tree = Tree(uri, keys is not None)
        # a Bootstrap-Write of /0 or /1 is a few hundred bytes; Discover answers ~200
        ep.serve_resources(tree, max_block=256, body=256, block1=512, observers=0)
        w = ep.begin(_POST)
        w.option(_URI_PATH, b"bs")
        w.option(_URI_QUERY, b"ep=" + name.encode())
        start = clock.ticks_ms()
        r = ep.exchange(timeout_ms)
        if r.code != _CHANGED:
            raise BootstrapError("bootstrap request answered " + code_str(r.code))
        while not tree.finished:
            if time.ticks_diff(clock.ticks_ms(), start) >= timeout_ms:
                raise BootstrapError("no Bootstrap-Finish within %d ms" % timeout_ms)
            ep.serve(_SERVE_MS)
        acct = tree.account()
        save(acct, path)
        return acct
    finally:
        if transport is None:
            inner.close()

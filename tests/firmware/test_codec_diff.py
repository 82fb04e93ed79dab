"""Differential tests of the node's codecs against peers not written here.

The MicroPython side runs in ONE long-lived ``micropython`` process per module (a small
line protocol over stdin/stdout, see DRIVER) so that hypothesis can push hundreds of
examples through the real firmware code without a process per example.

* CBOR: values encoded by firmware/cbor/encode.py (under MicroPython) decode with cbor2 to the
  same value, and the bytes equal cbor2's own encoding wherever CBOR has one shortest
  form; put_scaled equals code * 2**exp as the host rounds it to float32.
* CoAP: messages encoded by firmware/coap/msg.py decode with aiocoap's Message.decode to
  the same fields, and aiocoap-encoded messages decode with firmware/coap/decode.py.
* Fuzz: random and mutated bytes into the node's CoAP decoder, CBOR decoder and the
  endpoint's receive path: only the typed errors (CoapError, CBORError) may come out.
"""

from __future__ import annotations

import json
import math
import os
import random
import struct
import subprocess

import aiocoap
import cbor2
import pytest
from aiocoap.numbers.optionnumbers import OptionNumber
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from plugins.services import REPO

DRIVER = r"""
import sys, json, struct
from cbor.decode import loads
from cbor.encode import Writer
from coap.decode import Message
from coap.endpoint import Endpoint
from coap.msg import MessageWriter

def unhex(h):
    return bytes(int(h[i:i + 2], 16) for i in range(0, len(h), 2))

def hx(b):
    return "".join("%02x" % x for x in b)

def put(w, s):
    t = s[0]
    if t == "u": w.put_uint(s[1])
    elif t == "i": w.put_int(s[1])
    elif t == "b": w.put_bytes(unhex(s[1]))
    elif t == "t": w.put_text(str(unhex(s[1]), "utf-8"))
    elif t == "T": w.put_bool(True)
    elif t == "F": w.put_bool(False)
    elif t == "f64": w.put_float64(struct.unpack(">d", unhex(s[1]))[0])
    elif t == "s": w.put_scaled(s[1], s[2])
    elif t == "a":
        w.put_array(len(s[1]))
        for x in s[1]: put(w, x)
    elif t == "m":
        w.put_map(len(s[1]))
        for k, v in s[1]:
            put(w, k); put(w, v)

def put_value(w, v):
    # re-encode a decoded value (floats as float64, which holds any decoded float)
    if v is None: w._head(7, 22)  # null: the node never sends one (no put_null)
    elif v is True or v is False: w.put_bool(v)
    elif isinstance(v, int): w.put_int(v)
    elif isinstance(v, float): w.put_float64(v)
    elif isinstance(v, bytes): w.put_bytes(v)
    elif isinstance(v, str): w.put_text(v)
    elif isinstance(v, list):
        w.put_array(len(v))
        for x in v: put_value(w, x)
    else:
        w.put_map(len(v))
        for k in v:
            put_value(w, k); put_value(w, v[k])

class Sink:
    def send(self, buf, n): pass
    def recv(self, t): return None

class Clock:
    t = 0
    def ticks_ms(self): return self.t

ep = Endpoint(Sink(), Clock(), lambda bits: 7)
buf = bytearray(65536)
msg = Message(64)

def run(cmd):
    op = cmd[0]
    if op == "cbor":
        w = Writer(buf)
        put(w, cmd[1])
        return hx(buf[:w.pos])
    if op == "cbor_dec":
        loads(unhex(cmd[1]))
        return "ok"
    if op == "cbor_rt":
        w = Writer(buf)
        put_value(w, loads(unhex(cmd[1])))
        return hx(buf[:w.pos])
    if op == "coap_enc":
        w = MessageWriter(buf)
        w.begin(cmd[1], cmd[2], cmd[3], unhex(cmd[4]))
        for num, val in cmd[5]:
            if isinstance(val, int):
                w.option_uint(num, val)
            else:
                w.option(num, unhex(val))
        w.payload(unhex(cmd[6]))
        return hx(buf[:w.pos])
    if op == "coap_dec":
        data = unhex(cmd[1])
        m = msg.decode(data)
        return [m.type, m.code, m.mid, hx(data[4:4 + m.tkl]),
                [[m.onum[i], hx(m.value(i))] for i in range(m.nopt)], hx(data[m.pstart:m.n])]
    if op == "handle":
        ep.handle(unhex(cmd[1]))
        return "ok"

while True:
    line = sys.stdin.readline()
    if not line:
        break
    try:
        out = ["ok", run(json.loads(line))]
    except Exception as e:
        out = ["err", type(e).__name__, str(e)]
    print(json.dumps(out))
"""


class MicroPythonDriver:
    """One micropython process running DRIVER; call() sends commands, returns answers."""

    def __init__(self, micropython: str, workdir):
        path = workdir / "driver.py"
        path.write_text(DRIVER)
        env = dict(os.environ, MICROPYPATH=str(REPO / "firmware"))
        # a codec test, not a memory test: room for 64 KiB messages and deep values
        self.proc = subprocess.Popen(
            [micropython, "-X", "heapsize=2M", str(path)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, env=env, bufsize=1,
        )

    def call_many(self, cmds: list, chunk: int = 64) -> list:
        """Answers to cmds, pipelined in chunks small enough for the pipes' buffers."""
        assert self.proc.stdin and self.proc.stdout
        out = []
        for i in range(0, len(cmds), chunk):
            part = cmds[i : i + chunk]
            self.proc.stdin.write("".join(json.dumps(c) + "\n" for c in part))
            self.proc.stdin.flush()
            for _ in part:
                line = self.proc.stdout.readline()
                if not line:
                    raise RuntimeError(f"micropython driver died (exit {self.proc.poll()})")
                out.append(json.loads(line))
        return out

    def call(self, cmd):
        return self.call_many([cmd])[0]

    def close(self):
        if self.proc.poll() is None:
            assert self.proc.stdin
            self.proc.stdin.close()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self.proc.stdout:
            self.proc.stdout.close()


@pytest.fixture(scope="module")
def mp(micropython, tmp_path_factory):
    d = MicroPythonDriver(micropython, tmp_path_factory.mktemp("mpdriver"))
    yield d
    d.close()


def ok(answer):
    assert answer[0] == "ok", answer
    return answer[1]


# ---------------------------------------------------------------------------- CBOR

_f64 = st.floats(allow_nan=False)
_text = st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=40)
_int = st.integers(min_value=-(2**64), max_value=2**64 - 1)
_scalars = st.one_of(
    _int.map(lambda v: ("int", v)),
    st.binary(max_size=300).map(lambda v: ("bytes", v)),
    _text.map(lambda v: ("text", v)),
    st.booleans().map(lambda v: ("bool", v)),
    _f64.map(lambda v: ("f64", v)),
)
_values = st.recursive(
    _scalars,
    lambda kids: st.one_of(
        st.lists(kids, max_size=6).map(lambda v: ("array", v)),
        st.dictionaries(st.one_of(st.integers(-1000, 1000), _text), kids, max_size=6).map(
            lambda d: ("map", list(d.items()))
        ),
    ),
    max_leaves=25,
)


def to_spec(v):
    """(driver command, the Python value cbor2 must decode, floats involved?)"""
    kind, x = v
    if kind == "int":
        return ["i", x], x, False
    if kind == "bytes":
        return ["b", x.hex()], x, False
    if kind == "text":
        return ["t", x.encode().hex()], x, False
    if kind == "bool":
        return (["T"] if x else ["F"]), x, False
    if kind == "f64":
        return ["f64", struct.pack(">d", x).hex()], x, True
    if kind == "array":
        parts = [to_spec(i) for i in x]
        return ["a", [p[0] for p in parts]], [p[1] for p in parts], any(p[2] for p in parts)
    parts = [(to_spec(("int", k) if isinstance(k, int) else ("text", k)), to_spec(val))
             for k, val in x]
    return (["m", [[k[0], val[0]] for k, val in parts]], {k[1]: val[1] for k, val in parts},
            any(val[2] for _, val in parts))


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_values)
def test_cbor_encoded_by_micropython_decodes_with_cbor2(mp, value):
    spec, want, has_float = to_spec(value)
    data = bytes.fromhex(ok(mp.call(["cbor", spec])))
    assert cbor2.loads(data) == want
    if not has_float:  # one shortest form: the bytes themselves must agree
        assert data == cbor2.dumps(want)


def test_cbor_rfc8949_floats_decode_with_cbor2(mp):
    for f in (0.0, -0.0, 1.0, 1.5, 65504.0, 100000.0, 3.4028234663852886e38, -4.0,
              float("inf"), float("-inf")):
        d = bytes.fromhex(ok(mp.call(["cbor", ["f64", struct.pack(">d", f).hex()]])))
        assert d[0] == 0xFB and cbor2.loads(d) == f
    nan = bytes.fromhex(ok(mp.call(["cbor", ["f64", struct.pack(">d", math.nan).hex()]])))
    assert math.isnan(cbor2.loads(nan))


def _host_f32(code: int, exp: int) -> float | None:
    """code * 2**exp rounded to float32 by the host, None if it overflows float32."""
    try:
        return struct.unpack(">f", struct.pack(">f", math.ldexp(code, exp)))[0]
    except OverflowError:
        return None


@settings(max_examples=300, deadline=None)
@given(st.integers(-32768, 32767), st.integers(-170, 130))
def test_put_scaled_equals_host_float32(mp, code, exp):
    want = _host_f32(code, exp)
    ans = mp.call(["cbor", ["s", code, exp]])
    if want is None or math.isinf(want):
        assert ans[0] == "err" and ans[1] == "CBORError", ans
        return
    data = bytes.fromhex(ok(ans))
    assert data[0] == 0xFA and len(data) == 5
    got = cbor2.loads(data)
    assert got == want and math.copysign(1, got) == math.copysign(1, want)


def test_put_scaled_every_code_at_a_replay_exponent(mp):
    # all 65536 codes at the exponent of the shipped recordings, batched
    for exp in (-16,):
        codes = list(range(-32768, 32768))
        answers = mp.call_many([["cbor", ["s", c, exp]] for c in codes], chunk=512)
        for c, a in zip(codes, answers):
            assert cbor2.loads(bytes.fromhex(ok(a))) == math.ldexp(c, exp), (c, exp)


# ---------------------------------------------------------------------------- CoAP

_KNOWN = {int(n): n.format.__name__ for n in OptionNumber if isinstance(n.format, type)}


_UINTS = ("UintOption", "ContentFormatOption")


def _uint_bytes(v: int) -> bytes:
    return v.to_bytes((v.bit_length() + 7) // 8, "big")


@st.composite
def _option(draw):
    """(number, value bytes) valid for aiocoap's type of that option number."""
    kind = draw(st.sampled_from(["known", "known", "any"]))
    if kind == "known":
        num = draw(st.sampled_from(sorted(n for n, f in _KNOWN.items() if f != "BlockOption")))
    else:
        num = draw(st.integers(0, 65535).filter(lambda n: n not in _KNOWN))
    fmt = _KNOWN.get(num, "OpaqueOption")
    if fmt == "StringOption":
        val = draw(_text).encode()
    elif fmt in _UINTS:
        top = 65535 if fmt == "ContentFormatOption" else 2**32 - 1
        val = _uint_bytes(draw(st.integers(0, top)))
    else:
        val = draw(st.binary(max_size=300))
    return num, val


@st.composite
def _message(draw):
    mtype = draw(st.integers(0, 3))
    code = draw(st.integers(0, 255))
    mid = draw(st.integers(0, 65535))
    if code == 0:  # an Empty message is the header only (RFC 7252 section 4.1)
        return mtype, code, mid, b"", [], b""
    token = draw(st.binary(max_size=8))
    opts = draw(st.lists(_option(), max_size=8))
    opts.sort(key=lambda o: o[0])  # stable: repeated options keep their order
    payload = draw(st.binary(max_size=400))
    return mtype, code, mid, token, opts, payload


def _aiocoap_fields(m: aiocoap.Message):
    return (int(m.mtype), int(m.code), m.mid, m.token,
            [(int(o.number), o.encode()) for o in m.opt.option_list()], m.payload)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_message())
def test_coap_encoded_by_micropython_decodes_with_aiocoap(mp, message):
    mtype, code, mid, token, opts, payload = message
    # uint-typed options go through option_uint (as an int), the rest as bytes
    wire = [[n, int.from_bytes(v, "big") if _KNOWN.get(n) in _UINTS else v.hex()]
            for n, v in opts]
    raw = bytes.fromhex(ok(mp.call(["coap_enc", mtype, code, mid, token.hex(), wire,
                                    payload.hex()])))
    assert _aiocoap_fields(aiocoap.Message.decode(raw)) == (mtype, code, mid, token, opts,
                                                            payload)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_message())
def test_coap_encoded_by_aiocoap_decodes_with_micropython(mp, message):
    mtype, code, mid, token, opts, payload = message
    m = aiocoap.Message(code=aiocoap.numbers.codes.Code(code), payload=payload)
    m.mtype = aiocoap.numbers.types.Type(mtype)
    m.mid = mid
    m.token = token
    for num, val in opts:
        m.opt.add_option(OptionNumber(num).create_option(decode=val))
    raw = m.encode()
    got = ok(mp.call(["coap_dec", raw.hex()]))
    assert got == [mtype, code, mid, token.hex(), [[n, v.hex()] for n, v in opts],
                   payload.hex()]


def test_coap_decoder_refuses_what_rfc7252_calls_malformed(mp):
    # cases aiocoap happens to accept but RFC 7252 sections 3 and 4.1 make errors
    for h in ("40010000ff", "4901000000000000000000000000", "40000000ff", "4100000001"):
        a = mp.call(["coap_dec", h])
        assert a[0] == "err" and a[1] == "CoapError", (h, a)


# ---------------------------------------------------------------------------- fuzz

_ALLOWED = {"coap_dec": {"CoapError"}, "cbor_dec": {"CBORError"}, "handle": set()}


def _check_fuzz(mp, op, blobs):
    for blob, a in zip(blobs, mp.call_many([[op, b.hex()] for b in blobs])):
        if a[0] == "err":
            assert a[1] in _ALLOWED[op], (op, blob.hex(), a)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=80))
def test_fuzz_random_bytes_only_typed_errors(mp, blob):
    for op in _ALLOWED:
        _check_fuzz(mp, op, [blob])


def _mutations(rng: random.Random, seeds: list[bytes], n: int) -> list[bytes]:
    out = []
    for _ in range(n):
        b = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(1, 4)):
            r = rng.random()
            if r < 0.4 and b:
                b[rng.randrange(len(b))] = rng.randrange(256)
            elif r < 0.6 and b:
                del b[rng.randrange(len(b)):]
            elif r < 0.8:
                b.insert(rng.randrange(len(b) + 1), rng.randrange(256))
            else:
                b += bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        out.append(bytes(b))
    return out


def test_fuzz_mutated_valid_messages_only_typed_errors(mp):
    rng = random.Random(20240901)
    coap_seeds = [
        bytes.fromhex("4102 0001 ab b27264 1128 33623d55 d2200400 ff6869"),
        bytes.fromhex("6445 1234 01020304 827264 03616263"),
        bytes.fromhex("40017d34bb74656d7065726174757265"),
        bytes.fromhex("5003ffffed06f407") + bytes(20) + bytes.fromhex("0e001f") + bytes(300),
        bytes.fromhex("60001234"),
    ]
    cbor_seeds = [
        cbor2.dumps([{-2: "/3313/0/", 0: "5702", 2: 1.5}, {0: "1", 2: 123456}]),
        cbor2.dumps({"a": [1, 2, {"b": b"\x00" * 30}], 7: -2**63, "c": 1e300}),
        bytes.fromhex("f93c00fa47c35000fb3ff199999999999a"),
    ]
    _check_fuzz(mp, "coap_dec", _mutations(rng, coap_seeds, 3000))
    _check_fuzz(mp, "handle", _mutations(rng, coap_seeds, 2000))
    _check_fuzz(mp, "cbor_dec", _mutations(rng, cbor_seeds, 3000))
    _check_fuzz(mp, "cbor_dec", [bytes(rng.randrange(256) for _ in range(rng.randint(0, 40)))
                                 for _ in range(2000)])


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.recursive(
    st.one_of(_int, st.binary(max_size=50), _text, st.booleans(),
              st.none(), st.floats(allow_nan=False)),
    lambda kids: st.one_of(st.lists(kids, max_size=5),
                           st.dictionaries(st.one_of(_int, _text), kids, max_size=5)),
    max_leaves=20))
def test_cbor2_encoded_values_decode_with_micropython(mp, value):
    # decoded by the node, re-encoded by the node, read back by cbor2: the same value
    data = cbor2.dumps(value)
    back = bytes.fromhex(ok(mp.call(["cbor_rt", data.hex()])))
    assert cbor2.loads(back) == value

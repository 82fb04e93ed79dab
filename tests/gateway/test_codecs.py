"""The codec entry point: dispatch, text and opaque, SenML encoding, and what escapes."""

from __future__ import annotations

import base64
import json
from typing import Any

import cbor2
import pytest
from aiotkit.gateway.errors import BadRequest, UnsupportedContentFormat
from aiotkit.gateway.lwm2m import codecs, senml
from aiotkit.gateway.lwm2m.codecs import CodecError, UnknownContentFormat, decode, encode
from aiotkit.gateway.lwm2m.ddf import load_shipped
from aiotkit.gateway.lwm2m.senml import Record
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

FAST = settings(max_examples=150, deadline=None,
                suppress_health_check=[HealthCheck.too_slow])
OBJECTS = load_shipped()
ALL = sorted(codecs.DECODABLE)


def R(path: str, kind: str, value: object, time: float | None = None) -> Record:
    return Record(path, kind, value, time)  # type: ignore[arg-type]


def test_every_format_the_issue_names_is_decoded_and_written():
    assert codecs.DECODABLE == {0, 42, 110, 112, 11542, 11544}
    assert codecs.ENCODABLE == {0, 42, 110, 112, 11542, 11544}


@pytest.mark.parametrize("cf", [40, 60, 11543, -1, 2**20, None, "0", 0.0])
def test_unknown_content_formats_are_4_15(cf: Any):
    with pytest.raises(UnknownContentFormat) as info:
        decode(cf, b"", "/3/0/0")
    assert isinstance(info.value, UnsupportedContentFormat)
    assert str(info.value.code).startswith("4.15")
    with pytest.raises(UnknownContentFormat):
        encode(cf, 1, "/3/0/9")


# Plain text as Leshan's decoder test reads it (eclipse-leshan/leshan, leshan-core/src/test
# /java/org/eclipse/leshan/core/node/codec/LwM2mNodeDecoderTest.java): a String, an
# Integer, and Opaque as base64 in text.
@pytest.mark.parametrize("payload, path, want", [
    (b"MyManufacturer", "/3/0/0", R("/3/0/0", "vs", "MyManufacturer")),
    (b"100", "/3/0/9", R("/3/0/9", "v", 100)),
    (b"AQIDBAU=", "/5/0/0", R("/5/0/0", "vd", b"\x01\x02\x03\x04\x05")),
    (b"-3.25e2", "/3303/0/5700", R("/3303/0/5700", "v", -325.0)),
    (b"1", "/1/0/6", R("/1/0/6", "vb", True)),
    (b"0", "/1/0/6", R("/1/0/6", "vb", False)),
    (b"1367491215", "/3/0/13", R("/3/0/13", "v", 1367491215)),
    (b"21:0", "/0/0/17", R("/0/0/17", "vs", "21:0")),
    (b"4", "/3/0/6/1", R("/3/0/6/1", "v", 4)),
    (b"", "/3/0/0", R("/3/0/0", "vs", "")),
])
def test_plain_text_is_typed_by_the_ddf(payload, path, want):
    assert decode(0, payload, path, OBJECTS) == [want]


def test_plain_text_without_a_definition_stays_text():
    assert decode(0, b"100", "/3/0/9") == [R("/3/0/9", "vs", "100")]


@pytest.mark.parametrize("payload, path", [
    (b"!,-INVALID$_'", "/5/0/0"),  # Leshan: invalid base64 is refused
    (b"1.5", "/3/0/9"), (b"0x10", "/3/0/9"), (b" 1", "/3/0/9"), (b"", "/3/0/9"),
    (b"9223372036854775808", "/3/0/9"), (b"-1", "/1/0/11"),  # /1/0/11 is unsigned
    (b"nan", "/3303/0/5700"), (b"1e999", "/3303/0/5700"), (b"inf", "/3303/0/5700"),
    (b"true", "/1/0/6"), (b"2", "/1/0/6"),
    (b"21", "/0/0/17"), (b"65536:0", "/0/0/17"),
    (b"\xff", "/3/0/0"),  # not UTF-8
    (b"x", "/3/0/4"),  # Reboot is executable: no value
    (b"1", "/3/0"), (b"1", "/3"), (b"1", "/"),  # text carries one resource
    (b"1", "/3/0/x"),
])
def test_malformed_plain_text_is_refused(payload, path):
    with pytest.raises(BadRequest):
        decode(0, payload, path, OBJECTS)


def test_opaque_carries_one_opaque_resource():
    assert decode(42, b"\x00\xff", "/5/0/0", OBJECTS) == [R("/5/0/0", "vd", b"\x00\xff")]
    assert decode(42, b"\x00", "/3/0/9") == [R("/3/0/9", "vd", b"\x00")]  # no definition
    for path in ("/3/0/9", "/5/0"):
        with pytest.raises(CodecError):
            decode(42, b"\x00", path, OBJECTS)


@pytest.mark.parametrize("cf, value, path, want", [
    (0, 100, "/3/0/9", b"100"),
    (0, 3.25, "/3303/0/5700", b"3.25"),
    (0, 21, "/3303/0/5700", b"21.0"),  # an integer for a Float resource
    (0, True, "/1/0/6", b"1"),
    (0, b"\x01\x02\x03\x04\x05", "/5/0/0", b"AQIDBAU="),
    (0, "21:0", "/0/0/17", b"21:0"),
    (0, "Grüße", "/3/0/0", "Grüße".encode()),
    (42, b"\x00\xff", "/5/0/0", b"\x00\xff"),
    (11542, 100, "/3/0/9", bytes.fromhex("C10964")),
    (11544, 100, "/3/0/9", bytes.fromhex("A183030009 1864".replace(" ", ""))),
    (112, 100, "/3/0/9", cbor2.dumps([{0: "/3/0/9", 2: 100}])),
    (110, b"\x00\xff", "/5/0/0", b'[{"n":"/5/0/0","vd":"AP8"}]'),
    (110, "0:1", "/0/0/17", b'[{"n":"/0/0/17","vlo":"0:1"}]'),  # Objlnk: SenML "vlo"
])
def test_encoding_a_single_value(cf, value, path, want):
    assert encode(cf, value, path, OBJECTS) == want


@pytest.mark.parametrize("cf, value, path", [
    (0, "100", "/3/0/9"), (0, 1.5, "/3/0/9"), (0, 1, "/1/0/6"), (0, "x", "/5/0/0"),
    (0, float("inf"), "/3303/0/5700"), (0, "1-2", "/0/0/17"), (0, -1, "/1/0/11"),
    (0, "\ud800", "/3/0/0"), (0, 1, "/3/0/4"),
    (42, 1, "/5/0/0"), (42, b"\x00", "/3/0/9"),
    (0, 1, "/3/0"), (42, b"", "/"), (11542, 1, "/3/0"),  # one value needs a resource path
    (112, float("nan"), "/3/0/9"), (110, 2**64, "/3/0/9"), (110, "\ud800", "/3/0/0"),
    (0, None, "/3/0/9"), (0, [1], "/3/0/9"),
])
def test_encoding_refuses_values_that_do_not_fit(cf, value, path):
    with pytest.raises(BadRequest):
        encode(cf, value, path, OBJECTS)


def test_text_and_opaque_take_exactly_one_record_for_the_path():
    with pytest.raises(CodecError):
        encode(0, [R("/3/0/9", "v", 1), R("/3/0/10", "v", 2)], "/3/0/9")
    with pytest.raises(CodecError):
        encode(0, [R("/3/0/10", "v", 1)], "/3/0/9")
    with pytest.raises(CodecError):
        encode(0, [R("/3/0/9", "v", 1), "x"], "/3/0/9")  # type: ignore[list-item]
    assert encode(0, R("/3/0/9", "v", 7), "/3/0/9") == b"7"


def test_decoders_keep_records_at_or_below_the_request_path():
    pack = cbor2.dumps([{0: "/3/0/9", 2: 1}, {0: "/4/0/2", 2: 5}])
    assert len(decode(112, pack, "/")) == 2
    with pytest.raises(CodecError):
        decode(112, pack, "/3")
    with pytest.raises(CodecError):
        decode(110, json.dumps([{"n": "/3/0/9", "v": 1}]).encode(), "/3/0/10")


RECORDS = [
    R("/3/0/0", "vs", "OMA"), R("/3/0/9", "v", 87), R("/3/0/6/0", "v", 1),
    R("/3/0/6/1", "v", 5), R("/3/0/13", "v", 1367491215), R("/1/0/6", "vb", True),
    R("/5/0/0", "vd", b"\x00\x01"), R("/3303/0/5700", "v", 21.5),
]


@pytest.mark.parametrize("cf", [110, 112, 11542, 11544])
def test_records_round_trip_in_every_multi_value_format(cf):
    for path in ("/", "/3", "/3/0"):
        below = [r for r in RECORDS if r.path.startswith(path.rstrip("/") + "/")]
        if cf == 11542 and path == "/":
            continue  # TLV answers an object or below
        got = decode(cf, encode(cf, below, path, OBJECTS), path, OBJECTS)
        assert sorted(got, key=str) == sorted(below, key=str)


# -- differential and properties ------------------------------------------------------------

ids = st.integers(0, 65534)
paths = st.builds(lambda o, i, r: f"/{o}/{i}/{r}", ids, ids, ids) | st.builds(
    lambda o, i, r, ri: f"/{o}/{i}/{r}/{ri}", ids, ids, ids, ids)
values = st.one_of(
    st.tuples(st.just("v"), st.integers(-(2**63), 2**63 - 1)),
    st.tuples(st.just("v"), st.floats(allow_nan=False, allow_infinity=False)),
    st.tuples(st.just("vs"), st.text(max_size=16)),
    st.tuples(st.just("vb"), st.booleans()),
    st.tuples(st.just("vd"), st.binary(max_size=16)),
)
times = st.none() | st.floats(-1e12, 1e12, allow_nan=False)
_LABEL = {"v": 2, "vs": 3, "vb": 4, "vd": 8}


@FAST
@given(st.lists(st.tuples(paths, values, times), min_size=1, max_size=12))
def test_senml_encoders_differential_against_cbor2_and_json(items):
    records = [R(p, k, v, t) for p, (k, v), t in items]
    data = encode(112, records, "/")
    want = []
    for p, (k, v), t in items:
        entry: dict[int, Any] = {0: p, _LABEL[k]: v}
        if t is not None:
            entry[6] = t
        want.append(entry)
    assert cbor2.loads(data) == want  # cbor2 reads exactly the pack RFC 8428 describes
    assert cbor2.dumps(want) == data  # and writes the same bytes
    assert senml.decode_cbor(data) == [R(p, k, v, None if t is None else float(t))
                                       for p, (k, v), t in items]
    text = encode(110, records, "/")
    pack = json.loads(text)
    for entry, (p, (k, v), _t) in zip(pack, items, strict=True):
        assert entry["n"] == p
        got = entry[k]
        if k == "vd":
            got = base64.urlsafe_b64decode(got + "=" * (-len(got) % 4))
        assert got == v
    assert senml.decode_json(text) == senml.decode_cbor(data)


@FAST
@given(st.sampled_from(ALL), st.binary(max_size=200),
       st.sampled_from(["/", "/3", "/3/0", "/3/0/9", "/3/0/6/1", "/5/0/0", "/3303/0/5700"]),
       st.booleans())
def test_arbitrary_payloads_only_ever_raise_bad_request(cf, data, path, typed):
    try:
        got = decode(cf, data, path, OBJECTS if typed else None)
    except BadRequest as e:
        assert type(e).__module__.startswith("aiotkit.gateway.")
        return
    assert all(isinstance(r, Record) for r in got)


@FAST
@given(st.sampled_from(sorted(codecs.ENCODABLE)),
       st.one_of(st.integers(-(2**70), 2**70), st.floats(), st.text(max_size=8),
                 st.binary(max_size=8), st.booleans(), st.none()),
       st.sampled_from(["/", "/3/0", "/3/0/9", "/3/0/6/1", "/5/0/0", "/0/0/17", "/1/0/6"]),
       st.booleans())
def test_arbitrary_values_encode_or_raise_bad_request(cf, value, path, typed):
    objects = OBJECTS if typed else None
    try:
        data = encode(cf, value, path, objects)
    except BadRequest:
        return
    got = decode(cf, data, path, objects)
    assert len(got) == 1 and got[0].path == path

"""SenML decoding: resolution rules, typed refusals, and properties over arbitrary input."""

from __future__ import annotations

import json
import math
from typing import Any

import cbor2
import pytest
from aiotkit.gateway.errors import BadRequest
from aiotkit.gateway.lwm2m.senml import Record, SenMLError, decode, decode_cbor, decode_json
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

FAST = settings(max_examples=300, deadline=None,
                suppress_health_check=[HealthCheck.too_slow])


def test_base_fields_apply_to_following_records_until_replaced():
    data = cbor2.dumps([
        {-2: "/3313/0/", -3: 1000.0, -4: "m/s2", 0: "5702", 2: 1.5, 6: 0.25},
        {0: "5703", 2: 2},
        {-2: "/3303/0/", -5: 10, 0: "5700", 2: 5, 1: "Cel"},
        {-3: 2000, 0: "5701", 3: "Cel"},
    ])
    assert decode_cbor(data) == [
        Record("/3313/0/5702", "v", 1.5, 1000.25, "m/s2"),
        Record("/3313/0/5703", "v", 2, 1000.0, "m/s2"),
        Record("/3303/0/5700", "v", 15, 1000.0, "Cel"),
        Record("/3303/0/5701", "vs", "Cel", 2000.0, "m/s2"),
    ]


def test_time_is_none_without_t_or_bt_and_values_keep_their_types():
    data = cbor2.dumps([
        {0: "/3/0/0", 3: "aiotkit"},
        {0: "/3/0/9", 2: 87},
        {0: "/5/0/0", 8: b"\x00\xff"},
        {0: "/1/0/6", 4: False},
        {0: "/3/0/11/0", 2: 0, 6: -5},
    ])
    got = decode_cbor(data)
    assert [(r.path, r.kind, r.value, r.time) for r in got] == [
        ("/3/0/0", "vs", "aiotkit", None),
        ("/3/0/9", "v", 87, None),
        ("/5/0/0", "vd", b"\x00\xff", None),
        ("/1/0/6", "vb", False, None),
        ("/3/0/11/0", "v", 0, -5.0),
    ]
    assert isinstance(got[1].value, int) and isinstance(got[3].value, bool)


def test_senml_json_uses_the_same_rules():
    data = json.dumps([
        {"bn": "/3313/0/", "bt": 10, "n": "5702", "v": 0.5},
        {"n": "5703", "v": 1, "t": 1},
        {"n": "5750", "vd": "AP8"},  # base64url, unpadded
    ]).encode()
    assert decode(data, 110) == [
        Record("/3313/0/5702", "v", 0.5, 10.0),
        Record("/3313/0/5703", "v", 1, 11.0),
        Record("/3313/0/5750", "vd", b"\x00\xff", 10.0),
    ]


@pytest.mark.parametrize("pack", [
    [{0: "/3/0/0", 2: 1, -1: 11}],  # bver newer than RFC 8428
    [{0: "/03/0/0", 2: 1}],  # leading zero: two spellings of one path
    [{0: "/3/0/0/0/0", 2: 1}],  # too deep
    [{0: "/3/0/0/", 2: 1}],
    [{-2: "/3/0/", 2: 1}],  # base name alone is an instance, not a resource
    [{0: "/3/0/0", 2: 1, 5: "x"}],  # sum must be a number
    [{0: "/3/0/0", 8: "AAEC"}],  # vd must be a byte string in CBOR
    [{0: "/3/0/0", 4: 1}],  # vb must be a boolean
    [{0: "/3/0/0", -5: 1, 2: 2**63 - 1}],  # bv pushes v past 64 bits
    [{0: "/3/0/0", 2: 1}, "x"],
])
def test_malformed_cbor_packs_are_refused(pack: list[Any]):
    with pytest.raises(SenMLError):
        decode_cbor(cbor2.dumps(pack))


@pytest.mark.parametrize("text", [
    b'[{"n":"/3/0/0","v":Infinity}]',
    b'[{"n":"/3/0/0","v":1e999}]',
    b'[{"n":"/3/0/0","vd":"not base64!"}]',
    b'[{"n":"/3/0/0","vd":"A"}]',
    b'[{"n":"/3/0/0","v":"1"}]',
    b'[{"2":"/3/0/0","v":1}]',
    b'{"n":"/3/0/0","v":1}',
    b"\xff[]",
    b"[" * 100_000,
])
def test_malformed_json_packs_are_refused(text: bytes):
    with pytest.raises(SenMLError):
        decode_json(text)


def test_senml_error_is_a_4_00_request_error():
    with pytest.raises(BadRequest) as info:
        decode_cbor(b"\x80")
    assert str(info.value.code) .startswith("4.00")


# -- properties ------------------------------------------------------------------------

ids = st.integers(0, 65534)
paths = st.builds(lambda o, i, r: f"/{o}/{i}/{r}", ids, ids, ids) | st.builds(
    lambda o, i, r, ri: f"/{o}/{i}/{r}/{ri}", ids, ids, ids, ids)
values = st.one_of(
    st.tuples(st.just("v"), st.integers(-(2**63), 2**63 - 1)),
    st.tuples(st.just("v"), st.floats(allow_nan=False, allow_infinity=False)),
    st.tuples(st.just("vs"), st.text(max_size=20)),
    st.tuples(st.just("vb"), st.booleans()),
    st.tuples(st.just("vd"), st.binary(max_size=20)),
)
times = st.none() | st.floats(-1e12, 1e12, allow_nan=False)
_LABEL = {"v": 2, "vs": 3, "vb": 4, "vd": 8}


@FAST
@given(st.lists(st.tuples(paths, values, times), min_size=1, max_size=20), st.booleans())
def test_valid_cbor_packs_round_trip(records, use_base_name):
    pack = []
    for path, (kind, value), t in records:
        rec: dict[int, Any] = {_LABEL[kind]: value}
        if use_base_name:
            head, _, tail = path.rpartition("/")
            rec[-2] = head + "/"
            rec[0] = tail
        else:
            rec[0] = path
        if t is not None:
            rec[6] = t
        pack.append(rec)
    got = decode_cbor(cbor2.dumps(pack))
    want = [(p, k, v, None if t is None else float(t)) for p, (k, v), t in records]
    assert [(r.path, r.kind, r.value, r.time) for r in got] == want


@FAST
@given(st.binary(max_size=512))
def test_arbitrary_bytes_only_ever_raise_senml_error(data):
    for decoder in (decode_cbor, decode_json):
        try:
            records = decoder(data)
        except SenMLError:
            continue
        assert all(isinstance(r, Record) for r in records)


cbor_items = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats()
    | st.text(max_size=12) | st.binary(max_size=12),
    lambda inner: st.lists(inner, max_size=5)
    | st.dictionaries(st.integers(-8, 10) | st.text(max_size=3), inner, max_size=5),
    max_leaves=25,
)


@FAST
@given(st.lists(cbor_items, max_size=6))
def test_arbitrary_well_formed_cbor_only_ever_raises_senml_error(pack):
    try:
        records = decode_cbor(cbor2.dumps(pack))
    except SenMLError:
        return
    for r in records:
        assert r.time is None or math.isfinite(r.time)
        assert not isinstance(r.value, float) or math.isfinite(r.value)


# SenML-shaped maps: the labels a node and other clients use, values of every type,
# so both the fast path's accepting and its deferring branches are reached.
senml_values = (st.none() | st.booleans() | st.integers(-(2**64), 2**64) | st.floats()
                | st.text(max_size=8) | st.binary(max_size=8)
                | st.sampled_from(["/3/0/1", "/33000/0/", "1", "/3/0", "/70000/0/0"]))
senml_maps = st.dictionaries(st.sampled_from([-6, -5, -4, -3, -2, -1, 0, 1, 2, 3, 4, 5, 6, 7, 8]),
                             senml_values, max_size=5)
senml_records = st.one_of(
    senml_maps,
    st.builds(lambda p, v, t: {0: p, **v, **({} if t is None else {6: t})},
              paths, values.map(lambda kv: {_LABEL[kv[0]]: kv[1]}), times),
)


@FAST
@given(st.lists(senml_records, min_size=1, max_size=8),
       st.sampled_from(["", "/3303/0/", "/3/"]))
def test_fast_cbor_path_agrees_with_the_general_decoder(records, bn):
    from aiotkit.gateway.lwm2m import senml

    if bn and records and isinstance(records[0], dict):
        records[0] = {-2: bn, **records[0]}
    fast = senml._resolve_plain_cbor(records, 1000)
    try:
        slow = senml._resolve(records, senml._BY_CBOR, 1000, senml._cbor_bytes)
    except SenMLError:
        assert fast is None  # the fast path never accepts what the general one refuses
        return
    assert fast is None or fast == slow

"""LwM2M-CBOR: Anjay's test vectors, DDF typing, refusals, differential against cbor2."""

from __future__ import annotations

from typing import Any

import cbor2
import pytest
from aiotkit.gateway.errors import BadRequest
from aiotkit.gateway.lwm2m.ddf import load_shipped
from aiotkit.gateway.lwm2m.lwm2mcbor import LwM2MCBORError, decode, encode
from aiotkit.gateway.lwm2m.senml import Record
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

FAST = settings(max_examples=100, deadline=None,
                suppress_health_check=[HealthCheck.too_slow])
OBJECTS = load_shipped()


def R(path: str, kind: str, value: object) -> Record:
    return Record(path, kind, value)  # type: ignore[arg-type]


R1 = R("/13/26/1", "v", 42)
R2 = R("/13/26/2", "v", 21)
BYTES16 = bytes.fromhex("00112233445566778899AABBCCDDEEFF")

# Decoder vectors from AVSystem Anjay, tests/core/io/lwm2m_cbor_in.c (commit e13fdc2):
# the CBOR diagnostic notation is theirs.
ANJAY_VALID = [
    ("A1830D181A01182A", "/13/26/1", [R1]),  # {[13, 26, 1]: 42}
    ("A1830D181A01F5", "/13/26/1", [R("/13/26/1", "vb", True)]),
    ("BF9F0D181A01FF182AFF", "/13/26/1", [R1]),  # {_ [_ 13, 26, 1]: 42}
    ("A10DA1181AA101182A", "/13/26/1", [R1]),  # {13: {26: {1: 42}}}
    ("A1810DA181181AA18101182A", "/13/26/1", [R1]),  # {[13]: {[26]: {[1]: 42}}}
    ("BF9F0DFFBF9F181AFFBF9F01FF182AFFFFFF", "/13/26/1", [R1]),
    # {[13]: {[26]: {[1]: {[2]: 4([-1, 45])}}}}: a decimal fraction
    ("A1810DA181181AA18101A18102C48220182D", "/13/26/1/2", [R("/13/26/1/2", "v", 4.5)]),
    ("A1820D181AA201182A0215", "/13/26", [R1, R2]),  # {[13, 26]: {1: 42, 2: 21}}
    ("A2830D181A01182A830D181A0215", "/13/26", [R1, R2]),
    ("A2820D181AA101182A830D181A0215", "/13/26", [R1, R2]),
    ("A2830D181A01182A820D181AA1810215", "/13/26", [R1, R2]),
    ("A1830D181A0150" + BYTES16.hex(), "/13/26/1", [R("/13/26/1", "vd", BYTES16)]),
    ("A1830D181A015F48" + BYTES16[:8].hex() + "48" + BYTES16[8:].hex() + "FF", "/13/26/1",
     [R("/13/26/1", "vd", BYTES16)]),
    ("A1830D181A0170" + b"c--cossiezepsulo".hex(), "/13/26/1",
     [R("/13/26/1", "vs", "c--cossiezepsulo")]),
    # {[13, 26]: {1: 1, 2: -1, 3: 2.5 (half float), 4: "test", 5: h'11223344',
    #  6: "12:34", 7: 1}}
    ("A1820D181AA70101022003F94100046474657374054411223344066531323A33340701", "/13/26",
     [R("/13/26/1", "v", 1), R("/13/26/2", "v", -1), R("/13/26/3", "v", 2.5),
      R("/13/26/4", "vs", "test"), R("/13/26/5", "vd", bytes.fromhex("11223344")),
      R("/13/26/6", "vs", "12:34"), R("/13/26/7", "v", 1)]),
    # {13: {26: {1: 1}}, 14: {27: {2: 2}}}, definite and indefinite: a composite read
    ("A20DA1181AA101010EA1181BA10202", "/", [R("/13/26/1", "v", 1), R("/14/27/2", "v", 2)]),
    ("BF0DBF181ABF0101FFFF0EBF181BBF0202FFFFFF", "/",
     [R("/13/26/1", "v", 1), R("/14/27/2", "v", 2)]),
    ("BF9F0DFFBF9F181AFFBF9F01FF01FFFF9F0EFFBF9F181BFFBF9F02FF02FFFFFF", "/",
     [R("/13/26/1", "v", 1), R("/14/27/2", "v", 2)]),
]

ANJAY_INVALID = [
    ("A1820D181AA11A0001000005", "/13/26"),  # {[13, 26]: {65536: 5}}
    ("A1830D181A1A0001000005", "/13/26"),  # {[13, 26, 65536]: 5}
    ("A1850D181A03040505", "/13/26"),  # {[13, 26, 3, 4, 5]: 5}
    ("A1830D181A01A20205820304 05".replace(" ", ""), "/13/26/1/2"),  # {.., [3, 4]: 6}
    ("A10DA1181AA101A102A10304", "/13/26/1/2"),  # {13: {26: {1: {2: {3: 4}}}}}
    ("A20DA180181AA18001182A", "/"),  # {13: {[]: 26}, {[]: 1}: 42}
    ("A1830D181A01182A", "/14"),  # outside the request path, four ways
    ("A1830D181A01182A", "/13/27"),
    ("A1830D181A01182A", "/13/26/2"),
    ("A1830D181A01182A", "/13/26/1/69"),
    ("A1830DFB3FD0A3D70A3D70A401182A", "/"),  # {[13, 0.26, 1]: 42}
    ("A1FB3FC0A3D70A3D70A4A182181A01182A", "/"),  # {0.13: {[26, 1]: 42}}
    ("A10DA1623236A101182A", "/"),  # {13: {"26": {1: 42}}}
    ("00", "/"),  # not a map
    ("8401020304", "/"),  # [1, 2, 3, 4]
    ("A10DA1181A81A101182A", "/"),  # {13: {26: [{1: 42}]}}
    ("A1820D181AA1", "/"),  # cut short
    ("A1830D181A01A202F60305", "/13/26/1"),  # null: Anjay reads it, the gateway does not
    ("A1840D181A010 2 05".replace(" ", ""), "/13/26/1/3"),  # an instance outside the path
]


@pytest.mark.parametrize("data, path, want", ANJAY_VALID)
def test_anjay_decoder_vectors(data, path, want):
    assert decode(bytes.fromhex(data), path) == want


@pytest.mark.parametrize("data, path", ANJAY_INVALID)
def test_anjay_refused_vectors_are_refused(data, path):
    with pytest.raises(LwM2MCBORError):
        decode(bytes.fromhex(data), path)


# Encoder vectors from Anjay, tests/core/io/lwm2m_cbor_out.c (commit 5365fcd). Anjay
# writes indefinite-length maps, this encoder definite ones: the same CBOR data item.
@pytest.mark.parametrize("records, path, anjay, ours", [
    ([R1], "/13/26/1", "BF830D181A01182AFF", "A1830D181A01182A"),
    ([R1, R2], "/13/26", "BF820D181ABF01182A0215FFFF", "A1820D181AA201182A0215"),
    ([R1, R("/13/26/3/21", "v", 69.68), R("/13/26/3/37", "vb", False)], "/13/26",
     "BF820D181ABF01182A03BF15FB40516B851EB851EC1825F4FFFFFF",
     "A1820D181AA201182A03A215FB40516B851EB851EC1825F4"),
    ([R1, R2, R("/14/27/1", "v", 43), R("/14/27/2", "v", 22)], "/",
     "BF0DBF181ABF01182A0215FFFF0EBF181BBF01182B0216FFFFFF",
     "A20DA1181AA201182A02150EA1181BA201182B0216"),
])
def test_anjay_encoder_vectors(records, path, anjay, ours):
    got = encode(records, path)
    assert got.hex().upper() == ours
    assert cbor2.loads(got) == cbor2.loads(bytes.fromhex(anjay))
    assert decode(got, path) == decode(bytes.fromhex(anjay), path) == records


def test_ddf_types_time_objlnk_and_number_coercion():
    data = cbor2.dumps({(3, 0): {13: cbor2.CBORTag(1, 1367491215), 9: 87.0, 0: "OMA"},
                        (3303, 0, 5700): 21, (0, 0, 17): "21:0"})
    got = decode(data, "/", OBJECTS)
    assert got == [R("/3/0/13", "v", 1367491215), R("/3/0/9", "v", 87),
                   R("/3/0/0", "vs", "OMA"), R("/3303/0/5700", "v", 21.0),
                   R("/0/0/17", "vs", "21:0")]
    assert type(got[1].value) is int and type(got[3].value) is float
    back = encode(got, "/", OBJECTS)
    assert bytes.fromhex("0DC11A5182428F") in back  # 13: 1(1367491215), epoch time tag
    assert sorted(decode(back, "/", OBJECTS), key=str) == sorted(got, key=str)


@pytest.mark.parametrize("item", [
    {(3, 0, 9): 87.5},  # an Integer resource given a fraction
    {(3, 0, 9): "87"},
    {(3, 0, 0): 1},  # a String resource given an integer
    {(0, 0, 17): "21-0"},  # not an object link
    {(1, 0, 6): 1},  # Boolean
    {(5, 0, 0): "AQI="},  # Opaque given text
    {(3, 0, 6): 1},  # /3/0/6 is multiple-instance
    {(3, 0, 9, 0): 1},  # /3/0/9 is single-instance
    {(3, 0, 9): float("inf")},
    {(3, 0, 9): 2**64},
    {(3, 0, 4): b""},  # Reboot is executable
    {(3, 0, 9): cbor2.CBORTag(99, 1)},  # an unknown tag
    {(3, 0, 9): [1]},
    {(3, 0, 9): 1, (3, 0): {9: 2}},  # the same path twice
    {(3, 0, 6): 1, (3, 0, 6, 0): 2},  # a resource as value and as instances
    {(3, 0, 9): cbor2.CBORSimpleValue(16)},
    {(3, 0, 9): cbor2.undefined},
])
def test_values_that_do_not_fit_are_refused(item):
    with pytest.raises(LwM2MCBORError):
        decode(cbor2.dumps(item), "/", OBJECTS)


def test_duplicate_map_keys_and_trailing_bytes_are_refused():
    with pytest.raises(LwM2MCBORError):
        decode(bytes.fromhex("A2830D181A01182A830D181A0115"), "/")  # [13, 26, 1] twice
    with pytest.raises(LwM2MCBORError):
        decode(bytes.fromhex("A1830D181A01182A00"), "/")


@pytest.mark.parametrize("records, path", [
    ([R("/3/0/9", "v", 1)], "/4"),
    ([R("/3/0", "v", 1)], "/"),
    ([R("/3/0/9", "v", 1), R("/3/0/9", "v", 2)], "/3"),
    ([R("/3/0/6", "v", 1), R("/3/0/6/0", "v", 2)], "/"),
    ([R("/3/0/9", "vs", "1")], "/"),  # with the DDF: wrong type
    ([R("/3/0/9", "v", float("nan"))], "/"),
    ([R("/3/0/0", "vs", "\ud800")], "/"),  # a lone surrogate cannot be UTF-8
])
def test_encoding_refuses_what_it_cannot_say(records, path):
    with pytest.raises(LwM2MCBORError):
        encode(records, path, OBJECTS)


def test_error_is_a_4_00_request_error():
    with pytest.raises(BadRequest) as info:
        decode(b"\x00", "/")
    assert str(info.value.code).startswith("4.00")


# -- differential against cbor2 and properties --------------------------------------------

ids = st.integers(0, 65534)
values = st.one_of(
    st.tuples(st.just("v"), st.integers(-(2**63), 2**63 - 1)),
    st.tuples(st.just("v"), st.floats(allow_nan=False, allow_infinity=False)),
    st.tuples(st.just("vs"), st.text(max_size=12)),
    st.tuples(st.just("vb"), st.booleans()),
    st.tuples(st.just("vd"), st.binary(max_size=12)),
)
leaf_paths = st.lists(ids, min_size=3, max_size=4).map(tuple)


def _nest(flat: dict[tuple[int, ...], Any], splits: list[int]) -> dict[Any, Any]:
    """A cbor2-ready tree for ``flat``: each path is cut into keys at ``splits``."""
    tree: dict[Any, Any] = {}
    for n, (path, value) in enumerate(flat.items()):
        cut = sorted({min(s, len(path) - 1) for s in splits[n % len(splits):][:2]} - {0})
        parts = [path[a:b] for a, b in zip([0, *cut], [*cut, len(path)], strict=True)]
        node = tree
        for part in parts[:-1]:
            key = part[0] if len(part) == 1 else part
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                return {}
        last = parts[-1]
        node[last[0] if len(last) == 1 else last] = value
    return tree


@FAST
@given(st.dictionaries(leaf_paths, values, min_size=1, max_size=12),
       st.lists(st.integers(0, 4), min_size=1, max_size=4))
def test_differential_cbor2_trees_decode_to_their_leaves(flat, splits):
    # Drop resources that also have instances: LwM2M-CBOR cannot say both.
    flat = {p: v for p, v in flat.items()
            if not (len(p) == 3 and any(q[:3] == p for q in flat if len(q) == 4))}
    tree = _nest({p: v[1] for p, v in flat.items()}, splits)
    if not tree:
        return
    got = decode(cbor2.dumps(tree), "/")
    want = {"/" + "/".join(map(str, p)): v for p, v in flat.items()}
    assert len(got) == len(want)
    assert {r.path: (r.kind, r.value) for r in got} == want


@FAST
@given(st.dictionaries(leaf_paths, values, min_size=1, max_size=12), st.integers(0, 3))
def test_encoder_output_is_what_cbor2_reads_and_round_trips(flat, level):
    flat = {p: v for p, v in flat.items()
            if not (len(p) == 3 and any(q[:3] == p for q in flat if len(q) == 4))}
    first = next(iter(flat))
    base = first[:level]
    records = [R("/" + "/".join(map(str, p)), k, v) for p, (k, v) in flat.items()
               if p[:level] == base]
    data = encode(records, base)
    item = cbor2.loads(data)  # cbor2 is the independent reader
    assert isinstance(item, dict)
    assert sorted(decode(data, base), key=lambda r: r.path) == \
        sorted(records, key=lambda r: r.path)


@FAST
@given(st.binary(max_size=200), st.sampled_from(["/", "/3", "/3/0", "/3/0/6", "/13/26/1/2"]))
def test_arbitrary_bytes_only_ever_raise_lwm2mcbor_error(data, path):
    for objects in (None, OBJECTS):
        try:
            decode(data, path, objects)
        except LwM2MCBORError:
            pass


cbor_items = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats()
    | st.text(max_size=6) | st.binary(max_size=6) | st.integers(0, 70000),
    lambda inner: st.lists(inner, max_size=4).map(tuple)
    | st.dictionaries(st.integers(-2, 70000) | st.lists(st.integers(0, 66000), max_size=5)
                      .map(tuple), inner, max_size=4),
    max_leaves=12,
)


@FAST
@given(st.dictionaries(st.integers(0, 65536) | st.lists(st.integers(0, 5), max_size=5)
                       .map(tuple), cbor_items, max_size=5))
def test_arbitrary_well_formed_maps_only_ever_raise_lwm2mcbor_error(item):
    data = cbor2.dumps(item)
    for objects in (None, OBJECTS):
        try:
            decode(data, "/", objects)
        except LwM2MCBORError:
            pass


@FAST
@given(st.integers(0, 200), st.integers(1, 255))
def test_mutated_vectors_only_ever_raise_lwm2mcbor_error(pos, bits):
    for data, path, _want in ANJAY_VALID:
        b = bytearray.fromhex(data)
        b[pos % len(b)] ^= bits
        try:
            decode(bytes(b), path)
        except LwM2MCBORError:
            pass

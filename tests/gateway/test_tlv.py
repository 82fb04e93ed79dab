"""OMA-TLV: the LwM2M spec's examples byte for byte, typed values, refusals, properties."""

from __future__ import annotations

import struct

import pytest
from aiotkit.gateway.errors import BadRequest
from aiotkit.gateway.lwm2m import tlv
from aiotkit.gateway.lwm2m.ddf import ObjectDef, ResourceDef, load_shipped
from aiotkit.gateway.lwm2m.senml import Record
from aiotkit.gateway.lwm2m.tlv import TLV, TLVError, decode, encode
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

FAST = settings(max_examples=150, deadline=None,
                suppress_health_check=[HealthCheck.too_slow])
OBJECTS = load_shipped()

# The LwM2M TS (1.0 §6.4.3 / 1.1 §7.4.3) TLV examples, as Eclipse Leshan's decoder test
# carries them (eclipse-leshan/leshan, leshan-core/src/test/java/org/eclipse/leshan/core/
# node/codec/LwM2mNodeDecoderTest.java, commit 02f0eff): Device /3/0 as resource TLVs
# ("spec §4.3.1"), the same wrapped in an object instance TLV (§4.3.2 A), Access Control
# with two instances (§4.3.2 B), Server with one (§4.3.2 C), and the object link examples
# for objects 65 and 66 (§4.3.3, figure 28).
DEVICE = bytes.fromhex(
    "C800144F70656E204D6F62696C6520416C6C69616E6365"
    "C801164C69676874776569676874204D324D20436C69656E74"
    "C80209333435303030313233"
    "C303312E30"
    "86064100014101 05".replace(" ", "")
    + "88070842000ED842011388"
    "870841007D42010384"
    "C10964"
    "C10A0F"
    "830B410000"
    "C40D5182428F"
    "C60E2B30323A3030"
    "C11055")
DEVICE_IN_INSTANCE = bytes.fromhex("080079") + DEVICE
ACL = bytes.fromhex(
    "08000EC10001C101008302417F07C1037F080212C10003C101008702417F0761013601C1037F")
SERVER = bytes.fromhex("08000FC10001C40100015180C10601C10755")
OBJ65 = bytes.fromhex("88000C440000420000440100420001C8010D38363133383030373535353030"
                      "C40212345678")
OBJ66 = bytes.fromhex(
    "080026C8000B6D79536572766963652031C8010F496E7465726E65742E31352E323334C40200430000"
    "080126C8000B6D79536572766963652032C8010F496E7465726E65742E31352E323335C402FFFFFFFF")


def R(path: str, kind: str, value: object) -> Record:
    return Record(path, kind, value)  # type: ignore[arg-type]


DEVICE_RECORDS = [
    R("/3/0/0", "vs", "Open Mobile Alliance"),
    R("/3/0/1", "vs", "Lightweight M2M Client"),
    R("/3/0/2", "vs", "345000123"),
    R("/3/0/3", "vs", "1.0"),
    R("/3/0/6/0", "v", 1), R("/3/0/6/1", "v", 5),
    R("/3/0/7/0", "v", 3800), R("/3/0/7/1", "v", 5000),
    R("/3/0/8/0", "v", 125), R("/3/0/8/1", "v", 900),
    R("/3/0/9", "v", 100),
    R("/3/0/10", "v", 15),
    R("/3/0/11/0", "v", 0),
    R("/3/0/13", "v", 1367491215),  # Time: 2013-05-02T10:40:15Z
    R("/3/0/14", "vs", "+02:00"),
    R("/3/0/16", "vs", "U"),
]


def _res(rid: int, rtype: str, multiple: bool = False) -> ResourceDef:
    return ResourceDef(rid, f"res{rid}", "R", multiple, False, rtype)  # type: ignore[arg-type]


# Objects 65 and 66 of the spec's object link example (Leshan defines them the same way).
LINK_OBJECTS = {
    65: ObjectDef(65, "object link tests 65", "", True, False, {
        0: _res(0, "objlnk", True), 1: _res(1, "string"), 2: _res(2, "integer")}),
    66: ObjectDef(66, "object link tests 66", "", True, False, {
        0: _res(0, "string"), 1: _res(1, "string"), 2: _res(2, "objlnk")}),
}


@pytest.mark.parametrize("payload, path", [
    (DEVICE, "/3/0"), (DEVICE_IN_INSTANCE, "/3/0"), (DEVICE_IN_INSTANCE, "/3"),
    (DEVICE, "/3"),  # resource TLVs at object level: instance 0, as Leshan reads them
    (DEVICE, (3, 0)),
])
def test_spec_device_example_decodes_to_typed_records(payload, path):
    assert decode(payload, path, OBJECTS) == DEVICE_RECORDS


def test_spec_examples_encode_back_byte_for_byte():
    assert encode(DEVICE_RECORDS, "/3/0", OBJECTS) == DEVICE
    assert encode(DEVICE_RECORDS, "/3", OBJECTS) == DEVICE_IN_INSTANCE
    for payload, path, objects in [(ACL, "/2", OBJECTS), (SERVER, "/1", OBJECTS),
                                   (OBJ65, "/65/0", LINK_OBJECTS),
                                   (OBJ66, "/66", LINK_OBJECTS)]:
        assert encode(decode(payload, path, objects), path, objects) == payload


def test_spec_access_control_and_server_examples():
    assert decode(ACL, "/2", OBJECTS) == [
        R("/2/0/0", "v", 1), R("/2/0/1", "v", 0), R("/2/0/2/127", "v", 7),
        R("/2/0/3", "v", 127),
        R("/2/2/0", "v", 3), R("/2/2/1", "v", 0), R("/2/2/2/127", "v", 7),
        R("/2/2/2/310", "v", 1),  # 16-bit resource instance id (type byte 0x61)
        R("/2/2/3", "v", 127),
    ]
    assert decode(SERVER, "/1", OBJECTS) == [
        R("/1/0/0", "v", 1), R("/1/0/1", "v", 86400), R("/1/0/6", "vb", True),
        R("/1/0/7", "vs", "U"),
    ]


def test_spec_object_link_examples():
    assert decode(OBJ65, "/65/0", LINK_OBJECTS) == [
        R("/65/0/0/0", "vs", "66:0"), R("/65/0/0/1", "vs", "66:1"),
        R("/65/0/1", "vs", "8613800755500"), R("/65/0/2", "v", 0x12345678),
    ]
    got = decode(OBJ66, "/66", LINK_OBJECTS)
    assert got[2] == R("/66/0/2", "vs", "67:0")
    assert got[5] == R("/66/1/2", "vs", "65535:65535")  # the null object link


def test_without_a_definition_values_stay_bytes():
    got = decode(DEVICE, "/3/0")
    assert got[0] == R("/3/0/0", "vd", b"Open Mobile Alliance")
    assert got[13] == R("/3/0/13", "vd", bytes.fromhex("5182428F"))
    assert encode(got, "/3/0") == DEVICE  # bytes go back as they came


@pytest.mark.parametrize("payload, path, want", [
    (bytes.fromhex("C10964"), "/3/0/9", [R("/3/0/9", "v", 100)]),
    (bytes.fromhex("86064100014101 05".replace(" ", "")), "/3/0/6",
     [R("/3/0/6/0", "v", 1), R("/3/0/6/1", "v", 5)]),
    (bytes.fromhex("4100014101 05".replace(" ", "")), "/3/0/6",  # bare resource instances
     [R("/3/0/6/0", "v", 1), R("/3/0/6/1", "v", 5)]),
    (bytes.fromhex("410105"), "/3/0/6/1", [R("/3/0/6/1", "v", 5)]),
    (b"", "/3", []), (b"", "/3/0", []),
    (bytes.fromhex("0000"), "/3", []),  # an empty instance
    (bytes.fromhex("8006"), "/3/0/6", []),  # a multiple resource without instances
])
def test_every_request_level(payload, path, want):
    assert decode(payload, path, OBJECTS) == want


@pytest.mark.parametrize("value, rtype, raw", [
    (0, "integer", "00"), (-128, "integer", "80"), (127, "integer", "7F"),
    (128, "integer", "0080"), (-129, "integer", "FF7F"), (32767, "integer", "7FFF"),
    (32768, "integer", "00008000"), (2**31 - 1, "integer", "7FFFFFFF"),
    (2**31, "integer", "0000000080000000"), (-(2**63), "integer", "8000000000000000"),
    (255, "unsigned", "FF"), (256, "unsigned", "0100"), (2**32 - 1, "unsigned", "FFFFFFFF"),
    (1367491215, "time", "5182428F"),
    (1.5, "float", "3FC00000"), (0.1, "float", "3FB999999999999A"), (-2.0, "float", "C0000000"),
    (True, "boolean", "01"), (False, "boolean", "00"),
    ("0:65535", "objlnk", "0000FFFF"), ("Grüße", "string", "4772C3BC C39F65".replace(" ", "")),
    (b"\x00\xff", "opaque", "00FF"), ("</3/0>", "corelnk", "3C2F332F303E"),
])
def test_values_are_encoded_as_appendix_c_says(value, rtype, raw):
    assert tlv.encode_value(value, rtype).hex().upper() == raw
    _kind, back = tlv.decode_value(bytes.fromhex(raw), rtype)
    assert back == value and type(back) is type(value)


def test_decoder_accepts_longer_encodings_than_the_encoder_writes():
    assert tlv.decode_value(bytes.fromhex("0000000000000064"), "integer") == ("v", 100)
    assert tlv.decode_value(struct.pack(">d", 1.5), "float") == ("v", 1.5)
    # 16-bit identifier and 24-bit length for a 1-byte value still parse
    assert decode(bytes.fromhex("F800090000 0164".replace(" ", "")), "/3/0/9", OBJECTS) \
        == [R("/3/0/9", "v", 100)]


@pytest.mark.parametrize("length, header", [
    (0, "C005"), (7, "C705"), (8, "C80508"), (255, "C805FF"), (256, "D0050100"),
    (65535, "D005FFFF"), (65536, "D805010000"),
])
def test_length_field_is_the_shortest(length, header):
    assert tlv.serialize([TLV(tlv.RESOURCE_VALUE, 5, bytes(length))]).hex().upper() \
        .startswith(header)


def test_identifier_field_is_the_shortest():
    assert tlv.serialize([TLV(tlv.RESOURCE_VALUE, 255, b"")]).hex() == "c0ff"
    assert tlv.serialize([TLV(tlv.RESOURCE_VALUE, 256, b"")]).hex() == "e00100"


@pytest.mark.parametrize("payload, path", [
    ("0011223344556677889900", "/3"),  # Leshan's decode_broken_tlv
    ("C8", "/3/0"),  # header cut short
    ("C80014", "/3/0"),  # 20 bytes announced, none there
    ("E8FFFF0100", "/3/0"),  # id 65535 is reserved
    ("0802C10100", "/3/0"),  # instance 2 answering /3/0
    ("C10164", "/3/0/9"),  # resource 1 answering /3/0/9
    ("0000", "/3/0/9"),  # an object instance at resource level
    ("080303410000", "/3"),  # a resource instance inside an object instance
    ("8303C10001", "/3/0"),  # a resource inside a multiple resource
    ("410001", "/3/0"),  # a bare resource instance at instance level
    ("C10001", "/3/0/9/0"),  # a resource where a resource instance belongs
    ("00000000", "/3"),  # the same object instance twice
    ("C10901C10902", "/3/0"),  # the same resource twice (Leshan refuses this too)
    ("83064100018306410002", "/3/0"),  # the same resource twice
    ("8606410001410002", "/3/0"),  # the same resource instance twice
    ("", "/3/0/9"),  # nothing at resource level
    ("C309000000", "/3/0"),  # a 3-byte integer
    ("C2060102", "/1/0"),  # a 2-byte boolean
    ("C10602", "/1/0"),  # boolean 2
    ("E516448081828384", "/3303/0"),  # a 5-byte float (/3303/0/5700, 16-bit id)
    ("C200FFFE", "/3/0"),  # string that is not UTF-8
    ("C311000102", "/0/0"),  # an object link of 3 bytes (/0/0/17 is Objlnk)
    ("C109010000", "/3"),  # resource and object instance TLVs mixed at object level
    ("C10601", "/3/0"),  # a single value for multi-instance resource /3/0/6
    ("8309410064", "/3/0"),  # resource instances for single-instance resource /3/0/9
])
def test_malformed_payloads_are_refused(payload, path):
    with pytest.raises(TLVError):
        decode(bytes.fromhex(payload), path, OBJECTS)


def test_integers_stop_at_64_bits_signed():
    data = bytes.fromhex("C80D087FFFFFFFFFFFFFFF")  # Time /3/0/13 = 2**63 - 1
    assert decode(data, "/3/0", OBJECTS) == [R("/3/0/13", "v", 2**63 - 1)]
    with pytest.raises(TLVError):  # an unsigned 2**63 would not fit the store
        tlv.decode_value(bytes.fromhex("8000000000000000"), "unsigned")


def test_float_values_must_be_finite_and_4_or_8_bytes():
    for raw in ("7FC00000", "7FF0000000000000", "0000", "000000000000"):
        with pytest.raises(TLVError):
            tlv.decode_value(bytes.fromhex(raw), "float")


@pytest.mark.parametrize("records, path", [
    ([R("/3/0/9", "v", 100)], "/4"),  # outside the path
    ([R("/3/0", "v", 1)], "/3"),  # not a resource
    ([R("/3/0/9", "v", 1), R("/3/0/9", "v", 2)], "/3/0"),
    ([R("/3/0/6", "v", 1)], "/3/0"),  # /3/0/6 is multiple-instance
    ([R("/3/0/9/0", "v", 1)], "/3/0"),  # /3/0/9 is single-instance
    ([R("/3/0/9", "vs", "100")], "/3/0"),  # wrong type for an Integer resource
    ([R("/3/0/9", "v", 2**63)], "/3/0"),
    ([R("/1/0/6", "v", 1)], "/1/0"),  # Boolean wants a bool
    ([R("/0/0/17", "vs", "3-0")], "/0/0"),  # not an object link
    ([R("/3/0/4", "vd", b"")], "/3/0"),  # Reboot is executable: no value
    ([R("/3/0/9", "v", 1)], "/"),  # TLV needs at least an object
    ([], "/3/0/9"),  # nothing to encode at resource level
    ([R("/3303/0/5700", "v", float("nan"))], "/3303/0"),
])
def test_encoding_refuses_what_tlv_cannot_say(records, path):
    with pytest.raises(TLVError):
        encode(records, path, OBJECTS)


def test_tlv_error_is_a_4_00_request_error():
    with pytest.raises(BadRequest) as info:
        decode(b"\xc8", "/3/0")
    assert str(info.value.code).startswith("4.00")


# -- properties ---------------------------------------------------------------------------

request_paths = st.lists(st.integers(0, 70000), min_size=0, max_size=5).map(tuple) | \
    st.sampled_from(["/3", "/3/0", "/3/0/6", "/3/0/6/1", "/1", "/2/0", "/5/0/0", "x"])


@FAST
@given(st.binary(max_size=300), request_paths, st.booleans())
def test_arbitrary_bytes_only_ever_raise_tlv_error(data, path, typed):
    try:
        got = decode(data, path, OBJECTS if typed else None)
    except TLVError:
        return
    assert all(isinstance(r, Record) for r in got)


def _mutations(seed: bytes) -> st.SearchStrategy[bytes]:
    def flip(args: tuple[int, int]) -> bytes:
        pos, bits = args
        b = bytearray(seed)
        b[pos % len(b)] ^= bits
        return bytes(b)
    return st.one_of(
        st.tuples(st.integers(0, len(seed) - 1), st.integers(1, 255)).map(flip),
        st.integers(0, len(seed)).map(lambda n: seed[:n]),
        st.tuples(st.integers(0, len(seed)), st.binary(min_size=1, max_size=4)).map(
            lambda a: seed[:a[0]] + a[1] + seed[a[0]:]),
    )


@FAST
@given(st.one_of(_mutations(DEVICE_IN_INSTANCE), _mutations(ACL), _mutations(OBJ66)),
       st.sampled_from(["/3", "/3/0", "/2", "/66", "/2/2"]))
def test_mutated_spec_payloads_only_ever_raise_tlv_error(data, path):
    try:
        decode(data, path, OBJECTS)
    except TLVError:
        pass


ids = st.integers(0, 65534)
TYPED = {
    "integer": st.integers(-(2**63), 2**63 - 1),
    "time": st.integers(-(2**63), 2**63 - 1),
    "unsigned": st.integers(0, 2**63 - 1),
    "float": st.floats(allow_nan=False, allow_infinity=False),
    "boolean": st.booleans(),
    "string": st.text(max_size=20),
    "corelnk": st.text(max_size=20),
    "opaque": st.binary(max_size=40),
    "objlnk": st.tuples(st.integers(0, 65535), st.integers(0, 65535)).map(
        lambda t: f"{t[0]}:{t[1]}"),
}


@FAST
@given(st.dictionaries(ids, st.tuples(st.sampled_from(sorted(TYPED)), st.booleans()),
                       min_size=1, max_size=4),
       st.lists(ids, min_size=1, max_size=3, unique=True), st.integers(1, 4), st.data())
def test_typed_records_round_trip_through_encode_and_decode(resources, instances, level,
                                                            data):
    """Any tree of typed values encodes and decodes back, at every request level."""
    oid = 40000
    records: list[Record] = []
    for iid in instances:
        for rid, (rtype, multiple) in resources.items():
            riids = data.draw(st.lists(ids, min_size=1, max_size=3, unique=True)) \
                if multiple else [None]
            for riid in riids:
                path = f"/{oid}/{iid}/{rid}" + ("" if riid is None else f"/{riid}")
                records.append(R(path, "v", data.draw(TYPED[rtype])))
    objects = {oid: ObjectDef(oid, "t", "", True, False, {
        rid: _res(rid, rtype, multiple) for rid, (rtype, multiple) in resources.items()})}
    base = records[-1].path.split("/")[1:][:level]
    path = "/" + "/".join(base)
    below = [r for r in records if (r.path + "/").startswith(path + "/")]
    got = decode(encode(below, path, objects), path, objects)
    assert sorted((r.path, r.value) for r in got) == sorted((r.path, r.value) for r in below)

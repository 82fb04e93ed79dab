"""Random truncations and byte flips never pass, and never raise anything but
ImageRejected (no IndexError, struct.error, ValueError from a parser that trusted a
length)."""

from __future__ import annotations

from aiotkit.ota.errors import ImageRejected
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from otakit import check, keyset, make

TRUSTED = keyset("ed-a", "ec-a")
IMAGES = [make("ed-a"), make("ec-a"), make("ed-a", "ec-a", payload=b"")]


def _refused(img: bytes) -> None:
    try:
        check(img, TRUSTED)
    except ImageRejected:
        return
    raise AssertionError("a damaged image was accepted")


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(which=st.sampled_from(range(len(IMAGES))), data=st.data())
def test_random_byte_flips_never_pass(which, data):
    img = bytearray(IMAGES[which])
    flips = data.draw(st.lists(st.tuples(st.integers(0, len(img) - 1), st.integers(1, 255)),
                               min_size=1, max_size=4, unique_by=lambda t: t[0]))
    for off, mask in flips:
        img[off] ^= mask
    _refused(bytes(img))


@settings(max_examples=300, deadline=None)
@given(which=st.sampled_from(range(len(IMAGES))), data=st.data())
def test_random_truncations_never_pass(which, data):
    img = IMAGES[which]
    cut = data.draw(st.integers(0, len(img) - 1))
    _refused(img[:cut])


@settings(max_examples=300, deadline=None)
@given(junk=st.binary(max_size=2048))
def test_arbitrary_bytes_never_pass(junk):
    _refused(junk)
    _refused(IMAGES[0][:32] + junk)


@settings(max_examples=200, deadline=None)
@given(which=st.sampled_from(range(len(IMAGES))), data=st.data())
def test_random_insertions_never_pass(which, data):
    img = IMAGES[which]
    at = data.draw(st.integers(0, len(img)))
    extra = data.draw(st.binary(min_size=1, max_size=16))
    _refused(img[:at] + extra + img[at:])

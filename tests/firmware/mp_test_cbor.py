# CBOR encoder and decoder (firmware/cbor/encode.py, decode.py) under MicroPython.
# Expected bytes are RFC 8949 Appendix A (copied from the RFC, not produced by the code).
import struct

HEAPSIZE = "128K"  # compiling this test module takes more than the codec needs

from cbor.decode import decode, loads
from cbor.encode import CBORError, Writer


def _hex(b):
    return "".join("%02x" % x for x in b)


def _enc(fn):
    buf = bytearray(512)
    w = Writer(buf)
    fn(w)
    return _hex(buf[: w.pos])


def _check(name, got, want):
    if got != want:
        raise AssertionError("%s: got %s want %s" % (name, got, want))


# RFC 8949 Appendix A: (value, encoding); ints
_INTS = [
    (0, "00"), (1, "01"), (10, "0a"), (23, "17"), (24, "1818"), (25, "1819"),
    (100, "1864"), (1000, "1903e8"), (1000000, "1a000f4240"),
    (1000000000000, "1b000000e8d4a51000"),
    (18446744073709551615, "1bffffffffffffffff"),
    (-18446744073709551616, "3bffffffffffffffff"),
    (-1, "20"), (-10, "29"), (-100, "3863"), (-1000, "3903e7"),
]


def test_rfc8949_ints():
    for v, want in _INTS:
        _check(str(v), _enc(lambda w: w.put_int(v)), want)
    for v, want in _INTS:
        if v >= 0:
            _check("uint %d" % v, _enc(lambda w: w.put_uint(v)), want)
    # boundaries of each width (A: 255/256, 65535/65536 follow the same rules)
    _check("255", _enc(lambda w: w.put_int(255)), "18ff")
    _check("256", _enc(lambda w: w.put_int(256)), "190100")
    _check("65535", _enc(lambda w: w.put_int(65535)), "19ffff")
    _check("65536", _enc(lambda w: w.put_int(65536)), "1a00010000")
    _check("2**32-1", _enc(lambda w: w.put_int(4294967295)), "1affffffff")
    _check("2**32", _enc(lambda w: w.put_int(4294967296)), "1b0000000100000000")
    _check("-24", _enc(lambda w: w.put_int(-24)), "37")
    _check("-25", _enc(lambda w: w.put_int(-25)), "3818")


def test_int_out_of_range_is_typed_error():
    for v in (18446744073709551616, -18446744073709551617):
        try:
            _enc(lambda w: w.put_int(v))
        except CBORError:
            continue
        raise AssertionError("no error for %d" % v)
    try:
        _enc(lambda w: w.put_uint(-1))
    except CBORError:
        return
    raise AssertionError("put_uint(-1) accepted")


def test_rfc8949_simple_strings_containers():
    _check("false", _enc(lambda w: w.put_bool(False)), "f4")
    _check("true", _enc(lambda w: w.put_bool(True)), "f5")
    _check("h''", _enc(lambda w: w.put_bytes(b"")), "40")
    _check("h'01020304'", _enc(lambda w: w.put_bytes(b"\x01\x02\x03\x04")), "4401020304")
    _check('""', _enc(lambda w: w.put_text("")), "60")
    _check('"a"', _enc(lambda w: w.put_text("a")), "6161")
    _check('"IETF"', _enc(lambda w: w.put_text("IETF")), "6449455446")
    _check('"IETF" bytes', _enc(lambda w: w.put_text(b"IETF")), "6449455446")
    _check('"\\"\\\\"', _enc(lambda w: w.put_text('"\\')), "62225c")
    _check('"\\u00fc"', _enc(lambda w: w.put_text("\u00fc")), "62c3bc")
    _check('"\\u6c34"', _enc(lambda w: w.put_text("\u6c34")), "63e6b0b4")
    _check('"\\ud800\\udd51"', _enc(lambda w: w.put_text("\U00010151")), "64f0908591")
    _check("[]", _enc(lambda w: w.put_array(0)), "80")

    def a123(w):
        w.put_array(3)
        for i in (1, 2, 3):
            w.put_int(i)

    _check("[1,2,3]", _enc(a123), "83010203")

    def nested(w):
        w.put_array(3)
        w.put_int(1)
        w.put_array(2)
        w.put_int(2)
        w.put_int(3)
        w.put_array(2)
        w.put_int(4)
        w.put_int(5)

    _check("[1,[2,3],[4,5]]", _enc(nested), "8301820203820405")

    def a25(w):
        w.put_array(25)
        for i in range(1, 26):
            w.put_int(i)

    _check("[1..25]", _enc(a25),
           "98190102030405060708090a0b0c0d0e0f101112131415161718181819")
    _check("{}", _enc(lambda w: w.put_map(0)), "a0")

    def m1234(w):
        w.put_map(2)
        for i in (1, 2, 3, 4):
            w.put_int(i)

    _check("{1:2,3:4}", _enc(m1234), "a201020304")

    def mab(w):
        w.put_map(2)
        w.put_text("a")
        w.put_int(1)
        w.put_text("b")
        w.put_array(2)
        w.put_int(2)
        w.put_int(3)

    _check('{"a":1,"b":[2,3]}', _enc(mab), "a26161016162820203")

    def ae(w):
        w.put_map(5)
        for k in "abcde":
            w.put_text(k)
            w.put_text(k.upper())

    _check("{a..e}", _enc(ae), "a56161614161626142616361436164614461656145")


def test_rfc8949_floats():
    _check("1.1", _enc(lambda w: w.put_float64(1.1)), "fb3ff199999999999a")
    _check("1.0e+300", _enc(lambda w: w.put_float64(1.0e300)), "fb7e37e43c8800759c")
    _check("-4.1", _enc(lambda w: w.put_float64(-4.1)), "fbc010666666666666")
    # The same values through put_scaled (float32 form of Appendix A's numbers)
    _check("0.0", _enc(lambda w: w.put_scaled(0, 0)), "fa00000000")
    _check("1.0", _enc(lambda w: w.put_scaled(1, 0)), "fa3f800000")
    _check("1.5", _enc(lambda w: w.put_scaled(3, -1)), "fa3fc00000")
    _check("65504.0", _enc(lambda w: w.put_scaled(2047, 5)), "fa477fe000")
    _check("100000.0", _enc(lambda w: w.put_scaled(3125, 5)), "fa47c35000")
    _check("-4.0", _enc(lambda w: w.put_scaled(-1, 2)), "fac0800000")
    _check("2**-24", _enc(lambda w: w.put_scaled(1, -24)), "fa33800000")
    _check("2**-149", _enc(lambda w: w.put_scaled(1, -149)), "fa00000001")
    _check("-32768*2**-15", _enc(lambda w: w.put_scaled(-32768, -15)), "fabf800000")


def _f32_hex(x):
    return _hex(b"\xfa" + struct.pack(">f", x))


def test_put_scaled_matches_float_conversion():
    # Every code at the exponents replay files use; a spread of codes at every exponent
    # from deep subnormal to the overflow edge. Reference: the host's float->float32.
    buf = bytearray(8)
    w = Writer(buf)
    n = 0
    for exp in (-15, -9):
        scale = 2.0 ** exp
        for code in range(-32768, 32768):
            w.pos = 0
            w.put_scaled(code, exp)
            if buf[1:5] != struct.pack(">f", code * scale):
                raise AssertionError("code %d exp %d: %s" % (code, exp, _hex(buf[:5])))
            n += 1
    codes = [0, 1, -1, 2, 3, 5, 255, 256, 257, 32767, -32768, -32767, 1023, -1025, 12345]
    codes += list(range(-32768, 32768, 997))
    for exp in range(-175, 113):
        scale = 2.0 ** exp
        for code in codes:
            w.pos = 0
            w.put_scaled(code, exp)
            if buf[1:5] != struct.pack(">f", code * scale):
                raise AssertionError("code %d exp %d: %s" % (code, exp, _hex(buf[:5])))
            n += 1
    if n < 100000:
        raise AssertionError("only %d cases" % n)


def test_put_scaled_rounds_wide_codes_like_float_conversion():
    # sample code * a sensor's integer scale mantissa (up to 30 bits) rounds half to even
    buf = bytearray(8)
    w = Writer(buf)
    codes = [(1 << 24) + 1, (1 << 24) + 3, (1 << 25) - 1, (1 << 29) + (1 << 5), 0x3FFFFFFF]
    codes += [c * 23456 + 7 for c in range(-32768, 32768, 331)]
    for exp in (-40, -30, -24, -1, 0, 3, -149 - 20, -149 - 28, 90):
        for code in codes:
            for c in (code, -code):
                w.pos = 0
                w.put_scaled(c, exp)
                if buf[1:5] != struct.pack(">f", c * 2.0 ** exp):
                    raise AssertionError("code %d exp %d: %s" % (c, exp, _hex(buf[:5])))


def test_put_scaled_rounds_subnormals_half_even():
    # 3 * 2**-151 = 0.75 * 2**-149 -> 1; 2**-150 (half the smallest) -> 0 (even);
    # 3 * 2**-150 = 1.5 ulp -> 2 (even); 5 * 2**-151 = 1.25 -> 1
    for code, exp, want in ((3, -151, 1), (1, -150, 0), (3, -150, 2), (5, -151, 1),
                            (-3, -150, 0x80000002)):
        got = _enc(lambda w: w.put_scaled(code, exp))
        _check("%d*2**%d" % (code, exp), got, "fa%08x" % want)


def test_put_scaled_overflow_and_range_errors():
    for code, exp in ((1, 128), (16384, 114), (-2, 127), (-32768, 113), (1 << 30, 0),
                      (-(1 << 30), 0)):
        try:
            _enc(lambda w: w.put_scaled(code, exp))
        except CBORError:
            continue
        raise AssertionError("no error for %d, %d" % (code, exp))
    # the largest finite values still work
    _check("1*2**127", _enc(lambda w: w.put_scaled(1, 127)), "fa7f000000")
    _check("-32768*2**112", _enc(lambda w: w.put_scaled(-32768, 112)), "faff000000")
    _check("32767*2**113", _enc(lambda w: w.put_scaled(32767, 113)), "fa7f7ffe00")


def test_put_scaled_allocates_nothing():
    import gc

    buf = bytearray(16)
    w = Writer(buf)
    w.put_scaled(-1234, -15)
    gc.collect()
    gc.disable()
    try:
        before = gc.mem_alloc()
        for code in range(-300, 300):
            w.pos = 0
            w.put_scaled(code * 97, -15)
            w.put_int(code)
            w.put_text(b"5702")
        used = gc.mem_alloc() - before
    finally:
        gc.enable()
    if used:
        raise AssertionError("allocated %d bytes" % used)


def test_put_decimal_is_the_text_of_the_digits_without_allocating():
    # a SenML name (report.py): text string head (RFC 8949 section 3.1, major type 3)
    for v, want in ((0, "6130"), (7, "6137"), (31, "623331"), (5702, "6435373032"),
                    (65535, "653635353335"), (1234567890123456789012345,
                                              "7819" + _hex(b"1234567890123456789012345"))):
        _check("decimal %d" % v, _enc(lambda w: w.put_decimal(v)), want)
    import gc

    w = Writer(bytearray(16))
    w.put_decimal(1)
    gc.collect()
    gc.disable()
    try:
        before = gc.mem_alloc()
        for v in range(0, 70000, 7):
            w.pos = 0
            w.put_decimal(v)
        used = gc.mem_alloc() - before
    finally:
        gc.enable()
    if used:
        raise AssertionError("allocated %d bytes" % used)
    w = Writer(bytearray(4))
    try:
        w.put_decimal(12345)  # 1 + 5 bytes
    except CBORError:
        if w.pos == 0:
            return
    raise AssertionError("overflowed buffer")


def test_buffer_full_is_typed_error():
    w = Writer(bytearray(4))
    w.put_int(1)
    for fn in (lambda: w.put_scaled(1, 0), lambda: w.put_text("abcd"),
               lambda: w.put_int(1 << 40), lambda: w.put_float64(1.0)):
        try:
            fn()
        except CBORError:
            continue
        raise AssertionError("overflowed buffer")
    if w.pos != 1:
        raise AssertionError("position moved on error")


def _unhex(s):
    return bytes(int(s[i : i + 2], 16) for i in range(0, len(s), 2))


def test_decode_rfc8949_examples():
    cases = [(v, h) for v, h in _INTS] + [
        (False, "f4"), (True, "f5"), (None, "f6"), (None, "f7"),
        (b"", "40"), (b"\x01\x02\x03\x04", "4401020304"), ("", "60"), ("IETF", "6449455446"),
        ("\u00fc", "62c3bc"), ("\U00010151", "64f0908591"),
        ([], "80"), ([1, [2, 3], [4, 5]], "8301820203820405"), ({}, "a0"),
        ({1: 2, 3: 4}, "a201020304"), ({"a": 1, "b": [2, 3]}, "a26161016162820203"),
        (["a", {"b": "c"}], "826161a161626163"),
        (0.0, "f90000"), (-0.0, "f98000"), (1.0, "f93c00"), (1.5, "f93e00"),
        (65504.0, "f97bff"), (5.960464477539063e-8, "f90001"), (0.00006103515625, "f90400"),
        (-4.0, "f9c400"), (100000.0, "fa47c35000"), (1.1, "fb3ff199999999999a"),
        (-4.1, "fbc010666666666666"), (float("inf"), "f97c00"), (float("-inf"), "f9fc00"),
    ]
    for want, h in cases:
        got = loads(_unhex(h))
        if got != want or type(got) is not type(want):
            raise AssertionError("%s: got %r want %r" % (h, got, want))
    nan = loads(_unhex("f97e00"))
    if nan == nan:
        raise AssertionError("NaN")


def test_decode_rejects_malformed_input():
    bad = [
        "", "18", "19ff", "1a000000", "1b00000000000000", "41", "6261", "81", "a1",
        "a101", "820102ff" "", "1c", "1d", "1e", "5f", "9f", "bf", "ff", "c074", "d820",
        "f8", "f818", "f0", "f9", "fa0000", "fb000000", "62c328", "61ff",
        "a2010101", "a180", "a1a0", "0000", "8201",
        "81" * 17 + "00", "9b" + "ff" * 8,
    ]
    for h in bad:
        try:
            loads(_unhex(h))
        except CBORError:
            continue
        raise AssertionError("accepted %s" % h)
    # every strict prefix of a valid item is truncated
    full = _unhex("a26161016162831a000f42406449455446fb3ff199999999999a")
    loads(full)
    for k in range(len(full)):
        try:
            loads(full[:k])
        except CBORError:
            continue
        raise AssertionError("prefix %d accepted" % k)


def test_decode_with_position():
    data = _unhex("0102f5")
    v, p = decode(data, 1)
    if (v, p) != (2, 2):
        raise AssertionError((v, p))
    try:
        decode(data, 2, 10)
    except CBORError:
        return
    raise AssertionError("bad bounds accepted")

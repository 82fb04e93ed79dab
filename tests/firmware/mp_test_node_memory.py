# The node in a board's heap: the whole firmware (precompiled, as a board runs it) loads
# and runs with the default feature set, and the steady window path (sampler, features,
# report) allocates nothing. The transport answers without allocating, so what is
# measured is the node's own allocation.
#
# The unix port keeps the code (about 121 KB of x64 code and module objects with the
# LwM2M object tree and its CoAP server) in the heap, where a board runs it frozen in
# flash. What is held to a limit is the node's data (buffers, tables, objects, the CoAP
# server's buffers and observer table: what a board's heap must hold): 48K, inside the
# 64K of the smallest board with room to spare, although x64 objects are larger than a
# 32-bit board's. The heap (224K) is the data region, reserved before the code loads so
# that the data is laid out as on a board, plus room to load the code.
import struct

import node

FIRMWARE = "mpy"
HEAPSIZE = "224K"
_DATA_MAX = 48 * 1024
_SLACK = 8 * 1024  # the reserved data region beyond data_max (see _measure)

_GOOD = {"endpoint": "n1", "gateway": "coap://127.0.0.1", "signal": "s.i16"}


def write_signal(path, n):
    with open(path, "wb") as f:
        f.write(b"AI16" + struct.pack("<BBHIb", 1, 1, 16, 12000, -12) + b"\0\0\0")
        for i in range(n):
            f.write(struct.pack("<h", ((i * 7919 + 123) % 65536) - 32768))


class Clock:
    def __init__(self):
        self.t = 0

    def ticks_ms(self):
        return self.t

    def sleep_ms(self, ms):
        self.t += ms


class Rand:
    def __init__(self):
        self.s = 12345

    def __call__(self, bits):
        self.s = (self.s * 1103515245 + 12345) & 0x7FFFFFFF
        return (self.s >> 7) & ((1 << bits) - 1)


class LeanLink:
    """A transport that piggybacks the answers without allocating (for measurements)."""

    def __init__(self, clock):
        self.clock = clock
        r = self.resp = bytearray(15)
        r[0] = 0x64  # ACK, TKL 4
        r[8:15] = b"\x82rd\x03abc"  # Location-Path "rd", "abc" (read by Register only)
        self.full = memoryview(r)
        self.short = memoryview(r)[:8]
        self.pending = None

    def send(self, buf, n):
        r = self.resp
        for i in range(2, 8):  # MID and token
            r[i] = buf[i]
        if buf[1] == 4:
            r[1] = 0x42
        elif buf[9] == 0x72 and buf[11] == 0x11:  # POST rd with Content-Format: Register
            r[1] = 0x41
        else:
            r[1] = 0x44
        self.pending = self.full if r[1] == 0x41 else self.short

    def recv(self, timeout_ms):
        p = self.pending
        if p is not None:
            self.pending = None
            return p
        if timeout_ms > 0:
            self.clock.t += timeout_ms
        return None


def _measure(window, hop, windows=40, features=True, models=None, data_max=_DATA_MAX):
    import gc

    write_signal("s.i16", 50000)  # no wrap-around while measuring
    # the code first: on the unix port it lives in the heap; a board freezes it in flash.
    # Loading it leaves holes between the code objects (the read buffers), which a
    # board's heap does not have: the data region is reserved below the code first and
    # given back for the node, so the node's data is laid out as on a board (the limit
    # that counts is data_max, checked below).
    gc.collect()
    region = bytearray(data_max + _SLACK)
    import cbor.encode, coap.endpoint, lwm2m.client, dsp.sampler  # noqa: F401
    import drivers.simsensor, dsp.features, coap.server, coap.observe  # noqa: F401
    import lwm2m.tree, lwm2m.objects, lwm2m.attrs, report, storage.flashlog  # noqa: F401
    if models:
        from tinyml import infer
        import tinyml.interpreter, tinyml.kernels, tinyml.quant  # noqa: F401
        import tinyml.flatbuf  # noqa: F401

    gc.collect()
    code = gc.mem_alloc() - len(region)
    del region
    gc.collect()
    from storage import config  # as node.main() does: config, sensor, then drop it
    from lwm2m.session import unload

    cfg = config.check(dict(_GOOD, lifetime=60, window=window, hop=hop, report_ms=1000))
    sensor = config.open_sensor(cfg)
    spec = config.feature_spec(cfg, sensor.rate) if features else None
    del config
    unload("storage.config")
    c = Clock()
    link = LeanLink(c)
    n = node.Node(cfg, sensor, spec, transport=link, clock=c, rand=Rand())
    if models:
        gc.collect()
        m0 = gc.mem_alloc()
        n.use(infer.load(dict(cfg, **models), spec, n.ex.formats, 1, sensor.scale_e))
        gc.collect()
        print("models: %d bytes of data" % (gc.mem_alloc() - m0))
    n.run(windows=3)  # registered, buffers made, first windows sent
    import time

    gc.collect()
    gc.disable()
    try:
        before = gc.mem_alloc()
        t0 = time.ticks_us()
        for _ in range(windows):
            n._window()
            n._report()
        us = time.ticks_diff(time.ticks_us(), t0)
        used = gc.mem_alloc() - before
    finally:
        gc.enable()
    gc.collect()
    data = gc.mem_alloc() - code
    print("window %d hop %d: %d bytes allocated in %d windows (%d per window), %d us per "
          "window; heap free %d, used %d (code %d, data %d)"
          % (window, hop, used, windows, used // windows, us // windows, gc.mem_free(),
             gc.mem_alloc(), code, data))
    if n.sent != windows + 3:
        raise AssertionError("sent %d" % n.sent)
    # nothing at all: reading, min/max, the CBOR pack, the CoAP request and response
    # parsing and the "sent" log line every 10th window (the real UDP transport adds
    # its received datagram, see mp_test_udp.py)
    if used:
        raise AssertionError("window loop allocated %d bytes" % used)
    if data > data_max:
        raise AssertionError("node data %d bytes > %d" % (data, data_max))


def test_allocation_per_window_default_1024():
    _measure(1024, 1024)


def test_allocation_per_window_sliding_256_hop_64():
    _measure(256, 64)

# LwM2M 1.1 client operations over an Endpoint (coap/endpoint.py): Register, Update, De-register and
# Send (OMA-TS-LightweightM2M_Transport-V1_1 section 6, Core section 6.2 / 6.4).
#
# Register: POST /rd?ep=NAME&lt=SECONDS&lwm2m=1.1&b=U, link-format payload of the
# object instances, answered 2.01 with Location-Path (e.g. rd/abc). Update: POST to
# that location, no payload. De-register: DELETE the location. Send: POST /dp with a
# SenML-CBOR payload written in place by the caller.
from micropython import const
import time
from cbor.encode import Writer
from coap.msg import code_str

# CoAP codes and options, RFC 7252 section 12.1 / 12.2
_POST = const(2)
_DELETE = const(4)
_CREATED = const(0x41)  # 2.01
_DELETED = const(0x42)  # 2.02
_CHANGED = const(0x44)  # 2.04
_BAD_REQUEST = const(0x80)  # 4.00
_NOT_FOUND = const(0x84)  # 4.04
_NOT_ALLOWED = const(0x85)  # 4.05
_LOCATION_PATH = const(8)
_URI_PATH = const(11)
_CONTENT_FORMAT = const(12)
_URI_QUERY = const(15)

# Content formats, LwM2M 1.1 Transport section 5.3 / RFC 6690 / RFC 8428
_CF_LINK_FORMAT = const(40)
_CF_SENML_CBOR = const(112)

_MIN_UPDATE_MS = const(5000)  # Updates never more often than this

OBJECTS = b"</1/0>,</3/0>,</3313/0>,</33000/0>"


class LwM2MError(Exception):
    """The server answered an operation with an unexpected code (message says which)."""


class Client:
    """Registration state of one LwM2M client (endpoint name ``name``) on one server."""

    def __init__(self, ep, name, lifetime, objects=OBJECTS, binding=b"U"):
        self.ep = ep
        self.clock = ep.clock
        self.name = name
        self.objects = objects
        self.binding = binding
        self.registered = False
        self.location = ""  # e.g. "/rd/abc"
        self._loc = []  # Location-Path segments (bytes)
        self._ok_at = 0  # ticks of the last successful Register/Update
        self.refused = 0  # Sends answered 4.00, 4.04 or 4.05 in a row (a server without /dp)
        self._cw = Writer(ep.tx)
        self._ep = b"ep=" + name.encode()
        self.set_lifetime(lifetime)

    def set_lifetime(self, lifetime):
        """A new lifetime (the next Update should carry it: update(UPDATE_LIFETIME))."""
        self.lifetime = lifetime
        self._lt = ("lt=%d" % lifetime).encode()
        # next Update due after min(lifetime * 0.75, lifetime - 10 s), at least 5 s
        self.interval_ms = max(min(lifetime * 750, (lifetime - 10) * 1000), _MIN_UPDATE_MS)

    def expired(self, now=None):
        """True once the lifetime has run out since the last successful Register/Update."""
        if now is None:
            now = self.clock.ticks_ms()
        return time.ticks_diff(now, self._ok_at) >= self.lifetime * 1000

    # -- operations --

    def register(self, deadline_ms=-1):
        """Register; returns the location (e.g. "/rd/abc"). Raises CoapError/LwM2MError."""
        ep = self.ep
        w = ep.begin(_POST)
        w.option(_URI_PATH, b"rd")
        w.option_uint(_CONTENT_FORMAT, _CF_LINK_FORMAT)
        w.option(_URI_QUERY, self._ep)
        w.option(_URI_QUERY, self._lt)
        w.option(_URI_QUERY, b"lwm2m=1.1")
        w.option(_URI_QUERY, b"b=" + self.binding)
        w.payload(self.objects)
        r = ep.exchange(deadline_ms)
        if r.code != _CREATED:
            raise LwM2MError("register answered " + code_str(r.code))
        loc = []
        i = r.find(_LOCATION_PATH)
        while i >= 0:
            loc.append(r.value(i))
            i = r.find(_LOCATION_PATH, i + 1)
        if not loc:
            raise LwM2MError("register answer has no Location-Path")
        try:
            self.location = "/" + "/".join(str(s, "utf-8") for s in loc)
        except UnicodeError:
            raise LwM2MError("register answer has a Location-Path that is not UTF-8")
        self._loc = loc
        self.registered = True
        self._ok_at = self.clock.ticks_ms()
        return self.location

    def _at_location(self, code, deadline_ms):
        w = self.ep.begin(code)
        for seg in self._loc:
            w.option(_URI_PATH, seg)
        return self.ep.exchange(deadline_ms).code

    def update(self, deadline_ms=-1, what=0):
        """Update the registration (Core section 6.2.2), with lt (what & 1), b (& 2)
        and the object links (& 4) when they changed. True on 2.04; False on 4.04 (the
        server forgot us: register again). Raises CoapError on timeout/reset,
        LwM2MError otherwise."""
        if what:
            w = self.ep.begin(_POST)
            for seg in self._loc:
                w.option(_URI_PATH, seg)
            if what & 4:
                w.option_uint(_CONTENT_FORMAT, _CF_LINK_FORMAT)
            if what & 1:
                w.option(_URI_QUERY, self._lt)
            if what & 2:
                w.option(_URI_QUERY, b"b=" + self.binding)
            if what & 4:
                w.payload(self.objects)
            code = self.ep.exchange(deadline_ms).code
        else:
            code = self._at_location(_POST, deadline_ms)
        if code == _CHANGED:
            self._ok_at = self.clock.ticks_ms()
            return True
        if code == _NOT_FOUND:
            self.registered = False
            return False
        raise LwM2MError("update answered " + code_str(code))

    def deregister(self, deadline_ms=-1):
        """De-register (the client is unregistered afterwards whatever happens)."""
        self.registered = False
        code = self._at_location(_DELETE, deadline_ms)
        if code != _DELETED:
            raise LwM2MError("de-register answered " + code_str(code))

    def send(self, fill, deadline_ms=-1):
        """LwM2M Send: POST /dp, SenML-CBOR. fill(writer) writes the payload into the
        request buffer through a cbor/encode.py Writer (no copy). Raises on anything but 2.xx;
        after 4.04 the client counts as unregistered. Counts the refusals (4.00, 4.04,
        4.05: what a server without Send answers) in a row in ``refused``; any other
        answer resets it, a timeout leaves it."""
        ep = self.ep
        w = ep.begin(_POST)
        w.option(_URI_PATH, b"dp")
        w.option_uint(_CONTENT_FORMAT, _CF_SENML_CBOR)
        cw = self._cw
        cw.buf = w.buf
        cw.pos = w.mark_payload()
        fill(cw)
        w.end_payload(cw.pos)
        c = ep.exchange(deadline_ms).code
        if c == _BAD_REQUEST or c == _NOT_FOUND or c == _NOT_ALLOWED:
            self.refused += 1
        else:
            self.refused = 0
        if c >> 5 == 2:
            return c
        if c == _NOT_FOUND:
            self.registered = False  # the server does not know us (any more): register again
        raise LwM2MError("send answered " + code_str(c))

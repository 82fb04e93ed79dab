# Keeps the node's LwM2M registration alive (base class of node.Node): connect,
# Register (retrying with a bounded, jittered back-off while the gateway is
# unreachable), Update before the lifetime runs out, register again when an Update is
# answered 4.04 or the lifetime passed without a successful Update, and idle while
# serving the endpoint. Network errors are logged, never raised: the node survives
# gateway restarts. The network modules are imported by load() (node.main calls it at
# boot, after allocating the window; otherwise the first connect does).
from micropython import const
import time

_BACKOFF_MIN_MS = const(2000)  # registration retry back-off: 2 s doubling ...
_BACKOFF_MAX_MS = const(60000)  # ... up to 60 s, plus up to 25 % jitter
_UPDATE_RETRY_MS = const(5000)  # a failed Update (timeout) is retried after this
_DEREGISTER_MS = const(5000)  # bound on the De-register at shutdown

PREFIX = "aiot-node"


class Session:
    """Registration of endpoint ``name``; transport/clock/rand injectable for tests."""

    def __init__(self, cfg, transport=None, clock=None, rand=None):
        self.cfg = cfg
        self.name = cfg["endpoint"]
        self.clock = clock if clock is not None else time
        self._rand = rand
        self._transport = transport
        self.ep = None
        self.client = None
        self._backoff = _BACKOFF_MIN_MS
        self._next = self.clock.ticks_ms()  # when to Register/Update next
        self._net_errors = OSError  # until load() imports the network modules
        self.extra_objects = b""  # more registered object links, e.g. b",</33001/0>"
        self.bufsize = 512  # the CoAP request buffer: the largest report it must hold

    def log(self, what, arg=None):
        if arg is None:
            print(PREFIX, self.name, what)
        else:
            print(PREFIX, self.name, what, arg)

    def error(self, what, e):
        print(PREFIX, self.name, "error: %s: %s" % (what, str(e) or type(e).__name__))

    def load(self):
        """Import the network modules (once). Compiling from source needs several times
        a module's size for a moment: largest first, a collection before each."""
        if self._net_errors is OSError:
            import gc

            gc.collect()
            import cbor  # noqa: F401

            gc.collect()
            import coap

            gc.collect()
            import lwm2m

            gc.collect()
            if self._transport is None:
                import udp  # noqa: F401
            self._net_errors = (coap.CoapError, lwm2m.LwM2MError, OSError)

    def connect(self):
        if self.client is None:
            self.load()
            import coap
            import lwm2m

            t = self._transport
            if t is None:
                import udp

                t = self._transport = udp.UdpTransport(self.cfg["host"], self.cfg["port"])
            self.ep = coap.Endpoint(t, self.clock, self._rand, self.bufsize)
            self.client = lwm2m.Client(self.ep, self.name, self.cfg["lifetime"],
                                       lwm2m.OBJECTS + self.extra_objects)

    def wait(self, ms):
        """Idle for ms, answering the server meanwhile when there is a connection."""
        if ms <= 0:
            return
        if self.ep is not None:
            self.ep.serve(ms)
        else:
            self.clock.sleep_ms(ms)

    def _register(self):
        try:
            self.connect()
            loc = self.client.register()
        except self._net_errors as e:
            self.error("register", e)
            d = self._backoff
            self._backoff = min(d * 2, _BACKOFF_MAX_MS)
            j = ((self.ep.rand(8) if self.ep else 0) * (d >> 2)) >> 8
            self._next = time.ticks_add(self.clock.ticks_ms(), d + j)
            return
        self.log("registered", loc)
        self._backoff = _BACKOFF_MIN_MS
        self._next = time.ticks_add(self.clock.ticks_ms(), self.client.interval_ms)

    def maintain(self):
        """Register or Update if due now."""
        if time.ticks_diff(self._next, self.clock.ticks_ms()) > 0:
            return
        c = self.client
        if c is None or not c.registered:
            return self._register()
        try:
            ok = c.update()
        except self._net_errors as e:
            self.error("update", e)
            now = self.clock.ticks_ms()
            if c.expired(now):
                c.registered = False  # the server has dropped us by now
                self._next = now
            else:
                self._next = time.ticks_add(now, _UPDATE_RETRY_MS)
            return
        if ok:
            self.log("updated")
            self._next = time.ticks_add(self.clock.ticks_ms(), c.interval_ms)
        else:
            print(PREFIX, self.name, "error: update: 4.04, registering again")
            self._register()

    def registered(self):
        return self.client is not None and self.client.registered

    def ensure_registered(self):
        """Return once registered (retrying, with back-off, for as long as it takes)."""
        while not self.registered():
            self.maintain()
            if not self.registered():
                self.wait(time.ticks_diff(self._next, self.clock.ticks_ms()))

    def idle_until(self, due):
        """Serve the endpoint and keep the registration alive until ticks ``due``."""
        clock = self.clock
        while True:
            self.maintain()
            now = clock.ticks_ms()
            left = time.ticks_diff(due, now)
            if left <= 0:
                return
            m = time.ticks_diff(self._next, now)
            if m < left:
                left = m if m > 0 else 1
            self.wait(left)

    def shutdown(self, deadline_ms=_DEREGISTER_MS):
        """De-register if registered (best effort, bounded by deadline_ms)."""
        if not self.registered():
            return
        try:
            self.client.deregister(deadline_ms)
        except self._net_errors as e:
            self.error("deregister", e)
            return
        self.log("deregistered")

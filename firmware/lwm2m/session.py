# Keeps the node's LwM2M registration alive (base class of node.Node): connect,
# Register (retrying with a bounded, jittered back-off while the gateway is
# unreachable), Update before the lifetime runs out, register again when an Update is
# answered 4.04 or the lifetime passed without a successful Update, and idle while
# serving the endpoint. Network errors are logged, never raised: the node survives
# gateway restarts. The network modules are imported by load() (node.main calls it at
# boot, after allocating the window; otherwise the first connect does).
#
# The session also serves the node's LwM2M object tree (lwm2m/tree.py Tree) on the same
# endpoint while idle, and is the tree's event sink: a lifetime or binding write, an
# object instance created or deleted and the Registration Update Trigger (/1/0/8) send
# an Update (with lt, b or the object links) as soon as the answer is out; Reboot
# (/3/0/4) logs "rebooting" and exits with status 3 (the supervisor or watchdog starts
# the node again). Queue mode (config "queue", b=UQ, Core section 6.5): the node
# listens for "awake_ms" after each message it sends to the server (Register, Update,
# Send) and sleeps otherwise: what arrives meanwhile is dropped, as by a radio that is
# off; notifications wait for the next wake-up. A write of the Server object (/1/0:
# lifetime, default pmin/pmax, notification storing, binding) is kept in flash
# (storage/serverobj.py) once the answer is out, and restored before the first Register
# after a reboot.
#
# OSCORE (RFC 8613; config "oscore", oscore/keys.py, or the /21 instance a bootstrap
# delivered with the account, which wins: the gateway issued it last): the UDP transport
# is wrapped in oscore/transport.py OscoreTransport, so every exchange with the server
# (Register, Update, De-register, Send, the answers to its requests and the
# notifications) is protected; the sender sequence bound is kept in oscore.seq. The
# bootstrap exchange is protected with config "bootstrap_oscore" (lwm2m/bootstrap.py);
# without it only a NoSec account can be bootstrapped.
#
# Client-initiated bootstrap (Core section 6.1.2; config "bootstrap" = coap://HOST:PORT of
# the bootstrap server): before the first Register the session takes the server account
# from server.json (an earlier bootstrap), else the config's "gateway", else it runs
# lwm2m/bootstrap.py; after _BS_AFTER Registers in a row failed it bootstraps again. The
# bootstrap module is imported only for that and dropped from sys.modules afterwards.
from micropython import const
import sys
import time

_BACKOFF_MIN_MS = const(2000)  # registration retry back-off: 2 s doubling ...
_BACKOFF_MAX_MS = const(60000)  # ... up to 60 s, plus up to 25 % jitter
_UPDATE_RETRY_MS = const(5000)  # a failed Update (timeout) is retried after this
_DEREGISTER_MS = const(5000)  # bound on the De-register at shutdown
_REBOOT_STATUS = const(3)  # exit status of a Reboot (/3/0/4) on the unix port
# The CoAP server's buffers (coap/endpoint.py Endpoint.serve_resources): 256-byte blocks, body and
# Block1 body (a Read of a whole instance goes block-wise, RFC 7959), 4 observers,
# 32-byte cached answers (every answer but a Read's fits; a duplicate Read is answered
# again, which is idempotent)
_MAX_BLOCK = const(256)
_OBSERVERS = const(4)
_CACHE_SLOT = const(32)
_BS_AFTER = const(3)  # Registers failed in a row before bootstrapping again
_REBOOT = const(1)  # Session._reboot: a Reboot (/3/0/4) ...
_STORE = const(2)  # ... a write of /1/0 to keep (storage/serverobj.py)
_KEEP = const(8)  # update(): not an Update, keep /1/0 (the server wrote it)
_SEQ_FILE = "oscore.seq"  # the OSCORE sender sequence bound (oscore/seq.py), kept in flash

PREFIX = "aiot-node"


def unload(name):
    """Give a boot-time module's RAM back: drop it from sys.modules and from its
    package (MicroPython keeps an imported submodule as an attribute of its package)."""
    sys.modules.pop(name, None)
    pkg, _, sub = name.rpartition(".")
    p = sys.modules.get(pkg)
    if p is not None and hasattr(p, sub):
        delattr(p, sub)


class Session:
    """Registration of endpoint ``name``; transport/clock/rand injectable for tests."""

    # Firmware Update (/5, ota/update.py): a Package URI to fetch ("": cancel; None: stage
    # and reboot), the download in progress, blocks still to fetch; a self-test owed by a
    # test boot. Class defaults: an instance gets its own only while updating (the
    # node's instance dict stays as small as it was)
    _fw = False
    _dl = None
    _fetching = False
    _owed = False
    # the hardware watchdog boot.py armed (ota/slots.py wdt), fed at least every _feed_ms
    # while the session waits (here and in coap/endpoint.py); None: none armed
    _wdt = None
    _feed_ms = 0

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
        self.bufsize = 512  # the CoAP request buffer: the largest report it must hold
        self.tree = None  # lwm2m/tree.py Tree, served once connected
        self._what = 0  # Update parameters asked for by the tree (lwm2m/client.py Client.update)
        self._upd = False  # an Update was asked for
        # what the tree asked for besides an Update: _REBOOT (a Reboot), _STORE (keep
        # /1/0, storage/serverobj.py)
        self._reboot = 0
        self.queue = bool(cfg.get("queue", False))
        self._awake_ms = cfg.get("awake_ms", 5000)
        self._awake_until = self.clock.ticks_ms()
        self.deadline_ms = -1  # bound on Register/Update/Send (-1: CoAP's whole schedule)
        self._fails = 0  # Registers failed in a row
        self._bs = "bootstrap" in cfg  # look for a stored account before connecting
        self._stop = None  # stop_on(): the stream that stops the node, and its poll
        self._stop_poll = None
        s = sys.modules.get("ota.slots")  # boot.py booted this app
        if s is not None:
            if s.testing():
                self._owed = True
            w = getattr(s, "wdt", None)
            if w is not None:
                self._wdt = w
                self._feed_ms = s.wdt_ms >> 1

    def stop_on(self, stream):
        """Shut down (KeyboardInterrupt, as Ctrl-C) when ``stream`` turns readable; call
        before connecting. The simulator closes a node's stdin to stop it: a SIGINT on
        the unix port raises KeyboardInterrupt inside whatever C code runs, a write or
        an allocation, and can leave a log line cut or a lock held; this stops the
        node only where it waits."""
        import select

        self._stop = stream
        self._stop_poll = select.poll()
        self._stop_poll.register(stream, select.POLLIN)

    def _sleep(self, ms):
        """clock.sleep_ms(ms), cut short by the stop stream; the watchdog is fed at least
        every _feed_ms meanwhile."""
        w = self._wdt
        if w is not None:
            while ms > self._feed_ms:
                w.feed()
                self._sleep1(self._feed_ms)
                ms -= self._feed_ms
            w.feed()
        self._sleep1(ms)

    def _sleep1(self, ms):
        if self._stop_poll is None:
            self.clock.sleep_ms(ms)
            return
        for _ in self._stop_poll.ipoll(ms):
            raise KeyboardInterrupt

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
            import cbor.encode  # noqa: F401

            gc.collect()
            import coap.endpoint
            from coap.msg import CoapError

            gc.collect()
            from lwm2m.client import LwM2MError

            gc.collect()
            import coap.server  # noqa: F401

            gc.collect()
            import coap.observe  # noqa: F401

            gc.collect()
            import lwm2m.tree  # noqa: F401

            gc.collect()
            import lwm2m.objects  # noqa: F401

            gc.collect()
            import lwm2m.attrs  # noqa: F401

            gc.collect()
            if self._transport is None:
                import coap.udp  # noqa: F401
            if self._wdt is not None:  # every endpoint feeds it as it waits (bootstrap's too)
                coap.endpoint.Endpoint.wdt = self._wdt
                coap.endpoint.Endpoint.feed_ms = self._feed_ms
            self._net_errors = (CoapError, LwM2MError, OSError)

    def _bootstrap(self):
        # the server account: server.json if an earlier bootstrap left one (once per
        # boot), else a new bootstrap when there is no gateway or Registers keep failing
        cfg = self.cfg
        stored = self._bs
        self._bs = False
        from lwm2m import bootstrap

        try:
            acct = bootstrap.load() if stored else None
            if acct is None and (not cfg["gateway"] or self._fails >= _BS_AFTER):
                self._fails = 0
                self.log("bootstrapping from", cfg["bootstrap"])
                try:
                    acct = bootstrap.run(cfg["bootstrap"], self.name,
                                         keys=cfg.get("bootstrap_oscore"))
                except (bootstrap.BootstrapError, ValueError) + self._net_errors as e:
                    self.error("bootstrap", e)
                    return
            if acct is None:
                return
            keys = acct.get("oscore")
            if keys is not None:  # /21 as bootstrapped: the account's own context
                from oscore.keys import parse

                try:
                    keys = parse(keys, ValueError)
                except ValueError as e:
                    self.error("bootstrap", e)
                    return
            if acct["uri"] == cfg["gateway"] and (keys is None or keys == cfg.get("oscore")):
                return
            from storage.config import parse_gateway

            try:
                host, port = parse_gateway(acct["uri"])
            except ValueError as e:
                self.error("bootstrap", e)
                return
        finally:
            del bootstrap
            unload("lwm2m.bootstrap")  # boot-time code: give its RAM back
            unload("storage.config")
            unload("oscore.keys")
        if keys is not None:  # wins over config.json's: the gateway issued it last
            cfg["oscore"] = keys
        self.log("server", acct["uri"])
        cfg["gateway"] = acct["uri"]
        cfg["host"] = host
        cfg["port"] = port
        cfg["lifetime"] = acct["lifetime"]
        cfg["queue"] = acct["binding"] == "UQ"
        self.queue = cfg["queue"]
        if self.client is not None:  # another server: a new endpoint and object tree
            self.ep.transport.close()
            self.client = self.ep = self.tree = self._transport = None

    def connect(self):
        if "bootstrap" in self.cfg and (self._bs or self._fails >= _BS_AFTER
                                        or not self.cfg["gateway"]):
            self.load()
            self._bootstrap()
            if not self.cfg["gateway"]:
                raise OSError("no server account (bootstrap failed)")
        if self.client is None:
            self.load()
            from coap.endpoint import Endpoint
            from lwm2m.client import Client

            t = self._transport
            if t is None:
                from coap.udp import UdpTransport

                t = self._transport = UdpTransport(self.cfg["host"], self.cfg["port"])
                if self._stop is not None:
                    t.stop_on(self._stop)
                osc = self.cfg.get("oscore")
                if osc is not None:  # every exchange with the server protected (RFC 8613)
                    from oscore.context import Context
                    from oscore.transport import OscoreTransport

                    ctx = Context(osc["secret"], osc["sender_id"], osc["recipient_id"],
                                  _SEQ_FILE, salt=osc["salt"], id_context=osc["id_context"])
                    t = self._transport = OscoreTransport(t, ctx, reqsize=self.bufsize + 48)
            self.ep = Endpoint(t, self.clock, self._rand, self.bufsize)
            self.tree = self._tree()
            from storage.serverobj import load

            load(self)  # /1/0 as the server wrote it (then the module goes)
            unload("storage.serverobj")
            srv = self.tree.obj(1)
            self.ep.serve_resources(self.tree, _MAX_BLOCK, _MAX_BLOCK, _MAX_BLOCK, _OBSERVERS,
                                    _CACHE_SLOT)
            self.tree.attach(self.ep, _OBSERVERS)
            self.client = Client(self.ep, self.name, srv.lifetime, self.tree.links(),
                                 srv.binding)

    def objects(self):
        """The objects of the application (node.Node adds its own)."""
        return []

    def _tree(self):
        from lwm2m.objects import Security, Server, Device, Connectivity, Firmware, Portfolio
        from lwm2m.tree import Tree

        cfg = self.cfg
        objs = [Security(cfg), Server(cfg, self), Device(cfg, self, self.clock),
                Connectivity(cfg), Firmware(self), Portfolio(self)]
        if "oscore" in cfg:  # /21/0, linked from /0/0/17 (ascending oids: before 3313)
            from lwm2m.objects import Oscore

            objs.append(Oscore(cfg["oscore"]))
        objs += self.objects()
        objs.sort(key=lambda o: o.oid)  # ascending: the node's own may hold 9 (ota/models.py)
        return Tree(objs, self)

    # -- events from the object tree (lwm2m/tree.py Tree) --

    def update(self, what):
        """Send an Update (with Client.update's ``what``) once the answer is out; what
        8: no Update, keep the Server object (/1/0: the server wrote it)."""
        if what == _KEEP:
            self._reboot |= _STORE
        else:
            self._what |= what
            self._upd = True
        self.ep.woken = True

    def reboot(self):
        self._reboot |= _REBOOT
        self.ep.woken = True

    def attributes_changed(self):
        self.tree.watch.refresh()

    def _awake(self):
        # queue mode: listen for awake_ms after a message to the server
        self._awake_until = time.ticks_add(self.clock.ticks_ms(), self._awake_ms)

    def wait(self, ms):
        """Idle for ms, answering the server meanwhile when there is a connection (in
        queue mode only while awake), triggering due notifications; returns early when
        the tree asked for an Update or a reboot."""
        if ms <= 0:
            return
        ep = self.ep
        clock = self.clock
        if ep is None:
            self._sleep(ms)
            return
        until = time.ticks_add(clock.ticks_ms(), ms)
        watch = self.tree.watch
        while not (self._upd or self._reboot or self._fw is not False):
            left = time.ticks_diff(until, clock.ticks_ms())
            if left <= 0:
                return
            if self.queue:
                a = time.ticks_diff(self._awake_until, clock.ticks_ms())
                if a <= 0:
                    self._sleep(left)  # the radio is off: what arrives is lost
                    while ep.transport.recv(0) is not None:
                        pass
                    return
                if a < left:
                    left = a
            d = watch.poll()
            if 0 <= d < left:
                left = d
            ep.serve(left)

    def _register(self):
        self._upd = False  # a Register carries lifetime, binding and links anyway
        self._what = 0
        try:
            self.connect()
            c = self.client
            srv = self.tree.obj(1)
            if c.lifetime != srv.lifetime:
                c.set_lifetime(srv.lifetime)
            c.binding = srv.binding
            c.objects = self.tree.links()
            loc = c.register(self.deadline_ms)
        except self._net_errors as e:
            self.error("register", e)
            self._fails += 1
            d = self._backoff
            self._backoff = min(d * 2, _BACKOFF_MAX_MS)
            j = ((self.ep.rand(8) if self.ep else 0) * (d >> 2)) >> 8
            self._next = time.ticks_add(self.clock.ticks_ms(), d + j)
            return
        self.log("registered", loc)
        self._fails = 0
        self._awake()
        self._backoff = _BACKOFF_MIN_MS
        self._next = time.ticks_add(self.clock.ticks_ms(), self.client.interval_ms)

    def maintain(self):
        """Register or Update if due now (or asked for by the tree); reboot if asked."""
        if self._reboot & _STORE:  # first: a write of /1/0 before a Reboot is kept
            self._reboot &= _REBOOT
            from storage.serverobj import dump

            dump(self)  # into its file (then the module goes)
            unload("storage.serverobj")
        if self._reboot:
            self.log("rebooting")
            sys.exit(_REBOOT_STATUS)
        if self._owed:  # a test boot: confirm once the self-test passes
            from ota.update import self_test

            self._owed = self_test(self)
        if not self._upd and time.ticks_diff(self._next, self.clock.ticks_ms()) > 0:
            return
        c = self.client
        if c is None or not c.registered:
            return self._register()
        what = self._what
        if what & 1:
            c.set_lifetime(self.tree.obj(1).lifetime)
        if what & 2:
            c.binding = self.tree.obj(1).binding
            self.queue = c.binding == b"UQ"
        if what & 4:
            c.objects = self.tree.links()
        self._upd = False
        self._what = 0
        try:
            ok = c.update(self.deadline_ms, what)
        except self._net_errors as e:
            self.error("update", e)
            self._what |= what  # carried by the retry
            now = self.clock.ticks_ms()
            if c.expired(now):
                c.registered = False  # the server has dropped us by now
                self._next = now
            else:
                self._next = time.ticks_add(now, _UPDATE_RETRY_MS)
            return
        if ok:
            self.log("updated")
            self._awake()
            self._next = time.ticks_add(self.clock.ticks_ms(), c.interval_ms)
        else:
            print(PREFIX, self.name, "error: update: 4.04, registering again")
            self._register()

    def registered(self):
        return self.client is not None and self.client.registered

    # -- Firmware Update (/5, lwm2m/objects.py Firmware; the work is ota/update.py) --

    def firmware(self, uri):
        """From /5: a Package URI to fetch ("": cancel the download), or None: stage the
        downloaded image and reboot; acted on once the answer is out."""
        self._fw = uri
        self.ep.woken = True

    def self_test(self):
        """The app's part of a test boot's self-test (node.Node: a window was read)."""
        return True

    def ensure_registered(self):
        """Return once registered (retrying, with back-off, for as long as it takes)."""
        while not self.registered():
            self.maintain()
            if not self.registered():
                self.wait(time.ticks_diff(self._next, self.clock.ticks_ms()))

    def idle_until(self, due):
        """Serve the endpoint and keep the registration alive until ticks ``due``; a
        firmware download fetches its blocks meanwhile."""
        clock = self.clock
        while True:
            self.maintain()
            busy = self._fw is not False or self._fetching
            if busy:
                from ota.update import work

                work(self)
            now = clock.ticks_ms()
            left = time.ticks_diff(due, now)
            if left <= 0:
                return
            if busy and self.registered():
                self.ep.serve(0)  # answer the server between blocks
                continue
            m = time.ticks_diff(self._next, now)
            if m < left:
                left = m if m > 0 else 1
            self.wait(left)

    def shutdown(self, deadline_ms=_DEREGISTER_MS):
        """De-register if registered (best effort, bounded by deadline_ms)."""
        if self._stop is not None:  # the stop stream stays readable: wait for the answer
            self._stop = self._stop_poll = None
            if self._transport is not None:
                self._transport.stop_on(None)
        if not self.registered():
            return
        try:
            self.client.deregister(deadline_ms)
        except self._net_errors as e:
            self.error("deregister", e)
            return
        self.log("deregistered")

# The node's LwM2M object model (OMA-TS-LightweightM2M_Core-V1_1 section 7.1): every
# object is an Obj with a resource table and get/put/run methods; values pass through
# one preallocated Val, so reading an integer, a string or a fixed-point sample (code *
# 2**e) allocates nothing. The standard objects live here: 0 Security and 21 OSCORE
# (from the config or a bootstrap; only the client reads them), 1 Server, 3 Device,
# 4 Connectivity Monitoring, 5 Firmware Update (its work in ota/update.py) and 16 Portfolio
# (the multi-instance object a server may Create and Delete). Resource IDs and types follow gateway/objects/*.xml.
from micropython import const
import gc
import time

# Resource table entries: rid << 8 | flags. Types (low 3 bits; 0: none, an executable
# resource), then operations.
T_INT = const(1)
T_FLOAT = const(2)
T_STR = const(3)
T_BOOL = const(4)
T_OPQ = const(5)
T_TIME = const(6)
T_LNK = const(7)  # Objlnk "O:I" (Security /0/x/17; never served: /0 and /21 are 4.01)
S = const(0x08)  # not an LwM2M operation: sent in the node's reports (report.py)
R = const(0x10)
W = const(0x20)
E = const(0x40)
MULTI = const(0x80)

# Val kinds
K_INT = const(1)
K_SCALED = const(2)  # code * 2**e
K_STR = const(3)
K_BOOL = const(4)
K_OPQ = const(5)

# CoAP codes, RFC 7252 section 12.1.2
_CHANGED = const(0x44)
_BAD_REQUEST = const(0x80)
_NOT_ALLOWED = const(0x85)

_FW_IDLE = const(0)  # /5/0/3 state, Core section E.6
_FW_DOWNLOADING = const(1)
_FW_DOWNLOADED = const(2)
_FW_UPDATING = const(3)
_FW_UNSUPPORTED_PROTOCOL = const(9)  # /5/0/5 update result
_MAX_URI = const(255)


class Val:
    """One resource value: kind and i (int, code, bool), e (exponent), s (bytes-like
    or str)."""

    def __init__(self):
        self.kind = 0
        self.i = 0
        self.e = 0
        self.s = b""

    def int(self, v):
        self.kind = K_INT
        self.i = v

    def scaled(self, code, e):
        self.kind = K_SCALED
        self.i = code
        self.e = e

    def str(self, s):
        self.kind = K_STR
        self.s = s

    def bool(self, b):
        self.kind = K_BOOL
        self.i = 1 if b else 0

    def opaque(self, s):
        self.kind = K_OPQ
        self.s = s

    def senml(self, w):
        """The SenML value label and value (RFC 8428 section 4.5.4) into cbor Writer w."""
        k = self.kind
        if k == K_INT:
            w.put_int(2)
            w.put_int(self.i)
        elif k == K_SCALED:
            w.put_int(2)
            w.put_scaled(self.i, self.e)
        elif k == K_STR:
            w.put_int(3)
            w.put_text(self.s)
        elif k == K_BOOL:
            w.put_int(4)
            w.put_bool(self.i)
        else:
            w.put_int(8)
            w.put_bytes(self.s)


class Obj:
    """An object with instances 0 .. n-1 (override ids/has for others). res: the
    resource table, ascending rid. events.update(flags) asks the session for a
    Registration Update (1 lifetime, 2 binding, 4 object links) or, with 8, to keep
    the Server object."""

    oid = -1
    res = ()
    creatable = False

    def ninst(self):
        return 1

    def inst(self, k):
        return k  # the k-th instance id

    def has(self, iid):
        return iid == 0

    def flags(self, rid):
        for r in self.res:
            if r >> 8 == rid:
                return r & 0xFF
            if r >> 8 > rid:
                break
        return -1

    def count(self, iid, rid):
        return 1  # instances of a multi-instance resource (ids 0 .. count-1)

    def get(self, iid, rid, ri, v):
        pass

    def put(self, iid, rid, ri, x):
        return _NOT_ALLOWED

    def run(self, iid, rid, arg):
        return _NOT_ALLOWED

    def create(self, iid):
        return _NOT_ALLOWED

    def delete(self, iid):
        return _NOT_ALLOWED


class Security(Obj):
    """Object 0 (one instance, the server account of the config or a bootstrap): URI,
    bootstrap false, mode 3 NoSec, short server id and, with an OSCORE context, 17
    OSCORE Security Mode linking to /21/0 (Core 1.1 E.1: OSCORE protects the exchange,
    no (D)TLS under it). A LwM2M Server may not access it (Core section 7.1.1): 4.01."""

    oid = 0
    res = (0 << 8 | T_STR, 1 << 8 | T_BOOL, 2 << 8 | T_INT, 10 << 8 | T_INT, 17 << 8 | T_LNK)
    lnk = None  # b"21:0" in OSCORE mode (a class default: no RAM without it)

    def __init__(self, cfg):
        self.uri = cfg["gateway"]
        self.ssid = 1
        if "oscore" in cfg:
            self.lnk = b"21:0"

    def get(self, iid, rid, ri, v):
        if rid == 0:
            v.str(self.uri)
        elif rid == 1:
            v.bool(False)
        elif rid == 2:
            v.int(3)  # NoSec at the transport layer; OSCORE comes with 17
        elif rid == 10:
            v.int(self.ssid)
        else:
            v.str(self.lnk or b"")  # 17: "" when the account has no OSCORE


class Oscore(Obj):
    """Object 21 OSCORE, one instance (0): the node's context with its server, as the
    config's "oscore" or a bootstrap gave it (oscore/keys.py parse: bytes). No resource
    has an operation: only a bootstrap server writes it (lwm2m/bootstrap.py); a LwM2M
    Server gets 4.01 (Core section 7.1.1, as for /0); nothing here prints a value."""

    oid = 21
    res = (0 << 8 | T_OPQ, 1 << 8 | T_OPQ, 2 << 8 | T_OPQ, 3 << 8 | T_INT, 4 << 8 | T_INT,
           5 << 8 | T_OPQ, 6 << 8 | T_OPQ)
    _NAMES = ("secret", "sender_id", "recipient_id", None, None, "salt", "id_context")

    def __init__(self, keys):
        self._k = keys

    def __repr__(self):
        return "<OSCORE /21/0>"

    def get(self, iid, rid, ri, v):
        if rid == 3:
            v.int(10)  # AES-CCM-16-64-128 (RFC 8152 table 10), the node's only AEAD
        elif rid == 4:
            v.int(-10)  # HKDF SHA-256 (RFC 8613 section 3.2.1)
        else:
            v.opaque(self._k[self._NAMES[rid]] or b"")  # id_context None: b""


class Server(Obj):
    """Object 1, one instance: short server ID, lifetime (a write sends an Update
    with lt), default pmin/pmax, notification storing, binding (U or UQ), and the
    Registration Update Trigger (8). A write asks the session to keep the object
    (events.update(8): storage/serverobj.py)."""

    oid = 1
    res = (0 << 8 | T_INT | R, 1 << 8 | T_INT | R | W, 2 << 8 | T_INT | R | W,
           3 << 8 | T_INT | R | W, 6 << 8 | T_BOOL | R | W, 7 << 8 | T_STR | R | W,
           8 << 8 | E)

    def __init__(self, cfg, events):
        self.ssid = 1  # the node has one server (the config's gateway)
        self.lifetime = cfg["lifetime"]
        self.pmin = 0
        self.pmax = 0
        self.storing = False
        self.binding = b"UQ" if cfg.get("queue") else b"U"
        self.events = events

    def get(self, iid, rid, ri, v):
        if rid == 0:
            v.int(self.ssid)
        elif rid == 1:
            v.int(self.lifetime)
        elif rid == 2:
            v.int(self.pmin)
        elif rid == 3:
            v.int(self.pmax)
        elif rid == 6:
            v.bool(self.storing)
        else:
            v.str(self.binding)

    def put(self, iid, rid, ri, x):
        if rid == 1:
            if not 10 <= x <= 1000000:
                return _BAD_REQUEST
            if x != self.lifetime:
                self.lifetime = x
                self.events.update(1)
        elif rid == 2 or rid == 3:
            if x < 0:
                return _BAD_REQUEST
            if rid == 2:
                self.pmin = x
            else:
                self.pmax = x
            self.events.attributes_changed()
        elif rid == 6:
            self.storing = x
        elif rid == 7:
            b = x.encode() if isinstance(x, str) else bytes(x)
            if b not in (b"U", b"UQ"):
                return _BAD_REQUEST  # the node has UDP only (Core section 6.2.1.1)
            if b != self.binding:
                self.binding = b
                self.events.update(2)
        self.events.update(8)  # keep the object (it survives a reboot)
        return _CHANGED

    def run(self, iid, rid, arg):
        self.events.update(0)  # Registration Update Trigger (Core section 5.3.2)
        return _CHANGED


class Device(Obj):
    """Object 3: identity from the config and board, firmware version (3: the version of
    the image the running app slot came from, else the base firmware's), Reboot (4),
    error code (11), current time (13, writable: an offset to the node's clock), memory
    free (10, KiB)."""

    oid = 3
    res = (0 << 8 | T_STR | R, 1 << 8 | T_STR | R, 2 << 8 | T_STR | R, 3 << 8 | T_STR | R,
           4 << 8 | E, 10 << 8 | T_INT | R, 11 << 8 | T_INT | R | MULTI,
           13 << 8 | T_TIME | R | W, 16 << 8 | T_STR | R, 17 << 8 | T_STR | R,
           18 << 8 | T_STR | R, 19 << 8 | T_STR | R)

    VERSION = b"0.5.0"

    def __init__(self, cfg, events, clock):
        self.model = cfg.get("board", "unix-sim").encode()  # bytes: read without allocating
        self.serial = cfg["endpoint"].encode()
        self.events = events
        self.clock = clock
        self.error = 0  # 0 no error; 5 memory low would be set by the node
        self._t0 = clock.ticks_ms()
        self.epoch = 0  # UNIX time at _t0 (0: not set)
        self.binding = b"UQ" if cfg.get("queue") else b"U"

    def get(self, iid, rid, ri, v):
        if rid == 0:
            v.str(b"aiotkit")
        elif rid == 1:
            v.str(self.model)
        elif rid == 2:
            v.str(self.serial)
        elif rid == 3:  # the running app slot's image version, else the base firmware's
            t = getattr(self.events, "tree", None)
            fw = t.obj(5) if t is not None else None
            v.str(fw.running if fw is not None and fw.running else self.VERSION)
        elif rid == 19:
            v.str(self.VERSION)
        elif rid == 10:
            v.int(gc.mem_free() >> 10)
        elif rid == 11:
            v.int(self.error)
        elif rid == 13:
            v.int(self.epoch + time.ticks_diff(self.clock.ticks_ms(), self._t0) // 1000)
        elif rid == 16:
            v.str(self.binding)
        elif rid == 17:
            v.str(b"vibration sensor")
        else:
            v.str(self.model)  # 18 hardware version: the board

    def put(self, iid, rid, ri, x):
        if x < 0:
            return _BAD_REQUEST
        self._t0 = self.clock.ticks_ms()
        self.epoch = x
        return _CHANGED

    def run(self, iid, rid, arg):
        self.events.reboot()
        return _CHANGED


class Connectivity(Obj):
    """Object 4: bearer 41 (Ethernet stands for the simulated link; the object's
    enumeration lists 21 WLAN, 41 Ethernet ...), available bearers, signal strength (0:
    not a radio), IP addresses (4: a unix-sim node does not know its own; on loopback
    it is the gateway's, otherwise none) and router address (5: the gateway)."""

    oid = 4
    res = (0 << 8 | T_INT | R, 1 << 8 | T_INT | R | MULTI, 2 << 8 | T_INT | R,
           4 << 8 | T_STR | R | MULTI, 5 << 8 | T_STR | R | MULTI)

    def __init__(self, cfg):
        self.addr = cfg.get("host", "").encode()

    def count(self, iid, rid):
        if rid == 4 and not (self.addr.startswith(b"127.") or self.addr == b"::1"):
            return 0
        return 1

    def get(self, iid, rid, ri, v):
        if rid == 0 or rid == 1:
            v.int(41)
        elif rid == 2:
            v.int(0)
        else:
            v.str(self.addr)


class Firmware(Obj):
    """Object 5 Firmware Update, the state machine of Core section E.6 with pull delivery
    (ota/update.py does the work, driven by lwm2m/session.py): a Package URI write starts
    a download (state 1 Downloading; one that is not coap:// gives result 9, an empty one
    cancels: state Idle, result 0); the verified, unpacked image is state 2 Downloaded;
    Update (2) then stages it and reboots into a test boot (state 3 Updating until the
    reboot). After the reboot the result is the slot state's (ota/slots.py): 1 success
    once the new app confirmed, 8 failed after a rollback. A Package (0) written (push,
    Content-Format opaque) goes block by block into the free slot (coap/server.py takes
    its Block1 blocks through lwm2m/tree.py sink(), never reassembled in RAM) and is then
    checked as a download is; an empty one resets. Resource 9 says pull and push.
    PkgVersion (7) is the version of the image the running slot came from, or of the
    downloaded one."""

    oid = 5
    res = (0 << 8 | T_OPQ | W, 1 << 8 | T_STR | R | W, 2 << 8 | E, 3 << 8 | T_INT | R,
           5 << 8 | T_INT | R, 6 << 8 | T_STR | R, 7 << 8 | T_STR | R,
           8 << 8 | T_INT | R | MULTI, 9 << 8 | T_INT | R)
    pushed = False  # the last block of a pushed Package arrived (its request ends empty)
    version = running = ""  # PkgVersion; the running slot's image's (class defaults:
    # an instance has its own only when it has a version, the node's RAM stays as it was)

    def __init__(self, events):
        import sys

        self.events = events
        self.uri = ""
        self.state = _FW_IDLE
        self.result = 0
        s = sys.modules.get("ota.slots")  # booted through boot.py: the slot state
        if s is not None:
            self.result = s.load()["result"]
            v = _image_version(s)
            if v:
                self.version = self.running = v

    def get(self, iid, rid, ri, v):
        if rid == 1:
            v.str(self.uri)
        elif rid == 3:
            v.int(self.state)
        elif rid == 5:
            v.int(self.result)
        elif rid == 6:
            v.str(b"aiotkit-app" if self.version else b"")
        elif rid == 7:
            v.str(self.version)
        elif rid == 9:
            v.int(2)  # delivery: pull and push
        else:
            v.int(0)  # 8: CoAP

    def block(self, off, data, start, n, more):
        # a Package pushed block by block (lwm2m/tree.py sink): ota/update.py push()
        if self.state == _FW_UPDATING:
            return _NOT_ALLOWED
        from ota.update import push

        return push(self.events, off, data, start, n, more)

    def put(self, iid, rid, ri, x):
        if self.state == _FW_UPDATING:
            return _NOT_ALLOWED
        if rid == 0:  # Package (push)
            if self.pushed:  # the end of a block-wise push: its body went to block()
                self.pushed = False
                return _CHANGED
            if x:  # a Package in one message
                return self.block(0, x, 0, len(x), 0) or _CHANGED
            x = ""  # an empty Package resets, as an empty URI does
        if len(x) > _MAX_URI:
            return _BAD_REQUEST
        if rid == 1:
            self.uri = x
        self.state = _FW_IDLE
        self.result = 0
        if x and not x.startswith("coap://"):
            self.result = _FW_UNSUPPORTED_PROTOCOL
            x = ""
        elif x:
            self.state = _FW_DOWNLOADING
        self.events.firmware(x)  # "": cancel a download
        return _CHANGED

    def run(self, iid, rid, arg):
        if self.state != _FW_DOWNLOADED:
            return _NOT_ALLOWED
        self.state = _FW_UPDATING
        self.events.firmware(None)  # stage and reboot, once the answer is out
        return _CHANGED

    def downloaded(self, version):
        self.state = _FW_DOWNLOADED
        self.version = version

    def failed(self, result):
        self.state = _FW_IDLE
        self.result = result


def _image_version(slots):
    # imgtool's version text of the running slot's image header (ih_ver at offset 20:
    # u8 major, u8 minor, u16 revision, u32 build, little-endian); "" for the base
    s = slots.running
    if s is None:
        return ""
    try:
        with open(slots.DIR + s + slots.IMAGE, "rb") as f:
            h = f.read(28)
        return "%d.%d.%d+%d" % (h[20], h[21], h[22] | h[23] << 8,
                                h[24] | h[25] << 8 | h[26] << 16 | h[27] << 24)
    except (OSError, IndexError):
        return ""


class Portfolio(Obj):
    """Object 16 Portfolio (OMA registry; the object OMA's interoperability tests
    create and delete, int-1630/1635): up to NMAX instances, each an Identity (0) of up to
    NID strings. The node's only object a server may Create/Delete instances of."""

    oid = 16
    res = (0 << 8 | T_STR | R | W | MULTI,)
    creatable = True
    NMAX = 4
    NID = 4

    def __init__(self, events):
        self.ids = []  # instance ids, ascending
        self.vals = []  # per instance: list of strings
        self.events = events

    def ninst(self):
        return len(self.ids)

    def inst(self, k):
        return self.ids[k]

    def has(self, iid):
        return iid in self.ids

    def count(self, iid, rid):
        return len(self.vals[self.ids.index(iid)])

    def get(self, iid, rid, ri, v):
        v.str(self.vals[self.ids.index(iid)][ri])

    def put(self, iid, rid, ri, x):
        lst = self.vals[self.ids.index(iid)]
        if ri < 0:
            lst.clear()  # replace the whole resource: the caller then adds instances
            return _CHANGED
        if ri > len(lst) or ri >= self.NID or len(x) > 64:
            return _BAD_REQUEST
        if ri == len(lst):
            lst.append(x)
        else:
            lst[ri] = x
        return _CHANGED

    def create(self, iid):
        if len(self.ids) >= self.NMAX:
            return _BAD_REQUEST
        if iid < 0:
            iid = 0
            while iid in self.ids:
                iid += 1
        elif iid in self.ids or iid > 65534:
            return _BAD_REQUEST
        k = 0
        while k < len(self.ids) and self.ids[k] < iid:
            k += 1
        self.ids.insert(k, iid)
        self.vals.insert(k, [])
        self.events.update(4)
        return iid

    def delete(self, iid):
        k = self.ids.index(iid)
        del self.ids[k]
        del self.vals[k]
        self.events.update(4)
        return 0x42  # 2.02 Deleted

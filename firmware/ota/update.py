# The work behind the Firmware Update object /5 (LwM2M Core section E.6; lwm2m/objects.py
# Firmware holds its resources): a Package URI written -> download into the free slot's
# image file (ota/fetch.py, resumable) -> verify the image (ota/image.py: signature,
# hash, key, security counter against the floor, board, payload type "app") -> unpack
# its bundle into the slot folder (ota/bundle.py, every file checked before any is
# renamed into place) -> Downloaded. Update executed -> the slot staged (ota/slots.py
# stage(): verified once more against the persisted floor) -> reboot into a test boot
# (boot.py), which the app confirms after its self-test (self_test(), from
# lwm2m/session.py). A Package pushed to /5/0/0 arrives block by block through push()
# (Push) and is then checked the same way; a model slot's Package URI (/9/x/3) is
# fetched by ModelDownload and handed to ota/models.py. One download at a time.
#
# The node's trusted signing keys are the gateway's trust file (`aiot ota trust`),
# config "ota_trust" (a path on the node's flash, read only here); the slot size is
# config "ota_slot". Loaded when a download starts and dropped when it ends: a node that
# is not updating pays nothing for it.
from micropython import const
import gc
from ota import slots
from ota.fetch import CONNECTION_LOST, Fetch, FetchError

_INTEGRITY = const(5)  # /5/0/5: integrity check failure (Core E.6.1)
TRUST = "ota-trust.json"  # config "ota_trust" by default
_SLOT = const(524288)  # config "ota_slot" by default: the unix-sim board's slot
_FAILED = const(8)


def keys(cfg):
    """The node's trusted keys (ota/image.py Key list) from config "ota_trust";
    FetchError (integrity) when there are none."""
    from ota.image import keys_from_file

    path = cfg.get("ota_trust", TRUST)
    try:
        return keys_from_file(path)
    except (OSError, ValueError) as e:
        raise FetchError(_INTEGRITY, "no trusted keys (%s): %s" % (path, e))


def version_str(v):
    # imgtool's version text: major.minor.revision+build
    return "%d.%d.%d+%d" % v


class Download:
    """One Package URI being fetched into slot ``slot`` (ota/slots.py target())."""

    def __init__(self, ep, cfg, uri):
        self._into(cfg)
        self.fetch = Fetch(ep, uri, self.path, self.size)

    def _into(self, cfg):
        # the free slot's image file (SlotError while a test boot runs)
        self.cfg = cfg
        self.slot = slots.target()
        self.path = slots.DIR + self.slot + slots.IMAGE
        try:
            import os

            os.mkdir(slots.DIR[:-1])
        except OSError:
            pass
        self.size = cfg.get("ota_slot", _SLOT)
        self.image = None

    def step(self, deadline_ms=-1):
        """One block (its exchange bounded by deadline_ms); True once downloaded and
        verified. FetchError otherwise (its result for /5/0/5); ImageError /
        BundleError for a refused image."""
        if not self.fetch.step(deadline_ms):
            return False
        self.fetch.done()
        self.finish()
        return True

    def finish(self):
        from ota.image import verify
        from ota.bundle import unpack

        cfg = self.cfg
        buf = bytearray(1024)
        gc.collect()
        img = verify(self.path, keys(cfg), self.size, slots.load()["floor"],
                     cfg["board"], ("app",), buf)
        unpack(self.path, slots.folder(self.slot), buf, img.hdr_size, img.size,
               cfg["board"])
        self.image = img

    def stage(self):
        """Mark the slot pending (verified again against the floor): the next boot tests
        it. ImageError / SlotError."""
        cfg = self.cfg
        gc.collect()
        return slots.stage(self.slot, keys(cfg), self.size, cfg["board"])

    def cancel(self):
        self.fetch.done()

    def done(self, ses):
        fw = ses.tree.obj(5)
        fw.downloaded(version_str(self.image.version))
        ses.log("downloaded", fw.version)

    def fail(self, ses, result):
        ses.tree.obj(5).failed(result)


class Push(Download):
    """A Package pushed to /5/0/0 (Block1, taken block by block: coap/server.py sink)
    into the free slot's image file; verified and unpacked by step() once complete."""

    def __init__(self, cfg):
        self._into(cfg)
        self.off = 0
        self.complete = False
        with open(self.path, "wb"):
            pass

    def write(self, data, start, n, more):
        if self.off + n > self.size:
            raise FetchError(2, "more than %d bytes" % self.size)
        with open(self.path, "r+b") as f:
            f.seek(self.off)
            f.write(memoryview(data)[start : start + n])
        self.off += n
        self.complete = not more

    def step(self, deadline_ms=-1):
        if not self.complete:
            return False
        self.finish()
        return True

    def cancel(self):
        pass


def push(ses, off, data, start, n, more):
    """A block of a pushed Package (off its offset): 0, or the CoAP error code that
    answers it (4.08 out of order, 4.13 too large, 4.00 refused; /5/0/5 says why)."""
    fw = ses.tree.obj(5)
    dl = ses._dl
    try:
        if off == 0:
            if dl is not None:
                dl.cancel()
            ses._dl = dl = Push(ses.cfg)
            ses._fetching = False
            fw.uri = ""
            fw.state = 1  # Downloading
            fw.result = 0
        elif not isinstance(dl, Push) or dl.off != off or dl.complete:
            return 0x88  # 4.08 Request Entity Incomplete: begin again
        dl.write(data, start, n, more)
        if not more:
            fw.pushed = True  # the final request's empty body is not a reset
            ses._fetching = True  # verified and unpacked once the answer is out
            ses.log("pushed", dl.off)
        return 0
    except MemoryError:
        _failed(ses, dl, 3, "out of RAM")
    except Exception as e:  # FetchError (too large), SlotError, OSError
        _failed(ses, dl, getattr(e, "result", _FAILED), e)
    return 0x8D if fw.result == 2 else 0x80


# /5/0/5 Update Result -> /9/x/9 Update Result (OMA 9.xml): 50 not enough storage, 51 out
# of memory, 52 connection lost, 53 integrity, 54 unsupported type, 56 invalid URI, 57
# device-defined error
_RESULT9 = {2: 50, 3: 51, 4: 52, 5: 53, 6: 54, 7: 56, 9: 56}
_MODEL_MAX = const(0x40000)  # the largest model image a slot takes (ota/modelinstall.py)


class ModelDownload:
    """A Software Management Package URI (/9/``iid``/3) fetched into models/<iid>.dl,
    then handed to ota/models.py Software.fetched() (which verifies it: DELIVERED)."""

    def __init__(self, ep, sw, iid, uri):
        import os

        from ota.models import DIR

        self.sw = sw
        self.iid = iid
        self.image = None
        try:
            os.mkdir(DIR[:-1])
        except OSError:
            pass
        self.fetch = Fetch(ep, uri, "%s%d.dl" % (DIR, iid), _MODEL_MAX)
        sw.started(iid)

    def step(self, deadline_ms=-1):
        if not self.fetch.step(deadline_ms):
            return False
        self.fetch.done()
        if not self.sw.fetched(self.iid, self.fetch.dest):
            raise OSError("slot %d runs a model: not written" % self.iid)
        self.image = True
        return True

    def cancel(self):
        self.fetch.done()

    def done(self, ses):
        ses.log("model downloaded into slot", self.iid)

    def fail(self, ses, result):
        self.sw.failed(self.iid, _RESULT9.get(result, 57))


# -- driven by lwm2m/session.py (its _fw, _dl, _fetching; the tree's /5 object) --


def work(ses):
    """The update work due now: a new Package URI of /5 (a str; "" cancels) or of /9 (an
    (instance, URI) pair), an Update of /5 (None: stage and reboot), or the next block of
    the download under way. One download at a time: a new Package URI replaces it."""
    uri = ses._fw
    ses._fw = False
    dl = ses._dl
    try:
        if uri is None:  # Update executed: stage, then reboot into the test boot
            if not isinstance(dl, Download) or dl.image is None:
                raise OSError("nothing downloaded")
            dl.stage()
            ses._dl = None
            ses.log("update staged, rebooting into slot", dl.slot)
            ses.reboot()
            return
        if isinstance(uri, tuple) and not uri[1] and not (
                isinstance(dl, ModelDownload) and dl.iid == uri[0]):
            uri = False  # an empty /9 URI cancels only that slot's own download
        if uri is not False:  # a new Package URI
            ses._dl = None
            ses._fetching = False
            if dl is not None:
                dl.cancel()
            dl = None
            if isinstance(uri, tuple):
                iid, uri = uri
                if uri:
                    dl = ModelDownload(ses.ep, ses.software, iid, uri)
            elif uri:
                dl = Download(ses.ep, ses.cfg, uri)
            if dl is not None:
                ses._dl = dl
                ses._fetching = True
                ses.log("downloading %s from byte %d" % (uri, dl.fetch.off))
        if dl is not None and dl.image is None and ses.registered() and dl.step(
                ses.deadline_ms):
            ses._fetching = False
            if not isinstance(dl, Download):
                ses._dl = None  # a model waits for its Install, in its slot
            dl.done(ses)
            _unload(("ota.image", "ota.bundle", "ota.ed25519", "ota.p256", "ota.sha512"))
    except MemoryError:
        _failed(ses, dl, 3, "out of RAM")  # /5/0/5 3: out of RAM
    except Exception as e:  # FetchError, ImageError, BundleError, SlotError, OSError
        _failed(ses, dl, getattr(e, "result", _FAILED), e)


def _failed(ses, dl, result, why):
    ses._dl = None
    ses._fetching = False
    if dl is not None and result != CONNECTION_LOST:  # a lost link keeps its mark: the
        dl.cancel()  # same Package URI written again resumes (ota/fetch.py)
        dl.fail(ses, result)
    else:
        ses.tree.obj(5).failed(result)
    ses.error("update", "result %d: %s" % (result, why))
    _unload(("ota.image", "ota.bundle", "ota.ed25519", "ota.p256", "ota.sha512",
             "ota.fetch", "ota.update"))


def _unload(names):
    # the update modules give their RAM back (ota.slots is boot code: it stays)
    from lwm2m.session import unload

    for m in names:
        unload(m)
    gc.collect()


def self_test(ses):
    """A test boot (boot.py): confirm the slot once registered with ses.self_test();
    past config "ota_selftest_ms", record the failure and reboot (the boot counter rolls
    back). True while still owed."""
    import sys

    if ses.registered() and ses.self_test():
        slots.confirm()
        if ses.tree is not None:
            ses.tree.obj(5).result = slots.SUCCESS
        ses.log("update confirmed: slot", slots.running)
        _unload(("ota.fetch", "ota.update"))
        return False
    if slots.overdue(ses.cfg.get("ota_selftest_ms", 60000)):
        slots.fail("self-test: not registered with a window read in time")
        ses.log("update self-test failed: rebooting")
        sys.exit(3)  # the unix port's reboot (lwm2m/session.py _REBOOT_STATUS)
    return True

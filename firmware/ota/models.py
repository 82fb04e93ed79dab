# LwM2M Software Management (Object 9, OMA registry 9.xml) for the node's models: two
# instances, /9/0 and /9/1, one per model slot (issue 14, items 4 and 5). A slot holds
# one signed model image (payload type "model", ota/README.md), installed as a .tflite
# file on the node's flash (models/<slot>.tflite); the state is models.json.
#
# What a slot is (resource 12 Activation State, and the "run" flag below):
#   activated       its model decides (tinyml/infer.py Decider, in place of the config's
#                   model of the same kind)
#   candidate       installed and deactivated: it runs in shadow beside the active model
#                   of its kind on every window, and the report carries both decisions
#                   (report.py /33002/0/13..20); at most one (the Decider runs one)
#   standby         installed, deactivated, not running (the model a promotion replaced,
#                   or a candidate Deactivated)
# Operations:
#   Install (4)     on a DELIVERED slot: verify the image (ota/image.py verify: hash,
#                   signature against config ota_trust's keys, security counter not below the
#                   models' floor, board, payload type "model"), check its feature-spec
#                   TLV against the node's spec and the payload's SHA-256 against its
#                   model-id TLV, write the payload to models/<slot>.tflite, load it
#                   (tinyml/infer.py Model checks its metadata against the node's spec),
#                   and make it the candidate. Refusals leave the slot DELIVERED with
#                   result 53 (integrity, signature, key, counter), 54 (type, board,
#                   feature spec) or 58 (the model does not load, no active model of its
#                   kind to run beside) and the reason in 16 Status Reason.
#   Activate (10)   on a candidate or standby slot: promote it. It decides from now on,
#                   the model it replaces goes to standby (a slot) or is dropped (the
#                   config's), the floor rises to its security counter (as a confirmed
#                   app raises ota/slots.py's). The choice survives a reboot (boot()).
#   Deactivate (11) on a candidate: standby. On the activated slot: 4.05 (the node
#                   keeps a deciding model; Activate the other slot instead).
#   Uninstall (6)   on a candidate or standby slot: refuse / roll back: it stops, its
#                   files go, the slot is INITIAL. On the activated slot: 4.05.
#   Package (2)     push is not offered: 4.05 (as /5 does).
#   Package URI (3) recorded (self.uri[slot]); the slot goes INITIAL with result 0 and
#                   ota/update.py ModelDownload fetches it (as /5 does: Block2 from the
#                   node's server, resumable), then calls fetched(); "" cancels it.
# A slot whose model is activated or runs as the candidate is never written: the
# download must ask writable(slot) first.
#
# The download hook. Fetching bytes is not done here: the download code (CoAP Block2
# pull from Package URI, the same as /5's) writes the image to a file on flash and calls
#     software.fetched(slot, path)
# when the file is complete (software: node.software, this module's Software). It moves
# the file to models/<slot>.img, verifies it and sets the slot DELIVERED (result 3) or
# back to INITIAL (result 53 / 54, the reason in 16; the file removed). For a slot that
# is not writable() it returns False and changes nothing (the file stays). started(slot) and failed(slot,
# result) let it report Update State 1 DOWNLOAD STARTED and a failed download (50, 52,
# 56...). install_file(slot, path) is fetched() then Install, for a file already on
# flash (tests, provisioning).
#
# Memory: the install path (ota/modelinstall.py), the verifier and the signature code
# are imported for a delivery or an Install only and dropped afterwards; a candidate model costs what its interpreter costs (about 15 KB for
# the shipped models). Nothing here runs per window.
from micropython import const
import json
import os
from lwm2m.objects import Obj, T_INT, T_STR, T_BOOL, T_OPQ, R, W, E

STATE = "models.json"
DIR = "models/"
TRUST = "ota-trust.json"  # config "ota_trust" by default (as ota/update.py): the
# gateway's trust file, or a list of PEM keys
_SLOTS = const(2)
_MAX_URI = const(255)
_REASON_MAX = const(80)

# 7 Update State (9.xml)
INITIAL = const(0)
STARTED = const(1)
DOWNLOADED = const(2)
DELIVERED = const(3)
INSTALLED = const(4)
# 9 Update Result (9.xml)
R_INITIAL = const(0)
R_DOWNLOADING = const(1)
R_INSTALLED = const(2)
R_VERIFIED = const(3)
R_INTEGRITY = const(53)
R_UNSUPPORTED = const(54)
R_INSTALL_FAILED = const(58)

# CoAP codes, RFC 7252 section 12.1.2
_CHANGED = const(0x44)
_BAD_REQUEST = const(0x80)
_NOT_ALLOWED = const(0x85)


def _empty():
    return {"state": INITIAL, "result": R_INITIAL, "active": False, "run": False,
            "kind": "", "name": "", "version": "", "counter": 0, "reason": ""}


def load_state():
    """models.json: {"floor": int, "slots": [slot, slot]} (a missing or unreadable file:
    two empty slots, floor 0)."""
    try:
        with open(STATE) as f:
            s = json.loads(f.read())
        if isinstance(s, dict) and len(s.get("slots", ())) == _SLOTS:
            return s
    except (OSError, ValueError):
        pass
    return {"floor": 0, "slots": [_empty() for _ in range(_SLOTS)]}


def _save(s):
    # to a temporary file, then renamed: a power cut leaves the old state or the new one
    with open(STATE + ".tmp", "w") as f:
        f.write(json.dumps(s))
    os.rename(STATE + ".tmp", STATE)


def model_path(slot):
    return "%s%d.tflite" % (DIR, slot)


def image_path(slot):
    return "%s%d.img" % (DIR, slot)


def boot(cfg):
    """At boot, before tinyml/infer.py load(): the activated slots' models replace the
    config's 'model' (classifier) / 'anomaly' paths in ``cfg``."""
    for i, sl in enumerate(load_state()["slots"]):
        if sl["state"] == INSTALLED and sl["active"]:
            cfg["model" if sl["kind"] == "classifier" else "anomaly"] = model_path(i)


def remove(path):
    try:
        os.remove(path)
    except OSError:
        pass


class Refused(Exception):
    """An Install that failed: result (9 Update Result), reason (16 Status Reason)."""

    def __init__(self, result, reason):
        super().__init__(result, reason)
        self.result = result
        self.reason = reason


def _check(sw, slot, install):
    # ota/modelinstall.py check(), imported for this and dropped after (its code, the
    # verifier's and the signature code's RAM go back)
    import gc
    from lwm2m.session import unload

    gc.collect()  # room for the verifier and a model's interpreter
    from ota import modelinstall

    try:
        return modelinstall.check(sw, slot, install)
    finally:
        for m in ("ota.modelinstall", "ota.image", "ota.ed25519", "ota.p256", "ota.sha512"):
            unload(m)


class Software(Obj):
    """Object 9 over ``node`` (node.Node with a Decider) running the feature spec
    ``spec``; loads the candidate of models.json, if any (see the top of the module)."""

    oid = 9
    _model = None  # the model an Install loaded, until it runs
    res = (0 << 8 | T_STR | R, 1 << 8 | T_STR | R, 2 << 8 | T_OPQ | W, 3 << 8 | T_STR | W,
           4 << 8 | E, 6 << 8 | E, 7 << 8 | T_INT | R, 9 << 8 | T_INT | R, 10 << 8 | E,
           11 << 8 | E, 12 << 8 | T_BOOL | R, 16 << 8 | T_STR | R)

    def __init__(self, node, spec):
        self.node = node
        self.spec = spec
        self.s = load_state()
        self.uri = ["", ""]
        for i, sl in enumerate(self.s["slots"]):
            if sl["state"] == INSTALLED and sl["run"] and not sl["active"]:
                try:
                    self._run(i, self._load(i))
                except (ValueError, MemoryError) as e:  # ModelError, TFLiteError
                    sl["run"] = False  # standby: the node runs on without it
                    self._say(i, R_INSTALL_FAILED, "load: %s" % e)

    def ninst(self):
        return _SLOTS

    def has(self, iid):
        return 0 <= iid < _SLOTS

    # -- what the download code calls --

    def writable(self, slot):
        """True if a download may write slot's package (it neither decides nor runs)."""
        sl = self.s["slots"][slot]
        return not (sl["state"] == INSTALLED and (sl["active"] or sl["run"]))

    def started(self, slot):
        sl = self.s["slots"][slot]
        sl["state"] = STARTED
        sl["result"] = R_DOWNLOADING
        sl["reason"] = ""

    def failed(self, slot, result, reason=""):
        sl = self.s["slots"][slot]
        sl["state"] = INITIAL
        self._say(slot, result, reason)

    def fetched(self, slot, path):
        """The download of slot's package into ``path`` (a file on flash) is complete:
        verify it; DELIVERED (result 3) or INITIAL (53 / 54). True if delivered."""
        if not self.writable(slot):
            return False  # the running slot is left as it is, and so is the file
        sl = self.s["slots"][slot]
        dst = image_path(slot)
        try:
            os.mkdir(DIR[:-1])
        except OSError:
            pass
        if path != dst:
            remove(dst)
            os.rename(path, dst)
        sl["state"] = DOWNLOADED
        try:
            _check(self, slot, False)
        except Refused as e:
            sl["state"] = INITIAL
            remove(dst)
            self._say(slot, e.result, e.reason)
            return False
        sl["state"] = DELIVERED
        self._say(slot, R_VERIFIED, "")
        return True

    def install_file(self, slot, path):
        """fetched(slot, path), then Install: True if the model runs as the candidate."""
        return self.fetched(slot, path) and self.install(slot)

    # -- the operations --

    def install(self, slot):
        """Install (4): see the top of the module. True if installed; the result and
        reason are in resources 9 and 16 either way."""
        sl = self.s["slots"][slot]
        if sl["state"] != DELIVERED:
            return False
        d = self.node.decider
        if d.c_slot == slot:
            d.candidate(None)
        try:
            img, mid, kind = _check(self, slot, True)
        except Refused as e:
            self._say(slot, e.result, e.reason)
            return False
        finally:
            import gc

            gc.collect()
        other = self.s["slots"][1 - slot]
        if other["run"] and not other["active"]:
            other["run"] = False  # one candidate: the one installed last
        sl.update(state=INSTALLED, active=False, run=True, kind=kind,
                  counter=img.counter)
        sep = mid.index(b"@", 32)
        sl["name"] = str(mid[32:sep], "ascii")
        sl["version"] = str(mid[sep + 1:], "ascii")
        remove(image_path(slot))  # the .tflite is what runs; the image has served
        self._say(slot, R_INSTALLED, "")
        self._run(slot, self._model)
        self._model = None
        return True

    def activate(self, slot):
        """Activate (10): promote a candidate or standby slot."""
        sl = self.s["slots"][slot]
        if sl["state"] != INSTALLED or sl["active"]:
            return False
        d = self.node.decider
        m = d.cand if d.c_slot == slot else None
        d.candidate(None)
        if m is None:
            try:
                m = self._load(slot)
            except (ValueError, MemoryError) as e:
                self._say(slot, R_INSTALL_FAILED, "load: %s" % e)
                self._changed()
                return False
        for o in self.s["slots"]:
            if o["active"] and o["kind"] == sl["kind"]:
                o["active"] = o["run"] = False  # standby: Activate rolls back to it
            elif o is not sl and o["run"]:
                o["run"] = False
        d.active(m)
        sl["active"] = True
        sl["run"] = False
        self.s["floor"] = max(self.s["floor"], sl["counter"])
        self._changed()
        return True

    def deactivate(self, slot):
        """Deactivate (11): a candidate goes to standby; the activated slot cannot."""
        sl = self.s["slots"][slot]
        if sl["state"] != INSTALLED or sl["active"]:
            return False
        if sl["run"]:
            sl["run"] = False
            self.node.decider.candidate(None)
            self._changed()
        return True

    def uninstall(self, slot):
        """Uninstall (6): a candidate or standby model goes (the activated one cannot)."""
        sl = self.s["slots"][slot]
        if sl["active"]:
            return False
        d = self.node.decider
        if d.c_slot == slot:
            d.candidate(None)
        self.s["slots"][slot] = _empty()
        remove(model_path(slot))
        remove(image_path(slot))
        self._changed()
        return True

    # -- LwM2M --

    def get(self, iid, rid, ri, v):
        sl = self.s["slots"][iid]
        if rid == 0:
            v.str(sl["name"])
        elif rid == 1:
            v.str(sl["version"])
        elif rid == 7:
            v.int(sl["state"])
        elif rid == 9:
            v.int(sl["result"])
        elif rid == 12:
            v.bool(sl["state"] == INSTALLED and sl["active"])
        else:
            v.str(sl["reason"])

    def put(self, iid, rid, ri, x):
        if rid != 3 or not self.writable(iid):
            return _NOT_ALLOWED  # Package (push) is not offered; nor a running slot
        if len(x) > _MAX_URI:
            return _BAD_REQUEST
        self.uri[iid] = x
        sl = self.s["slots"][iid]
        sl["state"] = INITIAL
        self._say(iid, R_INITIAL, "")
        if x.startswith("coap://") or not x:
            self.node.firmware((iid, x))  # fetched by ota/update.py ("": cancel)
        else:
            self._say(iid, 56, "only coap:// is supported")  # 56: invalid URI
        return _CHANGED

    def run(self, iid, rid, arg):
        if rid == 4:
            ok = self.install(iid)
            if not ok and self.s["slots"][iid]["state"] == DELIVERED:
                return _CHANGED  # executed; the refusal is in 9 and 16
        elif rid == 6:
            ok = self.uninstall(iid)
        elif rid == 10:
            ok = self.activate(iid)
        else:
            ok = self.deactivate(iid)
        return _CHANGED if ok else _NOT_ALLOWED

    # -- inside --

    def _say(self, slot, result, reason):
        sl = self.s["slots"][slot]
        sl["result"] = result
        sl["reason"] = reason[:_REASON_MAX]
        _save(self.s)

    def _changed(self):
        # the decider's models changed: the report follows, the state is kept
        rep = self.node.report
        if rep is not None:
            rep.models_changed()
        _save(self.s)

    def _run(self, slot, model):
        self.node.decider.candidate(model, slot)
        self._changed()

    def _load(self, slot):
        from tinyml.infer import Model

        nd = self.node
        cfg = nd.cfg
        return Model(model_path(slot), self.s["slots"][slot]["kind"] or None, self.spec,
                     nd.ex.formats, nd.sensor.scale_e, cfg.get("model_stream", False),
                     cfg.get("model_arena", 0))

# The node's Server object (/1/0) as the LwM2M server last wrote it: lifetime (1),
# default pmin (2) / pmax (3), notification storing (6), binding (7). They are the
# server's settings (Core appendix E.2), not the factory's: the node keeps them across
# reboots and registers with them.
#
# One JSON file, written to a temp file and renamed (a power cut leaves the old file or
# the new one, never half of one). It holds the values for one server account: the
# server's URI and the lifetime and binding the account was provisioned with
# (config.json, or a bootstrap's server.json). A file for another server, or made over
# other provisioned values (the operator edited config.json, a bootstrap gave new
# ones), is stale: ignored, and the provisioning wins. A file that does not parse or
# holds a value out of range is ignored too.
#
# Boot-time and write-time code: lwm2m/session.py imports it for load() and dump(),
# then drops it (unload()).
PATH = "serverobj.json"


def _base(cfg):
    # the account the values were written over: URI, provisioned lifetime and binding
    return [cfg["gateway"], cfg["lifetime"], "UQ" if cfg.get("queue") else "U"]


def _read(cfg, path):
    """{"lifetime", "pmin", "pmax", "storing", "binding"} stored for cfg's server
    account, else None."""
    import json

    try:
        with open(path) as f:
            d = json.loads(f.read())
    except (OSError, ValueError):
        return None
    if not isinstance(d, dict) or d.get("for") != _base(cfg):
        return None
    for key, kind in (("lifetime", int), ("pmin", int), ("pmax", int), ("storing", bool),
                      ("binding", str)):
        if type(d.get(key)) is not kind:
            return None
    if (not 10 <= d["lifetime"] <= 1000000 or d["pmin"] < 0 or d["pmax"] < 0
            or d["binding"] not in ("U", "UQ")):
        return None
    return d


def _write(cfg, srv, path):
    """Keep the Server object ``srv`` (lwm2m/objects.py Server) for cfg's account."""
    import json
    import os

    d = {"for": _base(cfg), "lifetime": srv.lifetime, "pmin": srv.pmin, "pmax": srv.pmax,
         "storing": srv.storing, "binding": str(srv.binding, "ascii")}
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(json.dumps(d))
    os.rename(tmp, path)


def load(session, path=PATH):
    """Before the first Register: the session's /1/0 as the server wrote it before the
    reboot, if it was written for this account (queue mode follows the binding)."""
    d = _read(session.cfg, path)
    if d is not None:
        srv = session.tree.obj(1)
        srv.lifetime = d["lifetime"]
        srv.pmin = d["pmin"]
        srv.pmax = d["pmax"]
        srv.storing = d["storing"]
        srv.binding = d["binding"].encode()
        session.queue = srv.binding == b"UQ"


def dump(session, path=PATH):
    """After a write of /1/0: keep it (a failure is logged; the values hold until a
    reboot)."""
    try:
        _write(session.cfg, session.tree.obj(1), path)
    except OSError as e:
        session.error("keep /1/0", e)

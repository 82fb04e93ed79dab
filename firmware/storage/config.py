# The node's config file (config.json on its filesystem): load, validate, defaults.
# node.main() imports this module at boot and drops it once the config is read.
from micropython import const

_MAX_SCALE_EXP = const(112)  # 32768 * 2**112 = 2**127, the largest float32 exponent

# Integer keys: (key, default or None for "same as window", min, max or None for window).
# Upper bounds keep millisecond values small ints on 32-bit boards.
_INTS = (
    ("lifetime", 60, 10, 1000000),
    ("window", 1024, 16, 4096),
    ("hop", None, 1, None),
    ("report_ms", 1000, 0, 86400000),
    ("model_arena", 0, 0, 1048576),  # bytes a model's tensor arena may take (0: any)
    ("awake_ms", 5000, 100, 86400000),  # queue mode: listening time after each message
    ("log_slots", 64, 0, 4096),  # reports the flash log holds (0: no log, drop them)
    # Sends refused (4.00, 4.04, 4.05) in a row before the node stops using Send for
    # that server and reports by Observe/Notify only (0: never)
    ("send_refusals", 3, 0, 1000),
)
# Update keys (ota/update.py): checked when given, their defaults applied where they are
# used (the config dict every node keeps stays as small as before)
_OTA_INTS = (
    ("ota_slot", 4096, 16777216),  # bytes of an app slot (default 512 KB: an image must fit)
    # a test boot of a new app confirms once registered with a window read, or fails
    # (rolled back at a later boot) after this long (default 60 s; lwm2m/session.py)
    ("ota_selftest_ms", 1000, 3600000),
)
# every key config.json may hold (a misspelt key is an error, not a default)
_KEYS = ("endpoint", "bootstrap", "gateway", "log", "board", "signal", "features", "model",
         "anomaly", "realtime", "verbose", "model_stream", "queue", "lifetime", "window",
         "hop", "report_ms", "model_arena", "awake_ms", "log_slots", "send_refusals",
         "oscore", "bootstrap_oscore", "ota_trust", "ota_slot", "ota_selftest_ms", "wifi",
         "net_timeout_ms", "wdt_ms")


class ConfigError(ValueError):
    """The config is missing, not JSON, or has a missing/mistyped/invalid key."""


def parse_gateway(uri, key="gateway"):
    """'coap://HOST[:PORT]' -> (host, port); IPv6 literals in brackets."""
    if not isinstance(uri, str) or not uri.startswith("coap://"):
        raise ConfigError("'%s' must be a string coap://HOST[:PORT]" % key)
    rest = uri[7:]
    if rest.endswith("/"):
        rest = rest[:-1]
    port = "5683"  # RFC 7252 section 6.1 default port
    if rest.startswith("["):
        i = rest.find("]")
        host = rest[1:i]
        tail = rest[i + 1 :]
        if i < 0 or tail and tail[0] != ":":
            raise ConfigError("'%s' has a bad [IPv6] host" % key)
    else:
        i = rest.rfind(":")
        host = rest if i < 0 else rest[:i]
        tail = "" if i < 0 else rest[i:]
    if tail:
        port = tail[1:]
    if not host or "/" in host or "@" in host or "?" in host:
        raise ConfigError("'%s' must be coap://HOST[:PORT] with a host name" % key)
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError("'%s' port must be 1..65535" % key)
    return host, int(port)


def _str(cfg, key, default=None):
    v = cfg.get(key, default)
    if v is None:
        raise ConfigError("missing required key '%s'" % key)
    if not isinstance(v, str) or not v:
        raise ConfigError("'%s' must be a non-empty string" % key)
    return v


def _near(a, b):
    # edit distance of a and b at most 2 (a misspelling): the common prefix and suffix
    # off, at most 2 characters left on either side
    i = 0
    while i < len(a) and i < len(b) and a[i] == b[i]:
        i += 1
    j = 0
    while j < len(a) - i and j < len(b) - i and a[-1 - j] == b[-1 - j]:
        j += 1
    return len(a) - i - j <= 2 and len(b) - i - j <= 2


def _unknown(key):
    # the error for a key config.json may not hold, with the key it is a misspelling of
    key = str(key)[:64]
    for k in _KEYS:
        if _near(key, k):
            return ConfigError("unknown key '%s' (did you mean '%s'?)" % (key, k))
    return ConfigError("unknown key '%s' (known: %s)" % (key, ", ".join(sorted(_KEYS))))


def check(cfg):
    """Validate a parsed config; returns a new dict with defaults (and host, port)."""
    if not isinstance(cfg, dict):
        raise ConfigError("top level must be a JSON object")
    for key in cfg:
        if key not in _KEYS:
            raise _unknown(key)
    ep = _str(cfg, "endpoint")
    for c in ep:
        if not 32 < ord(c) < 127 or len(ep) > 64:
            raise ConfigError("'endpoint' must be 1..64 printable ASCII, no spaces")
    out = {"endpoint": ep}
    if "bootstrap" in cfg:  # client-initiated bootstrap (lwm2m/session.py): the server it gives
        parse_gateway(cfg["bootstrap"], "bootstrap")
        out["bootstrap"] = cfg["bootstrap"]
    gw = ""  # with only 'bootstrap': set once bootstrapped
    if "gateway" in cfg or "bootstrap" not in cfg:
        gw = _str(cfg, "gateway")
        out["host"], out["port"] = parse_gateway(gw)
    out["gateway"] = gw
    out["log"] = _str(cfg, "log", "unsent.log")
    if "ota_trust" in cfg:  # the signing keys' trust file (default ota-trust.json)
        out["ota_trust"] = _str(cfg, "ota_trust")
    for key, lo, hi in _OTA_INTS:
        if key in cfg:
            v = cfg[key]
            if type(v) is not int or not lo <= v <= hi:
                raise ConfigError("'%s' must be an integer in %d..%d" % (key, lo, hi))
            out[key] = v
    if "wdt_ms" in cfg:  # the watchdog's timeout: read by boot.py (its bounds), not kept
        v = cfg["wdt_ms"]
        if type(v) is not int or not (v == 0 or 1000 <= v <= 600000):
            raise ConfigError("'wdt_ms' must be 0 (no watchdog) or an integer in 1000..600000")
    out["board"] = _str(cfg, "board", "unix-sim")
    if out["board"] == "unix-sim":
        out["signal"] = _str(cfg, "signal")  # the recording the board replays
    else:
        # a hardware board: its board.json must be there; its network is brought up
        # before the node connects (netup.py)
        out["net"] = _board(out["board"]).get("network", "host")
        if out["net"] == "wifi":
            w = cfg.get("wifi")
            if (type(w) is not dict or type(w.get("ssid")) is not str
                    or not 0 < len(w["ssid"]) <= 32 or type(w.get("password", "")) is not str
                    or len(w.get("password", "")) > 64):
                raise ConfigError("'wifi' must be {\"ssid\": 1..32 characters, \"password\":"
                                  " up to 64} (board %s joins a Wi-Fi network)" % out["board"])
            out["wifi"] = w
        if "net_timeout_ms" in cfg:
            v = cfg["net_timeout_ms"]
            if type(v) is not int or not 1000 <= v <= 600000:
                raise ConfigError("'net_timeout_ms' must be an integer in 1000..600000")
            out["net_timeout_ms"] = v
        if "signal" in cfg:
            out["signal"] = _str(cfg, "signal")  # for a replay sensor, if it has one
    for key, default, lo, hi in _INTS:
        if default is None:
            default = hi = out["window"]
        v = cfg.get(key, default)
        if type(v) is not int or not lo <= v <= hi:
            raise ConfigError("'%s' must be an integer in %d..%d" % (key, lo, hi))
        out[key] = v
    f = cfg.get("features", True)
    if f is not True:
        out["features"] = f  # checked against the sensor by feature_spec()
    for key in ("model", "anomaly"):  # .tflite paths, checked by tinyml/infer.py load()
        if key in cfg:
            out[key] = _str(cfg, key)
    if "oscore" in cfg:  # the node's OSCORE context: checked by oscore/keys.py
        from oscore.keys import parse

        out["oscore"] = parse(cfg["oscore"], ConfigError)
    if "bootstrap_oscore" in cfg:  # the bootstrap server's context (lwm2m/bootstrap.py)
        if "bootstrap" not in cfg:
            raise ConfigError("'bootstrap_oscore' needs 'bootstrap'")
        from oscore.keys import parse

        out["bootstrap_oscore"] = parse(cfg["bootstrap_oscore"], ConfigError,
                                        "bootstrap_oscore")
    for key in ("realtime", "verbose", "model_stream", "queue"):
        v = cfg.get(key, False)
        if type(v) is not bool:
            raise ConfigError("'%s' must be true or false" % key)
        out[key] = v
    return out


def load(path):
    """Read and validate the JSON config at ``path``; raises ConfigError."""
    import json

    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        raise ConfigError("cannot read %s" % path)
    try:
        cfg = json.loads(text)
    except ValueError:
        raise ConfigError("%s is not valid JSON" % path)
    return check(cfg)


def _board(name):
    """The board definition of a hardware board: board.json (boards/NAME.json, copied
    by aiot firmware deploy --board NAME), which must name ``name``."""
    import board

    try:
        b = board.load()
        board.check(b)
    except board.BoardError as e:
        raise ConfigError("'board' %s: %s (aiot firmware deploy --board %s copies it)"
                          % (name, e, name))
    if b["name"] != name:
        raise ConfigError("'board' %s, but board.json is %s's" % (name, b["name"]))
    return b


def open_sensor(cfg):
    """The board's accelerometer, not started: on unix-sim the replayed signal file,
    on a hardware board the first sensor of board.json (board.py builds its driver).
    A sensor it cannot use raises ConfigError."""
    from drivers.bus import SensorError

    if cfg["board"] != "unix-sim":
        import board

        try:
            return board.open_sensor(_board(cfg["board"]), None, cfg.get("signal"),
                                     cfg["realtime"])
        except (board.BoardError, SensorError) as e:
            raise ConfigError("'board' %s: %s" % (cfg["board"], e))
    from drivers.simsensor import ReplayAdapter

    try:
        s = ReplayAdapter(cfg["signal"], cfg["realtime"])
    except SensorError as e:
        raise ConfigError("'signal' %s" % e)
    if s.scale_e > _MAX_SCALE_EXP:
        s.close()
        raise ConfigError("'signal' scale exponent %d overflows float32" % s.scale_e)
    return s


def feature_spec(cfg, rate):
    """The feature spec the node runs (see firmware/FEATURES.md), or None for none.

    Config 'features': absent -> the default feature list (dsp/featspec.py default_spec; at
    another rate than its 12 kHz without the envelope, bands scaled); false -> none; an
    object -> a spec whose rate, window and hop may be left out (they come from the
    sensor and the config; given, they must agree). The extractor checks the rest.
    """
    f = cfg.get("features", True)
    if f is False:
        return None
    if f is True:
        from dsp.featspec import default_spec

        d = default_spec()
        feats = d["features"]
        if rate != d["rate"]:
            # the default is for 12 kHz (CWRU): elsewhere the time domain, centroid,
            # dominant and the same bands scaled to the rate (no bearing envelope)
            edges = [e * rate // d["rate"] for e in feats[11]["edges"]]
            feats = feats[:11] + [{"name": "bands", "edges": edges}]
        f = {"features": feats}
    elif not isinstance(f, dict):
        raise ConfigError("'features' must be a feature spec object or false")
    spec = dict(f)
    spec.setdefault("version", 1)
    for key, want in (("rate", rate), ("window", cfg["window"]), ("hop", cfg["hop"])):
        v = spec.setdefault(key, want)
        if v != want:
            raise ConfigError("'features' %s %r differs from the node's %d" % (key, v, want))
    if "fft" not in spec:
        n = 64
        while n < 2048 and 2 * n <= cfg["window"]:
            n *= 2
        spec["fft"] = n
    return spec

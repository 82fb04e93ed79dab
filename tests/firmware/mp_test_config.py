# The node's config file (firmware/storage/config.py) under MicroPython: defaults, gateway
# forms, and one clear error naming the key for every missing/mistyped/invalid value.
# Precompiled, as on a board: from source, config.py left under 8K of the 64K heap.
FIRMWARE = "mpy"
import json

from storage import config

_GOOD = {"endpoint": "n1", "gateway": "coap://127.0.0.1", "signal": "s.i16"}


def _config_error(cfg_text, word):
    with open("config.json", "w") as f:
        f.write(cfg_text)
    try:
        config.load("config.json")
    except config.ConfigError as e:
        if word not in str(e):
            raise AssertionError("%r does not name %r" % (str(e), word))
        return
    raise AssertionError("accepted %s" % cfg_text)


def _with(**kw):
    d = dict(_GOOD)
    for k, v in kw.items():
        if v is None:
            d.pop(k)
        else:
            d[k] = v
    return json.dumps(d)


def test_config_defaults_and_gateway_forms():
    with open("config.json", "w") as f:
        f.write(json.dumps(_GOOD))
    c = config.load("config.json")
    want = {"lifetime": 60, "board": "unix-sim", "window": 1024, "hop": 1024,
            "report_ms": 1000, "realtime": False, "verbose": False, "host": "127.0.0.1",
            "port": 5683, "send_refusals": 3}
    for k, v in want.items():
        if c[k] != v:
            raise AssertionError("%s = %r, want %r" % (k, c[k], v))
    for uri, hp in (("coap://[::1]:1234", ("::1", 1234)),
                    ("coap://gw.local:5700/", ("gw.local", 5700)),
                    ("coap://[fe80::1]", ("fe80::1", 5683))):
        if config.parse_gateway(uri) != hp:
            raise AssertionError((uri, config.parse_gateway(uri)))
    c = config.check(dict(_GOOD, window=64, hop=16, lifetime=10, report_ms=0,
                           realtime=True, verbose=True))
    got = (c["window"], c["hop"], c["lifetime"], c["report_ms"], c["realtime"], c["verbose"])
    if got != (64, 16, 10, 0, True, True):
        raise AssertionError(c)


def test_config_errors_name_the_key():
    for text, word in (
        ("{not json", "not valid JSON"),
        ("[1, 2]", "JSON object"),
        (_with(endpoint=None), "'endpoint'"),
        (_with(endpoint=7), "'endpoint'"),
        (_with(endpoint="has space"), "'endpoint'"),
        (_with(endpoint=""), "'endpoint'"),
        (_with(gateway=None), "'gateway'"),
        (_with(gateway="http://x:5683"), "'gateway'"),
        (_with(gateway="coap://"), "'gateway'"),
        (_with(gateway="coap://h:70000"), "'gateway'"),
        (_with(gateway="coap://h:x1"), "'gateway'"),
        (_with(gateway=5683), "'gateway'"),
        (_with(lifetime=9), "'lifetime'"),
        (_with(lifetime="60"), "'lifetime'"),
        (_with(lifetime=60.5), "'lifetime'"),
        (_with(lifetime=True), "'lifetime'"),
        (_with(board="esp32"), "'board'"),
        (_with(window=15), "'window'"),
        (_with(window=4097), "'window'"),
        (_with(window=64, hop=65), "'hop'"),
        (_with(hop=0), "'hop'"),
        (_with(report_ms=-1), "'report_ms'"),
        (_with(signal=None), "'signal'"),
        (_with(signal=3), "'signal'"),
        (_with(realtime="yes"), "'realtime'"),
        (_with(verbose=1), "'verbose'"),
        (_with(send_refusals=-1), "'send_refusals'"),
        (_with(send_refusals=1001), "'send_refusals'"),
        (_with(lifetim=600), "unknown key 'lifetim' (did you mean 'lifetime'?)"),
        (_with(colour="red"), "unknown key 'colour' (known: "),
    ):
        _config_error(text, word)
    try:
        config.load("nonexistent.json")
    except config.ConfigError as e:
        if "nonexistent.json" not in str(e):
            raise AssertionError(str(e))
    else:
        raise AssertionError("missing file accepted")


def test_bad_signal_file_is_a_config_error():
    with open("bad.i16", "wb") as f:
        f.write(b"NOPE" + bytes(20))
    for path, word in (("bad.i16", "magic"), ("none.i16", "cannot open")):
        try:
            config.open_sensor(config.check(dict(_GOOD, signal=path)))
        except config.ConfigError as e:
            if "'signal'" not in str(e) or word not in str(e):
                raise AssertionError(str(e))
            continue
        raise AssertionError("accepted " + path)


def test_misspelt_config_key_is_refused():
    # a misspelt key ran with the default before; every key the node knows still passes
    for key, want in (("lifetim", "lifetime"), ("windw", "window"), ("report-ms", "report_ms"),
                      ("Verbose", "verbose"), ("sendrefusals", "send_refusals")):
        try:
            config.check(dict(_GOOD, **{key: 1}))
        except config.ConfigError as e:
            if str(e) != "unknown key '%s' (did you mean '%s'?)" % (key, want):
                raise AssertionError(str(e))
            continue
        raise AssertionError("accepted %s" % key)
    every = dict(_GOOD, bootstrap="coap://127.0.0.1:5700", log="u.log", board="unix-sim",
                 features=False, model="m.tflite", anomaly="a.tflite", realtime=False,
                 verbose=False, model_stream=False, queue=False, lifetime=60, window=64,
                 hop=64, report_ms=0, model_arena=0, awake_ms=100, log_slots=0,
                 send_refusals=0)
    config.check(every)


def test_bootstrap_oscore_context_is_parsed_and_its_errors_name_it():
    keys = {"secret": "00112233445566778899aabbccddeeff", "sender_id": "01",
            "recipient_id": "00"}
    cfg = config.check(dict(_GOOD, bootstrap="coap://127.0.0.1:5685", bootstrap_oscore=keys))
    bs = cfg["bootstrap_oscore"]
    if bs["secret"] != bytes(range(0, 256, 17)) or bs["salt"] != b"" or "oscore" in cfg:
        raise AssertionError("parsed %r" % sorted(bs))
    for bad, word in (
        (dict(_GOOD, bootstrap_oscore=keys), "'bootstrap_oscore' needs 'bootstrap'"),
        (dict(_GOOD, bootstrap="coap://h", bootstrap_oscore=dict(keys, secret="00")),
         "'bootstrap_oscore.secret' must be 16..64 bytes"),
        (dict(_GOOD, bootstrap="coap://h", bootstrap_oscore=dict(keys, kid="00")),
         "unknown key 'bootstrap_oscore.kid'"),
        (dict(_GOOD, bootstrap="coap://h", bootstrap_oscore="x"),
         "'bootstrap_oscore' must be an object"),
    ):
        _config_error(json.dumps(bad), word)

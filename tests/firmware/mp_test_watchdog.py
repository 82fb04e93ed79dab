# The node feeds the hardware watchdog boot.py arms (ota/slots.py wdt, fed at least
# every wdt_ms / 2) wherever it waits, on a fake watchdog that records the simulated time
# of each feed: a Register the gateway never answers (CoAP's whole retransmission
# schedule, its last wait 32 s and more), serving between reports, the session's sleep
# without a connection, and a board's network bring-up that takes minutes. Before, each
# of these waited in one piece, longer than a board's watchdog allows.
HEAPSIZE = "192K"  # compiling the session and the endpoint from source (122K is the least)

from coap.endpoint import Endpoint
from coap.msg import CoapTimeout
from mp_test_simlink import SimClock, SimLink, Rand

_FEED_MS = 500  # wdt_ms 1000
_POST = 2


class FakeWDT:
    # the longest simulated time between two feeds (from the start, to gap(end))
    def __init__(self, clock):
        self.clock = clock
        self.last = clock.ticks_ms()
        self.longest = 0
        self.feeds = 0

    def feed(self):
        now = self.clock.ticks_ms()
        if now - self.last > self.longest:
            self.longest = now - self.last
        self.last = now
        self.feeds += 1

    def gap(self, end):
        return max(self.longest, end - self.last)


def _armed_endpoint(clock):
    w = FakeWDT(clock)
    Endpoint.wdt = w  # what lwm2m/session.py load() does when boot.py armed one
    Endpoint.feed_ms = _FEED_MS
    return w


def test_a_register_the_gateway_never_answers_feeds_the_watchdog_throughout():
    c = SimClock(0)
    link = SimLink(c)  # no peer: nothing ever answers
    w = _armed_endpoint(c)
    ep = Endpoint(link, c, Rand())
    ep.begin(_POST)
    try:
        ep.exchange()
        raise AssertionError("no answer, yet no timeout")
    except CoapTimeout:
        pass
    # the schedule is unchanged by the short waits: 4 retransmissions, about 45..93 s
    assert len(link.sent) == 5, link.sent
    assert c.t >= 45000, c.t
    gap = w.gap(c.t)
    assert gap <= _FEED_MS, gap


def test_serving_between_reports_feeds_the_watchdog():
    c = SimClock(0)
    w = _armed_endpoint(c)
    ep = Endpoint(SimLink(c), c, Rand())
    ep.serve(54000)  # a registration's whole Update interval
    assert c.t == 54000, c.t
    gap = w.gap(c.t)
    assert gap <= _FEED_MS, gap


def _session(clock, wdt):
    import sys

    from ota import slots
    from lwm2m.session import Session

    slots.wdt = wdt  # as boot.py leaves it
    slots.wdt_ms = 2 * _FEED_MS
    try:
        return Session({"endpoint": "n1", "lifetime": 60}, clock=clock)
    finally:
        del sys.modules["ota.slots"]


def test_the_session_sleeping_without_a_connection_feeds_the_watchdog():
    c = SimClock(0)
    w = FakeWDT(c)
    ses = _session(c, w)
    ses._sleep(7300)  # Register back-off with no endpoint yet
    assert c.t == 7300 and c.sleeps == [500] * 14 + [300], c.sleeps
    gap = w.gap(c.t)
    assert gap <= _FEED_MS, gap


def test_without_a_watchdog_the_session_sleeps_in_one_piece():
    c = SimClock(0)
    ses = _session(c, None)
    ses._sleep(7300)
    assert c.sleeps == [7300], c.sleeps


def test_a_network_that_takes_minutes_to_come_up_feeds_the_watchdog():
    import netup
    from mp_test_netup import Clock, FakeNetwork, FakeNic

    c = Clock()
    w = FakeWDT(c)
    nic = FakeNic(None)  # never up on the first attempts ...
    cfg = {"net": "ethernet", "net_timeout_ms": 20000}

    def log(m):
        if "attempt 3" in m:
            nic.up_after = 5  # ... then the link comes up
    assert netup.up(cfg, log, FakeNetwork(nic), c, wdt=w) == "10.0.0.7"
    assert c.now > 100000, c.now  # 20 s, 20 s back-off, 40 s, 40 s back-off, ...
    gap = w.gap(c.now)
    assert gap <= 100, gap  # netup's poll interval


# -- boot.py arms it with config "wdt_ms" before the app runs --


class _Machine:
    # a board's machine module: WDT records its timeout; refuses above ``most`` ms
    most = 1 << 30
    made = []

    class WDT:
        def __init__(self, id=0, timeout=5000):
            if timeout > _Machine.most:
                raise ValueError("timeout exceeds %d ms" % _Machine.most)
            self.timeout = timeout
            _Machine.made.append(self)

        def feed(self):
            pass


def _boot(config):
    # boot.py with config.json holding ``config`` (no slots: the base firmware), a fake
    # machine and an app that records the watchdog it found armed; slots.wdt, wdt_ms
    import json
    import sys

    with open("config.json", "w") as f:
        f.write(config if isinstance(config, str) else json.dumps(config))
    sys.argv[1:] = []  # node.main's config path: config.json

    class App:
        pass

    sys.modules["machine"] = _Machine
    sys.modules["app"] = App  # the app: already "imported", so boot.py runs nothing
    import boot  # noqa: F401 (it runs on import)
    from ota import slots

    return slots.wdt, slots.wdt_ms


def test_boot_arms_the_watchdog_with_the_configs_timeout_before_the_app():
    w, ms = _boot({"endpoint": "n1", "wdt_ms": 1500})
    assert w is _Machine.made[0] and (w.timeout, ms, len(_Machine.made)) == (1500, 1500, 1)


def test_boot_arms_the_default_watchdog_without_a_readable_timeout():
    for cfg in ({"endpoint": "n1"}, {"endpoint": "n1", "wdt_ms": 500}, "{not json", "[]",
                {"endpoint": "n1", "wdt_ms": True}):
        import sys

        sys.modules.pop("boot", None)
        del _Machine.made[:]
        w, ms = _boot(cfg)
        assert (w.timeout, ms) == (30000, 30000), cfg


def test_a_zero_timeout_arms_no_watchdog():
    w, ms = _boot({"endpoint": "n1", "wdt_ms": 0})
    assert (w, ms, _Machine.made) == (None, 0, [])


def test_a_timeout_the_port_refuses_runs_the_node_without_a_watchdog():
    _Machine.most = 8388  # the rp2 port's limit
    w, ms = _boot({"endpoint": "n1", "wdt_ms": 30000})
    assert (w, ms, _Machine.made) == (None, 0, [])


def test_the_config_accepts_only_timeouts_boot_arms():
    from storage import config

    base = {"endpoint": "n1", "gateway": "coap://127.0.0.1", "signal": "s.i16"}
    for ms in (0, 1000, 600000):
        base["wdt_ms"] = ms
        assert "wdt_ms" not in config.check(base)  # read by boot.py only: not kept
    for bad in (1, 999, 600001, -1, "30000", True, 1.5):
        base["wdt_ms"] = bad
        try:
            config.check(base)
            raise AssertionError("accepted %r" % (bad,))
        except config.ConfigError as e:
            assert "'wdt_ms' must be 0 (no watchdog) or an integer in 1000..600000" in str(e)

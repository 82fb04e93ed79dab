# The node's flash log (firmware/node.py "Store and forward") under MicroPython: reports
# the simulated gateway does not acknowledge go into flashlog.Log (a file in the test's
# directory) and reach the gateway later, oldest first, with the time they were made.
# The fault is injected at the lowest level: the simulated server (mp_test_node.Server
# on a SimLink) drops every datagram while it is "down" or drops given Sends.
HEAPSIZE = "256K"
FIRMWARE = "mpy"

import node
from cbor.decode import loads
from storage import config
from mp_test_node import Server, write_signal, _GOOD
from mp_test_simlink import SimClock, SimLink, Rand

WALL_MS = 1700000000000  # the wall clock at SimClock t = 0


class WallClock(SimClock):
    """SimClock with a wall clock (time_ns) that runs with the simulated ticks."""

    def __init__(self, t=1000, wall_ms=WALL_MS):
        super().__init__(t)
        self.wall_ms = wall_ms

    def time_ns(self):
        return (self.wall_ms + self.t) * 1000000


def _node(clock, srv, **extra):
    cfg = dict(_GOOD, lifetime=30, window=16, report_ms=1000)
    cfg.update(extra)
    cfg = config.check(cfg)
    n = node.Node(cfg, config.open_sensor(cfg), transport=SimLink(clock, srv), clock=clock,
                  rand=Rand(3))
    return n


def _sends(srv):
    # [(seq, bt or None, time sent)] of the Sends the server acknowledged
    out = []
    for t, code, path, q, cf, payload in srv.ops(2, "dp"):
        pack = loads(payload)
        seq = None
        for rec in pack:
            if rec.get(-2) == "/33000/0/":
                seq = rec[2]
        out.append((seq, pack[0].get(-3), t))
    return out


def _window_res(n, rid):
    # /33000/0/rid as the node's object serves it
    from report import Window

    class V:
        def int(self, x):
            self.v = x

    v = V()
    Window(n).get(0, rid, -1, v)
    return v.v


def _offline(n, srv, c, reports):
    # `reports` reports while the gateway is down; returns the ticks of each
    srv.down_until = 10**12
    made = []
    for _ in range(reports):
        n.run(windows=1)
        made.append(n._last_report)
    srv.down_until = -1
    return made


def _online(n, reports=1):
    # run until registered and the log is empty, then `reports` reports more
    for _ in range(200):
        if n.registered() and not n.flog.count:
            break
        n.run(windows=1)
    else:
        raise AssertionError("the log is not sent: %d left" % n.flog.count)
    n.run(windows=reports)


def test_offline_reports_are_logged_and_sent_in_order_with_their_time():
    write_signal("s.i16", 4000)
    c = WallClock()
    srv = Server()
    n = _node(c, srv)
    made = _offline(n, srv, c, 6)
    if srv.ops(2, "dp") or n.flog.count != 6 or _window_res(n, 13) != 6:
        raise AssertionError((srv.log, n.flog.count))
    if n.sent or n.lost or _window_res(n, 12):
        raise AssertionError("sent %d lost %d" % (n.sent, n.lost))
    _online(n, 2)  # registers (after its back-off), sends the log, then new reports
    got = _sends(srv)
    if [s for s, _, _ in got] != list(range(len(got))) or len(got) < 8:
        raise AssertionError(got)
    for i, (seq, bt, sent) in enumerate(got[:6]):
        # the wall-clock time the report was made, to the millisecond
        if bt != (WALL_MS + made[i]) / 1000 or sent <= made[i]:
            raise AssertionError((i, bt, made[i], sent))
    if got[-1][1] is not None or got[-2][1] is not None:
        raise AssertionError("a report sent at once carries no time: %r" % (got[-2:],))
    if n.flog.count or _window_res(n, 13) or _window_res(n, 12):
        raise AssertionError(n.flog.count)


def test_full_log_drops_the_oldest_and_counts_them():
    write_signal("s.i16", 4000)
    c = WallClock()
    srv = Server()
    n = _node(c, srv, log_slots=3)
    _offline(n, srv, c, 7)
    if n.flog.count != 3 or n.flog.dropped != 4 or _window_res(n, 12) != 4:
        raise AssertionError((n.flog.count, n.flog.dropped))
    n.run(windows=1)  # logged too: the gateway is back, the node still in its back-off
    _online(n)
    seqs = [s for s, _, _ in _sends(srv)]
    if seqs[:3] != [5, 6, 7] or seqs != list(range(5, 5 + len(seqs))):
        raise AssertionError(_sends(srv))
    if _window_res(n, 12) != seqs[0]:  # every report before the first sent, persisted
        raise AssertionError((_window_res(n, 12), seqs))


def test_a_logged_report_is_popped_only_after_the_gateway_acknowledged_it():
    write_signal("s.i16", 4000)
    c = WallClock()
    srv = Server()
    n = _node(c, srv)
    _offline(n, srv, c, 3)
    n.maintain()
    while not n.registered():
        n.idle_until(c.t + 1000)
    srv.drop_dp = 2  # the first logged Send and its retransmission are lost
    if n._drain() or n.flog.count != 3:
        raise AssertionError("popped without an ACK: %d left" % n.flog.count)
    srv.drop_dp = 0
    if not n._drain() or n.flog.count:
        raise AssertionError(n.flog.count)
    if [s for s, _, _ in _sends(srv)] != [0, 1, 2]:
        raise AssertionError(_sends(srv))


def test_a_lost_ack_sends_the_report_again_never_skips_it():
    write_signal("s.i16", 4000)
    c = WallClock()
    srv = Server()
    n = _node(c, srv)
    _offline(n, srv, c, 2)
    n.maintain()
    while not n.registered():
        n.idle_until(c.t + 1000)
    answer = srv.__call__
    lost = [1]

    def ack_lost(link, data):  # the gateway stores the first Send, its ACK is lost
        if lost[0] and b"\xb2dp" in data:
            lost[0] -= 1
            srv.log.append((c.t, 2, "dp", [], 112, data[data.index(b"\xff") + 1 :]))
            return
        answer(link, data)

    n.ep.transport.peer = ack_lost
    n._drain()
    n._drain()
    seqs = [s for s, _, _ in _sends(srv)]
    if seqs[:2] != [0, 0] or seqs[2:] != [1] or n.flog.count:
        raise AssertionError(seqs)  # a duplicate, and nothing lost


def test_a_new_node_on_the_same_log_sends_what_the_old_one_logged():
    write_signal("s.i16", 4000)
    c = WallClock()
    srv = Server()
    n = _node(c, srv)
    made = _offline(n, srv, c, 4)
    n.flog.close()  # the node "reboots": a new process, a new Node, the same file
    c2 = WallClock(t=500, wall_ms=WALL_MS + 3600000)  # ticks start again, an hour later
    srv2 = Server()
    n2 = _node(c2, srv2)
    n2.run(windows=1)
    got = _sends(srv2)
    if [s for s, _, _ in got] != [0, 1, 2, 3, 0]:  # the old boot's four, then the new one
        raise AssertionError(got)
    for i in range(4):
        if got[i][1] != (WALL_MS + made[i]) / 1000:
            raise AssertionError((i, got[i], made[i]))


def test_without_a_wall_clock_the_time_is_relative_and_lost_across_a_reboot():
    write_signal("s.i16", 4000)
    c = WallClock(wall_ms=-1000 * 10**9)  # time_ns in 1938: not set
    srv = Server()
    n = _node(c, srv)
    made = _offline(n, srv, c, 2)
    _online(n)
    got = _sends(srv)
    if [s for s, _, _ in got][:3] != [0, 1, 2]:
        raise AssertionError(got)
    for i in range(2):
        # RFC 8428 4.5.3: a time below 2**28 is relative to when the gateway got it
        if got[i][1] != (made[i] - got[i][2]) / 1000:
            raise AssertionError((i, got[i], made[i]))
    last = got[-1][0]
    _offline(n, srv, c, 1)
    n.flog.close()
    c2 = WallClock(wall_ms=-1000 * 10**9)
    srv2 = Server()
    n2 = _node(c2, srv2)
    n2.run(windows=1)
    got = _sends(srv2)
    if [(s, bt) for s, bt, _ in got] != [(last + 1, None), (0, None)]:
        raise AssertionError(got)  # ticks of another boot: sent without a time


def test_no_log_drops_and_counts():
    write_signal("s.i16", 4000)
    c = WallClock()
    srv = Server()
    n = _node(c, srv, log_slots=0)
    n.run(windows=1)
    srv.drop_dp = 5
    n.run(windows=1)
    if n.flog is not None or n.lost != 1 or _window_res(n, 12) != 1 or _window_res(n, 13):
        raise AssertionError((n.lost, _window_res(n, 12)))


class _CountSends:
    """Passes datagrams to the server; records the MID of every /dp transmission, also
    those the server drops while it is down."""

    def __init__(self, srv):
        self.srv = srv
        self.mids = []

    def __call__(self, link, data):
        from coap.decode import Message
        from mp_test_simlink import header

        m = Message().decode(data)
        path = "/".join(str(m.value(i), "utf-8") for i in range(m.nopt) if m.onum[i] == 11)
        if path == "dp":
            self.mids.append(header(data)[2])
        return self.srv(link, data)


def test_after_a_send_timeout_reports_go_to_the_log_without_waiting():
    # one Send times out (the gateway went away): the node registers again with back-off
    # and logs the next reports at once instead of spending the Send deadline on each
    write_signal("s.i16", 4000)
    c = WallClock()
    srv = Server()
    counter = _CountSends(srv)
    cfg = config.check(dict(_GOOD, lifetime=30, window=16, report_ms=1000))
    n = node.Node(cfg, config.open_sensor(cfg), transport=SimLink(c, counter), clock=c,
                  rand=Rand(3))
    n.run(windows=2)
    if n.sent != 2 or not n.registered():
        raise AssertionError("sent %d" % n.sent)
    before = len(counter.mids)
    _offline(n, srv, c, 6)
    mids = counter.mids[before:]
    if len(set(mids)) != 1 or len(mids) < 2:  # one Send, retransmitted, then no other
        raise AssertionError(mids)
    if n.flog.count != 6 or n.lost:
        raise AssertionError((n.flog.count, n.lost))
    _online(n)
    seqs = [s for s, _, _ in _sends(srv)]
    if seqs != list(range(len(seqs))) or len(seqs) < 9:
        raise AssertionError(seqs)

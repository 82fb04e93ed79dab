# A server without LwM2M Send (/dp) answers every Send 4.00, 4.04 or 4.05
# (firmware/node.py, lwm2m/client.py): after `send_refusals` (config, default 3) such
# refusals in a row the node stops using Send for that server, reports by Observe/Notify
# only, says so once (a log line and /33000/0/14), and counts none of the refused reports
# as lost (the server got them); its flash log does not keep them. A server that has
# Send and refuses a few reports keeps getting Sends.
HEAPSIZE = "320K"  # with the test modules and simulated links (the node alone: _memory.py)
FIRMWARE = "mpy"

from mp_test_lwm2m_client import DM, ask, check, senml, GET, _observe, _seqs
from mp_test_node import _node, NO_LOG
from cbor.decode import loads


def _res(n, rid):
    # /33000/0/rid as the node's object serves it (a Read over the link would run a
    # window, and so a report)
    from report import Window

    class V:
        def int(self, x):
            self.v = x

        bool = int

    v = V()
    Window(n).get(0, rid, -1, v)
    return v.v


def _start(code, extra=None):
    dm = DM()
    dm.dp_code = code
    n, srv, link, c = _node(extra, dm)
    lines = []
    log = n.log

    def keep(what, arg=None):
        lines.append(what)
        log(what, arg)

    n.log = keep
    return n, dm, link, lines


def _check_notify_only(code, extra=None, limit=3):
    n, dm, link, lines = _start(code, extra)
    n.run(windows=1)
    _observe(n, dm, link, "/33000/0", b"\x07")
    n.run(windows=12)
    sends = dm.ops(2, "dp")
    check(len(sends) == limit, (hex(code), len(sends)))
    said = [x for x in lines if x.startswith("send refused")]
    check(said == ["send refused: reports by notify only"], lines)
    check(n.client.refused == limit + 1, n.client.refused)  # past the limit: said once
    # reports go on by Notify: every window's sequence number reaches the observer
    k = len(dm.notes)
    n.run(windows=5)
    got = _seqs(dm, b"\x07", k)
    check(len(got) >= 4 and got == sorted(got) and got[-1] >= n.seq - 1, (got, n.seq))
    check(len(dm.ops(2, "dp")) == limit, "a Send after Send was turned off")
    check(_res(n, 14) is True, _res(n, 14))
    m = ask(n, dm, link, GET, "/33000/0/14")  # served, and observable with /33000/0
    check(senml(m) == {"/33000/0/14": True}, senml(m))
    # none of the refused reports is lost, none waits in the log
    check(n.lost == 0 and _res(n, 12) == 0 and _res(n, 13) == 0,
          (n.lost, _res(n, 12), _res(n, 13)))
    check(n.flog is None or n.flog.count == 0, n.flog and n.flog.count)
    check(len([x for x in lines if x.startswith("send refused")]) == 1, lines)


def test_a_server_without_send_gets_reports_by_notify_after_3_refusals():
    for code in (0x85, 0x80, 0x84):
        _check_notify_only(code)


def test_a_server_without_send_and_a_node_without_log_gets_reports_by_notify():
    for code in (0x85, 0x84):
        _check_notify_only(code, NO_LOG)


def test_send_refusals_is_configurable():
    _check_notify_only(0x85, {"send_refusals": 5}, 5)
    n, dm, link, lines = _start(0x85, {"send_refusals": 0})  # 0: never stop
    n.run(windows=8)
    check(len(dm.ops(2, "dp")) >= 4 and not _res(n, 14), len(dm.ops(2, "dp")))


def test_a_server_with_send_refusing_two_reports_keeps_send():
    n, dm, link, lines = _start(0x80, NO_LOG)
    n.run(windows=2)  # two reports refused (4.00)
    dm.dp_code = 0x44
    n.run(windows=3)
    sends = dm.ops(2, "dp")
    check(len(sends) == 5 and _res(n, 14) is False, len(sends))
    check(n.lost == 0 and _res(n, 12) == 0, (n.lost, _res(n, 12)))
    check(not [x for x in lines if x.startswith("send refused")], lines)


def test_a_server_with_send_refusing_logged_reports_keeps_send():
    n, dm, link, lines = _start(0x85, {"send_refusals": 5})
    # 3 refusals: the first report into the log; then its record (popped) and the second
    n.run(windows=2)
    check(len(dm.ops(2, "dp")) == 3 and not _res(n, 14), len(dm.ops(2, "dp")))
    dm.dp_code = 0x44
    n.run(windows=3)
    check(not _res(n, 14) and n.flog.count == 0, n.flog.count)
    check(n.lost == 0 and _res(n, 12) == 0, (n.lost, _res(n, 12)))
    # the record refused 4.05 went (popped: it would block the log), the second arrived
    seqs = [loads(e[5])[1][2] for e in dm.ops(2, "dp")]
    check(seqs == [0, 0, 1, 1, 2, 3, 4], seqs)

# The Server object (/1/0) the LwM2M server wrote survives a reboot (firmware/lwm2m/session.py,
# storage/serverobj.py): lifetime, default pmin/pmax, notification storing and binding
# are kept in flash (a temp file, renamed) and the node registers with them after the
# reboot, as long as config.json (or a bootstrap) still provisions the same account.
# A "reboot" is a second node.Node over the same filesystem (the test's directory).
HEAPSIZE = "256K"
FIRMWARE = "mpy"

import os

from mp_test_lwm2m_client import DM, ask, check, senml, GET, PUT, POST
from mp_test_node import _node

_SRV = {"/1/0/0": 1, "/1/0/1": 10, "/1/0/2": 0, "/1/0/3": 0, "/1/0/6": False, "/1/0/7": "U"}


def _boot(extra=None):
    dm = DM()
    n, srv, link, c = _node(extra, dm)
    n.run(windows=1)
    return n, dm, link


def _write_all(n, dm, link):
    for path, text in (("/1/0/1", b"120"), ("/1/0/2", b"2"), ("/1/0/3", b"30"),
                       ("/1/0/6", b"1"), ("/1/0/7", b"UQ")):
        m = ask(n, dm, link, PUT, path, cf=0, payload=text)
        check(m.code == 0x44, (path, hex(m.code)))


def test_lifetime_written_by_the_server_survives_a_reboot():
    n, dm, link = _boot()
    _write_all(n, dm, link)
    check("serverobj.json" in os.listdir() and "serverobj.json.tmp" not in os.listdir(),
          os.listdir())
    # the reboot: a new node over the same flash
    n, dm, link = _boot()
    reg = dm.ops(2, "rd")[0]
    check(reg[3] == ["ep=n1", "lt=120", "lwm2m=1.1", "b=UQ"], reg[3])
    check(n.queue and n.client.lifetime == 120, (n.queue, n.client.lifetime))
    v = senml(ask(n, dm, link, GET, "/1/0"))
    want = dict(_SRV)
    want.update({"/1/0/1": 120, "/1/0/2": 2, "/1/0/3": 30, "/1/0/6": True, "/1/0/7": "UQ"})
    check(v == want, v)


def test_server_object_written_just_before_a_reboot_is_kept():
    n, dm, link = _boot()
    check(ask(n, dm, link, PUT, "/1/0/1", cf=0, payload=b"300").code == 0x44, "write")
    dm.request(link, POST, "/3/0/4")  # Reboot at once
    try:
        n.run(windows=1)
    except SystemExit as e:
        check(e.args[0] == 3, e.args)
    else:
        raise AssertionError("no reboot")
    n, dm, link = _boot()
    check(dm.ops(2, "rd")[0][3][1] == "lt=300", dm.ops(2, "rd")[0][3])


def test_provisioning_changed_since_the_write_wins_over_the_kept_server_object():
    n, dm, link = _boot()
    _write_all(n, dm, link)
    # the operator gives config.json another lifetime: it is the new account's
    n, dm, link = _boot({"lifetime": 50})
    check(dm.ops(2, "rd")[0][3][1:4] == ["lt=50", "lwm2m=1.1", "b=U"], dm.ops(2, "rd")[0][3])
    # another server: the values written by the first are not its values
    n, dm, link = _boot({"gateway": "coap://127.0.0.2"})
    check(dm.ops(2, "rd")[0][3][1] == "lt=10", dm.ops(2, "rd")[0][3])
    # back to the account the values were written for: they hold again
    n, dm, link = _boot()
    check(dm.ops(2, "rd")[0][3][1:4] == ["lt=120", "lwm2m=1.1", "b=UQ"], dm.ops(2, "rd")[0][3])


def test_damaged_server_object_file_is_ignored():
    for text in ("{not json", "[1]", '{"for": ["coap://127.0.0.1", 10, "U"], "lifetime": 5, '
                 '"pmin": 0, "pmax": 0, "storing": false, "binding": "U"}',
                 '{"for": ["coap://127.0.0.1", 10, "U"], "lifetime": 20, "pmin": 0, '
                 '"pmax": 0, "storing": false, "binding": "T"}'):
        with open("serverobj.json", "w") as f:
            f.write(text)
        n, dm, link = _boot()
        check(dm.ops(2, "rd")[0][3][1:4] == ["lt=10", "lwm2m=1.1", "b=U"], (text, dm.log))

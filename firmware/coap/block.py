# Block-wise requests (RFC 7959 section 2.5) for the Endpoint (coap/endpoint.py): a request payload
# larger than the endpoint's buffer goes out in Block1 blocks, each its own exchange
# (fresh MID and random token, the request's options repeated), with Size1 in the
# first; the server's 2.31 Continue may ask for smaller blocks (section 2.9.1), as may
# a 4.13 answering the first block (section 2.9.3). Loaded by Endpoint.exchange_body.
from micropython import const
from coap.msg import CoapError, move

_BLOCK1 = const(27)
_SIZE1 = const(60)
_CONTINUE = const(0x5F)  # 2.31
_TOO_LARGE = const(0x8D)  # 4.13


def send(ep, body, n, deadline_ms, szx):
    w = ep.w
    tx = ep.tx
    prefix = w.pos
    last = w._last
    if last > _BLOCK1:
        raise CoapError("request options above Block1")
    if prefix + 1 + n <= len(tx):  # fits in one message
        if n:
            p = w.mark_payload()
            move(tx, p, body, 0, n)
            w.pos = p + n
        return ep.exchange(deadline_ms)
    room = len(tx) - prefix - 4 - 6 - 1  # Block1, Size1, payload marker
    if szx > 6:
        szx = 6
    while szx > 0 and 16 << szx > room:
        szx -= 1
    if 16 > room:
        raise CoapError("no room for a block")
    off = 0
    first = True
    while True:
        bs = 16 << szx
        k = n - off
        more = k > bs
        if more:
            k = bs
        if not first:
            ep._renew()
        first = False
        w.pos = prefix
        w._last = last
        w.option_uint(_BLOCK1, ((off >> (szx + 4)) << 4) | (8 if more else 0) | szx)
        if off == 0:
            w.option_uint(_SIZE1, n)
        p = w.mark_payload()
        move(tx, p, body, off, k)
        w.pos = p + k
        r = ep.exchange(deadline_ms)
        i = r.find(_BLOCK1)
        rs = r.uint(i) & 7 if i >= 0 else 7
        if r.code == _CONTINUE and more:
            if rs < szx:
                szx = rs  # the server wants smaller blocks from now on
            off += k
            continue
        if r.code == _TOO_LARGE and off == 0 and rs < szx:
            szx = rs  # start again with the size the server can take
            continue
        return r

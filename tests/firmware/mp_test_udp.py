# The UDP transport (firmware/coap/udp.py) on real loopback sockets under MicroPython:
# datagrams both ways, one datagram per recv (never merged), poll timeout, a closed
# peer port (ICMP ECONNREFUSED) is a lost datagram rather than an exception, and what
# a received datagram costs in heap.
import socket
import time

from coap.udp import UdpTransport


def _server():
    # MicroPython's socket has no getsockname(): try ports until one binds
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    port = 40000 + (time.ticks_ms() % 20000)
    for i in range(200):
        try:
            s.bind(socket.getaddrinfo("127.0.0.1", port + i)[0][-1])
            return s, port + i
        except OSError:
            pass
    raise AssertionError("no free port")


def test_datagrams_both_ways_not_merged():
    srv, port = _server()
    t = UdpTransport("127.0.0.1", port)
    t.send(b"hello-xx", 5)
    data, addr = srv.recvfrom(64)
    if data != b"hello":
        raise AssertionError(data)
    srv.sendto(b"one", addr)
    srv.sendto(b"two!", addr)
    time.sleep_ms(20)
    a = t.recv(1000)
    b = t.recv(1000)
    if (a, b) != (b"one", b"two!"):
        raise AssertionError((a, b))
    t.close()
    srv.close()


def test_recv_times_out_with_none():
    srv, port = _server()
    t = UdpTransport("127.0.0.1", port)
    t0 = time.ticks_ms()
    got = t.recv(80)
    dt = time.ticks_diff(time.ticks_ms(), t0)
    if got is not None or not 70 <= dt < 1000:
        raise AssertionError((got, dt))
    t.close()
    srv.close()


def test_closed_peer_port_is_a_lost_datagram():
    srv, port = _server()
    srv.close()  # nobody listens: the kernel answers with ICMP port unreachable
    t = UdpTransport("127.0.0.1", port)
    for _ in range(3):
        try:
            t.send(b"x", 1)
        except OSError:
            pass  # the endpoint treats a refused send as a lost datagram
        if t.recv(50) is not None:
            raise AssertionError("datagram from nowhere")
    t.close()


def test_heap_cost_of_a_received_datagram():
    import gc

    srv, port = _server()
    t = UdpTransport("127.0.0.1", port)
    t.send(b"x", 1)
    _, addr = srv.recvfrom(16)
    ack = b"\x64\x44\x12\x34\x01\x02\x03\x04"  # an ACK 2.04 with a 4-byte token
    N = 20
    gc.collect()
    gc.disable()
    try:
        before = gc.mem_alloc()
        for _ in range(N):
            srv.sendto(ack, addr)
            if t.recv(1000) != ack:
                raise AssertionError("lost on loopback")
        used = gc.mem_alloc() - before
    finally:
        gc.enable()
    print("UdpTransport.recv: %d bytes per 8-byte datagram (server sendto included)"
          % (used // N))
    if used // N > 128:
        raise AssertionError("recv costs %d bytes" % (used // N))
    t.close()
    srv.close()

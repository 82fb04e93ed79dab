# UDP transports for the Endpoint (coap/endpoint.py): UdpTransport, a connected socket
# (one peer, the node as a client), and UdpServer, a bound socket answering any peer;
# datagrams are received through poll with a timeout (which a stop stream, see
# UdpTransport.stop_on, cuts short).
from micropython import const
import socket
import select

_MAX_DATAGRAM = const(1152)  # RFC 7252 section 4.6: a message fits in 1152 bytes


class UdpTransport:
    """A connected UDP socket: one peer, datagrams via poll with a timeout."""

    def __init__(self, host, port):
        ai = socket.getaddrinfo(host, port, 0, socket.SOCK_DGRAM)
        if not ai:
            raise OSError("cannot resolve " + host)
        ai = ai[0]
        self._sock = socket.socket(ai[0], socket.SOCK_DGRAM)
        try:
            self._sock.connect(ai[-1])
        except OSError:
            self._sock.close()
            raise
        self._poll = select.poll()
        self._poll.register(self._sock, select.POLLIN)
        self._stop = None

    def stop_on(self, stream):
        """Stop when ``stream`` turns readable (a supervisor closed it): recv() raises
        KeyboardInterrupt, the node's shutdown, where a wait is, not wherever a signal
        happens to land (lwm2m/session.py Session.stop_on). None: no longer."""
        if self._stop is not None:
            self._poll.unregister(self._stop)
        self._stop = stream
        if stream is not None:
            self._poll.register(stream, select.POLLIN)

    def send(self, buf, n):
        self._sock.write(buf, n)

    def recv(self, timeout_ms):
        if timeout_ms < 0:
            timeout_ms = 0
        for s, _ in self._poll.ipoll(timeout_ms):
            if s is self._stop:
                raise KeyboardInterrupt
            try:
                # recv allocates the datagram; stream readinto would merge datagrams
                return self._sock.recv(_MAX_DATAGRAM)
            except OSError:
                # ECONNREFUSED: an ICMP error for an earlier datagram (peer down)
                return None
        return None

    def close(self):
        self._sock.close()


class UdpServer:
    """A bound UDP socket serving any peer: recv() remembers where the datagram came
    from in ``remote``; send() answers that peer, sendto() any. For an endpoint that
    serves resources (Endpoint.serve_resources) to clients on the network."""

    def __init__(self, host="0.0.0.0", port=5683):
        ai = socket.getaddrinfo(host, port, 0, socket.SOCK_DGRAM)
        if not ai:
            raise OSError("cannot resolve " + host)
        ai = ai[0]
        self._sock = socket.socket(ai[0], socket.SOCK_DGRAM)
        try:
            self._sock.bind(ai[-1])
        except OSError:
            self._sock.close()
            raise
        self._poll = select.poll()
        self._poll.register(self._sock, select.POLLIN)
        self._buf = None
        self._mv = None
        self.remote = None

    def send(self, buf, n):
        if self.remote is not None:
            self.sendto(buf, n, self.remote)

    def sendto(self, buf, n, peer):
        # sendto has no length argument: a view of buf[:n] (one small object)
        if buf is not self._buf:
            self._buf = buf
            self._mv = memoryview(buf)
        self._sock.sendto(self._mv[:n], peer)

    def recv(self, timeout_ms):
        if timeout_ms < 0:
            timeout_ms = 0
        for _ in self._poll.ipoll(timeout_ms):
            try:
                data, self.remote = self._sock.recvfrom(_MAX_DATAGRAM)
                return data
            except OSError:
                return None
        return None

    def close(self):
        self._sock.close()

#!/usr/bin/env python3
"""Pipelined cacheable GETs through dduct's TLS listener (TLS inside TLS) and its plain listener,
read the way apt reads them.

apt's https method behind an https:// proxy stacks two GnuTLS sessions: the inner one pulls
exactly one record at a time out of the outer one, and before waiting on the socket apt asks only
the inner session whether it holds data. If an outer record carries the end of one inner record
and the start of the next, the start of the next sits in the outer session while apt waits on a
socket that stays quiet once dduct has sent everything: the download hangs until apt's timeout
(seen in CI: the 32 MiB .deb of the client test, a cache hit, timed out with its last bytes in
apt's outer session). `LayeredTls` below reads the same way and counts the inner record ends at
which the outer session still held bytes."""
import hashlib
import os
import select
import socket
import ssl
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cache_rig import origin_gets  # noqa: E402
from dductlib import client  # noqa: E402
from dductlib.harness import check, check_eq, run  # noqa: E402
from dductlib.origin import pattern_sha256  # noqa: E402

BIG = 4 << 20
SMALL = [300000, 30912, 51392, 71872, 82112, 20672]  # apt's mid, small1..4 and tiny
WAIT = 30  # turns a hang into a failure; never a speed limit


class Stalled(AssertionError):
    pass


class LayeredTls:
    """A client transport: TLS to dduct's TLS listener, CONNECT, then TLS to the origin inside,
    each layer reading exactly one record at a time from the layer below (as GnuTLS does)."""

    def __init__(self, port, cafile, host, origin_port, inner_cafile=None):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
        self.raw = b""  # bytes from the socket not yet given to the outer session
        ctx = client.tls_context(cafile)
        self.o_in, self.o_out = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.outer = ctx.wrap_bio(self.o_in, self.o_out, server_hostname="127.0.0.1")
        self._handshake(self.outer, self._outer_record, self._sock_send)
        self.inner = None
        self.inner_records = 0
        self.leftovers = []  # (inner record number, outer bytes still held at its end)
        self.data_phase = False  # apt drives handshakes to the end; only data reads wait
        authority = "%s:%d" % (host, origin_port)
        self.send(client.request_bytes("CONNECT", authority, authority))
        rd = client.Reader(self)
        r = rd.read_response("CONNECT")
        check(r is not None and r.status == 200 and not rd.buf, "CONNECT answered 200", r)
        self.i_in, self.i_out = ssl.MemoryBIO(), ssl.MemoryBIO()
        ictx = client.tls_context(inner_cafile) if inner_cafile else ctx
        self.inner = ictx.wrap_bio(self.i_in, self.i_out, server_hostname=host)
        self._handshake(self.inner, self._inner_record, self._outer_send)
        self.data_phase = True

    # -- the socket and the outer session --

    def _sock_send(self, data):
        self.sock.sendall(data)

    def _take(self, n):
        """n bytes of the socket's stream; waits (bounded) for them."""
        while len(self.raw) < n:
            ready, _, _ = select.select([self.sock], [], [], WAIT)
            if not ready:
                raise Stalled("the socket stayed quiet for %d s" % WAIT)
            data = self.sock.recv(65536)
            check(data, "dduct closed the connection")
            self.raw += data
        out, self.raw = self.raw[:n], self.raw[n:]
        return out

    def _outer_record(self):
        head = self._take(5)
        self.o_in.write(head + self._take(int.from_bytes(head[3:5], "big")))

    def _outer_send(self, data):
        self.outer.write(data)
        self._sock_send(self.o_out.read())

    def _outer_read(self, n):
        """Up to n plaintext bytes of the outer session's current record, or of the next."""
        while True:
            if self.outer.pending() == 0 and not self.o_in.pending:
                self._outer_record()
            try:
                return self.outer.read(n)
            except ssl.SSLWantReadError:
                continue

    def _outer_take(self, n):
        out = b""
        while len(out) < n:
            out += self._outer_read(n - len(out))
        return out

    # -- the inner session --

    def _inner_record(self):
        head = self._outer_take(5)
        self.i_in.write(head + self._outer_take(int.from_bytes(head[3:5], "big")))
        self.inner_records += 1
        if self.data_phase and self.outer.pending() > 0:
            # apt would now consume this record and then wait on the socket for the next one,
            # which already sits (at least partly) in the outer session.
            self.leftovers.append((self.inner_records, self.outer.pending()))

    def _handshake(self, obj, more, send):
        while True:
            try:
                obj.do_handshake()
                break
            except ssl.SSLWantReadError:
                out = (self.o_out if obj is self.outer else self.i_out).read()
                if out:
                    send(out)
                more()
        out = (self.o_out if obj is self.outer else self.i_out).read()
        if out:
            send(out)

    def send(self, data):
        if self.inner is None:
            self._outer_send(data)
            return
        self.inner.write(data)
        self._outer_send(self.i_out.read())

    sendall = send

    def recv(self, n):
        obj = self.inner or self.outer
        while True:
            try:
                return obj.read(n)
            except ssl.SSLWantReadError:
                if obj is self.outer:
                    self._outer_record()
                    continue
                # As apt: the inner session holds nothing, so wait on the socket (the outer
                # session's buffer is not looked at), then pull the next record.
                if not self.raw:
                    ready, _, _ = select.select([self.sock], [], [], WAIT)
                    if not ready:
                        raise Stalled("waited %d s on a quiet socket with %d bytes in the outer "
                                      "TLS session" % (WAIT, self.outer.pending()))
                self._inner_record()
            except ssl.SSLZeroReturnError:
                return b""

    def close(self):
        self.sock.close()


def paths(tag):
    return ["/bytes/%d/%s-%d.deb" % (n, tag, i) for i, n in enumerate([BIG] + SMALL)]


def fetch_pipelined(t, host, tag, all_at_once):
    """GET the big file and six small ones on one connection, pipelined: all in one write, or
    (as apt does) the rest once the first answer's head came. Reads the big body in bursts."""
    reqs = [client.request_bytes("GET", p, host) for p in paths(tag)]
    rd = client.Reader(t)
    t.sendall(b"".join(reqs) if all_at_once else reqs[0])
    head = rd.read_head()
    check(head is not None, tag + ": an answer to the big GET")
    check_eq(head[0], 200, tag + ": big GET status")
    if not all_at_once:
        for r in reqs[1:]:
            t.sendall(r)
    h, got = hashlib.sha256(rd.buf), len(rd.buf)
    rd.buf = b""
    burst = 0
    while got < BIG:
        data = t.recv(min(65536, BIG - got))
        check(data, "%s: EOF after %d of %d big body bytes" % (tag, got, BIG))
        h.update(data)
        got += len(data)
        burst += len(data)
        if burst >= (1 << 20):  # a reader that stops now and then, as apt writing its file
            burst = 0
            time.sleep(0.05)
    check_eq(h.hexdigest(), pattern_sha256(BIG), tag + ": big body bytes")
    for i, n in enumerate(SMALL):
        r = rd.read_response("GET")
        check(r is not None, "%s: answer %d of the pipelined small GETs" % (tag, i + 1))
        check_eq(r.status, 200, "%s: small GET %d status" % (tag, i + 1))
        check_eq(hashlib.sha256(r.body).hexdigest(), pattern_sha256(n),
                 "%s: small GET %d body" % (tag, i + 1))


def run_cases(rig, d, kinds):
    o = rig.origin
    host = "origin.test:%d" % o.port
    for all_at_once in (True, False):
        tag0 = "once" if all_at_once else "after-head"
        for rnd in ("miss", "hit"):  # the first round fills the cache, the second hits it
            for kind in kinds:
                tag = "%s-%s" % (tag0, kind)
                if kind == "tls":
                    t = LayeredTls(d.tls_port, d.ca_crt, "origin.test", o.port)
                else:
                    tcp = client.Tcp("127.0.0.1", d.tcp_port, timeout=WAIT)
                    st, _, _ = client.connect(tcp, "origin.test", o.port)
                    check_eq(st, 200, "CONNECT through the plain listener")
                    t = client.BioTls(tcp, client.tls_context(d.ca_crt), "origin.test")
                try:
                    fetch_pipelined(t, host, tag, all_at_once)
                except Stalled as e:
                    raise Stalled("%s (%s, %s): %s; outer TLS records that carried bytes of "
                                  "the next inner record: %d, first %r" % (
                                      tag, rnd, kind, e, len(t.leftovers), t.leftovers[:3]))
                if kind == "tls":
                    check(t.inner_records > BIG // 16384, "the big body came in many records")
                    check_eq(t.leftovers, [], "%s (%s): inner records whose end left bytes of "
                             "the next one in the outer TLS session (record, bytes)" % (tag, rnd))
                t.close()
            # the miss round fetched each file once; the hit round added no origin GET
            for p in paths(tag0 + "-" + kinds[0]):
                check_eq(len(origin_gets(o, p)), 1, "origin GETs for %s after the %s" % (p, rnd))


def test_pipelined_tls_in_tls(rig):
    """Through the TLS listener and an intercepted CONNECT, a big cacheable GET and six small
    ones pipelined behind it (in one write, and sent after the big answer's head as apt does),
    on a miss and on a hit, read by a client that layers TLS the way apt does: every answer
    arrives complete, and no outer TLS record ever carries the end of one inner record together
    with the start of the next (which left apt waiting on a quiet socket)."""
    with rig.dduct(proxy={"filters": ["\\.deb$"]}) as d:
        run_cases(rig, d, ["tls"])


def test_pipelined_plain_listener(rig):
    """The same pipelined miss and hit through the plain listener (one TLS layer, the
    intercepted CONNECT): every answer arrives complete and in order."""
    with rig.dduct(proxy={"filters": ["\\.deb$"]}) as d:
        run_cases(rig, d, ["tcp"])


def test_blind_tunnel_in_tls(rig):
    """A blind tunnel through the TLS listener (the origin's own TLS inside dduct's: the inner
    handshake trusts only the origin CA), two
    pipelined GETs read by the same apt-like client: both bodies arrive, and no record of dduct's
    carries the end of one of the origin's records and the start of the next. Plain HTTP through
    such a tunnel (bytes that are not TLS records) still arrives byte-exact."""
    o = rig.origin
    n = (1 << 20) + 7
    with rig.dduct() as d:
        t = LayeredTls(d.tls_port, d.ca_crt, "blind.example", o.port, inner_cafile=rig.pki.ca_crt)
        host = "blind.example:%d" % o.port
        t.sendall(client.request_bytes("GET", "/bytes/%d" % n, host) +
                  client.request_bytes("GET", "/bytes/20672", host))
        rd = client.Reader(t)
        for size in (n, 20672):
            r = rd.read_response("GET")
            check(r is not None, "an answer for %d bytes through the blind tunnel" % size)
            check_eq((r.status, hashlib.sha256(r.body).hexdigest()), (200, pattern_sha256(size)),
                     "%d bytes through the blind tunnel" % size)
        check(t.inner_records > n // 16384, "the body came in many origin records")
        check_eq(t.leftovers, [], "origin records whose end left bytes of the next one in the "
                 "outer TLS session (record, bytes)")
        t.close()
        tls = client.SslSock(client.Tcp("127.0.0.1", d.tls_port, timeout=WAIT),
                             client.tls_context(d.ca_crt), "127.0.0.1")
        st, _, rd = client.connect(tls, "blind.example", rig.plain.port)
        check_eq(st, 200, "CONNECT to the plain origin through the TLS listener")
        tls.sendall(client.request_bytes("GET", "/bytes/%d" % n, "blind.example"))
        r = rd.read_response("GET")
        check_eq((r.status, hashlib.sha256(r.body).hexdigest()), (200, pattern_sha256(n)),
                 "plain HTTP through a tunnel in TLS")
        tls.close()


if __name__ == "__main__":
    run([test_pipelined_tls_in_tls, test_pipelined_plain_listener, test_blind_tunnel_in_tls])

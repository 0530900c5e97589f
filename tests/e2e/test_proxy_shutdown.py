#!/usr/bin/env python3
"""Clean shutdown: SIGTERM/SIGINT stop accepting, let in-flight transfers finish within
shutdown_grace, cut the rest after it, and exit 0 with no sanitizer report."""
import hashlib
import os
import signal
import socket
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from dductlib import client  # noqa: E402
from dductlib.harness import check, check_eq, curl, run, via  # noqa: E402
from dductlib.origin import pattern_sha256  # noqa: E402

MIB = 1048576


def _start_download(d, o, n):
    s = socket.create_connection(("127.0.0.1", d.tcp_port), timeout=60)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    host = "origin.test:%d" % o.port
    s.sendall(client.request_bytes("GET", "http://%s/bytes/%d" % (host, n), host))
    rd = client.Reader(client.Tcp.wrap(s))
    status = rd.read_head()[0]
    check_eq(status, 200, "download started")
    return s, rd


def _refused(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
        return False
    except ConnectionRefusedError:
        return True


def test_idle_sigterm_and_sigint(rig):
    """An idle dduct (after serving, with a kept-alive client connection open) exits 0 on SIGTERM
    and on SIGINT, with no sanitizer report."""
    for sig in (signal.SIGTERM, signal.SIGINT):
        with rig.dduct() as d:
            r = curl(rig, via(d, "https") + [rig.origin.url("origin.test", "/echo/x")])
            check_eq((r.rc, r.status), (0, 200), "served before shutdown")
            idle = socket.create_connection(("127.0.0.1", d.tcp_port))
            d.stop(sig)
            idle.close()


def test_inflight_transfer_finishes_within_grace(rig):
    """SIGTERM during a 48 MiB download read at ~24 MiB/s (about 2 s): new connections are
    refused at once, the download completes byte-exact, and dduct then exits 0."""
    n = 48 * MIB
    rate = 24 * MIB
    with rig.dduct(proxy={"shutdown_grace": 30}) as d:
        s, rd = _start_download(d, rig.plain, n)
        h = hashlib.sha256(rd.buf)
        got = len(rd.buf)
        t0 = time.monotonic()
        d.send_signal(signal.SIGTERM)
        signalled = False
        while got < n:
            c = s.recv(65536)
            check(c, "EOF after %d of %d bytes during the grace period" % (got, n))
            h.update(c)
            got += len(c)
            if not signalled and got > 4 * MIB:
                signalled = True
                check(_refused(d.tcp_port), "listener closed after SIGTERM")
            ahead = got / rate - (time.monotonic() - t0)
            if ahead > 0:
                time.sleep(ahead)
        s.close()
        check_eq(h.hexdigest(), pattern_sha256(n), "download completed during grace")
        d.stop()


def test_grace_expires_for_stuck_transfer(rig):
    """With shutdown_grace = 1, a client that stops reading a 256 MiB download does not keep
    dduct alive: it closes the transfer and exits 0 (no leaks) shortly after the grace."""
    with rig.dduct(proxy={"shutdown_grace": 1}) as d:
        s, _ = _start_download(d, rig.plain, 256 * MIB)
        # A stalled origin request too: both kinds of in-flight work must be torn down.
        t = client.Tcp("127.0.0.1", d.tcp_port)
        host = "origin.test:%d" % rig.origin.port
        st, _, _ = client.connect(t, "origin.test", rig.origin.port)
        check_eq(st, 200, "CONNECT")
        inner = client.BioTls(t, client.tls_context(d.ca_crt), "origin.test")
        inner.sendall(client.request_bytes("GET", "/stall", host))
        time.sleep(0.3)
        d.stop(signal.SIGTERM, timeout=30)
        s.close()
        t.close()


if __name__ == "__main__":
    run([test_idle_sigterm_and_sigint, test_inflight_transfer_finishes_within_grace,
         test_grace_expires_for_stuck_transfer])

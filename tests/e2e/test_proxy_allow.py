#!/usr/bin/env python3
"""allow_clients: with allow_clients = ['127.0.0.1/32'], a client connecting from 127.0.0.2 gets
403 on tcp_bind, is closed before any TLS on tls_bind, and reaches no origin, while 127.0.0.1 is
served."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from dductlib import client  # noqa: E402
from dductlib.harness import check_eq, curl, run, via  # noqa: E402


def test_disallowed_client_gets_403(rig):
    """From 127.0.0.2: an absolute-form GET and a CONNECT on tcp_bind get 403, a connection to
    tls_bind is closed without a handshake, and the origins see nothing; the same requests from
    127.0.0.1 work."""
    plain, origin = rig.plain, rig.origin
    with rig.dduct(proxy={"allow_clients": ["127.0.0.1/32"]}) as d:
        before = (plain.snapshot()["connections"], origin.snapshot()["connections"])
        src = ["--interface", "127.0.0.2"]
        r = curl(rig, src + via(d, "http") + [plain.url("origin.test", "/echo/deny")])
        check_eq((r.rc, r.status), (0, 403), "absolute-form from 127.0.0.2 (%s)" % r.stderr)
        r = curl(rig, src + via(d, "http") + [origin.url("origin.test", "/echo/deny")])
        check_eq((r.rc, r.info.get("http_connect")), (56, 403),
                 "CONNECT from 127.0.0.2 (%s)" % r.stderr)
        t = client.Tcp("127.0.0.1", d.tls_port, source="127.0.0.2")
        try:
            s = client.SslSock(t, client.tls_context(d.ca_crt), "127.0.0.1")
            host = "origin.test:%d" % plain.port
            s.sendall(client.request_bytes("GET", "http://%s/echo/deny" % host, host))
            resp = client.Reader(s).read_response()
            status = resp.status if resp else None
        except (ConnectionError, OSError):
            status = "closed"
        check_eq(status, "closed", "tls_bind from 127.0.0.2: closed before the handshake")
        after = (plain.snapshot()["connections"], origin.snapshot()["connections"])
        check_eq(after, before, "origins untouched by denied clients")
        r = curl(rig, via(d, "http") + [plain.url("origin.test", "/echo/allow")])
        check_eq((r.rc, r.status), (0, 200), "absolute-form from 127.0.0.1")
        r = curl(rig, via(d, "https") + [origin.url("origin.test", "/echo/allow")])
        check_eq((r.rc, r.status), (0, 200), "TLS in TLS from 127.0.0.1")


def test_default_allows_loopback(rig):
    """With the default allow_clients (loopback and private ranges), 127.0.0.2 is served."""
    with rig.dduct() as d:
        r = curl(rig, ["--interface", "127.0.0.2"] + via(d, "http") +
                 [rig.plain.url("origin.test", "/echo/default")])
        check_eq((r.rc, r.status), (0, 200), "127.0.0.2 with default allow_clients")


if __name__ == "__main__":
    run([test_disallowed_client_gets_403, test_default_allows_loopback])

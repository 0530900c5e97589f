#!/usr/bin/env python3
"""Keep-alive on both sides of dduct, pipelining, Expect: 100-continue, Upgrade, HTTP/1.0."""
import hashlib
import json
import os
import socket
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from dductlib import client  # noqa: E402
from dductlib.harness import check, check_eq, curl, run, via  # noqa: E402
from dductlib.origin import pattern_sha256  # noqa: E402


def _conns(o, prefix):
    return [c for (m, t, c) in o.snapshot()["requests"] if t.startswith(prefix)]


def _several(rig, d, kind, o, host, tag, n=5):
    urls = [o.url(host, "/echo/%s/%d" % (tag, i)) for i in range(n)]
    r = curl(rig, via(d, kind) + urls)
    check_eq(r.rc, 0, "%s curl exit (%s)" % (tag, r.stderr[-1000:]))
    check_eq([i.get("http_code") for i in r.infos], [200] * n, tag + " statuses")
    return r


def test_client_and_origin_keepalive(rig):
    """Five requests in one curl run use one client connection to dduct (plain absolute-form,
    an intercepted CONNECT, and TLS in TLS), and dduct sends them to the origin on one kept-alive
    connection."""
    with rig.dduct() as d:
        cases = [("plain-http", "http", rig.plain, "origin.test"),
                 ("intercept-http", "http", rig.origin, "origin.test"),
                 ("intercept-https", "https", rig.origin, "y.wild.test")]
        for tag, kind, o, host in cases:
            r = _several(rig, d, kind, o, host, tag)
            connects = sum(i.get("num_connects", 0) for i in r.infos)
            check_eq(connects, 1, tag + ": client connections curl opened to dduct")
            c = _conns(o, "/echo/%s/" % tag)
            check_eq(len(c), 5, tag + ": requests at the origin")
            check_eq(len(set(c)), 1, tag + ": origin connections used for 5 requests")


def test_origin_pool_across_clients(rig):
    """Two separate client connections to the same origin: the second request reuses the pooled
    origin connection the first one left (plain HTTP and HTTPS origins). One event loop: each
    loop keeps its own pool, and the kernel may hand the second client to another loop."""
    with rig.dduct(proxy={"workers": 1}) as d:
        for tag, o in (("pool-plain", rig.plain), ("pool-tls", rig.origin)):
            for i in range(2):
                r = curl(rig, via(d, "http") + [o.url("origin.test", "/echo/%s/%d" % (tag, i))])
                check_eq((r.rc, r.status), (0, 200), tag)
            c = _conns(o, "/echo/%s/" % tag)
            check_eq(len(c), 2, tag + ": requests")
            check_eq(c[0], c[1], tag + ": second client's request rode the pooled connection")


def _pipeline(t, host_hdr, target_prefix, o):
    reqs = [("GET", target_prefix + "/echo/p0", b""),
            ("POST", target_prefix + "/echo/p1", b"posted-body"),
            ("GET", target_prefix + "/bytes/300001?mode=chunked", b""),
            ("HEAD", target_prefix + "/echo/p3", b""),
            ("GET", target_prefix + "/echo/p4", b"")]
    t.sendall(b"".join(client.request_bytes(m, tg, host_hdr, body=b) for m, tg, b in reqs))
    rd = client.Reader(t)
    out = []
    for m, tg, b in reqs:
        r = rd.read_response(m)
        check(r is not None, "response to pipelined %s %s" % (m, tg))
        out.append(r)
    check_eq([r.status for r in out], [200] * 5, "pipelined statuses")
    check_eq(json.loads(out[0].body)["target"], "/echo/p0", "1st answer in order")
    doc = json.loads(out[1].body)
    check_eq((doc["target"], doc["body"]), ("/echo/p1", "posted-body"), "2nd answer in order")
    check_eq(hashlib.sha256(out[2].body).hexdigest(), pattern_sha256(300001), "3rd: bytes")
    check_eq((out[3].body, out[3].header("X-Echo-Method")), (b"", "HEAD"), "4th: HEAD")
    check_eq(json.loads(out[4].body)["target"], "/echo/p4", "5th answer in order")


def test_pipelined_requests(rig):
    """Five requests written back to back in one packet (as apt does) are answered in order:
    absolute-form on tcp_bind, and inside an intercepted tunnel."""
    o = rig.plain
    with rig.dduct() as d:
        t = client.Tcp("127.0.0.1", d.tcp_port)
        _pipeline(t, "origin.test:%d" % o.port, "http://origin.test:%d" % o.port, o)
        t.close()
        o = rig.origin
        t = client.Tcp("127.0.0.1", d.tcp_port)
        status, _, _ = client.connect(t, "origin.test", o.port)
        check_eq(status, 200, "CONNECT")
        inner = client.BioTls(t, client.tls_context(d.ca_crt), "origin.test")
        _pipeline(inner, "origin.test:%d" % o.port, "", o)
        inner.close()


def _expect_100(t, host_hdr, target):
    body = b"x" * 5000
    t.sendall(client.request_bytes("POST", target, host_hdr,
                                   headers=[("Expect", "100-continue"),
                                            ("Content-Length", str(len(body)))]))
    rd = client.Reader(t)
    head = rd.read_head()  # the socket timeout (30 s) turns a hang into a failure
    check(head is not None, "an answer to Expect: 100-continue")
    check_eq(head[0], 100, "interim 100 Continue before the body is sent")
    t.sendall(body)
    r = rd.read_response("POST")
    check_eq(r.status, 200, "final answer")
    check_eq(json.loads(r.body)["body_len"], len(body), "body after 100-continue")


def test_expect_100_continue(rig):
    """A client that waits for 100 Continue before sending its body gets it and then a final
    answer (plain absolute-form and intercepted)."""
    with rig.dduct() as d:
        o = rig.plain
        t = client.Tcp("127.0.0.1", d.tcp_port, timeout=30)
        _expect_100(t, "origin.test:%d" % o.port, "http://origin.test:%d/echo/expect" % o.port)
        t.close()
        o = rig.origin
        t = client.Tcp("127.0.0.1", d.tcp_port, timeout=30)
        check_eq(client.connect(t, "origin.test", o.port)[0], 200, "CONNECT")
        inner = client.BioTls(t, client.tls_context(d.ca_crt), "origin.test")
        _expect_100(inner, "origin.test:%d" % o.port, "/echo/expect")
        inner.close()


def test_upgrade_does_not_hang(rig):
    """A request asking for Upgrade: websocket gets a final answer (forwarded without the upgrade
    or refused) instead of hanging, and the proxy keeps working."""
    o = rig.plain
    with rig.dduct() as d:
        t = client.Tcp("127.0.0.1", d.tcp_port, timeout=30)
        t.sendall(client.request_bytes("GET", "http://origin.test:%d/echo/up" % o.port,
                                       "origin.test:%d" % o.port,
                                       headers=[("Connection", "Upgrade"),
                                                ("Upgrade", "websocket")]))
        r = client.Reader(t).read_response()
        check(r is not None, "an answer to an Upgrade request")
        check(r.status in (200, 400, 501), "status for an Upgrade request", r)
        if r.status == 200:
            h = dict((k.lower(), v) for k, v in json.loads(r.body)["headers"])
            check("upgrade" not in h, "Upgrade (hop-by-hop) was not forwarded", h)
        t.close()
        r = curl(rig, via(d, "http") + [o.url("origin.test", "/echo/after-upgrade")])
        check_eq((r.rc, r.status), (0, 200), "next request works")


def test_http10_client(rig):
    """An HTTP/1.0 client without keep-alive gets its answer and then the connection closes."""
    o = rig.plain
    with rig.dduct() as d:
        t = client.Tcp("127.0.0.1", d.tcp_port, timeout=30)
        t.sendall(("GET http://origin.test:%d/echo/ten HTTP/1.0\r\nHost: origin.test:%d\r\n\r\n"
                   % (o.port, o.port)).encode())
        rd = client.Reader(t)
        r = rd.read_response()
        check_eq(r.status, 200, "HTTP/1.0 answer")
        check_eq(json.loads(r.body)["target"], "/echo/ten", "origin-form at the origin")
        check_eq(rd.read_until_eof(), b"", "then EOF")
        t.close()


if __name__ == "__main__":
    socket.setdefaulttimeout(60)
    run([test_client_and_origin_keepalive, test_origin_pool_across_clients,
         test_pipelined_requests, test_expect_100_continue, test_upgrade_does_not_hang,
         test_http10_client])

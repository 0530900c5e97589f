#!/usr/bin/env python3
"""Basic forwarding through the real dduct binary: the seed's two curl commands, every method with
a body both ways, every response framing, hop-by-hop headers, the transparent TLS endpoint."""
import os
import socket
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from dductlib.harness import check, check_eq, curl, run, via, sha256_file  # noqa: E402
from dductlib.origin import Origin, pattern_bytes, pattern_sha256  # noqa: E402

METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


def _seed(rig, d, kind):
    o = rig.origin
    n = 3000000
    url = o.url("origin.test", "/redirect/2/here.txz?to=/bytes/%d/here.txz" % n)
    if kind == "http":  # the seed's first command, with our ca.crt and port
        args = ["-fv", "-x", d.http_proxy, "--cacert", d.ca_crt, "-LO", url]
    else:               # the seed's second command
        args = ["-fv", "--proxy-cacert", d.ca_crt, "-x", d.https_proxy, "--cacert", d.ca_crt,
                "-LO", url]
    before = o.count("/bytes/%d/here.txz" % n)
    r = curl(rig, args, output=False)
    check_eq(r.rc, 0, "curl exit status (%s)" % r.stderr[-1500:])
    check_eq(r.status, 200, "final status")
    check_eq(sha256_file(os.path.join(r.cwd, "here.txz")), pattern_sha256(n), "here.txz sha256")
    check("issuer: CN=dduct e2e CA" in r.stderr, "curl saw a leaf issued by dduct's CA",
          r.stderr[-2000:])
    check_eq(o.count("/bytes/%d/here.txz" % n) - before, 1, "origin served the file once")


def test_seed_curl_http_proxy(rig):
    """The seed's first curl command (-x http://127.0.0.1:PORT --cacert ca.crt -LO https://...)
    follows two redirects through an intercepted CONNECT and saves the exact bytes."""
    with rig.dduct() as d:
        _seed(rig, d, "http")


def test_seed_curl_https_proxy(rig):
    """The seed's second curl command (--proxy-cacert ca.crt -x https://127.0.0.1:PORT --cacert
    ca.crt -LO https://...) works: TLS to the proxy, TLS inside it, exact bytes."""
    with rig.dduct() as d:
        _seed(rig, d, "https")


def _targets(rig):
    # (label, proxy kind, origin, host): plain HTTP in absolute-form, and HTTPS intercepted.
    return [("http absolute-form via tcp_bind", "http", rig.plain, "origin.test"),
            ("http absolute-form via tls_bind", "https", rig.plain, "origin.test"),
            ("https intercepted via tcp_bind", "http", rig.origin, "origin.test"),
            ("https intercepted via tls_bind (TLS in TLS)", "https", rig.origin, "x.wild.test")]


def test_every_method_with_bodies(rig):
    """GET, HEAD, POST, PUT, PATCH, DELETE and OPTIONS reach the origin with their request body
    intact (content-length and chunked), and the response body comes back intact, over plain
    HTTP and intercepted HTTPS, through both listeners."""
    upload = os.path.join(rig.tmp, "upload.bin")
    with open(upload, "wb") as f:
        f.write(pattern_bytes(200001, "up"))
    up_sha = pattern_sha256(200001, "up")
    with rig.dduct() as d:
        for label, kind, o, host in _targets(rig):
            for m in METHODS:
                args = via(d, kind) + ["-X", m, o.url(host, "/echo/" + m.lower())]
                if m == "HEAD":
                    args = via(d, kind) + ["-I", o.url(host, "/echo/head")]
                else:
                    args[-1:-1] = ["--data-binary", "@" + upload, "-H",
                                   "Content-Type: application/octet-stream"]
                r = curl(rig, args)
                what = "%s %s" % (label, m)
                check_eq((r.rc, r.status), (0, 200), what + " (%s)" % r.stderr)
                if m == "HEAD":
                    check_eq(r.info.get("size_download"), 0, what + ": HEAD has no body")
                    continue
                doc = r.json()
                check_eq((doc["method"], doc["target"]), (m, "/echo/" + m.lower()),
                         what + ": origin saw method and origin-form target")
                check_eq((doc["body_len"], doc["body_sha256"]), (200001, up_sha),
                         what + ": request body")
                check_eq(dict((k.lower(), v) for k, v in doc["headers"])["host"],
                         "%s:%d" % (host, o.port), what + ": Host header")
            r = curl(rig, via(d, kind) + ["-H", "Transfer-Encoding: chunked", "--data-binary",
                                          "@" + upload, o.url(host, "/echo/chunked")])
            check_eq((r.rc, r.status), (0, 200), label + " chunked upload")
            doc = r.json()
            check_eq((doc["body_len"], doc["body_sha256"]), (200001, up_sha),
                     label + ": chunked request body")


def test_response_framings(rig):
    """Response bodies framed by content-length, chunked (odd chunk sizes) and connection close
    arrive complete and byte-exact (8 MiB each), over plain HTTP and intercepted HTTPS."""
    n = 8 * 1048576 + 3
    want = pattern_sha256(n)
    with rig.dduct() as d:
        for label, kind, o, host in _targets(rig):
            for mode in ("cl", "chunked", "close"):
                r = curl(rig, via(d, kind) + [o.url(host, "/bytes/%d?mode=%s" % (n, mode))])
                check_eq((r.rc, r.status, r.info.get("size_download"), r.sha256()),
                         (0, 200, n, want), "%s %s" % (label, mode))


def test_large_upload(rig):
    """A 24 MiB upload is streamed to the origin byte-exact (content-length and chunked)."""
    n = 24 * 1048576 + 5
    upload = os.path.join(rig.tmp, "big-upload.bin")
    with open(upload, "wb") as f:
        f.write(pattern_bytes(n, "big"))
    want = pattern_sha256(n, "big")
    with rig.dduct() as d:
        for label, kind, o, host in _targets(rig)[1:3]:
            for te in ([], ["-H", "Transfer-Encoding: chunked"]):
                r = curl(rig, via(d, kind) + te + ["--data-binary", "@" + upload,
                                                   o.url(host, "/slowsink?rate=1000000000")])
                check_eq((r.rc, r.status), (0, 200), label + " upload " + str(te))
                check_eq((r.json()["body_len"], r.json()["body_sha256"]), (n, want),
                         label + " upload digest " + str(te))


def test_hop_by_hop_headers(rig):
    """Hop-by-hop headers (Connection and what it names, Keep-Alive, Proxy-Connection) are not
    forwarded either way; end-to-end headers are, Authorization included, and dduct's log never
    shows the Authorization value."""
    secret = "Bearer e2e-secret-token-4242"
    with rig.dduct() as d:
        for label, kind, o, host in _targets(rig):
            r = curl(rig, via(d, kind) + [
                "-H", "Connection: X-Drop-Me", "-H", "X-Drop-Me: 1", "-H", "Keep-Alive: 300",
                "-H", "Proxy-Connection: keep-alive", "-H", "X-End-To-End: kept",
                "-H", "Authorization: " + secret, o.url(host, "/echo/hop")])
            check_eq((r.rc, r.status), (0, 200), label)
            h = dict((k.lower(), v) for k, v in r.json()["headers"])
            for gone in ("x-drop-me", "keep-alive", "proxy-connection"):
                check(gone not in h, "%s: %s must not reach the origin" % (label, gone), h)
            check_eq(h.get("x-end-to-end"), "kept", label + ": end-to-end header")
            check_eq(h.get("authorization"), secret, label + ": Authorization forwarded")
            check("x-drop-me" not in h.get("connection", "").lower(),
                  label + ": Connection option not forwarded", h)
            r = curl(rig, via(d, kind) + ["-D", os.path.join(rig.tmp, "hop.h"),
                                          o.url(host, "/hop")])
            check_eq((r.rc, r.status), (0, 200), label + " /hop")
            heads = open(os.path.join(rig.tmp, "hop.h")).read().lower()
            final = heads.split("\r\n\r\n")[-2] if heads.count("\r\n\r\n") > 1 else heads
            check("x-hop:" not in final, label + ": response header named by Connection dropped",
                  final)
            check("keep-alive: timeout" not in final, label + ": response Keep-Alive dropped",
                  final)
            check("x-end: passes" in final, label + ": response end-to-end header kept", final)
        log = d.stop()
        check("e2e-secret-token-4242" not in log, "Authorization value absent from dduct's log")


def _origin_on_port_free_on_127_0_0_1(rig):
    """An HTTPS origin on 127.0.0.2:P where 127.0.0.1:P is free for dduct's tls_bind: the client
    then dials origin.test:P at dduct, and dduct dials origin.test:P at the origin."""
    for _ in range(10):
        o = Origin(host="127.0.0.2", tls=(rig.pki.origin_crt, rig.pki.origin_key))
        probe = socket.socket()
        try:
            probe.bind(("127.0.0.1", o.port))
            return o
        except OSError:
            o.close()
        finally:
            probe.close()
    raise AssertionError("no port free on both 127.0.0.1 and 127.0.0.2")


def test_transparent_tls_endpoint(rig):
    """On tls_bind, an origin-form request (client DNS pointed at dduct) is forwarded to the
    origin the Host header and SNI name, with a leaf from dduct's CA for that host."""
    o = _origin_on_port_free_on_127_0_0_1(rig)
    try:
        pins = ["origin.test:127.0.0.2"]
        with rig.dduct(proxy={"resolve": pins}, tls_port=o.port) as d:
            url = "https://origin.test:%d/echo/transparent" % o.port
            r = curl(rig, ["-v", "--resolve", "origin.test:%d:127.0.0.1" % o.port,
                           "--cacert", d.ca_crt, url])
            check_eq((r.rc, r.status), (0, 200), "transparent request (%s)" % r.stderr[-1500:])
            doc = r.json()
            check_eq((doc["target"], doc["sni"]), ("/echo/transparent", "origin.test"),
                     "origin saw the request and dduct's SNI")
            check("issuer: CN=dduct e2e CA" in r.stderr, "leaf issued by dduct's CA",
                  r.stderr[-1500:])
            check_eq(o.count("/echo/transparent"), 1, "origin counted it")
    finally:
        o.close()


if __name__ == "__main__":
    run([test_seed_curl_http_proxy, test_seed_curl_https_proxy, test_every_method_with_bodies,
         test_response_framings, test_large_upload, test_hop_by_hop_headers,
         test_transparent_tls_endpoint])

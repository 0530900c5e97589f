#!/usr/bin/env python3
"""Errors a user can read: 502 (untrusted certificate, DNS failure, refused), 504 (stalled or
silent origin), 508 (loop), 400/431 for malformed and huge heads followed by a working request,
request smuggling shapes rejected, an origin closing mid-body never looks like success."""
import os
import socket
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from dductlib import client  # noqa: E402
from dductlib.harness import check, check_eq, curl, run, via  # noqa: E402
from dductlib.origin import SilentServer, closed_port  # noqa: E402


def _proxy_error(r, want, words, what):
    """curl r got status `want` from dduct, either as the answer or as the CONNECT answer, with a
    one-line plain-text body containing one of words (when the body is visible)."""
    if r.info.get("http_connect") == want and r.rc == 56:
        return  # refused at CONNECT time; curl does not show that body
    check_eq((r.rc, r.status), (0, want), what + " (%s)" % r.stderr[-800:])
    body = r.body().decode("utf-8", "replace")
    check(body.count("\n") <= 1 and body.strip(), what + ": one-line body", repr(body))
    check(any(w in body.lower() for w in words), what + ": body names the cause %s" % (words,),
          repr(body))


def _ok(rig, d, what):
    r = curl(rig, via(d, "http") + [rig.plain.url("origin.test", "/echo/after")])
    check_eq((r.rc, r.status), (0, 200), "a working request after " + what)


def test_untrusted_origin_certificate_502(rig):
    """An intercepted origin with a self-signed certificate gets 502 naming the certificate
    problem (both listeners); the origin never receives the request; a log line says why."""
    b = rig.bad
    with rig.dduct() as d:
        for kind in ("http", "https"):
            r = curl(rig, via(d, kind) + [b.url("bad.test", "/echo/bad")])
            _proxy_error(r, 502, ("certificate", "verif"), kind + " proxy, untrusted origin")
        check_eq(b.count("/echo/bad"), 0, "request not sent to an unverified origin")
        _ok(rig, d, "502")
        log = d.stop()
        check("bad.test" in log and ("WARN" in log or "ERROR" in log),
              "a warn/error log line names the host", log[-2000:])


def test_dns_failure_and_refused_502(rig):
    """DNS failure and a refused connection each give 502 with a body naming the cause, for
    absolute-form requests and for intercepted CONNECTs."""
    port = closed_port()
    with rig.dduct() as d:
        r = curl(rig, via(d, "http") + ["http://no-such-host.invalid:%d/x" % port])
        _proxy_error(r, 502, ("dns", "resolv", "name", "not known", "unknown"), "DNS failure")
        r = curl(rig, via(d, "http") + ["http://refused.test:%d/x" % port])
        _proxy_error(r, 502, ("refused",), "refused (absolute-form)")
        r = curl(rig, via(d, "http") + ["https://refused.test:%d/x" % port])
        _proxy_error(r, 502, ("refused",), "refused (intercepted CONNECT)")
        _ok(rig, d, "DNS and refused 502s")


def test_stalled_origin_504(rig):
    """With upstream_timeout = 2: an origin that never answers gets 504 (plain and intercepted);
    an origin that stalls mid-body makes dduct cut the client off (curl sees a partial transfer,
    never success); a TLS origin that never finishes its handshake gets 504 (connect_timeout)."""
    silent = SilentServer()
    try:
        with rig.dduct(proxy={"upstream_timeout": 2, "connect_timeout": 2}) as d:
            for kind, o in (("http", rig.plain), ("https", rig.origin)):
                r = curl(rig, via(d, "http") + ["-m", "60", o.url("origin.test", "/stall")])
                _proxy_error(r, 504, ("time", "nothing", "silent"), kind + " origin silent")
                r = curl(rig, via(d, "http") + ["-m", "60",
                                                o.url("origin.test", "/stall?head=1")])
                check_eq(r.rc, 18, kind + " origin stalled mid-body: partial transfer "
                         "(curl 18), not a hang (28) or success (%s)" % r)
            r = curl(rig, via(d, "http") + ["-m", "60",
                                            "https://origin.test:%d/echo" % silent.port])
            _proxy_error(r, 504, ("time", "nothing", "silent"), "TLS handshake never completes")
            _ok(rig, d, "504s")
    finally:
        silent.close()


def test_loop_508(rig):
    """A request whose target is dduct's own listener gets 508 instead of recursing: by IP, by a
    name pinned to 127.0.0.1, and inside an intercepted CONNECT to dduct's TLS port."""
    with rig.dduct() as d:
        for url in ("http://127.0.0.1:%d/loop" % d.tcp_port,
                    "http://loop.test:%d/loop" % d.tcp_port,
                    "https://loop.test:%d/loop" % d.tls_port):
            r = curl(rig, via(d, "http") + ["-m", "60", url])
            _proxy_error(r, 508, ("loop",), url)
        check(d.alive(), "dduct alive after loops")
        _ok(rig, d, "508s")


def _raw(d, data, read_all=True):
    """Send raw bytes to tcp_bind; return (response or None, bytes after it until EOF)."""
    t = client.Tcp("127.0.0.1", d.tcp_port, timeout=30)
    try:
        t.sendall(data)
    except (BrokenPipeError, ConnectionResetError):
        pass
    rd = client.Reader(t)
    r = rd.read_response()
    try:
        rest = rd.read_until_eof() if read_all else b""
    except (ConnectionResetError, socket.timeout) as e:
        rest = repr(e).encode()
    t.close()
    return r, rest


def test_malformed_and_huge_heads(rig):
    """A garbage request line gets 400 and the connection closes; a 256 KiB header gets 431 and
    the connection closes; after each, a new connection works."""
    o = rig.plain
    with rig.dduct() as d:
        r, rest = _raw(d, b"GARBAGE\r\n\r\n")
        check(r is not None, "an answer to garbage")
        check_eq((r.status, rest), (400, b""), "400, then the connection closes")
        _ok(rig, d, "400")
        big = "x" * (256 * 1024)
        req = client.request_bytes("GET", "http://origin.test:%d/echo/huge" % o.port,
                                   "origin.test:%d" % o.port, headers=[("X-Huge", big)])
        r, rest = _raw(d, req)
        check(r is not None, "an answer to a huge head")
        check_eq((r.status, rest), (431, b""), "431, then the connection closes")
        check_eq(o.count("/echo/huge"), 0, "huge head not forwarded")
        _ok(rig, d, "431")


SMUGGLING = [
    ("Content-Length with Transfer-Encoding",
     "POST {base}/echo/smuggle HTTP/1.1\r\nHost: {host}\r\nContent-Length: 60\r\n"
     "Transfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET {base}/smuggled HTTP/1.1\r\nHost: {host}\r\n\r\n",
     (400,)),
    ("two differing Content-Length",
     "POST {base}/echo/smuggle HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\n"
     "Content-Length: 52\r\n\r\nGET {base}/smuggled HTTP/1.1\r\nHost: {host}\r\n\r\n",
     (400,)),
    ("bare LF line endings",
     "GET {base}/echo/smuggle HTTP/1.1\nHost: {host}\n\nGET {base}/smuggled HTTP/1.1\n"
     "Host: {host}\n\n",
     (400,)),
    ("bare CR inside a header",
     "GET {base}/echo/smuggle HTTP/1.1\r\nHost: {host}\rX: y\r\n\r\n",
     (400,)),
    ("Transfer-Encoding not ending in chunked",
     "POST {base}/echo/smuggle HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked, identity"
     "\r\n\r\n0\r\n\r\nGET {base}/smuggled HTTP/1.1\r\nHost: {host}\r\n\r\n",
     (400, 501)),
    ("Transfer-Encoding folded onto a second line (obs-fold)",
     "POST {base}/echo/folded HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked\r\n ,\r\n"
     "\r\n0\r\n\r\nGET {base}/smuggled HTTP/1.1\r\nHost: {host}\r\n\r\n",
     (400,)),
    ("chunk size line ending in bare LF",
     "POST {base}/echo/smuggle HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked\r\n\r\n"
     "3\nabc\r\n0\r\n\r\n",
     (400,)),
]


SMUGGLING_FOLD = next(t for n, t, _ in SMUGGLING if "obs-fold" in n)


def test_smuggling_shapes_rejected(rig):
    """Request smuggling shapes (CL+TE, differing duplicate CL, bare LF, bare CR, a
    Transfer-Encoding not ending in chunked, a folded Transfer-Encoding, a bare-LF chunk size) get 400 (or 501 for the TE case)
    and close; no part of them, and no smuggled second request, reaches the origin."""
    o = rig.plain
    host = "origin.test:%d" % o.port
    base = "http://" + host
    with rig.dduct() as d:
        for name, tmpl, statuses in SMUGGLING:
            r, rest = _raw(d, tmpl.format(base=base, host=host).encode())
            status = r.status if r is not None else None
            check(status in statuses, name + ": status %s in %s" % (status, statuses))
            check_eq(rest, b"", name + ": connection closed after the error")
        check_eq(o.count("/smuggled"), 0, "no smuggled request reached the origin")
        # A fold hid Transfer-Encoding from llhttp's head-time check (the body parse refused it
        # only after the head was routed): now the head itself is refused, saying why.
        check_eq(o.count("/echo/folded"), 0, "the folded head never reached the origin")
        r, _ = _raw(d, SMUGGLING_FOLD.format(base=base, host=host).encode())
        check(r is not None and b"folding" in r.body, "the 400 names the fold",
              r and r.body)
        # The chunk-size case may legitimately reach the origin's head before the body error;
        # everything else must have been refused at the head.
        check(o.count("/echo/smuggle") <= 1, "smuggling heads reaching the origin",
              o.count("/echo/smuggle"))
        _ok(rig, d, "smuggling attempts")


def test_origin_closes_mid_body(rig):
    """An origin that announces 4 MB and closes halfway: the client sees a truncated transfer
    (curl 18), never a complete-looking response, plain and intercepted; the next request works."""
    with rig.dduct() as d:
        for kind, o in (("http", rig.plain), ("https", rig.origin)):
            r = curl(rig, via(d, "http") + ["-m", "60",
                                            o.url("origin.test", "/closemid/4000000")])
            check_eq(r.rc, 18, kind + ": curl reports a partial transfer (%s)" % r)
        _ok(rig, d, "a truncated origin")


def test_unsupported_target(rig):
    """A request for a scheme dduct does not proxy (ftp://) gets 400 or 501, not a hang; an
    origin-form request on the plain listener is refused too."""
    with rig.dduct() as d:
        r, _ = _raw(d, b"GET ftp://origin.test/x HTTP/1.1\r\nHost: origin.test\r\n\r\n",
                    read_all=False)
        check(r is not None and r.status in (400, 501), "ftp:// refused", r)
        r, _ = _raw(d, b"GET /x HTTP/1.1\r\nHost: origin.test\r\n\r\n", read_all=False)
        check(r is not None and 400 <= r.status < 600 and r.status != 200,
              "origin-form on tcp_bind is not proxied blindly", r)
        _ok(rig, d, "unsupported targets")


if __name__ == "__main__":
    run([test_untrusted_origin_certificate_502, test_dns_failure_and_refused_502,
         test_stalled_origin_504, test_loop_508, test_malformed_and_huge_heads,
         test_smuggling_shapes_rejected, test_origin_closes_mid_body, test_unsupported_target])

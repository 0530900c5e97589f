#!/usr/bin/env python3
"""Engine hardening regressions found in review: responses without a body despite a
Content-Length (304/204), long uploads against the upstream and idle timeouts, loop detection
through 0.0.0.0, and leaves minted only for intercepted names on the TLS listener."""
import os
import socket
import struct
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from dductlib import client  # noqa: E402
from dductlib.harness import check, check_eq, curl, run, s_client_cert, via  # noqa: E402
from dductlib.origin import Origin  # noqa: E402


class RawOrigin:
    """A plain-HTTP origin speaking raw bytes, for answers the stdlib server will not give.
    GET /304 and /204: that status with a Content-Length and no body. GET /ok: 200 "ok".
    POST /sink?rate=B&pause_after=N&pause=S: reads a Content-Length body at about B bytes/s,
    stops reading for S seconds after N bytes, answers the byte count. POST /early: answers 413
    after 1.5 s without reading the body, then closes. GET /rst: a close-delimited 200 whose
    body ends with a TCP reset. Keep-alive otherwise."""

    def __init__(self):
        self.sock = socket.socket()
        # A small receive buffer so the read rate, not the kernel, paces an upload.
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self.closed:
            try:
                s, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(s,), daemon=True).start()

    def _serve(self, s):
        s.settimeout(60)
        buf = b""
        try:
            while True:
                while b"\r\n\r\n" not in buf:
                    d = s.recv(65536)
                    if not d:
                        return
                    buf += d
                head, buf = buf.split(b"\r\n\r\n", 1)
                lines = head.decode("latin-1").split("\r\n")
                target = lines[0].split(" ")[1]
                hdrs = dict((k.strip().lower(), v.strip())
                            for k, v in (ln.split(":", 1) for ln in lines[1:]))
                n = int(hdrs.get("content-length", "0"))
                if target.startswith("/sink"):
                    buf = self._sink(s, target, n, buf)
                    continue
                if target == "/rst":
                    # A close-delimited body cut short by a reset, not an orderly close.
                    s.sendall(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + b"x" * 100000)
                    time.sleep(0.5)
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    return
                if target == "/early":
                    # Refuse the upload without reading it, once it has filled the buffers.
                    time.sleep(1.5)
                    s.sendall(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 4\r\n\r\nbig\n")
                    s.shutdown(socket.SHUT_WR)
                    while s.recv(65536):
                        pass
                    return
                buf = buf[n:]
                if target == "/304":
                    s.sendall(b"HTTP/1.1 304 Not Modified\r\nETag: \"e\"\r\n"
                              b"Content-Length: 1234\r\n\r\n")
                elif target == "/204":
                    s.sendall(b"HTTP/1.1 204 No Content\r\nContent-Length: 77\r\n\r\n")
                else:
                    s.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        except OSError:
            pass
        finally:
            s.close()

    def _sink(self, s, target, n, buf):
        q = dict(kv.split("=") for kv in target.split("?", 1)[1].split("&")) if "?" in target \
            else {}
        rate = int(q.get("rate", "1000000000"))
        pause_after = int(q.get("pause_after", "-1"))
        got = min(len(buf), n)
        buf = buf[got:]
        t0 = time.monotonic()
        paused = False
        while got < n:
            if not paused and 0 <= pause_after <= got:
                paused = True
                time.sleep(float(q.get("pause", "0")))
                t0 = time.monotonic() - got / rate
            d = s.recv(min(65536, n - got))
            if not d:
                raise OSError("EOF mid-body")
            got += len(d)
            ahead = got / rate - (time.monotonic() - t0)
            if ahead > 0:
                time.sleep(ahead)
        body = b"%d\n" % got
        s.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        return buf

    def close(self):
        self.closed = True
        self.sock.close()


def _raw_origin(rig):
    if not hasattr(rig, "hardening_origin"):
        rig.hardening_origin = RawOrigin()
    return rig.hardening_origin


def test_304_and_204_with_content_length_end_at_the_head(rig):
    """A 304 carrying the representation's Content-Length, and a 204 with one, end at their
    head: the next request on the same client connection is answered at once instead of
    waiting for body bytes that never come (the upstream timeout, then a closed connection)."""
    o = _raw_origin(rig)
    base = "http://origin.test:%d" % o.port
    with rig.dduct(proxy={"upstream_timeout": 30}) as d:
        t = client.Tcp("127.0.0.1", d.tcp_port, timeout=15)
        rd = client.Reader(t)
        try:
            for path, status in (("/304", 304), ("/204", 204), ("/ok", 200)):
                t.sendall(("GET %s%s HTTP/1.1\r\nHost: origin.test\r\n\r\n"
                           % (base, path)).encode())
                try:
                    r = rd.read_response()
                except socket.timeout:
                    raise AssertionError("no answer to %s within 15 s: dduct still waits for "
                                         "a body after the previous response" % path)
                check(r is not None, "an answer to " + path)
                check_eq(r.status, status, path + " status")
                if status == 200:
                    check_eq(r.body, b"ok", "/ok body on the same connection")
            check_eq(rd.buf, b"", "no stray bytes after the bodiless responses")
        finally:
            t.close()


def test_upload_longer_than_upstream_timeout(rig):
    """A 32 MiB upload the origin reads at ~4 MB/s (8 s) completes with upstream_timeout = 4 s:
    the origin taking body bytes counts as activity (it used to be cut off with 504 after 4 s
    because no response byte had come yet)."""
    o = _raw_origin(rig)
    n = 32 << 20
    path = os.path.join(rig.tmp, "upload-32m.bin")
    with open(path, "wb") as f:
        f.truncate(n)
    with rig.dduct(proxy={"upstream_timeout": 4}) as d:
        r = curl(rig, ["-x", d.http_proxy, "--data-binary", "@" + path,
                       "http://origin.test:%d/sink?rate=4000000" % o.port])
        check_eq((r.rc, r.status), (0, 200), "upload status (%s)" % r.stderr[-500:])
        check_eq(r.body().strip(), str(n).encode(), "origin got every byte")


def test_upload_paused_by_origin_is_not_a_stalled_client(rig):
    """When the origin stops reading an upload for longer than idle_timeout (dduct stops
    reading the client to keep its buffers bounded), the client is not closed as 'stalled':
    the upload resumes and completes."""
    o = _raw_origin(rig)
    n = 24 << 20
    path = os.path.join(rig.tmp, "upload-24m.bin")
    with open(path, "wb") as f:
        f.truncate(n)
    with rig.dduct(proxy={"idle_timeout": 2, "upstream_timeout": 30}) as d:
        r = curl(rig, ["-x", d.http_proxy, "--data-binary", "@" + path,
                       "http://origin.test:%d/sink?pause_after=%d&pause=6" % (o.port, 1 << 20)])
        check_eq((r.rc, r.status), (0, 200), "upload status (%s)" % r.stderr[-500:])
        check_eq(r.body().strip(), str(n).encode(), "origin got every byte")
        log = d.stop()
        check("stalled" not in log, "no 'client stalled' close in the log", log[-2000:])


def test_early_answer_to_an_upload_closes(rig):
    """An origin that answers a large upload (413) without reading it, after dduct's
    backpressure stopped reading the client: the client gets the answer with Connection: close
    and then the end of the connection, instead of a connection stuck until idle_timeout."""
    o = _raw_origin(rig)
    n = 48 << 20
    with rig.dduct(proxy={"idle_timeout": 60}) as d:
        t = client.Tcp("127.0.0.1", d.tcp_port, timeout=20)
        t.sendall(("POST http://origin.test:%d/early HTTP/1.1\r\nHost: origin.test\r\n"
                   "Content-Length: %d\r\n\r\n" % (o.port, n)).encode())

        def upload():
            try:
                chunk = b"\0" * (1 << 20)
                for _ in range(n >> 20):
                    t.sendall(chunk)
            except OSError:
                pass  # dduct closes once it answered: expected
        sender = threading.Thread(target=upload, daemon=True)
        sender.start()
        rd = client.Reader(t)
        try:
            r = rd.read_response("POST")
            check(r is not None, "an answer to the upload")
            check_eq((r.status, r.body), (413, b"big\n"), "the origin's early answer")
            check_eq((r.header("Connection") or "").lower(), "close", "Connection: close")
            try:
                while rd._fill():
                    pass
            except socket.timeout:
                raise AssertionError("the connection stayed open after the early answer")
            except OSError:
                pass  # reset after the linger period: also an end
        finally:
            t.close()
        sender.join(30)


def test_loop_through_any_address_is_508(rig):
    """A request for http://0.0.0.0:<dduct's port>/ (connect() to 0.0.0.0 reaches loopback, where
    dduct listens) is answered 508 instead of dduct connecting to itself (one extra hop that
    answers 400 on tcp_bind; an endless loop through tls_bind when dduct trusts its own CA)."""
    with rig.dduct(proxy={"max_connections": 40}) as d:
        r = curl(rig, ["-m", "30", "-x", d.http_proxy, "http://0.0.0.0:%d/loop" % d.tcp_port])
        check_eq((r.rc, r.status), (0, 508), "0.0.0.0 loop answer (%s)" % r.stderr[-300:])
        r = curl(rig, ["-m", "30", "-x", d.http_proxy, "http://127.0.0.1:%d/loop" % d.tcp_port])
        check_eq((r.rc, r.status), (0, 508), "127.0.0.1 loop answer still 508")


def test_tls_listener_mints_only_for_intercepted_names(rig):
    """On tls_bind, a client's SNI outside server_dns_sans gets server.crt, not a leaf minted
    for that name (dduct's CA must not sign arbitrary names, nor let clients fill its leaf
    cache); an intercepted name still gets its own leaf."""
    with rig.dduct() as d:
        addr = "127.0.0.1:%d" % d.tls_port
        info = s_client_cert(rig, addr, "not-intercepted.example")
        check("not-intercepted.example" not in (info["subject_cn"] or "") and
              "DNS:not-intercepted.example" not in info["san"] and
              "not-intercepted.example" not in info["san"],
              "no certificate for a name outside server_dns_sans", info)
        info = s_client_cert(rig, addr, "origin.test")
        check("origin.test" in info["san"] or "DNS:origin.test" in info["san"] or
              info["subject_cn"] == "origin.test", "a leaf for an intercepted name", info)
        log = d.stop()
        check('Minted a certificate for "not-intercepted.example"' not in log,
              "nothing minted for the outside name", log[-1500:])


def test_origin_addressed_by_ip_is_verified_by_ip_san(rig):
    """An HTTPS origin addressed by IP literal is verified against its certificate's iPAddress
    SANs (mbedTLS alone only compares DNS names and the CN, so every such origin failed with 502):
    intercepted https://127.0.0.1 works; an origin at 127.0.0.3, whose certificate names only
    127.0.0.1 and 127.0.0.2, still gets 502 naming the certificate."""
    o = rig.origin
    other = Origin(host="127.0.0.3", tls=(rig.pki.origin_crt, rig.pki.origin_key))
    try:
        with rig.dduct() as d:
            r = curl(rig, via(d, "http") + ["https://127.0.0.1:%d/echo/ip" % o.port])
            check_eq((r.rc, r.status), (0, 200), "intercepted IP origin (%s)" % r.body()[:300])
            check_eq(r.json()["target"], "/echo/ip", "the request reached the origin")
            t = client.Tcp("127.0.0.1", d.tcp_port, timeout=30)
            try:
                t.sendall(("GET https://127.0.0.3:%d/echo/ip3 HTTP/1.1\r\nHost: 127.0.0.3\r\n"
                           "Connection: close\r\n\r\n" % other.port).encode())
                r = client.Reader(t).read_response()
            finally:
                t.close()
            check_eq(r.status, 502, "origin whose certificate does not name its IP")
            check(b"certificate" in r.body, "the 502 names the certificate", r.body)
            check_eq(other.count("/echo/ip3"), 0, "nothing sent to the unverified origin")
    finally:
        other.close()


def test_transfer_codings_other_than_chunked_refused(rig):
    """A request body in a transfer coding other than chunked ("gzip, chunked") gets 501, and
    Transfer-Encoding in an HTTP/1.0 request gets 400; neither reaches the origin (dduct
    re-frames bodies as plain chunked, so the gzip coding used to reach the origin undeclared).
    An absolute-form URL with a query and no path reaches the origin as "/?q", not "?q"."""
    o = rig.plain
    with rig.dduct() as d:
        for version, te, want in (("1.1", "gzip, chunked", 501), ("1.0", "chunked", 400)):
            t = client.Tcp("127.0.0.1", d.tcp_port, timeout=30)
            try:
                t.sendall(("POST http://origin.test:%d/echo/te%s HTTP/%s\r\nHost: origin.test\r\n"
                           "Transfer-Encoding: %s\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
                           % (o.port, want, version, te)).encode())
                r = client.Reader(t).read_response("POST")
            finally:
                t.close()
            check(r is not None, "an answer for HTTP/%s with %s" % (version, te))
            check_eq(r.status, want, "HTTP/%s with Transfer-Encoding: %s" % (version, te))
            check_eq(o.count("/echo/te%d" % want), 0, "nothing reached the origin")
        t = client.Tcp("127.0.0.1", d.tcp_port, timeout=30)
        try:  # not a transfer coding, but the same kind of re-serialisation: an empty path
            t.sendall(("GET http://origin.test:%d?q=1 HTTP/1.1\r\nHost: origin.test\r\n"
                       "Connection: close\r\n\r\n" % o.port).encode())
            r = client.Reader(t).read_response()
        finally:
            t.close()
        check(r is not None, "an answer for http://host?q=1")
        targets = [t for _, t, _ in o.snapshot()["requests"] if "q=1" in t]
        check_eq(targets, ["/?q=1"], "origin-form target of http://host?q=1")
        r = curl(rig, via(d, "http") + ["-H", "Transfer-Encoding: chunked", "--data-binary",
                                        "abc", o.url("origin.test", "/echo/chunked-ok")])
        check_eq((r.rc, r.status, r.json()["body"]), (0, 200, "abc"), "plain chunked still works")


def test_ipv6_listener(rig):
    """A tcp_bind on [::1] serves requests (::1 is in the default allow_clients), and a request
    for the listener itself, by [::1] or by [::], is answered 508."""
    probe = socket.socket(socket.AF_INET6)
    probe.bind(("::1", 0))
    port = probe.getsockname()[1]
    probe.close()
    o = rig.plain
    with rig.dduct(proxy={"tcp_bind": "[::1]:%d" % port}, tls=False) as d:
        proxy = "http://[::1]:%d" % port
        r = curl(rig, ["-x", proxy, o.url("origin.test", "/echo/v6")])
        check_eq((r.rc, r.status), (0, 200), "request through the IPv6 listener (%s)" % r.stderr)
        check_eq(r.json()["target"], "/echo/v6", "reached the origin")
        for target in ("[::1]", "[::]"):
            r = curl(rig, ["-m", "30", "-x", proxy, "http://%s:%d/loop" % (target, port)])
            check_eq((r.rc, r.status), (0, 508), "loop through %s" % target)


def test_reset_mid_close_delimited_body_is_not_complete(rig):
    """An origin whose close-delimited body ends in a TCP reset (not an orderly close) makes
    dduct abort the client connection: curl reports a failed transfer instead of receiving a
    clean chunked end, which used to present the truncated body as complete."""
    o = _raw_origin(rig)
    with rig.dduct() as d:
        r = curl(rig, ["-x", d.http_proxy, "http://origin.test:%d/rst" % o.port])
        check(r.rc != 0, "curl sees a failed transfer (rc %d, status %s, %s bytes)"
              % (r.rc, r.status, r.info.get("size_download")))


if __name__ == "__main__":
    run([test_304_and_204_with_content_length_end_at_the_head,
         test_upload_longer_than_upstream_timeout,
         test_upload_paused_by_origin_is_not_a_stalled_client,
         test_early_answer_to_an_upload_closes,
         test_loop_through_any_address_is_508,
         test_tls_listener_mints_only_for_intercepted_names,
         test_origin_addressed_by_ip_is_verified_by_ip_san,
         test_transfer_codings_other_than_chunked_refused,
         test_ipv6_listener,
         test_reset_mid_close_delimited_body_is_not_complete])

#!/usr/bin/env python3
"""upstream_proxy: dduct chains every origin connection through a corporate proxy (Debian's real
squid here): CONNECT for https origins (dduct still verifies the origin's certificate inside the
tunnel), absolute-form for plain http, blind tunnels through CONNECT; Basic credentials that never
reach the log; the proxy's refusals (407, refused connection) as 502s naming the cause;
no_upstream_proxy bypasses; an https:// upstream proxy."""
import base64
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import squid_rig  # noqa: E402
from dductlib.certs import BAD_NAMES, ORIGIN_NAMES  # noqa: E402
from dductlib.harness import check, check_eq, curl, run, via  # noqa: E402
from dductlib.origin import closed_port, pattern_sha256  # noqa: E402

USER, PASSWORD = "alice", "s3cr%t-pw"
PASSWORD_URL = "s3cr%25t-pw"  # percent-encoded in the URL


def _squid(rig, auth):
    return squid_rig.Squid(ORIGIN_NAMES + BAD_NAMES + ["deny.wild.test"], users={USER: PASSWORD} if auth else None)


def _three(rig, d):
    """An intercepted host, a blind tunnel and a plain-HTTP request through dduct: (curl results)."""
    o, p = rig.origin, rig.plain
    n = 3 * 1048576 + 7
    r1 = curl(rig, via(d, "http") + [o.url("origin.test", "/bytes/%d?seed=up" % n)])
    r2 = curl(rig, ["-x", d.http_proxy, "--cacert", rig.pki.ca_crt,
                    o.url("blind.example", "/echo/blind")])
    r3 = curl(rig, via(d, "http") + [p.url("origin.test", "/echo/plain")])
    return n, r1, r2, r3


def _no_secret(log, what):
    b64 = base64.b64encode(("%s:%s" % (USER, PASSWORD)).encode()).decode()
    for s in (PASSWORD, PASSWORD_URL, b64):
        check(s not in log, "%s: the password (or its base64) must never be logged" % what)


def test_squid_no_auth(rig):
    """Through squid without auth: an intercepted https origin (CONNECT origin.test, TLS to the
    origin verified inside, body byte-exact), a blind tunnel (CONNECT blind.example, the client's
    own TLS) and plain http (absolute-form GET to squid) all work, and squid's access log shows
    each of them: nothing went around it. A host squid refuses (403 to CONNECT) and an origin
    with an untrusted certificate behind squid both get 502 naming the cause."""
    o, p = rig.origin, rig.plain
    with _squid(rig, False) as sq, rig.dduct(proxy={"upstream_proxy": sq.url}) as d:
        n, r1, r2, r3 = _three(rig, d)
        check_eq((r1.rc, r1.status, r1.sha256()), (0, 200, pattern_sha256(n, "up")),
                 "intercepted host through squid (%s)" % r1.stderr)
        check_eq((r2.rc, r2.status, r2.json()["sni"]), (0, 200, "blind.example"),
                 "blind tunnel through squid (%s)" % r2.stderr)
        check_eq((r3.rc, r3.status), (0, 200), "plain http through squid (%s)" % r3.stderr)
        via_hdr = dict((k.lower(), v) for k, v in r3.json()["headers"]).get("via", "")
        check("squid" in via_hdr, "the plain request passed squid (Via)", via_hdr)
        r = curl(rig, via(d, "http") + [o.url("deny.wild.test", "/echo/denied")])
        check_eq((r.rc, r.status), (0, 502), "squid's 403 to CONNECT is a 502 (%s)" % r.stderr)
        check("403" in r.body().decode() and "upstream proxy" in r.body().decode(),
              "the 502 names the proxy's 403", r.body())
        check_eq(o.count("/echo/denied"), 0, "nothing reached the origin")
        r = curl(rig, via(d, "http") + [rig.bad.url("bad.test", "/echo/bad")])
        check_eq((r.rc, r.status), (0, 502), "an untrusted origin inside the tunnel is refused")
        check("certificate" in r.body().decode() or "verif" in r.body().decode(),
              "502 names the certificate", r.body())
        check_eq(rig.bad.count("/echo/bad"), 0, "no request sent to the unverified origin")
        log = d.stop()  # squid logs a tunnel when it ends: dduct's pooled one ends here
        check("Upstream proxy %s" % sq.url in log, "start-up line names the proxy", log[:2000])
        sq.wait_access(lambda a: a[1] == "CONNECT" and a[2] == "origin.test:%d" % o.port,
                       "CONNECT origin.test")
        sq.wait_access(lambda a: a[1] == "CONNECT" and a[2] == "blind.example:%d" % o.port,
                       "CONNECT blind.example")
        sq.wait_access(lambda a: a[1] == "GET" and a[2] == p.url("origin.test", "/echo/plain"),
                       "GET http://origin.test/echo/plain")


def test_squid_basic_auth(rig):
    """Through squid with Basic auth: with the right credentials (percent-encoded in the URL)
    the three kinds of traffic pass and squid logs them under the user name; the password and
    its base64 never appear in dduct's log or in --check's output."""
    o = rig.origin
    with _squid(rig, True) as sq:
        url = "http://%s:%s@127.0.0.1:%d" % (USER, PASSWORD_URL, sq.port)
        with rig.dduct(proxy={"upstream_proxy": url}) as d:
            n, r1, r2, r3 = _three(rig, d)
            check_eq((r1.rc, r1.status, r1.sha256()), (0, 200, pattern_sha256(n, "up")),
                     "intercepted host through squid with auth (%s)" % r1.stderr)
            check_eq((r2.rc, r2.status), (0, 200), "blind tunnel with auth (%s)" % r2.stderr)
            check_eq((r3.rc, r3.status), (0, 200), "plain http with auth (%s)" % r3.stderr)
            log = d.stop()
            sq.wait_access(lambda a: a[1] == "CONNECT" and a[3] == USER and
                           a[2] == "origin.test:%d" % o.port, "CONNECT as alice")
            _no_secret(log, "dduct log")
            import subprocess
            out = subprocess.run([os.environ["DDUCT_BIN"], "--cfg", d.cfg_path, "--check"],
                                 capture_output=True, text=True)
            _no_secret(out.stdout + out.stderr, "--check output")
            check("alice:***@" in out.stdout, "--check shows the user, masks the password",
                  out.stdout[-1500:])


def test_squid_407_is_502(rig):
    """Squid with auth, dduct with no credentials or a wrong password: each of the three kinds of
    request gets 502 whose body (and a log line) says the proxy wanted credentials / refused
    user 'alice'; the origin never sees a request."""
    o, p = rig.origin, rig.plain
    with _squid(rig, True) as sq:
        cases = [(sq.url, "credentials"),
                 ("http://%s:wrong@127.0.0.1:%d" % (USER, sq.port), "user 'alice'")]
        for url, words in cases:
            with rig.dduct(proxy={"upstream_proxy": url}) as d:
                before = o.count("/echo/x") + p.count("/echo/x")
                r = curl(rig, via(d, "http") + [o.url("origin.test", "/echo/x")])
                check_eq((r.rc, r.status), (0, 502), "intercepted, %s (%s)" % (words, r.stderr))
                body = r.body().decode()
                check("407" in body and words in body, "502 body names the 407", body)
                r = curl(rig, via(d, "http") + [p.url("origin.test", "/echo/x")])
                check_eq((r.rc, r.status), (0, 502), "plain http, %s" % words)
                body = r.body().decode()
                check("407" in body and words in body, "plain 502 body names the 407", body)
                r = curl(rig, ["-x", d.http_proxy, "--cacert", rig.pki.ca_crt,
                               o.url("blind.example", "/echo/x")])
                check_eq(r.info.get("http_connect"), 502, "blind tunnel CONNECT answered 502")
                check_eq(o.count("/echo/x") + p.count("/echo/x"), before,
                         "no request reached the origin")
                log = d.stop()
                check("407" in log and words in log, "the log says why", log[-3000:])
                _no_secret(log, "dduct log")


def test_proxy_refused_and_bypass(rig):
    """An upstream proxy that refuses connections gives 502 naming it; no_upstream_proxy
    ('*.wild.test' and a CIDR) sends those hosts direct while the rest still needs the (dead)
    proxy."""
    o = rig.origin
    dead = "http://127.0.0.1:%d" % closed_port()
    with rig.dduct(proxy={"upstream_proxy": dead}) as d:
        r = curl(rig, via(d, "http") + [o.url("origin.test", "/echo/r")])
        check_eq((r.rc, r.status), (0, 502), "refused proxy")
        body = r.body().decode()
        check("upstream proxy" in body and "refused" in body, "body names the proxy", body)
    with rig.dduct(proxy={"upstream_proxy": dead,
                          "no_upstream_proxy": ["*.wild.test", "127.0.0.0/8"]}) as d:
        r = curl(rig, via(d, "http") + [o.url("x.wild.test", "/echo/bypass")])
        check_eq((r.rc, r.status), (0, 200), "*.wild.test bypasses (%s)" % r.stderr)
        r = curl(rig, via(d, "http") + [o.url("127.0.0.1", "/echo/bypass-ip")])
        check_eq((r.rc, r.status), (0, 200), "127.0.0.0/8 bypasses (%s)" % r.stderr)
        r = curl(rig, via(d, "http") + [o.url("origin.test", "/echo/r")])
        check_eq(r.status, 502, "origin.test still goes to the dead proxy")


def test_https_upstream_proxy(rig):
    """upstream_proxy = 'https://...': TLS to the proxy (another dduct's TLS listener, verified
    against upstream_ca_file), then CONNECT inside it: an intercepted host and a blind tunnel."""
    o = rig.origin
    with rig.dduct(name="corp") as corp:
        bundle = os.path.join(rig.tmp, "bundle.pem")
        with open(bundle, "w") as f:
            f.write(open(rig.pki.ca_crt).read() + open(corp.ca_crt).read())
        with rig.dduct(proxy={"upstream_proxy": corp.https_proxy,
                              "upstream_ca_file": bundle}) as d:
            n = 2 * 1048576 + 3
            r = curl(rig, via(d, "http") + [o.url("origin.test", "/bytes/%d?seed=hp" % n)])
            check_eq((r.rc, r.status, r.sha256()), (0, 200, pattern_sha256(n, "hp")),
                     "intercepted through an https proxy (%s)" % r.stderr)
            r = curl(rig, ["-x", d.http_proxy, "--cacert", rig.pki.ca_crt,
                           o.url("blind.example", "/echo/hb")])
            check_eq((r.rc, r.status), (0, 200), "blind tunnel through an https proxy")
        log = corp.stop()
        check("CONNECT blind.example:%d tunnel" % o.port in log, "the https proxy carried it",
              log[-2000:])


def _banner_proxy():
    """A one-connection fake proxy whose far end speaks first: its answer to CONNECT and the
    far end's banner leave in one write, then it echoes. Returns (port, thread, seen)."""
    import socket
    import threading
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    seen = []

    def run():
        c, _ = srv.accept()
        c.settimeout(30)
        head = b""
        while b"\r\n\r\n" not in head:
            head += c.recv(4096)
        seen.append(head.split(b"\r\n")[0].decode())
        c.sendall(b"HTTP/1.1 200 Connection established\r\n\r\nBANNER from the far end\n")
        while True:
            d = c.recv(4096)
            if not d:
                break
            c.sendall(d)
        c.close()
        srv.close()
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return srv.getsockname()[1], t, seen


def test_far_end_speaks_first(rig):
    """A blind tunnel through the upstream proxy to a server that speaks first: the bytes that
    came in the same read as the proxy's 200 reach the client right after dduct's own 200, before
    anything else, and the tunnel then carries both ways."""
    import socket
    port, t, seen = _banner_proxy()
    with rig.dduct(proxy={"upstream_proxy": "http://127.0.0.1:%d" % port}) as d:
        s = socket.create_connection(("127.0.0.1", d.tcp_port), timeout=30)
        s.sendall(b"CONNECT blind.example:2222 HTTP/1.1\r\nHost: blind.example:2222\r\n\r\n")
        got = b""
        while b"far end\n" not in got:
            k = s.recv(4096)
            check(k, "dduct closed the tunnel early", got)
            got += k
        head, rest = got.split(b"\r\n\r\n", 1)
        check(head.startswith(b"HTTP/1.1 200"), "dduct's 200", head)
        check_eq(rest, b"BANNER from the far end\n", "the banner, first and whole")
        s.sendall(b"ping\n")
        echo = b""
        while echo != b"ping\n":
            k = s.recv(4096)
            check(k, "echo", echo)
            echo += k
        s.close()
        t.join(30)
    check_eq(seen, ["CONNECT blind.example:2222 HTTP/1.1"], "the proxy got dduct's CONNECT")


def test_insecure_origins_still_verify_the_proxy(rig):
    """upstream_insecure = true is for origins: an https upstream proxy whose certificate is not
    trusted (its CA is not in upstream_ca_file) is still refused (502, the proxy sees no
    CONNECT), since it would receive the Proxy-Authorization (review-sec2 #3); with its CA
    trusted, the same request goes through."""
    o = rig.origin
    with rig.dduct(name="corp") as corp:
        with rig.dduct(proxy={"upstream_proxy": corp.https_proxy, "upstream_insecure": True,
                              "upstream_ca_file": rig.pki.ca_crt}) as d:
            r = curl(rig, via(d, "http") + [o.url("origin.test", "/echo/untrusted-proxy")])
            check_eq((r.rc, r.status), (0, 502), "an untrusted https proxy (%s)" % r.stderr)
        bundle = os.path.join(rig.tmp, "bundle-insecure.pem")
        with open(bundle, "w") as f:
            f.write(open(rig.pki.ca_crt).read() + open(corp.ca_crt).read())
        with rig.dduct(proxy={"upstream_proxy": corp.https_proxy, "upstream_insecure": True,
                              "upstream_ca_file": bundle}) as d:
            r = curl(rig, via(d, "http") + [o.url("origin.test", "/echo/trusted-proxy")])
            check_eq((r.rc, r.status), (0, 200), "a trusted https proxy (%s)" % r.stderr)
        log = corp.stop()
        check("untrusted-proxy" not in log and "CONNECT origin.test" in log,
              "only the trusted run reached the proxy", log[-2000:])


if __name__ == "__main__":
    if not squid_rig.available():
        print("1..0 # SKIP squid is not installed")
        sys.exit(0)
    run([test_squid_no_auth, test_squid_basic_auth, test_squid_407_is_502,
         test_proxy_refused_and_bypass, test_https_upstream_proxy, test_far_end_speaks_first,
         test_insecure_origins_still_verify_the_proxy])

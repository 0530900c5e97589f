"""Cache security and HTTP correctness (issue 16): what a cached answer may be given to, through
the real dduct binary, real curl clients and origins on 127.0.0.1.

The scheme is part of the key: a plain-http answer is never served to an https request, also
when both come from the same host and port (the key used to hash host, path and the port when
not the scheme's default, so http://h/x on 80 and https://h/x on 443 were one entry; the same
port for both schemes is the same collision without needing ports 80 and 443).
"""
import hashlib
import json
import os
import socket
import socketserver
import struct
import subprocess
import shutil
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cache_rig import (CacheHandler, add_blob, cache_origin, check_gmac, entries,  # noqa: E402
                       files_in, origin_gets, set_sidecar, sidecar)
from dductlib.origin import pattern_bytes, pattern_sha256  # noqa: E402
from dductlib.client import Reader, Tcp, request_bytes  # noqa: E402
from dductlib.harness import TestFailure, check, check_eq, curl, dduct_bin, run, via  # noqa: E402
from dductlib.origin import Origin  # noqa: E402

GOOD = b"GOOD: the https origin's file\n"
# What /hdrs/ answers with (besides Content-Length): end-to-end headers, a repeated one, and a
# Set-Cookie that must not be replayed to other clients.
HDRS = [("Cache-Control", "max-age=3600, must-revalidate"),
        ("Date", "Sun, 06 Dec 2026 01:00:00 GMT"),
        ("Expires", "Sun, 06 Dec 2026 02:00:00 GMT"), ("Server", "origin/1.0"),
        ("ETag", '"hdrs-v1"'), ("X-Multi", "one"), ("X-Multi", "two"),
        ("Set-Cookie", "session=secret"), ("Link", "<https://example.test/>; rel=preload")]
EVIL = b"EVIL: planted over plain http\n"


class DualHandler(CacheHandler):
    """Speaks TLS or plain HTTP on one port, by the first byte (0x16: a TLS handshake): one
    host:port that answers https:// with GOOD and http:// with EVIL."""

    def setup(self):
        self.request.settimeout(self.timeout)
        self.sni = None
        first = self.request.recv(1, socket.MSG_PEEK)
        self.tls = first == b"\x16"
        if self.tls:
            self.request = self.server.ssl_ctx.wrap_socket(self.request, server_side=True)
        self.conn_id = self.server.origin._new_connection()
        socketserver.StreamRequestHandler.setup(self)

    def _ep_pkg(self, path, query, body):
        self._send_body(GOOD if self.tls else EVIL, "application/gzip")

    def _ep_res(self, path, query, body):
        """/res/<name>: GET/HEAD answer "<name> v<N>"; any other method makes it N+1 and answers
        200, or the status in X-Want-Status (then nothing changes), with X-Location as
        Location and X-Content-Location as Content-Location."""
        o = self.server.origin
        with o._lock:
            if self.command not in ("GET", "HEAD") and not self.headers.get("X-Want-Status"):
                o.versions[path] = o.versions.get(path, 1) + 1
            v = o.versions.get(path, 1)
        want = self.headers.get("X-Want-Status")
        extra = [(k, self.headers[h]) for k, h in (("Location", "X-Location"),
                                                   ("Content-Location", "X-Content-Location"))
                 if self.headers.get(h)]
        if self.command in ("GET", "HEAD"):
            return self._send_body(("%s v%d\n" % (path, v)).encode(), "text/plain")
        self._send(int(want or 200), b"done\n", extra=extra)

    def _ep_hdrs(self, path, query, body):
        """/hdrs/<name>: 100,000 bytes with end-to-end headers a proxy must pass on (no
        Content-Type); with ?gate=1 the second half waits for origin.gate."""
        o = self.server.origin
        data = b"h" * 100000
        self.send_response_only(200)
        for k, v in HDRS:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command == "HEAD":
            return
        self.wfile.write(data[:50000])
        self.wfile.flush()
        if query.get("gate"):
            o.half_sent.set()
            o.gate.wait(60)
        self.wfile.write(data[50000:])

    def _ep_v2(self, path, query, body):
        """/v2/<name>/blobs/<digest>: over TLS the blob; over plain http as many EVIL bytes, the
        first half, then (after origin.half_sent) the rest once origin.gate is set."""
        if self.tls:
            return CacheHandler._ep_v2(self, path, query, body)
        o = self.server.origin
        n = len(o.blobs[path.rsplit("/", 1)[1]])
        data = (EVIL * (n // len(EVIL) + 1))[:n]
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(n))
        self.end_headers()
        self.wfile.write(data[:n // 2])
        self.wfile.flush()
        o.half_sent.set()
        o.gate.wait(60)
        self.wfile.write(data[n // 2:])

    def _ep_redir(self, path, query, body):
        """/redir/<name>?loc=L: 302 to L (as given: absolute, scheme-relative or a path)."""
        self._send(302, b"moved\n", extra=[("Location", query["loc"])])


def dual_origin(rig):
    def make():
        o = Origin(tls=(rig.pki.origin_crt, rig.pki.origin_key))
        o.server.RequestHandlerClass = DualHandler
        o.versions = {}
        o.blobs = {}
        o.gate = threading.Event()
        o.half_sent = threading.Event()
        return o
    return rig._get("dual", make)


def get(rig, d, url, *extra, kind="http"):
    return curl(rig, via(d, kind) + list(extra) + [url])


def body(r):
    return r.body() if os.path.exists(r.body_path) else b""


def v1_key(host, port, path):
    """The store's https key (docs/cache.md): what every entry had before the scheme was keyed."""
    def be(n):
        return struct.pack(">Q", n)
    h = host.lower().encode()
    p = path.encode()
    x = hashlib.sha256(b"dduct-key-v1\0" + be(len(h)) + h + be(0 if port == 443 else port) +
                       be(len(p)) + p).hexdigest()
    return "u/%s/%s" % (x[:2], x)


def test_plain_http_never_answers_https(rig):
    """A plain-http origin answering EVIL for the same host, port and path as an https origin:
    after the http request cached EVIL, https requests (CONNECT through the plain listener and
    TLS-in-TLS) get the https origin's GOOD, fetched over TLS; each scheme keeps its own entry
    and its own answer, in either order."""
    o = dual_origin(rig)
    with rig.dduct(proxy={"filters": ["^/pkg/"]}) as d:
        for first in ("http", "https"):
            path = "/pkg/first-%s.tar.gz" % first
            plain = "http://origin.test:%d%s" % (o.port, path)
            tls = "https://origin.test:%d%s" % (o.port, path)
            order = [plain, tls] if first == "http" else [tls, plain]
            for rnd in range(2):  # the second round is answered from the cache
                for url in order:
                    for kind in ("http", "https"):
                        r = get(rig, d, url, kind=kind)
                        want = GOOD if url.startswith("https:") else EVIL
                        check_eq((r.rc, r.status, body(r)), (0, 200, want),
                                 "%s via %s proxy (round %d, %s first)" % (url, kind, rnd, first))
            gets = [q for q in o.snapshot()["requests"] if q[1] == path]
            check_eq(len(gets), 2, "one fetch per scheme for " + path)
        settle(d)
        check_eq(len(entries(d.file_dir)), 4, "an entry per scheme and path")


def test_old_plain_entry_not_served_to_https(rig):
    """An entry a plain-http request stored under the shared key before the scheme was keyed
    (sidecar url http://...) is not served to an https request: dduct fetches the file again
    over TLS and replaces the entry."""
    o = dual_origin(rig)
    path = "/pkg/old.tar.gz"
    with rig.dduct(proxy={"filters": ["^/pkg/"]}) as d:
        rel = v1_key("origin.test", o.port, path)
        base = os.path.join(d.file_dir, rel)
        os.makedirs(os.path.dirname(base), mode=0o700, exist_ok=True)
        with open(base, "wb") as f:
            f.write(EVIL)
        with open(base + ".json", "w") as f:
            json.dump({"url": "http://origin.test:%d%s" % (o.port, path), "size": len(EVIL),
                       "content_type": "application/gzip", "etag": "", "last_modified": "",
                       "digest": "", "stored_at": 1700000000}, f)
        url = "https://origin.test:%d%s" % (o.port, path)
        for i in range(3):
            r = get(rig, d, url, kind="https" if i % 2 else "http")
            check_eq((r.rc, r.status, body(r)), (0, 200, GOOD), "https request %d" % i)
        gets = [q for q in o.snapshot()["requests"] if q[1] == path]
        check_eq(len(gets), 1, "fetched again once, then served from the new entry")
        settle(d)  # the last readers may end before the fill's commit renames the file in place
        with open(base, "rb") as f:
            check_eq(f.read(), GOOD, "the planted entry was replaced")
        check(rel in entries(d.file_dir), "the https entry keeps the https key's place",
              files_in(d.file_dir))


def test_https_never_follows_plain_blob_fill(rig):
    """A blob is keyed by its digest whatever the scheme, and a fill's readers get every byte but
    the last before the digest is checked: an https request arriving while a plain-http request
    fills the blob is not given that fill's bytes. It gets the https origin's blob, whole, and the
    plain fill (EVIL bytes) fails its digest and stores nothing."""
    o = dual_origin(rig)
    data = pattern_bytes(1 << 20, "dual-blob")
    digest = add_blob(o, data)
    path = "/v2/library/dual/blobs/" + digest
    o.gate.clear()
    o.half_sent.clear()
    with rig.dduct(proxy={"filters": ["^/v2/.*/blobs/sha256:\\w+$"]}) as d:
        plain = {}
        t_plain = threading.Thread(target=lambda: plain.setdefault(
            "r", get(rig, d, "http://origin.test:%d%s" % (o.port, path))))
        t_plain.start()
        try:
            check(o.half_sent.wait(60), "the plain fill is half way")
            for kind in ("http", "https"):
                tls = {}
                t_tls = threading.Thread(target=lambda: tls.setdefault(
                    "r", get(rig, d, "https://origin.test:%d%s" % (o.port, path), kind=kind)))
                t_tls.start()
                t_tls.join(10)  # with the bug it waits on the gated plain fill
                if kind == "https":
                    o.gate.set()
                t_tls.join()
                r = tls["r"]
                b = body(r)
                check(EVIL not in b, "no plain-http byte reaches the https client (%s proxy)" % kind)
                check_eq((r.rc, r.status, b == data), (0, 200, True),
                         "the https origin's blob, whole (%s proxy)" % kind)
        finally:
            o.gate.set()
            t_plain.join()
        check(plain["r"].rc != 0 or body(plain["r"]) != data, "the plain client got EVIL bytes")
        hexd = digest.split(":")[1]
        check("c/%s/%s" % (hexd[:2], hexd) not in entries(d.file_dir) or
              open(os.path.join(d.file_dir, "c", hexd[:2], hexd), "rb").read() == data,
              "no EVIL blob stored", files_in(d.file_dir))
    o.gate.clear()
    o.half_sent.clear()


def headers_of(r):
    with open(os.path.join(r.cwd, "hdr"), "rb") as f:
        blocks = [b for b in f.read().decode("latin-1").split("\r\n\r\n") if b.strip()]
    out = {}
    for line in blocks[-1].split("\r\n")[1:]:
        k, _, v = line.partition(":")
        out[k.strip().lower()] = v.strip()
    return out


def test_https_redirect_to_http_not_followed(rig):
    """An https origin answering 302 to an http:// URL on a cacheable path: dduct does not follow
    it over plain http; the client gets the 302 with its Location as the origin sent it, nothing
    is stored, and the next request asks the origin again. A scheme-relative Location
    (//host:port/path) is followed on the same scheme, to that host."""
    o = dual_origin(rig)
    with rig.dduct(proxy={"filters": ["^/redir/", "^/pkg/"]}) as d:
        loc = "http://origin.test:%d/pkg/down.tar.gz?sig=1" % o.port
        url = "https://origin.test:%d/redir/down?loc=%s" % (o.port, loc.replace("?", "%3F"))
        for i, kind in enumerate(("http", "https", "http")):
            r = curl(rig, via(d, kind) + ["-D", "hdr", url])
            check_eq((r.rc, r.status, headers_of(r).get("location")), (0, 302, loc),
                     "request %d (%s proxy): the redirect itself" % (i, kind))
            check(EVIL not in body(r), "no plain-http body", body(r))
        gets = [q for q in o.snapshot()["requests"] if q[1].startswith("/redir/down")]
        check_eq(len(gets), 3, "every request asked the origin (nothing stored)")
        plain = [q for q in o.snapshot()["requests"] if q[1].startswith("/pkg/down")]
        check_eq(plain, [], "nothing was fetched over plain http")
        check_eq(entries(d.file_dir), [], "no entry")
        check("Not following the redirect of https://origin.test:%d/redir/down to plain http"
              % o.port in d.log(), "the refusal is logged without the query")

        loc = "//x.wild.test:%d/pkg/rel.tar.gz" % o.port
        url = "https://origin.test:%d/redir/rel?loc=%s" % (o.port, loc)
        r = get(rig, d, url)
        check_eq((r.rc, r.status, body(r)), (0, 200, GOOD), "scheme-relative redirect followed")
        targets = [q[1] for q in o.snapshot()["requests"]
                   if "rel.tar" in q[1] and not q[1].startswith("/redir/")]
        check_eq(targets, ["/pkg/rel.tar.gz"], "asked for the path on the named host, over TLS")


def test_redirect_to_another_port_drops_credentials(rig):
    """A redirect to another port of the same host (another service, maybe another owner) does
    not carry the client's Authorization and Cookie, as a change of host never did."""
    o = dual_origin(rig)
    other = rig.origin  # /echo shows what it received
    with rig.dduct(proxy={"filters": ["^/redir/"]}) as d:
        url = "https://origin.test:%d/redir/port?loc=https://origin.test:%d/echo" % (o.port,
                                                                                  other.port)
        r = get(rig, d, url, "-H", "Authorization: Bearer s3cr3t", "-H", "Cookie: c=1")
        check_eq((r.rc, r.status), (0, 200), "followed")
        got = dict((k.lower(), v) for k, v in r.json()["headers"])
        check("authorization" not in got and "cookie" not in got,
              "no credentials for another port", got)


def test_query_in_key(rig):
    """With a broad filter ('^/.*$'), git's /info/refs?service=git-upload-pack and
    ?service=git-receive-pack are two entries (the second was answered with the first's cached
    body, which broke git push); each is then a hit for its own query."""
    o = cache_origin(rig)
    base = "/any/repo.git/info/refs"
    with rig.dduct(proxy={"filters": ["^/.*$"]}) as d:
        for rnd in range(2):
            for svc in ("git-upload-pack", "git-receive-pack"):
                target = base + "?service=" + svc
                r = get(rig, d, o.url("origin.test", target))
                check_eq((r.rc, r.status, body(r)), (0, 200, target.encode()),
                         "round %d: %s" % (rnd, svc))
        check_eq(len(origin_gets(o, base)), 2, "one origin GET per query, then hits")
        settle(d)
        check_eq(len(entries(d.file_dir)), 2, "an entry per query")


def test_query_ignore_rules(rig):
    """[proxy] query_ignore = ['*.wild.test:sig,expires']: for x.wild.test, URLs that differ only
    in sig and expires are one entry (the first fetch's body answers them all), another value of
    another parameter is another entry; origin.test, which the glob does not match, keys its
    whole query."""
    o = cache_origin(rig)
    with rig.dduct(proxy={"filters": ["^/any/"],
                          "query_ignore": ["*.wild.test:sig,expires"]}) as d:
        first = "/any/f.tgz?sig=AAA&v=1&expires=1"
        for t in (first, "/any/f.tgz?v=1&sig=BBB", "/any/f.tgz?expires=2&v=1", "/any/f.tgz?v=1"):
            r = get(rig, d, o.url("x.wild.test", t))
            check_eq((r.rc, r.status, body(r)), (0, 200, first.encode()), t)
        t = "/any/f.tgz?v=2&sig=CCC"
        r = get(rig, d, o.url("x.wild.test", t))
        check_eq((r.rc, r.status, body(r)), (0, 200, t.encode()), "v=2 is its own entry")
        check_eq(len(origin_gets(o, "/any/f.tgz")), 2, "two fetches for five requests")
        for t in ("/any/g.tgz?sig=1", "/any/g.tgz?sig=2"):
            r = get(rig, d, o.url("origin.test", t))
            check_eq((r.rc, r.status, body(r)), (0, 200, t.encode()), "origin.test " + t)
        check_eq(len(origin_gets(o, "/any/g.tgz")), 2, "other hosts key the whole query")


def settle(d, timeout=30):
    """Wait until every fill that began is committed (the commit, fsyncs included, follows the
    response's last byte)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = d.log()
        if text.count("Fill completed") + text.count("Fill discarded") >= text.count("Miss "):
            return
        time.sleep(0.02)


def test_unsafe_methods_invalidate(rig):
    """RFC 9111 4.4: after a successful PUT, POST, DELETE or PATCH through dduct, the entry for
    that URL is gone (file and sidecar) and the next GET fetches the new version; a failed one
    (403) leaves the entry; a Location or Content-Location on the same origin is invalidated
    too, one naming another origin is not."""
    o = dual_origin(rig)
    base = "https://origin.test:%d" % o.port

    def fetch(d, path, want):
        r = get(rig, d, base + path)
        check_eq((r.rc, r.status, body(r)), (0, 200, ("%s v%d\n" % (path, want)).encode()),
                 "GET " + path)

    def origin_count(path):
        return len([q for q in o.snapshot()["requests"] if q[0] == "GET" and q[1] == path])

    with rig.dduct(proxy={"filters": ["^/res/"]}) as d:
        for i, m in enumerate(("PUT", "POST", "DELETE", "PATCH")):
            path = "/res/%s" % m.lower()
            fetch(d, path, 1)
            fetch(d, path, 1)
            check_eq(origin_count(path), 1, m + ": cached")
            settle(d)
            n = len(entries(d.file_dir))
            r = get(rig, d, base + path, "-X", m, "-H", "X-Want-Status: 403", "-d", "x")
            check_eq(r.status, 403, m + " refused by the origin")
            fetch(d, path, 1)
            check_eq(origin_count(path), 1, m + " that failed: the entry stays")
            r = get(rig, d, base + path, "-X", m, "-d", "x")
            check_eq((r.rc, r.status), (0, 200), m + " through dduct")
            check_eq(len(entries(d.file_dir)), n - 1, m + ": the entry's files are removed")
            fetch(d, path, 2)
            check_eq(origin_count(path), 2, m + ": the next GET goes to the origin")
            fetch(d, path, 2)
            check_eq(origin_count(path), 2, m + ": and is cached again")

        fetch(d, "/res/target", 1)
        fetch(d, "/res/other", 1)
        other = "https://x.wild.test:%d/res/foreign" % o.port
        r = get(rig, d, other)
        check_eq(r.status, 200, "a foreign-origin entry")
        r = get(rig, d, base + "/res/coll", "-X", "POST", "-d", "x",
                "-H", "X-Location: /res/target", "-H", "X-Content-Location: %s" % other)
        check_eq(r.status, 200, "POST with Location")
        for path in ("/res/target", "/res/other"):
            get(rig, d, base + path)
        check_eq(origin_count("/res/target"), 2, "the Location's entry was invalidated")
        check_eq(origin_count("/res/other"), 1, "another URL was not")
        get(rig, d, other)
        check_eq(origin_count("/res/foreign"), 1, "a Content-Location on another origin was not")


def test_only_if_cached(rig):
    """Cache-Control: only-if-cached on a miss gets 504 without contacting the origin (GET, HEAD,
    a path the filters leave uncached, and with revalidate = 'always'); once cached, it is served
    from the cache."""
    o = dual_origin(rig)
    base = "https://origin.test:%d" % o.port
    oic = ["-H", "Cache-Control: only-if-cached"]
    for reval in ("never", "always"):
        with rig.dduct(proxy={"filters": ["^/res/"], "revalidate": reval}) as d:
            before = len(o.snapshot()["requests"])
            path = "/res/oic-" + reval
            for extra in ([], ["-I"]):
                r = get(rig, d, base + path, *(oic + extra))
                check_eq((r.rc, r.status), (0, 504), "%s miss %s" % (reval, extra))
            r = get(rig, d, base + "/pkg/uncached.tgz", *oic)
            check_eq((r.rc, r.status), (0, 504), reval + ": an uncacheable path")
            check_eq(len(o.snapshot()["requests"]), before, reval + ": the origin was not asked")
            r = get(rig, d, base + path)
            check_eq((r.status, body(r)), (200, ("%s v1\n" % path).encode()), "now cached")
            n = len(o.snapshot()["requests"])
            r = get(rig, d, base + path, *oic)
            check_eq((r.status, body(r)), (200, ("%s v1\n" % path).encode()),
                     reval + ": only-if-cached hit")
            check_eq(len(o.snapshot()["requests"]), n, reval + ": a hit without the origin")


class BigHeadOrigin:
    """Plain HTTP: answers every request with a 200 whose head is over 64 KiB (one 70,000-byte
    header), and counts the requests it read."""

    def __init__(self):
        self.requests = 0
        self.srv = socketserver.ThreadingTCPServer(("127.0.0.1", 0), self._handler())
        self.srv.daemon_threads = True
        self.port = self.srv.server_address[1]
        import threading
        threading.Thread(target=self.srv.serve_forever, daemon=True).start()

    def _handler(self):
        outer = self

        class H(socketserver.StreamRequestHandler):
            def handle(self):
                while True:
                    line = self.rfile.readline(65537)
                    if not line:
                        return
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass
                    outer.requests += 1
                    self.wfile.write(b"HTTP/1.1 200 OK\r\nX-Big: " + b"b" * 70000 +
                                     b"\r\nContent-Length: 2\r\n\r\nok")
        return H

    def close(self):
        self.srv.shutdown()
        self.srv.server_close()


def raw_status(d, head):
    t = Tcp("127.0.0.1", d.tcp_port)
    try:
        t.sendall(head)
        return Reader(t).read_response()
    finally:
        t.close()


def test_long_target_414_big_response_head_502(rig):
    """A 70,000-byte request target gets 414 (a 70,000-byte header still 431); an origin whose
    response head is over the 64 KiB limit is reported as "response head ... larger than", gets
    502, and is asked once, on a cached path (which used to send the request a second time,
    uncached) and on a forwarded one."""
    o = cache_origin(rig)
    big = BigHeadOrigin()
    try:
        with rig.dduct(proxy={"filters": ["^/pkg/"]}) as d:
            url = "http://origin.test:%d/any/%s" % (o.port, "a" * 70000)
            r = raw_status(d, request_bytes("GET", url, "origin.test:%d" % o.port))
            check_eq(r.status, 414, "a 70,000-byte target")
            r = raw_status(d, request_bytes("GET", "http://origin.test:%d/any/x" % o.port,
                                            "origin.test:%d" % o.port,
                                            headers=[("X-Long", "h" * 70000)]))
            check_eq(r.status, 431, "a 70,000-byte header")
            for n, path in enumerate(("/pkg/big.tgz", "/other")):
                r = get(rig, d, "http://origin.test:%d%s" % (big.port, path))
                check_eq(r.status, 502, path + ": a response head over the limit")
                check("response head" in body(r).decode(), "the answer says why", body(r))
                check_eq(big.requests, n + 1, path + ": the origin was asked once")
            log = d.log()
            check("response head from" in log and "request head too large" not in log,
                  "logged as a response head too large", log[-2000:])
    finally:
        big.close()


def header_pairs(r):
    """Every header line of the last response (curl -D hdr), in order, names lowercased."""
    with open(os.path.join(r.cwd, "hdr"), "rb") as f:
        blocks = [b for b in f.read().decode("latin-1").split("\r\n\r\n") if b.strip()]
    out = []
    for line in blocks[-1].split("\r\n")[1:]:
        k, _, v = line.partition(":")
        out.append((k.strip().lower(), v.strip()))
    return out


def check_origin_headers(r, what, status=200, n=100000):
    pairs = header_pairs(r)
    names = [k for k, _ in pairs]
    for k, v in HDRS:
        if k == "Set-Cookie":
            continue
        if status == 304 and k not in ("Cache-Control", "Date", "Expires", "ETag"):
            check(k.lower() not in names, "%s: 304 without %s" % (what, k), pairs)
            continue
        check((k.lower(), v) in pairs, "%s: %s: %s passed on" % (what, k, v), pairs)
    if status != 304:
        check_eq([v for k, v in pairs if k == "x-multi"], ["one", "two"],
                 what + ": a repeated header keeps both values, in order")
    check("set-cookie" not in names, what + ": no Set-Cookie replayed", pairs)
    check("content-type" not in names, what + ": no Content-Type made up", pairs)
    check_eq(names.count("etag"), 1, what + ": one ETag")
    if status == 200:
        check_eq(dict(pairs).get("content-length"), str(n), what + ": dduct's Content-Length")


def test_origin_headers_replayed(rig):
    """The origin's end-to-end headers (Cache-Control, Date, Expires, Server,
    ETag, Link, a repeated X-Multi) reach the first client, a client following the fill, hits
    (also after a restart, from the sidecar), HEAD and 206; a 304 carries the validator and
    caching ones only; Set-Cookie is never replayed and no Content-Type is invented. An entry
    whose sidecar has no headers (written before they were kept) is still served."""
    o = dual_origin(rig)
    base = "https://origin.test:%d" % o.port
    url = base + "/hdrs/a?gate=1"
    with rig.dduct(proxy={"filters": ["^/hdrs/", "^/pkg/"]}) as d:
        results = {}

        def first():
            results["first"] = curl(rig, via(d, "http") + ["-D", "hdr", url])
        t = threading.Thread(target=first)
        t.start()
        check(o.half_sent.wait(30), "the fill is half way")
        # The follower reads while the origin holds the second half back.
        ft = threading.Thread(target=lambda: results.update(
            follower=curl(rig, via(d, "https") + ["-D", "hdr", url])))
        ft.start()
        deadline = time.monotonic() + 60
        while "(while filling)" not in d.log() and time.monotonic() < deadline:
            time.sleep(0.05)
        o.gate.set()
        t.join(60)
        ft.join(60)
        for name in ("first", "follower"):
            r = results[name]
            check_eq((r.rc, r.status, len(body(r))), (0, 200, 100000), name)
            check_origin_headers(r, name)
        r = curl(rig, via(d, "http") + ["-D", "hdr", url])
        check_origin_headers(r, "hit")
        check(dict(header_pairs(r)).get("age", "").isdigit(), "a hit carries Age", header_pairs(r))
    with rig.dduct(proxy={"filters": ["^/hdrs/", "^/pkg/"]}) as d2:
        shutil.rmtree(d2.file_dir, ignore_errors=True)
        shutil.copytree(d.file_dir, d2.file_dir)
        r = curl(rig, via(d2, "http") + ["-D", "hdr", url])
        check_origin_headers(r, "hit after a restart")
        r = curl(rig, via(d2, "http") + ["-D", "hdr", "-I", url])
        check_origin_headers(r, "HEAD")
        r = curl(rig, via(d2, "http") + ["-D", "hdr", "-r", "10-19", url])
        check_eq((r.status, body(r)), (206, b"h" * 10), "range")
        check_origin_headers(r, "206", status=206)
        check_eq(dict(header_pairs(r)).get("content-range"), "bytes 10-19/100000", "Content-Range")
        r = curl(rig, via(d2, "http") + ["-D", "hdr", "-H", 'If-None-Match: "hdrs-v1"', url])
        check_eq(r.status, 304, "If-None-Match")
        check_origin_headers(r, "304", status=304)
        gets = [q for q in o.snapshot()["requests"] if q[1].startswith("/hdrs/a")]
        check_eq(len(gets), 1, "one origin GET for all of them")

        # An old sidecar: no "headers" key.
        path = "/pkg/old-sidecar.tgz"
        r = get(rig, d2, base + path)
        check_eq(r.status, 200, "stored")
        settle(d2)
        side = [f for f in files_in(d2.file_dir) if f.endswith(".json")]
        for f in side:
            p = os.path.join(d2.file_dir, f)
            with open(p) as fh:
                doc = json.load(fh)
            if doc["url"].endswith(path):
                check("headers" in doc, "a new sidecar keeps the headers", doc)
                del doc["headers"]
                doc["content_type"] = "application/x-old"
                with open(p, "w") as fh:
                    json.dump(doc, fh)
    with rig.dduct(proxy={"filters": ["^/hdrs/", "^/pkg/"]}) as d3:
        shutil.rmtree(d3.file_dir, ignore_errors=True)
        shutil.copytree(d2.file_dir, d3.file_dir)
        r = curl(rig, via(d3, "http") + ["-D", "hdr", base + path])
        check_eq((r.status, body(r)), (200, GOOD), "an old sidecar is still served")
        check_eq(dict(header_pairs(r)).get("content-type"), "application/x-old",
                 "with its stored Content-Type")
        check_eq(len([q for q in o.snapshot()["requests"] if q[1] == path]), 1,
                 "from the cache")


def corrupt(file_dir, digest, at=None):
    """Flip one byte of the stored blob in place (same size, same inode)."""
    hexd = digest.split(":")[1]
    p = os.path.join(file_dir, "c", hexd[:2], hexd)
    size = os.path.getsize(p)
    fd = os.open(p, os.O_RDWR)
    try:
        off = size // 2 if at is None else at
        b = os.pread(fd, 1, off)
        os.pwrite(fd, bytes([b[0] ^ 0xFF]), off)
    finally:
        os.close(fd)
    return p


def test_corrupt_blob_verified_on_first_hit(rig):
    """A same-size corruption of a stored blob is never served as a complete body: after a restart
    the first hit hashes it (verify_hits = 'first'), the client's transfer is cut before its end
    (curl exit 18), the entry is removed and the next request fetches it again; the same after
    the file is written in place while dduct runs (a hit it had already verified); a small blob
    (answered in one write) goes to the origin instead of out corrupt."""
    o = cache_origin(rig)
    big = pattern_bytes(3 << 20, "verify-big")
    small = pattern_bytes(4000, "verify-small")
    dbig, dsmall = add_blob(o, big), add_blob(o, small)
    pbig = "/v2/library/v/blobs/" + dbig
    psmall = "/v2/library/v/blobs/" + dsmall
    filters = ["^/v2/.*/blobs/sha256:\\w+$"]
    with rig.dduct(proxy={"filters": filters}) as d:
        for p, data in ((pbig, big), (psmall, small)):
            r = get(rig, d, o.url("origin.test", p))
            check_eq((r.rc, r.status, r.body() == data), (0, 200, True), "stored " + p)
        file_dir = d.file_dir
    corrupt(file_dir, dbig)
    corrupt(file_dir, dsmall, at=10)
    with rig.dduct(proxy={"filters": filters}, misc={"file_dir": file_dir + "/"}) as d:
        r = get(rig, d, o.url("origin.test", pbig))
        check_eq(r.rc, 18, "after a restart: the corrupt blob's transfer is cut")
        check(os.path.getsize(r.body_path) < len(big), "never the whole corrupt body")
        check("does not match its digest" in d.log(), "logged", d.log()[-2000:])
        hexd = dbig.split(":")[1]
        check("c/%s/%s" % (hexd[:2], hexd) not in entries(file_dir), "the entry is removed")
        r = get(rig, d, o.url("origin.test", pbig))
        check_eq((r.rc, r.status, r.body() == big), (0, 200, True), "fetched again, whole")
        check_eq(len(origin_gets(o, pbig)), 2, "from the origin")
        r = get(rig, d, o.url("origin.test", psmall))
        check_eq((r.rc, r.status, r.body() == small), (0, 200, True),
                 "a corrupt small blob: the right bytes, from the origin")
        check_eq(len(origin_gets(o, psmall)), 2, "the small blob was asked again")
        r = get(rig, d, o.url("origin.test", pbig))
        check_eq((r.rc, r.body() == big), (0, True), "a verified hit")
        corrupt(file_dir, dbig, at=len(big) - 1)
        r = get(rig, d, o.url("origin.test", pbig))
        check_eq(r.rc, 18, "written in place while running: cut again (the last byte too)")
        r = get(rig, d, o.url("origin.test", pbig))
        check_eq((r.rc, r.body() == big), (0, True), "and fetched again")
        check_eq(len(origin_gets(o, pbig)), 3, "three origin GETs in all")


def cache_verify(d):
    """`dduct cache verify` on d's file_dir: exit status and output."""
    p = subprocess.run([dduct_bin(), "cache", "verify", "--cfg", d.cfg_path],
                       capture_output=True, text=True, timeout=120)
    return p.returncode, p.stdout + p.stderr


def flip(path, at):
    """Flip one byte of a file in place (same size, same inode)."""
    with open(path, "r+b") as f:
        f.seek(at)
        b = f.read(1)
        f.seek(at)
        f.write(bytes([b[0] ^ 0xFF]))


def test_corrupt_file_verified_on_first_hit(rig):
    """The same for an ordinary (URL-keyed) entry, checked against the checksum its fill recorded
    in the sidecar (gmac: the AES-128-GCM tag of the body under the published K0, IV0, checked
    here with OpenSSL): a same-size corruption is cut on the first hit after a restart with the
    WARN line, removed and fetched again ([cache] verify_hits = 'first'); `dduct cache verify`
    finds it; with verify_hits = 'never' it is served as stored."""
    n = 300000
    url = rig.origin.url("origin.test", "/bytes/%d" % n)
    with rig.dduct(proxy={"filters": ["^/bytes/"]}) as d:
        r = get(rig, d, url)
        check_eq((r.rc, r.status, r.sha256()), (0, 200, pattern_sha256(n)), "stored")
        file_dir = d.file_dir
    [rel] = [e for e in entries(file_dir) if e.startswith("u/")]
    check_gmac(sidecar(file_dir, rel)["digest"], pattern_bytes(n),
               "the sidecar records the body's gmac")
    p = os.path.join(file_dir, rel)
    flip(p, 1000)
    with rig.dduct(proxy={"filters": ["^/bytes/"]}, misc={"file_dir": file_dir + "/"},
                   cache={"verify_hits": "never"}) as d:
        r = get(rig, d, url)
        check_eq((r.rc, r.status), (0, 200), "verify_hits = 'never': served as stored")
        check(r.sha256() != pattern_sha256(n), "(the corrupt bytes: what 'never' means)")
    with rig.dduct(proxy={"filters": ["^/bytes/"]}, misc={"file_dir": file_dir + "/"},
                   cache={"verify_hits": "first"}) as d:
        rc, out = cache_verify(d)
        check(rc == 1 and "does not match the digest its sidecar records" in out,
              "dduct cache verify finds the corruption", out)
        r = get(rig, d, url)
        check_eq(r.rc, 18, "the corrupt file's transfer is cut")
        check(os.path.getsize(r.body_path) < n, "never the whole corrupt body")
        check("does not match its digest" in d.log(), "logged", d.log()[-2000:])
        check(rel not in entries(file_dir), "the entry is removed")
        r = get(rig, d, url)
        check_eq((r.rc, r.status, r.sha256()), (0, 200, pattern_sha256(n)), "fetched again")
        check_eq(len(origin_gets(rig.origin, "/bytes/%d" % n)), 2, "from the origin")


def _start_refused(d):
    """Start d, which must exit before listening; returns its log."""
    try:
        d.start()
    except TestFailure as e:
        return str(e)
    d.stop()
    raise TestFailure("dduct started on a file_dir another user could change:\n" + d.log()[-2000:])


def test_file_dir_only_ours(rig):
    """file_dir must be changeable by dduct's user alone (review-sec2 #1: another user who
    pre-created it 0777, or owned a directory above it, replaced its entries, digest and all):
    below a world-writable directory without the sticky bit dduct refuses to start and says
    which directory; with the sticky bit (as /tmp, /var/tmp) it starts; a file_dir of ours that
    is open to others is made 0700 with a WARN; one owned by another user (root only) or under
    one, is refused."""
    base = os.path.join(rig.tmp, "shared-%d" % os.getpid())
    os.makedirs(base)
    os.chmod(base, 0o777)
    fd = os.path.join(base, "files")
    log = _start_refused(rig.dduct(misc={"file_dir": fd + "/"}))
    check("writable by other users (mode 777) without the sticky bit" in log and base in log,
          "refused below a world-writable directory", log[-1500:])
    os.chmod(base, 0o1777)
    os.makedirs(fd, exist_ok=True)
    os.chmod(fd, 0o777)
    with rig.dduct(misc={"file_dir": fd + "/"}) as d:
        check_eq(os.stat(fd).st_mode & 0o777, 0o700, "file_dir made 0700")
    check("was open to other users (mode 777): made 0700" in d.log(), "and said so",
          d.log()[-1500:])
    if os.geteuid() != 0:
        return  # chown needs root (CI runs as root)
    os.chown(fd, 1234, 1234)
    log = _start_refused(rig.dduct(misc={"file_dir": fd + "/"}))
    check("is owned by uid 1234" in log, "refused: another user's file_dir", log[-1500:])
    above = os.path.join(rig.tmp, "theirs-%d" % os.getpid())
    os.makedirs(above)
    os.chown(above, 1234, 1234)
    log = _start_refused(rig.dduct(misc={"file_dir": os.path.join(above, "files") + "/"}))
    check("above it is owned by uid 1234" in log, "refused: under another user's directory",
          log[-1500:])


def test_old_sha256_sidecar_still_verified(rig):
    """An ordinary entry whose sidecar an earlier version wrote ("sha256:" for every entry) is
    still checked, with SHA-256: whole and right, it is served from the cache and `dduct cache
    verify` passes it; corrupt in place, verify reports it and the first hit after a restart is
    cut with the WARN line. A digest of an algorithm this version does not know is not checked:
    the entry is served as stored, as one without a digest is. [cache] checksum = 'sha256' makes
    the fill record sha256 again."""
    n = 250000
    path = "/bytes/%d" % n
    url = rig.origin.url("origin.test", path)
    with rig.dduct(proxy={"filters": ["^/bytes/"]}, cache={"checksum": "sha256"}) as d:
        r = get(rig, d, url)
        check_eq((r.rc, r.status, r.sha256()), (0, 200, pattern_sha256(n)), "stored")
        file_dir = d.file_dir
    [rel] = [e for e in entries(file_dir) if e.startswith("u/")]
    check_eq(sidecar(file_dir, rel)["digest"], "sha256:" + pattern_sha256(n),
             "checksum = 'sha256': the sidecar records sha256, as earlier versions did")
    kw = {"proxy": {"filters": ["^/bytes/"]}, "misc": {"file_dir": file_dir + "/"},
          "cache": {"verify_hits": "first"}}
    with rig.dduct(**kw) as d:
        rc, out = cache_verify(d)
        check_eq((rc, out.strip().splitlines()[-1]), (0, "0 problems"), "cache verify: good")
        for i in range(2):
            r = get(rig, d, url)
            check_eq((r.rc, r.status, r.sha256()), (0, 200, pattern_sha256(n)), "a hit %d" % i)
        check("does not match" not in d.log(), "no warning", d.log()[-2000:])
        check_eq(len(origin_gets(rig.origin, path)), 1, "from the cache")
    p = os.path.join(file_dir, rel)
    flip(p, n - 1)
    with rig.dduct(**kw) as d:
        rc, out = cache_verify(d)
        check(rc == 1 and "does not match the digest its sidecar records" in out,
              "cache verify finds the corrupt old-style entry", out)
        r = get(rig, d, url)
        check_eq(r.rc, 18, "the corrupt old-style entry's transfer is cut")
        check("does not match its digest" in d.log(), "logged", d.log()[-2000:])
        check(rel not in entries(file_dir), "the entry is removed")
        r = get(rig, d, url)
        check_eq((r.rc, r.sha256()), (0, pattern_sha256(n)), "fetched again")
        check_eq(len(origin_gets(rig.origin, path)), 2, "from the origin")
    check_gmac(sidecar(file_dir, rel)["digest"], pattern_bytes(n), "the refill records gmac")
    set_sidecar(file_dir, rel, digest="blake3:" + "0" * 64)
    flip(p, 5)
    with rig.dduct(**kw) as d:
        rc, out = cache_verify(d)
        check_eq((rc, out.strip().splitlines()[-1]), (0, "0 problems"),
                 "cache verify: an unknown algorithm is not checked")
        r = get(rig, d, url)
        check_eq((r.rc, r.status), (0, 200), "an unknown algorithm: served as stored")
        check(r.sha256() != pattern_sha256(n), "(the corrupt bytes: nothing to check them by)")
        check_eq(len(origin_gets(rig.origin, path)), 2, "from the cache")


if __name__ == "__main__":
    run([test_plain_http_never_answers_https, test_old_plain_entry_not_served_to_https,
         test_https_redirect_to_http_not_followed,
         test_redirect_to_another_port_drops_credentials, test_query_in_key,
         test_query_ignore_rules, test_unsafe_methods_invalidate, test_only_if_cached,
         test_long_target_414_big_response_head_502, test_origin_headers_replayed,
         test_https_never_follows_plain_blob_fill,
         test_corrupt_blob_verified_on_first_hit, test_corrupt_file_verified_on_first_hit,
         test_old_sha256_sidecar_still_verified, test_file_dir_only_ours])

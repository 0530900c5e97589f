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
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cache_rig import CacheHandler, entries, files_in  # noqa: E402
from dductlib.harness import check, check_eq, curl, run, via  # noqa: E402
from dductlib.origin import Origin  # noqa: E402

GOOD = b"GOOD: the https origin's file\n"
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


def dual_origin(rig):
    def make():
        o = Origin(tls=(rig.pki.origin_crt, rig.pki.origin_key))
        o.server.RequestHandlerClass = DualHandler
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
        with open(base, "rb") as f:
            check_eq(f.read(), GOOD, "the planted entry was replaced")
        check(rel in entries(d.file_dir), "the https entry keeps the https key's place",
              files_in(d.file_dir))


if __name__ == "__main__":
    run([test_plain_http_never_answers_https, test_old_plain_entry_not_served_to_https])

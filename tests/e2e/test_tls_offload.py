"""Bulk TLS record encryption on the thread pool (tls.c, "offloaded encryption"): large writes to
an intercepted client (cache hits, forwarded bodies) and to an origin (uploads) are encrypted by a
worker while the loop goes on. These tests check that the path is taken (dduct logs it once per
connection at debug level) and that what it sends is right: many parallel hits byte for byte,
small writes queued behind large ones in order (chunk headers, the next response on a keep-alive
connection, HEAD), uploads, clients that vanish while jobs run, SIGTERM mid-download. The path
serves mbedTLS's suites (AES-GCM); these tests take it with DDUCT_TLS_RECORDS=mbedtls so that
ChaCha20 goes through it too."""
import hashlib
import json
import os
import signal
import socket
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cache_rig import origin_gets  # noqa: E402
from dductlib import client  # noqa: E402
from dductlib.harness import check, check_eq, curl, run, via  # noqa: E402
from dductlib.origin import pattern_sha256  # noqa: E402

OFFLOAD_LOG = "on the thread pool"
# Workers encrypt only records mbedTLS makes: with ChaCha20-Poly1305 (what curl and the Python
# origin negotiate) libdduct seals records itself, on the loop (test_tls_records.py), unless told
# to leave them to mbedTLS, as it does for AES-GCM.
MBEDTLS_RECORDS = {"DDUCT_TLS_RECORDS": "mbedtls"}
CACHED = ["^/bytes/[0-9]*[02468]$"]  # even sizes are cached, odd ones forwarded


def tunnel(d, o, timeout=60):
    """An intercepted connection: CONNECT through tcp_bind, then TLS to dduct's leaf."""
    t = client.Tcp("127.0.0.1", d.tcp_port, timeout=timeout)
    status, _, _ = client.connect(t, "origin.test", o.port)
    check_eq(status, 200, "CONNECT")
    s = client.tls_context(d.ca_crt).wrap_socket(t.sock, server_hostname="origin.test")
    return client.Tcp.wrap(s)


def digest_of(r):
    return hashlib.sha256(r.body).hexdigest()


def fill(rig, d, url, n, seed="s"):
    r = curl(rig, via(d, "http") + [url])
    check_eq((r.rc, r.status, r.sha256()), (0, 200, pattern_sha256(n, seed)), "fill " + url)


def test_parallel_large_hits(rig):
    """Eight clients download a cached 24 MiB file at once through intercepted TLS: every body is
    complete and right, the origin saw one GET, and dduct encrypted on the thread pool."""
    n = 24 << 20
    path = "/bytes/%d" % n
    url = rig.origin.url("origin.test", path + "?seed=par")
    with rig.dduct(proxy={"filters": CACHED}, env=MBEDTLS_RECORDS) as d:
        fill(rig, d, url, n, "par")
        results = [None] * 8

        def one(i):
            results[i] = curl(rig, via(d, "http" if i % 2 else "https") + [url])
        ts = [threading.Thread(target=one, args=(i,)) for i in range(len(results))]
        for t in ts:
            t.start()
        for t in ts:
            t.join(300)
        for i, r in enumerate(results):
            check(r is not None, "client %d finished" % i)
            check_eq((r.rc, r.status, r.sha256()), (0, 200, pattern_sha256(n, "par")),
                     "client %d" % i)
        check_eq(len(origin_gets(rig.origin, path)), 1, "one origin GET")
        check(OFFLOAD_LOG in d.log(), "dduct logs that it encrypts on the thread pool")


def test_keepalive_order_after_large_body(rig):
    """On one intercepted keep-alive connection, pipelined: a large hit, HEAD of it, a small
    request, a chunked 2 MiB forwarded answer with odd chunk sizes (dduct re-chunks: its small
    chunk headers queue behind large encrypted chunks), then the large hit again. Every answer
    comes back whole, in order, on the same connection."""
    o = rig.origin
    n = 4 << 20  # dductlib's Reader copies its buffer per read: keep the bodies modest
    big = "/bytes/%d?seed=ka" % n
    m = (2 << 20) + 1  # odd: forwarded, not cached
    with rig.dduct(proxy={"filters": CACHED}, env=MBEDTLS_RECORDS) as d:
        fill(rig, d, o.url("origin.test", big), n, "ka")
        t = tunnel(d, o)
        host = "origin.test:%d" % o.port
        reqs = [("GET", big), ("HEAD", big), ("GET", "/echo/small"),
                ("GET", "/bytes/%d?mode=chunked&seed=ch" % m), ("GET", big)]
        t.sendall(b"".join(client.request_bytes(meth, p, host) for meth, p in reqs))
        rd = client.Reader(t)
        r = rd.read_response("GET")
        check_eq((r.status, len(r.body), digest_of(r)), (200, n, pattern_sha256(n, "ka")),
                 "large hit")
        r = rd.read_response("HEAD")
        check_eq((r.status, r.header("Content-Length"), r.body), (200, str(n), b""), "HEAD")
        r = rd.read_response("GET")
        check_eq((r.status, json.loads(r.body)["target"]), (200, "/echo/small"), "small answer")
        r = rd.read_response("GET")
        check_eq((r.status, len(r.body), digest_of(r)), (200, m, pattern_sha256(m, "ch")),
                 "chunked forwarded answer")
        r = rd.read_response("GET")
        check_eq((r.status, digest_of(r)), (200, pattern_sha256(n, "ka")), "large hit again")
        t.close()
        check(OFFLOAD_LOG in d.log(), "dduct logs that it encrypts on the thread pool")


def test_large_upload(rig):
    """A 16 MiB POST through an intercepted connection reaches the origin intact (read in large
    batches from the client, encrypted on the thread pool towards the origin), twice on one
    connection."""
    o = rig.origin
    body = bytes(range(256)) * (16 << 12)
    want = hashlib.sha256(body).hexdigest()
    with rig.dduct(env=MBEDTLS_RECORDS) as d:
        t = tunnel(d, o)
        rd = client.Reader(t)
        for i in range(2):
            t.sendall(client.request_bytes("POST", "/echo/up%d" % i, "origin.test", body=body))
            r = rd.read_response("POST")
            doc = json.loads(r.body)
            check_eq((r.status, doc["body_len"], doc["body_sha256"]), (200, len(body), want),
                     "upload %d" % i)
        t.close()
        check(OFFLOAD_LOG in d.log(), "dduct logs that it encrypts on the thread pool")


def test_clients_vanish_mid_download(rig):
    """Twelve clients start a 24 MiB hit, read a little and close (some with RST) while records
    are being encrypted for them; dduct stays up, serves a full copy afterwards, and exits clean
    (ASan/LSan: nothing leaked, no use after free of a stream a worker was using)."""
    o = rig.origin
    n = 24 << 20
    path = "/bytes/%d?seed=gone" % n
    with rig.dduct(proxy={"filters": CACHED}, env=MBEDTLS_RECORDS) as d:
        fill(rig, d, o.url("origin.test", path), n, "gone")
        for round_ in range(3):
            conns = []
            for i in range(4):
                t = tunnel(d, o)
                t.sendall(client.request_bytes("GET", path, "origin.test"))
                conns.append(t)
            for i, t in enumerate(conns):
                got = 0
                while got < (1 << 20) * (i + 1):
                    c = t.recv(1 << 16)
                    if not c:
                        break
                    got += len(c)
                if i % 2:
                    t.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                      b"\x01\x00\x00\x00\x00\x00\x00\x00")
                t.close()
        r = curl(rig, via(d, "http") + [o.url("origin.test", path)])
        check_eq((r.rc, r.status, r.sha256()), (0, 200, pattern_sha256(n, "gone")),
                 "a full download after the vanished ones")
        check(d.alive(), "dduct still running")


def test_sigterm_mid_download(rig):
    """SIGTERM while four clients are in the middle of 24 MiB hits: dduct exits with status 0
    within its grace period and without a sanitizer report."""
    o = rig.origin
    n = 24 << 20
    path = "/bytes/%d?seed=term" % n
    d = rig.dduct(proxy={"filters": CACHED, "shutdown_grace": 2}, env=MBEDTLS_RECORDS)
    with d:
        fill(rig, d, o.url("origin.test", path), n, "term")
        conns = []
        for i in range(4):
            t = tunnel(d, o)
            t.sendall(client.request_bytes("GET", path, "origin.test"))
            conns.append(t)
        stop = threading.Event()

        def drain(t):
            try:
                while not stop.is_set() and t.recv(1 << 16):
                    time.sleep(0.001)
            except OSError:
                pass
        ts = [threading.Thread(target=drain, args=(t,)) for t in conns]
        for th in ts:
            th.start()
        time.sleep(0.3)
        d.send_signal(signal.SIGTERM)
        d.stop(timeout=60)
        stop.set()
        for th in ts:
            th.join(30)
        for t in conns:
            t.close()


if __name__ == "__main__":
    run([test_parallel_large_hits, test_keepalive_order_after_large_body, test_large_upload,
         test_clients_vanish_mid_download, test_sigterm_mid_download])

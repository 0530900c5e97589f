"""The cache with real curl clients, the real dduct binary and real origins on 127.0.0.1:
download once, serve many; followers of a running fill; Range, HEAD and 304 on hits and mid-fill;
non-200 and short answers pass through unstored; hostile paths stay inside file_dir."""
import os
import socket
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cache_rig import cache_origin, check_inside, entries, files_in, origin_gets  # noqa: E402
from dductlib.harness import check, check_eq, curl, is_asan, run, via, wait_for  # noqa: E402
from dductlib.origin import pattern_bytes, pattern_sha256  # noqa: E402


def headers(r):
    """Response headers of a curl run made with -D hdr (last response), lower-cased names."""
    with open(os.path.join(r.cwd, "hdr"), "rb") as f:
        blocks = f.read().decode("latin-1").split("\r\n\r\n")
    block = [b for b in blocks if b.strip()][-1]
    out = {}
    for line in block.split("\r\n")[1:]:
        k, _, v = line.partition(":")
        out[k.strip().lower()] = v.strip()
    return out


def status_line(r):
    """The status line of the last response of a curl run made with -D hdr."""
    with open(os.path.join(r.cwd, "hdr"), "rb") as f:
        blocks = f.read().decode("latin-1").split("\r\n\r\n")
    return [b for b in blocks if b.strip()][-1].split("\r\n")[0]


def body(r):
    """The body curl saved (curl writes no file for an empty body)."""
    return r.body() if os.path.exists(r.body_path) else b""


def get(rig, d, url, *extra, kind="http"):
    return curl(rig, via(d, kind) + ["-D", "hdr"] + list(extra) + [url])


def test_second_download_from_file(rig):
    """A 50 MiB file fetched once is served from file_dir afterwards: the second and third
    downloads (plain-HTTP proxy to an intercepted https:// URL, then TLS-in-TLS, then the plain
    http:// origin) cause zero new origin requests and carry the real Content-Length and bytes."""
    n = 50 << 20
    path = "/bytes/%d" % n
    with rig.dduct(proxy={"filters": ["^/bytes/"]}) as d:
        for kind, o in (("http", rig.origin), ("https", rig.origin), ("http", rig.plain)):
            url = o.url("origin.test", path)
            r = get(rig, d, url, kind=kind)
            check_eq((r.rc, r.status), (0, 200), kind + " " + o.scheme + " download")
            check_eq(r.sha256(), pattern_sha256(n), "body bytes")
            check_eq(headers(r).get("content-length"), str(n), "a 200 carries the real length")
        first = len(origin_gets(rig.origin, path))
        check_eq(first, 1, "https origin: one GET for two downloads")
        check_eq(len(origin_gets(rig.plain, path)), 1, "http origin: its own single GET")
        for kind in ("http", "https"):
            r = get(rig, d, rig.origin.url("origin.test", path), kind=kind)
            check_eq((r.rc, r.status, r.sha256()), (0, 200, pattern_sha256(n)), "again " + kind)
        check_eq(len(origin_gets(rig.origin, path)), 1, "still one origin GET after four")
        log = d.log()
        check("Fill completed" in log and "Hit \"" in log, "hits, misses and fills are logged")
        check(len(entries(d.file_dir)) == 2, "two entries: one per origin", files_in(d.file_dir))


def test_twenty_concurrent_clients(rig):
    """20 clients asking at once for one uncached 16 MiB file cause exactly one origin request,
    and every one of them gets the identical, complete, correct body."""
    n = 16 << 20
    path = "/bytes/%d" % n
    url = rig.origin.url("origin.test", path + "?seed=twenty")
    with rig.dduct(proxy={"filters": ["^/bytes/"]}) as d:
        results = [None] * 20

        def one(i):
            results[i] = curl(rig, via(d, "http" if i % 2 else "https") + [url])
        ts = [threading.Thread(target=one, args=(i,)) for i in range(20)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(300)
        want = pattern_sha256(n, "twenty")
        for i, r in enumerate(results):
            check(r is not None, "client %d finished" % i)
            check_eq((r.rc, r.status, r.sha256()), (0, 200, want), "client %d" % i)
        check_eq(len(origin_gets(rig.origin, path)), 1, "one origin GET for 20 clients")


def test_mid_fill_followers_range_head(rig):
    """While the origin holds back the second half of a file: a second client gets the whole body
    with the right length (it follows the fill, no second origin request), a Range inside the
    written part is answered 206 at once, a Range on the tail waits and then arrives, HEAD
    answers with the real length. Afterwards the hit answers Range 206, If-None-Match 304, HEAD,
    and 416 for a range past the end, all without the origin."""
    o = cache_origin(rig)
    n = 6 << 20
    path = "/gate/%d" % n
    url = o.url("origin.test", path)
    data = pattern_bytes(n, "gate")
    with rig.dduct(proxy={"filters": ["^/gate/"]}) as d:
        out = {}

        def bg(name, *extra):
            out[name] = get(rig, d, url, *extra)
        a = threading.Thread(target=bg, args=("a",))
        a.start()
        check(o.half_sent.wait(60), "origin sent the first half")
        wait_for(lambda: any(f.endswith(".part") and
                             os.path.getsize(os.path.join(d.file_dir, f)) >= n // 2
                             for f in files_in(d.file_dir)), "the first half on disk")
        r = get(rig, d, url, "-I")
        check_eq((r.rc, r.status), (0, 200), "HEAD mid-fill")
        check_eq(headers(r).get("content-length"), str(n), "HEAD mid-fill: real length")
        r = get(rig, d, url, "-r", "100-199")
        check_eq((r.rc, r.status), (0, 206), "Range mid-fill")
        check_eq(r.body(), data[100:200], "Range mid-fill: those bytes")
        check_eq(headers(r).get("content-range"), "bytes 100-199/%d" % n, "Content-Range")
        b = threading.Thread(target=bg, args=("b",))
        b.start()
        tail = threading.Thread(target=bg, args=("tail", "-r", "-1000"))
        tail.start()
        wait_for(lambda: d.log().count("(while filling)") >= 4, "the followers to attach")
        check(a.is_alive() and b.is_alive() and tail.is_alive(), "nobody finished early")
        o.gate.set()
        for t in (a, b, tail):
            t.join(120)
        for name in ("a", "b"):
            r = out[name]
            check_eq((r.rc, r.status), (0, 200), "client " + name)
            check_eq(headers(r).get("content-length"), str(n), "client %s: length" % name)
            check(r.body() == data, "client %s: the whole body" % name)
        check_eq((out["tail"].status, out["tail"].body()), (206, data[-1000:]), "tail range")
        check_eq(len(origin_gets(o, path)), 1, "one origin GET for everything mid-fill")

        r = get(rig, d, url, "-r", "0-9")
        check_eq((r.status, r.body()), (206, data[:10]), "Range on a hit")
        check_eq(status_line(r), "HTTP/1.1 206 Partial Content", "206's reason phrase")
        r = get(rig, d, url, "-H", 'If-None-Match: "gate-%d"' % n)
        check_eq((r.status, body(r)), (304, b""), "If-None-Match on a hit")
        check_eq(status_line(r), "HTTP/1.1 304 Not Modified", "304's reason phrase")
        r = get(rig, d, url, "-I")
        h = headers(r)
        check_eq((r.status, h.get("content-length"), h.get("etag")),
                 (200, str(n), '"gate-%d"' % n), "HEAD on a hit, from the sidecar")
        check_eq(h.get("content-type"), "application/x-gate", "Content-Type from the sidecar")
        r = get(rig, d, url, "-r", "%d-" % (n + 10))
        check_eq(r.status, 416, "a range past the end")
        check_eq(status_line(r), "HTTP/1.1 416 Range Not Satisfiable", "416's reason phrase")
        check_eq(len(origin_gets(o, path)), 1, "hits never asked the origin")
        check_eq(len([q for q in o.snapshot()["requests"] if q[1] == path]), 1,
                 "not even with HEAD")


def test_first_client_leaves_fill_completes(rig):
    """The client that started a download hangs up halfway: the download still completes into
    the cache (it is not tied to that client), and the next client is served from the file. An
    origin answering in chunks (no length) is stored too, and later hits carry its real length."""
    o = cache_origin(rig, tls=False)
    n = 5 << 20
    path = "/gate/%d" % n
    with rig.dduct(proxy={"filters": ["^/gate/", "^/bytes/"]}) as d:
        s = socket.create_connection(("127.0.0.1", d.tcp_port))
        s.sendall(("GET %s HTTP/1.1\r\nHost: origin.test:%d\r\n\r\n"
                   % (o.url("origin.test", path), o.port)).encode())
        check(o.half_sent.wait(60), "the origin sent half")
        check(len(s.recv(65536)) > 0, "the first client got the start of the body")
        s.close()
        o.gate.set()
        wait_for(lambda: len(entries(d.file_dir)) == 1, "the fill to complete without its client")
        r = get(rig, d, o.url("origin.test", path))
        check_eq((r.status, r.body() == pattern_bytes(n, "gate")), (200, True), "served whole")
        check_eq(len(origin_gets(o, path)), 1, "from the file")
        url = rig.origin.url("origin.test", "/bytes/3000000?mode=chunked")
        for i in range(2):
            r = get(rig, d, url)
            check_eq((r.status, r.sha256()), (200, pattern_sha256(3000000)), "chunked %d" % i)
        check_eq(headers(r).get("content-length"), "3000000", "a hit of a chunked fill: length")
        check_eq(len(origin_gets(rig.origin, "/bytes/3000000")), 1, "fetched once")


def test_slow_readers_bounded_memory(rig):
    """Eight clients that stop reading a 64 MiB hit (and one that stops mid-fill) do not make
    dduct buffer the file: its resident memory grows by far less than the file while they stall,
    and each then receives the whole, right body."""
    import hashlib
    n = 64 << 20
    path = "/bytes/%d" % n
    url = rig.plain.url("origin.test", path + "?seed=slow")
    # ASan's quarantine of freed blocks reads as RSS growth: keep it small (as test_proxy_limits).
    env = {"ASAN_OPTIONS": "quarantine_size_mb=4:thread_local_quarantine_size_kb=64"}
    with rig.dduct(proxy={"filters": ["^/bytes/"]}, misc={"log_level": "info"},
                   env=env if is_asan() else None) as d:
        socks = []  # [socket, bytes received so far]

        def start():
            s = socket.create_connection(("127.0.0.1", d.tcp_port))
            s.settimeout(60)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
            s.sendall(("GET %s HTTP/1.1\r\nHost: origin.test\r\n\r\n" % url).encode())
            socks.append([s, s.recv(65536)])
        start()
        wait_for(lambda: len(entries(d.file_dir)) == 1, "the fill to finish without its reader",
                 timeout=300)
        base = d.proc_status("VmRSS")
        for _ in range(8):
            start()
        time.sleep(1)  # not a timed assertion: gives dduct the chance to over-buffer
        grown = d.proc_status("VmRSS") - base
        check(grown < 16 * 1024, "RSS grew by %d KiB for 9 stalled readers of 64 MiB" % grown)
        want = pattern_sha256(n, "slow")
        for s, buf in socks:
            while b"\r\n\r\n" not in buf:
                buf += s.recv(65536)
            hd, _, rest = buf.partition(b"\r\n\r\n")
            check(b"Content-Length: %d" % n in hd, "the real length", hd)
            h = hashlib.sha256(rest)
            got = len(rest)
            while got < n:
                c = s.recv(1 << 20)
                check(c, "the body continues")
                h.update(c)
                got += len(c)
            check_eq(h.hexdigest(), want, "a stalled reader gets the whole body")
            s.close()
        check_eq(len(origin_gets(rig.plain, path)), 1, "one origin GET")


def test_non_200_and_short_not_stored(rig):
    """401, 404 and 500 answers pass through to the client unchanged and store nothing; an origin
    that closes halfway through its announced length makes the client see a truncated transfer
    (curl exit 18), and nothing is stored: the next request goes to the origin again."""
    o = rig.origin
    with rig.dduct(proxy={"filters": ["^/status/", "^/closemid/", "^/auth/"]}) as d:
        for code in (401, 404, 500):
            url = o.url("origin.test", "/status/%d" % code)
            for _ in range(2):
                r = get(rig, d, url)
                check_eq((r.status, r.body()), (code, b"status %d\n" % code), "%d passes" % code)
            check_eq(len(origin_gets(o, "/status/%d" % code)), 2, "%d is not stored" % code)
        co = cache_origin(rig)
        r = get(rig, d, co.url("origin.test", "/auth/a.bin"))
        check_eq(r.status, 401, "an origin's 401 reaches the client")
        check("basic" in headers(r).get("www-authenticate", "").lower(), "with its challenge")
        url = o.url("origin.test", "/closemid/4000000")
        for i in range(2):
            r = get(rig, d, url)
            check_eq(r.rc, 18, "attempt %d: a short body is a partial transfer for curl" % i)
        check_eq(len(origin_gets(o, "/closemid/4000000")), 2, "a short body is not stored")
        check_eq(entries(d.file_dir), [], "no entry at all")
        check_eq([f for f in files_in(d.file_dir) if ".part" in f], [], "no .part left")


def test_hostile_paths_stay_inside(rig):
    """Paths with .., %2e%2e, %2f, %00, backslashes, odd bytes and a 4000-byte name are fetched and
    cached, and every file dduct writes resolves inside file_dir; nothing appears beside it."""
    o = cache_origin(rig, tls=False)
    paths = ["/any/../../../../../etc/passwd", "/any/%2e%2e/%2e%2e/%2e%2e/x.deb",
             "/any/a%2f..%2f..%2f..%2fb", "/any/%00/x", "/any/..%5c..%5cwindows",
             "/any/%ff%fe%80", "/any/" + "a" * 4000, "/any/./././b", "/any//../c"]
    with rig.dduct(proxy={"filters": ["^/any/", "^/etc/"]}) as d:
        before = sorted(os.listdir(d.dir))
        for p in paths:
            r = curl(rig, ["--path-as-is", "-x", d.http_proxy, o.url("origin.test", p)])
            check_eq(r.status, 200, "fetched " + p[:60])
        # Commits follow the responses (and fsync): let the last sidecar's temporary go.
        wait_for(lambda: not any(f.endswith(".tmp") or ".part" in f
                                 for f in files_in(d.file_dir)), "the last commits")
        n_entries = len(entries(d.file_dir))
        check(n_entries >= 6, "hostile paths were cached", files_in(d.file_dir))
        check_inside(d.file_dir)
        check_eq(sorted(os.listdir(d.dir)), before, "nothing new beside file_dir")
        for f in files_in(d.file_dir):
            check(len(os.path.basename(f)) <= 64 + 5, "fixed-size names", f)
        for p in paths[:3]:
            r = curl(rig, ["--path-as-is", "-x", d.http_proxy, o.url("origin.test", p)])
            check_eq(r.body(), p.encode(), "a hit returns the origin's body for " + p[:40])


if __name__ == "__main__":
    run([test_second_download_from_file, test_twenty_concurrent_clients,
         test_mid_fill_followers_range_head, test_first_client_leaves_fill_completes,
         test_slow_readers_bounded_memory,
         test_non_200_and_short_not_stored,
         test_hostile_paths_stay_inside])

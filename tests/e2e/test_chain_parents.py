#!/usr/bin/env python3
"""The parent tier: 2 parents and 4 edges on 127.0.0.x. Every edge pulls the same blobs and
packages concurrently from cold: the origin sees each file once, the parents split the keys by
rendezvous hash, the edges store what they get. A parent killed mid-run: every client still gets
complete, correct bodies (the edges resume from the next parent or the origin). dduct as a parent
serves absolute-form https:// requests under the key an intercepted request gets; uncacheable
requests never go through parents."""
import hashlib
import os
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import cluster_rig  # noqa: E402
from cache_rig import add_blob, cache_origin  # noqa: E402
from dductlib.harness import check, check_eq, curl, run, via  # noqa: E402
from dductlib.origin import pattern_bytes, pattern_sha256  # noqa: E402


def _files(o, tag, nblobs, npkgs):
    """(url, sha256) for nblobs registry blobs and npkgs package-like /bytes files."""
    out = []
    for i in range(nblobs):
        data = hashlib.sha256(("%s-%d" % (tag, i)).encode()).digest() * (2048 + 97 * i)
        d = add_blob(o, data)
        out.append((o.url("origin.test", "/v2/lib/%s/blobs/%s" % (tag, d)),
                    hashlib.sha256(data).hexdigest()))
    for i in range(npkgs):
        n = 200000 + 7919 * i + (hash(tag) & 0xfff)
        out.append((o.url("origin.test", "/bytes/%d" % n), pattern_sha256(n)))
    return out


def _pull_all(rig, edges, files, tag):
    urls = [u for u, _ in files]
    runs = [cluster_rig.pull(rig, e, urls, os.path.join(rig.tmp, "%s-%d" % (tag, k)))
            for k, e in enumerate(edges)]
    for k, (proc, outs) in enumerate(runs):
        out, err = proc.communicate(timeout=300)
        check_eq(proc.returncode, 0, "curl through edge %d (%s)" % (k + 1, err.decode()[-500:]))
        for (u, sha), p in zip(files, outs):
            with open(p, "rb") as f:
                got = hashlib.sha256(f.read()).hexdigest()
            check_eq(got, sha, "edge %d body of %s" % (k + 1, u))
        codes = out.decode().split()
        check(codes.count("200") == len(files), "every answer 200", out.decode()[-500:])


def test_cluster_cold_pull(rig):
    """4 edges pull the same 30 files (20 blobs, 10 packages) concurrently from cold through 2
    parents: every body is correct, the origin sees each file exactly once, both parents hold a
    share of the keys (and together exactly the 30), every edge stores all 30; a second pull is
    all edge hits (the parents see nothing)."""
    o = cache_origin(rig)
    files = _files(o, "cold", 20, 10)
    parents, edges = cluster_rig.start_cluster(rig, 2, 4)
    try:
        _pull_all(rig, edges, files, "cold")
        for u, _ in files:
            path = u.split(str(o.port), 1)[1]
            check_eq(o.count(path), 1, "the origin saw %s once" % path)
        shares = cluster_rig.wait_entries([p.file_dir for p in parents], len(files))
        check_eq(sum(shares), len(files), "the parents together hold each key once %r" % shares)
        check(min(shares) >= 5, "both parents hold a share of the keys %r" % shares)
        for k, e in enumerate(edges):
            check_eq(cluster_rig.wait_entries([e.file_dir], len(files)), [len(files)],
                     "edge %d stored all" % k)
        before = [len(p.log()) for p in parents]
        _pull_all(rig, edges, files, "warm")
        for p, b in zip(parents, before):
            check("Hit \"" not in p.log()[b:] and "Miss \"" not in p.log()[b:],
                  "a warm pull never reaches a parent", p.log()[b:][-1500:])
        logs = cluster_rig.stop_all(edges + parents)
        check(any("Parent https://p1.wild.test" in l for l in logs), "edges log their parents")
    finally:
        cluster_rig.kill_all(edges + parents)


def test_parent_killed_mid_run(rig):
    """The origin sends half of each of 12 files and waits; once bytes flow, parent 1 is killed
    (SIGKILL). The edges log it as down, resume the keys it carried from the other parent (or
    the origin) with a Range request, and after the origin finishes every client of every edge
    has complete, correct bodies; nothing short was stored."""
    o = cache_origin(rig)
    o.gate.clear()
    o.half_sent.clear()
    sizes = [300000 + 1013 * i for i in range(12)]
    files = [(o.url("origin.test", "/gate/%d" % n), hashlib.sha256(pattern_bytes(n, "gate")).hexdigest())
             for n in sizes]
    parents, edges = cluster_rig.start_cluster(rig, 2, 4, edge_overrides={"parent_down_time": 60})
    try:
        urls = [u for u, _ in files]
        runs = [cluster_rig.pull(rig, e, urls, os.path.join(rig.tmp, "kill-%d" % k))
                for k, e in enumerate(edges)]
        check(o.half_sent.wait(60), "the origin started sending")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and \
                sum(p.log().count("Miss \"") for p in parents) < len(files):
            time.sleep(0.1)
        victim = parents[0]
        carried = victim.log().count("Miss \"")
        # Wait until bytes of every file the victim carries reached every client (so each edge
        # is mid-body on it, not still waiting for a head; curl's stdio holds the last few KiB).
        mine = [i for i, (u, _) in enumerate(files) if "Miss \"%s\"" % u in victim.log()]
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not all(
                os.path.exists(outs[i]) and os.path.getsize(outs[i]) >= 65536
                for _, outs in runs for i in mine):
            time.sleep(0.1)
        victim.proc.send_signal(signal.SIGKILL)
        victim.proc.wait()
        victim.stopped = True
        time.sleep(0.5)
        o.gate.set()
        for k, (proc, outs) in enumerate(runs):
            out, err = proc.communicate(timeout=300)
            check_eq(proc.returncode, 0, "curl through edge %d (%s)" % (k + 1, err.decode()[-500:]))
            for (u, sha), p in zip(files, outs):
                with open(p, "rb") as f:
                    got = hashlib.sha256(f.read()).hexdigest()
                check_eq(got, sha, "edge %d: complete, correct body of %s" % (k + 1, u))
        logs = cluster_rig.stop_all(edges + [parents[1]])
        if carried > 0:
            check(any("Parent https://p1.wild.test" in l and "down for" in l for l in logs[:4]),
                  "an edge logged parent 1 down", logs[0][-2000:])
            check(any("Resuming \"" in l for l in logs[:4]), "an edge resumed a body mid-way")
        print("# parent 1 carried %d keys when killed" % carried)
    finally:
        o.gate.set()
        cluster_rig.kill_all(edges + parents)


def test_dduct_as_parent(rig):
    """A dduct answers absolute-form https:// requests on its TLS listener through its cache
    under the key an intercepted request gets: fetched once from the origin by an absolute-form
    request, then a hit for an intercepted client; an uncacheable one is forwarded (origin's
    certificate verified) and not stored; an untrusted origin is refused."""
    o = cache_origin(rig)
    n = 123457
    with rig.dduct(proxy={"filters": cluster_rig.FILTERS}) as p:
        url = o.url("origin.test", "/bytes/%d" % n)
        # curl's --request-target sends the absolute form over TLS straight to the listener.
        r = curl(rig, ["--cacert", p.ca_crt, "--request-target", url, "-H",
                       "Host: origin.test:%d" % o.port,
                       "https://127.0.0.1:%d/" % p.tls_port])
        check_eq((r.rc, r.status, r.sha256()), (0, 200, pattern_sha256(n)),
                 "absolute-form https:// on the TLS listener (%s)" % r.stderr)
        r = curl(rig, via(p, "http") + [url])
        check_eq((r.rc, r.status, r.sha256()), (0, 200, pattern_sha256(n)), "intercepted")
        check_eq(o.count("/bytes/%d" % n), 1, "one origin fetch: the same key")
        r = curl(rig, ["--cacert", p.ca_crt, "--request-target", o.url("origin.test", "/echo/x"),
                       "https://127.0.0.1:%d/" % p.tls_port])
        check_eq((r.rc, r.status), (0, 200), "an uncacheable absolute-form request is forwarded")
        r = curl(rig, ["--cacert", p.ca_crt, "--request-target", rig.bad.url("bad.test", "/bytes/9"),
                       "https://127.0.0.1:%d/" % p.tls_port])
        check_eq(r.status, 502, "an untrusted origin is refused")
        log = p.stop()
        check("Hit \"https://origin.test:%d/bytes/%d\"" % (o.port, n) in log, "the second was a hit")


def test_plain_parent_never_for_https(rig):
    """A parent listed as http:// is reached without TLS: an https file is never asked of it
    (its answer would be plain-http bytes answering an https client); the edge fetches it from
    the origin over TLS itself. An http:// file still goes through that parent."""
    o = cache_origin(rig)
    plain = cache_origin(rig, tls=False)
    pins = ["%s:127.0.0.1" % n for n in cluster_rig.PIN_NAMES] + ["p1.wild.test:127.0.0.2"]
    with rig.dduct(name="plainparent", host="127.0.0.2",
                   proxy={"filters": cluster_rig.FILTERS}) as p:
        with rig.dduct(name="edge", host="127.0.0.10",
                       proxy={"filters": cluster_rig.FILTERS, "resolve": pins,
                              "parents": ["http://p1.wild.test:%d" % p.tcp_port]}) as e:
            n = 131071
            r = curl(rig, via(e, "http") + [o.url("origin.test", "/bytes/%d" % n)])
            check_eq((r.rc, r.status, r.sha256()), (0, 200, pattern_sha256(n)), "https via the edge")
            check("/bytes/%d" % n not in p.log(), "the plain parent was not asked for https",
                  p.log()[-1500:])
            check_eq(o.count("/bytes/%d" % n), 1, "the edge fetched it from the origin")
            r = curl(rig, via(e, "http") + [plain.url("origin.test", "/bytes/%d" % n)])
            check_eq((r.rc, r.status, r.sha256()), (0, 200, pattern_sha256(n)), "http via the edge")
            check("Miss \"http://origin.test:%d/bytes/%d\"" % (plain.port, n) in p.log(),
                  "the http:// file went through the parent", p.log()[-1500:])


def test_uncacheable_never_via_parents(rig):
    """Non-cacheable traffic (an /echo path, a POST, a HEAD miss) goes from the edge straight to
    the origin: the parent sees no request at all."""
    o = cache_origin(rig)
    parents, edges = cluster_rig.start_cluster(rig, 1, 1)
    try:
        e = edges[0]
        r = curl(rig, via(e, "http") + [o.url("origin.test", "/echo/direct")])
        check_eq((r.rc, r.status), (0, 200), "uncacheable GET")
        r = curl(rig, via(e, "http") + ["-d", "x=1", o.url("origin.test", "/echo/post")])
        check_eq((r.rc, r.status), (0, 200), "POST")
        r = curl(rig, via(e, "http") + ["-I", o.url("origin.test", "/bytes/4242")])
        check_eq((r.rc, r.status), (0, 200), "HEAD miss")
        plog = parents[0].log()
        check("/echo/" not in plog and "/bytes/4242" not in plog, "the parent saw none of them",
              plog[-1500:])
        cluster_rig.stop_all(edges + parents)
    finally:
        cluster_rig.kill_all(edges + parents)


def test_parent_refused_then_direct(rig):
    """A parent that refuses connections is logged down and skipped: the miss goes to the
    origin directly and the client gets its body; the next miss does not try the dead parent;
    /metrics shows the parent down, asked once, failed once."""
    from dductlib.origin import closed_port
    o = cache_origin(rig)
    pins = ["%s:127.0.0.1" % n for n in cluster_rig.PIN_NAMES] + ["p1.wild.test:127.0.0.2"]
    dead = "https://p1.wild.test:%d" % closed_port("127.0.0.2")
    with rig.dduct(proxy={"filters": cluster_rig.FILTERS, "resolve": pins, "parents": [dead]},
                   admin=True) as e:
        for n in (5001, 5002):
            r = curl(rig, via(e, "http") + [o.url("origin.test", "/bytes/%d" % n)])
            check_eq((r.rc, r.status, r.sha256()), (0, 200, pattern_sha256(n)),
                     "a miss with the only parent dead (%s)" % r.stderr)
        m = curl(rig, [e.admin_url + "/metrics"]).body().decode()
        for line in ('dduct_parent_up{parent="%s"} 0' % dead,
                     'dduct_parent_requests_total{parent="%s"} 1' % dead,
                     'dduct_parent_failures_total{parent="%s"} 1' % dead):
            check(line in m, "/metrics has " + line, m[-1500:])
        log = e.stop()
        check(log.count("down for 30 s") == 1, "the parent logged down once", log[-2000:])
        check(log.count("Asking parent") == 1, "the second miss skipped it", log[-2000:])


def test_lying_parent_is_caught_at_the_edge(rig):
    """A parent that answers a blob with wrong bytes (a stand-in serving a corrupted copy under
    the right digest): the edge's digest check catches it, the client's transfer is cut short
    (never a complete wrong body), nothing is stored at the edge and the log says why."""
    from dductlib.origin import Origin
    from cache_rig import CacheHandler
    o = cache_origin(rig)
    right = pattern_bytes(1 << 20, "liar")
    digest = add_blob(o, right)
    liar = Origin(tls=(rig.pki.origin_crt, rig.pki.origin_key))
    liar.server.RequestHandlerClass = CacheHandler
    wrong = bytearray(right)
    wrong[1000] ^= 0xff
    liar.blobs = {digest: bytes(wrong)}
    try:
        # The stand-in's certificate is for origin.test, from the test origin CA.
        with rig.dduct(proxy={"filters": cluster_rig.FILTERS,
                              "parents": ["https://origin.test:%d" % liar.port],
                              "parent_ca_file": rig.pki.ca_crt}) as e:
            path = "/v2/lib/liar/blobs/" + digest
            r = curl(rig, via(e, "http") + [o.url("origin.test", path)])
            check_eq(r.rc, 18, "the client's transfer is cut short (%s)" % r.stderr)
            check(os.path.getsize(r.body_path) < len(right), "never the whole body")
            check_eq(liar.count(path), 1, "the edge asked the parent")
            check_eq(cluster_rig.entries_count(e.file_dir), 0, "nothing stored at the edge")
            log = e.stop()
            check("digest" in log, "the edge's log says why", log[-2000:])
    finally:
        liar.close()


def test_resume_meets_relayed_5xx(rig):
    """A parent dies mid-body and the next one, asked for the rest (Range), relays the origin's
    503 (Via: 1.1 dduct): nobody can supply the rest, so the fill is discarded and the client's
    transfer is cut short at once (it used to be left waiting on a fill nobody fed, its job
    freed under the store's drain callback)."""
    import socket
    from dductlib.origin import Origin
    from cache_rig import CacheHandler

    class Flaky(CacheHandler):
        def _ep_bytes(self, path, query, body):
            n = int(path.split("/")[2])
            if self.headers.get("Range"):
                return self._send(503, b"origin down\n", extra=[("Via", "1.1 dduct")])
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(n))
            self.end_headers()
            self.wfile.write(pattern_bytes(n // 2, "flaky"))
            self.wfile.flush()
            self.close_connection = True
            try:
                self.request.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    o = cache_origin(rig)
    flaky = [Origin(tls=(rig.pki.origin_crt, rig.pki.origin_key)) for _ in range(2)]
    for f in flaky:
        f.server.RequestHandlerClass = Flaky
    try:
        with rig.dduct(proxy={"filters": cluster_rig.FILTERS,
                              "parents": ["https://origin.test:%d" % f.port for f in flaky],
                              "parent_ca_file": rig.pki.ca_crt}) as e:
            n = 1 << 20
            r = curl(rig, via(e, "http") + ["--max-time", "30", o.url("origin.test", "/bytes/%d" % n)])
            check_eq(r.rc, 18, "the client's transfer is cut short, not left waiting (%s)" % r.stderr)
            # curl makes its output file at the first body byte: under load the fill can be
            # discarded before the client read any, and then there is no file at all.
            got = os.path.getsize(r.body_path) if os.path.exists(r.body_path) else 0
            check(got < n, "never the whole body")
            check_eq(sum(f.count("/bytes/%d" % n) for f in flaky), 2, "both parents were asked")
            check_eq(cluster_rig.entries_count(e.file_dir), 0, "nothing stored at the edge")
    finally:
        for f in flaky:
            f.close()


def test_resume_refuses_another_version(rig):
    """A parent dies mid-body of a version with an ETag; the next one answers the rest with a 200
    of another version (no ETag, same length). Its bytes are not spliced onto the first ones: the
    client's transfer is cut short and nothing is stored (it used to get a whole 200 made of two
    versions, and the edge stored it)."""
    import socket
    from dductlib.origin import Origin
    from cache_rig import CacheHandler

    class Splice(CacheHandler):
        def _ep_bytes(self, path, query, body):
            n = int(path.split("/")[2])
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(n))
            if self.headers.get("Range"):  # the rest, asked for: another version, whole
                self.end_headers()
                self.wfile.write(pattern_bytes(n, "v2"))
                return
            self.send_header("ETag", '"v1"')
            self.end_headers()
            self.wfile.write(pattern_bytes(n // 2, "v1"))
            self.wfile.flush()
            self.close_connection = True
            try:
                self.request.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    o = cache_origin(rig)
    fake = [Origin(tls=(rig.pki.origin_crt, rig.pki.origin_key)) for _ in range(2)]
    for f in fake:
        f.server.RequestHandlerClass = Splice
    try:
        with rig.dduct(proxy={"filters": cluster_rig.FILTERS,
                              "parents": ["https://origin.test:%d" % f.port for f in fake],
                              "parent_ca_file": rig.pki.ca_crt}) as e:
            n = 1 << 20
            r = curl(rig, via(e, "http") + ["--max-time", "30", o.url("origin.test", "/bytes/%d" % n)])
            check_eq(sum(f.count("/bytes/%d" % n) for f in fake), 2, "both parents were asked")
            check_eq(r.rc, 18, "the client's transfer is cut short (%s)" % r.stderr)
            check(os.path.getsize(r.body_path) < n, "never a whole body of two versions")
            check_eq(cluster_rig.entries_count(e.file_dir), 0, "nothing stored at the edge")
    finally:
        for f in fake:
            f.close()


def test_origin_5xx_relayed_not_a_parent_failure(rig):
    """The origin answers a cacheable path with 503: the parent relays it with Via: 1.1 dduct,
    the edge passes it to the client as it is, the origin is asked once (not again by the edge)
    and the parent is not marked down; the next file still goes through the parent."""
    o = cache_origin(rig)
    parents, edges = cluster_rig.start_cluster(rig, 1, 1)
    try:
        e = edges[0]
        r = curl(rig, via(e, "http") + [o.url("origin.test", "/status/503")])
        check_eq((r.rc, r.status), (0, 503), "the origin's 503 reaches the client")
        check_eq(o.count("/status/503"), 1, "the origin was asked once")
        r = curl(rig, via(e, "http") + [o.url("origin.test", "/bytes/4343")])
        check_eq((r.rc, r.status, r.sha256()), (0, 200, pattern_sha256(4343)), "the next file")
        logs = cluster_rig.stop_all(edges + parents)
        check("down for" not in logs[0], "the parent was not marked down", logs[0][-2000:])
        check("Miss \"https://origin.test:%d/bytes/4343\"" % o.port in logs[1],
              "the next file went through the parent", logs[1][-1500:])
    finally:
        cluster_rig.kill_all(edges + parents)


def test_url_refused_by_the_parent_is_not_a_parent_failure(rig):
    """A client of the edge asks for a cacheable URL naming the parent's own listener: the
    parent answers its own 508 (no Via). The edge asks the origin of that URL itself and marks
    nobody down, so the next ordinary miss still goes through the parent. It used to count any
    5xx but 502/504 as the parent's failure: one request per parent every parent_down_time kept
    the whole tier out (review-sec2 #2)."""
    o = cache_origin(rig)
    parents, edges = cluster_rig.start_cluster(rig, 1, 1)
    try:
        p, e = parents[0], edges[0]
        r = curl(rig, via(e, "http") + ["http://%s:%d/bytes/77" % (p.host, p.tcp_port)])
        check(r.rc == 0 and r.status != 200, "the URL naming the parent is not served",
              (r.rc, r.status, r.stderr))
        r = curl(rig, via(e, "http") + [o.url("origin.test", "/bytes/7070")])
        check_eq((r.rc, r.status, r.sha256()), (0, 200, pattern_sha256(7070)), "the next file")
        logs = cluster_rig.stop_all(edges + parents)
        check("down for" not in logs[0], "the parent was not marked down", logs[0][-2000:])
        check("answered 508" in logs[0] and "asking the origin" in logs[0],
              "the edge says why it asked the origin", logs[0][-2000:])
        check("Miss \"https://origin.test:%d/bytes/7070\"" % o.port in logs[1],
              "the next file went through the parent", logs[1][-1500:])
    finally:
        cluster_rig.kill_all(edges + parents)


def test_mesh_of_peers(rig):
    """Every node lists every node as a parent, itself included (one config for all, a tier of
    peers): 3 nodes pull the same 15 files at once from cold; each key is fetched from the
    origin once, by the node that owns it by hash (a node seeing itself in the list logs it
    once and never marks itself down), the others ask that node."""
    from dductlib.harness import free_port
    o = cache_origin(rig)
    files = _files(o, "mesh", 10, 5)
    hosts = ["127.0.0.%d" % (20 + i) for i in range(3)]
    ports = [free_port(h) for h in hosts]
    names = ["m%d.wild.test" % (i + 1) for i in range(3)]
    pins = ["%s:127.0.0.1" % n for n in cluster_rig.PIN_NAMES]
    pins += ["%s:%s" % (n, h) for n, h in zip(names, hosts)]
    peers = ["https://%s:%d" % (n, p) for n, p in zip(names, ports)]
    nodes = [rig.dduct(name="mesh%d" % (i + 1), host=h, tls_port=p,
                       proxy={"filters": cluster_rig.FILTERS, "resolve": pins, "parents": peers})
             for i, (h, p) in enumerate(zip(hosts, ports))]
    for d in nodes:
        d.proxy_overrides["parent_ca_file"] = nodes[0].ca_crt
    try:
        for d in nodes:
            d.start()
        _pull_all(rig, nodes, files, "mesh")
        for u, _ in files:
            path = u.split(str(o.port), 1)[1]
            check_eq(o.count(path), 1, "the origin saw %s once" % path)
        logs = cluster_rig.stop_all(nodes)
        for k, log in enumerate(logs):
            check("down for" not in log, "node %d marked no peer down" % (k + 1), log[-2000:])
            check(log.count("is this dduct") <= 1, "node %d says it is its own peer once" % k)
        check(sum("is this dduct" in log for log in logs) >= 1, "a node fetched its own keys")
    finally:
        cluster_rig.kill_all(nodes)


def test_tier_behind_squid(rig):
    """The corporate layout: the parent reaches origins only through squid (upstream_proxy),
    the edge only through its parent, falling back to squid itself: a blob pulled through the
    edge crosses squid once (CONNECT from the parent); with the parent gone, the next miss goes
    from the edge through squid (never around it), and the edge marks the parent down."""
    import squid_rig
    from dductlib.certs import ORIGIN_NAMES
    if not squid_rig.available():
        return
    o = cache_origin(rig)
    with squid_rig.Squid(ORIGIN_NAMES) as sq:
        parents, edges = cluster_rig.start_cluster(
            rig, 1, 1, parent_overrides={"upstream_proxy": sq.url},
            edge_overrides={"upstream_proxy": sq.url})  # parents are never reached through it
        try:
            e = edges[0]
            n = 777777
            r = curl(rig, via(e, "http") + [o.url("origin.test", "/bytes/%d" % n)])
            check_eq((r.rc, r.status, r.sha256()), (0, 200, pattern_sha256(n)), "via the tier")
            check("Miss \"https://origin.test" in parents[0].log(), "the parent fetched it")
            parents[0].stop()
            r = curl(rig, via(e, "http") + [o.url("origin.test", "/bytes/%d" % (n + 1))])
            check_eq((r.rc, r.status, r.sha256()), (0, 200, pattern_sha256(n + 1)),
                     "parent gone: through squid from the edge")
            elog = cluster_rig.stop_all(edges)[0]
            check("down for" in elog, "the edge marked the parent down", elog[-2000:])
            conns = sq.wait_access(lambda a: a[1] == "CONNECT" and a[2].startswith("origin.test:"),
                                   "CONNECTs to origin.test")
            check_eq(len(conns), 2, "squid carried both fetches (parent's, then edge's)")
            check_eq(o.count("/bytes/%d" % n) + o.count("/bytes/%d" % (n + 1)), 2,
                     "each file reached the origin once")
        finally:
            cluster_rig.kill_all(edges + parents)


if __name__ == "__main__":
    run([test_dduct_as_parent, test_plain_parent_never_for_https, test_uncacheable_never_via_parents, test_parent_refused_then_direct,
         test_lying_parent_is_caught_at_the_edge, test_resume_meets_relayed_5xx,
         test_resume_refuses_another_version,
         test_origin_5xx_relayed_not_a_parent_failure,
         test_url_refused_by_the_parent_is_not_a_parent_failure,
         test_tier_behind_squid, test_mesh_of_peers, test_cluster_cold_pull,
         test_parent_killed_mid_run])

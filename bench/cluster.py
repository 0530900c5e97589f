#!/usr/bin/env python3
"""WAN bytes and wall time for N edges (1, 2, 4, 8) pulling one image set, each edge straight to
the origin ("direct") vs through a tier of 2 parents ("tier"), printed as a table.

The "WAN" is the origin's uplink: a registry-like origin (the e2e rig's, TLS, on 127.0.0.1)
whose responses share one token bucket (--wan-mibps, default 40 MiB/s), so bytes the origin sends
cost time the way a site's internet link does. Parents and edges run on 127.0.0.x like the e2e
cluster (tests/e2e/cluster_rig.py); each edge has one curl pulling every blob of the image set
in parallel; all edges start at once, from cold caches. WAN bytes = body bytes the origin sent.

    meson setup build && ninja -C build
    flock /tmp/dduct-bench.lock python3 bench/cluster.py [--dduct build/cli/dduct]

Everything runs on this machine, so the tier's local fan-out competes with the edges for the
same cores: the ratios matter, not the absolute times."""
import argparse
import hashlib
import os
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "e2e"))

import cluster_rig  # noqa: E402
from cache_rig import CacheHandler, add_blob, cache_origin  # noqa: E402
from dductlib.harness import Rig, check  # noqa: E402


class Bucket:
    """One shared token bucket: the WAN link every origin response crosses."""

    def __init__(self, rate):
        self.rate = rate
        self.lock = threading.Lock()
        self.t = time.monotonic()
        self.sent = 0

    def take(self, n):
        with self.lock:
            now = time.monotonic()
            self.t = max(self.t, now) + n / self.rate
            wait = self.t - now
        if wait > 0:
            time.sleep(wait)
        with self.lock:
            self.sent += n


class WanHandler(CacheHandler):
    def _send_body(self, data, ctype="application/octet-stream", extra=()):
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        for k, v in extra:
            self.send_header(k, v)
        self.end_headers()
        if self.command == "HEAD":
            return
        for i in range(0, len(data), 65536):
            part = data[i:i + 65536]
            self.server.origin.wan.take(len(part))
            self.wfile.write(part)


def image_set(o, blobs, mib):
    urls = []
    for i in range(blobs):
        seed = hashlib.sha256(b"layer-%d" % i).digest()
        data = seed * (mib * 1048576 // 32)
        d = add_blob(o, data)
        urls.append((o.url("origin.test", "/v2/bench/app/blobs/%s" % d),
                     hashlib.sha256(data).hexdigest()))
    return urls


def one_run(rig, o, urls, nedges, tier, tag):
    o.wan.sent = 0
    with o._lock:
        o.hits.clear()
    parents, edges = cluster_rig.start_cluster(rig, 2 if tier else 0, nedges)
    try:
        t0 = time.monotonic()
        runs = [cluster_rig.pull(rig, e, [u for u, _ in urls],
                                 os.path.join(rig.tmp, "%s-%d" % (tag, k)), parallel=8)
                for k, e in enumerate(edges)]
        for proc, outs in runs:
            out, err = proc.communicate(timeout=1800)
            check(proc.returncode == 0, "curl failed", err.decode()[-500:])
        wall = time.monotonic() - t0
        for proc, outs in runs:
            for (u, sha), p in zip(urls, outs):
                with open(p, "rb") as f:
                    check(hashlib.sha256(f.read()).hexdigest() == sha, "body of " + u)
                os.unlink(p)
        return o.wan.sent, wall
    finally:
        cluster_rig.stop_all(edges + parents)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dduct", default=os.path.join(HERE, "..", "build", "cli", "dduct"))
    ap.add_argument("--edges", default="1,2,4,8")
    ap.add_argument("--blobs", type=int, default=8)
    ap.add_argument("--blob-mib", type=int, default=4)
    ap.add_argument("--wan-mibps", type=float, default=40.0)
    a = ap.parse_args()
    os.environ["DDUCT_BIN"] = os.path.abspath(a.dduct)
    rig = Rig()
    try:
        o = cache_origin(rig)
        o.server.RequestHandlerClass = WanHandler
        o.wan = Bucket(a.wan_mibps * 1048576)
        urls = image_set(o, a.blobs, a.blob_mib)
        total = a.blobs * a.blob_mib
        print("image set: %d blobs, %d MiB; WAN %.0f MiB/s; 2 parents in the tier; dduct %s"
              % (a.blobs, total, a.wan_mibps, a.dduct))
        print("%6s | %14s %9s | %14s %9s | %10s %9s" % ("edges", "direct WAN MiB", "wall s",
                                                       "tier WAN MiB", "wall s", "WAN ratio",
                                                       "speed-up"))
        print("-" * 86)
        for n in [int(x) for x in a.edges.split(",")]:
            dw, dt = one_run(rig, o, urls, n, False, "d%d" % n)
            tw, tt = one_run(rig, o, urls, n, True, "t%d" % n)
            print("%6d | %14.1f %9.2f | %14.1f %9.2f | %9.2fx %8.2fx"
                  % (n, dw / 1048576, dt, tw / 1048576, tt, dw / max(tw, 1), dt / tt))
            sys.stdout.flush()
    finally:
        rig.close()


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""verify-hits: the CPU cost of checking a hit against its digest ([cache] verify_hits, 'first').

A 256 MiB file is stored once (plain-http origin, so no TLS in the figures), then for each round
dduct is restarted on the same file_dir and the file fetched twice: the first hit after the start
hashes the body as it goes out (verify_hits = 'first'), the second does not. dduct's CPU time
(utime + stime from /proc) is read around each download; the difference is the verification.
A/B in one run, so a busy machine shifts both alike (still, hold the bench lock).

Run: DDUCT_BIN=build/cli/dduct flock /tmp/dduct-bench.lock python3 bench/verify-hits.py [rounds]
Prints one JSON object: CPU seconds per GiB for verified and plain hits, and their difference.
"""
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "e2e"))
from dductlib.harness import Rig  # noqa: E402

SIZE = 256 << 20


def fetch(rig, d, url):
    subprocess.run(["curl", "-q", "-sS", "-o", "/dev/null", "-x", d.http_proxy, url],
                   check=True, env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")})


def main():
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    rig = Rig()
    try:
        url = rig.plain.url("origin.test", "/bytes/%d" % SIZE)
        proxy = {"filters": ["^/bytes/"]}
        with rig.dduct(proxy=proxy, misc={"log_level": "info"}) as d:
            fetch(rig, d, url)
            file_dir = d.file_dir
        first, again = [], []
        for _ in range(rounds):
            with rig.dduct(proxy=proxy, misc={"log_level": "info",
                                              "file_dir": file_dir + "/"}) as d:
                for out in (first, again):
                    t0 = d.cpu_seconds()
                    fetch(rig, d, url)
                    out.append(d.cpu_seconds() - t0)
        gib = SIZE / float(1 << 30)
        f, a = min(first) / gib, min(again) / gib
        print(json.dumps({"size_mib": SIZE >> 20, "rounds": rounds,
                          "first_hit_cpu_s_per_gib": round(f, 3),
                          "later_hit_cpu_s_per_gib": round(a, 3),
                          "verification_cpu_s_per_gib": round(f - a, 3),
                          "first": [round(x, 3) for x in first],
                          "again": [round(x, 3) for x in again]}))
    finally:
        rig.close()


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""What durable commits ([cache] fsync = true) cost: a small (4 KiB) and a large (256 MiB) miss
through two dduct processes, fsync on and off, interleaved (A/B in one run, ratios over
absolutes on a busy machine). Prints the median fill time (origin's first byte to the commit,
from dduct's "Fill completed ... in X s" line, fsyncs included) and the median client time
(curl's time_total: the client no longer waits for the commit).

    bench/fsync-cost.py [--dduct build/cli/dduct] [--runs 7] [--large-mib 256]

Hold /tmp/dduct-bench.lock while it runs (flock)."""
import argparse
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def start_dduct(dduct, root, name, fsync):
    d = os.path.join(root, name)
    os.makedirs(d)
    port = free_port()
    cfg = os.path.join(d, "dduct.toml")
    with open(cfg, "w") as f:
        f.write("[misc]\nlog_level = 'info'\ncert_dir = '%s/certs/'\nfile_dir = '%s/files/'\n"
                "[proxy]\ntcp_bind = '127.0.0.1:%d'\ntls_bind = ''\nfilters = ['^/f/']\n"
                "[cache]\nfsync = %s\n[certs]\nrsa_key_bits = 2048\n"
                % (d, d, port, "true" if fsync else "false"))
    log = open(os.path.join(d, "log"), "w+")
    p = subprocess.Popen([dduct, "--cfg", cfg], stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while "Listening on" not in open(log.name).read():
        if time.monotonic() > deadline or p.poll() is not None:
            sys.exit("dduct did not start: " + open(log.name).read()[-2000:])
        time.sleep(0.05)
    return p, port, log.name


def fill_times(logpath):
    return [float(m) for m in re.findall(r"Fill completed .* in ([0-9.]+) s", open(logpath).read())]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dduct", default=os.path.join(HERE, "..", "build", "cli", "dduct"))
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--large-mib", type=int, default=256)
    ap.add_argument("--dir", default="/var/tmp")
    a = ap.parse_args()
    root = tempfile.mkdtemp(prefix="dduct-fsync-", dir=a.dir)
    try:
        www = os.path.join(root, "www", "f")
        os.makedirs(www)
        sizes = {"small": 4096, "large": a.large_mib << 20}
        for kind, n in sizes.items():
            for r in range(a.runs):
                with open(os.path.join(www, "%s-%d" % (kind, r)), "wb") as f:
                    f.write(os.urandom(min(n, 1 << 20)) * max(1, n >> 20) if n >= 1 << 20
                            else os.urandom(n))
        oport = free_port()
        origin = subprocess.Popen([sys.executable, "-m", "http.server", "--bind", "127.0.0.1",
                                   "--directory", os.path.join(root, "www"), str(oport)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1)
        procs = {}
        for name, fs in (("on", True), ("off", False)):
            procs[name] = start_dduct(a.dduct, root, name, fs)
        client = {("on", k): [] for k in sizes}
        client.update({("off", k): [] for k in sizes})
        for kind in sizes:
            for r in range(a.runs):
                for name in ("on", "off") if r % 2 == 0 else ("off", "on"):
                    _, port, _ = procs[name]
                    out = subprocess.run(
                        ["curl", "-s", "-o", "/dev/null", "-w", "%{time_total}", "-x",
                         "http://127.0.0.1:%d" % port,
                         "http://127.0.0.1:%d/f/%s-%d" % (oport, kind, r)],
                        capture_output=True, text=True).stdout
                    client[(name, kind)].append(float(out))
                    time.sleep(0.3 if kind == "small" else 1.0)  # the commit
        time.sleep(2)
        print("%-6s %-6s %14s %16s" % ("miss", "fsync", "fill_median_s", "client_median_s"))
        for kind in sizes:
            for name in ("on", "off"):
                ft = fill_times(procs[name][2])
                ft = ft[:a.runs] if kind == "small" else ft[a.runs:]
                print("%-6s %-6s %14.4f %16.4f" % (kind, name, statistics.median(ft),
                                                   statistics.median(client[(name, kind)])))
        for p, _, _ in procs.values():
            p.terminate()
            p.wait()
        origin.terminate()
        origin.wait()
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Start-up of dduct over a large file_dir: how long until it listens, and until its index of
complete entries has loaded in the background.

    bench/startup-index.py [--entries 1000000] [--dir /var/tmp/dduct-startup] [--dduct PATH]

Generates DIR/files once (N entries spread over the u/ shards like real ones: a data file and
its sidecar each, empty, so a million entries cost inodes, not gigabytes; the index load reads
names and stats data files, it never opens sidecars), then runs dduct on it three times (the
first with a cold dentry cache if run as root: it drops the caches) and prints, for each run,
the seconds from exec to both "Listening on" lines and to "Index loaded". Hold
/tmp/dduct-bench.lock while it runs (flock)."""
import argparse
import hashlib
import os
import re
import socket
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def generate(files, n):
    marker = os.path.join(files, ".generated-%d" % n)
    if os.path.exists(marker):
        return
    t0 = time.monotonic()
    for sh in range(256):
        os.makedirs(os.path.join(files, "u", "%02x" % sh), exist_ok=True)
    for i in range(n):
        h = hashlib.sha256(b"entry-%d" % i).hexdigest()
        d = os.path.join(files, "u", h[:2])
        for name in (h, h + ".json"):
            fd = os.open(os.path.join(d, name), os.O_WRONLY | os.O_CREAT, 0o600)
            os.close(fd)
        if i % 100000 == 0 and i:
            print("# %d entries in %.0f s" % (i, time.monotonic() - t0), flush=True)
    open(marker, "w").close()
    print("# generated %d entries in %.0f s" % (n, time.monotonic() - t0), flush=True)


def run_once(dduct, root, files, cold):
    certs = os.path.join(root, "certs")
    cfg = os.path.join(root, "dduct.toml")
    with open(cfg, "w") as f:
        f.write("[misc]\nlog_level = 'info'\ncert_dir = '%s/'\nfile_dir = '%s/'\n"
                "[proxy]\ntcp_bind = '127.0.0.1:%d'\ntls_bind = '127.0.0.1:%d'\n"
                "[certs]\nrsa_key_bits = 2048\n" % (certs, files, free_port(), free_port()))
    if cold and os.geteuid() == 0:
        subprocess.run(["sync"])
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("2\n")
    t0 = time.monotonic()
    p = subprocess.Popen([dduct, "--cfg", cfg], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         text=True)
    listening = loaded = None
    lines = []
    for line in p.stdout:
        lines.append(line)
        now = time.monotonic() - t0
        if "Listening on" in line and len([x for x in lines if "Listening on" in x]) == 2:
            listening = now
        m = re.search(r"Index loaded: (\d+) entries", line)
        if m:
            loaded = now
            count = int(m.group(1))
            break
    p.terminate()
    p.wait()
    return listening, loaded, count


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--entries", type=int, default=1000000)
    ap.add_argument("--dir", default="/var/tmp/dduct-startup")
    ap.add_argument("--dduct", default=os.path.join(HERE, "..", "build", "cli", "dduct"))
    ap.add_argument("--runs", type=int, default=3)
    a = ap.parse_args()
    files = os.path.join(a.dir, "files")
    os.makedirs(files, exist_ok=True)
    generate(files, a.entries)
    print("run  cold  listening_s  index_loaded_s  entries")
    for r in range(a.runs):
        listening, loaded, count = run_once(a.dduct, a.dir, files, cold=(r == 0))
        print("%3d  %4s  %11.3f  %14.3f  %d" % (r + 1, "yes" if r == 0 and os.geteuid() == 0
                                                 else "no", listening, loaded, count))


if __name__ == "__main__":
    sys.exit(main())

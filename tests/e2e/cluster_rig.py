"""A dduct cluster on one machine: parents on 127.0.0.2, 127.0.0.3, ... (TLS listeners named
pN.wild.test, so each parent presents a leaf its CA mints for that name) and edges on
127.0.0.10, 127.0.0.11, ... whose `parents` list them; one origin on 127.0.0.1. Every dduct shares
the rig's cached CA, so any dduct's ca.crt verifies a parent. Also used by bench/cluster.py."""
import os
import subprocess
import time

from dductlib.harness import PIN_NAMES, check, dduct_bin  # noqa: F401

FILTERS = ["^/v2/.*/blobs/sha256:\\w+$", "^/bytes/", "^/gate/", "^/status/"]


def parent_name(i):
    return "p%d.wild.test" % (i + 1)


def start_cluster(rig, nparents, nedges, parent_overrides=None, edge_overrides=None):
    """Start nparents parents and nedges edges (context managers entered); returns (parents,
    edges). The caller stops them (stop_all)."""
    parents, edges = [], []
    for i in range(nparents):
        proxy = {"filters": FILTERS}
        proxy.update(parent_overrides or {})
        d = rig.dduct(name="parent%d" % (i + 1), host="127.0.0.%d" % (2 + i), proxy=proxy)
        parents.append(d.start())
    pins = ["%s:127.0.0.1" % n for n in PIN_NAMES]
    pins += ["%s:%s" % (parent_name(i), p.host) for i, p in enumerate(parents)]
    for i in range(nedges):
        proxy = {"filters": FILTERS, "resolve": pins,
                 "parents": ["https://%s:%d" % (parent_name(k), p.tls_port)
                             for k, p in enumerate(parents)],
                 "parent_ca_file": parents[0].ca_crt if parents else None}
        proxy.update(edge_overrides or {})
        d = rig.dduct(name="edge%d" % (i + 1), host="127.0.0.%d" % (10 + i), proxy=proxy)
        edges.append(d.start())
    return parents, edges


def stop_all(nodes):
    logs = []
    for d in nodes:
        if not d.stopped:
            logs.append(d.stop())
    return logs


def kill_all(nodes):
    for d in nodes:
        d.kill()


def pull(rig, edge, urls, outdir, parallel=16, extra=()):
    """One curl process pulling urls through edge in parallel (intercepted: the edge's CA);
    returns the Popen (wait on it) and the output paths, in url order."""
    os.makedirs(outdir, exist_ok=True)
    argv = ["curl", "-q", "-sS", "--parallel", "--parallel-max", str(parallel),
            "-x", edge.http_proxy, "--cacert", edge.ca_crt, "-w", "%{http_code} %{url}\n"]
    argv += list(extra)
    outs = []
    for i, u in enumerate(urls):
        p = os.path.join(outdir, "f%03d" % i)
        outs.append(p)
        argv += ["-o", p, u]
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": rig.home, "LC_ALL": "C"}
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    return proc, outs


def entries_count(file_dir):
    """Complete cache entries (data file + sidecar) under file_dir."""
    n = 0
    for root, _dirs, files in os.walk(file_dir):
        fs = set(files)
        n += sum(1 for f in fs if f + ".json" in fs)
    return n


def wait_entries(file_dirs, want, timeout=60):
    """Counts of complete entries once their sum is want (a fill's last reader ends before its
    commit is on disk), or as they are when timeout passes."""
    deadline = time.monotonic() + timeout
    while True:
        counts = [entries_count(d) for d in file_dirs]
        if sum(counts) >= want or time.monotonic() > deadline:
            return counts
        time.sleep(0.1)

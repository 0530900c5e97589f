#!/usr/bin/env python3
"""[proxy] workers = 2 with the real dduct binary: connections are spread over both event loops
(/stats counts them per loop), /metrics sums the loops exactly, a session ticket from one loop resumes on the other, twenty
clients asking one uncached
file through intercepted HTTPS make one origin fetch whichever loop they land on, SIGTERM with
transfers in flight on both loops lets them finish and exits 0, and a bad `workers` value is a
config error naming FILE:LINE:COL."""
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cache_rig import cache_origin, origin_gets  # noqa: E402
from dductlib import client  # noqa: E402
from dductlib.harness import (check, check_eq, certs_section, clean_env, curl, dduct_bin,  # noqa: E402
                              run, toml, via)
from dductlib.origin import pattern_bytes, pattern_sha256  # noqa: E402
from test_admin_metrics import admin_get, delta, scrape, settled  # noqa: E402
from test_tls_resume import s_client  # noqa: E402

MIB = 1048576


def stats(d):
    st, _, body = admin_get(d, "/stats")
    check_eq(st, 200, "/stats status")
    return json.loads(body)


def wait_for(cond, what, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.05)
    check(False, "timed out waiting for " + what)


def get(d, o, path):
    """One request on a new connection through the plain listener: (status, body)."""
    s = client.Tcp("127.0.0.1", d.tcp_port)
    host = "origin.test:%d" % o.port
    s.sendall(client.request_bytes("GET", "http://%s%s" % (host, path), host,
                                   headers=[("Connection", "close")]))
    rd = client.Reader(s)
    r = rd.read_response("GET")
    s.close()
    return r.status, r.body


def test_connections_spread_and_counted(rig):
    """60 connections, each a new TCP connection with one request, through a dduct with two
    loops: every answer is right, both loops accepted some (the /stats per-loop figures), the
    loops' figures add up to what was done, and /metrics counts exactly 60 forwarded 200s."""
    o = rig.plain
    n = 60
    with rig.dduct(admin=True, proxy={"workers": 2}) as d:
        before = scrape(d)
        for i in range(n):
            st, body = get(d, o, "/bytes/%d?seed=%d" % (1000 + i, i))
            check_eq((st, body), (200, pattern_bytes(1000 + i, str(i))), "answer %d" % i)
        s = stats(d)
        loops = s["loops"]
        check_eq(len(loops), 2, "two loops in /stats")
        accepted = [lp["connections_accepted"] for lp in loops]
        check(all(a > 0 for a in accepted), "both loops accepted connections", loops)
        # The admin listener's requests count too: the /metrics scrape and this /stats.
        check_eq(sum(lp["requests"] for lp in loops), n + 2, "the loops' requests add up")
        after = scrape(d)
        got = delta(before, after)
        check_eq(got.get(("dduct_requests_total", "code=200", "route=forward")), n,
                 "forwarded 200s in /metrics, summed over the loops")
        key = ("dduct_connections_accepted_total", ())
        check_eq(after[key] - before[key], n + 2, "accepted connections in /metrics (the 60, "
                 "the /stats and this scrape)")
        check_eq(s["summary"]["requests"], n + 1, "/stats summary (and the scrape)")


def test_twenty_clients_one_fill(rig):
    """20 concurrent curl clients fetch one uncached file through intercepted HTTPS on a dduct
    with two loops; the origin holds the body at half until all 20 asked. The origin sees exactly
    one GET, every client gets the exact bytes, and both loops served some of the clients."""
    o = cache_origin(rig)
    g = 2 * MIB
    path = "/gate/%d" % g
    url = o.url("origin.test", path)
    want = hashlib.sha256(pattern_bytes(g, "gate")).hexdigest()
    o.gate.clear()
    o.half_sent.clear()
    with rig.dduct(admin=True, proxy={"workers": 2, "filters": ["^/gate/"]}) as d:
        out = [None] * 20

        def bg(i):
            out[i] = curl(rig, via(d, "https") + [url])
        threads = [threading.Thread(target=bg, args=(i,)) for i in range(20)]
        for t in threads:
            t.start()
        wait_for(lambda: d.log().count("(while filling)") + d.log().count("Miss ") >= 20,
                 "all 20 clients to reach the cache")
        o.gate.set()
        for t in threads:
            t.join(120)
        for i, r in enumerate(out):
            check_eq((r.rc, r.status, r.sha256()), (0, 200, want), "client %d" % i)
        check_eq(len(origin_gets(o, path)), 1, "one origin fetch for 20 clients")
        settled(d)
        loops = stats(d)["loops"]
        check(all(lp["connections_accepted"] > 0 for lp in loops), "both loops served", loops)
    o.gate.clear()


def test_sigterm_with_transfers_on_both_loops(rig):
    """Eight 16 MiB downloads started (and not read further) on a dduct with two loops, both
    loops holding some: after SIGTERM every download completes byte-exact within the grace, and
    dduct exits 0 with no sanitizer report."""
    n = 16 * MIB
    o = rig.plain
    with rig.dduct(admin=True, proxy={"workers": 2, "shutdown_grace": 30}) as d:
        socks = []
        for attempt in range(40):  # until both loops hold a download (the kernel picks)
            s = client.Tcp("127.0.0.1", d.tcp_port, timeout=60)
            host = "origin.test:%d" % o.port
            s.sendall(client.request_bytes("GET", "http://%s/bytes/%d" % (host, n), host))
            rd = client.Reader(s)
            check_eq(rd.read_head()[0], 200, "download %d started" % attempt)
            socks.append((s, rd, hashlib.sha256(rd.buf), len(rd.buf)))
            active = [lp["connections_active"] for lp in stats(d)["loops"]]
            if len(socks) >= 8 and all(a > 0 for a in active):
                break
        check(all(a > 0 for a in active), "both loops hold downloads", active)
        d.send_signal(signal.SIGTERM)
        done = []
        for s, rd, h, got in socks:
            while got < n:
                c = s.recv(65536)
                check(c, "EOF after %d of %d bytes during the grace period" % (got, n))
                h.update(c)
                got += len(c)
            s.close()
            done.append(h.hexdigest())
        check_eq(done, [pattern_sha256(n)] * len(socks), "every download completed")
        d.stop()


def test_ticket_resumes_on_either_loop(rig):
    """A session ticket handed out by one loop resumes on the other: after one full handshake,
    twelve or more returning connections (spread by the kernel over both loops, until both have
    served) all resume."""
    o = rig.origin
    sess = os.path.join(rig.tmp, "workers-sess.pem")
    with rig.dduct(admin=True, proxy={"workers": 2}) as d:
        out = s_client(rig, d, "origin.test", o.port, sess_out=sess)
        check("New, TLSv1.2" in out, "first connection: a full handshake", out[-1500:])
        # The kernel picks a loop per connection by a hash of its addresses: twelve in a row can
        # (rarely) all land on one loop, so go on, each one resuming, until both have served.
        for i in range(64):
            out = s_client(rig, d, "origin.test", o.port, sess_in=sess)
            check("Reused, TLSv1.2" in out, "connection %d resumes" % i, out[-1500:])
            loops = stats(d)["loops"]
            if i >= 11 and all(lp["connections_accepted"] > 0 for lp in loops):
                break
        check(all(lp["connections_accepted"] > 0 for lp in loops), "both loops served", loops)


def ask(d, o, path, timeout=30, keep=False):
    """GET on a new connection through the plain listener, the socket's timeout bounding every
    wait: (status, body, the client transport, left open when keep)."""
    s = client.Tcp("127.0.0.1", d.tcp_port, timeout=timeout)
    host = "origin.test:%d" % o.port
    s.sendall(client.request_bytes("GET", "http://%s%s" % (host, path), host,
                                   headers=[] if keep else [("Connection", "close")]))
    r = client.Reader(s).read_response("GET")
    if not keep:
        s.close()
    return r.status, r.body, s


def test_max_connections_counts_the_process(rig):
    """max_connections is the whole process's limit, not a share per loop: with two loops and
    max_connections = 2, one idle keep-alive connection leaves a slot for every new client
    whichever loop the kernel hands it to (with the limit split, a client sent to the idle
    connection's loop waited in the backlog until that connection closed); with both slots
    held, a new client waits, and is served once one of them closes, whichever loop frees it."""
    o = rig.plain
    want = (200, pattern_bytes(100))
    with rig.dduct(proxy={"workers": 2, "max_connections": 2, "head_timeout": 120}) as d:
        st, body, a = ask(d, o, "/bytes/100", keep=True)
        check_eq((st, body), want, "the first client, kept alive")
        for i in range(10):
            try:
                st, body, _ = ask(d, o, "/bytes/100", timeout=10)
            except OSError as e:
                check(False, "new client %d served beside the idle one" % i, repr(e))
            check_eq((st, body), want, "new client %d" % i)
        st, body, b = ask(d, o, "/bytes/100", keep=True)
        check_eq((st, body), want, "a second client, kept alive: the limit is reached")
        for i in range(4):  # some of them land on each loop
            third = client.Tcp("127.0.0.1", d.tcp_port, timeout=1)
            host = "origin.test:%d" % o.port
            third.sendall(client.request_bytes("GET", "http://%s/bytes/100" % host, host,
                                               headers=[("Connection", "close")]))
            try:
                got = third.recv(1)
            except socket.timeout:
                got = None
            check(got is None, "client %d waits while both slots are held" % i, got)
            (a if i % 2 == 0 else b).close()
            third.sock.settimeout(30)
            r = client.Reader(third).read_response("GET")
            check_eq((r.status, r.body), want, "client %d is served once a slot frees" % i)
            third.close()
            # the client just served frees its slot when it closes; hold two again
            if i % 2 == 0:
                st, body, a = ask(d, o, "/bytes/100", keep=True)
            else:
                st, body, b = ask(d, o, "/bytes/100", keep=True)
            check_eq((st, body), want, "a slot held again")
        a.close()
        b.close()


def test_address_in_use_as_with_one_loop(rig):
    """A second dduct (same user) on the address a running two-loop dduct listens on fails with
    'address already in use' and exits 1, as with one loop, instead of joining the first one's
    SO_REUSEPORT group and taking half of its connections; the first one still serves."""
    o = rig.plain
    with rig.dduct(proxy={"workers": 2}) as d:
        base = os.path.join(rig.tmp, "second")
        os.makedirs(base)
        rig.install_cert_dir(os.path.join(base, "certs"))
        cfg = os.path.join(base, "dduct.toml")
        with open(cfg, "w") as f:
            f.write(toml({"misc": {"cert_dir": base + "/certs/", "file_dir": base + "/files/"},
                          "proxy": {"tcp_bind": "127.0.0.1:%d" % d.tcp_port, "tls_bind": "",
                                    "admin_bind": "", "workers": 2},
                          "certs": certs_section()}))
        p = subprocess.run([dduct_bin(), "--cfg", cfg], capture_output=True, text=True,
                           timeout=60, env=clean_env(base))
        check_eq(p.returncode, 1, "exit status of the second dduct")
        check("Listening on 127.0.0.1:%d: listen 127.0.0.1:%d: address already in use"
              % (d.tcp_port, d.tcp_port) in p.stderr, "the reason", p.stderr[-1500:])
        for i in range(8):
            check_eq(get(d, o, "/bytes/100"), (200, pattern_bytes(100)), "the first still serves")


def test_start_logged_once(rig):
    """Three loops log their start as one does: one "Listening on" per address, and a warning
    about the configuration (upstream_insecure) once, not once per loop."""
    with rig.dduct(proxy={"workers": 3, "upstream_insecure": True}) as d:
        check_eq(get(d, rig.plain, "/bytes/10"), (200, pattern_bytes(10)), "serves")
        log = d.stop()
    check_eq(log.count("] Listening on "), 2, "one line per listener")
    check_eq(log.count("upstream_insecure is set"), 1, "the warning once")


def test_bad_workers_value(rig):
    """workers = 0 and workers = 'two' are refused by --check with FILE:LINE:COL and exit 2."""
    path = os.path.join(rig.tmp, "workers.toml")
    for value, msg in (("0", "workers: 0 is out of range (1..256)"),
                       ("300", "workers: 300 is out of range (1..256)"),
                       ("'two'", "workers")):
        with open(path, "w") as f:
            f.write("[proxy]\nworkers = %s\n" % value)
        p = subprocess.run([dduct_bin(), "--cfg", path, "--check"], capture_output=True,
                           text=True, timeout=60)
        check_eq(p.returncode, 2, "exit status for workers = %s" % value)
        check(p.stderr.startswith(path + ":2:11: ") and msg in p.stderr,
              "FILE:LINE:COL names the value", p.stderr)
    with open(path, "w") as f:
        f.write("[proxy]\nworkers = 3\n")
    p = subprocess.run([dduct_bin(), "--cfg", path, "--check"], capture_output=True, text=True,
                       timeout=60)
    check_eq(p.returncode, 0, "workers = 3 passes --check")
    check("\nworkers " in p.stdout and "= 3\n" in p.stdout, "--check prints it", p.stdout)


if __name__ == "__main__":
    run([test_connections_spread_and_counted, test_twenty_clients_one_fill,
         test_sigterm_with_transfers_on_both_loops, test_ticket_resumes_on_either_loop,
         test_max_connections_counts_the_process,
         test_address_in_use_as_with_one_loop, test_start_logged_once, test_bad_workers_value])

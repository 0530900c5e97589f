"""The admin listener with the real dduct binary, real curl clients and origins on 127.0.0.1:
/metrics counters move by exactly what happened (a miss, a hit, a collapsed request, a tunnel, an
error), promtool accepts the exposition, /stats agrees with /metrics, /healthz turns 503 on a
read-only file_dir, /ca.crt is cert_dir/ca.crt on the admin and the proxy listener, and the
access log has one JSON line per request with its cache status and survives a SIGHUP rotation."""
import http.client
import json
import os
import re
import signal
import subprocess
import sys
import threading

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cache_rig import cache_origin  # noqa: E402
from dductlib.harness import check, check_eq, curl, free_port, run, via, wait_for  # noqa: E402
from dductlib.origin import pattern_sha256  # noqa: E402

SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$')
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def admin_get(d, path, conn=None):
    """(status, headers, body) of GET path on d's admin listener (conn: keep-alive reuse)."""
    c = conn or http.client.HTTPConnection("127.0.0.1", d.admin_port, timeout=30)
    c.request("GET", path)
    r = c.getresponse()
    body = r.read()
    if conn is None:
        c.close()
    return r.status, {k.lower(): v for k, v in r.getheaders()}, body


def parse_prom(text):
    """{(name, ((label, value), ...)): float} of a Prometheus text exposition."""
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = SAMPLE.match(line)
        check(m is not None, "a well-formed sample line", line)
        labels = tuple(sorted(LABEL.findall(m.group(2) or "")))
        out[(m.group(1), labels)] = float(m.group(3))
    return out


def scrape(d, conn=None):
    st, h, body = admin_get(d, "/metrics", conn)
    check_eq(st, 200, "/metrics status")
    check(h["content-type"].startswith("text/plain; version=0.0.4"), "exposition content type",
          h["content-type"])
    return parse_prom(body.decode())


def delta(before, after):
    """Non-zero changes between two scrapes, leaving out what a scrape itself moves."""
    out = {}
    for k in set(before) | set(after):
        name, labels = k
        if name.startswith("process_") or name.startswith("dduct_request_duration_seconds"):
            continue
        if name in ("dduct_connections_accepted_total", "dduct_connections_active",
                    "dduct_cache_size_bytes"):  # checked on its own (the store's index)
            continue
        if name == "dduct_requests_total" and ("route", "local") in labels:
            continue
        if name.startswith("dduct_upstream_connect_seconds") or name in (
                "dduct_upstream_connections_total", "dduct_upstream_reuses_total",
                "dduct_tunnel_bytes_total"):
            continue
        v = after.get(k, 0) - before.get(k, 0)
        if v:
            out[(name,) + tuple("%s=%s" % lv for lv in labels)] = v
    return out


def settled(d):
    """Wait until no fill runs and every fill that ended is committed or counted as failed (the
    commit, fsyncs included, follows the last byte), so its completion is counted before the
    next scrape."""
    def done():
        m = scrape(d)
        failed = sum(v for (name, _), v in m.items() if name == "dduct_cache_fill_failures_total")
        return (m.get(("dduct_cache_fills_in_flight", ()), 0) == 0 and
                m.get(("dduct_cache_fills_total", ()), 0) <=
                m.get(("dduct_cache_fills_completed_total", ()), 0) + failed)
    wait_for(done, "fills to end and commit")


def test_counters_move_exactly(rig):
    """Each of a miss, a hit, a collapsed request, a blind tunnel and an upstream error moves the
    counters by exactly what it was: requests by route and code, hits/misses/collapsed, served
    bytes by source, fills, upstream responses by code, and nothing else."""
    o = cache_origin(rig)
    n = 300000
    url = rig.plain.url("origin.test", "/bytes/%d" % n)
    with rig.dduct(admin=True, proxy={"filters": ["^/bytes/", "^/gate/"]}) as d:
        before = scrape(d)
        r = curl(rig, via(d, "http") + [url])
        check_eq((r.rc, r.status, r.sha256()), (0, 200, pattern_sha256(n)), "the miss")
        settled(d)
        after = scrape(d)
        check_eq(delta(before, after), {
            ("dduct_requests_total", "code=200", "route=cache"): 1,
            ("dduct_cache_misses_total",): 1,
            ("dduct_cache_requests_total", "status=MISS"): 1,
            ("dduct_cache_served_bytes_total", "source=origin"): n,
            ("dduct_cache_fills_total",): 1,
            ("dduct_cache_fills_completed_total",): 1,
            ("dduct_cache_entries",): 1,
            ("dduct_upstream_requests_total", "code=200"): 1,
        }, "a miss")
        size = after[("dduct_cache_size_bytes", ())] - before[("dduct_cache_size_bytes", ())]
        check_eq(size, n, "the cache grew by the entry's size")

        before = after
        r = curl(rig, via(d, "http") + [url])
        check_eq((r.rc, r.status), (0, 200), "the hit")
        after = scrape(d)
        check_eq(delta(before, after), {
            ("dduct_requests_total", "code=200", "route=cache"): 1,
            ("dduct_cache_hits_total",): 1,
            ("dduct_cache_requests_total", "status=HIT"): 1,
            ("dduct_cache_served_bytes_total", "source=cache"): n,
        }, "a hit")

        # Collapsed: a second client joins a fill the origin holds at half.
        before = after
        g = 1 << 20
        gurl = o.url("origin.test", "/gate/%d" % g)
        o.gate.clear()
        o.half_sent.clear()
        out = {}

        def bg(name):
            out[name] = curl(rig, via(d, "http") + [gurl])
        a = threading.Thread(target=bg, args=("a",))
        a.start()
        check(o.half_sent.wait(60), "origin sent the first half")
        b = threading.Thread(target=bg, args=("b",))
        b.start()
        wait_for(lambda: "(while filling)" in d.log(), "the second client to join")
        mid = scrape(d)
        check_eq(mid[("dduct_cache_fills_in_flight", ())], 1, "one fill in flight")
        o.gate.set()
        a.join(60)
        b.join(60)
        check_eq((out["a"].status, out["b"].status), (200, 200), "both collapsed clients")
        settled(d)
        after = scrape(d)
        check_eq(delta(before, after), {
            ("dduct_requests_total", "code=200", "route=cache"): 2,
            ("dduct_cache_misses_total",): 1,
            ("dduct_cache_collapsed_total",): 1,
            ("dduct_cache_requests_total", "status=MISS"): 1,
            ("dduct_cache_requests_total", "status=COLLAPSED"): 1,
            ("dduct_cache_served_bytes_total", "source=origin"): g,
            ("dduct_cache_served_bytes_total", "source=cache"): g,
            ("dduct_cache_fills_total",): 1,
            ("dduct_cache_fills_completed_total",): 1,
            ("dduct_cache_entries",): 1,
            ("dduct_upstream_requests_total", "code=200"): 1,
            ("dduct_tls_handshakes_total", "result=ok", "side=client"): 1,
            # The https origin is reached through intercepted CONNECTs: dduct's TLS, twice.
            ("dduct_requests_total", "code=200", "route=intercept"): 2,
            ("dduct_tls_handshakes_total", "result=ok", "side=server"): 2,
        }, "a collapsed request")

        # A blind tunnel (blind.example is outside the CA's names).
        before = after
        r = curl(rig, via(d, "http") + ["--cacert", rig.pki.ca_crt,
                                        rig.origin.url("blind.example", "/bytes/1000")])
        check_eq((r.rc, r.status), (0, 200), "through the tunnel")
        wait_for(lambda: scrape(d).get(("dduct_cache_requests_total", (("status", "TUNNEL"),)))
                 == before[("dduct_cache_requests_total", (("status", "TUNNEL"),))] + 1,
                 "the tunnel to be booked at its close")
        after = scrape(d)
        check_eq(delta(before, after), {
            ("dduct_requests_total", "code=200", "route=tunnel"): 1,
            ("dduct_cache_requests_total", "status=TUNNEL"): 1,
        }, "a tunnel")
        check(after[("dduct_tunnel_bytes_total", ())] > 1000, "tunnel bytes counted")

        # An error: the origin refuses the connection.
        before = after
        r = curl(rig, ["-x", d.http_proxy, "http://refused.test:1/x"])
        check_eq(r.status, 502, "refused origin")
        after = scrape(d)
        check_eq(delta(before, after), {
            ("dduct_requests_total", "code=502", "route=forward"): 1,
            ("dduct_cache_requests_total", "status=BYPASS"): 1,
        }, "an error")
        st, _, body = admin_get(d, "/stats")
        errs = json.loads(body)["errors"]
        check(errs and errs[0]["status"] == 502 and "refused.test" in errs[0]["text"],
              "the error is first in /stats' recent errors", errs[:2])


def test_fill_failure_counted(rig):
    """A fill whose origin closes halfway through the body is counted once as a fill failure
    with reason "short", stores nothing, and is listed in /stats' recent errors."""
    with rig.dduct(admin=True, proxy={"filters": ["^/closemid/"]}) as d:
        before = scrape(d)
        r = curl(rig, via(d, "http") + [rig.plain.url("origin.test", "/closemid/200000")])
        check(r.rc != 0, "the client sees a cut body, not a whole one", r)
        settled(d)
        after = scrape(d)
        got = delta(before, after)
        check_eq(got.get(("dduct_cache_fill_failures_total", "reason=short")), 1, "one short fill")
        check_eq(got.get(("dduct_cache_misses_total",)), 1, "it was a miss")
        check_eq(got.get(("dduct_cache_entries",)), None, "nothing stored")
        check_eq(after.get(("dduct_cache_fills_completed_total", ())), 0, "no fill completed")
        _, _, body = admin_get(d, "/stats")
        errs = json.loads(body)["errors"]
        check(any("/closemid/200000" in e["text"] for e in errs), "listed in recent errors", errs)


def test_promtool_and_stats_agree(rig):
    """After traffic of every kind, promtool check metrics accepts /metrics; /stats is JSON
    whose metrics equal /metrics' (the same counters, read on one keep-alive connection) and
    whose summary adds up."""
    n = 5000
    url = rig.plain.url("origin.test", "/bytes/%d" % n)
    with rig.dduct(admin=True, proxy={"filters": ["^/bytes/"]}) as d:
        for _ in range(3):
            check_eq(curl(rig, via(d, "http") + [url]).status, 200, "traffic")
        check_eq(curl(rig, via(d, "https") + [rig.origin.url("origin.test", "/echo")]).status,
                 200, "intercepted traffic")
        settled(d)
        st, _, text = admin_get(d, "/metrics")
        p = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True)
        check_eq(p.returncode, 0, "promtool check metrics: " +
                 (p.stdout + p.stderr).decode(errors="replace"))
        for name in ("process_cpu_seconds_total", "process_resident_memory_bytes",
                     "process_open_fds", "process_start_time_seconds",
                     "dduct_upstream_connect_seconds_bucket", "dduct_request_duration_seconds_count",
                     "dduct_tls_handshakes_total", "dduct_connections_active",
                     "dduct_cache_size_bytes", "dduct_cache_evictions_total"):
            check(name.encode() in text, name + " is exported")

        conn = http.client.HTTPConnection("127.0.0.1", d.admin_port, timeout=30)
        st, h, body = admin_get(d, "/stats", conn)
        check_eq((st, h["content-type"]), (200, "application/json"), "/stats")
        prom = scrape(d, conn)
        conn.close()
        js = json.loads(body)
        compared = 0
        for name, v in js["metrics"].items():
            if name.startswith("process_") or name == "dduct_request_duration_seconds":
                continue
            if isinstance(v, dict):  # histogram
                check_eq(prom[(name + "_count", ())], v["count"], name + " count")
                compared += 1
            elif isinstance(v, list):
                for s in v:
                    labels = tuple(sorted((k, x) for k, x in s.items() if k != "value"))
                    if name == "dduct_requests_total" and ("route", "local") in labels:
                        continue
                    check_eq(prom[(name, labels)], s["value"], "%s%s" % (name, labels))
                    compared += 1
            else:
                check_eq(prom[(name, ())], v, name)
                compared += 1
        check(compared > 30, "compared %d figures" % compared)
        s = js["summary"]
        check_eq((s["hits"], s["misses"]), (2, 1), "summary hits and misses")
        check_eq((s["bytes_cache"], s["bytes_origin"] >= n), (2 * n, True), "summary bytes")
        check_eq(len(js["history"]), 60, "an hour of minutes")
        check_eq(sum(m["hits"] for m in js["history"]), 2, "the hits are in the history")
        check_eq(js["most_hit"][0]["hits"], 3, "the most-hit entry (a miss and two hits)")


def test_healthz_read_only(rig):
    """/healthz answers 200 while file_dir takes writes and 503 naming file_dir once it is on a
    read-only mount (chmod would not stop root), and 200 again after remounting it writable."""
    d = rig.dduct(admin=True, proxy={"filters": ["^/bytes/"]})
    os.makedirs(d.file_dir, exist_ok=True)
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", d.file_dir],
                      capture_output=True).returncode != 0:
        print("# SKIP: cannot mount a tmpfs here (needs root)")
        return
    try:
        with d:
            st, _, body = admin_get(d, "/healthz")
            check_eq((st, body), (200, b"ok\n"), "healthy")
            subprocess.run(["mount", "-o", "remount,ro", d.file_dir], check=True)
            st, _, body = admin_get(d, "/healthz")
            check_eq(st, 503, "read-only file_dir")
            check(b"not writable" in body and d.file_dir.encode() in body, "the reason", body)
            subprocess.run(["mount", "-o", "remount,rw", d.file_dir], check=True)
            st, _, body = admin_get(d, "/healthz")
            check_eq(st, 200, "writable again")
    finally:
        subprocess.run(["umount", "-l", d.file_dir], capture_output=True)


def test_ca_crt_on_both_listeners(rig):
    """GET /ca.crt is cert_dir/ca.crt as application/x-pem-file on the admin listener, on the
    proxy listener asked directly (curl http://dduct:port/ca.crt), and through the proxy for an
    absolute URL naming dduct's own address."""
    with rig.dduct(admin=True) as d:
        want = open(d.ca_crt, "rb").read()
        st, h, body = admin_get(d, "/ca.crt")
        check_eq((st, h["content-type"], body), (200, "application/x-pem-file", want), "admin")
        r = curl(rig, [d.http_proxy + "/ca.crt"])
        check_eq((r.status, r.body()), (200, want), "proxy listener, origin-form")
        check_eq(r.info.get("content_type"), "application/x-pem-file", "its content type")
        r = curl(rig, ["-x", d.http_proxy, d.http_proxy + "/ca.crt"])
        check_eq((r.status, r.body()), (200, want), "proxy listener, absolute URL to itself")
        r = curl(rig, [d.http_proxy + "/metrics"])
        check_eq(r.status, 400, "the proxy listener serves no other local page")
        st, _, _ = admin_get(d, "/nope")
        check_eq(st, 404, "unknown admin page")


def test_admin_applies_allow_clients(rig):
    """The admin listener applies allow_clients like the proxy listeners: a client outside it
    gets 403 for /metrics and /ca.crt; the admin listener never proxies (an absolute URL to an
    origin names a local page, here one that does not exist)."""
    with rig.dduct(admin=True, proxy={"allow_clients": ["10.0.0.0/8"]}) as d:
        for path in ("/metrics", "/ca.crt"):
            st, _, body = admin_get(d, path)
            check_eq(st, 403, path + " from 127.0.0.1 outside allow_clients")
            check(b"allow_clients" in body, "the reason", body)
    asked = lambda: len([q for q in rig.plain.snapshot()["requests"] if q[1] == "/echo"])
    with rig.dduct(admin=True) as d:
        before = asked()
        r = curl(rig, ["-x", d.admin_url, rig.plain.url("origin.test", "/echo")])
        check_eq(r.status, 404, "no proxying through the admin listener")
        check_eq(asked(), before, "the origin was not asked")


def read_lines(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def test_access_log_never_credentials(rig):
    """A request target dduct cannot route that holds user:password@ (an absolute URL with
    userinfo) is answered 400 as before, but neither the access log, nor dduct's log, nor the
    error body carries the password."""
    import socket
    log = os.path.join(rig.tmp, "access-creds.log")
    with rig.dduct(misc={"access_log": log}) as d:
        s = socket.create_connection(("127.0.0.1", d.tcp_port))
        s.sendall(b"GET http://alice:s3cret@origin.test:1/x HTTP/1.1\r\nHost: origin.test:1\r\n"
                  b"Connection: close\r\n\r\n")
        answer = b""
        while True:
            b = s.recv(65536)
            if not b:
                break
            answer += b
        s.close()
        check(answer.startswith(b"HTTP/1.1 400"), "answered 400", answer[:200])
        check(b"s3cret" not in answer, "the error body has no password", answer)
        dlog = d.stop()
    check("s3cret" not in dlog, "dduct's log has no password", dlog[-1500:])
    lines = read_lines(log)
    check_eq(len(lines), 1, "one access record")
    check("s3cret" not in lines[0]["url"] and "origin.test:1/x" in lines[0]["url"],
          "the access record's URL, without the password", lines[0])


def test_access_log_statuses_and_sighup(rig):
    """access_log gets one JSON line per request with HIT, MISS, COLLAPSED, REVALIDATED, STALE,
    BYPASS, TUNNEL (time, client, method, URL without credentials, status, bytes, duration, origin status
    and time); after the file is renamed and dduct gets SIGHUP, new lines go to a new file."""
    o = cache_origin(rig)
    n = 4096
    url = rig.plain.url("origin.test", "/bytes/%d" % n)
    for reval in ("never", "always"):
        log = os.path.join(rig.tmp, "access-%s.log" % reval)
        with rig.dduct(admin=True, misc={"access_log": log},
                       proxy={"filters": ["^/bytes/", "^/gate/"], "revalidate": reval}) as d:
            check_eq(curl(rig, via(d, "http") + [url]).status, 200, "miss")
            settled(d)
            check_eq(curl(rig, via(d, "http") + [url]).status, 200, "hit")
            if reval == "always":
                # STALE: an origin process that is gone when the hit is revalidated.
                root = os.path.join(rig.tmp, "stale-origin")
                os.makedirs(root, exist_ok=True)
                with open(os.path.join(root, "f.bin"), "wb") as f:
                    f.write(b"x" * 5000)
                port = free_port()
                srv = subprocess.Popen([sys.executable, "-m", "http.server", "--bind",
                                        "127.0.0.1", "--directory", root, str(port)],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                surl = "http://origin.test:%d/bytes/f.bin" % port
                os.makedirs(os.path.join(root, "bytes"), exist_ok=True)
                os.rename(os.path.join(root, "f.bin"), os.path.join(root, "bytes", "f.bin"))
                try:
                    wait_for(lambda: curl(rig, via(d, "http") + [surl]).status == 200,
                             "the stale origin to start and the fill")
                    settled(d)
                finally:
                    srv.kill()
                    srv.wait()
                check_eq(curl(rig, via(d, "http") + [surl]).status, 200, "stale hit")
                d.stop()
                lines = read_lines(log)
                cached = [x for x in lines if x["route"] == "cache"]
                caches = [x["cache"] for x in cached]
                check_eq(caches[:2], ["MISS", "REVALIDATED"], "revalidated hit")
                check_eq(cached[1]["origin_status"], 200, "the origin's answer to the HEAD")
                check_eq(caches[-1], "STALE", "served stale while the origin is down")
                continue
            u2 = rig.plain.url("origin.test", "/echo").replace("http://", "http://user:pw@")
            check_eq(curl(rig, via(d, "http") + [u2]).status, 200, "bypass")
            r = curl(rig, via(d, "http") + ["--cacert", rig.pki.ca_crt,
                                            rig.origin.url("blind.example", "/bytes/10")])
            check_eq(r.status, 200, "tunnel")
            gurl = o.url("origin.test", "/gate/%d" % (1 << 19))
            o.gate.clear()
            o.half_sent.clear()
            ts = [threading.Thread(target=lambda: curl(rig, via(d, "http") + [gurl]))
                  for _ in range(2)]
            ts[0].start()
            check(o.half_sent.wait(60), "origin sent the first half")
            ts[1].start()
            wait_for(lambda: "(while filling)" in d.log(), "the second client to join")
            o.gate.set()
            for t in ts:
                t.join(60)
            settled(d)
            os.rename(log, log + ".1")
            d.send_signal(signal.SIGHUP)
            wait_for(lambda: "Reopened" in d.log(), "the reopen")
            check_eq(curl(rig, via(d, "http") + [url]).status, 200, "after SIGHUP")
            wait_for(lambda: os.path.exists(log) and os.path.getsize(log) > 0,
                     "the next line in the new file (flushed within a second)")
            d.send_signal(signal.SIGTERM)
            d.proc.wait(30)
            old, new = read_lines(log + ".1"), read_lines(log)
            caches = [x["cache"] for x in old]
            for want in ("MISS", "HIT", "BYPASS", "TUNNEL", "COLLAPSED"):
                check(want in caches, "a %s line" % want, caches)
            check_eq([x["cache"] for x in new], ["HIT"], "the new file has the next request")
            miss = old[0]
            check_eq((miss["method"], miss["url"], miss["status"], miss["bytes"],
                      miss["origin_status"]), ("GET", url, 200, n, 200), "the miss line")
            check(miss["client"].startswith("127.0.0.1:") and miss["duration_ms"] >= 0 and
                  miss["origin_ms"] >= 0 and miss["time"].endswith("Z"), "its other fields", miss)
            byp = [x for x in old if x["cache"] == "BYPASS"][0]
            check("user" not in byp["url"] and "pw" not in byp["url"], "no credentials",
                  byp["url"])
            tun = [x for x in old if x["cache"] == "TUNNEL"][0]
            check_eq((tun["method"], tun["route"], tun["status"]), ("CONNECT", "tunnel", 200),
                     "the tunnel line")


if __name__ == "__main__":
    run([test_counters_move_exactly, test_fill_failure_counted, test_promtool_and_stats_agree, test_healthz_read_only,
         test_ca_crt_on_both_listeners, test_admin_applies_allow_clients, test_access_log_never_credentials,
         test_access_log_statuses_and_sighup])

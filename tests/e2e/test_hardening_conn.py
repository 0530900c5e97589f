#!/usr/bin/env python3
"""Issue 16, the connection side: allow_clients checked at accept before any TLS, the leaf cache
bounded by eviction, descriptor limits, the per-client connection cap, log escaping and what a
stalled TLS reader holds."""
import os
import socket
import ssl
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from dductlib import client  # noqa: E402
from dductlib.harness import (DDUCT_CA_CN, check, check_eq, curl, is_asan, is_tsan, run,  # noqa: E402
                              s_client_cert, via)


def test_denied_client_gets_no_handshake(rig):
    """With allow_clients = ['127.0.0.1/32'], a client from 127.0.0.2 on tls_bind is closed
    before any TLS byte: its ClientHello (SNI naming an intercepted wildcard host) gets no
    ServerHello and no leaf is minted for it; 127.0.0.1 still completes its handshake."""
    with rig.dduct(proxy={"allow_clients": ["127.0.0.1/32"]}) as d:
        ctx = client.tls_context(d.ca_crt)
        outcomes = []
        for i in range(3):
            t = client.Tcp("127.0.0.1", d.tls_port, source="127.0.0.2", timeout=10)
            try:
                s = ctx.wrap_socket(t.sock, server_hostname="n%d.wild.test" % i)
                outcomes.append("handshake completed with %r" % s.version())
                s.close()
            except (ssl.SSLError, ConnectionError, OSError) as e:
                outcomes.append(type(e).__name__)
                t.close()
        check(all(not o.startswith("handshake") for o in outcomes),
              "no handshake for 127.0.0.2", outcomes)
        # Allowed client: full handshake with a minted leaf for its SNI.
        t = client.Tcp("127.0.0.1", d.tls_port, source="127.0.0.1", timeout=10)
        s = client.SslSock(t, ctx, "ok.wild.test")
        s.close()
        log = d.stop()
        check("not allowed to use this proxy" in log, "the refusal is logged", log[-2000:])
        check('Minted a certificate for "n0.wild.test"' not in log and
              'Minted a certificate for "ok.wild.test"' in log,
              "leaves minted only for the allowed client", log[-3000:])


def test_leaf_cache_evicts_instead_of_refusing(rig):
    """With a leaf cache of 2 (DDUCT_TEST_MAX_LEAVES), four intercepted hosts in turn all get a
    verified leaf for exactly their name; the first host, dropped as least recently used, gets a
    newly minted leaf on its next visit instead of a refusal."""
    o = rig.origin
    with rig.dduct(env={"DDUCT_TEST_MAX_LEAVES": "2"}) as d:
        proxy = "127.0.0.1:%d" % d.tcp_port
        pems = {}
        for host in ("origin.test", "a.wild.test", "b.wild.test", "c.wild.test", "origin.test"):
            info = s_client_cert(rig, "%s:%d" % (host, o.port), host, proxy=proxy,
                                 cafile=d.ca_crt)
            check_eq((info["issuer_cn"], info["san"], info["verify"]),
                     (DDUCT_CA_CN, ["DNS:" + host], (0, "ok")), host + ": leaf")
            pems.setdefault(host, []).append(info["pem"])
        check(pems["origin.test"][0] != pems["origin.test"][1],
              "origin.test was evicted and minted again")
        log = d.stop()
        check("Leaf cache full" in log, "eviction is logged (debug)", log[-2000:])


def test_log_lines_are_printable(rig):
    """Requests cut by a bad byte right after a long one on the same connection and others with
    every control and non-ASCII byte in the CONNECT target, the path, the query and a header:
    every byte dduct writes to its log is printable ASCII (or the newline ending a line), and the
    400's log line shows what was parsed ("or"), not bytes an earlier request left behind."""
    with rig.dduct() as d:
        port = rig.plain.port
        s = socket.create_connection(("127.0.0.1", d.tcp_port), timeout=10)
        s.sendall(b"GET http://origin.test:%d/%s HTTP/1.1\r\nHost: x\r\n\r\n"
                  b"CONNECT or\rigin.test:443 HTTP/1.1\r\n\r\n" % (port, b"A" * 300))
        while s.recv(65536):
            pass
        s.close()
        shapes = [b"CONNECT or%sigin.test:%d HTTP/1.1\r\n\r\n",
                  b"GET http://origin.test:1/a%sb?%d HTTP/1.1\r\nHost: x\r\n\r\n",
                  b"GET http://origin.test:1/a?%s=%d HTTP/1.1\r\nHost: x\r\n\r\n",
                  b"GET http://origin.test:1/a HTTP/1.1\r\nHost: x\r\nX: %s%d\r\n\r\n"]
        for shape in shapes:
            for b in list(range(0, 0x20)) + list(range(0x7f, 0x100, 7)):
                s = socket.create_connection(("127.0.0.1", d.tcp_port), timeout=10)
                s.sendall(shape % (bytes([b]), port))
                s.shutdown(socket.SHUT_WR)  # answered, then closed (no keep-alive wait)
                try:
                    while s.recv(65536):
                        pass
                except OSError:
                    pass
                s.close()
        d.stop()
        with open(d.stderr_path, "rb") as f:
            raw = f.read()
        bad = [line for line in raw.split(b"\n")
               if any(c < 0x20 or c >= 0x7f for c in line)]
        check_eq(bad[:5], [], "log lines with bytes outside printable ASCII")
        check(b" or -> 400" in raw, "the cut CONNECT target is logged as parsed", raw[-2000:])


def _get_all(port, request, n, hold=0.0):
    """n connections opened at once (kept idle for hold seconds first), each then sending request
    (Connection: close); their statuses in order (None: closed without an answer)."""
    socks = [socket.create_connection(("127.0.0.1", port), timeout=60) for _ in range(n)]
    time.sleep(hold)
    for s in socks:
        try:
            s.sendall(request)
        except OSError:
            pass
    out = []
    for s in socks:
        data = b""
        try:
            while True:
                b = s.recv(65536)
                if not b:
                    break
                data += b
        except OSError:
            pass
        s.close()
        out.append(int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/1.1 ") else None)
    return out


def test_hits_survive_a_short_descriptor_limit(rig):
    """A file cached by one dduct; a second one on the same file_dir with RLIMIT_NOFILE 256
    (soft = hard, nothing to raise) and the default max_connections (1024). 300 clients connect
    and idle, then all ask for the cached file: dduct has lowered max_connections to fit the
    limit (and logged it), the clients past it wait in the backlog, and every one gets its 200
    from the cache (before: accept() hit EMFILE and dropped clients, and the entry's open()
    failed, so the hit went to the origin and became a 502 'too many open files')."""
    path = "/bytes/65536"
    req = (b"GET %s HTTP/1.1\r\nHost: origin.test:%d\r\nConnection: close\r\n\r\n"
           % (rig.plain.url("origin.test", path).encode(), rig.plain.port))
    with rig.dduct(proxy={"filters": ["^/bytes/"]}) as d:
        check_eq(_get_all(d.tcp_port, req, 1), [200], "the file is fetched and cached")
        files = d.file_dir
    before = rig.plain.count(path)
    with rig.dduct(nofile=256, proxy={"filters": ["^/bytes/"]},
                   misc={"file_dir": files + "/"}) as d:
        got = _get_all(d.tcp_port, req, 300, hold=1.0)
        check_eq(sorted(set(map(str, got))), ["200"], "statuses of the 300 clients")
        check_eq(rig.plain.count(path), before, "every answer was a hit")
        log = d.stop()
        check("max_connections 1024 lowered to" in log, "the cap is logged", log[-3000:])


def test_soft_descriptor_limit_raised(rig):
    """Started with a soft RLIMIT_NOFILE of 256 under a hard one of 4096, dduct raises the soft
    limit to the hard one (logged; /proc shows it) and keeps max_connections at 1024."""
    with rig.dduct(nofile=(256, 4096)) as d:
        with open("/proc/%d/limits" % d.pid) as f:
            line = [x for x in f if x.startswith("Max open files")][0].split()
        check_eq(line[3:5], ["4096", "4096"], "soft and hard open files limits of dduct")
        log = d.stop()
        check("Open files limit raised from 256 to 4096" in log and "lowered" not in log,
              "raised and logged, max_connections kept", log[-3000:])


def _closed_by_peer(sock, timeout):
    """True if the peer closes (EOF or reset) within timeout seconds without sending a byte."""
    sock.settimeout(timeout)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except socket.timeout:
        return False


def test_per_client_connection_cap(rig):
    """With max_connections_per_client = 4, four idle connections from 127.0.0.1 hold their
    slots, a fifth from 127.0.0.1 is closed at once (logged), 127.0.0.2 is still served, and once
    one of the four closes 127.0.0.1 is served again."""
    with rig.dduct(proxy={"max_connections_per_client": 4}) as d:
        held = [client.Tcp("127.0.0.1", d.tcp_port, source="127.0.0.1") for _ in range(4)]
        time.sleep(0.3)
        fifth = client.Tcp("127.0.0.1", d.tcp_port, source="127.0.0.1")
        check(_closed_by_peer(fifth.sock, 10), "the fifth connection from 127.0.0.1 is closed")
        fifth.close()
        req = b"GET %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % \
            rig.plain.url("origin.test", "/echo/cap").encode()
        other = client.Tcp("127.0.0.1", d.tcp_port, source="127.0.0.2")
        other.sendall(req)
        resp = client.Reader(other).read_response()
        check_eq(resp.status if resp else None, 200, "127.0.0.2 is served meanwhile")
        other.close()
        held.pop().close()
        time.sleep(0.3)
        again = client.Tcp("127.0.0.1", d.tcp_port, source="127.0.0.1")
        again.sendall(req)
        resp = client.Reader(again).read_response()
        check_eq(resp.status if resp else None, 200, "127.0.0.1 is served once a slot is free")
        again.close()
        for t in held:
            t.close()
        log = d.stop()
        check("(max_connections_per_client): closed" in log, "the refusal is logged", log[-2000:])


def test_short_head_timeout_near_the_limit(rig):
    """max_connections = 8, head_timeout = 12 s: six idle connections (3/4 of the slots) are
    open; a seventh that sends nothing is closed after a sixth of head_timeout (2 s) and the log
    says why, while one of the first six (accepted below 3/4) is still open then. One event
    loop, so that the idle connections' slots are known to be taken before the seventh comes."""
    with rig.dduct(proxy={"max_connections": 8, "head_timeout": 12, "workers": 1}) as d:
        held = [client.Tcp("127.0.0.1", d.tcp_port) for _ in range(6)]
        time.sleep(0.3)
        late = client.Tcp("127.0.0.1", d.tcp_port)
        check(_closed_by_peer(late.sock, 9), "the connection accepted near the limit is closed "
              "well before head_timeout")
        late.close()
        check(not _closed_by_peer(held[0].sock, 0.2), "an earlier idle connection is still open")
        for t in held:
            t.close()
        log = d.stop()
        check("no request within 2 s (short head timeout: near max_connections)" in log,
              "the short timeout is logged", log[-2000:])


def _rss_settled(d, wait=6.0):
    """dduct's VmRSS once it stops moving (the CLI trims freed heap every few seconds while
    connections are open)."""
    time.sleep(wait)
    last = d.proc_status("VmRSS")
    for _ in range(40):
        time.sleep(0.3)
        rss = d.proc_status("VmRSS")
        if abs(rss - last) < 64:
            return rss
        last = rss
    return last


def test_stalled_tls_readers_hold_one_chunk(rig):
    """30 clients ask for a cached 32 MiB file over intercepted TLS and stop reading after the
    head: dduct's resident memory grows by at most 288 KiB per client (docs/cache.md: a reader
    reads 128 KiB at a time; before: ~640 KiB each, the high-water mark of queued ciphertext,
    the TLS layer's output buffer, the reader's two chunks and a 160 KiB input buffer), and a
    client that then reads gets every byte."""
    n, clients = 32 << 20, 30
    path = "/bytes/%d" % n
    with rig.dduct(proxy={"filters": ["^/bytes/"]}) as d:
        r = curl(rig, via(d, "http") + [rig.origin.url("origin.test", path)], timeout=300)
        check_eq(r.status, 200, "the file is cached")
        base = _rss_settled(d, wait=1.0)
        ctx = client.tls_context(d.ca_crt)
        socks = []
        for _ in range(clients):
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.settimeout(60)
            s.connect(("127.0.0.1", d.tcp_port))
            s.sendall(b"CONNECT origin.test:%d HTTP/1.1\r\n\r\n" % rig.origin.port)
            head = b""
            while b"\r\n\r\n" not in head:
                head += s.recv(1)
            t = ctx.wrap_socket(s, server_hostname="origin.test")
            t.sendall(b"GET %s HTTP/1.1\r\nHost: origin.test:%d\r\n\r\n"
                      % (path.encode(), rig.origin.port))
            check(t.recv(64).startswith(b"HTTP/1.1 200"), "a stalled client got its head")
            socks.append(t)
        stalled = _rss_settled(d)
        per = (stalled - base) / clients
        print("#   RSS %d KiB idle, %d KiB with %d stalled readers: %.0f KiB each"
              % (base, stalled, clients, per))
        # ~142 KiB each when the readers start while the fill is still committing, ~220 KiB
        # when they start on the committed entry (a later request, or a slow machine): more than
        # docs/cache.md's one chunk, left open. The bound is two chunks and change, still well
        # under the ~640 KiB this guards against.
        if not is_asan() and not is_tsan():
            check(per <= 288, "KiB per stalled TLS reader", "%.0f" % per)
        t = socks.pop()
        got = 0
        t.settimeout(60)
        while True:
            b = t.recv(1 << 20)
            if not b:
                break
            got += len(b)
            if got >= n:
                break
        check(got >= n, "a stalled client that reads again gets the whole body", got)
        for t in socks + [t]:
            t.close()


def test_connect_inside_an_intercepted_connection(rig):
    """A CONNECT sent inside an intercepted TLS connection (where the client talks to "the
    origin") gets 400 and the connection ends: each such CONNECT used to be intercepted again,
    one more TLS layer reading into the next on the stack, and ~130 of them from one client
    crashed the process (review-sec #1). dduct is still up and serves the next client."""
    with rig.dduct() as d:
        t = client.Tcp("127.0.0.1", d.tcp_port, timeout=10)
        status, _, _ = client.connect(t, "origin.test", rig.origin.port)
        check_eq(status, 200, "the first CONNECT is intercepted")
        s = client.BioTls(t, client.tls_context(d.ca_crt), "origin.test")
        status, body, rd = client.connect(s, "origin.test", rig.origin.port)
        check_eq(status, 400, "a CONNECT inside the intercepted connection")
        check(b"inside an intercepted connection" in body, "the answer says why", body)
        check(rd.read_head() is None, "the connection ends after the refusal")
        t.close()
        r = curl(rig, via(d, "http") + [rig.origin.url("origin.test", "/echo/after")])
        check_eq((r.rc, r.status), (0, 200), "the next client is served (%s)" % r.stderr)
        check(d.proc.poll() is None, "dduct is running")


def test_content_length_beyond_int64(rig):
    """A request whose Content-Length does not fit 63 bits gets 400, never reaches the origin,
    and the next connection is served (review-sec #5: it was read as negative, the request went
    to the origin with Content-Length: 0 and the connection then hung in a body never read)."""
    plain = rig.plain
    with rig.dduct() as d:
        before = len(plain.snapshot()["requests"])
        t = client.Tcp("127.0.0.1", d.tcp_port, timeout=10)
        url = plain.url("origin.test", "/echo/upload")
        t.sendall(("POST %s HTTP/1.1\r\nHost: origin.test\r\n"
                   "Content-Length: 9223372036854775808\r\n\r\nhello" % url).encode())
        resp = client.Reader(t).read_response("POST")
        check_eq(resp.status if resp else None, 400, "Content-Length of 2^63")
        check(b"Content-Length is too large" in resp.body, "the answer says why", resp.body)
        t.close()
        check_eq(len(plain.snapshot()["requests"]), before, "the origin saw nothing")
        r = curl(rig, via(d, "http") + [plain.url("origin.test", "/echo/next")])
        check_eq((r.rc, r.status), (0, 200), "the next client is served (%s)" % r.stderr)


def test_denied_clients_hold_no_slot(rig):
    """max_connections = 8, head_timeout = 60 s, allow_clients = ['127.0.0.2/32']: eight
    sockets from 127.0.0.1 (denied) get their 403 before sending anything and are closed within
    the linger (2 s) whatever they do; meanwhile an allowed client from 127.0.0.2 is served at
    once. Before, each denied socket held a slot until it sent a head or head_timeout passed, so
    eight of them kept every allowed client waiting (review-sec #4)."""
    with rig.dduct(proxy={"max_connections": 8, "head_timeout": 60, "workers": 1,
                          "allow_clients": ["127.0.0.2/32"]}) as d:
        denied = [client.Tcp("127.0.0.1", d.tcp_port, source="127.0.0.1", timeout=10)
                  for _ in range(8)]
        for i, t in enumerate(denied):
            resp = client.Reader(t).read_response()
            check_eq(resp.status if resp else None, 403, "denied socket %d, unprompted" % i)
        r = curl(rig, ["--interface", "127.0.0.2", "--max-time", "20"] + via(d, "http") +
                 [rig.plain.url("origin.test", "/echo/allowed")])
        check_eq((r.rc, r.status), (0, 200), "127.0.0.2 served while 8 denied sockets are "
                 "open (%s)" % r.stderr)
        for i, t in enumerate(denied):
            check(_closed_by_peer(t.sock, 10), "denied socket %d closed by dduct" % i)
            t.close()
        log = d.stop()
        check("403 not allowed to use this proxy (allow_clients)" in log, "logged", log[-2000:])


if __name__ == "__main__":
    run([test_denied_client_gets_no_handshake, test_leaf_cache_evicts_instead_of_refusing,
         test_log_lines_are_printable, test_hits_survive_a_short_descriptor_limit,
         test_soft_descriptor_limit_raised, test_per_client_connection_cap,
         test_short_head_timeout_near_the_limit, test_stalled_tls_readers_hold_one_chunk,
         test_connect_inside_an_intercepted_connection, test_content_length_beyond_int64,
         test_denied_clients_hold_no_slot])

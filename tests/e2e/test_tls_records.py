"""ChaCha20-Poly1305 and AES-GCM records sealed and opened by libdduct itself (tls.c, "AEAD records
written here"): with one of those suites negotiated, dduct encrypts and decrypts application-data
records with its own AEADs (chachapoly.c, aesgcm.c) instead of mbedTLS's, on both sides (to curl,
from the origin). These tests check that real OpenSSL peers accept what dduct writes and that
dduct reads what they write, byte for byte, in both directions, on misses, hits, keep-alive and
TLS inside TLS, for ChaCha20-Poly1305, AES-128-GCM and AES-256-GCM; that the opt-outs leave the
records to mbedTLS (its AES-GCM then on the encryption workers); and that a record altered on the
wire is rejected (the connection fails, nothing altered reaches the client, nothing is cached)
while the next connection works."""
import hashlib
import json
import os
import socket
import struct
import sys
import threading

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cache_rig import origin_gets  # noqa: E402
from dductlib.harness import check, check_eq, curl, run, via  # noqa: E402
from dductlib.origin import Origin, pattern_bytes, pattern_sha256  # noqa: E402

OWN = "application records sealed and opened by libdduct"
CHACHA = "ECDHE-ECDSA-CHACHA20-POLY1305"
AES = "ECDHE-ECDSA-AES128-GCM-SHA256"
AES256 = "ECDHE-ECDSA-AES256-GCM-SHA384"
CACHED = ["^/bytes/"]


def origin_with(rig, ciphers):
    return Origin(tls=(rig.pki.origin_crt, rig.pki.origin_key), ciphers=ciphers)


def both_sides(rig, suite, seed):
    """Origin, client and the HTTPS proxy's own TLS all on one suite: a 24 MiB miss (opened from
    the origin, sealed to curl inside the proxy's TLS), the hit, then on one keep-alive connection
    a 3,000-byte hit twice and a 200 kB upload echoed back and checked by hash; dduct logs that it
    handled the records itself on every side, on the loop (no worker: the copy and hand-off cost
    more than these ciphers)."""
    o = origin_with(rig, suite)
    try:
        n = 24 << 20
        url = o.url("origin.test", "/bytes/%d?seed=%s" % (n, seed))
        small = o.url("origin.test", "/bytes/3000?seed=%ss" % seed)
        with rig.dduct(proxy={"filters": CACHED}) as d:
            for what in ("miss", "hit"):
                # the proxy's own certificate (server.crt) is RSA; the intercepted leaves ECDSA
                r = curl(rig, via(d, "https") + ["--proxy-ciphers", suite.replace("ECDSA", "RSA"),
                                                 "--ciphers", suite, url])
                check_eq((r.rc, r.status, r.sha256()), (0, 200, pattern_sha256(n, seed)),
                         "24 MiB %s through the HTTPS proxy (%s)" % (what, suite))
            check_eq(len(origin_gets(o, "/bytes/%d" % n)), 1, "origin GETs for the big file")
            body = os.urandom(200000)
            bf = os.path.join(rig.tmp, "upload.bin")
            with open(bf, "wb") as f:
                f.write(body)
            echo = os.path.join(rig.tmp, "echo-%s.json" % seed)
            r = curl(rig, via(d, "http") + ["--ciphers", suite, small, small, "--next"]
                     + via(d, "http") + ["--ciphers", suite, "--data-binary", "@" + bf,
                                         "-o", echo, o.url("origin.test", "/echo")])
            check_eq(r.rc, 0, "keep-alive run")
            with open(echo) as f:
                doc = json.load(f)
            check_eq((doc["body_len"], doc["body_sha256"]),
                     (len(body), hashlib.sha256(body).hexdigest()), "the upload as the origin got it")
            log = d.log()
        # the proxy's TLS, the intercepted client side, the origin: three layers (the origin
        # connection is reused by the keep-alive run, or a second one is made)
        check(log.count(OWN) >= 3, "dduct handled %s records itself on every side" % suite,
              "%d log lines" % log.count(OWN))
        check("on the thread pool" not in log, "records written here stay on the loop")
    finally:
        o.close()


def test_chacha_both_sides(rig):
    """ChaCha20-Poly1305 on every side (see both_sides)."""
    both_sides(rig, CHACHA, "cc")


def test_aes128gcm_both_sides(rig):
    """AES-128-GCM on every side (see both_sides): RFC 5288 records, explicit nonce and all,
    sealed and opened by aesgcm.c."""
    both_sides(rig, AES, "g1")


def test_aes256gcm_both_sides(rig):
    """AES-256-GCM on every side (see both_sides)."""
    both_sides(rig, AES256, "g2")


def test_upload_intact(rig):
    """An upload of 3 MiB through an intercepted connection reaches the origin byte for byte
    (client records opened by dduct, origin records sealed by it), with ChaCha20-Poly1305 and
    with AES-128-GCM."""
    for suite in (CHACHA, AES):
        o = origin_with(rig, suite)
        try:
            with rig.dduct() as d:
                body = os.urandom(3 << 20)
                bf = os.path.join(rig.tmp, "up3.bin")
                with open(bf, "wb") as f:
                    f.write(body)
                r = curl(rig, via(d, "http") + ["--ciphers", suite, "--data-binary", "@" + bf,
                                                o.url("origin.test", "/echo")])
                check_eq((r.rc, r.status), (0, 200), "upload (%s)" % suite)
                doc = r.json()
                check_eq((doc["body_len"], doc["body_sha256"]),
                         (len(body), hashlib.sha256(body).hexdigest()),
                         "what the origin received (%s)" % suite)
                check(OWN in d.log(), "own records in use (%s)" % suite)
        finally:
            o.close()


def test_opt_outs_stay_with_mbedtls(rig):
    """DDUCT_AESGCM=off (what a CPU without AES-NI gets): AES-GCM records are mbedTLS's again, and
    large writes go to the encryption workers, which stay for the suites dduct does not own;
    DDUCT_TLS_RECORDS=mbedtls leaves ChaCha20 and AES-GCM records to mbedTLS. Downloads intact."""
    n = 5 << 20
    for suite, env in ((AES, {"DDUCT_AESGCM": "off"}), (AES, {"DDUCT_TLS_RECORDS": "mbedtls"}),
                       (CHACHA, {"DDUCT_TLS_RECORDS": "mbedtls"})):
        o = origin_with(rig, suite)
        try:
            seed = "o%d" % len(env["DDUCT_AESGCM" if "DDUCT_AESGCM" in env else "DDUCT_TLS_RECORDS"])
            url = o.url("origin.test", "/bytes/%d?seed=%s" % (n, seed))
            with rig.dduct(proxy={"filters": CACHED}, env=env) as d:
                for what in ("miss", "hit"):
                    r = curl(rig, via(d, "http") + ["--ciphers", suite, url])
                    check_eq((r.rc, r.status, r.sha256()), (0, 200, pattern_sha256(n, seed)),
                             "%s %s with %s" % (suite, what, env))
                log = d.log()
                check(OWN not in log, "%s leaves %s records to mbedTLS" % (env, suite))
                if "DDUCT_AESGCM" in env:
                    check("on the thread pool" in log,
                          "mbedTLS's AES-GCM still gets the encryption workers", log[-1500:])
        finally:
            o.close()


class TamperRelay:
    """A TCP relay in front of an origin that flips one byte inside the third application-data
    record the origin sends on the first connection it relays (later connections pass clean)."""

    def __init__(self, target_port):
        self.target = target_port
        self.lsock = socket.socket()
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(8)
        self.port = self.lsock.getsockname()[1]
        self.tampered = threading.Event()
        self.armed = True
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                c, _ = self.lsock.accept()
            except OSError:
                return
            u = socket.create_connection(("127.0.0.1", self.target))
            tamper, self.armed = self.armed, False
            threading.Thread(target=self._copy, args=(c, u), daemon=True).start()
            threading.Thread(target=self._records, args=(u, c, tamper), daemon=True).start()

    @staticmethod
    def _pump(src, dst, edit):
        """Copy src to dst until either side ends, passing each chunk through edit (which may
        hold bytes back), then shut both down."""
        try:
            while True:
                b = src.recv(65536)
                if not b:
                    break
                dst.sendall(edit(b))
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def _copy(self, src, dst):
        self._pump(src, dst, lambda b: b)

    def _records(self, src, dst, tamper):
        state = {"buf": b"", "seen": 0}

        def edit(b):
            buf = state["buf"] + b
            out = b""
            while len(buf) >= 5:
                typ, _, length = struct.unpack("!BHH", buf[:5])
                if len(buf) < 5 + length:
                    break
                rec = bytearray(buf[:5 + length])
                buf = buf[5 + length:]
                if typ == 23:
                    state["seen"] += 1
                    if tamper and state["seen"] == 3 and length > 200:
                        rec[5 + 100] ^= 0x01
                        self.tampered.set()
                out += bytes(rec)
            state["buf"] = buf
            return out
        self._pump(src, dst, edit)

    def close(self):
        self.lsock.close()


def altered_record(rig, suite, seed):
    """One bit flipped inside a record from the origin: dduct rejects the record (the client's
    download fails and what it got is an untouched prefix), logs the MAC failure and caches
    nothing; the next request fetches again, intact, and the one after is a hit."""
    o = origin_with(rig, suite)
    relay = TamperRelay(o.port)
    try:
        n = 4 << 20
        path = "/bytes/%d" % n
        url = "https://origin.test:%d%s?seed=%s" % (relay.port, path, seed)
        want = pattern_bytes(n, seed)
        with rig.dduct(proxy={"filters": CACHED}) as d:
            r = curl(rig, via(d, "http") + ["--ciphers", suite, url])
            check(relay.tampered.is_set(), "the relay altered a record")
            check(r.rc != 0 or r.status != 200, "the altered download does not succeed",
                  "rc %d status %s" % (r.rc, r.status))
            got = r.body() if os.path.exists(r.body_path) else b""
            check(want.startswith(got), "the client got only an untouched prefix",
                  "%d bytes" % len(got))
            check("MAC" in d.log(), "dduct logs the MAC failure", d.log()[-1500:])
            check(OWN in d.log(), "the records were dduct's (%s)" % suite)
            for what in ("refetch", "hit"):
                r = curl(rig, via(d, "http") + ["--ciphers", suite, url])
                check_eq((r.rc, r.status, r.sha256()), (0, 200, pattern_sha256(n, seed)),
                         what + " after the altered record")
            check_eq(len(origin_gets(o, path)), 2, "origin GETs (the altered fill, the refetch)")
    finally:
        relay.close()
        o.close()


def test_altered_record_rejected(rig):
    """A ChaCha20-Poly1305 record altered on the wire (see altered_record)."""
    altered_record(rig, CHACHA, "tm")


def test_altered_gcm_record_rejected(rig):
    """An AES-128-GCM record altered on the wire (see altered_record): bad_record_mac."""
    altered_record(rig, AES, "tg")


# Offered to origins: ECDHE with an AEAD these records are written with (and the renegotiation
# SCSV mbedTLS adds to every first ClientHello).
OFFERED = {0xcca8: "ECDHE-RSA-CHACHA20-POLY1305", 0xcca9: "ECDHE-ECDSA-CHACHA20-POLY1305",
           0xc02b: "ECDHE-ECDSA-AES128-GCM-SHA256", 0xc02c: "ECDHE-ECDSA-AES256-GCM-SHA384",
           0xc02f: "ECDHE-RSA-AES128-GCM-SHA256", 0xc030: "ECDHE-RSA-AES256-GCM-SHA384",
           0x00ff: "TLS_EMPTY_RENEGOTIATION_INFO_SCSV"}


def client_hello_suites(hello):
    """The cipher suite list of a ClientHello record."""
    p = 5 + 4 + 2 + 32
    p += 1 + hello[p]
    n = struct.unpack(">H", hello[p:p + 2])[0]
    return [struct.unpack(">H", hello[p + 2 + i:p + 4 + i])[0] for i in range(0, n, 2)]


def test_origins_are_offered_only_suites_written_here(rig):
    """The ClientHello dduct sends an origin (captured by a bare listener standing in for it)
    offers only ECDHE with ChaCha20-Poly1305 or AES-GCM, both of them: no CBC, CCM, ARIA,
    Camellia, static RSA or DHE suite, whose records would all be mbedTLS's."""
    lst = socket.socket()
    lst.bind(("127.0.0.1", 0))
    lst.listen(1)
    port = lst.getsockname()[1]
    hello = {}

    def origin():
        c, _ = lst.accept()
        c.settimeout(20)
        data = b""
        while len(data) < 5 or len(data) < 5 + struct.unpack(">H", data[3:5])[0]:
            b = c.recv(65536)
            if not b:
                break
            data += b
        hello["bytes"] = data
        c.close()

    t = threading.Thread(target=origin)
    t.start()
    with rig.dduct() as d:
        curl(rig, via(d, "http") + ["https://origin.test:%d/x" % port])
    t.join(30)
    lst.close()
    check(len(hello.get("bytes", b"")) > 50, "dduct sent the origin a ClientHello")
    suites = client_hello_suites(hello["bytes"])
    others = ["0x%04x" % s for s in suites if s not in OFFERED]
    check_eq(others, [], "suites offered beyond ECDHE + ChaCha20-Poly1305 / AES-GCM")
    check(0xcca9 in suites and 0xc02f in suites and 0xc030 in suites,
          "ChaCha20-Poly1305 and both AES-GCM sizes are offered", repr(suites))


if __name__ == "__main__":
    run([test_chacha_both_sides, test_aes128gcm_both_sides, test_aes256gcm_both_sides,
         test_upload_intact, test_opt_outs_stay_with_mbedtls, test_altered_record_rejected,
         test_altered_gcm_record_rejected, test_origins_are_offered_only_suites_written_here])

"""ChaCha20-Poly1305 records sealed and opened by libdduct itself (tls.c, "records written here"):
with that suite negotiated, dduct encrypts and decrypts application-data records with its own
AEAD instead of mbedTLS's, on both sides (to curl, from the origin). These tests check that real
OpenSSL peers accept what dduct writes and that dduct reads what they write, byte for byte, in
both directions, on misses, hits and keep-alive; that other suites and the opt-out stay with
mbedTLS; and that a record altered on the wire is rejected (the connection fails, nothing
altered reaches the client, nothing is cached) while the next connection works."""
import hashlib
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
CACHED = ["^/bytes/"]


def origin_with(rig, ciphers):
    return Origin(tls=(rig.pki.origin_crt, rig.pki.origin_key), ciphers=ciphers)


def test_chacha_both_sides(rig):
    """Origin and client both on ChaCha20-Poly1305: a 24 MiB miss (opened from the origin, sealed
    to curl), the hit, a 3,000-byte hit and an upload on one keep-alive connection all arrive
    intact; dduct logs that it handled the records on both sides, on the loop (no worker: the
    copy and hand-off cost more than this cipher)."""
    o = origin_with(rig, CHACHA)
    try:
        n = 24 << 20
        url = o.url("origin.test", "/bytes/%d?seed=cc" % n)
        small = o.url("origin.test", "/bytes/3000?seed=cs")
        with rig.dduct(proxy={"filters": CACHED}) as d:
            for what in ("miss", "hit"):
                r = curl(rig, via(d, "https") + ["--ciphers", CHACHA, url])
                check_eq((r.rc, r.status, r.sha256()), (0, 200, pattern_sha256(n, "cc")),
                         "24 MiB " + what)
            check_eq(len(origin_gets(o, "/bytes/%d" % n)), 1, "origin GETs for the big file")
            # keep-alive: three requests on one connection, the last an upload echoed back
            body = os.urandom(200000)
            bf = os.path.join(rig.tmp, "upload.bin")
            with open(bf, "wb") as f:
                f.write(body)
            r = curl(rig, via(d, "http") + ["--ciphers", CHACHA, small, small, "--next"]
                     + via(d, "http") + ["--ciphers", CHACHA, "--data-binary", "@" + bf,
                                         o.url("origin.test", "/echo")])
            check_eq(r.rc, 0, "keep-alive run")
            log = d.log()
        check(log.count(OWN) >= 2, "dduct handled ChaCha20 records itself on both sides",
              "%d log lines" % log.count(OWN))
        check("on the thread pool" not in log, "records written here stay on the loop")
    finally:
        o.close()


def test_upload_intact(rig):
    """An upload of 3 MiB through an intercepted ChaCha20 connection reaches a ChaCha20 origin
    byte for byte (client records opened by dduct, origin records sealed by it)."""
    o = origin_with(rig, CHACHA)
    try:
        with rig.dduct() as d:
            body = os.urandom(3 << 20)
            bf = os.path.join(rig.tmp, "up3.bin")
            with open(bf, "wb") as f:
                f.write(body)
            r = curl(rig, via(d, "http") + ["--ciphers", CHACHA, "--data-binary", "@" + bf,
                                            o.url("origin.test", "/echo")])
            check_eq((r.rc, r.status), (0, 200), "upload")
            doc = r.json()
            check_eq((doc["body_len"], doc["body_sha256"]),
                     (len(body), hashlib.sha256(body).hexdigest()), "what the origin received")
            check(OWN in d.log(), "own records in use")
    finally:
        o.close()


def test_other_suites_stay_with_mbedtls(rig):
    """AES-GCM on both sides, and ChaCha20 with DDUCT_TLS_RECORDS=mbedtls: downloads are intact
    and dduct does not take the records over."""
    o = origin_with(rig, AES)
    try:
        n = 5 << 20
        url = o.url("origin.test", "/bytes/%d?seed=aes" % n)
        with rig.dduct(proxy={"filters": CACHED}) as d:
            for what in ("miss", "hit"):
                r = curl(rig, via(d, "http") + ["--ciphers", AES, url])
                check_eq((r.rc, r.status, r.sha256()), (0, 200, pattern_sha256(n, "aes")),
                         "AES-GCM " + what)
            check(OWN not in d.log(), "AES-GCM records are mbedTLS's")
    finally:
        o.close()
    o = origin_with(rig, CHACHA)
    try:
        url = o.url("origin.test", "/bytes/%d?seed=opt" % n)
        with rig.dduct(proxy={"filters": CACHED}, env={"DDUCT_TLS_RECORDS": "mbedtls"}) as d:
            r = curl(rig, via(d, "http") + ["--ciphers", CHACHA, url])
            check_eq((r.rc, r.status, r.sha256()), (0, 200, pattern_sha256(n, "opt")),
                     "ChaCha20 through mbedTLS")
            check(OWN not in d.log(), "the opt-out leaves ChaCha20 records to mbedTLS")
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


def test_altered_record_rejected(rig):
    """One bit flipped inside a ChaCha20 record from the origin: dduct rejects the record (the
    client's download fails and what it got is an untouched prefix), logs the MAC failure and
    caches nothing; the next request fetches again, intact, and the one after is a hit."""
    o = origin_with(rig, CHACHA)
    relay = TamperRelay(o.port)
    try:
        n = 4 << 20
        path = "/bytes/%d" % n
        url = "https://origin.test:%d%s?seed=tm" % (relay.port, path)
        want = pattern_bytes(n, "tm")
        with rig.dduct(proxy={"filters": CACHED}) as d:
            r = curl(rig, via(d, "http") + ["--ciphers", CHACHA, url])
            check(relay.tampered.is_set(), "the relay altered a record")
            check(r.rc != 0 or r.status != 200, "the altered download does not succeed",
                  "rc %d status %s" % (r.rc, r.status))
            got = r.body() if os.path.exists(r.body_path) else b""
            check(want.startswith(got), "the client got only an untouched prefix",
                  "%d bytes" % len(got))
            check("MAC" in d.log(), "dduct logs the MAC failure", d.log()[-1500:])
            for what in ("refetch", "hit"):
                r = curl(rig, via(d, "http") + ["--ciphers", CHACHA, url])
                check_eq((r.rc, r.status, r.sha256()), (0, 200, pattern_sha256(n, "tm")),
                         what + " after the altered record")
            check_eq(len(origin_gets(o, path)), 2, "origin GETs (the altered fill, the refetch)")
    finally:
        relay.close()
        o.close()


if __name__ == "__main__":
    run([test_chacha_both_sides, test_upload_intact, test_other_suites_stay_with_mbedtls,
         test_altered_record_rejected])

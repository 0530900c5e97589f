"""What the cache tests add to dductlib's rig: an origin with registry-like and misbehaving
endpoints, and helpers to look inside file_dir.

CacheOrigin endpoints (on top of dductlib's /bytes, /closemid, /status, ...):
  /v2/<name>/blobs/sha256:<hex>   the blob registered under that digest (origin.blobs); names
                                  starting with "private" need "Authorization: Bearer letmein"
                                  (else 401); names starting with "cdn" answer 307 to
                                  https://x.wild.test:<port>/blob/<digest>?sig=s3cr3t
  /blob/<digest>?sig=             the "CDN": needs the signature, records the Authorization it
                                  got (origin.cdn_auth)
  /gate/<n>                       Content-Length n, the first half, then waits for origin.gate
                                  before the rest (origin.half_sent is set once half is out)
  /any/<anything>                 200 with the raw request target as the body
  /auth/<name>                    401 without an Authorization header, else 64 KiB of pattern
  /ver/<name>                     origin.versions[name] (bytes), ETag = its sha256 prefix
"""
import hashlib
import json
import os
import re
import threading

from dductlib.harness import check
from dductlib.origin import Origin, _Handler, pattern_bytes, pattern_chunks

BLOB_RE = re.compile(r"^/v2/(.+)/blobs/(sha256:[0-9a-f]{64})$")
TOKEN = "Bearer letmein"


class CacheHandler(_Handler):
    def _send_body(self, data, ctype="application/octet-stream", extra=()):
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        for k, v in extra:
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            for i in range(0, len(data), 1 << 18):
                self.wfile.write(data[i:i + (1 << 18)])

    def _ep_v2(self, path, query, body):
        o = self.server.origin
        m = BLOB_RE.match(path)
        if not m:
            return self._send(404, b"not a blob\n")
        name, digest = m.groups()
        if name.startswith("private") and self.headers.get("Authorization") != TOKEN:
            return self._send(401, b"unauthorized\n",
                              extra=[("WWW-Authenticate", 'Bearer realm="test"')])
        if name.startswith("cdn"):
            loc = "https://x.wild.test:%d/blob/%s?sig=s3cr3t" % (o.port, digest)
            return self._send(307, b"", extra=[("Location", loc)])
        data = o.blobs.get(digest)
        if data is None:
            return self._send(404, b"no such blob\n")
        self._send_body(data, extra=[("Docker-Content-Digest", digest), ("ETag", '"%s"' % digest)])

    def _ep_blob(self, path, query, body):
        o = self.server.origin
        with o._lock:
            o.cdn_auth.append(self.headers.get("Authorization"))
        if query.get("sig") != "s3cr3t":
            return self._send(403, b"bad signature\n")
        data = o.blobs.get(path.split("/")[2])
        if data is None:
            return self._send(404, b"no such blob\n")
        self._send_body(data)

    def _ep_gate(self, path, query, body):
        o = self.server.origin
        n = int(path.split("/")[2])
        self.send_response(200)
        self.send_header("Content-Type", "application/x-gate")
        self.send_header("Content-Length", str(n))
        self.send_header("ETag", '"gate-%d"' % n)
        self.end_headers()
        if self.command == "HEAD":
            return
        data = pattern_bytes(n, "gate")
        self.wfile.write(data[:n // 2])
        self.wfile.flush()
        o.half_sent.set()
        o.gate.wait(120)
        self.wfile.write(data[n // 2:])

    def _ep_any(self, path, query, body):
        self._send_body(self.path.encode("latin-1"), "text/plain")

    def _ep_auth(self, path, query, body):
        if not self.headers.get("Authorization"):
            return self._send(401, b"who are you?\n",
                              extra=[("WWW-Authenticate", 'Basic realm="test"')])
        self._send_body(pattern_bytes(65536, "auth"))


    def _ep_ver(self, path, query, body):
        data = self.server.origin.versions.get(path.split("/")[2])
        if data is None:
            return self._send(404, b"no such version\n")
        etag = '"%s"' % hashlib.sha256(data).hexdigest()[:16]
        self._send_body(data, extra=[("ETag", etag)])


def cache_origin(rig, tls=True):
    """The rig's cache origin (HTTPS from the test origin CA, or plain HTTP), made once."""
    def make():
        o = Origin(tls=(rig.pki.origin_crt, rig.pki.origin_key) if tls else None)
        o.server.RequestHandlerClass = CacheHandler
        o.blobs = {}
        o.cdn_auth = []
        o.versions = {}
        o.gate = threading.Event()
        o.half_sent = threading.Event()
        return o
    return rig._get("cache-https" if tls else "cache-http", make)


def add_blob(origin, data):
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    origin.blobs[digest] = data
    return digest


# The checksum dduct records for an ordinary entry (docs/cache.md): the AES-128-GCM tag of
# decrypting the body (no AAD) under these.
GMAC_K0 = b"dduct-checksum-1"
GMAC_IV0 = b"dduct-gmac-1"


def gmac_digest(data):
    """"gmac:<hex>" of data, computed with python3-cryptography (OpenSSL), or None without it.
    GCM's tag covers the ciphertext: data is the ciphertext of the plaintext data XOR the
    keystream (AES-CTR from inc32(J0) = IV0 || 2), so encrypting that plaintext gives the tag."""
    try:
        from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
    except ImportError:
        return None
    data = bytes(data)
    ks = Cipher(algorithms.AES(GMAC_K0), modes.CTR(GMAC_IV0 + b"\0\0\0\2")).encryptor()
    ks = ks.update(bytes(len(data)))
    plain = (int.from_bytes(data, "big") ^ int.from_bytes(ks, "big")).to_bytes(len(data), "big")
    enc = Cipher(algorithms.AES(GMAC_K0), modes.GCM(GMAC_IV0)).encryptor()
    check(enc.update(plain) + enc.finalize() == data, "the GMAC helper's plaintext encrypts back")
    return "gmac:" + enc.tag.hex()


def fills_gmac():
    """Whether dduct records gmac for ordinary entries here: it does where its AES-GCM has a GHASH
    for the CPU (x86-64 with AES-NI, PCLMULQDQ, SSSE3, SSE4.1), else sha256."""
    if os.uname().machine != "x86_64":  # (the harness starts dduct without DDUCT_AESGCM)
        return False
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((ln for ln in f if ln.startswith("flags")), "").split()
    except OSError:
        return False
    return all(x in flags for x in ("aes", "pclmulqdq", "ssse3", "sse4_1"))


def check_gmac(digest, data, what):
    """digest is data's gmac (its form only, when python3-cryptography is missing); sha256 where
    dduct has no fast GHASH (fills_gmac)."""
    if not fills_gmac():
        check(digest == "sha256:" + hashlib.sha256(bytes(data)).hexdigest(), what + " (sha256: no "
              "fast GHASH on this CPU)", digest)
        return
    want = gmac_digest(data)
    if want is None:
        print("# python3-cryptography missing: only the form of the gmac digest is checked")
        check(re.fullmatch(r"gmac:[0-9a-f]{32}", digest or "") is not None, what, digest)
    else:
        check(digest == want, what, "%r != %r" % (digest, want))


def sidecar(file_dir, rel):
    """The sidecar of the entry at rel, as a dict."""
    with open(os.path.join(file_dir, rel + ".json")) as f:
        return json.load(f)


def set_sidecar(file_dir, rel, **fields):
    """Rewrite fields of the entry's sidecar in place (as an earlier version, or a hand, would)."""
    doc = sidecar(file_dir, rel)
    doc.update(fields)
    with open(os.path.join(file_dir, rel + ".json"), "w") as f:
        json.dump(doc, f)


def origin_gets(origin, path):
    """GET requests the origin saw for path (query ignored)."""
    return [r for r in origin.snapshot()["requests"]
            if r[0] == "GET" and r[1].split("?")[0] == path]


def files_in(file_dir):
    """Every file under file_dir, as paths relative to it."""
    out = []
    for root, _dirs, files in os.walk(file_dir):
        for f in files:
            out.append(os.path.relpath(os.path.join(root, f), file_dir))
    return sorted(out)


def entries(file_dir):
    """Complete entries: data files that have a sidecar."""
    fs = set(files_in(file_dir))
    return sorted(f for f in fs if f + ".json" in fs)


def check_inside(file_dir):
    """Every file dduct made resolves inside file_dir (and is a regular file, not a link)."""
    real = os.path.realpath(file_dir)
    for f in files_in(file_dir):
        p = os.path.join(file_dir, f)
        check(not os.path.islink(p), "no symlink in file_dir", p)
        check(os.path.realpath(p).startswith(real + os.sep), "file stays inside file_dir", p)


__all__ = ["CacheHandler", "cache_origin", "add_blob", "origin_gets", "files_in", "entries",
           "check_inside", "pattern_bytes", "pattern_chunks", "TOKEN"]

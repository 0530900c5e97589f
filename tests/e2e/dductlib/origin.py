"""Test origins: what dduct talks to.

Origin: http.server.ThreadingHTTPServer speaking HTTP/1.1 with keep-alive, plain or TLS (the TLS
handshake runs in the connection's thread, so a stalled client never blocks the others).
Endpoints (any method):
  /echo[...]            JSON: method, target, version, headers (list of pairs), body_len,
                        body_sha256, body (latin-1 text when < 64 KiB), conn (per-connection id),
                        tls, sni
  /bytes/<n>?mode=cl|chunked|close&seed=s
                        n deterministic bytes (pattern_bytes), framed as asked
  /stall?head=0|1       head=0: never answer; head=1: a head announcing 1 MB, 1000 bytes, silence
  /closemid/<n>         announces Content-Length n, sends n/2 bytes, closes
  /redirect/<k>?to=P    302 chain of k hops ending at P (default /echo)
  /status/<code>        that status with a one-line body
  /hop                  a response carrying hop-by-hop headers the proxy must drop
  /slowsink?rate=B      reads the request body at about B bytes/s, answers its length and sha256
Counters: hits[path] (path without query), connections (accepted), requests (list of
(method, target, conn)). All counters are guarded by one lock; read them with snapshot().

SilentServer: accepts TCP connections and never says anything (connect/TLS/upstream timeouts).
"""
import hashlib
import json
import socket
import ssl
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# Period of the byte pattern: prime, so a dropped or repeated chunk of any power-of-two size
# changes the digest.
_PERIOD = 1048573
_blocks = {}
_blocks_lock = threading.Lock()


def _block(seed):
    with _blocks_lock:
        b = _blocks.get(seed)
        if b is None:
            count = _PERIOD // 32 + 1
            b = b"".join(hashlib.sha256(("%s:%d" % (seed, i)).encode()).digest()
                         for i in range(count))[:_PERIOD]
            b = b + b  # so any window of up to _PERIOD bytes is one slice
            _blocks[seed] = b
        return b


def pattern_chunks(n, seed="s", chunk=262144):
    """The n-byte body of /bytes/<n>?seed=seed, as memoryview chunks (no big allocation)."""
    b = memoryview(_block(seed))
    off = 0
    while off < n:
        k = min(chunk, n - off)
        start = off % _PERIOD
        yield b[start:start + k]
        off += k


def pattern_bytes(n, seed="s"):
    return b"".join(bytes(c) for c in pattern_chunks(n, seed))


def pattern_sha256(n, seed="s"):
    h = hashlib.sha256()
    for c in pattern_chunks(n, seed, chunk=1 << 20):
        h.update(c)
    return h.hexdigest()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 60  # an idle keep-alive connection thread ends eventually
    server_version = "dduct-e2e-origin"

    def setup(self):
        self.request.settimeout(self.timeout)
        self.sni = None
        if self.server.ssl_ctx is not None:
            self.request = self.server.ssl_ctx.wrap_socket(self.request, server_side=True)
            self.sni = getattr(self.request, "dduct_sni", None)
        self.conn_id = self.server.origin._new_connection()
        super().setup()

    def log_message(self, fmt, *args):
        pass

    # Every method goes through one dispatcher.
    def __getattr__(self, name):
        if name.startswith("do_"):
            return self._dispatch
        raise AttributeError(name)

    def _read_body(self):
        te = (self.headers.get("Transfer-Encoding") or "").lower()
        if "chunked" in te:
            out = bytearray()
            while True:
                line = self.rfile.readline(65537)
                size = int(line.split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass
                    return bytes(out)
                out += self.rfile.read(size)
                self.rfile.readline(3)
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def _dispatch(self):
        url = urllib.parse.urlsplit(self.path)
        path = url.path
        query = dict(urllib.parse.parse_qsl(url.query))
        self.server.origin._hit(path, self.command, self.path, self.conn_id)
        first = path.split("/")[1] if path.count("/") else ""
        handler = getattr(self, "_ep_" + first, None)
        if path == "/slowsink":
            return self._ep_slowsink(query)
        body = self._read_body()
        if handler is None:
            return self._send(404, b"no such endpoint\n")
        return handler(path, query, body)

    def _send(self, status, body, ctype="text/plain", extra=()):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in extra:
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _ep_echo(self, path, query, body):
        doc = {
            "method": self.command,
            "target": self.path,
            "version": self.request_version,
            "headers": [[k, v] for k, v in self.headers.items()],
            "body_len": len(body),
            "body_sha256": hashlib.sha256(body).hexdigest(),
            "body": body.decode("latin-1") if len(body) < 65536 else None,
            "conn": self.conn_id,
            "tls": self.server.ssl_ctx is not None,
            "sni": self.sni,
        }
        self._send(200, json.dumps(doc).encode() + b"\n", "application/json",
                   extra=[("X-Echo-Method", self.command)])

    def _ep_bytes(self, path, query, body):
        n = int(path.split("/")[2])
        seed = query.get("seed", "s")
        mode = query.get("mode", "cl")
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("X-Body-Sha256", pattern_sha256(n, seed) if n <= (64 << 20) else "-")
        if mode == "cl":
            self.send_header("Content-Length", str(n))
        elif mode == "chunked":
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if self.command == "HEAD":
            return
        w = self.wfile
        if mode == "chunked":
            # Irregular chunk sizes exercise the proxy's chunk parser at odd boundaries.
            sizes = [1, 2, 100, 4095, 8193, 65536, 262144]
            i = 0
            for c in pattern_chunks(n, seed, chunk=262144):
                c = bytes(c)
                while c:
                    k = sizes[i % len(sizes)]
                    i += 1
                    part, c = c[:k], c[k:]
                    w.write(b"%x\r\n" % len(part) + part + b"\r\n")
            w.write(b"0\r\n\r\n")
        else:
            for c in pattern_chunks(n, seed):
                w.write(c)

    def _ep_stall(self, path, query, body):
        if query.get("head") == "1":
            self.send_response(200)
            self.send_header("Content-Length", "1000000")
            self.end_headers()
            self.wfile.write(b"x" * 1000)
        self.server.origin.stop_event.wait(120)
        self.close_connection = True

    def _ep_closemid(self, path, query, body):
        n = int(path.split("/")[2])
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(n))
        self.end_headers()
        for c in pattern_chunks(n // 2, "s"):
            self.wfile.write(c)
        self.wfile.flush()
        self.close_connection = True
        try:
            self.request.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _ep_redirect(self, path, query, body):
        k = int(path.split("/")[2])
        to = query.get("to", "/echo")
        loc = to if k <= 1 else "/redirect/%d?%s" % (k - 1, urllib.parse.urlencode({"to": to}))
        self._send(302, b"redirecting\n", extra=[("Location", loc)])

    def _ep_status(self, path, query, body):
        code = int(path.split("/")[2])
        self._send(code, b"status %d\n" % code)

    def _ep_hop(self, path, query, body):
        self._send(200, b"hop\n", extra=[("Connection", "X-Hop"), ("X-Hop", "must-not-pass"),
                                         ("Keep-Alive", "timeout=5"), ("X-End", "passes")])

    def _body_pieces(self, step=65536):
        """The request body as it arrives, content-length or chunked, in pieces <= step."""
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            while True:
                size = int(self.rfile.readline(65537).split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass
                    return
                while size:
                    c = self.rfile.read(min(step, size))
                    if not c:
                        return
                    size -= len(c)
                    yield c
                self.rfile.readline(3)
        n = int(self.headers.get("Content-Length") or 0)
        while n:
            c = self.rfile.read(min(step, n))
            if not c:
                return
            n -= len(c)
            yield c

    def _ep_slowsink(self, query):
        rate = int(query.get("rate", str(8 << 20)))
        h = hashlib.sha256()
        got = 0
        t0 = time.monotonic()
        for c in self._body_pieces():
            h.update(c)
            got += len(c)
            ahead = got / rate - (time.monotonic() - t0)
            if ahead > 0:
                time.sleep(ahead)
        doc = {"body_len": got, "body_sha256": h.hexdigest()}
        self._send(200, json.dumps(doc).encode() + b"\n", "application/json")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def handle_error(self, request, client_address):
        pass  # clients (dduct) hanging up mid-response are part of the tests


class Origin:
    """One origin server on (host, port 0). tls: (certfile, keyfile) or None; ciphers: an
    OpenSSL cipher string for TLS 1.2 (which suite dduct's upstream side gets)."""

    def __init__(self, host="127.0.0.1", tls=None, port=0, ciphers=None):
        self.stop_event = threading.Event()
        self._lock = threading.Lock()
        self.hits = {}
        self.connections = 0
        self.requests = []
        ctx = None
        if tls is not None:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(*tls)
            ctx.set_alpn_protocols(["http/1.1"])
            if ciphers is not None:
                ctx.set_ciphers(ciphers)

            def sni_cb(sslsock, name, _ctx):
                sslsock.dduct_sni = name
            ctx.sni_callback = sni_cb
        self.server = _Server((host, port), _Handler)
        self.server.ssl_ctx = ctx
        self.server.origin = self
        self.host = host
        self.port = self.server.server_address[1]
        self.scheme = "https" if tls else "http"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def url(self, host, path):
        return "%s://%s:%d%s" % (self.scheme, host, self.port, path)

    def _new_connection(self):
        with self._lock:
            self.connections += 1
            return self.connections

    def _hit(self, path, method, target, conn):
        with self._lock:
            self.hits[path] = self.hits.get(path, 0) + 1
            self.requests.append((method, target, conn))

    def count(self, path):
        with self._lock:
            return self.hits.get(path, 0)

    def snapshot(self):
        with self._lock:
            return {"hits": dict(self.hits), "connections": self.connections,
                    "requests": list(self.requests)}

    def close(self):
        self.stop_event.set()
        self.server.shutdown()
        self.server.server_close()


class SilentServer:
    """Accepts connections and never sends a byte; holds them until close()."""

    def __init__(self, host="127.0.0.1"):
        self.sock = socket.socket()
        self.sock.bind((host, 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self._conns = []
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        self.sock.settimeout(0.2)
        while not self._stop:
            try:
                c, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            self.accepted += 1
            self._conns.append(c)

    def close(self):
        self._stop = True
        self._thread.join()
        for c in self._conns:
            c.close()
        self.sock.close()


def closed_port(host="127.0.0.1"):
    """A port nothing listens on (bound then released: refused until someone takes it)."""
    s = socket.socket()
    s.bind((host, 0))
    p = s.getsockname()[1]
    s.close()
    return p

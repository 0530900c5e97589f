"""A small HTTP/1.1 client over any byte transport, for requests curl will not send.

Transports have sendall(bytes) and recv(n) -> bytes (b"" at EOF): a TCP socket, an ssl socket,
or BioTls, which runs TLS over another transport through memory BIOs. BioTls over an ssl socket
to dduct's TLS listener is TLS inside TLS, as in the seed's second curl command.
"""
import socket
import ssl

HEAD_LIMIT = 1 << 20


class Tcp:
    def __init__(self, host, port, source=None, timeout=30):
        self.sock = socket.create_connection((host, port), timeout=timeout,
                                             source_address=(source, 0) if source else None)

    @classmethod
    def wrap(cls, sock):
        """A transport over an already connected socket."""
        t = cls.__new__(cls)
        t.sock = sock
        return t

    def sendall(self, data):
        self.sock.sendall(data)

    def recv(self, n):
        return self.sock.recv(n)

    def close(self):
        self.sock.close()


class BioTls:
    """TLS client over a transport. ctx verifies; server_hostname sets SNI and the name checked."""

    def __init__(self, transport, ctx, server_hostname):
        self.t = transport
        self.inc = ssl.MemoryBIO()
        self.out = ssl.MemoryBIO()
        self.obj = ctx.wrap_bio(self.inc, self.out, server_hostname=server_hostname)
        self._run(self.obj.do_handshake)

    def _flush(self):
        data = self.out.read()
        if data:
            self.t.sendall(data)

    def _run(self, fn, *args):
        while True:
            try:
                r = fn(*args)
                self._flush()
                return r
            except ssl.SSLWantReadError:
                self._flush()
                data = self.t.recv(65536)
                if data:
                    self.inc.write(data)
                else:
                    self.inc.write_eof()

    def sendall(self, data):
        view = memoryview(data)
        while view:
            n = self._run(self.obj.write, view)
            view = view[n:]

    def recv(self, n):
        try:
            return self._run(self.obj.read, n)
        except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
            return b""

    def peer_cert_der(self):
        return self.obj.getpeercert(binary_form=True)

    def peer_cert(self):
        return self.obj.getpeercert()

    def close(self):
        try:
            self._run(self.obj.unwrap)
        except (ssl.SSLError, OSError):
            pass
        self.t.close()


class SslSock:
    """TLS client straight on a TCP socket (dduct's TLS listener)."""

    def __init__(self, tcp, ctx, server_hostname):
        self.tcp = tcp
        self.sock = ctx.wrap_socket(tcp.sock, server_hostname=server_hostname)

    def sendall(self, data):
        self.sock.sendall(data)

    def recv(self, n):
        try:
            return self.sock.recv(n)
        except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
            return b""

    def peer_cert_der(self):
        return self.sock.getpeercert(binary_form=True)

    def close(self):
        self.sock.close()


def tls_context(cafile):
    ctx = ssl.create_default_context(cafile=cafile)
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


class Response:
    def __init__(self, status, reason, headers, body, raw_head):
        self.status = status
        self.reason = reason
        self.headers = headers  # list of (name, value)
        self.body = body
        self.raw_head = raw_head

    def header(self, name, default=None):
        name = name.lower()
        for k, v in self.headers:
            if k.lower() == name:
                return v
        return default

    def header_all(self, name):
        return [v for k, v in self.headers if k.lower() == name.lower()]

    def __repr__(self):
        return "<Response %d %s, %d body bytes>" % (self.status, self.reason, len(self.body))


class Reader:
    """Buffered response reader over a transport; several responses may arrive back to back."""

    def __init__(self, transport):
        self.t = transport
        self.buf = b""
        self.eof = False

    def _fill(self):
        data = self.t.recv(65536)
        if not data:
            self.eof = True
        self.buf += data
        return bool(data)

    def read_head(self):
        while b"\r\n\r\n" not in self.buf:
            if len(self.buf) > HEAD_LIMIT:
                raise ValueError("response head too large")
            if not self._fill():
                if self.buf:
                    raise ValueError("EOF inside a response head: %r" % self.buf[:200])
                return None
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ", 2)
        status = int(parts[1])
        reason = parts[2] if len(parts) > 2 else ""
        headers = []
        for line in lines[1:]:
            k, v = line.split(":", 1)
            headers.append((k.strip(), v.strip()))
        return status, reason, headers, head

    def read_exact(self, n):
        while len(self.buf) < n:
            if not self._fill():
                raise ValueError("EOF after %d of %d body bytes" % (len(self.buf), n))
        data, self.buf = self.buf[:n], self.buf[n:]
        return data

    def read_line(self):
        while b"\r\n" not in self.buf:
            if not self._fill():
                raise ValueError("EOF inside a chunked body")
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def read_response(self, method="GET"):
        """The next final response (1xx are skipped unless it is the only thing there)."""
        while True:
            head = self.read_head()
            if head is None:
                return None
            status, reason, headers, raw = head
            if 100 <= status < 200 and status != 101:
                continue
            break
        r = Response(status, reason, headers, b"", raw)
        if method == "HEAD" or status in (204, 304) or 100 <= status < 200 or \
                (method == "CONNECT" and 200 <= status < 300):
            return r
        te = (r.header("Transfer-Encoding") or "").lower()
        if "chunked" in te:
            out = bytearray()
            while True:
                size = int(self.read_line().split(b";")[0], 16)
                if size == 0:
                    while self.read_line() != b"":
                        pass
                    break
                out += self.read_exact(size)
                self.read_line()
            r.body = bytes(out)
        elif r.header("Content-Length") is not None:
            r.body = self.read_exact(int(r.header("Content-Length")))
        else:
            while self._fill():
                pass
            r.body, self.buf = self.buf, b""
        return r

    def read_until_eof(self, limit=1 << 20):
        while len(self.buf) < limit and self._fill():
            pass
        data, self.buf = self.buf, b""
        return data


def request_bytes(method, target, host, headers=(), body=b""):
    lines = ["%s %s HTTP/1.1" % (method, target), "Host: " + host]
    lines += ["%s: %s" % kv for kv in headers]
    if body and not any(k.lower() in ("content-length", "transfer-encoding") for k, _ in headers):
        lines.append("Content-Length: %d" % len(body))
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def connect(transport, host, port):
    """Send CONNECT host:port. Returns (status, body of a refusal, Reader over the transport)."""
    authority = "%s:%d" % (host, port)
    transport.sendall(request_bytes("CONNECT", authority, authority))
    rd = Reader(transport)
    r = rd.read_response("CONNECT")
    if r is None:
        raise ValueError("proxy closed the connection without answering CONNECT")
    if r.status == 200 and rd.buf:
        raise ValueError("bytes after the CONNECT answer: %r" % rd.buf[:100])
    return r.status, r.body, rd

"""Checks the rig itself, without dduct: curl, openssl and the raw client straight at the origins.
If these fail, a failing proxy test says nothing about dduct.  Run: python3 -m dductlib.selftest
"""
import hashlib
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dductlib import client  # noqa: E402
from dductlib.harness import check_eq, curl, s_client_cert  # noqa: E402
from dductlib.origin import SilentServer, pattern_sha256  # noqa: E402
from dductlib import harness  # noqa: E402


def resolve(rig, o, name="origin.test"):
    return ["--resolve", "%s:%d:127.0.0.1" % (name, o.port), "--cacert", rig.pki.ca_crt]


def test_echo_methods_direct(rig):
    """The HTTPS origin echoes method, headers and body for every method, content-length and
    chunked uploads alike."""
    o = rig.origin
    for m in ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]:
        r = curl(rig, resolve(rig, o) + ["-X", m, "--data-binary", "hello " + m,
                                          o.url("origin.test", "/echo/x?y=1")])
        check_eq((r.rc, r.status), (0, 200), m)
        doc = r.json()
        check_eq((doc["method"], doc["body"], doc["target"], doc["sni"]),
                 (m, "hello " + m, "/echo/x?y=1", "origin.test"), m + " echo")
    r = curl(rig, resolve(rig, o) + ["-H", "Transfer-Encoding: chunked", "--data-binary",
                                      "chunky", o.url("origin.test", "/echo")])
    check_eq(r.json()["body"], "chunky", "chunked upload decoded")
    r = curl(rig, resolve(rig, o) + ["-I", o.url("origin.test", "/echo")])
    check_eq((r.rc, r.status), (0, 200), "HEAD")


def test_bytes_modes_direct(rig):
    """/bytes/<n> serves the same deterministic body with content-length, chunked and
    close-delimited framing, over HTTP and HTTPS."""
    n = 3 * 1048576 + 17
    want = pattern_sha256(n)
    for o in (rig.plain, rig.origin):
        for mode in ("cl", "chunked", "close"):
            r = curl(rig, resolve(rig, o) + [o.url("origin.test", "/bytes/%d?mode=%s" % (n, mode))])
            check_eq((r.rc, r.status, r.sha256()), (0, 200, want), "%s %s" % (o.scheme, mode))


def test_misbehaviour_direct(rig):
    """close-mid-body is a transfer error, stall times out, a redirect chain is followed,
    the bad origin is rejected with the origin CA, counters count."""
    o = rig.origin
    r = curl(rig, resolve(rig, o) + [o.url("origin.test", "/closemid/1000000")])
    check_eq(r.rc, 18, "curl: partial file")
    r = curl(rig, resolve(rig, o) + ["-m", "1", o.url("origin.test", "/stall?head=1")])
    check_eq(r.rc, 28, "curl: timeout")
    before = o.count("/redirect/1")
    r = curl(rig, resolve(rig, o) + ["-L", o.url("origin.test", "/redirect/3?to=/echo/end")])
    check_eq((r.rc, r.json()["target"]), (0, "/echo/end"), "redirect chain")
    check_eq(o.count("/redirect/1") - before, 1, "counter")
    b = rig.bad
    r = curl(rig, resolve(rig, b, "bad.test") + [b.url("bad.test", "/echo")])
    check_eq(r.rc, 60, "curl: bad certificate rejected")
    info = s_client_cert(rig, "127.0.0.1:%d" % o.port, "origin.test", cafile=rig.pki.ca_crt)
    check_eq((info["issuer_cn"], info["verify"][0]), ("dduct e2e origin CA", 0), "s_client")


def test_raw_client_direct(rig):
    """The raw client parses pipelined responses and runs TLS through memory BIOs."""
    o = rig.origin
    ctx = client.tls_context(rig.pki.ca_crt)
    t = client.BioTls(client.Tcp("127.0.0.1", o.port), ctx, "origin.test")
    reqs = b"".join(client.request_bytes("GET", "/echo/%d" % i, "origin.test") for i in range(3))
    t.sendall(reqs)
    rd = client.Reader(t)
    for i in range(3):
        r = rd.read_response()
        check_eq(json.loads(r.body)["target"], "/echo/%d" % i, "pipelined order")
    t.sendall(client.request_bytes("GET", "/bytes/100000?mode=chunked", "origin.test"))
    r = rd.read_response()
    check_eq(hashlib.sha256(r.body).hexdigest(), pattern_sha256(100000), "chunked parse")
    t.close()
    s = SilentServer()
    c = client.Tcp("127.0.0.1", s.port)
    c.close()
    s.close()


if __name__ == "__main__":
    if not os.environ.get("DDUCT_BIN"):
        os.environ["DDUCT_BIN"] = "/bin/true"  # the rig checks do not run dduct
    harness.run([test_echo_methods_direct, test_bytes_modes_direct, test_misbehaviour_direct,
                 test_raw_client_direct])

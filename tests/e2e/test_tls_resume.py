#!/usr/bin/env python3
"""TLS session tickets: a client returning to an intercepted host resumes its session (no new
key exchange, no signature), a ticket from another dduct process is refused (its key is random
per process), and a resumed connection serves requests like a new one."""
import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from dductlib.harness import check, check_eq, clean_env, run  # noqa: E402


def s_client(rig, d, host, port, sess_in=None, sess_out=None, request=None):
    """openssl s_client through dduct's CONNECT: its whole output."""
    argv = ["openssl", "s_client", "-connect", "%s:%d" % (host, port), "-servername", host,
            "-proxy", "127.0.0.1:%d" % d.tcp_port, "-CAfile", d.ca_crt, "-verify_hostname", host,
            "-tls1_2"] + (["-ign_eof"] if request else [])
    if sess_in:
        argv += ["-sess_in", sess_in]
    if sess_out:
        argv += ["-sess_out", sess_out]
    data = request if request else b"Q\n"
    p = subprocess.run(argv, input=data, capture_output=True, env=clean_env(rig.home), timeout=60)
    return p.stdout.decode("utf-8", "replace") + p.stderr.decode("utf-8", "replace")


def test_returning_client_resumes(rig):
    """The first connection is a full handshake that hands out a ticket; the second, offering
    it, resumes, verifies and gets its answer from the origin through dduct."""
    o = rig.origin
    tmp = tempfile.mkdtemp(prefix="resume-", dir=rig.tmp)
    sess = os.path.join(tmp, "sess.pem")
    with rig.dduct() as d:
        out = s_client(rig, d, "origin.test", o.port, sess_out=sess)
        check("New, TLSv1.2" in out, "first connection: a full handshake", out[-1500:])
        check("TLS session ticket lifetime hint" in out, "dduct hands out a session ticket",
              out[-1500:])
        req = ("GET /echo/resumed HTTP/1.1\r\nHost: origin.test:%d\r\nConnection: close\r\n\r\n"
               % o.port).encode()
        out = s_client(rig, d, "origin.test", o.port, sess_in=sess, request=req)
        check("Reused, TLSv1.2" in out, "second connection resumes the session", out[-1500:])
        check("Verify return code: 0 (ok)" in out, "the resumed session still verifies",
              out[-1500:])
        check("HTTP/1.1 200" in out and "/echo/resumed" in out,
              "a request on the resumed session reaches the origin", out[-1500:])
    with rig.dduct() as d:
        out = s_client(rig, d, "origin.test", o.port, sess_in=sess)
        check("New, TLSv1.2" in out and "Reused" not in out,
              "another dduct process does not accept the ticket: full handshake", out[-1500:])
        check_eq("Verify return code: 0 (ok)" in out, True, "and that handshake verifies")


if __name__ == "__main__":
    run([test_returning_client_resumes])

#!/usr/bin/env python3
"""Issue 16's CA hardening, checked with openssl on what the real dduct writes: nameConstraints
on a new CA (ca_name_constraints), pathlen:0 on every new CA, server.crt capped at 825 days, and
loose permissions on an existing cert_dir and key files fixed with a WARN."""
import os
import shutil
import stat
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from dductlib.harness import check, check_eq, run, s_client_cert  # noqa: E402

DAY = 86400


def openssl(*args, cwd=None):
    return subprocess.run(["openssl"] + list(args), capture_output=True, text=True, cwd=cwd,
                          timeout=120)


def fresh_cert_dir(rig, name):
    d = os.path.join(rig.tmp, name)
    shutil.rmtree(d, ignore_errors=True)
    return d


def test_name_constraints_limit_a_stolen_key(rig):
    """With ca_name_constraints = true a new CA carries a critical nameConstraints extension
    permitting exactly the SAN entries (a '*.wild.test' entry as wild.test) and the IP, and
    pathlen:0; dduct's own leaves verify under it; a certificate for another name signed with
    ca.key itself (as a thief would) is refused by openssl verify."""
    certs = fresh_cert_dir(rig, "nc-certs")
    with rig.dduct(cert_dir=certs, certs={"ca_name_constraints": True}) as d:
        text = openssl("x509", "-in", d.ca_crt, "-noout", "-text").stdout
        check("X509v3 Name Constraints: critical" in text, "critical nameConstraints", text)
        for want in ("DNS:origin.test", "DNS:wild.test", "DNS:bad.test",
                     "IP:127.0.0.1/255.255.255.255", "pathlen:0"):
            check(want in text, want + " in ca.crt", text)
        check("DNS:*.wild.test" not in text, "wildcards are written as their base", text)
        info = s_client_cert(rig, "x.wild.test:%d" % rig.origin.port, "x.wild.test",
                             proxy="127.0.0.1:%d" % d.tcp_port, cafile=d.ca_crt)
        check_eq(info["verify"], (0, "ok"), "a leaf dduct minted verifies under the constraints")
        w = os.path.join(d.dir, "thief")
        os.makedirs(w)
        for args in (["genrsa", "-out", "k.pem", "2048"],
                     ["req", "-new", "-key", "k.pem", "-subj", "/CN=evil.example",
                      "-addext", "subjectAltName=DNS:evil.example", "-out", "r.pem"],
                     ["x509", "-req", "-in", "r.pem", "-CA", d.ca_crt, "-CAkey",
                      os.path.join(certs, "ca.key"), "-CAcreateserial", "-days", "10",
                      "-copy_extensions", "copy", "-out", "evil.pem"],
                     ["req", "-new", "-key", "k.pem", "-subj", "/CN=y.wild.test",
                      "-addext", "subjectAltName=DNS:y.wild.test", "-out", "r2.pem"],
                     ["x509", "-req", "-in", "r2.pem", "-CA", d.ca_crt, "-CAkey",
                      os.path.join(certs, "ca.key"), "-CAcreateserial", "-days", "10",
                      "-copy_extensions", "copy", "-out", "inside.pem"]):
            r = openssl(*args, cwd=w)
            check(r.returncode == 0, "openssl " + " ".join(args[:2]), r.stderr)
        r = openssl("verify", "-CAfile", d.ca_crt, "evil.pem", cwd=w)
        check(r.returncode != 0 and "permitted subtree violation" in r.stdout + r.stderr,
              "a certificate for evil.example signed with ca.key is refused", r.stdout + r.stderr)
        r = openssl("verify", "-CAfile", d.ca_crt, "inside.pem", cwd=w)
        check(r.returncode == 0, "one for a permitted name verifies (the check is the names)",
              r.stdout + r.stderr)


def test_defaults_pathlen_and_server_validity(rig):
    """By default a new CA has pathlen:0 and no nameConstraints, and with days_from_now = 3072
    server.crt is valid for 825 days (logged), the CA and client.crt for 3072."""
    certs = fresh_cert_dir(rig, "default-certs")
    with rig.dduct(cert_dir=certs, certs={"days_from_now": 3072}) as d:
        text = openssl("x509", "-in", d.ca_crt, "-noout", "-text").stdout
        check("pathlen:0" in text and "Name Constraints" not in text,
              "pathlen:0, no nameConstraints", text)
        srv = os.path.join(certs, "server.crt")
        check(openssl("x509", "-in", srv, "-noout", "-checkend", str(824 * DAY)).returncode == 0
              and openssl("x509", "-in", srv, "-noout", "-checkend",
                          str(826 * DAY)).returncode != 0,
              "server.crt is valid for 825 days")
        check(openssl("x509", "-in", d.ca_crt, "-noout", "-checkend",
                      str(3000 * DAY)).returncode == 0, "the CA keeps days_from_now")
        log = d.stop()
        check("is valid for 825 days, not days_from_now (3072)" in log, "the cap is logged",
              log[-3000:])


def test_loose_permissions_are_fixed(rig):
    """A cert_dir left 0755 and a ca.key and server.p12 left 0644 by an earlier hand: dduct makes
    them 0700 and 0600 before using them, with a WARN for each."""
    with rig.dduct() as d:
        certs = d.cert_dir
    os.chmod(certs, 0o755)
    os.chmod(os.path.join(certs, "ca.key"), 0o644)
    os.chmod(os.path.join(certs, "server.p12"), 0o644)
    with rig.dduct(cert_dir=certs) as d:
        log = d.stop()
    mode = lambda p: stat.S_IMODE(os.stat(p).st_mode)  # noqa: E731
    check_eq((oct(mode(certs)), oct(mode(os.path.join(certs, "ca.key"))),
              oct(mode(os.path.join(certs, "server.p12")))), ("0o700", "0o600", "0o600"),
             "modes after the start")
    check(log.count("was accessible to other users") == 3, "three WARN lines", log[-3000:])


if __name__ == "__main__":
    run([test_name_constraints_limit_a_stolen_key, test_defaults_pathlen_and_server_validity,
         test_loose_permissions_are_fixed])

#!/usr/bin/env python3
"""The static executable (meson setup B -Dstatic=true): no shared libraries, and it serves the
seed's two curl commands from inside an empty directory used as root, where it finds the
origin through /etc/hosts alone and trusts it through the CA bundle alone."""
import os
import shutil
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "e2e"))
sys.path.insert(0, HERE)

import artifacts  # noqa: E402
from dductlib.harness import check, check_eq, curl, free_port, run, LISTENING  # noqa: E402
from dductlib.origin import pattern_sha256  # noqa: E402

N = 3 * 1048576 + 5


def test_not_dynamic(rig):
    """ldd says "not a dynamic executable" and the ELF has no interpreter (PT_INTERP)."""
    exe = artifacts.static_binary()
    p = subprocess.run(["ldd", exe], capture_output=True, text=True)
    check("not a dynamic executable" in p.stdout + p.stderr, "ldd output", p.stdout + p.stderr)
    p = subprocess.run(["readelf", "-l", exe], capture_output=True, text=True)
    check_eq(p.returncode, 0, "readelf")
    check("INTERP" not in p.stdout, "no program interpreter", p.stdout[:2000])
    p = subprocess.run([exe, "--version"], capture_output=True, text=True)
    check_eq((p.returncode, p.stdout.split()[0]), (0, "dduct"), "dduct --version")


def make_root(rig, origin_ca):
    root = os.path.join(rig.tmp, "root")
    for d in ("etc/ssl/certs", "var/tmp/dduct"):
        os.makedirs(os.path.join(root, d))
    shutil.copy(artifacts.static_binary(), os.path.join(root, "dduct"))
    with open(os.path.join(root, "etc/hosts"), "w") as f:
        f.write("127.0.0.1 origin.test\n")
    shutil.copy(origin_ca, os.path.join(root, "etc/ssl/certs/ca-certificates.crt"))
    return root


def test_seed_curls_in_empty_root(rig):
    """In a root holding only the binary, its config, /etc/hosts (origin.test -> 127.0.0.1) and
    /etc/ssl/certs/ca-certificates.crt (the test origin's CA): dduct writes its CA and keys,
    and the seed's curl commands through the plain and the TLS listener both get the origin's
    bytes for a .txz on a non-443 port; the second is a cache hit (the origin sees one GET)."""
    o = rig.origin
    root = make_root(rig, rig.pki.ca_crt)
    tcp, tls = free_port(), free_port()
    with open(os.path.join(root, "var/tmp/dduct/dduct.toml"), "w") as f:
        f.write("[misc]\nlog_level = 'info'\ncert_dir = '/var/tmp/dduct/certs/'\n"
                "file_dir = '/var/tmp/dduct/files/'\n"
                "[proxy]\ntcp_bind = '127.0.0.1:%d'\ntls_bind = '127.0.0.1:%d'\n"
                "[certs]\nrsa_key_bits = 2048\nserver_dns_sans = ['origin.test']\n"
                % (tcp, tls))
    listing = os.listdir(root)
    check_eq(sorted(listing), ["dduct", "etc", "var"], "the root's top level")
    err_path = os.path.join(rig.tmp, "dduct.err")
    err = open(err_path, "w")
    proc = subprocess.Popen([shutil.which("unshare"), "-r", shutil.which("chroot"), root, "/dduct", "--cfg",
                             "/var/tmp/dduct/dduct.toml"], stdout=err, stderr=err, cwd="/",
                            env={"PATH": "/"})
    try:
        deadline = time.monotonic() + 120
        while True:
            log = open(err_path).read()
            if len(LISTENING.findall(log)) == 2:
                break
            check(proc.poll() is None and time.monotonic() < deadline, "dduct starts", log)
            time.sleep(0.1)
        ca = os.path.join(root, "var/tmp/dduct/certs/ca.crt")
        check(os.path.exists(ca), "ca.crt written inside the root")
        url = o.url("origin.test", "/bytes/%d/here.txz" % N)
        check(":443/" not in url, "origin on a non-443 port", url)
        cwd1 = os.path.join(rig.tmp, "c1")
        os.mkdir(cwd1)
        r = curl(rig, ["-fv", "-x", "http://127.0.0.1:%d" % tcp, "--cacert", ca, "-LO", url],
                 cwd=cwd1, output=False)
        check_eq((r.rc, r.status), (0, 200), "seed curl through the plain listener (%s)"
                 % r.stderr[-1500:])
        got = artifacts.sha256(os.path.join(cwd1, "here.txz"))
        check_eq(got, pattern_sha256(N), "bytes through the plain listener")
        cwd2 = os.path.join(rig.tmp, "c2")
        os.mkdir(cwd2)
        r = curl(rig, ["-fv", "--proxy-cacert", ca, "-x", "https://127.0.0.1:%d" % tls,
                       "--cacert", ca, "-LO", url], cwd=cwd2, output=False)
        check_eq((r.rc, r.status), (0, 200), "seed curl through the TLS listener (%s)"
                 % r.stderr[-1500:])
        check_eq(artifacts.sha256(os.path.join(cwd2, "here.txz")), pattern_sha256(N),
                 "bytes through the TLS listener")
        check_eq(o.snapshot()["hits"].get("/bytes/%d/here.txz" % N), 1,
                 "one GET at the origin: the second curl was a cache hit")
        files = [f for _, _, fs in os.walk(os.path.join(root, "var/tmp/dduct/files")) for f in fs]
        check(len(files) >= 1, "the cache is inside the root", files)
    finally:
        proc.terminate()
        rc = proc.wait(timeout=60)
        err.close()
    check_eq(rc, 0, "clean exit on SIGTERM (%s)" % open(err_path).read()[-2000:])


if __name__ == "__main__":
    run([test_not_dynamic, test_seed_curls_in_empty_root])

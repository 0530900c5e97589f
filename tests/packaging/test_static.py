#!/usr/bin/env python3
"""The static executable (meson setup B -Dstatic=true): no shared libraries, and it serves the
seed's two curl commands from inside an empty directory used as root, where it finds the
origin through /etc/hosts alone and trusts it through the CA bundle alone; with a
resolv.conf (and an nsswitch.conf naming modules a static binary must not load) it finds a
name through DNS."""
import contextlib
import os
import shutil
import socket
import struct
import subprocess
import sys
import threading
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


def make_root(rig, name, origin_ca, files):
    root = os.path.join(rig.tmp, name)
    for d in ("etc/ssl/certs", "var/tmp/dduct"):
        os.makedirs(os.path.join(root, d))
    shutil.copy(artifacts.static_binary(), os.path.join(root, "dduct"))
    shutil.copy(origin_ca, os.path.join(root, "etc/ssl/certs/ca-certificates.crt"))
    for path, text in files.items():
        with open(os.path.join(root, path), "w") as f:
            f.write(text)
    return root


@contextlib.contextmanager
def dduct_in_root(rig, root, sans):
    """dduct started from root as its / (unshare -r chroot), the seed's paths; yields
    (tcp_port, tls_port, ca.crt path); stops it and checks a clean exit."""
    tcp, tls = free_port(), free_port()
    with open(os.path.join(root, "var/tmp/dduct/dduct.toml"), "w") as f:
        f.write("[misc]\nlog_level = 'info'\ncert_dir = '/var/tmp/dduct/certs/'\n"
                "file_dir = '/var/tmp/dduct/files/'\n"
                "[proxy]\ntcp_bind = '127.0.0.1:%d'\ntls_bind = '127.0.0.1:%d'\nadmin_bind = ''\n"
                "[certs]\nrsa_key_bits = 2048\nserver_dns_sans = [%s]\n"
                % (tcp, tls, ", ".join("'%s'" % n for n in sans)))
    err_path = os.path.join(rig.tmp, os.path.basename(root) + ".err")
    err = open(err_path, "w")
    proc = subprocess.Popen([shutil.which("unshare"), "-r", shutil.which("chroot"), root,
                             "/dduct", "--cfg", "/var/tmp/dduct/dduct.toml"],
                            stdout=err, stderr=err, cwd="/", env={"PATH": "/"})
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
        yield tcp, tls, ca
    finally:
        proc.terminate()
        rc = proc.wait(timeout=60)
        err.close()
    check_eq(rc, 0, "clean exit on SIGTERM (%s)" % open(err_path).read()[-2000:])


def seed_curl(rig, name, argv, url):
    """One of the seed README's curl commands (-fv ... -LO URL) in a fresh directory: the
    path of the file it wrote."""
    cwd = os.path.join(rig.tmp, name)
    os.mkdir(cwd)
    r = curl(rig, ["-fv"] + argv + ["-LO", url], cwd=cwd, output=False)
    check_eq((r.rc, r.status), (0, 200), "%s (%s)" % (name, r.stderr[-1500:]))
    return os.path.join(cwd, url.rsplit("/", 1)[1])


def test_seed_curls_in_empty_root(rig):
    """In a root holding only the binary, its config, /etc/hosts (origin.test -> 127.0.0.1) and
    /etc/ssl/certs/ca-certificates.crt (the test origin's CA): dduct writes its CA and keys,
    and the seed's curl commands through the plain and the TLS listener both get the origin's
    bytes for a .txz on a non-443 port; the second is a cache hit (the origin sees one GET)."""
    o = rig.origin
    root = make_root(rig, "root", rig.pki.ca_crt, {"etc/hosts": "127.0.0.1 origin.test\n"})
    check_eq(sorted(os.listdir(root)), ["dduct", "etc", "var"], "the root's top level")
    with dduct_in_root(rig, root, ["origin.test"]) as (tcp, tls, ca):
        url = o.url("origin.test", "/bytes/%d/here.txz" % N)
        check(":443/" not in url, "origin on a non-443 port", url)
        got = seed_curl(rig, "plain", ["-x", "http://127.0.0.1:%d" % tcp, "--cacert", ca], url)
        check_eq(artifacts.sha256(got), pattern_sha256(N), "bytes through the plain listener")
        got = seed_curl(rig, "tls", ["--proxy-cacert", ca, "-x", "https://127.0.0.1:%d" % tls,
                                     "--cacert", ca], url)
        check_eq(artifacts.sha256(got), pattern_sha256(N), "bytes through the TLS listener")
        check_eq(o.snapshot()["hits"].get("/bytes/%d/here.txz" % N), 1,
                 "one GET at the origin: the second curl was a cache hit")
        files = [f for _, _, fs in os.walk(os.path.join(root, "var/tmp/dduct/files")) for f in fs]
        check(len(files) >= 1, "the cache is inside the root", files)


class TinyDns:
    """Answers A queries for one name with 127.0.0.1 (NOERROR and no answer for anything
    else) on ADDR:53, UDP; counts the queries for that name."""

    def __init__(self, addr, name):
        self.name = name
        self.hits = 0
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((addr, 53))
        self.sock.settimeout(0.2)
        self.stopped = False
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while not self.stopped:
            try:
                q, peer = self.sock.recvfrom(512)
            except socket.timeout:
                continue
            labels, i = [], 12
            while i < len(q) and q[i] != 0:
                labels.append(q[i + 1:i + 1 + q[i]].decode("ascii", "replace"))
                i += 1 + q[i]
            qtype = struct.unpack("!H", q[i + 1:i + 3])[0]
            question = q[12:i + 5]
            ok = ".".join(labels).lower() == self.name and qtype == 1
            self.hits += ".".join(labels).lower() == self.name
            head = q[:2] + struct.pack("!HHHHH", 0x8180, 1, 1 if ok else 0, 0, 0)
            answer = (b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 60, 4) +
                      socket.inet_aton("127.0.0.1")) if ok else b""
            self.sock.sendto(head + question + answer, peer)

    def close(self):
        self.stopped = True
        self.thread.join()
        self.sock.close()


def test_dns_in_empty_root(rig):
    """The same root with /etc/resolv.conf instead of a hosts entry: dduct (glibc's built-in
    dns module, nothing loaded) asks the nameserver it names (a tiny DNS server on
    127.0.0.77:53) for x.wild.test and serves the seed's curl through it. Needs root for port
    53; skipped otherwise."""
    if os.geteuid() != 0:
        print("# not root: no DNS server on port 53, skipped")
        return
    o = rig.origin
    dns = TinyDns("127.0.0.77", "x.wild.test")
    try:
        root = make_root(rig, "root-dns", rig.pki.ca_crt, {
            "etc/hosts": "127.0.0.1 localhost\n",
            "etc/resolv.conf": "nameserver 127.0.0.77\noptions timeout:2 attempts:2\n",
            "etc/nsswitch.conf": "hosts: files mdns4_minimal [NOTFOUND=return] resolve dns\n"})
        with dduct_in_root(rig, root, ["x.wild.test"]) as (tcp, tls, ca):
            url = o.url("x.wild.test", "/bytes/%d/dns.txz" % N)
            got = seed_curl(rig, "dns", ["-x", "http://127.0.0.1:%d" % tcp, "--cacert", ca], url)
            check_eq(artifacts.sha256(got), pattern_sha256(N), "bytes from a name found by DNS")
        check(dns.hits >= 1, "dduct asked the nameserver", dns.hits)
    finally:
        dns.close()


if __name__ == "__main__":
    run([test_not_dynamic, test_seed_curls_in_empty_root, test_dns_in_empty_root])

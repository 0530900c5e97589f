#!/usr/bin/env python3
"""The OCI image (deploy/oci/mkimage.py, no container daemon): reproducible (two static builds
of this commit in different directories, two image builds: one digest), accepted by skopeo
(inspect, copy to dir:), configured as documented (non-root user, volumes, entrypoint), and
the binary in its layer runs: extracted as a root file system it serves on its shipped config
as the image's user, in a private network namespace, and answers /healthz."""
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "e2e"))
sys.path.insert(0, HERE)

import artifacts  # noqa: E402
from dductlib.harness import check, check_eq, run, LISTENING  # noqa: E402

MKIMAGE = os.path.join(artifacts.SRC, "deploy", "oci", "mkimage.py")
STATE = {}


def mkimage(rig, binary, name):
    out = os.path.join(rig.tmp, name)
    p = subprocess.run([sys.executable, MKIMAGE, "--binary", binary, "--out", out, "--tag",
                        "test"], capture_output=True, text=True)
    check_eq(p.returncode, 0, "mkimage.py (%s)" % p.stderr[-2000:])
    digest = p.stdout.split()[0]
    check(re.match(r"^sha256:[0-9a-f]{64}$", digest) is not None, "digest printed", p.stdout)
    return out, digest


def test_reproducible(rig):
    """The static executable built twice from this commit, in two directories, is the same
    file; images built from each have one manifest digest, and the layouts are identical."""
    a = artifacts.static_binary()
    b = artifacts.static_binary("static-again")
    check_eq(artifacts.sha256(a), artifacts.sha256(b), "two static builds of one commit")
    out1, d1 = mkimage(rig, a, "oci-1")
    out2, d2 = mkimage(rig, b, "oci-2")
    check_eq(d1, d2, "manifest digest of two image builds")
    files = lambda d: sorted(os.path.relpath(os.path.join(r, f), d)
                             for r, _, fs in os.walk(d) for f in fs)
    check_eq(files(out1), files(out2), "the same blobs")
    for f in files(out1):
        check_eq(artifacts.sha256(os.path.join(out1, f)), artifacts.sha256(os.path.join(out2, f)),
                 f)
    STATE["image"], STATE["digest"] = out1, d1
    print("# image digest %s" % d1)


def skopeo(*args):
    p = subprocess.run(["skopeo"] + list(args), capture_output=True, text=True)
    check_eq(p.returncode, 0, "skopeo %s (%s)" % (" ".join(args), p.stderr[-2000:]))
    return p.stdout


def test_skopeo(rig):
    """skopeo inspect reads the layout (digest as built, linux/amd64) and its config (user
    65532:65532, volumes /etc/dduct, /var/lib/dduct, /var/cache/dduct, entrypoint
    /usr/bin/dduct --cfg /etc/dduct/dduct.toml); skopeo copy to dir: writes the manifest and
    every blob, each matching its digest."""
    img = "oci:%s:test" % STATE["image"]
    info = json.loads(skopeo("inspect", img))
    check_eq((info["Digest"], info["Architecture"], info["Os"]),
             (STATE["digest"], "amd64", "linux"), "skopeo inspect")
    cfg = json.loads(skopeo("inspect", "--config", img))["config"]
    check_eq(cfg["User"], "65532:65532", "non-root user")
    check_eq(sorted(cfg["Volumes"]), ["/etc/dduct", "/var/cache/dduct", "/var/lib/dduct"],
             "volumes")
    check_eq(cfg["Entrypoint"] + cfg["Cmd"],
             ["/usr/bin/dduct", "--cfg", "/etc/dduct/dduct.toml"], "entrypoint")
    dest = os.path.join(rig.tmp, "copied")
    skopeo("copy", "--quiet", img, "dir:" + dest)
    with open(os.path.join(dest, "manifest.json")) as f:
        manifest = json.load(f)
    for desc in [manifest["config"]] + manifest["layers"]:
        hexd = desc["digest"].split(":")[1]
        check_eq(artifacts.sha256(os.path.join(dest, hexd)), hexd, "copied blob")


def extract(rig):
    """The image's single layer unpacked as a root file system (owners kept: we are root)."""
    with open(os.path.join(STATE["image"], "index.json")) as f:
        mdigest = json.load(f)["manifests"][0]["digest"].split(":")[1]
    with open(os.path.join(STATE["image"], "blobs", "sha256", mdigest)) as f:
        manifest = json.load(f)
    check_eq(len(manifest["layers"]), 1, "one layer on an empty base")
    layer = os.path.join(STATE["image"], "blobs", "sha256",
                         manifest["layers"][0]["digest"].split(":")[1])
    root = os.path.join(rig.tmp, "rootfs")
    with tarfile.open(layer, "r:gz") as t:
        names = t.getnames()
        check("usr/bin/dduct" in names, "the binary in the layer", names)
        t.extractall(root, numeric_owner=True)
    return root


def test_binary_runs(rig):
    """From the extracted layer, as 65532:65532 (chroot --userspec) in a private network
    namespace: dduct --check passes on the image's config; dduct serves: both proxy
    listeners and /healthz on the admin listener answer, its CA is written in the
    /var/lib/dduct volume as the image's user; SIGTERM exits 0."""
    if os.geteuid() != 0:
        print("# not root: --version only")
    root = extract(rig)
    exe = os.path.join(root, "usr/bin/dduct")
    p = subprocess.run([exe, "--version"], capture_output=True, text=True)
    check_eq(p.returncode, 0, "the extracted binary runs")
    if os.geteuid() != 0:
        return
    chroot = [shutil.which("chroot"), "--userspec=65532:65532", root, "/usr/bin/dduct", "--cfg",
              "/etc/dduct/dduct.toml"]
    p = subprocess.run(chroot + ["--check"], capture_output=True, text=True, env={})
    check_eq(p.returncode, 0, "--check on the image's config (%s)" % p.stderr)
    log_path = os.path.join(rig.tmp, "image-run.log")
    with open(log_path, "w") as log:
        proc = subprocess.Popen(["unshare", "-n", "sh", "-c", 'ip link set lo up && exec "$@"',
                                 "sh"] + chroot, stdout=log, stderr=subprocess.STDOUT,
                                env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
    try:
        deadline = time.monotonic() + 300
        while len(LISTENING.findall(open(log_path).read())) < 2:
            check(proc.poll() is None and time.monotonic() < deadline, "dduct starts",
                  open(log_path).read()[-3000:])
            time.sleep(0.2)
        time.sleep(0.5)  # the admin listener logs its own line; give it a moment
        code = ("import socket, sys\n"
                "for port in (8000, 4430): socket.create_connection(('127.0.0.1', port), 5).close()\n"
                "s = socket.create_connection(('127.0.0.1', 8001), 5)\n"
                "s.sendall(b'GET /healthz HTTP/1.1\\r\\nHost: x\\r\\nConnection: close\\r\\n\\r\\n')\n"
                "data = b''\n"
                "while True:\n"
                "    b = s.recv(4096)\n"
                "    if not b: break\n"
                "    data += b\n"
                "sys.stdout.write(data.decode('latin-1'))\n")
        p = subprocess.run(["nsenter", "-t", str(proc.pid), "-n", sys.executable, "-c", code],
                           capture_output=True, text=True)
        check_eq(p.returncode, 0, "listeners answer (%s)" % p.stderr[-1000:])
        check(p.stdout.startswith("HTTP/1.1 200"), "/healthz answers 200", p.stdout[:500])
        st = os.stat(os.path.join(root, "var/lib/dduct/certs/ca.key"))
        check_eq((st.st_uid, st.st_mode & 0o777), (65532, 0o600), "ca.key in the volume")
    finally:
        proc.terminate()
        rc = proc.wait(timeout=60)
    check_eq(rc, 0, "clean exit (%s)" % open(log_path).read()[-2000:])


if __name__ == "__main__":
    run([test_reproducible, test_skopeo, test_binary_runs])

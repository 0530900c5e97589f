#!/usr/bin/env python3
"""Write dduct's OCI image as an OCI image layout directory, with no container daemon.

    deploy/oci/mkimage.py --binary build-static/cli/dduct --out dduct-oci [--tag 0.1.0]

The image is one layer on an empty base: the static executable (meson -Dstatic=true), its
config, the CA bundle of the machine that builds it (to verify origins), /etc/passwd and
/etc/group naming the non-root user dduct (65532), and its data directories, which the image
declares as volumes. Everything that could vary between two builds of the same commit is
fixed: entries sorted, owners numeric, every mtime and the created time SOURCE_DATE_EPOCH
(default: the commit time of HEAD, else 0), gzip without name or time. So the digest depends
only on the binary, the config and the CA bundle: same commit, same machine, same digest.

Then: skopeo copy oci:dduct-oci:0.1.0 docker://registry.example/dduct:0.1.0 (or
docker-archive:, containers-storage:, ...).
"""
import argparse
import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
import time

UID = GID = 65532
HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.dirname(os.path.dirname(HERE))

PASSWD = "root:x:0:0:root:/root:/sbin/nologin\ndduct:x:%d:%d:dduct:/var/lib/dduct:/sbin/nologin\n" \
    % (UID, GID)
GROUP = "root:x:0:\ndduct:x:%d:\n" % GID


def epoch():
    if os.environ.get("SOURCE_DATE_EPOCH"):
        return int(os.environ["SOURCE_DATE_EPOCH"])
    p = subprocess.run(["git", "-C", SRC, "log", "-1", "--format=%ct"], capture_output=True,
                       text=True)
    return int(p.stdout.strip()) if p.returncode == 0 and p.stdout.strip() else 0


def layer(binary, config_toml, ca_bundle, mtime):
    """The uncompressed layer tar: (path, mode, uid, content or None for a directory)."""
    with open(binary, "rb") as f:
        exe = f.read()
    with open(ca_bundle, "rb") as f:
        bundle = f.read()
    entries = [
        ("etc", 0o755, 0, None),
        ("etc/dduct", 0o755, 0, None),
        ("etc/dduct/dduct.toml", 0o644, 0, config_toml),
        ("etc/group", 0o644, 0, GROUP.encode()),
        ("etc/passwd", 0o644, 0, PASSWD.encode()),
        ("etc/ssl", 0o755, 0, None),
        ("etc/ssl/certs", 0o755, 0, None),
        ("etc/ssl/certs/ca-certificates.crt", 0o644, 0, bundle),
        ("tmp", 0o1777, 0, None),
        ("usr", 0o755, 0, None),
        ("usr/bin", 0o755, 0, None),
        ("usr/bin/dduct", 0o755, 0, exe),
        ("var", 0o755, 0, None),
        ("var/cache", 0o755, 0, None),
        ("var/cache/dduct", 0o750, UID, None),
        ("var/lib", 0o755, 0, None),
        ("var/lib/dduct", 0o700, UID, None),
    ]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path, mode, uid, data in sorted(entries):
            ti = tarfile.TarInfo(path)
            ti.mode, ti.uid, ti.gid, ti.mtime = mode, uid, uid, mtime
            ti.uname = ti.gname = ""
            if data is None:
                ti.type = tarfile.DIRTYPE
                tar.addfile(ti)
            else:
                ti.size = len(data)
                tar.addfile(ti, io.BytesIO(data))
    return buf.getvalue()


def blob(out, data):
    digest = hashlib.sha256(data).hexdigest()
    with open(os.path.join(out, "blobs", "sha256", digest), "wb") as f:
        f.write(data)
    return "sha256:" + digest


def jdump(obj):
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def build(binary, config_path, ca_bundle, out, tag, version):
    mtime = epoch()
    created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(mtime))
    with open(config_path, "rb") as f:
        config_toml = f.read()
    tar = layer(binary, config_toml, ca_bundle, mtime)
    gz = io.BytesIO()
    with gzip.GzipFile(fileobj=gz, mode="wb", compresslevel=9, mtime=0, filename="") as z:
        z.write(tar)
    gz = gz.getvalue()

    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(os.path.join(out, "blobs", "sha256"))
    layer_digest = blob(out, gz)
    labels = {
        "org.opencontainers.image.title": "dduct",
        "org.opencontainers.image.description":
            "caching man-in-the-middle HTTP(S) proxy (static executable, non-root)",
        "org.opencontainers.image.version": version,
        "org.opencontainers.image.licenses": "MIT",
        "org.opencontainers.image.created": created,
    }
    config = {
        "architecture": "amd64",
        "os": "linux",
        "created": created,
        "author": "dduct developers",
        "config": {
            "User": "%d:%d" % (UID, GID),
            "Entrypoint": ["/usr/bin/dduct"],
            "Cmd": ["--cfg", "/etc/dduct/dduct.toml"],
            "WorkingDir": "/var/lib/dduct",
            "Env": ["PATH=/usr/bin"],
            "ExposedPorts": {"8000/tcp": {}, "4430/tcp": {}, "8001/tcp": {}},
            "Volumes": {"/etc/dduct": {}, "/var/lib/dduct": {}, "/var/cache/dduct": {}},
            "StopSignal": "SIGTERM",
            "Labels": labels,
        },
        "rootfs": {"type": "layers",
                   "diff_ids": ["sha256:" + hashlib.sha256(tar).hexdigest()]},
        "history": [{"created": created, "created_by": "deploy/oci/mkimage.py"}],
    }
    config_bytes = jdump(config)
    config_digest = blob(out, config_bytes)
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": config_digest, "size": len(config_bytes)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": layer_digest, "size": len(gz)}],
        "annotations": labels,
    }
    manifest_bytes = jdump(manifest)
    manifest_digest = blob(out, manifest_bytes)
    index = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                       "digest": manifest_digest, "size": len(manifest_bytes),
                       "platform": {"architecture": "amd64", "os": "linux"},
                       "annotations": {"org.opencontainers.image.ref.name": tag}}],
    }
    with open(os.path.join(out, "index.json"), "wb") as f:
        f.write(jdump(index))
    with open(os.path.join(out, "oci-layout"), "wb") as f:
        f.write(jdump({"imageLayoutVersion": "1.0.0"}))
    return manifest_digest


def project_version():
    with open(os.path.join(SRC, "meson.build")) as f:
        for line in f:
            line = line.strip()
            if line.startswith("version:"):
                return line.split("'")[1]
    return "0"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--binary", required=True, help="the static dduct (meson -Dstatic=true)")
    ap.add_argument("--out", required=True, help="the OCI layout directory to (re)write")
    ap.add_argument("--config", default=os.path.join(HERE, "dduct.toml"))
    ap.add_argument("--ca-bundle", default="/etc/ssl/certs/ca-certificates.crt")
    ap.add_argument("--tag", default=None, help="reference name (default: the version)")
    a = ap.parse_args()
    p = subprocess.run(["ldd", a.binary], capture_output=True, text=True)
    if "not a dynamic executable" not in p.stdout + p.stderr:
        ap.error("%s is not a static executable (build it with meson -Dstatic=true)" % a.binary)
    version = project_version()
    digest = build(a.binary, a.config, a.ca_bundle, a.out, a.tag or version, version)
    print("%s %s:%s" % (digest, a.out, a.tag or version))


if __name__ == "__main__":
    main()

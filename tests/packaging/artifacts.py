"""The shipped artifacts, each built once per build tree and shared by the tests that need it.

DDUCT_SRC is the source tree, DDUCT_PKG_CACHE the cache dir (in the meson build tree). Each
artifact is built under a lock into its own subdirectory and rebuilt only when a source file
is newer than its stamp, so the static binary serves the static, OCI and Kubernetes tests, and
one dpkg-buildpackage run serves every Debian package test.
"""
import fcntl
import glob
import os
import shutil
import subprocess
import sys

SRC = os.environ.get("DDUCT_SRC") or os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
CACHE = os.environ.get("DDUCT_PKG_CACHE") or os.path.join(SRC, "build-pkg-cache")


def log(msg):
    print("# " + msg)
    sys.stdout.flush()


def _newest_source_mtime():
    out = subprocess.run(["git", "-C", SRC, "ls-files", "-z"], capture_output=True, check=False)
    files = [f for f in out.stdout.decode().split("\0") if f] if out.returncode == 0 else []
    if not files:  # not a git checkout: every regular file outside build dirs
        for root, dirs, names in os.walk(SRC):
            dirs[:] = [d for d in dirs if not d.startswith("build") and d != ".git"]
            files += [os.path.relpath(os.path.join(root, n), SRC) for n in names]
    return max((os.stat(os.path.join(SRC, f)).st_mtime for f in files
                if os.path.isfile(os.path.join(SRC, f))), default=0)


def _run(cmd, logfile, **kw):
    with open(logfile, "w") as f:
        r = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, **kw)
    if r.returncode != 0:
        with open(logfile) as f:
            tail = f.read()[-6000:]
        raise RuntimeError("%s failed (%d); log %s:\n%s" % (" ".join(cmd), r.returncode,
                                                            logfile, tail))


def _cached(name, build):
    """Run build(dir) once per source change, under a lock; return the artifact's dir."""
    os.makedirs(CACHE, exist_ok=True)
    d = os.path.join(CACHE, name)
    stamp = os.path.join(CACHE, name + ".stamp")
    with open(os.path.join(CACHE, name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if os.path.exists(stamp) and os.path.getmtime(stamp) >= _newest_source_mtime():
            return d
        shutil.rmtree(d, ignore_errors=True)
        os.makedirs(d)
        build(d)
        with open(stamp, "w") as f:
            f.write("built\n")
    return d


def static_binary(name="static"):
    """The static executable, built as docs/install.md says (meson -Dstatic=true
    -Dbuildtype=release). Another name builds it again in another directory (the OCI test
    compares the two)."""
    sub = "build" if name == "static" else os.path.join("elsewhere", "build")

    def build(d):
        b = os.path.join(d, sub)
        log("building the static executable in " + b)
        _run(["meson", "setup", b, SRC, "-Dstatic=true", "-Dbuildtype=release",
              "-Dtests=false", "-Dexamples=false"], os.path.join(d, "setup.log"))
        _run(["ninja", "-C", b, "cli/dduct"], os.path.join(d, "build.log"))
    return os.path.join(_cached(name, build), sub, "cli", "dduct")


def debs():
    """dpkg-buildpackage -b on a copy of the source tree: {package name: .deb path}."""
    def build(d):
        src = os.path.join(d, "dduct")
        log("building the Debian packages in " + d)
        shutil.copytree(SRC, src, ignore=shutil.ignore_patterns("build*", ".git"))
        env = dict(os.environ, DEB_BUILD_OPTIONS="nocheck parallel=2")
        _run(["dpkg-buildpackage", "-b", "-us", "-uc"], os.path.join(d, "build.log"), cwd=src,
             env=env)
    d = _cached("deb", build)
    return {os.path.basename(p).split("_")[0]: p for p in glob.glob(os.path.join(d, "*.deb"))}


def sha256(path):
    import hashlib
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for b in iter(lambda: f.read(1 << 20), b""):
            h.update(b)
    return h.hexdigest()

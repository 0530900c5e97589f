"""examples/embed-proxy, the program README points embedders to, run as its comment says: it
writes its CA, caches a registry blob from a local origin (one origin GET for two requests, the
blob in FILE_DIR), and on SIGINT closes, prints its counters and the cache, and exits 0.
Environment: DDUCT_EMBED_PROXY (the built example)."""
import os
import signal
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cache_rig import add_blob, cache_origin, entries  # noqa: E402
from dductlib.harness import check, check_eq, curl, free_port, run, wait_for  # noqa: E402
from dductlib.origin import pattern_bytes  # noqa: E402


def test_example_caches(rig):
    """Two requests for one blob through embed-proxy: the origin sees one, the second is a hit
    served from FILE_DIR; SIGINT prints the counters and `cache: 1 entries` and exits 0."""
    exe = os.environ["DDUCT_EMBED_PROXY"]
    o = cache_origin(rig, tls=False)
    blob = pattern_bytes(200000, "embed")
    digest = add_blob(o, blob)
    path = "/v2/lib/x/blobs/" + digest
    url = o.url("127.0.0.1", path)
    certs, files = os.path.join(rig.tmp, "certs"), os.path.join(rig.tmp, "files")
    port = free_port()
    log = os.path.join(rig.tmp, "embed.log")
    with open(log, "wb") as err:
        p = subprocess.Popen([exe, certs, files, "127.0.0.1:%d" % port], stdout=subprocess.PIPE,
                             stderr=err, stdin=subprocess.DEVNULL, cwd=rig.tmp)

    def text():
        with open(log, "rb") as f:
            return f.read().decode("utf-8", "replace")
    try:
        wait_for(lambda: "Listening on 127.0.0.1:%d" % port in text() or p.poll() is not None,
                 "the listener")
        check(p.poll() is None, "embed-proxy is running", text())
        check(os.path.exists(os.path.join(certs, "ca.crt")), "it wrote its CA")
        for i in range(2):
            r = curl(rig, ["-x", "http://127.0.0.1:%d" % port, url])
            check_eq((r.status, r.sha256()), (200, digest[7:]), "request %d" % (i + 1))
            if i == 0:
                wait_for(lambda: "Fill completed" in text(), "the commit")
        check_eq(o.count(path), 1, "the origin was asked once")
        check("Hit \"" in text(), "the second request was a hit", text()[-2000:])
        check_eq(len(entries(files)), 1, "one entry in FILE_DIR")
        p.send_signal(signal.SIGINT)
        out, _ = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    out = out.decode()
    check_eq(p.returncode, 0, "exit status after SIGINT")
    check("dduct_cache_hits_total 1\n" in out and "dduct_cache_misses_total 1\n" in out,
          "the counters are printed", out)
    check("cache: 1 entries, %d bytes in %s" % (len(blob), files) in out, "and the cache", out)


if __name__ == "__main__":
    run([test_example_caches])

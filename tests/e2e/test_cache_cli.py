"""`dduct cache ls|du|rm|verify|prune` with the real binary on the file_dir of a running dduct:
ls lists what was stored (table and JSON), du counts it, rm of a hot entry makes the next
request go to the origin, verify catches a flipped byte in a blob (sha256, its name) and in an
ordinary entry (the gmac its sidecar records) and --repair removes them, prune evicts down to a
size; bad usage and failures exit non-zero. The daemon's dduct_cache_entries gauge follows: it
equals du's count and goes down after rm and prune."""
import json
import os
import subprocess
import sys
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cache_rig import add_blob, cache_origin, check_gmac, entries  # noqa: E402
from dductlib.harness import check, check_eq, curl, dduct_bin, run, via, wait_for  # noqa: E402
from dductlib.origin import pattern_bytes, pattern_sha256  # noqa: E402


def cache(d, *args):
    p = subprocess.run([dduct_bin(), "cache"] + list(args) + ["--cfg", d.cfg_path],
                       capture_output=True, text=True, timeout=120)
    return p.returncode, p.stdout, p.stderr


def gauges(d):
    """dduct_cache_entries and dduct_cache_size_bytes on d's /metrics."""
    with urllib.request.urlopen(d.admin_url + "/metrics", timeout=30) as r:
        text = r.read().decode()
    got = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name in ("dduct_cache_entries", "dduct_cache_size_bytes"):
            got[name] = int(float(value))
    return got.get("dduct_cache_entries"), got.get("dduct_cache_size_bytes")


def test_cache_commands_on_a_live_file_dir(rig):
    """ls, du, rm, verify and prune on the file_dir of a running dduct, as described above."""
    o = cache_origin(rig, tls=False)
    blob = pattern_bytes(300000, "cli-blob")
    digest = add_blob(o, blob)
    sizes = (100000, 200000)
    with rig.dduct(admin=True, proxy={"filters": ["^/bytes/", "^/v2/"]}) as d:
        urls = [rig.plain.url("origin.test", "/bytes/%d" % n) for n in sizes]
        burl = o.url("origin.test", "/v2/lib/x/blobs/" + digest)
        for u in urls + [burl]:
            check_eq(curl(rig, via(d, "http") + [u]).status, 200, "filled " + u)
        wait_for(lambda: len(entries(d.file_dir)) == 3 and d.log().count("Fill completed") == 3,
                 "three commits")
        for _ in range(2):  # the first URL is hot: held open and watched by the daemon
            check_eq(curl(rig, via(d, "http") + [urls[0]]).status, 200, "hit")

        rc, out, err = cache(d, "ls")
        check_eq(rc, 0, "ls exits 0")
        check("URL" in out.splitlines()[0] and all(u.split("//")[1] in out for u in urls),
              "ls lists the URLs in a table", out)
        rc, out, err = cache(d, "ls", "--json")
        doc = json.loads(out)
        check_eq(sorted(e["size"] for e in doc), [100000, 200000, 300000], "ls --json: sizes")
        check(any(e["digest"] == digest for e in doc), "with the blob's digest", doc)
        for n in sizes:
            [e] = [e for e in doc if e["url"].endswith("/bytes/%d" % n)]
            check_gmac(e["digest"], pattern_bytes(n), "an ordinary entry lists its gmac")
        check(all(e["stored_at"] > 0 for e in doc), "and stored times", doc)

        def hot_used():  # uses reach the journal in batches, every 2 s
            doc = json.loads(cache(d, "ls", "--json")[1])
            hot = [e for e in doc if e["url"].endswith("/bytes/100000")][0]
            return hot["last_used"] >= hot["stored_at"]
        wait_for(hot_used, "the used entry's last-used time", timeout=20)
        rc, out, err = cache(d, "ls", "--json", "/bytes/2")
        check_eq([e["size"] for e in json.loads(out)], [200000], "ls REGEX filters by URL")
        rc, out, err = cache(d, "du")
        check(rc == 0 and "entries      3" in out and "bytes        600000" in out,
              "du counts entries and bytes", out)
        check_eq(gauges(d), (3, 600000), "/metrics agrees with du")

        before = rig.plain.count("/bytes/100000")
        rc, out, err = cache(d, "rm", urls[0])
        check_eq(rc, 0, "rm URL exits 0: " + err)
        check("1 entry removed" in out, "and says so", out)
        wait_for(lambda: gauges(d) == (2, 500000), "the gauges to go down after rm (journal: 2 s)",
                 timeout=20)
        time.sleep(0.2)  # the daemon's inotify watch hears of the unlink
        r = curl(rig, via(d, "http") + [urls[0]])
        check_eq((r.status, r.sha256()), (200, pattern_sha256(100000)), "after rm")
        check_eq(rig.plain.count("/bytes/100000"), before + 1, "the request went to the origin")
        rc, out, err = cache(d, "rm", "http://origin.test:1/nothing")
        check_eq(rc, 1, "rm of nothing exits 1")

        # A flipped byte in the blob and in an ordinary entry (same size): verify reports both,
        # --repair removes them.
        rc, out, err = cache(d, "verify")
        check_eq((rc, out.strip().splitlines()[-1]), (0, "0 problems"), "all is well at first")
        rel = "c/%s/%s" % (digest[7:9], digest[7:])
        path = os.path.join(d.file_dir, rel)
        [plain] = [e["id"] for e in doc if e["url"].endswith("/bytes/200000")]
        ppath = os.path.join(d.file_dir, plain)
        for p in (path, ppath):
            st = os.stat(p)
            with open(p, "r+b") as f:
                f.seek(1000)
                b = f.read(1)
                f.seek(1000)
                f.write(bytes([b[0] ^ 0x01]))
            # As bit rot would: the same version (mtime) for the daemon, whose index then drops it.
            os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))
        rc, out, err = cache(d, "verify")
        check_eq(rc, 1, "verify exits 1 on a corrupt entry")
        check("does not match its digest" in out and "/blobs/" + digest in out,
              "and names the blob", out)
        check("does not match the digest its sidecar records" in out and "/bytes/200000" in out,
              "and the ordinary entry", out)
        rc, out, err = cache(d, "verify", "--repair")
        check(rc == 0 and out.count("\nremoved ") + out.startswith("removed ") == 2,
              "verify --repair removes both", out)
        check(not os.path.exists(path), "the blob is gone")
        check(not os.path.exists(ppath), "the ordinary entry is gone")
        rc, out, err = cache(d, "verify")
        check_eq((rc, out.strip().splitlines()[-1]), (0, "0 problems"), "then all is well")

        wait_for(lambda: d.log().count("Fill completed") == 4, "the refill after rm")
        rc, out, err = cache(d, "prune", "--to", "150000")
        check_eq(rc, 0, "prune exits 0: " + err)
        left = json.loads(cache(d, "ls", "--json")[1])
        check(sum(e["size"] for e in left) <= 150000, "prune left at most 150000 bytes", left)
        rc, out, err = cache(d, "rm", "--match", "/bytes/")
        check_eq(rc, 0 if left else 1, "rm --match")
        check_eq(json.loads(cache(d, "ls", "--json")[1]), [], "nothing left")
        wait_for(lambda: gauges(d) == (0, 0), "the gauges to reach 0", timeout=20)

        for bad in (["prune", "--to", "12X"], ["frobnicate"], ["ls", "--nope"],
                    ["rm", "not a url"]):
            check_eq(cache(d, *bad)[0], 2, "usage error exits 2: %s" % bad)


if __name__ == "__main__":
    run([test_cache_commands_on_a_live_file_dir])

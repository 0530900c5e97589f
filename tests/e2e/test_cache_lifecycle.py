"""The cache's disk budget with the real dduct binary, real origins and real files: [cache]
max_size holds while files come and go (SIEVE keeps the popular one), an entry evicted while a
client streams it still reaches that client whole, recency survives a restart, two processes
keep one budget, min_free on a small tmpfs (files that can never fit are streamed through)."""
import hashlib
import os
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cache_rig import cache_origin, entries, files_in  # noqa: E402
from dductlib.harness import check, check_eq, curl, free_port, run, via, wait_for  # noqa: E402
from dductlib.origin import pattern_bytes, pattern_sha256  # noqa: E402

MIB = 1 << 20
FILTERS = ["^/bytes/"]


def data_bytes(file_dir):
    """Bytes of data files and fills in flight (sidecars and the journal are not the budget's)."""
    total = 0
    for f in files_in(file_dir):
        if "/" in f and not f.endswith(".json") and not f.endswith(".tmp"):
            try:
                total += os.path.getsize(os.path.join(file_dir, f))
            except FileNotFoundError:
                pass
    return total


class Peak:
    """Samples data_bytes(file_dir) in the background; .peak is the largest seen."""

    def __init__(self, file_dir):
        self.file_dir, self.peak, self.stop = file_dir, 0, threading.Event()
        self.t = threading.Thread(target=self._run)
        self.t.start()

    def _run(self):
        while not self.stop.is_set():
            self.peak = max(self.peak, data_bytes(self.file_dir))
            time.sleep(0.01)

    def close(self):
        self.stop.set()
        self.t.join()
        return self.peak


def fetch(rig, d, size, what):
    """GET /bytes/<size> through d; asserts the whole, right body."""
    url = rig.plain.url("origin.test", "/bytes/%d" % size)
    r = curl(rig, via(d, "http") + [url])
    check_eq((r.rc, r.status), (0, 200), what)
    check_eq(r.sha256(), pattern_sha256(size), what + ": the right body")
    return r


def gets(rig, size):
    return rig.plain.count("/bytes/%d" % size)


def settled(d, n):
    """Wait until d logged n 'Fill completed' lines (commits happen right after the body)."""
    wait_for(lambda: d.log().count("Fill completed") >= n, "%d commits" % n)


def test_budget_holds_and_keeps_the_popular_file(rig):
    """max_size = 60 MiB, ten distinct 20 MiB files fetched in turn, a popular one asked for
    between each: file_dir's data never exceeds the budget plus one fill in flight, the popular
    file stays a hit throughout, the newest files are kept, and every body is right."""
    size = 20 * MIB - 4096
    with rig.dduct(proxy={"filters": FILTERS}, cache={"max_size": "60M", "min_free": 0}) as d:
        wait_for(lambda: "Index loaded" in d.log(), "the index")
        peak = Peak(d.file_dir)
        try:
            fetch(rig, d, size, "the popular file")
            settled(d, 1)
            for i in range(1, 10):
                fetch(rig, d, size + i, "file %d" % i)
                settled(d, i + 1)
                fetch(rig, d, size, "the popular file after file %d" % i)
                check(data_bytes(d.file_dir) <= 60 * MIB + size,
                      "within the budget after file %d" % i, data_bytes(d.file_dir))
        finally:
            top = peak.close()
        check(top <= 60 * MIB + size, "file_dir never above the budget plus one fill", top)
        check_eq(gets(rig, size), 1, "the popular file was fetched once: a hit every time since")
        wait_for(lambda: data_bytes(d.file_dir) <= 60 * MIB, "the budget to hold once settled")
        fetch(rig, d, size + 9, "the newest file again")
        check_eq(gets(rig, size + 9), 1, "the newest file is kept")
        check_eq(gets(rig, size + 1), 1, "(file 1 was fetched once)")
        fetch(rig, d, size + 1, "an old file again")
        check_eq(gets(rig, size + 1), 2, "an old, unpopular file was evicted")
        check("Evicted" in d.log() and "to keep [cache] max_size" in d.log(), "eviction is logged")


def test_evicted_while_streaming(rig):
    """A client streaming a 50 MiB hit while eviction removes the entry (a 20 MiB fill under a
    60 MiB budget) still gets every byte; the entry is gone and the next request goes to the
    origin. The 20 MiB fill is held at half by its origin until the eviction is logged: the
    budget's pass then runs while that fill is only reserved, so the streamed entry (visited by
    its hit, which SIEVE passes over once) is the only one it can take. A pass that ran after
    the new entry's commit would rightly take the new, unvisited entry instead."""
    big, small = 50 * MIB, 20 * MIB - 4096
    o = cache_origin(rig, tls=False)
    with rig.dduct(proxy={"filters": FILTERS + ["^/gate/"]},
                   cache={"max_size": "60M", "min_free": 0}) as d:
        fetch(rig, d, big, "the 50 MiB file")
        settled(d, 1)
        url = rig.plain.url("origin.test", "/bytes/%d" % big)
        out = {}
        t = threading.Thread(target=lambda: out.update(
            r=curl(rig, via(d, "http") + ["--limit-rate", "8M", url], timeout=300)))
        t.start()
        wait_for(lambda: "Hit \"http://origin.test" in d.log(), "the slow hit to start")
        o.gate.clear()
        o.half_sent.clear()
        gurl = o.url("origin.test", "/gate/%d" % small)
        gout = {}
        g = threading.Thread(target=lambda: gout.update(
            r=curl(rig, via(d, "http") + [gurl], timeout=300)))
        g.start()
        try:
            check(o.half_sent.wait(60), "the 20 MiB fill is half done")
            wait_for(lambda: "Evicted 1 entry" in d.log(), "the eviction")
            big_files = [f for f in entries(d.file_dir)
                         if os.path.getsize(os.path.join(d.file_dir, f)) == big]
            check_eq(big_files, [], "the 50 MiB entry is gone from file_dir")
            check(t.is_alive(), "while its client still streams it")
        finally:
            o.gate.set()
            g.join(300)
        check_eq((gout["r"].rc, gout["r"].status), (0, 200), "the 20 MiB fill's client")
        check_eq(gout["r"].sha256(), hashlib.sha256(pattern_bytes(small, "gate")).hexdigest(),
                 "the 20 MiB file's body")
        t.join(300)
        r = out["r"]
        check_eq((r.rc, r.status), (0, 200), "the streaming client")
        check_eq(r.sha256(), pattern_sha256(big), "got every byte of the evicted entry")
        fetch(rig, d, big, "the 50 MiB file again")
        check_eq(gets(rig, big), 2, "it came from the origin again")


def test_restart_keeps_recency(rig):
    """Three 20 MiB files fill a 60 MiB budget; the oldest is then used. After a restart, a
    fourth file evicts the second (never used), not the first: uses survive restarts."""
    size = 20 * MIB - 4096
    cache = {"max_size": "60M", "min_free": 0}
    with rig.dduct(proxy={"filters": FILTERS}, cache=cache, name="before") as d:
        file_dir = d.file_dir
        for i in range(3):
            fetch(rig, d, size + 100 + i, "file %d" % i)
            settled(d, i + 1)
            time.sleep(0.05)  # distinct commit times
        fetch(rig, d, size + 100, "file 0 again")
        check_eq(gets(rig, size + 100), 1, "a hit")
    with rig.dduct(proxy={"filters": FILTERS}, cache=cache, name="after",
                   misc={"file_dir": file_dir + "/"}) as d:
        wait_for(lambda: "Index loaded: 3 entries" in d.log(), "the index of three entries")
        fetch(rig, d, size + 103, "file 3")
        wait_for(lambda: "Evicted 1 entry" in d.log(), "the eviction")
        fetch(rig, d, size + 100, "file 0, used before the restart")
        check_eq(gets(rig, size + 100), 1, "is still cached")
        fetch(rig, d, size + 101, "file 1, never used")
        check_eq(gets(rig, size + 101), 2, "was the one evicted")


def test_two_processes_one_budget(rig):
    """Two dduct processes on one file_dir and one 60 MiB budget, fetching 20 MiB files in
    turn: together they never keep more than the budget (they learn of each other's commits
    through the journal), and every client gets its whole body."""
    size = 20 * MIB - 4096
    cache = {"max_size": "60M", "min_free": 0}
    with rig.dduct(proxy={"filters": FILTERS}, cache=cache, name="one") as d1:
        with rig.dduct(proxy={"filters": FILTERS}, cache=cache, name="two",
                       misc={"file_dir": d1.file_dir + "/"}) as d2:
            n = {d1: 0, d2: 0}
            for i in range(6):
                d = (d1, d2)[i % 2]
                fetch(rig, d, size + 200 + i, "file %d via process %d" % (i, 1 + i % 2))
                n[d] += 1
                settled(d, n[d])
                time.sleep(2.5)  # the other's next look at the journal (every 2 s)
            wait_for(lambda: data_bytes(d1.file_dir) <= 60 * MIB,
                     "one budget for both processes", timeout=30)
            check(len(entries(d1.file_dir)) <= 3, "three 20 MiB entries at most",
                  entries(d1.file_dir))


def test_min_free_on_small_tmpfs(rig):
    """file_dir on a 64 MiB tmpfs with min_free = '40%': entries are evicted to keep ~25 MiB
    free; a 48 MiB file, which could never fit, is streamed through whole and not stored."""
    mnt = tempfile.mkdtemp(prefix="tmpfs-", dir=rig.tmp)
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", mnt],
                      stderr=subprocess.DEVNULL).returncode != 0:
        print("# SKIP min_free on tmpfs: cannot mount (not root)")
        return
    try:
        file_dir = os.path.join(mnt, "files")
        with rig.dduct(proxy={"filters": FILTERS}, cache={"min_free": "40%"},
                       misc={"file_dir": file_dir + "/"}) as d:
            keep = 64 * MIB * 40 // 100
            for i in range(5):
                fetch(rig, d, 10 * MIB + 300 + i, "10 MiB file %d" % i)
                settled(d, i + 1)
                st = os.statvfs(mnt)
                wait_for(lambda: os.statvfs(mnt).f_bavail * st.f_frsize >= keep - MIB,
                         "min_free to hold after file %d" % i, timeout=30)
            check("to keep [cache] min_free" in d.log(), "evictions for min_free are logged")
            fetch(rig, d, 48 * MIB, "a file larger than the room there is")
            check("no room on the file system even after eviction" in d.log(),
                  "the log says why it is not cached")
            check(not any(os.path.getsize(os.path.join(file_dir, f)) == 48 * MIB
                          for f in entries(file_dir)), "and it is not stored")
    finally:
        subprocess.run(["umount", "-l", mnt])
        os.rmdir(mnt)


def test_full_disk_relays_to_attached_clients(rig):
    """Issue 16 #9: file_dir on an 8 MiB tmpfs with no budget: a 20 MiB fill meets ENOSPC.
    The clients already attached (the first and a follower) still get the whole, right body
    (the rest is relayed from memory), nothing is stored, and the next request is proxied
    uncached and whole too."""
    mnt = tempfile.mkdtemp(prefix="tmpfs-", dir=rig.tmp)
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", mnt],
                      stderr=subprocess.DEVNULL).returncode != 0:
        print("# SKIP full disk on tmpfs: cannot mount (not root)")
        return
    size = 20 * MIB + 300
    try:
        file_dir = os.path.join(mnt, "files")
        with rig.dduct(proxy={"filters": FILTERS}, cache={"min_free": 0},
                       misc={"file_dir": file_dir + "/"}) as d:
            url = rig.plain.url("origin.test", "/bytes/%d" % size)
            out = {}

            def get(name, rate):
                out[name] = curl(rig, via(d, "http") + ["--limit-rate", rate, url], timeout=300)
            ts = [threading.Thread(target=get, args=("first", "20M")),
                  threading.Thread(target=get, args=("follower", "40M"))]
            ts[0].start()
            wait_for(lambda: "Miss" in d.log(), "the fill to start")
            ts[1].start()
            for t in ts:
                t.join(300)
            for name in ("first", "follower"):
                r = out[name]
                check_eq((r.rc, r.status), (0, 200), name + ": not cut")
                check_eq(r.sha256(), pattern_sha256(size), name + ": every byte, right")
            check("Relaying" in d.log(), "the relay is logged")
            check_eq(entries(file_dir), [], "nothing stored")
            fetch(rig, d, size, "the next request, proxied uncached")
    finally:
        subprocess.run(["umount", "-l", mnt])
        os.rmdir(mnt)


def test_stale_if_error(rig):
    """revalidate = 'always' with the origin stopped (a process killed: no pooled connection
    survives it): the hit is served from the cache with a WARN (stale_if_error, the default);
    with stale_if_error = false the client gets the error."""
    root = tempfile.mkdtemp(prefix="stale-origin-", dir=rig.tmp)
    body = os.urandom(300000)
    with open(os.path.join(root, "file.bin"), "wb") as f:
        f.write(body)
    port = free_port()
    o = subprocess.Popen([sys.executable, "-m", "http.server", "--bind", "127.0.0.1",
                          "--directory", root, str(port)],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = "http://origin.test:%d/file.bin" % port
    want = hashlib.sha256(body).hexdigest()
    try:
        proxy = {"filters": ["\\.bin$"], "revalidate": "always"}
        with rig.dduct(proxy=proxy, name="stale") as d, \
                rig.dduct(proxy=proxy, name="strict", cache={"stale_if_error": False}) as d2:
            for x in (d, d2):
                deadline = time.monotonic() + 30
                while True:
                    r = curl(rig, via(x, "http") + [url])
                    if r.status == 200 or time.monotonic() > deadline:
                        break
                    time.sleep(0.1)  # the origin process is still starting
                check_eq((r.rc, r.status, r.sha256()), (0, 200, want), "filled")
                settled(x, 1)
            r = curl(rig, via(d, "http") + [url])
            check_eq((r.status, r.sha256()), (200, want), "a revalidated hit while the origin is up")
            o.kill()
            o.wait()
            r = curl(rig, via(d, "http") + [url])
            check_eq((r.rc, r.status), (0, 200), "the origin is down: served from the cache")
            check_eq(r.sha256(), want, "the cached bytes")
            check("serving the cached copy" in d.log(), "with a WARN saying so")
            r = curl(rig, via(d2, "http") + [url])
            check(r.status >= 500, "stale_if_error = false: the error passes through", r.status)
    finally:
        if o.poll() is None:
            o.kill()
            o.wait()


if __name__ == "__main__":
    run([test_budget_holds_and_keeps_the_popular_file, test_evicted_while_streaming,
         test_restart_keeps_recency, test_two_processes_one_budget, test_min_free_on_small_tmpfs,
         test_full_disk_relays_to_attached_clients, test_stale_if_error])

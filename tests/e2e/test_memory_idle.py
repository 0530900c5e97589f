"""dduct gives memory back once its connections are gone: after a large miss and concurrent hits
through intercepted connections, the idle proxy's resident memory returns to near where it was
before them (fill buffers are freed when the fill ends, the executable trims the heap when the
last connection closes). bench/run's peak-RSS figures count what a previous workload kept."""
import os
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from dductlib.harness import check, check_eq, curl, is_asan, is_tsan, run, via  # noqa: E402
from dductlib.origin import pattern_sha256  # noqa: E402

MIB = 1 << 20
# What an idle dduct may keep after the transfers, beyond its RSS after one small request: the
# idle cache entry, a pooled origin connection (TLS buffers), the CA's minted leaf, allocator
# slack. Before the fixes it kept 9-12 MiB (two 2 MiB fill buffers on the idle entry, the heap
# the transfers grew).
IDLE_SLACK_KIB = 3 * 1024


def rss_settles(d, limit_kib, timeout=10.0):
    """VmRSS once it is under limit_kib, or the last value seen after timeout (the trim runs in
    the loop turn after the last connection closed, which may come after curl has exited)."""
    deadline = time.monotonic() + timeout
    rss = d.proc_status("VmRSS")
    while rss >= limit_kib and time.monotonic() < deadline:
        time.sleep(0.1)
        rss = d.proc_status("VmRSS")
    return rss


def test_idle_rss_after_large_transfers(rig):
    """A 48 MiB miss and four concurrent hits of it, all through intercepted HTTPS: every body is
    byte-exact, and once the clients are gone dduct's VmRSS is back within 3 MiB of its RSS after
    a first small request (not checked under ASan, whose allocator keeps freed memory)."""
    n = 48 * MIB
    path = "/bytes/%d" % n
    url = rig.origin.url("origin.test", path + "?seed=idle")
    small = rig.origin.url("origin.test", "/bytes/4096?seed=warm")
    want = pattern_sha256(n, "idle")
    with rig.dduct(proxy={"filters": ["^/bytes/"]}) as d:
        r = curl(rig, via(d, "http") + [small])
        check_eq(r.status, 200, "the warm-up request")
        base = rss_settles(d, 0, timeout=0.5)
        r = curl(rig, via(d, "http") + [url], timeout=300)
        check_eq(r.status, 200, "the miss")
        check_eq(r.sha256(), want, "the miss is byte-exact")
        results = []

        def hit():
            results.append(curl(rig, via(d, "http") + [url], timeout=300))
        threads = [threading.Thread(target=hit) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for h in results:
            check_eq(h.status, 200, "a hit")
            check_eq(h.sha256(), want, "a hit is byte-exact")
        idle = rss_settles(d, base + IDLE_SLACK_KIB)
        print("#   RSS after the warm-up %d KiB, idle after the transfers %d KiB" % (base, idle))
        if not is_asan() and not is_tsan():
            check(idle < base + IDLE_SLACK_KIB,
                  "idle RSS within %d KiB of the start" % IDLE_SLACK_KIB,
                  "%d KiB -> %d KiB" % (base, idle))


if __name__ == "__main__":
    run([test_idle_rss_after_large_transfers])

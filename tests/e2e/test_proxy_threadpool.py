#!/usr/bin/env python3
"""libuv's thread pool is one per process, shared by every event loop (fill writes, commits, cold
probes, mints): with workers = N > 4 the CLI sizes it to N threads before the first work is
queued, unless UV_THREADPOOL_SIZE says otherwise. Counted as the process's threads: the first
loop, N-1 loop threads and the pool (plus at most one sanitizer thread)."""
import os
import sys
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from dductlib.harness import check, check_eq, run  # noqa: E402

WORKERS = 6


def _threads(d):
    return len(os.listdir("/proc/%d/task" % d.pid))


def _fetch_through(rig, d):
    """One request served, so every loop and the pool are up."""
    url = rig.plain.url("127.0.0.1", "/bytes/1000")
    opener = urllib.request.build_opener(
        urllib.request.ProxyHandler({"http": "http://127.0.0.1:%d" % d.tcp_port}))
    with opener.open(url, timeout=60) as r:
        check_eq(len(r.read()), 1000, "a body through the proxy")


def test_pool_sized_from_workers(rig):
    """workers = 6: the pool has 6 threads (libuv's default is 4), so the process has at least
    1 + 5 + 6 threads."""
    d = rig.dduct(proxy={"workers": WORKERS}).start()
    try:
        _fetch_through(rig, d)
        n = _threads(d)
        check(n >= 1 + (WORKERS - 1) + WORKERS, "threads: loops and a pool of one per loop",
              "%d threads" % n)
    finally:
        d.stop()


def test_environment_wins(rig):
    """UV_THREADPOOL_SIZE=2 in the environment is kept: 1 + 5 + 2 threads (at most one more for a
    sanitizer)."""
    d = rig.dduct(proxy={"workers": WORKERS}, env={"UV_THREADPOOL_SIZE": "2"}).start()
    try:
        _fetch_through(rig, d)
        n = _threads(d)
        check(n <= 1 + (WORKERS - 1) + 2 + 1, "threads: the environment's pool size",
              "%d threads" % n)
    finally:
        d.stop()


if __name__ == "__main__":
    run([test_pool_sized_from_workers, test_environment_wins])

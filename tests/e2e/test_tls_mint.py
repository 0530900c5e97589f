#!/usr/bin/env python3
"""Leaves minted off the loop (issue 17): a CONNECT to a host with no cached leaf has it minted on
libuv's thread pool while its handshake waits, and a burst of CONNECTs to one new host mints it
once; every client of the burst gets a verified leaf and its response."""
import os
import sys
import threading

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from dductlib.harness import check, check_eq, curl, run, via  # noqa: E402
from dductlib.origin import pattern_sha256  # noqa: E402

MINTED = 'Minted a certificate for "origin.test"'


def test_burst_to_a_new_host_mints_once(rig):
    """24 clients CONNECT to origin.test at once through a dduct that has minted nothing yet:
    all 24 get 200 and the body, verifying dduct's leaf; the log shows one mint for the host,
    done off the loop; a later request reuses it."""
    o = rig.origin
    n = 24
    with rig.dduct() as d:
        url = o.url("origin.test", "/bytes/5000?seed=mint")
        got = [None] * n

        def one(i):
            got[i] = curl(rig, via(d, "http") + [url])

        threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for i, r in enumerate(got):
            check_eq((r.rc, r.status, r.sha256()), (0, 200, pattern_sha256(5000, "mint")),
                     "client %d of the burst" % i)
        r = curl(rig, via(d, "http") + [url])
        check_eq((r.rc, r.status), (0, 200), "a request after the burst")
        log = d.log()
    check_eq(log.count(MINTED), 1, "one mint for the whole burst")
    check(MINTED + " (off the loop)" in log, "the leaf was minted off the loop", log[-2000:])


if __name__ == "__main__":
    run([test_burst_to_a_new_host_mints_once])

"""The status page (GET / on the admin listener) in a real browser: headless Chromium loads it
while a download is in flight, runs its script against /stats, and the page it builds shows the
fill's progress bar and the last hour's chart. The screenshot is kept as a test artifact
(<build>/tests/e2e/artifacts/status-page.png) for a person to look at."""
import os
import re
import shutil
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cache_rig import cache_origin  # noqa: E402
from dductlib.harness import check, check_eq, curl, run, via  # noqa: E402


def artifacts_dir(rig):
    cache = os.environ.get("DDUCT_E2E_CACHE")
    d = os.path.join(os.path.dirname(cache), "artifacts") if cache else rig.tmp
    os.makedirs(d, exist_ok=True)
    return d


def chromium(rig, *args):
    home = os.path.join(rig.tmp, "chromium-home")
    os.makedirs(home, exist_ok=True)
    argv = ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
            "--disable-dev-shm-usage", "--hide-scrollbars", "--user-data-dir=" + home,
            "--window-size=1280,1500", "--virtual-time-budget=5000"] + list(args)
    env = dict(os.environ, HOME=home)
    for k in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy"):
        env.pop(k, None)
    return subprocess.run(argv, capture_output=True, timeout=180, env=env)


def test_status_page_in_chromium(rig):
    """During a fill held at half by the origin, Chromium's DOM of / has a progress bar at 50 %
    for that URL, the chart's bars for bytes from the cache and from the origin and its hit-ratio
    line, the tiles, the most-hit entry, and a share-of-requests bar for each of the two event
    loops; the screenshot is written and is a PNG."""
    if shutil.which("chromium") is None:
        print("# SKIP: chromium is not installed (apt-get install chromium)")
        return
    o = cache_origin(rig)
    n = 8 << 20
    with rig.dduct(admin=True, proxy={"filters": ["^/bytes/", "^/gate/"], "workers": 2}) as d:
        small = rig.plain.url("origin.test", "/bytes/300000")
        for _ in range(3):  # a miss then two hits: both colours in the chart, a most-hit entry
            check_eq(curl(rig, via(d, "http") + [small]).status, 200, "traffic")
        o.gate.clear()
        o.half_sent.clear()
        gurl = o.url("origin.test", "/gate/%d" % n)
        out = {}
        t = threading.Thread(target=lambda: out.update(r=curl(rig, via(d, "http") + [gurl])))
        t.start()
        try:
            check(o.half_sent.wait(60), "origin sent the first half")
            deadline = time.monotonic() + 60
            while b'"bytes":%d' % (n // 2) not in curl_stats(rig, d):
                check(time.monotonic() < deadline, "the fill to reach half in /stats")
                time.sleep(0.05)
            p = chromium(rig, "--dump-dom", d.admin_url + "/")
            dom = p.stdout.decode("utf-8", "replace")
            check(p.returncode == 0 and "<table" in dom, "chromium dumped the DOM",
                  p.stderr.decode(errors="replace")[-2000:])
            check('role="progressbar"' in dom, "a progress bar for the fill", dom[-3000:])
            check(re.search(r'role="progressbar"[^>]*aria-valuenow="50"', dom), "at 50 %",
                  dom[-3000:])
            loops = re.findall(r'aria-label="loop (\d)\'s share of requests"[^>]*'
                               r'aria-valuenow="(\d+)"', dom)
            check_eq(sorted(n for n, _ in loops), ["0", "1"], "a share bar for each of the 2 loops")
            check(sum(int(v) for _, v in loops) in (99, 100, 101),
                  "the loops' shares add up to the whole", loops)
            check("/gate/%d" % n in dom, "the fill's URL")
            check(re.search(r'<rect[^>]*class="cache"', dom), "chart: bytes from the cache")
            check(re.search(r'<rect[^>]*class="origin"', dom), "chart: bytes from the origin")
            check('id="ratio"' in dom, "chart: the hit-ratio line")
            check("Hit ratio" in dom and "WAN bytes saved" in dom, "the tiles")
            check("/bytes/300000" in dom, "the most-hit entry")
            shot = os.path.join(artifacts_dir(rig), "status-page.png")
            if os.path.exists(shot):
                os.unlink(shot)
            p = chromium(rig, "--screenshot=" + shot, d.admin_url + "/")
            check(os.path.exists(shot), "the screenshot was written",
                  p.stderr.decode(errors="replace")[-2000:])
            with open(shot, "rb") as f:
                check_eq(f.read(8), b"\x89PNG\r\n\x1a\n", "a PNG")
            print("# screenshot: " + shot)
        finally:
            o.gate.set()
            t.join(120)
        check_eq(out["r"].status, 200, "the download completed")


def curl_stats(rig, d):
    r = curl(rig, [d.admin_url + "/stats"])
    return r.body()


if __name__ == "__main__":
    run([test_status_page_in_chromium])

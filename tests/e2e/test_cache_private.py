"""Private answers (review-sec #2 and #3, RFC 9111 3.5 and 5.2.2.7): an answer the origin gave one
client is not handed to the others. Real dduct binary, real curl clients, origins on 127.0.0.1.

An answer is private when the request that produced the stored 200 carried Authorization or
Cookie (a redirect to another origin drops them, so a registry blob fetched from a CDN is not)
and the answer is not Cache-Control: public or s-maxage, or when it says private. A private
entry answers only a request for the origin that filled it, after a HEAD with the requester's
own headers agrees, and is never served stale; a blob digest named on another host is fetched
from that host instead. no-store answers are not stored. [cache] share_private = true restores
sharing.
"""
import hashlib
import json
import os
import shutil
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cache_rig import TOKEN, CacheHandler, add_blob, cache_origin, entries, files_in  # noqa: E402
from dductlib.harness import check, check_eq, curl, run, via  # noqa: E402
from dductlib.origin import Origin, pattern_bytes  # noqa: E402

ALICE = "Bearer alice-token"
FILTERS = ["^/v2/.*/blobs/sha256:\\w+$", "^/priv/"]


class PrivHandler(CacheHandler):
    """/priv/<name>[?cc=V][&n=N]: N bytes (default 200000) of pattern with Cache-Control V, only
    to "Authorization: Bearer alice-token" or a Cookie holding session=alice (401 to anyone
    else); ?open=1 answers everyone. Records (method, target, Authorization, Cookie) in
    origin.seen. origin.mode: None, "503" (every request answers 503) or "drop" (the connection
    is closed without an answer)."""

    def _ep_priv(self, path, query, body):
        o = self.server.origin
        auth, cookie = self.headers.get("Authorization"), self.headers.get("Cookie")
        with o._lock:
            o.seen.append((self.command, self.path, auth, cookie))
        if o.mode == "503":
            return self._send(503, b"down for maintenance\n")
        if o.mode == "drop":
            self.close_connection = True
            self.request.close()
            return None
        ok = auth == ALICE or "session=alice" in (cookie or "") or query.get("open")
        if not ok:
            return self._send(401, b"not yours\n", extra=[("WWW-Authenticate", 'Bearer realm="t"')])
        data = pattern_bytes(int(query.get("n", 200000)), "priv" + path)
        extra = [("ETag", '"%s"' % hashlib.sha256(data).hexdigest()[:16])]
        if query.get("cc"):
            extra.append(("Cache-Control", query["cc"]))
        self._send_body(data, extra=extra)


class AnyHandler(CacheHandler):
    """Host M: any server a requester controls. 200 with "from M" to every request; records
    (method, target, Authorization) in origin.seen."""

    def _dispatch(self):
        o = self.server.origin
        with o._lock:
            o.seen.append((self.command, self.path, self.headers.get("Authorization")))
        self._send_body(b"from M\n", "text/plain")


def priv_origin(rig, key="priv"):
    def make():
        o = Origin(tls=(rig.pki.origin_crt, rig.pki.origin_key))
        o.server.RequestHandlerClass = PrivHandler
        o.seen = []
        o.mode = None
        return o
    return rig._get(key, make)


def host_m(rig):
    def make():
        o = Origin()
        o.server.RequestHandlerClass = AnyHandler
        o.seen = []
        return o
    return rig._get("host-m", make)


def get(rig, d, url, *extra, kind="http"):
    return curl(rig, via(d, kind) + list(extra) + [url])


def data_of(path, n=200000):
    return pattern_bytes(n, "priv" + path)


def seen(o, method, path):
    with o._lock:
        return [s for s in o.seen if s[0] == method and s[1] == path]


def settle(d, timeout=30):
    """Every fill that began is committed (the commit follows the response's last byte)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = d.log()
        done = sum(text.count(w) for w in ("Fill completed", "Fill discarded", "Not cached"))
        if done >= text.count("Miss "):
            return
        time.sleep(0.02)


def sidecars(file_dir):
    out = {}
    for f in files_in(file_dir):
        if f.endswith(".json"):
            with open(os.path.join(file_dir, f)) as fh:
                doc = json.load(fh)
            out[doc["url"]] = doc
    return out


def test_private_answer_not_served_to_others(rig):
    """alice's tar, fetched with her token, is stored as private (sidecar "private": true); B
    without credentials and B with a wrong token get the origin's 401 (their HEAD is refused and
    their request forwarded), never alice's bytes; alice again is served from the file after a
    HEAD the origin sees with her token (no second GET). The same for a Cookie."""
    o = priv_origin(rig)
    for path, cred in (("/priv/alice.tar", "Authorization: " + ALICE),
                       ("/priv/cookie.tar", "Cookie: theme=dark; session=alice")):
        url = o.url("origin.test", path)
        data = data_of(path)
        with rig.dduct(proxy={"filters": FILTERS}) as d:
            r = get(rig, d, url)
            check_eq(r.status, 401, path + ": B before alice")
            r = get(rig, d, url, "-H", cred)
            check_eq((r.status, r.body() == data), (200, True), path + ": alice fills")
            settle(d)
            for other in ([], ["-H", "Authorization: Bearer mallory"],
                          ["-H", "Cookie: session=bob"]):
                r = get(rig, d, url, *other)
                check_eq(r.status, 401, "%s: B %s gets the origin's answer" % (path, other))
                check(r.body() != data, path + ": never alice's bytes")
            gets = len(seen(o, "GET", path))
            r = get(rig, d, url, "-H", cred)
            check_eq((r.status, r.body() == data), (200, True), path + ": alice again")
            check_eq(len(seen(o, "GET", path)), gets, path + ": alice's hit came from the file")
            heads = seen(o, "HEAD", path)
            want = (ALICE, None) if cred.startswith("Auth") else (None, cred.split(": ", 1)[1])
            check_eq(heads[-1][2:], want, path + ": the last HEAD carried alice's credentials")
            check_eq([s["private"] for s in sidecars(d.file_dir).values()], [True],
                     path + ": the sidecar says private")
            check("Revalidating" in d.log() and "forwarding" in d.log(), "refusals are logged")
        # The flag is read back from the sidecar: a restarted dduct keeps the entry private.
        with rig.dduct(proxy={"filters": FILTERS}) as d2:
            shutil.rmtree(d2.file_dir, ignore_errors=True)
            shutil.copytree(d.file_dir, d2.file_dir)
            gets = len(seen(o, "GET", path))
            r = get(rig, d2, url)
            check_eq(r.status, 401, path + ": after a restart B still gets the origin's 401")
            r = get(rig, d2, url, "-H", cred)
            check_eq((r.status, r.body() == data), (200, True), path + ": alice after a restart")
            check_eq(len(seen(o, "GET", path)), gets + 1,
                     path + ": only B's GET reached the origin")


def test_no_store_not_stored(rig):
    """Cache-Control: no-store is not stored (with or without credentials): every request goes
    to the origin, no entry is made, and the reason is logged at INFO."""
    o = priv_origin(rig)
    path = "/priv/nostore.tar"
    url = o.url("origin.test", path + "?cc=private,%20no-store")
    with rig.dduct(proxy={"filters": FILTERS}) as d:
        for i in range(3):
            r = get(rig, d, url, "-H", "Authorization: " + ALICE)
            check_eq((r.status, r.body() == data_of(path)), (200, True), "alice %d" % i)
        r = get(rig, d, o.url("origin.test", path + "?cc=no-store&open=1"))
        check_eq(r.status, 200, "no-store without credentials")
        check_eq(len(seen(o, "GET", path + "?cc=private,%20no-store")), 3, "asked every time")
        check_eq(entries(d.file_dir), [], "nothing stored")
        check("origin said Cache-Control: no-store" in d.log(), "the reason is logged")


def test_public_answer_with_credentials_shared(rig):
    """An answer fetched with credentials that says Cache-Control: public (or s-maxage) is shared:
    B without credentials gets it from the file with no origin request at all. An answer that
    says private without any credentials is private (B's second request sends a HEAD)."""
    o = priv_origin(rig)
    with rig.dduct(proxy={"filters": FILTERS}) as d:
        for q in ("?cc=public,%20max-age=60", "?cc=s-maxage=60"):
            path = "/priv/shared.tar" + q
            r = get(rig, d, o.url("origin.test", path), "-H", "Authorization: " + ALICE)
            check_eq(r.status, 200, q + ": alice")
            settle(d)
            n = len(o.seen)
            r = get(rig, d, o.url("origin.test", path))
            check_eq((r.status, r.body() == data_of("/priv/shared.tar")), (200, True), q + ": B")
            check_eq(len(o.seen), n, q + ": B was served without asking the origin")
        path = "/priv/open.tar?open=1&cc=private"
        get(rig, d, o.url("origin.test", path))
        settle(d)
        r = get(rig, d, o.url("origin.test", path))
        check_eq(r.status, 200, "a private answer given to nobody in particular")
        check_eq((len(seen(o, "GET", path)), len(seen(o, "HEAD", path))), (1, 1),
                 "served from the file after a HEAD")


def test_blob_with_credentials_not_served_via_other_host(rig):
    """A blob fetched with credentials from registry A is private: a request naming the same
    digest on host M (with or without credentials, revalidate 'never' or 'always') is answered by
    M, never from A's entry, and A never sees the requester's credentials; the entry stays and
    serves A's authorised client. With 'always', a blob fetched from A without credentials is not
    approved by M either: M answers."""
    a = cache_origin(rig)
    m = host_m(rig)
    secret = pattern_bytes(300000, "registry A secret")
    digest = add_blob(a, secret)
    pa = "/v2/private/app/blobs/" + digest
    pm = "/v2/anything/blobs/" + digest
    ua, um = a.url("origin.test", pa), m.url("127.0.0.1", pm)
    for reval in ("never", "always"):
        with rig.dduct(proxy={"filters": FILTERS, "revalidate": reval}) as d:
            r = get(rig, d, ua, "-H", "Authorization: " + TOKEN)
            check_eq((r.status, r.body() == secret), (200, True), reval + ": A fills")
            settle(d)
            n_a = len(a.snapshot()["requests"])
            gets_a = len([q for q in a.snapshot()["requests"] if q[0] == "GET" and q[1] == pa])
            for extra in ([], ["-H", "Authorization: Bearer for-m"]):
                n_m = len(m.seen)
                r = get(rig, d, um, *extra)
                check_eq((r.status, r.body() == b"from M\n"), (200, True),
                         "%s: M answers %s" % (reval, extra))
                check_eq([s[0] for s in m.seen[n_m:]], ["GET"], reval + ": M was asked (a GET)")
            check_eq(len(a.snapshot()["requests"]), n_a, reval + ": A was not contacted for M")
            r = get(rig, d, ua, "-H", "Authorization: " + TOKEN)
            check_eq((r.status, r.body() == secret), (200, True), reval + ": A's client again")
            check_eq(len([q for q in a.snapshot()["requests"] if q[0] == "GET" and q[1] == pa]),
                     gets_a, reval + ": from the entry (no second GET at A)")
            check(len(entries(d.file_dir)) == 1, "the private entry stays", entries(d.file_dir))
    public = pattern_bytes(100000, "public layer")
    dp = add_blob(a, public)
    with rig.dduct(proxy={"filters": FILTERS, "revalidate": "always"}) as d:
        r = get(rig, d, a.url("origin.test", "/v2/library/base/blobs/" + dp))
        check_eq((r.status, r.body() == public), (200, True), "a public blob from A")
        settle(d)
        n_m = len(m.seen)
        r = get(rig, d, m.url("127.0.0.1", "/v2/x/blobs/" + dp))
        check_eq((r.status, r.body() == b"from M\n"), (200, True),
                 "'always': M answers, not A's entry")
        check_eq([s[0] for s in m.seen[n_m:]], ["GET"], "M got the request, not a HEAD")
        check("filled from another origin" in d.log(), "the refusal is logged")


def test_cdn_redirect_blob_shared_without_head(rig):
    """A blob a registry hands out as a 307 to a CDN host is fetched there without the client's
    credentials, so it is not private: another client without credentials, through another
    repository name, gets it from the file and no HEAD or GET reaches either host."""
    o = cache_origin(rig)
    data = pattern_bytes(400000, "cdn shared")
    digest = add_blob(o, data)
    path = "/v2/cdnrepo/blobs/" + digest
    with rig.dduct(proxy={"filters": FILTERS}) as d:
        r = get(rig, d, o.url("origin.test", path), "-H", "Authorization: " + TOKEN)
        check_eq((r.status, r.body() == data), (200, True), "the first client, with a token")
        settle(d)
        n = len(o.snapshot()["requests"])
        r = get(rig, d, o.url("origin.test", "/v2/cdnother/blobs/" + digest))
        check_eq((r.status, r.body() == data), (200, True), "another client, no credentials")
        r = get(rig, d, o.url("origin.test", path))
        check_eq((r.status, r.body() == data), (200, True), "the same URL, no credentials")
        check_eq(len(o.snapshot()["requests"]), n, "no origin or CDN request at all")
        check_eq([s.get("private", False) for s in sidecars(d.file_dir).values()], [False],
                 "the sidecar does not say private")


def test_share_private_restores_sharing(rig):
    """[cache] share_private = true: alice's private answer is served to B without credentials,
    from the file, with no origin request (the behaviour of earlier versions)."""
    o = priv_origin(rig)
    path = "/priv/shared-cluster.tar"
    url = o.url("origin.test", path)
    with rig.dduct(proxy={"filters": FILTERS}, cache={"share_private": True}) as d:
        r = get(rig, d, url, "-H", "Authorization: " + ALICE)
        check_eq(r.status, 200, "alice")
        settle(d)
        n = len(o.seen)
        r = get(rig, d, url)
        check_eq((r.status, r.body() == data_of(path)), (200, True), "B gets alice's answer")
        check_eq(len(o.seen), n, "without asking the origin")


def test_private_entry_never_served_stale(rig):
    """stale_if_error (on by default) never serves a private entry: when alice's revalidation gets
    a 503, or no answer at all, her request is forwarded and she sees the origin's 503 or dduct's
    502, not the stored bytes; the log says why. A shared entry is still served stale under
    revalidate = 'always'."""
    o = priv_origin(rig, "priv-down")
    path = "/priv/stale.tar"
    url = o.url("origin.test", path)
    try:
        with rig.dduct(proxy={"filters": FILTERS}) as d:
            r = get(rig, d, url, "-H", "Authorization: " + ALICE)
            check_eq(r.status, 200, "alice fills")
            settle(d)
            o.mode = "503"
            r = get(rig, d, url, "-H", "Authorization: " + ALICE)
            check_eq(r.status, 503, "revalidation got 503: the origin's 503, not the entry")
            o.mode = "drop"
            r = get(rig, d, url, "-H", "Authorization: " + ALICE)
            check_eq(r.status, 502, "revalidation got no answer: 502, not the entry")
            check(r.body() != data_of(path), "never the stored bytes")
            check("a private entry is never served stale" in d.log(), "logged", d.log()[-2000:])
        o.mode = None
        spath = path + "?open=1"
        with rig.dduct(proxy={"filters": FILTERS, "revalidate": "always"}) as d:
            r = get(rig, d, o.url("origin.test", spath))
            check_eq(r.status, 200, "a shared entry")
            settle(d)
            o.mode = "503"
            r = get(rig, d, o.url("origin.test", spath))
            check_eq((r.status, r.body() == data_of("/priv/stale.tar")), (200, True),
                     "a shared entry is served stale")
    finally:
        o.mode = None


if __name__ == "__main__":
    run([test_private_answer_not_served_to_others, test_no_store_not_stored,
         test_public_answer_with_credentials_shared,
         test_blob_with_credentials_not_served_via_other_host,
         test_cdn_redirect_blob_shared_without_head, test_share_private_restores_sharing,
         test_private_entry_never_served_stale])

"""Registry-shaped caching with real curl and the real dduct binary: blobs keyed by digest and
verified while they are written, a wrong body never stored (and the client cut short), a blob
redirected to a CDN host with a signed URL stored under the original key (Authorization dropped
on the way), and revalidate = 'always' letting the origin refuse a client without credentials."""
import hashlib
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cache_rig import TOKEN, add_blob, cache_origin, entries, files_in, origin_gets  # noqa: E402
from dductlib.harness import check, check_eq, curl, run, via  # noqa: E402
from dductlib.origin import pattern_bytes, pattern_sha256  # noqa: E402

FILTERS = ["^/v2/.*/blobs/sha256:\\w+$", "^/redirect/"]


def get(rig, d, url, *extra, kind="http"):
    return curl(rig, via(d, kind) + ["-D", "hdr"] + list(extra) + [url])


def header(r, name):
    with open(os.path.join(r.cwd, "hdr"), "rb") as f:
        text = f.read().decode("latin-1")
    for line in text.split("\r\n\r\n")[-2 if text.endswith("\r\n\r\n") else -1].split("\r\n"):
        k, _, v = line.partition(":")
        if k.strip().lower() == name.lower():
            return v.strip()
    return None


def test_blob_by_digest_shared(rig):
    """A blob is fetched once and then served for the same digest under another repository and
    through another host name, with no origin request; it is stored under its digest and sent
    with the real length and Docker-Content-Digest."""
    o = cache_origin(rig)
    data = pattern_bytes(3 << 20, "blob-a")
    digest = add_blob(o, data)
    p1 = "/v2/library/alpine/blobs/" + digest
    p2 = "/v2/someone/else/blobs/" + digest
    with rig.dduct(proxy={"filters": FILTERS}) as d:
        r = get(rig, d, o.url("origin.test", p1))
        check_eq((r.rc, r.status, r.sha256()), (0, 200, hashlib.sha256(data).hexdigest()), "1st")
        check_eq(header(r, "Content-Length"), str(len(data)), "real length")
        for url, kind in ((o.url("origin.test", p2), "https"), (o.url("y.wild.test", p1), "http")):
            r = get(rig, d, url, kind=kind)
            check_eq((r.rc, r.status, r.body() == data), (0, 200, True), "served " + url)
            check_eq(header(r, "Docker-Content-Digest"), digest, "with its digest")
        check_eq((len(origin_gets(o, p1)), len(origin_gets(o, p2))), (1, 0), "one origin GET")
        hexd = digest.split(":")[1]
        check_eq(entries(d.file_dir), ["c/%s/%s" % (hexd[:2], hexd)], "stored under its digest")


def test_digest_mismatch_not_stored(rig):
    """An origin that sends the wrong bytes for a digest: the client's transfer ends short (curl
    exit 18: it never sees a complete body), nothing is stored, the discard is logged with its
    reason, and the next request goes to the origin again."""
    o = cache_origin(rig)
    right = pattern_bytes(2 << 20, "right")
    wrong = bytearray(right)
    wrong[len(wrong) // 2] ^= 0xff
    digest = "sha256:" + hashlib.sha256(right).hexdigest()
    o.blobs[digest] = bytes(wrong)
    path = "/v2/library/corrupt/blobs/" + digest
    with rig.dduct(proxy={"filters": FILTERS}) as d:
        for i in range(2):
            r = get(rig, d, o.url("origin.test", path))
            check_eq(r.rc, 18, "attempt %d: the client's response is cut short" % i)
            check(os.path.getsize(r.body_path) < len(right), "never the whole body")
        check_eq(len(origin_gets(o, path)), 2, "not stored: asked twice")
        check_eq(entries(d.file_dir), [], "no entry")
        check_eq([f for f in files_in(d.file_dir) if ".part" in f], [], "no .part left")
        check("Fill discarded" in d.log() and "digest" in d.log(), "the discard says why")


def test_redirect_to_cdn_cached_under_original_key(rig):
    """A registry answering 307 to a CDN host with a signed URL: dduct follows it itself, drops
    the client's Authorization for the other host, stores the blob under the original request's
    key, and serves the next request without asking either host. A 302 chain on one host is
    likewise stored under the first URL."""
    o = cache_origin(rig)
    data = pattern_bytes(1 << 20, "cdn")
    digest = add_blob(o, data)
    path = "/v2/cdnrepo/blobs/" + digest
    with rig.dduct(proxy={"filters": FILTERS}) as d:
        for i in range(2):
            r = get(rig, d, o.url("origin.test", path), "-H", "Authorization: " + TOKEN)
            check_eq((r.rc, r.status, r.body() == data), (0, 200, True), "request %d" % i)
        check_eq(len(origin_gets(o, path)), 1, "the registry was asked once")
        cdn = [q for q in o.snapshot()["requests"] if q[1].startswith("/blob/")]
        check_eq(len(cdn), 1, "the CDN was asked once")
        check("sig=s3cr3t" in cdn[0][1], "with the signed query", cdn)
        check_eq(o.cdn_auth, [None], "Authorization was not sent to the CDN host")
        url = rig.origin.url("origin.test", "/redirect/2?to=/bytes/300000")
        for i in range(2):
            r = get(rig, d, url)
            check_eq((r.status, r.sha256()), (200, pattern_sha256(300000)), "302 chain %d" % i)
        check_eq(len(origin_gets(rig.origin, "/bytes/300000")), 1, "302 target fetched once")
        check_eq(len(origin_gets(rig.origin, "/redirect/2")), 1, "first hop asked once")


def test_revalidate_always_asks_the_origin(rig):
    """With revalidate = 'always', a hit first asks the origin (HEAD, the client's own headers):
    a client without credentials gets the origin's 401 although the blob is stored (its request is
    forwarded), and a client with them is served from the file (the origin sees a HEAD, no GET). Without the
    option the blob, fetched with credentials, is private and still refused to the client without
    them; with [cache] share_private = true hits never contact the origin."""
    o = cache_origin(rig)
    data = pattern_bytes(512 << 10, "private")
    digest = add_blob(o, data)
    path = "/v2/private/app/blobs/" + digest
    url = o.url("origin.test", path)
    auth = ["-H", "Authorization: " + TOKEN]
    with rig.dduct(proxy={"filters": FILTERS, "revalidate": "always"}) as d:
        r = get(rig, d, url, *auth)
        check_eq((r.status, r.body() == data), (200, True), "the first, authorised client")
        r = get(rig, d, url)
        check_eq(r.status, 401, "a client without credentials gets the origin's 401")
        check(header(r, "WWW-Authenticate") is not None, "with the origin's challenge")
        gets = len(origin_gets(o, path))
        r = get(rig, d, url, *auth)
        check_eq((r.status, r.body() == data), (200, True), "an authorised client again")
        check_eq(len(origin_gets(o, path)), gets, "no GET: the authorised hit came from the file")
        heads = [q for q in o.snapshot()["requests"] if q[0] == "HEAD" and q[1] == path]
        check_eq(len(heads), 2, "every hit was revalidated with a HEAD")
    with rig.dduct(proxy={"filters": FILTERS}) as d:
        get(rig, d, url, *auth)
        r = get(rig, d, url)
        check_eq(r.status, 401, "by default a blob fetched with credentials is private too")
    with rig.dduct(proxy={"filters": FILTERS}, cache={"share_private": True}) as d:
        get(rig, d, url, *auth)
        n = len(o.snapshot()["requests"])
        r = get(rig, d, url)
        check_eq(r.status, 200, "with share_private a stored blob is served to anyone who asks")
        check_eq(len(o.snapshot()["requests"]), n, "without contacting the origin")


def test_revalidate_refetches_a_changed_file(rig):
    """With revalidate = 'always', a hit whose origin now answers with another ETag and length is
    fetched again and replaces the stored entry; the next hit agrees and comes from the file."""
    o = cache_origin(rig)
    o.versions["pkg.deb"] = pattern_bytes(300000, "v1")
    path = "/ver/pkg.deb"
    url = o.url("origin.test", path)
    with rig.dduct(proxy={"filters": ["^/ver/"], "revalidate": "always"}) as d:
        r = get(rig, d, url)
        check_eq((r.status, r.body() == o.versions["pkg.deb"]), (200, True), "version 1")
        o.versions["pkg.deb"] = pattern_bytes(400000, "v2")
        r = get(rig, d, url)
        check_eq((r.status, r.body() == o.versions["pkg.deb"]), (200, True), "version 2")
        check_eq(len(origin_gets(o, path)), 2, "the changed file was fetched again")
        r = get(rig, d, url)
        check_eq((r.status, r.body() == o.versions["pkg.deb"]), (200, True), "version 2 again")
        check_eq(len(origin_gets(o, path)), 2, "and then served from the file")
        # A fill's readers end before its commit (the rename): wait for both commits.
        deadline = time.monotonic() + 60
        while d.log().count("Fill completed") < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        check_eq(len(entries(d.file_dir)), 1, "one entry, replaced in place")
        check("Changed at origin" in d.log(), "the refetch is logged")


if __name__ == "__main__":
    run([test_blob_by_digest_shared, test_digest_mismatch_not_stored,
         test_redirect_to_cdn_cached_under_original_key, test_revalidate_always_asks_the_origin,
         test_revalidate_refetches_a_changed_file])

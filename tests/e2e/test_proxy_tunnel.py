#!/usr/bin/env python3
"""Blind CONNECT tunnels: hosts outside server_dns_sans/server_ip_sans are not intercepted, the
client talks TLS with the origin itself; CONNECT port policy."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from dductlib import client  # noqa: E402
from dductlib.certs import ORIGIN_CA_CN  # noqa: E402
from dductlib.harness import check, check_eq, curl, run, s_client_cert  # noqa: E402
from dductlib.origin import closed_port, pattern_sha256  # noqa: E402


def test_blind_tunnel_shows_origin_certificate(rig):
    """A CONNECT to blind.example (not in the SAN list) is a blind tunnel: openssl s_client
    through dduct sees the origin's own certificate (issuer: the test origin CA, verified), curl
    trusting only the origin CA succeeds, and curl trusting only dduct's CA fails."""
    o = rig.origin
    with rig.dduct() as d:
        info = s_client_cert(rig, "blind.example:%d" % o.port, "blind.example",
                             proxy="127.0.0.1:%d" % d.tcp_port, cafile=rig.pki.ca_crt)
        check_eq(info["issuer_cn"], ORIGIN_CA_CN, "issuer seen through the tunnel")
        check_eq(info["subject_cn"], "origin.test", "subject seen through the tunnel")
        check_eq(info["verify"], (0, "ok"), "s_client verification with the origin CA")
        url = o.url("blind.example", "/echo/blind")
        r = curl(rig, ["-x", d.http_proxy, "--cacert", rig.pki.ca_crt, url])
        check_eq((r.rc, r.status), (0, 200), "curl with the origin CA (%s)" % r.stderr)
        check_eq(r.json()["sni"], "blind.example", "the client's own SNI reached the origin")
        r = curl(rig, ["-x", d.http_proxy, "--cacert", d.ca_crt, url])
        check_eq(r.rc, 60, "curl trusting only dduct's CA must fail: no interception")


def test_wildcard_covers_one_label_only(rig):
    """'*.wild.test' intercepts x.wild.test (leaf from dduct's CA) but not a.b.wild.test, which
    is tunnelled blind (the origin's own certificate)."""
    o = rig.origin
    with rig.dduct() as d:
        proxy = "127.0.0.1:%d" % d.tcp_port
        info = s_client_cert(rig, "x.wild.test:%d" % o.port, "x.wild.test", proxy=proxy,
                             cafile=d.ca_crt)
        check_eq((info["issuer_cn"], info["verify"][0]), ("dduct e2e CA", 0),
                 "x.wild.test intercepted")
        info = s_client_cert(rig, "a.b.wild.test:%d" % o.port, "a.b.wild.test", proxy=proxy,
                             cafile=rig.pki.ca_crt)
        check_eq((info["issuer_cn"], info["verify"][0]), (ORIGIN_CA_CN, 0),
                 "a.b.wild.test tunnelled blind")


def test_tunnel_through_tls_listener_streams(rig):
    """A blind tunnel through the TLS listener (TLS to dduct, the origin's TLS inside) carries a
    24 MiB body byte-exact, with keep-alive inside the tunnel."""
    o = rig.origin
    n = 24 * 1048576 + 11
    with rig.dduct() as d:
        r = curl(rig, ["--proxy-cacert", d.ca_crt, "-x", d.https_proxy, "--cacert",
                       rig.pki.ca_crt, o.url("blind.example", "/bytes/%d?mode=chunked" % n)])
        check_eq((r.rc, r.status, r.sha256()), (0, 200, pattern_sha256(n)),
                 "24 MiB through a blind tunnel in TLS (%s)" % r.stderr)
        urls = [o.url("blind.example", "/echo/tun/%d" % i) for i in range(3)]
        r = curl(rig, ["-x", d.http_proxy, "--cacert", rig.pki.ca_crt] + urls)
        check_eq([i.get("http_code") for i in r.infos], [200] * 3, "3 requests in one tunnel")
        conns = [c for (m, t, c) in o.snapshot()["requests"] if t.startswith("/echo/tun/")]
        check_eq(len(set(conns)), 1, "one origin connection: the tunnel")


def test_connect_port_policy(rig):
    """Without connect_any_port, a blind CONNECT reaches only the listed ports: a CONNECT to
    another port gets 403 and the origin never sees a connection; listing the port lets it
    through. An intercepted host needs no entry: origin.test (in server_dns_sans) on the
    origin's non-443 port is intercepted and served on the defaults (first run, issue 15)."""
    o = rig.origin
    check(o.port != 443, "the origin listens on a port outside the default connect_ports")
    with rig.dduct(proxy={"connect_any_port": None}) as d:  # the default policy: [443] only
        before = o.snapshot()["connections"]
        t = client.Tcp("127.0.0.1", d.tcp_port)
        status, body, _ = client.connect(t, "blind.example", o.port)
        t.close()
        check_eq(status, 403, "blind CONNECT to a port outside connect_ports")
        check(b"port %d" % o.port in body, "the 403 names the port", body)
        check_eq(o.snapshot()["connections"], before, "origin untouched")
        r = curl(rig, ["-x", d.http_proxy, "--cacert", d.ca_crt, o.url("origin.test", "/echo")])
        # curl trusts only dduct's CA: a 200 means dduct, not the origin, answered the TLS.
        check_eq((r.rc, r.info.get("http_connect"), r.status), (0, 200, 200),
                 "intercepted CONNECT to a non-443 port (%s)" % r.stderr)
    with rig.dduct(proxy={"connect_any_port": False, "connect_ports": [443, o.port]}) as d:
        r = curl(rig, ["-x", d.http_proxy, "--cacert", rig.pki.ca_crt,
                       o.url("blind.example", "/echo/listed")])
        check_eq((r.rc, r.status), (0, 200), "CONNECT to a listed port")


def test_tunnel_to_refused_port(rig):
    """A blind CONNECT to a port nobody listens on gets 502 with a readable body, and the next
    CONNECT works."""
    with rig.dduct() as d:
        t = client.Tcp("127.0.0.1", d.tcp_port)
        status, body, _ = client.connect(t, "blind.example", closed_port())
        t.close()
        check_eq(status, 502, "CONNECT to a closed port")
        check(len(body.strip()) > 0 and body.count(b"\n") <= 1, "one-line body", body)
        o = rig.origin
        r = curl(rig, ["-x", d.http_proxy, "--cacert", rig.pki.ca_crt,
                       o.url("blind.example", "/echo/next")])
        check_eq((r.rc, r.status), (0, 200), "next tunnel works")


if __name__ == "__main__":
    run([test_blind_tunnel_shows_origin_certificate, test_wildcard_covers_one_label_only,
         test_tunnel_through_tls_listener_streams, test_connect_port_policy,
         test_tunnel_to_refused_port])

#!/usr/bin/env python3
"""Interception: CONNECTs to covered hosts get a leaf minted by dduct's CA for exactly that host;
TLS inside TLS through the TLS listener."""
import hashlib
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from dductlib import certs, client  # noqa: E402
from dductlib.harness import DDUCT_CA_CN, check, check_eq, curl, run, s_client_cert  # noqa: E402
from dductlib.origin import pattern_sha256  # noqa: E402


def test_leaf_for_exactly_the_host(rig):
    """openssl s_client through dduct: origin.test and x.wild.test (via '*.wild.test') each get a
    leaf issued by dduct's CA whose only SAN is that exact host, verifying against ca.crt; the
    IP SAN 127.0.0.1 is intercepted with an IP leaf; the leaf is cached and reused."""
    o = rig.origin
    with rig.dduct() as d:
        proxy = "127.0.0.1:%d" % d.tcp_port
        pems = []
        for host in ("origin.test", "x.wild.test", "origin.test"):
            info = s_client_cert(rig, "%s:%d" % (host, o.port), host, proxy=proxy,
                                 cafile=d.ca_crt)
            check_eq(info["issuer_cn"], DDUCT_CA_CN, host + ": issuer")
            check_eq(info["san"], ["DNS:" + host], host + ": SANs of the minted leaf")
            check_eq(info["verify"], (0, "ok"), host + ": verifies against dduct's ca.crt")
            pems.append(info["pem"])
        check_eq(pems[0], pems[2], "the leaf for origin.test is reused, not minted twice")
        check(pems[0] != pems[1], "different hosts, different leaves")
        info = s_client_cert(rig, "127.0.0.1:%d" % o.port, None, proxy=proxy)
        check_eq((info["issuer_cn"], info["san"]), (DDUCT_CA_CN, ["IP:127.0.0.1"]),
                 "CONNECT 127.0.0.1: leaf for the IP")


def test_connect_host_beats_sni(rig):
    """The leaf names the CONNECT line's host: with no SNI, or with an SNI naming another covered
    host, the client still gets a leaf for exactly the CONNECT host."""
    o = rig.origin
    with rig.dduct() as d:
        proxy = "127.0.0.1:%d" % d.tcp_port
        info = s_client_cert(rig, "origin.test:%d" % o.port, "x.wild.test", proxy=proxy)
        check_eq(info["san"], ["DNS:origin.test"], "SNI x.wild.test inside CONNECT origin.test")
        info = s_client_cert(rig, "origin.test:%d" % o.port, None, proxy=proxy)
        check_eq(info["san"], ["DNS:origin.test"], "no SNI inside CONNECT origin.test")


def test_intercepted_request_reaches_origin(rig):
    """Inside an intercepted CONNECT, dduct verifies the origin against upstream_ca_file, sends
    SNI and the Host with the CONNECT port, and relays the answer."""
    o = rig.origin
    with rig.dduct() as d:
        r = curl(rig, ["-x", d.http_proxy, "--cacert", d.ca_crt, "-v",
                       o.url("origin.test", "/echo/inside")])
        check_eq((r.rc, r.status), (0, 200), "intercepted request (%s)" % r.stderr[-1500:])
        check("issuer: CN=" + DDUCT_CA_CN in r.stderr, "curl saw dduct's leaf", r.stderr[-1500:])
        doc = r.json()
        h = dict((k.lower(), v) for k, v in doc["headers"])
        check_eq((doc["tls"], doc["sni"], h["host"]),
                 (True, "origin.test", "origin.test:%d" % o.port), "origin side")


def test_tls_in_tls(rig):
    """TLS to the TLS listener (verified as 127.0.0.1 by dduct's CA), CONNECT, then TLS inside it
    with a leaf for exactly origin.test: keep-alive requests and a 32 MiB chunked body come back
    byte-exact (Python client with nested TLS over memory BIOs)."""
    o = rig.origin
    n = 32 * 1048576 + 1
    with rig.dduct() as d:
        ctx = client.tls_context(d.ca_crt)
        outer = client.SslSock(client.Tcp("127.0.0.1", d.tls_port), ctx, "127.0.0.1")
        pc = certs.cert_info(outer.peer_cert_der(), der=True)
        check_eq(pc["issuer_cn"], DDUCT_CA_CN, "TLS listener certificate issuer")
        status, _, _ = client.connect(outer, "origin.test", o.port)
        check_eq(status, 200, "CONNECT inside TLS")
        inner = client.BioTls(outer, ctx, "origin.test")
        ic = certs.cert_info(inner.peer_cert_der(), der=True)
        check_eq((ic["issuer_cn"], ic["san"]), (DDUCT_CA_CN, ["DNS:origin.test"]), "inner leaf")
        rd = client.Reader(inner)
        host = "origin.test:%d" % o.port
        for i in range(3):
            inner.sendall(client.request_bytes("GET", "/echo/tt/%d" % i, host))
            r = rd.read_response()
            check_eq((r.status, json.loads(r.body)["target"]), (200, "/echo/tt/%d" % i),
                     "request %d" % i)
        inner.sendall(client.request_bytes("GET", "/bytes/%d?mode=chunked" % n, host))
        r = rd.read_response()
        check_eq((r.status, len(r.body)), (200, n), "32 MiB answer")
        check_eq(hashlib.sha256(r.body).hexdigest(), pattern_sha256(n), "32 MiB digest")
        inner.close()
        conns = [c for (m, t, c) in o.snapshot()["requests"] if t.startswith("/echo/tt/")]
        check_eq(len(set(conns)), 1, "one origin connection for the three requests")


if __name__ == "__main__":
    run([test_leaf_for_exactly_the_host, test_connect_host_beats_sni,
         test_intercepted_request_reaches_origin, test_tls_in_tls])

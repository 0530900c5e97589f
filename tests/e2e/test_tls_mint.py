#!/usr/bin/env python3
"""Leaves minted off the loop (issue 17): a CONNECT to a host with no cached leaf has it minted on
libuv's thread pool while its handshake waits, and a burst of CONNECTs to one new host mints it
once; every client of the burst gets a verified leaf and its response. Minted leaves are kept
under cert_dir/leaves/, so a restarted dduct presents the same leaf without minting it."""
import os
import socket
import struct
import subprocess
import sys
import threading

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from dductlib.harness import check, check_eq, curl, run, s_client_cert, via  # noqa: E402
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


LOADED = 'Loaded the certificate for "origin.test"'


def serial(pem):
    p = subprocess.run(["openssl", "x509", "-noout", "-serial"], input=pem.encode(),
                       capture_output=True, check=True)
    return p.stdout.decode().strip()


def test_restart_presents_the_leaf_from_disk(rig):
    """A leaf minted by one dduct is written under cert_dir/leaves/ (0600, directory 0700); a
    restarted dduct on the same cert_dir presents the same leaf (same serial) and mints nothing
    for the host; a corrupted leaf file is ignored, minted again and replaced by a valid one."""
    o = rig.origin
    cert_dir = os.path.join(rig.tmp, "certs-restart")
    rig.install_cert_dir(cert_dir)
    leaves = os.path.join(cert_dir, "leaves")
    connect = "origin.test:%d" % o.port

    def present():
        with rig.dduct(cert_dir=cert_dir) as d:
            info = s_client_cert(rig, connect, "origin.test", proxy="127.0.0.1:%d" % d.tcp_port,
                                 cafile=d.ca_crt)
            check_eq((info["san"], info["verify"]), (["DNS:origin.test"], (0, "ok")),
                     "the leaf verifies for origin.test")
            log = d.log()
        return serial(info["pem"]), log

    first, log = present()
    check_eq(log.count(MINTED), 1, "the first dduct mints the leaf")
    files = sorted(os.listdir(leaves))
    check_eq(len(files), 1, "one file under cert_dir/leaves/")
    path = os.path.join(leaves, files[0])
    check_eq(oct(os.stat(path).st_mode & 0o777), "0o600", "the leaf file (it holds the key) is 0600")
    check_eq(oct(os.stat(leaves).st_mode & 0o777), "0o700", "the leaves directory is 0700")
    with open(path) as f:
        text = f.read()
    check("BEGIN CERTIFICATE" in text and "PRIVATE KEY" in text, "the file holds leaf and key")

    second, log = present()
    check_eq(second, first, "after a restart the same leaf (serial) is presented")
    check_eq(log.count(MINTED), 0, "the restarted dduct mints nothing for origin.test")
    check(LOADED in log, "it loaded the leaf from its file", log[-2000:])

    with open(path, "w") as f:
        f.write("-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n")
    third, log = present()
    check(third != first, "a corrupted file is not used: a new leaf is presented")
    check_eq(log.count(MINTED), 1, "the leaf is minted again")
    check('Ignoring "%s"' % path in log, "the log names the ignored file", log[-2000:])
    with open(path) as f:
        check_eq(serial(f.read()), third, "the file now holds the new leaf")
    check_eq(oct(os.stat(path).st_mode & 0o777), "0o600", "the replaced file is 0600")


def test_tls_listener_mints_sni_names_off_the_loop(rig):
    """On tls_bind, 16 clients at once each ask (SNI) for a different new intercepted name, and 4
    more for one of them: all 20 verify a leaf for exactly their name; the log shows one mint per
    name, every one off the loop (the ClientHello's server_name is read before mbedTLS starts),
    and none on the loop. A client without SNI and one naming a host not intercepted still get
    server.crt."""
    names = ["n%d.wild.test" % i for i in range(16)]
    asks = names + [names[0]] * 4
    with rig.dduct() as d:
        addr = "127.0.0.1:%d" % d.tls_port
        got = [None] * len(asks)

        def one(i):
            try:
                got[i] = s_client_cert(rig, addr, asks[i], cafile=d.ca_crt)
            except Exception as e:  # reported below, with the others
                got[i] = e

        threads = [threading.Thread(target=one, args=(i,)) for i in range(len(asks))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for name, info in zip(asks, got):
            check(isinstance(info, dict), name + ": a certificate", repr(info))
            check_eq((info["san"], info["verify"]), (["DNS:" + name], (0, "ok")),
                     name + ": a verified leaf for exactly its name")
        plain = s_client_cert(rig, addr, None)
        check_eq(plain["subject_cn"], "proxy.test", "no SNI: server.crt")
        other = s_client_cert(rig, addr, "not-intercepted.example")
        check_eq(other["subject_cn"], "proxy.test", "a name not intercepted: server.crt")
        log = d.log()
    for name in names:
        line = 'Minted a certificate for "%s"' % name
        check_eq(log.count(line), 1, name + ": minted once")
        check_eq(log.count(line + " (off the loop)"), 1, name + ": off the loop")


def client_hello(names, sni_extensions):
    """A TLS 1.2 ClientHello (ECDHE with AES-GCM and ChaCha20, P-256/X25519) whose server_name
    is given sni_extensions times, each naming names[i] (mbedTLS 2.28 does not refuse a repeated
    extension: it calls its SNI callback once per copy)."""
    def ext(kind, body):
        return struct.pack(">HH", kind, len(body)) + body

    def sni(name):
        n = name.encode()
        entry = b"\x00" + struct.pack(">H", len(n)) + n
        return ext(0, struct.pack(">H", len(entry)) + entry)
    suites = [0xC02B, 0xC02F, 0xCCA9, 0xCCA8, 0xC02C, 0xC030]
    exts = b"".join(sni(names[i]) for i in range(sni_extensions))
    exts += ext(10, struct.pack(">HHHH", 6, 0x001D, 0x0017, 0x0018))  # supported_groups
    exts += ext(11, b"\x01\x00")  # ec_point_formats: uncompressed
    exts += ext(13, struct.pack(">H", 8) + struct.pack(">HHHH", 0x0403, 0x0503, 0x0804, 0x0401))
    body = (b"\x03\x03" + os.urandom(32) + b"\x00" +
            struct.pack(">H", 2 * len(suites)) + b"".join(struct.pack(">H", c) for c in suites) +
            b"\x01\x00" + struct.pack(">H", len(exts)) + exts)
    hs = b"\x01" + struct.pack(">I", len(body))[1:] + body
    return b"\x16\x03\x01" + struct.pack(">H", len(hs)) + hs


def first_record_type(port, hello):
    """Send hello to the TLS listener: the content type of the first record it answers with
    (22 handshake, 21 alert), or None if it closes without one."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(hello)
        try:
            head = s.recv(1)
        except ConnectionResetError:
            return None
        return head[0] if head else None


def test_two_server_names_refused(rig):
    """A ClientHello carrying two server_name extensions that name two different intercepted
    hosts is refused (an alert, no certificate): the handshake would otherwise present the first
    name's leaf after dduct let go of it. The same hello with one server_name gets a ServerHello,
    so the hand-made hello itself is sound."""
    with rig.dduct() as d:
        names = ["two-a.wild.test", "two-b.wild.test"]
        check_eq(first_record_type(d.tls_port, client_hello(names, 1)), 22,
                 "one server_name: the handshake goes on")
        got = first_record_type(d.tls_port, client_hello(names, 2))
        check(got in (21, None), "two different server_names: refused", got)
        check("refused a ClientHello naming two hosts" in d.log(), "the log says why",
              d.log()[-2000:])


if __name__ == "__main__":
    run([test_burst_to_a_new_host_mints_once, test_restart_presents_the_leaf_from_disk,
         test_tls_listener_mints_sni_names_off_the_loop, test_two_server_names_refused])

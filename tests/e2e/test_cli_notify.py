#!/usr/bin/env python3
"""systemd readiness (Type=notify in the Debian unit) without libsystemd: with $NOTIFY_SOCKET
set, dduct sends READY=1 once its listeners accept and STOPPING=1 on SIGTERM, as single
datagrams, to a path or an abstract socket; without it nothing is sent."""
import os
import socket
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from dductlib.harness import check, check_eq, run  # noqa: E402


def _recv(sock, what):
    sock.settimeout(60)
    try:
        return sock.recv(4096)
    except socket.timeout:
        check(False, "a datagram: " + what)


def _notify_cycle(rig, addr, env_value):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(addr)
    try:
        d = rig.dduct(env={"NOTIFY_SOCKET": env_value}).start()
        try:
            check_eq(_recv(s, "READY=1"), b"READY=1", "first datagram")
            for port in (d.tcp_port, d.tls_port):  # ready means accepting
                c = socket.create_connection(("127.0.0.1", port), timeout=10)
                c.close()
            d.send_signal()
            check_eq(_recv(s, "STOPPING=1"), b"STOPPING=1", "datagram on SIGTERM")
        finally:
            d.stop()
    finally:
        s.close()


def test_ready_and_stopping_to_a_path(rig):
    """NOTIFY_SOCKET=/path: READY=1 after both listeners accept, STOPPING=1 on SIGTERM, clean
    exit."""
    path = os.path.join(rig.tmp, "notify.sock")
    _notify_cycle(rig, path, path)


def test_ready_to_an_abstract_socket(rig):
    """NOTIFY_SOCKET=@name addresses the abstract socket "\\0name" (how systemd may set it)."""
    name = "dduct-notify-%d" % os.getpid()
    _notify_cycle(rig, "\0" + name, "@" + name)


def test_unset_sends_nothing(rig):
    """Without NOTIFY_SOCKET dduct starts and stops as before (no warning in its log)."""
    with rig.dduct() as d:
        pass
    check("NOTIFY_SOCKET" not in d.log(), "no notify warning", d.log()[-2000:])


if __name__ == "__main__":
    run([test_ready_and_stopping_to_a_path, test_ready_to_an_abstract_socket,
         test_unset_sends_nothing])

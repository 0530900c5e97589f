"""Debian's real squid as the corporate proxy dduct chains through: our own instance with a
generated squid.conf on a free port, its own dirs under a temp dir, no cache, names resolved
from its own hosts file (the test names all live on 127.0.0.1), optional Basic auth through
squid's basic_ncsa_auth helper and an htpasswd file made with `openssl passwd`. Started by the
test, ended by PID."""
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time

from dductlib.harness import TestFailure, check, free_port

SQUID = "/usr/sbin/squid"
NCSA = "/usr/lib/squid/basic_ncsa_auth"


def available():
    return os.access(SQUID, os.X_OK) and os.access(NCSA, os.X_OK)


class Squid:
    def __init__(self, names, users=None):
        """names: host names squid resolves to 127.0.0.1; users: {user: password} turns on
        Basic auth (every request must carry valid credentials)."""
        # Squid drops root for its own user: its dir must be that user's, outside the rig's
        # 0700 temp dir.
        self.dir = tempfile.mkdtemp(prefix="dduct-squid-")
        os.chmod(self.dir, 0o755)
        self.port = free_port()
        self.users = users or {}
        self.proc = None
        with open(self.path("hosts"), "w") as f:
            f.write("127.0.0.1 %s\n" % " ".join(names))
        auth = ""
        if self.users:
            with open(self.path("passwd"), "w") as f:
                for u, pw in self.users.items():
                    h = subprocess.run(["openssl", "passwd", "-1", pw], capture_output=True,
                                       text=True, check=True).stdout.strip()
                    f.write("%s:%s\n" % (u, h))
            auth = ("auth_param basic program %s %s\n"
                    "auth_param basic children 2\n"
                    "auth_param basic realm dduct-e2e\n"
                    "acl authed proxy_auth REQUIRED\n"
                    "http_access allow authed\n") % (NCSA, self.path("passwd"))
        else:
            auth = "http_access allow localhost\n"
        # A corporate policy: this name is refused (403) whoever asks.
        auth = "acl denied dstdomain deny.wild.test\nhttp_access deny denied\n" + auth
        conf = ("http_port 127.0.0.1:%d\n" % self.port +
                "pid_filename %s\n" % self.path("squid.pid") +
                "cache_log %s\n" % self.path("cache.log") +
                "access_log %s\n" % self.path("access.log") +
                "cache_store_log none\n"
                "cache deny all\n"
                "coredump_dir %s\n" % self.dir +
                "hosts_file %s\n" % self.path("hosts") +
                "visible_hostname squid.test\n"
                "shutdown_lifetime 0 seconds\n"
                "pinger_enable off\n"
                "via on\n" + auth +
                "http_access deny all\n")
        if os.getuid() == 0:
            conf += "cache_effective_user proxy\n"
        with open(self.path("squid.conf"), "w") as f:
            f.write(conf)
        if os.getuid() == 0:
            pw = pwd.getpwnam("proxy")
            for root, dirs, files in os.walk(self.dir):
                for n in dirs + files + ["."]:
                    os.chown(os.path.join(root, n), pw.pw_uid, pw.pw_gid)

    def path(self, name):
        return os.path.join(self.dir, name)

    @property
    def url(self):
        return "http://127.0.0.1:%d" % self.port

    def start(self, timeout=30):
        self.out = open(self.path("stdout.log"), "wb")
        self.proc = subprocess.Popen([SQUID, "-N", "-f", self.path("squid.conf")],
                                     stdin=subprocess.DEVNULL, stdout=self.out,
                                     stderr=subprocess.STDOUT, cwd=self.dir)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise TestFailure("squid exited with %s:\n%s" % (self.proc.returncode,
                                                                 self.log()[-3000:]))
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return self
            except OSError:
                time.sleep(0.1)
        raise TestFailure("squid did not listen within %ds:\n%s" % (timeout, self.log()[-3000:]))

    def log(self):
        out = []
        for n in ("stdout.log", "cache.log"):
            try:
                with open(self.path(n), "rb") as f:
                    out.append(f.read().decode("utf-8", "replace"))
            except OSError:
                pass
        return "\n".join(out)

    def access(self):
        """access.log lines as (result/status, method, url, user); squid writes them as
        requests end, so wait for the count the caller expects with wait_access()."""
        try:
            with open(self.path("access.log")) as f:
                lines = f.read().splitlines()
        except OSError:
            return []
        out = []
        for ln in lines:
            parts = ln.split()
            if len(parts) >= 8:
                out.append((parts[3], parts[5], parts[6], parts[7]))
        return out

    def wait_access(self, pred, what, timeout=20):
        deadline = time.monotonic() + timeout
        while True:
            got = [a for a in self.access() if pred(a)]
            if got:
                return got
            if time.monotonic() > deadline:
                raise TestFailure("squid's access.log has no line for %s: %r"
                                  % (what, self.access()[-10:]))
            time.sleep(0.1)

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc is not None:
            self.out.close()
        if os.environ.get("DDUCT_E2E_KEEP") != "1":
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
        return False

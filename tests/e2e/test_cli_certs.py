#!/usr/bin/env python3
"""The real dduct binary on a temp config: the seed's eight certificate files with their modes and
log lines, the restart that reads them all, the `rm server.*` regeneration, the files checked by
openssl (verify, SANs, PKCS#12), and the CLI itself (--check, --version, --help, config errors
with FILE:LINE:COL and exit status 2, dduct.toml found beside the executable).

Environment: DDUCT_BIN (the dduct executable), DDUCT_SRC (the source tree)."""
import os
import queue
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from dductlib.harness import free_port  # noqa: E402

BIN = os.environ.get("DDUCT_BIN", "")
SRC = os.environ.get("DDUCT_SRC", "")
RUN_TIMEOUT = 180  # a safety net for a hung binary, not a speed assertion
FILES = ["ca.key", "ca.crt", "server.key", "server.crt", "server.p12",
         "client.key", "client.crt", "client.p12"]
SEED_DNS_SANS = ["*.dduct.rs", "*.docker.io", "*.gcr.io", "*.githubusercontent.com", "*.k8s.io",
                 "*.quay.io", "ghcr.io", "quay.io"]
LOG_RE = re.compile(r"^\[(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ) (ERROR|WARN |INFO |DEBUG|TRACE) "
                    r"dduct::(\w+)\] (.*)$")
SEED_MODULES = ("ssl_certs", "serve", "http_proxy", "tls_mitm")


def lib_has(source_name):
    """Whether libdduct's build lists a source file (parts of the library land over time)."""
    with open(os.path.join(SRC, "libdduct", "meson.build")) as f:
        return ("'src/%s'" % source_name) in f.read()


def clean_env(home):
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": home, "LC_ALL": "C"}


class Run:
    def __init__(self, rc, out, lines):
        self.rc, self.out, self.lines = rc, out, lines

    def seed_lines(self):
        """(level, module, message) of the INFO lines of the seed's modules, timestamps aside."""
        res = []
        for line in self.lines:
            m = LOG_RE.match(line)
            if m and m.group(2) == "INFO " and m.group(3) in SEED_MODULES:
                res.append((m.group(2).strip(), m.group(3), m.group(4)))
        return res

    def log(self):
        return "\n".join(self.lines)


def run_dduct(args, home, stop_after=None, exe=None, on_start=None):
    """Run dduct, collect its stderr lines; if stop_after (a substring) shows up in a line, send
    SIGTERM. on_start(process) runs in a thread of its own. Kills the process (by PID) if
    anything goes wrong or it outlives RUN_TIMEOUT."""
    p = subprocess.Popen([exe or BIN] + args, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         stdin=subprocess.DEVNULL, env=clean_env(home), text=True)
    if on_start is not None:
        threading.Thread(target=on_start, args=(p,), daemon=True).start()
    q = queue.Queue()
    out = []

    def pump_err():
        for line in p.stderr:
            q.put(line.rstrip("\n"))
        q.put(None)

    def pump_out():
        out.append(p.stdout.read())

    threads = [threading.Thread(target=pump_err, daemon=True),
               threading.Thread(target=pump_out, daemon=True)]
    for t in threads:
        t.start()
    lines = []
    deadline = time.monotonic() + RUN_TIMEOUT
    try:
        while True:
            try:
                line = q.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError("dduct %s did not finish; log so far:\n%s"
                                     % (args, "\n".join(lines)))
            if line is None:
                break
            lines.append(line)
            if stop_after is not None and stop_after in line:
                p.send_signal(signal.SIGTERM)
        rc = p.wait(timeout=max(1, deadline - time.monotonic()))
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        for t in threads:
            t.join(timeout=10)
        p.stdout.close()
        p.stderr.close()
    return Run(rc, "".join(out), lines)


def openssl(*args, check=True):
    r = subprocess.run(["openssl"] + list(args), capture_output=True, text=True,
                       env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C"})
    if check and r.returncode != 0:
        raise AssertionError("openssl %s failed: %s%s" % (" ".join(args), r.stdout, r.stderr))
    return r


class CliBase(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        if not BIN or not os.access(BIN, os.X_OK):
            raise unittest.SkipTest("DDUCT_BIN does not name an executable")
        cls.tmp = tempfile.mkdtemp(prefix="dduct-e2e-cli-")

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def write(self, name, text):
        path = os.path.join(self.tmp, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(text)
        return path


class TestCertificates(CliBase):
    """One cert_dir through a first run, a restart and a `rm server.*` (tests run in order)."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        if not lib_has("ca.c"):
            raise unittest.SkipTest("libdduct has no certificate authority yet")
        cls.proxy = lib_has("proxy.c")
        cls.store = lib_has("store.c")
        cls.certs = os.path.join(cls.tmp, "certs") + "/"
        cls.files = os.path.join(cls.tmp, "files") + "/"
        cls.tcp = "127.0.0.1:%d" % free_port() if cls.proxy else ""
        cls.tls = "127.0.0.1:%d" % free_port() if cls.proxy else ""
        cls.cfg = os.path.join(cls.tmp, "dduct.toml")
        with open(cls.cfg, "w") as f:
            f.write("""# written by test_cli_certs.py
[misc]
log_level = 'info'
cert_dir  = '%s'
file_dir  = '%s'

[proxy]
tcp_bind = '%s'
tls_bind = '%s'
admin_bind = ''
shutdown_grace = 1

[certs]
rsa_key_bits    = 2048
days_from_now   = 30
server_dns_sans = [%s, 'origin.test']
server_ip_sans  = ['127.0.0.1', '::1']
""" % (cls.certs, cls.files, cls.tcp, cls.tls, ", ".join("'%s'" % n for n in SEED_DNS_SANS)))

    def run_once(self):
        r = run_dduct(["--cfg", self.cfg], self.tmp,
                      stop_after="dduct::tls_mitm] Listening on" if self.proxy else None)
        self.assertEqual(r.rc, 0, "dduct failed:\n" + r.log())
        for line in r.lines:
            self.assertRegex(line, LOG_RE, "every stderr line has the seed's log format")
        return r

    def expect(self, ops):
        """The seed's listing for the given Read/Write sequence over FILES, then the serving
        lines when the proxy is built in."""
        lines = [("INFO", "ssl_certs", '%s "%s%s"' % (op, self.certs, name))
                 for op, name in zip(ops, FILES)]
        if self.proxy and self.store:
            lines.append(("INFO", "serve", 'Files "%s"' % self.files))
        if self.proxy:
            lines += [("INFO", "http_proxy", "Listening on " + self.tcp),
                      ("INFO", "tls_mitm", "Listening on " + self.tls)]
        return lines

    def read(self, name):
        with open(os.path.join(self.certs, name), "rb") as f:
            return f.read()

    def test_1_first_run_writes_the_eight_files(self):
        r = self.run_once()
        self.assertEqual(r.seed_lines(), self.expect(["Write"] * 8), r.log())
        self.assertEqual(stat.S_IMODE(os.stat(self.certs).st_mode), 0o700, "cert_dir is 0700")
        for name in FILES:
            mode = stat.S_IMODE(os.stat(os.path.join(self.certs, name)).st_mode)
            if name.endswith(".key") or name.endswith(".p12"):
                self.assertEqual(mode, 0o600, "%s (private key material) is 0600" % name)
            else:
                self.assertEqual(mode & 0o022, 0, "%s is not writable by others" % name)
        for name in ("ca.key", "server.key", "client.key"):
            self.assertIn(b"-----BEGIN", self.read(name), "%s is PEM" % name)
            r = openssl("pkey", "-in", os.path.join(self.certs, name), "-noout", "-text")
            self.assertIn("2048 bit", r.stdout, "%s has rsa_key_bits bits" % name)
        leftovers = [n for n in os.listdir(self.certs) if n not in FILES + ["leaves"]]
        self.assertEqual(leftovers, [], "no temporary files are left in cert_dir")
        leaves = os.path.join(self.certs, "leaves")
        self.assertEqual(stat.S_IMODE(os.stat(leaves).st_mode), 0o700,
                         "leaves/ (minted leaves and their keys) is 0700")

    def test_2_openssl_verifies_server_and_client(self):
        r = subprocess.run(["openssl", "verify", "-CAfile", "ca.crt", "server.crt", "client.crt"],
                           capture_output=True, text=True, cwd=self.certs)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertEqual(r.stdout.split(), ["server.crt:", "OK", "client.crt:", "OK"])
        ca = openssl("x509", "-in", self.certs + "ca.crt", "-noout", "-subject").stdout
        self.assertIn("CN = dduct", ca, "ca_cn default")
        cl = openssl("x509", "-in", self.certs + "client.crt", "-noout", "-subject").stdout
        self.assertIn("CN = client.dduct.rs", cl, "client_cn default")

    def test_3_server_certificate_carries_the_configured_sans(self):
        crt = self.certs + "server.crt"
        text = openssl("x509", "-in", crt, "-noout", "-ext", "subjectAltName").stdout
        sans = [s.strip() for s in text.split("\n", 1)[1].split(",")]
        want = ["DNS:" + n for n in SEED_DNS_SANS + ["origin.test"]] + \
            ["IP Address:127.0.0.1", "IP Address:0:0:0:0:0:0:0:1"]
        self.assertEqual(sorted(sans), sorted(want))
        subject = openssl("x509", "-in", crt, "-noout", "-subject").stdout
        self.assertIn("CN = *.dduct.rs", subject, "server_cn default")
        dates = openssl("x509", "-in", crt, "-noout", "-checkend", str(29 * 86400), check=False)
        self.assertEqual(dates.returncode, 0, "valid for at least 29 of the 30 days")
        dates = openssl("x509", "-in", crt, "-noout", "-checkend", str(31 * 86400), check=False)
        self.assertNotEqual(dates.returncode, 0, "not valid beyond days_from_now")

    def test_4_p12_files_open_with_the_password_only(self):
        for name in ("server.p12", "client.p12"):
            path = self.certs + name
            openssl("pkcs12", "-in", path, "-info", "-noout", "-passin", "pass:dduct")
            bad = openssl("pkcs12", "-in", path, "-info", "-noout", "-passin", "pass:wrong",
                          check=False)
            self.assertNotEqual(bad.returncode, 0, "%s rejects a wrong password" % name)
            pem = openssl("pkcs12", "-in", path, "-nodes", "-passin", "pass:dduct").stdout
            self.assertIn("PRIVATE KEY-----", pem, "%s holds the key" % name)
            self.assertIn("CERTIFICATE-----", pem, "%s holds the certificate" % name)

    def test_5_restart_reads_all_eight(self):
        before = {n: self.read(n) for n in FILES}
        r = self.run_once()
        self.assertEqual(r.seed_lines(), self.expect(["Read"] * 8), r.log())
        self.assertEqual({n: self.read(n) for n in FILES}, before, "nothing was rewritten")

    def test_6_rm_server_regenerates_only_server_files(self):
        before = {n: self.read(n) for n in FILES}
        for name in ("server.key", "server.crt", "server.p12"):
            os.unlink(self.certs + name)
        r = self.run_once()
        ops = ["Read", "Read", "Write", "Write", "Write", "Read", "Read", "Read"]
        self.assertEqual(r.seed_lines(), self.expect(ops), r.log())
        after = {n: self.read(n) for n in FILES}
        for name in FILES:
            if name.startswith("server."):
                self.assertNotEqual(after[name], before[name], "%s was regenerated" % name)
            else:
                self.assertEqual(after[name], before[name], "%s was kept" % name)
        r = subprocess.run(["openssl", "verify", "-CAfile", "ca.crt", "server.crt"],
                           capture_output=True, text=True, cwd=self.certs)
        self.assertEqual(r.returncode, 0, "the new server.crt is signed by the kept CA")

    def test_6b_log_level_error_is_silent_when_all_is_well(self):
        with open(self.cfg) as f:
            cfg = self.write("quiet.toml", f.read().replace("log_level = 'info'",
                                                            "log_level = 'error'"))
        # Nothing will be logged: with the proxy, stop it once both ports accept connections.
        r = run_dduct(["--cfg", cfg], self.tmp,
                      on_start=self.stop_when_listening if self.proxy else None)
        self.assertEqual(r.rc, 0, r.log())
        self.assertEqual(r.lines, [], "no INFO lines at log_level 'error'")

    def stop_when_listening(self, p):
        for addr in (self.tcp, self.tls):
            host, port = addr.rsplit(":", 1)
            deadline = time.monotonic() + RUN_TIMEOUT
            while time.monotonic() < deadline and p.poll() is None:
                try:
                    socket.create_connection((host, int(port)), timeout=5).close()
                    break
                except OSError:
                    time.sleep(0.05)
        if p.poll() is None:
            p.send_signal(signal.SIGINT)

    def test_6c_a_port_in_use_fails_cleanly(self):
        if not self.proxy:
            self.skipTest("libdduct has no proxy engine yet")
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
            busy.bind(("127.0.0.1", 0))
            busy.listen(1)
            taken = "127.0.0.1:%d" % busy.getsockname()[1]
            with open(self.cfg) as f:
                cfg = self.write("busy.toml", f.read().replace(self.tls, taken))
            r = run_dduct(["--cfg", cfg], self.tmp)
        self.assertEqual(r.rc, 1, "a listener that cannot bind is a runtime failure:\n" + r.log())
        self.assertRegex(r.log(), r"ERROR dduct::tls_mitm\] Listening on %s: " % re.escape(taken))

    def test_7_corrupt_file_fails_without_overwriting(self):
        bad = os.path.join(self.tmp, "bad-certs") + "/"
        shutil.copytree(self.certs, bad)
        with open(bad + "ca.crt", "w") as f:
            f.write("-----BEGIN CERTIFICATE-----\nnot a certificate\n-----END CERTIFICATE-----\n")
        with open(self.cfg) as f:
            cfg = self.write("bad.toml", f.read().replace(self.certs, bad))
        r = run_dduct(["--cfg", cfg], self.tmp)
        self.assertEqual(r.rc, 1, "a corrupt CA is a runtime failure:\n" + r.log())
        self.assertIn("ca.crt", r.log(), "the error names the file")
        with open(bad + "ca.crt") as f:
            self.assertIn("not a certificate", f.read(), "the corrupt file was not overwritten")


class TestCli(CliBase):
    def dduct(self, *args, exe=None):
        return subprocess.run([exe or BIN] + list(args), capture_output=True, text=True,
                              env=clean_env(self.tmp), timeout=RUN_TIMEOUT)

    def test_version_prints_the_project_version(self):
        r = self.dduct("--version")
        self.assertEqual(r.returncode, 0)
        with open(os.path.join(SRC, "meson.build")) as f:
            version = re.search(r"version:\s*'([^']+)'", f.read()).group(1)
        self.assertEqual(r.stdout, "dduct %s\n" % version)

    def test_help_lists_the_options(self):
        r = self.dduct("--help")
        self.assertEqual(r.returncode, 0)
        for opt in ("--cfg", "--check", "--version", "--help"):
            self.assertIn(opt, r.stdout)

    def test_unknown_option_is_a_usage_error(self):
        r = self.dduct("--frobnicate")
        self.assertEqual(r.returncode, 2)
        self.assertIn("unknown option '--frobnicate'", r.stderr)

    def test_check_prints_effective_settings_that_read_back_the_same(self):
        certs = os.path.join(self.tmp, "never-created") + "/"
        cfg = self.write("check.toml", "[misc]\ncert_dir = '%s'\n[certs]\nrsa_key_bits = 4096\n"
                         "server_ip_sans = ['127.0.0.1', '::1']\n[proxy]\ntls_bind = ''\n"
                         % certs)
        for args in (["--check", "--cfg", cfg], ["--check", "-c", cfg], ["--check", "--cfg=" + cfg]):
            r = self.dduct(*args)
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertEqual(r.stdout.splitlines()[0],
                             "# dduct %s: effective configuration (from %s)"
                             % (self.dduct("--version").stdout.split()[1], cfg))
        self.assertIn("cert_dir   = '%s'\n" % certs, r.stdout)
        self.assertRegex(r.stdout, r"\nrsa_key_bits +  = 4096\n")
        # [proxy]'s column is as wide as its longest key (max_connections_per_client).
        self.assertRegex(r.stdout, r"\ntls_bind +  = ''\n")
        self.assertRegex(r.stdout, r"\ntcp_bind +  = '127.0.0.1:8000'\n", "defaults fill in")
        self.assertRegex(r.stdout, r"\nserver_ip_sans +  = \[\n  '127.0.0.1',\n  '::1',\n\]\n")
        self.assertFalse(os.path.exists(certs), "--check creates nothing")
        again = self.write("again.toml", r.stdout)
        r2 = self.dduct("--check", "--cfg", again)
        self.assertEqual(r2.returncode, 0, r2.stderr)
        self.assertEqual(r2.stdout.splitlines()[1:], r.stdout.splitlines()[1:],
                         "the printed settings are a config that reads back the same")

    def test_config_errors_exit_2_with_file_line_col(self):
        cases = [
            ("[certs]\nrsa_key_bits = 1024\n", "2:16: rsa_key_bits: 1024 is out of range "
             "(2048..8192)"),
            ("[misc]\nlog_level = 'loud'\n",
             "2:13: log_level: invalid level 'loud' (expected error, warn, info, debug or trace)"),
            ("[proxy]\ntcp_bind = '127.0.0.1'\n", "2:12: tcp_bind: invalid address '127.0.0.1' "
             "(expected 'a.b.c.d:port' or '[ipv6]:port')"),
            ("[misc]\n  colour = 'blue'\n", "2:3: unknown key 'colour' in [misc]"),
            ("\n\n[extra]\n", "3:2: unknown table [extra] (expected [misc], [proxy], [cache] or [certs])"),
            ("[misc]\ncert_dir = 'x\n", "2:12: unterminated string"),
            ("[certs]\ndays_from_now = 1.5\n", "2:17: floats are not supported"),
        ]
        for text, msg in cases:
            cfg = self.write("bad.toml", text)
            r = run_dduct(["--cfg", cfg], self.tmp)
            self.assertEqual(r.rc, 2, "exit status for %r" % text)
            self.assertEqual(r.lines, ["%s:%s" % (cfg, msg)], "stderr for %r" % text)
            r = self.dduct("--check", "--cfg", cfg)
            self.assertEqual((r.returncode, r.stdout), (2, ""), "--check refuses %r too" % text)

    def test_documented_configs_are_accepted(self):
        """Every ```toml block in README.md and docs/configuration.md passes --check."""
        blocks = []
        for doc in ("README.md", os.path.join("docs", "configuration.md")):
            with open(os.path.join(SRC, doc)) as f:
                blocks += [(doc, b) for b in re.findall(r"```toml\n(.*?)```", f.read(), re.S)]
        self.assertGreaterEqual(len(blocks), 4, "the docs show their configs")
        for i, (doc, text) in enumerate(blocks):
            cfg = self.write("doc%d.toml" % i, text)
            r = self.dduct("--check", "--cfg", cfg)
            self.assertEqual(r.returncode, 0, "%s block %d: %s" % (doc, i, r.stderr))

    def test_missing_config_file_exits_2(self):
        path = os.path.join(self.tmp, "nope.toml")
        r = self.dduct("--cfg", path)
        self.assertEqual(r.returncode, 2)
        self.assertEqual(r.stderr, "%s: cannot read: No such file or directory\n" % path)

    def test_config_beside_the_executable_is_used(self):
        bindir = os.path.join(self.tmp, "bin")
        os.makedirs(bindir, exist_ok=True)
        exe = os.path.join(bindir, "dduct")
        shutil.copy2(BIN, exe)
        r = self.dduct("--check", exe=exe)
        self.assertIn("(from built-in defaults)", r.stdout.splitlines()[0], "no file: defaults")
        beside = self.write("bin/dduct.toml", "[certs]\nca_cn = 'beside the binary'\n")
        r = self.dduct("--check", exe=exe)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("(from %s)" % beside, r.stdout.splitlines()[0])
        self.assertRegex(r.stdout, r"\nca_cn +  = 'beside the binary'\n")
        other = self.write("other.toml", "[certs]\nca_cn = 'from --cfg'\n")
        r = self.dduct("--check", "--cfg", other, exe=exe)
        self.assertRegex(r.stdout, r"\nca_cn +  = 'from --cfg'\n", "--cfg wins over beside")
        self.write("bin/dduct.toml", "[certs]\nca_cn = 42\n")
        r = self.dduct("--check", exe=exe)
        self.assertEqual(r.returncode, 2)
        self.assertEqual(r.stderr, "%s:2:9: ca_cn: expected a string, found an integer\n"
                         % beside)


if __name__ == "__main__":
    unittest.main(verbosity=2)

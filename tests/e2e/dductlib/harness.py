"""The rig: temp dirs, test origins, the dduct process, curl and openssl runs, a TAP runner.

Environment: DDUCT_BIN (the dduct executable, required), DDUCT_E2E_CACHE (where dduct's
generated cert_dir is kept between test files; default under the system temp dir),
DDUCT_E2E_KEEP=1 (keep temp dirs for inspection), DDUCT_E2E_WORKERS=N (every dduct runs with
[proxy] workers = N unless its test sets workers itself).
"""
import fcntl
import hashlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback

from . import certs
from .origin import Origin

SANITIZER_MARKERS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:",
                     "SUMMARY: AddressSanitizer", "SUMMARY: UndefinedBehaviorSanitizer",
                     "WARNING: ThreadSanitizer")

# Names dduct intercepts in every test (exact and one-label wildcard); blind.example and
# a.b.wild.test are deliberately outside, so CONNECTs to them are blind tunnels.
INTERCEPT_SANS = ["origin.test", "*.wild.test", "bad.test", "loop.test", "refused.test"]
PIN_NAMES = certs.ORIGIN_NAMES + certs.BAD_NAMES
DDUCT_CA_CN = "dduct e2e CA"


# "INFO ... Listening on ADDR" once per bound listener. A listener that could not bind logs
# "ERROR ... Listening on ADDR: listen ADDR: address already in use" and dduct exits: that line
# must not count (it did, and a port taken between probe and bind became a flaky test).
LISTENING = re.compile(r"^\[[^]]* INFO +dduct::[a-z_]+\] Listening on \S+$", re.M)
ADMIN_LISTENING = re.compile(r"^\[[^]]* INFO +dduct::admin\] Admin listening on \S+$", re.M)


class TestFailure(AssertionError):
    pass


def check(cond, what, detail=""):
    if not cond:
        raise TestFailure(what + (": " + str(detail) if detail != "" else ""))


def check_eq(got, want, what):
    if got != want:
        raise TestFailure("%s: got %r, want %r" % (what, got, want))


def wait_for(cond, what, timeout=60):
    """Polls cond every 50 ms until it holds; fails naming what after timeout seconds (a safety
    net for a hung dduct, not a speed assertion)."""
    deadline = time.monotonic() + timeout
    while not cond():
        check(time.monotonic() < deadline, "waiting for " + what)
        time.sleep(0.05)


def dduct_bin():
    b = os.environ.get("DDUCT_BIN")
    if not b or not os.access(b, os.X_OK):
        sys.exit("DDUCT_BIN must name the dduct executable (got %r)" % b)
    return os.path.abspath(b)


_asan = None


def is_asan():
    """True when the binary is built with AddressSanitizer (it links __asan_init)."""
    global _asan
    if _asan is None:
        with open(dduct_bin(), "rb") as f:
            _asan = b"__asan_init" in f.read()
    return _asan


_tsan = None


def is_tsan():
    """True when the binary is built with ThreadSanitizer (its allocator and shadow memory make
    resident-memory figures meaningless: RSS bounds are checked in the other builds)."""
    global _tsan
    if _tsan is None:
        with open(dduct_bin(), "rb") as f:
            _tsan = b"__tsan_init" in f.read()
    return _tsan


_ports_given = set()


def free_port(host="127.0.0.1"):
    """A port free on host now and not handed out before by this process. Probing binds and
    closes, so two calls in a row can get the same port from the kernel: a test that takes two
    ports before it binds either would then give two servers one port."""
    for _ in range(200):
        s = socket.socket()
        s.bind((host, 0))
        p = s.getsockname()[1]
        s.close()
        if p not in _ports_given:
            _ports_given.add(p)
            return p
    raise RuntimeError("no free port on %s" % host)


def clean_env(home):
    """An environment with no proxy variables, CA overrides or rc files from the machine."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": home, "LC_ALL": "C"}
    return env


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            c = f.read(1 << 20)
            if not c:
                return h.hexdigest()
            h.update(c)


# ---- TOML -------------------------------------------------------------------------------------

def _toml_value(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str):
        check("'" not in v and "\n" not in v, "TOML literal string", v)
        return "'" + v + "'"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(v)


def toml(sections):
    out = []
    for name, keys in sections.items():
        out.append("[%s]" % name)
        for k, v in keys.items():
            if v is not None:
                out.append("%s = %s" % (k, _toml_value(v)))
        out.append("")
    return "\n".join(out)


# ---- the dduct process ------------------------------------------------------------------------

def certs_section():
    return {
        "rsa_key_bits": 2048,
        "days_from_now": 30,
        "ca_cn": DDUCT_CA_CN,
        "server_cn": "proxy.test",
        "server_dns_sans": INTERCEPT_SANS,
        "server_ip_sans": ["127.0.0.1"],
    }


class Dduct:
    """One dduct process. Use as a context manager: stop() asserts a clean exit on the way out."""

    def __init__(self, rig, proxy=None, misc=None, tcp=True, tls=True, env=None,
                 nofile=None, name="dduct", cert_dir=None, tls_port=None, host="127.0.0.1",
                 admin=False, cache=None, certs=None):
        self.rig = rig
        self.host = host  # the listeners' address (a cluster uses 127.0.0.x)
        self.dir = tempfile.mkdtemp(prefix=name + "-", dir=rig.tmp)
        self.file_dir = os.path.join(self.dir, "files")
        if cert_dir is None:  # a copy of the cached one
            cert_dir = os.path.join(self.dir, "certs")
            rig.install_cert_dir(cert_dir)
        self.cert_dir = cert_dir
        self.ca_crt = os.path.join(self.cert_dir, "ca.crt")
        self.want_tcp = tcp
        self.want_tls = tls
        self.want_admin = admin  # the admin listener (off unless asked: the default port is fixed)
        self.admin_port = None
        self.proxy_overrides = proxy or {}
        self.misc_overrides = misc or {}
        self.cache_overrides = cache or {}
        self.extra_env = env or {}
        self.certs_overrides = certs or {}  # [certs] keys over certs_section()
        self.nofile = nofile
        self.fixed_tls_port = tls_port
        self.proc = None
        self.stderr_path = os.path.join(self.dir, "stderr.log")
        self.stopped = False

    def config(self):
        proxy = {
            "tcp_bind": "%s:%d" % (self.host, self.tcp_port) if self.want_tcp else "",
            "tls_bind": "%s:%d" % (self.host, self.tls_port) if self.want_tls else "",
            "admin_bind": "127.0.0.1:%d" % self.admin_port if self.want_admin else "",
            "upstream_ca_file": self.rig.pki.ca_crt,
            "resolve": ["%s:127.0.0.1" % n for n in PIN_NAMES],
            "connect_any_port": True,
            "connect_timeout": 5,
            "upstream_timeout": 20,
            "shutdown_grace": 5,
        }
        if os.environ.get("DDUCT_E2E_WORKERS"):  # the whole suite on N event loops
            proxy["workers"] = int(os.environ["DDUCT_E2E_WORKERS"])
        proxy.update(self.proxy_overrides)
        misc = {"log_level": "debug", "cert_dir": self.cert_dir + "/",
                "file_dir": self.file_dir + "/"}
        misc.update(self.misc_overrides)
        certs = certs_section()
        certs.update(self.certs_overrides)
        sections = {"misc": misc, "proxy": proxy, "certs": certs}
        if self.cache_overrides:
            sections["cache"] = dict(self.cache_overrides)
        return toml(sections)

    def _spawn(self):
        self.tcp_port = free_port(self.host)
        self.tls_port = self.fixed_tls_port or free_port(self.host)
        self.admin_port = free_port() if self.want_admin else None
        self.cfg_path = os.path.join(self.dir, "dduct.toml")
        with open(self.cfg_path, "w") as f:
            f.write(self.config())
        env = clean_env(self.dir)
        for k in ("ASAN_OPTIONS", "UBSAN_OPTIONS", "LSAN_OPTIONS", "MSAN_OPTIONS", "TSAN_OPTIONS"):
            if k in os.environ:
                env[k] = os.environ[k]
        for k, v in self.extra_env.items():
            env[k] = (env[k] + ":" + v) if k.endswith("SAN_OPTIONS") and k in env else v
        nofile = self.nofile

        def limits():
            if nofile:
                import resource
                resource.setrlimit(resource.RLIMIT_NOFILE,
                                   nofile if isinstance(nofile, tuple) else (nofile, nofile))
        self.stderr_file = open(self.stderr_path, "wb")
        self.proc = subprocess.Popen([dduct_bin(), "--cfg", self.cfg_path], cwd=self.dir,
                                     stdin=subprocess.DEVNULL, stdout=self.stderr_file,
                                     stderr=subprocess.STDOUT, env=env, preexec_fn=limits)

    def log(self):
        with open(self.stderr_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def start(self, timeout=60):
        want = int(self.want_tcp) + int(self.want_tls)
        for attempt in range(3):
            self._spawn()
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                text = self.log()
                if len(LISTENING.findall(text)) >= want and (
                        not self.want_admin or ADMIN_LISTENING.search(text)):
                    return self
                if self.proc.poll() is not None:
                    break
                time.sleep(0.05)
            text = self.log()
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
                raise TestFailure("dduct did not log %d 'Listening on' lines in %ds:\n%s"
                                  % (want, timeout, text[-3000:]))
            self.stderr_file.close()
            if "in use" in text.lower() and attempt < 2:
                continue  # someone took our free port between probe and bind
            raise TestFailure("dduct exited with %s before listening:\n%s"
                              % (self.proc.returncode, text[-3000:]))
        raise TestFailure("dduct could not bind free ports")

    @property
    def pid(self):
        return self.proc.pid

    def alive(self):
        return self.proc.poll() is None

    def proc_status(self, key):
        """A /proc/PID/status field in KiB (VmRSS, VmHWM) or as a number (Threads)."""
        with open("/proc/%d/status" % self.pid) as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
        raise KeyError(key)

    def cpu_seconds(self):
        with open("/proc/%d/stat" % self.pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def open_fds(self):
        return len(os.listdir("/proc/%d/fd" % self.pid))

    def send_signal(self, sig=signal.SIGTERM):
        """Send sig once; a later stop() waits for the exit instead of signalling again (a second
        SIGTERM may legitimately mean "quit now")."""
        self.signalled = sig
        self.proc.send_signal(sig)

    def stop(self, sig=signal.SIGTERM, timeout=None):
        """Signal dduct, wait, and assert: exit status 0 and no sanitizer report. Returns the log."""
        if self.stopped:
            return self.log()
        self.stopped = True
        if timeout is None:
            timeout = 60
        if getattr(self, "signalled", None):
            sig = self.signalled
        elif self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise TestFailure("dduct did not exit within %ds of %s:\n%s"
                              % (timeout, signal.Signals(sig).name, self.log()[-3000:]))
        finally:
            self.stderr_file.close()
        text = self.log()
        for m in SANITIZER_MARKERS:
            check(m not in text, "sanitizer report in dduct's stderr (%s)" % m,
                  "\n" + text[text.find(m) - 200:][:6000])
        check(rc == 0, "dduct exit status after %s" % signal.Signals(sig).name,
              "%s\n%s" % (rc, text[-3000:]))
        return text

    def kill(self):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.stopped = True

    def __enter__(self):
        return self.start()

    def __exit__(self, etype, e, tb):
        if etype is None:
            self.stop()
        elif not self.stopped:
            self.kill()
            sys.stdout.write("# dduct log tail:\n" + "".join(
                "#   " + l + "\n" for l in self.log().splitlines()[-40:]))
        return False

    # ---- URLs and clients ----

    @property
    def http_proxy(self):
        return "http://%s:%d" % (self.host, self.tcp_port)

    @property
    def https_proxy(self):
        return "https://%s:%d" % (self.host, self.tls_port)

    @property
    def admin_url(self):
        return "http://127.0.0.1:%d" % self.admin_port


def via(d, kind):
    """curl arguments to go through dduct: 'http' is the seed's first command (-x http://),
    'https' its second (TLS to the proxy, then TLS inside)."""
    if kind == "http":
        return ["-x", d.http_proxy, "--cacert", d.ca_crt]
    return ["--proxy-cacert", d.ca_crt, "-x", d.https_proxy, "--cacert", d.ca_crt]


# ---- the rig ----------------------------------------------------------------------------------

class Rig:
    """Per test file: a temp dir, the test PKI, origins started on demand."""

    def __init__(self):
        self.tmp = tempfile.mkdtemp(prefix="dduct-e2e-")
        self.home = os.path.join(self.tmp, "home")
        os.mkdir(self.home)
        self.pki = certs.TestPKI(self._mkdir("pki"))
        self._origins = {}

    def _mkdir(self, name):
        p = os.path.join(self.tmp, name)
        os.mkdir(p)
        return p

    @property
    def origin(self):
        """HTTPS origin with a certificate from the test origin CA."""
        return self._get("https", lambda: Origin(tls=(self.pki.origin_crt, self.pki.origin_key)))

    @property
    def plain(self):
        """Plain HTTP origin."""
        return self._get("http", lambda: Origin())

    @property
    def bad(self):
        """HTTPS origin with a self-signed certificate dduct must not trust."""
        return self._get("bad", lambda: Origin(tls=(self.pki.bad_crt, self.pki.bad_key)))

    def _get(self, key, make):
        if key not in self._origins:
            self._origins[key] = make()
        return self._origins[key]

    def dduct(self, **kw):
        return Dduct(self, **kw)

    # dduct's cert_dir: generated once (RSA key generation is slow, more so under ASan), then
    # copied into every test's own cert_dir.
    def install_cert_dir(self, dest):
        cache = os.environ.get("DDUCT_E2E_CACHE") or os.path.join(
            tempfile.gettempdir(), "dduct-e2e-cache-%d" % os.getuid(),
            hashlib.sha256(dduct_bin().encode()).hexdigest()[:16])
        os.makedirs(cache, exist_ok=True)
        certdir = os.path.join(cache, "certs")
        stamp = os.path.join(cache, "stamp")
        with open(os.path.join(cache, "lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            fresh = os.path.exists(stamp) and \
                os.path.getmtime(stamp) >= os.path.getmtime(dduct_bin())
            if not fresh:
                shutil.rmtree(certdir, ignore_errors=True)
                self._generate_cert_dir(certdir)
                with open(stamp, "w") as f:
                    f.write(dduct_bin() + "\n")
            # Copied under the lock: another test process that finds the cache stale removes
            # and regenerates certdir under it, and a copy running then lost files (CI saw it).
            shutil.copytree(certdir, dest)
        os.chmod(dest, 0o700)

    def _generate_cert_dir(self, certdir):
        gen = Dduct(self, misc={"log_level": "info"}, name="certgen", cert_dir=certdir)
        gen.start(timeout=300)
        gen.stop()
        for f in ("ca.key", "ca.crt", "server.key", "server.crt"):
            check(os.path.exists(os.path.join(certdir, f)), "dduct wrote " + f)

    def close(self):
        for o in self._origins.values():
            o.close()
        if os.environ.get("DDUCT_E2E_KEEP") != "1":
            shutil.rmtree(self.tmp, ignore_errors=True)


# ---- curl and openssl -------------------------------------------------------------------------

class CurlResult:
    def __init__(self, proc, info, body_path, stderr):
        self.rc = proc.returncode
        self.info = info
        self.body_path = body_path
        self.stderr = stderr

    @property
    def status(self):
        return self.info.get("http_code") or self.info.get("response_code")

    def body(self):
        with open(self.body_path, "rb") as f:
            return f.read()

    def sha256(self):
        return sha256_file(self.body_path)

    def json(self):
        import json
        return json.loads(self.body())

    def __repr__(self):
        return "<curl rc=%s status=%s err=%r>" % (self.rc, self.status,
                                                   self.info.get("errormsg"))


_MARK = "@@dduct-e2e-curl-info@@"


def curl(rig, args, cwd=None, timeout=120, output=True):
    """Run curl with a clean environment and -w '%{json}'; the body goes to a temp file unless
    args write it themselves (output=False)."""
    import json
    cwd = cwd or tempfile.mkdtemp(prefix="curl-", dir=rig.tmp)
    body = os.path.join(cwd, "body.out")
    argv = ["curl", "-q", "-sS", "-w", "\n" + _MARK + "%{json}\n"]
    if output:
        argv += ["-o", body]
    argv += list(args)
    p = subprocess.run(argv, cwd=cwd, capture_output=True, env=clean_env(rig.home),
                       timeout=timeout)
    out = p.stdout.decode("utf-8", "replace")
    # With several URLs curl prints one JSON object per transfer (after the bodies of the 2nd
    # and later URLs, which go to stdout); keep them all.
    infos = []
    dec = json.JSONDecoder()
    for part in out.split(_MARK)[1:]:
        infos.append(dec.raw_decode(part)[0])
    r = CurlResult(p, infos[-1] if infos else {}, body, p.stderr.decode("utf-8", "replace"))
    r.infos = infos
    r.cwd = cwd
    return r


def s_client_cert(rig, connect, servername, proxy=None, cafile=None):
    """openssl s_client (through an HTTP proxy with -proxy): the peer certificate's info and the
    verification result line."""
    argv = ["openssl", "s_client", "-connect", connect, "-showcerts"]
    argv += ["-servername", servername] if servername else ["-noservername"]
    if proxy:
        argv += ["-proxy", proxy]
    if cafile:
        argv += ["-CAfile", cafile]
        if servername:
            argv += ["-verify_hostname", servername]
    p = subprocess.run(argv, input=b"Q\n", capture_output=True, env=clean_env(rig.home),
                       timeout=60)
    out = p.stdout.decode("utf-8", "replace")
    m = re.search(r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", out, re.S)
    if not m:
        raise TestFailure("openssl s_client got no certificate:\n%s\n%s"
                          % (out[-2000:], p.stderr.decode(errors="replace")[-2000:]))
    info = certs.cert_info(m.group(0).encode())
    v = re.search(r"Verify return code: (\d+) \(([^)]*)\)", out)
    info["verify"] = (int(v.group(1)), v.group(2)) if v else None
    info["pem"] = m.group(0)
    return info


# ---- TAP runner -------------------------------------------------------------------------------

def run(tests):
    """Run the given test functions in order with one Rig; print TAP; exit 1 on any failure.
    Each function's docstring says what it proves and is printed with its result."""
    rig = Rig()
    failed = 0
    print("1..%d" % len(tests))
    sys.stdout.flush()
    t_all = time.monotonic()
    try:
        for i, fn in enumerate(tests, 1):
            doc = " ".join((fn.__doc__ or "").split())
            t0 = time.monotonic()
            try:
                fn(rig)
                print("ok %d - %s (%.1fs)\n#   proves: %s" % (i, fn.__name__,
                                                             time.monotonic() - t0, doc))
            except Exception:
                failed += 1
                print("not ok %d - %s\n#   would prove: %s" % (i, fn.__name__, doc))
                for line in traceback.format_exc().splitlines():
                    print("#   " + line)
            sys.stdout.flush()
    finally:
        rig.close()
    print("# %d/%d passed in %.1fs" % (len(tests) - failed, len(tests),
                                       time.monotonic() - t_all))
    sys.exit(1 if failed else 0)

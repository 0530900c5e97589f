#!/usr/bin/env python3
"""The Debian packages (dpkg-buildpackage on debian/, built once per build tree): lintian has no
errors; they install with apt-get and with dpkg -i on this machine; the shipped config passes
`dduct --check`; the unit, sysusers, logrotate and man files are in place, the unit passes
`systemd-analyze verify` and scores "OK" or better in `systemd-analyze security`; the unit's
ExecStart runs as the dduct user and writes its CA there; libdduct-dev works through
pkg-config; purge removes everything the packages and the service created, user included.

Installing touches this machine (CI runs as root on its own machine): the test holds a
machine-wide lock (several build trees on one machine run it too), purges what an earlier,
killed run left installed, and purges the packages at the end whatever happens. Needs root;
skipped otherwise."""
import fcntl
import glob
import os
import pwd
import re
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "e2e"))
sys.path.insert(0, HERE)

import artifacts  # noqa: E402
from dductlib.harness import check, check_eq, run, LISTENING  # noqa: E402

PKGS = ["dduct", "libdduct0", "libdduct-dev"]
UNIT = "/lib/systemd/system/dduct.service"
CREATED = ["/etc/dduct", "/var/lib/dduct", "/var/cache/dduct", "/var/log/dduct", UNIT,
           "/usr/lib/sysusers.d/dduct.conf", "/etc/logrotate.d/dduct", "/usr/bin/dduct",
           "/etc/systemd/system/multi-user.target.wants/dduct.service"]
APT = ["apt-get", "-o", "DPkg::Lock::Timeout=600", "-y", "-q"]
ENV = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
REPORT = {}


def sh(argv, ok=True, **kw):
    p = subprocess.run(argv, capture_output=True, text=True, env=ENV, **kw)
    if ok:
        check_eq(p.returncode, 0, "%s (%s%s)" % (" ".join(argv), p.stdout[-1500:],
                                                 p.stderr[-1500:]))
    return p


def installed(pkg):
    p = subprocess.run(["dpkg-query", "-W", "-f=${Status}", pkg], capture_output=True,
                       text=True)
    return p.returncode == 0 and "installed" in p.stdout and "not-installed" not in p.stdout


def purge():
    present = [p for p in PKGS if subprocess.run(["dpkg-query", "-W", p],
                                                  capture_output=True).returncode == 0]
    if present:
        sh(APT + ["purge"] + present, ok=False)


def debs():
    d = artifacts.debs()
    for p in PKGS:
        check(p in d, "built " + p, d)
    return d


def test_lintian(rig):
    """lintian on the build's .changes (every .deb): no error; warnings are listed."""
    d = debs()
    changes = glob.glob(os.path.join(os.path.dirname(d["dduct"]), "*.changes"))
    check_eq(len(changes), 1, "one .changes file")
    p = subprocess.run(["lintian", "--tag-display-limit", "0", changes[0]],
                       capture_output=True, text=True)
    tags = [ln for ln in p.stdout.splitlines() if re.match(r"^[EWIPX]: ", ln)]
    for t in tags:
        print("#   lintian: " + t)
    errors = [t for t in tags if t.startswith("E: ")]
    check_eq(errors, [], "lintian errors")
    check_eq([t for t in tags if t.startswith("W: ")], [], "lintian warnings")


def check_installed(how):
    for p in PKGS:
        check(installed(p), "%s installed by %s" % (p, how))
    for path in CREATED:
        check(os.path.lexists(path), "%s in place after %s" % (path, how))
    conffiles = sh(["dpkg-query", "-W", "-f=${Conffiles}", "dduct"]).stdout
    check("/etc/dduct/dduct.toml" in conffiles, "dduct.toml is a conffile", conffiles)
    u = pwd.getpwnam("dduct")
    check_eq((u.pw_dir, u.pw_shell), ("/var/lib/dduct", "/usr/sbin/nologin"), "dduct user")
    check(u.pw_uid < 1000, "dduct is a system user", u.pw_uid)
    for d, mode in (("/var/lib/dduct", 0o700), ("/var/cache/dduct", 0o750),
                    ("/var/log/dduct", 0o750)):
        st = os.stat(d)
        check_eq((st.st_uid, st.st_mode & 0o777), (u.pw_uid, mode), d + " owner and mode")
    p = sh(["dduct", "--check", "--cfg", "/etc/dduct/dduct.toml"])
    for key, val in (("cert_dir", "/var/lib/dduct/certs/"), ("file_dir", "/var/cache/dduct/files/"),
                     ("access_log", "/var/log/dduct/access.log")):
        check(re.search(r"^%s\s*= '%s'$" % (key, re.escape(val)), p.stdout, re.M) is not None,
              "--check shows the package's %s" % key, p.stdout)
    for page in ("dduct", "dduct.toml"):
        sh(["man", "-w", page])


def clean_start():
    # One installing test at a time on this machine (other build trees' suites run it too);
    # held until the process exits.
    if "lock" not in REPORT:
        REPORT["lock"] = open("/tmp/dduct-packaging-deb.lock", "w")
        fcntl.flock(REPORT["lock"], fcntl.LOCK_EX)
    if any(installed(p) for p in PKGS):
        print("# purging the packages an earlier (killed) run left installed")
        purge()
    for p in PKGS:
        check(not installed(p), "%s not installed before the test" % p)


def test_apt_install(rig):
    """apt-get install ./dduct_*.deb (and the library packages) installs, creates the dduct
    system user and its directories, ships a config that passes dduct --check, a conffile,
    the man pages; then purge leaves nothing behind."""
    d = debs()
    clean_start()
    try:
        sh(APT + ["install", "--no-install-recommends"] + [d[p] for p in PKGS],
           cwd=os.path.dirname(d["dduct"]))
        check_installed("apt-get install")
    finally:
        purge()
    check_purged()


def check_purged():
    for p in PKGS:
        check(not installed(p), p + " purged")
        st = subprocess.run(["dpkg-query", "-W", "-f=${Status}", p], capture_output=True,
                            text=True).stdout
        check("config-files" not in st, p + " has no config files left", st)
    for path in CREATED:
        check(not os.path.lexists(path), "%s removed by purge" % path)
    try:
        pwd.getpwnam("dduct")
        check(False, "dduct user removed by purge")
    except KeyError:
        pass
    p = subprocess.run(["getent", "group", "dduct"], capture_output=True)
    check(p.returncode != 0, "dduct group removed by purge")


def test_dpkg_unit_and_service(rig):
    """dpkg -i installs the same packages; the installed unit passes systemd-analyze verify,
    its security exposure is "OK" or better (the score is printed); logrotate accepts its
    file; the unit's ExecStartPre and ExecStart, run as the dduct user in a private network
    namespace (systemd is not PID 1 here), start dduct on the shipped config: it writes its CA
    into /var/lib/dduct/certs owned by dduct with 0600 keys, answers on both listeners and
    exits 0 on SIGTERM; an upgrade keeps the admin's config, the CA and the user; pkg-config
    finds libdduct and a program links against it; purge removes the CA, the cache, the logs
    and the user."""
    d = debs()
    clean_start()
    try:
        sh(["dpkg", "-i"] + [d[p] for p in PKGS])
        check_installed("dpkg -i")
        p = sh(["systemd-analyze", "verify", UNIT], ok=False)
        check_eq((p.returncode, p.stderr.strip(), p.stdout.strip()), (0, "", ""),
                 "systemd-analyze verify")
        p = sh(["systemd-analyze", "security", "--offline=true", UNIT], ok=False)
        m = re.search(r"Overall exposure level for dduct.service: ([0-9.]+) (\w+)", p.stdout)
        check(m is not None, "security score", p.stdout[-2000:])
        REPORT["security"] = "%s %s" % (m.group(1), m.group(2))
        print("# systemd-analyze security: %s %s" % (m.group(1), m.group(2)))
        check(float(m.group(1)) <= 2.0, "exposure at most 2.0 (OK)", p.stdout[-3000:])
        sh(["logrotate", "--debug", "/etc/logrotate.d/dduct"])
        unit = open(UNIT).read()
        pre = re.search(r"^ExecStartPre=(.*)$", unit, re.M).group(1).split()
        start = re.search(r"^ExecStart=(.*)$", unit, re.M).group(1).split()
        check_eq(re.search(r"^User=(.*)$", unit, re.M).group(1), "dduct", "User=")
        as_dduct = ["setpriv", "--reuid=dduct", "--regid=dduct", "--init-groups",
                    "--no-new-privs", "--inh-caps=-all", "--bounding-set=-all"]
        sh(as_dduct + pre)
        run_service(as_dduct + start)
        upgrade(rig, d["dduct"])
        consumer(rig)
    finally:
        purge()
    check_purged()


def run_service(argv):
    log_path = "/tmp/dduct-deb-test.log"
    script = ("ip link set lo up && exec \"$@\"")
    with open(log_path, "w") as log:
        proc = subprocess.Popen(["unshare", "-n", "sh", "-c", script, "sh"] + argv,
                                stdout=log, stderr=subprocess.STDOUT, env={"PATH": ENV["PATH"]},
                                cwd="/")
    try:
        deadline = time.monotonic() + 300
        while True:
            text = open(log_path).read()
            if len(LISTENING.findall(text)) == 2:
                break
            check(proc.poll() is None and time.monotonic() < deadline,
                  "the service starts as dduct", text[-3000:])
            time.sleep(0.2)
        uid = pwd.getpwnam("dduct").pw_uid
        status = open("/proc/%d/status" % proc.pid).read()
        check(re.search(r"^Uid:\s+%d\s+%d" % (uid, uid), status, re.M) is not None,
              "the process runs as dduct", status[:600])
        for f in ("ca.key", "ca.crt", "server.key", "server.crt"):
            st = os.stat("/var/lib/dduct/certs/" + f)
            check_eq(st.st_uid, uid, f + " owned by dduct")
            if f.endswith(".key"):
                check_eq(st.st_mode & 0o777, 0o600, f + " mode")
        # Both listeners answer, seen from inside the service's network namespace.
        for port in (8000, 4430):
            p = sh(["nsenter", "-t", str(proc.pid), "-n", "python3", "-c",
                    "import socket; socket.create_connection(('127.0.0.1', %d), 5).close()"
                    % port], ok=False)
            check_eq(p.returncode, 0, "listener %d accepts (%s)" % (port, p.stderr[-500:]))
        # The access log is written as dduct; logrotate moves it and creates the next one,
        # SIGHUP (what its postrotate sends through systemd) makes dduct write to that.
        alog = "/var/log/dduct/access.log"
        request(proc.pid, "/first")
        wait_for(lambda: "/first" in read(alog), "the first request in the access log")
        check_eq(os.stat(alog).st_uid, uid, "access.log owned by dduct")
        sh(["logrotate", "--force", "--state", "/tmp/dduct-deb-logrotate.state",
            "/etc/logrotate.d/dduct"])
        check("/first" in read(alog + ".1"), "rotated to access.log.1")
        check_eq((read(alog), os.stat(alog).st_uid), ("", uid), "a new empty access.log")
        proc.send_signal(1)
        request(proc.pid, "/second")
        wait_for(lambda: "/second" in read(alog), "after SIGHUP the next request in the new file")
        check("/second" not in read(alog + ".1"), "not in the rotated file")
    finally:
        proc.terminate()
        rc = proc.wait(timeout=60)
    check_eq(rc, 0, "clean exit on SIGTERM (%s)" % open(log_path).read()[-2000:])
    os.unlink(log_path)
    if os.path.exists("/tmp/dduct-deb-logrotate.state"):
        os.unlink("/tmp/dduct-deb-logrotate.state")


def read(path):
    try:
        with open(path) as f:
            return f.read()
    except FileNotFoundError:
        return ""


def wait_for(cond, what, timeout=30):
    deadline = time.monotonic() + timeout
    while not cond():
        check(time.monotonic() < deadline, what)
        time.sleep(0.2)


def request(pid, path):
    """A plain-http request through the service's proxy listener, from inside its netns (the
    origin port is closed: dduct answers 502, which is logged like any request)."""
    sh(["nsenter", "-t", str(pid), "-n", "curl", "-s", "-o", "/dev/null", "-x",
        "http://127.0.0.1:8000", "http://127.0.0.1:9" + path], ok=False)


def upgrade(rig, deb):
    """An upgrade (the same package repacked as version 0.1.0+1: no second build) keeps the
    admin's change to the conffile, the CA and the user, and replaces the binary's package."""
    work = os.path.join(rig.tmp, "upgrade")
    sh(["dpkg-deb", "-R", deb, work])
    control = os.path.join(work, "DEBIAN", "control")
    text = open(control).read()
    old = re.search(r"^Version: (.*)$", text, re.M).group(1)
    with open(control, "w") as f:
        f.write(text.replace("Version: " + old, "Version: %s+1" % old))
    new_deb = os.path.join(rig.tmp, "dduct_%s+1_amd64.deb" % old)
    sh(["dpkg-deb", "--root-owner-group", "-b", work, new_deb])
    with open("/etc/dduct/dduct.toml", "a") as f:
        f.write("# changed by the admin\n")
    ca = open("/var/lib/dduct/certs/ca.crt").read()
    uid = pwd.getpwnam("dduct").pw_uid
    sh(APT + ["install", new_deb])
    check_eq(sh(["dpkg-query", "-W", "-f=${Version}", "dduct"]).stdout, old + "+1",
             "upgraded")
    check(open("/etc/dduct/dduct.toml").read().endswith("# changed by the admin\n"),
          "the admin's config kept")
    check_eq(open("/var/lib/dduct/certs/ca.crt").read(), ca, "the CA kept")
    check_eq(pwd.getpwnam("dduct").pw_uid, uid, "the same dduct user")
    sh(["dduct", "--check", "--cfg", "/etc/dduct/dduct.toml"])


def consumer(rig):
    src = os.path.join(artifacts.SRC, "tests", "install", "consumer.c")
    out = os.path.join(rig.tmp, "consumer")
    flags = sh(["pkg-config", "--cflags", "--libs", "dduct"]).stdout.split()
    sh(["cc", "-std=c11", "-D_POSIX_C_SOURCE=200809L", "-o", out, src] + flags)
    ver = sh(["pkg-config", "--modversion", "dduct"]).stdout.strip()
    sh([out, ver])


if __name__ == "__main__":
    if os.geteuid() != 0:
        print("1..0 # SKIP installing packages needs root")
        sys.exit(77)
    run([test_lintian, test_apt_install, test_dpkg_unit_and_service])

"""Test PKI for the origins, made with the openssl CLI (EC P-256 keys: instant to generate).

A test CA ("dduct e2e origin CA") signs one origin certificate covering every host name the tests
use; dduct trusts that CA through [proxy] upstream_ca_file. A separate self-signed certificate
("bad.test") is something dduct must refuse.
"""
import os
import subprocess

ORIGIN_CA_CN = "dduct e2e origin CA"

# Every name a test may point at the good origin. Interception, wildcard and blind-tunnel tests
# pick among them; the origin certificate covers all of them so only dduct's policy decides.
ORIGIN_NAMES = [
    "origin.test",
    "x.wild.test",
    "y.wild.test",
    "a.b.wild.test",
    "blind.example",
    "loop.test",
    "refused.test",
]
BAD_NAMES = ["bad.test"]


def _openssl(*args, cwd):
    r = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True,
                       env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C"})
    if r.returncode != 0:
        raise RuntimeError("openssl %s failed: %s" % (" ".join(args), r.stderr.strip()))
    return r.stdout


def _write(path, text):
    with open(path, "w") as f:
        f.write(text)


def _ec_key(path, cwd):
    _openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
             "-out", path, cwd=cwd)


def _san(names, ips):
    return ",".join(["DNS:" + n for n in names] + ["IP:" + i for i in ips])


class TestPKI:
    """Files in dir: ca.crt (the origin CA), origin.crt/key, bad.crt/key (self-signed)."""

    def __init__(self, dir):
        self.dir = dir
        self.ca_crt = os.path.join(dir, "origin-ca.crt")
        self.ca_key = os.path.join(dir, "origin-ca.key")
        self.origin_crt = os.path.join(dir, "origin.crt")
        self.origin_key = os.path.join(dir, "origin.key")
        self.bad_crt = os.path.join(dir, "bad.crt")
        self.bad_key = os.path.join(dir, "bad.key")
        self._make()

    def _make(self):
        d = self.dir
        _ec_key(self.ca_key, d)
        _openssl("req", "-new", "-x509", "-key", self.ca_key, "-out", self.ca_crt, "-days", "30",
                 "-subj", "/CN=" + ORIGIN_CA_CN,
                 "-addext", "basicConstraints=critical,CA:TRUE",
                 "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=d)
        _ec_key(self.origin_key, d)
        _openssl("req", "-new", "-key", self.origin_key, "-out", "origin.csr",
                 "-subj", "/CN=origin.test", cwd=d)
        _write(os.path.join(d, "origin.ext"),
               "basicConstraints=CA:FALSE\n"
               "keyUsage=critical,digitalSignature\n"
               "extendedKeyUsage=serverAuth\n"
               "subjectAltName=" + _san(ORIGIN_NAMES, ["127.0.0.1", "127.0.0.2"]) + "\n")
        _openssl("x509", "-req", "-in", "origin.csr", "-CA", self.ca_crt, "-CAkey", self.ca_key,
                 "-CAcreateserial", "-out", self.origin_crt, "-days", "30",
                 "-extfile", "origin.ext", cwd=d)
        # Self-signed and otherwise well-formed: only trust is missing.
        _ec_key(self.bad_key, d)
        _openssl("req", "-new", "-x509", "-key", self.bad_key, "-out", self.bad_crt, "-days", "30",
                 "-subj", "/CN=bad.test",
                 "-addext", "subjectAltName=" + _san(BAD_NAMES, ["127.0.0.1"]), cwd=d)


def cert_info(pem_or_der, der=False):
    """issuer CN, subject CN and SAN entries of one certificate, as parsed by openssl x509."""
    args = ["x509", "-noout", "-issuer", "-subject", "-ext", "subjectAltName",
            "-nameopt", "multiline,-esc_msb,utf8"]
    if der:
        args += ["-inform", "DER"]
    r = subprocess.run(["openssl", *args], input=pem_or_der, capture_output=True,
                       env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C"})
    if r.returncode != 0:
        raise RuntimeError("openssl x509: " + r.stderr.decode(errors="replace"))
    return parse_x509_text(r.stdout.decode())


def parse_x509_text(text):
    info = {"issuer_cn": None, "subject_cn": None, "san": []}
    section = None
    lines = text.splitlines()
    for i, line in enumerate(lines):
        s = line.strip()
        if line.startswith("issuer="):
            section = "issuer_cn"
        elif line.startswith("subject="):
            section = "subject_cn"
        elif "Subject Alternative Name" in line:
            section = "san"
        elif section in ("issuer_cn", "subject_cn") and s.startswith("commonName"):
            info[section] = s.split("=", 1)[1].strip()
        elif section == "san" and s:
            info["san"] = [x.strip().replace("IP Address:", "IP:") for x in s.split(",")]
            section = None
    return info

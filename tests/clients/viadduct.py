"""Starting the real dduct binary for the client tests, through the e2e harness
(tests/e2e/dductlib/harness.py: process start, 'Listening on' wait, clean-exit and sanitizer
checks, the cached cert_dir), with a config for the rig's origins."""
import os
import sys
import types

import rig

sys.path.insert(0, os.path.join(rig.HERE, '..', 'e2e'))
from dductlib import harness  # noqa: E402


def need_dduct():
    b = os.environ.get('DDUCT_BIN')
    if not b or not os.access(b, os.X_OK):
        rig.skip('DDUCT_BIN does not name the dduct executable (got %r)' % b)
    return b


class _HarnessRig(harness.Rig):
    """What harness.Dduct asks of its rig: a temp dir, the origin CA, the cached cert_dir."""

    def __init__(self, r):
        self.tmp = r.mkdir('dduct')
        self.home = r.mkdir('dduct', 'home')
        self.pki = types.SimpleNamespace(ca_crt=r.ca)
        self._origins = {}

    def close(self):
        pass


class Dduct(harness.Dduct):
    """dduct on a TCP listener (and the TLS one with tls=True), intercepting the rig's names
    except the CDN's blob host, resolving
    the rig's names to 127.0.0.1, trusting the rig's CA for origins. file_dir may be shared
    between two instances (restart)."""

    def __init__(self, r, file_dir=None, tls=False):
        super().__init__(_HarnessRig(r), tls=tls, name='dduct')
        if file_dir:
            self.file_dir = file_dir
        # The cached cert_dir's server.* name the e2e hosts; as the seed says, delete them so
        # dduct writes new ones for this config's SANs (the CA stays).
        for f in ('server.key', 'server.crt', 'server.p12'):
            try:
                os.unlink(os.path.join(self.cert_dir, f))
            except FileNotFoundError:
                pass
        self.origin_ca = r.ca

    def config(self):
        misc = {'log_level': 'debug', 'cert_dir': self.cert_dir + '/',
                'file_dir': self.file_dir + '/'}
        proxy = {'tcp_bind': '127.0.0.1:%d' % self.tcp_port,
                 'tls_bind': '127.0.0.1:%d' % self.tls_port if self.want_tls else '',
                 'upstream_ca_file': self.origin_ca,
                 'resolve': ['%s:127.0.0.1' % h for h in rig.HOSTS],
                 'connect_any_port': True, 'connect_timeout': 10, 'upstream_timeout': 60,
                 'shutdown_grace': 5}
        certs = {'rsa_key_bits': 2048, 'days_from_now': 30, 'ca_cn': harness.DDUCT_CA_CN,
                 # Not blobs.test: like Docker Hub's CDN host, which the seed's '*.docker.io'
                 # does not cover; dduct must follow the registry's redirect itself.
                 'server_cn': 'proxy.test',
                 'server_dns_sans': ['apt.test', 'registry.test', 'cdn.test'],
                 'server_ip_sans': ['127.0.0.1']}
        return harness.toml({'misc': misc, 'proxy': proxy, 'certs': certs})

    @property
    def certdir(self):
        """A dir holding only dduct's ca.crt: skopeo's --src-cert-dir and Go's SSL_CERT_DIR."""
        d = os.path.join(self.dir, 'trust')
        if not os.path.isdir(d):
            os.mkdir(d)
            with open(self.ca_crt, 'rb') as src, open(os.path.join(d, 'ca.crt'), 'wb') as dst:
                dst.write(src.read())
        return d

    def start(self, timeout=None):
        return super().start(timeout=timeout or (300 if harness.is_asan() else 60))

    def __exit__(self, etype, e, tb):
        if etype is not None and not self.stopped:
            self.kill()
            print('# dduct log tail (%s):' % self.stderr_path)
            for line in self.log().splitlines()[-60:]:
                print('#   ' + line)
            return False
        return super().__exit__(etype, e, tb)

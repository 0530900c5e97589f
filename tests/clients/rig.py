"""The real-client rig: origins and clients for tests/clients/test_*.py (Python 3 stdlib only).

Origins (all on 127.0.0.1, dynamic ports, started and stopped by the tests):
  apt.test       nginx over HTTPS: a flat APT repository (dpkg-deb packages indexed with
                 apt-ftparchive, one of them tens of MiB of incompressible bytes) and a .tar.gz
  registry.test  Debian's docker-registry with TLS, holding an image built here without docker
                 (OCI layout pushed with skopeo)
  cdn.test       nginx in front of the registry for a second image: every blob GET answers 307
                 to blobs.test with a fresh ?sig=...
  blobs.test     nginx blob host: refuses blob GETs without a signature, else asks the registry
Clients: apt-get (private APT_CONFIG), skopeo, curl.

Two ways to run a client:
  direct  no proxy, trusts the rig's CA; the *.test names come from a private /etc/hosts
          bind-mounted in a mount namespace (unshare -m), because Go and apt resolve names
          through /etc/hosts and nothing else lets a test pin them
  proxy   HTTPS_PROXY / Acquire::https::Proxy = dduct, trusts only dduct's ca.crt; the names
          are never resolved by the client (dduct resolves them with [proxy] resolve)
"""
import gzip
import hashlib
import io
import json
import os
import random
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
HOSTS = ('apt.test', 'registry.test', 'cdn.test', 'blobs.test')
SKIP = 77

BIG_SIZE = 32 << 20  # the big package: tens of MiB, so that a wrong cache path shows


def log(*args):
    print('#', *args, flush=True)


def skip(why):
    print('SKIP:', why, flush=True)
    sys.exit(SKIP)


def need_programs(*names):
    missing = [n for n in names if shutil.which(n) is None]
    if missing:
        skip('missing program(s): %s (apt-get install nginx docker-registry skopeo apt-utils '
             'dpkg-dev curl openssl)' % ', '.join(missing))


_ports_given = set()


def free_port():
    """A port free now and not handed out before by this process: probing binds and closes, so
    two calls in a row can get the same port, and nginx then serves its http and https origins
    on one socket (plain http got '400 Bad Request': the https server answered it)."""
    for _ in range(200):
        with socket.socket() as s:
            s.bind(('127.0.0.1', 0))
            port = s.getsockname()[1]
        if port not in _ports_given:
            _ports_given.add(port)
            return port
    raise RuntimeError('no free port')


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        for chunk in iter(lambda: f.read(1 << 20), b''):
            h.update(chunk)
    return h.hexdigest()


def norm_path(target):
    """The file a request target names on the origin: query dropped, dot segments removed (apt
    asks for /debian/./x.deb, curl for /debian/x.deb: one file)."""
    path = target.split('?', 1)[0]
    out = []
    for seg in path.split('/')[1:]:
        if seg == '..':
            if out:
                out.pop()
        elif seg != '.':
            out.append(seg)
    return '/' + '/'.join(out)


def fill(template, out, **values):
    with open(os.path.join(HERE, template)) as f:
        text = f.read()
    for k, v in values.items():
        text = text.replace('@%s@' % k, str(v))
    left = re.findall(r'@[A-Z_]+@', re.sub(r'(?m)^\s*#.*$', '', text))
    if left:
        raise RuntimeError('%s: unfilled %s' % (template, left))
    with open(out, 'w') as f:
        f.write(text)
    return out


def clean_env(**extra):
    """The machine may export proxies and trust paths; clients get only what the test sets."""
    env = {'PATH': os.environ.get('PATH', '/usr/sbin:/usr/bin:/sbin:/bin'), 'LANG': 'C.UTF-8'}
    env.update({k: v for k, v in extra.items() if v is not None})
    return env


def wait_tls(port, ca, timeout=30.0, proc=None, what='origin'):
    """Wait until a TLS origin answers a handshake that verifies against ca."""
    ctx = ssl.create_default_context(cafile=ca)
    ctx.check_hostname = False
    deadline = time.monotonic() + timeout
    while True:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError('%s exited with %s before listening' % (what, proc.poll()))
        try:
            with socket.create_connection(('127.0.0.1', port), timeout=2) as s:
                with ctx.wrap_socket(s):
                    return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError('%s on port %d never answered' % (what, port))
            time.sleep(0.1)


class Proc:
    """A child process we started; stopped by pid, never by name."""

    def __init__(self, name, argv, stdout, stderr, env=None, cwd=None):
        self.name = name
        self.out = open(stdout, 'wb')
        self.err = self.out if stderr == stdout else open(stderr, 'wb')
        self.p = subprocess.Popen(argv, stdout=self.out, stderr=self.err, env=env, cwd=cwd,
                                  stdin=subprocess.DEVNULL)

    def poll(self):
        return self.p.poll()

    def stop(self, sig=signal.SIGTERM, timeout=10):
        if self.p.poll() is None:
            self.p.send_signal(sig)
            try:
                self.p.wait(timeout)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
        for f in {self.out, self.err}:
            f.close()
        return self.p.returncode


def run(argv, env=None, cwd=None, timeout=300, check=True, what=None):
    """Run a client; returns CompletedProcess with text output; raises with its output on error."""
    r = subprocess.run(argv, env=env, cwd=cwd, timeout=timeout, stdin=subprocess.DEVNULL,
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                       errors='replace')
    if check and r.returncode != 0:
        raise AssertionError('%s exited %d:\n%s' % (what or argv[0], r.returncode, r.stdout[-4000:]))
    return r


class TunnelProxy:
    """A blind CONNECT proxy on a thread that resolves the rig's names itself and records every
    CONNECT target: it proves that each client really sends its requests for the rig's names
    through a proxy (and which), before dduct is in the picture."""

    def __init__(self):
        import socketserver
        import threading
        self.targets = []
        outer = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self):
                head = b''
                while b'\r\n\r\n' not in head and len(head) < 65536:
                    chunk = self.request.recv(4096)
                    if not chunk:
                        return
                    head += chunk
                line = head.split(b'\r\n', 1)[0].decode('latin-1').split()
                if len(line) != 3 or line[0] != 'CONNECT':
                    self.request.sendall(b'HTTP/1.1 405 CONNECT only\r\nContent-Length: 0\r\n\r\n')
                    return
                host, port = line[1].rsplit(':', 1)
                outer.targets.append(line[1])
                if host not in HOSTS:
                    self.request.sendall(b'HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n')
                    return
                up = socket.create_connection(('127.0.0.1', int(port)))
                self.request.sendall(b'HTTP/1.1 200 Connection established\r\n\r\n')
                rest = head.split(b'\r\n\r\n', 1)[1]
                if rest:
                    up.sendall(rest)
                t = threading.Thread(target=pump, args=(up, self.request), daemon=True)
                t.start()
                pump(self.request, up)
                t.join()
                up.close()

        def pump(src, dst):
            try:
                while True:
                    b = src.recv(65536)
                    if not b:
                        break
                    dst.sendall(b)
            except OSError:
                pass
            try:
                dst.shutdown(socket.SHUT_WR)
            except OSError:
                pass

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True

        self.server = Server(('127.0.0.1', 0), Handler)
        self.url = 'http://127.0.0.1:%d' % self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


class Rig:
    def __init__(self, keep=False):
        base = os.environ.get('TMPDIR', '/tmp')
        self.dir = tempfile.mkdtemp(prefix='dduct-clients-', dir=base)
        self.keep = keep or os.environ.get('DDUCT_KEEP_RIG') == '1'
        self.procs = []
        self.files = {}    # url path on apt.test -> (local path, sha256, size)
        self.images = {}   # name -> {'manifest':..., 'blobs': {digest: size}}
        self.ports = {}
        log('rig dir', self.dir)

    # ---- lifetime -----------------------------------------------------------------------
    def close(self):
        for p in reversed(self.procs):
            p.stop()
        self.procs = []
        if self.keep:
            log('kept', self.dir)
        else:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def path(self, *parts):
        return os.path.join(self.dir, *parts)

    def mkdir(self, *parts):
        d = self.path(*parts)
        os.makedirs(d, exist_ok=True)
        return d

    # ---- certificates -------------------------------------------------------------------
    def make_certs(self):
        """A test CA and one origin leaf for every rig host name (and 127.0.0.1 for pushes)."""
        d = self.mkdir('pki')
        ossl = lambda *a: run(['openssl'] + list(a), what='openssl')
        self.ca = os.path.join(d, 'ca.crt')
        ossl('req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', os.path.join(d, 'ca.key'),
             '-out', self.ca, '-days', '30', '-subj', '/CN=dduct clients rig CA',
             '-addext', 'basicConstraints=critical,CA:TRUE',
             '-addext', 'keyUsage=critical,keyCertSign,cRLSign')
        self.key = os.path.join(d, 'origin.key')
        self.cert = os.path.join(d, 'origin.crt')
        ossl('req', '-newkey', 'rsa:2048', '-nodes', '-keyout', self.key,
             '-out', os.path.join(d, 'origin.csr'), '-subj', '/CN=apt.test')
        ext = os.path.join(d, 'origin.ext')
        with open(ext, 'w') as f:
            f.write('subjectAltName=%s,IP:127.0.0.1\n' % ','.join('DNS:' + h for h in HOSTS))
            f.write('extendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n')
        ossl('x509', '-req', '-in', os.path.join(d, 'origin.csr'), '-CA', self.ca,
             '-CAkey', os.path.join(d, 'ca.key'), '-CAcreateserial', '-out', self.cert,
             '-days', '30', '-extfile', ext)
        # skopeo's --*-cert-dir: every *.crt in it is a trusted CA
        self.ca_dir = self.mkdir('pki', 'certdir')
        shutil.copy(self.ca, os.path.join(self.ca_dir, 'ca.crt'))
        hosts = self.path('pki', 'hosts')
        with open(hosts, 'w') as f:
            f.write('127.0.0.1 localhost\n')
            for h in HOSTS:
                f.write('127.0.0.1 %s\n' % h)
        self.hosts_file = hosts

    # ---- the APT repository -------------------------------------------------------------
    def build_apt_repo(self):
        """Packages (4 KiB, 1 MiB, BIG_SIZE, four small) of deterministic incompressible bytes, a
        flat repository index and a .tar.gz beside it."""
        www = self.mkdir('www')
        repo = self.mkdir('www', 'debian')
        build = self.mkdir('build')
        specs = [('dduct-test-tiny', 4096), ('dduct-test-mid', 1 << 20), ('dduct-test-big', BIG_SIZE)]
        # small ones so that apt has a queue to pipeline once its first answer came back
        specs += [('dduct-test-small%d' % i, 16384 * i) for i in range(1, 5)]
        env = clean_env(SOURCE_DATE_EPOCH='1700000000')
        for i, (name, size) in enumerate(specs):
            root = os.path.join(build, name)
            os.makedirs(os.path.join(root, 'DEBIAN'))
            os.makedirs(os.path.join(root, 'usr', 'share', name))
            with open(os.path.join(root, 'DEBIAN', 'control'), 'w') as f:
                f.write('Package: %s\nVersion: 1.0\nArchitecture: all\nMaintainer: dduct tests '
                        '<tests@dduct.invalid>\nSection: misc\nPriority: optional\n'
                        'Description: dduct client test payload\n %d bytes of noise\n'
                        % (name, size))
            with open(os.path.join(root, 'usr', 'share', name, 'payload.bin'), 'wb') as f:
                f.write(random.Random(i + 1).randbytes(size))
            deb = os.path.join(repo, '%s_1.0_all.deb' % name)
            # -Znone: the payload is noise already; compressing it would only burn CPU
            run(['dpkg-deb', '--root-owner-group', '-Znone', '--build', root, deb], env=env,
                what='dpkg-deb')
            shutil.rmtree(root)
            self._add_file('/debian/' + os.path.basename(deb), deb)
        run_sh = lambda cmd: run(['sh', '-c', cmd], cwd=repo, env=env, what=cmd)
        run_sh('apt-ftparchive packages . > Packages && gzip -9nk Packages')
        run_sh('apt-ftparchive release . > Release.tmp && mv Release.tmp Release')
        # a source-style tarball, fetched with curl
        tgz = os.path.join(self.mkdir('www', 'files'), 'dduct-test-src-1.0.tar.gz')
        self._make_tgz(tgz, {'dduct-test-src-1.0/noise.bin': random.Random(99).randbytes(2 << 20),
                             'dduct-test-src-1.0/README': b'dduct client test tarball\n'})
        self._add_file('/files/' + os.path.basename(tgz), tgz)
        self.www = www

    def _add_file(self, urlpath, path):
        self.files[urlpath] = (path, sha256_file(path), os.path.getsize(path))

    @staticmethod
    def _make_tgz(path, members, level=1):
        raw = io.BytesIO()
        with tarfile.open(fileobj=raw, mode='w', format=tarfile.PAX_FORMAT) as t:
            for name, data in sorted(members.items()):
                ti = tarfile.TarInfo(name)
                ti.size, ti.mtime, ti.mode = len(data), 1700000000, 0o644
                t.addfile(ti, io.BytesIO(data))
        tar = raw.getvalue()
        gz = io.BytesIO()
        with gzip.GzipFile(fileobj=gz, mode='wb', compresslevel=level, mtime=0) as g:
            g.write(tar)
        with open(path, 'wb') as f:
            f.write(gz.getvalue())
        return tar, gz.getvalue()

    # ---- origins ------------------------------------------------------------------------
    def start_nginx(self):
        # free_port() probes, the server binds later: another test may take a port in between,
        # so a bind failure picks new ports and retries
        self._retry_bind('nginx', self._start_nginx_once, 'nginx.error.log')

    def start_registry(self):
        self._retry_bind('registry', self._start_registry_once, 'registry.log')

    def _retry_bind(self, sub, start, logname):
        for attempt in range(3):
            try:
                return start()
            except RuntimeError:
                p = self.procs.pop()
                p.stop()
                with open(self.path(sub, logname), errors='replace') as f:
                    text = f.read()
                if 'in use' not in text or attempt == 2:
                    raise RuntimeError('%s did not start:\n%s' % (sub, text[-3000:]))
                os.rename(self.path(sub, logname), self.path(sub, logname + '.%d' % attempt))
                if sub == 'registry':
                    del self.ports['registry']

    def _start_nginx_once(self):
        for k in ('apt', 'apt_http', 'front', 'blobs'):
            self.ports[k] = free_port()
        self.ports.setdefault('registry', free_port())
        for t in ('body', 'proxy', 'fastcgi', 'uwsgi', 'scgi'):
            self.mkdir('nginx', 'tmp', t)
        d = self.path('nginx')
        if not hasattr(self, 'www'):
            self.www = self.mkdir('www')  # no APT repository in this test
        conf = fill('nginx.conf.in', os.path.join(d, 'nginx.conf'), DIR=d, CERT=self.cert,
                    KEY=self.key, WWW=self.www, APT_PORT=self.ports['apt'],
                    APT_HTTP_PORT=self.ports['apt_http'],
                    FRONT_PORT=self.ports['front'], BLOBS_PORT=self.ports['blobs'],
                    REGISTRY_PORT=self.ports['registry'],
                    USER_LINE='user root;' if os.geteuid() == 0 else '')
        # -e: nginx opens its compiled-in error log before reading the config otherwise
        p = Proc('nginx', ['nginx', '-p', d + '/', '-c', conf, '-e',
                           os.path.join(d, 'nginx.error.log')],
                 os.path.join(d, 'nginx.out'), os.path.join(d, 'nginx.out'), env=clean_env())
        self.procs.append(p)
        for k in ('apt', 'front', 'blobs'):
            wait_tls(self.ports[k], self.ca, proc=p, what='nginx ' + k)

    def _start_registry_once(self):
        self.ports.setdefault('registry', free_port())  # nginx may have named it already
        d = self.mkdir('registry')
        self.mkdir('registry', 'registry-data')
        conf = fill('registry.yml.in', os.path.join(d, 'config.yml'), DIR=d, CERT=self.cert,
                    KEY=self.key, REGISTRY_PORT=self.ports['registry'])
        p = Proc('registry', ['docker-registry', 'serve', conf], os.path.join(d, 'access.log'),
                 os.path.join(d, 'registry.log'), env=clean_env())
        self.procs.append(p)
        wait_tls(self.ports['registry'], self.ca, proc=p, what='docker-registry')

    # ---- images -------------------------------------------------------------------------
    def build_image(self, name, seed, big):
        """An OCI image layout with two gzip layers (one of `big` bytes of noise), a config whose
        diff_ids are the uncompressed tar digests, and a manifest; returns the layout dir."""
        lay = self.mkdir('images', name.replace('/', '_'))
        blobs = os.path.join(lay, 'blobs', 'sha256')
        os.makedirs(blobs)

        def put(data):
            dg = hashlib.sha256(data).hexdigest()
            with open(os.path.join(blobs, dg), 'wb') as f:
                f.write(data)
            return 'sha256:' + dg

        layers, diff_ids = [], []
        contents = [{'opt/%s/noise.bin' % seed: random.Random(seed).randbytes(big)},
                    {'etc/%s.conf' % seed: b'built by the dduct client rig\n'}]
        for i, members in enumerate(contents):
            tar, gz = self._make_tgz(os.path.join(lay, 'layer%d.tmp' % i), members)
            os.unlink(os.path.join(lay, 'layer%d.tmp' % i))
            diff_ids.append('sha256:' + hashlib.sha256(tar).hexdigest())
            layers.append({'mediaType': 'application/vnd.oci.image.layer.v1.tar+gzip',
                           'digest': put(gz), 'size': len(gz)})
        config = json.dumps({
            'architecture': 'amd64', 'os': 'linux', 'created': '2024-01-01T00:00:00Z',
            'config': {'Cmd': ['/bin/true']},
            'rootfs': {'type': 'layers', 'diff_ids': diff_ids},
            'history': [{'created': '2024-01-01T00:00:00Z', 'created_by': 'dduct rig'}] * 2,
        }, sort_keys=True).encode()
        cfg = {'mediaType': 'application/vnd.oci.image.config.v1+json', 'digest': put(config),
               'size': len(config)}
        manifest = json.dumps({'schemaVersion': 2,
                               'mediaType': 'application/vnd.oci.image.manifest.v1+json',
                               'config': cfg, 'layers': layers}, sort_keys=True).encode()
        mdesc = {'mediaType': 'application/vnd.oci.image.manifest.v1+json',
                 'digest': put(manifest), 'size': len(manifest),
                 'annotations': {'org.opencontainers.image.ref.name': '1'}}
        with open(os.path.join(lay, 'oci-layout'), 'w') as f:
            json.dump({'imageLayoutVersion': '1.0.0'}, f)
        with open(os.path.join(lay, 'index.json'), 'w') as f:
            json.dump({'schemaVersion': 2, 'manifests': [mdesc]}, f)
        self.images[name] = {
            'manifest_digest': mdesc['digest'],
            'blobs': {d['digest']: d['size'] for d in [cfg] + layers},
        }
        return lay

    def skopeo_policy(self):
        p = self.path('pki', 'policy.json')
        if not os.path.exists(p):
            with open(p, 'w') as f:
                json.dump({'default': [{'type': 'insecureAcceptAnything'}]}, f)
        return p

    def push_image(self, name, layout):
        """skopeo copy oci:layout -> the registry, by IP (no name resolution needed to push)."""
        env = self.skopeo_env(self.ca_dir, proxy=None)
        run(['skopeo', '--policy', self.skopeo_policy(), 'copy', '--retry-times', '0',
             '--dest-cert-dir', self.ca_dir, '--preserve-digests',
             'oci:%s:1' % layout, 'docker://127.0.0.1:%d/%s:1' % (self.ports['registry'], name)],
            env=env, what='skopeo push')

    def setup_registry(self):
        """Both images in the registry: dduct/app (pulled from registry.test) and dduct/cdn (pulled
        through cdn.test)."""
        self.start_registry()
        for name, seed, big in (('dduct/app', 11, 6 << 20), ('dduct/cdn', 12, 5 << 20)):
            self.push_image(name, self.build_image(name, seed, big))

    # ---- client environments -----------------------------------------------------------
    def client_home(self, tag):
        home = self.mkdir('clients', tag, 'home')
        return home

    def skopeo_env(self, certdir, proxy):
        """Go reads SSL_CERT_FILE and SSL_CERT_DIR (else /etc/ssl/certs): both point at one CA so
        that nothing of the machine's trust is used."""
        home = self.mkdir('clients', 'skopeo-home')
        auth = os.path.join(home, 'auth.json')
        if not os.path.exists(auth):
            with open(auth, 'w') as f:
                f.write('{}')
        return clean_env(HOME=home, SSL_CERT_FILE=os.path.join(certdir, 'ca.crt'),
                         SSL_CERT_DIR=certdir, REGISTRY_AUTH_FILE=auth,
                         XDG_RUNTIME_DIR=home, HTTPS_PROXY=proxy, HTTP_PROXY=proxy)

    def direct(self, argv):
        """Run argv with the rig's host names in /etc/hosts, in a private mount namespace."""
        return ['unshare', '-m', '--propagation', 'private', 'sh', '-c',
                'mount --bind "$0" /etc/hosts && exec "$@"', self.hosts_file] + list(argv)

    def can_direct(self):
        try:
            r = subprocess.run(self.direct(['getent', 'hosts', 'registry.test']),
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=30)
        except OSError:
            return False
        return r.returncode == 0 and b'127.0.0.1' in r.stdout

    # ---- clients ------------------------------------------------------------------------
    def apt(self, tag, ca, proxy, packages, wrap=lambda a: a, scheme='https'):
        """A cold apt: fresh state, `apt-get update` then `apt-get download packages` from the
        https:// (or with scheme='http' the plain http://) source, through proxy if given.
        Returns {url path: local file}; self.apt_pipelined is the most GETs apt had sent on one
        connection before their answers came (from its Debug::Acquire::https trace)."""
        d = self.mkdir('clients', tag)
        for sub in ('etc/apt.conf.d', 'etc/sources.list.d', 'etc/preferences.d',
                    'etc/trusted.gpg.d', 'state/lists/partial', 'cache/archives/partial', 'log',
                    'out'):
            self.mkdir('clients', tag, sub)
        open(os.path.join(d, 'state', 'status'), 'w').close()
        open(os.path.join(d, 'etc', 'apt.conf'), 'w').close()
        with open(os.path.join(d, 'etc', 'sources.list'), 'w') as f:
            f.write('deb [trusted=yes] %s://apt.test:%d/debian/ ./\n'
                    % (scheme, self.ports['apt' if scheme == 'https' else 'apt_http']))
        conf = fill('apt.conf.in', os.path.join(d, 'apt.conf'), DIR=d, CA=ca,
                    PROXY=proxy or 'DIRECT', HTTP_PROXY=proxy or 'DIRECT')
        env = clean_env(APT_CONFIG=conf, HOME=d, DEBIAN_FRONTEND='noninteractive')
        r = run(wrap(['apt-get', 'update']), env=env, what='apt-get update')
        bad = [l for l in r.stdout.splitlines() if re.match(r'^(E:|W:|Err:)', l)]
        # apt-get update exits 0 when downloads failed; its E:/W:/Err: lines tell
        assert not bad, 'apt-get update (%s) complained:\n%s' % (tag, r.stdout)
        out = os.path.join(d, 'out')
        r = run(wrap(['apt-get', '-o', 'Debug::Acquire::%s=true' % scheme, 'download']
                     + list(packages)),
                env=env, cwd=out, what='apt-get download')
        self.apt_pipelined = in_flight = 0
        for line in r.stdout.splitlines():
            if line.startswith('CONNECT ') or line.startswith('GET '):
                in_flight = 0 if line.startswith('CONNECT ') else in_flight + 1
                self.apt_pipelined = max(self.apt_pipelined, in_flight)
            elif line.startswith('Answer for: '):
                in_flight -= 1
        bad = [l for l in r.stdout.splitlines() if re.match(r'^(E:|W:|Err:)', l)]
        assert not bad, 'apt-get download (%s) complained:\n%s' % (tag, r.stdout)
        got = {}
        for p in packages:
            url = '/debian/%s_1.0_all.deb' % p
            got[url] = os.path.join(out, os.path.basename(url))
        return got

    def skopeo_pull(self, tag, ref, certdir, proxy, wrap=lambda a: a):
        """skopeo copy docker://ref dir:... ; returns the dir."""
        out = self.path('clients', tag)
        os.makedirs(os.path.dirname(out), exist_ok=True)
        env = self.skopeo_env(certdir, proxy)
        run(wrap(['skopeo', '--policy', self.skopeo_policy(), 'copy', '--retry-times', '0',
                  '--src-cert-dir', certdir, 'docker://' + ref, 'dir:' + out]),
            env=env, what='skopeo copy %s' % ref)
        return out

    def curl(self, url, out, ca, proxy=None, resolve=None):
        """argv for one curl download (to run in parallel with Popen)."""
        argv = ['curl', '-fsS', '--noproxy', '', '--cacert', ca, '--capath', '/nonexistent',
                '-o', out, url]
        if proxy:
            argv[1:1] = ['-x', proxy]
        if resolve:
            argv[1:1] = ['--resolve', resolve]
        return argv

    def wget(self, url, out, ca, proxy):
        """argv for one wget download through proxy, trusting only ca."""
        return ['wget', '-q', '--no-config', '-e', 'use_proxy=yes', '-e', 'https_proxy=' + proxy,
                '--ca-certificate', ca, '--ca-directory', '/nonexistent', '-O', out, url]

    def curl_env(self):
        return clean_env(HOME=self.mkdir('clients', 'curl-home'))

    # ---- checks ------------------------------------------------------------------------
    def check_apt_files(self, got):
        for url, path in got.items():
            want = self.files[url]
            assert os.path.exists(path), '%s: not downloaded' % url
            h = sha256_file(path)
            assert h == want[1], '%s: sha256 %s, origin has %s' % (url, h, want[1])

    def check_image_dir(self, name, out):
        """A skopeo dir: holds the manifest and one file per blob named by its hex digest."""
        img = self.images[name]
        with open(os.path.join(out, 'manifest.json'), 'rb') as f:
            m = f.read()
        assert 'sha256:' + hashlib.sha256(m).hexdigest() == img['manifest_digest'], \
            '%s: manifest changed on the way' % name
        for dg, size in img['blobs'].items():
            p = os.path.join(out, dg.split(':', 1)[1])
            assert os.path.getsize(p) == size, '%s: %s has %d bytes, want %d' % (
                name, dg, os.path.getsize(p), size)
            assert 'sha256:' + sha256_file(p) == dg, '%s: %s corrupted' % (name, dg)

    def nginx_gets(self, which):
        """{path: [status,...]} of GETs in one nginx access log (apt, apt-http, front, blobs)."""
        res = {}
        try:
            with open(self.path('nginx', which + '.access.log')) as f:
                for line in f:
                    parts = line.split(' ')
                    if len(parts) >= 3 and parts[0] == 'GET':
                        res.setdefault(norm_path(parts[1]), []).append(int(parts[2]))
        except FileNotFoundError:
            pass
        return res

    def registry_gets(self):
        """{path: [status,...]} of GETs in the registry's access log (combined log format)."""
        res = {}
        with open(self.path('registry', 'access.log'), errors='replace') as f:
            for line in f:
                m = re.search(r'"GET (\S+) HTTP/[\d.]+" (\d{3}) ', line)
                if m:
                    res.setdefault(norm_path(m.group(1)), []).append(int(m.group(2)))
        return res

    def blob_path(self, name, digest):
        return '/v2/%s/blobs/%s' % (name, digest)

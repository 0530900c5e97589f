#!/usr/bin/env python3
"""The rig itself, without dduct: apt-get, skopeo and curl talk to the origins directly and trust
the rig's CA. Proves that the origins serve what the dduct tests expect (so that a failure there
is dduct's), including the CDN front's 307 with a signature and the blob host refusing unsigned
requests."""
import os
import ssl
import subprocess
import sys
import urllib.error
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import rig  # noqa: E402


def get_status(url, ca, port):
    """GET without following redirects; returns (status, Location)."""
    ctx = ssl.create_default_context(cafile=ca)
    ctx.check_hostname = False  # urllib connects to 127.0.0.1; the names live in the rig hosts file

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *a, **k):
            return None

    opener = urllib.request.build_opener(urllib.request.HTTPSHandler(context=ctx), NoRedirect)
    try:
        with opener.open(url.replace('https://', 'https://127.0.0.1:%d' % port, 1)
                         if url.startswith('https:///') else url, timeout=30) as r:
            return r.status, r.headers.get('Location')
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get('Location')


def main():
    rig.need_programs('nginx', 'docker-registry', 'skopeo', 'apt-get', 'apt-ftparchive',
                      'dpkg-deb', 'curl', 'wget', 'openssl', 'unshare')
    with rig.Rig() as r:
        r.make_certs()
        if not r.can_direct():
            rig.skip('cannot give clients a private /etc/hosts (unshare -m / mount --bind '
                     'refused); the direct rig check needs it')
        r.build_apt_repo()
        r.setup_registry()
        r.start_nginx()
        ports = r.ports

        # apt: update + download, twice from cold state, straight to apt.test
        pkgs = ['dduct-test-tiny', 'dduct-test-mid', 'dduct-test-big'] + [
            'dduct-test-small%d' % i for i in range(1, 5)]
        for n in (1, 2):
            got = r.apt('apt-direct-%d' % n, r.ca, None, pkgs, wrap=r.direct)
            r.check_apt_files(got)
        got = r.apt('apt-direct-http', r.ca, None, pkgs[:2], wrap=r.direct, scheme='http')
        r.check_apt_files(got)
        assert len(r.nginx_gets('apt-http')['/debian/dduct-test-tiny_1.0_all.deb']) == 1
        print('ok 1 - apt-get update + download straight from apt.test, twice over https and once '
              'over http, sha256 match')

        # curl: 4 parallel downloads of the big package and the tarball
        big = '/debian/dduct-test-big_1.0_all.deb'
        tgz = '/files/dduct-test-src-1.0.tar.gz'
        outs, procs = {}, []
        for i, url in enumerate([big] * 4 + [tgz]):
            out = r.path('clients', 'curl-direct-%d' % i)
            outs[out] = url
            argv = r.curl('https://apt.test:%d%s' % (ports['apt'], url), out, r.ca,
                          resolve='apt.test:%d:127.0.0.1' % ports['apt'])
            procs.append(subprocess.Popen(argv, env=r.curl_env()))
        assert all(p.wait(120) == 0 for p in procs), 'a direct curl failed'
        for out, url in outs.items():
            assert rig.sha256_file(out) == r.files[url][1], '%s: wrong bytes' % url
        print('ok 2 - 4 parallel curls of the big package and a .tar.gz, sha256 match')

        apt_gets = r.nginx_gets('apt')
        assert len(apt_gets[big]) == 2 + 4, apt_gets[big]  # apt (as /debian/./x) and curl
        print('ok 3 - the apt origin log counts GETs per file (%d for the big .deb)'
              % len(apt_gets[big]))

        # skopeo straight to the registry by name, then through the CDN front
        for name, host, port in (('dduct/app', 'registry.test', ports['registry']),
                                 ('dduct/cdn', 'cdn.test', ports['front'])):
            out = r.skopeo_pull('skopeo-direct-' + name.replace('/', '_'),
                                '%s:%d/%s:1' % (host, port, name), r.ca_dir, None, wrap=r.direct)
            r.check_image_dir(name, out)
        print('ok 4 - skopeo pulls both images directly (registry.test, cdn.test), digests match')

        # the CDN front redirected every blob to blobs.test with a signature
        front, blobs = r.nginx_gets('front'), r.nginx_gets('blobs')
        for dg in r.images['dduct/cdn']['blobs']:
            p = r.blob_path('dduct/cdn', dg)
            assert front.get(p) == [307], 'front %s: %s' % (p, front.get(p))
            assert blobs.get(p) == [200], 'blob host %s: %s' % (p, blobs.get(p))
        st, loc = get_status('https://127.0.0.1:%d%s' % (ports['front'], p), r.ca, ports['front'])
        assert st == 307 and loc.startswith('https://blobs.test:%d/' % ports['blobs']) \
            and '?sig=' in loc, (st, loc)
        st2, loc2 = get_status('https://127.0.0.1:%d%s' % (ports['front'], p), r.ca, ports['front'])
        assert loc2 != loc, 'the signature must be fresh on every redirect'
        unsigned, _ = get_status('https://127.0.0.1:%d%s' % (ports['blobs'], p), r.ca, ports['blobs'])
        assert unsigned == 403, 'blob host answered %d without a signature' % unsigned
        signed, _ = get_status(loc.replace('blobs.test', '127.0.0.1'), r.ca, ports['blobs'])
        assert signed == 200, signed
        print('ok 5 - CDN front: 307 to blobs.test with a fresh ?sig=, unsigned GET refused (403)')

        reg = r.registry_gets()
        for dg in r.images['dduct/app']['blobs']:
            p = r.blob_path('dduct/app', dg)
            assert reg.get(p) == [200], 'registry %s: %s' % (p, reg.get(p))
        print('ok 6 - the registry access log shows one GET per blob of dduct/app')

        # The same clients in proxy mode (no private hosts file, proxy settings as the dduct
        # tests use them) through a blind CONNECT proxy: every request for a rig name must go
        # through the proxy, or the client could not even resolve the name.
        tun = rig.TunnelProxy()
        try:
            got = r.apt('apt-tunnel', r.ca, tun.url, pkgs[:1])
            r.check_apt_files(got)
            for name, host, port in (('dduct/app', 'registry.test', ports['registry']),
                                     ('dduct/cdn', 'cdn.test', ports['front'])):
                out = r.skopeo_pull('skopeo-tunnel-' + name.replace('/', '_'),
                                    '%s:%d/%s:1' % (host, port, name), r.ca_dir, tun.url)
                r.check_image_dir(name, out)
            out = r.path('clients', 'curl-tunnel')
            rig.run(r.curl('https://apt.test:%d%s' % (ports['apt'], tgz), out, r.ca,
                           proxy=tun.url), env=r.curl_env(), what='curl via tunnel')
            assert rig.sha256_file(out) == r.files[tgz][1]
            out = r.path('clients', 'wget-tunnel')
            rig.run(r.wget('https://apt.test:%d%s' % (ports['apt'], tgz), out, r.ca, tun.url),
                    env=r.curl_env(), what='wget via tunnel')
            assert rig.sha256_file(out) == r.files[tgz][1]
        finally:
            tun.close()
        hosts = sorted(set(t.rsplit(':', 1)[0] for t in tun.targets))
        assert hosts == sorted(rig.HOSTS), 'CONNECT targets: %s' % tun.targets
        print('ok 7 - apt-get, skopeo (registry and CDN redirect), curl and wget send every request '
              'for the rig names through the proxy as CONNECTs (%s)' % ', '.join(hosts))
        print('1..7')


if __name__ == '__main__':
    main()

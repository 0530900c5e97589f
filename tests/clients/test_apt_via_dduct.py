#!/usr/bin/env python3
"""apt-get and curl through the real dduct binary against the nginx APT origin (apt.test).

Every client trusts only dduct's ca.crt and cannot resolve apt.test itself, so a client that
went around the proxy fails instead of passing. Proves: four parallel curl downloads of the
big package on a cold cache, two cold apt-get update + download runs (apt pipelines its GETs in
the CONNECT tunnel), and a restarted dduct on the same file_dir all get the exact bytes, while
the origin's access log shows one GET per .deb and .tar.gz. The same for a plain http:// source
(absolute-form requests to Acquire::http::Proxy)."""
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import rig  # noqa: E402
import viadduct  # noqa: E402

PKGS = ['dduct-test-tiny', 'dduct-test-mid', 'dduct-test-big'] + [
    'dduct-test-small%d' % i for i in range(1, 5)]
BIG = '/debian/dduct-test-big_1.0_all.deb'
TGZ = '/files/dduct-test-src-1.0.tar.gz'


def parallel_curls(r, d, urls, tag):
    procs, outs = [], {}
    for i, url in enumerate(urls):
        out = r.path('clients', '%s-%d' % (tag, i))
        os.makedirs(os.path.dirname(out), exist_ok=True)
        outs[out] = url
        argv = r.curl('https://apt.test:%d%s' % (r.ports['apt'], url), out, d.ca_crt,
                      proxy=d.http_proxy)
        procs.append(subprocess.Popen(argv, env=r.curl_env(), stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT))
    for p in procs:
        out, _ = p.communicate(timeout=600)
        assert p.returncode == 0, 'curl through dduct exited %d: %s' % (p.returncode, out)
    for out, url in outs.items():
        got = rig.sha256_file(out)
        assert got == r.files[url][1], '%s via curl: sha256 %s, origin %s' % (url, got,
                                                                              r.files[url][1])


def once_each(r, what, log='apt', urls=None):
    gets = r.nginx_gets(log)
    for url in urls or r.files:
        assert len(gets.get(url, [])) == 1, '%s: origin saw %s GETs for %s (want 1): %s' % (
            what, len(gets.get(url, [])), url, gets.get(url))


def main():
    rig.need_programs('nginx', 'apt-get', 'apt-ftparchive', 'dpkg-deb', 'curl', 'wget', 'openssl')
    viadduct.need_dduct()
    n = 0
    with rig.Rig() as r:
        r.make_certs()
        r.build_apt_repo()
        r.start_nginx()
        with viadduct.Dduct(r, tls=True) as d:
            parallel_curls(r, d, [BIG] * 4 + [TGZ], 'curl-cold')
            n += 1
            print('ok %d - 4 parallel curls of the big .deb (and the .tar.gz) on a cold cache '
                  'get the exact bytes' % n)
            # the second run goes to the TLS listener (Acquire::https::Proxy "https://...")
            for run, proxy in ((1, d.http_proxy), (2, d.https_proxy)):
                got = r.apt('apt-%d' % run, d.ca_crt, proxy, PKGS)
                r.check_apt_files(got)
                # apt sends the rest of its queue once the first answer shows keep-alive
                assert r.apt_pipelined >= 2, 'apt did not pipeline (%d)' % r.apt_pipelined
                n += 1
                print('ok %d - cold apt-get update + download #%d through dduct (proxy %s, up to '
                      '%d pipelined GETs in the tunnel), sha256 match'
                      % (n, run, proxy.split(':')[0], r.apt_pipelined))
            for url in (BIG, TGZ):
                out = r.path('clients', 'wget' + url.replace('/', '_'))
                rig.run(r.wget('https://apt.test:%d%s' % (r.ports['apt'], url), out, d.ca_crt,
                               d.http_proxy), env=r.curl_env(), what='wget through dduct')
                assert rig.sha256_file(out) == r.files[url][1], '%s via wget: wrong bytes' % url
            n += 1
            print('ok %d - wget gets the big .deb and the .tar.gz through dduct' % n)
            once_each(r, 'after 4 curls, 2 apt runs and wget')
            n += 1
            print('ok %d - the origin saw one GET per .deb and .tar.gz' % n)

            # plain http:// source: absolute-form requests to Acquire::http::Proxy
            for run in (1, 2):
                got = r.apt('apt-http-%d' % run, d.ca_crt, d.http_proxy, PKGS, scheme='http')
                r.check_apt_files(got)
                n += 1
                print('ok %d - cold apt-get update + download #%d from an http:// source through '
                      'dduct (up to %d pipelined GETs), sha256 match' % (n, run, r.apt_pipelined))
            once_each(r, 'http:// source after 2 apt runs', 'apt-http', list(got))
            n += 1
            print('ok %d - the http:// origin saw one GET per .deb' % n)
            file_dir = d.file_dir
        n += 1
        print('ok %d - dduct exited cleanly (status 0, no sanitizer report)' % n)

        with viadduct.Dduct(r, file_dir=file_dir) as d2:
            got = r.apt('apt-restart', d2.ca_crt, d2.http_proxy, PKGS)
            r.check_apt_files(got)
            parallel_curls(r, d2, [BIG, TGZ], 'curl-restart')
            once_each(r, 'after a restart of dduct on the same file_dir')
        n += 1
        print('ok %d - a restarted dduct serves every file from file_dir (no new origin GET)' % n)
    print('1..%d' % n)


if __name__ == '__main__':
    main()

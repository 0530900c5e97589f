#!/usr/bin/env python3
"""skopeo through the real dduct binary against Debian's docker-registry (registry.test) and a
CDN-style front (cdn.test) that answers every blob GET with 307 to blobs.test?sig=...

skopeo (Go) never proxies localhost or loopback IPs, so the registries are reached by name and
dduct resolves the names ([proxy] resolve). skopeo trusts only dduct's ca.crt (--src-cert-dir,
SSL_CERT_FILE, SSL_CERT_DIR), for the TLS connection to dduct's HTTPS listener too. Proves: two cold pulls of each image get manifests and blobs with
the right digests, and the origins' access logs show one GET per blob. blobs.test is not in
server_dns_sans (like Docker Hub's CDN host under the seed's '*.docker.io'): a client sent there
would get a blind tunnel to a certificate it does not trust, so dduct must follow the redirect
itself and cache under the original request."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import rig  # noqa: E402
import viadduct  # noqa: E402


def main():
    rig.need_programs('nginx', 'docker-registry', 'skopeo', 'openssl')
    viadduct.need_dduct()
    n = 0
    with rig.Rig() as r:
        r.make_certs()
        r.setup_registry()
        r.start_nginx()
        pulls = (('dduct/app', 'registry.test:%d' % r.ports['registry']),
                 ('dduct/cdn', 'cdn.test:%d' % r.ports['front']))
        with viadduct.Dduct(r, tls=True) as d:
            for name, host in pulls:
                # the second pull goes to the TLS listener: HTTPS_PROXY=https://, TLS in TLS
                for run, proxy in ((1, d.http_proxy), (2, d.https_proxy)):
                    out = r.skopeo_pull('skopeo-%s-%d' % (name.replace('/', '_'), run),
                                        '%s/%s:1' % (host, name), d.certdir, proxy)
                    r.check_image_dir(name, out)
                    n += 1
                    print('ok %d - cold skopeo pull #%d of %s/%s through dduct (HTTPS_PROXY=%s), '
                          'digests match' % (n, run, host, name, proxy.split(':')[0]))

            reg = r.registry_gets()
            for dg in r.images['dduct/app']['blobs']:
                p = r.blob_path('dduct/app', dg)
                assert len(reg.get(p, [])) == 1, 'registry: %s GETs of %s: %s' % (
                    len(reg.get(p, [])), p, reg.get(p))
            n += 1
            print('ok %d - the registry saw one GET per blob of dduct/app after two pulls' % n)

            front, blobs = r.nginx_gets('front'), r.nginx_gets('blobs')
            for dg in r.images['dduct/cdn']['blobs']:
                p = r.blob_path('dduct/cdn', dg)
                assert front.get(p) == [307], 'CDN front %s: %s (want one 307)' % (p, front.get(p))
                assert blobs.get(p) == [200], 'blob host %s: %s (want one 200)' % (p, blobs.get(p))
                assert len(reg.get(p, [])) == 1, 'registry behind the CDN %s: %s' % (p, reg.get(p))
            n += 1
            print('ok %d - the CDN front and its blob host saw one GET per blob after two pulls'
                  % n)
        n += 1
        print('ok %d - dduct exited cleanly (status 0, no sanitizer report)' % n)
    print('1..%d' % n)


if __name__ == '__main__':
    main()

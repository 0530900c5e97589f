/* The full config example of the original tool's README (shared/seed/dduct-README.md), byte for
 * byte: the TOML and config tests both start from it. */
#ifndef DDUCT_TEST_SEED_CONFIG_H
#define DDUCT_TEST_SEED_CONFIG_H

static const char seed[] =
    "[misc]\n"
    "log_level = 'info'\n"
    "cert_dir  = '/var/tmp/dduct/certs/'\n"
    "file_dir  = '/var/tmp/dduct/files/'\n"
    "\n"
    "[proxy]\n"
    "tcp_bind = '127.0.0.1:8000'\n"
    "tls_bind = '0.0.0.0:4430'\n"
    "filters  = [\n"
    "  '^/v2/.*/blobs/sha256:\\w+$',\n"
    "  '^/.*\\.(?:apk|deb|rpm)$',\n"
    "  '^/.*\\.(?:tar|tbz|tgz|txz)$',\n"
    "  '^/.*\\.(?:7z|bz2|gz|xz|zip|zst)$',\n"
    "]\n"
    "\n"
    "[certs]\n"
    "rsa_key_bits    = 3072\n"
    "days_from_now   = 3072\n"
    "ca_cn           = 'dduct'\n"
    "server_cn       = '*.dduct.rs'\n"
    "server_dns_sans = [\n"
    "  '*.dduct.rs',\n"
    "  '*.docker.io',\n"
    "  '*.gcr.io',\n"
    "  '*.githubusercontent.com',\n"
    "  '*.k8s.io',\n"
    "  '*.quay.io',\n"
    "  'ghcr.io',\n"
    "  'quay.io',\n"
    "]\n"
    "server_ip_sans  = ['127.0.0.1']\n"
    "client_cn       = 'client.dduct.rs'\n"
    "p12_pass        = 'dduct'\n";

#endif

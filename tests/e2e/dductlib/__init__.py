"""dductlib: the end-to-end test rig for dduct (Python 3 stdlib only).

certs    test CA, origin certificates and a self-signed "bad" one, made with the openssl CLI
origin   the test origins: HTTP and HTTPS echo/bytes/stall/... servers, a silent server
client   raw HTTP/1.1 over sockets, TLS over any transport (TLS inside TLS), CONNECT
harness  the dduct process (config, cert cache, start, stop, RSS), curl, openssl, a TAP runner
"""

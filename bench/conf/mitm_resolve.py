"""mitmproxy addon for the bench: resolve the origin's name to its loopback address, the way
curl --resolve, squid's hosts_file and dduct's `resolve` do (mitmproxy has no such option).
BENCH_RESOLVE="name:address" in the environment."""
import os

NAME, ADDR = os.environ["BENCH_RESOLVE"].split(":", 1)


class Resolve:
    def server_connect(self, data):
        host, port = data.server.address
        if host == NAME:
            if not data.server.sni:
                data.server.sni = NAME  # verify the origin certificate against its name
            data.server.address = (ADDR, port)


addons = [Resolve()]

"""Endpoint lists from DNS: ``python -m djinn.discover NAME PORT``.

Prints ``tcp://ADDR:PORT,...`` for every address ``NAME`` resolves to (sorted, IPv6
in brackets): with a Kubernetes headless Service, one per ready djinn-server pod, which
is what a client puts in ``DJINN_SERVER``. ``--min N`` waits until at least N addresses
resolve (servers still starting), re-resolving every ``--interval`` seconds, for at
most ``--timeout`` seconds; then it exits 1 with a message on stderr.
"""

import argparse
import ipaddress
import socket
import sys
import time


def endpoints(name, port, family=socket.AF_UNSPEC):
    """The sorted ``tcp://`` endpoints of every address ``name`` resolves to."""
    try:
        infos = socket.getaddrinfo(name, port, family, socket.SOCK_STREAM)
    except socket.gaierror:
        return []
    addrs = {ipaddress.ip_address(info[4][0]) for info in infos}
    out = []
    for a in sorted(addrs, key=lambda a: (a.version, a)):
        host = f"[{a}]" if a.version == 6 else str(a)
        out.append(f"tcp://{host}:{port}")
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(
        prog="python -m djinn.discover", description=__doc__.split("\n\n")[0]
    )
    ap.add_argument("name", help="DNS name, e.g. djinn-server.djinn.svc.cluster.local")
    ap.add_argument("port", type=int)
    ap.add_argument("--min", type=int, default=1, help="addresses to wait for (default 1)")
    ap.add_argument("--timeout", type=float, default=60.0, help="seconds (default 60)")
    ap.add_argument("--interval", type=float, default=2.0, help="seconds between lookups")
    ap.add_argument("--ipv4", action="store_true", help="IPv4 addresses only")
    args = ap.parse_args(argv)
    family = socket.AF_INET if args.ipv4 else socket.AF_UNSPEC
    deadline = time.monotonic() + args.timeout
    while True:
        eps = endpoints(args.name, args.port, family)
        if len(eps) >= args.min:
            print(",".join(eps))
            return 0
        left = deadline - time.monotonic()
        if left <= 0:
            print(
                f"djinn.discover: {args.name} resolves to {len(eps)} address(es) after "
                f"{args.timeout:g} s, wanted {args.min}",
                file=sys.stderr,
            )
            return 1
        time.sleep(min(args.interval, left))  # DNS has no change notification: poll


if __name__ == "__main__":
    sys.exit(main())

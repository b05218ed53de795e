"""Generate the CURVE keys of a Djinn deployment as Kubernetes Secrets.

    python deploy/kubernetes/make_secrets.py --tenant eval --tenant alice > secrets.yaml
    kubectl apply -f secrets.yaml            # then: kubectl apply -k deploy/kubernetes

Keys are ZeroMQ CURVE keypairs in the czmq/pyzmq certificate format (what
``zmq.auth.load_certificate`` reads and ``djinn-server keygen`` writes): ``NAME.key``
holds the public key, ``NAME.key_secret`` both. Secrets written:

- ``djinn-server-keys``: ``server.key`` and ``server.key_secret``, the server's keypair.
- ``djinn-clients``: the public certificate of every client the servers accept,
  ``NAME.key``; the tenant name is the file name. Operators (``--operator``, and the
  exporter) carry the metadata line ``role = "operator"``: they may read server-wide
  STATS.
- ``djinn-exporter-key``: ``exporter.key_secret``, the exporter's keypair.
- ``djinn-client-NAME`` per tenant: ``NAME.key_secret`` and the server's public
  ``server.key``, to mount into that tenant's pods (DJINN_CLIENT_CERT,
  DJINN_SERVER_CERT).

``--keys-dir DIR`` also writes the same files there, for servers and clients outside
the cluster: ``DIR/server/`` is a server's ``--keys`` directory (``server.key``,
``server.key_secret``, ``clients/*.key``), ``DIR/NAME/`` a client's bundle
(``NAME.key_secret``, ``server.key``; ``NAME.key`` too). Secret keys go to stdout (as ``kubectl create secret --dry-run -o yaml``
would): redirect them to a file only you can read.
"""

import argparse
import base64
import datetime
import os
import re
import sys

import yaml
import zmq

_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def cert_text(public, secret=None, metadata=None):
    """One certificate file: czmq's format, metadata values quoted."""
    when = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    kind = "**Secret** Certificate" if secret else "Public Certificate"
    lines = [
        f"#   ****  Generated on {when} by djinn make_secrets  ****",
        f"#   ZeroMQ CURVE {kind}",
        "",
        "metadata",
    ]
    lines += [f'    {k} = "{v}"' for k, v in (metadata or {}).items()]
    lines += ["curve", f'    public-key = "{public.decode()}"']
    if secret:
        lines.append(f'    secret-key = "{secret.decode()}"')
    return "\n".join(lines) + "\n"


def write_cert(path_base, public, secret=None, metadata=None):
    """Write ``path_base.key`` (and ``path_base.key_secret`` when ``secret`` is given,
    mode 0600); returns the paths written."""
    paths = [path_base + ".key"]
    with open(paths[0], "w") as f:
        f.write(cert_text(public, metadata=metadata))
    if secret is not None:
        paths.append(path_base + ".key_secret")
        fd = os.open(paths[1], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(cert_text(public, secret, metadata))
    return paths


def secret(name, namespace, files, component):
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {
                "app.kubernetes.io/part-of": "djinn",
                "app.kubernetes.io/component": component,
            },
        },
        "type": "Opaque",
        "data": {k: base64.b64encode(v.encode()).decode() for k, v in sorted(files.items())},
    }


def make(namespace, tenants, operators, keys_dir=None):
    """The Secrets, as a list of manifests (dicts)."""
    for name in [*tenants, *operators]:
        if not _NAME.match(name) or name in ("server", "exporter"):
            raise ValueError(
                f"bad tenant name {name!r}: lowercase letters, digits and '-', "
                "not 'server' or 'exporter'"
            )
    if len(set(tenants) | set(operators)) != len(tenants) + len(operators):
        raise ValueError("a name is given twice")
    op = {"role": "operator"}
    srv_pub, srv_sec = zmq.curve_keypair()
    server_key = cert_text(srv_pub)
    out = [
        secret(
            "djinn-server-keys",
            namespace,
            {"server.key": server_key, "server.key_secret": cert_text(srv_pub, srv_sec)},
            "server",
        )
    ]
    clients, private = {}, {}
    for name, meta in (
        [("exporter", op)] + [(t, None) for t in tenants] + [(o, op) for o in operators]
    ):
        pub, sec = zmq.curve_keypair()
        clients[f"{name}.key"] = cert_text(pub, metadata=meta)
        private[name] = (pub, sec, meta)
    out.append(secret("djinn-clients", namespace, clients, "clients"))
    pub, sec, meta = private["exporter"]
    out.append(
        secret(
            "djinn-exporter-key",
            namespace,
            {"exporter.key_secret": cert_text(pub, sec, meta)},
            "exporter",
        )
    )
    for name in [*tenants, *operators]:
        pub, sec, meta = private[name]
        out.append(
            secret(
                f"djinn-client-{name}",
                namespace,
                {f"{name}.key_secret": cert_text(pub, sec, meta), "server.key": server_key},
                "client",
            )
        )
    if keys_dir:  # the server's --keys directory, and one bundle per client
        sdir = os.path.join(keys_dir, "server")
        os.makedirs(os.path.join(sdir, "clients"), exist_ok=True)
        write_cert(os.path.join(sdir, "server"), srv_pub, srv_sec)
        for name, (pub, sec, meta) in private.items():
            write_cert(os.path.join(sdir, "clients", name), pub, metadata=meta)
            cdir = os.path.join(keys_dir, name)
            os.makedirs(cdir, exist_ok=True)
            write_cert(os.path.join(cdir, name), pub, sec, meta)
            write_cert(os.path.join(cdir, "server"), srv_pub)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--namespace", default="djinn")
    ap.add_argument(
        "--tenant",
        action="append",
        default=[],
        help="a client allowed to open sessions (repeatable)",
    )
    ap.add_argument(
        "--operator",
        action="append",
        default=[],
        help="a client that may also read server-wide STATS (repeatable)",
    )
    ap.add_argument("--keys-dir", help="also write the certificates into this directory")
    args = ap.parse_args(argv)
    try:
        docs = make(args.namespace, args.tenant, args.operator, args.keys_dir)
    except ValueError as e:
        ap.error(str(e))
    yaml.safe_dump_all(docs, sys.stdout, sort_keys=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""djinn-exporter: a djinn-server's STATS counters as Prometheus metrics.

Each scrape of ``/metrics`` sends one STATS request (docs/PROTOCOL.md, section 6) to every
configured server, over a fresh DEALER socket with a bounded wait, and maps the reply's
body *generically*, so counters the server adds later appear without a change here:

1. a numeric (or boolean) top-level field ``k`` becomes ``djinn_k``;
2. a nested map ``m`` prefixes its fields: ``m = {"a": 1}`` becomes ``djinn_m_a``
   (recursively, lists inside it included);
3. a list ``L`` of maps becomes ``djinn_L_<k>`` with one sample per entry, labelled
   ``index`` (its position) and, when the entry has a string ``name``, ``device``
   for ``devices`` and ``name`` for any other list (two devices may share a name:
   ``--device cpu,cpu``; the index keeps their samples apart);
4. top-level strings become labels of ``djinn_server_info`` (value 1);
5. everything carries a ``server`` label: the endpoint it was read from;
6. two groups are folded into labelled families (``relabel``): the per-class figures of
   each device become ``djinn_qos_queue_wait_seconds`` and ``djinn_qos_run_seconds``
   ``{class, quantile}`` (seconds) and ``djinn_qos_fragments_total{class}``; the ERROR
   replies by kind (``errors_args`` ...) become ``djinn_error_replies_total{kind}``.

``KNOWN`` gives HELP text and the type of the fields docs/PROTOCOL.md documents:
counters (exposed with the ``_total`` suffix) or gauges. A field not in it is exposed
untyped with a generic HELP line. ``session_bytes``/``session_peak_bytes`` are skipped:
they describe the session named in the request, and the exporter has none.

The exporter's own series: ``djinn_up`` (1 when the server answered this scrape),
``djinn_scrape_duration_seconds`` and ``djinn_exporter_scrape_errors_total{kind}``
(``timeout``, ``error_reply``, ``bad_reply``).

HTTP is prometheus_client's (``start_http_server``), never a server of ours. With
``--client-cert``/``--server-cert`` (or ``DJINN_CLIENT_CERT``/``DJINN_SERVER_CERT``)
the connection is CURVE-encrypted and authenticated: the client certificate is a
``.key_secret`` file (czmq/pyzmq format) whose public half the server lists as an
operator, the server certificate is the server's public ``.key`` file. Without them
the connection is plain, for keyless servers on a trusted network or loopback.
"""

import argparse
import itertools
import os
import re
import signal
import sys
import threading
import time

import msgpack
import zmq
import zmq.auth
from prometheus_client.core import (
    CollectorRegistry,
    CounterMetricFamily,
    GaugeMetricFamily,
    UnknownMetricFamily,
)

STATS, REPLY, ERROR = 9, 64, 65
PREFIX = "djinn_"
DEFAULT_PORT = 9477

C, G, SKIP = "counter", "gauge", "skip"

# Fields of the STATS body documented in docs/PROTOCOL.md section 6: type and HELP.
# test_exporter.py checks that every name here is documented there.
KNOWN = {
    "sched_us_hit_avg": (G, "Mean scheduling time of plan-cache hits, microseconds"),
    "sched_us_miss_avg": (
        G,
        "Mean scheduling time of fragments that carried their nodes, microseconds",
    ),
    "plan_cache_entries": (G, "Fragments in the plan cache"),
    "plan_cache_capacity": (G, "Capacity of the plan cache (0 = off)"),
    "plan_cache_hits": (C, "GRAPH_CACHED messages whose fragment was found"),
    "plan_cache_misses": (C, "GRAPH_CACHED messages whose fragment was not found"),
    "plan_cache_evictions": (C, "Plan-cache entries dropped by the LRU bound"),
    "session_bytes": (SKIP, ""),
    "session_peak_bytes": (SKIP, ""),
    "text_entries": (G, "Distinct contents in the Text segment"),
    "text_bytes": (G, "Bytes in the Text segment, each content counted once"),
    "text_refs": (G, "References to Text content held by session handles"),
    "text_hits": (C, "Uploads or HAVE items that found their content already filed"),
    "session_quota_bytes": (G, "Per-session byte quota (0 = unlimited)"),
    "session_max_queued": (G, "Per-session bound on fragments waiting or running"),
    "uptime_ms": (G, "Milliseconds since the server started"),
    "sessions_open": (G, "Sessions currently open"),
    "sessions_opened": (C, "Sessions opened"),
    "sessions_closed": (C, "Sessions closed by CLOSE"),
    "sessions_expired": (C, "Sessions reclaimed by the lease"),
    "handles": (G, "Handle-table entries over all sessions"),
    "bytes_in_use": (G, "Bytes of private materialised storages over all sessions"),
    "requests": (C, "Multipart messages received, rejected ones included"),
    "errors": (C, "ERROR replies sent"),
    "bytes_received": (C, "Bytes of all frames received"),
    "bytes_sent": (C, "Bytes of all replies sent"),
    "lease_ms": (G, "Session lease, milliseconds"),
    "devices.nodes": (C, "Nodes run successfully on the device"),
    "devices.fragments": (C, "Fragments the device's worker processed"),
    "devices.errors": (C, "Fragments that failed on the device"),
    "devices.data_capacity": (G, "Usable bytes of the device's Data segment"),
    "devices.data_used": (G, "Bytes in live Data blocks"),
    "devices.data_peak": (G, "Highest data_used so far"),
    "devices.data_free_blocks": (G, "Free blocks in the Data segment"),
    "devices.data_largest_free": (G, "Largest free Data block, bytes"),
    "devices.data_fragmentation": (G, "1 - largest free block / free bytes of the Data segment"),
    "devices.slab_capacity": (G, "Bytes of the stack slab"),
    "devices.slab_high_water": (G, "Highest slab watermark so far, bytes"),
    "devices.slab_in_use": (G, "Slab watermark now, bytes"),
    "devices.slab_resets": (C, "Times the slab was reset to empty"),
    "devices.slab_resets_deferred": (C, "Fragments after which the slab could not be reset"),
    "devices.planned_fragments": (C, "Fragments whose intermediates were planned into the slab"),
    "devices.plan_peak_last": (G, "Planned slab peak of the last planned fragment, bytes"),
    "devices.plan_lower_bound_last": (G, "Lower bound of the last planned fragment, bytes"),
    "devices.plan_bump_last": (G, "Bump-allocator size of the last planned fragment, bytes"),
    "devices.plan_peak_sum": (C, "Sum of planned slab peaks, bytes"),
    "devices.plan_lower_bound_sum": (C, "Sum of planned lower bounds, bytes"),
    "devices.copied_out_bytes": (C, "Bytes copied from the slab to the Data segment"),
    "devices.queued": (G, "Fragments waiting in the device's queues"),
    "devices.preemptions": (C, "Better-class fragments run nested between two nodes"),
    "devices.lane_runs": (C, "Realtime and interactive fragments run on a lane, beside the worker"),
}

# Fields folded into labelled families, so that an operator filters and sums by label
# (``sum by (class) (...)``) instead of by metric name: the per-class latency figures of
# each device and the ERROR replies by kind. Each maps a STATS key to (family, type, HELP,
# extra labels, scale).
_CLASSES = {"rt": "realtime", "ia": "interactive", "bt": "batch"}
_QOS_FIELD = re.compile(r"^devices\.(rt|ia|bt)_(wait|run)_(p50|p99)_us$")
_QOS_COUNT = re.compile(r"^devices\.(rt|ia|bt)_fragments$")
_ERR_KIND = re.compile(r"^errors_([a-z]+)$")


def relabel(key):
    """The labelled family a STATS key belongs to, or None (exported under its own name)."""
    m = _QOS_FIELD.match(key)
    if m:
        cls, what, q = m.groups()
        name, doc = {
            "wait": ("qos_queue_wait_seconds", "Queue wait per QoS class (recent 1024 fragments)"),
            "run": ("qos_run_seconds", "Run time per QoS class (recent 1024 fragments)"),
        }[what]
        quantile = {"p50": "0.5", "p99": "0.99"}[q]
        return PREFIX + name, G, doc, (("class", _CLASSES[cls]), ("quantile", quantile)), 1e-6
    m = _QOS_COUNT.match(key)
    if m:
        doc = "Fragments run per QoS class (HAVE included)"
        return PREFIX + "qos_fragments", C, doc, (("class", _CLASSES[m.group(1)]),), 1
    m = _ERR_KIND.match(key)
    if m:
        doc = "ERROR replies sent, by kind (docs/PROTOCOL.md section 6)"
        return PREFIX + "error_replies", C, doc, (("kind", m.group(1)),), 1
    return None


_BAD_CHARS = re.compile(r"[^a-zA-Z0-9_]")


def _metric_name(path):
    return PREFIX + _BAD_CHARS.sub("_", "_".join(path))


def _label_name(key):
    name = _BAD_CHARS.sub("_", key)
    return name if not name[:1].isdigit() else "_" + name


def _is_number(v):
    return isinstance(v, (int, float)) and not isinstance(v, complex)


def flatten(body):
    """The samples of one STATS body: ``[(key_path, labels, value)]``.

    ``key_path`` is a tuple of field names ("devices", "nodes"); ``labels`` a tuple of
    (label, value) pairs. Strings other than list entries' names are returned with the
    value None (they become labels of djinn_server_info)."""
    out = []

    def walk(path, value, labels):
        if isinstance(value, bool) or _is_number(value):
            out.append((path, labels, float(value)))
        elif isinstance(value, dict):
            for k, v in value.items():
                walk(path + (str(k),), v, labels)
        elif isinstance(value, (list, tuple)):
            label = "device" if path == ("devices",) else "name"
            for i, item in enumerate(value):
                if isinstance(item, dict):
                    extra = (("index", str(i)),)
                    if isinstance(item.get("name"), str):
                        extra = ((label, item["name"]),) + extra
                    for k, v in item.items():
                        if k != "name":
                            walk(path + (str(k),), v, labels + extra)
                elif _is_number(item):
                    walk(path, item, labels + (("index", str(i)),))
        elif isinstance(value, str) and len(path) == 1:
            out.append((path, labels, value))

    for k, v in body.items():
        walk((str(k),), v, ())
    return out


class ScrapeError(Exception):
    def __init__(self, kind, msg):
        super().__init__(msg)
        self.kind = kind


class CurveKeys:
    """A client keypair and the server's public key, loaded from certificate files."""

    def __init__(self, client_cert, server_cert):
        if not (client_cert and server_cert):
            raise ValueError(
                "CURVE needs both a client certificate (.key_secret) and the "
                "server's public certificate (.key)"
            )
        self.public, self.secret = zmq.auth.load_certificate(client_cert)
        if self.secret is None:
            raise ValueError(f"{client_cert} holds no secret key: pass the .key_secret file")
        self.server, _ = zmq.auth.load_certificate(server_cert)
        if self.server is None:
            raise ValueError(f"{server_cert} holds no public key")


def fetch_stats(ctx, endpoint, timeout, curve=None, seq=1):
    """Send one STATS request to ``endpoint``; return the reply body (a dict).

    Raises ScrapeError(kind, msg) when no valid reply arrives within ``timeout`` s."""
    sock = ctx.socket(zmq.DEALER)
    sock.linger = 0
    try:
        if curve is not None:
            sock.curve_publickey = curve.public
            sock.curve_secretkey = curve.secret
            sock.curve_serverkey = curve.server
        sock.connect(endpoint)
        sock.send(msgpack.packb({"type": STATS, "sid": 0, "seq": seq, "body": {}}))
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not sock.poll(int(left * 1000) + 1):
                hint = "; check the CURVE certificates" if curve is not None else ""
                raise ScrapeError("timeout", f"no answer within {timeout:g} s{hint}")
            frames = sock.recv_multipart()
            try:
                hdr = msgpack.unpackb(frames[0], raw=False, strict_map_key=False)
            except Exception as e:
                raise ScrapeError("bad_reply", f"undecodable reply: {e}") from e
            if not isinstance(hdr, dict):
                raise ScrapeError("bad_reply", "reply header is not a map")
            if hdr.get("seq") != seq:
                continue  # not ours (cannot happen on a fresh socket, but cheap to check)
            body = hdr.get("body")
            if hdr.get("type") == ERROR:
                msg = body.get("msg") if isinstance(body, dict) else body
                code = body.get("code") if isinstance(body, dict) else None
                raise ScrapeError("error_reply", f"server refused STATS (code {code}): {msg}")
            if hdr.get("type") != REPLY or not isinstance(body, dict):
                raise ScrapeError("bad_reply", f"unexpected reply type {hdr.get('type')!r}")
            return body
    finally:
        sock.close(0)


class StatsCollector:
    """A prometheus_client collector: one STATS request per server per scrape."""

    def __init__(self, servers, timeout=2.0, curve=None, log=None):
        self.servers = list(servers)
        self.timeout = timeout
        self.curve = curve
        self.ctx = zmq.Context()
        self.log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
        self._seq = itertools.count(1)
        self._errors = {}  # (server, kind) -> count
        self._lock = threading.Lock()

    def close(self):
        self.ctx.term()

    def collect(self):
        with self._lock:  # scrapes may overlap; one at a time keeps seq and errors simple
            return list(self._collect())

    def _collect(self):
        fams = {}
        up = GaugeMetricFamily(
            PREFIX + "up", "1 when the server answered STATS in this scrape", labels=["server"]
        )
        dur = GaugeMetricFamily(
            PREFIX + "scrape_duration_seconds",
            "Time taken to read the server's STATS",
            labels=["server"],
        )
        for server in self.servers:
            t0 = time.monotonic()
            try:
                body = fetch_stats(self.ctx, server, self.timeout, self.curve, next(self._seq))
            except (ScrapeError, zmq.ZMQError) as e:
                kind = getattr(e, "kind", "zmq")
                self._errors[(server, kind)] = self._errors.get((server, kind), 0) + 1
                self.log(f"djinn-exporter: {server}: {kind}: {e}")
                up.add_metric([server], 0)
                dur.add_metric([server], time.monotonic() - t0)
                continue
            up.add_metric([server], 1)
            dur.add_metric([server], time.monotonic() - t0)
            self._add_body(fams, server, body)
        errs = CounterMetricFamily(
            PREFIX + "exporter_scrape_errors",
            "Scrapes in which the server gave no valid STATS reply",
            labels=["server", "kind"],
        )
        for (server, kind), n in sorted(self._errors.items()):
            errs.add_metric([server, kind], n)
        yield up
        yield dur
        yield errs
        for fam, _ in fams.values():
            yield fam

    def _add_body(self, fams, server, body):
        """Add one server's samples to ``fams`` (name -> (family, label names))."""
        info = {}
        for path, labels, value in flatten(body):
            if isinstance(value, str):
                info[_label_name(path[0])] = value
                continue
            key = ".".join(path)
            kind, doc = KNOWN.get(key, (None, None))
            if kind == SKIP:
                continue
            name = _metric_name(path)
            folded = relabel(key)
            if folded:
                name, kind, doc, extra, scale = folded
                labels, value = labels + extra, value * scale
            label_names = ["server"] + [_label_name(k) for k, _ in labels]
            if name not in fams:
                cls = {C: CounterMetricFamily, G: GaugeMetricFamily}.get(kind, UnknownMetricFamily)
                doc = doc or f"djinn-server STATS field {key}"
                fams[name] = (cls(name, doc, labels=label_names), label_names)
            fam, want = fams[name]
            if want != label_names:
                self.log(
                    f"djinn-exporter: {server}: {key}: labels {label_names} differ from "
                    f"{want}; sample dropped"
                )
                continue
            fam.add_metric([server] + [v for _, v in labels], value)
        if info:
            names = ["server"] + sorted(info)
            name = PREFIX + "server_info"
            if name not in fams:
                doc = "String fields of the server's STATS, as labels"
                fams[name] = (GaugeMetricFamily(name, doc, labels=names), names)
            fam, want = fams[name]
            if want == names:
                fam.add_metric([server] + [info[n] for n in names[1:]], 1)


class _Fixed:
    """A registry stand-in holding the families of one scrape (for ``--once``)."""

    def __init__(self, families):
        self.families = families

    def collect(self):
        return self.families


def _parse_args(argv):
    env = os.environ
    ap = argparse.ArgumentParser(
        prog="djinn-exporter",
        description="Serve djinn-server STATS counters as Prometheus metrics (prometheus_client).",
    )
    ap.add_argument(
        "--server",
        action="append",
        default=None,
        metavar="EP",
        help="server endpoint(s), repeatable or comma-separated "
        "[DJINN_SERVER; default tcp://127.0.0.1:5555]",
    )
    ap.add_argument(
        "--listen-address",
        default=env.get("DJINN_EXPORTER_ADDRESS", "0.0.0.0"),
        help="HTTP address to bind [DJINN_EXPORTER_ADDRESS] (default 0.0.0.0)",
    )
    ap.add_argument(
        "--port",
        type=int,
        default=int(env.get("DJINN_EXPORTER_PORT", DEFAULT_PORT)),
        help=f"HTTP port; 0 = any free port [DJINN_EXPORTER_PORT] (default {DEFAULT_PORT})",
    )
    ap.add_argument(
        "--timeout",
        type=float,
        default=2.0,
        help="seconds to wait for each server's STATS reply (default 2)",
    )
    ap.add_argument(
        "--client-cert",
        default=env.get("DJINN_CLIENT_CERT"),
        help="CURVE: this exporter's .key_secret certificate [DJINN_CLIENT_CERT]",
    )
    ap.add_argument(
        "--server-cert",
        default=env.get("DJINN_SERVER_CERT"),
        help="CURVE: the server's public .key certificate [DJINN_SERVER_CERT]",
    )
    ap.add_argument(
        "--once",
        action="store_true",
        help="print one scrape in the text format and exit (1 if a server is down)",
    )
    args = ap.parse_args(argv)
    servers = args.server or [env.get("DJINN_SERVER") or "tcp://127.0.0.1:5555"]
    args.servers = [s.strip() for item in servers for s in item.split(",") if s.strip()]
    return args


def main(argv=None):
    args = _parse_args(argv)
    try:
        curve = (
            CurveKeys(args.client_cert, args.server_cert)
            if args.client_cert or args.server_cert
            else None
        )
    except (ValueError, OSError) as e:
        print(f"djinn-exporter: {e}", file=sys.stderr)
        return 2
    collector = StatsCollector(args.servers, timeout=args.timeout, curve=curve)
    if args.once:
        from prometheus_client import generate_latest

        families = collector.collect()
        collector.close()
        sys.stdout.write(generate_latest(_Fixed(families)).decode())
        up = [s.value for f in families if f.name == PREFIX + "up" for s in f.samples]
        return 0 if all(up) else 1
    from prometheus_client import start_http_server

    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        httpd, thread = start_http_server(args.port, addr=args.listen_address, registry=registry)
    except OSError as e:
        print(
            f"djinn-exporter: cannot serve on {args.listen_address}:{args.port}: {e}",
            file=sys.stderr,
        )
        collector.close()
        return 2
    host, port = httpd.server_address[:2]
    # one line that scripts (and the tests) wait for: the URL that now answers
    print(f"DJINN_EXPORTER http://{host}:{port}/metrics", flush=True)
    print(
        f"djinn-exporter: serving {', '.join(args.servers)} on http://{host}:{port}/metrics"
        f"{' (CURVE)' if curve else ''}",
        file=sys.stderr,
        flush=True,
    )
    stop.wait()
    httpd.shutdown()
    thread.join(5)
    collector.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

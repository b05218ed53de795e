"""djinn-exporter: STATS counters scraped over HTTP (prometheus_client), generic mapping,
CURVE, failures; and the Grafana dashboard against what a live exporter exports.

The first tests run a real djinn-server with two CPU devices, a real client process that
does known work on both, and the exporter as a process serving HTTP; the scrape must
equal the server's own STATS. Where the server lacks a feature under test (CURVE, fields
it does not send yet), a pyzmq ROUTER stands in for it; the exporter is always the real
one, run as a process.
"""

import json
import os
import re
import subprocess
import time

import msgpack
import pytest
import zmq
from conftest import PYTHON, REPO, run_python, start_server, stop_server, subprocess_env
from deploy_util import Exporter, FakeStatsServer, parse, stats, write_cert

DASHBOARD = os.path.join(REPO, "deploy", "kubernetes", "grafana-dashboard.json")

CLIENT_WORK = """
import torch, djinn
a = torch.arange(12.0).reshape(3, 4)
x = a.to('remote')                                   # device 0
y = torch.ones(4, 2, device=torch.device('remote', 1))  # device 1
print(float((x * 2).relu().sum().item()), float(y.sum().item()))
"""


@pytest.fixture(scope="module")
def worked_server():
    """A private server (two CPU devices) after one client process did known work."""
    proc, ep = start_server("--device", "cpu,cpu")
    try:
        r = run_python(CLIENT_WORK, subprocess_env(DJINN_SERVER=ep))
        assert r.returncode == 0, r.stderr
        assert r.stdout.split() == ["132.0", "8.0"], r.stdout
        yield ep
    finally:
        stop_server(proc)


@pytest.fixture(scope="module")
def live_exporter(worked_server):
    exp = Exporter("--server", worked_server)
    yield exp
    assert exp.stop() == 0, "the exporter did not exit cleanly on SIGTERM"


def test_scraped_counters_equal_server_stats(worked_server, live_exporter):
    before = stats(worked_server)["body"]
    s = live_exporter.scrape()
    ep = worked_server
    assert s.get("djinn_up", server=ep) == 1
    # the client opened one session and closed it at exit
    assert before["sessions_opened"] == 1 and before["sessions_closed"] == 1
    assert s.get("djinn_sessions_opened_total", server=ep) == 1
    assert s.get("djinn_sessions_closed_total", server=ep) == 1
    assert s.get("djinn_sessions_open", server=ep) == 0
    # per device: both devices ran nodes; the two are both named "cpu", kept apart by index
    for i, dev in enumerate(before["devices"]):
        labels = {"server": ep, "device": "cpu", "index": str(i)}
        assert dev["nodes"] > 0
        assert s.get("djinn_devices_nodes_total", **labels) == dev["nodes"]
        assert s.get("djinn_devices_fragments_total", **labels) == dev["fragments"]
        assert s.get("djinn_devices_data_used", **labels) == dev["data_used"]
        assert s.get("djinn_devices_data_capacity", **labels) == dev["data_capacity"]
    # the scrape itself is one more STATS request: counted in requests and bytes in
    req = msgpack.packb({"type": 9, "sid": 0, "seq": 1, "body": {}})
    assert s.get("djinn_requests_total", server=ep) == before["requests"] + 1
    assert s.get("djinn_bytes_received_total", server=ep) == before["bytes_received"] + len(req)
    assert s.get("djinn_text_bytes", server=ep) == before["text_bytes"]
    assert s.get("djinn_uptime_ms", server=ep) >= before["uptime_ms"]
    # types from the table; the per-request session fields are not exported
    assert s.types["djinn_requests"] == "counter"
    assert s.types["djinn_devices_data_used"] == "gauge"
    assert "djinn_session_bytes" not in s.types
    # every numeric field of the reply is exported (generic mapping, nothing dropped)
    # (or folded into a labelled family: per-class figures, errors by kind)
    from djinn.exporter import relabel

    def exported(key, name):
        folded = relabel(key)
        return (folded[0] if folded else name) in s.types

    skipped = {"session_bytes", "session_peak_bytes"}
    for k, v in before.items():
        if k not in skipped and isinstance(v, (int, float)):
            assert exported(k, f"djinn_{k}"), k
    for k in before["devices"][0]:
        if k != "name":
            assert exported(f"devices.{k}", f"djinn_devices_{k}"), k


QOS_AND_ERRORS_WORK = """
import torch, djinn
x = torch.arange(64.0, device='remote')
with djinn.qos('interactive'):
    for _ in range(3):
        (x * 2).sum().item()
with djinn.qos('batch'):
    for _ in range(2):
        (x + 1).sum().item()
# an operator that fails on the server (E_OP), and one too large for the device (E_OOM)
for fn in (lambda: x[torch.tensor([100], device='remote')].cpu(),
           lambda: torch.ones(1 << 22, device='remote').sum().item()):
    try:
        fn()
    except djinn.RemoteError as e:
        print(type(e).__name__)
"""


def test_queue_waits_by_class_and_errors_by_kind(tmp_path):
    """Per-class queue waits and run times, and ERROR replies by kind, as labelled
    families that equal the server's own STATS (issue 14)."""
    proc, ep = start_server("--data-bytes", str(4 << 20))
    exp = None
    try:
        r = run_python(QOS_AND_ERRORS_WORK, subprocess_env(DJINN_SERVER=ep))
        assert r.returncode == 0, r.stderr
        assert r.stdout.split() == ["RemoteError", "ResourceError"], r.stdout
        exp = Exporter("--server", ep)
        before = stats(ep)["body"]
        s = exp.scrape()
        dev = before["devices"][0]
        assert dev["ia_fragments"] >= 3 and dev["bt_fragments"] >= 2, dev
        for short, cls in (("rt", "realtime"), ("ia", "interactive"), ("bt", "batch")):
            got = s.get(
                "djinn_qos_fragments_total", server=ep, device="cpu", index="0", **{"class": cls}
            )
            assert got == dev[f"{short}_fragments"], cls
            for what, fam in (("wait", "queue_wait"), ("run", "run")):
                for q, quantile in (("p50", "0.5"), ("p99", "0.99")):
                    labels = {"server": ep, "device": "cpu", "index": "0", "class": cls}
                    v = s.get(f"djinn_qos_{fam}_seconds", quantile=quantile, **labels)
                    assert v == pytest.approx(dev[f"{short}_{what}_{q}_us"] / 1e6), (cls, what, q)
        assert (
            s.get(
                "djinn_qos_run_seconds",
                server=ep,
                device="cpu",
                index="0",
                quantile="0.99",
                **{"class": "interactive"},
            )
            > 0
        )
        # the per-class fields are folded, not exported twice under their own names
        assert "djinn_devices_ia_wait_p99_us" not in s.types
        kinds = s.series("djinn_error_replies_total")
        by_kind = {dict(k)["kind"]: v for k, v in kinds.items()}
        assert by_kind["op"] == before["errors_op"] >= 1
        assert by_kind["memory"] == before["errors_memory"] >= 1
        assert by_kind["denied"] == 0
        assert sum(by_kind.values()) == before["errors"] == s.get("djinn_errors_total", server=ep)
        assert s.types["djinn_error_replies"] == "counter"
    finally:
        if exp:
            assert exp.stop() == 0
        stop_server(proc)


def test_stats_tables_in_protocol_match_the_descriptor_table():
    """PROTOCOL.md section 6's tables are the djn_stats.h table (they cannot go stale)."""
    import djinn

    with open(os.path.join(REPO, "docs", "PROTOCOL.md")) as f:
        doc = f.read()
    section = doc[doc.index("## 6. STATS") : doc.index("## 7.")]
    rows = re.findall(
        r"^\| `([a-z_0-9]+)` \| (uint|float64) \| `([a-z_.0-9]+)` \| (.*) \|$", section, re.M
    )
    documented = {(w, p, d) for w, _, p, d in rows}
    for scope, wire, py, doc_ in djinn._C._stats_fields():
        if scope == "client":
            continue
        assert (wire, py, doc_) in documented, (
            f"{scope} field {wire} is not documented as in djn_stats.h"
        )
    for scope, title in (
        ("server", "Server scope"),
        ("session", "Session scope"),
        ("device", "Device scope"),
    ):
        n = sum(1 for sc, *_ in djinn._C._stats_fields() if sc == scope)
        assert f"**{title}** ({n} rows" in section, (scope, n)


def test_known_fields_are_documented_in_protocol():
    from djinn.exporter import KNOWN

    with open(os.path.join(REPO, "docs", "PROTOCOL.md")) as f:
        doc = f.read()
    section = doc[doc.index("## 6. STATS") : doc.index("## 7.")]
    fields = set(re.findall(r"^\| `([a-z_0-9]+)` \|", section, re.MULTILINE))
    for key in KNOWN:
        assert key.split(".")[-1] in fields, f"{key} is not documented in PROTOCOL.md section 6"


def test_grafana_panels_reference_only_exported_metrics(live_exporter):
    with open(DASHBOARD) as f:
        board = json.load(f)
    exported = live_exporter.scrape().names
    exprs = []

    def walk(panels):
        for p in panels:
            walk(p.get("panels", []))
            for t in p.get("targets", []):
                exprs.append((p["title"], t["expr"]))

    walk(board["panels"])
    for var in board["templating"]["list"]:
        if var.get("type") == "query":
            q = var["query"]
            exprs.append((var["name"], q["query"] if isinstance(q, dict) else q))
    assert len(exprs) >= 10
    used = set()
    for title, expr in exprs:
        names = set(re.findall(r"\bdjinn_[a-zA-Z0-9_]+", expr))
        assert names, f"panel {title!r} queries no djinn metric: {expr}"
        missing = names - exported
        assert not missing, f"panel {title!r} uses {missing}, which the exporter does not export"
        used |= names
    # the dashboard covers what the issue asks for
    for need in (
        "djinn_sessions_open",
        "djinn_devices_nodes_total",
        "djinn_plan_cache_hits_total",
        "djinn_bytes_sent_total",
        "djinn_devices_data_used",
        "djinn_errors_total",
        "djinn_error_replies_total",
        "djinn_qos_queue_wait_seconds",
        "djinn_qos_run_seconds",
    ):
        assert need in used, need


def _curve_setup(tmp_path):
    """Server keypair, an authorized operator cert and an unauthorized one."""
    srv_pub, srv_sec = zmq.curve_keypair()
    op_pub, op_sec = zmq.curve_keypair()
    bad_pub, bad_sec = zmq.curve_keypair()
    (tmp_path / "clients").mkdir()
    write_cert(str(tmp_path / "server"), srv_pub, srv_sec)
    write_cert(str(tmp_path / "clients" / "ops"), op_pub, metadata={"role": "operator"})
    write_cert(str(tmp_path / "ops"), op_pub, op_sec, metadata={"role": "operator"})
    write_cert(str(tmp_path / "stranger"), bad_pub, bad_sec)
    return srv_pub, srv_sec


def test_new_fields_appear_without_code_change_over_curve(tmp_path):
    # a body with fields the server does not send today, nested and listed
    body = {
        "requests": 7,
        "queue_wait_us": {"interactive": 120, "batch": 900},
        "errors_by_kind": {"op": 2, "proto": 1},
        "classes": [{"name": "interactive", "waits": 3}, {"name": "batch", "waits": 4}],
        "devices": [{"name": "cuda:0", "nodes": 5, "memory": {"weights": 10, "kv": 20}}],
        "version": "0.2.0",
        "draining": False,
        "ratio": 0.25,
    }
    srv_pub, srv_sec = _curve_setup(tmp_path)
    fake = FakeStatsServer(
        body, server_secret=srv_sec, server_public=srv_pub, clients_dir=str(tmp_path / "clients")
    )
    env = subprocess_env(
        DJINN_CLIENT_CERT=tmp_path / "ops.key_secret", DJINN_SERVER_CERT=tmp_path / "server.key"
    )
    exp = Exporter("--server", fake.endpoint, env=env)
    try:
        s = exp.scrape()
    finally:
        assert exp.stop() == 0
        fake.close()
    ep = fake.endpoint
    assert s.get("djinn_up", server=ep) == 1
    assert s.get("djinn_requests_total", server=ep) == 7
    assert s.get("djinn_queue_wait_us_interactive", server=ep) == 120
    assert s.get("djinn_queue_wait_us_batch", server=ep) == 900
    assert s.get("djinn_errors_by_kind_op", server=ep) == 2
    assert s.get("djinn_classes_waits", server=ep, name="batch", index="1") == 4
    dev = {"server": ep, "device": "cuda:0", "index": "0"}
    assert s.get("djinn_devices_nodes_total", **dev) == 5
    assert s.get("djinn_devices_memory_kv", **dev) == 20
    assert s.get("djinn_server_info", server=ep, version="0.2.0") == 1
    assert s.get("djinn_draining", server=ep) == 0
    assert s.get("djinn_ratio", server=ep) == 0.25
    assert s.types["djinn_queue_wait_us_batch"] == "unknown"  # not in the table: untyped


def _once(*args, env=None, timeout=60):
    return subprocess.run(
        [PYTHON, "-m", "djinn.exporter", "--once", *args],
        cwd=REPO,
        env=env or subprocess_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_curve_refuses_unknown_client_and_plain_connections(tmp_path):
    srv_pub, srv_sec = _curve_setup(tmp_path)
    fake = FakeStatsServer(
        {"requests": 1},
        server_secret=srv_sec,
        server_public=srv_pub,
        clients_dir=str(tmp_path / "clients"),
    )
    try:
        stranger = _once(
            "--server",
            fake.endpoint,
            "--timeout",
            "1",
            "--client-cert",
            str(tmp_path / "stranger.key_secret"),
            "--server-cert",
            str(tmp_path / "server.key"),
        )
        plain = _once("--server", fake.endpoint, "--timeout", "1")
        ok = _once(
            "--server",
            fake.endpoint,
            "--timeout",
            "5",
            "--client-cert",
            str(tmp_path / "ops.key_secret"),
            "--server-cert",
            str(tmp_path / "server.key"),
        )
        half = _once("--server", fake.endpoint, "--client-cert", str(tmp_path / "ops.key_secret"))
    finally:
        fake.close()
    assert fake.requests == 1, "only the authorized exporter may reach the server"
    for r in (stranger, plain):
        assert r.returncode == 1
        assert parse(r.stdout).get("djinn_up", server=fake.endpoint) == 0
    assert "check the CURVE certificates" in stranger.stderr
    assert ok.returncode == 0, ok.stderr
    assert parse(ok.stdout).get("djinn_requests_total", server=fake.endpoint) == 1
    assert half.returncode == 2 and "needs both" in half.stderr


def test_server_down_and_error_reply():
    fake = FakeStatsServer(error={"code": 5, "msg": "STATS needs an operator certificate"})
    try:
        t0 = time.monotonic()
        r = _once("--server", "tcp://127.0.0.1:1", "--server", fake.endpoint, "--timeout", "0.5")
        elapsed = time.monotonic() - t0
    finally:
        fake.close()
    assert r.returncode == 1
    s = parse(r.stdout)
    assert s.get("djinn_up", server="tcp://127.0.0.1:1") == 0
    assert s.get("djinn_up", server=fake.endpoint) == 0
    errs = s.series("djinn_exporter_scrape_errors_total")
    assert errs[frozenset({"server": "tcp://127.0.0.1:1", "kind": "timeout"}.items())] == 1
    assert errs[frozenset({"server": fake.endpoint, "kind": "error_reply"}.items())] == 1
    assert "STATS needs an operator certificate" in r.stderr
    assert elapsed < 30, elapsed  # one bounded wait per server, plus interpreter start-up

"""Many servers from one client: ``DJINN_SERVER=tcp://a:5555,tcp://b:5555`` (issue 14).

Two real djinn-servers on loopback, A with two CPU devices and B with one. A fresh
client process lists both: ``remote:0`` and ``remote:1`` are A's devices, ``remote:2``
is B's; ``device_count()`` is 3; each server holds a session of its own; results match
CPU on every device; copies between devices of different servers go through the client
(views included); an op mixing devices of two servers is refused with PyTorch's message;
a server that dies fails the calls on its devices with its endpoint named, while the
other keeps working; when the client exits both sessions are closed and both servers'
memory counters are back where they started.
"""

import json
import signal
import subprocess
import sys
import textwrap

import pytest
from conftest import poll, run_python, subprocess_env
from deploy_util import read_line, stats

_SPAN = textwrap.dedent("""
    import json, torch, djinn
    out = {"n": torch.remote.device_count(), "servers": djinn.remote.servers(),
           "map": [list(djinn.remote.device_server(i)) for i in range(torch.remote.device_count())],
           "names": [torch.remote.device_name(i) for i in range(torch.remote.device_count())]}
    torch.manual_seed(0)
    x, w = torch.randn(16, 32), torch.randn(32, 8)
    ref = (x @ w).relu().sum(0)
    out["parity"] = []
    for d in range(out["n"]):
        y = (x.to(f"remote:{d}") @ w.to(f"remote:{d}")).relu().sum(0)
        out["parity"].append(y.device.index == d and torch.allclose(y.cpu(), ref, atol=1e-5))
    # across servers, through the client: A -> B (a transposed view), B -> A
    base = torch.arange(24.).reshape(4, 6)
    a = base.to("remote:0")
    b = a.t().to("remote:2")
    c = (b * 2).to("remote:1")
    out["cross"] = [b.device.index, c.device.index, torch.equal(c.cpu(), base.t() * 2)]
    z = torch.zeros(6, 8, device="remote:2")
    z[:, 2:6].copy_(a.t())                        # into part of a storage on B
    zc = z.cpu()
    out["copy_into"] = torch.equal(zc[:, 2:6], base.t()) and zc[:, :2].abs().sum().item() == 0
    # the same server, two devices: still one session, on the server
    out["same_server"] = torch.equal((a.to("remote:1") + 1).cpu(), base + 1)
    out["mixed"] = []
    for f in (lambda: a + b.t(), lambda: a @ b, lambda: torch.cat([a, b.t()])):
        try:
            f()
            out["mixed"].append("no error")
        except RuntimeError as e:
            out["mixed"].append(str(e))
    out["sessions"] = [s["session_id"] for s in djinn.remote.servers()]
    out["stats_devices"] = [len(torch.remote.server_stats(d)["devices"]) for d in range(out["n"])]
    out["moved"] = djinn.bytes_moved()["messages"]
    print(json.dumps(out))
""")


def _sessions_open(ep):
    return stats(ep)["body"]["sessions_open"]


def _in_use(ep):
    return stats(ep)["body"]["bytes_in_use"]


def test_two_servers_span_devices_with_parity_and_copies_through_the_client(private_server):
    a = private_server("--device", "cpu,cpu")
    b = private_server()
    used = {ep: _in_use(ep) for ep in (a, b)}
    r = run_python(_SPAN, subprocess_env(DJINN_SERVER=f"{a}, {b}"), timeout=180)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["n"] == 3
    assert out["map"] == [[0, 0], [0, 1], [1, 0]]
    assert out["names"] == ["cpu", "cpu", "cpu"]
    assert [s["endpoint"] for s in out["servers"]] == [a, b]
    assert [s["first_device"] for s in out["servers"]] == [0, 2]
    assert [s["device_count"] for s in out["servers"]] == [2, 1]
    assert out["parity"] == [True, True, True]
    assert out["cross"] == [2, 1, True]
    assert out["copy_into"] is True
    assert out["same_server"] is True
    for msg in out["mixed"]:  # CUDA's wording (the device checks), or ours where none runs
        assert "Expected all tensors to be on the same device" in msg, out["mixed"]
        assert "remote:0" in msg and "remote:2" in msg, out["mixed"]
    sa, sb = out["sessions"]
    assert sa and sb and sa != sb
    assert out["stats_devices"] == [2, 2, 1]  # each device's own server answers
    assert out["moved"] > 0
    # the client exited: each server closed its session and got its memory back
    for ep in (a, b):
        assert stats(ep)["body"]["sessions_closed"] == 1, ep
        assert _sessions_open(ep) == 0, ep
        poll(lambda ep=ep: _in_use(ep) == used[ep], timeout=10, desc=f"{ep} memory back")


def test_a_list_with_one_unreachable_server_fails_with_its_endpoint(private_server):
    a = private_server()
    dead = "tcp://127.0.0.1:9"  # discard port: nothing answers
    r = run_python(
        """
        import torch, djinn
        try:
            torch.remote.init()
            print("no error")
        except djinn.ServerUnreachable as e:
            print("unreachable", e)
        """,
        subprocess_env(DJINN_SERVER=f"{a},{dead}", DJINN_CONNECT_TIMEOUT=2),
        timeout=120,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.startswith("unreachable") and dead in r.stdout, r.stdout


_DYING = textwrap.dedent("""
    import sys, torch, djinn
    x = torch.arange(12.).reshape(3, 4)
    a, b = x.to("remote:0"), x.to("remote:1")
    print("ready", (a * 2).sum().item(), (b * 3).sum().item(), flush=True)
    sys.stdin.readline()                      # the test kills server B meanwhile
    try:
        print("b", (b + 1).sum().item(), flush=True)
    except djinn.ServerUnreachable as e:
        print("b unreachable", str(e).replace("\\n", " "), flush=True)
    print("a", (a + 1).sum().item(), torch.remote.device_count(), flush=True)
    c = torch.ones(2, device="remote:0") * 5
    print("a2", c.cpu().tolist(), flush=True)
""")


def test_one_server_dying_is_reported_for_its_devices_only(private_server):
    a = private_server()
    b = private_server()
    victim = private_server.procs[1]
    c = subprocess.Popen(
        [sys.executable, "-c", _DYING],
        env=subprocess_env(DJINN_SERVER=f"{a},{b}", DJINN_CONNECT_TIMEOUT=3),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert read_line(c.stdout, 120, "ready", "set-up") == "ready 132.0 198.0"
        victim.send_signal(signal.SIGKILL)
        victim.wait(10)
        c.stdin.write("go\n")
        c.stdin.flush()
        line = read_line(c.stdout, 120, "b", "the call on the dead server's device")
        assert line.startswith("b unreachable") and b in line, line
        assert read_line(c.stdout, 60, "a ", "A still works") == "a 78.0 2"
        assert read_line(c.stdout, 60, "a2", "A still works") == "a2 [5.0, 5.0]"
        assert c.wait(60) == 0, c.stderr.read()[-3000:]
    finally:
        if c.poll() is None:
            c.kill()
            c.wait()


def test_waiting_on_one_server_renews_the_other_servers_lease(private_server):
    """The client holds its lock while it waits for a reply, so the heartbeat threads of
    the other links cannot run: the wait itself renews every server's lease."""
    a = private_server("--lease-ms", "0")
    b = private_server("--lease-ms", "1000", "--heartbeat-ms", "200")
    code = """
        import time, torch, djinn
        y = torch.arange(4.0, device='remote:1') * 2      # a session on B, holding a tensor
        torch.remote.synchronize()
        x = torch.randn(1024, 1024, device='remote:0')
        for _ in range(800):                             # seconds of work: several leases of B
            x = (x @ x) / 1024 ** 0.5
        t0 = time.monotonic()
        x.cpu()                                          # waits on A for seconds
        print('WAITED', time.monotonic() - t0)
        print('B', (y + 1).cpu().tolist())
    """
    # unpipelined: the chain is one fragment sent at x.cpu(), so the wait is all of its
    # work (pipelined, the server ran most of it during the capture, when the heartbeat
    # threads run, and what was left could be shorter than a lease)
    env = subprocess_env(DJINN_SERVER=f"{a},{b}", OMP_NUM_THREADS=1, DJINN_PIPELINE_NODES="0")
    r = run_python(code, env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    lines = r.stdout.splitlines()
    assert lines[-1] == "B [1.0, 3.0, 5.0, 7.0]", r.stdout
    waited = float(lines[-2].split()[1])
    if waited < 2.5:
        pytest.skip(f"the wait on A took {waited:.1f}s: too short to outlast B's lease")
    assert stats(b)["body"]["sessions_expired"] == 0

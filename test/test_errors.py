"""Failures and their reporting; server lifecycle (embedded, unreachable, restarted,
leases); the SRG snapshot.

In-process tests use the shared server. Anything that needs its own process (embedded
server, unreachable server, a session that is expected to break) runs a child Python
with its own environment.
"""

import resource
import subprocess
import textwrap

import pytest
import torch
import torch.nn.functional as F

from conftest import (
    PYTHON,
    assert_close,
    free_port,
    poll,
    run_python,
    start_server,
    stop_server,
    subprocess_env,
)

R = "remote"


# ------------------------------------------------------------------ op failures


def _oob_gather():
    return torch.gather(torch.randn(2, 2, device=R), 1, torch.tensor([[0, 9]], device=R))


def test_failing_op_raises_remote_error_at_next_sync_naming_the_op(remote, djinn_mod):
    g = _oob_gather()  # recorded, not run: no error yet
    assert g.shape == (1, 2)
    with pytest.raises(djinn_mod.RemoteError) as ei:
        g.cpu()
    assert isinstance(ei.value, RuntimeError)
    msg = str(ei.value)
    assert "gather" in msg and "out of bounds" in msg, msg
    # the error is reported once, and the session keeps working
    torch.remote.synchronize()
    assert_close(torch.arange(4.0, device=R) * 2, torch.arange(4.0) * 2)


def test_failing_op_reported_by_synchronize(remote, djinn_mod):
    torch.randn(3, device=R).index_select(0, torch.tensor([7], device=R))
    with pytest.raises(djinn_mod.RemoteError, match="index_select"):
        torch.remote.synchronize()
    torch.remote.synchronize()  # nothing pending any more
    assert (torch.ones(2, device=R) + 1).sum().item() == 4.0


def test_failing_op_reported_by_item(remote, djinn_mod):
    e = F.embedding(torch.tensor([70], device=R), torch.randn(3, 2, device=R))
    with pytest.raises(djinn_mod.RemoteError, match="index_select|embedding"):
        e.sum().item()
    assert torch.tensor(5, device=R).item() == 5


def test_work_before_the_failing_op_is_kept(remote, djinn_mod):
    ok = torch.arange(3.0, device=R) * 10
    bad = _oob_gather()  # noqa: F841
    with pytest.raises(djinn_mod.RemoteError):
        torch.remote.synchronize()
    assert_close(ok, torch.tensor([0.0, 10.0, 20.0]))


def test_mm_incompatible_shapes_raises_and_session_survives(remote):
    a, b = torch.randn(3, 4, device=R), torch.randn(5, 6, device=R)
    with pytest.raises(RuntimeError):
        c = torch.mm(a, b)
        c.cpu()
    torch.remote.synchronize()
    assert_close(torch.mm(a, b[:4, :2]), torch.mm(a.cpu(), b.cpu()[:4, :2]), rtol=1e-5, atol=1e-6)


def test_mm_incompatible_shapes_error_matches_eager(remote):
    """Shape errors a structured op's meta function finds on the client are raised at the
    call, with eager PyTorch's own message (the op never reaches the server)."""
    a, b = torch.randn(3, 4, device=R), torch.randn(5, 6, device=R)
    with pytest.raises(RuntimeError) as remote_err:
        torch.mm(a, b)
    with pytest.raises(RuntimeError) as cpu_err:
        torch.mm(a.cpu(), b.cpu())
    assert str(remote_err.value) == str(cpu_err.value)


def test_mm_out_variant_error_comes_from_server_and_names_op(remote, djinn_mod):
    a, b = torch.randn(3, 4, device=R), torch.randn(5, 6, device=R)
    with pytest.raises(djinn_mod.RemoteError, match=r"aten::mm\.out"):
        torch.ops.aten.mm.out(a, b, out=torch.empty(3, 6, device=R))
        torch.remote.synchronize()
    torch.remote.synchronize()


def test_values_after_a_failed_op_are_not_silently_wrong(remote, djinn_mod):
    bad = _oob_gather()
    y = torch.ones(3, device=R) * 5
    with pytest.raises(djinn_mod.RemoteError):
        y.cpu()
    # reading again must either give the right value or raise again, never garbage
    for t, expected in ((y, torch.full((3,), 5.0)), (bad, None)):
        try:
            got = t.cpu()
        except djinn_mod.RemoteError:
            continue
        assert expected is not None, f"output of the failed op was readable: {got}"
        assert torch.equal(got, expected), got


def test_async_fragment_error_surfaces_at_next_sync(server):
    # DJINN_MAX_NODES=4: fragments are flushed without waiting; the first error of that
    # stretch must come out of the next sync point, and the session stays usable
    code = """
        import torch, djinn
        R = 'remote'
        bad = torch.gather(torch.randn(2, 2, device=R), 1, torch.tensor([[0, 9]], device=R))
        y = torch.zeros(3, device=R)
        for _ in range(40):
            y = y + 1
        assert djinn.bytes_moved()['flushes'] >= 5, djinn.bytes_moved()
        try:
            torch.remote.synchronize()
        except djinn.RemoteError as e:
            assert 'gather' in str(e), e
            print('RAISED')
        z = torch.arange(3.0, device=R) + 1
        print(z.cpu().tolist())
    """
    r = run_python(
        code, subprocess_env(DJINN_SERVER=server, DJINN_MAX_NODES=4, DJINN_CONNECT_TIMEOUT=10)
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["RAISED", "[1.0,", "2.0,", "3.0]"], r.stdout


def test_error_types_hierarchy(djinn_mod):
    for cls in (djinn_mod.SessionLost, djinn_mod.ServerUnreachable, djinn_mod.ResourceError):
        assert issubclass(cls, djinn_mod.RemoteError)
    assert issubclass(djinn_mod.RemoteError, RuntimeError)


# ------------------------------------------------------------------ unreachable server

_UNREACHABLE = """
    import time, torch, djinn
    t0 = time.monotonic()
    try:
        {op}
    except djinn.ServerUnreachable as e:
        assert isinstance(e, djinn.RemoteError)
        print('UNREACHABLE', round(time.monotonic() - t0, 2))
        print(str(e))
    else:
        print('NO ERROR')
"""


def _run_unreachable(op):
    ep = f"tcp://127.0.0.1:{free_port()}"
    env = subprocess_env(DJINN_SERVER=ep, DJINN_CONNECT_TIMEOUT=1)
    r = run_python(_UNREACHABLE.format(op=op), env, timeout=60)
    return r, ep


def test_unreachable_server_synchronize_and_is_available():
    r, ep = _run_unreachable("torch.remote.synchronize()")
    assert r.returncode == 0, (r.returncode, r.stderr[-2000:])
    lines = r.stdout.splitlines()
    assert lines[0].startswith("UNREACHABLE"), r.stdout
    assert float(lines[0].split()[1]) < 5.0
    assert ep in lines[1]
    code = """
        import torch, djinn
        print(torch.remote.is_available())
    """
    r = run_python(code, subprocess_env(DJINN_SERVER=ep, DJINN_CONNECT_TIMEOUT=1))
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == "False"


@pytest.mark.parametrize(
    "op",
    [
        "torch.ones(2, device='remote').cpu()",
        "torch.ones(2).to('remote').cpu()",
        "torch.remote.init()",
    ],
)
def test_unreachable_server_raises_server_unreachable_quickly(op):
    r, ep = _run_unreachable(op)
    assert r.returncode == 0, (r.returncode, r.stderr[-1500:])
    lines = r.stdout.splitlines()
    assert lines and lines[0].startswith("UNREACHABLE"), r.stdout
    assert float(lines[0].split()[1]) < 5.0
    assert ep in lines[1]


# ------------------------------------------------------------------ embedded server

_LIST_CHILD_SERVERS = """
def child_servers():
    import os
    out = []
    for p in os.listdir('/proc'):
        if not p.isdigit():
            continue
        try:
            st = open(f'/proc/{p}/stat').read()
        except OSError:
            continue
        comm = st[st.index('(') + 1:st.rindex(')')]
        ppid = int(st[st.rindex(')') + 2:].split()[1])
        if ppid == os.getpid() and comm.startswith('djinn-server'):
            out.append(int(p))
    return out
"""


def _proc_state(pid):
    """'R', 'S', ... for a live process; None when gone. A zombie ('Z') has exited."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return None


def _gone(pid):
    return _proc_state(pid) in (None, "Z")


def test_embedded_server_default_runs_and_is_stopped_at_exit():
    code = _LIST_CHILD_SERVERS + textwrap.dedent("""
        import torch, djinn
        x = (torch.arange(5, device='remote') * 3).sum().item()
        print('RESULT', x)
        import os, stat
        ep = djinn.remote.endpoint()
        print('ENDPOINT', ep)
        print('DIRMODE', oct(stat.S_IMODE(os.stat(os.path.dirname(ep[len('ipc://'):])).st_mode)))
        print('CHILDREN', *child_servers())
    """)
    r = run_python(code, subprocess_env(DJINN_SERVER=None))
    assert r.returncode == 0, r.stderr[-2000:]
    out = dict(line.split(" ", 1) for line in r.stdout.splitlines() if " " in line)
    assert out["RESULT"] == "30"
    # reachable only by its parent's user: an ipc socket in a private directory, no port
    assert out["ENDPOINT"].startswith("ipc://") and out["ENDPOINT"].endswith("/djinn.sock")
    assert out["DIRMODE"] == "0o700"
    kids = [int(p) for p in out["CHILDREN"].split()]
    assert len(kids) == 1, r.stdout
    poll(lambda: _gone(kids[0]), timeout=10, desc="embedded djinn-server to exit")
    # and it leaves nothing behind
    import os

    assert not os.path.exists(os.path.dirname(out["ENDPOINT"][len("ipc://") :]))


def test_embedded_server_exits_when_parent_is_killed():
    code = _LIST_CHILD_SERVERS + textwrap.dedent("""
        import sys, torch, djinn
        print((torch.ones(3, device='remote') * 2).sum().item(), flush=True)
        print(*child_servers(), flush=True)
        sys.stdin.readline()
    """)
    p = subprocess.Popen(
        [PYTHON, "-c", code],
        env=subprocess_env(DJINN_SERVER=None),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert p.stdout.readline().strip() == "6.0"
        kids = [int(x) for x in p.stdout.readline().split()]
        assert len(kids) == 1
        assert not _gone(kids[0])
    finally:
        p.kill()
        p.wait()
    poll(lambda: _gone(kids[0]), timeout=10, desc="orphaned djinn-server to exit")


def test_embedded_server_extra_args_two_devices():
    code = """
        import torch, djinn
        print(torch.remote.device_count(), torch.remote.device_name(1))
        b = torch.arange(4.0, device='remote:1') * 2
        print(b.device, b.cpu().tolist())
        print(b.to('remote:0').device, (b.to('remote:0') + 1).cpu().tolist())
    """
    r = run_python(code, subprocess_env(DJINN_SERVER=None, DJINN_SERVER_ARGS="--device cpu,cpu"))
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.splitlines() == [
        "2 cpu",
        "remote:1 [0.0, 2.0, 4.0, 6.0]",
        "remote:0 [1.0, 3.0, 5.0, 7.0]",
    ]


def test_interleaved_work_on_two_devices():
    code = """
        import torch, djinn
        errors = 0
        for attempt in range(10):
            try:
                x = torch.ones(3, device='remote:0')
                y = torch.ones(3, device='remote:1')
                for _ in range(5):
                    x = x * 2
                    y = y + 1
                assert x.cpu().tolist() == [32.0] * 3 and y.cpu().tolist() == [6.0] * 3
            except djinn.RemoteError as e:
                errors += 1
                last = str(e)
        print('ERRORS', errors, last if errors else '')
    """
    r = run_python(code, subprocess_env(DJINN_SERVER=None, DJINN_SERVER_ARGS="--device cpu,cpu"))
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.startswith("ERRORS 0"), r.stdout


# ------------------------------------------------------------------ sessions: lease, restart, fork


def test_idle_session_is_kept_alive_by_heartbeats(private_server):
    ep = private_server("--lease-ms", "2500", "--heartbeat-ms", "250")
    code = """
        import time, torch, djinn
        a = torch.arange(4.0, device='remote') * 2
        print(a.cpu().tolist())
        time.sleep(6.5)   # more than two leases without a request from the main thread
        print((a + 1).cpu().tolist())
        print(djinn.server_stats()['sessions_expired'])
    """
    r = run_python(code, subprocess_env(DJINN_SERVER=ep))
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.splitlines() == ["[0.0, 2.0, 4.0, 6.0]", "[1.0, 3.0, 5.0, 7.0]", "0"]


_RESTART_CLIENT = """
    import sys, torch, djinn
    a = torch.arange(3.0, device='remote') * 2
    print(a.cpu().tolist(), flush=True)
    sys.stdin.readline()          # the server restarts here
    def attempt(fn):
        try:
            return fn()
        except djinn.SessionLost:
            return 'SessionLost'
        except djinn.RemoteError as e:
            return 'RemoteError: ' + str(e)[:60]
    print(attempt(lambda: (a + 1).cpu().tolist()), flush=True)
    print(attempt(lambda: (torch.arange(3.0, device='remote') * 3).cpu().tolist()), flush=True)
    print(attempt(lambda: (torch.arange(3.0, device='remote') * 4).cpu().tolist()), flush=True)
    print(attempt(lambda: a.cpu().tolist()), flush=True)
"""


def _restart_transcript():
    port = free_port()
    proc, ep = start_server("--lease-ms", "0", port=port)
    client = subprocess.Popen(
        [PYTHON, "-c", textwrap.dedent(_RESTART_CLIENT)],
        env=subprocess_env(DJINN_SERVER=ep),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert client.stdout.readline().strip() == "[0.0, 2.0, 4.0]"
        stop_server(proc)
        proc, _ = start_server("--lease-ms", "0", port=port)
        out, err = client.communicate("\n", timeout=120)
        assert client.returncode == 0, err[-2000:]
        return out.splitlines()
    finally:
        if client.poll() is None:
            client.kill()
        stop_server(proc)


@pytest.fixture(scope="module")
def restart_transcript():
    return _restart_transcript()


def test_server_restart_old_tensor_raises_session_lost(restart_transcript):
    assert restart_transcript[0] == "SessionLost"


def test_server_restart_new_session_eventually_works(restart_transcript):
    assert "[0.0, 4.0, 8.0]" == restart_transcript[2]


def test_server_restart_fresh_tensor_works_right_after_session_lost(restart_transcript):
    assert restart_transcript[1] == "[0.0, 3.0, 6.0]"


def test_server_restart_reading_old_tensor_raises_session_lost(restart_transcript):
    assert restart_transcript[3] == "SessionLost"


def test_forked_child_cannot_use_parents_session(server):
    code = """
        import os, torch, djinn
        a = torch.ones(2, device='remote') * 3
        print(a.cpu().tolist(), flush=True)
        pid = os.fork()
        if pid == 0:
            try:
                (torch.ones(2, device='remote') + 1).cpu()
                print('CHILD OK', flush=True)
            except djinn.SessionLost as e:
                print('CHILD SessionLost' if 'fork' in str(e) else 'CHILD other', flush=True)
            os._exit(0)
        os.waitpid(pid, 0)
        print('PARENT', (a + 1).cpu().tolist(), flush=True)
    """
    r = run_python(code, subprocess_env(DJINN_SERVER=server))
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.splitlines() == ["[3.0, 3.0]", "CHILD SessionLost", "PARENT [4.0, 4.0]"]


# ------------------------------------------------------------------ resources and limits


def _limit_address_space():
    resource.setrlimit(resource.RLIMIT_AS, (8 << 30, 8 << 30))


_OOM_CLIENT = """
    import torch, djinn
    def attempt(fn):
        try:
            fn()
            print('NO ERROR')
            print('')
        except djinn.RemoteError as e:
            print(type(e).__name__)
            print(repr(str(e)))
    x = torch.empty(12 << 30, dtype=torch.uint8, device='remote')   # 12 GiB: more than the server has
    attempt(lambda: (x.fill_(1), torch.remote.synchronize()))       # materialised by a node
    y = torch.empty(12 << 30, dtype=torch.uint8, device='remote')
    print(y[:4].cpu().tolist())      # never written: reads as zeros, takes no server memory
    print((torch.ones(3, device='remote') * 2).cpu().tolist())
"""

# two memory configurations of a CPU server: plain allocations in an 8 GiB address space,
# and the VMU with a 1 GiB Data segment
_OOM_SERVERS = {
    "plain": (("--data-bytes", "0", "--session-quota-bytes", "0"), _limit_address_space),
    "vmu": (
        (
            "--data-bytes",
            str(1 << 30),
            "--slab-bytes",
            str(256 << 20),
            "--session-quota-bytes",
            "0",
        ),
        None,
    ),
}


@pytest.fixture(scope="module", params=sorted(_OOM_SERVERS))
def oom_transcript(request):
    flags, pre = _OOM_SERVERS[request.param]
    proc, ep = start_server("--lease-ms", "0", *flags, preexec_fn=pre)
    try:
        r = run_python(_OOM_CLIENT, subprocess_env(DJINN_SERVER=ep))
    finally:
        stop_server(proc)
    assert r.returncode == 0, r.stderr[-2000:]
    lines = r.stdout.splitlines()
    return {"node": lines[0:2], "fetch": lines[2], "after": lines[3]}


def test_server_out_of_memory_is_reported_and_session_survives(oom_transcript):
    kind, msg = oom_transcript["node"]
    assert kind != "NO ERROR"
    # plain allocations fail in the node; with a VMU the fragment is refused before any
    # node runs, since its kept result cannot fit the Data segment (PROTOCOL.md 10.1, 2b)
    assert "cannot allocate" in msg or (
        "this fragment's results need 12884901888 bytes of the Data segment" in msg
    ), msg
    assert oom_transcript["after"] == "[2.0, 2.0, 2.0]"


def test_server_out_of_memory_in_a_node_raises_resource_error(oom_transcript):
    assert oom_transcript["node"][0] == "ResourceError", oom_transcript["node"]


def test_reading_a_huge_unwritten_tensor_takes_no_server_memory(oom_transcript):
    # a fetch of bytes nothing wrote answers zeros without materialising 12 GiB
    assert oom_transcript["fetch"] == "[0, 0, 0, 0]"


def test_server_out_of_memory_message_has_no_backtrace(oom_transcript):
    assert "frame #0" not in oom_transcript["node"][1]


def test_allocation_over_server_limit_is_refused(private_server):
    ep = private_server("--lease-ms", "0", "--max-tensor-bytes", str(1 << 20))
    code = """
        import torch, djinn
        try:
            torch.zeros(1 << 20, device='remote').cpu()   # 4 MiB > 1 MiB
            print('NO ERROR')
        except djinn.RemoteError as e:
            print('exceeds' in str(e) and 'limit' in str(e))
        print((torch.ones(4, device='remote') + 1).cpu().tolist())
    """
    r = run_python(code, subprocess_env(DJINN_SERVER=ep))
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.splitlines() == ["True", "[2.0, 2.0, 2.0, 2.0]"]


def test_many_uploads_without_sync(server):
    code = """
        import time, torch, djinn
        ts = [torch.full((2,), float(i)).to('remote') for i in range(4200)]
        t0 = time.monotonic()
        try:
            print(ts[-1].cpu().tolist(), ts[0].cpu().tolist())
        except djinn.RemoteError as e:
            print(type(e).__name__, str(e)[:120])
        print(round(time.monotonic() - t0, 1))
    """
    r = run_python(code, subprocess_env(DJINN_SERVER=server, DJINN_TIMEOUT=15))
    assert r.returncode == 0, r.stderr[-2000:]
    lines = r.stdout.splitlines()
    assert lines[0] == "[4199.0, 4199.0] [0.0, 0.0]", r.stdout
    assert float(lines[1]) < 10


def test_server_stats(remote, djinn_mod):
    torch.remote.synchronize()
    st = djinn_mod.server_stats()
    for k in (
        "uptime_ms",
        "sessions_open",
        "handles",
        "bytes_in_use",
        "requests",
        "errors",
        "devices",
        "lease_ms",
    ):
        assert k in st, k
    assert st["sessions_open"] >= 1
    assert st["devices"][0]["name"] == "cpu"
    assert torch.remote.device_count() == 1
    assert torch.remote.device_name() == "cpu"
    assert torch.remote.is_available()


# ------------------------------------------------------------------ SRG snapshot


def _op(name):
    return name.split(".")[0]


def test_srg_snapshot_classes_and_lifecycle(remote, djinn_mod):
    a = torch.randn(3, 4, device=R)
    b = torch.randn(4, 5, device=R)
    torch.remote.synchronize()
    c = a @ b
    tmp = c * 2
    out = tmp + 1
    del tmp
    out.cpu()
    nodes = djinn_mod.srg.snapshot()
    assert all(isinstance(n, tuple) and len(n) == 3 for n in nodes)
    for op, sem, life in nodes:
        assert isinstance(op, str) and op.startswith("aten::")
        assert set(sem) >= {"op_class", "phase"}
        assert sem["op_class"] in ("compute", "memory")
        assert sem["phase"] in ("none", "prefill", "decode")
        assert life in ("persistent", "ephemeral")
    by_op = {_op(op): (sem, life) for op, sem, life in nodes}
    assert list(by_op) == ["aten::mm", "aten::mul", "aten::add"], nodes
    assert by_op["aten::mm"][0]["op_class"] == "compute"
    assert by_op["aten::mul"][0]["op_class"] == "memory"
    assert by_op["aten::add"][0]["op_class"] == "memory"
    assert by_op["aten::mm"][1] == "persistent"  # c is still held
    assert by_op["aten::mul"][1] == "ephemeral"  # tmp was dropped before the flush
    assert by_op["aten::add"][1] == "persistent"  # out is held


def test_srg_snapshot_is_the_last_flushed_fragment(remote, djinn_mod):
    x = torch.ones(3, device=R)
    torch.remote.synchronize()
    before = djinn_mod.srg.snapshot()
    y = x.relu()  # recorded, not flushed
    assert djinn_mod.srg.snapshot() == before
    torch.remote.synchronize()
    assert [_op(op) for op, _, _ in djinn_mod.srg.snapshot()] == ["aten::relu"]
    del y


def test_srg_fingerprint_depends_on_structure_not_handles(remote, djinn_mod):
    def fragment(n, dtype=torch.float32, rank=1):
        a = torch.ones([n] + [1] * (rank - 1), device=R, dtype=dtype)
        torch.remote.synchronize()
        (a * 2 + 1).sum()
        torch.remote.synchronize()
        return djinn_mod.srg.fingerprint()

    f1, f2 = fragment(4), fragment(4)
    assert len(f1) == 32 and int(f1, 16) >= 0
    assert f1 == f2
    # sizes are bindings (the plan cache patches them), dtypes and ranks are structure
    assert fragment(5) == f1
    assert fragment(4, torch.float64) != f1
    assert fragment(4, rank=2) != f1


def test_srg_sdpa_phase_prefill_and_decode(remote, djinn_mod):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    flash = "aten::_scaled_dot_product_flash_attention_for_cpu"
    q = torch.randn(1, 2, 4, 8, device=R)
    k = torch.randn(1, 2, 4, 8, device=R)

    def attention(op, *args, **kw):
        torch.remote.synchronize()
        F.scaled_dot_product_attention(*args, **kw)
        torch.remote.synchronize()
        return [
            (sem["phase"], sem["op_class"])
            for name, sem, _ in djinn_mod.srg.snapshot()
            if _op(name) == op
        ]

    # a CPU server runs CPU's fused kernel: one node, tagged by phase (decode attention is
    # bandwidth-bound), and nothing after it inherits the tag
    assert attention(flash, q, k, k, is_causal=True) == [("prefill", "compute")]
    assert attention(flash, q[:, :, -1:], k, k) == [("decode", "memory")]
    # the math path tags its matmuls and softmax alike
    with sdpa_kernel([SDPBackend.MATH]):
        assert attention("aten::bmm", q[:, :, -1:], k, k) == [("decode", "memory")] * 2
        assert attention("aten::bmm", q, k, k, is_causal=True) == [("prefill", "compute")] * 2


# ------------------------------------------------------------------ answers out of order


class _QueueFullServer:
    """A stand-in server with two CPU devices whose device 0 holds two fragments and
    refuses, at once, every later one until it lets them go (as djinn-server's transport
    refuses a session's fragment past --session-max-queued with code 13 while earlier ones
    still wait in the queue, 10.4). It notes when each message arrived and when the held
    answers left."""

    def __init__(self, hold_s=1.0):
        import threading

        import zmq

        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.linger = 0
        self.sock.bind("tcp://127.0.0.1:*")
        self.endpoint = self.sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self.hold_s, self.arrivals, self.released = hold_s, [], None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _answer(self, ident, hdr, type_=64, body=None, frames=()):
        import msgpack

        out = {"type": type_, "sid": 7, "seq": hdr["seq"], "body": body or {}}
        self.sock.send_multipart([ident, msgpack.packb(out), *frames])

    def _run(self):
        import time

        import msgpack

        from proto import CLOSE, E_QUOTA, ERROR, FETCH, GRAPH, GRAPH_CACHED, HELLO, PROTO_VERSION

        held, refusing_until = [], None
        while not self._stop.is_set():
            now = time.monotonic()
            if refusing_until is not None and now >= refusing_until and held:
                for ident, hdr, body in held:
                    self._answer(ident, hdr, body=body)
                held, self.released = [], now
            if not self.sock.poll(10):
                continue
            ident, frame, *_ = self.sock.recv_multipart()
            hdr = msgpack.unpackb(frame, raw=False, strict_map_key=False)
            body = hdr.get("body") or {}
            t, dev = hdr["type"], body.get("dev", 0)
            self.arrivals.append((time.monotonic(), t, hdr["seq"], dev))
            if t == HELLO:
                devs = ["cpu", "cpu"]
                info = {"sid": 7, "version": PROTO_VERSION, "lease_ms": 0, "devices": devs}
                self._answer(ident, hdr, body=info)
            elif t in (GRAPH, GRAPH_CACHED, FETCH):
                fetch = body.get("fetch") or []
                frames = [bytes(f[2]) for f in fetch]
                answer = {"fetched": len(fetch)}
                if dev == 0 and refusing_until is None and len(held) < 2:
                    held.append((ident, hdr, answer))
                elif dev == 0 and self.released is None:
                    if refusing_until is None:
                        refusing_until = time.monotonic() + self.hold_s
                    msg = "session 7 has 2 messages queued, its bound (--session-max-queued)"
                    self._answer(ident, hdr, ERROR, {"code": E_QUOTA, "msg": msg})
                else:
                    self._answer(ident, hdr, body=answer, frames=frames)
            elif t == CLOSE:
                self._answer(ident, hdr)

    def close(self):
        self._stop.set()
        self._thread.join(5)
        self.sock.close(0)
        self.ctx.term()


def test_a_refusal_that_overtakes_queued_fragments_does_not_let_another_device_go_first():
    """The answer to a fragment refused on arrival overtakes those of the fragments queued
    before it. The client must still wait for those before it sends work for another
    device: the server runs each device's queue on its own, and a free or declaration
    riding that work would overtake the fragments that use it."""
    fake = _QueueFullServer(hold_s=1.5)
    try:
        code = """
            import time, torch, djinn
            c = torch.ones(4, device='remote:1')
            print(c.cpu().tolist())
            a = torch.ones(4, device='remote:0')
            for _ in range(16):
                a = a * 2  # pieces of 2 nodes, sent without waiting
            try:
                a.cpu()
                print('NO ERROR')
            except djinn.RemoteError as e:
                print(type(e).__name__, str(e).splitlines()[0])
            c.add_(1)  # work for remote:1: what remote:0 has queued is answered first
            print(c.cpu().tolist())
        """
        env = subprocess_env(
            DJINN_SERVER=fake.endpoint, DJINN_PIPELINE_NODES="2", DJINN_PLAN_CACHE="0"
        )
        r = run_python(code, env, timeout=60)
        assert r.returncode == 0, r.stderr[-2000:]
        assert r.stdout.splitlines() == [
            "[0.0, 0.0, 0.0, 0.0]",  # what the stand-in answers
            "ResourceError session 7 has 2 messages queued, its bound (--session-max-queued)",
            "[0.0, 0.0, 0.0, 0.0]",
        ], r.stdout
        dev1 = [t for t, _, seq, dev in fake.arrivals if dev == 1 and seq > 3]
        assert dev1, fake.arrivals
        released = fake.released if fake.released is not None else float("inf")
        assert min(dev1) > released, (
            "work for remote:1 arrived before the answers of the fragments queued on "
            f"remote:0 (they left at {released}): {fake.arrivals}"
        )
    finally:
        fake.close()

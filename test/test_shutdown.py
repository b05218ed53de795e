"""Clean shutdown with live sessions, under AddressSanitizer (issue 8, finding 11).

The server built with ``-fsanitize=address`` (``make asan-server``, part of ``make
test``) is stopped by SIGTERM, by SIGINT and by the death of its parent (an embedded
server's), while a client's session still holds private storages, shared Text content and
plan-cache entries. Each time the process must exit with status 0, print no sanitizer
report (use after free, leak, double free), and give back every counted host byte (the
server reports any it did not)."""

import os
import signal
import subprocess
import sys
import textwrap

import pytest
from conftest import REPO, free_port, poll, subprocess_env

ASAN_SERVER = os.path.join(REPO, "build", "asan", "djinn-server")
ASAN_ENV = {"ASAN_OPTIONS": "detect_leaks=1:alloc_dealloc_mismatch=0:abort_on_error=0"}

# a client that fills every kind of server memory, then waits on stdin
_HOLDER = textwrap.dedent("""
    import sys, torch, djinn
    x = torch.randn(128, 128).to('remote')
    for _ in range(3):                        # the same fragment thrice: a plan-cache hit
        y = (x @ x).relu().sum(0)
        y.cpu()
    w = torch.arange(1 << 15, dtype=torch.float32).to('remote')   # shared Text content
    kv = torch.zeros(64, 64, device='remote') + 1                   # private Data
    print(y.sum().item(), w[7].item(), kv.sum().item(), flush=True)
    sys.stdin.readline()
""")


def _start(*args, parent=None):
    """The ASan server on a free port; its stderr is read at the end."""
    assert os.access(ASAN_SERVER, os.X_OK), "run 'make asan-server' (make test builds it)"
    ep = f"tcp://127.0.0.1:{free_port()}"
    r, w = os.pipe()
    argv = [
        ASAN_SERVER,
        "--listen",
        ep,
        "--device",
        "cpu",
        "--lease-ms",
        "0",
        "--announce-fd",
        str(w),
    ]
    if parent:
        argv += ["--parent-pid", str(parent)]
    proc = subprocess.Popen(
        [*argv, *args],
        pass_fds=(w,),
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **ASAN_ENV},
    )
    os.close(w)
    with os.fdopen(r) as f:
        line = f.readline()
    assert line.startswith("DJINN_ENDPOINT "), (line, proc.poll())
    return proc, ep


def _hold(ep):
    c = subprocess.Popen(
        [sys.executable, "-c", _HOLDER],
        env=subprocess_env(DJINN_SERVER=ep),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    line = c.stdout.readline()
    assert line.strip(), c.stderr.read()[-2000:]
    return c


def _assert_clean_exit(proc):
    err = proc.communicate(timeout=60)[1]
    assert proc.returncode == 0, err[-3000:]
    assert "AddressSanitizer" not in err and "LeakSanitizer" not in err, err[-3000:]
    assert "invalid pointer" not in err and "double free" not in err, err[-3000:]
    assert "not given back" not in err, err[-3000:]
    assert err.rstrip().endswith("djinn-server: stopped"), err[-3000:]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_with_live_session_exits_cleanly(sig):
    proc, ep = _start()
    client = _hold(ep)
    try:
        proc.send_signal(sig)
        _assert_clean_exit(proc)
    finally:
        client.kill()
        client.wait()
        if proc.poll() is None:
            proc.kill()


def test_parent_death_with_live_session_exits_cleanly(tmp_path):
    """The embedded case: the server's parent dies (SIGKILL) while a session holds
    memory. The server is the dead parent's child, so its exit status goes to init; its
    stderr (a file) must end with a clean stop."""
    log = tmp_path / "server.log"
    ep = f"tcp://127.0.0.1:{free_port()}"
    parent_code = textwrap.dedent(f"""
        import os, subprocess, sys
        r, w = os.pipe()
        p = subprocess.Popen([{ASAN_SERVER!r}, "--listen", {ep!r}, "--device", "cpu",
                              "--lease-ms", "0", "--announce-fd", str(w), "--parent-pid", str(os.getpid())],
                             pass_fds=(w,), stderr=open({str(log)!r}, "w"),
                             env={{**os.environ, **{ASAN_ENV!r}}})
        os.close(w)
        print(os.fdopen(r).readline().strip(), p.pid, flush=True)
        sys.stdin.read()
    """)
    parent = subprocess.Popen(
        [sys.executable, "-c", parent_code],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    announce, pid = parent.stdout.readline().rsplit(" ", 1)
    pid = int(pid)
    assert announce == "DJINN_ENDPOINT " + ep
    client = _hold(ep)
    try:
        parent.kill()
        parent.wait()
        poll(
            lambda: (
                not os.path.exists(f"/proc/{pid}")
                or open(f"/proc/{pid}/stat").read().split()[2] == "Z"
            ),
            timeout=30,
            desc="the server to notice its parent died and exit",
        )
        err = log.read_text()
        assert "parent process" in err and "is gone" in err, err[-3000:]
        assert "AddressSanitizer" not in err and "LeakSanitizer" not in err, err[-3000:]
        assert "not given back" not in err, err[-3000:]
        assert err.rstrip().endswith("djinn-server: stopped"), err[-3000:]
    finally:
        client.kill()
        client.wait()
        if os.path.exists(f"/proc/{pid}"):
            os.kill(pid, signal.SIGKILL)


def test_shutdown_after_clients_left_and_sessions_expired():
    proc, ep = _start("--lease-ms", "500", "--heartbeat-ms", "100")
    client = _hold(ep)
    client.kill()  # its session expires: the reaper frees it while the server runs on
    client.wait()
    from proto import Raw

    raw = Raw(ep)
    try:
        poll(lambda: raw.stats()["sessions_expired"] >= 1, timeout=20, desc="the lease to expire")
    finally:
        raw.close()
    proc.send_signal(signal.SIGTERM)
    _assert_clean_exit(proc)


# ------------------------------------------------------------------ graceful drain (SIGTERM)

# A client with one long fragment (tens of 512x512 matmuls): set up, then run it on "go".
_LONG = textwrap.dedent("""
    import sys, torch, djinn
    torch.manual_seed(0)
    x = torch.randn(512, 512) / 24
    r = x.to('remote')
    r.sum().item()                            # uploaded and connected
    print("ready", flush=True)
    sys.stdin.readline()
    y = r
    for _ in range(N):
        y = (y @ r).tanh()
    try:
        got = y.sum(0).cpu()
    except Exception as e:
        print("error", type(e).__name__, e, flush=True)
        raise SystemExit(0)
    ref = x
    for _ in range(N):
        ref = (ref @ x).tanh()
    print("result", torch.allclose(got, ref.sum(0), rtol=1e-4, atol=1e-4), flush=True)
""")


def _long_client(ep, n):
    from deploy_util import read_line

    c = subprocess.Popen(
        [sys.executable, "-c", _LONG.replace("range(N)", f"range({n})")],
        env=subprocess_env(DJINN_SERVER=ep, DJINN_CONNECT_TIMEOUT=5),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    read_line(c.stdout, 120, "ready", "the client's set-up")
    return c


def _requests(raw):
    return raw.call(STATS_T, sid=0)[0]["body"]["requests"]


STATS_T = 9  # STATS (djn_proto.h); checked against proto.STATS below


def _start_running(ep, client):
    """Let the client send its long fragment and wait until the server has it queued."""
    from proto import STATS, Raw

    assert STATS == STATS_T
    raw = Raw(ep, timeout=10)
    before = _requests(raw)
    client.stdin.write("go\n")
    client.stdin.flush()
    asked = [0]

    def arrived():  # each STATS counts itself: the rest is the fragment
        asked[0] += 1
        return _requests(raw) - asked[0] >= before + 1

    poll(arrived, timeout=30, desc="the fragment to arrive")
    return raw


def test_sigterm_drains_running_fragment_refuses_new_sessions_and_exits_cleanly():
    """SIGTERM while a fragment runs: a new HELLO gets a clear CLOSED error, the running
    fragment finishes and its result (equal to CPU's) reaches the client, then the server
    exits 0 with no sanitizer report and every host byte back."""
    from deploy_util import read_line
    from proto import ERROR, HELLO, PROTO_VERSION, S, Raw

    proc, ep = _start("--drain-timeout", "120")
    client = _long_client(ep, 400)
    try:
        _start_running(ep, client)
        proc.send_signal(signal.SIGTERM)

        def refused():  # the signal reaches the server asynchronously
            h, _ = Raw(ep, timeout=10).call(
                HELLO, {"version": PROTO_VERSION, "client": "late"}, sid=0
            )
            return h if h["type"] == ERROR else None

        h = poll(refused, timeout=30, desc="a HELLO refused by the draining server")
        assert h["body"]["code"] == S["CLOSED"], h
        assert "draining" in h["body"]["msg"] and "no new sessions" in h["body"]["msg"], h
        assert proc.poll() is None, "the server exited before its fragment ran"
        line = read_line(client.stdout, 120, None, "the client's result")
        assert line == "result True", (line, client.stderr.read()[-2000:])
        _assert_clean_exit(proc)
    finally:
        client.kill()
        client.wait()
        if proc.poll() is None:
            proc.kill()


def test_drain_timeout_stops_the_wait_and_still_exits_cleanly():
    """A fragment longer than --drain-timeout: the server stops waiting when the timeout
    runs out (it says so), lets the kernel that runs finish, and exits cleanly."""
    proc, ep = _start("--drain-timeout", "1", "--log-format", "json")
    client = _long_client(ep, 1900)  # one fragment of 3800 nodes: seconds, past the timeout
    try:
        _start_running(ep, client)
        proc.send_signal(signal.SIGTERM)
        err = proc.communicate(timeout=300)[1]
        assert proc.returncode == 0, err[-3000:]
        assert "AddressSanitizer" not in err and "LeakSanitizer" not in err, err[-3000:]
        import json

        lines = [json.loads(x) for x in err.splitlines() if x.startswith("{")]
        msgs = [x["msg"] for x in lines]
        assert any(m.startswith("draining") for m in msgs), msgs
        assert any(m.startswith("drain timeout") for m in msgs), msgs
        assert not any(m.startswith("drained") for m in msgs), msgs
        assert msgs[-1] == "stopped" and "host memory was not given back" not in msgs, msgs
    finally:
        client.kill()
        client.wait()
        if proc.poll() is None:
            proc.kill()


def test_second_sigterm_stops_at_once():
    """An operator who does not want to wait sends SIGTERM twice: the fragment running
    finishes its nodes (a fragment is not cut), nothing else is waited for."""
    from proto import ERROR, HELLO, PROTO_VERSION, Raw

    def draining():
        h, _ = Raw(ep, timeout=10).call(HELLO, {"version": PROTO_VERSION, "client": "x"}, sid=0)
        return h["type"] == ERROR

    proc, ep = _start("--drain-timeout", "600")
    client = _long_client(ep, 400)
    try:
        _start_running(ep, client)
        proc.send_signal(signal.SIGTERM)
        poll(draining, timeout=30, desc="the drain to start")
        proc.send_signal(signal.SIGTERM)
        err = proc.communicate(timeout=300)[1]
        assert proc.returncode == 0, err[-3000:]
        assert "AddressSanitizer" not in err and "LeakSanitizer" not in err, err[-3000:]
        assert "drained" not in err and "drain timeout" not in err, err[-3000:]
    finally:
        client.kill()
        client.wait()
        if proc.poll() is None:
            proc.kill()

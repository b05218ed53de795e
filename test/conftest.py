"""Shared fixtures for Djinn's Python test suite.

One real ``djinn-server`` (``--device cpu``) is started in ``pytest_configure`` and its
endpoint is exported as ``DJINN_SERVER`` *before* any test module imports ``djinn``, so
every in-process test talks to that server rather than an embedded one. Tests that need
a fresh process (embedded server, unreachable server, raw sockets) build their own
environment with :func:`subprocess_env` and run :func:`run_python`.

The shared server runs with ``--lease-ms 0``: the Python client sends no heartbeats, and
tests that spend a few seconds in subprocesses must not lose the in-process session
(the lease itself is tested in ``test_errors.py`` against a dedicated server).
"""

import os
import socket
import subprocess
import sys
import textwrap
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SERVER_BIN = os.path.join(REPO, "djinn", "bin", "djinn-server")
PYTHON = sys.executable

_SERVER = {"proc": None, "endpoint": None}


# ------------------------------------------------------------------ helpers


def free_port():
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def poll(fn, timeout=10.0, interval=0.02, desc=None):
    """Call ``fn`` until it returns a truthy value and return that value.

    Raises AssertionError after ``timeout`` seconds. This is the only way tests wait for
    something asynchronous: never a bare sleep."""
    deadline = time.monotonic() + timeout
    last_exc = None
    while True:
        try:
            v = fn()
            if v:
                return v
        except Exception as e:  # noqa: BLE001 - retried until the deadline
            last_exc = e
        if time.monotonic() >= deadline:
            raise AssertionError(
                f"timed out after {timeout}s waiting for {desc or getattr(fn, '__name__', fn)}"
                + (f" (last error: {last_exc!r})" if last_exc else "")
            )
        time.sleep(interval)


def start_server(*extra_args, port=None, env=None, timeout=30.0, preexec_fn=None):
    """Start ``djinn-server`` on loopback and wait until it has bound its socket.

    Returns ``(Popen, endpoint)``. Readiness is the server's own announcement on a pipe
    (``--announce-fd``), not a timed sleep."""
    port = port or free_port()
    endpoint = f"tcp://127.0.0.1:{port}"
    r, w = os.pipe()
    args = [
        SERVER_BIN,
        "--listen",
        endpoint,
        "--device",
        "cpu",
        "--announce-fd",
        str(w),
        *extra_args,
    ]
    proc = subprocess.Popen(
        args,
        pass_fds=(w,),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env if env is not None else _clean_env(),
        preexec_fn=preexec_fn,
    )
    os.close(w)
    line = b""
    deadline = time.monotonic() + timeout
    try:
        import selectors

        sel = selectors.DefaultSelector()
        sel.register(r, selectors.EVENT_READ)
        while b"\n" not in line:
            left = deadline - time.monotonic()
            if left <= 0 or not sel.select(left):
                raise RuntimeError(
                    f"djinn-server on {endpoint} did not announce itself in {timeout}s"
                )
            chunk = os.read(r, 512)
            if not chunk:
                raise RuntimeError(f"djinn-server on {endpoint} exited early (rc={proc.poll()})")
            line += chunk
        sel.close()
    except BaseException:
        stop_server(proc)
        raise
    finally:
        os.close(r)
    assert line.startswith(b"DJINN_ENDPOINT "), line
    return proc, line.split()[1].decode()


def stop_server(proc, timeout=10.0):
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout)


def _clean_env():
    env = dict(os.environ)
    for k in (
        "DJINN_SERVER",
        "DJINN_LISTEN",
        "DJINN_DEVICES",
        "DJINN_LEASE_MS",
        "DJINN_SERVER_ARGS",
    ):
        env.pop(k, None)
    return env


def subprocess_env(**overrides):
    """Environment for a fresh Python process: no shared server unless asked for.

    ``overrides`` set variables; a value of ``None`` removes one."""
    env = _clean_env()
    env.pop("DJINN_CONNECT_TIMEOUT", None)
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    for k, v in overrides.items():
        if v is None:
            env.pop(k, None)
        else:
            env[k] = str(v)
    return env


def run_python(code, env, timeout=120):
    """Run ``code`` in a fresh interpreter; returns CompletedProcess (text mode)."""
    return subprocess.run(
        [PYTHON, "-c", textwrap.dedent(code)],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _tolerance(dtype):
    import torch

    if dtype == torch.float16:
        return dict(rtol=1e-3, atol=1e-3)
    if dtype == torch.bfloat16:
        return dict(rtol=1.6e-2, atol=1e-2)
    if dtype == torch.float64:
        return dict(rtol=1e-7, atol=1e-7)
    return dict(rtol=1.3e-6, atol=1e-5)


def assert_close(remote, cpu, **tol):
    """``remote`` (a remote tensor, or a nested tuple/list of them) equals ``cpu``.

    Device, dtype and shape must match exactly; integer and bool values exactly; float
    values within a dtype-appropriate tolerance unless ``rtol``/``atol`` are given."""
    import torch

    if isinstance(cpu, (tuple, list)):
        assert isinstance(remote, (tuple, list)), type(remote)
        assert len(remote) == len(cpu)
        for r, c in zip(remote, cpu):
            assert_close(r, c, **tol)
        return
    if not isinstance(cpu, torch.Tensor):
        assert remote == cpu
        return
    assert isinstance(remote, torch.Tensor), type(remote)
    assert remote.device.type == "remote", remote.device
    got = remote.cpu()
    assert got.device.type == "cpu"
    assert got.dtype == cpu.dtype, (got.dtype, cpu.dtype)
    assert got.shape == cpu.shape, (tuple(got.shape), tuple(cpu.shape))
    if cpu.dtype.is_floating_point or cpu.dtype.is_complex:
        t = {**_tolerance(cpu.dtype), **tol}
        torch.testing.assert_close(got, cpu, equal_nan=True, **t)
    else:
        assert torch.equal(got, cpu), f"\nremote: {got}\ncpu:    {cpu}"


# ------------------------------------------------------------------ the shared server


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: takes more than a few seconds")
    if _SERVER["proc"] is not None:
        return
    proc, endpoint = start_server("--lease-ms", "0")
    _SERVER["proc"], _SERVER["endpoint"] = proc, endpoint
    os.environ["DJINN_SERVER"] = endpoint
    os.environ["DJINN_CONNECT_TIMEOUT"] = "10"


def pytest_unconfigure(config):
    proc = _SERVER["proc"]
    _SERVER["proc"] = None
    # close our session first so the server does not outlive a client mid-request
    try:
        if "djinn" in sys.modules:
            sys.modules["djinn"]._C._shutdown()
    except Exception:  # noqa: BLE001
        pass
    stop_server(proc)


@pytest.fixture(scope="session")
def server():
    """The endpoint of the shared djinn-server (``tcp://127.0.0.1:<port>``)."""
    assert _SERVER["proc"] is not None and _SERVER["proc"].poll() is None, "shared server is down"
    return _SERVER["endpoint"]


@pytest.fixture
def private_server():
    """Start dedicated servers (``private_server(*flags)`` -> endpoint) for one test;
    all are stopped at teardown. For tests that may crash, restart or starve a server."""
    procs = []

    def make(*flags, **kw):
        proc, endpoint = start_server(*flags, **kw)
        procs.append(proc)
        return endpoint

    make.procs = procs
    yield make
    for p in procs:
        stop_server(p)


@pytest.fixture(scope="session")
def djinn_mod(server):
    import djinn

    assert os.environ["DJINN_SERVER"] == server
    return djinn


@pytest.fixture
def remote(djinn_mod):
    """'remote', after checking the in-process client talks to the shared server."""
    import torch

    torch.remote.init()
    assert djinn_mod.remote.endpoint() == os.environ["DJINN_SERVER"]
    return "remote"

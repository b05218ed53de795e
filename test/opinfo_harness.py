"""PyTorch's OpInfo database (``op_db``) on 'cpu' against 'remote'.

For each OpInfo, the first ``max_samples`` sample inputs of
``op.sample_inputs('cpu', dtype, requires_grad=...)`` run on CPU twice (different seeds;
an op whose two CPU results differ, or a known random / uninitialised-memory op, is
nondeterministic and excluded from the pass rate) and once on 'remote' with the same
values and the same strides (the sample's tensors, args and kwargs are copied, ``device``
arguments become 'remote'). Results are compared with ``torch.testing.assert_close``
(equal_nan, dtype and shape checked, tolerances by dtype).

Each op gets one status:

``pass``          every deterministic sample matches
``mismatch``      a remote result has other values, dtype or shape (or a non-remote device)
``remote-error``  remote raised where CPU did not (exception type and first message line)
``crash``         the client process died (signal or abort) while the op ran
``server-crash``  djinn-server died while the op ran
``timeout``       no result within the per-op time limit
``cpu-skip``      CPU itself fails on every sample, the op is nondeterministic or random,
                  or (grad) it has no differentiable output: not counted

Mode ``grad`` (float32): samples with ``requires_grad=True``; the gradients of the
differentiable outputs (after ``sample.output_process_fn_grad``), contracted with fixed
random ``grad_outputs``, w.r.t. every input that requires grad, are compared with CPU's.

Ops run in worker subprocesses (``--worker``), one op at a time, each worker against its
own ``djinn-server`` started here; a worker that dies is restarted and the op it was
running is recorded with the sample and phase it died in. After each op a health check
(a small remote computation) must still work; if it does not, the op is marked
``poisons_session`` and the worker restarts.

As a script::

    python test/opinfo_harness.py --ops add,conj,fft.fft --dtypes float32,complex64 \\
        --modes forward,grad --json out.json --md out.md

With no ``--ops`` the whole database runs (``make test-ops``).
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import math
import os
import resource
import select
import signal
import subprocess
import sys
import tempfile
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)

DTYPE_NAMES = ("float32", "bfloat16", "complex64", "int64")
MODES = ("forward", "grad")
STATUSES = (
    "pass",
    "mismatch",
    "remote-error",
    "crash",
    "server-crash",
    "timeout",
    "cpu-skip",
)
FAILING = ("mismatch", "remote-error", "crash", "server-crash", "timeout")

# Ops whose results are random draws (the two-seed check catches most; these are
# excluded even when a sample happens to draw nothing, e.g. dropout with p=0).
RANDOM_OPS = frozenset(
    {
        "bernoulli",
        "cauchy",
        "exponential",
        "geometric",
        "log_normal",
        "multinomial",
        "normal",
        "normal.in_place",
        "normal.number_mean",
        "uniform",
        "rand_like",
        "randint",
        "randint_like",
        "randn",
        "randn_like",
        "nn.functional.alpha_dropout",
        "nn.functional.dropout",
        "nn.functional.dropout2d",
        "nn.functional.dropout3d",
        "nn.functional.feature_alpha_dropout.with_train",
        "nn.functional.fractional_max_pool2d",
        "nn.functional.fractional_max_pool3d",
        "nn.functional.rrelu",
        "pca_lowrank",
        "svd_lowrank",
    }
)
# Ops whose results are (partly) uninitialised memory: only dtype and shape compare.
UNINIT_OPS = frozenset(
    {
        "empty",
        "empty_like",
        "empty_permuted",
        "empty_strided",
        "new_empty",
        "new_empty_strided",
        "resize_",
        "resize_as_",
    }
)

_TOL = {
    "torch.float16": (1e-3, 1e-3),
    "torch.bfloat16": (1.6e-2, 1e-2),
    "torch.float32": (1e-5, 1e-5),
    "torch.complex64": (1e-5, 1e-5),
    "torch.float64": (1e-7, 1e-7),
    "torch.complex128": (1e-7, 1e-7),
    "torch.complex32": (1e-3, 1e-3),
}
GRAD_TOL = (1e-4, 1e-5)

# Positional args that PyTorch requires on the CPU whatever the input's device.
CPU_ARGS = {"tensor_split": (0,)}  # gradients go through longer chains of rounding


def op_key(op):
    return op.name + ("." + op.variant_test_name if op.variant_test_name else "")


def _torch():
    import torch

    return torch


def op_db_by_key():
    from torch.testing._internal.common_methods_invocations import op_db

    return {op_key(op): op for op in op_db}


def ops_for(db, dtype_name, mode, names=None):
    """Keys of the ops that run in (dtype, mode): those CPU supports in that dtype."""
    torch = _torch()
    dtype = getattr(torch, dtype_name)
    keys = []
    for key, op in db.items():
        if names is not None and key not in names and op.name not in names:
            continue
        if mode == "grad":
            if dtype_name != "float32" or not op.supports_autograd:
                continue
            if dtype not in op.supported_backward_dtypes("cpu"):
                continue
        elif dtype not in op.supported_dtypes("cpu"):
            continue
        keys.append(key)
    return keys


def run_key(dtype_name, mode):
    return dtype_name if mode == "forward" else f"grad-{dtype_name}"


# ====================================================================== worker side


class _SelfTestOp:
    """A stand-in for an OpInfo that misbehaves on 'remote' on purpose, so that tests can
    check how the harness classifies each kind of failure (``selftest.*`` keys)."""

    variant_test_name = ""
    supports_autograd = True

    def __init__(self, name, fn):
        self.name = name
        self._fn = fn

    def sample_inputs(self, device, dtype, requires_grad=False):
        torch = _torch()
        from torch.testing._internal.opinfo.core import SampleInput

        x = torch.arange(6, device=device).reshape(2, 3).to(dtype)
        return iter([SampleInput(x.requires_grad_(requires_grad))])

    def __call__(self, x, *args, **kwargs):
        return self._fn(x)


def _selftest_ops():
    torch = _torch()

    def on_remote(x, f):
        return f() if x.device.type == "remote" else None

    def crash(x):
        import ctypes

        on_remote(x, lambda: ctypes.string_at(0))
        return x * 2

    def hang(x):
        on_remote(x, lambda: time.sleep(3600))
        return x * 2

    def error(x):
        def boom():
            raise RuntimeError("selftest: fails on remote")

        on_remote(x, boom)
        return x * 2

    fns = {
        "selftest.ok": lambda x: x * 2 + 1,
        "selftest.wrong": lambda x: x * 2 + (1 if x.device.type == "remote" else 0),
        "selftest.wrong_dtype": lambda x: (x * 2).to(
            torch.float64 if x.device.type == "remote" else x.dtype
        ),
        "selftest.error": error,
        "selftest.crash": crash,
        "selftest.hang": hang,
        "selftest.random": lambda x: x + torch.rand(x.shape, device=x.device),
        "selftest.cpu_fails": lambda x: x.reshape(7),
    }
    return {k: _SelfTestOp(k, f) for k, f in fns.items()}


def _first_line(e):
    msg = str(e).strip().splitlines()
    return f"{type(e).__name__}: {msg[0][:300] if msg else ''}"


def _mismatch_text(e):
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return "; ".join(lines)[:400]


def _copy_exact(t, device):
    """``t`` on ``device`` with the same values, sizes, strides and memory overlap."""
    torch = _torch()
    rg = t.requires_grad
    t = t.detach()
    if t.layout != torch.strided or t.is_conj() or t.is_neg() or t.numel() == 0:
        r = t.to(device, copy=True)
    else:
        lo = t.storage_offset()
        span = 1 + sum((n - 1) * s for n, s in zip(t.shape, t.stride()))
        flat = t.as_strided((span,), (1,), lo).clone()
        r = flat.to(device).as_strided(t.shape, t.stride(), 0)
    return r.requires_grad_(rg) if r.is_floating_point() or r.is_complex() else r


def _move(x, device):
    torch = _torch()
    if isinstance(x, torch.Tensor):
        return _copy_exact(x, device)
    if isinstance(x, torch.device) and x.type == "cpu":
        return torch.device(device)
    if isinstance(x, str) and x in ("cpu", "cpu:0"):
        return device
    if isinstance(x, list):
        return [_move(v, device) for v in x]
    if isinstance(x, tuple) and not hasattr(x, "_fields"):
        return tuple(_move(v, device) for v in x)
    if isinstance(x, dict):
        return {k: _move(v, device) for k, v in x.items()}
    return x


def _sample_on(sample, device, key=""):
    """(input, args, kwargs) of ``sample`` copied onto ``device``."""
    torch = _torch()
    keep = CPU_ARGS.get(key, ())
    with torch.no_grad():
        args = tuple(_move(a, "cpu" if i in keep else device) for i, a in enumerate(sample.args))
        return _move(sample.input, device), args, _move(dict(sample.kwargs), device)


def _leaves(x):
    from torch.utils._pytree import tree_flatten

    return tree_flatten(x)[0]


def _grad_leaves(inp, args, kwargs):
    torch = _torch()
    return [
        t for t in _leaves((inp, args, kwargs)) if isinstance(t, torch.Tensor) and t.requires_grad
    ]


def _call(op, sample, device, mode, seed, key=""):
    """Run the op on ``device``; returns the outputs (forward) or the gradients (grad)."""
    torch = _torch()
    torch.manual_seed(seed)
    inp, args, kwargs = _sample_on(sample, device, key)
    out = op(inp, *args, **kwargs)
    if mode != "grad":
        return out
    out = sample.output_process_fn_grad(out)
    outs = [
        t
        for t in _leaves(out)
        if isinstance(t, torch.Tensor)
        and t.requires_grad
        and (t.is_floating_point() or t.is_complex())
    ]
    inputs = _grad_leaves(inp, args, kwargs)
    if not outs or not inputs:
        return NoGrad()
    gen = torch.Generator().manual_seed(1234)
    gos = [torch.randn(t.shape, dtype=t.dtype, generator=gen).to(t.device) for t in outs]
    return list(torch.autograd.grad(outs, inputs, gos, allow_unused=True))


class NoGrad:
    pass


def _fetch(x, strict_device):
    """Outputs with every remote tensor copied to CPU (raises what the server raised)."""
    torch = _torch()
    from torch.utils._pytree import tree_map

    def f(t):
        if isinstance(t, torch.Tensor):
            t = t.detach()
            if strict_device and t.device.type != "remote":
                raise _WrongDevice(f"result on {t.device}, expected remote")
            return t.cpu()
        return t

    return tree_map(f, x)


class _WrongDevice(AssertionError):
    pass


def _tol(dtype, mode):
    if mode == "grad":
        return GRAD_TOL
    return _TOL.get(str(dtype), (1e-5, 1e-5))


def _compare(got, exp, mode, meta_only=False, exact=False):
    """Raise AssertionError when ``got`` (CPU copies of remote results) differs."""
    torch = _torch()
    g, e = _leaves(got), _leaves(exp)
    if len(g) != len(e):
        raise AssertionError(f"{len(g)} outputs, expected {len(e)}")
    for i, (a, b) in enumerate(zip(g, e)):
        where = f"output {i}: " if len(e) > 1 else ""
        if isinstance(b, torch.Tensor):
            if not isinstance(a, torch.Tensor):
                raise AssertionError(f"{where}got {type(a).__name__}, expected a tensor")
            if a.dtype != b.dtype:
                raise AssertionError(f"{where}dtype {a.dtype}, expected {b.dtype}")
            if a.shape != b.shape:
                raise AssertionError(f"{where}shape {tuple(a.shape)}, expected {tuple(b.shape)}")
            if meta_only or b.layout != torch.strided:
                continue
            a, b = a.resolve_conj().resolve_neg(), b.resolve_conj().resolve_neg()
            if exact:
                torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)
            elif b.is_floating_point() or b.is_complex():
                rtol, atol = _tol(b.dtype, mode)
                try:
                    torch.testing.assert_close(a, b, rtol=rtol, atol=atol, equal_nan=True)
                except AssertionError as err:
                    raise AssertionError(where + _mismatch_text(err)) from None
            elif not torch.equal(a, b):
                diff = (a != b).sum().item()
                raise AssertionError(f"{where}{diff} of {b.numel()} elements differ")
        elif isinstance(b, float) and isinstance(a, (int, float)):
            if not (
                a == b or (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=1e-5)
            ):
                raise AssertionError(f"{where}{a!r}, expected {b!r}")
        elif (type(a) is not type(b) or a != b) and not isinstance(a, torch.Tensor):
            raise AssertionError(f"{where}{a!r}, expected {b!r}")


def _same_cpu(a, b, mode):
    if isinstance(a, NoGrad) or isinstance(b, NoGrad):
        return isinstance(a, NoGrad) and isinstance(b, NoGrad)
    try:
        _compare(a, b, mode, exact=True)
        return True
    except AssertionError:
        return False
    except Exception:  # noqa: BLE001 - e.g. comparing odd outputs: call it nondeterministic
        return False


def run_sample(op, key, sample, mode, emit, index):
    """One sample: CPU twice, then remote. Returns the sample's outcome dict."""
    torch = _torch()
    try:
        c1 = _call(op, sample, "cpu", mode, 0, key)
        c1 = _fetch(c1, False)
    except Exception as e:  # noqa: BLE001 - CPU itself fails: the sample does not count...
        if _blames_djinn(e):  # ...unless importing djinn is what broke it
            return {
                "outcome": "remote-error",
                "detail": "the CPU run fails once djinn is imported: " + _first_line(e),
                "stage": "cpu",
                "where": _where(e),
                "nondet": key in RANDOM_OPS or key in UNINIT_OPS,
            }
        return {"outcome": "cpu-fail", "detail": _first_line(e)}
    if isinstance(c1, NoGrad):
        return {"outcome": "no-grad"}
    try:
        c2 = _fetch(_call(op, sample, "cpu", mode, 1, key), False)
        nondet = not _same_cpu(c1, c2, mode)
    except Exception:  # noqa: BLE001
        nondet = True
    nondet = nondet or key in RANDOM_OPS or key in UNINIT_OPS
    emit({"event": "phase", "index": index, "phase": "remote", "nondet": nondet})
    stage = "call"
    try:
        r = _call(op, sample, "remote", mode, 0, key)
        if isinstance(r, NoGrad):
            return {
                "outcome": "mismatch",
                "detail": "no differentiable output on remote",
                "nondet": nondet,
            }
        stage = "fetch"
        got = _fetch(r, True)
        stage = "sync"
        torch.remote.synchronize()
    except _WrongDevice as e:
        return {"outcome": "mismatch", "detail": str(e), "nondet": nondet}
    except Exception as e:  # noqa: BLE001 - anything still pending is the health check's
        return {
            "outcome": "remote-error",
            "detail": _first_line(e),
            "stage": stage,
            "nondet": nondet,
            "where": _where(e),
        }
    try:
        _compare(got, c1, mode, meta_only=nondet)
    except AssertionError as e:
        return {"outcome": "mismatch", "detail": str(e)[:400], "nondet": nondet}
    return {"outcome": "pass", "nondet": nondet}


def _blames_djinn(e):
    """True when a CPU-only failure comes from djinn's own code (e.g. torch.remote lacking
    something that torch asks of the accelerator module)."""
    import djinn

    pkg = os.path.dirname(os.path.abspath(djinn.__file__)) + os.sep
    if any(fr.filename.startswith(pkg) for fr in traceback.extract_tb(e.__traceback__)):
        return True
    return "djinn" in str(e)


def _where(e):
    """The innermost Python frame outside torch's testing code, for the report."""
    tb = traceback.extract_tb(e.__traceback__)
    for fr in reversed(tb):
        if "opinfo_harness" not in fr.filename:
            return f"{os.path.basename(fr.filename)}:{fr.lineno} {fr.name}"
    return ""


def health_check():
    """A small remote computation after each op: None when it works, else the error."""
    torch = _torch()
    try:
        torch.remote.synchronize()
    except Exception as e:  # noqa: BLE001
        first = _first_line(e)
        try:
            torch.remote.synchronize()
        except Exception as e2:  # noqa: BLE001
            return f"synchronize keeps failing: {_first_line(e2)}"
        pending = f"(a pending error surfaced after the op: {first}) "
    else:
        pending = ""
    try:
        x = torch.arange(6.0).reshape(2, 3).to("remote")
        y = (x * 2 + 1).sum(0).cpu()
        if not torch.equal(y, torch.tensor([8.0, 12.0, 16.0])):
            return pending + f"health check computed {y.tolist()}"
        z = torch.tensor([1 + 2j, 3 - 1j]).to("remote")
        if not torch.equal((z * 2).cpu(), torch.tensor([2 + 4j, 6 - 2j])):
            return pending + "complex health check differs"
    except Exception as e:  # noqa: BLE001
        return pending + f"health check failed: {_first_line(e)}"
    return pending or None


def worker_main():
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # crashes are expected: no core files
    # the protocol goes over the original stdout; anything the ops print goes to stderr
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    import torch

    torch.set_num_threads(1)
    import djinn  # noqa: F401 - registers 'remote'

    torch.remote.init()
    db = op_db_by_key()
    db.update(_selftest_ops())

    def emit(d):
        proto.write(json.dumps(d) + "\n")
        proto.flush()

    emit({"event": "ready"})
    for line in sys.stdin:
        job = json.loads(line)
        op = db[job["op"]]
        dtype = getattr(torch, job["dtype"])
        mode = job["mode"]
        t0 = time.monotonic()
        emit({"event": "start", "op": job["op"]})
        try:
            it = op.sample_inputs("cpu", dtype, requires_grad=mode == "grad")
            samples = list(itertools.islice(it, job["max_samples"]))
        except Exception as e:  # noqa: BLE001
            emit(
                {"event": "done", "samples_error": _first_line(e), "seconds": time.monotonic() - t0}
            )
            continue
        for i, s in enumerate(samples):
            emit({"event": "phase", "index": i, "phase": "cpu"})
            res = run_sample(op, job["op"], s, mode, emit, i)
            emit({"event": "sample", "index": i, **res})
        health = health_check()
        emit(
            {
                "event": "done",
                "nsamples": len(samples),
                "health": health,
                "seconds": time.monotonic() - t0,
            }
        )
        if health:
            return 3  # the parent restarts a fresh worker


# ====================================================================== parent side


def aggregate(key, samples, end=None):
    """Status of one op from its per-sample outcomes and how the run ended.

    ``end`` is None for a normal end, else a dict with ``status`` (crash, server-crash,
    timeout) and ``detail``."""
    res = {"status": "pass", "samples": len(samples)}
    det_fail = [
        s for s in samples if s["outcome"] in ("remote-error", "mismatch") and not s.get("nondet")
    ]
    nondet = [s for s in samples if s.get("nondet")]
    counted = [s for s in samples if s["outcome"] in ("pass", "remote-error", "mismatch")]
    if end is not None:
        res.update(end)
    elif det_fail:
        first = next((s for s in det_fail if s["outcome"] == "remote-error"), det_fail[0])
        res["status"] = first["outcome"]
        res["detail"] = first["detail"]
        res["sample"] = first["index"]
        for k in ("stage", "where"):
            if first.get(k):
                res[k] = first[k]
    elif nondet or key in RANDOM_OPS or key in UNINIT_OPS:
        res["status"] = "cpu-skip"
        res["detail"] = (
            "random op"
            if key in RANDOM_OPS
            else "uninitialised memory"
            if key in UNINIT_OPS
            else ("CPU results differ between two runs")
        )
    elif not counted:
        res["status"] = "cpu-skip"
        fails = [s for s in samples if s["outcome"] == "cpu-fail"]
        if not samples:
            res["detail"] = "no samples"
        elif fails:
            res["detail"] = "CPU fails: " + fails[0]["detail"]
        else:
            res["detail"] = "no differentiable outputs"
    if nondet:
        res["nondet"] = True
        bad = [s for s in nondet if s["outcome"] in ("remote-error", "mismatch")]
        if bad:
            res["nondet_remote"] = f"{bad[0]['outcome']}: {bad[0]['detail']}"
    return res


def _start_server(extra_env):
    sys.path.insert(0, HERE)
    from conftest import start_server  # the suite's own launcher

    env = dict(os.environ)
    for k in (
        "DJINN_SERVER",
        "DJINN_LISTEN",
        "DJINN_DEVICES",
        "DJINN_LEASE_MS",
        "DJINN_SERVER_ARGS",
    ):
        env.pop(k, None)
    env.update(extra_env)
    return start_server(env=env)


class Slot:
    """One djinn-server and one worker process talking to it."""

    def __init__(self, opts, log):
        self.opts = opts
        self.log = log
        self.server = None
        self.endpoint = None
        self.worker = None
        self.buf = b""
        self.errfile = None
        self.started = 0
        self.restarts = 0
        self.server_restarts = 0

    # -------------------------------------------------------------- processes
    def _env(self):
        env = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        return env

    def ensure_server(self):
        if self.server is not None and self.server.poll() is None:
            return
        if self.server is not None:
            self.server_restarts += 1
        self.server, self.endpoint = _start_server(self._env())

    def ensure_worker(self):
        self.ensure_server()
        if self.worker is not None and self.worker.poll() is None:
            return
        self.restarts += self.started > 0
        self.started += 1
        env = dict(os.environ)
        env.update(self._env())
        env["DJINN_SERVER"] = self.endpoint
        env["DJINN_TIMEOUT"] = str(int(self.opts.timeout) + 30)
        env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
        env["PYTHONFAULTHANDLER"] = "1"
        self.errfile = tempfile.TemporaryFile()
        self.worker = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.errfile,
            env=env,
            cwd=REPO,
            start_new_session=True,
        )
        self.buf = b""
        ev = self._read_event(120)
        if not ev or ev.get("event") != "ready":
            raise RuntimeError(f"worker did not start: {self._stderr_tail()}")

    def kill_worker(self):
        w, self.worker = self.worker, None
        if w is None:
            return
        if w.poll() is None:
            try:
                os.killpg(w.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            w.wait()
        for f in (w.stdin, w.stdout):
            try:
                f.close()
            except Exception:  # noqa: BLE001
                pass

    def close(self):
        try:
            if self.worker is not None and self.worker.poll() is None:
                self.worker.stdin.close()
                self.worker.wait(10)
        except Exception:  # noqa: BLE001
            pass
        self.kill_worker()
        if self.server is not None:
            sys.path.insert(0, HERE)
            from conftest import stop_server

            stop_server(self.server)
            self.server = None

    def _stderr_tail(self, n=4000):
        if self.errfile is None:
            return ""
        self.errfile.seek(0, os.SEEK_END)
        size = self.errfile.tell()
        self.errfile.seek(max(0, size - n))
        return self.errfile.read().decode("utf-8", "replace")

    def _read_event(self, timeout):
        """The next protocol line, None at EOF, "timeout" if none came in time,
        "server" if the server died while waiting."""
        deadline = time.monotonic() + timeout
        fd = self.worker.stdout.fileno()
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                return "timeout"
            r, _, _ = select.select([fd], [], [], min(left, 0.5))
            if not r:
                if self.server.poll() is not None:
                    return "server"
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                return None
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return json.loads(line)

    # -------------------------------------------------------------- one op
    def run(self, key, dtype_name, mode):
        self.ensure_worker()
        job = {"op": key, "dtype": dtype_name, "mode": mode, "max_samples": self.opts.max_samples}
        t0 = time.monotonic()
        self.worker.stdin.write((json.dumps(job) + "\n").encode())
        self.worker.stdin.flush()
        samples, phase = [], None
        while True:
            left = self.opts.timeout - (time.monotonic() - t0)
            ev = self._read_event(max(left, 0.01))
            if isinstance(ev, dict):
                kind = ev["event"]
                if kind == "phase":
                    phase = ev
                elif kind == "sample":
                    samples.append({k: v for k, v in ev.items() if k != "event"})
                elif kind == "done":
                    break
                continue
            # the run ended abnormally
            where = ""
            if phase is not None:
                where = f"sample {phase['index']}, {phase['phase']}"
                if phase["phase"] == "remote" and phase.get("nondet"):
                    where += " (a nondeterministic op)"
            if ev == "timeout":
                end = {
                    "status": "timeout",
                    "detail": f"no result in {self.opts.timeout:.0f}s ({where})",
                }
            elif ev == "server" or (self.server.poll() is not None):
                end = {
                    "status": "server-crash",
                    "detail": f"djinn-server died (rc={self.server.poll()}, {where})",
                }
            else:
                self.worker.wait()
                rc = self.worker.returncode
                tail = self._stderr_tail()
                end = {
                    "status": "crash",
                    "detail": f"client died ({_rc_text(rc)}, {where})",
                    "stderr": _tail_text(tail),
                }
            if phase is not None and phase["phase"] == "cpu" and ev != "server":
                # died or hung on CPU itself: not djinn's fault
                end = {"status": "cpu-skip", "detail": f"CPU run {end['status']}: {end['detail']}"}
            self.kill_worker()
            if self.server.poll() is not None:
                self.ensure_server()
            res = aggregate(key, samples, end)
            res["seconds"] = round(time.monotonic() - t0, 3)
            return res
        res = aggregate(key, samples)
        if ev.get("samples_error"):
            res["status"] = "cpu-skip"
            res["detail"] = "sample_inputs failed: " + ev["samples_error"]
        if ev.get("health"):
            res["poisons_session"] = ev["health"]
            self.worker.wait(30)
            self.kill_worker()
        res["seconds"] = round(ev.get("seconds", time.monotonic() - t0), 3)
        return res


def _rc_text(rc):
    if rc is None:
        return "still running"
    if rc < 0:
        try:
            return signal.Signals(-rc).name
        except ValueError:
            return f"signal {-rc}"
    return f"exit {rc}"


def _tail_text(tail):
    """The informative lines of a crashed worker's stderr."""
    lines = [ln for ln in tail.splitlines() if ln.strip()]
    keep = []
    for i, ln in enumerate(lines):
        low = ln.lower()
        if any(
            w in low
            for w in (
                "fatal python error",
                "terminate called",
                "what()",
                "error",
                "assert",
                "abort",
                "segmentation",
            )
        ):
            keep.append(ln.strip())
    out = keep[-6:] if keep else lines[-6:]
    return "\n".join(out)[-1500:]


def run_survey(keys_by_run, opts, log=print):
    """Run ops. ``keys_by_run`` maps (dtype_name, mode) -> op keys. Returns results
    ``{run_key: {op: result}}``. Work is spread over ``opts.jobs`` slots (threads, each
    with its own server and worker)."""
    import queue
    import threading

    jobs = queue.Queue()
    total = 0
    for (dt, mode), keys in keys_by_run.items():
        for k in keys:
            jobs.put((dt, mode, k))
            total += 1
    results = {run_key(dt, mode): {} for (dt, mode) in keys_by_run}
    lock = threading.Lock()
    done = [0]
    slots = [Slot(opts, log) for _ in range(max(1, opts.jobs))]

    def loop(slot):
        while True:
            try:
                dt, mode, k = jobs.get_nowait()
            except queue.Empty:
                return
            try:
                res = slot.run(k, dt, mode)
            except Exception as e:  # noqa: BLE001 - harness trouble: record, restart
                res = {"status": "crash", "detail": f"harness: {_first_line(e)}", "samples": 0}
                slot.kill_worker()
            with lock:
                results[run_key(dt, mode)][k] = res
                done[0] += 1
                if opts.verbose or res["status"] in FAILING or res.get("poisons_session"):
                    extra = res.get("detail", "")
                    if res.get("poisons_session"):
                        extra += f" [leaves the session broken: {res['poisons_session']}]"
                    head = f"[{done[0]}/{total}] {run_key(dt, mode):>14} {k:<45}"
                    log(f"{head} {res['status']:<12} {extra[:300]}")

    threads = [threading.Thread(target=loop, args=(s,)) for s in slots]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        for s in slots:
            s.close()
    restarts = sum(s.restarts for s in slots)
    server_restarts = sum(s.server_restarts for s in slots)
    return results, {"worker_restarts": restarts, "server_restarts": server_restarts}


def survey(keys_by_run, max_samples=8, timeout=120.0, jobs=2, verbose=False, log=print):
    """:func:`run_survey` with keyword options instead of parsed arguments."""
    opts = argparse.Namespace(max_samples=max_samples, timeout=timeout, jobs=jobs, verbose=verbose)
    return run_survey(keys_by_run, opts, log)


# ====================================================================== reports


def summarize(results):
    out = {}
    for rk, per_op in results.items():
        counts = {s: 0 for s in STATUSES}
        for r in per_op.values():
            counts[r["status"]] += 1
        ran = len(per_op)
        det = ran - counts["cpu-skip"]
        out[rk] = {
            "ops": ran,
            "deterministic": det,
            "passed": counts["pass"],
            "pass_pct": round(100.0 * counts["pass"] / det, 2) if det else 0.0,
            **{s.replace("-", "_"): counts[s] for s in STATUSES if s != "pass"},
            "poisons_session": sum(1 for r in per_op.values() if r.get("poisons_session")),
        }
    return out


def _grouped(details):
    """Markdown bullets, one per distinct message (handles blanked), naming its ops."""
    import re

    by_msg = {}
    for k, d in sorted(details.items()):
        msg = re.sub(r"0x[0-9a-f]+", "0x…", d.replace("|", "\\|").replace("\n", " "))[:240]
        by_msg.setdefault(msg, []).append(k)
    return [f"- {', '.join(f'`{k}`' for k in ks)}: {msg}" for msg, ks in by_msg.items()]


def write_json(doc, path):
    """The results, one op per line (diffable)."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write("{\n")
        for key in ("meta", "summary"):
            f.write(f' "{key}": {json.dumps(doc[key], sort_keys=True)},\n')
        f.write(' "results": {\n')
        runs = list(doc["results"].items())
        for i, (rk, per_op) in enumerate(runs):
            f.write(f'  "{rk}": {{\n')
            items = sorted(per_op.items())
            for j, (k, r) in enumerate(items):
                sep = "," if j + 1 < len(items) else ""
                f.write(f"   {json.dumps(k)}: {json.dumps(r, sort_keys=True)}{sep}\n")
            f.write("  }" + ("," if i + 1 < len(runs) else "") + "\n")
        f.write(" }\n}\n")
    os.replace(tmp, path)


def markdown(doc):
    summ = doc["summary"]
    meta = doc["meta"]
    lines = [
        "# OpInfo survey: `remote` against CPU",
        "",
        f"djinn {meta.get('commit')}, torch {meta['torch']}, {meta['date']}, "
        f"first {meta['max_samples']} samples per op, "
        f"{meta['wall_s']:.0f} s wall (`{meta['command']}`).",
        "",
        "| run | ops run | deterministic on CPU | passed | % | mismatch | remote error | crash "
        "| server crash | timeout | poisons session |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for rk, s in summ.items():
        lines.append(
            f"| {rk} | {s['ops']} | {s['deterministic']} | {s['passed']} | {s['pass_pct']:.1f} "
            f"| {s['mismatch']} | {s['remote_error']} | {s['crash']} | {s['server_crash']} "
            f"| {s['timeout']} | {s['poisons_session']} |"
        )
    lines += [
        "",
        "Passed = every deterministic sample equal to CPU (assert_close, dtype and shape).",
        "",
    ]
    for rk, per_op in doc["results"].items():
        fails = {k: r for k, r in per_op.items() if r["status"] in FAILING}
        poison = {k: r["poisons_session"] for k, r in per_op.items() if r.get("poisons_session")}
        nd = {
            k: r["nondet_remote"]
            for k, r in per_op.items()
            if r.get("nondet_remote") and r["status"] == "cpu-skip"
        }
        if not (fails or poison or nd):
            continue
        lines += [f"## {rk}", ""]
        for status in FAILING:
            group = {k: r.get("detail") or "" for k, r in fails.items() if r["status"] == status}
            if group:
                lines += [f"**{status}** ({len(group)}):", "", *_grouped(group), ""]
        if poison:
            lines += [f"**leaves the session broken** ({len(poison)}):", "", *_grouped(poison), ""]
        if nd:
            lines += [
                f"**nondeterministic ops (not counted) that fail on remote** ({len(nd)}):",
                "",
                *_grouped(nd),
                "",
            ]
    return "\n".join(lines) + "\n"


README_BEGIN = "<!-- opinfo-survey: begin (written by test/opinfo_harness.py --readme) -->"
README_END = "<!-- opinfo-survey: end -->"
_RUN_LABEL = {"grad-float32": "gradients, float32"}


def readme_table(doc):
    """The per-dtype table the README shows, from a survey's results."""
    meta = doc["meta"]
    lines = [
        README_BEGIN,
        f"djinn {meta.get('commit')}, torch {meta['torch']}, {meta['date']}, CPU server, "
        f"first {meta['max_samples']} samples per op:",
        "",
        "| dtype | ops run | deterministic | passed | % | client crashes | server crashes |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for rk, s in doc["summary"].items():
        lines.append(
            f"| {_RUN_LABEL.get(rk, rk)} | {s['ops']} | {s['deterministic']} | {s['passed']} "
            f"| {s['pass_pct']:.1f} | {s['crash']} | {s['server_crash']} |"
        )
    lines.append(README_END)
    return "\n".join(lines)


def update_readme(doc, path):
    """Replace the table between the README's survey markers with this run's."""
    with open(path) as f:
        text = f.read()
    b, e = text.find(README_BEGIN), text.find(README_END)
    if b < 0 or e < b:
        raise SystemExit(f"{path}: no survey markers ({README_BEGIN!r} ... {README_END!r})")
    text = text[:b] + readme_table(doc) + text[e + len(README_END) :]
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.replace(path + ".tmp", path)


def _git_head():
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
        )
        return out.stdout.strip() or None
    except OSError:
        return None


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument(
        "--ops", default="", help="comma-separated OpInfo names (default: all of op_db)"
    )
    ap.add_argument("--dtypes", default=",".join(DTYPE_NAMES))
    ap.add_argument("--modes", default="forward,grad", help="forward, grad (grad runs in float32)")
    ap.add_argument("--max-samples", type=int, default=8)
    ap.add_argument("--timeout", type=float, default=120.0, help="seconds per op")
    ap.add_argument(
        "--jobs", type=int, default=2, help="parallel slots (each: a server and a worker)"
    )
    ap.add_argument("--json", default="", help="write the results here")
    ap.add_argument("--md", default="", help="write the markdown report here")
    ap.add_argument(
        "--readme", default="", help="rewrite the survey table between this file's markers"
    )
    ap.add_argument(
        "--verbose", "-v", action="store_true", help="print every op, not only failures"
    )
    opts = ap.parse_args(argv)
    if opts.worker:
        return worker_main() or 0

    db = op_db_by_key()
    names = None
    if opts.ops:
        names = {n.strip() for n in opts.ops.split(",") if n.strip()}
        unknown = {n for n in names if n not in db and not any(op.name == n for op in db.values())}
        if unknown:
            ap.error("unknown OpInfo names: " + ", ".join(sorted(unknown)))
    dtypes = [d.strip() for d in opts.dtypes.split(",") if d.strip()]
    modes = [m.strip() for m in opts.modes.split(",") if m.strip()]
    for m in modes:
        if m not in MODES:
            ap.error(f"unknown mode {m}")
    keys_by_run = {}
    for m in modes:
        for dt in dtypes if m == "forward" else ["float32"]:
            keys_by_run[(dt, m)] = ops_for(db, dt, m, names)
    t0 = time.monotonic()
    results, restarts = run_survey(keys_by_run, opts)
    wall = time.monotonic() - t0
    import torch

    doc = {
        "meta": {
            "torch": torch.__version__,
            "date": datetime.date.today().isoformat(),
            "max_samples": opts.max_samples,
            "timeout_s": opts.timeout,
            "wall_s": round(wall, 1),
            "commit": _git_head(),
            "command": "python test/opinfo_harness.py "
            + " ".join(argv if argv is not None else sys.argv[1:]),
            **restarts,
        },
        "summary": summarize(results),
        "results": results,
    }
    for rk, s in doc["summary"].items():
        print(
            f"{rk:>14}: {s['passed']}/{s['deterministic']} deterministic ops pass "
            f"({s['pass_pct']:.1f} %), "
            f"{s['ops']} run; mismatch {s['mismatch']}, remote-error {s['remote_error']}, "
            f"crash {s['crash']}, server-crash {s['server_crash']}, timeout {s['timeout']}"
        )
    print(f"wall {wall:.0f} s")
    if opts.json:
        os.makedirs(os.path.dirname(os.path.abspath(opts.json)), exist_ok=True)
        write_json(doc, opts.json)
    if opts.md:
        with open(opts.md, "w") as f:
            f.write(markdown(doc))
    if opts.readme:
        update_readme(doc, opts.readme)
    return 0


if __name__ == "__main__":
    sys.exit(main())

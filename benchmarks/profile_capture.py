"""Where the client's capture path spends its time: the capture micro-benchmark under
callgrind, summarised into PROFILE.md.

The child (this file, ``child`` role) runs under ``valgrind --tool=callgrind
--instr-atstart=no``: importing torch is not instrumented. For each phase it prepares,
says ``READY <phase>`` and waits; the harness switches instrumentation on with
``callgrind_control -i on``, lets it run the ops, then dumps the phase
(``callgrind_control -d``) and switches instrumentation off. Phases:

1. ``hits``: N x ``y = y + 1.0`` on a remote tensor, meta cache warm (the number DESIGN
   section 7 targets);
2. ``misses``: M adds, each on a shape never seen (views of one buffer);
3. ``local``: the hits loop on a CPU tensor, eager PyTorch (the anchor).

Each dump is read with ``callgrind_annotate --inclusive=yes``. Instruction counts (Ir),
not time: callgrind runs ~50-100x slower, but the proportions are the client's. The
embedded djinn-server is a child process and is not traced. Without valgrind, or if it
fails or runs out of time, the hits loop is profiled with cProfile instead (Python-level
only), and PROFILE.md says so.
"""

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

import common as C

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)

# inclusive costs worth naming, if they appear: (regex on the function, what it is)
LANDMARKS = [
    (r"THPVariable_add\(", "torch's Python binding of Tensor.__add__ (parsing + all below)"),
    (r"at::_ops::add_Tensor::call\(", "dispatcher entry for aten::add.Tensor"),
    (r"^torch::autograd::VariableType::.*add_Tensor", "autograd layer (VariableType)"),
    (r"structured_add_Tensor::meta", "ATen structured meta: shape/dtype inference on the client"),
    (r"at::_ops::add_out::call\(", "redispatch to aten::add.out (the out= kernel)"),
    (r"djinn::fallback\(", "djinn's boxed fallback: meta-cache lookup, outputs, node record"),
    (
        r"PythonKernelHolder::operator",
        "a Meta kernel implemented in Python (torch._meta_registrations / _refs)",
    ),
    (r"djinn::.*record\(", "djinn: append the node to the pending fragment (msgpack encode)"),
    (
        r"djinn::.*(meta|infer)",
        "djinn: shape inference on a miss (C++ shape function, else the Meta device)",
    ),
    (r"djinn::.*structured<", "djinn: ATen's C++ meta function of the op (RemoteMeta.cpp)"),
    (r"(djinn|djn)_.*alloc|RemoteAllocator", "djinn: handle allocation"),
    (r"XXH3|xxh", "fingerprint hashing"),
    (r"malloc|free", "heap (malloc/free)"),
]


# ------------------------------------------------------------------ child


def child(args):
    import torch

    import djinn  # noqa: F401

    def wait_go(phase):
        print(f"READY {phase}", flush=True)
        return sys.stdin.readline().strip() == "GO"

    def done():
        print("DONE", flush=True)
        sys.stdin.readline()

    xr = torch.randn(64, device="remote")
    xc = torch.randn(64)
    torch.remote.synchronize()

    def chain(x, n):
        y = x
        for _ in range(n):
            y = y + 1.0
        return y

    chain(xr, args.ops)  # warm the meta cache: the hits phase hits
    torch.remote.synchronize()
    if wait_go("hits"):
        chain(xr, args.ops)
        done()
    torch.remote.synchronize()
    base = 200_003
    buf = torch.zeros(base + args.misses, device="remote")
    views = [buf[:k] for k in range(base, base + args.misses)]
    torch.remote.synchronize()
    if wait_go("misses"):
        for v in views:
            v + 1.0
        done()
    torch.remote.synchronize()
    chain(xc, args.ops)
    if wait_go("local"):
        chain(xc, args.ops)
        done()
    return 0


# ------------------------------------------------------------------ harness


def _ctl(*args):
    subprocess.run(
        ["callgrind_control", *args], capture_output=True, text=True, timeout=60, check=True
    )


def _readline(proc, deadline):
    return C.readline_until(proc, deadline, "profiled process")


_LINE = re.compile(r"^\s*([\d,]+)\s+(?:\(\s*([\d.]+)%\))?\s*(.*)$")


def annotate(path, inclusive):
    """[(Ir, percent, function)] from callgrind_annotate, largest first."""
    cmd = [
        "callgrind_annotate",
        "--threshold=100",
        f"--inclusive={'yes' if inclusive else 'no'}",
        path,
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300).stdout
    rows, total, started = [], None, False
    for line in out.splitlines():
        if "PROGRAM TOTALS" in line:
            total = int(line.split()[0].replace(",", ""))
            continue
        if line.startswith("Ir") and "file:function" in line:
            started = True
            continue
        if not started or not line.strip() or line.startswith("--"):
            if started and rows and line.startswith("--"):
                break
            continue
        m = _LINE.match(line)
        if not m:
            continue
        fn = m.group(3)
        # "path/file.c:function [lib]" -> "function [lib basename]"
        lib = ""
        lm = re.search(r"\s\[([^\]]+)\]$", fn)
        if lm:
            lib = os.path.basename(lm.group(1))
            fn = fn[: lm.start()]
        if ":" in fn and not fn.startswith("???"):
            head, _, tail = fn.partition(":")
            if "/" in head or head.endswith((".c", ".h", ".cpp", ".cc")):
                fn = tail
        elif fn.startswith("???:"):
            fn = fn[4:]
        rows.append((int(m.group(1).replace(",", "")), fn.strip(), lib))
    # callgrind_annotate lists some functions twice (with and without the source file); keep the
    # first. Recursion levels ("f'2") and bare addresses (JIT/unsymbolised) double-count: skip them.
    seen, uniq = set(), []
    for ir, fn, lib in rows:
        if fn in seen or re.search(r"'\d+$", fn) or re.match(r"^0x[0-9a-fA-F]+$", fn):
            continue
        seen.add(fn)
        uniq.append((ir, fn, lib))
    return total or 0, uniq


def _short(fn, n=150):
    """Shorten a C++ signature: anonymous namespaces and, when long, the argument list."""
    fn = fn.replace("(anonymous namespace)", "{anon}")
    if len(fn) > n and "(" in fn:
        i = fn.index("(")
        depth, j = 0, i
        for j in range(i, len(fn)):
            depth += {"(": 1, ")": -1}.get(fn[j], 0)
            if depth == 0:
                break
        fn = fn[:i] + "(...)" + fn[j + 1 :]
    return fn if len(fn) <= n else fn[: n - 3] + "..."


def run_callgrind(ops, misses, workdir, timeout):
    out = os.path.join(workdir, "cg.out")
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    cmd = [
        "valgrind",
        "--tool=callgrind",
        "--instr-atstart=no",
        f"--callgrind-out-file={out}",
        sys.executable,
        os.path.abspath(__file__),
        "child",
        "--ops",
        str(ops),
        "--misses",
        str(misses),
    ]
    errpath = os.path.join(workdir, "stderr.txt")
    errf = open(errpath, "w")
    proc = subprocess.Popen(
        cmd,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=errf,
        text=True,
        env=env,
        cwd=workdir,
    )
    deadline = time.monotonic() + timeout
    dumps = {}
    try:
        for k in range(3):
            line = _readline(proc, deadline)
            if not line.startswith("READY "):
                raise RuntimeError(f"unexpected line from the profiled process: {line!r}")
            phase = line.split()[1]
            _ctl("-z", str(proc.pid))  # drop whatever a previous phase left uncounted
            _ctl("-i", "on", str(proc.pid))
            proc.stdin.write("GO\n")
            proc.stdin.flush()
            if _readline(proc, deadline) != "DONE":
                raise RuntimeError("profiled process did not finish its phase")
            _ctl("-d", phase, str(proc.pid))
            _ctl("-i", "off", str(proc.pid))
            dumps[phase] = out + f".{k + 1}"
            proc.stdin.write("NEXT\n")
            proc.stdin.flush()
        proc.stdin.close()
        proc.wait(max(5.0, deadline - time.monotonic()))
    except Exception as e:
        errf.flush()
        with open(errpath) as f:
            tail = [ln for ln in f.read().splitlines() if not ln.startswith("==")][-5:]
        raise RuntimeError(f"{e}; its stderr ends: {' | '.join(tail)}") from e
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        errf.close()
    missing = [p for p in dumps.values() if not os.path.exists(p)]
    if missing:
        raise RuntimeError(f"callgrind wrote no dump {missing}")
    return dumps


def _landmark(incl, pattern):
    return next(((ir, fn) for ir, fn, _ in incl if re.search(pattern, fn)), None)


def _summary(data, counts):
    """A few sentences computed from the dumps: what a hit costs against eager, and why."""
    out = []
    if "hits" in data and "local" in data:
        (hits, incl), _ = data["hits"]
        (local, _), _ = data["local"]
        h, e = hits / counts["hits"], local / counts["local"]
        out.append(
            f"- A captured op with a meta-cache hit costs {h:,.0f} instructions against "
            f"{e:,.0f} for the same op run eagerly on a CPU tensor ({h / e:.2f}x)."
        )
        fb = _landmark(incl, r"djinn::fallback\(")
        rec = _landmark(incl, r"djinn::.*record\(")
        meta = _landmark(incl, r"structured_add_Tensor::meta")
        if fb:
            part = (
                f"- djinn's own boxed fallback is {fb[0] / counts['hits']:,.0f} of them "
                f"({100.0 * fb[0] / hits:.0f} %)"
            )
            if rec:
                part += f", of which recording/encoding the node is {rec[0] / counts['hits']:,.0f}"
            out.append(
                part + "; the rest is PyTorch's Python binding, dispatcher and autograd "
                "layers that every eager op pays too"
                + (
                    f", plus ATen's structured meta (shape inference) at "
                    f"{meta[0] / counts['hits']:,.0f}"
                    if meta
                    else ""
                )
                + "."
            )
    if "misses" in data:
        (miss, incl), _ = data["misses"]
        m = miss / counts["misses"]
        line = f"- A miss (an op on a shape never seen) costs {m:,.0f} instructions per op"
        py = _landmark(incl, r"PythonKernelHolder::operator")
        if py:
            line += (
                f"; {100.0 * py[0] / miss:.0f} % of it under `PythonKernelHolder`, i.e. "
                "a Meta kernel implemented in Python (torch._meta_registrations / _refs) "
                "that the fallback redispatches to for shape inference"
            )
        out.append(line + ".")
    return out


def write_callgrind_md(md, dumps, ops, misses, elapsed):
    counts = {"hits": ops, "misses": misses, "local": ops}
    data = {ph: (annotate(p, True), annotate(p, False)) for ph, p in dumps.items()}
    lines = [
        "# Where the capture path's time goes (callgrind)",
        "",
        "`valgrind --tool=callgrind` on the capture micro-benchmark "
        f"(`benchmarks/profile_capture.py`): {ops} captured ops with meta-cache hits, {misses} "
        f"misses (each op on a new shape) and the same {ops} ops eagerly on a CPU tensor for "
        "reference. Instrumentation is switched on only around each phase "
        "(`callgrind_control -i on`), so import and setup are not counted; the embedded "
        "djinn-server is another process and is not traced. Counts are instructions (Ir) per "
        f"op, not time. Profiling took {elapsed:.0f} s. Written by `benchmarks/run.py` "
        "(--quick/--full).",
        "",
        "| phase | ops | Ir total | Ir per op |",
        "|---|---|---|---|",
    ]
    for ph, ((total, _), _) in data.items():
        lines.append(f"| {ph} | {counts[ph]} | {total:,} | {total / counts[ph]:,.0f} |")
    lines += ["", "## Summary", ""] + _summary(data, counts)
    for ph in ("hits", "misses"):
        if ph not in data:
            continue
        (total, incl), (_, excl) = data[ph]
        n = counts[ph]

        def pc(ir):
            return f"{100.0 * ir / max(1, total):.1f}"

        lines += [
            "",
            f"## {ph}: landmarks (inclusive)",
            "",
            "| function | what | Ir/op | % |",
            "|---|---|---|---|",
        ]
        for pat, what in LANDMARKS:
            hit = _landmark(incl, pat)
            if hit:
                lines.append(
                    f"| `{_short(hit[1], 90)}` | {what} | {hit[0] / n:,.0f} | {pc(hit[0])} |"
                )
        lines += [
            "",
            f"## {ph}: top inclusive functions",
            "",
            "| Ir/op | % | function | object |",
            "|---|---|---|---|",
        ]
        for ir, fn, lib in incl[:30]:
            lines.append(f"| {ir / n:,.0f} | {pc(ir)} | `{_short(fn)}` | {lib} |")
        lines += [
            "",
            f"## {ph}: top self (exclusive) functions",
            "",
            "| Ir/op | % | function | object |",
            "|---|---|---|---|",
        ]
        for ir, fn, lib in excl[:20]:
            lines.append(f"| {ir / n:,.0f} | {pc(ir)} | `{_short(fn)}` | {lib} |")
    with open(md, "w") as f:
        f.write("\n".join(lines) + "\n")
    return {
        ph: {"ops": counts[ph], "ir_total": d[0][0], "ir_per_op": d[0][0] / counts[ph]}
        for ph, d in data.items()
    }


def write_cprofile_md(md, ops, why):
    """Fallback: cProfile of the hits loop in this process (Python-level only)."""
    import cProfile
    import io
    import pstats

    import torch

    import djinn  # noqa: F401 - registers 'remote' when run standalone

    xr = torch.randn(64, device="remote")
    torch.remote.synchronize()

    def chain(n):
        y = xr
        for _ in range(n):
            y = y + 1.0
        return y

    chain(ops)
    torch.remote.synchronize()
    pr = cProfile.Profile()
    pr.enable()
    chain(ops)
    pr.disable()
    torch.remote.synchronize()
    s = io.StringIO()
    pstats.Stats(pr, stream=s).sort_stats("cumulative").print_stats(25)
    with open(md, "w") as f:
        f.write(
            "# Where the capture path's time goes (cProfile fallback)\n\n"
            f"callgrind could not be used ({why}); this is cProfile over {ops} captured "
            "ops with "
            "meta-cache hits. cProfile sees Python frames only: the whole native capture path "
            "(dispatcher, djinn's fallback, encoding) shows up as the `add` builtin.\n\n```\n"
            + s.getvalue()
            + "```\n"
        )
    return {"fallback": "cProfile", "reason": why}


def profile(md, ops=2000, misses=300, timeout=300, log=print):
    """Write ``md``; returns a summary dict for the JSON."""
    tools = [
        t for t in ("valgrind", "callgrind_control", "callgrind_annotate") if not shutil.which(t)
    ]
    why = f"missing {', '.join(tools)}" if tools else None
    if not why:
        t0 = time.monotonic()
        with tempfile.TemporaryDirectory(prefix="djinn-cg-") as wd:
            try:
                dumps = run_callgrind(ops, misses, wd, timeout)
                summary = write_callgrind_md(md, dumps, ops, misses, time.monotonic() - t0)
                return {"tool": "callgrind", **summary}
            except Exception as e:  # noqa: BLE001 - any failure falls back to cProfile
                why = f"callgrind failed: {type(e).__name__}: {e}"
                log(f"  {why}; falling back to cProfile")
    return write_cprofile_md(md, ops, why)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("role", choices=["child", "run"])
    ap.add_argument("--ops", type=int, default=2000)
    ap.add_argument("--misses", type=int, default=300)
    ap.add_argument("--out", default=os.path.join(HERE, "results", "PROFILE.md"))
    args = ap.parse_args()
    if args.role == "child":
        return child(args)
    print(profile(args.out, args.ops, args.misses))
    return 0


if __name__ == "__main__":
    sys.exit(main())

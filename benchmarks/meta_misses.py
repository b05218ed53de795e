"""Capture cost of meta-cache misses, op by op, with local eager beside it.

Each op runs on shapes never seen before (views of one buffer made outside the timed
region, as in workloads.capture_misses), so every remote call misses the client's meta
cache and infers its outputs. Capture only: the fragment ships outside the timed region.
Prints one line per op: µs/op for local eager and for djinn, their ratio, how many of
djinn's misses per op took a C++ shape function (csrc/torch/RemoteMeta.cpp) and how many
the Meta device; with --compare also djinn with the shape functions off (the Meta device
path, as before them), in the same process. Writes benchmarks/results/meta_misses.json
and .md. Run alone (the suite's row "capture cost per op, meta-cache miss (new shape)" is
the `add` line here):

    .venv/bin/python benchmarks/meta_misses.py [--ops add,mm] [--n 200] [--compare]
"""

import argparse
import json
import os
import statistics
import sys
import time

# this checkout's djinn, not another one pip may have registered
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("DJINN_SERVER_ARGS", "--device cpu")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch

import djinn  # registers 'remote'

BASE = 100_003  # the `add` row's lengths, as in workloads.capture_misses
W = 16  # feature width of the other (2-d) cases, whose row counts run from 1 up


def _buf(dev, n, dtype=torch.float32):
    return torch.zeros(n, device=dev, dtype=dtype)


# name -> (setup(dev, count) -> state, inputs(state, k) -> args, op(*args))
def _flat(dev, count):
    return {"x": _buf(dev, BASE + count + 1)}


def _rows(dev, count):
    n = (count + 1) * W
    return {
        "x": _buf(dev, n),
        "y": _buf(dev, n),
        "c": torch.zeros(n, device=dev, dtype=torch.bool),
        "w": torch.zeros(W, W, device=dev),
        "b": torch.zeros(W, device=dev),
        "idx": torch.zeros(n, device=dev, dtype=torch.long),
        "emb": torch.zeros(64, W, device=dev),
    }


def _m(s, key, k):
    return s[key][: k * W].view(k, W)


CASES = {
    "add": (_flat, lambda s, k: (s["x"][: BASE + k],), lambda v: v + 1.0),
    "mul_bcast": (_rows, lambda s, k: (_m(s, "x", k), s["b"]), lambda a, b: a * b),
    "sub_t": (_rows, lambda s, k: (_m(s, "x", k).t(), _m(s, "y", k).t()), lambda a, b: a - b),
    "div_": (_rows, lambda s, k: (_m(s, "x", k),), lambda a: a.div_(2.0)),
    "pow": (_flat, lambda s, k: (s["x"][:k],), lambda v: v.pow(2)),
    "where": (
        _rows,
        lambda s, k: (_m(s, "c", k), _m(s, "x", k), _m(s, "y", k)),
        lambda c, a, b: torch.where(c, a, b),
    ),
    "exp": (_flat, lambda s, k: (s["x"][:k],), torch.exp),
    "relu": (_flat, lambda s, k: (s["x"][:k],), torch.relu),
    "silu": (_flat, lambda s, k: (s["x"][:k],), torch.nn.functional.silu),
    "sum_dim": (_rows, lambda s, k: (_m(s, "x", k),), lambda a: a.sum(-1)),
    "mean_keep": (_rows, lambda s, k: (_m(s, "x", k),), lambda a: a.mean(-1, keepdim=True)),
    "amax": (_rows, lambda s, k: (_m(s, "x", k),), lambda a: a.amax(-1)),
    "softmax": (_rows, lambda s, k: (_m(s, "x", k),), lambda a: a.softmax(-1)),
    "log_softmax": (_rows, lambda s, k: (_m(s, "x", k),), lambda a: a.log_softmax(-1)),
    "mm": (_rows, lambda s, k: (_m(s, "x", k), s["w"]), torch.mm),
    "linear": (
        _rows,
        lambda s, k: (_m(s, "x", k), s["w"], s["b"]),
        torch.nn.functional.linear,
    ),
    "bmm": (
        _rows,
        lambda s, k: (_m(s, "x", k).view(k, 1, W), s["w"][:1].view(1, W, 1).expand(k, W, 1)),
        torch.bmm,
    ),
    "cat": (_rows, lambda s, k: (_m(s, "x", k), _m(s, "y", k)), lambda a, b: torch.cat([a, b])),
    "embedding": (
        _rows,
        lambda s, k: (s["idx"][:k], s["emb"]),
        torch.nn.functional.embedding,
    ),
    "index_select": (
        _rows,
        lambda s, k: (s["emb"], s["idx"][:k]),
        lambda e, i: e.index_select(0, i),
    ),
    "layer_norm": (
        _rows,
        lambda s, k: (_m(s, "x", k), s["b"]),
        lambda a, w: torch.nn.functional.layer_norm(a, (W,), w, w),
    ),
    "rms_norm": (
        _rows,
        lambda s, k: (_m(s, "x", k), s["b"]),
        lambda a, w: torch.nn.functional.rms_norm(a, (W,), w),
    ),
    "to_half": (_flat, lambda s, k: (s["x"][:k],), lambda v: v.to(torch.float16)),
    "copy_": (_rows, lambda s, k: (_m(s, "x", k), _m(s, "y", k)), lambda a, b: a.copy_(b)),
    "reshape_t": (_rows, lambda s, k: (_m(s, "x", k),), lambda a: a.t().reshape(-1)),
}


def measure(name, n, rep, fast=True):
    """(local µs/op, djinn µs/op, shape-function misses, Meta-device misses) for one op."""
    setup, inputs, op = CASES[name]
    prev = djinn._C._meta_fast(fast)
    count = n * (rep + 1)
    sr, sl = setup("remote", count), setup("cpu", count)
    torch.remote.synchronize()
    djinn._C._meta_cache_clear()
    t_djinn, t_local = [], []
    c0 = djinn._C._meta_counters()
    for r in range(rep + 1):  # round 0 only warms the code paths
        ks = range(1 + r * n, 1 + (r + 1) * n)
        ar = [inputs(sr, k) for k in ks]
        al = [inputs(sl, k) for k in ks]
        torch.remote.synchronize()
        t0 = time.perf_counter()
        for a in ar:
            op(*a)
        t1 = time.perf_counter()
        torch.remote.synchronize()
        t2 = time.perf_counter()
        for a in al:
            op(*a)
        t3 = time.perf_counter()
        if r:
            t_djinn.append(t1 - t0)
            t_local.append(t3 - t2)
    c1 = djinn._C._meta_counters()
    djinn._C._meta_fast(prev)
    per = n * (rep + 1)
    return (
        1e6 * statistics.median(t_local) / n,
        1e6 * statistics.median(t_djinn) / n,
        (c1["fast"] - c0["fast"]) / per,
        (c1["slow"] - c0["slow"]) / per,
    )


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ops", default=",".join(CASES), help="comma-separated: " + ", ".join(CASES))
    ap.add_argument("--n", type=int, default=200, help="ops per timed round")
    ap.add_argument("--rep", type=int, default=11, help="timed rounds (median)")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    ap.add_argument(
        "--compare",
        action="store_true",
        help="also time each op with the shape functions off (the Meta device path: before)",
    )
    args = ap.parse_args()
    torch.set_num_threads(1)
    rows = []
    load = os.getloadavg()
    print(f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; {args.n} ops x {args.rep}")
    head = f"{'op':14s} {'local us/op':>12s} {'djinn us/op':>12s} {'ratio':>7s} {'C++/Meta per op':>16s}"
    print(head + (f" {'Meta path us/op':>16s}" if args.compare else ""))
    measure("add", 50, 1)  # the embedded server's start and first fragments: not timed
    for name in args.ops.split(","):
        local, dj, nf, ns = measure(name, args.n, args.rep)
        row = {"op": name, "local_us": local, "djinn_us": dj, "fast_per_op": nf, "slow_per_op": ns}
        line = f"{name:14s} {local:12.1f} {dj:12.1f} {dj / local:7.2f} {nf:8.1f}/{ns:<7.1f}"
        if args.compare:
            row["djinn_meta_path_us"] = measure(name, args.n, args.rep, fast=False)[1]
            line += f" {row['djinn_meta_path_us']:16.1f}"
        rows.append(row)
        print(line, flush=True)
    os.makedirs(args.out, exist_ok=True)
    meta = {"load": load, "n": args.n, "rep": args.rep, "torch": torch.__version__}
    with open(os.path.join(args.out, "meta_misses.json"), "w") as f:
        json.dump({**meta, "rows": rows}, f, indent=1)
    with open(os.path.join(args.out, "meta_misses.md"), "w") as f:
        f.write(_markdown(meta, rows, args.compare))
    return 0


def _markdown(meta, rows, compare):
    load = " ".join(f"{x:.2f}" for x in meta["load"])
    out = [
        "# Capture cost of meta-cache misses, op by op",
        "",
        f"`benchmarks/meta_misses.py`: each op on shapes never seen before, {meta['n']} ops "
        f"per round, median of {meta['rep']} rounds, capture only; torch {meta['torch']}, "
        f"load average {load} at the start (this machine is shared). **C++/Meta**: misses "
        "per op inferred by a C++ shape function / on the Meta device (µs are per call: "
        "`rms_norm` is six captured ops, `linear` two)."
        + (" **Meta path**: djinn with the shape functions off, same process." if compare else ""),
        "",
        "| op | local µs/op | djinn µs/op | djinn÷local | C++/Meta | "
        + ("Meta path µs/op |" if compare else ""),
        "|---|---:|---:|---:|---:|" + ("---:|" if compare else ""),
    ]
    for r in rows:
        line = (
            f"| {r['op']} | {r['local_us']:.1f} | {r['djinn_us']:.1f} | "
            f"{r['djinn_us'] / r['local_us']:.2f}× | {r['fast_per_op']:.0f}/{r['slow_per_op']:.0f} |"
        )
        if compare:
            line += f" {r['djinn_meta_path_us']:.1f} |"
        out.append(line)
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    sys.exit(main())

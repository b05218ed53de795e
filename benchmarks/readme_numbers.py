"""The README's "Numbers" table, written from benchmarks/results/ (no hand-typed figures).

Reads the newest ``<machine>-<date>.json`` that ``run.py`` wrote (not a smoke run) and
``memory.json`` from ``memory_bench.py``, and replaces what lies between the
``<!-- bench:begin -->`` and ``<!-- bench:end -->`` markers of README.md. ``make bench``
runs it after both; ``--check`` exits 1 when the README differs from what the results say.

    python benchmarks/readme_numbers.py [--results DIR] [--readme PATH] [--check]
"""

import argparse
import glob
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"


def _num(v, unit=""):
    if v is None:
        return ""
    a = abs(v)
    s = f"{v:,.0f}" if a >= 100 else f"{v:.1f}" if a >= 10 else f"{v:.2f}" if a >= 1 else f"{v:.3g}"
    return f"{s} {unit}".strip()


def _ratio(a, b):
    return f"{a / b:.2f}×" if a is not None and b else ""


UNITS = {"us": "µs", "us/op": "µs", "ms": "ms", "bytes": "B", "MB": "MB", "tok/s": "tok/s"}


def latest(results):
    paths = [
        p
        for p in glob.glob(os.path.join(results, "*-*.json"))
        if not p.endswith("-smoke.json") and os.path.basename(p)[0] != "."
    ]
    paths = [p for p in paths if "rows" in json.load(open(p))]
    if not paths:
        raise SystemExit(f"no run.py results in {results}: run `make bench` first")
    return max(paths, key=lambda p: (json.load(open(p))["date"], os.path.getmtime(p)))


def table(res, mem):
    rows = {r["name"]: r for r in res["rows"]}

    def find(pred):
        return next((r for r in res["rows"] if pred(r)), None)

    out = [
        "| workload | local | djinn | rpc | naive | raw ZeroMQ | djinn÷local | djinn÷rpc "
        "| djinn÷ZeroMQ | target (DESIGN §7; issue 11 where it is stricter) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]

    def line(r, label=None):
        if r is None:
            return
        u = UNITS.get(r["unit"], r["unit"])
        v = r["values"]
        cells = []
        for s in ("local", "djinn", "rpc", "naive", "zmq"):
            c = _num(v[s], u)
            if c and s in r.get("computed", {}):
                c += " †"
            cells.append(c)
        t = r["target"] or ""
        if t and r["target_met"] is not None:
            t += ": met" if r["target_met"] else ": missed"
        out.append(
            f"| {label or r['name']} | "
            + " | ".join(cells)
            + f" | {_ratio(v['djinn'], v['local'])} | {_ratio(v['djinn'], v['rpc'])} | "
            f"{_ratio(v['djinn'], v['zmq'])} | {t} |"
        )

    line(rows.get("capture cost per op, meta-cache hit"))
    line(rows.get("capture cost per op, meta-cache miss (new shape)"))
    line(rows.get("1-op round trip x.add(1).item()"), "1-op round trip `x.add(1).item()`")
    for d in ("upload", "download"):
        line(rows.get(f"{d} 64 MiB"), f"{d} 64 MiB (`.to('remote')` / `.cpu()`)")
    for r in res["rows"]:
        if r["group"] == "security":
            line(r)
    line(find(lambda r: r["name"].startswith("MLP") and r["name"].endswith("batch 1")))
    line(find(lambda r: r["name"].startswith("MLP") and r["name"].endswith("batch 32")))
    line(find(lambda r: r["group"] == "transformer" and "decode per-token p50" in r["name"]))
    line(find(lambda r: r["group"] == "transformer" and r["unit"] == "bytes"))
    line(find(lambda r: r["group"] == "transformer" and "bytes sent per decode" in r["name"]))
    line(find(lambda r: r["group"] == "transformer" and "generate() per-token p50" in r["name"]))
    line(find(lambda r: r["group"] == "transformer" and "generate() bytes sent" in r["name"]))
    line(find(lambda r: r["group"] == "large" and "forward" in r["name"]))
    agg = [r for r in res["rows"] if r["group"] == "multitenant" and "aggregate" in r["name"]]
    line(agg[-1] if agg else None)
    line(find(lambda r: "weights held" in r["name"]))

    notes = []
    if mem:
        w, wo = mem["decode_with_plan_cache"], mem["decode_without_plan_cache"]
        heap = next(r for r in mem["fragmentation"]["results"] if r["allocator"].startswith("djn"))
        glibc = next(
            r for r in mem["fragmentation"]["results"] if r["allocator"] == "glibc malloc (default)"
        )
        m = mem["model"]
        out.append(
            f"| Data-segment fragmentation after KV churn | glibc {100 * glibc['ext_frag']:.1f} % "
            f"| {100 * heap['ext_frag']:.1f} % | | | | | | | ≤ 5 % |"
        )
        for tag, d in (("plan cache", w), ("no plan cache", wo)):
            if d.get("plan_high_water") and d.get("plan_reserved"):
                out.append(
                    f"| stack slab, decode h{m['hidden']}×{m['layers']} ({tag}): measured "
                    f"high-water ÷ planned peak | | {d['plan_high_water'] / d['plan_reserved']:.3f} "
                    f"| | | | | | | bump allocator ÷ lower bound: "
                    f"{d['plan_bump'] / d['plan_lb']:.1f}× |"
                )
        out.append(
            f"| server scheduling per decode fragment (h{m['hidden']}×{m['layers']}) | | hit "
            f"{w['sched_us_hit']} µs, miss {wo['sched_us_miss']} µs | | | | | | | hit < 50 µs |"
        )
        out.append(
            f"| bytes sent per decode step, static KV cache | | "
            f"{_num(w['bytes_sent_per_token'], 'B')} plan cache / "
            f"{_num(wo['bytes_sent_per_token'], 'B')} without | | | | | | | |"
        )
        notes.append(
            "The stack-slab rows compare the slab bytes the executor really reached while "
            "running planned fragments (the server's `plan_high_water_sum`) with the planned "
            "peaks of the same fragments (`plan_reserved_sum`)."
        )
    if any(r.get("computed") for r in res["rows"]):
        notes.append(
            "† computed, not measured: "
            + "; ".join(
                f"{r['name']}, {s}: {how}"
                for r in res["rows"]
                for s, how in r.get("computed", {}).items()
            )
            + "."
        )
    head = (
        f"Generated by `benchmarks/readme_numbers.py` from "
        f"[{os.path.basename(res['_path'])}](benchmarks/results/{os.path.basename(res['_path'])}) "
        f"and [memory.json](benchmarks/results/memory.json): `make bench` of {res['date']} on "
        f"`{res['machine']}` ({res['cpu_count']} CPUs, server device `{res['server_device']}`, "
        f"torch {res['torch']}), one run, every system on the same machine at the same time."
    )
    return "\n".join([head, ""] + out + ([""] + notes if notes else []))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", default=os.path.join(HERE, "results"))
    ap.add_argument("--readme", default=os.path.join(REPO, "README.md"))
    ap.add_argument("--check", action="store_true")
    a = ap.parse_args()
    path = latest(a.results)
    res = json.load(open(path))
    res["_path"] = path
    mp = os.path.join(a.results, "memory.json")
    mem = json.load(open(mp)) if os.path.exists(mp) else None
    text = open(a.readme).read()
    if BEGIN not in text or END not in text:
        raise SystemExit(f"{a.readme}: no {BEGIN} ... {END} block")
    i, j = text.index(BEGIN) + len(BEGIN), text.index(END)
    new = text[:i] + "\n" + table(res, mem) + "\n" + text[j:]
    if a.check:
        if new != text:
            print("README numbers differ from benchmarks/results: run readme_numbers.py")
            return 1
        return 0
    with open(a.readme, "w") as f:
        f.write(new)
    print(f"README numbers from {os.path.basename(path)} and memory.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())

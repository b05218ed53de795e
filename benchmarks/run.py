"""Djinn benchmarks: the same work in four systems, side by side, in one run.

- ``local``: eager PyTorch in this process (cpu; cuda with --gpu): the floor;
- ``djinn``: ``torch.device('remote')`` on an embedded djinn-server over loopback TCP
  (``--device cpu`` unless --gpu, so it computes where ``local`` does), or the server
  named by ``DJINN_SERVER``;
- ``rpc``: ``torch.distributed.rpc`` (TensorPipe), the model held by a worker process;
- ``naive``: a server process that receives the pickled module once and, per request,
  pickled inputs, and returns every output in full (``baselines.py``);
- ``zmq``: raw ZeroMQ DEALER/ROUTER between two processes (``wire.py``): the floor of the
  round trip and of bulk transfers, measured over the transport djinn uses in that row.

Workloads (``workloads.py``, ``multitenant.py``): capture cost (meta-cache hits and
misses), 1-op round trip, upload/download bandwidth, CURVE on vs off and the cost of
scrubbing memory (``security`` rows), MLP forward, a Llama prefill + decode
loop with a KV cache, a 100+ MB forward, and 1..8 client processes sharing one server.
``--quick`` and ``--full`` also profile the capture path under callgrind
(``profile_capture.py`` -> PROFILE.md).

Prints a table with djinn / local, djinn / rpc, djinn / naive and the DESIGN section 7
target of each row, and writes to ``--out`` (default benchmarks/results/):
``<machine>-<date>.json``, ``RESULTS.md`` and ``<machine>-*.png`` charts; ``--smoke``
writes ``*-smoke.*`` names instead. Timings are medians; nothing here asserts a time.

    python benchmarks/run.py --quick      # make bench (under 10 minutes on 2 cores)
    python benchmarks/run.py --full       # make bench-full: bigger sizes, more repeats
    python benchmarks/run.py --quick --gpu  # make bench-gpu: local on cuda, server on its GPUs
    python benchmarks/run.py --smoke      # tiny sizes, one pass of everything (tests)
"""

import argparse
import datetime
import json
import os
import platform
import sys
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)


class Ctx:
    """What every workload needs: mode, local device, baseline clients, chart series."""

    def __init__(self, mode, gpu):
        self.mode = mode
        self.gpu = gpu
        self.dev = "cuda" if gpu else "cpu"
        self.clients = {}
        self.series = {}
        self.t0 = time.monotonic()

    def log(self, msg):
        print(f"[{time.monotonic() - self.t0:6.1f}s] {msg}", flush=True)


def _fmt(v):
    if v is None:
        return "-"
    a = abs(v)
    if a >= 1000:
        return f"{v:,.0f}"
    if a >= 10:
        return f"{v:.1f}"
    if a >= 1:
        return f"{v:.2f}"
    return f"{v:.3g}"


def _ratio(r):
    return "-" if r is None else (f"{r:.2f}x" if r < 100 else f"{r:,.0f}x")


def _target(r):
    if not r["target"]:
        return ""
    if r["target_met"] is None:
        return r["target"]
    return f"{r['target']} **{'met' if r['target_met'] else 'missed'}**"


def _unit(r):
    return r["unit"] + (" ↑" if r["better"] == "higher" else "")


COLS = ("local", "djinn", "rpc", "naive", "zmq")
RATIOS = ("djinn/local", "djinn/rpc", "djinn/naive", "djinn/zmq")


def _cell(r, c):
    """A value, marked † when it is computed rather than measured (``row['computed']``)."""
    v = _fmt(r["values"][c])
    return v + " †" if c in r.get("computed", {}) and r["values"][c] is not None else v


def print_table(rows):
    w = max(len(r["name"]) for r in rows)
    w = min(w, 78)
    hdr = (
        f"{'workload':{w}s} {'unit':8s}"
        + "".join(f"{c:>10s}" for c in COLS)
        + "".join(f"{c.replace('/', '÷'):>13s}" for c in RATIOS)
        + "  target"
    )
    print(hdr)
    print("-" * len(hdr))
    for r in rows:
        name = r["name"] if len(r["name"]) <= w else r["name"][: w - 1] + "…"
        t = r["target"]
        if t and r["target_met"] is not None:
            t += " (met)" if r["target_met"] else " (MISSED)"
        print(
            f"{name:{w}s} {_unit(r):8s}"
            + "".join(f"{_cell(r, c):>10s}" for c in COLS)
            + "".join(f"{_ratio(r['ratios'][k]):>13s}" for k in RATIOS)
            + f"  {t}"
        )


def _notes(rows):
    """Sentences for what the table cannot show: bytes, token agreement, memory, GB/s."""
    notes = []
    for r in rows:
        e = r["extra"]
        for system, how in r.get("computed", {}).items():
            notes.append(f"- {r['name']}: {system} † is computed, not measured: {how}.")
        if "curve_off" in e:
            notes.append(
                f"- {r['name']}: CURVE on ÷ off, djinn {_ratio(e['curve_cost']['djinn'])}, raw "
                f"ZeroMQ {_ratio(e['curve_cost']['zmq'])} (off: djinn "
                f"{_fmt(e['curve_off']['djinn'])}, zmq {_fmt(e['curve_off']['zmq'])} {r['unit']})."
            )
        if "scrub_bytes" in e:
            notes.append(
                f"- {r['name']}: the server zeroed {e['scrub_bytes'] / 2**20:,.0f} MiB in "
                f"{e['scrub_ns'] / 1e6:,.1f} ms during this run ({e['how']})."
            )
        if e.get("djinn_reduction_vs_full_return") is not None:
            notes.append(
                f"- Decode bytes: djinn moves {e['djinn_reduction_vs_full_return'] * 100:.2f} % "
                f"fewer bytes per step than returning every output "
                f"({e['full_return_bytes_per_step']:,.0f} B of logits + KV cache per step); of "
                f"djinn's {_fmt(r['values']['djinn'])} B per step, "
                f"{_fmt(e['djinn_sent_per_step'])} B are sent (the captured graph) and the rest "
                f"received. {e['note']}."
            )
        if "first_run_p50_ms" in e:
            first = ", ".join(f"{k} {v:.2f}" for k, v in e["first_run_p50_ms"].items())
            notes.append(
                f"- Greedy tokens identical to local: {e['tokens_match_local']}. Decode "
                f"rows pool {e['runs']} timed run(s) after one warm-up run; first-run "
                f"p50 (ms): {first}."
            )
        if "default generate() per-token p50" in r["name"]:
            notes.append(
                f"- Hugging Face's default generate(), local and djinn: greedy tokens "
                f"identical: {e['tokens_match_local']}. {e['note']}; the step-loop rows above "
                "run the baselines, which hold one step, on the same steps."
            )
        if "effective GB/s" in e:
            gbs = ", ".join(f"{k} {v:.2f}" for k, v in e["effective GB/s"].items())
            notes.append(
                f"- {r['name']}: effective weight bandwidth (weight bytes / forward "
                f"time), GB/s: {gbs}."
            )
        if "djinn_upload_already_on_server_ms" in e and "GB/s" in e:
            notes.append(
                f"- Uploading the same {e['weight_bytes'] / 1e6:.0f} MB of weights again "
                "while the server holds them (a second session of one model): "
                f"{_fmt(e['djinn_upload_already_on_server_ms'])} ms, "
                f"{e['djinn_upload_already_on_server_bytes']:,} bytes uploaded (the "
                "server's content-addressed text segment)."
            )
        if r["group"] == "multitenant" and "p99_ms" in e and "p50" in r["name"]:
            t = e["server_text_fields"]
            mb = lambda k: _fmt((e[k] or 0) / 1e6)  # noqa: E731
            notes.append(
                f"- {e['tenants']} tenant(s): p99 per-token ms local {_fmt(e['p99_ms']['local'])}, "
                f"djinn {_fmt(e['p99_ms']['djinn'])}; server memory with all tenants parked: "
                f"bytes_in_use {mb('server_bytes_in_use')} MB + text_bytes "
                f"{mb('server_text_bytes')} MB = {mb('server_bytes_held')} MB vs N x model "
                f"{mb('n_x_model_bytes')} MB ({_fmt(e['weight_copies_on_server'])} copies)"
                + (f"; text fields {t}" if t else "")
                + "."
            )
    bw = [r for r in rows if r["group"] == "bandwidth"]
    if bw:
        parts = [
            "{}: {}".format(
                r["name"], ", ".join(f"{k} {v:.2f}" for k, v in r["extra"]["GB/s"].items())
            )
            for r in bw
        ]
        notes.append("- Bandwidth, GB/s (" + "; ".join(parts) + ").")
        dedup = [
            f"{r['name']} {_fmt(r['extra']['djinn_upload_content_already_on_server_ms'])} ms"
            f" ({r['extra']['djinn_upload_content_already_on_server_bytes']:,.0f} B uploaded)"
            for r in bw
            if "djinn_upload_content_already_on_server_ms" in r["extra"]
        ]
        if dedup:
            notes.append(
                "- djinn uploads of content the server already holds: " + "; ".join(dedup) + "."
            )
    return notes


def markdown(result, charts, profile_md):
    rows = result["rows"]
    out = [
        "# Djinn benchmark results",
        "",
        f"Machine `{result['machine']}` ({result['cpu_count']} CPUs), server device "
        f"`{result['server_device']}`, local device `{result['local_device']}`, torch "
        f"{result['torch']}, transformers {result['transformers']}, {result['date']}, mode "
        f"`{result['mode']}`, intra-op threads per process {result['threads_setting']}, "
        f"{result['elapsed_s']:.0f} s. Generated by `benchmarks/run.py`; the raw numbers are in "
        "the JSON next to this file.",
        "",
        "Systems, all on this machine in the same run: **local** = eager PyTorch in the "
        "benchmark process (the floor); **djinn** = the same code on `torch.device('remote')`, "
        "served by djinn-server over loopback TCP; **rpc** = `torch.distributed.rpc` "
        "(TensorPipe, `uv` transport), the model held by a worker process and called with "
        "`rpc_sync`, outputs returned; **naive** = a server process that receives the pickled "
        "module once, then pickled inputs per request and returns every output pickled; "
        "**zmq** = raw ZeroMQ DEALER/ROUTER between two processes (pyzmq, zero-copy frames), "
        "the wire's floor, over the transport djinn uses in that row. "
        "A value marked † is computed, not measured (how: in the notes and the JSON's "
        "`computed`). "
        "Ratios are djinn divided by the other system (below 1: djinn is faster/smaller; rows "
        "marked ↑ are throughputs, where above 1 is better). Targets are DESIGN.md section 7.",
        "",
        "| workload | unit | local | djinn | rpc | naive | zmq | djinn÷local | djinn÷rpc "
        "| djinn÷naive | djinn÷zmq | target |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        q = r["ratios"]
        out.append(
            f"| {r['name']} | {_unit(r)} | "
            + " | ".join(_cell(r, c) for c in COLS)
            + " | "
            + " | ".join(_ratio(q[k]) for k in RATIOS)
            + f" | {_target(r)} |"
        )
    met = [r for r in rows if r["target_met"] is not None]
    out += ["", f"Targets met: {sum(r['target_met'] for r in met)} of {len(met)}."]
    notes = _notes(rows)
    if notes:
        out += ["", "## Notes", ""] + notes
    if result["errors"]:
        out += ["", "## Workloads that failed", ""]
        out += [f"- {k}: `{v.strip().splitlines()[-1]}`" for k, v in result["errors"].items()]
    if result["skipped"]:
        out += ["", "## Skipped", ""] + [f"- {k}: {v}" for k, v in result["skipped"].items()]
    if charts:
        out += ["", "## Charts", ""]
        out += [f"![{os.path.basename(c)}]({os.path.basename(c)})" for c in charts]
    if profile_md:
        name = os.path.basename(profile_md)
        out += ["", f"Where the client's capture time goes: [{name}]({name})."]
    return "\n".join(out) + "\n"


def main():
    ap = argparse.ArgumentParser(description="Djinn benchmarks (see the module docstring)")
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--quick", action="store_true", help="make bench: the default")
    g.add_argument("--full", action="store_true", help="bigger models and sizes, more repeats")
    g.add_argument(
        "--smoke", action="store_true", help="tiny sizes, one pass of everything (tests)"
    )
    ap.add_argument(
        "--gpu", action="store_true", help="local baseline on cuda; server on its default devices"
    )
    ap.add_argument("--out", default=os.path.join(HERE, "results"))
    ap.add_argument("--only", default="", help="comma-separated workloads to run (default: all)")
    ap.add_argument("--no-profile", action="store_true", help="skip the callgrind profile")
    ap.add_argument(
        "--threads",
        type=int,
        default=None,
        help="intra-op threads of every process (local, servers, tenants); "
        "default 1 on machines with 4 CPUs or fewer, else PyTorch's default",
    )
    args = ap.parse_args()
    known = {
        "capture_hits",
        "capture_misses",
        "round_trip",
        "bandwidth",
        "security",
        "mlp_b1",
        "mlp_b32",
        "transformer",
        "large",
        "multitenant",
        "profile",
    }
    unknown = {s for s in args.only.split(",") if s} - known
    if unknown:  # before any server or baseline process starts
        ap.error(
            f"--only: unknown workload(s) {', '.join(sorted(unknown))}; choose from {', '.join(sorted(known))}"
        )
    mode = "smoke" if args.smoke else ("full" if args.full else "quick")

    # Client, djinn-server and the baseline servers share the machine's cores. With two
    # OpenMP threads in each of 3-4 busy processes on a small machine, one descheduled
    # thread stalls a whole parallel region for a time slice (milliseconds) and the
    # numbers become noise; one thread each is the fair, stable setting there. Children
    # (the embedded server included) inherit it through the environment.
    import common as C

    threads = args.threads if args.threads is not None else (1 if C.cpu_count() <= 4 else 0)
    if threads > 0:
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[var] = str(threads)

    # Compute where local does: without --gpu the embedded server runs on the CPU even on a
    # GPU machine. Set before djinn connects (lazily, at the first use of 'remote').
    if not args.gpu and "DJINN_SERVER" not in os.environ:
        os.environ.setdefault("DJINN_SERVER_ARGS", "--device cpu")

    import torch
    import transformers

    import djinn  # noqa: F401 - registers 'remote'
    import baselines
    import multitenant
    import profile_capture
    import workloads as W

    if args.gpu and not torch.cuda.is_available():
        print("--gpu: torch.cuda is not available here", file=sys.stderr)
        return 2
    if threads > 0:
        torch.set_num_threads(threads)
    ctx = Ctx(mode, args.gpu)
    ctx.threads = threads
    torch.remote.init()
    server_device = torch.remote.device_name(0)
    ctx.log(
        f"mode {mode}; local on {ctx.dev}; djinn server {djinn.remote.endpoint()} "
        f"({server_device}); {C.cpu_count()} CPUs, torch threads {torch.get_num_threads()}"
    )

    errors, skipped = {}, {}
    for kind, cls in (("naive", baselines.NaiveClient), ("rpc", baselines.RpcClient)):
        try:
            ctx.clients[kind] = cls(device=ctx.dev)
        except Exception as e:  # noqa: BLE001 - the run goes on without that baseline
            skipped[kind] = f"baseline did not start: {type(e).__name__}: {e}"
            ctx.log(skipped[kind])
    plan = [
        ("capture_hits", W.capture_hits),
        ("capture_misses", W.capture_misses),
        ("round_trip", W.round_trip),
        ("bandwidth", W.bandwidth),
        ("security", W.security),
        ("mlp_b1", lambda c: W.mlp(c, 1)),
        ("mlp_b32", lambda c: W.mlp(c, 32)),
        ("transformer", W.transformer),
        ("large", W.large),
    ]
    only = {s for s in args.only.split(",") if s}
    rows = []
    try:
        for name, fn in plan:
            if only and name not in only:
                continue
            ctx.log(f"{name} ...")
            try:
                rows += fn(ctx)
            except Exception:  # noqa: BLE001 - record, keep going, exit non-zero at the end
                errors[name] = traceback.format_exc()
                ctx.log(f"{name} FAILED:\n{errors[name]}")
    finally:
        for c in ctx.clients.values():
            try:
                c.close()
            except Exception as e:  # noqa: BLE001
                ctx.log(f"closing {c.name}: {e}")
    if not only or "multitenant" in only:
        ctx.log("multitenant ...")
        try:
            rows += multitenant.run(ctx)
        except Exception:  # noqa: BLE001
            errors["multitenant"] = traceback.format_exc()
            ctx.log(f"multitenant FAILED:\n{errors['multitenant']}")

    os.makedirs(args.out, exist_ok=True)
    machine = C.machine_name(args.gpu)
    date = datetime.date.today().isoformat()
    suffix = "-smoke" if mode == "smoke" else ""
    profile_md, profile = None, None
    if mode != "smoke" and not args.no_profile and (not only or "profile" in only):
        ctx.log("profile (callgrind) ...")
        profile_md = os.path.join(args.out, "PROFILE.md")
        try:
            profile = profile_capture.profile(
                profile_md, ops=2000, misses=300, timeout=300, log=ctx.log
            )
        except Exception:  # noqa: BLE001
            errors["profile"] = traceback.format_exc()
            profile_md = None

    result = {
        "machine": machine,
        "date": date,
        "mode": mode,
        "gpu": args.gpu,
        "server_device": server_device,
        "local_device": ctx.dev,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "cpu_count": C.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "threads_setting": threads or "pytorch default",
        "systems": ["local", "djinn"] + [k for k in ("rpc", "naive") if k not in skipped] + ["zmq"],
        "rows": rows,
        "series": ctx.series,
        "profile": profile,
        "errors": errors,
        "skipped": skipped,
        "elapsed_s": time.monotonic() - ctx.t0,
    }
    import charts

    pngs = []
    try:
        pngs = charts.draw(result, args.out, machine, suffix)
    except Exception:  # noqa: BLE001
        errors["charts"] = traceback.format_exc()
        ctx.log(f"charts FAILED:\n{errors['charts']}")
    result["charts"] = [os.path.basename(p) for p in pngs]
    stem = f"{machine}-{date}{suffix}"
    path = os.path.join(args.out, stem + ".json")
    with open(path, "w") as f:
        json.dump(result, f, indent=1)
    md = os.path.join(args.out, "RESULTS.md" if mode != "smoke" else f"RESULTS{suffix}.md")
    with open(md, "w") as f:
        f.write(markdown(result, pngs, profile_md))
    print(
        f"\nDjinn benchmarks on {machine} (server device {server_device}, local {ctx.dev}, "
        f"torch {torch.__version__}, mode {mode}, {result['elapsed_s']:.0f} s)\n"
    )
    print_table(rows)
    print(
        f"\nwrote {path}, {md}"
        + "".join(f", {os.path.basename(p)}" for p in pngs)
        + (f", {os.path.basename(profile_md)}" if profile_md else "")
    )
    if errors:
        print(f"\nFAILED workloads: {', '.join(errors)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

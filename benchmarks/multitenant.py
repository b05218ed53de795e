"""Multi-tenant decoding: N client processes, one shared djinn-server.

``run(ctx)`` starts ONE ``djinn-server --listen tcp://127.0.0.1:<port>`` (``--device cpu``
unless ``--gpu``), then for N in 1, 2, 4, 8 starts N tenant processes with
``DJINN_SERVER`` pointing at it. Each tenant builds the same small Llama (seed 0), puts it
on ``remote``, warms up, says READY and waits; when all are ready they are told GO at
once, decode, drop their KV cache, report per-step times and wait. With every tenant
parked (sessions open, weights held) one of them reads ``djinn.server_stats()``:
``bytes_in_use`` (what sessions own) plus ``text_bytes`` (uploads shared between sessions
through the server's content-addressed text segment, counted once) against N x model
bytes, which is what N separate processes would hold. The baseline is the same N tenants
decoding locally, each process with its own copy of the model (cores split between them).

Run as a script this file is the tenant: ``multitenant.py tenant --mode djinn|local ...``.
"""

import argparse
import json
import os
import selectors
import subprocess
import sys
import time

import common as C

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
SERVER_BIN = os.path.join(REPO, "djinn", "bin", "djinn-server")


# ------------------------------------------------------------------ tenant process


# issue 11: eight tenants decoding at once, against eight local processes
T_TENANTS = (">= 1.0x of 8 local processes (issue 11)", lambda v: v["djinn"] >= v["local"])


def tenant(args):
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    dev = "cpu" if args.mode == "local" else "remote"
    if args.mode == "local" and args.gpu:
        dev = "cuda"
    if dev == "remote":
        import djinn  # noqa: F401 - registers the device
    model = C.llama(args.size).to(dev)
    torch.manual_seed(1 + args.index)
    ids = torch.randint(0, model.config.vocab_size, (1, args.prompt))

    def decode(steps):
        step_s, t_start = [], time.time()
        with torch.no_grad():
            out = model(input_ids=ids.to(dev), use_cache=True)
            cache = out.past_key_values
            nxt = out.logits[:, -1:].argmax(-1)
            nxt.item()
            t_start = time.time()
            for _ in range(steps):
                t0 = time.perf_counter()
                out = model(input_ids=nxt, past_key_values=cache, use_cache=True)
                cache = out.past_key_values
                nxt = out.logits[:, -1:].argmax(-1)
                nxt.item()
                step_s.append(time.perf_counter() - t0)
        return step_s, t_start, time.time()

    decode(2)  # warm-up: uploads the weights (lazily, at the first flush), warms caches
    if dev == "remote":
        torch.remote.synchronize()
    print("READY", flush=True)
    if sys.stdin.readline().strip() != "GO":
        return 1
    step_s, t_start, t_end = decode(args.steps)
    if dev == "remote":
        torch.remote.synchronize()  # the dropped KV cache is freed on the server
    print(json.dumps({"step_s": step_s, "start": t_start, "end": t_end}), flush=True)
    # parked, session open and weights held, until the harness has read the server's counters
    for line in sys.stdin:
        if line.strip() == "STATS" and dev == "remote":
            import djinn

            print(json.dumps(djinn.server_stats()), flush=True)
        elif line.strip() == "EXIT":
            break
    return 0


# ------------------------------------------------------------------ harness


def _readline(proc, deadline):
    return C.readline_until(proc, deadline, "tenant")


def start_server(gpu, timeout=30.0):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ep = f"tcp://127.0.0.1:{port}"
    r, w = os.pipe()
    args = [SERVER_BIN, "--listen", ep, "--announce-fd", str(w), "--lease-ms", "120000"]
    if not gpu:
        args += ["--device", "cpu"]
    proc = subprocess.Popen(
        args,
        pass_fds=(w,),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    os.close(w)
    sel = selectors.DefaultSelector()
    sel.register(r, selectors.EVENT_READ)
    line = b""
    try:
        deadline = time.monotonic() + timeout
        while b"\n" not in line:
            left = deadline - time.monotonic()
            if left <= 0 or not sel.select(left):
                raise RuntimeError("djinn-server did not announce itself")
            chunk = os.read(r, 256)
            if not chunk:
                raise RuntimeError(f"djinn-server exited early (rc={proc.poll()})")
            line += chunk
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    finally:
        sel.close()
        os.close(r)
    return proc, line.split()[1].decode()


def _round(ctx, mode, n, ep, size, prompt, steps, timeout):
    env = dict(os.environ)
    env.pop("DJINN_SERVER_ARGS", None)
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    if mode == "djinn":
        env["DJINN_SERVER"] = ep
    # local tenants split the cores between them (or keep the run's setting if smaller)
    threads = max(1, C.cpu_count() // n) if mode == "local" else 0
    if mode == "local" and getattr(ctx, "threads", 0):
        threads = min(threads, ctx.threads)
    cmd = [
        sys.executable,
        os.path.join(HERE, "multitenant.py"),
        "tenant",
        "--mode",
        mode,
        "--size",
        size,
        "--prompt",
        str(prompt),
        "--steps",
        str(steps),
        "--threads",
        str(threads),
    ]
    if ctx.gpu:
        cmd.append("--gpu")
    procs = [
        subprocess.Popen(
            cmd + ["--index", str(i)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        for i in range(n)
    ]
    deadline = time.monotonic() + timeout
    try:
        for p in procs:
            if _readline(p, deadline) != "READY":
                raise RuntimeError("tenant did not say READY")
        for p in procs:
            p.stdin.write("GO\n")
            p.stdin.flush()
        res = [json.loads(_readline(p, deadline)) for p in procs]
        stats = {}
        if mode == "djinn":  # every tenant is parked now: ask one for djinn.server_stats()
            procs[0].stdin.write("STATS\n")
            procs[0].stdin.flush()
            stats = json.loads(_readline(procs[0], deadline))
        for p in procs:
            p.stdin.write("EXIT\n")
            p.stdin.flush()
        for p in procs:
            p.wait(max(1.0, deadline - time.monotonic()))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    steps_all = [s for r in res for s in r["step_s"]]
    span = max(r["end"] for r in res) - min(r["start"] for r in res)
    return {
        "step_s": steps_all,
        "tokens_per_s": len(steps_all) / span if span > 0 else None,
        "stats": stats,
    }


def _weights_held(st):
    """Server memory holding the tenants' weights, from djinn.server_stats().

    ``bytes_in_use`` counts what sessions own; uploads shared through the server's
    content-addressed text segment are counted once, in ``text_bytes``, on top of it (one
    tenant: bytes_in_use + text_bytes == model bytes)."""
    session = st.get("bytes_in_use")
    held = None if session is None else session + st.get("text_bytes", 0)
    return session, held


def run(ctx):
    counts = [1, 2] if ctx.mode == "smoke" else [1, 2, 4, 8]
    size = "tiny" if ctx.mode == "smoke" else "small"
    prompt = 16 if ctx.mode == "smoke" else 32
    steps = {"smoke": 3, "quick": 16, "full": 64}[ctx.mode]
    model_bytes = C.module_bytes(C.llama(size))
    proc, ep = start_server(ctx.gpu)
    series = {
        "n": [],
        "local_tok_s": [],
        "djinn_tok_s": [],
        "bytes_held": [],
        "bytes_in_use": [],
        "n_model_bytes": [],
    }
    rows = []
    try:
        for n in counts:
            ctx.log(f"  multi-tenant N={n}")
            loc = _round(ctx, "local", n, ep, size, prompt, steps, timeout=300)
            dj = _round(ctx, "djinn", n, ep, size, prompt, steps, timeout=300)
            st = dj["stats"]
            session, held = _weights_held(st)
            tok_s = {"local": loc["tokens_per_s"], "djinn": dj["tokens_per_s"]}
            extra = {
                "tenants": n,
                "model": size,
                "prompt": prompt,
                "steps": steps,
                "p99_ms": {
                    "local": 1e3 * C.pct(loc["step_s"], 99),
                    "djinn": 1e3 * C.pct(dj["step_s"], 99),
                },
                "aggregate_tokens_per_s": tok_s,
                "server_bytes_in_use": session,
                "server_text_bytes": st.get("text_bytes"),
                "server_bytes_held": held,
                "server_devices_data_used": sum(
                    d.get("data_used", 0) for d in st.get("devices", [])
                )
                or None,
                "n_x_model_bytes": n * model_bytes,
                "model_bytes": model_bytes,
                "weight_copies_on_server": (held / model_bytes) if held is not None else None,
                "server_text_fields": {
                    k: v for k, v in st.items() if k.startswith("text") or "segment" in k
                },
                "server_stats": st,
            }
            who = f"multi-tenant, {n} client{'s' if n > 1 else ''}"
            rows.append(
                C.row(
                    f"{who}: decode per-token p50",
                    "multitenant",
                    "ms",
                    {"local": 1e3 * C.median(loc["step_s"]), "djinn": 1e3 * C.median(dj["step_s"])},
                    extra=extra,
                )
            )
            rows.append(
                C.row(
                    f"{who}: aggregate tokens/s",
                    "multitenant",
                    "tok/s",
                    tok_s,
                    *(T_TENANTS if n == 8 else ()),
                    better="higher",
                    extra=extra,
                )
            )
            series["n"].append(n)
            series["local_tok_s"].append(loc["tokens_per_s"])
            series["djinn_tok_s"].append(dj["tokens_per_s"])
            series["bytes_held"].append(held)
            series["bytes_in_use"].append(session)
            series["n_model_bytes"].append(n * model_bytes)
        n = counts[-1]
        held = series["bytes_held"][-1]
        rows.append(
            C.row(
                f"multi-tenant, {n} clients: weights held (server bytes_in_use + text_bytes "
                "vs N processes)",
                "multitenant",
                "MB",
                {"local": n * model_bytes / 1e6, "djinn": held / 1e6 if held is not None else None},
                "1 copy for N sessions of one model (<= 1.1 x model bytes)",
                lambda v: v["djinn"] * 1e6 <= 1.1 * model_bytes,
                computed={
                    "local": f"{n} x the model's parameter and buffer bytes "
                    f"({model_bytes:,} B): each local process holds its own copy"
                },
                extra={
                    "model_bytes": model_bytes,
                    "tenants": n,
                    "note": "tenants parked after decoding with their KV cache dropped: "
                    "what remains is weights",
                },
            )
        )
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    ctx.series["multitenant"] = {**series, "model_bytes": model_bytes}
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("role", choices=["tenant"])
    ap.add_argument("--mode", choices=["djinn", "local"], required=True)
    ap.add_argument("--size", default="small")
    ap.add_argument("--prompt", type=int, default=32)
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--index", type=int, default=0)
    ap.add_argument("--gpu", action="store_true")
    return tenant(ap.parse_args())


if __name__ == "__main__":
    sys.exit(main())

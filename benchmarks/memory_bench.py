"""Memory-kernel benchmarks, side by side in one run (results in benchmarks/results/):

1. Data-segment external fragmentation after a KV-cache churn trace: djn_heap (the Data
   segment's best-fit allocator) vs glibc malloc on the same trace (benchmarks/frag_bench.c),
   and vs PyTorch's CUDA caching allocator when a GPU is present.
2. Scheduling latency per fragment on the server: plan-cache hit vs miss, for the small
   transformer's decode step (static KV cache, so every step is the same fragment).
3. Decode per-token latency and bytes sent per token, with and without the plan cache.
4. Stack-slab peak: the planner vs a plain bump allocator vs the lower bound, and the
   slab high-water mark the executor really reached while running the planned fragments
   (measured by the server: planned region plus anything ATen allocated beyond it).

    python benchmarks/memory_bench.py [--smoke] [--out DIR]
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
SERVER = os.path.join(REPO, "djinn", "bin", "djinn-server")

DECODE_CLIENT = r"""
import json, sys, time, torch, djinn
from transformers import LlamaConfig, LlamaForCausalLM, StaticCache
from transformers.utils import logging
logging.set_verbosity_error()
hidden, layers, steps = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
torch.manual_seed(0)
cfg = LlamaConfig(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                  num_attention_heads=8, num_key_value_heads=4, vocab_size=1024, max_position_embeddings=512)
model = LlamaForCausalLM(cfg).eval().to('remote')
# a decode loop with a static KV cache: every step is the same fragment (same ops and
# shapes), so from the second step on only its bindings travel (GRAPH_CACHED)
cache = StaticCache(config=cfg, max_cache_len=16 + steps + 4)
ids = torch.randint(0, 1024, (1, 16)).to('remote')
pos = torch.arange(16).to('remote')
times = []
with torch.no_grad():
    out = model(ids, past_key_values=cache, cache_position=pos, use_cache=True)
    tok = out.logits[:, -1:].argmax(-1)
    pos = pos[-1:] + 1
    for i in range(steps + 2):
        if i == 2:
            djinn.reset_bytes_moved()
        t0 = time.perf_counter()
        out = model(tok, past_key_values=cache, cache_position=pos, use_cache=True)
        tok = out.logits[:, -1:].argmax(-1)
        pos = pos + 1
        int(tok.cpu())
        if i >= 2:
            times.append(time.perf_counter() - t0)
c = djinn.bytes_moved()
s = torch.remote.server_stats()
d = s["devices"][0]
times.sort()
print(json.dumps({"ms_per_token": 1e3 * sum(times) / len(times), "ms_p50": 1e3 * times[len(times) // 2],
                  "bytes_sent_per_token": c["bytes_sent"] / steps,
                  "bytes_received_per_token": c["bytes_received"] / steps,
                  "cached_sends": c["plan_cache_sends"], "messages": c["messages"],
                  "sched_us_hit": s["sched_us_hit_avg"], "sched_us_miss": s["sched_us_miss_avg"],
                  "plan_hits": s["plan_cache_hits"], "plan_misses": s["plan_cache_misses"],
                  "plan_peak": d["plan_peak_sum"], "plan_lb": d["plan_lower_bound_sum"],
                  "plan_bump": d["plan_bump_sum"], "slab_high_water": d["slab_high_water"],
                  "plan_high_water": d["plan_high_water_sum"], "planned_fragments": d["planned_fragments"],
                  "plan_reserved": d["plan_reserved_sum"], "planned_runs": d["planned_runs"],
                  "scrub_bytes": d["scrub_bytes"], "scrub_ns": d["scrub_ns"]}))
"""


def start_server():
    r, w = os.pipe()
    proc = subprocess.Popen(
        [
            SERVER,
            "--listen",
            "tcp://127.0.0.1:*",
            "--device",
            "cpu",
            "--lease-ms",
            "0",
            "--announce-fd",
            str(w),
        ],
        pass_fds=(w,),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    os.close(w)
    with os.fdopen(r) as f:
        line = f.readline().strip()
    return proc, line.split(" ", 1)[1]


def decode(plan_cache, hidden, layers, steps):
    proc, ep = start_server()
    try:
        env = dict(os.environ, DJINN_SERVER=ep, DJINN_PLAN_CACHE="1" if plan_cache else "0")
        out = subprocess.run(
            [sys.executable, "-c", DECODE_CLIENT, str(hidden), str(layers), str(steps)],
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
            cwd=REPO,
        )
        if out.returncode:
            raise RuntimeError(out.stderr[-2000:])
        return json.loads(out.stdout.strip().splitlines()[-1])
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def fragmentation(smoke):
    exe = os.path.join(tempfile.gettempdir(), "djn_frag_bench")
    srcs = [os.path.join(HERE, "frag_bench.c"), os.path.join(REPO, "server", "djn_heap.c")] + [
        os.path.join(REPO, "csrc", "common", f)
        for f in sorted(os.listdir(os.path.join(REPO, "csrc", "common")))
        if f.endswith(".c")
    ]
    subprocess.run(
        [
            "cc",
            "-O2",
            "-I" + os.path.join(REPO, "csrc", "common"),
            "-I" + os.path.join(REPO, "server"),
            *srcs,
            "-lmsgpackc",
            "-lxxhash",
            "-o",
            exe,
        ],
        check=True,
    )
    args = [exe, "--json"] + (["--steps", "3000", "--sessions", "4"] if smoke else [])
    out = subprocess.run(args, capture_output=True, text=True, timeout=600, check=True)
    res = json.loads(out.stdout)
    torch_row = None
    try:
        import torch

        if torch.cuda.is_available():
            torch_row = cuda_caching_fragmentation(smoke)
    except Exception as e:  # noqa: BLE001 - reported, not fatal
        torch_row = {"error": str(e)}
    return res, torch_row


def cuda_caching_fragmentation(smoke):
    """The same KV-cache churn shape on PyTorch's CUDA caching allocator: reserved vs allocated."""
    import random

    import torch

    random.seed(1)
    torch.cuda.empty_cache()
    live = {}
    steps = 3000 if smoke else 30000
    for i in range(steps):
        sid = random.randrange(16)
        cur = live.get(sid)
        n = (cur.numel() if cur is not None else 0) + 4096 * random.randint(1, 8)
        if cur is not None and random.random() < 0.02:
            del live[sid]
            continue
        live[sid] = torch.empty(n, dtype=torch.float16, device="cuda")
    alloc = torch.cuda.memory_allocated()
    reserved = torch.cuda.memory_reserved()
    return {
        "allocator": "pytorch cuda caching",
        "live_bytes": alloc,
        "footprint_bytes": reserved,
        "fragmentation": 1 - alloc / reserved if reserved else 0.0,
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--out", default=os.path.join(HERE, "results"))
    args = ap.parse_args()
    hidden, layers, steps = (64, 1, 4) if args.smoke else (256, 4, 32)
    t0 = time.time()
    frag, torch_frag = fragmentation(args.smoke)
    with_cache = decode(True, hidden, layers, steps)
    without = decode(False, hidden, layers, steps)
    result = {
        "fragmentation": frag,
        "fragmentation_pytorch_cuda": torch_frag,
        "decode_with_plan_cache": with_cache,
        "decode_without_plan_cache": without,
        "model": {"hidden": hidden, "layers": layers, "steps": steps},
        "seconds": time.time() - t0,
    }
    print("\nMemory kernel benchmarks")
    print(f"{'Data-segment fragmentation after KV churn':48s}")
    rows = [r for r in frag.get("results", []) if r.get("ok")]
    base = next((r for r in rows if r["allocator"].startswith("djn")), None)
    for row in rows:
        ratio = (
            f"  footprint vs djn_heap {row['footprint_bytes'] / base['footprint_bytes']:.3f}x"
            if base
            else ""
        )
        print(
            f"  {row['allocator']:40s} frag {100 * row['ext_frag']:6.2f} % (mean {100 * row['ext_frag_mean']:.2f} %)"
            f"{ratio}  target <= 5 %"
        )
    if torch_frag:
        print(f"  {'pytorch cuda caching':40s} {torch_frag}")
    else:
        print("  pytorch cuda caching allocator: n/a (no GPU on this machine)")
    w, wo = with_cache, without
    print(
        f"{'scheduling per decode fragment (server)':48s} hit {w['sched_us_hit']} us, miss {wo['sched_us_miss']} us"
        f"  (target: hit < 50 us)"
    )
    print(
        f"{'decode ms/token':48s} plan cache {w['ms_per_token']:.2f}, without {wo['ms_per_token']:.2f}"
        f"  ratio {w['ms_per_token'] / wo['ms_per_token']:.2f}x"
    )
    print(
        f"{'bytes sent per token':48s} plan cache {w['bytes_sent_per_token']:.0f}, without "
        f"{wo['bytes_sent_per_token']:.0f}  ratio {w['bytes_sent_per_token'] / wo['bytes_sent_per_token']:.3f}x"
    )
    if w["plan_lb"]:
        print(
            f"{'slab peak (sum over fragments)':48s} planner {w['plan_peak']} B, bump {w['plan_bump']} B, "
            f"lower bound {w['plan_lb']} B  (planner/lb {w['plan_peak'] / w['plan_lb']:.3f}, "
            f"bump/lb {w['plan_bump'] / w['plan_lb']:.2f})"
        )
        print(
            f"{'slab high-water reached (measured, sum)':48s} {w['plan_high_water']} B over "
            f"{w['planned_runs']} planned runs, planned {w['plan_reserved']} B: measured/planned "
            f"{w['plan_high_water'] / w['plan_reserved']:.3f}"
        )
    os.makedirs(args.out, exist_ok=True)
    name = "memory-smoke.json" if args.smoke else "memory.json"
    with open(os.path.join(args.out, name), "w") as f:
        json.dump(result, f, indent=2)
    print(f"wrote {os.path.join(args.out, name)}")


if __name__ == "__main__":
    main()

"""Djinn benchmarks: remote (embedded djinn-server on loopback) side by side with local
eager PyTorch on the same machine, in one run. Prints a table with ratios and the
targets from DESIGN section 7, and writes benchmarks/results/<machine>-<date>.json
plus RESULTS.md. Timings are medians over repeats; nothing here asserts a time.

    python benchmarks/run.py --quick      # make bench (minutes on 2 cores)
    python benchmarks/run.py --smoke      # one tiny iteration of everything (tests)
"""
import argparse
import datetime
import json
import os
import platform
import socket
import statistics
import sys
import time

import torch

import djinn

HERE = os.path.dirname(os.path.abspath(__file__))


def timeit(fn, repeat, warmup=2):
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts), ts


def capture_cost(n_ops, repeat):
    """µs per captured op (meta-cache hits: the same op on the same shapes), vs eager CPU."""
    xr = torch.randn(64, device="remote")
    xc = torch.randn(64)
    torch.remote.synchronize()

    def remote_ops():
        y = xr
        for _ in range(n_ops):
            y = y + 1.0
        return y

    def local_ops():
        y = xc
        for _ in range(n_ops):
            y = y + 1.0
        return y

    t_local, _ = timeit(local_ops, repeat)
    remote_ops()  # warm the meta cache
    torch.remote.synchronize()
    ts = []  # capture only: the synchronize that ships the fragment is outside the timing
    for _ in range(repeat):
        t0 = time.perf_counter()
        remote_ops()
        ts.append(time.perf_counter() - t0)
        torch.remote.synchronize()
    t_capture = statistics.median(ts)
    return {
        "name": "capture cost per op",
        "unit": "us/op",
        "local": 1e6 * t_local / n_ops,
        "djinn": 1e6 * t_capture / n_ops,
        "target": "<= 5 us/op with meta-cache hits",
        "target_value": 5.0,
    }


def round_trip(repeat):
    """One op, executed and read back: x.add(1).item()."""
    xr = torch.ones(1, device="remote")
    xc = torch.ones(1)
    torch.remote.synchronize()
    t_local, _ = timeit(lambda: (xc + 1).item(), repeat)
    t_remote, _ = timeit(lambda: (xr + 1).item(), repeat)
    return {
        "name": "1-op round trip (loopback)",
        "unit": "us",
        "local": 1e6 * t_local,
        "djinn": 1e6 * t_remote,
        "target": "<= 60 us (TensorPipe RPC: 97 us shm, 205 us TCP)",
        "target_value": 60.0,
    }


def mlp_forward(batch, repeat):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(256, 512), torch.nn.ReLU(), torch.nn.Linear(512, 512),
                              torch.nn.ReLU(), torch.nn.Linear(512, 10)).eval()
    x = torch.randn(batch, 256)
    import copy

    rnet = copy.deepcopy(net).to("remote")
    with torch.no_grad():
        t_local, _ = timeit(lambda: net(x), repeat)
        t_remote, _ = timeit(lambda: rnet(x.to("remote")).cpu(), repeat)
    return {"name": f"MLP forward, batch {batch}", "unit": "ms", "local": 1e3 * t_local,
            "djinn": 1e3 * t_remote, "target": "", "target_value": None}


def transformer_forward(repeat, hidden=256, layers=4, seq=32):
    from transformers import LlamaConfig, LlamaForCausalLM
    from transformers.utils import logging

    logging.set_verbosity_error()
    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                      num_attention_heads=8, num_key_value_heads=4, vocab_size=1024,
                      max_position_embeddings=512)
    model = LlamaForCausalLM(cfg).eval()
    import copy

    rmodel = copy.deepcopy(model).to("remote")
    ids = torch.randint(0, cfg.vocab_size, (1, seq))
    rids = ids.to("remote")
    with torch.no_grad():
        t_local, _ = timeit(lambda: model(ids).logits[:, -1].argmax(-1), repeat)
        t_remote, _ = timeit(lambda: rmodel(rids).logits[:, -1].argmax(-1).cpu(), repeat)
    return {"name": f"small transformer forward (hidden {hidden}, {layers} layers, {seq} tokens)",
            "unit": "ms", "local": 1e3 * t_local, "djinn": 1e3 * t_remote,
            "target": "<= local + 0.5 ms (warm plan cache)", "target_value": None,
            "overhead_ms": 1e3 * (t_remote - t_local)}


def machine_name():
    gpu = ""
    if torch.cuda.is_available():
        gpu = "-" + torch.cuda.get_device_name(0).replace(" ", "_")
    return f"{socket.gethostname().split('.')[0]}-{platform.machine()}{gpu}"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--full", action="store_true")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, one iteration (tests)")
    ap.add_argument("--gpu", action="store_true")
    ap.add_argument("--out", default=os.path.join(HERE, "results"))
    args = ap.parse_args()
    rep = 1 if args.smoke else (30 if args.full else 10)
    rows = [
        capture_cost(50 if args.smoke else 2000, rep),
        round_trip(3 if args.smoke else 200),
        mlp_forward(1, rep),
        mlp_forward(32, rep),
        transformer_forward(rep, hidden=64 if args.smoke else 256, layers=1 if args.smoke else 4,
                            seq=8 if args.smoke else 32),
    ]
    for r in rows:
        r["ratio_djinn_local"] = r["djinn"] / r["local"] if r["local"] else None
        tv = r.get("target_value")
        r["target_met"] = (r["djinn"] <= tv) if tv is not None else None
    device = torch.remote.device_name(0)
    result = {
        "machine": machine_name(),
        "date": datetime.date.today().isoformat(),
        "server_device": device,
        "torch": torch.__version__,
        "mode": "smoke" if args.smoke else ("full" if args.full else "quick"),
        "rows": rows,
    }
    print(f"\nDjinn benchmarks on {result['machine']} (server device: {device}, torch {torch.__version__})")
    hdr = f"{'workload':58s} {'unit':6s} {'local':>10s} {'djinn':>10s} {'djinn/local':>12s}  target"
    print(hdr)
    print("-" * len(hdr))
    lines = []
    for r in rows:
        ratio = f"{r['ratio_djinn_local']:.2f}x" if r["ratio_djinn_local"] else "-"
        met = "" if r["target_met"] is None else (" (met)" if r["target_met"] else " (missed)")
        line = f"{r['name']:58s} {r['unit']:6s} {r['local']:10.2f} {r['djinn']:10.2f} {ratio:>12s}  {r['target']}{met}"
        print(line)
        lines.append(f"| {r['name']} | {r['unit']} | {r['local']:.2f} | {r['djinn']:.2f} | {ratio} | {r['target']}{met} |")
    os.makedirs(args.out, exist_ok=True)
    base = f"{result['machine']}-{result['date']}" + ("-smoke" if args.smoke else "")
    path = os.path.join(args.out, base + ".json")
    with open(path, "w") as f:
        json.dump(result, f, indent=2)
    md = os.path.join(args.out, "RESULTS.md" if not args.smoke else base + ".md")
    with open(md, "w") as f:
        f.write(f"# Djinn benchmark results\n\nMachine `{result['machine']}`, server device `{device}`, "
                f"torch {torch.__version__}, {result['date']}, mode {result['mode']}. "
                "Local = eager PyTorch in the same process on the same machine; djinn = the same work "
                "on torch.device('remote') served by an embedded djinn-server over loopback TCP.\n\n"
                "| workload | unit | local | djinn | djinn/local | target |\n|---|---|---|---|---|---|\n")
        f.write("\n".join(lines) + "\n")
    print(f"\nwrote {path} and {md}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

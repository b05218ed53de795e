"""Shared pieces of the benchmark suite: timing, percentiles, result rows, models.

A *row* is one measured workload, the same work timed in every system that ran it:

    {"name", "group", "unit", "better": "lower"|"higher",
     "systems": [...],                                            # the systems it measured
     "values": {"local": x, "djinn": x, "rpc": x, "naive": x, "zmq": x},   # None: not run
     "ratios": {"djinn/local": r, "djinn/rpc": r, "djinn/naive": r, "djinn/zmq": r},
     "computed": {system: how},   # values derived rather than measured, and how
     "target": text, "target_met": True|False|None, "extra": {...}}

Ratios are always djinn divided by the other system, in the row's unit: below 1 is
better for "lower" rows (times, bytes), above 1 for "higher" rows (throughput).
``zmq`` is raw ZeroMQ between two processes (``wire.py``): the wire's floor.
A value in ``computed`` is arithmetic, not a measurement; tables mark it so.
"""

import os
import selectors
import platform
import socket
import statistics
import time

import torch

SYSTEMS = ("local", "djinn", "rpc", "naive", "zmq")


def timeit(fn, repeat, warmup=1):
    """Run ``fn`` ``warmup`` times untimed, then ``repeat`` times; returns the seconds."""
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return ts


def median(xs):
    return statistics.median(xs) if xs else None


def pct(xs, p):
    """Nearest-rank percentile (p in 0..100)."""
    if not xs:
        return None
    s = sorted(xs)
    k = max(0, min(len(s) - 1, int(round(p / 100.0 * len(s) + 0.5)) - 1))
    return s[k]


def row(name, group, unit, values, target="", met=None, better="lower", extra=None, computed=None):
    """Build a row; ``met`` is a function of the values dict (or None: no target);
    ``computed`` names the systems whose value is derived, not measured, and how."""
    assert set(computed or {}) <= set(values), (name, computed)
    vals = {s: (float(values[s]) if values.get(s) is not None else None) for s in SYSTEMS}
    ratios = {}
    d = vals["djinn"]
    for other in ("local", "rpc", "naive", "zmq"):
        o = vals[other]
        ratios[f"djinn/{other}"] = (d / o) if (d is not None and o) else None
    target_met = None
    if met is not None and d is not None:
        try:
            target_met = bool(met(vals))
        except (TypeError, ZeroDivisionError):
            target_met = None
    return {
        "name": name,
        "group": group,
        "unit": unit,
        "better": better,
        "systems": [s for s in SYSTEMS if s in values],  # what this row tried to measure
        "values": vals,
        "ratios": ratios,
        "computed": dict(computed or {}),
        "target": target,
        "target_met": target_met,
        "extra": extra or {},
    }


def machine_name(gpu=False):
    name = f"{socket.gethostname().split('.')[0]}-{platform.machine()}"
    if gpu and torch.cuda.is_available():
        name += "-" + torch.cuda.get_device_name(0).replace(" ", "_")
    return name


def human_bytes(n):
    for unit, k in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= k:
            v = n / k
            return f"{v:.0f} {unit}" if v == int(v) else f"{v:.1f} {unit}"
    return f"{n} B"


def cpu_count():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


# ------------------------------------------------------------------ models


def mlp():
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(256, 512),
        torch.nn.ReLU(),
        torch.nn.Linear(512, 512),
        torch.nn.ReLU(),
        torch.nn.Linear(512, 10),
    ).eval()


LLAMA_SIZES = {
    # the small model; "tiny" keeps --smoke fast; "medium" is --full's larger one
    "tiny": dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=256,
    ),
    "small": dict(
        hidden_size=256,
        intermediate_size=512,
        num_hidden_layers=4,
        num_attention_heads=8,
        num_key_value_heads=4,
        vocab_size=1024,
    ),
    "medium": dict(
        hidden_size=512,
        intermediate_size=1408,
        num_hidden_layers=8,
        num_attention_heads=8,
        num_key_value_heads=4,
        vocab_size=4096,
    ),
}


def llama(size):
    """A Llama-architecture causal LM with random weights (seed 0), in eval mode."""
    from transformers import LlamaConfig, LlamaForCausalLM
    from transformers.utils import logging

    logging.set_verbosity_error()
    torch.manual_seed(0)
    cfg = LlamaConfig(max_position_embeddings=1024, **LLAMA_SIZES[size])
    return LlamaForCausalLM(cfg).eval()


def module_bytes(m):
    return sum(p.nbytes for p in m.parameters()) + sum(b.nbytes for b in m.buffers())


def wide_linear_stack(width, layers):
    """``layers`` bias-free Linear(width, width): width*width*4*layers bytes of weights."""
    torch.manual_seed(0)
    linears = [torch.nn.Linear(width, width, bias=False) for _ in range(layers)]
    return torch.nn.Sequential(*linears).eval()


def readline_until(proc, deadline, who="child process"):
    """One line from a child's stdout, or an error naming `who` when the deadline
    (time.monotonic()) passes or the child exits first."""
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    try:
        left = deadline - time.monotonic()
        if left <= 0 or not sel.select(left):
            raise TimeoutError(f"{who} did not answer in time")
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"{who} exited (rc={proc.wait()})")
        return line.strip()
    finally:
        sel.close()

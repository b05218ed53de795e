"""QoS: an interactive tenant decoding beside a batch tenant that saturates the device.

One ``djinn-server --device cpu`` per run; two sessions on separate connections, driven
from two threads of this process by the wire protocol (the protocol's own encoder):

* the **interactive** tenant sends a "token" fragment (a chain of small matmuls, about a
  millisecond) and waits for its reply, ``--tokens`` times: per-token latency;
* the **batch** tenant keeps two "step" fragments (a chain of large matmuls, tens of ms)
  in flight at all times: steps per second.

Runs, side by side: interactive alone, batch alone, both with every fragment sent as
batch (one class: the old FIFO), and both with the interactive tenant marked
interactive (QoS). Prints p50/p99 token latency against the solo p99 and the batch
throughput against solo, and writes benchmarks/results/qos.{json,md}. Never asserts a
time. ``python benchmarks/qos_bench.py [--tokens N]``.
"""

import argparse
import json
import os
import selectors
import struct
import subprocess
import sys
import threading
import time

import msgpack
import zmq

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)
from djinn._C import _proto  # noqa: E402

K = _proto.constants
SERVER_BIN = os.path.join(REPO, "djinn", "bin", "djinn-server")
F32 = 6


class _T:
    """Pack-only tensor reference (the encoder's _djn_tref protocol)."""

    def __init__(self, slot, n):
        self._djn_tref = (slot, 0, F32, [n, n], [n, 1])


_handle = [1 << 44]


def _h():
    _handle[0] += 1 << 24
    return _handle[0]


def chain(k, n, qos):
    x, y, w = _h(), _h(), _h()
    nb = n * n * 4
    mm = [
        ["aten::mm", "out", [_T(0, n), _T(2, n), _T(1, n)], [_T(1, n)], 0],
        ["aten::mm", "out", [_T(1, n), _T(2, n), _T(0, n)], [_T(0, n)], 0],
    ]
    body = {
        "dev": 0,
        "binds": [x, y, w],
        "allocs": [[x, nb], [y, nb], [w, nb]],
        "uploads": [[x, 1], [w, 2]],
        "nodes": [mm[i % 2] for i in range(k)],
        "frees": [x, y, w],
        "fetch": [[x, 0, 16]],
        "qos": qos,
    }
    eye = [0.0] * (n * n)
    for i in range(n):
        eye[i * n + i] = 1.0
    frames = [struct.pack(f"<{n * n}f", *[1.0] * (n * n)), struct.pack(f"<{n * n}f", *eye)]
    return body, frames


class Conn:
    def __init__(self, ep):
        self.sock = zmq.Context.instance().socket(zmq.DEALER)
        self.sock.linger = 0
        self.sock.connect(ep)
        self.seq = 0
        self.sock.send_multipart(
            [_proto.encode(K["HELLO"], 0, 1, {"version": K["VERSION"], "client": "qos bench"})]
        )
        self.sid = self.recv()["body"]["sid"]

    def send(self, body, frames):
        self.seq += 1
        self.sock.send_multipart([_proto.encode(K["GRAPH"], self.sid, self.seq, body), *frames])

    def recv(self):
        assert self.sock.poll(120000), "no reply"
        h = msgpack.unpackb(self.sock.recv_multipart()[0], raw=False, strict_map_key=False)
        assert h["type"] == K["REPLY"], h
        return h


def start_server():
    r, w = os.pipe()
    p = subprocess.Popen(
        [SERVER_BIN, "--listen", "tcp://127.0.0.1:0", "--device", "cpu", "--lease-ms", "0"]
        + ["--announce-fd", str(w)],
        pass_fds=(w,),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    os.close(w)
    sel = selectors.DefaultSelector()
    sel.register(r, selectors.EVENT_READ)
    line = b""
    while b"\n" not in line:
        assert sel.select(30), "server did not start"
        line += os.read(r, 512)
    os.close(r)
    return p, line.split()[1].decode()


def run(mode, tokens, step_nodes, step_n):
    """mode: alone-i, alone-b, fifo, qos. Returns (token latencies s, batch steps/s)."""
    proc, ep = start_server()
    try:
        lat, steps = [], [0]
        stop = threading.Event()
        t_batch = [0.0, 0.0]

        def batch():
            c = Conn(ep)
            body, frames = chain(step_nodes, step_n, K["QOS_BATCH"])
            inflight = 0
            t_batch[0] = time.perf_counter()
            while not stop.is_set():
                while inflight < 2:
                    c.send(body, frames)
                    inflight += 1
                c.recv()
                inflight -= 1
                steps[0] += 1
            t_batch[1] = time.perf_counter()
            while inflight:
                c.recv()
                inflight -= 1

        th = None
        if mode != "alone-i":
            th = threading.Thread(target=batch)
            th.start()
            time.sleep(0.5)  # the batch tenant saturates the device first (not a sync)
        if mode == "alone-b":
            time.sleep(tokens * 0.01)
        else:
            c = Conn(ep)
            q = K["QOS_BATCH"] if mode == "fifo" else K["QOS_INTERACTIVE"]
            body, frames = chain(8, 64, q)
            for _ in range(tokens):
                t0 = time.perf_counter()
                c.send(body, frames)
                c.recv()
                lat.append(time.perf_counter() - t0)
        stop.set()
        if th:
            th.join()
        rate = steps[0] / (t_batch[1] - t_batch[0]) if th else 0.0
        return lat, rate
    finally:
        proc.terminate()
        proc.wait(10)


def pct(v, p):
    v = sorted(v)
    return v[min(len(v) - 1, max(0, -(-p * len(v) // 100) - 1))] if v else 0.0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=200)
    ap.add_argument("--step-nodes", type=int, default=40)
    ap.add_argument("--step-n", type=int, default=256)
    a = ap.parse_args()
    res = {}
    for mode in ("alone-i", "alone-b", "fifo", "qos"):
        lat, rate = run(mode, a.tokens, a.step_nodes, a.step_n)
        res[mode] = {
            "p50_ms": pct(lat, 50) * 1e3,
            "p99_ms": pct(lat, 99) * 1e3,
            "batch_steps_per_s": rate,
        }
        print(mode, json.dumps(res[mode]))
    solo_p99, solo_rate = res["alone-i"]["p99_ms"], res["alone-b"]["batch_steps_per_s"]
    rows = [
        "| run | token p50 ms | token p99 ms | p99 / solo p99 | batch steps/s | / solo |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for mode in ("alone-i", "alone-b", "fifo", "qos"):
        r = res[mode]
        rows.append(
            f"| {mode} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | "
            f"{r['p99_ms'] / solo_p99 if solo_p99 and mode != 'alone-b' else 0:.2f} | "
            f"{r['batch_steps_per_s']:.1f} | "
            f"{r['batch_steps_per_s'] / solo_rate if solo_rate else 0:.2f} |"
        )
    table = "\n".join(rows)
    print(table)
    out = os.path.join(HERE, "results")
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "qos.json"), "w") as f:
        json.dump({"args": vars(a), "results": res}, f, indent=1)
    with open(os.path.join(out, "qos.md"), "w") as f:
        f.write("# QoS: interactive tenant beside a saturating batch tenant (CPU device)\n\n")
        f.write(table + "\n")


if __name__ == "__main__":
    main()

"""QoS: an interactive tenant decoding beside a batch tenant that saturates the device.

One ``djinn-server --device cpu`` per run; two sessions on separate connections, driven
by the wire protocol (the protocol's own encoder) from two processes, as two tenants
would be (from two threads of one process, the batch tenant's encoding held the GIL the
interactive tenant's next token waited for):

* the **interactive** tenant sends a "token" fragment (a chain of 8 NxN matmuls,
  ``--token-n``: 64, a sliver of the device; 192, a demand the batch share must cap) and
  waits for its reply, back to back: per-token latency;
* the **batch** tenant keeps two "step" fragments (a chain of large matmuls, tens of ms)
  in flight at all times: steps per second.

Runs, side by side: interactive alone, batch alone, both with every fragment sent as
batch (one class: the old FIFO), both with the interactive tenant marked interactive
(QoS, with the server's batch share, ``--share``, and a lane, ``--lanes 1``: interactive
fragments run on a second thread beside the batch fragment), QoS without the lane
(``--lanes 0``: interactive fragments run nested between two batch nodes), and QoS with
the batch share off (``--qos-batch-share 0``). Prints p50/p99 token latency against the solo p99 and the batch throughput
against solo, with the host's load average around each run (the machine may be
shared), and writes benchmarks/results/qos.{json,md}. Never asserts a time.
Every mode runs ``--rounds`` times, interleaved, for ``--seconds`` each; ratios are taken
within a round. ``python benchmarks/qos_bench.py [--seconds S] [--rounds R] [--share P]``.
"""

import argparse
import json
import os
import selectors
import statistics
import struct
import subprocess
import sys
import multiprocessing as mp
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

    def stats(self):
        """The device's STATS row (the server has no keys: every client is an operator)."""
        self.seq += 1
        self.sock.send_multipart([_proto.encode(K["STATS"], self.sid, self.seq, {})])
        return self.recv()["body"]["devices"][0]

    def send(self, body, frames):
        self.seq += 1
        self.sock.send_multipart([_proto.encode(K["GRAPH"], self.sid, self.seq, body), *frames])

    def recv(self):
        assert self.sock.poll(120000), "no reply"
        h = msgpack.unpackb(self.sock.recv_multipart()[0], raw=False, strict_map_key=False)
        assert h["type"] == K["REPLY"], h
        return h


def start_server(flags=(), threads=0):
    """threads > 0: ATen's threads in the server (as benchmarks/run.py: on a small, shared
    machine one descheduled thread stalls a whole parallel region, and the batch tenant's
    throughput becomes noise)."""
    env = dict(os.environ)
    if threads > 0:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    r, w = os.pipe()
    p = subprocess.Popen(
        [SERVER_BIN, "--listen", "tcp://127.0.0.1:0", "--device", "cpu", "--lease-ms", "0"]
        + ["--announce-fd", str(w), *flags],
        env=env,
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


def _batch_tenant(ep, step_nodes, step_n, steps, stop):
    """The batch tenant, in a process of its own: two steps in flight until `stop`."""
    c = Conn(ep)
    body, frames = chain(step_nodes, step_n, K["QOS_BATCH"])
    inflight = 0
    while not stop.is_set():
        while inflight < 2:
            c.send(body, frames)
            inflight += 1
        c.recv()
        inflight -= 1
        with steps.get_lock():
            steps.value += 1
    while inflight:
        c.recv()
        inflight -= 1


MODES = ("alone-i", "alone-b", "fifo", "qos", "qos-no-lane", "qos-no-share")


def run(mode, seconds, step_nodes, step_n, token_n, share, threads):
    """One run of `mode` (one of MODES) on a fresh server, measured over `seconds` after
    the batch tenant has saturated the device. Returns (token latencies s, batch steps/s
    over the same window)."""
    flags = ["--qos-batch-share", str(share if mode != "qos-no-share" else 0)]
    flags += ["--lanes", "0" if mode == "qos-no-lane" else "1"]
    proc, ep = start_server(flags, threads)
    try:
        lat = []
        steps = mp.Value("q", 0)  # batch steps done, counted by the batch process
        stop = mp.Event()
        th = None
        if mode != "alone-i":
            th = mp.get_context("fork").Process(
                target=_batch_tenant, args=(ep, step_nodes, step_n, steps, stop)
            )
            th.start()
            time.sleep(1.0)  # the batch tenant saturates the device first (not a sync)
        c = Conn(ep) if mode != "alone-b" else None
        q = K["QOS_BATCH"] if mode == "fifo" else K["QOS_INTERACTIVE"]
        body, frames = chain(8, token_n, q)
        t0 = time.perf_counter()
        steps0 = steps.value
        while time.perf_counter() - t0 < seconds:
            if c is None:
                time.sleep(0.05)
                continue
            t = time.perf_counter()
            c.send(body, frames)
            c.recv()
            lat.append(time.perf_counter() - t)
        rate = (steps.value - steps0) / (time.perf_counter() - t0) if th else 0.0
        stop.set()
        if th:
            th.join(60)
        d = Conn(ep).stats()
        return lat, rate, {k: d[k] for k in ("lane_runs", "preemptions")}
    finally:
        proc.terminate()
        proc.wait(10)


def pct(v, p):
    v = sorted(v)
    return v[min(len(v) - 1, max(0, -(-p * len(v) // 100) - 1))] if v else 0.0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=8.0, help="measured time of one run")
    ap.add_argument("--rounds", type=int, default=3, help="rounds of every mode, interleaved")
    ap.add_argument("--step-nodes", type=int, default=40)
    ap.add_argument("--step-n", type=int, default=256)
    ap.add_argument("--share", type=int, default=75, help="the qos run's --qos-batch-share")
    ap.add_argument(
        "--token-n",
        type=lambda v: [int(x) for x in v.split(",")],
        default=[64, 192],
        help="token matmul sizes, one scenario each: 64 needs a sliver of the device, 192 "
        "about as much as the batch tenant's nodes (then the share decides)",
    )
    ap.add_argument(
        "--threads",
        type=int,
        default=1 if (os.cpu_count() or 1) <= 4 else 0,
        help="ATen threads in the server (0: its default)",
    )
    ap.add_argument("--out", default=os.path.join(HERE, "results"))
    a = ap.parse_args()
    host = {"cpus": os.cpu_count(), "uname": " ".join(os.uname()[2:4])}
    out = {"args": vars(a), "host": host, "scenarios": {}}
    md = [
        "# QoS: interactive tenant beside a saturating batch tenant (CPU device)\n",
        f"{host['cpus']} CPUs, ATen threads in the server: {a.threads or 'default'}. "
        f"{a.rounds} rounds of every run, interleaved, {a.seconds:g} s measured each; ratios "
        "are against the solo runs of the same round, median over rounds; p50/p99 over every "
        f"token of every round. Batch steps of {a.step_nodes} {a.step_n}x{a.step_n} matmuls, "
        "two in flight; tokens of 8 NxN matmuls, one at a time, back to back. qos: "
        f"`--qos-batch-share {a.share}` and `--lanes 1` (interactive fragments "
        "run on a second thread beside the batch fragment); qos-no-lane: `--lanes 0` "
        "(interactive fragments run nested between two batch nodes); qos-no-share: "
        "`--qos-batch-share 0`. The load average is the host's: other work shares the "
        "machine.\n",
    ]
    for token_n in a.token_n:
        res = scenario(a, token_n)
        out["scenarios"][f"token_n={token_n}"] = res
        md.append(f"\n## Tokens of 8 {token_n}x{token_n} matmuls\n\n" + table(res) + "\n")
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "qos.json"), "w") as f:
        json.dump(out, f, indent=1)
    with open(os.path.join(a.out, "qos.md"), "w") as f:
        f.write("\n".join(md))


def scenario(a, token_n):
    rounds = []  # per round: mode -> (latencies, batch rate, load before, load after)
    for r in range(a.rounds):
        got = {}
        for mode in MODES:
            load0 = os.getloadavg()[0]
            lat, rate, how = run(
                mode, a.seconds, a.step_nodes, a.step_n, token_n, a.share, a.threads
            )
            got[mode] = (lat, rate, load0, os.getloadavg()[0], how)
            print(
                f"tokens {token_n} round {r} {mode}: {len(lat)} tokens, p99 "
                f"{pct(lat, 99) * 1e3:.2f} ms, batch {rate:.2f} steps/s, load {load0:.1f}, "
                f"lane runs {how['lane_runs']}, nested runs {how['preemptions']}",
                flush=True,
            )
        rounds.append(got)
    # each ratio against the solo runs of its own round (minutes apart at most: the
    # machine's other load drifts less within a round), then the median over rounds
    res = {}
    for mode in MODES:
        lat = [x for g in rounds for x in g[mode][0]]
        res[mode] = {
            "tokens": len(lat),
            "p50_ms": pct(lat, 50) * 1e3,
            "p99_ms": pct(lat, 99) * 1e3,
            "p99_ms_by_round": [pct(g[mode][0], 99) * 1e3 for g in rounds],
            "batch_steps_per_s_by_round": [g[mode][1] for g in rounds],
            "p99_over_solo": statistics.median(
                pct(g[mode][0], 99) / pct(g["alone-i"][0], 99) for g in rounds
            )
            if lat and mode != "alone-b"
            else 0.0,
            "batch_over_solo": statistics.median(
                g[mode][1] / max(g["alone-b"][1], 1e-9) for g in rounds
            )
            if mode != "alone-i"
            else 0.0,
            "load_avg_1m": [round(x, 2) for g in rounds for x in g[mode][2:4]],
            "lane_runs": sum(g[mode][4]["lane_runs"] for g in rounds),
            "nested_runs": sum(g[mode][4]["preemptions"] for g in rounds),
        }
    print(table(res), flush=True)
    return res


def table(res):
    rows = [
        "| run | tokens | token p50 ms | token p99 ms | p99 / solo p99 | batch steps/s "
        "(rounds) | batch / solo | on a lane / nested | load avg 1 min (before, after each run) |",
        "|---|---:|---:|---:|---:|---|---:|---|---|",
    ]
    for mode in MODES:
        r = res[mode]
        rows.append(
            f"| {mode} | {r['tokens']} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | "
            f"{r['p99_over_solo']:.2f} | "
            f"{', '.join(f'{x:.2f}' for x in r['batch_steps_per_s_by_round'])} | "
            f"{r['batch_over_solo']:.2f} | {r['lane_runs']} / {r['nested_runs']} | "
            f"{', '.join(f'{x:.1f}' for x in r['load_avg_1m'])} |"
        )
    return "\n".join(rows)


if __name__ == "__main__":
    main()

"""QoS: the fragment semantics on the wire, classes, aging, preemption between nodes,
the realtime right, the Data-segment fit check and the host-memory interlock.

Ordering tests speak the protocol by hand on ONE connection holding several sessions:
the server sends every reply through one socket in the order the work finished, so the
order in which replies arrive is the order of completion, with no clock involved."""

import json
import os
import struct
import sys
import time

import msgpack
import pytest
from conftest import SERVER_BIN, run_python, subprocess_env
from proto import E_DENIED, E_OOM, E_PROTO, ERROR, GRAPH, HELLO, PROTO_VERSION, REPLY, STATS
from proto import K, encode, f32
from test_security import H, Server, Sess, keys, make_server, node, t32  # noqa: F401

QOS_REALTIME, QOS_INTERACTIVE, QOS_BATCH = K["QOS_REALTIME"], K["QOS_INTERACTIVE"], K["QOS_BATCH"]
PHASE_DECODE, PHASE_PREFILL = K["PHASE_DECODE"], K["PHASE_PREFILL"]
N = 192  # matrices N x N: one mm is about a millisecond on this machine


class Multi(Sess):
    """One DEALER connection with several sessions; requests go out without waiting."""

    def open(self):
        self.seq += 1
        self.sock.send_multipart(
            [encode(HELLO, 0, self.seq, {"version": PROTO_VERSION, "client": "pytest qos"})]
        )
        h = self._recv(self.seq)
        assert h[0]["type"] == REPLY, h
        return h[0]["body"]["sid"]

    def send(self, sid, body, frames=()):
        self.seq += 1
        self.sock.send_multipart([encode(GRAPH, sid, self.seq, body), *frames])
        return self.seq

    def _recv(self, want=None, timeout=60.0):
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            assert left > 0 and self.sock.poll(int(left * 1000)), "no reply in time"
            parts = self.sock.recv_multipart()
            h = msgpack.unpackb(parts[0], raw=False, strict_map_key=False)
            if want is None or h["seq"] == want:
                return h, [bytes(p) for p in parts[1:]]

    def replies(self, n, timeout=120.0):
        """The next n replies, in arrival (= completion) order."""
        return [self._recv(None, timeout) for _ in range(n)]

    def stats0(self):
        self.seq += 1
        self.sock.send_multipart([encode(STATS, 0, self.seq, {})])
        h = self._recv(self.seq)
        assert h[0]["type"] == REPLY, h
        return h[0]["body"]


def _chain(k, qos=None, phase=None, n=N):
    """A fragment of k dependent N x N matmuls alternating x <- y @ w, y <- x @ w with
    w = I, from x = 2: every result is exactly 2. Fetches 16 bytes of the last one."""
    x, y, w = H(), H(), H()
    nb = n * n * 4
    ident = [0.0] * (n * n)
    for i in range(n):
        ident[i * n + i] = 1.0
    mm = [
        node("aten::mm", "out", [t32(0, [n, n]), t32(2, [n, n]), t32(1, [n, n])], [t32(1, [n, n])]),
        node("aten::mm", "out", [t32(1, [n, n]), t32(2, [n, n]), t32(0, [n, n])], [t32(0, [n, n])]),
    ]
    body = {
        "dev": 0,
        "binds": [x, y, w],
        "allocs": [[x, nb], [y, nb], [w, nb]],
        "uploads": [[x, 1], [w, 2]],
        "nodes": [mm[i % 2] for i in range(k)],
        "frees": [x, y, w],
        "fetch": [[y if k % 2 else x, 0, 16]],
    }
    if qos is not None:
        body["qos"] = qos
    if phase is not None:
        body["phase"] = phase
    frames = [struct.pack(f"<{n * n}f", *[2.0] * (n * n)), struct.pack(f"<{n * n}f", *ident)]
    return body, frames


def _small(qos=None, phase=None):
    """One add of two 2x2 tensors: [1,2,3,4] + [5,6,7,8]."""
    a, b, c = H(), H(), H()
    body = {
        "dev": 0,
        "binds": [a, b, c],
        "allocs": [[a, 16], [b, 16], [c, 16]],
        "uploads": [[a, 1], [b, 2]],
        "nodes": [
            node("aten::add", "Tensor", [t32(0, [2, 2]), t32(1, [2, 2]), 1], [t32(2, [2, 2])])
        ],
        "frees": [a, b, c],
        "fetch": [[c, 0, 16]],
    }
    if qos is not None:
        body["qos"] = qos
    if phase is not None:
        body["phase"] = phase
    return body, [f32(1, 2, 3, 4), f32(5, 6, 7, 8)]


def _ok_small(rep):
    h, frames = rep
    assert h["type"] == REPLY, h
    assert struct.unpack("<4f", frames[0]) == (6.0, 8.0, 10.0, 12.0)


def _wait_running(m, queued=0, timeout=30.0):
    """Until the device's queues hold `queued` items (the long one is then running: it was
    pushed before this STATS, sent on the same connection, was handled)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if m.stats0()["devices"][0]["queued"] == queued:
            return
    pytest.fail("the device's queue never reached the expected depth")


# ================================================================== wire


@pytest.mark.parametrize(
    "field, value, text",
    [
        ("qos", 4, "GRAPH: 'qos' must be 0 (auto), 1 (realtime), 2 (interactive) or 3 (batch)"),
        ("qos", "batch", "GRAPH: 'qos' must be 0 (auto)"),
        ("qos", -1, "GRAPH: 'qos' must be 0 (auto)"),
        ("phase", 9, "GRAPH: 'phase' must be 0 (none), 1 (prefill), 2 (decode) or 3 (training)"),
        ("phase", [1], "GRAPH: 'phase' must be 0 (none)"),
        ("life", [1], "GRAPH: 'life' must be [kept, transient] node counts"),
        ("life", [1, "x"], "GRAPH: 'life' must be [kept, transient] node counts"),
        ("life", [65536, 1], "GRAPH: 'life' must be [kept, transient] node counts"),
        ("life", 3, "GRAPH: 'life' must be [kept, transient] node counts"),
    ],
)
def test_semantic_fields_are_checked(make_server, field, value, text):
    srv = make_server()
    s = srv.session()
    body, frames = _small()
    body[field] = value
    h, fr = s.call_raw(GRAPH, body, frames=frames)
    assert h["type"] == ERROR and h["body"]["code"] == E_PROTO, h
    assert h["body"]["msg"].startswith(text), h["body"]
    _ok_small(_run(s, _small(QOS_BATCH, PHASE_DECODE)))
    assert srv.alive()


def test_encoder_writes_semantics_only_when_set():
    body, _ = _small()
    plain = msgpack.unpackb(encode(GRAPH, 1, 1, body), raw=False, strict_map_key=False)["body"]
    assert "qos" not in plain and "phase" not in plain and "life" not in plain
    body.update(qos=QOS_BATCH, phase=PHASE_PREFILL, life=[3, 4])
    sem = msgpack.unpackb(encode(GRAPH, 1, 1, body), raw=False, strict_map_key=False)["body"]
    assert list(sem)[-3:] == ["qos", "phase", "life"]
    assert (sem["qos"], sem["phase"], sem["life"]) == (QOS_BATCH, PHASE_PREFILL, [3, 4])


# ================================================================== realtime right


def test_realtime_needs_the_right(make_server, keys):  # noqa: F811
    srv = make_server("--realtime-tenants", "bob,carol", keys=keys)
    body, frames = _small(QOS_REALTIME)
    alice = srv.session("alice")
    h, fr = alice.call(GRAPH, body, frames=frames)
    assert h["type"] == ERROR and h["body"]["code"] == E_DENIED, h
    assert h["body"]["msg"].startswith(
        "qos 'realtime' refused: tenant 'alice' may not claim the realtime class"
    ), h["body"]
    # the session is intact and may use the other classes
    _ok_small(_run(alice, _small(QOS_INTERACTIVE)))
    _ok_small(_run(srv.session("bob"), _small(QOS_REALTIME)))


def test_realtime_without_keys_is_the_owners(make_server):
    srv = make_server()
    _ok_small(_run(srv.session(), _small(QOS_REALTIME)))


def _run(sess, bf):
    body, frames = bf
    return sess.call(GRAPH, body, frames=frames)


# ================================================================== scheduling


@pytest.mark.parametrize("lanes", [0, 1])
def test_interactive_overtakes_a_running_batch_fragment(make_server, lanes):
    """Session B's interactive fragment, sent while session A's long batch fragment runs,
    finishes first: without lanes the batch fragment pauses between two nodes to let it
    run; with one, the lane runs it beside the batch fragment, which never pauses. The
    batch results stay exact (neither touches the running fragment's slab)."""
    srv = make_server("--no-inline", "--lanes", str(lanes))
    m = Multi(srv.endpoint)
    srv.conns.append(m)
    a, b = m.open(), m.open()
    long_body, long_frames = _chain(300, qos=QOS_BATCH)
    sa = m.send(a, long_body, long_frames)
    _wait_running(m)
    sb = m.send(b, *_small(phase=PHASE_DECODE))  # auto: decode -> interactive
    first, second = m.replies(2)
    assert [first[0]["seq"], second[0]["seq"]] == [sb, sa]
    _ok_small(first)
    assert second[0]["type"] == REPLY, second[0]
    assert struct.unpack("<4f", second[1][0]) == (2.0,) * 4  # x @ I/... stays exact
    d = m.stats0()["devices"][0]
    if lanes:
        assert (d["preemptions"], d["lane_runs"]) == (0, 1), d
    else:
        assert (d["preemptions"], d["lane_runs"]) == (1, 0), d
    assert d["ia_fragments"] >= 1 and d["bt_fragments"] >= 1
    # the interactive fragment arrived after the batch one started and finished before it:
    # its wait is inside the batch fragment's run (no timing ratio: CI runs on a loaded box)
    assert d["ia_wait_p99_us"] < d["bt_run_p50_us"], d


def test_fifo_without_classes_keeps_the_old_order(make_server):
    """Two sessions, both batch: no preemption, first come first served."""
    srv = make_server("--no-inline")
    m = Multi(srv.endpoint)
    srv.conns.append(m)
    a, b = m.open(), m.open()
    sa = m.send(a, *_chain(150, qos=QOS_BATCH))
    _wait_running(m)
    sb = m.send(b, *_small(QOS_BATCH))
    assert [r[0]["seq"] for r in m.replies(2)] == [sa, sb]
    assert m.stats0()["devices"][0]["preemptions"] == 0


def test_a_session_keeps_its_own_order_across_classes(make_server):
    """A session's interactive fragment never overtakes its own batch fragment (it reads
    what that one writes): it lifts it instead, ahead of another session's batch work
    (aging by time off: the wait behind the busy fragment must not decide). One worker,
    no lane: the order of completion is the order of choice."""
    srv = make_server("--no-inline", "--qos-age-ms", "0", "--lanes", "0")
    m = Multi(srv.endpoint)
    srv.conns.append(m)
    busy, a, c = m.open(), m.open(), m.open()
    sx = m.send(busy, *_chain(150, qos=QOS_INTERACTIVE))
    _wait_running(m)
    sc = m.send(c, *_small(QOS_BATCH))
    x = H()
    sa1 = m.send(
        a,
        {
            "dev": 0,
            "binds": [x],
            "allocs": [[x, 16]],
            "uploads": [[x, 1]],
            "nodes": [node("aten::mul_", "Scalar", [t32(0, [2, 2]), 3], [t32(0, [2, 2])])],
            "qos": QOS_BATCH,
        },
        [f32(1, 2, 3, 4)],
    )
    sa2 = m.send(a, {"dev": 0, "binds": [x], "fetch": [[x, 0, 16]], "frees": [x], "qos": 2})
    assert m.stats0()["devices"][0]["queued"] == 3  # all three wait behind the busy one
    reps = m.replies(4)
    assert [r[0]["seq"] for r in reps] == [sx, sa1, sa2, sc]
    assert struct.unpack("<4f", reps[2][1][0]) == (3.0, 6.0, 9.0, 12.0)


def test_batch_never_starves(make_server):
    """With interactive work always queued, a waiting batch fragment still runs after
    --qos-age-passes interactive picks, not after all of them."""
    srv = make_server("--no-inline", "--qos-age-passes", "3", "--qos-age-ms", "0", "--lanes", "0")
    m = Multi(srv.endpoint)
    srv.conns.append(m)
    busy, a, d = m.open(), m.open(), m.open()
    m.send(busy, *_chain(150, qos=QOS_INTERACTIVE))
    _wait_running(m)
    sb = m.send(a, *_small(QOS_BATCH))  # one node: nothing to pause between
    inter = [m.send(d, *_small(QOS_INTERACTIVE)) for _ in range(10)]
    assert m.stats0()["devices"][0]["queued"] == 11
    order = [r[0]["seq"] for r in m.replies(12)][1:]
    assert order.index(sb) == 3, order
    assert [s for s in order if s != sb] == inter


def test_strict_priority_when_aging_is_off(make_server):
    """The same queue without aging: the batch fragment waits for every interactive one
    (what aging prevents)."""
    srv = make_server("--no-inline", "--qos-age-passes", "0", "--qos-age-ms", "0", "--lanes", "0")
    m = Multi(srv.endpoint)
    srv.conns.append(m)
    busy, a, d = m.open(), m.open(), m.open()
    m.send(busy, *_chain(150, qos=QOS_INTERACTIVE))
    _wait_running(m)
    sb = m.send(a, *_small(QOS_BATCH))
    for _ in range(6):
        m.send(d, *_small(QOS_INTERACTIVE))
    order = [r[0]["seq"] for r in m.replies(8)][1:]
    assert order[-1] == sb, order


def _interactive_beside_batch(srv, k):
    """Session A's batch fragment of 300 384x384 matmuls (a node takes milliseconds, so
    the bucket's 50 ms burst is a small part); once it runs, session B sends ten
    interactive fragments of k. Returns the connection, A's seq, B's seqs and the order
    in which the eleven replies arrived (all REPLY)."""
    m = Multi(srv.endpoint)
    srv.conns.append(m)
    a, b = m.open(), m.open()
    sa = m.send(a, *_chain(300, qos=QOS_BATCH, n=384))
    _wait_running(m)
    inter = [m.send(b, *_chain(k, qos=QOS_INTERACTIVE, n=384)) for _ in range(10)]
    reps = m.replies(11, timeout=600)
    assert all(r[0]["type"] == REPLY for r in reps), [r[0] for r in reps]
    return m, sa, inter, [r[0]["seq"] for r in reps]


@pytest.mark.parametrize("share", [0, 75])
def test_batch_keeps_its_share_of_the_device(make_server, share):
    """Ten interactive fragments, as much work together as a batch fragment, arrive while
    it runs. Without a batch share (0) every one of them runs nested at the batch
    fragment's node boundaries, all before it ends; with 75 % kept for batch, interactive
    work takes at most a third of what batch runs (a quarter of the device) while batch
    waits, so the batch fragment ends before the last of them. One worker, no lane: the
    share bounds what interactive work takes from the worker."""
    m, sa, inter, order = _interactive_beside_batch(
        make_server("--no-inline", "--qos-batch-share", str(share), "--lanes", "0"), 30
    )
    assert [s for s in order if s != sa] == inter  # one session: its order
    if share:
        assert order.index(sa) < 10, order
    else:
        assert order[-1] == sa, order
    d = m.stats0()["devices"][0]
    assert d["preemptions"] >= 1, d


def test_a_lane_is_not_bound_by_the_batch_share(make_server):
    """The share bounds what interactive work takes from the worker's time; a lane's run
    takes none (the batch fragment runs on beside it), so even with 95 % kept for batch,
    ten interactive fragments sent while a long batch fragment runs all end before it."""
    m, sa, inter, order = _interactive_beside_batch(
        make_server("--no-inline", "--qos-batch-share", "95", "--lanes", "1"), 3
    )
    assert order == [*inter, sa]
    d = m.stats0()["devices"][0]
    # each ran on the lane, or, arriving while the lane was busy with the one before,
    # nested (within the share's burst)
    assert d["lane_runs"] + d["preemptions"] == 10 and d["lane_runs"] >= 1, d


def test_a_lane_keeps_each_sessions_order(make_server):
    """With a lane, another session's interactive fragment runs beside a long batch
    fragment and finishes first; the batch fragment's own session's interactive
    fragment, which reads what the batch one writes, waits for it (the lane never takes
    an item of the session the worker runs) and reads the finished result."""
    srv = make_server("--no-inline", "--lanes", "1")
    m = Multi(srv.endpoint)
    srv.conns.append(m)
    a, b = m.open(), m.open()
    body, frames = _chain(300, qos=QOS_BATCH)  # the last node writes binds[0] (x)
    x = body["binds"][0]
    body["frees"] = body["binds"][1:]
    body["fetch"] = []
    sa1 = m.send(a, body, frames)
    _wait_running(m)
    sa2 = m.send(a, {"dev": 0, "binds": [x], "fetch": [[x, 0, 16]], "frees": [x], "qos": 2})
    sb = m.send(b, *_small(QOS_INTERACTIVE))
    reps = m.replies(3)
    assert [r[0]["seq"] for r in reps] == [sb, sa1, sa2], [r[0] for r in reps]
    _ok_small(reps[0])
    assert reps[2][0]["type"] == REPLY, reps[2][0]
    assert struct.unpack("<4f", reps[2][1][0]) == (2.0,) * 4
    d = m.stats0()["devices"][0]
    assert d["lane_runs"] >= 1 and d["preemptions"] == 0, d


def test_replies_keep_each_sessions_order_with_lanes(make_server):
    """Each session's replies arrive in the order it sent its fragments, although its
    fragments run one after another on different threads of the device (two lanes and
    the worker, which a batch session keeps busy part of the time): a thread keeps the
    session locked until its reply has left, and a device's threads share one reply
    socket (PROTOCOL.md 7.6). Read in arrival order on one connection."""
    srv = make_server("--no-inline", "--lanes", "2")
    m = Multi(srv.endpoint)
    srv.conns.append(m)
    bt = m.open()
    sess = [m.open() for _ in range(4)]
    sent = {s: [] for s in sess}
    nbatch = 0
    for _ in range(6):
        m.send(bt, *_chain(20, qos=QOS_BATCH))
        nbatch += 1
        for _ in range(10):
            for s in sess:
                sent[s].append(m.send(s, *_small(QOS_INTERACTIVE)))
    got = {s: [] for s in sess}
    for h, frames in m.replies(nbatch + sum(len(v) for v in sent.values())):
        assert h["type"] == REPLY, h
        if h["sid"] in got:
            _ok_small((h, frames))
            got[h["sid"]].append(h["seq"])
    for s in sess:
        assert got[s] == sent[s], (s, got[s], sent[s])
    assert m.stats0()["devices"][0]["lane_runs"] > 0


def _lane_threads(pid):
    names = []
    for tid in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{tid}/comm") as f:
            names.append(f.read().strip())
    return sorted(n for n in names if n.startswith("djn-lane-"))


@pytest.mark.parametrize(
    "devices, flags, cpus",
    [
        ("cpu", (), None),  # every CPU this process may use
        ("cpu", (), 1),  # one CPU: no lane
        ("cpu,cpu", (), None),
        ("cpu", ("--lanes", "2"), 1),  # asked for: as asked, whatever the CPUs
        ("cpu,cpu", ("--lanes", "0"), None),
    ],
)
def test_lanes_by_default_only_with_a_spare_cpu(make_server, devices, flags, cpus):
    """--lanes by default: one lane per CPU device when the server may run on more CPUs
    than it has CPU devices (the lane gets a core beside its worker), else none; the
    flag, when given, wins. Counted by thread name (djn-lane-<device>)."""
    saved = os.sched_getaffinity(0)
    if cpus:
        os.sched_setaffinity(0, set(sorted(saved)[:cpus]))
    try:
        srv = make_server("--device", devices, *flags)
    finally:
        os.sched_setaffinity(0, saved)
    ndev = devices.count(",") + 1
    usable = cpus or len(saved)
    per_dev = int(flags[1]) if flags else (1 if usable > ndev else 0)
    want = sorted(f"djn-lane-{d}" for d in range(ndev) for _ in range(per_dev))
    assert _lane_threads(srv.proc.pid) == want, (usable, ndev)


_THREADS_CLIENT = r"""
import json, os, torch, djinn
os.sched_setaffinity(0, set(sorted(os.sched_getaffinity(0))[:2]))  # the server inherits it
a = torch.randn(2048, 2048, device='remote')
for _ in range(3):   # kernels ATen runs in parallel when it may: elementwise, reductions, mm
    ((a * 2 + 1).sum() + (a @ a).sum()).item()
me = str(os.getpid())
def ppid(p):
    with open(f'/proc/{p}/stat') as f:
        st = f.read()
    return st[st.rindex(')') + 2:].split()[1]
(srv,) = [p for p in os.listdir('/proc') if p.isdigit() and ppid(p) == me]
names = []
for tid in os.listdir(f'/proc/{srv}/task'):
    with open(f'/proc/{srv}/task/{tid}/comm') as f:
        names.append(f.read().strip())
print(json.dumps(names))
"""


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs")
@pytest.mark.parametrize("threads", [None, "2"])
def test_an_embedded_server_leaves_a_cpu_to_its_client(threads):
    """On two CPUs an embedded server runs its kernels on one thread each (worker, lane):
    an intra-op pool sized for the machine would spin on the core the client captures on.
    ATen's pool threads are named after the thread that starts them, so they show up as
    more djn-worker-/djn-lane- threads; DJINN_THREADS asks for a pool, and gets one."""
    r = run_python(
        _THREADS_CLIENT,
        subprocess_env(DJINN_SERVER=None, DJINN_THREADS=threads, OMP_NUM_THREADS=None),
    )
    assert r.returncode == 0, r.stdout + r.stderr
    names = json.loads(r.stdout.strip().splitlines()[-1])
    kernels = sorted(n for n in names if n.startswith(("djn-worker-", "djn-lane-")))
    if threads is None:
        assert kernels == ["djn-lane-0", "djn-worker-0"], names
    else:
        assert len(kernels) > 2, names


_RNG_CLIENT = r"""
import os, sys, time, torch, djinn
qos, base, n, work, ready, done = sys.argv[1:]
base, n, work = int(base), int(n), int(work)
if qos == 'interactive':  # draws while the batch tenant's fragments keep the worker busy
    t0 = time.monotonic()
    while not os.path.exists(ready):
        assert time.monotonic() - t0 < 120, 'the batch tenant never started'
        time.sleep(0.01)
i = 0
with djinn.qos(qos):
    while i < n or (qos == 'batch' and not os.path.exists(done) and i < 100 * n):
        torch.manual_seed(base + i)
        want = torch.rand(96, 96)
        torch.manual_seed(base + i)
        a = torch.rand(96, 96, device='remote')
        b = a
        for _ in range(work):  # holds the device's generator across its nodes
            b = torch.nn.functional.dropout(b @ a / 96, 0.1)
        got = a.cpu()
        if qos == 'batch' and i == 0:
            open(ready, 'w').close()
        b.sum().item()
        assert torch.equal(got, want), (qos, i)
        i += 1
if qos == 'interactive':
    open(done, 'w').close()
print('lanes', torch.remote.memory_stats()['qos.lane_runs'])
"""


def test_random_streams_stay_per_session_beside_a_lane(make_server, tmp_path):
    """Two tenants draw random numbers at once, one as batch work on the worker (with
    dropout, which holds the device's generator across its nodes), one interactive on the
    lane beside it: each session's stream is still exactly what torch.manual_seed gives
    on the CPU (the device's generator is swapped per session under one lock, whichever
    thread runs). The batch tenant works until the interactive one is done."""
    import subprocess

    srv = make_server("--lanes", "1")
    env = subprocess_env(DJINN_SERVER=srv.endpoint)
    files = [str(tmp_path / "ready"), str(tmp_path / "done")]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _RNG_CLIENT, *args, *files],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for args in (["batch", "100", "4", "200"], ["interactive", "7", "100", "0"])
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, out + err
    assert int(outs[1][0].split()[-1]) >= 1, outs[1]
    assert srv.alive()


# ================================================================== Data segment fit


def test_fragment_that_cannot_fit_the_data_segment_is_refused_before_running(make_server):
    srv = make_server("--data-bytes", str(8 << 20), "--slab-bytes", str(1 << 20))
    s = srv.session()
    x, big = H(), H()
    # x is uploaded and kept; `big` (16 MiB, kept) cannot fit 8 MiB: nothing runs
    h, _ = s.call(
        GRAPH,
        {
            "dev": 0,
            "binds": [x, big],
            "allocs": [[x, 16], [big, 16 << 20]],
            "uploads": [[x, 1]],
            "nodes": [
                node("aten::mul_", "Scalar", [t32(0, [2, 2]), 2], [t32(0, [2, 2])]),
                node("aten::zeros", "", [[4 << 20], 6, None, None, None], [t32(1, [4 << 20])]),
            ],
        },
        frames=[f32(1, 2, 3, 4)],
    )
    assert h["type"] == ERROR and h["body"]["code"] == E_OOM, h
    msg = h["body"]["msg"]
    assert "this fragment's results need 16777216 bytes of the Data segment" in msg, msg
    assert "--data-bytes" in msg
    d = srv.stats()["devices"][0]
    assert d["nodes"] == 0 and d["data_used"] < (1 << 20), d
    body, frames = s.ok(binds=[x], fetch=[[x, 0, 16]])  # not doubled: nothing ran
    assert struct.unpack("<4f", frames[0]) == (1.0, 2.0, 3.0, 4.0)
    h, _ = s.g(binds=[big], fetch=[[big, 0, 16]])  # what it would have made: the error
    assert h["type"] == ERROR and "Data segment" in h["body"]["msg"], h
    assert srv.alive()


# ================================================================== client


def test_djinn_qos_api_and_env():
    code = r"""
import torch, djinn
a = torch.ones(4, 4, device='remote')
assert djinn.current_qos() == 'batch', djinn.current_qos()
with djinn.qos('interactive'):
    assert djinn.current_qos() == 'interactive'
    b = (a @ a).cpu()
assert djinn.current_qos() == 'batch'
assert torch.equal(b, torch.full((4, 4), 4.0))
try:
    djinn.qos('urgent')
except ValueError as e:
    assert "got 'urgent'" in str(e)
else:
    raise AssertionError('accepted')
st = torch.remote.memory_stats()
assert st['qos.batch.fragments'] >= 1, st
assert st['qos.interactive.fragments'] >= 1, st
assert st['qos.interactive.run_p99_us'] >= st['qos.interactive.run_p50_us'], st
print('OK')
"""
    r = run_python(code, subprocess_env(DJINN_QOS="batch"))
    assert r.returncode == 0 and "OK" in r.stdout, r.stdout + r.stderr


def test_bad_djinn_qos_is_reported():
    code = r"""
import torch, djinn
try:
    torch.ones(2, device='remote').cpu()
except djinn.RemoteError as e:
    assert "DJINN_QOS must be 'auto', 'realtime', 'interactive' or 'batch', got 'fast'" in str(e), e
    print('OK')
"""
    r = run_python(code, subprocess_env(DJINN_QOS="fast"))
    assert r.returncode == 0 and "OK" in r.stdout, r.stdout + r.stderr


def test_materialising_beyond_usable_memory_raises_resource_error():
    code = r"""
import torch, djinn
t = torch.ones(4 << 20, device='remote')  # 16 MiB
try:
    t.cpu()
except djinn.ResourceError as e:
    m = str(e)
    assert 'materialising 16777216 bytes of a remote tensor' in m, m
    assert 'this process can use 10000000 more (DJINN_TEST_USABLE_BYTES)' in m, m
else:
    raise AssertionError('materialised')
try:
    t.tolist()
except djinn.ResourceError:
    pass
else:
    raise AssertionError('tolist materialised')
assert t[:1000].cpu().sum().item() == 1000.0  # a slice fits
assert t.sum().item() == float(4 << 20)          # a reduction fits
print('OK')
"""
    r = run_python(code, subprocess_env(DJINN_TEST_USABLE_BYTES="10000000"))
    assert r.returncode == 0 and "OK" in r.stdout, r.stdout + r.stderr
    r = run_python(
        "import torch, djinn\nassert torch.ones(4 << 20, device='remote').cpu().sum() == 4 << 20\n"
        "print('OK')",
        subprocess_env(),
    )
    assert r.returncode == 0 and "OK" in r.stdout, r.stdout + r.stderr


def test_fragments_carry_their_semantics(tmp_path):
    """The client sends phase and lifecycles (DJINN_RECORD_DIR keeps every request)."""
    code = r"""
import torch, torch.nn.functional as F, djinn
q = torch.randn(1, 2, 1, 8, device='remote')
k = torch.randn(1, 2, 6, 8, device='remote')
o = F.scaled_dot_product_attention(q, k, k)
o.cpu()
print('OK')
"""
    r = run_python(code, subprocess_env(DJINN_RECORD_DIR=str(tmp_path)))
    assert r.returncode == 0 and "OK" in r.stdout, r.stdout + r.stderr
    phases, lives = [], []
    for f in sorted(os.listdir(tmp_path)):
        data = (tmp_path / f).read_bytes()  # [nframes][len lo][len hi][header]...
        n = data[1] | data[2] << 8
        obj = msgpack.unpackb(data[3 : 3 + n], raw=False, strict_map_key=False)
        if obj.get("type") == GRAPH and obj["body"].get("nodes"):
            phases.append(obj["body"].get("phase", 0))
            lives.append(obj["body"].get("life"))
    assert PHASE_DECODE in phases, phases
    assert all(life and life[0] + life[1] > 0 for life, p in zip(lives, phases) if p), lives


def test_server_stats_print_qos(make_server):
    import subprocess

    srv = make_server()
    _ok_small(_run(srv.session(), _small(QOS_INTERACTIVE)))
    out = subprocess.run(
        [SERVER_BIN, "--stats", srv.endpoint],
        check=False,
        capture_output=True,
        text=True,
        timeout=30,
    ).stdout
    assert "qos.interactive.wait_p99_us" in out or "ia_wait_p99_us" in out, out

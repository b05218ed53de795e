"""Wire floors and the cost of security, measured in the same run as everything else.

- ``zmq``: raw ZeroMQ between two processes, DEALER (this process) to ROUTER (a child
  started from this file), with pyzmq on both sides and zero-copy frames. It is this
  machine's floor for a request/reply (a 4-byte ping-pong) and for bulk bytes (an
  upload answered by a 1-byte ack; a download of N bytes asked for by a 9-byte request).
  It runs over the transport djinn uses in the same row: ``ipc://`` for the embedded
  server, loopback TCP for the CURVE rows.
- CURVE on vs off: a djinn client process against a ``djinn-server`` on loopback TCP,
  once without keys and once with ``--keys`` (a server keypair, one client key), and the
  raw ZeroMQ floor with CURVE on and off: round trip and 64 MiB both ways.

Run as a script this file is the ROUTER side: ``wire.py echo EP`` prints
``READY <endpoint>`` once bound. With CURVE, its Z85 secret key comes in the environment
(``DJN_WIRE_CURVE_SECRET``), not in argv: a Z85 key may begin with ``-`` (argparse would
take it for an option) and argv is visible to every user in ``ps``. The djinn client of the CURVE rows is
``DJINN_CLIENT`` below, run with ``python -c`` against ``DJINN_SERVER``.
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
SERVER = os.path.join(REPO, "djinn", "bin", "djinn-server")

import common as C  # noqa: E402

# ------------------------------------------------------------------ the ROUTER side


def _echo(endpoint, curve_secret):
    import zmq

    ctx = zmq.Context()
    s = ctx.socket(zmq.ROUTER)
    s.setsockopt(zmq.LINGER, 0)
    if curve_secret:
        s.curve_server = True
        s.curve_secretkey = curve_secret.encode()
    s.bind(endpoint)
    print("READY", s.getsockopt(zmq.LAST_ENDPOINT).decode(), flush=True)
    blobs = {}
    while True:
        ident, op, *rest = s.recv_multipart(copy=False)
        op = op.bytes
        if op == b"p":  # ping: the 4 bytes back
            s.send_multipart([ident, rest[0]], copy=False)
        elif op == b"u":  # upload: the frame is received (and kept), a 1-byte ack back
            blobs["u"] = rest[0]
            s.send_multipart([ident, b"k"])
        elif op == b"d":  # download: n bytes back, one zero-copy frame
            n = int(rest[0].bytes)
            if len(blobs.get("d", b"")) != n:
                blobs["d"] = bytearray(os.urandom(64)) * (n // 64) + bytearray(n % 64)
            s.send_multipart([ident, blobs["d"]], copy=False)
        elif op == b"q":
            s.send_multipart([ident, b"bye"])
            break
    s.close()
    ctx.term()


class ZmqPeer:
    """A DEALER connected to an echo child; ``curve``: both sides use CURVE keys."""

    def __init__(self, transport="ipc", curve=False):
        import zmq

        self.tmp = tempfile.mkdtemp(prefix="djn-wire-")
        ep = f"ipc://{self.tmp}/echo" if transport == "ipc" else "tcp://127.0.0.1:*"
        self.zmq = zmq
        args = [sys.executable, os.path.abspath(__file__), "echo", ep]
        spub = ssec = None
        env = dict(os.environ)
        env.pop("DJN_WIRE_CURVE_SECRET", None)
        if curve:
            spub, ssec = zmq.curve_keypair()
            env["DJN_WIRE_CURVE_SECRET"] = ssec.decode()
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, text=True, cwd=HERE, env=env)
        line = C.readline_until(self.proc, time.monotonic() + 60, "the ZeroMQ echo process")
        assert line.startswith("READY "), line
        self.ctx = zmq.Context()
        self.s = self.ctx.socket(zmq.DEALER)
        self.s.setsockopt(zmq.LINGER, 0)
        if curve:
            cpub, csec = zmq.curve_keypair()
            self.s.curve_serverkey = spub
            self.s.curve_publickey = cpub
            self.s.curve_secretkey = csec
        self.s.connect(line.split(" ", 1)[1])
        self.ping()  # connected (and the CURVE handshake done) before anything is timed

    def ping(self):
        self.s.send_multipart([b"p", b"\0\0\0\0"])
        return self.s.recv()

    def upload(self, buf):
        self.s.send_multipart([b"u", buf], copy=False)
        return self.s.recv()

    def download(self, n):
        self.s.send_multipart([b"d", str(n).encode()])
        return self.s.recv(copy=False)

    def close(self):
        try:
            self.s.send_multipart([b"q"])
            if self.s.poll(5000):
                self.s.recv()
            self.proc.wait(timeout=10)
        except Exception:  # noqa: BLE001 - the child is killed below either way
            pass
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc.stdout.close()
        self.s.close()
        self.ctx.term()
        shutil.rmtree(self.tmp, ignore_errors=True)


def zmq_floor(transport, curve, size, rep, rtt_rep):
    """Seconds: ping-pong median, upload and download of ``size`` bytes (medians)."""
    import torch

    peer = ZmqPeer(transport, curve)
    try:
        rtt = C.median(C.timeit(peer.ping, rtt_rep, warmup=10))
        buf = torch.randn(size // 4).numpy()  # zero-copy: the array's memory is the frame
        up = C.median(C.timeit(lambda: peer.upload(buf), rep))
        down = C.median(C.timeit(lambda: peer.download(size), rep))
    finally:
        peer.close()
    return {"rtt": rtt, "upload": up, "download": down}


# ------------------------------------------------------------------ djinn, CURVE on/off


DJINN_CLIENT = r"""
import json, sys, time, torch, djinn
sys.path.insert(0, {here!r})
import common as C
size, rep, rtt_rep = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
x = torch.ones(1, device="remote")
torch.remote.synchronize()
rtt = C.median(C.timeit(lambda: x.add(1).item(), rtt_rep, warmup=10))
t = torch.randn(size // 4)
ts = []
for i in range(rep + 1):
    t[0] = float(i)  # new content: the server would deduplicate the same bytes
    t0 = time.perf_counter()
    r = t.to("remote")
    torch.remote.synchronize()
    if i:
        ts.append(time.perf_counter() - t0)
    del r
up = C.median(ts)
r = t.to("remote")
ts = []
for i in range(rep + 1):
    r.mul_(1)
    torch.remote.synchronize()
    t0 = time.perf_counter()
    r.cpu()
    if i:
        ts.append(time.perf_counter() - t0)
print(json.dumps({{"rtt": rtt, "upload": up, "download": C.median(ts)}}))
"""


def _keygen(d):
    for name in ("server", "bench"):
        subprocess.run([SERVER, "keygen", d, name], check=True, capture_output=True, timeout=30)
    os.makedirs(os.path.join(d, "clients"), exist_ok=True)
    shutil.copy(os.path.join(d, "bench.key"), os.path.join(d, "clients", "bench.key"))


def djinn_tcp(curve, size, rep, rtt_rep):
    """A djinn client process against a djinn-server on loopback TCP, keys or none."""
    tmp = tempfile.mkdtemp(prefix="djn-curve-")
    args = [SERVER, "--listen", "tcp://127.0.0.1:*", "--device", "cpu", "--lease-ms", "0"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("DJINN_")}
    if curve:
        _keygen(tmp)
        args += ["--keys", tmp]
        env["DJINN_CLIENT_CERT"] = os.path.join(tmp, "bench.key_secret")
        env["DJINN_SERVER_CERT"] = os.path.join(tmp, "server.key")
    r, w = os.pipe()
    proc = subprocess.Popen(
        args + ["--announce-fd", str(w)],
        pass_fds=(w,),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    os.close(w)
    try:
        with os.fdopen(r) as f:
            line = f.readline().strip()
        if not line:
            raise RuntimeError(f"djinn-server exited (rc={proc.wait()}) before announcing")
        env["DJINN_SERVER"] = line.split(" ", 1)[1]
        out = subprocess.run(
            [
                sys.executable,
                "-c",
                DJINN_CLIENT.format(here=HERE),
                str(size),
                str(rep),
                str(rtt_rep),
            ],
            env=env,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=600,
        )
        if out.returncode:
            raise RuntimeError(f"djinn client (curve={curve}) failed:\n{out.stderr[-3000:]}")
        return json.loads(out.stdout.strip().splitlines()[-1])
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(tmp, ignore_errors=True)


def main():
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("echo")
    e.add_argument("endpoint")
    a = ap.parse_args()
    _echo(a.endpoint, os.environ.get("DJN_WIRE_CURVE_SECRET", ""))


if __name__ == "__main__":
    main()

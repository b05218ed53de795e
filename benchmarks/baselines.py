"""Baseline servers for the benchmarks: what a user would run instead of Djinn.

Two systems, each a separate process on this machine, each holding the model in its own
memory and answering one client on loopback:

- ``rpc``: ``torch.distributed.rpc`` (TensorPipe). A worker process (rank 1 of a world of
  2) keeps modules and tensors in a dict; the client calls it with ``rpc.rpc_sync`` and
  gets the module's outputs back in full. TensorPipe ships tensors out of band, so this is
  the strongest "return everything" contender.
- ``naive``: the graph-based, full-return server of the design document. A plain TCP
  socket with 8-byte length-prefixed frames; it receives the pickled module once, then per
  request receives pickled inputs and returns every output, pickled. Nothing is kept
  between requests but the module (and tensors explicitly ``put``), so a decode loop
  sends its KV cache in and gets it back out at every step.

Both expose the same client API, so a workload is written once for both:
``load(name, module)``, ``call(name, *args) -> outputs``, ``put(name, tensor)``,
``get(name) -> tensor``, ``close()``. Servers move inputs to their device (``--device``,
``cuda`` under ``run.py --gpu``) and outputs back to the CPU, so the client never needs a
GPU, just as with Djinn.

``StepLM`` turns a Hugging Face causal LM into a stateless step, ``(ids, kv) -> (logits,
kv)``, the form both baselines need for decoding with a KV cache.

Run as a script this file is the server side: ``baselines.py naive --port P`` or
``baselines.py rpc --port P``; each prints ``READY`` on stdout once it serves.
"""

import argparse
import os
import pickle
import socket
import struct
import subprocess
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
_HDR = struct.Struct("<Q")
RPC_TRANSPORTS = ["uv"]  # None: TensorPipe's default (shm first, which busy-polls)


def _rpc_options(port):
    import torch.distributed.rpc as rpc

    return rpc.TensorPipeRpcBackendOptions(
        init_method=f"tcp://127.0.0.1:{port}", rpc_timeout=600, _transports=RPC_TRANSPORTS
    )


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------ model adapters


def kv_flatten(cache):
    """A transformers cache (DynamicCache) as a flat tuple (k0, v0, k1, v1, ...)."""
    if hasattr(cache, "layers"):
        return tuple(t for layer in cache.layers for t in (layer.keys, layer.values))
    return tuple(t for kv in cache for t in kv)


def kv_unflatten(flat):
    from transformers import DynamicCache

    if not flat:
        return DynamicCache()
    return DynamicCache(ddp_cache_data=list(zip(flat[0::2], flat[1::2])))


class StepLM(torch.nn.Module):
    """One stateless step of a causal LM: ``forward(ids, *kv) -> (logits, *kv)``.

    The KV cache travels as a flat tuple of tensors in and out, which is what a server
    that keeps no per-request state has to do."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, ids, *kv):
        out = self.model(input_ids=ids, past_key_values=kv_unflatten(kv), use_cache=True)
        return (out.logits, *kv_flatten(out.past_key_values))


class AddOne(torch.nn.Module):
    def forward(self, x):
        return x + 1


# ------------------------------------------------------------------ server state (both)

_STORE = {}
_DEVICE = torch.device("cpu")


def _to(obj, device):
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, (tuple, list)):
        return type(obj)(_to(o, device) for o in obj)
    return obj


def _cpu(obj):
    return _to(obj, torch.device("cpu"))


def _sync():
    if _DEVICE.type == "cuda":
        torch.cuda.synchronize()


def srv_load(name, module):
    _STORE[name] = module.to(_DEVICE).eval()
    _sync()


def srv_call(name, *args):
    with torch.no_grad():
        out = _STORE[name](*_to(args, _DEVICE))
    return _cpu(out)


def srv_put(name, t):
    _STORE[name] = t.to(_DEVICE)
    _sync()


def srv_get(name):
    return _STORE[name].cpu()


def srv_drop(name):
    _STORE.pop(name, None)


# ------------------------------------------------------------------ naive server


def _recv_exact(sock, n):
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = sock.recv_into(view[got:], n - got)
        if not k:
            raise ConnectionError("peer closed")
        got += k
    return buf


def _send_frame(sock, payload):
    if len(payload) < (1 << 16):
        sock.sendall(_HDR.pack(len(payload)) + payload)
    else:  # no copy of a large payload just to prepend 8 bytes
        sock.sendall(_HDR.pack(len(payload)))
        sock.sendall(payload)
    return _HDR.size + len(payload)


def _recv_frame(sock):
    (n,) = _HDR.unpack(_recv_exact(sock, _HDR.size))
    return _recv_exact(sock, n), _HDR.size + n


def naive_serve(port):
    ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(("127.0.0.1", port))
    ls.listen(1)
    print("READY", flush=True)
    conn, _ = ls.accept()
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    handlers = {
        "load": srv_load,
        "call": srv_call,
        "put": srv_put,
        "get": srv_get,
        "drop": srv_drop,
    }
    while True:
        try:
            frame, _ = _recv_frame(conn)
        except ConnectionError:
            return
        op, args = pickle.loads(frame)
        if op == "quit":
            _send_frame(conn, pickle.dumps(None))
            return
        try:
            reply = ("ok", handlers[op](*args))
        except Exception as e:  # noqa: BLE001 - reported to the client, server keeps serving
            reply = ("error", f"{type(e).__name__}: {e}")
        _send_frame(conn, pickle.dumps(reply, protocol=pickle.HIGHEST_PROTOCOL))


# ------------------------------------------------------------------ rpc worker


def rpc_serve(port, world_size=2):
    import torch.distributed.rpc as rpc

    print("READY", flush=True)  # init_rpc blocks until the client joins
    rpc.init_rpc("worker", rank=1, world_size=world_size, rpc_backend_options=_rpc_options(port))
    rpc.shutdown()  # graceful: returns once the client shuts down


# ------------------------------------------------------------------ clients


def _spawn(kind, port, device, timeout=120):
    env = dict(os.environ)
    env.pop("DJINN_SERVER", None)
    proc = subprocess.Popen(
        [
            sys.executable,
            os.path.join(HERE, "baselines.py"),
            kind,
            "--port",
            str(port),
            "--device",
            device,
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    import selectors

    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0 or not sel.select(left):
            proc.kill()
            raise RuntimeError(f"{kind} baseline server did not start in {timeout}s")
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"{kind} baseline server exited early (rc={proc.wait()})")
        if line.strip() == "READY":
            sel.close()
            return proc


def _stop(proc, timeout=20):
    if proc is None or proc.poll() is not None:
        return
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class NaiveClient:
    """Client of the naive server; counts the bytes it sends and receives."""

    name = "naive"

    def __init__(self, device="cpu"):
        port = free_port()
        self.proc = _spawn("naive", port, device)
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=600)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.bytes_sent = 0
        self.bytes_received = 0

    def _req(self, op, *args):
        payload = pickle.dumps((op, args), protocol=pickle.HIGHEST_PROTOCOL)
        self.bytes_sent += _send_frame(self.sock, payload)
        frame, n = _recv_frame(self.sock)
        self.bytes_received += n
        status, value = pickle.loads(frame)
        if status != "ok":
            raise RuntimeError(f"naive server: {value}")
        return value

    def load(self, name, module):
        self._req("load", name, module)

    def call(self, name, *args):
        return self._req("call", name, *args)

    def put(self, name, t):
        self._req("put", name, t)

    def get(self, name):
        return self._req("get", name)

    def drop(self, name):
        self._req("drop", name)

    def close(self):
        if self.sock is not None:
            try:
                _send_frame(self.sock, pickle.dumps(("quit", ())))
                _recv_frame(self.sock)
            except (OSError, ConnectionError):
                pass
            self.sock.close()
            self.sock = None
        _stop(self.proc)


class RpcClient:
    """Rank 0 of a two-process ``torch.distributed.rpc`` world; the worker holds the state."""

    name = "rpc"

    def __init__(self, device="cpu"):
        import torch.distributed.rpc as rpc

        self.rpc = rpc
        port = free_port()
        self.proc = _spawn("rpc", port, device)
        rpc.init_rpc("bench", rank=0, world_size=2, rpc_backend_options=_rpc_options(port))

    def load(self, name, module):
        self.rpc.rpc_sync("worker", srv_load, args=(name, module))

    def call(self, name, *args):
        return self.rpc.rpc_sync("worker", srv_call, args=(name, *args))

    def put(self, name, t):
        self.rpc.rpc_sync("worker", srv_put, args=(name, t))

    def get(self, name):
        return self.rpc.rpc_sync("worker", srv_get, args=(name,))

    def drop(self, name):
        self.rpc.rpc_sync("worker", srv_drop, args=(name,))

    def close(self):
        if self.rpc is not None:
            self.rpc.shutdown()
            self.rpc = None
        _stop(self.proc)


def main():
    global _DEVICE
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("kind", choices=["naive", "rpc"])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    _DEVICE = torch.device(args.device)
    # the pickled functions and classes name this module "baselines"; make both names one
    sys.modules.setdefault("baselines", sys.modules[__name__])
    if args.kind == "naive":
        naive_serve(args.port)
    else:
        rpc_serve(args.port)


if __name__ == "__main__":
    main()

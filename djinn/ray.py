"""djinn.ray: one djinn-server per node of a Ray cluster, stopped with the job.

    import os, ray, djinn.ray
    ray.init(address="auto")
    servers = djinn.ray.start_servers()        # one per GPU node, with all its GPUs
    os.environ.update(servers.env())           # DJINN_SERVER=tcp://10.0.0.5:40123,...
    ...                                        # tasks and actors inherit it via runtime_env
    servers.stop()                             # or let the job end: they stop with it

How it works:

1. The nodes: the alive nodes of ``ray.nodes()``. ``num_gpus=None`` (the default) takes
   every node with at least one GPU and gives its server all of them; ``num_gpus=k``
   takes the nodes with at least ``k`` GPUs and gives each server ``k``; ``num_gpus=0``
   takes every node and starts CPU servers (``--device cpu``), for clusters without
   GPUs and for tests.
2. One actor per node, pinned there (``NodeAffinitySchedulingStrategy``, not soft) and
   holding the GPUs it asked for, so Ray sets ``CUDA_VISIBLE_DEVICES`` for it and for
   the server, which uses every device it can see.
3. The actor starts ``djinn-server`` as its child with ``--parent-pid`` (the actor) and
   ``--announce-fd``; it listens on the node's address as Ray knows it (the node table's
   ``NodeManagerAddress``), and the endpoint it returns carries that address and
   the port the server bound (any free one unless ``port`` is given: several jobs may
   share a node).
4. The actors are not detached: when the driver exits, Ray ends them, and each server
   notices its parent is gone within a quarter of a second and exits. ``stop()`` ends
   them at once (SIGTERM: the server drains, then SIGKILL after ``timeout``).

Security: a server listening on a non-loopback address should get CURVE keys
(``keys_dir``: ``--keys DIR``, see docs/DEPLOY.md). ``insecure=True`` passes
``--insecure`` to servers whose ``--help`` lists it, for trusted networks.
"""

import os
import subprocess
import time
from dataclasses import dataclass, field

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

__all__ = ["DjinnServers", "start_servers"]


def _server_binary():
    here = os.path.dirname(os.path.abspath(__file__))
    for cand in (os.environ.get("DJINN_SERVER_BIN", ""), os.path.join(here, "bin", "djinn-server")):
        if cand and os.access(cand, os.X_OK):
            return cand
    raise FileNotFoundError(
        "djinn-server not found: install djinn on every node, or set DJINN_SERVER_BIN"
    )


def _help_lists(binary, flag):
    out = subprocess.run(
        [binary, "--help"], capture_output=True, text=True, timeout=30, check=False
    )
    return flag in out.stdout


class _ServerActor:
    """Runs one djinn-server on this actor's node (the actor's child process)."""

    def __init__(self, args, host, port, binary, insecure, start_timeout):
        self.binary = binary or _server_binary()
        self.host = host
        listen = f"tcp://{self.host}:{port or '*'}"
        extra = ["--insecure"] if insecure and _help_lists(self.binary, "--insecure") else []
        r, w = os.pipe()
        cmd = [
            self.binary,
            "--listen",
            listen,
            "--announce-fd",
            str(w),
            "--parent-pid",
            str(os.getpid()),
            *extra,
            *args,
        ]
        # stdout/stderr are the actor's: they land in Ray's worker logs
        self.proc = subprocess.Popen(cmd, pass_fds=(w,), stdin=subprocess.DEVNULL)
        os.close(w)
        try:
            line = self._read_announcement(r, start_timeout)
        except BaseException:
            self.stop(5)
            raise
        finally:
            os.close(r)
        bound = line.split()[1]  # tcp://HOST:PORT as bound; HOST may be a wildcard
        self._endpoint = f"tcp://{self.host}:{bound.rsplit(':', 1)[1]}"

    def _read_announcement(self, fd, timeout):
        import selectors

        buf = b""
        deadline = time.monotonic() + timeout
        with selectors.DefaultSelector() as sel:
            sel.register(fd, selectors.EVENT_READ)
            while b"\n" not in buf:
                left = deadline - time.monotonic()
                if left <= 0 or not sel.select(left):
                    raise TimeoutError(f"djinn-server did not start within {timeout} s")
                chunk = os.read(fd, 512)
                if not chunk:
                    raise RuntimeError(
                        f"djinn-server exited at start (rc={self.proc.wait()}); "
                        "see this actor's log"
                    )
                buf += chunk
        line = buf.decode().splitlines()[0]
        if not line.startswith("DJINN_ENDPOINT "):
            raise RuntimeError(f"unexpected announcement from djinn-server: {line!r}")
        return line

    def info(self):
        return {
            "endpoint": self._endpoint,
            "pid": self.proc.pid,
            "node_id": ray.get_runtime_context().get_node_id(),
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        }

    def alive(self):
        return self.proc.poll() is None

    def stop(self, timeout=30.0):
        """SIGTERM (the server drains), SIGKILL after ``timeout``; returns the exit code."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout)
        return self.proc.returncode


@dataclass
class DjinnServers:
    """The servers started by :func:`start_servers`, one per node."""

    endpoints: list
    infos: list
    actors: list = field(repr=False)

    def env(self):
        """The client's environment: ``{"DJINN_SERVER": "tcp://a:p,tcp://b:p"}``."""
        return {"DJINN_SERVER": ",".join(self.endpoints)}

    def alive(self, timeout=30.0):
        return ray.get([a.alive.remote() for a in self.actors], timeout=timeout)

    def stop(self, timeout=30.0):
        """Stop every server (SIGTERM, then SIGKILL after ``timeout``) and its actor."""
        try:
            codes = ray.get([a.stop.remote(timeout) for a in self.actors], timeout=timeout + 30)
        finally:
            for a in self.actors:
                ray.kill(a)
            self.actors = []
        return codes

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def _gpu_nodes(num_gpus):
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    if num_gpus == 0:
        return [(n, 0) for n in nodes]
    picked = []
    for n in nodes:
        have = int(n.get("Resources", {}).get("GPU", 0))
        want = have if num_gpus is None else num_gpus
        if want >= 1 and have >= want:
            picked.append((n, want))
    return picked


def start_servers(
    num_gpus=None,
    *,
    port=0,
    server_args=(),
    keys_dir=None,
    insecure=False,
    host=None,
    num_cpus=0,
    server_bin=None,
    timeout=120.0,
):
    """Start one djinn-server per node of the connected Ray cluster; see the module doc.

    ``num_gpus``: None = every GPU node, all of its GPUs; ``k`` = nodes with at least
    ``k`` GPUs, ``k`` each; ``0`` = every node, CPU servers. ``port``: 0 = any free port.
    ``server_args``: extra djinn-server flags. ``keys_dir``: CURVE keys (``--keys``).
    ``host``: the address to listen on and advertise (default: each node's address in
    Ray's node table).
    ``server_bin``: the binary on the nodes (default: the one in the djinn package).
    Raises RuntimeError when no node qualifies, TimeoutError when the servers are not
    all up within ``timeout`` seconds (those that started are stopped)."""
    if not ray.is_initialized():
        raise RuntimeError("connect to the cluster first: ray.init(address=...)")
    nodes = _gpu_nodes(num_gpus)
    if not nodes:
        need = "a GPU" if num_gpus is None else f"{num_gpus} GPUs"
        raise RuntimeError(f"no alive Ray node has {need}; num_gpus=0 starts CPU servers")
    args = list(server_args)
    if num_gpus == 0 and "--device" not in args:
        args += ["--device", "cpu"]
    if keys_dir is not None:
        args += ["--keys", str(keys_dir)]
    cls = ray.remote(_ServerActor)
    actors = []
    for node, gpus in nodes:
        strategy = NodeAffinitySchedulingStrategy(node_id=node["NodeID"], soft=False)
        actors.append(
            cls.options(
                num_cpus=num_cpus, num_gpus=gpus, max_restarts=0, scheduling_strategy=strategy
            ).remote(args, host or node["NodeManagerAddress"], port, server_bin, insecure, timeout)
        )
    try:
        infos = ray.get([a.info.remote() for a in actors], timeout=timeout)
    except BaseException:
        for a in actors:
            ray.kill(a)
        raise
    return DjinnServers([i["endpoint"] for i in infos], infos, actors)

"""Helpers for the deployment tests (exporter, Ray, Slurm, Kubernetes, wheel).

Every wait is bounded: processes announce readiness on a pipe or stdout line, which is
read with a deadline (``read_line``); nothing sleeps to synchronise.
"""

import os
import selectors
import subprocess
import threading
import time
import urllib.request

import msgpack
import zmq
from conftest import PYTHON, REPO, poll, subprocess_env


def _load(relpath, name):
    """Import a script of the repository (deploy/...) as a module."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, relpath))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


make_secrets = _load("deploy/kubernetes/make_secrets.py", "make_secrets")
write_cert = make_secrets.write_cert

STATS, REPLY, ERROR = 9, 64, 65


def read_line(stream, timeout, prefix=None, desc="a line"):
    """Read lines from a binary/text pipe until one starts with ``prefix``; bounded."""
    sel = selectors.DefaultSelector()
    sel.register(stream, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    seen = []
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not sel.select(left):
                raise AssertionError(f"timed out after {timeout}s waiting for {desc}; got {seen}")
            line = stream.readline()
            if not line:
                raise AssertionError(f"stream closed while waiting for {desc}; got {seen}")
            line = line.decode() if isinstance(line, bytes) else line
            if prefix is None or line.startswith(prefix):
                return line.rstrip("\n")
            seen.append(line.rstrip("\n"))
    finally:
        sel.close()


def stats(endpoint, timeout=5.0, curve=None):
    """One raw STATS request (plain DEALER); returns the reply header dict."""
    ctx = zmq.Context.instance()
    s = ctx.socket(zmq.DEALER)
    s.linger = 0
    if curve:
        s.curve_publickey, s.curve_secretkey, s.curve_serverkey = curve
    s.connect(endpoint)
    try:
        s.send(msgpack.packb({"type": STATS, "sid": 0, "seq": 1, "body": {}}))
        if not s.poll(int(timeout * 1000)):
            return None
        return msgpack.unpackb(s.recv_multipart()[0], raw=False, strict_map_key=False)
    finally:
        s.close(0)


class Exporter:
    """``python -m djinn.exporter`` serving HTTP on an ephemeral loopback port."""

    def __init__(self, *args, env=None, timeout=60):
        env = env or subprocess_env()
        self.proc = subprocess.Popen(
            [PYTHON, "-m", "djinn.exporter", "--listen-address", "127.0.0.1", "--port", "0", *args],
            cwd=REPO,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        try:
            line = read_line(self.proc.stdout, timeout, "DJINN_EXPORTER ", "the exporter's URL")
        except BaseException:
            self.stop()
            raise
        self.url = line.split()[1]

    def scrape_text(self, timeout=10):
        with urllib.request.urlopen(self.url, timeout=timeout) as r:
            assert r.status == 200
            return r.read().decode()

    def scrape(self):
        return parse(self.scrape_text())

    def stop(self, timeout=10):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout)
        for f in (self.proc.stdout, self.proc.stderr):
            f.close()
        return self.proc.returncode


class Scrape:
    """A parsed exposition: samples by (name, labels) and the declared types."""

    def __init__(self, text):
        from prometheus_client.parser import text_string_to_metric_families

        self.text = text
        self.samples = {}
        self.types = {}
        self.names = set()
        for fam in text_string_to_metric_families(text):
            self.types[fam.name] = fam.type
            if not fam.samples:  # declared, no sample yet: the name it will expose
                self.names.add(fam.name + "_total" if fam.type == "counter" else fam.name)
            for s in fam.samples:
                self.names.add(s.name)
                self.samples[(s.name, frozenset(s.labels.items()))] = s.value

    def get(self, metric, /, **labels):
        return self.samples.get((metric, frozenset(labels.items())))

    def series(self, metric):
        return {k[1]: v for k, v in self.samples.items() if k[0] == metric}


def parse(text):
    return Scrape(text)


class FakeStatsServer:
    """A ROUTER answering STATS with a fixed body, optionally over CURVE with a ZAP
    authenticator that admits only the public certificates in ``clients_dir``.

    It stands in for a djinn-server where the server lacks a feature under test (CURVE,
    fields it does not send yet); the exporter under test is the real one."""

    def __init__(
        self, body=None, error=None, server_secret=None, server_public=None, clients_dir=None
    ):
        self.ctx = zmq.Context()
        self.auth = None
        if clients_dir is not None:
            from zmq.auth.thread import ThreadAuthenticator

            self.auth = ThreadAuthenticator(self.ctx)
            self.auth.start()
            self.auth.allow("127.0.0.1")
            self.auth.configure_curve(domain="*", location=clients_dir)
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.linger = 0
        if server_secret is not None:
            self.sock.curve_server = True
            self.sock.curve_secretkey = server_secret
            self.sock.curve_publickey = server_public
        self.sock.bind("tcp://127.0.0.1:*")
        self.endpoint = self.sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self.body, self.error = body, error
        self.requests = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.is_set():
            if not self.sock.poll(50):
                continue
            ident, frame, *_ = self.sock.recv_multipart()
            hdr = msgpack.unpackb(frame, raw=False)
            self.requests += 1
            if self.error is not None:
                reply = {"type": ERROR, "sid": 0, "seq": hdr["seq"], "body": self.error}
            else:
                reply = {"type": REPLY, "sid": 0, "seq": hdr["seq"], "body": self.body}
            self.sock.send_multipart([ident, msgpack.packb(reply)])

    def close(self):
        self._stop.set()
        self._thread.join(5)
        self.sock.close(0)
        if self.auth is not None:
            self.auth.stop()
        self.ctx.term()


def port_closed(endpoint):
    """True when nothing accepts TCP connections on the endpoint's host:port."""
    import socket

    host, port = endpoint.rsplit("//", 1)[1].rsplit(":", 1)
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=0.5).close()
        return False
    except OSError:
        return True


def wait_gone(pids, timeout=20.0):
    """Wait until none of ``pids`` exists (zombies of our own children count as gone)."""

    def gone():
        for pid in pids:
            try:
                with open(f"/proc/{pid}/stat") as f:
                    if f.read().split(") ", 1)[1].startswith("Z"):
                        continue
                return False
            except FileNotFoundError:
                continue
        return True

    return poll(gone, timeout=timeout, desc=f"processes {pids} to exit")

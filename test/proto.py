"""The wire protocol for tests that speak it by hand (pyzmq DEALER + the protocol's own
encoders).

Well-formed requests are built by ``encode``, which is the C encoder the client and the
server use (``djinn._C._proto.encode``, csrc/common/djn_msgs.c): a test that builds a valid
message never writes the layout a second time. Constants (message types, status codes,
limits, the protocol version) come from the same module. Only tests that send something
deliberately malformed use ``raw_header``, which packs a dict as it is.
"""

import struct
import time

import msgpack
import zmq
import zmq.auth as zmq_auth
from djinn._C import _proto

K = _proto.constants
S = _proto.status

PROTO_VERSION = K["VERSION"]
HELLO, HEARTBEAT, GRAPH, GRAPH_CACHED = K["HELLO"], K["HEARTBEAT"], K["GRAPH"], K["GRAPH_CACHED"]
HAVE, FETCH, STATS, CLOSE, PLACE = K["HAVE"], K["FETCH"], K["STATS"], K["CLOSE"], K["PLACE"]
REPLY, ERROR = K["REPLY"], K["ERROR"]
DYNAMIC = K["NODE_DYNAMIC"]
E_PROTO, E_VERSION, E_LIMIT, E_SESSION = S["PROTO"], S["VERSION"], S["LIMIT"], S["SESSION"]
E_HANDLE, E_OP, E_ARGS, E_DEVICE = S["HANDLE"], S["OP"], S["ARGS"], S["DEVICE"]
E_OOM, E_QUOTA, E_EVICTED, E_DENIED = S["OOM"], S["QUOTA"], S["EVICTED"], S["DENIED"]
# dtype codes (c10::ScalarType numbering)
F32, I64, U8, BOOL = 6, 4, 0, 11
H0 = 1 << 44  # client handles are any non-zero value below 2^62


class Tref:
    """A tensor reference: a slot inside nodes (a handle inside dyn results)."""

    def __init__(self, slot, dtype, sizes, strides=None, offset=0):
        if strides is None:
            strides, acc = [], 1
            for s in reversed(sizes):
                strides.insert(0, acc)
                acc *= s
        self._djn_tref = (slot, offset, dtype, list(sizes), list(strides))

    def ext(self):
        """The extension type's bytes, for a hand-packed (malformed) message."""
        slot, offset, dtype, sizes, strides = self._djn_tref
        n = len(sizes)
        return msgpack.ExtType(
            1, struct.pack(f"<QqBB{n}q{n}q", slot, offset, dtype, n, *sizes, *strides)
        )


def tref(slot, dtype, sizes, strides=None, offset=0):
    return Tref(slot, dtype, sizes, strides, offset)


def encode(type_, sid=0, seq=1, body=None):
    """Frame 0 of a well-formed request, by the protocol's own encoder."""
    return _proto.encode(type_, sid, seq, body or {})


def raw_header(type_, sid=0, seq=1, body=None, **extra):
    """Frame 0 packed by hand: only for messages that are malformed on purpose."""
    hdr = {"type": type_, "sid": sid, "seq": seq, "body": {} if body is None else body, **extra}
    return msgpack.packb(hdr, use_bin_type=True, default=lambda o: o.ext())


def f32(*vals):
    return struct.pack(f"<{len(vals)}f", *vals)


class Raw:
    """One DEALER connection to a server; replies are matched by ``seq``."""

    _ctx = None

    def __init__(self, endpoint, ctx=None, timeout=20.0, cert=None, server_cert=None):
        """``cert``: this client's .key_secret file, ``server_cert``: the server's .key
        (CURVE); both None for a server without keys."""
        if ctx is None:
            if Raw._ctx is None:
                Raw._ctx = zmq.Context()
            ctx = Raw._ctx
        self.sock = ctx.socket(zmq.DEALER)
        self.sock.linger = 0
        if cert:
            pub, sec = zmq_auth.load_certificate(cert)
            self.sock.curve_publickey, self.sock.curve_secretkey = pub, sec
            self.sock.curve_serverkey = zmq_auth.load_certificate(server_cert)[0]
        self.sock.connect(endpoint)
        self.seq = 100
        self.sid = 0
        self.timeout = timeout

    def request(self, frames, timeout_ms=None):
        """Send one multipart message; (reply header dict, [data frames]) or None on timeout."""
        self.sock.send_multipart(frames, copy=False)
        deadline = time.monotonic() + (timeout_ms / 1000 if timeout_ms else self.timeout)
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not self.sock.poll(int(left * 1000)):
                return None
            parts = self.sock.recv_multipart()
            h = msgpack.unpackb(parts[0], raw=False, strict_map_key=False)
            return h, [bytes(p) for p in parts[1:]]

    def _send(self, frame0, frames, seq):
        r = Raw.request(self, [frame0, *frames])
        assert r is not None, "no reply from the server"
        return r

    def call(self, type_, body=None, sid=None, frames=(), seq=None):
        """A well-formed request (typed encoder)."""
        self.seq += 1
        seq = self.seq if seq is None else seq
        return self._send(encode(type_, self.sid if sid is None else sid, seq, body), frames, seq)

    def call_raw(self, type_, body=None, sid=None, frames=(), seq=None):
        """A request whose body is packed as given (malformed on purpose)."""
        self.seq += 1
        seq = self.seq if seq is None else seq
        return self._send(
            raw_header(type_, self.sid if sid is None else sid, seq, body), frames, seq
        )

    def hello(self):
        h, _ = self.call(HELLO, {"version": PROTO_VERSION, "client": "pytest raw"}, sid=0)
        assert h["type"] == REPLY, h
        self.sid = h["body"]["sid"]
        assert h["sid"] == self.sid and self.sid != 0
        return h["body"]

    def graph(self, body, frames=()):
        return self.call(GRAPH, body, frames=frames)

    def stats(self):
        h, _ = self.call(STATS)
        assert h["type"] == REPLY, h
        return h["body"]

    def alive(self):
        h, _ = self.call(STATS, sid=0)
        return h["type"] == REPLY and "devices" in h["body"]

    def close(self):
        self.sock.close(0)


def assert_error(reply, code, *substrings, seq=None):
    """An ERROR reply with this status code whose message contains every substring."""
    assert reply is not None, "no reply"
    h, frames = reply
    assert h["type"] == ERROR, h
    assert frames == []
    body = h["body"]
    assert isinstance(body.get("code"), int) and isinstance(body.get("msg"), str), body
    assert body["code"] == code, body
    for s in substrings:
        assert s in body["msg"], body
    if seq is not None:
        assert h["seq"] == seq, h
    return body


def dyn_tensor(v):
    """(handle, offset, dtype, sizes, strides, nbytes) of a data-dependent result."""
    slot, offset, dtype, n = struct.unpack_from("<QqBB", v["ref"].data)
    vals = struct.unpack_from(f"<{2 * n}q", v["ref"].data, 18)
    return slot, offset, dtype, list(vals[:n]), list(vals[n:]), v["nbytes"]

"""Placement (PROTOCOL.md 5.6): ``torch.device('remote')`` without an index is the device
the server chooses for the session; ``remote:i`` is device i.

Against ``djinn-server --device cpu,cpu,cpu``. Client processes are started one after the
other and kept alive (each waits on stdin) so that the sessions placed before count as
load: each prints where it landed and whether its results equal CPU's. Protocol tests
speak PLACE by hand: the decoder's errors, probes, the choice by content this tenant
uploaded (and never by another tenant's), the load figures only for operators."""

import struct

import pytest
from conftest import subprocess_env
from proto import E_PROTO, E_SESSION, PLACE, REPLY, assert_error
from test_security import H, keys, make_server, xxh3_128  # noqa: F401
from test_sessions import Client

THREE = ("--device", "cpu,cpu,cpu", "--lease-ms", "0")

# A tensor made on 'remote' (no hint: the least loaded device).
PLAIN = """
import sys, torch, djinn
x = torch.arange(6.0).reshape(2, 3)
r = x.to('remote')
y = (r * 2 + 1).sum(0)
print('PLACED', torch.remote.current_device(), r.device.index, y.device.index,
      y.cpu().tolist() == (x * 2 + 1).sum(0).tolist(), flush=True)
sys.stdin.readline()
"""

# A CPU module moved with .to('remote'): its weights (seeded by argv[1]) are the hint.
MODULE = """
import sys, torch, djinn
g = torch.Generator().manual_seed(int(sys.argv[1]))
m = torch.nn.Sequential(torch.nn.Linear(256, 256), torch.nn.ReLU(), torch.nn.Linear(256, 64))
with torch.no_grad():
    for p in m.parameters():
        p.copy_(torch.randn(p.shape, generator=g) / 16)
x = torch.randn(8, 256, generator=g)
ref = m(x)
r = m.to('remote')
y = r(x.to('remote'))
print('PLACED', torch.remote.current_device(), next(r.parameters()).device.index,
      y.device.index, torch.allclose(y.cpu(), ref, atol=1e-5), flush=True)
sys.stdin.readline()
"""

# remote:2 named: it stays there, whatever the load.
EXPLICIT = """
import sys, torch, djinn
x = torch.arange(4.0, device='remote:2')
y = torch.ones(4).to(torch.device('remote', 2)) + x
torch.remote.set_device(2)
z = torch.zeros(2, device='remote') + 1
print('PLACED', torch.remote.current_device(), x.device.index, y.device.index, z.device.index,
      y.cpu().tolist() == [1.0, 2.0, 3.0, 4.0] and z.cpu().tolist() == [1.0, 1.0], flush=True)
sys.stdin.readline()
"""


def _env(srv, **extra):
    return subprocess_env(
        DJINN_SERVER=srv.endpoint, DJINN_CONNECT_TIMEOUT=20, OMP_NUM_THREADS=1, **extra
    )


def _placed(started, code, srv, *argv, **env):
    """Start a client, wait for its PLACED line: [current device, devices..., parity]."""
    c = Client(code, _env(srv, **env), argv)
    started.append(c)
    words = c.expect("PLACED").split()
    return [int(w) for w in words[:-1]] + [words[-1] == "True"]


@pytest.fixture
def started():
    cs = []
    yield cs
    for c in cs:
        if c.proc.poll() is None:
            c.send()
            try:
                c.wait(30)
            except Exception:  # noqa: BLE001
                c.kill()


@pytest.mark.timeout(300)
def test_sessions_without_shared_weights_spread_and_an_index_is_honoured(make_server, started):
    srv = make_server(*THREE)
    # each session counts on its device once placed: the next goes to the least loaded
    assert [_placed(started, PLAIN, srv) for _ in range(3)] == [
        [0, 0, 0, True],
        [1, 1, 1, True],
        [2, 2, 2, True],
    ]
    assert _placed(started, EXPLICIT, srv) == [2, 2, 2, 2, True]
    # a session that only ever named remote:2 counts there, not where PLACE would have
    # put it: the next default session goes to 0 (1 session) rather than 2 (2 sessions)
    assert _placed(started, PLAIN, srv) == [0, 0, 0, True]
    # DJINN_PLACE=0: device 0 without asking, as before placement
    assert _placed(started, PLAIN, srv, DJINN_PLACE="0") == [0, 0, 0, True]


@pytest.mark.timeout(300)
def test_sessions_with_the_same_weights_land_on_the_same_device(make_server, started):
    srv = make_server(*THREE)
    assert _placed(started, PLAIN, srv) == [0, 0, 0, True]
    first = _placed(started, MODULE, srv, "1")
    assert first == [1, 1, 1, True]  # least loaded: device 0 holds a session
    # the same weights: the device holding them, although device 2 is idle
    assert _placed(started, MODULE, srv, "1") == [1, 1, 1, True]
    st = srv.stats()
    assert st["text_entries"] == 2 and st["text_refs"] == 4, st  # one copy, two sessions
    # other weights: the least loaded device again
    assert _placed(started, MODULE, srv, "2") == [2, 2, 2, True]


@pytest.mark.timeout(400)
def test_ghost_loaded_sessions_of_one_model_share_a_device(make_server, started, tmp_path):
    from test_model_store import _save_tiny

    models = str(tmp_path / "models")
    _save_tiny(models)
    srv = make_server(*THREE, "--models", models)
    code = """
import sys, torch, transformers, djinn
m = djinn.from_pretrained("tiny-bert")
ref = transformers.AutoModel.from_pretrained(sys.argv[1] + "/tiny-bert").eval()
ids = torch.tensor([[1, 5, 7, 2]])
with torch.no_grad():
    y = m(input_ids=ids.to('remote')).last_hidden_state
    ok = torch.allclose(y.cpu(), ref(input_ids=ids).last_hidden_state, atol=1e-5)
print('PLACED', torch.remote.current_device(), m.embeddings.word_embeddings.weight.device.index,
      y.device.index, ok, flush=True)
sys.stdin.readline()
"""
    assert _placed(started, PLAIN, srv) == [0, 0, 0, True]
    assert _placed(started, code, srv, models) == [1, 1, 1, True]
    assert _placed(started, code, srv, models) == [1, 1, 1, True]  # the model is bound there


# ------------------------------------------------------------------ the message


def _place(c, **body):
    return c.call(PLACE, body)


def _text_upload(c, dev, data):
    h = H()
    rep = c.g(binds=[h], allocs=[[h, len(data)]], uploads=[[h, 1, True]], frames=[data], dev=dev)
    assert rep[0]["type"] == REPLY, rep[0]
    return h


@pytest.mark.parametrize(
    "body, text",
    [
        ({"model": ""}, "PLACE: 'model' must be a model name of at most 256 bytes"),
        ({"model": 7}, "PLACE: 'model' must be a model name"),
        ({"probe": 1}, "PLACE: 'probe' must be true or false"),
        ({"hashes": [[1, 2]]}, "PLACE: 'hashes' must be an array of at most 64"),
        ({"hashes": [[1, 2, 3]] * 65}, "PLACE: 'hashes' must be an array of at most 64"),
    ],
)
def test_place_is_checked(make_server, body, text):
    c = make_server(*THREE).session()
    assert_error(c.call_raw(PLACE, body), E_PROTO, text)


def test_place_needs_a_session_and_probes_count_nothing(make_server):
    srv = make_server(*THREE)
    c = srv.connect()
    assert_error(c.call(PLACE, {}, sid=0), E_SESSION, "unknown session")
    c.hello()
    for _ in range(3):  # a probe leaves the session uncounted: the same answer each time
        h, _ = _place(c, probe=True)
        assert h["type"] == REPLY and h["body"]["dev"] == 0 and h["body"]["held"] == 0, h
    h, _ = _place(c)
    assert h["body"]["dev"] == 0
    d = srv.session()
    h, _ = _place(d)  # c counts on 0 now
    assert h["body"]["dev"] == 1, h
    # keyless server: every client is the owner, an operator, and sees the load
    assert h["body"]["load"] == [0, 0, 0], h


def test_place_follows_only_content_this_tenant_uploaded(make_server, keys):  # noqa: F811
    srv = make_server(*THREE, keys=keys)
    alice, bob, ops = srv.session("alice"), srv.session("bob"), srv.session("ops")
    data = struct.pack("<4096f", *range(4096))
    hi, lo = xxh3_128(data)
    _text_upload(alice, 2, data)
    a2 = srv.session("alice")
    h, _ = _place(a2, hashes=[[hi, lo, len(data)]])
    assert h["body"]["dev"] == 2 and h["body"]["held"] == len(data), h
    assert "load" not in h["body"], h  # a tenant does not see other tenants' load
    # bob holds nothing of it: placement is no oracle for alice's content
    h, _ = _place(bob, hashes=[[hi, lo, len(data)]])
    assert h["body"]["held"] == 0 and h["body"]["dev"] == 0, h
    # the same hash with another size is not that content
    h, _ = _place(srv.session("alice"), hashes=[[hi, lo, len(data) + 4]], probe=True)
    assert h["body"]["held"] == 0, h
    h, _ = _place(ops, probe=True)
    assert h["body"]["dev"] == 1 and h["body"]["load"][0] == 0, h  # operators see the load

"""Bulk transfers (issue 11, PROTOCOL.md 7.7): uploads sent in chunks from the caller's
memory, fetches sent from a copy-on-write snapshot of the storage, downloads written
straight into the destination (or adopted as the CPU tensor's memory).

1. Snapshot semantics: a host tensor changed right after `.to('remote')` returns leaves
   the remote copy as it was, at every size around the chunk boundary, private or Text.
2. Byte parity of chunked uploads of every size around the chunk size, and Text content
   uploaded in chunks is deduplicated (by HAVE, and by the server for another session).
3. Downloads into every kind of destination: non-contiguous, offset, another dtype, and
   `.cpu()` of a large tensor, whose memory is the reply itself (writable, resizable).
4. Hostile chunk sequences (out of order, overlapping, repeated, beyond the upload,
   empty, too many open, over the tensor limit) are refused and leave nothing behind.
5. A client that goes away mid-upload leaves the server's counters where they started.
6. A fetch reply carries the bytes of the fetch, even when the client writes the tensor
   before the reply has left (the snapshot), and a freed large block never shows its
   bytes to the next owner (the VMU's warm blocks are zeroed).
"""

import struct

import pytest
import torch
from conftest import poll, run_python, subprocess_env
import msgpack
from proto import CLOSE, E_ARGS, E_HANDLE, E_LIMIT, E_QUOTA, ERROR, FETCH, GRAPH, REPLY, encode
from test_security import H, MiB, make_server, node, t32  # noqa: F401 - make_server: a fixture

C = 4096  # DJINN_UPLOAD_CHUNK of the client processes below

# ------------------------------------------------------------------ 1, 2. the client


_PARITY_CLIENT = """
import torch, djinn
C = 4096
sizes = [C, C + 1, 2 * C - 1, 2 * C, 2 * C + 1, 5 * C + 3, 64 * C + 17, C - 1, 1]
for p in (0, 1):  # sizes from DJINN_TEXT_MIN_BYTES (8192) are Text content
    for n in sizes:
        g = torch.Generator().manual_seed(2 * n + p)
        src = torch.randint(0, 256, (n,), dtype=torch.uint8, generator=g)
        keep = src.clone()
        r = src.to('remote')
        src.fill_(7)  # the caller's tensor changes at once: the remote copy does not
        back = r.cpu()
        assert torch.equal(back, keep), (p, n, (back != keep).nonzero()[:5].tolist())
        # into an existing remote tensor, and into a view of one (a staged copy_)
        dst = torch.zeros(n + 3, dtype=torch.uint8, device='remote')
        dst[3:].copy_(keep)
        assert torch.equal(dst.cpu()[3:], keep) and dst.cpu()[:3].tolist() == [0, 0, 0], n
        whole = torch.empty(n, dtype=torch.uint8, device='remote')
        whole.copy_(keep)
        assert torch.equal(whole.cpu(), keep), n
m0 = djinn.bytes_moved()
f = torch.arange(300 * C // 4, dtype=torch.float32)  # Text (DJINN_TEXT_MIN_BYTES 8192)
a = f.to('remote')
b = f.to('remote')  # the same content: offered by hash, nothing sent
m1 = djinn.bytes_moved()
assert torch.equal(a.cpu(), f) and torch.equal(b.cpu(), f)
torch.remote.synchronize()
st = djinn.remote.memory_stats()
print('OK', m1['upload_bytes'] - m0['upload_bytes'], m1['dedup_bytes'] - m0['dedup_bytes'],
      st['text.entries'], flush=True)
"""


def test_chunked_uploads_are_snapshots_with_exact_bytes(private_server):
    ep = private_server("--lease-ms", "0")
    env = subprocess_env(
        DJINN_SERVER=ep, DJINN_UPLOAD_CHUNK=str(C), DJINN_TEXT_MIN_BYTES="8192", OMP_NUM_THREADS=1
    )
    r = run_python(_PARITY_CLIENT, env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    line = [ln for ln in r.stdout.splitlines() if ln.startswith("OK")][-1]
    sent, dedup, entries = map(int, line.split()[1:])
    n = 300 * C
    assert sent == n, f"the first upload sends {n} bytes, the second none: {sent}"
    assert dedup == n, dedup
    assert entries >= 1


_BIG_CLIENT = """
import torch, djinn
src = torch.randn(5 << 20)  # 20 MiB: 20 chunks of 1 MiB, Text content
keep = src.clone()
r = src.to('remote')
src.mul_(0)
assert torch.equal(r.cpu(), keep)
r.add_(1)  # the server writes it; the next read is a fresh fetch
back = r.cpu()
assert torch.equal(back, keep + 1)
back.add_(1)  # the CPU tensor is an ordinary one: writable ...
back.resize_(back.numel() + 7)  # ... and resizable
assert torch.equal(back[: keep.numel()], keep + 1 + 1)
del r
torch.remote.synchronize()
print('OK', djinn.bytes_moved()['upload_bytes'], flush=True)
"""


def test_default_chunks_and_adopted_downloads(private_server):
    ep = private_server("--lease-ms", "0")
    r = run_python(_BIG_CLIENT, subprocess_env(DJINN_SERVER=ep, OMP_NUM_THREADS=1), timeout=300)
    assert r.returncode == 0 and "OK" in r.stdout, r.stderr[-3000:]


# ------------------------------------------------------------------ 3. downloads


def test_downloads_into_every_kind_of_destination(remote):
    src = torch.randn(3 << 20)  # 12 MiB: .cpu() takes the reply's frame as its memory
    r = src.to(remote)
    a = r.cpu()
    assert torch.equal(a, src) and a.is_contiguous() and a.device.type == "cpu"
    assert torch.equal(torch.from_numpy(a.numpy()), src)
    t = r.view(1024, -1).t()  # not dense in storage order: PyTorch's own _to_copy
    assert torch.equal(t.cpu(), src.view(1024, -1).t())
    assert torch.equal(r[5:].cpu(), src[5:])  # an offset into the storage
    strided = torch.empty(2 * src.numel())[::2]
    strided.copy_(r)
    assert torch.equal(strided, src)
    wide = torch.empty(src.numel(), dtype=torch.float64)
    wide.copy_(r)
    assert torch.equal(wide, src.double())
    shifted = torch.zeros(src.numel() + 5)[5:]
    shifted.copy_(r)
    assert torch.equal(shifted, src)
    small = torch.empty(100)
    small.copy_(r[:100])
    assert torch.equal(small, src[:100])
    h = r.half()  # another dtype on the server, then .cpu() of it
    assert torch.equal(h.cpu(), src.half())
    del r, h
    torch.remote.synchronize()
    assert torch.equal(a, src)  # the adopted memory outlives the remote tensor
    a.fill_(1)
    assert a.sum().item() == src.numel()


# ------------------------------------------------------------------ 4. hostile chunks


def _chunk(s, h, off, total, frame, text=False, allocs=()):
    return s.g(binds=[h], allocs=allocs, uploads=[[h, 1, text, off, total]], frames=[frame])


def _counters(srv, s):
    st = srv.stats()
    return st["bytes_in_use"], st["devices"][0]["data_used"], s.stats_of(s.sid)["session_bytes"]


def test_hostile_chunk_sequences_are_refused_and_leave_nothing(make_server):
    srv = make_server("--max-tensor-bytes", str(4 * MiB))
    s = srv.session()
    base = _counters(srv, s)
    n, k = 3 * C, C
    data = bytes(range(256)) * (n // 256)
    cases = {
        # name: chunks (offset, length, total, text); the last one is refused
        "a gap": [(0, k, n, False), (2 * k, k, n, False)],
        "overlapping": [(0, k, n, False), (k // 2, k, n, False)],
        "repeated": [(0, k, n, False), (k, k, n, False), (k, k, n, False)],
        "restarted while open": [(0, k, n, False), (0, k, n, False)],
        "beyond the upload": [(0, k, n, False), (k, 2 * k + 1, n, False)],
        "starts past its end": [(n, 1, n, False)],
        "empty": [(0, 0, n, False)],
        "no upload open": [(k, k, n, False)],
        "another total": [(0, k, n, False), (k, k, n + 1, False)],
        "another text flag": [(0, k, n, True), (k, k, n, False)],
    }
    for name, chunks in cases.items():
        h = H()
        for i, (off, ln, total, text) in enumerate(chunks):
            rep = _chunk(s, h, off, total, data[off : off + ln] if ln <= n - off else data, text)
            if i + 1 < len(chunks):
                assert rep[0]["type"] == REPLY, (name, rep[0])
                assert _counters(srv, s)[0] == base[0] + total, name  # charged at once
            else:
                assert rep[0]["type"] == ERROR and rep[0]["body"]["code"] == E_ARGS, (name, rep)
        assert _counters(srv, s) == base, name
        # nothing was bound: the handle is unknown, and a clean upload to it works
        rep = s.g(binds=[h], fetch=[[h, 0, 4]])
        assert rep[0]["type"] == ERROR and rep[0]["body"]["code"] == E_HANDLE, (name, rep)
        for off in range(0, n, k):
            body, _ = s.ok(binds=[h], uploads=[[h, 1, False, off, n]], frames=[data[off : off + k]])
        assert s.get(h, n) == data, name
        s.ok(frees=[h])
        assert _counters(srv, s) == base, name
    # too many open at once: the ninth is refused, the eight stay open until closed
    hs = [H() for _ in range(9)]
    for i, h in enumerate(hs):
        rep = _chunk(s, h, 0, n, data[:k])
        want = REPLY if i < 8 else ERROR
        assert rep[0]["type"] == want, (i, rep[0])
    assert "uploads are arriving in chunks already" in rep[0]["body"]["msg"]
    assert rep[0]["body"]["code"] == E_ARGS
    assert _counters(srv, s)[0] == base[0] + 8 * n
    # over the server's tensor limit, and over the session's quota
    rep = _chunk(s, H(), 0, 8 * MiB, data[:k])
    assert rep[0]["type"] == ERROR and rep[0]["body"]["code"] == E_LIMIT, rep
    s.call(CLOSE, {})  # the open uploads go with the session
    poll(lambda: srv.stats()["bytes_in_use"] == base[0], desc="bytes back to the start")
    assert srv.stats()["devices"][0]["data_used"] == base[1]


def test_chunked_upload_over_the_quota_is_refused_at_its_first_chunk(make_server):
    srv = make_server("--session-quota-bytes", str(MiB))
    s = srv.session()
    rep = _chunk(s, H(), 0, 2 * MiB, b"\x01" * C)
    assert rep[0]["type"] == ERROR and rep[0]["body"]["code"] == E_QUOTA, rep
    assert "session quota exceeded by an upload of 2097152 bytes" in rep[0]["body"]["msg"]
    assert srv.stats()["bytes_in_use"] == 0


# ------------------------------------------------------------------ 5. a client that dies


def test_a_client_gone_mid_upload_leaves_the_counters_at_zero(make_server):
    srv = make_server("--lease-ms", "500")
    base = srv.stats()
    s = srv.session()
    h, n = H(), 8 * MiB
    for off in range(0, 2 * MiB, MiB):  # two of eight chunks, then the client is gone
        s.ok(binds=[h], uploads=[[h, 1, True, off, n]], frames=[b"\x5a" * MiB])
    st = srv.stats()
    assert st["bytes_in_use"] == base["bytes_in_use"] + n
    assert st["devices"][0]["data_used"] >= base["devices"][0]["data_used"] + n
    s.close()  # no CLOSE: the lease reclaims it
    srv.conns.remove(s)

    def back():
        st = srv.stats()
        return (
            st["sessions_open"] == 0
            and st["bytes_in_use"] == base["bytes_in_use"]
            and st["devices"][0]["data_used"] == base["devices"][0]["data_used"]
            and st["text_entries"] == 0
        )

    poll(back, timeout=30, desc="the session and its open upload reclaimed")


# ------------------------------------------------------------------ 6. fetch snapshots


def test_a_fetch_reply_holds_the_bytes_of_the_fetch(make_server):
    srv = make_server()
    s = srv.session()
    n = 4 << 20  # 16 MiB of float32: lent from the storage, not copied; sent for a while
    ramp = torch.arange(n, dtype=torch.float32)
    x = s.put(ramp.numpy().tobytes())
    for _ in range(3):
        # the fetch, then without waiting a write to the same storage, then its fetch
        s.seq += 1
        first = s.seq
        s.sock.send_multipart([encode(FETCH, s.sid, first, {"dev": 0, "fetch": [[x, 0, 4 * n]]})])
        s.seq += 1
        fill = node("aten::fill_", "Scalar", [t32(0, [n]), 5.0], [t32(0, [n])])
        s.sock.send_multipart(
            [encode(GRAPH, s.sid, s.seq, {"dev": 0, "binds": [x], "nodes": [fill]})]
        )
        replies = {}
        while len(replies) < 2:
            assert s.sock.poll(20000), "no reply"
            parts = s.sock.recv_multipart()
            hd = msgpack.unpackb(parts[0], raw=False, strict_map_key=False)
            replies[hd["seq"]] = (hd, parts[1:])
        hd, frames = replies[first]
        assert hd["type"] == REPLY, hd
        got = torch.frombuffer(bytearray(frames[0]), dtype=torch.float32)
        assert torch.equal(got, ramp), "the reply shows the write that followed the fetch"
        assert s.get(x, 16) == struct.pack("<4f", 5.0, 5.0, 5.0, 5.0)
        x = s.put(ramp.numpy().tobytes())
    before = srv.stats()["bytes_in_use"]
    s.ok(frees=[x])
    assert srv.stats()["bytes_in_use"] == before - 4 * n


def test_freed_large_blocks_never_show_their_bytes(make_server):
    srv = make_server()
    a, b = srv.session(), srv.session()
    n = 4 * MiB
    for _ in range(3):
        x = a.put(b"\xab" * n)  # a warm block once freed: zeroed, kept resident
        a.ok(frees=[x])
        y = H()
        one = node("aten::fill_", "Scalar", [t32(0, [1]), 1.0], [t32(0, [1])])
        body, fr = b.ok(binds=[y], allocs=[[y, n]], nodes=[one], fetch=[[y, 0, n]])
        assert fr[0][:4] == struct.pack("<f", 1.0)
        assert fr[0][4:] == bytes(n - 4), "another session's bytes"
        b.ok(frees=[y])
    assert srv.stats()["devices"][0]["data_used"] == 0


@pytest.mark.parametrize("text", [False, True])
def test_two_sessions_upload_the_same_content_in_chunks(make_server, text):
    srv = make_server()
    data = bytes((i * 7) & 0xFF for i in range(3 * MiB))
    hs = []
    for s in (srv.session(), srv.session()):
        h = H()
        for off in range(0, len(data), MiB):
            s.ok(binds=[h], uploads=[[h, 1, text, off, len(data)]], frames=[data[off : off + MiB]])
        assert s.get(h, len(data)) == data
        hs.append((s, h))
    st = srv.stats()
    assert st["text_entries"] == (1 if text else 0), st
    assert st["bytes_in_use"] == (0 if text else 2 * len(data)), st
    if text:
        assert st["text_hits"] == 1 and st["text_bytes"] == len(data), st
    for s, h in hs:
        s.ok(frees=[h])
    assert srv.stats()["bytes_in_use"] == 0

"""Record real client messages as fuzzer seeds (make fuzz-seeds).

Runs a mix of workloads on 'remote' with DJINN_RECORD_DIR set (the client writes every
request in the server fuzzer's framing), then keeps a bounded, de-duplicated set:
fuzz/corpus/server gets whole framed messages, fuzz/corpus/decode their header frames.
"""

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile

WORKLOAD = r"""
import torch, djinn
torch.manual_seed(0)
x = torch.randn(8, 16).to('remote')
w = torch.nn.Linear(16, 4).to('remote')
opt = torch.optim.SGD(w.parameters(), lr=0.1)
for _ in range(3):
    loss = w(x).relu().sum(); loss.backward(); opt.step(); opt.zero_grad()
print(loss.item())
y = x[x > 0]                                  # data-dependent: a DYNAMIC node
print(torch.nonzero(x > 1).shape, y.sum().item())
big = torch.arange(1 << 15, dtype=torch.float32).to('remote')   # a Text upload (HAVE)
big2 = torch.arange(1 << 15, dtype=torch.float32).to('remote')
print((big + big2)[:4].cpu())
v = x.t()[2:5]; v.mul_(2); print(v.contiguous().cpu().sum())
c = torch.randn(3, dtype=torch.complex64).to('remote'); print((c * 2).cpu())
print(torch.cat([x, x]).softmax(-1).sum().item())
torch.remote.manual_seed(3); print(torch.rand(3, device='remote').cpu())
from transformers import LlamaConfig, LlamaForCausalLM
cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                  num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64)
m = LlamaForCausalLM(cfg).eval().to('remote')
ids = torch.randint(0, 64, (1, 5))
print(m.generate(ids.to('remote'), max_new_tokens=4, do_sample=False).cpu())
"""

# One conversation whose fragments differ only in sizes: a GRAPH that files the plan-cache
# entry, then GRAPH_CACHED messages against its template (tpl, patch, binds_d, allocs_d,
# allocs_n, frees_d): written as one server seed, so the fuzzer starts from a hit.
TEMPLATE = r"""
import torch, djinn
for n in (4, 5, 7, 300):
    x = torch.full((n,), 2.0, device='remote')
    print((x * 3 + x[1:].sum()).sum().item())
"""


def _record(code, rec, env):
    subprocess.run([sys.executable, "-c", code], env=dict(env, DJINN_RECORD_DIR=rec), check=True,
                   capture_output=True)
    return [open(os.path.join(rec, n), "rb").read() for n in sorted(os.listdir(rec))]


def _frame(hdr, frames=()):
    out = bytes([len(frames), len(hdr) & 0xFF, len(hdr) >> 8]) + hdr
    for f in frames:
        out += bytes([len(f) & 0xFF, len(f) >> 8]) + f
    return out


def _pattern_conversation():
    """GRAPH (x + x -> out, float32 [4]) that files an entry, then GRAPH_CACHED by
    pattern ('pal' + 'pat') at size 2: every size moves by -2, the handles by a shift."""
    import struct

    import msgpack
    import torch  # noqa: F401 - loads libtorch for djinn._C

    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from djinn._C import _proto

    h0, h1 = 1 << 44, (1 << 44) + 512

    def ref(slot, n):
        return msgpack.ExtType(1, struct.pack("<QqBBqq", slot, 0, 6, 1, n, 1))

    def hdr(type_, seq, body):
        return msgpack.packb({"type": type_, "sid": 0, "seq": seq, "body": body})

    n = 4
    node = ["aten::add", "out", [ref(0, n), ref(0, n), 1, ref(1, n)], [ref(1, n)], 0]
    graph = {"binds": [h0, h1], "allocs": [[h0, 16], [h1, 16]], "uploads": [[h0, 1]],
             "nodes": [node], "fetch": [[h1, 0, 16]], "fp": [7, 8]}
    ints = [0, n, 1, 0, n, 1, 1, 0, n, 1, 0, n, 1]
    tpl = _proto.sym_digest(ints, [h0, h1], [(h0, 16), (h1, 16)], [])
    # positions: 13 integers, then 2 alloc sizes, then 2 binds
    pat = [2, 0, 3, 0, 4, 0, 3, 0, 2, 1, 1, 1, 1, 2, 1, 2]
    cached = {"allocs_d": [2, 4096], "uploads": [[h0 + 4096, 1]], "fetch": [[h1 + 4096, 0, 8]],
              "fp": [7, 8], "tpl": tpl, "pal": [-2, -8, 4096], "pat": pat}
    x4, x2 = struct.pack("<4f", 1, 2, 3, 4), struct.pack("<2f", 5, 6)
    return _frame(hdr(3, 1, graph), [x4]) + _frame(hdr(4, 2, cached), [x2])


def semantic_seeds():
    """Hand-built GRAPHs with the semantic fields (qos, phase, life), valid and edge values:
    the recorded workload sends auto-class fragments only."""
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from djinn._C import _proto

    k = _proto.constants
    out = []
    for qos, phase, life in ((1, 2, [1, 0]), (3, 1, [3, 65533]), (2, 3, [0, 0])):
        body = {
            "dev": 0,
            "binds": [1 << 44],
            "allocs": [[1 << 44, 16]],
            "uploads": [[1 << 44, 1]],
            "fetch": [[1 << 44, 0, 16]],
            "qos": qos,
            "phase": phase,
            "life": life,
        }
        hdr = _proto.encode(k["GRAPH"], 1, 1, body)
        frame = bytes(16)
        out.append(bytes([1, len(hdr) & 0xFF, len(hdr) >> 8]) + hdr + bytes([16, 0]) + frame)
    return out


def write_semantic_seeds(root):
    for data in semantic_seeds():
        h = hashlib.sha256(data).hexdigest()
        open(os.path.join(root, "corpus", "server", h[:16]), "wb").write(data)
        hlen = data[1] | data[2] << 8
        open(os.path.join(root, "corpus", "decode", h[:16]), "wb").write(data[3 : 3 + hlen])


def main():
    root = os.path.dirname(os.path.abspath(__file__))
    rec = tempfile.mkdtemp(prefix="djinn-rec-")
    env = dict(os.environ)
    env.pop("DJINN_SERVER", None)
    env["PYTHONPATH"] = os.path.dirname(root) + os.pathsep + env.get("PYTHONPATH", "")
    env["DJINN_UPLOAD_CHUNK"] = "16384"  # the 128 KiB uploads below travel in chunks (7.7)
    msgs = _record(WORKLOAD, rec, env)
    seen, kept = set(), []
    for data in msgs:
        h = hashlib.sha256(data).hexdigest()
        if h not in seen:
            seen.add(h)
            kept.append((len(data), h, data))
    kept.sort()
    kept = kept[:: max(1, len(kept) // 64)][:64]  # spread over sizes, at most 64
    for sub in ("server", "decode"):
        d = os.path.join(root, "corpus", sub)
        shutil.rmtree(d, ignore_errors=True)
        os.makedirs(d)
    for _, h, data in kept:
        open(os.path.join(root, "corpus", "server", h[:16]), "wb").write(data)
        hlen = data[1] | data[2] << 8
        open(os.path.join(root, "corpus", "decode", h[:16]), "wb").write(data[3 : 3 + hlen])
    shutil.rmtree(rec)
    rec = tempfile.mkdtemp(prefix="djinn-rec-")
    msgs = _record(TEMPLATE, rec, env)[-8:]  # the server fuzzer takes 8 messages
    open(os.path.join(root, "corpus", "server", "template-patches"), "wb").write(b"".join(msgs))
    shutil.rmtree(rec)
    conv = _pattern_conversation()
    open(os.path.join(root, "corpus", "server", "template-pattern"), "wb").write(conv)
    for i, data in enumerate(msgs + [conv]):
        hlen = data[1] | data[2] << 8
        open(os.path.join(root, "corpus", "decode", f"template-{i}"), "wb").write(data[3 : 3 + hlen])
    n = _load_model_seeds(root)
    write_semantic_seeds(root)
    k = _chunk_seeds(root)
    p = _place_seeds(root)
    print(f"{len(kept)} seeds from {len(seen)} distinct messages, one template conversation, "
          f"{n} LOAD_MODEL seeds, semantic seeds, {k} chunked-upload conversations, "
          f"{p} PLACE seeds")


def _chunk_seeds(root):
    """Uploads in chunks (PROTOCOL.md 7.7), written by hand so that every rule has a seed:
    a private upload in three chunks then read back, a Text upload in two chunks sent
    twice (the second deduplicated), and sequences the server refuses (a gap, a restart
    while open, a chunk past the end, one of another total)."""
    import msgpack

    sid, h0, h1 = 12345, 1 << 44, (1 << 44) + 4096

    def up(seq, h, off, total, n, text=False, fetch=()):
        body = {"dev": 0, "binds": [h], "uploads": [[h, 1, text, off, total]],
                "fetch": [list(f) for f in fetch]}
        hd = msgpack.packb({"type": 3, "sid": sid, "seq": seq, "body": body})
        return hd, [bytes((off + i) & 0xFF for i in range(n))]

    convs = [
        [up(1, h0, 0, 2500, 1000), up(2, h0, 1000, 2500, 1000),
         up(3, h0, 2000, 2500, 500, fetch=[(h0, 0, 2500)])],
        [up(1, h0, 0, 3000, 2000, True), up(2, h0, 2000, 3000, 1000, True),
         up(3, h1, 0, 3000, 2000, True), up(4, h1, 2000, 3000, 1000, True, [(h1, 0, 3000)])],
        [up(1, h0, 0, 3000, 1000), up(2, h0, 2000, 3000, 1000), up(3, h0, 0, 3000, 1000),
         up(4, h0, 0, 3000, 1000), up(5, h0, 1000, 3000, 2500), up(6, h1, 0, 100, 100),
         up(7, h1, 0, 9000, 1000), up(8, h1, 1000, 9001, 1000)],
    ]
    for conv in convs:
        data = b"".join(_frame(hd, frames) for hd, frames in conv)
        name = "chunks-" + hashlib.sha256(data).hexdigest()[:10]
        open(os.path.join(root, "corpus", "server", name), "wb").write(data)
        for hd, _ in conv:
            name = "chunks-" + hashlib.sha256(hd).hexdigest()[:10]
            open(os.path.join(root, "corpus", "decode", name), "wb").write(hd)
    return len(convs)


def _load_model_seeds(root):
    """LOAD_MODEL conversations for the model store fuzz_server writes at start ("tiny",
    "org/tiny", "secret"; tensors "a", "b", "w"), and a LOAD_MODEL reply for fuzz_decode.
    The recording client has no server with --models, so these are written by hand."""
    import msgpack

    sid, h0 = 12345, 1 << 44

    def hdr(type_, seq, body):
        return msgpack.packb({"type": type_, "sid": sid, "seq": seq, "body": body})

    def load(seq, name, binds=None):
        body = {"dev": 0, "name": name}
        if binds is not None:
            body["binds"] = binds
        return hdr(8, seq, body)

    def frees(seq, handles):
        body = {"dev": 0, "seed": None, "binds": [], "allocs": [], "uploads": [], "nodes": []}
        body["frees"] = handles
        return hdr(3, seq, body)

    convs = [
        [load(1, "tiny")],
        [load(1, "tiny", [["a", h0], ["b", h0 + 512], ["w", h0 + 1024]])],
        [load(1, "org/tiny", [["w", h0], ["w", h0 + 512]]), load(2, "tiny", [["w", h0 + 1024]])],
        [load(1, "tiny", [["a", h0]]), frees(2, [h0]), load(3, "tiny", [["a", h0]])],
        [load(1, "tiny", [["a", h0], ["nope", h0 + 512]])],
        [load(1, "secret"), load(2, "../tiny"), load(3, "tiny", [["a", h0], ["a", h0]])],
    ]
    n = 0
    for conv in convs:
        data = b"".join(bytes([0]) + len(m).to_bytes(2, "little") + m for m in conv)
        name = hashlib.sha256(data).hexdigest()[:16]
        open(os.path.join(root, "corpus", "server", name), "wb").write(data)
        for m in conv:
            name = hashlib.sha256(m).hexdigest()[:16]
            open(os.path.join(root, "corpus", "decode", name), "wb").write(m)
        n += 1
    reply = {
        "config": '{"model_type": "bert"}',
        "tensors": [["w", 6, [2, 3]], ["b", 15, [3]]],
        "bound": 0,
        "read_bytes": 0,
    }
    m = hdr(64, 7, reply)
    open(os.path.join(root, "corpus", "decode", hashlib.sha256(m).hexdigest()[:16]), "wb").write(m)
    return n + 1


def _place_seeds(root):
    """PLACE conversations (PROTOCOL.md 5.6): a Text upload then a PLACE naming its hash
    (held for this tenant), a bind of the store's model "tiny" then a PLACE naming it,
    probes, the 64-hash limit and malformed hints; and PLACE replies for fuzz_decode. Written
    by hand: the recording client's server has a single device, where it never asks."""
    import msgpack

    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from djinn._C import _proto

    sid, h0 = 12345, 1 << 44
    k = _proto.constants
    data = bytes(range(64)) * 1024  # a 64 KiB weight: its hash, as a client offers it
    (hi, lo), n = _xxh3_128(data), len(data)

    def hdr(type_, seq, body):
        return msgpack.packb({"type": type_, "sid": sid, "seq": seq, "body": body})

    def frame(m, frames=()):
        out = bytes([len(frames)]) + len(m).to_bytes(2, "little") + m
        for f in frames:
            out += len(f).to_bytes(2, "little") + f
        return out

    def place(seq, **body):
        return hdr(k["PLACE"], seq, body)

    small = bytes(16)  # the fuzzer's frames are at most 64 KiB - 1: a 16-byte Text upload
    sh, sl = _xxh3_128(small)
    up16 = {"dev": 0, "binds": [h0], "allocs": [[h0, 16]], "uploads": [[h0, 1, True]]}
    convs = [
        [frame(hdr(3, 1, up16), [small]), frame(place(2, hashes=[[sh, sl, 16], [hi, lo, n]]))],
        [frame(hdr(8, 1, {"dev": 0, "name": "tiny", "binds": [["w", h0]]})),
         frame(place(2, model="tiny")), frame(place(3, model="secret", probe=True))],
        [frame(place(1)), frame(place(2, probe=True, hashes=[[1, 2, 3]] * 64))],
        [frame(place(1, model="tiny", hashes=[[hi, lo, n]], probe=False))],
    ]
    out = 0
    for conv in convs:
        blob = b"".join(conv)
        open(os.path.join(root, "corpus", "server", "place-" + hashlib.sha256(blob).hexdigest()[:12]), "wb").write(blob)
        out += 1
    decode = [
        place(1, hashes=[[hi, lo, n]]),
        place(2, model="org/tiny", probe=True),
        msgpack.packb({"type": k["PLACE"], "sid": sid, "seq": 3, "body": {"hashes": [[1, 2, 3]] * 65}}),
        msgpack.packb({"type": k["PLACE"], "sid": sid, "seq": 4, "body": {"model": "", "probe": 1}}),
        hdr(64, 5, {"dev": 2, "held": n, "load": [3, 1, 4096]}),
        hdr(64, 6, {"dev": 0, "held": 0}),
    ]
    for m in decode:
        open(os.path.join(root, "corpus", "decode", "place-" + hashlib.sha256(m).hexdigest()[:12]), "wb").write(m)
    return out


def _xxh3_128(data):
    """(high64, low64) of the plain XXH3-128, as the client offers it (HAVE, PLACE)."""
    from djinn._C import _content_hash_buffer

    h = _content_hash_buffer(data)
    return h[0], h[1]


def place_seeds_only():
    """Write the PLACE seeds alone (no recording): ``python fuzz/make_seeds.py place``."""
    root = os.path.dirname(os.path.abspath(__file__))
    print(_place_seeds(root), "PLACE conversations")


if __name__ == "__main__":
    if sys.argv[1:] == ["place"]:
        place_seeds_only()
    else:
        main()

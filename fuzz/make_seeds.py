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


def main():
    root = os.path.dirname(os.path.abspath(__file__))
    rec = tempfile.mkdtemp(prefix="djinn-rec-")
    env = dict(os.environ, DJINN_RECORD_DIR=rec)
    env.pop("DJINN_SERVER", None)
    env["PYTHONPATH"] = os.path.dirname(root) + os.pathsep + env.get("PYTHONPATH", "")
    subprocess.run([sys.executable, "-c", WORKLOAD], env=env, check=True, capture_output=True)
    seen, kept = set(), []
    for name in sorted(os.listdir(rec)):
        data = open(os.path.join(rec, name), "rb").read()
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
    n = _load_model_seeds(root)
    print(f"{len(kept)} seeds from {len(seen)} distinct messages, {n} LOAD_MODEL seeds")


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


if __name__ == "__main__":
    main()

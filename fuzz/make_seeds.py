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
    write_semantic_seeds(root)
    print(f"{len(kept)} seeds from {len(seen)} distinct messages")


if __name__ == "__main__":
    main()

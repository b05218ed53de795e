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


def main():
    root = os.path.dirname(os.path.abspath(__file__))
    rec = tempfile.mkdtemp(prefix="djinn-rec-")
    env = dict(os.environ)
    env.pop("DJINN_SERVER", None)
    env["PYTHONPATH"] = os.path.dirname(root) + os.pathsep + env.get("PYTHONPATH", "")
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
    conv = b"".join(_record(TEMPLATE, rec, env)[-8:])  # the server fuzzer takes 8 messages
    open(os.path.join(root, "corpus", "server", "template-patches"), "wb").write(conv)
    shutil.rmtree(rec)
    print(f"{len(kept)} seeds from {len(seen)} distinct messages, and one template conversation")


if __name__ == "__main__":
    main()

"""scaled_dot_product_attention on 'remote' with a CPU server: CPU's fused kernel.

Where CPU eager runs its flash kernel (its own backend choice, over the same sizes,
strides, dtypes and flags), 'remote' records one `_scaled_dot_product_flash_attention_for_cpu`
node instead of the math path's matmuls, softmax and, with grouped-query attention, the
copy of the whole key and value per call (RemoteKernels.cpp, fused_sdp_choice). Checked
here: the node is the one recorded, results match CPU eager in values and layout, the
backward matches too, and the cases CPU sends down the math path stay there. The server's
checks of hostile arguments to these kernels are in test_security.py (OOB_KERNELS).
"""

import random

import pytest
import torch
import torch.nn.functional as F
from conftest import assert_close
from torch.nn.attention import SDPBackend, sdpa_kernel

pytestmark = pytest.mark.usefixtures("remote")

R = "remote"
FLASH = "aten::_scaled_dot_product_flash_attention_for_cpu"
FLASH_BWD = "aten::_scaled_dot_product_flash_attention_for_cpu_backward"


def _recorded(djinn_mod, fn):
    """fn()'s result and the ops of the fragment it was captured in (alone)."""
    torch.remote.synchronize()
    out = fn()
    torch.remote.synchronize()
    return out, [op.split(".")[0] for op, _, _ in djinn_mod.srg.snapshot()]


def _qkv(rng, g, dtype):
    b, hkv, rep = rng.choice([1, 2]), rng.choice([1, 2]), rng.choice([1, 2, 4])
    lq, lk, d = rng.choice([1, 3, 17]), rng.choice([1, 4, 33]), rng.choice([8, 16])
    h = hkv * rep

    def make(heads, length):
        if rng.random() < 0.5:  # as attention layers make it: (B, L, H, D) seen as (B, H, L, D)
            return torch.randn(b, length, heads, d, generator=g).to(dtype).transpose(1, 2)
        return torch.randn(b, heads, length, d, generator=g).to(dtype)

    return make(h, lq), make(hkv, lk), make(hkv, lk), rep > 1


def _mask(rng, g, q, k, dtype):
    b, h, lq, lk = q.shape[0], q.shape[1], q.shape[2], k.shape[2]
    kind = rng.choice(["none", "none", "float4d", "float2d", "bool"])
    if kind == "float4d":
        return torch.randn(rng.choice([1, b]), rng.choice([1, h]), lq, lk, generator=g).to(dtype)
    if kind == "float2d":
        return torch.randn(lq, lk, generator=g).to(dtype)
    if kind == "bool":
        m = torch.rand(b, 1, lq, lk, generator=g) > 0.3
        m[..., 0] = True  # no row fully masked
        return m
    return None


def _sdpa(q, k, v, mask, causal, gqa):
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, enable_gqa=gqa)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_sdpa_runs_cpus_flash_kernel_and_matches_cpu(dtype, djinn_mod):
    rng = random.Random(f"sdpa-{dtype}")
    g = torch.Generator().manual_seed(7)
    for _ in range(24):
        q, k, v, gqa = _qkv(rng, g, dtype)
        mask = _mask(rng, g, q, k, dtype)
        causal = mask is None and rng.random() < 0.5
        want = _sdpa(q, k, v, mask, causal, gqa)
        args = [None if t is None else t.to(R) for t in (q, k, v, mask)] + [causal, gqa]
        djinn_mod._C._meta_cache_clear()
        got, ops = _recorded(djinn_mod, lambda a=args: _sdpa(*a))
        # its outputs came from the C++ shape function (RemoteMeta.cpp), not the Meta device
        assert FLASH not in dict(djinn_mod._C._meta_slow_ops())
        m = None if mask is None else (mask.dtype, list(mask.shape))
        case = f"q{list(q.shape)} k{list(k.shape)} gqa={gqa} causal={causal} mask={m}"
        assert FLASH in ops and "aten::bmm" not in ops, f"{case}: recorded {ops}"
        assert (got.shape, got.stride(), got.dtype) == (want.shape, want.stride(), want.dtype), case
        assert_close(got, want)


def test_llama_decode_step_runs_one_attention_op_per_layer(djinn_mod):
    from collections import Counter

    from torch.utils._python_dispatch import TorchDispatchMode
    from transformers import LlamaConfig, LlamaForCausalLM

    class Ops(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.seen = Counter()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.seen[func.name().split(".")[0]] += 1
            return func(*args, **(kwargs or {}))

    torch.manual_seed(0)
    cfg = LlamaConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=128,
        max_position_embeddings=64,
    )
    cpu = LlamaForCausalLM(cfg).eval()
    m = LlamaForCausalLM(cfg).eval()
    m.load_state_dict(cpu.state_dict())
    m.to(R)
    ids = torch.randint(0, 128, (1, 9))
    with torch.no_grad():
        want = cpu.generate(ids, max_new_tokens=5, do_sample=False)
        got = m.generate(ids.to(R), max_new_tokens=5, do_sample=False).cpu()
        assert torch.equal(got, want)
        out = m(input_ids=ids.to(R), use_cache=True)
        nxt = out.logits[:, -1:].argmax(-1)
        ops = Ops()
        with ops:
            step = m(input_ids=nxt, past_key_values=out.past_key_values)
        ref = cpu(input_ids=ids, use_cache=True)
        step_ref = cpu(input_ids=nxt.cpu(), past_key_values=ref.past_key_values)
    assert_close(step.logits, step_ref.logits)
    # one flash call per layer, and nothing of the math path (no copy of the KV cache)
    assert ops.seen[FLASH] == cfg.num_hidden_layers, ops.seen
    assert not ops.seen["aten::bmm"] and not ops.seen["aten::clone"], ops.seen


def test_sdpa_backward_matches_cpu(djinn_mod):
    g = torch.Generator().manual_seed(3)
    q = torch.randn(2, 4, 5, 8, generator=g)
    k = torch.randn(2, 2, 7, 8, generator=g)
    v = torch.randn(2, 2, 7, 8, generator=g)
    mask = torch.randn(2, 1, 5, 7, generator=g)
    go = torch.randn(2, 4, 5, 8, generator=g)

    def run(dev, causal):
        ts = [t.to(dev, copy=True).requires_grad_() for t in (q, k, v)]
        y = F.scaled_dot_product_attention(
            *ts, attn_mask=None if causal else mask.to(dev), is_causal=causal, enable_gqa=True
        )
        if dev == R:
            torch.remote.synchronize()
        y.backward(go.to(dev))
        ops = []
        if dev == R:
            torch.remote.synchronize()
            ops = [op.split(".")[0] for op, _, _ in djinn_mod.srg.snapshot()]
        return [y.detach().cpu()] + [t.grad.cpu() for t in ts], ops

    for causal in (False, True):
        got, ops = run(R, causal)
        assert FLASH_BWD in ops and "aten::bmm" not in ops, ops
        want, _ = run("cpu", causal)
        for r, c in zip(got, want):
            torch.testing.assert_close(r, c, rtol=1e-5, atol=1e-5)


def test_cases_cpu_sends_down_the_math_path_stay_there(djinn_mod):
    g = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(1, 2, 3, 8, generator=g) for _ in range(3))
    rq, rk, rv = (t.to(R) for t in (q, k, v))
    got, ops = _recorded(djinn_mod, lambda: F.scaled_dot_product_attention(rq, rk, rv))
    assert FLASH in ops
    # dropout: not the flash kernel on CPU either; the math path draws its mask remotely
    got, ops = _recorded(
        djinn_mod, lambda: F.scaled_dot_product_attention(rq, rk, rv, dropout_p=0.5)
    )
    assert FLASH not in ops and "aten::bmm" in ops, ops
    assert got.shape == q.shape
    # a stride other than 1 in the head dim: CPU's flash declines it, and so does 'remote'
    base = torch.randn(1, 2, 3, 16, generator=g)
    rbase = base.to(R)
    want = F.scaled_dot_product_attention(base[..., ::2], k, v)
    got, ops = _recorded(djinn_mod, lambda: F.scaled_dot_product_attention(rbase[..., ::2], rk, rv))
    assert FLASH not in ops and "aten::bmm" in ops, ops
    assert_close(got, want)
    # with flash switched off, CPU and 'remote' both take the math path
    with sdpa_kernel([SDPBackend.MATH]):
        got, ops = _recorded(djinn_mod, lambda: F.scaled_dot_product_attention(rq, rk, rv))
    assert FLASH not in ops and "aten::bmm" in ops, ops
    assert_close(got, F.scaled_dot_product_attention(q, k, v))


def test_flash_kernel_errors_are_eagers(djinn_mod):
    q = torch.randn(1, 2, 3, 8, device=R)
    k = torch.randn(1, 2, 4, 4, device=R)
    with pytest.raises(RuntimeError, match="Q/K/V should have the same head size"):
        torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, k)
    with pytest.raises(RuntimeError, match="Accept only 4 dims inputs"):
        torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q[0], q[0], q[0])
    # the session carries on
    assert float(torch.ones(3, device=R).sum()) == 3.0

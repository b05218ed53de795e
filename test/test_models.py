"""Whole models on 'remote' against the same models on CPU: forward, generate, autograd,
optimizers, serialization and seeding. Models are tiny (2 CPU cores on the test host)."""

import copy
import io

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from conftest import assert_close

pytestmark = pytest.mark.usefixtures("remote")

R = "remote"


def _mlp():
    return nn.Sequential(
        nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4)
    )


class _CNN(nn.Module):
    def __init__(self, bn=True):
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8) if bn else nn.Identity()
        self.c2 = nn.Conv2d(8, 8, 3, stride=2)
        self.fc = nn.Linear(8 * 2 * 2, 5)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.bn(self.c1(x))), 2)
        x = F.avg_pool2d(F.silu(self.c2(x)), 1)
        return self.fc(x.flatten(1)).log_softmax(-1)


def _pair(factory, seed=0):
    torch.manual_seed(seed)
    cpu = factory()
    rem = copy.deepcopy(cpu).to(R)
    return cpu, rem


# ------------------------------------------------------------------ forward


def test_mlp_forward():
    cpu, rem = _pair(_mlp)
    x = torch.randn(5, 8)
    with torch.no_grad():
        assert_close(rem(x.to(R)), cpu(x), rtol=1e-5, atol=1e-6)
    assert all(p.device.type == "remote" for p in rem.parameters())


def test_cnn_forward_eval():
    cpu, rem = _pair(lambda: _CNN(bn=False))
    cpu.eval()
    rem.eval()
    x = torch.randn(2, 3, 12, 12)
    with torch.no_grad():
        assert_close(rem(x.to(R)), cpu(x), rtol=1e-5, atol=1e-5)


def test_batchnorm_eval_forward():
    x = torch.randn(2, 3, 4, 4)
    bn = nn.BatchNorm2d(3).eval()
    with torch.no_grad():
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
    rbn = copy.deepcopy(bn).to(R)
    with torch.no_grad():
        assert_close(rbn(x.to(R)), bn(x), rtol=1e-5, atol=1e-6)


def test_cnn_forward_train_mode_updates_batchnorm_buffers():
    cpu, rem = _pair(_CNN)
    x = torch.randn(2, 3, 12, 12)
    with torch.no_grad():
        assert_close(rem(x.to(R)), cpu(x), rtol=1e-5, atol=1e-5)
    assert_close(rem.bn.running_mean, cpu.bn.running_mean, rtol=1e-5, atol=1e-6)
    assert_close(rem.bn.running_var, cpu.bn.running_var, rtol=1e-5, atol=1e-6)
    assert_close(rem.bn.num_batches_tracked, cpu.bn.num_batches_tracked)


# ------------------------------------------------------------------ tiny Llama


@pytest.fixture(scope="module")
def llama():
    import transformers

    cfg = transformers.LlamaConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=128,
        max_position_embeddings=64,
    )
    torch.manual_seed(0)
    cpu = transformers.LlamaForCausalLM(cfg).eval()
    rem = copy.deepcopy(cpu).to(R)
    return cpu, rem


def test_llama_logits_equal_cpu(llama):
    cpu, rem = llama
    ids = torch.tensor([[1, 5, 9, 17, 33, 2, 77, 101]])
    with torch.no_grad():
        expected = cpu(ids).logits
        got = rem(ids.to(R)).logits
    assert got.device.type == "remote"
    assert_close(got, expected, rtol=0, atol=1e-4)


def test_llama_logits_batched_with_padding_mask(llama):
    cpu, rem = llama
    ids = torch.tensor([[1, 5, 9, 17, 33, 2], [0, 0, 4, 8, 15, 16]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [0, 0, 1, 1, 1, 1]])
    with torch.no_grad():
        expected = cpu(ids, attention_mask=mask).logits
        got = rem(ids.to(R), attention_mask=mask.to(R)).logits
    # padded positions are garbage in both; compare the real tokens
    assert_close(got[0], expected[0], rtol=0, atol=1e-4)
    assert_close(got[1, 2:], expected[1, 2:], rtol=0, atol=1e-4)


def test_llama_greedy_generate_same_tokens(llama):
    cpu, rem = llama
    ids = torch.tensor([[1, 5, 9, 17, 33, 2]])
    with torch.no_grad():
        expected = cpu.generate(ids, max_new_tokens=8, do_sample=False, use_cache=True)
        got = rem.generate(ids.to(R), max_new_tokens=8, do_sample=False, use_cache=True)
    assert got.device.type == "remote"
    assert expected.shape == (1, 14)
    assert torch.equal(got.cpu(), expected)


def test_llama_generate_with_default_cache_hits_the_plan_cache(llama):
    """Hugging Face's default DynamicCache grows the KV length every token, so no two
    decode steps have the same shapes; they still share one plan-cache entry (sizes are
    bindings, docs/PROTOCOL.md 7.4), the steps after the first travel as small patches,
    and the greedy tokens are CPU's."""
    import djinn

    cpu, rem = llama
    ids = torch.tensor([[1, 5, 9, 17, 33, 2, 8]])
    steps = 16
    hits0 = torch.remote.server_stats()["plan_cache_hits"]
    c0 = djinn.bytes_moved()
    with torch.no_grad():
        kw = dict(max_new_tokens=steps, min_new_tokens=steps, do_sample=False, use_cache=True)
        expected = cpu.generate(ids, **kw)
        got = rem.generate(ids.to(R), **kw)
    c1 = djinn.bytes_moved()
    hits = torch.remote.server_stats()["plan_cache_hits"] - hits0
    assert torch.equal(got.cpu(), expected)
    cached = c1["plan_cache_sends"] - c0["plan_cache_sends"]
    # prefill, the first decode step and generate()'s last step file their fragments
    assert expected.shape == (1, ids.shape[1] + steps)
    assert hits >= steps - 4, (hits, cached)
    assert cached >= steps - 4, (hits, cached)
    assert c1["plan_cache_resends"] == c0["plan_cache_resends"]


def test_llama_generate_without_cache_same_tokens(llama):
    cpu, rem = llama
    ids = torch.tensor([[3, 1, 4, 1, 5]])
    with torch.no_grad():
        expected = cpu.generate(ids, max_new_tokens=4, do_sample=False, use_cache=False)
        got = rem.generate(ids.to(R), max_new_tokens=4, do_sample=False, use_cache=False)
    assert torch.equal(got.cpu(), expected)


# ------------------------------------------------------------------ autograd


def _loss(model, x, y):
    return F.cross_entropy(model(x), y)


def test_mlp_backward_gradients_equal_cpu():
    cpu, rem = _pair(_mlp)
    x, y = torch.randn(6, 8), torch.randint(0, 4, (6,))
    lc = _loss(cpu, x, y)
    lr = _loss(rem, x.to(R), y.to(R))
    lc.backward()
    lr.backward()
    assert lr.device.type == "remote"
    assert abs(lr.item() - lc.item()) < 1e-5
    for (name, pc), pr in zip(cpu.named_parameters(), rem.parameters()):
        assert pr.grad is not None, name
        assert pr.grad.device.type == "remote", name
        assert_close(pr.grad, pc.grad, rtol=1e-5, atol=1e-6)


def test_backward_through_views_inplace_and_input_grad():
    def run(d):
        x = torch.arange(12.0, device=d).reshape(3, 4).requires_grad_()
        w = torch.linspace(-1, 1, 4, device=d).requires_grad_()
        h = x * w
        h = h.t()[1:].contiguous()
        h = h.clone()
        h.mul_(2)
        out = (h.softmax(0) * torch.arange(3.0, device=d)).sum() + h.pow(2).mean()
        out.backward()
        return out.detach(), x.grad, w.grad

    assert_close(run(R), run("cpu"), rtol=1e-5, atol=1e-6)


def test_cnn_backward_gradients_equal_cpu():
    cpu, rem = _pair(_CNN)
    x, y = torch.randn(2, 3, 12, 12), torch.tensor([1, 4])
    F.nll_loss(cpu(x), y).backward()
    F.nll_loss(rem(x.to(R)), y.to(R)).backward()
    for (name, pc), pr in zip(cpu.named_parameters(), rem.parameters()):
        assert_close(pr.grad, pc.grad, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    "opt_cls,kw",
    [
        (torch.optim.SGD, dict(lr=0.1)),
        (torch.optim.SGD, dict(lr=0.1, momentum=0.9, weight_decay=1e-2)),
        (torch.optim.AdamW, dict(lr=1e-2)),
        (torch.optim.AdamW, dict(lr=1e-2, foreach=False)),
    ],
    ids=["sgd", "sgd_momentum", "adamw", "adamw_for_loop"],
)
def test_optimizer_steps_equal_cpu(opt_cls, kw):
    cpu, rem = _pair(_mlp)
    oc = opt_cls(cpu.parameters(), **kw)
    orr = opt_cls(rem.parameters(), **kw)
    torch.manual_seed(1)
    batches = [(torch.randn(6, 8), torch.randint(0, 4, (6,))) for _ in range(3)]
    for x, y in batches:
        for model, opt, xx, yy in ((cpu, oc, x, y), (rem, orr, x.to(R), y.to(R))):
            opt.zero_grad()
            _loss(model, xx, yy).backward()
            opt.step()
    for pc, pr in zip(cpu.parameters(), rem.parameters()):
        assert pr.device.type == "remote"
        assert_close(pr.detach(), pc.detach(), rtol=1e-5, atol=1e-6)
    # the optimizer state lives on 'remote' too
    for st in orr.state.values():
        for v in st.values():
            if isinstance(v, torch.Tensor) and v.dim() > 0:
                assert v.device.type == "remote"


def test_no_grad_and_detach_do_not_track():
    x = torch.ones(3, device=R, requires_grad=True)
    with torch.no_grad():
        y = x * 2
    assert not y.requires_grad
    z = (x * 3).detach()
    assert not z.requires_grad and z.grad_fn is None
    assert_close(z, torch.full((3,), 3.0))


# ------------------------------------------------------------------ serialization


def test_save_load_roundtrip_default_map_location():
    t = torch.arange(6.0, device=R).reshape(2, 3) * 1.5
    i = torch.tensor([1, -2, 3], dtype=torch.int16, device=R)
    buf = io.BytesIO()
    torch.save({"t": t, "view": t[1], "i": i, "meta": 7}, buf)
    buf.seek(0)
    d = torch.load(buf)
    assert d["meta"] == 7
    for k in ("t", "view", "i"):
        assert d[k].device.type == "remote", k
    assert_close(d["t"], t.cpu())
    assert_close(d["i"], i.cpu())
    assert_close(d["view"], t.cpu()[1])
    # storage sharing survives the round trip, like on CPU
    assert d["view"].untyped_storage().data_ptr() == d["t"].untyped_storage().data_ptr()
    assert d["view"].storage_offset() == 3
    d["view"].mul_(10)
    assert_close(d["t"], torch.tensor([[0.0, 1.5, 3.0], [45.0, 60.0, 75.0]]))
    assert_close(t, torch.tensor([[0.0, 1.5, 3.0], [4.5, 6.0, 7.5]]))  # the original is untouched


def test_save_load_map_location_cpu_and_remote():
    t = torch.linspace(-1, 1, 5, device=R)
    buf = io.BytesIO()
    torch.save(t, buf)
    buf.seek(0)
    c = torch.load(buf, map_location="cpu")
    assert c.device.type == "cpu"
    assert torch.equal(c, t.cpu())
    buf.seek(0)
    r = torch.load(buf, map_location="remote:0", weights_only=True)
    assert r.device == torch.device("remote", 0)
    assert torch.equal(r.cpu(), t.cpu())
    # CPU-saved data loaded onto remote
    buf = io.BytesIO()
    torch.save(torch.arange(4), buf)
    buf.seek(0)
    x = torch.load(buf, map_location=R)
    assert x.device.type == "remote"
    assert x.cpu().tolist() == [0, 1, 2, 3]


def test_state_dict_roundtrip_between_remote_and_cpu_models():
    cpu, rem = _pair(_mlp)
    with torch.no_grad():
        for p in rem.parameters():
            p.mul_(0.5)
    buf = io.BytesIO()
    torch.save(rem.state_dict(), buf)
    buf.seek(0)
    fresh = _mlp()
    fresh.load_state_dict(torch.load(buf, map_location="cpu"))
    for pf, pr in zip(fresh.parameters(), rem.parameters()):
        assert torch.equal(pf.detach(), pr.detach().cpu())


# ------------------------------------------------------------------ seeding


def test_manual_seed_reproducible_with_sync_between():
    torch.manual_seed(123)
    a = torch.randn(5, device=R)
    torch.remote.synchronize()
    torch.manual_seed(123)
    b = torch.randn(5, device=R)
    assert torch.equal(a.cpu(), b.cpu())


def test_manual_seed_different_seeds_differ():
    torch.manual_seed(123)
    a = torch.randn(5, device=R).cpu()
    torch.manual_seed(124)
    b = torch.randn(5, device=R).cpu()
    assert not torch.equal(a, b)


def test_manual_seed_sequence_reproducible():
    def draw():
        x = torch.randn(3, device=R)
        y = torch.rand(3, device=R)
        z = torch.randint(0, 1000, (3,), device=R)
        return x.cpu(), y.cpu(), z.cpu()

    torch.manual_seed(7)
    first = draw()
    torch.manual_seed(7)
    second = draw()
    for a, b in zip(first, second):
        assert torch.equal(a, b)


def test_dropout_training_values():
    a = F.dropout(torch.ones(64, device=R), 0.5, training=True).cpu()
    assert set(a.unique().tolist()) <= {0.0, 2.0}
    assert_close(F.dropout(torch.ones(8, device=R), 0.5, training=False), torch.ones(8))


def test_dropout_training_is_seeded():
    torch.manual_seed(5)
    a = F.dropout(torch.ones(64, device=R), 0.5, training=True).cpu()
    torch.manual_seed(5)
    b = F.dropout(torch.ones(64, device=R), 0.5, training=True).cpu()
    assert torch.equal(a, b)


def test_manual_seed_without_sync_in_between():
    # exactly the snippet users write; no read happens between the two draws
    torch.manual_seed(123)
    a = torch.randn(5, device=R)
    torch.manual_seed(123)
    b = torch.randn(5, device=R)
    assert torch.equal(a.cpu(), b.cpu())


# ------------------------------------------------------------------ fragments: repetition and lifetimes


def test_repeated_fragment_structure_with_new_inputs():
    # same ops, shapes and scalars every iteration: only the handles and data change
    for i in range(8):
        x = torch.full((4,), float(i), device=R)
        y = (x * 2 + 1).sum()
        assert y.item() == (2 * i + 1) * 4, i
    for i in range(4):
        w = torch.arange(12.0).reshape(3, 4) + i
        assert_close((w.to(R) @ w.to(R).t()).relu(), (w @ w.t()).relu())


def test_values_kept_from_long_chains_survive_later_fragments():
    torch.manual_seed(0)
    xc = torch.randn(64)
    xr = xc.to(R)
    kept_c, kept_r = [], []
    for i in range(300):
        xc = torch.tanh(xc * 1.01 + 0.1)
        xr = torch.tanh(xr * 1.01 + 0.1)
        if i % 7 == 0:  # keep a strided view of an intermediate; drop the rest
            kept_c.append(xc[::3])
            kept_r.append(xr[::3])
        if i % 50 == 0:
            xr.sum().item()  # a sync point in the middle of the chain
    assert len(kept_r) == 43
    for r, c in zip(kept_r, kept_c):
        assert_close(r, c, rtol=1e-5, atol=1e-5)


def test_tiny_fragments_give_the_same_model_results(server):
    import textwrap

    from conftest import run_python, subprocess_env

    # DJINN_MAX_NODES=3 cuts an MLP training step into many small asynchronous fragments
    code = textwrap.dedent("""
        import copy, torch, djinn, torch.nn as nn, torch.nn.functional as F
        torch.manual_seed(0)
        cpu = nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 4))
        rem = copy.deepcopy(cpu).to('remote')
        oc = torch.optim.AdamW(cpu.parameters(), lr=1e-2)
        orr = torch.optim.AdamW(rem.parameters(), lr=1e-2)
        x, y = torch.randn(6, 8), torch.randint(0, 4, (6,))
        for _ in range(3):
            for m, o, xx, yy in ((cpu, oc, x, y), (rem, orr, x.to('remote'), y.to('remote'))):
                o.zero_grad(); F.cross_entropy(m(xx), yy).backward(); o.step()
        print(max((a.detach() - b.detach().cpu()).abs().max().item()
                  for a, b in zip(cpu.parameters(), rem.parameters())))
    """)
    r = run_python(code, subprocess_env(DJINN_SERVER=server, DJINN_MAX_NODES=3))
    assert r.returncode == 0, r.stderr[-2000:]
    assert float(r.stdout.strip()) < 1e-5

"""PyTorch's semantics on 'remote' where they used to differ (issue 9): mixed-device
errors worded as on CUDA, conjugate and negative views, dtypes the wire carries, outputs
declared as the server's CPU kernels return them, random generators held by the server,
autocast, RNN cells, pinned memory, allocation limits and torch.compile. Every result is
compared with CPU's."""

import copy

import djinn
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from conftest import assert_close

pytestmark = pytest.mark.usefixtures("remote")

R = "remote"


def _r(*ts):
    return [t.to(R) for t in ts]


# ------------------------------------------------------------------ mixed devices

SAME = "Expected all tensors to be on the same device, but "


@pytest.mark.parametrize(
    "name,fn,msg",
    [
        (
            "cat",
            lambda c, r: torch.cat([c, r]),
            "got tensors is on remote:0, different from other tensors on cpu "
            "(when checking argument in method wrapper_remote_cat)",
        ),
        (
            "cat_remote_first",
            lambda c, r: torch.cat([r, c]),
            "got tensors is on cpu, different from other tensors on remote:0 "
            "(when checking argument in method wrapper_remote_cat)",
        ),
        (
            "stack",
            lambda c, r: torch.stack([r, c]),
            "got tensors is on cpu, different from other tensors on remote:0 "
            "(when checking argument in method wrapper_remote_cat)",
        ),
        (
            "matmul",
            lambda c, r: torch.matmul(r, c),
            "got mat2 is on cpu, different from other tensors on remote:0 "
            "(when checking argument in method wrapper_remote_mm)",
        ),
        (
            "mm",
            lambda c, r: torch.mm(c, r),
            "got mat2 is on remote:0, different from other tensors on cpu "
            "(when checking argument in method wrapper_remote_mm)",
        ),
        (
            "where",
            lambda c, r: torch.where(r > 0, c, r),
            "found at least two devices, remote:0 and cpu!",
        ),
        ("add", lambda c, r: r + c, "found at least two devices, remote:0 and cpu!"),
        ("mul_", lambda c, r: r.mul_(c), "found at least two devices, remote:0 and cpu!"),
        (
            "index_select",
            lambda c, r: r.index_select(0, torch.tensor([1])),
            "got index is on cpu, different from other tensors on remote:0 "
            "(when checking argument in method wrapper_remote_index_select)",
        ),
    ],
)
def test_mixed_devices_raise_cudas_error(name, fn, msg):
    c, r = torch.randn(2, 2), torch.randn(2, 2).to(R)
    with pytest.raises(RuntimeError) as e:
        fn(c, r)
    assert str(e.value).splitlines()[0] == SAME + msg
    assert_close(r * 1, r.cpu())  # nothing half-recorded: the session still works


def test_cpu_scalars_and_indices_mix_as_on_cuda():
    c, r = torch.randn(3, 2), torch.randn(3, 2)
    rr = r.to(R)
    assert_close(rr + torch.tensor(2.0), r + 2)  # a 0-dim CPU tensor is a scalar
    assert_close(torch.where(rr > 0, torch.tensor(0.5), rr), torch.where(r > 0, 0.5, r))
    assert_close(rr * torch.tensor(3), r * 3)
    idx = torch.tensor([2, 0])
    assert_close(rr[idx], r[idx])  # indexing takes CPU indices
    rr[idx] = torch.ones(2, 2)
    r[idx] = torch.ones(2, 2)
    assert_close(rr, r)
    rr.copy_(c)
    assert_close(rr, c)


# ------------------------------------------------------------------ conj / neg views


def test_conj_views_used_and_read():
    z = torch.tensor([1 + 2j, 3 - 1j, -2 + 0.5j])
    zr = z.to(R)
    assert_close(zr.conj(), z.conj())
    assert_close(zr * zr.conj(), z * z.conj())
    assert_close(zr.conj() + 1, z.conj() + 1)
    assert_close(torch._neg_view(zr), -z)
    assert_close(torch._neg_view(zr.real) * 2, -z.real * 2)


def test_conj_bit_reaches_matmul_and_copies():
    a = torch.randn(3, 3, dtype=torch.complex64)
    b = torch.randn(3, 3, dtype=torch.complex64)
    ar, br = _r(a, b)
    assert_close(torch.mm(ar.conj(), br), torch.mm(a.conj(), b))
    assert_close(ar.mH @ br, a.mH @ b)
    assert_close(torch.addmm(br, ar.conj(), br.conj()), torch.addmm(b, a.conj(), b.conj()))
    # a copy into a conj view stores the conjugate
    d, dr = torch.zeros(3, 3, dtype=torch.complex64), torch.zeros(3, 3, dtype=torch.complex64).to(R)
    d.conj().copy_(a)
    dr.conj().copy_(ar)
    assert_close(dr, d)
    dr.conj().copy_(a)  # from the CPU
    assert_close(dr, d)


def test_complex_linalg_and_fft_with_conj_views():
    torch.manual_seed(0)
    a = torch.randn(4, 3, dtype=torch.complex64)
    ar = a.to(R)
    u, s, vh = torch.linalg.svd(ar, full_matrices=False)
    assert_close(u @ torch.diag(s).to(u.dtype) @ vh, a, rtol=1e-4, atol=1e-5)
    assert_close(torch.linalg.pinv(ar), torch.linalg.pinv(a), rtol=1e-4, atol=1e-5)
    assert_close(torch.pinverse(ar), torch.pinverse(a), rtol=1e-4, atol=1e-5)
    x = torch.randn(8)
    xr = x.to(R)
    for f in (torch.fft.ifft, torch.fft.ihfft, torch.fft.hfft):
        assert_close(f(xr), f(x), rtol=1e-4, atol=1e-5)
    assert_close(torch.fft.hfft2(a.to(R)), torch.fft.hfft2(a), rtol=1e-4, atol=1e-4)
    assert_close(torch.cov(ar.T), torch.cov(a.T), rtol=1e-4, atol=1e-5)
    assert_close(torch.corrcoef(ar.T), torch.corrcoef(a.T), rtol=1e-4, atol=1e-5)
    z = torch.zeros(1, 0, 3, dtype=torch.complex64)
    assert_close(torch.isfinite(z.to(R)), torch.isfinite(z))
    assert_close(torch.isreal(a.to(R)), torch.isreal(a))


def test_lstsq_and_embedding_bag():
    a, b = torch.randn(4, 3), torch.randn(4, 2)
    assert_close(
        torch.linalg.lstsq(*_r(a, b)).solution,
        torch.linalg.lstsq(a, b).solution,
        rtol=1e-4,
        atol=1e-5,
    )
    idx, w, off = torch.tensor([1, 2, 4, 5, 4, 3, 2, 9]), torch.randn(10, 3), torch.tensor([0, 4])
    for mode in ("sum", "mean", "max"):
        assert_close(
            F.embedding_bag(*_r(idx, w, off), mode=mode), F.embedding_bag(idx, w, off, mode=mode)
        )
    for mode in ("sum", "mean", "max"):  # 'sum': CPU leaves offset2bag empty, backward rebuilds
        wr = w.to(R).requires_grad_()
        wc = w.clone().requires_grad_()
        F.embedding_bag(idx.to(R), wr, off.to(R), mode=mode).pow(2).sum().backward()
        F.embedding_bag(idx, wc, off, mode=mode).pow(2).sum().backward()
        assert_close(wr.grad, wc.grad)
    # per-sample weights: CPU's forward leaves offset2bag empty and the backward rebuilds it
    psw = torch.randn(8)
    pr, pc = psw.to(R).requires_grad_(), psw.clone().requires_grad_()
    F.embedding_bag(idx.to(R), w.to(R), off.to(R), mode="sum", per_sample_weights=pr).pow(
        2
    ).sum().backward()
    F.embedding_bag(idx, w, off, mode="sum", per_sample_weights=pc).pow(2).sum().backward()
    assert_close(pr.grad, pc.grad)


# ------------------------------------------------------------------ dtypes and outputs


def test_uint64_results_and_failed_capture_leaves_fragment():
    x = torch.arange(6)
    xr = x.to(R)
    assert_close(torch.hash_tensor(xr), torch.hash_tensor(x))
    u = torch.tensor([1, 2, 3], dtype=torch.uint32)
    assert_close(u.to(R), u)
    assert_close(u.to(R).to(torch.int64) * 2, u.to(torch.int64) * 2)
    pending = xr + 1  # recorded, not run
    with pytest.raises(TypeError, match="djinn: tensors of dtype Bits16 are not supported"):
        xr.view(torch.bits16)
    with pytest.raises(TypeError, match="djinn: tensors of dtype Bits8 are not supported"):
        torch.empty_like(xr, dtype=torch.bits8)
    with pytest.raises(
        NotImplementedError, match="quantized tensors are not supported on 'remote'"
    ):
        torch.empty(3, dtype=torch.qint8, device=R)
    with pytest.raises(djinn.RemoteError, match="policy: quantized tensors are not kept"):
        torch.quantize_per_tensor(xr.float(), 0.1, 0, torch.qint8)
    with pytest.raises(
        NotImplementedError, match="sparse layout torch.sparse_csr is not supported"
    ):
        xr.float().to_sparse(layout=torch.sparse_csr)
    assert_close(pending, x + 1)  # the fragment was left as it was


def test_sparse_coo_on_remote():
    d = torch.tensor([[0.0, 1.5, 0.0], [2.0, 0.0, -3.0]])
    s = d.to(R).to_sparse()
    assert s.layout == torch.sparse_coo and s.device.type == "remote"
    c = s.cpu()
    assert c.layout == torch.sparse_coo
    assert torch.equal(c.to_dense(), d) and torch.equal(c._indices(), d.to_sparse()._indices())
    assert_close(s.to_dense(), d)
    assert_close(d.to_sparse().to(R).to_dense(), d)
    assert_close(d.to(R).to_sparse(1).to_dense(), d)
    dr = d.to(R).requires_grad_()
    dc = d.clone().requires_grad_()
    (dr.to_sparse().to_dense() * torch.arange(3.0).to(R)).sum().backward()
    (dc.to_sparse().to_dense() * torch.arange(3.0)).sum().backward()
    assert_close(dr.grad, dc.grad)


# ------------------------------------------------------------------ layouts

_D = torch.tensor([[0.0, 1.5, 0.0], [2.0, 0.0, -3.0]])
COMPRESSED = [torch.sparse_csr, torch.sparse_csc, torch.sparse_bsr, torch.sparse_bsc]


def _sparse_msg(layout):
    return (
        f"djinn: sparse layout {layout} is not supported on 'remote'; convert with "
        ".to_dense() or .to_sparse() (COO) first, or keep the tensor on the CPU"
    )


NESTED_MSG = (
    "djinn: nested tensors of layout torch.strided are not supported on 'remote'; use "
    "torch.nested.nested_tensor(..., layout=torch.jagged), or keep the tensor on the CPU"
)
MKLDNN_MSG = (
    "djinn: layout torch._mkldnn is not supported on 'remote'; convert with .to_dense() "
    "first, or keep the tensor on the CPU"
)


def _refused_cleanly(fn, msg, exc=NotImplementedError):
    """``fn`` raises exactly ``msg`` and leaves the session as it was: a computation
    recorded before still runs, and an unrelated one after it works."""
    x = torch.arange(6.0)
    pending = x.to(R) * 2 + 1  # recorded, not run
    with pytest.raises(exc) as e:
        fn()
    assert str(e.value) == msg
    assert_close(pending, x * 2 + 1)
    y = torch.randn(3, 4)
    assert_close(y.to(R).t() @ y.to(R), y.t() @ y)


def _parts(s):
    if s.layout in (torch.sparse_csr, torch.sparse_bsr):
        return s.crow_indices(), s.col_indices(), s.values()
    return s.ccol_indices(), s.row_indices(), s.values()


class _Holder(nn.Module):
    def __init__(self, buf):
        super().__init__()
        self.lin = nn.Linear(3, 2)
        self.register_buffer("adj", buf)


# Every way a compressed tensor could enter 'remote': the copy, the factories (CPU or
# remote parts), the conversions of a dense or COO remote tensor, copy_ into a remote
# tensor and zeros_like.
COMPRESSED_PATHS = {
    "to": lambda s, L, name, bs: s.to(R),
    "to_dtype": lambda s, L, name, bs: s.to(R, torch.float64),
    "module_to": lambda s, L, name, bs: _Holder(s).to(R),
    "factory": lambda s, L, name, bs: getattr(torch, f"sparse_{name}_tensor")(
        *_parts(s), s.shape, device=R
    ),
    "factory_remote_parts": lambda s, L, name, bs: getattr(torch, f"sparse_{name}_tensor")(
        *_r(*_parts(s)), s.shape
    ),
    "compressed_factory": lambda s, L, name, bs: torch.sparse_compressed_tensor(
        *_parts(s), s.shape, layout=L, device=R
    ),
    "zeros": lambda s, L, name, bs: torch.zeros(2, 3, layout=L, device=R),
    "dense_to_sparse": lambda s, L, name, bs: _D.to(R).to_sparse(layout=L, blocksize=bs),
    "dense_to_method": lambda s, L, name, bs: getattr(_D.to(R), f"to_sparse_{name}")(
        *([bs] if bs else [])
    ),
    "coo_to_sparse": lambda s, L, name, bs: _D.to(R).to_sparse().to_sparse(layout=L, blocksize=bs),
    "coo_to_method": lambda s, L, name, bs: getattr(_D.to(R).to_sparse(), f"to_sparse_{name}")(
        *([bs] if bs else [])
    ),
    "copy_into_remote": lambda s, L, name, bs: torch.empty(2, 3, device=R).copy_(s),
    "zeros_like": lambda s, L, name, bs: torch.zeros_like(s, device=R),
}


@pytest.mark.parametrize("path", sorted(COMPRESSED_PATHS))
@pytest.mark.parametrize("layout", COMPRESSED, ids=str)
def test_compressed_sparse_layouts_refused_where_they_enter(layout, path):
    name = str(layout).rsplit("_", 1)[1]
    bs = (1, 1) if name in ("bsr", "bsc") else None
    s = _D.to_sparse(layout=layout, blocksize=bs)
    _refused_cleanly(lambda: COMPRESSED_PATHS[path](s, layout, name, bs), _sparse_msg(layout))


def test_empty_like_compressed_is_refused_at_its_first_use():
    # the one known way in (RemoteLayouts.cpp): PyTorch's SparseCsrCPU empty_like builds
    # the tensor without dispatching on 'remote'; what it makes cannot be used or read
    s = _D.to_sparse_csr()
    slipped = torch.empty_like(s, device=R)
    for use in (repr, lambda t: t.cpu(), lambda t: t.to_dense(), lambda t: t.sum()):
        _refused_cleanly(lambda: use(slipped), _sparse_msg(torch.sparse_csr))


def test_coo_still_lives_on_remote_next_to_refused_layouts():
    i, v = _D.to_sparse().indices(), _D.to_sparse().values()
    made = torch.sparse_coo_tensor(i, v, _D.shape, device=R)
    assert made.layout == torch.sparse_coo and made.device.type == "remote"
    assert_close(made.to_dense(), _D)
    s = _D.to(R).to_sparse()
    assert s.to_sparse() is s and s.to_sparse(layout=torch.sparse_coo) is s
    assert_close(s.to_dense() * 2, _D * 2)
    _refused_cleanly(lambda: s.to_sparse_csr(), _sparse_msg(torch.sparse_csr))
    assert_close(s.to_dense(), _D)  # the COO tensor itself is untouched


@pytest.mark.parametrize(
    "path",
    ["to", "nested_tensor_device", "as_nested_tensor_remote"],
)
def test_strided_nested_tensors_refused_where_they_enter(path):
    parts = [torch.arange(2.0), torch.arange(3.0)]
    fn = {
        "to": lambda: torch.nested.nested_tensor(parts).to(R),
        "nested_tensor_device": lambda: torch.nested.nested_tensor(parts, device=R),
        "as_nested_tensor_remote": lambda: torch.nested.as_nested_tensor(_r(*parts)),
    }[path]
    _refused_cleanly(fn, NESTED_MSG)


def test_jagged_nested_tensors_live_on_remote():
    parts = [torch.arange(2.0), torch.arange(3.0) - 1]
    nt = torch.nested.nested_tensor(parts, layout=torch.jagged)
    for r in (nt.to(R), torch.nested.nested_tensor(parts, layout=torch.jagged, device=R)):
        assert r.layout == torch.jagged and r.device.type == "remote"
        got = (r * 2 + 1).sin()
        assert [t.device.type for t in got.unbind()] == ["remote", "remote"]
        assert_close(list(got.unbind()), list((nt * 2 + 1).sin().unbind()))
        padded = torch.nested.to_padded_tensor(got, 0.0)
        assert_close(padded, torch.nested.to_padded_tensor((nt * 2 + 1).sin(), 0.0))


def test_mkldnn_refused_where_it_enters():
    m = torch.ones(2, 3).to_mkldnn()
    # m.to('remote') passes m's layout with the device: PyTorch's own dispatch-key
    # computation refuses it first, as for any device without an mkldnn layout
    _refused_cleanly(lambda: m.to(R), "Unsupported device type for mkldnn layout: remote")
    _refused_cleanly(
        lambda: torch.empty(2, layout=torch._mkldnn, device=R),
        "Unsupported device type for mkldnn layout: remote",
    )
    _refused_cleanly(lambda: m.to(R, torch.float32), MKLDNN_MSG)
    _refused_cleanly(lambda: torch.ones(2, 3).to(R).to_mkldnn(), MKLDNN_MSG)


@pytest.mark.parametrize("wdt", [torch.bfloat16, torch.float32])
def test_reduced_precision_norms_return_cpus_dtypes(wdt):
    torch.manual_seed(0)
    bf = torch.bfloat16
    x, w, b = torch.randn(2, 4, 6, dtype=bf), torch.randn(4, dtype=wdt), torch.randn(4, dtype=wdt)
    rm, rv = torch.zeros(4, dtype=wdt), torch.ones(4, dtype=wdt)
    for training in (True, False):
        got = torch.native_batch_norm(*_r(x, w, b, rm.clone(), rv.clone()), training, 0.1, 1e-5)
        assert_close(
            got, torch.native_batch_norm(x, w, b, rm.clone(), rv.clone(), training, 0.1, 1e-5)
        )
    xl, wl, bl = torch.randn(3, 6, dtype=bf), torch.randn(6, dtype=wdt), torch.randn(6, dtype=wdt)
    assert_close(
        torch.native_layer_norm(*_r(xl), [6], *_r(wl, bl), 1e-5),
        torch.native_layer_norm(xl, [6], wl, bl, 1e-5),
    )
    assert_close(
        torch.native_group_norm(*_r(x, w, b), 2, 4, 6, 2, 1e-5),
        torch.native_group_norm(x, w, b, 2, 4, 6, 2, 1e-5),
    )


def test_reduced_precision_norm_backward():
    torch.manual_seed(0)
    bf = torch.bfloat16
    for mod in (nn.LayerNorm(6), nn.GroupNorm(2, 4), nn.BatchNorm1d(4)):
        mod = mod.to(bf)
        x = (
            torch.randn(3, 4, 6, dtype=bf)
            if not isinstance(mod, nn.LayerNorm)
            else torch.randn(3, 6, dtype=bf)
        )
        rem = copy.deepcopy(mod).to(R)
        xc, xr = x.clone().requires_grad_(), x.to(R).requires_grad_()
        mod(xc).float().pow(2).sum().backward()
        rem(xr).float().pow(2).sum().backward()
        assert_close(xr.grad, xc.grad)
        for pc, pr in zip(mod.parameters(), rem.parameters()):
            assert_close(pr.grad, pc.grad)


# ------------------------------------------------------------------ random generators


def test_generator_on_remote_is_seeded_and_equals_cpu():
    g1, g2 = torch.Generator(device=R), torch.Generator(device=R)
    assert g1.device == torch.device("remote", 0)
    g1.manual_seed(42)
    g2.manual_seed(42)
    a = torch.randn(5, device=R, generator=g1)
    b = torch.randn(5, device=R, generator=g2)
    exp = torch.randn(5, generator=torch.Generator().manual_seed(42))
    assert_close(a, exp)
    assert_close(b, exp)
    assert g1.initial_seed() == 42
    # its state round-trips, and is CPU's on a CPU server
    st = g1.get_state()
    assert st.dtype == torch.uint8 and st.device.type == "cpu"
    cg = torch.Generator().manual_seed(42)
    torch.randn(5, generator=cg)
    assert torch.equal(st, cg.get_state())
    x1 = torch.rand(4, device=R, generator=g1)
    g1.set_state(st)
    assert_close(torch.rand(4, device=R, generator=g1), x1.cpu())
    with pytest.raises(RuntimeError, match="Expected a 'remote' device type for generator"):
        torch.randn(3, device=R, generator=torch.Generator())


def test_session_rng_state_get_set_and_fork_rng():
    torch.manual_seed(3)
    st = torch.remote.get_rng_state()
    a = torch.randn(4, device=R)
    torch.remote.set_rng_state(st)
    b = torch.randn(4, device=R)
    assert_close(a, b.cpu())
    with torch.random.fork_rng():
        torch.randn(100, device=R)
    torch.remote.set_rng_state(st)
    torch.randn(4, device=R)
    with torch.random.fork_rng():
        torch.randn(7, device=R)
    assert_close(torch.randn(3, device=R), torch.randn(3, generator=_cpu_after(3, 4)))


def _cpu_after(seed, n):
    g = torch.Generator().manual_seed(seed)
    torch.randn(n, generator=g)
    return g


def test_checkpoint_preserves_rng_state():
    from torch.utils.checkpoint import checkpoint

    torch.manual_seed(0)
    lin = nn.Linear(4, 4)
    lr = copy.deepcopy(lin).to(R)

    def f(m, x):
        return F.dropout(m(x), 0.5, training=True)

    x = torch.randn(3, 4)
    torch.manual_seed(5)
    xc = x.clone().requires_grad_()
    checkpoint(f, lin, xc, use_reentrant=False).sum().backward()
    torch.manual_seed(5)
    xr = x.to(R).requires_grad_()
    checkpoint(f, lr, xr, use_reentrant=False).sum().backward()
    assert_close(xr.grad, xc.grad)


# ------------------------------------------------------------------ RNNs, autocast


@pytest.mark.parametrize("cls", [nn.LSTM, nn.GRU])
def test_rnn_on_cpu_server_equals_cpu(cls):
    torch.manual_seed(0)
    cpu = cls(4, 6, num_layers=2)
    rem = copy.deepcopy(cpu).to(R)
    x = torch.randn(5, 3, 4)
    xc, xr = x.clone().requires_grad_(), x.to(R).requires_grad_()
    oc, _ = cpu(xc)
    orr, _ = rem(xr)
    assert_close(orr, oc, rtol=1e-5, atol=1e-5)
    oc.pow(2).sum().backward()
    orr.pow(2).sum().backward()
    assert_close(xr.grad, xc.grad, rtol=1e-4, atol=1e-5)
    for (n, pc), pr in zip(cpu.named_parameters(), rem.parameters()):
        assert_close(pr.grad, pc.grad, rtol=1e-4, atol=1e-5)
    names = {op for op, _, _ in djinn.srg.snapshot()}
    assert not any("_thnn_fused" in n for n in names), names


def test_autocast_remote():
    a, b = torch.randn(4, 8), torch.randn(8, 3)
    ar, br = _r(a, b)
    with torch.autocast(R, dtype=torch.bfloat16):
        mm = ar @ br
        sm = torch.softmax(mm, -1)
        s = ar + 1
    assert mm.dtype == torch.bfloat16 and sm.dtype == torch.float32 and s.dtype == torch.float32
    assert_close(mm, a.bfloat16() @ b.bfloat16())
    assert_close(sm, torch.softmax((a.bfloat16() @ b.bfloat16()).float(), -1))
    assert (ar @ br).dtype == torch.float32
    lin = nn.Linear(8, 3).to(R)
    with torch.autocast(R, dtype=torch.bfloat16):
        y = lin(ar)
    y.float().sum().backward()
    assert y.dtype == torch.bfloat16 and lin.weight.grad.dtype == torch.float32


# ------------------------------------------------------------------ memory


def test_huge_allocation_is_a_resource_error():
    with pytest.raises(djinn.ResourceError, match="cannot allocate 4398046511104 bytes") as e:
        torch.empty(2**40, dtype=torch.float32, device=R)
    assert isinstance(e.value, torch.OutOfMemoryError)
    assert_close(torch.ones(2).to(R) * 2, torch.full((2,), 2.0))


def test_pin_memory():
    x = torch.randn(64, 3)
    p = x.pin_memory()
    assert p.is_pinned() and not x.is_pinned()
    assert torch.equal(p, x)
    assert_close(p.to(R, non_blocking=True), x)
    big = torch.randn(4 << 20).pin_memory()  # past an 8 MiB memlock limit: still pinned
    assert big.is_pinned()


# ------------------------------------------------------------------ torch.compile


def test_compile_backends():
    m = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    mr = copy.deepcopy(m).to(R)
    x = torch.randn(3, 4)
    for backend in ("eager", "aot_eager"):
        torch._dynamo.reset()
        assert_close(
            torch.compile(mr, backend=backend)(x.to(R)), m(x).detach(), rtol=1e-5, atol=1e-6
        )
    torch._dynamo.reset()
    with pytest.raises(Exception, match="backend='aot_eager'") as e:
        torch.compile(mr)(x.to(R))
    assert "'remote'" in str(e.value)

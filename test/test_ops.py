"""Op parity: every test computes the same thing on 'cpu' and on 'remote' and compares.

The shared server runs ``--device cpu``, so seeded random ops draw from a CPU generator
seeded exactly like ``torch.manual_seed`` seeds the local one: remote random results
equal local ones bit for bit in this configuration.
"""

import pytest
import torch
import torch.nn.functional as F

from conftest import assert_close

pytestmark = pytest.mark.usefixtures("remote")

R = "remote"


def both(fn, seed=0, **tol):
    """Run ``fn(device)`` on cpu and on remote (same seed before each) and compare."""
    torch.manual_seed(seed)
    expected = fn("cpu")
    torch.manual_seed(seed)
    got = fn(R)
    assert_close(got, expected, **tol)
    return got, expected


def _x(d):
    return torch.arange(20.0, device=d).reshape(4, 5) - 8


# ------------------------------------------------------------------ creation


@pytest.mark.parametrize(
    "name,fn",
    [
        ("zeros", lambda d: torch.zeros(2, 3, device=d)),
        ("zeros_int", lambda d: torch.zeros(2, 3, dtype=torch.int32, device=d)),
        ("ones", lambda d: torch.ones(2, 3, device=d)),
        ("ones_bool", lambda d: torch.ones(4, dtype=torch.bool, device=d)),
        ("full_float", lambda d: torch.full((2, 3), 7.5, device=d)),
        ("full_int", lambda d: torch.full((2, 3), 7, device=d)),
        ("full_bool", lambda d: torch.full((3,), True, device=d)),
        ("arange", lambda d: torch.arange(10, device=d)),
        ("arange_step", lambda d: torch.arange(3, 17, 4, device=d)),
        ("arange_float", lambda d: torch.arange(0, 1, 0.1, device=d)),
        ("linspace", lambda d: torch.linspace(0, 1, 7, device=d)),
        ("linspace_f64", lambda d: torch.linspace(-2, 3, 11, dtype=torch.float64, device=d)),
        ("eye", lambda d: torch.eye(3, device=d)),
        ("eye_rect", lambda d: torch.eye(3, 4, dtype=torch.int64, device=d)),
        ("empty_fill", lambda d: torch.empty(3, 2, device=d).fill_(2.5)),
        ("empty_fill_int", lambda d: torch.empty(5, dtype=torch.int16, device=d).fill_(-3)),
        ("tensor_int_list", lambda d: torch.tensor([[1, 2], [3, 4]], device=d)),
        ("tensor_float_list", lambda d: torch.tensor([1.5, -2.5, 1e-3], device=d)),
        ("tensor_bool_list", lambda d: torch.tensor([True, False], device=d)),
        ("tensor_scalar", lambda d: torch.tensor(3.25, device=d)),
        ("zeros_like", lambda d: torch.zeros_like(_x(d))),
        ("full_like", lambda d: torch.full_like(_x(d), 2)),
        ("randn_seeded", lambda d: torch.randn(4, 3, device=d)),
        ("rand_seeded", lambda d: torch.rand(5, device=d)),
        ("randint_seeded", lambda d: torch.randint(0, 100, (6,), device=d)),
        ("empty_zero_size", lambda d: torch.empty(0, 3, device=d)),
    ],
)
def test_creation(name, fn):
    both(fn)


def test_randn_same_seed_same_values_different_seed_differs():
    torch.manual_seed(11)
    a = torch.randn(8, device=R)
    torch.remote.synchronize()
    torch.manual_seed(11)
    b = torch.randn(8, device=R)
    torch.remote.synchronize()
    torch.manual_seed(12)
    c = torch.randn(8, device=R)
    assert torch.equal(a.cpu(), b.cpu())
    assert not torch.equal(a.cpu(), c.cpu())


def test_to_remote_and_back_roundtrip_all_dtypes():
    for dt in [
        torch.uint8,
        torch.int8,
        torch.int16,
        torch.int32,
        torch.int64,
        torch.bool,
        torch.float16,
        torch.bfloat16,
        torch.float32,
        torch.float64,
        torch.complex64,
    ]:
        c = (torch.arange(-3, 9) % 5).to(dt)
        r = c.to(R)
        assert r.device.type == "remote" and r.dtype == dt
        assert torch.equal(r.cpu(), c), dt


# ------------------------------------------------------------------ elementwise


@pytest.mark.parametrize(
    "name,fn",
    [
        ("int_plus_float_scalar", lambda d: torch.arange(4, device=d) + 2.5),
        ("int_times_int_scalar", lambda d: torch.arange(4, device=d) * 3),
        ("int_div_true", lambda d: torch.arange(6, device=d) / 4),
        ("int_floordiv", lambda d: torch.arange(-6, 6, device=d) // 4),
        ("int_remainder", lambda d: torch.arange(-6, 6, device=d) % 4),
        ("half_times_int_scalar", lambda d: torch.arange(5, dtype=torch.float16, device=d) * 2),
        ("half_plus_float_scalar", lambda d: torch.arange(5, dtype=torch.float16, device=d) + 0.5),
        ("bf16_times_scalar", lambda d: torch.arange(5, dtype=torch.bfloat16, device=d) * 1.5),
        (
            "bool_and_int",
            lambda d: (
                torch.tensor([True, False, True], device=d) & torch.tensor([1, 1, 0], device=d)
            ),
        ),
        (
            "bool_or_bool",
            lambda d: (
                torch.tensor([True, False], device=d) | torch.tensor([False, False], device=d)
            ),
        ),
        ("bool_plus_int_scalar", lambda d: torch.tensor([True, False], device=d) + 1),
        ("uint8_wraps", lambda d: torch.tensor([250, 3], dtype=torch.uint8, device=d) + 10),
        (
            "int32_plus_int64",
            lambda d: (
                torch.arange(3, dtype=torch.int32, device=d)
                + torch.arange(3, dtype=torch.int64, device=d)
            ),
        ),
        (
            "float_plus_double_tensor",
            lambda d: torch.ones(3, device=d) + torch.ones(3, dtype=torch.float64, device=d),
        ),
        (
            "half_plus_float_tensor",
            lambda d: torch.ones(3, dtype=torch.float16, device=d) + torch.ones(3, device=d),
        ),
        (
            "broadcast_row",
            lambda d: torch.arange(6.0, device=d).reshape(2, 3) + torch.arange(3.0, device=d),
        ),
        (
            "broadcast_col",
            lambda d: (
                torch.arange(6.0, device=d).reshape(2, 3) * torch.tensor([[2.0], [3.0]], device=d)
            ),
        ),
        (
            "broadcast_3d",
            lambda d: (
                torch.arange(4.0, device=d).reshape(4, 1, 1)
                - torch.arange(6.0, device=d).reshape(2, 3)
            ),
        ),
        ("broadcast_0dim_tensor", lambda d: _x(d) * torch.tensor(2.0, device=d)),
        ("rsub", lambda d: 1 - _x(d)),
        ("rdiv", lambda d: 1 / (_x(d) + 0.5)),
        ("pow", lambda d: _x(d) ** 2),
        ("rpow", lambda d: 2 ** torch.arange(5, device=d)),
        ("neg_abs_sign", lambda d: (-_x(d)).abs() * _x(d).sign()),
        ("exp_log", lambda d: (_x(d) / 10).exp().log()),
        (
            "sqrt_rsqrt",
            lambda d: (
                torch.arange(1.0, 5.0, device=d).sqrt() + torch.arange(1.0, 5.0, device=d).rsqrt()
            ),
        ),
        ("sin_cos_tanh", lambda d: _x(d).sin() + _x(d).cos() * _x(d).tanh()),
        ("sigmoid", lambda d: torch.sigmoid(_x(d) / 3)),
        ("clamp", lambda d: _x(d).clamp(-2, 3)),
        ("clamp_min_tensor", lambda d: torch.clamp(_x(d), min=torch.zeros(5, device=d))),
        (
            "minimum_maximum",
            lambda d: torch.minimum(_x(d), -_x(d)) + torch.maximum(_x(d), _x(d) * 0),
        ),
        ("compare", lambda d: (_x(d) > 0, _x(d) <= 2, _x(d) == 3, _x(d) != 3)),
        ("logical", lambda d: torch.logical_xor(_x(d) > 0, _x(d) < 5)),
        (
            "bitwise_int",
            lambda d: (torch.arange(8, device=d) & 3) | (torch.arange(8, device=d) ^ 5),
        ),
        ("shift", lambda d: torch.arange(8, device=d) << 2),
        ("where_tensor", lambda d: torch.where(_x(d) > 2, _x(d), torch.zeros(4, 5, device=d))),
        ("where_scalar", lambda d: torch.where(_x(d) > 2, _x(d), 0.0)),
        ("lerp", lambda d: torch.lerp(_x(d), -_x(d), 0.25)),
        ("addcmul", lambda d: torch.addcmul(_x(d), _x(d), _x(d), value=0.5)),
        ("nan_and_inf", lambda d: torch.tensor([0.0, 1.0, -1.0], device=d) / 0),
        ("isnan", lambda d: torch.isnan(torch.tensor([0.0, 1.0], device=d) / 0)),
        ("int_overflow_wraps", lambda d: torch.tensor([2**62], device=d) * 4),
        ("complex_mul", lambda d: torch.tensor([1 + 2j, -1j], device=d) * (2 - 1j)),
        ("type_as", lambda d: _x(d).to(torch.int32).to(torch.float16)),
    ],
)
def test_elementwise(name, fn):
    both(fn)


def test_type_promotion_dtypes():
    # the result dtypes must follow PyTorch's rules exactly, not just the values
    i = torch.arange(4, device=R)
    h = torch.ones(2, dtype=torch.float16, device=R)
    b = torch.tensor([True, False], device=R)
    assert (i + 2.5).dtype == torch.float32
    assert (i * 2).dtype == torch.int64
    assert (h * 2).dtype == torch.float16
    assert (h * 2.5).dtype == torch.float16
    assert (b & torch.tensor([1, 0], device=R)).dtype == torch.int64
    assert (b + 1).dtype == torch.int64
    assert (i / 2).dtype == torch.float32
    assert (torch.ones(2, dtype=torch.int32, device=R) + 1).dtype == torch.int32


# ------------------------------------------------------------------ reductions

_RED = lambda d: torch.arange(24.0, device=d).reshape(2, 3, 4) - 10  # noqa: E731


@pytest.mark.parametrize(
    "name,fn",
    [
        ("sum", lambda t: t.sum()),
        ("sum_dim", lambda t: t.sum(1)),
        ("sum_dims_keepdim", lambda t: t.sum((0, 2), keepdim=True)),
        ("sum_int", lambda t: t.long().sum(2)),
        ("sum_bool", lambda t: (t > 0).sum()),
        ("mean", lambda t: t.mean()),
        ("mean_dims", lambda t: t.mean((0, 2))),
        ("mean_keepdim", lambda t: t.mean(-1, keepdim=True)),
        ("max", lambda t: t.max()),
        ("max_dim", lambda t: t.max(dim=2)),
        ("max_dim_keepdim", lambda t: t.max(dim=0, keepdim=True)),
        ("min", lambda t: t.min()),
        ("min_dim_keepdim", lambda t: t.min(1, keepdim=True)),
        ("amax", lambda t: t.amax((1, 2))),
        ("argmax", lambda t: t.argmax()),
        ("argmax_dim", lambda t: t.argmax(2)),
        ("argmin_keepdim", lambda t: t.argmin(1, keepdim=True)),
        ("prod", lambda t: (t / 10).prod()),
        ("prod_dim", lambda t: (t / 10).prod(1)),
        ("prod_int", lambda t: (t.long() % 3 + 1).prod(2)),
        ("std", lambda t: t.std()),
        ("std_dim", lambda t: t.std(2)),
        ("std_unbiased_false_keepdim", lambda t: t.std(1, unbiased=False, keepdim=True)),
        ("var", lambda t: t.var()),
        ("var_dim_correction0", lambda t: t.var(1, correction=0)),
        ("any", lambda t: (t > 5).any()),
        ("any_dim", lambda t: (t > 5).any(1)),
        ("any_false", lambda t: (t > 100).any()),
        ("all", lambda t: (t > -20).all()),
        ("all_dim_keepdim", lambda t: (t > 0).all(2, keepdim=True)),
        ("norm", lambda t: t.norm()),
        ("logsumexp", lambda t: t.logsumexp(1)),
        ("cumsum", lambda t: t.cumsum(2)),
        ("cumprod", lambda t: (t / 10).cumprod(1)),
        ("count_nonzero", lambda t: torch.count_nonzero(t > 3, dim=1)),
        ("sort", lambda t: t.flip(-1).sort(-1)),
        ("topk", lambda t: t.topk(2, dim=1)),
        ("median_dim", lambda t: t.median(2)),
    ],
)
def test_reduction(name, fn):
    both(lambda d: fn(_RED(d)))


@pytest.mark.parametrize(
    "name,fn",
    [
        ("item_float", lambda t: t.sum().item()),
        ("item_int", lambda t: t.long().max().item()),
        ("item_bool", lambda t: bool((t > 0).any())),
        ("float_conv", lambda t: float(t.mean())),
        ("int_conv", lambda t: int(t.long().sum())),
        ("tolist", lambda t: t[0].tolist()),
        ("equal_true", lambda t: torch.equal(t, t.clone())),
        ("equal_false", lambda t: torch.equal(t, t + 1)),
        ("allclose", lambda t: torch.allclose(t, t + 1e-9)),
    ],
)
def test_python_values(name, fn):
    assert fn(_RED(R)) == fn(_RED("cpu"))


# ------------------------------------------------------------------ linear algebra


def _mats(d, *shapes):
    g = torch.Generator().manual_seed(3)
    return [torch.randn(*s, generator=g).to(d) for s in shapes]


@pytest.mark.parametrize(
    "name,fn",
    [
        ("matmul_2d", lambda d: (lambda a, b: a @ b)(*_mats(d, (3, 4), (4, 5)))),
        ("mm", lambda d: torch.mm(*_mats(d, (3, 4), (4, 5)))),
        (
            "mm_transposed_input",
            lambda d: (lambda a, b: torch.mm(a.t(), b))(*_mats(d, (4, 3), (4, 5))),
        ),
        ("bmm", lambda d: torch.bmm(*_mats(d, (2, 3, 4), (2, 4, 5)))),
        ("matmul_broadcast", lambda d: (lambda a, b: a @ b)(*_mats(d, (2, 3, 4), (4, 5)))),
        ("matmul_vec", lambda d: (lambda a, b: a @ b)(*_mats(d, (3, 4), (4,)))),
        (
            "addmm",
            lambda d: (lambda c, a, b: torch.addmm(c, a, b, beta=0.5, alpha=2))(
                *_mats(d, (5,), (3, 4), (4, 5))
            ),
        ),
        ("addmm_full_bias", lambda d: torch.addmm(*_mats(d, (3, 5), (3, 4), (4, 5)))),
        ("linear", lambda d: F.linear(*_mats(d, (2, 4), (3, 4), (3,)))),
        ("einsum", lambda d: torch.einsum("bij,bjk->bik", *_mats(d, (2, 3, 4), (2, 4, 2)))),
        ("mm_float64", lambda d: torch.mm(*[m.double() for m in _mats(d, (3, 4), (4, 2))])),
        (
            "mm_int",
            lambda d: torch.mm(
                torch.arange(6, device=d).reshape(2, 3), torch.arange(6, device=d).reshape(3, 2)
            ),
        ),
        ("outer", lambda d: torch.outer(torch.arange(3.0, device=d), torch.arange(4.0, device=d))),
    ],
)
def test_linalg(name, fn):
    both(fn, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------ views


def _views(d):
    t = torch.arange(24, device=d).reshape(2, 3, 4)
    return [
        t.view(6, 4),
        t.view(-1),
        t.reshape(4, 6),
        t.transpose(0, 2),
        t.permute(2, 0, 1),
        t[:, 1:],
        t[1],
        t[..., ::2],
        t[:, -1, 1:3],
        t.select(2, 1),
        t[:, :1].expand(2, 5, 4),
        t.unsqueeze(1),
        t[0].squeeze(),
        t.narrow(2, 1, 2),
        t[0].t(),
        t.transpose(0, 1).contiguous(),
        t.transpose(1, 2).reshape(2, 12),
        t.flatten(),
        t.flatten(1),
        t.unflatten(2, (2, 2)),
        t.movedim(0, -1),
        t.flip(1),
        t.roll(1, 2),
        t[0].diagonal(),
        t.unfold(2, 2, 2),
        t.view(2, 12),
    ]


def test_views_match_cpu():
    both(_views)


def test_views_share_storage_with_base():
    base = torch.arange(12.0, device=R)
    v = base.view(3, 4)[1:, ::2]
    assert v.untyped_storage().data_ptr() == base.untyped_storage().data_ptr()
    assert v.storage_offset() == 4
    assert v.stride() == (4, 2)
    assert not v.is_contiguous()
    assert v.contiguous().is_contiguous()


def test_mutation_through_views_visible_in_base():
    def fn(d):
        base = torch.arange(10.0, device=d)
        base[1:3].mul_(2)
        b = base.view(-1)
        b[0] = 5
        m = base.view(2, 5)
        m[:, 1] += 100
        m.t()[4].zero_()  # a strided view of a transpose
        return base

    got, _ = both(fn)
    assert got.cpu().tolist() == [5.0, 102.0, 4.0, 3.0, 0.0, 5.0, 106.0, 7.0, 8.0, 0.0]


def test_mutation_of_base_visible_in_existing_view():
    def fn(d):
        base = torch.zeros(3, 4, device=d)
        col = base[:, 2]
        base.add_(1)
        base[1].fill_(7)
        return col, base

    both(fn)


def test_cached_read_invalidated_by_write_through_view():
    d = torch.arange(4.0, device=R)
    assert d.cpu().tolist() == [0.0, 1.0, 2.0, 3.0]  # now cached on the client
    d[1:3].add_(10)
    assert d.cpu().tolist() == [0.0, 11.0, 12.0, 3.0]
    d.view(2, 2)[1, 1] = -1
    assert d.cpu().tolist() == [0.0, 11.0, 12.0, -1.0]


def test_cpu_to_remote_copy_into_views():
    def fn(d):
        a = torch.zeros(6, device=d)
        a[1:3] = torch.tensor([5.0, 6.0])  # CPU source into a contiguous sub-view
        b = torch.zeros(3, 2, device=d)
        b[:, 0] = torch.tensor([1.0, 2.0, 3.0])  # CPU source into a strided view
        c = torch.zeros(4, device=d)
        c.copy_(torch.tensor([1, 2, 3, 4]))  # dtype conversion on the way
        return a, b, c

    both(fn)


# ------------------------------------------------------------------ in-place


def test_inplace_ops():
    def fn(d):
        a = torch.arange(6.0, device=d)
        a.add_(1)
        a.mul_(3)
        a.sub_(torch.ones(6, device=d), alpha=2)
        a.div_(2)
        a.clamp_(2, 7)
        b = torch.ones(2, 3, device=d)
        b.zero_()
        c = torch.empty(6, device=d)
        c.copy_(a)
        e = torch.empty(2, 3, dtype=torch.int32, device=d)
        e.copy_(a.view(2, 3))  # float -> int copy
        f = torch.arange(4, device=d)
        f.add_(2).mul_(2)
        g = torch.ones(3, device=d)
        g.masked_fill_(torch.tensor([True, False, True], device=d), -1)
        h = torch.arange(5.0, device=d)
        h.pow_(2).neg_()
        return a, b, c, e, f, g, h

    both(fn)


def test_inplace_returns_same_object_and_keeps_identity():
    a = torch.zeros(3, device=R)
    ptr = a.untyped_storage().data_ptr()
    assert a.add_(1) is a
    assert a.untyped_storage().data_ptr() == ptr
    assert a.cpu().tolist() == [1.0, 1.0, 1.0]


# ------------------------------------------------------------------ indexing


@pytest.mark.parametrize(
    "name,fn",
    [
        ("int_index", lambda d: _x(d)[2, 3]),
        ("negative_index", lambda d: _x(d)[-1, -2]),
        ("tensor_index_remote", lambda d: _x(d)[torch.tensor([0, 2, 2], device=d)]),
        ("tensor_index_cpu_indices", lambda d: _x(d)[torch.tensor([0, 2, 2])]),
        (
            "two_tensor_indices",
            lambda d: _x(d)[torch.tensor([0, 2], device=d), torch.tensor([1, 4], device=d)],
        ),
        ("list_index", lambda d: _x(d)[[0, 3]]),
        ("mixed_slice_tensor", lambda d: _x(d)[1:, torch.tensor([0, 4], device=d)]),
        ("none_ellipsis", lambda d: _x(d)[None, ..., 1]),
        ("index_select", lambda d: _x(d).index_select(1, torch.tensor([4, 0], device=d))),
        (
            "gather",
            lambda d: _x(d).gather(1, torch.tensor([[0, 1], [2, 3], [4, 4], [1, 0]], device=d)),
        ),
        (
            "scatter_value",
            lambda d: torch.zeros(4, 5, device=d).scatter(
                1, torch.tensor([[0, 1], [2, 3], [4, 4], [1, 0]], device=d), 1.5
            ),
        ),
        (
            "scatter_src_",
            lambda d: torch.zeros(4, 5, device=d).scatter_(
                1, torch.tensor([[0, 1], [2, 3], [4, 4], [1, 0]], device=d), _x(d)
            ),
        ),
        (
            "scatter_add",
            lambda d: torch.zeros(3, device=d).scatter_add(
                0, torch.tensor([0, 1, 0, 2], device=d), torch.ones(4, device=d)
            ),
        ),
        ("masked_fill", lambda d: _x(d).masked_fill(_x(d) < 0, -7.0)),
        (
            "masked_fill_tensor_value",
            lambda d: _x(d).masked_fill(_x(d) < 0, torch.tensor(-7.0, device=d)),
        ),
        ("bool_mask_getitem", lambda d: _x(d)[_x(d) > 0]),
        ("bool_mask_row", lambda d: _x(d)[torch.tensor([True, False, True, False], device=d)]),
        ("take_along_dim", lambda d: torch.take_along_dim(_x(d), _x(d).argmax(1, keepdim=True), 1)),
    ],
)
def test_indexing(name, fn):
    both(fn)


def test_index_put_with_tensor_indices():
    def fn(d):
        t = _x(d).clone()
        t.index_put_(
            (torch.tensor([0, 3], device=d), torch.tensor([1, 2], device=d)),
            torch.tensor(99.0, device=d),
        )
        t[torch.tensor([1, 2], device=d)] = torch.ones(5, device=d)
        u = torch.zeros(3, device=d)
        u.index_put_((torch.tensor([0, 0, 2], device=d),), torch.ones(3, device=d), accumulate=True)
        return t, u

    both(fn)


def test_index_put_with_bool_mask():
    def fn(d):
        t = _x(d).clone()
        t[t > 3] = -1
        s = _x(d).clone()
        s.index_put_((s < 0,), torch.tensor(0.0, device=d))
        r = _x(d).clone()
        r[r < -5] = torch.tensor([100.0, 200.0, 300.0], device=d)
        return t, s, r

    both(fn)


def test_setitem_scalar_and_slices():
    def fn(d):
        t = torch.zeros(3, 4, device=d)
        t[0] = 1
        t[:, 1] = 2.5
        t[1:, 2:] = torch.arange(4.0, device=d).reshape(2, 2)
        t[-1, -1] = -9
        return t

    both(fn)


# ------------------------------------------------------------------ joining and splitting


@pytest.mark.parametrize(
    "name,fn",
    [
        ("cat0", lambda d: torch.cat([_x(d), _x(d) * 2], 0)),
        ("cat1", lambda d: torch.cat([_x(d), _x(d)[:, :2]], 1)),
        (
            "cat_mixed_dtype",
            lambda d: torch.cat([torch.ones(2, device=d), torch.arange(2, device=d)]),
        ),
        ("cat_with_empty", lambda d: torch.cat([torch.ones(0, device=d), torch.ones(2, device=d)])),
        ("stack", lambda d: torch.stack([_x(d), -_x(d)], 1)),
        ("split_int", lambda d: _x(d).split(2, 1)),
        ("split_sizes", lambda d: _x(d).split([1, 3], 0)),
        ("chunk", lambda d: _x(d).chunk(3, 1)),
        ("unbind", lambda d: _x(d).unbind(0)),
        ("tensor_split", lambda d: torch.tensor_split(_x(d), [1, 3], dim=1)),
        ("repeat", lambda d: _x(d)[:2].repeat(2, 1)),
        ("tile", lambda d: torch.tile(torch.arange(3, device=d), (2,))),
        ("repeat_interleave_int", lambda d: torch.arange(3, device=d).repeat_interleave(2)),
        ("pad", lambda d: F.pad(_x(d), (1, 2), value=-1.0)),
    ],
)
def test_join_split(name, fn):
    both(fn)


def test_split_results_are_views_of_input():
    x = _x(R)
    parts = x.split(2, 0)
    assert all(p.untyped_storage().data_ptr() == x.untyped_storage().data_ptr() for p in parts)
    parts[1].zero_()
    assert_close(x, torch.cat([_x("cpu")[:2], torch.zeros(2, 5)]))


# ------------------------------------------------------------------ neural-network functions


def _act_in(d):
    g = torch.Generator().manual_seed(5)
    return torch.randn(3, 4, 8, generator=g).to(d) * 3


@pytest.mark.parametrize(
    "name,fn",
    [
        ("softmax", lambda t: t.softmax(-1)),
        ("softmax_dim0", lambda t: F.softmax(t, 0)),
        ("log_softmax", lambda t: F.log_softmax(t, 1)),
        ("softmax_half", lambda t: t.half().softmax(-1)),
        ("layer_norm", lambda t: F.layer_norm(t, (8,))),
        (
            "layer_norm_affine",
            lambda t: F.layer_norm(
                t, (8,), torch.arange(8.0, device=t.device), torch.ones(8, device=t.device)
            ),
        ),
        ("rms_norm", lambda t: F.rms_norm(t, (8,), eps=1e-6)),
        ("gelu", lambda t: F.gelu(t)),
        ("gelu_tanh", lambda t: F.gelu(t, approximate="tanh")),
        ("relu", lambda t: F.relu(t)),
        ("silu", lambda t: F.silu(t)),
        ("leaky_relu", lambda t: F.leaky_relu(t, 0.1)),
        ("tanh", lambda t: torch.tanh(t)),
        ("dropout_eval", lambda t: F.dropout(t, 0.5, training=False)),
        ("normalize", lambda t: F.normalize(t, dim=-1)),
        (
            "cross_entropy",
            lambda t: F.cross_entropy(t.reshape(12, 8), torch.arange(12, device=t.device) % 8),
        ),
        ("mse_loss", lambda t: F.mse_loss(t, torch.zeros_like(t))),
    ],
)
def test_nn_functional(name, fn):
    both(lambda d: fn(_act_in(d)), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("is_causal", [False, True])
def test_scaled_dot_product_attention(is_causal):
    def fn(d):
        g = torch.Generator().manual_seed(1)
        q, k, v = [torch.randn(2, 3, 5, 8, generator=g).to(d) for _ in range(3)]
        return F.scaled_dot_product_attention(q, k, v, is_causal=is_causal)

    both(fn, rtol=1e-5, atol=1e-5)


def test_scaled_dot_product_attention_with_mask_and_decode_shape():
    def fn(d):
        g = torch.Generator().manual_seed(2)
        q, k, v = [torch.randn(1, 2, 6, 4, generator=g).to(d) for _ in range(3)]
        bool_mask = torch.tril(torch.ones(6, 6, dtype=torch.bool)).to(d)
        float_mask = torch.randn(6, 6, generator=g).to(d)
        return (
            F.scaled_dot_product_attention(q, k, v, attn_mask=bool_mask),
            F.scaled_dot_product_attention(q, k, v, attn_mask=float_mask),
            F.scaled_dot_product_attention(q[:, :, -1:], k, v),  # decode: one query
        )

    both(fn, rtol=1e-5, atol=1e-5)


def test_embedding():
    def fn(d):
        w = torch.arange(30.0).reshape(10, 3).to(d)
        return F.embedding(torch.tensor([[1, 3], [0, 9]], device=d), w), F.embedding(
            torch.tensor([2, 0], device=d), w, padding_idx=0
        )

    both(fn)


def test_conv_and_pooling():
    def fn(d):
        g = torch.Generator().manual_seed(2)
        x = torch.randn(2, 3, 8, 8, generator=g).to(d)
        w = torch.randn(4, 3, 3, 3, generator=g).to(d)
        b = torch.randn(4, generator=g).to(d)
        w_depthwise = torch.randn(3, 1, 3, 3, generator=g).to(d)
        y = F.conv2d(x, w, b, padding=1)
        return (
            y,
            F.conv2d(x, w, stride=2),
            F.conv2d(x, w_depthwise, groups=3, padding=1),
            F.max_pool2d(y, 2),
            F.max_pool2d(y, 3, stride=2, padding=1),
            F.avg_pool2d(y, 2),
            F.adaptive_avg_pool2d(y, 1),
        )

    both(fn, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------ data-dependent shapes


@pytest.mark.parametrize(
    "name,fn",
    [
        ("masked_select", lambda d: _x(d).masked_select(_x(d) > 2)),
        ("nonzero", lambda d: (_x(d) > 2).nonzero()),
        ("nonzero_as_tuple", lambda d: torch.nonzero(_x(d) > 2, as_tuple=True)),
        ("nonzero_empty", lambda d: (_x(d) > 100).nonzero()),
        ("where_cond_only", lambda d: torch.where(_x(d) > 2)),
        ("argwhere", lambda d: torch.argwhere(_x(d) < -6)),
        ("unique", lambda d: torch.tensor([3, 1, 2, 3, 1], device=d).unique()),
        (
            "unique_inverse_counts",
            lambda d: torch.tensor([3, 1, 2, 3, 1], device=d).unique(
                return_inverse=True, return_counts=True
            ),
        ),
        (
            "unique_consecutive",
            lambda d: torch.tensor([1, 1, 2, 2, 3, 1], device=d).unique_consecutive(),
        ),
        ("bincount", lambda d: torch.tensor([0, 1, 1, 3], device=d).bincount()),
        (
            "repeat_interleave_tensor",
            lambda d: torch.arange(3, device=d).repeat_interleave(
                torch.tensor([1, 0, 2], device=d)
            ),
        ),
    ],
)
def test_data_dependent(name, fn):
    both(fn)


def test_data_dependent_result_feeds_further_ops():
    def fn(d):
        x = _x(d)
        sel = x[x > 0]
        return (sel * 2).sum(), sel.shape[0], x.nonzero()[:, 1].max()

    both(fn)


# ------------------------------------------------------------------ dtypes


@pytest.mark.parametrize("dtype", [torch.int8, torch.uint8, torch.int16, torch.int32, torch.int64])
def test_integer_dtypes(dtype):
    def fn(d):
        a = (torch.arange(12, device=d) % 7).to(dtype)
        b = torch.full((12,), 3, dtype=dtype, device=d)
        return (
            a + b,
            a * b,
            a // 2,
            a.sum(),
            a.max(),
            a.reshape(3, 4).t().contiguous(),
            (a > 3),
            a.to(torch.float32),
        )

    both(fn)


def test_bool_dtype():
    def fn(d):
        a = torch.tensor([True, False, True, True], device=d)
        b = torch.tensor([False, False, True, False], device=d)
        return (
            a & b,
            a | b,
            a ^ b,
            ~a,
            a.sum(),
            a.any(),
            a.all(),
            a.long(),
            torch.where(a, 1.0, -1.0),
        )

    both(fn)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_dtypes(dtype):
    def fn(d):
        g = torch.Generator().manual_seed(4)
        a = torch.randn(4, 8, generator=g).to(dtype).to(d)
        b = torch.randn(8, 3, generator=g).to(dtype).to(d)
        return (
            a + 1,
            a * a,
            a @ b,
            a.sum(1),
            a.softmax(-1),
            a.float(),
            F.gelu(a),
            a.max(),
            a.to(torch.float64),
        )

    both(fn)


def test_float64_precision_is_kept():
    def fn(d):
        a = torch.tensor([1.0 + 1e-12, 1.0], dtype=torch.float64, device=d)
        return a - 1.0

    got, _ = both(fn)
    assert got.cpu()[0].item() != 0.0


# ------------------------------------------------------------------ printing


def _expected_repr(cpu_str, device="remote:0"):
    """str of a CPU tensor with the device inserted where PyTorch puts it for CUDA."""
    body = cpu_str[: cpu_str.rindex(")")]
    for kw in (", dtype=", ", requires_grad=", ", grad_fn="):
        i = body.find(kw)
        if i != -1:
            return body[:i] + f", device='{device}'" + body[i:] + ")"
    return body + f", device='{device}')"


@pytest.mark.parametrize(
    "make",
    [
        lambda d: torch.tensor([1.5, -2.25, 3.0], device=d),
        lambda d: torch.tensor([[1, 2], [3, 4]], device=d),
        lambda d: torch.tensor([1.0, 2.0], dtype=torch.float16, device=d),
        lambda d: torch.tensor([True, False], device=d),
        lambda d: torch.tensor(3.5, device=d),
        lambda d: torch.zeros(0, device=d),
        lambda d: torch.arange(2000.0, device=d).reshape(40, 50) / 7,  # summarised
        lambda d: torch.ones(2, device=d, requires_grad=True),
        lambda d: torch.arange(6, dtype=torch.int32, device=d).reshape(2, 3).t(),
    ],
)
def test_print_matches_cpu_format(make):
    r = make(R)
    c = make("cpu")
    assert str(r) == _expected_repr(str(c))
    assert repr(r) == _expected_repr(repr(c))


def test_print_costs_at_most_one_fetch(djinn_mod):
    t = torch.randn(4, 4, device=R) * 2
    big = torch.randn(100, 100, device=R) + 1  # summarised when printed
    torch.remote.synchronize()
    for x in (t, big):
        djinn_mod.reset_bytes_moved()
        s = str(x)
        moved = djinn_mod.bytes_moved()
        assert moved["fetches"] <= 1, moved
        assert moved["messages"] <= 1, moved
        assert "device='remote:0'" in s
    # a second print of unchanged data is served from the client's cache
    djinn_mod.reset_bytes_moved()
    str(t)
    assert djinn_mod.bytes_moved()["fetches"] == 0


def test_numpy_requires_cpu_first():
    with pytest.raises(TypeError, match="cpu"):
        torch.arange(3, device=R).numpy()
    assert torch.arange(3, device=R).cpu().numpy().tolist() == [0, 1, 2]


def test_mixing_cpu_and_remote_operands_is_rejected_like_cuda():
    with pytest.raises(RuntimeError, match="same device"):
        torch.ones(3) + torch.ones(3, device=R)
    # a 0-dim CPU tensor is a scalar and may mix, as with CUDA
    assert_close(torch.ones(3, device=R) + torch.tensor(2.0), torch.full((3,), 3.0))


# ------------------------------------------------------------------ sizes, threads, lifetimes


def test_large_tensor_partial_and_strided_reads():
    # > 4 MiB: not fetched whole or cached by the client, so slices are partial fetches
    c = torch.arange(3_000_000, dtype=torch.float32)
    r = c.to(R)
    assert torch.equal(r[1000:1010].cpu(), c[1000:1010])
    assert torch.equal(r[-5:].cpu(), c[-5:])
    assert torch.equal(r.view(1000, 3000)[:, 7].cpu(), c.view(1000, 3000)[:, 7])
    assert (r * 2).sum().item() == (c * 2).sum().item()
    assert torch.equal((r + 1).cpu(), c + 1)
    r[5:7] = -1.0
    assert r[4:8].cpu().tolist() == [4.0, -1.0, -1.0, 7.0]


def test_threads_record_into_one_session():
    import threading

    results, errors = {}, []

    def work(k):
        try:
            x = torch.full((64,), float(k), device=R)
            for _ in range(100):
                x = x + 1
            results[k] = x.cpu().unique().tolist()
        except Exception as e:  # noqa: BLE001
            errors.append(repr(e))

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    assert results == {k: [100.0 + k] for k in range(4)}


def test_dropped_tensors_are_freed_on_the_server(djinn_mod):
    import gc

    torch.remote.synchronize()
    gc.collect()
    torch.remote.synchronize()
    before = djinn_mod.server_stats()["handles"]
    for _ in range(30):
        y = torch.randn(16, 16, device=R) @ torch.randn(16, 16, device=R)
        y = y.relu().sum()
        y.item()
    del y
    gc.collect()
    torch.remote.synchronize()
    (torch.ones(1, device=R) + 1).item()  # one more fragment carries the last frees
    gc.collect()
    torch.remote.synchronize()
    assert djinn_mod.server_stats()["handles"] <= before + 2


# ------------------------------------------------------------------ deduplicated uploads

_BIG = 40_000  # 160 KB of float32: large uploads are content-addressed and may be shared


@pytest.mark.parametrize(
    "mutate",
    [
        lambda a: a.add_(1),
        lambda a: a[0:10].add_(1),
        lambda a: torch.add(torch.ones(_BIG, device=R), 1, out=a),
        lambda a: a.copy_(torch.ones(_BIG, device=R)),
        lambda a: a.index_put_(
            (torch.tensor([0, 1], device=R),), torch.tensor(5.0), accumulate=True
        ),
        lambda a: a.__setitem__(5, 3.0),
        lambda a: a.view(200, 200).t()[0].fill_(2),
        lambda a: torch.nn.init.normal_(a),
    ],
    ids=[
        "add_",
        "view_add_",
        "out=",
        "copy_",
        "index_put_",
        "setitem",
        "strided_fill_",
        "init_normal_",
    ],
)
def test_identical_uploads_stay_independent(mutate):
    host = torch.zeros(_BIG)
    a, b = host.to(R), host.clone().to(R)
    mutate(a)
    assert torch.equal(b.cpu(), host)
    assert not torch.equal(a.cpu(), host)


def test_identical_upload_in_another_session_is_not_changed_by_this_one(server):
    import textwrap

    from conftest import run_python, subprocess_env

    host = torch.arange(_BIG, dtype=torch.float32)
    mine = host.to(R)
    torch.remote.synchronize()
    code = textwrap.dedent(f"""
        import torch, djinn
        theirs = torch.arange({_BIG}, dtype=torch.float32).to('remote')
        theirs.mul_(-1)
        theirs[7] = 123.0
        print(theirs[:8].cpu().tolist())
    """)
    r = run_python(code, subprocess_env(DJINN_SERVER=server))
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == "[-0.0, -1.0, -2.0, -3.0, -4.0, -5.0, -6.0, 123.0]"
    assert torch.equal(mine.cpu(), host)
    assert_close((mine + 1)[:3], torch.tensor([1.0, 2.0, 3.0]))


# ------------------------------------------------------------------ guarded kernels
# The server checks the arguments of kernels that trust them (server/guards.cpp); honest
# programs that reach those kernels, mostly through client-side autograd, still match.


def _grads(fn, *shapes, dtype=torch.float32):
    def run(d):
        g = torch.Generator().manual_seed(3)
        xs = [torch.randn(*s, generator=g, dtype=dtype).to(d).requires_grad_() for s in shapes]
        out = fn(d, *xs)
        # a different upstream gradient for each element: ones would hide a wrong mapping
        # (e.g. every index sent to bag 0 by a wrong offset2bag)
        ramp = torch.arange(out.numel(), dtype=out.dtype).reshape(out.shape).to(d)
        (out * ramp).sum().backward()
        return [out.detach()] + [x.grad for x in xs]

    return run


def _ctc(d, lp):
    g = torch.Generator().manual_seed(4)
    targets = torch.randint(1, 5, (2, 6), generator=g).to(d)
    return F.ctc_loss(lp.log_softmax(2), targets, [10, 9], [6, 4], reduction="none")


def _bag(mode):
    def fn(d, w):
        idx = torch.tensor([0, 3, 3, 7, 2, 9, 1], device=d)
        off = torch.tensor([0, 3, 3, 5], device=d)
        return F.embedding_bag(idx, w, off, mode=mode)

    return fn


GUARDED = {
    "cummax": _grads(lambda d, x: torch.cummax(x, 1).values, (4, 9)),
    "cummin_dim0": _grads(lambda d, x: torch.cummin(x, 0).values, (4, 9)),
    "max_pool2d_grad": _grads(lambda d, x: F.max_pool2d(x, 2), (2, 3, 6, 6)),
    "max_pool3d_grad": _grads(lambda d, x: F.max_pool3d(x, 2), (1, 2, 4, 4, 4)),
    "adaptive_max_pool2d_grad": _grads(lambda d, x: F.adaptive_max_pool2d(x, 3), (2, 2, 7, 5)),
    "adaptive_max_pool3d_grad": _grads(lambda d, x: F.adaptive_max_pool3d(x, 2), (1, 2, 5, 4, 3)),
    "embedding_grad_freq": _grads(
        lambda d, w: F.embedding(
            torch.tensor([[1, 4, 4], [0, 9, 1]], device=d), w, scale_grad_by_freq=True
        ),
        (10, 3),
    ),
    "embedding_bag_sum": _grads(_bag("sum"), (10, 4)),
    "embedding_bag_mean": _grads(_bag("mean"), (10, 4)),
    "embedding_bag_max": _grads(_bag("max"), (10, 4)),
    # 2-D indices, per-sample weights: CPU's fast sum path returns no offset2bag
    "embedding_bag_2d_weighted": _grads(
        lambda d, w, psw: F.embedding_bag(
            torch.tensor([[1, 5, 4], [4, 7, 5], [0, 9, 9]], device=d),
            w,
            mode="sum",
            per_sample_weights=psw,
        ),
        (10, 4),
        (3, 3),
    ),
    "ctc_loss": _grads(_ctc, (10, 2, 5)),
    "segment_reduce_sum": _grads(
        lambda d, x: torch.segment_reduce(
            x, "sum", lengths=torch.tensor([2, 0, 3], device=d), unsafe=True, initial=0.0
        ),
        (5,),
    ),
}


@pytest.mark.parametrize("name", list(GUARDED))
def test_guarded_kernels_serve_honest_programs(name):
    both(GUARDED[name])


@pytest.mark.parametrize("opt", ["adam", "adamw", "sgd", "adagrad"])
def test_fused_optimizers_match_cpu(opt):
    def run(d):
        torch.manual_seed(0)
        m = torch.nn.Linear(6, 3).to(d)
        make = {
            "adam": lambda p: torch.optim.Adam(p, lr=0.1, fused=True, amsgrad=True),
            "adamw": lambda p: torch.optim.AdamW(p, lr=0.1, fused=True),
            "sgd": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, fused=True),
            "adagrad": lambda p: torch.optim.Adagrad(p, lr=0.1, fused=True),
        }[opt]
        o = make(m.parameters())
        x = torch.arange(12.0).reshape(2, 6).to(d)
        for _ in range(3):
            o.zero_grad()
            m(x).square().sum().backward()
            o.step()
        return [p.detach() for p in m.parameters()]

    both(run, rtol=1e-5, atol=1e-6)

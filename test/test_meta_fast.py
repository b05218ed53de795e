"""C++ shape functions of the fallback (csrc/torch/RemoteMeta.cpp) against two oracles.

A meta-cache miss infers an op's outputs with a C++ shape function instead of running the
op on the Meta device (whose kernels are mostly Python). Every shape-function op is run
here over random geometries (contiguous, permuted, channels-last, expanded with 0
strides, strided slices with an offset, zero-size, 0-dim), dtypes (with type promotion)
and scalar operands, in functional, in-place and out= forms, each on a cleared meta
cache, and:

1. the remote result's sizes, strides, dtype and storage offset equal CPU eager's (the
   server's kernel is CPU's: declaring anything else makes the server copy or fail);
2. they equal the Meta device's, up to strides that address nothing (size-1 dims, empty
   tensors); for elementwise ops the strides only where the Meta device agrees with CPU
   (see META_LAYOUT_DIFFERS: the Meta device's Python kernels break ties otherwise);
3. the values equal CPU's;
4. the op really took the shape function (not the Meta device path), and no Python Meta
   kernel, ref or decomposition ran while it was captured (sys.setprofile).

A shape function that strides, sizes or types one output differently fails 1. (checked
by breaking `where`'s on purpose: the permuted and expanded cases fail).
"""

import os
import random
import sys
import warnings

import pytest
import torch
import torch.nn.functional as F

pytestmark = pytest.mark.usefixtures("remote")

R = "remote"
FLOATS = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
INTS = [torch.int64, torch.int32, torch.uint8, torch.bool]
# random cases per op; DJINN_TEST_META_CASES=300 for a deeper run
CASES_PER_OP = int(os.environ.get("DJINN_TEST_META_CASES", "32"))
SEED = int(os.environ.get("DJINN_TEST_META_SEED", "0"))


@pytest.fixture(autouse=True)
def _fast_path(djinn_mod):
    prev = djinn_mod._C._meta_fast(True)
    yield
    djinn_mod._C._meta_fast(prev)


# ------------------------------------------------------------------ geometries


def _data(shape, dtype, g):
    if dtype == torch.bool:
        return torch.randint(0, 2, shape, generator=g).bool()
    if dtype.is_floating_point:
        return (torch.randn(shape, generator=g) * 2).to(dtype)
    lo = 0 if dtype == torch.uint8 else -4
    return torch.randint(lo, 5, shape, generator=g).to(dtype)


class Geo:
    """A recipe for a tensor of a given shape and layout, replayed on any device."""

    def __init__(self, shape, dtype, kind, rng, g):
        self.shape, self.dtype, self.kind = tuple(shape), dtype, kind
        n = len(shape)
        if kind == "perm":
            self.perm = list(range(n))
            rng.shuffle(self.perm)
            # base.permute(perm) has sizes base.shape[perm[i]] = shape[i]
            self.base = _data([shape[i] for i in _argsort(self.perm)], dtype, g)
        elif kind == "expand":
            self.src = [1 if rng.random() < 0.5 else s for s in shape]
            self.base = _data(self.src, dtype, g)
        elif kind == "slice":
            self.base = _data([2 * s + 1 for s in shape], dtype, g)
        else:  # contig, cl
            self.base = _data(shape, dtype, g)

    def on(self, dev):
        t = self.base.to(dev, copy=True)  # in-place cases write into it
        if self.kind == "perm":
            return t.permute(self.perm)
        if self.kind == "expand":
            return t.expand(self.shape)
        if self.kind == "slice":
            return t[tuple(slice(1, None, 2) for _ in self.shape)]
        if self.kind == "cl":
            return t.contiguous(memory_format=torch.channels_last)
        return t

    def __repr__(self):
        return f"{self.kind}{list(self.shape)}:{str(self.dtype)[6:]}"


def _argsort(p):
    return sorted(range(len(p)), key=lambda i: p[i])


def _kinds(rank):
    return ["contig", "perm", "expand", "slice"] + (["cl"] if rank == 4 else [])


def rand_shape(rng, rank=None, zero=True):
    rank = rng.choice([0, 1, 2, 3, 4]) if rank is None else rank
    sizes = [1, 2, 3, 5] + ([0] if zero else [])
    return [rng.choice(sizes) for _ in range(rank)]


def geo(rng, g, shape, dtype, kind=None):
    return Geo(shape, dtype, kind or rng.choice(_kinds(len(shape))), rng, g)


def bcast_shapes(rng, k, zero=True):
    """k shapes broadcastable together, with leading dims dropped and sizes set to 1."""
    out = rand_shape(rng, zero=zero)
    shapes = []
    for _ in range(k):
        s = [1 if rng.random() < 0.3 else d for d in out]
        s = s[rng.randint(0, len(s)) :] if rng.random() < 0.3 else s
        shapes.append(s)
    return shapes


# ------------------------------------------------------------------ oracle comparison


def geom(t):
    return (tuple(t.shape), tuple(t.stride()), t.dtype, t.storage_offset())


def layout(t):
    """geom() up to the strides that address nothing: those of dims of size 1, and all of
    them for a tensor without elements (what the server compares, executor.cpp)."""
    empty = t.numel() == 0
    st = tuple(None if empty or n <= 1 else s for n, s in zip(t.shape, t.stride()))
    return (tuple(t.shape), st, t.dtype, t.storage_offset())


def _tensors(x):
    if isinstance(x, torch.Tensor):
        return [x]
    if isinstance(x, (tuple, list)):
        return [t for e in x for t in _tensors(e)]
    return []


class Device:
    """An argument that becomes the device the case runs on (to make out= tensors)."""

    def on(self, dev):
        return dev

    def __repr__(self):
        return "dev"


def _on(args, dev):
    return [a.on(dev) if isinstance(a, (Geo, Device)) else a for a in args]


# How the Meta device is compared, per test: "strict", the remote result has the Meta
# device's layout (up to strides addressing nothing); "sizes", its sizes, dtype and offset,
# and its strides only where the Meta device agrees with CPU. Elementwise ops compare
# "sizes": torch._prims_common.compute_elementwise_output_strides, behind their Python Meta
# kernels, breaks ties between inputs (size-1 and broadcast dims) unlike TensorIterator,
# and some refs build intermediates (add's alpha, div's rounding, isin) that decide the
# strides; the server runs TensorIterator, whose strides CPU shows. None: not compared
# (the Meta device's out= wrappers resize outputs to contiguous strides, and its
# normalisation kernels are decompositions with their own strides).
META_LAYOUT_DIFFERS = []  # (case, meta, cpu) seen with "sizes": for a reader, not asserted


def _converts_inputs(args):
    """Whether CPU's TensorIterator would convert a non-dense input to the common dtype
    first (CPU only: CUDA and 'remote' compute from the inputs as they are), so that CPU's
    output strides follow the converted, contiguous copy."""
    ts = [a.on("cpu") for a in args if isinstance(a, Geo)]
    dts = {t.dtype for t in ts if t.dim() > 0}
    return len(dts) > 1 and any(not _dense(t) for t in ts)


def _dense(t):
    """Non-overlapping and dense (what .to() keeps the strides of); empty counts as not."""
    expected = 1
    for st, n in sorted((st, n) for n, st in zip(t.shape, t.stride()) if n != 1):
        if st != expected:
            return False
        expected *= n
    return t.numel() > 0


# where PyTorch's Python Meta kernels and the refs and decompositions behind them live
_PY_META = ("_meta_registrations", "_refs", "_decomp", "_prims")


def _note_python_meta(frame, event, seen):
    if event == "call" and any(m in frame.f_code.co_filename for m in _PY_META):
        seen.append(f"{frame.f_code.co_filename.rsplit('torch/', 1)[-1]}:{frame.f_code.co_name}")


def check(name, fn, args, fast, djinn_mod, meta="strict"):
    """Run ``fn`` on cpu, meta and remote; compare geometries and values (see module doc).

    Returns False when CPU refuses the arguments (the case is skipped)."""
    try:
        expected = fn(*_on(args, "cpu"))
    except (RuntimeError, IndexError, ValueError, TypeError):
        return False
    cpu_out = _tensors(expected)
    ins = _on(args, R)
    torch.remote.synchronize()
    djinn_mod._C._meta_cache_clear()
    before = djinn_mod._C._meta_counters()["fast"]
    python_meta = []
    sys.setprofile(lambda frame, event, _: _note_python_meta(frame, event, python_meta))
    try:
        got = fn(*ins)
    finally:
        sys.setprofile(None)
    slow = dict(djinn_mod._C._meta_slow_ops())
    fast_now = djinn_mod._C._meta_counters()["fast"] - before
    where = f"{name}{args}"
    assert fast_now >= 1, f"{where}: no shape function ran (slow: {slow})"
    for op in fast:
        assert op not in slow, f"{where}: {op} took the Meta device path"
    if not slow:  # no op took the Meta device path: no Python (and no GIL) on the way
        assert not python_meta, f"{where}: Python Meta kernels ran: {python_meta[:5]}"
    rem_out = _tensors(got)
    assert len(rem_out) == len(cpu_out), where
    try:
        meta_out = _tensors(fn(*_on(args, "meta")))
    except (RuntimeError, NotImplementedError):
        meta_out = None
    # the output of an elementwise op on inputs CPU converts first is made by ATen's
    # structured meta on the client (PyTorch's default backend kernel), with the strides
    # CUDA would give: only sizes, dtype and offset compare with CPU's
    same_strides = not _converts_inputs(args)
    for i, (r, c) in enumerate(zip(rem_out, cpu_out)):
        if same_strides:
            assert geom(r) == geom(c), f"{where} output {i}: remote {geom(r)} != cpu {geom(c)}"
        else:
            sdo = (r.shape, r.dtype, r.storage_offset()), (c.shape, c.dtype, c.storage_offset())
            assert sdo[0] == sdo[1], f"{where} output {i}: remote {sdo[0]} != cpu {sdo[1]}"
        if meta_out is not None and meta is not None:
            m = meta_out[i]
            assert (m.shape, m.dtype, m.storage_offset()) == (
                r.shape,
                r.dtype,
                r.storage_offset(),
            ), f"{where} output {i}: meta {geom(m)} != remote {geom(r)}"
            if meta == "strict":
                assert layout(r) == layout(m), (
                    f"{where} output {i}: meta {geom(m)} != remote {geom(r)}"
                )
            elif layout(m) == layout(c) and same_strides:
                assert layout(r) == layout(m), where
            else:
                META_LAYOUT_DIFFERS.append((where, geom(m), geom(c)))
        v = r.cpu()
        if c.dtype.is_floating_point or c.dtype.is_complex:
            tol = 2e-2 if c.dtype in (torch.float16, torch.bfloat16) else 1e-5
            torch.testing.assert_close(v, c, rtol=tol, atol=tol, equal_nan=True, msg=where)
        else:
            assert torch.equal(v, c), where
    return True


def run_cases(name, make, fn, fast, djinn_mod, n=CASES_PER_OP, seed=0, **kw):
    rng = random.Random(f"{name}-{seed}-{SEED}")
    g = torch.Generator().manual_seed(rng.randrange(1 << 30))
    ran = 0
    for _ in range(n * 4):
        if ran >= n:
            break
        ran += check(name, fn, make(rng, g), fast, djinn_mod, **kw)
    assert ran >= n // 2, f"{name}: only {ran} valid cases"


# ------------------------------------------------------------------ elementwise

UNARY = {
    "neg": torch.neg,
    "exp": torch.exp,
    "log": torch.log,
    "sqrt": torch.sqrt,
    "rsqrt": torch.rsqrt,
    "sigmoid": torch.sigmoid,
    "tanh": torch.tanh,
    "silu": F.silu,
    "gelu": F.gelu,
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "sin": torch.sin,
    "erf": torch.erf,
    "floor": torch.floor,
    "round": torch.round,
    "sign": torch.sign,
    "reciprocal": torch.reciprocal,
    "isneginf": torch.isneginf,
}
UNARY_FAST = {"gelu_tanh": "gelu"}
# captured whole (functional overload, RemoteKernels.cpp); the others reach the fallback
# as their .out overload through PyTorch's structured wrapper
UNARY_WHOLE = {
    "neg",
    "exp",
    "log",
    "sqrt",
    "rsqrt",
    "sigmoid",
    "tanh",
    "silu",
    "gelu",
    "sin",
    "erf",
}


@pytest.mark.parametrize("name", sorted(UNARY))
def test_unary(name, djinn_mod):
    def make(rng, g):
        dt = rng.choice(FLOATS + INTS[:2])
        return [geo(rng, g, rand_shape(rng), dt)]

    op = UNARY_FAST.get(name, name)
    node = f"aten::{op}" if op in UNARY_WHOLE else f"aten::{op}.out"
    run_cases(name, make, UNARY[name], [node], djinn_mod, meta="sizes")


def test_relu(djinn_mod):
    def make(rng, g):
        return [geo(rng, g, rand_shape(rng), rng.choice(FLOATS + INTS[:3]))]

    run_cases("relu", make, torch.relu, ["aten::relu"], djinn_mod, meta="sizes")


BINARY = {
    "add": (torch.add, "aten::add.Tensor"),
    "add_alpha": (lambda a, b: torch.add(a, b, alpha=2), "aten::add.Tensor"),
    "sub": (torch.sub, "aten::sub.Tensor"),
    "mul": (torch.mul, "aten::mul.Tensor"),
    "div": (torch.div, "aten::div.Tensor"),
    "div_floor": (lambda a, b: torch.div(a, b, rounding_mode="floor"), "aten::div.Tensor_mode"),
    "pow": (torch.pow, "aten::pow.Tensor_Tensor"),
    "maximum": (torch.maximum, "aten::maximum"),
    "isin": (torch.isin, "aten::isin.Tensor_Tensor"),
    "eq": (torch.eq, "aten::eq.Tensor"),
    "lt": (torch.lt, "aten::lt.Tensor"),
    "remainder": (torch.remainder, "aten::remainder.Tensor_out"),
    "bitwise_and": (torch.bitwise_and, "aten::bitwise_and.Tensor_out"),
}


@pytest.mark.parametrize("name", sorted(BINARY))
def test_binary_broadcast_promotion(name, djinn_mod):
    fn, fast = BINARY[name]

    def make(rng, g):
        sa, sb = bcast_shapes(rng, 2)
        pool = INTS if name == "bitwise_and" else FLOATS + INTS
        return [geo(rng, g, sa, rng.choice(pool)), geo(rng, g, sb, rng.choice(pool))]

    run_cases(name, make, fn, [fast], djinn_mod, meta="sizes")


SCALAR = {
    "add_scalar": (lambda a, s: a + s, "aten::add.Tensor"),
    "rsub_scalar": (lambda a, s: s - a, "aten::sub.Tensor"),
    "mul_scalar": (lambda a, s: a * s, "aten::mul.Tensor"),
    "div_scalar": (lambda a, s: a / s, "aten::div.Tensor"),
    "pow_scalar": (lambda a, s: a**s, "aten::pow.Tensor_Scalar"),
    "gt_scalar": (lambda a, s: a > s, "aten::gt.Scalar"),
    "eq_scalar": (lambda a, s: a == s, "aten::eq.Scalar"),
    "clamp": (lambda a, s: a.clamp(-s, s), "aten::clamp"),
    "clamp_min": (lambda a, s: a.clamp_min(s), "aten::clamp_min.out"),
    "leaky_relu": (lambda a, s: F.leaky_relu(a, 0.1), "aten::leaky_relu.out"),
}


@pytest.mark.parametrize("name", sorted(SCALAR))
def test_scalar_operands(name, djinn_mod):
    fn, fast = SCALAR[name]

    def make(rng, g):
        dt = rng.choice(FLOATS + INTS[:2])
        s = rng.choice([2, 3, 1.5, 0.5, True]) if name != "leaky_relu" else 0
        if name == "clamp" and isinstance(s, bool):
            s = 1
        return [geo(rng, g, rand_shape(rng), dt), s]

    run_cases(name, make, fn, [fast], djinn_mod, meta="sizes")


def test_zero_dim_tensor_operands(djinn_mod):
    """0-dim tensors take part in type promotion as a lower category than dimensioned ones."""

    def make(rng, g):
        return [
            geo(rng, g, rand_shape(rng), rng.choice(FLOATS + INTS[:2])),
            geo(rng, g, [], rng.choice([torch.float64, torch.int64, torch.float32])),
        ]

    run_cases("mul0d", make, torch.mul, ["aten::mul.Tensor"], djinn_mod, meta="sizes")


def test_where(djinn_mod):
    def make(rng, g):
        sc, sa, sb = bcast_shapes(rng, 3)
        dt = rng.choice(FLOATS + INTS[:2])
        return [geo(rng, g, sc, torch.bool), geo(rng, g, sa, dt), geo(rng, g, sb, dt)]

    run_cases("where", make, torch.where, ["aten::where.self"], djinn_mod, meta="sizes")


def test_where_scalar_other(djinn_mod):
    def make(rng, g):
        sc, sa = bcast_shapes(rng, 2)
        return [geo(rng, g, sc, torch.bool), geo(rng, g, sa, rng.choice(FLOATS)), 0.0]

    run_cases("where_scalar", make, torch.where, ["aten::where.self"], djinn_mod, meta="sizes")


@pytest.mark.parametrize("name", ["addcmul", "addcdiv", "lerp"])
def test_ternary(name, djinn_mod):
    fns = {
        "addcmul": lambda a, b, c: torch.addcmul(a, b, c, value=0.5),
        "addcdiv": lambda a, b, c: torch.addcdiv(a, b, c, value=2),
        "lerp": torch.lerp,
    }

    def make(rng, g):
        shapes = bcast_shapes(rng, 3)
        dt = rng.choice(FLOATS[:2])
        return [geo(rng, g, s, dt) for s in shapes]

    fast = {"addcmul": "aten::addcmul.out", "addcdiv": "aten::addcdiv.out"}
    run_cases(
        name, make, fns[name], [fast.get(name, "aten::lerp.Tensor_out")], djinn_mod, meta="sizes"
    )


# ------------------------------------------------------------------ in place and out=


def _inplace_make(rng, g):
    sa, sb = bcast_shapes(rng, 2)
    # the result keeps self's shape: self has the broadcast shape
    full = list(torch.broadcast_shapes(tuple(sa), tuple(sb)))
    dt = rng.choice(FLOATS[:2])
    return [geo(rng, g, full, dt), geo(rng, g, sb, rng.choice([dt, torch.float32, torch.int64]))]


INPLACE = {
    "add_": (lambda a, b: a.add_(b), "aten::add.out"),
    "mul_": (lambda a, b: a.mul_(b), "aten::mul.out"),
    "sub_alpha_": (lambda a, b: a.sub_(b, alpha=3), "aten::sub.out"),
    "clamp_": (lambda a, b: a.clamp_(-1, 1), "aten::clamp.out"),
    "relu_": (lambda a, b: a.relu_(), "aten::relu_"),
    "fill_": (lambda a, b: a.fill_(1.5), "aten::fill_.Scalar"),
    "zero_": (lambda a, b: a.zero_(), "aten::zero_"),
    "masked_fill_": (lambda a, b: a.masked_fill_(b > 0, -1.0), "aten::masked_fill_.Scalar"),
}


@pytest.mark.parametrize("name", sorted(INPLACE))
def test_inplace(name, djinn_mod):
    fn, fast = INPLACE[name]

    def wrapped(a, b):
        if 0 in a.stride():  # no writes into expanded (overlapping) views
            a = a.clone(memory_format=torch.preserve_format)
        return fn(a, b)

    run_cases(name, _inplace_make, wrapped, [fast], djinn_mod, meta="sizes")


def _out_like(kind, shape, dtype):
    def make(dev):
        if kind == "empty":
            return torch.empty(0, dtype=dtype, device=dev)
        if kind == "wrong":
            return torch.empty(7, dtype=dtype, device=dev)
        t = torch.empty(list(reversed(shape)), dtype=dtype, device=dev)
        return t.permute(*reversed(range(len(shape))))  # right shape, transposed

    return make


@pytest.mark.parametrize(
    "name",
    [
        "add",
        "mul",
        "div_floor",
        "pow",
        "eq",
        "where",
        "sum",
        "mm",
        "cat",
        "softmax",
        "amax",
        "max_dim",
    ],
)
def test_out_variants(name, djinn_mod):
    """out= tensors that are empty, of another size, or of the right size with other
    strides: ATen resizes (with the iterator's strides) or keeps them as they are."""
    fast = {
        "add": "aten::add.out",
        "mul": "aten::mul.out",
        "div_floor": "aten::div.out_mode",
        "pow": "aten::pow.Tensor_Tensor_out",
        "eq": "aten::eq.Tensor_out",
        "sum": "aten::sum.IntList_out",
        "mm": "aten::mm.out",
        "cat": "aten::cat.out",
        "softmax": "aten::_softmax.out",
        "amax": "aten::amax.out",
        "max_dim": "aten::max.dim_max",
        "where": "aten::where.self_out",
    }[name]

    def make(rng, g):
        dt = rng.choice(FLOATS[:2])
        if name == "mm":
            m, k, n = (rng.choice([0, 1, 3, 4]) for _ in range(3))
            ins = [geo(rng, g, [m, k], dt), geo(rng, g, [k, n], dt)]
        elif name == "cat":
            s = rand_shape(rng, rank=rng.choice([1, 2, 3]))
            ins = [geo(rng, g, s, dt), geo(rng, g, s, dt)]
        elif name == "where":
            sc, sa, sb = bcast_shapes(rng, 3)
            ins = [geo(rng, g, sc, torch.bool), geo(rng, g, sa, dt), geo(rng, g, sb, dt)]
        elif name in ("sum", "softmax", "amax", "max_dim"):
            ins = [geo(rng, g, rand_shape(rng, rank=rng.choice([1, 2, 3, 4]), zero=False), dt)]
        else:
            sa, sb = bcast_shapes(rng, 2)
            ins = [geo(rng, g, sa, dt), geo(rng, g, sb, dt)]
        return ins + [rng.choice(["empty", "wrong", "strided"])]

    def fn(*a):
        *ins, kind = a
        dev = ins[0].device
        ref = {
            "add": lambda: torch.add(*ins),
            "mul": lambda: torch.mul(*ins),
            "div_floor": lambda: torch.div(*ins, rounding_mode="floor"),
            "pow": lambda: torch.pow(*ins),
            "eq": lambda: torch.eq(*ins),
            "sum": lambda: torch.sum(ins[0], -1),
            "mm": lambda: torch.mm(*ins),
            "cat": lambda: torch.cat(ins),
            "softmax": lambda: torch.softmax(ins[0], -1),
            "amax": lambda: torch.amax(ins[0], -1),
            "max_dim": lambda: torch.max(ins[0], -1)[0],
            "where": lambda: torch.where(*ins),
        }[name]()  # the shape and dtype the out= must take
        out = _out_like(kind, list(ref.shape), ref.dtype)(dev)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if name == "sum":
                return torch.sum(ins[0], -1, out=out)
            if name == "cat":
                return torch.cat(ins, out=out)
            if name == "softmax":
                return torch._softmax(ins[0], -1, False, out=out)
            if name == "amax":
                return torch.amax(ins[0], -1, out=out)
            if name == "max_dim":
                idx = torch.empty(0, dtype=torch.long, device=dev)
                return torch.max(ins[0], -1, out=(out, idx))
            if name == "div_floor":
                return torch.div(*ins, rounding_mode="floor", out=out)
            return getattr(torch, name)(*ins, out=out)

    # the Meta device's out= wrappers resize to contiguous strides: CPU is the oracle
    run_cases(f"out_{name}", make, fn, [fast], djinn_mod, meta=None)


# ------------------------------------------------------------------ reductions


REDUCE = {
    "sum": (lambda x, d, k: x.sum(d, keepdim=k), "aten::sum.dim_IntList"),
    "sum_dtype": (
        lambda x, d, k: x.sum(d, keepdim=k, dtype=torch.float64),
        "aten::sum.dim_IntList",
    ),
    "mean": (lambda x, d, k: x.float().mean(d, keepdim=k), "aten::mean.dim"),
    "amax": (lambda x, d, k: x.amax(d, keepdim=k), "aten::amax"),
    "max_dim": (lambda x, d, k: x.max(d, keepdim=k), "aten::max.dim_max"),
    "argmax": (lambda x, d, k: x.argmax(d, keepdim=k), "aten::argmax"),
    "softmax": (lambda x, d, k: x.float().softmax(d), "aten::_softmax"),
    "log_softmax": (lambda x, d, k: x.float().log_softmax(d), "aten::_log_softmax"),
    "cumsum": (lambda x, d, k: x.cumsum(d), "aten::cumsum"),
    "all_dim": (lambda x, d, k: x.all(d, keepdim=k), "aten::all.out"),
    "any_dims": (lambda x, d, k: x.any(dim=(d,), keepdim=k), "aten::any.dims"),
    "all_full": (lambda x, d, k: x.all(), "aten::all.all_out"),
    "any_full": (lambda x, d, k: x.any(), "aten::any.all_out"),
}


@pytest.mark.parametrize("name", sorted(REDUCE))
def test_reductions(name, djinn_mod):
    fn, fast = REDUCE[name]

    def make(rng, g):
        shape = rand_shape(rng, rank=rng.choice([1, 2, 3, 4]), zero=name in ("sum", "cumsum"))
        dt = rng.choice([torch.float32, torch.float64, torch.int64])
        return [geo(rng, g, shape, dt), rng.randrange(-len(shape), len(shape)), rng.random() < 0.5]

    run_cases(name, make, fn, [fast], djinn_mod)


# ------------------------------------------------------------------ matrix products


def _mat_make(kind):
    def make(rng, g):
        dt = rng.choice([torch.float32, torch.float64])
        m, k, n, b = (rng.choice([0, 1, 2, 3, 5]) for _ in range(4))
        if kind == "mm":
            return [geo(rng, g, [m, k], dt), geo(rng, g, [k, n], dt)]
        if kind == "bmm":
            return [geo(rng, g, [b, m, k], dt), geo(rng, g, [b, k, n], dt)]
        if kind == "addmm":
            bias = rng.choice([[n], [m, n], [1, n], []])
            return [geo(rng, g, bias, dt), geo(rng, g, [m, k], dt), geo(rng, g, [k, n], dt)]
        if kind == "baddbmm":
            return [
                geo(rng, g, [b, m, n], dt),
                geo(rng, g, [b, m, k], dt),
                geo(rng, g, [b, k, n], dt),
            ]
        if kind == "matmul":
            return [geo(rng, g, [b, m, k], dt), geo(rng, g, [k, n], dt)]
        return [geo(rng, g, [b, m, k], dt), geo(rng, g, [n, k], dt), geo(rng, g, [n], dt)]

    return make


MATMUL = {
    "mm": (torch.mm, "aten::mm"),
    "bmm": (torch.bmm, "aten::bmm"),
    "addmm": (lambda c, a, b: torch.addmm(c, a, b, beta=0.5, alpha=2), "aten::addmm"),
    "baddbmm": (torch.baddbmm, "aten::baddbmm"),
    "matmul": (torch.matmul, "aten::mm"),
    "linear": (F.linear, None),
}


@pytest.mark.parametrize("name", sorted(MATMUL))
def test_matrix_products(name, djinn_mod):
    fn, fast = MATMUL[name]
    run_cases(name, _mat_make(name), fn, [fast] if fast else [], djinn_mod)


# ------------------------------------------------------------------ joining, indexing, norms


def test_cat(djinn_mod):
    def make(rng, g):
        rank = rng.choice([1, 2, 3, 4])
        shape = rand_shape(rng, rank=rank)
        dim = rng.randrange(rank)
        dt = rng.choice([torch.float32, torch.float16])
        parts = []
        for _ in range(rng.choice([1, 2, 3])):
            s = list(shape)
            s[dim] = rng.choice([0, 1, 2])
            parts.append(geo(rng, g, s, rng.choice([dt, torch.float64])))
        if rng.random() < 0.2:
            parts.append(geo(rng, g, [0], dt, "contig"))  # legacy empty 1-d operand
        return [dim, *parts]

    run_cases("cat", make, lambda d, *p: torch.cat(p, d), ["aten::cat"], djinn_mod)


def test_index_select_and_embedding(djinn_mod):
    def make(rng, g):
        shape = rand_shape(rng, rank=rng.choice([0, 1, 2, 3]), zero=False)
        dim = rng.randrange(len(shape)) if shape else 0
        n = 1 if not shape else rng.choice([0, 1, 4])
        hi = shape[dim] if shape else 1
        idx = torch.randint(0, hi, [n] if shape or rng.random() < 0.5 else [], generator=g)
        ix = Geo(list(idx.shape), torch.int64, "contig", rng, g)
        ix.base = idx.to(rng.choice([torch.int64, torch.int32]))
        return [geo(rng, g, shape, rng.choice(FLOATS)), dim, ix]

    run_cases(
        "index_select",
        make,
        lambda x, d, i: x.index_select(d, i),
        ["aten::index_select"],
        djinn_mod,
    )

    def make_emb(rng, g):
        n, w = rng.choice([1, 5, 9]), rng.choice([1, 4])
        shape = rand_shape(rng, rank=rng.choice([1, 2]), zero=True)
        ix = Geo(shape, torch.int64, "contig", rng, g)
        ix.base = torch.randint(0, n, shape, generator=g)
        return [ix, geo(rng, g, [n, w], torch.float32, rng.choice(["contig", "perm"]))]

    run_cases("embedding", make_emb, F.embedding, ["aten::index_select"], djinn_mod)


def test_layer_norm(djinn_mod):
    def make(rng, g):
        shape = rand_shape(rng, rank=rng.choice([1, 2, 3, 4]), zero=False)
        nd = rng.randint(1, len(shape))
        norm = shape[len(shape) - nd :]
        dt = rng.choice([torch.float32, torch.float64, torch.bfloat16])
        wdt = rng.choice([dt, torch.float32]) if dt == torch.bfloat16 else dt
        w = geo(rng, g, norm, wdt, "contig") if rng.random() < 0.7 else None
        b = geo(rng, g, norm, wdt, "contig") if w is not None and rng.random() < 0.7 else None
        return [geo(rng, g, shape, dt), norm, w, b]

    # all three outputs: the statistics follow CPU's dtype rule (RemoteCpuShapes.cpp)
    run_cases(
        "native_layer_norm",
        make,
        lambda x, n, w, b: torch.native_layer_norm(x, n, w, b, 1e-5),
        ["aten::native_layer_norm"],
        djinn_mod,
        meta=None,
    )
    run_cases(
        "layer_norm",
        make,
        lambda x, n, w, b: F.layer_norm(x, n, w, b),
        ["aten::native_layer_norm"],
        djinn_mod,
        meta=None,
        seed=1,
    )


def test_rms_norm_pieces(djinn_mod):
    def make(rng, g):
        shape = rand_shape(rng, rank=rng.choice([2, 3]), zero=False)
        dt = rng.choice([torch.float32, torch.bfloat16])
        return [geo(rng, g, shape, dt), geo(rng, g, shape[-1:], dt, "contig")]

    run_cases(
        "rms_norm",
        make,
        lambda x, w: F.rms_norm(x, x.shape[-1:], w, 1e-6),
        ["aten::mean.dim", "aten::rsqrt", "aten::mul.Tensor"],
        djinn_mod,
    )


def test_copy_between_remote_tensors(djinn_mod):
    """Copies between remote tensors (to(), clone(), contiguous(), copy_) record copy_."""

    def make(rng, g):  # (copies of nothing record nothing)
        sa, sb = bcast_shapes(rng, 2, zero=False)
        full = list(torch.broadcast_shapes(tuple(sa), tuple(sb)))
        dst = geo(
            rng, g, full, rng.choice(FLOATS + INTS[:2]), rng.choice(["contig", "perm", "slice"])
        )
        return [dst, geo(rng, g, sb, rng.choice(FLOATS + INTS[:2]))]

    run_cases("copy_", make, lambda a, b: a.copy_(b), ["aten::copy_"], djinn_mod)
    run_cases(
        "to",
        lambda rng, g: [
            geo(rng, g, rand_shape(rng, zero=False), rng.choice(FLOATS[:1] + FLOATS[2:]))
        ],
        lambda a: a.to(torch.float64),
        ["aten::copy_"],
        djinn_mod,
    )


def test_arange_out(djinn_mod):
    """arange.start_out resizes out only when its numel differs (then to 1-d)."""

    def make(rng, g):
        start = rng.choice([0, 3, -2, 0.5])
        n = rng.choice([0, 1, 4, 7])
        step = rng.choice([1, 2, -1, 0.25])
        dt = rng.choice([torch.int64, torch.int32, torch.float32, torch.float16])
        return [start, start + n * step, step, dt, rng.choice(["empty", "same_numel", "other"])]

    def fn(start, end, step, dt, kind, dev):
        n = torch.arange(start, end, step, dtype=dt).numel()
        shape = {"empty": [0], "same_numel": [1, n], "other": [n + 3]}[kind]
        out = torch.empty(shape, dtype=dt, device=dev)
        with warnings.catch_warnings():  # "will be resized", from CPU and the Meta device
            warnings.simplefilter("ignore")
            return torch.arange(start, end, step, out=out)

    # the Meta device resizes an out of the right numel but another shape; CPU keeps it
    run_cases(
        "arange",
        lambda rng, g: make(rng, g) + [Device()],
        fn,
        ["aten::arange.start_out"],
        djinn_mod,
        meta=None,
    )


def test_embedding_backward(djinn_mod):
    def make(rng, g):
        n, w = rng.choice([1, 5, 9]), rng.choice([1, 4])
        shape = rand_shape(rng, rank=rng.choice([1, 2]), zero=False)
        ix = Geo(shape, torch.int64, "contig", rng, g)
        ix.base = torch.randint(0, n, shape, generator=g).to(rng.choice([torch.int64, torch.int32]))
        return [ix, geo(rng, g, [n, w], rng.choice([torch.float32, torch.float64]), "contig")]

    def fn(ix, w):
        w = w.detach().requires_grad_()
        F.embedding(ix, w).sum().backward()
        return w.grad

    run_cases("embedding_backward", make, fn, ["aten::embedding_dense_backward"], djinn_mod)


def test_layer_norm_backward(djinn_mod):
    def make(rng, g):
        shape = rand_shape(rng, rank=rng.choice([2, 3]), zero=False)
        norm = shape[-1:]
        dt = rng.choice([torch.float32, torch.float64])
        mask = [rng.random() < 0.8 for _ in range(3)]
        return [
            geo(rng, g, shape, dt),
            geo(rng, g, shape, dt),
            geo(rng, g, norm, dt, "contig"),
            geo(rng, g, norm, dt, "contig"),
            norm,
            mask,
        ]

    def fn(gy, x, w, b, norm, mask):
        _, mean, rstd = torch.native_layer_norm(x, norm, w, b, 1e-5)
        return torch.ops.aten.native_layer_norm_backward(gy, x, norm, mean, rstd, w, b, mask)

    run_cases(
        "layer_norm_backward",
        make,
        fn,
        ["aten::native_layer_norm_backward"],
        djinn_mod,
        meta=None,
    )


def test_entries_match_this_torch(djinn_mod):
    """Every table entry's C++ signature matches its operator here (else it is unused)."""
    ops = djinn_mod._C._meta_fast_ops()
    assert len(ops) > 80
    stale = [name for name, active in ops if not active]
    assert not stale, stale


# RemoteMeta.cpp's kWhole: the fallback is registered for each (RemoteKernels.cpp)
WHOLE = [
    f"aten::{op}"
    for op in (
        "add.Tensor sub.Tensor mul.Tensor div.Tensor div.Tensor_mode pow.Tensor_Scalar "
        "pow.Tensor_Tensor maximum minimum eq.Tensor ne.Tensor lt.Tensor le.Tensor gt.Tensor "
        "ge.Tensor eq.Scalar ne.Scalar lt.Scalar le.Scalar gt.Scalar ge.Scalar neg exp log "
        "sqrt rsqrt sigmoid tanh silu sin cos erf gelu clamp sum.dim_IntList mean.dim amax "
        "argmax cumsum _softmax _log_softmax mm bmm addmm baddbmm cat isin.Tensor_Tensor "
        "triu tril"
    ).split()
]


def test_hot_structured_ops_are_captured_whole_and_sent_as_out(djinn_mod):
    """add.Tensor, mm, _softmax, ... reach the fallback themselves (PyTorch's structured
    wrapper, its meta function and output allocation do not run on a meta-cache hit) and
    still go to the server as the out= overloads the wrapper would have called."""
    for op in WHOLE:  # each has its shape function and out= overload on this torch
        line = next(
            ln for ln in torch._C._dispatch_dump(op).splitlines() if ln.startswith("PrivateUse1:")
        )
        assert "RemoteKernels.cpp" in line and "boxed" in line, (op, line)
    a, b = torch.randn(3, 4, device=R), torch.randn(4, 5, device=R)
    torch.remote.synchronize()
    y = torch.cat([torch.mm(a, b) * 2.0, a.sum(1, keepdim=True)], 1).softmax(-1)
    torch.remote.synchronize()
    ops = [op for op, _, _ in djinn_mod.srg.snapshot()]
    assert ops == [
        "aten::mm.out",
        "aten::mul.out",
        "aten::sum.IntList_out",
        "aten::cat.out",
        "aten::_softmax.out",
    ], ops
    ac, bc = a.cpu(), b.cpu()
    expected = torch.cat([torch.mm(ac, bc) * 2.0, ac.sum(1, keepdim=True)], 1).softmax(-1)
    torch.testing.assert_close(y.cpu(), expected)

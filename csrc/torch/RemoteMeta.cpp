// RemoteMeta.cpp: C++ shape functions for the ops models use most, so that a meta-cache
// miss in the fallback (RemoteFallback.cpp) infers outputs without Python and the GIL.
//
// Why. On a miss the fallback runs the op on the Meta device over mirrors of its
// arguments. torch._meta_registrations registers Python Meta kernels (refs and
// decompositions) over most of ATen's C++ ones: `torch._C._dispatch_dump("aten::add.out")`
// lists the C++ kernel as "Meta (inactive)". So every miss ran Python under the GIL:
// ~500,000 instructions for one `add.out` against ~25,000 for the whole captured op on a
// hit (benchmarks/results/PROFILE.md).
//
// What. A table from operator schema to a kernel over the same meta mirrors:
//   1. Structured ops, in the overloads that reach the fallback: PyTorch's default
//      backend kernels turn `add`, `add_`, `softmax`, `mm`, `sum`, ... into their `.out`
//      overload on 'remote' (with the output already made by the structured meta), so the
//      table holds the `.out` overloads, called through ATen's own meta functions
//      (`at::meta::add_outf`, ...). These are the inactive C++ Meta kernels, and the very
//      code CPU and CUDA kernels run to size, stride and type their outputs: exact by
//      construction (TensorIterator's strides follow the inputs' permutation, type
//      promotion, broadcasting, out= resizing). One nuance: where inputs of mixed dtypes
//      are not dense, CPU's TensorIterator converts them before choosing strides, CUDA's
//      and the meta function's do not. A CPU server computes into the declared out as it
//      is (structured out= kernels keep an out of the right shape), so 'remote' tensors
//      carry CUDA's strides then, as the outputs PyTorch's default backend kernels make
//      for 'remote' always have.
//      The functional overloads of the structured ops models run at every step
//      (`add.Tensor`, `mm`, `_softmax`, ...) are the exception: the fallback is
//      registered for them (kWhole, whole_ops()), so the wrapper and its output
//      allocation do not run on a meta-cache hit; their shape functions are ATen's
//      functional meta functions (`at::meta::add`), which the wrapper itself ran.
//   2. Ops that are not structured and reach the fallback themselves (where,
//      index_select, native_layer_norm and its backward, embedding_dense_backward, relu,
//      relu_, masked_fill_, copy_, arange.start_out): shape functions written here from
//      their CPU kernels (noted at each), using TensorIterator where the kernel does.
//      They may decline a case they do not describe (it then takes the Meta device path).
// Each table entry's C++ signature is compared with the operator's schema once
// (c10::findSchemaDifferences); an entry that disagrees is not used. Anything without an
// entry takes the Meta device path unchanged. test/test_meta_fast.py checks every entry
// against the Meta device and against CPU eager over random geometries.
//
// Rejected: caching Meta results by (op, dtypes, rank, stride pattern) with symbolic
// sizes. TensorIterator's output permutation and broadcasting depend on which sizes are
// 1 (and on ties between strides), reductions on sizes that are 0, so the pattern would
// have to carry those facts op by op to be exact; and every new pattern would still run
// the Python kernel. The shape functions are exact for every size and cost a few µs.
//
// Nothing here takes the GIL: the meta functions dispatch only C++ Meta kernels
// (resize_, as_strided_, empty_strided, copy_ of meta tensors); the tests watch for any
// Python frame of a Meta kernel, ref or decomposition while an op is captured.
#include <ATen/Dispatch.h>
#include <ATen/EmptyTensor.h>
#include <ATen/ExpandUtils.h>
#include <ATen/MetaFunctions.h>
#include <ATen/TensorIterator.h>
#include <ATen/WrapDimUtils.h>
#include <ATen/core/op_registration/infer_schema.h>
#include <ATen/native/RangeUtils.h>
#include <ATen/ops/result_type_native.h>
#include <c10/util/strides.h>

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <unordered_map>

#include "remote.h"

namespace djinn {
namespace {

using Stack = torch::jit::Stack;
using T = at::Tensor;
using CT = const at::Tensor &;
using S = const at::Scalar &;
using OptS = const std::optional<at::Scalar> &;
using OptT = const std::optional<at::Tensor> &;
using OptDtype = std::optional<at::ScalarType>;

// DJINN_META_FAST=0 switches the shape functions off (every miss on the Meta device)
bool enabled_by_env() {
    const char *v = std::getenv("DJINN_META_FAST");
    return !(v && std::strcmp(v, "0") == 0);
}

std::atomic<bool> g_enabled{enabled_by_env()};

// ---------------------------------------------------------------- structured ops

// ATen's meta function `F` (signature `Sig`) as a boxed kernel over the mirror stack.
template <class Sig, Sig *F> bool structured(const c10::OperatorHandle &op, Stack &s) {
    static const c10::KernelFunction k =
        c10::KernelFunction::makeFromUnboxedFunction(c10::CompileTimeFunctionPointer<Sig, F>());
    k.callBoxed(op, c10::DispatchKeySet(c10::DispatchKey::Meta), &s);
    return true;
}

struct Entry {
    const char *name, *overload;
    MetaShapeFn fn;
    c10::FunctionSchema (*signature)(); // the C++ signature as a schema; null: boxed already
};

#define DJN_META(name, overload, fn, ...)                                                          \
    Entry {                                                                                        \
        "aten::" name, overload, &structured<__VA_ARGS__, &at::meta::fn>,                          \
            &c10::inferFunctionSchemaFlattenedReturns<__VA_ARGS__>                                 \
    }

using Unary = T &(CT, T &);
using Binary = T &(CT, CT, T &);
using BinaryAlpha = T &(CT, CT, S, T &);
using WithScalar = T &(CT, S, T &);
using Ternary = T &(CT, CT, CT, T &);
using TernaryScalar = T &(CT, CT, CT, S, T &);
using DimReduce = T &(CT, at::OptionalIntArrayRef, bool, OptDtype, T &);
using DimsKeep = T &(CT, at::IntArrayRef, bool, T &);
using DimMinMax = std::tuple<T &, T &>(CT, int64_t, bool, T &, T &);
using ArgMinMax = T &(CT, std::optional<int64_t>, bool, T &);
using Softmax = T &(CT, int64_t, bool, T &);
using SoftmaxBackward = T &(CT, CT, int64_t, at::ScalarType, T &);
using AddMM = T &(CT, CT, CT, S, S, T &);
using InplaceScalar = T &(T &, S);
using WithInt = T &(CT, int64_t, T &);

// Sorted by kind; every one is the `.out` (or in-place) overload that reaches the fallback.
const Entry kStructured[] = {
    // pointwise, unary
    DJN_META("neg", "out", neg_outf, Unary),
    DJN_META("exp", "out", exp_outf, Unary),
    DJN_META("exp2", "out", exp2_outf, Unary),
    DJN_META("expm1", "out", expm1_outf, Unary),
    DJN_META("log", "out", log_outf, Unary),
    DJN_META("log1p", "out", log1p_outf, Unary),
    DJN_META("log2", "out", log2_outf, Unary),
    DJN_META("sqrt", "out", sqrt_outf, Unary),
    DJN_META("rsqrt", "out", rsqrt_outf, Unary),
    DJN_META("reciprocal", "out", reciprocal_outf, Unary),
    DJN_META("sigmoid", "out", sigmoid_outf, Unary),
    DJN_META("tanh", "out", tanh_outf, Unary),
    DJN_META("silu", "out", silu_outf, Unary),
    DJN_META("mish", "out", mish_outf, Unary),
    DJN_META("sin", "out", sin_outf, Unary),
    DJN_META("cos", "out", cos_outf, Unary),
    DJN_META("erf", "out", erf_outf, Unary),
    DJN_META("floor", "out", floor_outf, Unary),
    DJN_META("ceil", "out", ceil_outf, Unary),
    DJN_META("round", "out", round_outf, Unary),
    DJN_META("sign", "out", sign_outf, Unary),
    DJN_META("sgn", "out", sgn_outf, Unary),
    DJN_META("bitwise_not", "out", bitwise_not_outf, Unary),
    DJN_META("gelu", "out", gelu_outf, T &(CT, c10::string_view, T &)),
    DJN_META("leaky_relu", "out", leaky_relu_outf, WithScalar),
    DJN_META("clamp_min", "out", clamp_min_outf, WithScalar),
    DJN_META("clamp_max", "out", clamp_max_outf, WithScalar),
    DJN_META("clamp", "out", clamp_outf, T &(CT, OptS, OptS, T &)),
    DJN_META("clamp", "Tensor_out", clamp_outf, T &(CT, OptT, OptT, T &)),
    DJN_META("pow", "Tensor_Scalar_out", pow_outf, WithScalar),
    DJN_META("pow", "Tensor_Tensor_out", pow_outf, Binary),
    DJN_META("pow", "Scalar_out", pow_outf, T &(S, CT, T &)),
    // pointwise, binary and ternary (type promotion, broadcasting)
    DJN_META("add", "out", add_outf, BinaryAlpha),
    DJN_META("sub", "out", sub_outf, BinaryAlpha),
    DJN_META("mul", "out", mul_outf, Binary),
    DJN_META("div", "out", div_outf, Binary),
    DJN_META("div", "out_mode", div_outf, T &(CT, CT, std::optional<c10::string_view>, T &)),
    DJN_META("maximum", "out", maximum_outf, Binary),
    DJN_META("minimum", "out", minimum_outf, Binary),
    DJN_META("atan2", "out", atan2_outf, Binary),
    DJN_META("fmod", "Tensor_out", fmod_outf, Binary),
    DJN_META("remainder", "Tensor_out", remainder_outf, Binary),
    DJN_META("bitwise_and", "Tensor_out", bitwise_and_outf, Binary),
    DJN_META("bitwise_or", "Tensor_out", bitwise_or_outf, Binary),
    DJN_META("eq", "Tensor_out", eq_outf, Binary),
    DJN_META("ne", "Tensor_out", ne_outf, Binary),
    DJN_META("lt", "Tensor_out", lt_outf, Binary),
    DJN_META("le", "Tensor_out", le_outf, Binary),
    DJN_META("gt", "Tensor_out", gt_outf, Binary),
    DJN_META("ge", "Tensor_out", ge_outf, Binary),
    DJN_META("eq", "Scalar_out", eq_outf, WithScalar),
    DJN_META("ne", "Scalar_out", ne_outf, WithScalar),
    DJN_META("lt", "Scalar_out", lt_outf, WithScalar),
    DJN_META("le", "Scalar_out", le_outf, WithScalar),
    DJN_META("gt", "Scalar_out", gt_outf, WithScalar),
    DJN_META("ge", "Scalar_out", ge_outf, WithScalar),
    DJN_META("isin", "Tensor_Tensor_out", isin_outf, T &(CT, CT, bool, bool, T &)),
    DJN_META("isin", "Tensor_Scalar_out", isin_outf, T &(CT, S, bool, bool, T &)),
    DJN_META("isposinf", "out", isposinf_outf, Unary),
    DJN_META("isneginf", "out", isneginf_outf, Unary),
    DJN_META("addcmul", "out", addcmul_outf, TernaryScalar),
    DJN_META("addcdiv", "out", addcdiv_outf, TernaryScalar),
    DJN_META("lerp", "Scalar_out", lerp_outf, T &(CT, CT, S, T &)),
    DJN_META("lerp", "Tensor_out", lerp_outf, Ternary),
    // pointwise backward
    DJN_META("threshold_backward", "grad_input", threshold_backward_outf, T &(CT, CT, S, T &)),
    DJN_META("silu_backward", "grad_input", silu_backward_outf, Binary),
    DJN_META("sigmoid_backward", "grad_input", sigmoid_backward_outf, Binary),
    DJN_META("tanh_backward", "grad_input", tanh_backward_outf, Binary),
    DJN_META("gelu_backward", "grad_input", gelu_backward_outf, T &(CT, CT, c10::string_view, T &)),
    // reductions and normalisations along dims
    DJN_META("sum", "IntList_out", sum_outf, DimReduce),
    DJN_META("mean", "out", mean_outf, DimReduce),
    DJN_META("amax", "out", amax_outf, DimsKeep),
    DJN_META("amin", "out", amin_outf, DimsKeep),
    DJN_META("max", "dim_max", max_outf, DimMinMax),
    DJN_META("min", "dim_min", min_outf, DimMinMax),
    DJN_META("all", "out", all_outf, T &(CT, int64_t, bool, T &)),
    DJN_META("any", "out", any_outf, T &(CT, int64_t, bool, T &)),
    DJN_META("all", "dims_out", all_outf, T &(CT, at::OptionalIntArrayRef, bool, T &)),
    DJN_META("any", "dims_out", any_outf, T &(CT, at::OptionalIntArrayRef, bool, T &)),
    DJN_META("all", "all_out", all_outf, Unary),
    DJN_META("any", "all_out", any_outf, Unary),
    // (all.dims and any.dims reach the fallback themselves: RemoteKernels.cpp)
    DJN_META("all", "dims", all, T(CT, at::OptionalIntArrayRef, bool)),
    DJN_META("any", "dims", any, T(CT, at::OptionalIntArrayRef, bool)),
    DJN_META("argmax", "out", argmax_outf, ArgMinMax),
    DJN_META("argmin", "out", argmin_outf, ArgMinMax),
    DJN_META("prod", "int_out", prod_outf, T &(CT, int64_t, bool, OptDtype, T &)),
    DJN_META("cumsum", "out", cumsum_outf, T &(CT, int64_t, OptDtype, T &)),
    DJN_META("_softmax", "out", _softmax_outf, Softmax),
    DJN_META("_log_softmax", "out", _log_softmax_outf, Softmax),
    DJN_META("_softmax_backward_data", "out", _softmax_backward_data_outf, SoftmaxBackward),
    DJN_META("_log_softmax_backward_data", "out", _log_softmax_backward_data_outf, SoftmaxBackward),
    DJN_META("norm", "out", norm_outf, T &(CT, OptS, at::IntArrayRef, bool, T &)),
    // matrix products
    DJN_META("mm", "out", mm_outf, Binary),
    DJN_META("bmm", "out", bmm_outf, Binary),
    DJN_META("addmm", "out", addmm_outf, AddMM),
    DJN_META("baddbmm", "out", baddbmm_outf, AddMM),
    // joining, indexing, triangles
    DJN_META("cat", "out", cat_outf, T &(const at::ITensorListRef &, int64_t, T &)),
    DJN_META("gather", "out", gather_outf, T &(CT, int64_t, CT, bool, T &)),
    DJN_META("scatter", "src_out", scatter_outf, T &(CT, int64_t, CT, CT, T &)),
    DJN_META("scatter", "value_out", scatter_outf, T &(CT, int64_t, CT, S, T &)),
    DJN_META("scatter_add", "out", scatter_add_outf, T &(CT, int64_t, CT, CT, T &)),
    DJN_META("index_add", "out", index_add_outf, T &(CT, int64_t, CT, CT, S, T &)),
    DJN_META("triu", "out", triu_outf, WithInt),
    DJN_META("tril", "out", tril_outf, WithInt),
    DJN_META("topk", "values", topk_outf,
             std::tuple<T &, T &>(CT, int64_t, int64_t, bool, bool, T &, T &)),
    // losses
    DJN_META("mse_loss", "out", mse_loss_outf, T &(CT, CT, int64_t, T &)),
    DJN_META("nll_loss_forward", "output", nll_loss_forward_outf,
             std::tuple<T &, T &>(CT, CT, OptT, int64_t, int64_t, T &, T &)),
    DJN_META("nll_loss_backward", "grad_input", nll_loss_backward_outf,
             T &(CT, CT, CT, OptT, int64_t, int64_t, CT, T &)),
    // in place, without an out= form
    DJN_META("fill_", "Scalar", fill_, InplaceScalar),
    DJN_META("fill_", "Tensor", fill_, T &(T &, CT)),
    DJN_META("zero_", "", zero_, T &(T &)),
};

// Functional overloads of structured ops that reach the fallback whole: RemoteKernels.cpp
// registers the fallback for each entry here that matches this torch (whole_ops()), so
// the wrapper described in 1. does not run: no meta function and no output allocation on
// a meta-cache hit. Their shape functions are ATen's functional meta functions
// (`at::meta::add`, ...), the same code the wrapper ran. The ops models run at every step.
using F1 = T(CT);
using F2 = T(CT, CT);
using FS = T(CT, S);
// Each entry: the functional overload, the out= overload it is recorded as (the node the
// server runs is the one PyTorch's wrapper made, its output planned in the slab like any
// declared allocation: only the client's way to it is shorter), its shape function.
struct Whole {
    Entry fn;
    const char *out;
};
#define DJN_WHOLE(name, overload, out, fn, ...)                                                    \
    Whole {                                                                                        \
        DJN_META(name, overload, fn, __VA_ARGS__), out                                             \
    }
const Whole kWhole[] = {
    DJN_WHOLE("add", "Tensor", "out", add, T(CT, CT, S)),
    DJN_WHOLE("sub", "Tensor", "out", sub, T(CT, CT, S)),
    DJN_WHOLE("mul", "Tensor", "out", mul, F2),
    DJN_WHOLE("div", "Tensor", "out", div, F2),
    DJN_WHOLE("div", "Tensor_mode", "out_mode", div, T(CT, CT, std::optional<c10::string_view>)),
    DJN_WHOLE("pow", "Tensor_Scalar", "Tensor_Scalar_out", pow, FS),
    DJN_WHOLE("pow", "Tensor_Tensor", "Tensor_Tensor_out", pow, F2),
    DJN_WHOLE("maximum", "", "out", maximum, F2),
    DJN_WHOLE("minimum", "", "out", minimum, F2),
    DJN_WHOLE("eq", "Tensor", "Tensor_out", eq, F2),
    DJN_WHOLE("ne", "Tensor", "Tensor_out", ne, F2),
    DJN_WHOLE("lt", "Tensor", "Tensor_out", lt, F2),
    DJN_WHOLE("le", "Tensor", "Tensor_out", le, F2),
    DJN_WHOLE("gt", "Tensor", "Tensor_out", gt, F2),
    DJN_WHOLE("ge", "Tensor", "Tensor_out", ge, F2),
    DJN_WHOLE("eq", "Scalar", "Scalar_out", eq, FS),
    DJN_WHOLE("ne", "Scalar", "Scalar_out", ne, FS),
    DJN_WHOLE("lt", "Scalar", "Scalar_out", lt, FS),
    DJN_WHOLE("le", "Scalar", "Scalar_out", le, FS),
    DJN_WHOLE("gt", "Scalar", "Scalar_out", gt, FS),
    DJN_WHOLE("ge", "Scalar", "Scalar_out", ge, FS),
    DJN_WHOLE("neg", "", "out", neg, F1),
    DJN_WHOLE("exp", "", "out", exp, F1),
    DJN_WHOLE("log", "", "out", log, F1),
    DJN_WHOLE("sqrt", "", "out", sqrt, F1),
    DJN_WHOLE("rsqrt", "", "out", rsqrt, F1),
    DJN_WHOLE("sigmoid", "", "out", sigmoid, F1),
    DJN_WHOLE("tanh", "", "out", tanh, F1),
    DJN_WHOLE("silu", "", "out", silu, F1),
    DJN_WHOLE("sin", "", "out", sin, F1),
    DJN_WHOLE("cos", "", "out", cos, F1),
    DJN_WHOLE("erf", "", "out", erf, F1),
    DJN_WHOLE("gelu", "", "out", gelu, T(CT, c10::string_view)),
    DJN_WHOLE("clamp", "", "out", clamp, T(CT, OptS, OptS)),
    DJN_WHOLE("sum", "dim_IntList", "IntList_out", sum,
              T(CT, at::OptionalIntArrayRef, bool, OptDtype)),
    DJN_WHOLE("mean", "dim", "out", mean, T(CT, at::OptionalIntArrayRef, bool, OptDtype)),
    DJN_WHOLE("amax", "", "out", amax, T(CT, at::IntArrayRef, bool)),
    DJN_WHOLE("argmax", "", "out", argmax, T(CT, std::optional<int64_t>, bool)),
    DJN_WHOLE("cumsum", "", "out", cumsum, T(CT, int64_t, OptDtype)),
    DJN_WHOLE("_softmax", "", "out", _softmax, T(CT, int64_t, bool)),
    DJN_WHOLE("_log_softmax", "", "out", _log_softmax, T(CT, int64_t, bool)),
    DJN_WHOLE("mm", "", "out", mm, F2),
    DJN_WHOLE("bmm", "", "out", bmm, F2),
    DJN_WHOLE("addmm", "", "out", addmm, T(CT, CT, CT, S, S)),
    DJN_WHOLE("baddbmm", "", "out", baddbmm, T(CT, CT, CT, S, S)),
    DJN_WHOLE("cat", "", "out", cat, T(const at::ITensorListRef &, int64_t)),
    DJN_WHOLE("isin", "Tensor_Tensor", "Tensor_Tensor_out", isin, T(CT, CT, bool, bool)),
    DJN_WHOLE("triu", "", "out", triu, T(CT, int64_t)),
    DJN_WHOLE("tril", "", "out", tril, T(CT, int64_t)),
};
#undef DJN_WHOLE

#undef DJN_META

// ---------------------------------------------------------------- non-structured ops

const T &arg(const Stack &s, size_t i) {
    return s[i].toTensor();
}

void result(Stack &s, at::TensorBase t) {
    s.clear();
    s.emplace_back(T(std::move(t)));
}

// where.self(Tensor condition, Tensor self, Tensor other) -> Tensor
// where.self_out(Tensor condition, Tensor self, Tensor other, *, Tensor(a!) out) -> Tensor(a!)
// CPU (TensorCompare.cpp, where + where_self_out): out = empty({0}, result_type) unless
// given (then of that dtype), inputs of another dtype converted with .to(), then a
// TensorIterator over (out; condition, self, other) without dtype checks, which resizes out
// and gives it the iterator's strides (or keeps a given out of the right shape as it is).
// Declined: a uint8 condition, dtypes to convert, CPU scalars (the kernel moves them).
bool where(const c10::OperatorHandle &op, Stack &s) {
    const T &cond = arg(s, 0), &self = arg(s, 1), &other = arg(s, 2);
    if (!cond.is_meta() || !self.is_meta() || !other.is_meta() || cond.scalar_type() != at::kBool)
        return false;
    at::ScalarType rt = at::native::result_type(self, other);
    if (self.scalar_type() != rt || other.scalar_type() != rt)
        return false;
    bool given = s.size() > 3;
    if (given && !arg(s, 3).is_meta())
        return false;
    T out = given ? arg(s, 3) : T(at::detail::empty_meta({0}, rt));
    TORCH_CHECK(out.scalar_type() == rt, "Expected out type to be ", rt, " but got ",
                out.scalar_type());
    at::TensorIteratorConfig()
        .check_all_same_dtype(false)
        .add_output(out)
        .add_const_input(cond)
        .add_const_input(self)
        .add_const_input(other)
        .build();
    result(s, std::move(out));
    return true;
}

// index_select(Tensor self, int dim, Tensor index) -> Tensor
// CPU (TensorAdvancedIndexing.cpp, index_select_out_cpu_): self's sizes with size[dim] =
// index.numel() (unchanged for a 0-dim self), contiguous, self's dtype.
bool index_select(const c10::OperatorHandle &, Stack &s) {
    const T &self = arg(s, 0), &index = arg(s, 2);
    if (!self.is_meta() || !index.is_meta())
        return false;
    int64_t dim = c10::maybe_wrap_dim(s[1].toInt(), self.dim());
    TORCH_CHECK_INDEX(index.dim() <= 1, "index_select(): Index is supposed to be a vector");
    TORCH_CHECK(!(self.dim() == 0 && index.numel() != 1),
                "index_select(): Index to scalar can have only 1 value, got ", index.numel(),
                " value(s)");
    TORCH_CHECK(index.scalar_type() == at::kLong || index.scalar_type() == at::kInt,
                "index_select(): Expected dtype int32 or int64 for index");
    std::vector<int64_t> sizes = self.sizes().vec();
    if (self.dim() > 0)
        sizes[dim] = index.numel();
    result(s, at::detail::empty_meta(sizes, self.scalar_type()));
    return true;
}

at::ScalarType opmath(at::ScalarType t) {
    return t == at::kHalf || t == at::kBFloat16 ? at::kFloat : t;
}

// _scaled_dot_product_flash_attention_for_cpu(Tensor query, Tensor key, Tensor value,
//     float dropout_p=0.0, bool is_causal=False, *, Tensor? attn_mask=None, float? scale=None)
//     -> (Tensor output, Tensor logsumexp)
// What SDPA on 'remote' runs where CPU eager would (fused_sdp_choice, RemoteKernels.cpp).
// CPU (attention.cpp, _scaled_dot_product_flash_attention_cpu): its checks, then
// output = empty_like(query) (the query's strides when it is dense, else dense strides in
// its dims' order) and logsumexp = empty({B, Lq, H}, opmath dtype).transpose(1, 2).
bool sdpa_flash_cpu(const c10::OperatorHandle &, Stack &s) {
    const T &q = arg(s, 0), &k = arg(s, 1), &v = arg(s, 2);
    const T *mask = s[5].isNone() || !s[5].toTensor().defined() ? nullptr : &s[5].toTensor();
    if (!q.is_meta() || !k.is_meta() || !v.is_meta() || (mask && !mask->is_meta()))
        return false;
    const char *who = "scaled_dot_product_attention_flash_attention: ";
    at::ScalarType dt = q.scalar_type();
    TORCH_CHECK(c10::isFloatingType(dt), who,
                "Expected data type in FP32, FP64, BF16, FP16, but got ", dt, " instead.");
    TORCH_CHECK(q.dim() == 4 && k.dim() == 4 && v.dim() == 4, who,
                "Accept only 4 dims inputs shape of {B, H, T, K}");
    TORCH_CHECK(s[3].toDouble() == 0.0, who, "Currently do not support dropout > 0");
    TORCH_CHECK(q.size(3) == v.size(3) && k.size(3) == v.size(3), who,
                "Q/K/V should have the same head size");
    TORCH_CHECK(!mask || mask->scalar_type() == at::kFloat || mask->scalar_type() == dt, who,
                "Attention mask is the same data type as query");
    TORCH_CHECK(!mask || mask->dim() == 2 || mask->dim() == 4, who, "Attention mask dim in {2, 4}");
    std::vector<int64_t> st = q.is_non_overlapping_and_dense()
                                  ? q.strides().vec()
                                  : at::infer_dense_strides(q.sizes(), q.strides());
    int64_t b = q.size(0), h = q.size(1), lq = q.size(2);
    T out(at::detail::empty_strided_meta(q.sizes(), st, dt));
    T lse(at::detail::empty_strided_meta({b, h, lq}, {lq * h, 1, h}, opmath(dt)));
    s.clear();
    s.emplace_back(std::move(out));
    s.emplace_back(std::move(lse));
    return true;
}

// native_layer_norm(Tensor input, SymInt[] normalized_shape, Tensor? weight, Tensor? bias,
//                   float eps) -> (Tensor, Tensor, Tensor)
// CPU and CUDA (layer_norm.cpp, layer_norm_cpu; layer_norm_kernel.cu): Y contiguous in the
// input's dtype; mean and rstd contiguous of the input's leading sizes followed by ones.
// Their dtype is the Meta kernel's here (float for half/bfloat16, else the input's: CUDA's
// accumulate type); RemoteFallback's fix_for_cpu applies CPU's rule after, as on the Meta
// device path.
bool native_layer_norm(const c10::OperatorHandle &, Stack &s) {
    const T &input = arg(s, 0);
    if (!input.is_meta())
        return false;
    std::vector<int64_t> shape = s[1].toIntVector();
    auto opt = [&](size_t i) -> const T * {
        if (s[i].isNone() || !s[i].toTensor().defined())
            return nullptr;
        return &s[i].toTensor();
    };
    const T *weight = opt(2), *bias = opt(3);
    int64_t nd = (int64_t)shape.size();
    TORCH_CHECK(nd >= 1, "Expected normalized_shape to be at least 1-dimensional, i.e., ",
                "containing at least one element, but got normalized_shape = ", shape);
    TORCH_CHECK(!weight || weight->sizes().equals(shape),
                "Expected weight to be of same shape as normalized_shape, but got weight of shape ",
                weight ? weight->sizes() : at::IntArrayRef(), " and normalized_shape = ", shape);
    TORCH_CHECK(!bias || bias->sizes().equals(shape),
                "Expected bias to be of same shape as normalized_shape, but got bias of shape ",
                bias ? bias->sizes() : at::IntArrayRef(), " and normalized_shape = ", shape);
    TORCH_CHECK(input.dim() >= nd && input.sizes().slice(input.dim() - nd).equals(shape),
                "Given normalized_shape=", shape, ", expected input with shape [*, ...], but got ",
                "input of size", input.sizes());
    if ((weight && !weight->is_meta()) || (bias && !bias->is_meta()))
        return false;
    std::vector<int64_t> stat(input.sizes().begin(), input.sizes().end() - nd);
    stat.resize(input.dim(), 1);
    at::ScalarType st = opmath(input.scalar_type());
    T y(at::detail::empty_meta(input.sizes(), input.scalar_type()));
    T mean(at::detail::empty_meta(stat, st)), rstd(at::detail::empty_meta(stat, st));
    s.clear();
    s.emplace_back(std::move(y));
    s.emplace_back(std::move(mean));
    s.emplace_back(std::move(rstd));
    return true;
}

// relu(Tensor self) -> Tensor
// CPU and CUDA (Activation.cpp, relu): no bool, then at::clamp_min(self, 0).
bool relu(const c10::OperatorHandle &, Stack &s) {
    const T &self = arg(s, 0);
    if (!self.is_meta())
        return false;
    TORCH_CHECK(self.scalar_type() != at::kBool, "Boolean inputs not supported for relu");
    result(s, at::meta::clamp_min(self, 0));
    return true;
}

// relu_(Tensor(a!) self) -> Tensor(a!)
// CPU and CUDA (Activation.cpp, relu_): no bool, then at::clamp_min_(self, 0).
bool relu_(const c10::OperatorHandle &, Stack &s) {
    T self = arg(s, 0);
    if (!self.is_meta())
        return false;
    TORCH_CHECK(self.scalar_type() != at::kBool, "Boolean inputs not supported for relu");
    at::meta::clamp_min_(self, 0);
    result(s, std::move(self));
    return true;
}

// masked_fill_.Scalar(Tensor(a!) self, Tensor mask, Scalar value) -> Tensor(a!)
// masked_fill_.Tensor(Tensor(a!) self, Tensor mask, Tensor value) -> Tensor(a!)
// CPU (TensorAdvancedIndexing.cpp, masked_fill__cpu): a bool mask that broadcasts to self
// (expand_inplace), a 0-dim value tensor; self comes back as it was. Declined: uint8 masks
// (deprecated, warned about by the kernel).
bool masked_fill_(const c10::OperatorHandle &, Stack &s) {
    T self = arg(s, 0);
    const T &mask = arg(s, 1);
    if (!self.is_meta() || !mask.is_meta() || mask.scalar_type() != at::kBool)
        return false;
    if (s[2].isTensor())
        TORCH_CHECK(s[2].toTensor().dim() == 0,
                    "masked_fill_ only supports a 0-dimensional value tensor, but got tensor with ",
                    s[2].toTensor().dim(), " dimension(s).");
    TORCH_CHECK(at::infer_size(self.sizes(), mask.sizes()) == self.sizes(),
                "The size of the mask must match the size of the tensor it fills");
    result(s, std::move(self));
    return true;
}

// copy_(Tensor(a!) self, Tensor src, bool non_blocking=False) -> Tensor(a!)
// (RemoteKernels' copies between remote tensors record this.) ATen's copy_ of a meta
// tensor (Copy.cpp, copy_impl): src must broadcast to self; self comes back as it was.
bool copy_(const c10::OperatorHandle &, Stack &s) {
    T self = arg(s, 0);
    const T &src = arg(s, 1);
    if (!self.is_meta() || !src.is_meta())
        return false;
    auto shape = at::infer_size(self.sizes(), src.sizes());
    TORCH_CHECK(self.sizes().equals(shape), "output with shape ", self.sizes(),
                " doesn't match the broadcast shape ", shape);
    result(s, std::move(self));
    return true;
}

// arange.start_out(Scalar start, Scalar end, Scalar step=1, *, Tensor(a!) out) -> Tensor(a!)
// CPU and CUDA (RangeFactories.cpp, arange_out): size = compute_arange_size<out's type>;
// out is resized to (size,) only when its numel differs. Decodes call it with a new start
// each step (cache positions), so it misses every time.
bool arange_out(const c10::OperatorHandle &, Stack &s) {
    T out = arg(s, 3);
    if (!out.is_meta())
        return false;
    switch (out.scalar_type()) { // the kernel's AT_DISPATCH_ALL_TYPES_AND2(Half, BFloat16)
    case at::kByte:
    case at::kChar:
    case at::kShort:
    case at::kInt:
    case at::kLong:
    case at::kFloat:
    case at::kDouble:
    case at::kHalf:
    case at::kBFloat16:
        break;
    default:
        return false;
    }
    int64_t size = 0;
    AT_DISPATCH_ALL_TYPES_AND2(at::kHalf, at::kBFloat16, out.scalar_type(), "arange_meta", [&] {
        size = at::native::compute_arange_size<scalar_t>(s[0].toScalar(), s[1].toScalar(),
                                                         s[2].toScalar());
    });
    if (out.numel() != size)
        out.resize_({size});
    result(s, std::move(out));
    return true;
}

// embedding_dense_backward(Tensor grad_output, Tensor indices, SymInt num_weights,
//                          SymInt padding_idx, bool scale_grad_by_freq) -> Tensor
// CPU (Embedding.cpp, embedding_dense_backward_cpu): zeros (num_weights, grad.size(-1)) in
// grad's dtype, contiguous; int32 or int64 indices.
bool embedding_dense_backward(const c10::OperatorHandle &, Stack &s) {
    const T &grad = arg(s, 0), &indices = arg(s, 1);
    if (!grad.is_meta() || !indices.is_meta() || grad.dim() == 0 || !s[2].isInt())
        return false;
    TORCH_CHECK(indices.scalar_type() == at::kLong || indices.scalar_type() == at::kInt,
                "embedding_backward: Expected tensor for argument #1 'indices' to have one of the "
                "following scalar types: Long, Int; but got ",
                indices.scalar_type());
    result(s, at::detail::empty_meta({s[2].toInt(), grad.size(-1)}, grad.scalar_type()));
    return true;
}

// native_layer_norm_backward(Tensor grad_out, Tensor input, SymInt[] normalized_shape,
//     Tensor mean, Tensor rstd, Tensor? weight, Tensor? bias, bool[3] output_mask)
//     -> (Tensor, Tensor, Tensor)
// CPU (layer_norm.cpp, layer_norm_backward_cpu): each output asked for is contiguous, like
// the input (grad_input) or the weight and bias (their grads, in their dtypes); the others
// undefined. Declined: a parameter's grad asked for without the parameter.
bool native_layer_norm_backward(const c10::OperatorHandle &, Stack &s) {
    const T &input = arg(s, 1);
    auto mask = s[7].toBoolList();
    auto param = [&](size_t i) -> const T * {
        if (s[i].isNone() || !s[i].toTensor().defined())
            return nullptr;
        return &s[i].toTensor();
    };
    const T *weight = param(5), *bias = param(6);
    if (!input.is_meta() || (mask[1] && (!weight || !weight->is_meta())) ||
        (mask[2] && (!bias || !bias->is_meta())))
        return false;
    auto like = [](const T &t) { return T(at::detail::empty_meta(t.sizes(), t.scalar_type())); };
    T dx = mask[0] ? like(input) : T(), dw = mask[1] ? like(*weight) : T(),
      db = mask[2] ? like(*bias) : T();
    s.clear();
    s.emplace_back(std::move(dx));
    s.emplace_back(std::move(dw));
    s.emplace_back(std::move(db));
    return true;
}

const Entry kHandwritten[] = {
    {"aten::where", "self_out", &where, nullptr},
    {"aten::copy_", "", &copy_, nullptr},
    {"aten::arange", "start_out", &arange_out, nullptr},
    {"aten::embedding_dense_backward", "", &embedding_dense_backward, nullptr},
    {"aten::native_layer_norm_backward", "", &native_layer_norm_backward, nullptr},
    {"aten::relu_", "", &relu_, nullptr},
    {"aten::masked_fill_", "Scalar", &masked_fill_, nullptr},
    {"aten::masked_fill_", "Tensor", &masked_fill_, nullptr},
    {"aten::where", "self", &where, nullptr},
    {"aten::index_select", "", &index_select, nullptr},
    {"aten::native_layer_norm", "", &native_layer_norm, nullptr},
    {"aten::relu", "", &relu, nullptr},
    {"aten::_scaled_dot_product_flash_attention_for_cpu", "", &sdpa_flash_cpu, nullptr},
};

// ---------------------------------------------------------------- lookup

struct Table {
    std::unordered_map<std::string, const Entry *> by_name;
    Table() {
        for (const Entry &e : kStructured)
            by_name.emplace(std::string(e.name) + "." + e.overload, &e);
        for (const Entry &e : kHandwritten)
            by_name.emplace(std::string(e.name) + "." + e.overload, &e);
        for (const Whole &w : kWhole)
            by_name.emplace(std::string(w.fn.name) + "." + w.fn.overload, &w.fn);
    }
};

} // namespace

MetaShapeFn meta_shape_fn(const c10::FunctionSchema &schema) {
    static const Table table;
    auto it = table.by_name.find(schema.name() + "." + schema.overload_name());
    if (it == table.by_name.end())
        return nullptr;
    const Entry &e = *it->second;
    if (e.signature) {
        auto diff = c10::findSchemaDifferences(e.signature(), schema);
        if (diff) // this torch's op is not the one the entry was written for: Meta device
            return nullptr;
    }
    return e.fn;
}

bool meta_fast_enabled() {
    return g_enabled.load(std::memory_order_relaxed);
}

bool set_meta_fast(bool on) {
    return g_enabled.exchange(on);
}

std::vector<std::pair<std::string, bool>> meta_fast_ops() {
    std::vector<std::pair<std::string, bool>> out;
    auto add = [&](const Entry &e) {
        auto op = c10::Dispatcher::singleton().findSchema({e.name, e.overload});
        out.emplace_back(std::string(e.name) + (*e.overload ? "." : "") + e.overload,
                         op && meta_shape_fn(op->schema()) != nullptr);
    };
    for (const Entry &e : kStructured)
        add(e);
    for (const Entry &e : kHandwritten)
        add(e);
    for (const Whole &w : kWhole)
        add(w.fn);
    return out;
}

// The out= overload of w if this torch has both as expected: the functional
// op's shape function matches, and the out= overload takes the same arguments and then
// one written tensor. nullptr otherwise (the wrapper keeps the op).
static const char *checked_out(const Whole &w) {
    const Entry &e = w.fn;
    auto &d = c10::Dispatcher::singleton();
    auto fn = d.findSchema({e.name, e.overload});
    auto out = d.findSchema({e.name, w.out});
    if (!fn || !out || meta_shape_fn(fn->schema()) == nullptr)
        return nullptr;
    const auto &fa = fn->schema().arguments(), &oa = out->schema().arguments();
    if (oa.size() != fa.size() + 1 || fn->schema().returns().size() != 1)
        return nullptr;
    for (size_t k = 0; k < fa.size(); k++)
        if (fa[k].type()->str() != oa[k].type()->str())
            return nullptr;
    const auto &last = oa.back();
    if (!last.alias_info() || !last.alias_info()->isWrite() ||
        last.type()->kind() != c10::TypeKind::TensorType)
        return nullptr;
    return w.out;
}

std::vector<std::string> whole_ops() {
    std::vector<std::string> out;
    for (const Whole &w : kWhole) {
        const Entry &e = w.fn;
        if (checked_out(w)) // else the wrapper keeps it
            out.push_back(std::string(e.name + 6) + (*e.overload ? "." : "") + e.overload);
    }
    return out;
}

const char *whole_out_overload(const c10::FunctionSchema &schema) {
    for (const Whole &w : kWhole)
        if (schema.name() == w.fn.name && schema.overload_name() == w.fn.overload)
            return checked_out(w);
    return nullptr;
}

} // namespace djinn

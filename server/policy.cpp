// policy.cpp: the operator policy (see djn_policy.h), from the dispatcher's schemas.
//
// An operator may run when it passes every rule, checked in this order:
//   1. its namespace is aten (prims, quantized, profiler, c10d, ... stay out);
//   2. it is not on the deny list below: files (from_file, save, load), printing,
//      profiling and stream bookkeeping, storage swapping and in-place resizing (set_,
//      resize_, set_data, ...), operators that skip their own bounds checks (_unsafe_*
//      but _unsafe_view), and layouts the server does not keep (sparse, nested,
//      quantized, mkldnn);
//   3. no argument is a Storage (storage swapping, whatever the name);
//   4. every string argument is a mode among the names PyTorch uses for modes
//      (reduce, rounding_mode, norm, ...): a string that could be a path never passes;
//   5. it takes or returns a tensor: an operator with neither acts only through side
//      effects (manual_seed of the process's generator, warn, _cufft_set_plan_cache_*).
// Rejected alternative: a hand-maintained allow-list of the ops models use. It would
// refuse a legitimate op at every torch upgrade; these rules follow the schemas and
// refuse by construction what can touch anything but tensor memory.
#include <ATen/core/dispatch/Dispatcher.h>

#include <algorithm>
#include <string>
#include <unordered_set>

#include "djn_policy.h"

namespace {

struct Named {
    const char *name, *why;
};

const char *const kFiles = "it reads or writes files";
const char *const kStorage = "it swaps or resizes storage";
const char *const kOutside = "it acts outside tensor memory";

const Named kDenyExact[] = {
    {"aten::from_file", kFiles},
    {"aten::save", kFiles},
    {"aten::load", kFiles},
    {"aten::_print", "it prints on the server"},
    {"aten::warn", "it prints on the server"},
    {"aten::record_stream", kOutside},
    {"aten::manual_seed", kOutside},
    {"aten::_set_item", kOutside},
    {"aten::set_", kStorage},
    {"aten::set", kStorage},
    {"aten::set_data", kStorage},
    {"aten::resize_", kStorage},
    {"aten::resize_as_", kStorage},
    {"aten::resize_as_sparse_", kStorage},
    {"aten::_resize_output_", kStorage},
    {"aten::_copy_from", kStorage},
    {"aten::_copy_from_and_resize", kStorage},
};

struct Prefix {
    const char *p, *why;
};

const Prefix kDenyPrefix[] = {
    {"aten::_unsafe_", "it skips its own bounds checks"},
    {"aten::_nested_", "nested tensors are not kept by this server"},
    {"aten::nested_", "nested tensors are not kept by this server"},
    {"aten::_sparse_", "sparse layouts are not kept by this server"},
    {"aten::sparse_", "sparse layouts are not kept by this server"},
    {"aten::to_sparse", "sparse layouts are not kept by this server"},
    {"aten::_to_sparse", "sparse layouts are not kept by this server"},
    {"aten::_coalesce", "sparse layouts are not kept by this server"},
    {"aten::q_", "quantized tensors are not kept by this server"},
    {"aten::quantize", "quantized tensors are not kept by this server"},
    {"aten::_make_per_", "quantized tensors are not kept by this server"},
    {"aten::mkldnn", "mkldnn tensors are not kept by this server"},
    {"aten::_mkldnn", "mkldnn tensors are not kept by this server"},
    {"aten::to_mkldnn", "mkldnn tensors are not kept by this server"},
    {"aten::_record_function", "profiling is not served"},
    {"aten::_sobol_engine_", "its kernels trust the shapes of their state tensors"},
    // observers' running statistics and packed int8 matrices: written and read with the
    // sizes the kernels assume, never checked (quantization-aware training, deprecated
    // fbgemm linear)
    {"aten::_fused_moving_avg_obs_fq_helper", "its kernel trusts the shapes of its statistics"},
    {"aten::fused_moving_avg_obs_fake_quant", "its kernel trusts the shapes of its statistics"},
    {"aten::fbgemm_linear_int8_weight", "its kernel trusts its packed matrix"},
    {"aten::fbgemm_pack_quantized_matrix", "its kernel trusts its packed matrix"},
    // sparse index helpers: the index values are positions written in the output, unchecked
    {"aten::_convert_indices_from_", "sparse layouts are not kept by this server"},
    // builds an unchecked view from the given sizes and strides, then copies it out
    {"aten::_reshape_alias_copy", "it reads through an unchecked view"},
};

// Names PyTorch gives string arguments that select a mode (checked against every aten
// schema of the torch this was written for; a new name is refused until added here).
const std::unordered_set<std::string> kModeStrings = {
    "reduce",   "rounding_mode", "norm",        "mode",     "interpolation",
    "driver",   "UPLO",          "approximate", "ord",      "side",
    "padding",  "activation",    "p",           "pad_mode", "equation",
    "indexing", "padding_side",  "assert_msg",  "api_name", "algorithm"};

bool is_tensorish(const c10::TypePtr &t) {
    switch (t->kind()) {
    case c10::TypeKind::TensorType:
        return true;
    case c10::TypeKind::OptionalType:
        return is_tensorish(t->castRaw<c10::OptionalType>()->getElementType());
    case c10::TypeKind::ListType:
        return is_tensorish(t->castRaw<c10::ListType>()->getElementType());
    default:
        return false;
    }
}

bool is_kind(const c10::TypePtr &t, c10::TypeKind k) {
    if (t->kind() == c10::TypeKind::OptionalType)
        return is_kind(t->castRaw<c10::OptionalType>()->getElementType(), k);
    if (t->kind() == c10::TypeKind::ListType)
        return is_kind(t->castRaw<c10::ListType>()->getElementType(), k);
    return t->kind() == k;
}

const char *s_reason(const c10::FunctionSchema &s) {
    const std::string &name = s.name();
    if (name.rfind("aten::", 0) != 0) // 1
        return "only aten operators run on this server";
    for (const auto &d : kDenyExact) // 2
        if (name == d.name)
            return d.why;
    for (const auto &p : kDenyPrefix)
        if (name.rfind(p.p, 0) == 0 && name != "aten::_unsafe_view")
            return p.why;
    bool tensor = false;
    for (const auto &a : s.arguments()) {
        if (is_kind(a.type(), c10::TypeKind::StorageType)) // 3
            return "it swaps storage";
        if (is_kind(a.type(), c10::TypeKind::StringType) && !kModeStrings.count(a.name())) // 4
            return "it takes a string that is not a mode (a path, a message)";
        tensor |= is_tensorish(a.type());
    }
    for (const auto &r : s.returns())
        tensor |= is_tensorish(r.type());
    if (!tensor) // 5
        return "it takes and returns no tensor: it acts only through side effects";
    return nullptr;
}

} // namespace

extern "C" const char *djn_policy_check(const char *op, const char *overload) {
    auto h = c10::Dispatcher::singleton().findOp(c10::OperatorName(op, overload));
    if (!h || !h->hasSchema())
        return nullptr; // unknown: the executor answers that
    return s_reason(h->schema());
}

extern "C" int djn_policy_list(FILE *out) {
    auto names = c10::Dispatcher::singleton().getAllOpNames();
    std::vector<std::string> lines;
    int allowed = 0;
    for (const auto &n : names) {
        auto h = c10::Dispatcher::singleton().findOp(n);
        if (!h || !h->hasSchema())
            continue;
        const char *why = s_reason(h->schema());
        std::string full = n.name + (n.overload_name.empty() ? "" : "." + n.overload_name);
        lines.push_back(why ? "deny  " + full + ": " + why : "allow " + full);
        allowed += !why;
    }
    std::sort(lines.begin(), lines.end());
    for (const auto &l : lines)
        fprintf(out, "%s\n", l.c_str());
    return allowed;
}

// RemoteCpuShapes.cpp: outputs whose CPU kernel disagrees with PyTorch's Meta kernel.
//
// The fallback takes every output's dtype and shape from the op's Meta kernel, and Meta
// kernels describe CUDA. On a server that runs the op on its CPU a few kernels return
// something else; the client must declare what the server's kernel really returns, so
// that the tensors the user holds (and the backward that reads them) have CPU's dtypes
// and shapes. Found by running every OpInfo sample of torch 2.13 on CPU and on Meta and
// comparing each aten op's outputs (see docs/opinfo-baseline.md, cause 5):
//   - batch norm: saved statistics in the input's dtype unless the input is reduced
//     precision and a parameter is float32 (then float32, as on CUDA); in evaluation
//     mode they are empty, shape (0,), where Meta says (C,);
//   - layer norm and group norm: mean/rstd follow the same dtype rule; group norm's
//     backward returns grad_input in the input's dtype;
//   - embedding bag: offset2bag, bag_size and max_indices have shapes that depend on
//     the mode and on which CPU path runs: these ops run DYNAMIC (the server describes
//     its results).
#include "remote.h"

namespace djinn {
namespace {

const at::Tensor *tensor_arg(const torch::jit::Stack &stack, size_t first, size_t i) {
    if (first + i >= stack.size() || !stack[first + i].isTensor())
        return nullptr;
    const at::Tensor &t = stack[first + i].toTensor();
    return t.defined() ? &t : nullptr;
}

bool reduced(at::ScalarType t) {
    return t == at::kBFloat16 || t == at::kHalf;
}

// CPU's "mixed type" rule: statistics are float32 when a reduced-precision input meets a
// float32 parameter, else they have the input's dtype.
at::ScalarType stats_dtype(const torch::jit::Stack &stack, size_t first,
                           std::initializer_list<size_t> params) {
    const at::Tensor *x = tensor_arg(stack, first, 0);
    at::ScalarType in = x ? x->scalar_type() : at::kFloat;
    if (!reduced(in))
        return in;
    for (size_t p : params)
        if (const at::Tensor *t = tensor_arg(stack, first, p))
            if (t->scalar_type() == at::kFloat)
                return at::kFloat;
    return in;
}

bool bool_arg(const torch::jit::Stack &stack, size_t first, size_t i) {
    return first + i < stack.size() && stack[first + i].isBool() && stack[first + i].toBool();
}

void stats(std::vector<OutFix> &fixes, at::ScalarType dt, bool training) {
    for (int i : {1, 2}) {
        OutFix f{i, dt, std::nullopt};
        if (!training)
            f.sizes = std::vector<int64_t>{0};
        fixes.push_back(f);
    }
}

} // namespace

bool cpu_output_fixes(const std::string &name, const std::string &overload,
                      const torch::jit::Stack &stack, size_t first, std::vector<OutFix> &fixes) {
    if (name == "aten::_embedding_bag" || name == "aten::_embedding_bag_forward_only")
        return true;
    // (input, weight, bias, running_mean, running_var, training, ...)
    if (name == "aten::native_batch_norm" ||
        (name == "aten::_native_batch_norm_legit" && overload.empty())) {
        stats(fixes, stats_dtype(stack, first, {1, 2, 3, 4}), bool_arg(stack, first, 5));
    } else if (name == "aten::_native_batch_norm_legit" && overload == "no_stats") {
        stats(fixes, stats_dtype(stack, first, {1, 2}), true);
    } else if (name == "aten::_native_batch_norm_legit_no_training" ||
               name == "aten::_batch_norm_no_update") {
        stats(fixes, stats_dtype(stack, first, {1, 2, 3, 4}), false);
    } else if (name == "aten::_batch_norm_with_update") {
        stats(fixes, stats_dtype(stack, first, {1, 2, 3, 4}), true);
    } else if (name == "aten::native_layer_norm") { // (input, shape, weight, bias, eps)
        at::ScalarType dt = stats_dtype(stack, first, {2, 3});
        fixes.push_back({1, dt, std::nullopt});
        fixes.push_back({2, dt, std::nullopt});
    } else if (name == "aten::native_group_norm") { // (input, weight, bias, N, C, HxW, g, eps)
        at::ScalarType dt = stats_dtype(stack, first, {1, 2});
        fixes.push_back({1, dt, std::nullopt});
        fixes.push_back({2, dt, std::nullopt});
    } else if (name == "aten::native_group_norm_backward") { // (grad_out, input, ...)
        if (const at::Tensor *x = tensor_arg(stack, first, 1))
            fixes.push_back({0, x->scalar_type(), std::nullopt});
    }
    return false;
}

} // namespace djinn

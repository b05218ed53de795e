// RemoteLayouts.cpp: the layouts 'remote' does not hold, refused where they would enter.
//
// The server keeps strided tensors; sparse COO lives on the client as two strided
// remote tensors (RemoteSparse.cpp), and a jagged nested tensor (torch.jagged) is a
// Python subclass over one strided remote tensor, so both work. Every other layout is
// refused with one message per layout, which names it and says what to do, at the call
// that would put it on 'remote', before anything is recorded (the pending fragment is
// left as it was):
//   - compressed sparse (CSR, CSC, BSR, BSC): the copy to 'remote' (_to_copy), the
//     factories (sparse_*_tensor, zeros(layout=...)), the conversions of a dense or COO
//     remote tensor (to_sparse(layout=...), to_sparse_csr(), ...), and, as a backstop,
//     every op on one (the SparseCsrPrivateUse1 fallback);
//   - mkldnn: the copy to 'remote' and to_mkldnn() of a remote tensor. Where the call
//     names the layout and the device together (`m.to('remote')` passes m's options,
//     torch.empty(layout=torch._mkldnn, device='remote')), PyTorch's own dispatch-key
//     computation refuses first, also with NotImplementedError: "Unsupported device type
//     for mkldnn layout: remote";
//   - nested tensors of layout torch.strided (NestedTensorImpl): their constructor on
//     'remote' (torch.nested.nested_tensor/as_nested_tensor) and every op on one, the
//     copy to 'remote' included (the NestedTensorPrivateUse1 fallback);
//   - any op the boxed fallback would capture with an output of another layout than
//     strided or COO (RemoteFallback.cpp's classify).
// Where the entry is decided matters: PyTorch's BackendSelect kernels merge the target
// device and layout into the dispatch key, so `csr_cpu.to('remote')` and
// `torch.sparse_csr_tensor(..., device='remote')` reach the SparseCsrPrivateUse1 key
// (not SparseCsrCPU, not PrivateUse1), where PyTorch's composite kernels would build the
// tensor without any other djinn kernel seeing it. Rejected: refusing in the allocator or
// at the first op (too late: the error then names an op the user did not call).
//
// Known hole: empty_like(csr_cpu, device='remote') runs PyTorch's own SparseCsrCPU
// kernel, which builds the tensor without dispatching on 'remote'; overriding that kernel
// would print PyTorch's override warning at `import djinn`. The result is refused at its
// first use by most ops (printing, .cpu(), to_dense(), reductions, matmul: the fallback
// and the accessors below), but elementwise ops (mul, add_) still answer first with
// PyTorch's own "unsupported tensor layout: SparseCsr". zeros_like goes through the
// accessors and is refused at the call.
#include <ATen/SparseCsrTensorUtils.h>
#include <ATen/ops/_nested_tensor_from_tensor_list_native.h>
#include <ATen/ops/_to_copy_native.h>
#include <torch/library.h>

#include "remote.h"

namespace djinn {

namespace {

constexpr auto kPU1 = c10::DeviceType::PrivateUse1;

bool is_compressed(at::Layout l) {
    return at::sparse_csr::is_sparse_compressed(l);
}

// A layout as Python spells it (at::Layout prints as "SparseCsr").
const char *layout_name(at::Layout l) {
    switch (l) {
    case at::kStrided:
        return "torch.strided";
    case at::kSparse:
        return "torch.sparse_coo";
    case at::kSparseCsr:
        return "torch.sparse_csr";
    case at::kSparseCsc:
        return "torch.sparse_csc";
    case at::kSparseBsr:
        return "torch.sparse_bsr";
    case at::kSparseBsc:
        return "torch.sparse_bsc";
    case at::kMkldnn:
        return "torch._mkldnn";
    case at::kJagged:
        return "torch.jagged";
    default:
        return "of this kind";
    }
}

[[noreturn]] void refuse_nested() {
    TORCH_CHECK_NOT_IMPLEMENTED(
        false, "djinn: nested tensors of layout torch.strided are not supported on "
               "'remote'; use torch.nested.nested_tensor(..., "
               "layout=torch.jagged), or keep the tensor on the CPU");
}

// The compressed layout an op is about: its `layout` argument, a compressed tensor among
// its arguments, or its name (sparse_csr_tensor called without a layout).
std::optional<at::Layout> compressed_layout_of(const c10::OperatorHandle &op,
                                               const torch::jit::Stack &stack) {
    const auto &args = op.schema().arguments();
    TORCH_INTERNAL_ASSERT(stack.size() >= args.size());
    size_t first = stack.size() - args.size();
    for (size_t i = 0; i < args.size(); i++) {
        const c10::IValue &v = stack[first + i];
        if (args[i].name() == "layout" && v.isInt() && is_compressed(v.toLayout()))
            return v.toLayout();
        if (v.isTensor() && v.toTensor().defined() && is_compressed(v.toTensor().layout()))
            return v.toTensor().layout();
        if (v.isTensorList())
            for (const at::Tensor &t : v.toTensorList().vec())
                if (t.defined() && is_compressed(t.layout()))
                    return t.layout();
    }
    const std::string &name = op.schema().name();
    for (auto [tag, l] : {std::pair{"csr", at::kSparseCsr}, std::pair{"csc", at::kSparseCsc},
                          std::pair{"bsr", at::kSparseBsr}, std::pair{"bsc", at::kSparseBsc}})
        if (name.find(tag) != std::string::npos)
            return l;
    return std::nullopt;
}

void compressed_refused(const c10::OperatorHandle &op, torch::jit::Stack *stack) {
    std::optional<at::Layout> l = compressed_layout_of(op, *stack);
    refuse_layout(l.value_or(at::kSparseCsr));
}

// A dense or COO tensor on 'remote' converted to a compressed layout.
constexpr const char *kToCompressed[] = {"_to_sparse_csr", "_to_sparse_csc", "_to_sparse_bsr",
                                         "_to_sparse_bsc"};

void nested_refused(const c10::OperatorHandle &, torch::jit::Stack *) {
    refuse_nested();
}

// _to_copy where the source or the target layout is compressed and the source or the
// target device is 'remote' (the key needs both): refused whichever way it goes, since a
// compressed tensor on 'remote' is one that slipped in (empty_like, below), and PyTorch's
// copy would read its accessors, refused too.
at::Tensor compressed_to_copy(const at::Tensor &self, std::optional<at::ScalarType> dtype,
                              std::optional<at::Layout> layout, std::optional<at::Device> device,
                              std::optional<bool> pin_memory, bool non_blocking,
                              std::optional<at::MemoryFormat> memory_format) {
    at::Layout to = layout.value_or(self.layout());
    refuse_layout(is_compressed(to) ? to : self.layout());
}

// An mkldnn tensor copied to 'remote' without its layout named (m.to('remote', dtype),
// _to_copy): the MkldnnCPU key outranks PrivateUse1.
at::Tensor mkldnn_to_copy(const at::Tensor &self, std::optional<at::ScalarType> dtype,
                          std::optional<at::Layout> layout, std::optional<at::Device> device,
                          std::optional<bool> pin_memory, bool non_blocking,
                          std::optional<at::MemoryFormat> memory_format) {
    if (device && device->type() == kPU1)
        refuse_layout(at::kMkldnn);
    return at::native::_to_copy(self, dtype, layout, device, pin_memory, non_blocking,
                                memory_format);
}

// A strided nested tensor built on 'remote' from CPU tensors: PyTorch's composite kernel
// runs at the CPU key and wraps a remote buffer without dispatching on 'remote'.
at::Tensor nested_from_list(at::TensorList list, std::optional<at::ScalarType> dtype,
                            std::optional<at::Layout> layout, std::optional<at::Device> device,
                            std::optional<bool> pin_memory) {
    if (device && device->type() == kPU1)
        refuse_nested();
    return at::native::_nested_tensor_from_tensor_list(list, dtype, layout, device, pin_memory);
}

at::Tensor to_mkldnn_refused(const at::Tensor &, std::optional<at::ScalarType>) {
    refuse_layout(at::kMkldnn);
}

// The compressed-layout factories: each reaches SparseCsrPrivateUse1 through
// BackendSelect; PrivateUse1 too, so the autograd keys do not run their composites.
constexpr const char *kCompressedFactories[] = {
    "_sparse_compressed_tensor_unsafe",
    "_sparse_csr_tensor_unsafe",
    "_sparse_csc_tensor_unsafe",
    "_sparse_bsr_tensor_unsafe",
    "_sparse_bsc_tensor_unsafe",
    "_sparse_compressed_tensor_with_dims",
    "sparse_compressed_tensor.comp_plain_value",
    "sparse_compressed_tensor.comp_plain_value_size",
    "sparse_csr_tensor.crow_col_value",
    "sparse_csr_tensor.crow_col_value_size",
    "sparse_csc_tensor.ccol_row_value",
    "sparse_csc_tensor.ccol_row_value_size",
    "sparse_bsr_tensor.crow_col_value",
    "sparse_bsr_tensor.crow_col_value_size",
    "sparse_bsc_tensor.ccol_row_value",
    "sparse_bsc_tensor.ccol_row_value_size",
};

} // namespace

[[noreturn]] void refuse_layout(at::Layout l) {
    if (is_compressed(l))
        TORCH_CHECK_NOT_IMPLEMENTED(false, "djinn: sparse layout ", layout_name(l),
                                    " is not supported on 'remote'; convert with .to_dense() or "
                                    ".to_sparse() (COO) first, or keep the tensor on the CPU");
    TORCH_CHECK_NOT_IMPLEMENTED(false, "djinn: layout ", layout_name(l),
                                " is not supported on 'remote'; convert with .to_dense() first, "
                                "or keep the tensor on the CPU");
}

TORCH_LIBRARY_IMPL(aten, PrivateUse1, m) {
    for (const char *name : kCompressedFactories)
        m.impl(name, torch::CppFunction::makeFromBoxedFunction<&compressed_refused>());
    for (const char *name : kToCompressed)
        m.impl(name, torch::CppFunction::makeFromBoxedFunction<&compressed_refused>());
    m.impl("to_mkldnn", TORCH_FN(to_mkldnn_refused));
    m.impl("_nested_tensor_from_tensor_list",
           torch::CppFunction::makeFromBoxedFunction<&nested_refused>());
}

TORCH_LIBRARY_IMPL(aten, SparsePrivateUse1, m) {
    for (const char *name : kToCompressed)
        m.impl(name, torch::CppFunction::makeFromBoxedFunction<&compressed_refused>());
}

// Besides the copy and the factories: the accessors, whose composite kernels would
// otherwise answer first with PyTorch's "expected sparse row compressed tensor layout"
// (zeros_like(csr_cpu, device='remote') reaches them).
TORCH_LIBRARY_IMPL(aten, SparseCsrPrivateUse1, m) {
    m.impl("_to_copy", TORCH_FN(compressed_to_copy));
    for (const char *name :
         {"zeros", "crow_indices", "col_indices", "ccol_indices", "row_indices", "values"})
        m.impl(name, torch::CppFunction::makeFromBoxedFunction<&compressed_refused>());
    for (const char *name : kCompressedFactories)
        m.impl(name, torch::CppFunction::makeFromBoxedFunction<&compressed_refused>());
}

TORCH_LIBRARY_IMPL(_, SparseCsrPrivateUse1, m) {
    m.fallback(torch::CppFunction::makeFromBoxedFunction<&compressed_refused>());
}

TORCH_LIBRARY_IMPL(aten, CPU, m) {
    m.impl("_nested_tensor_from_tensor_list", TORCH_FN(nested_from_list));
}

TORCH_LIBRARY_IMPL(aten, MkldnnCPU, m) {
    m.impl("_to_copy", TORCH_FN(mkldnn_to_copy));
}

TORCH_LIBRARY_IMPL(_, NestedTensorPrivateUse1, m) {
    m.fallback(torch::CppFunction::makeFromBoxedFunction<&nested_refused>());
}

} // namespace djinn

// RemoteAutocast.cpp: torch.autocast('remote'), with CUDA's policy.
//
// Autocast keys sit above the backend: every op on a remote tensor inside
// torch.autocast('remote', ...) first reaches AutocastPrivateUse1. Ops without an autocast
// kernel fall through unchanged; the others cast their inputs as CUDA's autocast does,
// from the same op lists (ATen/autocast_mode.h): lower precision for matmul-like ops and
// convolutions, float32 for reductions, norms and losses, the widest input type for
// mixed-input ops. The casts are ordinary ops on remote tensors, captured like any other.
#include <ATen/autocast_mode.h>
#include <torch/library.h>

namespace djinn {
// the op lists spell signatures as ATen's own files do, inside namespace at; torch 2.11's
// also name DimnameList (named tensors, gone from later headers)
#if __has_include(<ATen/core/Dimname.h>)
using at::DimnameList;
#endif
using at::IntArrayRef;
using at::Scalar;
using at::ScalarType;
using at::Tensor;

namespace {

at::Tensor binary_cross_entropy_banned(const at::Tensor &, const at::Tensor &,
                                       const std::optional<at::Tensor> &, int64_t) {
    TORCH_CHECK(false, "torch.nn.functional.binary_cross_entropy and torch.nn.BCELoss are unsafe "
                       "to autocast.\nMany models use a sigmoid layer right before the binary "
                       "cross entropy layer.\nIn this case, combine the two layers using "
                       "torch.nn.functional.binary_cross_entropy_with_logits\nor "
                       "torch.nn.BCEWithLogitsLoss.  binary_cross_entropy_with_logits and "
                       "BCEWithLogits are\nsafe to autocast.");
}

} // namespace

TORCH_LIBRARY_IMPL(_, AutocastPrivateUse1, m) {
    m.fallback(torch::CppFunction::makeFallthrough());
}

TORCH_LIBRARY_IMPL(aten, AutocastPrivateUse1, m) {
#define DJN_AUTOCAST_LOWER(...) KERNEL_PRIVATEUSEONE(__VA_ARGS__, lower_precision_fp)
#define DJN_AUTOCAST_FP32(...) KERNEL_PRIVATEUSEONE(__VA_ARGS__, fp32)
#define DJN_AUTOCAST_FP32_OPT_DTYPE(...) KERNEL_PRIVATEUSEONE(__VA_ARGS__, fp32_set_opt_dtype)
#define DJN_AUTOCAST_PROMOTE(...) KERNEL_PRIVATEUSEONE(__VA_ARGS__, promote)
    AT_FORALL_LOWER_PRECISION_FP(DJN_AUTOCAST_LOWER)
    AT_FORALL_FP32(DJN_AUTOCAST_FP32)
    AT_FORALL_FP32_SET_OPT_DTYPE(DJN_AUTOCAST_FP32_OPT_DTYPE)
    AT_FORALL_DIFFERENT_REDISPATCH_SIGNATURE(KERNEL_DIFFERENT_REDISPATCH_SIGNATURE_PRIVATEUSEONE)
    AT_FORALL_PROMOTE(DJN_AUTOCAST_PROMOTE)
#undef DJN_AUTOCAST_LOWER
#undef DJN_AUTOCAST_FP32
#undef DJN_AUTOCAST_FP32_OPT_DTYPE
#undef DJN_AUTOCAST_PROMOTE
    m.impl(TORCH_SELECTIVE_NAME("aten::binary_cross_entropy"),
           TORCH_FN(binary_cross_entropy_banned));
}

} // namespace djinn

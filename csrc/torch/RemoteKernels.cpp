// RemoteKernels.cpp: the kernels 'remote' implements itself. All are metadata-only on
// the client (views, empty, resize, set_) except the copies and _local_scalar_dense,
// which move bytes: CPU->remote is a snapshot upload, remote->CPU a fetch (cached by
// the C core until a node writes to the storage).
#include <ATen/EmptyTensor.h>
#include <ATen/SDPBackend.h>
#include <ATen/native/Resize.h>
#include <ATen/native/transformers/attention.h>
#include <ATen/ops/_fused_sdp_choice_ops.h>
#include <ATen/ops/_reshape_alias_native.h>
#include <ATen/ops/_to_copy_native.h>
#include <ATen/ops/alias_native.h>
#include <ATen/ops/as_strided_native.h>
#include <ATen/ops/view_native.h>
#include <c10/core/DeviceGuard.h>
#include <c10/util/strides.h>
#include <torch/library.h>

#include "remote.h"

namespace djinn {

djn_tref_t tref_of(const at::Tensor &t) {
    djn_tref_t r;
    std::memset(&r, 0, sizeof r);
    TORCH_CHECK(t.dim() <= DJN_MAX_DIMS, "djinn: tensors of rank > ", DJN_MAX_DIMS,
                " are not supported");
    check_dtype(t.scalar_type());
    r.handle = handle_of(t.storage());
    r.offset = t.storage_offset();
    r.dtype = static_cast<uint8_t>(t.scalar_type());
    r.ndim = static_cast<uint8_t>(t.dim());
    for (int64_t d = 0; d < t.dim(); d++) {
        r.sizes[d] = t.size(d);
        r.strides[d] = t.stride(d);
    }
    return r;
}

at::Tensor make_view(const c10::Storage &storage, at::ScalarType dtype, c10::IntArrayRef sizes,
                     c10::IntArrayRef strides, int64_t offset) {
    auto t = at::detail::make_tensor<c10::TensorImpl>(
        c10::Storage(storage), c10::DispatchKeySet(c10::DispatchKey::PrivateUse1),
        c10::scalarTypeToTypeMeta(dtype));
    t.unsafeGetTensorImpl()->set_sizes_and_strides(sizes, strides, std::optional<int64_t>(offset));
    return t;
}

namespace {

constexpr auto kPU1 = c10::DeviceType::PrivateUse1;

c10::DeviceIndex index_of(std::optional<c10::Device> d) {
    return d && d->has_index() ? d->index() : current_device();
}

at::Tensor empty_memory_format(c10::IntArrayRef size, std::optional<at::ScalarType> dtype,
                               std::optional<at::Layout> layout, std::optional<at::Device> device,
                               std::optional<bool> pin_memory,
                               std::optional<at::MemoryFormat> memory_format) {
    TORCH_CHECK(!layout || *layout == at::kStrided, "djinn: only strided tensors live on 'remote'");
    check_dtype(c10::dtype_or_default(dtype));
    c10::DeviceGuard g(c10::Device(kPU1, index_of(device)));
    (void)pin_memory;
    return at::detail::empty_generic(size, allocator(),
                                     c10::DispatchKeySet(c10::DispatchKey::PrivateUse1),
                                     c10::dtype_or_default(dtype), memory_format);
}

at::Tensor empty_strided(c10::IntArrayRef size, c10::IntArrayRef stride,
                         std::optional<at::ScalarType> dtype, std::optional<at::Layout> layout,
                         std::optional<at::Device> device, std::optional<bool> pin_memory) {
    TORCH_CHECK(!layout || *layout == at::kStrided, "djinn: only strided tensors live on 'remote'");
    check_dtype(c10::dtype_or_default(dtype));
    c10::DeviceGuard g(c10::Device(kPU1, index_of(device)));
    (void)pin_memory;
    return at::detail::empty_strided_generic(size, stride, allocator(),
                                             c10::DispatchKeySet(c10::DispatchKey::PrivateUse1),
                                             c10::dtype_or_default(dtype));
}

at::Tensor as_strided(const at::Tensor &self, c10::IntArrayRef size, c10::IntArrayRef stride,
                      std::optional<int64_t> storage_offset) {
    return at::native::as_strided_tensorimpl(self, size, stride, storage_offset);
}

at::Tensor view(const at::Tensor &self, c10::IntArrayRef size) {
    return at::native::view(self, size);
}

at::Tensor view_dtype(const at::Tensor &self, at::ScalarType dtype) {
    check_dtype(dtype); // a reinterpretation as bits the wire cannot carry: refused here
    return at::native::view_dtype(self, dtype);
}

at::Tensor reshape_alias(const at::Tensor &self, c10::IntArrayRef size, c10::IntArrayRef stride) {
    return at::native::_reshape_alias(self, size, stride);
}

at::Tensor alias(const at::Tensor &self) {
    return at::native::alias(self);
}

void ensure_storage(const at::Tensor &self) {
    auto *impl = self.unsafeGetTensorImpl();
    size_t needed = at::detail::computeStorageNbytes(self.sizes(), self.strides(), self.itemsize(),
                                                     impl->storage_offset());
    if (needed > self.storage().nbytes())
        resize_storage_bytes(self.storage(), needed);
}

const at::Tensor &resize_(const at::Tensor &self, c10::IntArrayRef size,
                          std::optional<at::MemoryFormat> memory_format) {
    auto *impl = self.unsafeGetTensorImpl();
    if (self.sizes() == size && (!memory_format || *memory_format == at::MemoryFormat::Preserve))
        return self;
    impl->set_sizes_contiguous(size);
    if (memory_format && *memory_format != at::MemoryFormat::Preserve)
        impl->empty_tensor_restride(*memory_format);
    ensure_storage(self);
    return self;
}

at::Tensor &set_storage_offset(at::Tensor &self, c10::Storage source, int64_t offset,
                               c10::IntArrayRef size, c10::IntArrayRef stride) {
    auto *impl = self.unsafeGetTensorImpl();
    if (!impl->storage().is_alias_of(source))
        impl->set_storage_keep_dtype(std::move(source));
    impl->set_sizes_and_strides(size, stride, std::optional<int64_t>(offset));
    ensure_storage(self);
    return self;
}

at::Tensor &set_storage(at::Tensor &self, c10::Storage source) {
    int64_t n = static_cast<int64_t>(source.nbytes() / self.itemsize());
    return set_storage_offset(self, std::move(source), 0, {n}, {1});
}

at::Tensor &set_tensor(at::Tensor &self, const at::Tensor &src) {
    if (self.unsafeGetTensorImpl() == src.unsafeGetTensorImpl())
        return self;
    return set_storage_offset(self, src.storage(), src.storage_offset(), src.sizes(),
                              src.strides());
}

bool whole_storage(const at::Tensor &t) {
    return t.is_contiguous() && t.storage_offset() == 0 &&
           static_cast<size_t>(t.numel()) * t.itemsize() == t.storage().nbytes() && !t.is_conj() &&
           !t.is_neg();
}

// The bytes a remote tensor's storage holds, as a tensor without the conjugate and
// negative bits: a fresh TensorImpl over the same storage and geometry.
at::Tensor physical(const at::Tensor &t) {
    return make_view(t.storage(), t.scalar_type(), t.sizes(), t.strides(), t.storage_offset());
}

} // namespace

// dst = src between remote tensors on one device, honouring the conjugate and negative
// bits of both: the copy is recorded between their physical bytes, followed by
// conj_physical_ / neg_ on the destination where the bits differ (value(dst) =
// conj^dst(phys(dst)), so phys(dst) = conj^(dst xor src)(phys(src)); likewise neg).
void copy_remote(const at::Tensor &dst, const at::Tensor &src) {
    bool conj = dst.is_conj() != src.is_conj(), neg = dst.is_neg() != src.is_neg();
    if (!dst.is_conj() && !dst.is_neg() && !src.is_conj() && !src.is_neg()) {
        record_copy(dst, src);
        return;
    }
    at::Tensor pd = physical(dst);
    record_copy(pd, physical(src));
    if (conj)
        record_inplace("aten::conj_physical_", pd);
    if (neg)
        record_inplace("aten::neg_", pd);
}

// A remote tensor's values in a fresh contiguous tensor without the bits (what
// resolve_conj().resolve_neg() computes, without going through the dispatcher).
at::Tensor resolved(const at::Tensor &t) {
    c10::DeviceGuard g(t.device());
    at::Tensor out = at::detail::empty_generic(t.sizes(), allocator(),
                                               c10::DispatchKeySet(c10::DispatchKey::PrivateUse1),
                                               t.scalar_type(), std::nullopt);
    copy_remote(out, t);
    return out;
}

namespace {

void upload_into(const at::Tensor &dst, const at::Tensor &src_cpu) {
    at::Tensor src = src_cpu.resolve_conj().resolve_neg();
    if (src.scalar_type() != dst.scalar_type())
        src = src.to(dst.scalar_type());
    src = src.expand(dst.sizes()).contiguous();
    auto dev = dst.device().index();
    if (whole_storage(dst)) {
        check(djn_client_upload(client(), dev, handle_of(dst.storage()), src.data_ptr(),
                                src.nbytes()));
        return;
    }
    c10::DeviceGuard g(dst.device());
    at::Tensor tmp = at::detail::empty_generic(dst.sizes(), allocator(),
                                               c10::DispatchKeySet(c10::DispatchKey::PrivateUse1),
                                               dst.scalar_type(), std::nullopt);
    check(djn_client_upload(client(), dev, handle_of(tmp.storage()), src.data_ptr(), src.nbytes()));
    copy_remote(dst, tmp);
}

// Bytes of a remote view, as a CPU tensor with the same geometry.
at::Tensor download(const at::Tensor &src) {
    djn_tref_t r = tref_of(src);
    uint64_t b = 0, e = 0;
    TORCH_CHECK(djn_tref_extent(&r, &b, &e), "djinn: malformed remote tensor");
    size_t isz = src.itemsize();
    check(djn_client_check_host(e - b)); // before the CPU tensor exists
    auto buf = at::empty({static_cast<int64_t>(e - b)}, at::TensorOptions().dtype(at::kByte));
    if (e > b)
        check(djn_client_read(client(), src.device().index(), r.handle, b, e - b, buf.data_ptr()));
    int64_t off = src.storage_offset() - static_cast<int64_t>(b / isz);
    auto out = at::empty({0}, at::TensorOptions().dtype(src.scalar_type()));
    out.set_(buf.storage(), 0, {static_cast<int64_t>((e - b) / isz)}, {1});
    out = out.as_strided(src.sizes(), src.strides(), off);
    if (src.is_conj())
        out = out.conj();
    if (src.is_neg())
        out = out._neg_view();
    return out;
}

// Whether a remote tensor's elements are, in order, its storage's bytes [*b, *e): then a
// read of that range is the tensor's value, ready for a contiguous CPU tensor.
bool dense_range(const at::Tensor &t, uint64_t *b, uint64_t *e) {
    if (!t.is_contiguous() || t.is_conj() || t.is_neg() || t.numel() == 0)
        return false;
    djn_tref_t r = tref_of(t);
    return djn_tref_extent(&r, b, e) && *e - *b == static_cast<uint64_t>(t.numel()) * t.itemsize();
}

// remote -> CPU: straight into the destination's memory when both are laid out alike
// (one copy, from the reply), else through a staging tensor and copy_.
void download_into(const at::Tensor &dst, const at::Tensor &src) {
    uint64_t b = 0, e = 0;
    if (dst.is_contiguous() && dst.scalar_type() == src.scalar_type() && !dst.is_conj() &&
        !dst.is_neg() && dst.sizes() == src.sizes() && dense_range(src, &b, &e)) {
        check(djn_client_check_host(e - b)); // the received frame
        check(djn_client_read(client(), src.device().index(), handle_of(src.storage()), b, e - b,
                              dst.data_ptr()));
        return;
    }
    dst.copy_(download(src));
}

// Reads larger than this become the CPU tensor's memory as they arrived (the reply's
// frame), without a copy; smaller ones go through the fetch cache.
constexpr uint64_t kAdoptMin = 4ull << 20;

void frame_free(void *keep) {
    djn_client_frame_free(keep);
}

// remote -> CPU as a new tensor (.cpu(), .to('cpu')): a large dense tensor's CPU copy is
// the server's reply itself, adopted as the storage (resizable through the CPU allocator;
// its data pointer is 8-byte aligned, so only for elements of at most 8 bytes). Anything
// else is PyTorch's own _to_copy (an empty tensor, then copy_ -> copy_from).
at::Tensor to_copy(const at::Tensor &self, std::optional<at::ScalarType> dtype,
                   std::optional<at::Layout> layout, std::optional<at::Device> device,
                   std::optional<bool> pin_memory, bool non_blocking,
                   std::optional<at::MemoryFormat> memory_format) {
    auto mf = memory_format.value_or(at::MemoryFormat::Preserve);
    uint64_t b = 0, e = 0;
    if (device && device->is_cpu() && (!dtype || *dtype == self.scalar_type()) &&
        (!layout || *layout == at::kStrided) && !pin_memory.value_or(false) &&
        (mf == at::MemoryFormat::Preserve || mf == at::MemoryFormat::Contiguous) &&
        self.itemsize() <= 8 && dense_range(self, &b, &e) && e - b > kAdoptMin) {
        const void *data = nullptr;
        void *keep = nullptr;
        check(djn_client_check_host(e - b)); // before the frame that becomes the tensor
        check(djn_client_read_frame(client(), self.device().index(), handle_of(self.storage()), b,
                                    e - b, &data, &keep));
        c10::Storage st(c10::make_intrusive<c10::StorageImpl>(
            c10::StorageImpl::use_byte_size_t(), static_cast<size_t>(e - b),
            c10::DataPtr(const_cast<void *>(data), keep, &frame_free, c10::Device(c10::kCPU)),
            c10::GetCPUAllocator(), /*resizable=*/true));
        auto out = at::empty({0}, at::TensorOptions().dtype(self.scalar_type()));
        out.set_(st, 0, self.sizes(), c10::contiguous_strides(self.sizes()));
        return out;
    }
    return at::native::_to_copy(self, dtype, layout, device, pin_memory, non_blocking,
                                memory_format);
}

at::Tensor copy_from(const at::Tensor &self, const at::Tensor &dst, bool non_blocking) {
    (void)non_blocking; // uploads are snapshots and downloads complete before returning
    bool src_remote = self.device().type() == kPU1, dst_remote = dst.device().type() == kPU1;
    if (self.numel() == 0 && dst.numel() == 0)
        return dst;
    if (src_remote && dst_remote) {
        if (self.device() == dst.device()) {
            copy_remote(dst, self);
        } else { // across remote devices: through the client
            upload_into(dst, download(self));
        }
    } else if (dst_remote) {
        TORCH_CHECK(self.device().is_cpu(), "djinn: cannot copy from ", self.device(),
                    " to remote; copy to cpu first");
        upload_into(dst, self);
    } else {
        TORCH_CHECK(dst.device().is_cpu(), "djinn: cannot copy from remote to ", dst.device(),
                    "; copy to cpu first");
        download_into(dst, self);
    }
    return dst;
}

at::Tensor copy_from_and_resize(const at::Tensor &self, const at::Tensor &dst) {
    dst.resize_(self.sizes());
    return copy_from(self, dst, false);
}

template <class T> at::Scalar scalar_at(const uint8_t *p) {
    T v;
    std::memcpy(&v, p, sizeof v);
    return at::Scalar(v);
}

// A Scalar of the element bytes at p, for the dtypes .item() meets (false: another one).
bool scalar_of(at::ScalarType t, const uint8_t *p, at::Scalar *out) {
    switch (t) {
    case at::kFloat:
        *out = scalar_at<float>(p);
        return true;
    case at::kDouble:
        *out = scalar_at<double>(p);
        return true;
    case at::kHalf:
        *out = scalar_at<at::Half>(p);
        return true;
    case at::kBFloat16:
        *out = scalar_at<at::BFloat16>(p);
        return true;
    case at::kLong:
        *out = scalar_at<int64_t>(p);
        return true;
    case at::kInt:
        *out = scalar_at<int32_t>(p);
        return true;
    case at::kShort:
        *out = scalar_at<int16_t>(p);
        return true;
    case at::kChar:
        *out = scalar_at<int8_t>(p);
        return true;
    case at::kByte:
        *out = scalar_at<uint8_t>(p);
        return true;
    case at::kBool:
        *out = at::Scalar(p[0] != 0);
        return true;
    case at::kComplexFloat:
        *out = scalar_at<c10::complex<float>>(p);
        return true;
    case at::kComplexDouble:
        *out = scalar_at<c10::complex<double>>(p);
        return true;
    default:
        return false;
    }
}

// .item(): the element's bytes read into a local buffer and made a Scalar, without the
// staging CPU tensor download() builds (three TensorImpls and a dispatch of item() on
// the CPU copy). Other dtypes and the conjugate and negative bits go through download().
at::Scalar local_scalar_dense(const at::Tensor &self) {
    TORCH_CHECK(self.numel() == 1, "djinn: a tensor with ", self.numel(),
                " elements cannot be converted to a scalar");
    alignas(16) uint8_t b[16] = {0};
    at::Scalar v;
    if (self.is_conj() || self.is_neg() || !scalar_of(self.scalar_type(), b, &v))
        return download(self).item();
    size_t isz = self.itemsize();
    check(djn_client_read(client(), self.device().index(), handle_of(self.storage()),
                          static_cast<uint64_t>(self.storage_offset()) * isz, isz, b));
    scalar_of(self.scalar_type(), b, &v);
    return v;
}

// Module.to('remote') keeps each Parameter object (param.data = the remote tensor), as
// on CUDA, so parameters a model ties (GPT-2's lm_head and wte) stay one parameter.
// PyTorch answers this for dense CPU/CUDA/... tensors; remote tensors are the same plain
// strided TensorImpl.
bool has_compatible_shallow_copy_type(const at::Tensor &self, const at::Tensor &from) {
    auto dense = [](const at::Tensor &t) {
        auto d = t.device().type();
        return t.layout() == at::kStrided && !t.is_quantized() && !t.is_nested() &&
               (d == kPU1 || d == c10::DeviceType::CPU || d == c10::DeviceType::CUDA);
    };
    return self.unsafeGetTensorImpl()->has_compatible_shallow_copy_type(from.key_set()) ||
           (dense(self) && dense(from));
}

// SDPA on 'remote': a CPU server runs what CPU eager runs. Where CPU's own choice (the CPU
// kernel of _fused_sdp_choice, over the same sizes, strides, dtypes and flags) picks its
// flash kernel, ATen calls `_scaled_dot_product_flash_attention_for_cpu` with our tensors:
// one captured node (shape function in RemoteMeta.cpp, kernel checks in the server's
// guards.cpp) instead of the math path's twenty, among them GQA's repeat, a copy of the
// whole KV cache per layer and step. Otherwise (a GPU server, dropout, a case CPU's flash
// declines) the math path, composed of ops we capture. Choosing is also where the phase is
// visible: a query of length 1 against a longer key is a decode step.
int64_t fused_sdp_choice(const at::Tensor &q, const at::Tensor &k, const at::Tensor &v,
                         const std::optional<at::Tensor> &mask, double dropout_p, bool is_causal,
                         std::optional<double> scale, bool enable_gqa) {
    djn_phase_t ph = DJN_PHASE_PREFILL;
    if (q.dim() >= 2 && q.size(-2) == 1 && k.size(-2) > 1)
        ph = DJN_PHASE_DECODE;
    constexpr auto flash = static_cast<int64_t>(at::SDPBackend::flash_attention);
    if (dropout_p == 0.0 && server_device_is_cpu(q.device().index()) &&
        at::_ops::_fused_sdp_choice::redispatch(c10::DispatchKeySet(c10::DispatchKey::CPU), q, k, v,
                                                mask, dropout_p, is_causal, scale,
                                                enable_gqa) == flash) {
        set_phase_hint(ph, 1); // the flash node
        return flash;
    }
    set_phase_hint(ph, 4); // q@k^T, softmax, @v (+ slack)
    return static_cast<int64_t>(at::SDPBackend::math);
}

} // namespace

TORCH_LIBRARY_IMPL(aten, PrivateUse1, m) {
    m.impl("empty.memory_format", TORCH_FN(empty_memory_format));
    m.impl("empty_strided", TORCH_FN(empty_strided));
    m.impl("as_strided", TORCH_FN(as_strided));
    m.impl("view", TORCH_FN(view));
    m.impl("view.dtype", TORCH_FN(view_dtype));
    m.impl("_reshape_alias", TORCH_FN(reshape_alias));
    m.impl("alias", TORCH_FN(alias));
    m.impl("resize_", TORCH_FN(resize_));
    m.impl("set_.source_Storage", TORCH_FN(set_storage));
    m.impl("set_.source_Storage_storage_offset", TORCH_FN(set_storage_offset));
    m.impl("set_.source_Tensor", TORCH_FN(set_tensor));
    m.impl("_copy_from", TORCH_FN(copy_from));
    m.impl("_copy_from_and_resize", TORCH_FN(copy_from_and_resize));
    m.impl("_to_copy", TORCH_FN(to_copy));
    m.impl("_local_scalar_dense", TORCH_FN(local_scalar_dense));
    m.impl("_has_compatible_shallow_copy_type", TORCH_FN(has_compatible_shallow_copy_type));
    // Composite-explicit ops whose PrivateUse1 decomposition would end in an
    // '*_overrideable' stub: capture them whole instead.
    m.impl("convolution", torch::CppFunction::makeFromBoxedFunction<&fallback>());
    m.impl("convolution_backward", torch::CppFunction::makeFromBoxedFunction<&fallback>());
    // Ops with a CPU (or CUDA) kernel and a CompositeExplicitAutograd one: without a
    // PrivateUse1 kernel the composite would run here, op by op in the input's dtype
    // (bf16 rounding at every step), instead of the server's kernel. The list is every
    // such op of torch 2.13 (_dispatch_has_kernel_for_dispatch_key).
    for (const char *name :
         {"_stack", "_stack.out", "addr", "addr.out", "all.dims", "all.dims_out", "any.dims",
          "any.dims_out", "linalg__powsum", "native_group_norm", "native_layer_norm"})
        m.impl(name, torch::CppFunction::makeFromBoxedFunction<&fallback>());
    // Structured ops models run at every step (add.Tensor, mm, _softmax, ...). Without a
    // PrivateUse1 kernel their CompositeExplicitAutogradNonFunctional wrapper runs ATen's
    // meta function, allocates the output and calls the out= overload, which reaches the
    // fallback; captured whole, the meta cache answers instead, and the node is still the
    // out= overload the wrapper would have called (benchmarks/results/PROFILE.md).
    for (const std::string &name : whole_ops())
        m.impl(name.c_str(), torch::CppFunction::makeFromBoxedFunction<&fallback>());
}

// PyTorch's Conjugate and Negative fallbacks materialise a conj/neg input with clone(),
// which for PrivateUse1 ends in _copy_from: let it through to copy_from (which honours
// the bits) instead of running the fallback again on the same input, forever.
TORCH_LIBRARY_IMPL(aten, Conjugate, m) {
    m.impl("_copy_from", torch::CppFunction::makeFallthrough());
    m.impl("_copy_from_and_resize", torch::CppFunction::makeFallthrough());
}

TORCH_LIBRARY_IMPL(aten, Negative, m) {
    m.impl("_copy_from", torch::CppFunction::makeFallthrough());
    m.impl("_copy_from_and_resize", torch::CppFunction::makeFallthrough());
}

// Sparse COO tensors on 'remote' have the few kernels of RemoteSparse.cpp: any other op
// on one says so at once (the compressed layouts: RemoteLayouts.cpp).
void sparse_refused(const c10::OperatorHandle &op, torch::jit::Stack *) {
    TORCH_CHECK_NOT_IMPLEMENTED(false, "djinn: sparse tensors are not supported on 'remote' (",
                                op.schema().name(),
                                "); keep them on the CPU, or convert with to_dense() first");
}

TORCH_LIBRARY_IMPL(_, SparsePrivateUse1, m) {
    m.fallback(torch::CppFunction::makeFromBoxedFunction<&sparse_refused>());
}

void quantized_refused(const c10::OperatorHandle &op, torch::jit::Stack *) {
    TORCH_CHECK_NOT_IMPLEMENTED(false, "djinn: quantized tensors are not supported on 'remote' (",
                                op.schema().name(), "); keep them on the CPU");
}

TORCH_LIBRARY_IMPL(_, QuantizedPrivateUse1, m) {
    m.fallback(torch::CppFunction::makeFromBoxedFunction<&quantized_refused>());
}

TORCH_LIBRARY_IMPL(_, PrivateUse1, m) {
    m.fallback(torch::CppFunction::makeFromBoxedFunction<&fallback>());
}

} // namespace djinn

namespace at::native {
REGISTER_PRIVATEUSE1_DISPATCH(_fused_sdp_choice_stub, &djinn::fused_sdp_choice);
}

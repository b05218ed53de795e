// RemoteFallback.cpp: the boxed fallback that captures every op without a kernel of
// its own into the pending fragment (the SRG), without running anything.
//
// Per call:
//   1. CPU tensor arguments that are not wrapped-number scalars are uploaded (they
//      become remote temporaries); wrapped numbers stay scalars so type promotion
//      matches eager PyTorch.
//   2. Shape inference: a key of (op, every argument's dtype/geometry/alias group, every
//      scalar value) selects a cached MetaResult; on a miss the op's C++ shape function
//      (RemoteMeta.cpp: ATen's own meta functions for structured ops, a few written
//      there) or else the Meta device runs over mirrors that share meta storages exactly
//      where the real inputs share storages, and each output is classified by storage
//      identity: fresh, a view of an input, or the input itself (in-place / out=).
//   3. Outputs are made (fresh remote storages, or views over the inputs' storages).
//   4. The node is encoded into the fragment under the C core's lock.
// Ops whose output shapes depend on data (nonzero, masked_select, unique, boolean-mask
// indexing, ops returning Python numbers) or that have no Meta kernel are recorded as
// DYNAMIC: the fragment is flushed at once and the server describes the results.
// No Python and no GIL on this path, except on a cache miss of an op without a shape
// function whose Meta kernel is registered from Python (torch._meta_registrations):
// torch calls it under its own GIL handling.
#include <ATen/EmptyTensor.h>
#include <c10/core/DeviceGuard.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <c10/util/SmallVector.h>
#include <c10/util/strides.h>

#include <atomic>
#include <cstring>
#include <functional>
#include <memory>

#include <mutex>
#include <shared_mutex>
#include <unordered_map>
#include <unordered_set>

#include "djn_policy.h"
#include "remote.h"

namespace djinn {
namespace {

constexpr auto kPU1 = c10::DeviceType::PrivateUse1;

enum class Kind : uint8_t { Fresh, View, Inplace, Undef, List, Value };

struct OutSpec {
    Kind kind = Kind::Undef;
    int arg = -1, elem = -1; // View/Inplace: the input (and list element) it aliases
    at::ScalarType dtype = at::kFloat;
    std::vector<int64_t> sizes, strides;
    int64_t offset = 0;
    std::vector<OutSpec> items;
};

struct Resize {
    int arg, elem;
    std::vector<int64_t> sizes, strides;
    int64_t offset;
};

struct MetaResult {
    bool dynamic = false;
    std::vector<OutSpec> outs;
    std::vector<Resize> resizes;
};

struct OpInfo {
    std::string name, overload;
    djn_op_class_t cls = DJN_CLASS_MEMORY;
    bool data_dependent = false;
    const char *denied = nullptr; // the server's operator policy refuses it (why)
    DeviceRule devices = DeviceRule::CpuScalars;
    std::vector<bool> written;   // per argument: Tensor(a!) / Tensor(a!)[]
    MetaShapeFn shape = nullptr; // C++ shape function (RemoteMeta.cpp), else the Meta device
    // A functional structured op captured whole (whole_ops): recorded as this out=
    // overload, with its fresh output as the out argument. Null for every other op.
    const char *out_overload = nullptr;
};

std::shared_mutex g_mu;
std::unordered_map<const c10::FunctionSchema *, OpInfo> g_ops;
// entries are shared: a caller keeps its result while another thread clears the map
std::unordered_map<std::string, std::shared_ptr<const MetaResult>> g_meta;
std::atomic<uint64_t> g_hits{0}, g_fast{0}, g_slow{0};
std::unordered_map<std::string, uint64_t> g_slow_ops; // under g_mu
thread_local djn_phase_t t_phase = DJN_PHASE_NONE;
thread_local int t_phase_left = 0;

const std::unordered_set<std::string> kComputeBound = {
    "aten::mm",
    "aten::bmm",
    "aten::addmm",
    "aten::baddbmm",
    "aten::addbmm",
    "aten::matmul",
    "aten::linear",
    "aten::convolution",
    "aten::convolution_backward",
    "aten::_convolution",
    "aten::einsum",
    "aten::addmv",
    "aten::mv",
    "aten::dot",
    "aten::_scaled_dot_product_flash_attention_for_cpu",
    "aten::_scaled_dot_product_flash_attention_for_cpu_backward"};

const std::unordered_set<std::string> kDataDependent = {"aten::nonzero",
                                                        "aten::masked_select",
                                                        "aten::unique",
                                                        "aten::_unique",
                                                        "aten::_unique2",
                                                        "aten::unique_consecutive",
                                                        "aten::unique_dim",
                                                        "aten::unique_dim_consecutive",
                                                        "aten::bincount",
                                                        "aten::repeat_interleave",
                                                        "aten::equal",
                                                        "aten::argwhere",
                                                        "aten::nonzero_numpy",
                                                        "aten::is_nonzero",
                                                        "aten::allclose",
                                                        "aten::_assert_async",
                                                        "aten::_local_scalar_dense"};

const OpInfo &op_info(const c10::OperatorHandle &op) {
    const c10::FunctionSchema *key = &op.schema();
    {
        std::shared_lock<std::shared_mutex> lock(g_mu);
        auto it = g_ops.find(key);
        if (it != g_ops.end())
            return it->second;
    }
    OpInfo info;
    const auto &s = op.schema();
    info.name = s.name();
    info.overload = s.overload_name();
    info.cls = kComputeBound.count(info.name) ? DJN_CLASS_COMPUTE : DJN_CLASS_MEMORY;
    info.data_dependent = kDataDependent.count(info.name) > 0;
    info.devices = device_rule(s);
    info.denied = djn_policy_check(s.name().c_str(), s.overload_name().c_str());
    for (const auto &r : s.returns()) {
        auto k = r.type()->kind();
        bool tensorish = k == c10::TypeKind::TensorType ||
                         (k == c10::TypeKind::ListType &&
                          r.type()->castRaw<c10::ListType>()->getElementType()->kind() ==
                              c10::TypeKind::TensorType) ||
                         (k == c10::TypeKind::OptionalType &&
                          r.type()->castRaw<c10::OptionalType>()->getElementType()->kind() ==
                              c10::TypeKind::TensorType);
        if (!tensorish)
            info.data_dependent = true; // returns a Python number: ask the server
    }
    for (const auto &a : s.arguments())
        info.written.push_back(a.alias_info() && a.alias_info()->isWrite());
    info.shape = meta_shape_fn(s);
    info.out_overload = whole_out_overload(s);
    std::unique_lock<std::shared_mutex> lock(g_mu);
    return g_ops.emplace(key, std::move(info)).first->second;
}

bool is_remote(const at::Tensor &t) {
    return t.defined() && t.device().type() == kPU1;
}

bool is_scalar_cpu(const at::Tensor &t) {
    return t.defined() && t.device().is_cpu() && t.unsafeGetTensorImpl()->is_wrapped_number();
}

// ---------------------------------------------------------------- argument prep

at::Tensor upload_temp(const at::Tensor &cpu, c10::DeviceIndex dev) {
    c10::DeviceGuard g(c10::Device(kPU1, dev));
    at::Tensor t = at::detail::empty_generic(cpu.sizes(), allocator(),
                                             c10::DispatchKeySet(c10::DispatchKey::PrivateUse1),
                                             cpu.scalar_type(), std::nullopt);
    t.copy_(cpu);
    return t;
}

// A written argument that carried the conjugate or negative bit: the op ran on `temp`
// (its resolved values) and `orig` receives the result afterwards.
struct Rebound {
    at::Tensor orig, temp;
};

// Calls `fn(tensor, arg, elem)` for every tensor argument; `fn` may return a
// replacement (elem is -1 outside lists).
template <class F> void map_tensors(torch::jit::Stack &stack, size_t first, F fn) {
    for (size_t i = first; i < stack.size(); i++) {
        auto &v = stack[i];
        int a = (int)(i - first);
        if (v.isTensor()) {
            if (auto u = fn(v.toTensor(), a, -1))
                v = *u;
        } else if (v.isTensorList()) {
            auto l = v.toTensorList();
            for (size_t j = 0; j < l.size(); j++)
                if (auto u = fn(l.get(j), a, (int)j))
                    l.set(j, *u);
        } else if (v.isOptionalTensorList()) {
            auto l = v.toOptionalTensorList();
            for (size_t j = 0; j < l.size(); j++) {
                std::optional<at::Tensor> t = l.get(j);
                if (t)
                    if (auto u = fn(*t, a, (int)j))
                        l.set(j, std::optional<at::Tensor>(*u));
            }
        }
    }
}

// Find the device the op runs on, upload plain CPU tensors to it, and resolve remote
// arguments that carry the conjugate or negative bit (ops PyTorch lets through its
// Conjugate/Negative fallbacks, mm or linalg_svd, reach us with the bits set: the
// server sees bytes, so it gets the values).
c10::DeviceIndex prepare_args(const c10::OperatorHandle &op, const OpInfo &info,
                              torch::jit::Stack &stack, size_t first,
                              std::vector<Rebound> &rebound) {
    check_devices(info.devices, op.schema(), stack, first);
    int dev = -1;
    for (size_t i = first; i < stack.size() && dev < 0; i++)
        if (stack[i].isDevice() && stack[i].toDevice().type() == kPU1)
            dev = stack[i].toDevice().has_index() ? stack[i].toDevice().index() : current_device();
    map_tensors(stack, first, [&](const at::Tensor &t, int, int) -> std::optional<at::Tensor> {
        if (!is_remote(t))
            return std::nullopt;
        if (dev < 0) {
            dev = t.device().index();
        } else if (t.device().index() != dev) {
            // devices of two servers: neither holds the other's storages
            int a, b;
            TORCH_CHECK(djn_client_device_server(client(), dev, &a) ==
                            djn_client_device_server(client(), t.device().index(), &b),
                        "Expected all tensors to be on the same device, but found at least two "
                        "devices, remote:",
                        dev, " and remote:", static_cast<int>(t.device().index()),
                        " (on different servers: copy one with .to() first)");
        }
        return std::nullopt;
    });
    if (dev < 0)
        dev = current_device();
    map_tensors(stack, first, [&](const at::Tensor &t, int a, int) -> std::optional<at::Tensor> {
        if (!t.defined())
            return std::nullopt;
        if (!is_remote(t)) {
            if (is_scalar_cpu(t))
                return std::nullopt;
            return upload_temp(t, (c10::DeviceIndex)dev);
        }
        if (!t.is_conj() && !t.is_neg())
            return std::nullopt;
        at::Tensor r = resolved(t);
        if (info.written[a])
            rebound.push_back({t, r});
        return r;
    });
    return (c10::DeviceIndex)dev;
}

// After the op: written arguments that were resolved receive their results, and outputs
// that are those temporaries become the caller's tensors again.
void write_back(const std::vector<Rebound> &rebound, std::vector<c10::IValue> &outs) {
    for (const auto &rb : rebound) {
        TORCH_CHECK(rb.temp.sizes() == rb.orig.sizes(),
                    "djinn: an output with the conjugate or negative bit cannot be resized");
        copy_remote(rb.orig, rb.temp);
        for (auto &o : outs)
            if (o.isTensor() && o.toTensor().unsafeGetTensorImpl() == rb.temp.unsafeGetTensorImpl())
                o = rb.orig;
    }
}

// ---------------------------------------------------------------- cache key

struct KeyBuilder {
    std::string k;
    c10::SmallVector<const c10::StorageImpl *, 8> groups;
    KeyBuilder() { k.reserve(256); } // one allocation: a binary op's key is ~120 bytes
    template <class T> void put(T v) { k.append(reinterpret_cast<const char *>(&v), sizeof v); }
    void tensor(const at::Tensor &t) {
        if (!t.defined()) {
            k.push_back('U');
            return;
        }
        if (is_scalar_cpu(t)) {
            k.push_back('W');
            put((int8_t)t.scalar_type());
            return;
        }
        k.push_back('T');
        put((int8_t)t.scalar_type());
        put((int8_t)t.dim());
        k.append(reinterpret_cast<const char *>(t.sizes().data()), t.dim() * sizeof(int64_t));
        k.append(reinterpret_cast<const char *>(t.strides().data()), t.dim() * sizeof(int64_t));
        put(t.storage_offset());
        const c10::StorageImpl *impl = t.storage().unsafeGetStorageImpl();
        int32_t g = -1;
        for (size_t i = 0; i < groups.size(); i++)
            if (groups[i] == impl)
                g = (int32_t)i;
        if (g < 0) {
            g = (int32_t)groups.size();
            groups.push_back(impl);
        }
        put(g);
        put((uint64_t)t.storage().nbytes());
    }
    void value(const c10::IValue &v) {
        if (v.isTensor())
            tensor(v.toTensor());
        else if (v.isNone())
            k.push_back('N');
        else if (v.isBool()) {
            k.push_back('b');
            put(v.toBool());
        } else if (v.isInt()) {
            k.push_back('i');
            put(v.toInt());
        } else if (v.isDouble()) {
            k.push_back('d');
            put(v.toDouble());
        } else if (v.isComplexDouble()) {
            k.push_back('c');
            put(v.toComplexDouble());
        } else if (v.isSymInt()) {
            k.push_back('i');
            put(v.toSymInt().guard_int(__FILE__, __LINE__));
        } else if (v.isSymFloat()) {
            k.push_back('d');
            put(v.toSymFloat().guard_float(__FILE__, __LINE__));
        } else if (v.isString()) {
            k.push_back('s');
            k.append(v.toStringRef());
            k.push_back(0);
        } else if (v.isDevice())
            k.push_back('D');
        else if (v.isGenerator())
            k.push_back('G');
        else if (v.isIntList()) {
            k.push_back('I');
            auto l = v.toIntVector();
            put((uint32_t)l.size());
            for (auto x : l)
                put(x);
        } else if (v.isDoubleList()) {
            k.push_back('F');
            auto l = v.toDoubleVector();
            put((uint32_t)l.size());
            for (auto x : l)
                put(x);
        } else if (v.isBoolList()) {
            k.push_back('B');
            auto l = v.toBoolList();
            put((uint32_t)l.size());
            for (bool x : l)
                put(x);
        } else if (v.isTensorList()) {
            k.push_back('L');
            auto l = v.toTensorList();
            put((uint32_t)l.size());
            for (const at::Tensor &t : l)
                tensor(t);
        } else if (v.isList()) {
            k.push_back('l');
            auto l = v.toListRef();
            put((uint32_t)l.size());
            for (const auto &x : l)
                value(x);
        } else
            TORCH_CHECK(false, "djinn: unsupported argument of kind ", v.tagKind());
    }
};

// ---------------------------------------------------------------- meta inference

struct MetaCtx {
    std::vector<std::pair<const c10::StorageImpl *, c10::Storage>> storages; // real -> meta
    std::vector<std::tuple<const c10::StorageImpl *, int, int>> owners;      // meta -> (arg, elem)
    std::vector<std::tuple<int, int, at::Tensor>> mirrors;                   // (arg, elem, meta)
};

at::Tensor meta_of(const at::Tensor &t, MetaCtx &mc, int arg, int elem) {
    if (!is_remote(t))
        return t; // wrapped CPU scalars mix with meta tensors like with any device
    const c10::StorageImpl *impl = t.storage().unsafeGetStorageImpl();
    c10::Storage ms;
    for (auto &p : mc.storages)
        if (p.first == impl)
            ms = p.second;
    if (!ms) {
        ms = c10::Storage(c10::make_intrusive<c10::StorageImpl>(
            c10::StorageImpl::use_byte_size_t(), t.storage().nbytes(),
            c10::DataPtr(nullptr, c10::Device(c10::kMeta)), c10::GetAllocator(c10::kMeta), true));
        mc.storages.emplace_back(impl, ms);
        mc.owners.emplace_back(ms.unsafeGetStorageImpl(), arg, elem);
    }
    auto m = at::detail::make_tensor<c10::TensorImpl>(
        c10::Storage(ms), c10::DispatchKeySet(c10::DispatchKey::Meta), t.dtype());
    m.unsafeGetTensorImpl()->set_sizes_and_strides(t.sizes(), t.strides(),
                                                   std::optional<int64_t>(t.storage_offset()));
    mc.mirrors.emplace_back(arg, elem, m);
    return m;
}

c10::IValue meta_value(const c10::IValue &v, MetaCtx &mc, int arg) {
    if (v.isTensor())
        return meta_of(v.toTensor(), mc, arg, -1);
    if (v.isTensorList()) {
        c10::List<at::Tensor> out;
        int j = 0;
        for (const at::Tensor &t : v.toTensorList())
            out.push_back(meta_of(t, mc, arg, j++));
        return out;
    }
    if (v.isOptionalTensorList()) {
        c10::List<std::optional<at::Tensor>> out;
        int j = 0;
        for (const std::optional<at::Tensor> &t : v.toOptionalTensorList()) {
            out.push_back(t ? std::optional<at::Tensor>(meta_of(*t, mc, arg, j)) : std::nullopt);
            j++;
        }
        return out;
    }
    if (v.isDevice() && v.toDevice().type() == kPU1)
        return c10::Device(c10::kMeta);
    if (v.isGenerator()) // Meta kernels draw nothing; they need no (remote) generator
        return c10::IValue();
    return v;
}

OutSpec classify(const at::Tensor &r, const MetaCtx &mc, bool write_alias, const OpInfo &info) {
    OutSpec o;
    if (!r.defined())
        return o;
    if (r.layout() != c10::kStrided && r.layout() != c10::kSparse)
        refuse_layout(r.layout()); // compressed, mkldnn: the message of every other entry
    TORCH_CHECK_NOT_IMPLEMENTED(r.layout() == c10::kStrided, "djinn: ", info.name,
                                " would return a tensor of layout ", r.layout(),
                                "; only strided tensors live on 'remote' (sparse tensors stay on "
                                "the CPU)");
    o.dtype = r.scalar_type();
    o.sizes = r.sizes().vec();
    o.strides = r.strides().vec();
    o.offset = r.storage_offset();
    const c10::StorageImpl *impl = r.storage().unsafeGetStorageImpl();
    for (auto &[ms, arg, elem] : mc.owners) {
        if (ms != impl)
            continue;
        o.arg = arg;
        o.elem = elem;
        o.kind = write_alias ? Kind::Inplace : Kind::View;
        if (write_alias) { // the returned tensor must be the very input object
            for (auto &[a, e, m] : mc.mirrors)
                if (m.unsafeGetTensorImpl() == r.unsafeGetTensorImpl()) {
                    o.arg = a;
                    o.elem = e;
                }
        }
        return o;
    }
    o.kind = Kind::Fresh;
    return o;
}

// Outputs as the server's CPU kernel returns them (RemoteCpuShapes.cpp).
void fix_for_cpu(const OpInfo &info, const torch::jit::Stack &stack, size_t first,
                 MetaResult &res) {
    std::vector<OutFix> fixes;
    if (cpu_output_fixes(info.name, info.overload, stack, first, fixes)) {
        res = MetaResult();
        res.dynamic = true;
        return;
    }
    for (const auto &f : fixes) {
        if (f.index >= (int)res.outs.size() || res.outs[f.index].kind != Kind::Fresh)
            continue;
        OutSpec &o = res.outs[f.index];
        if (f.dtype)
            o.dtype = *f.dtype;
        if (f.sizes) {
            o.sizes = *f.sizes;
            auto st = c10::contiguous_strides(o.sizes);
            o.strides.assign(st.begin(), st.end());
            o.offset = 0;
        }
    }
}

MetaResult infer(const c10::OperatorHandle &op, const OpInfo &info, const torch::jit::Stack &stack,
                 size_t first, bool cpu) {
    MetaResult res;
    if (info.data_dependent) {
        res.dynamic = true;
        return res;
    }
    MetaCtx mc;
    torch::jit::Stack ms;
    ms.reserve(stack.size() - first);
    for (size_t i = first; i < stack.size(); i++)
        ms.push_back(meta_value(stack[i], mc, (int)(i - first)));
    try {
        c10::impl::ExcludeDispatchKeyGuard no_autograd(
            c10::autograd_dispatch_keyset_with_ADInplaceOrView);
        if (info.shape && meta_fast_enabled() && info.shape(op, ms)) {
            g_fast.fetch_add(1, std::memory_order_relaxed);
        } else {
            g_slow.fetch_add(1, std::memory_order_relaxed);
            {
                std::unique_lock<std::shared_mutex> lock(g_mu);
                g_slow_ops[info.overload.empty() ? info.name : info.name + "." + info.overload]++;
            }
            op.redispatchBoxed(c10::DispatchKeySet(c10::DispatchKey::Meta), &ms);
        }
    } catch (const std::exception &) {
        // a structured op captured whole: its meta function is the check PyTorch's wrapper
        // runs at the call (shape and dtype errors), so its error is eager's, raised here
        if (info.out_overload)
            throw;
        res.dynamic = true; // no Meta kernel, or data-dependent: let the server decide
        return res;
    }
    const auto &rets = op.schema().returns();
    if (ms.size() != rets.size()) {
        res.dynamic = true;
        return res;
    }
    for (size_t i = 0; i < rets.size(); i++) {
        bool w = rets[i].alias_info() && rets[i].alias_info()->isWrite();
        const auto &v = ms[i];
        if (v.isTensor()) {
            res.outs.push_back(classify(v.toTensor(), mc, w, info));
        } else if (v.isTensorList()) {
            OutSpec l;
            l.kind = Kind::List;
            for (const at::Tensor &t : v.toTensorList())
                l.items.push_back(classify(t, mc, w, info));
            res.outs.push_back(std::move(l));
        } else if (v.isNone()) {
            res.outs.emplace_back();
        } else {
            res.dynamic = true;
            return res;
        }
    }
    // written inputs whose geometry the op changed (out= resized by the op itself)
    for (auto &[a, e, m] : mc.mirrors) {
        if (!info.written[a])
            continue;
        const c10::IValue &v = stack[first + a];
        at::Tensor real = e < 0              ? v.toTensor()
                          : v.isTensorList() ? v.toTensorList().get(e)
                                             : *v.toOptionalTensorList().get(e);
        if (real.sizes() != m.sizes() || real.strides() != m.strides() ||
            real.storage_offset() != m.storage_offset())
            res.resizes.push_back({a, e, m.sizes().vec(), m.strides().vec(), m.storage_offset()});
    }
    if (cpu)
        fix_for_cpu(info, stack, first, res);
    return res;
}

// ---------------------------------------------------------------- recording

at::Tensor arg_tensor(const torch::jit::Stack &stack, size_t first, int arg, int elem) {
    const c10::IValue &v = stack[first + arg];
    if (elem < 0)
        return v.toTensor();
    if (v.isTensorList())
        return v.toTensorList().get(elem);
    return *v.toOptionalTensorList().get(elem);
}

void enc_scalar_tensor(djn_buf_t *b, const at::Tensor &t) {
    // A wrapped Python number (the only CPU tensor that reaches here, see prepare_args)
    // is read in place: t.item() is a dispatcher round trip on every captured op that
    // takes a Python scalar (x + 1.0, x * scale).
    if (t.dim() == 0 && t.device().is_cpu()) {
        const void *p = t.const_data_ptr();
        switch (t.scalar_type()) {
        case at::kDouble:
            djn_enc_float(b, *static_cast<const double *>(p));
            return;
        case at::kLong:
            djn_enc_int(b, *static_cast<const int64_t *>(p));
            return;
        case at::kBool:
            djn_enc_bool(b, *static_cast<const bool *>(p));
            return;
        default:
            break;
        }
    }
    auto s = t.item();
    if (s.isBoolean())
        djn_enc_bool(b, s.toBool());
    else if (s.isIntegral(false))
        djn_enc_int(b, s.toLong());
    else if (s.isComplex()) {
        auto z = s.toComplexDouble();
        djn_enc_complex(b, z.real(), z.imag());
    } else
        djn_enc_float(b, s.toDouble());
}

void enc_tensor(djn_buf_t *b, const at::Tensor &t, bool written) {
    if (!t.defined()) {
        djn_enc_nil(b);
    } else if (is_remote(t)) {
        djn_tref_t r = tref_of(t);
        djn_client_rec_tensor(client(), &r, written);
    } else {
        enc_scalar_tensor(b, t);
    }
}

void enc_value(djn_buf_t *b, const c10::IValue &v, bool written) {
    if (v.isTensor())
        enc_tensor(b, v.toTensor(), written);
    else if (v.isNone())
        djn_enc_nil(b);
    else if (v.isBool())
        djn_enc_bool(b, v.toBool());
    else if (v.isInt())
        djn_enc_int(b, v.toInt());
    else if (v.isDouble())
        djn_enc_float(b, v.toDouble());
    else if (v.isComplexDouble()) {
        auto z = v.toComplexDouble();
        djn_enc_complex(b, z.real(), z.imag());
    } else if (v.isSymInt())
        djn_enc_int(b, v.toSymInt().guard_int(__FILE__, __LINE__));
    else if (v.isSymFloat())
        djn_enc_float(b, v.toSymFloat().guard_float(__FILE__, __LINE__));
    else if (v.isString())
        djn_enc_cstr(b, v.toStringRef().c_str());
    else if (v.isDevice())
        djn_enc_int(b, v.toDevice().has_index() ? v.toDevice().index() : 0);
    else if (v.isGenerator()) {
        int64_t id = generator_id(v.toGenerator());
        if (id)
            djn_enc_int(b, id);
        else
            djn_enc_nil(b);
    } else if (v.isIntList()) {
        auto l = v.toIntVector();
        djn_enc_array(b, (uint32_t)l.size());
        for (auto x : l)
            djn_enc_int(b, x);
    } else if (v.isDoubleList()) {
        auto l = v.toDoubleVector();
        djn_enc_array(b, (uint32_t)l.size());
        for (auto x : l)
            djn_enc_float(b, x);
    } else if (v.isBoolList()) {
        auto l = v.toBoolList();
        djn_enc_array(b, (uint32_t)l.size());
        for (bool x : l)
            djn_enc_bool(b, x);
    } else if (v.isTensorList()) {
        auto l = v.toTensorList();
        djn_enc_array(b, (uint32_t)l.size());
        for (const at::Tensor &t : l)
            enc_tensor(b, t, written);
    } else if (v.isList()) {
        auto l = v.toListRef();
        djn_enc_array(b, (uint32_t)l.size());
        for (const auto &x : l)
            enc_value(b, x, written);
    } else
        TORCH_CHECK(false, "djinn: cannot send an argument of kind ", v.tagKind());
}

void enc_out(djn_buf_t *b, const c10::IValue &v) {
    if (v.isTensor()) {
        const at::Tensor &t = v.toTensor();
        if (!t.defined()) {
            djn_enc_nil(b);
            return;
        }
        djn_tref_t r = tref_of(t);
        djn_client_rec_tensor(client(), &r, true);
    } else if (v.isTensorList()) {
        auto l = v.toTensorList();
        djn_enc_array(b, (uint32_t)l.size());
        for (const at::Tensor &t : l)
            enc_out(b, c10::IValue(t));
    } else {
        djn_enc_nil(b);
    }
}

djn_phase_t phase_for(const OpInfo &info) {
    if (t_phase_left > 0 && (info.cls == DJN_CLASS_COMPUTE || info.name == "aten::_softmax" ||
                             info.name == "aten::_safe_softmax")) {
        t_phase_left--;
        return t_phase;
    }
    return DJN_PHASE_NONE;
}

struct Locked {
    djn_client_t *c;
    explicit Locked(djn_client_t *cl) : c(cl) { djn_client_lock(c); }
    ~Locked() { djn_client_unlock(c); }
};

void record(const OpInfo &info, c10::DeviceIndex dev, const torch::jit::Stack &stack, size_t first,
            const std::vector<c10::IValue> &outs, const std::vector<uint64_t> &fresh,
            uint32_t flags) {
    djn_client_t *C = client();
    Locked lock(C);
    size_t nargs = stack.size() - first;
    // a functional op captured whole goes as its out= overload: its output is the last
    // argument too, as PyTorch's wrapper would have passed it
    bool as_out = info.out_overload && outs.size() == 1 && outs[0].isTensor();
    const char *overload = as_out ? info.out_overload : info.overload.c_str();
    check(djn_client_rec_begin(C, dev, info.name.c_str(), overload, (uint32_t)(nargs + as_out)));
    djn_buf_t *b = djn_client_rec_buf(C);
    try {
        for (size_t i = 0; i < nargs; i++)
            enc_value(b, stack[first + i], info.written[i]);
        if (as_out)
            enc_tensor(b, outs[0].toTensor(), true);
        djn_client_rec_outs(C, (uint32_t)outs.size());
        for (const auto &o : outs)
            enc_out(b, o);
    } catch (...) {
        djn_client_rec_abort(C);
        throw;
    }
    djn_op_class_t cls = info.cls;
    djn_phase_t ph = phase_for(info);
    if (ph == DJN_PHASE_DECODE && cls == DJN_CLASS_COMPUTE)
        cls = DJN_CLASS_MEMORY; // decode attention is bandwidth-bound
    check(djn_client_rec_end(C, flags, cls, ph));
}

at::Tensor make_fresh(const OutSpec &o, c10::DeviceIndex dev, std::vector<uint64_t> &fresh) {
    c10::DeviceGuard g(c10::Device(kPU1, dev));
    at::Tensor t = at::detail::empty_strided_generic(
        o.sizes, o.strides, allocator(), c10::DispatchKeySet(c10::DispatchKey::PrivateUse1),
        o.dtype);
    if (o.offset) // rare: a fresh result with a storage offset
        t.unsafeGetTensorImpl()->set_sizes_and_strides(o.sizes, o.strides,
                                                       std::optional<int64_t>(o.offset));
    fresh.push_back(handle_of(t.storage()));
    return t;
}

c10::IValue build_out(const OutSpec &o, const torch::jit::Stack &stack, size_t first,
                      c10::DeviceIndex dev, std::vector<uint64_t> &fresh) {
    switch (o.kind) {
    case Kind::Undef:
        return c10::IValue(at::Tensor());
    case Kind::Fresh:
        return make_fresh(o, dev, fresh);
    case Kind::Inplace:
        return arg_tensor(stack, first, o.arg, o.elem);
    case Kind::View: {
        at::Tensor src = arg_tensor(stack, first, o.arg, o.elem);
        return make_view(src.storage(), o.dtype, o.sizes, o.strides, o.offset);
    }
    case Kind::List: {
        c10::List<at::Tensor> l;
        for (const auto &it : o.items)
            l.push_back(build_out(it, stack, first, dev, fresh).toTensor());
        return l;
    }
    default:
        break;
    }
    TORCH_CHECK(false, "djinn: internal error building outputs");
}

// ---------------------------------------------------------------- data-dependent ops

c10::IValue dyn_result(const djn_value_t &v, const c10::Argument &ret,
                       const torch::jit::Stack &stack, size_t first, c10::DeviceIndex dev) {
    auto kind = ret.type()->kind();
    if (v.kind == DJN_V_NONE)
        return kind == c10::TypeKind::TensorType ? c10::IValue(at::Tensor()) : c10::IValue();
    bool tensor_ret = kind == c10::TypeKind::TensorType ||
                      (kind == c10::TypeKind::OptionalType &&
                       ret.type()->castRaw<c10::OptionalType>()->getElementType()->kind() ==
                           c10::TypeKind::TensorType);
    djn_dyn_tensor_t dt;
    if (tensor_ret && djn_dyn_tensor_decode(&v, &dt)) {
        uint64_t h = dt.ref.handle;
        int64_t off = dt.ref.offset;
        auto dtype = static_cast<at::ScalarType>(dt.ref.dtype);
        std::vector<int64_t> sizes(dt.ref.sizes, dt.ref.sizes + dt.ref.ndim);
        std::vector<int64_t> strides(dt.ref.strides, dt.ref.strides + dt.ref.ndim);
        uint64_t nbytes = dt.nbytes;
        bool write = ret.alias_info() && ret.alias_info()->isWrite();
        for (size_t i = first; i < stack.size(); i++) { // a view of, or the very, input
            if (!stack[i].isTensor() || !is_remote(stack[i].toTensor()))
                continue;
            const at::Tensor &in = stack[i].toTensor();
            if (handle_of(in.storage()) != h)
                continue;
            if (nbytes > in.storage().nbytes()) {
                in.storage().unsafeGetStorageImpl()->set_nbytes(nbytes);
                djn_client_adopt(client(), in.device().index(), h, nbytes);
            }
            if (write) {
                in.unsafeGetTensorImpl()->set_sizes_and_strides(sizes, strides,
                                                                std::optional<int64_t>(off));
                return in;
            }
            return make_view(in.storage(), dtype, sizes, strides, off);
        }
        return make_view(adopt_storage(h, nbytes, dev), dtype, sizes, strides, off);
    }
    if (v.kind == DJN_V_LIST && kind == c10::TypeKind::ListType) {
        c10::Argument elem(ret.name(), ret.type()->castRaw<c10::ListType>()->getElementType(),
                           std::nullopt, std::nullopt, false,
                           ret.alias_info() ? std::optional<c10::AliasInfo>(*ret.alias_info())
                                            : std::nullopt);
        c10::List<at::Tensor> l;
        for (uint32_t i = 0; i < v.len; i++)
            l.push_back(dyn_result(v.u.items[i], elem, stack, first, dev).toTensor());
        return l;
    }
    switch (v.kind) {
    case DJN_V_BOOL:
        return c10::IValue(v.u.b);
    case DJN_V_INT:
        return kind == c10::TypeKind::NumberType ? c10::IValue(at::Scalar(v.u.i))
                                                 : c10::IValue(v.u.i);
    case DJN_V_FLOAT:
        return kind == c10::TypeKind::NumberType ? c10::IValue(at::Scalar(v.u.f))
                                                 : c10::IValue(v.u.f);
    case DJN_V_COMPLEX:
        return c10::IValue(c10::complex<double>(v.u.c[0], v.u.c[1]));
    default:
        break;
    }
    TORCH_CHECK(false, "djinn: unexpected result from the server for ", ret.name());
}

void run_dynamic(const c10::OperatorHandle &op, const OpInfo &info, torch::jit::Stack *stack,
                 size_t first, c10::DeviceIndex dev, const std::vector<Rebound> &rebound) {
    djn_client_t *C = client();
    Locked lock(C);
    record(info, dev, *stack, first, {}, {}, DJN_NODE_DYNAMIC);
    djn_reply_t *reply = nullptr;
    const djn_value_t *res = nullptr;
    check(djn_client_run_dynamic(C, &reply, &res));
    struct Free {
        djn_reply_t *r;
        ~Free() { djn_reply_free(&r); }
    } f{reply};
    const auto &rets = op.schema().returns();
    TORCH_CHECK(res->kind == DJN_V_LIST && res->len == rets.size(), "djinn: malformed results for ",
                info.name);
    std::vector<c10::IValue> outs;
    for (size_t i = 0; i < rets.size(); i++)
        outs.push_back(dyn_result(res->u.items[i], rets[i], *stack, first, dev));
    torch::jit::drop(*stack, stack->size() - first);
    write_back(rebound, outs);
    for (auto &o : outs)
        stack->push_back(std::move(o));
}

} // namespace

bool server_device_is_cpu(c10::DeviceIndex dev) {
    if (djn_client_device_count(client()) <= dev) // connects on first use
        return false;
    const char *name = djn_client_device_name(client(), dev);
    return name && std::strncmp(name, "cpu", 3) == 0;
}

void set_phase_hint(djn_phase_t p, int ops) {
    t_phase = p;
    t_phase_left = ops;
}

void fallback(const c10::OperatorHandle &op, torch::jit::Stack *stack) {
    const OpInfo &info = op_info(op);
    if (info.denied) // the server would refuse the whole fragment: say so now, record nothing
        raise(DJN_ERR_DENIED, "djinn: " + info.name + (info.overload.empty() ? "" : ".") +
                                  info.overload +
                                  " is refused by the server's operator policy: " + info.denied);
    size_t nargs = op.schema().arguments().size();
    size_t first = stack->size() - nargs;
    std::vector<Rebound> rebound;
    c10::DeviceIndex dev = prepare_args(op, info, *stack, first, rebound);

    bool cpu = server_device_is_cpu(dev);
    KeyBuilder kb;
    kb.put(&op.schema());
    kb.put(cpu);
    for (size_t i = first; i < stack->size(); i++)
        kb.value((*stack)[i]);
    std::shared_ptr<const MetaResult> mr;
    {
        std::shared_lock<std::shared_mutex> lock(g_mu);
        auto it = g_meta.find(kb.k);
        if (it != g_meta.end())
            mr = it->second;
    }
    if (mr) {
        g_hits.fetch_add(1, std::memory_order_relaxed);
    } else {
        MetaResult r = infer(op, info, *stack, first, cpu);
        std::unique_lock<std::shared_mutex> lock(g_mu);
        if (g_meta.size() > 65536)
            g_meta.clear(); // bound memory; the working set refills in one pass
        mr = g_meta.emplace(kb.k, std::make_shared<const MetaResult>(std::move(r))).first->second;
    }
    if (mr->dynamic) {
        run_dynamic(op, info, stack, first, dev, rebound);
        return;
    }
    std::function<void(const OutSpec &)> carried = [&](const OutSpec &o) {
        if (o.kind == Kind::Fresh || o.kind == Kind::View)
            check_dtype(o.dtype);
        for (const auto &it : o.items)
            carried(it);
    };
    for (const auto &o : mr->outs) // before anything is recorded: the fragment stays as it was
        carried(o);
    for (const auto &rz : mr->resizes) {
        at::Tensor t = arg_tensor(*stack, first, rz.arg, rz.elem);
        t.unsafeGetTensorImpl()->set_sizes_and_strides(rz.sizes, rz.strides,
                                                       std::optional<int64_t>(rz.offset));
        size_t needed = at::detail::computeStorageNbytes(t.sizes(), t.strides(), t.itemsize(),
                                                         t.storage_offset());
        if (needed > t.storage().nbytes())
            resize_storage_bytes(t.storage(), needed);
    }
    std::vector<uint64_t> fresh;
    std::vector<c10::IValue> outs;
    outs.reserve(mr->outs.size());
    for (const auto &o : mr->outs)
        outs.push_back(build_out(o, *stack, first, dev, fresh));
    record(info, dev, *stack, first, outs, fresh, 0);
    torch::jit::drop(*stack, nargs);
    write_back(rebound, outs);
    for (auto &o : outs)
        stack->push_back(std::move(o));
}

void meta_cache_clear() {
    std::unique_lock<std::shared_mutex> lock(g_mu);
    g_meta.clear();
    g_slow_ops.clear();
}

MetaCounters meta_counters() {
    return {g_hits.load(), g_fast.load(), g_slow.load()};
}

std::vector<std::pair<std::string, uint64_t>> meta_slow_ops() {
    std::shared_lock<std::shared_mutex> lock(g_mu);
    return {g_slow_ops.begin(), g_slow_ops.end()};
}

void record_inplace(const char *name, const at::Tensor &t) {
    const c10::OperatorHandle op = c10::Dispatcher::singleton().findSchemaOrThrow(name, "");
    torch::jit::Stack s;
    s.emplace_back(t);
    fallback(op, &s);
}

void record_copy(const at::Tensor &dst, const at::Tensor &src) {
    static const c10::OperatorHandle op =
        c10::Dispatcher::singleton().findSchemaOrThrow("aten::copy_", "");
    torch::jit::Stack s;
    s.emplace_back(dst);
    s.emplace_back(src);
    s.emplace_back(false);
    fallback(op, &s);
}

} // namespace djinn

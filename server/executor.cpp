// executor.cpp: runs SRG nodes through ATen's boxed dispatcher (see djn_exec.h).
//
// Per node:
//   1. find the operator by (name, overload), cached per executor;
//   2. convert each wire value to an IValue typed by the schema argument (a number where
//      a Tensor is expected becomes a wrapped-number scalar, int arrays become int[],
//      Device becomes this worker's device, a missing Generator the session's);
//   3. callBoxed under InferenceMode (autograd lives on the client);
//   4. bind results to the client's output handles: nothing to do when the result is the
//      storage the handle names (in-place, out=, views); adopt the result's storage when
//      the handle is fresh and the layout matches; otherwise copy into it.
// Every failure becomes a status and a message naming the op; nothing here may abort
// the server on a client's input. Tensor references are checked against their
// storage's size before a tensor is built over it.
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Parallel.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/stack.h>
#include <c10/core/CPUAllocator.h>
#include <c10/core/DeviceGuard.h>
#include <c10/core/impl/COW.h>
#include <c10/core/impl/InlineDeviceGuard.h>
#include <torch/version.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <string_view>
#include <unordered_map>

#include "djn_exec.h"
#include "djn_guard.h"
#include "djn_policy.h"

#if DJN_CUDA
#include <torch/csrc/cuda/CUDAPluggableAllocator.h>

#include "djn_dev.h"
#include "djn_dvmu.h"
#endif

static_assert(int(at::kByte) == DJN_DTYPE_U8 && int(at::kChar) == DJN_DTYPE_I8 &&
                  int(at::kShort) == DJN_DTYPE_I16 && int(at::kInt) == DJN_DTYPE_I32 &&
                  int(at::kLong) == DJN_DTYPE_I64 && int(at::kHalf) == DJN_DTYPE_F16 &&
                  int(at::kFloat) == DJN_DTYPE_F32 && int(at::kDouble) == DJN_DTYPE_F64 &&
                  int(at::kComplexHalf) == DJN_DTYPE_C32 &&
                  int(at::kComplexFloat) == DJN_DTYPE_C64 &&
                  int(at::kComplexDouble) == DJN_DTYPE_C128 && int(at::kBool) == DJN_DTYPE_BOOL &&
                  int(at::kBFloat16) == DJN_DTYPE_BF16 && int(at::kUInt16) == DJN_DTYPE_U16 &&
                  int(at::kUInt32) == DJN_DTYPE_U32 && int(at::kUInt64) == DJN_DTYPE_U64 &&
                  int(at::kFloat8_e5m2) == DJN_DTYPE_F8_E5M2 &&
                  int(at::kFloat8_e4m3fn) == DJN_DTYPE_F8_E4M3FN &&
                  int(at::kFloat8_e5m2fnuz) == DJN_DTYPE_F8_E5M2FNUZ &&
                  int(at::kFloat8_e4m3fnuz) == DJN_DTYPE_F8_E4M3FNUZ &&
                  int(at::kFloat8_e8m0fnu) == DJN_DTYPE_F8_E8M0FNU,
              "djinn dtype codes must equal c10::ScalarType numbering");

struct djn_stor {
    c10::Storage storage;
};

struct djn_op_entry {
    c10::OperatorHandle h;
    bool rng;           // draws random numbers: needs the session's state in the default generator
    const char *denied; // the policy's reason (djn_policy.h), NULL: may run
    bool uninit;        // returns memory it did not write (empty*): zeroed where no VMU scrubs
    bool guarded;       // its kernel trusts its arguments: checked first (djn_guard.h)
    bool ebag;          // _embedding_bag(_forward_only): offset2bag may come back empty
};

// "aten::add.out" -> its entry, looked up by a string_view of a stack buffer (no
// allocation per node: find_op runs for every node of every fragment)
struct OpKeyHash {
    using is_transparent = void;
    size_t operator()(std::string_view k) const { return std::hash<std::string_view>{}(k); }
};

struct djn_exec {
    c10::Device device{c10::kCPU};
    std::string name;
    std::unordered_map<std::string, djn_op_entry, OpKeyHash, std::equal_to<>> ops;
    djn_vmu_t *vmu = nullptr;
    bool rng_active = false; // the default generator holds a session's state
    std::mutex own_rng_mu;   // a CUDA device's default generator is its own
    at::Tensor rng_saved;
};

namespace {

// ---------------------------------------------------------------- VMU allocator
//
// The c10 CPU allocator of djinn-server. A worker thread allocates from its device's
// VMU: the Stack slab while nodes run (t_slab), the Data segment otherwise. Any other
// thread (ATen's intra-op pool, the transport thread) gets plain aligned host memory.
// The data pointer is also the deleter's context, so freeing finds its segment from
// the address alone, on whatever thread drops the last reference.

constexpr size_t kAlign = 256;
thread_local djn_vmu_t *t_vmu = nullptr; // this worker's VMU (the c10 allocator has no context)
thread_local bool t_slab = false;        // set by djn_exec_node from env->slab

void vmu_free(void *p) {
    if (!p)
        return;
    djn_vmu_t *v = djn_vmu_find(p);
    if (v)
        djn_vmu_release(v, p);
    else
        free(p);
}

// The allocation mode of this worker for the duration of one node.
struct SlabMode {
    bool prev;
    explicit SlabMode(bool on) : prev(t_slab) { t_slab = on && t_vmu; }
    ~SlabMode() { t_slab = prev; }
};

void plain_free(void *p) {
    free(p);
}

struct VmuAllocator final : c10::Allocator {
    c10::DataPtr allocate(size_t n) override {
        c10::Device cpu(c10::kCPU);
        if (!t_vmu) {
            void *p = nullptr;
            if (posix_memalign(&p, kAlign, n ? n : 1) != 0)
                TORCH_CHECK_WITH(OutOfMemoryError, false,
                                 "djinn-server: out of host memory allocating ", n, " bytes");
            std::memset(p, 0, n); /* malloc recycles: never hand out a previous owner's bytes */
            return {p, p, &plain_free, cpu};
        }
        void *p = t_slab ? djn_vmu_slab_alloc(t_vmu, n) : djn_vmu_data_alloc(t_vmu, n);
        if (!p) {
            djn_vmu_stats_t st;
            djn_vmu_stats(t_vmu, &st);
            if (t_slab)
                TORCH_CHECK_WITH(
                    OutOfMemoryError, false,
                    "out of memory: the fragment needs more than the stack slab (",
                    st.slab.capacity, " bytes, ", st.slab.top, " in use) to allocate ", n,
                    " bytes; split the work or start djinn-server with a larger --slab-bytes");
            TORCH_CHECK_WITH(OutOfMemoryError, false, "out of memory: the Data segment cannot fit ",
                             n, " bytes (", st.data.used, " of ", st.data.capacity,
                             " used, largest free block ", st.data.largest_free,
                             "); start djinn-server with a larger --data-bytes");
        }
        return {p, p, &vmu_free, cpu};
    }
    c10::DeleterFnPtr raw_deleter() const override { return t_vmu ? &vmu_free : &plain_free; }
    void copy_data(void *dest, const void *src, std::size_t count) const override {
        std::memcpy(dest, src, count);
    }
};

VmuAllocator g_vmu_allocator;

#if DJN_CUDA
// ---------------------------------------------------------------- CUDA VMU allocator
//
// CUDA builds (-DDJN_CUDA) route every ATen CUDA allocation through the device's VMU
// arena (djn_dvmu: Data heap + stack slab in one cudaMalloc, reuse ordered by stream
// events) with torch's pluggable allocator, installed once before any CUDA allocation.
// DJINN_CUDA_ALLOCATOR=caching keeps ATen's caching allocator instead; the arena's
// sizes come from DJINN_CUDA_DATA_BYTES / DJINN_CUDA_SLAB_BYTES (0 or unset: sized from
// the device's free memory). The arena lives until the process exits: ATen keeps
// per-device workspaces (cuBLAS) in statics that outlive the executors.
// Not yet run on a GPU (README, "What has run on a GPU").

bool g_cuda_vmu = false; // the pluggable allocator is installed
// Devices whose arena could not be reserved (another process holds the memory): their
// allocations go straight to cudaMalloc / cudaFree through the seam, slow but correct.
djn_dev_t *g_direct[64];

uint64_t env_bytes(const char *name) {
    const char *v = std::getenv(name);
    return v && *v ? std::strtoull(v, nullptr, 10) : 0;
}

djn_dev_t *direct_dev(int dev) {
    return dev >= 0 && dev < 64 ? g_direct[dev] : nullptr;
}

void *cuda_alloc(size_t n, int dev, cudaStream_t s) {
    void *p = djn_dvmu_alloc_fn(n, dev, s);
    if (!p && direct_dev(dev) && djn_dev_reserve(direct_dev(dev), n ? n : 1, &p) != DJN_OK)
        p = nullptr;
    TORCH_CHECK_WITH(OutOfMemoryError, p, "djinn-server: out of memory on cuda:", dev, ": ",
                     direct_dev(dev) ? djn_dev_last_error(direct_dev(dev)) : djn_dvmu_oom_words(),
                     "; start djinn-server with a larger DJINN_CUDA_DATA_BYTES, or with "
                     "DJINN_CUDA_ALLOCATOR=caching");
    return p;
}

void cuda_free(void *p, size_t n, int dev, cudaStream_t s) {
    if (p && !djn_dvmu_find(p) && direct_dev(dev))
        djn_dev_release(direct_dev(dev), p);
    else
        djn_dvmu_free_fn(p, n, dev, s);
}

void install_cuda_allocator() {
    const char *mode = std::getenv("DJINN_CUDA_ALLOCATOR");
    if (mode && !std::strcmp(mode, "caching"))
        return;
    try {
        auto a =
            torch::cuda::CUDAPluggableAllocator::createCustomAllocator(&cuda_alloc, &cuda_free);
        torch::cuda::CUDAPluggableAllocator::changeCurrentAllocator(a);
        g_cuda_vmu = true;
    } catch (const std::exception &e) {
        std::fprintf(stderr, "djinn-server: keeping ATen's CUDA caching allocator: %s\n", e.what());
    }
}

// The arena of CUDA device idx, created on its executor's first use (before any of its
// allocations: the workers have not started). An arena that cannot be reserved leaves
// the device in direct mode (a line on stderr says why); no such device fails.
bool cuda_arena(int idx, char *err, size_t errlen) {
    if (!g_cuda_vmu || idx < 0 || idx >= 64 || djn_dvmu_of_device(idx) || g_direct[idx])
        return true;
    djn_dev_t *d = djn_dev_cuda_new(idx, err, errlen);
    if (!d)
        return false;
    char why[512] = "";
    djn_dvmu_t *v = djn_dvmu_new(d, env_bytes("DJINN_CUDA_DATA_BYTES"),
                                 env_bytes("DJINN_CUDA_SLAB_BYTES"), why, sizeof why);
    if (v && djn_dvmu_register(idx, v))
        return true;
    djn_dvmu_destroy(&v);
    std::fprintf(stderr,
                 "djinn-server: cuda:%d allocates without its VMU arena (cudaMalloc per "
                 "tensor): %s\n",
                 idx, why);
    g_direct[idx] = d;
    return true;
}
#endif

} // namespace

namespace {

struct OpError : std::runtime_error {
    djn_status_t st;
    OpError(djn_status_t s, const std::string &m) : std::runtime_error(m), st(s) {}
};

djn_stor_t *wrap(c10::Storage s) {
    return new djn_stor{std::move(s)};
}

void set_err(char *err, size_t errlen, const std::string &m) {
    if (err && errlen)
        snprintf(err, errlen, "%s", m.c_str());
}

// Storage of nbytes on the executor's device, resizable (ops such as nonzero.out resize
// their outputs). On a CPU worker with a VMU: in the Data segment (slab_off == none) or
// at a planned slab offset.
c10::Storage new_storage(djn_exec *x, uint64_t nbytes, uint64_t slab_off = UINT64_MAX) {
    if (x->vmu) {
        void *p = slab_off == UINT64_MAX ? djn_vmu_data_alloc(x->vmu, nbytes)
                                         : djn_vmu_slab_at(x->vmu, slab_off, nbytes);
        if (!p)
            TORCH_CHECK_WITH(OutOfMemoryError, false, "out of memory: the ",
                             slab_off == UINT64_MAX ? "Data segment" : "stack slab", " cannot fit ",
                             nbytes, " bytes");
        return c10::Storage(c10::make_intrusive<c10::StorageImpl>(
            c10::StorageImpl::use_byte_size_t(), nbytes,
            c10::DataPtr(p, p, &vmu_free, c10::Device(c10::kCPU)), &g_vmu_allocator,
            /*resizable=*/true));
    }
    auto t = at::empty({(int64_t)nbytes}, at::TensorOptions().dtype(at::kByte).device(x->device));
    return t.storage();
}

// A storage the slab holds, moved to the Data segment (persistent results).
c10::Storage copy_to_data(djn_exec *x, const c10::Storage &src) {
    c10::Storage dst = new_storage(x, src.nbytes());
    if (src.nbytes())
        std::memcpy(dst.mutable_data(), src.data(), src.nbytes());
    djn_vmu_note_copy_out(x->vmu, src.nbytes());
    return dst;
}

bool storage_in_slab(const djn_exec *x, const c10::Storage &s) {
    return x->vmu && s.data() && djn_vmu_in_slab(x->vmu, s.data());
}

const char *kind_name(uint8_t k) {
    switch (k) {
    case DJN_V_NONE:
        return "None";
    case DJN_V_BOOL:
        return "bool";
    case DJN_V_INT:
        return "int";
    case DJN_V_FLOAT:
        return "float";
    case DJN_V_COMPLEX:
        return "complex";
    case DJN_V_STR:
        return "str";
    case DJN_V_BIN:
        return "bytes";
    case DJN_V_LIST:
        return "list";
    case DJN_V_MAP:
        return "map";
    case DJN_V_TENSOR:
        return "tensor";
    }
    return "?";
}

struct Ctx {
    djn_exec *x;
    djn_exec_env_t *env;
    const c10::FunctionSchema *schema;
    std::vector<std::pair<c10::StorageImpl *, uint64_t>> inputs;
    std::vector<uint64_t> written; // handles the node may write (and grow)
};

uint64_t handle_of_slot(Ctx &c, uint64_t slot) {
    if (slot >= c.env->nbinds)
        throw OpError(DJN_ERR_ARGS, "tensor reference names slot " + std::to_string(slot) +
                                        " but only " + std::to_string(c.env->nbinds) +
                                        " are bound");
    return c.env->binds[slot];
}

// The bytes a tensor reaches, checked on the TensorImpl ATen will use (what it stored,
// not what the client asked for): no negative stride, no overflow, nothing past the
// storage's real size now. An empty tensor reaches nothing.
void check_bounds(const at::Tensor &t, uint64_t handle) {
    auto *impl = t.unsafeGetTensorImpl();
    if (impl->numel() == 0)
        return;
    for (auto st : impl->strides())
        if (st < 0)
            throw OpError(DJN_ERR_ARGS, "tensor reference to handle has a negative stride");
    size_t need = 0;
    try {
        need = at::detail::computeStorageNbytes(impl->sizes(), impl->strides(), impl->itemsize(),
                                                impl->storage_offset());
    } catch (const c10::Error &) {
        throw OpError(DJN_ERR_ARGS, "tensor reference overflows");
    }
    const c10::Storage &s = impl->storage();
    if (need > s.nbytes() || !s.data()) {
        char m[256];
        snprintf(m, sizeof m,
                 "tensor reference to handle 0x%llx reaches byte %zu but its storage holds %zu",
                 (unsigned long long)handle, need, s.nbytes());
        throw OpError(DJN_ERR_ARGS, m);
    }
}

// A kernel's result is checked like an argument: a view some kernel built past its
// storage (_reshape_alias does not check) would read another tenant's bytes when bound.
void check_result_bounds(const at::Tensor &t) {
    if (t.device().is_meta())
        return;
    try {
        check_bounds(t, 0);
    } catch (const OpError &) {
        throw OpError(DJN_ERR_ARGS, "returned a view that reaches past its storage");
    }
}

at::Tensor make_tensor(Ctx &c, const djn_tref_t &r, bool written) {
    char err[256] = {0};
    uint64_t handle = handle_of_slot(c, r.handle);
    djn_stor_t *s = nullptr;
    djn_status_t st = c.env->resolve_fn(c.env->ctx, handle, written ? 1 : 0, &s, err, sizeof err);
    if (st != DJN_OK)
        throw OpError(st, err[0] ? err : djn_status_str(st));
    uint64_t b, e;
    if (!djn_tref_extent(&r, &b, &e))
        throw OpError(DJN_ERR_ARGS, "malformed tensor reference");
    auto dtype = c10::scalarTypeToTypeMeta(static_cast<c10::ScalarType>(r.dtype));
    auto ks = c10::DispatchKeySet(c10::computeDispatchKey(static_cast<c10::ScalarType>(r.dtype),
                                                          c10::kStrided, s->storage.device()));
    auto t = at::detail::make_tensor<c10::TensorImpl>(c10::Storage(s->storage), ks, dtype);
    t.unsafeGetTensorImpl()->set_sizes_and_strides(c10::IntArrayRef(r.sizes, r.ndim),
                                                   c10::IntArrayRef(r.strides, r.ndim),
                                                   std::optional<int64_t>(r.offset));
    check_bounds(t, handle);
    c.inputs.emplace_back(s->storage.unsafeGetStorageImpl(), handle);
    if (written)
        c.written.push_back(handle);
    return t;
}

at::Tensor wrapped_scalar(Ctx &c, const djn_value_t &v) {
    at::Tensor t;
    switch (v.kind) {
    case DJN_V_BOOL:
        t = at::scalar_tensor(at::Scalar(v.u.b), at::TensorOptions().dtype(at::kBool));
        break;
    case DJN_V_INT:
        t = at::scalar_tensor(at::Scalar(v.u.i), at::TensorOptions().dtype(at::kLong));
        break;
    case DJN_V_FLOAT:
        t = at::scalar_tensor(at::Scalar(v.u.f), at::TensorOptions().dtype(at::kDouble));
        break;
    case DJN_V_COMPLEX:
        t = at::scalar_tensor(at::Scalar(c10::complex<double>(v.u.c[0], v.u.c[1])),
                              at::TensorOptions().dtype(at::kComplexDouble));
        break;
    default:
        throw OpError(DJN_ERR_ARGS, std::string("cannot make a tensor from ") + kind_name(v.kind));
    }
    (void)c;
    t.unsafeGetTensorImpl()->set_wrapped_number(true);
    return t;
}

int64_t as_int(const djn_value_t &v, const char *what) {
    if (v.kind == DJN_V_INT)
        return v.u.i;
    if (v.kind == DJN_V_BOOL)
        return v.u.b;
    throw OpError(DJN_ERR_ARGS, std::string(what) + " expects an int, got " + kind_name(v.kind));
}

double as_float(const djn_value_t &v, const char *what) {
    if (v.kind == DJN_V_FLOAT)
        return v.u.f;
    if (v.kind == DJN_V_INT)
        return (double)v.u.i;
    throw OpError(DJN_ERR_ARGS, std::string(what) + " expects a float, got " + kind_name(v.kind));
}

// A session's random state on one device: the generator every random op without an
// explicit one draws from (id 0), and the torch.Generator(device='remote') objects the
// client made (ids > 0), created on first use with PyTorch's default seed.
struct SessionRng {
    at::Generator dflt;
    std::unordered_map<int64_t, at::Generator> gens;
};

at::Generator fresh_gen(djn_exec *x) {
    if (x->device.is_cpu())
        return at::make_generator<at::CPUGeneratorImpl>(c10::default_rng_seed_val);
    at::Generator g = at::globalContext().defaultGenerator(x->device).clone();
    std::lock_guard<std::mutex> lock(g.mutex());
    g.set_current_seed(c10::default_rng_seed_val);
    return g;
}

SessionRng &session_rng(Ctx &c) {
    if (!*c.env->gen_slot)
        *c.env->gen_slot = new SessionRng{fresh_gen(c.x), {}};
    return *static_cast<SessionRng *>(*c.env->gen_slot);
}

at::Generator &session_gen(Ctx &c) {
    return session_rng(c).dflt;
}

// The client's generator `id` (torch.Generator(device='remote')), made on first use.
at::Generator &client_gen(Ctx &c, int64_t id) {
    auto &m = session_rng(c).gens;
    auto it = m.find(id);
    if (it == m.end()) {
        if (m.size() >= 65536)
            throw OpError(DJN_ERR_QUOTA, "a session may hold at most 65536 generators");
        it = m.emplace(id, fresh_gen(c.x)).first;
    }
    return it->second;
}

c10::IValue to_ivalue(Ctx &c, const djn_value_t &v, const c10::TypePtr &type, const char *name,
                      bool written);

// Random numbers. Every op draws from the device's default generator, some without a
// Generator argument at all (native_dropout). While a session's fragment runs, that
// default generator holds the session's state (swapped in and out around the fragment,
// under one lock since CPU devices share it), so each session's stream is its own and
// torch.manual_seed on the client reproduces it.
std::mutex g_rng_mu; // CPU devices share one default generator

std::mutex &rng_mu(djn_exec *x) {
    return x->device.is_cpu() ? g_rng_mu : x->own_rng_mu;
}

at::Generator default_gen(djn_exec *x) {
    return x->device.is_cpu() ? at::detail::getDefaultCPUGenerator()
                              : at::globalContext().defaultGenerator(x->device);
}

c10::IValue list_to_ivalue(Ctx &c, const djn_value_t &v, const c10::TypePtr &elem, const char *name,
                           bool written) {
    if (v.kind != DJN_V_LIST)
        throw OpError(DJN_ERR_ARGS, std::string("argument '") + name + "' expects a list, got " +
                                        kind_name(v.kind));
    switch (elem->kind()) {
    case c10::TypeKind::IntType:
    case c10::TypeKind::SymIntType: {
        std::vector<int64_t> out;
        for (uint32_t i = 0; i < v.len; i++)
            out.push_back(as_int(v.u.items[i], name));
        return c10::IValue(out);
    }
    case c10::TypeKind::FloatType: {
        std::vector<double> out;
        for (uint32_t i = 0; i < v.len; i++)
            out.push_back(as_float(v.u.items[i], name));
        return c10::IValue(out);
    }
    case c10::TypeKind::BoolType: {
        c10::List<bool> out;
        for (uint32_t i = 0; i < v.len; i++)
            out.push_back(as_int(v.u.items[i], name) != 0);
        return c10::IValue(out);
    }
    case c10::TypeKind::TensorType: {
        c10::List<at::Tensor> out;
        for (uint32_t i = 0; i < v.len; i++)
            out.push_back(to_ivalue(c, v.u.items[i], elem, name, written).toTensor());
        return c10::IValue(out);
    }
    case c10::TypeKind::OptionalType: {
        auto inner = elem->castRaw<c10::OptionalType>()->getElementType();
        if (inner->kind() == c10::TypeKind::TensorType) {
            c10::List<std::optional<at::Tensor>> out;
            for (uint32_t i = 0; i < v.len; i++) {
                if (v.u.items[i].kind == DJN_V_NONE)
                    out.push_back(std::nullopt);
                else
                    out.push_back(to_ivalue(c, v.u.items[i], inner, name, written).toTensor());
            }
            return c10::IValue(out);
        }
        break;
    }
    default:
        break;
    }
    throw OpError(DJN_ERR_ARGS,
                  std::string("argument '") + name + "' has unsupported list type " + elem->str());
}

c10::IValue to_ivalue(Ctx &c, const djn_value_t &v, const c10::TypePtr &type, const char *name,
                      bool written) {
    switch (type->kind()) {
    case c10::TypeKind::OptionalType: {
        auto inner = type->castRaw<c10::OptionalType>()->getElementType();
        if (v.kind == DJN_V_NONE)
            return c10::IValue(); // a missing Generator: the default one, holding the session's
                                  // state
        return to_ivalue(c, v, inner, name, written);
    }
    case c10::TypeKind::TensorType:
        if (v.kind == DJN_V_TENSOR)
            return c10::IValue(make_tensor(c, *v.u.t, written));
        if (v.kind == DJN_V_NONE)
            return c10::IValue(at::Tensor());
        return c10::IValue(wrapped_scalar(c, v));
    case c10::TypeKind::IntType:
    case c10::TypeKind::SymIntType:
        return c10::IValue(as_int(v, name));
    case c10::TypeKind::FloatType:
        return c10::IValue(as_float(v, name));
    case c10::TypeKind::BoolType:
        return c10::IValue(as_int(v, name) != 0);
    case c10::TypeKind::NumberType:
        switch (v.kind) {
        case DJN_V_INT:
            return c10::IValue(at::Scalar(v.u.i));
        case DJN_V_FLOAT:
            return c10::IValue(at::Scalar(v.u.f));
        case DJN_V_BOOL:
            return c10::IValue(at::Scalar(v.u.b));
        case DJN_V_COMPLEX:
            return c10::IValue(at::Scalar(c10::complex<double>(v.u.c[0], v.u.c[1])));
        default:
            break;
        }
        break;
    case c10::TypeKind::StringType:
        if (v.kind == DJN_V_STR)
            return c10::IValue(std::string(v.u.s, v.len));
        break;
    case c10::TypeKind::DeviceObjType:
        return c10::IValue(c.x->device);
    case c10::TypeKind::GeneratorType:
        if (v.kind == DJN_V_INT && v.u.i > 0) // a torch.Generator(device='remote') of the client
            return c10::IValue(client_gen(c, v.u.i));
        return c10::IValue(default_gen(c.x));
    case c10::TypeKind::ListType:
        return list_to_ivalue(c, v, type->castRaw<c10::ListType>()->getElementType(), name,
                              written);
    default:
        break;
    }
    throw OpError(DJN_ERR_ARGS, std::string("argument '") + name + "' of type " + type->str() +
                                    " cannot take a " + kind_name(v.kind));
}

bool same_layout(const at::Tensor &t, const djn_tref_t &r) {
    if ((int)t.scalar_type() != r.dtype || t.dim() != r.ndim || t.storage_offset() != r.offset)
        return false;
    for (int d = 0; d < r.ndim; d++)
        if (t.size(d) != r.sizes[d] || (r.sizes[d] > 1 && t.stride(d) != r.strides[d]))
            return false;
    return true;
}

std::string dims(c10::IntArrayRef d) {
    std::string s = "[";
    for (size_t i = 0; i < d.size(); i++)
        s += (i ? ", " : "") + std::to_string(d[i]);
    return s + "]";
}

// A kernel's result as plain bytes on this device: an efficient zero tensor (ZeroTensor,
// whose storage holds nothing) becomes real zeros, conjugate and negative views are
// resolved (their storage bytes are not their values), a tensor of another device is
// left for a copy; one without memory or of another layout is refused, naming it.
at::Tensor materialize(Ctx &c, at::Tensor t) {
    if (t._is_zerotensor())
        return at::zeros(t.sizes(), at::TensorOptions().dtype(t.scalar_type()).device(c.x->device));
    if (t.is_meta())
        throw OpError(DJN_ERR_OP, "the kernel returned a tensor without memory (meta)");
    if (t.layout() != c10::kStrided)
        throw OpError(DJN_ERR_OP,
                      "the kernel returned a non-strided tensor, which this server does not keep");
    if (t.is_conj())
        t = t.resolve_conj();
    if (t.is_neg())
        t = t.resolve_neg();
    check_result_bounds(t);
    return t;
}

// Whether an op may write an argument: its schema says so (Tensor(a!)), or it is a
// normalisation's running statistics, which batch_norm, native_batch_norm,
// _batch_norm_impl_index, instance_norm and their cuDNN/MIOpen forms update in place in
// training mode though their schemas declare them read-only. A written argument that
// names shared (Text) content gets the session's own copy first (copy-on-write).
bool writes_arg(const c10::Argument &a) {
    if (a.alias_info() && a.alias_info()->isWrite())
        return true;
    const std::string &n = a.name();
    return n == "running_mean" || n == "running_var" || n == "running_min" || n == "running_max";
}

// CPU's _embedding_bag skips offset2bag on its fast 'sum' path (it returns it empty, and
// its backward rebuilds it when given an empty one), where the meta kernel declares one
// entry per index. The client then holds, and hands to the backward, a tensor of that
// declared size: it gets the mapping CPU's backward would build (bag of each index: the
// number of offsets at or before it, less one), never zeros.
void fill_offset2bag(const djn_value_t &o, c10::IValue &v, const at::Tensor &indices,
                     const at::Tensor &offsets) {
    if (o.kind != DJN_V_TENSOR || !v.isTensor() || v.toTensor().numel() != 0 ||
        indices.dim() != 1 || offsets.dim() != 1)
        return;
    const djn_tref_t &r = *o.u.t;
    if (r.ndim != 1 || r.sizes[0] != indices.numel())
        return;
    at::Tensor pos = at::arange(indices.numel(), offsets.options());
    v = at::searchsorted(offsets.contiguous(), pos, /*out_int32=*/offsets.scalar_type() == at::kInt,
                         /*right=*/true) -
        1;
}

void bind_result(Ctx &c, const at::Tensor &result, const djn_value_t &o) {
    if (o.kind == DJN_V_NONE || !result.defined())
        return;
    if (o.kind != DJN_V_TENSOR)
        throw OpError(DJN_ERR_ARGS, "output description must be a tensor reference");
    const djn_tref_t &r = *o.u.t;
    uint64_t handle = handle_of_slot(c, r.handle);
    at::Tensor t = materialize(c, result);
    if (t.sizes() != c10::IntArrayRef(r.sizes, r.ndim)) {
        if (t.numel() == 0 || c10::multiply_integers(c10::IntArrayRef(r.sizes, r.ndim)) == 0) {
            // an auxiliary output one side leaves empty (native_batch_norm's save_mean in
            // eval mode on CPU; _embedding_bag's max_indices outside max mode, which the
            // meta kernel declares empty): nothing to bind, the client holds no element
            return;
        }
        // never reinterpret: a shape other than the one the client holds is an error
        throw OpError(DJN_ERR_OP, "returned an output of shape " + dims(t.sizes()) +
                                      " where the client expects " +
                                      dims(c10::IntArrayRef(r.sizes, r.ndim)));
    }
    if (c.env->is_lazy_fn(c.env->ctx, handle) && t.device() == c.x->device) {
        uint64_t b, e;
        djn_tref_extent(&r, &b, &e);
        if (same_layout(t, r) && t.storage().nbytes() >= e && t.storage().data()) {
            djn_stor tmp{t.storage()};
            djn_status_t st = c.env->bind_fn(c.env->ctx, handle, &tmp);
            if (st != DJN_OK)
                throw OpError(st, "cannot bind an output");
            return;
        }
    }
    at::Tensor dst = make_tensor(c, r, true);
    if (dst.storage().unsafeGetStorageImpl() == t.storage().unsafeGetStorageImpl()) {
        if (same_layout(t, r))
            return;    // in-place, out= or a view: already there
        t = t.clone(); // another view of the same bytes: copy through a temporary
    }
    dst.copy_(t); // converts a dtype other than the declared one; same shape (checked)
}

void encode_result(Ctx &c, const c10::IValue &v, djn_buf_t *out) {
    if (v.isTensor()) {
        if (!v.toTensor().defined()) {
            djn_enc_nil(out);
            return;
        }
        at::Tensor t = materialize(c, v.toTensor());
        if (t.device() != c.x->device)
            t = t.to(c.x->device);
        if (!t.defined()) {
            djn_enc_nil(out);
            return;
        }
        auto *impl = t.storage().unsafeGetStorageImpl();
        uint64_t handle = 0;
        for (auto &in : c.inputs) // a view of an input names the input's handle
            if (in.first == impl)
                handle = in.second;
        if (!handle) {
            djn_status_t st = c.env->new_handle_fn(c.env->ctx, t.storage().nbytes(), &handle);
            if (st != DJN_OK)
                throw OpError(st, "no server handle left for a data-dependent result");
            djn_stor tmp{storage_in_slab(c.x, t.storage()) ? copy_to_data(c.x, t.storage())
                                                           : t.storage()};
            st = c.env->bind_fn(c.env->ctx, handle, &tmp);
            if (st != DJN_OK)
                throw OpError(st, "cannot bind a data-dependent result");
        }
        TORCH_CHECK(t.dim() <= DJN_MAX_DIMS, "a result of rank ", t.dim(), " cannot be described");
        djn_dyn_tensor_t d{};
        d.ref.handle = handle;
        d.ref.offset = t.storage_offset();
        d.ref.dtype = (uint8_t)t.scalar_type();
        d.ref.ndim = (uint8_t)t.dim();
        for (int64_t i = 0; i < t.dim(); i++) {
            d.ref.sizes[i] = t.size(i);
            d.ref.strides[i] = t.stride(i);
        }
        d.nbytes = t.storage().nbytes();
        djn_dyn_tensor_encode(out, &d);
    } else if (v.isTensorList()) {
        auto l = v.toTensorList();
        djn_enc_array(out, (uint32_t)l.size());
        for (size_t i = 0; i < l.size(); i++)
            encode_result(c, c10::IValue(l.get(i)), out);
    } else if (v.isNone()) {
        djn_enc_nil(out);
    } else if (v.isBool()) {
        djn_enc_bool(out, v.toBool());
    } else if (v.isInt()) {
        djn_enc_int(out, v.toInt());
    } else if (v.isDouble()) {
        djn_enc_float(out, v.toDouble());
    } else if (v.isComplexDouble()) {
        auto z = v.toComplexDouble();
        djn_enc_complex(out, z.real(), z.imag());
    } else if (v.isScalar()) {
        auto s = v.toScalar();
        if (s.isBoolean())
            djn_enc_bool(out, s.toBool());
        else if (s.isIntegral(false))
            djn_enc_int(out, s.toLong());
        else
            djn_enc_float(out, s.toDouble());
    } else {
        throw OpError(DJN_ERR_OP, "result of type " + v.tagKind() + " cannot be returned");
    }
}

// ScalarType, Layout and MemoryFormat travel as ints; ATen indexes tables with them, so
// an out-of-range value from a client must be refused here, not by a crash.
void check_enum(const djn_value_t &v, const c10::Argument &a) {
    if (v.kind != DJN_V_INT)
        return;
    c10::TypePtr t = a.real_type();
    if (t->kind() == c10::TypeKind::OptionalType)
        t = t->castRaw<c10::OptionalType>()->getElementType();
    int64_t hi = -1;
    switch (t->kind()) {
    case c10::TypeKind::ScalarTypeType:
        if (v.u.i < 0 || v.u.i >= (int64_t)c10::ScalarType::NumOptions ||
            !djn_dtype_size((uint32_t)v.u.i))
            throw OpError(DJN_ERR_ARGS,
                          "argument '" + a.name() +
                              "' is not a supported dtype code: " + std::to_string(v.u.i));
        return;
    case c10::TypeKind::LayoutType:
        if (v.u.i != (int64_t)c10::kStrided)
            throw OpError(DJN_ERR_ARGS,
                          "argument '" + a.name() +
                              "': only strided tensors live on this server, got layout " +
                              std::to_string(v.u.i));
        return;
    case c10::TypeKind::MemoryFormatType:
        hi = (int64_t)c10::MemoryFormat::NumOptions;
        break;
    default:
        return;
    }
    if (v.u.i < 0 || v.u.i >= hi)
        throw OpError(DJN_ERR_ARGS,
                      "argument '" + a.name() + "' is out of range: " + std::to_string(v.u.i));
}

// Whether an op draws random numbers: PyTorch tags every such op nondeterministic_seeded
// (dropout_, rand, rrelu, ...), whether or not it takes a Generator argument.
bool uses_rng(const c10::OperatorHandle &h) {
    if (h.hasTag(at::Tag::nondeterministic_seeded))
        return true;
    for (const auto &a : h.schema().arguments()) {
        c10::TypePtr t = a.type();
        if (t->kind() == c10::TypeKind::OptionalType)
            t = t->castRaw<c10::OptionalType>()->getElementType();
        if (t->kind() == c10::TypeKind::GeneratorType)
            return true;
    }
    return false;
}

const djn_op_entry &find_op(djn_exec *x, const djn_node_t *n) {
    char buf[160];
    size_t lo = strlen(n->op), lv = strlen(n->overload);
    std::string big;
    std::string_view key;
    if (lo + 1 + lv <= sizeof buf) {
        memcpy(buf, n->op, lo);
        buf[lo] = '.';
        memcpy(buf + lo + 1, n->overload, lv);
        key = std::string_view(buf, lo + 1 + lv);
    } else {
        big = std::string(n->op) + "." + n->overload;
        key = big;
    }
    auto it = x->ops.find(key);
    if (it != x->ops.end())
        return it->second;
    auto h = c10::Dispatcher::singleton().findOp(c10::OperatorName(n->op, n->overload));
    if (!h || !h->hasSchema())
        throw OpError(DJN_ERR_OP, std::string("unknown operator '") + n->op +
                                      (n->overload[0] ? "." : "") + n->overload + "'");
    bool uninit = std::string(n->op).find("empty") != std::string::npos;
    return x->ops
        .emplace(std::string(key),
                 djn_op_entry{*h, uses_rng(*h), djn_policy_check(n->op, n->overload), uninit,
                              djn_guard_has(n->op),
                              !strcmp(n->op, "aten::_embedding_bag") ||
                                  !strcmp(n->op, "aten::_embedding_bag_forward_only")})
        .first->second;
}

} // namespace

namespace {

// The generator a djinn::rng_* node names: the client's generator `id`, or (0) the
// session's, which is the device's default generator while a fragment's random ops run.
template <class F> void with_gen(Ctx &c, int64_t id, F fn) {
    if (id == 0 && c.x->rng_active) {
        at::Generator d = default_gen(c.x);
        std::lock_guard<std::mutex> lock(d.mutex());
        fn(d);
        return;
    }
    at::Generator &g = id == 0 ? session_gen(c) : client_gen(c, id);
    std::lock_guard<std::mutex> lock(g.mutex());
    fn(g);
}

int64_t int_arg(const djn_node_t *n, uint32_t i) {
    if (i >= n->nargs || n->args[i].kind != DJN_V_INT)
        throw OpError(DJN_ERR_ARGS, "argument " + std::to_string(i) + " must be an integer");
    return n->args[i].u.i;
}

// Random state, in program order with the ops around it (torch.Generator and
// torch.remote.get_rng_state/set_rng_state on the client):
//   djinn::rng_seed(id, seed)        manual_seed
//   djinn::rng_get_state(id)         DYNAMIC: the state as a uint8 tensor (CPU: 5056 bytes)
//   djinn::rng_set_state(id, state)  the state a get_state returned
//   djinn::rng_copy(dst, src)        Generator.clone()
//   djinn::rng_free(id)              the client dropped its generator
// Returns false for any other op.
bool run_rng_node(djn_exec *x, const djn_node_t *n, djn_exec_env_t *env, djn_buf_t *dyn) {
    if (std::strncmp(n->op, "djinn::rng_", 11) != 0)
        return false;
    const char *what = n->op + 11;
    Ctx c{x, env, nullptr, {}};
    int64_t id = int_arg(n, 0);
    if (id < 0)
        throw OpError(DJN_ERR_ARGS, "a generator id must not be negative");
    bool dynamic = n->flags & DJN_NODE_DYNAMIC;
    if (dynamic && !dyn)
        throw OpError(DJN_ERR_PROTO, "a DYNAMIC node must be the last node of its fragment");
    if (!strcmp(what, "seed")) {
        int64_t seed = int_arg(n, 1) & INT64_MAX;
        with_gen(c, id, [&](at::Generator &g) { g.set_current_seed((uint64_t)seed); });
    } else if (!strcmp(what, "get_state")) {
        if (!dynamic)
            throw OpError(DJN_ERR_ARGS, "rng_get_state must be a DYNAMIC node");
        at::Tensor st;
        with_gen(c, id, [&](at::Generator &g) { st = g.get_state(); });
        djn_enc_array(dyn, 1);
        encode_result(c, c10::IValue(st), dyn);
        return true;
    } else if (!strcmp(what, "set_state")) {
        if (n->nargs != 2 || n->args[1].kind != DJN_V_TENSOR)
            throw OpError(DJN_ERR_ARGS, "rng_set_state expects (id, state tensor)");
        at::Tensor st = make_tensor(c, *n->args[1].u.t, false);
        if (st.scalar_type() != at::kByte)
            throw OpError(DJN_ERR_ARGS, "a generator state is a uint8 tensor");
        st = st.to(at::kCPU).contiguous();
        with_gen(c, id, [&](at::Generator &g) { g.set_state(st); });
    } else if (!strcmp(what, "copy")) {
        int64_t src = int_arg(n, 1);
        if (id == 0 || src < 0)
            throw OpError(DJN_ERR_ARGS, "rng_copy copies into a client generator");
        at::Tensor st;
        with_gen(c, src, [&](at::Generator &g) { st = g.get_state(); });
        with_gen(c, id, [&](at::Generator &g) { g.set_state(st); });
    } else if (!strcmp(what, "free")) {
        if (id != 0)
            session_rng(c).gens.erase(id);
    } else {
        throw OpError(DJN_ERR_OP, std::string("unknown operator '") + n->op + "'");
    }
    if (dyn)
        djn_enc_array(dyn, 0);
    return true;
}

} // namespace

extern "C" {

int djn_exec_cuda_count(void) {
    try {
        return at::hasCUDA() ? (int)c10::impl::getDeviceGuardImpl(c10::kCUDA)->deviceCount() : 0;
    } catch (...) {
        return 0;
    }
}

djn_exec_t *djn_exec_new(const char *device, char *err, size_t errlen) {
    try {
        auto x = std::make_unique<djn_exec>();
        x->device = c10::Device(std::string(device));
        if (x->device.is_cuda() && x->device.index() >= djn_exec_cuda_count()) {
            set_err(err, errlen, std::string("no such CUDA device: ") + device);
            return nullptr;
        }
        if (!x->device.is_cpu() && !x->device.is_cuda()) {
            set_err(err, errlen, std::string("unsupported device: ") + device);
            return nullptr;
        }
        if (x->device.is_cuda() && !x->device.has_index())
            x->device.set_index(0);
#if DJN_CUDA
        if (x->device.is_cuda() && !cuda_arena(x->device.index(), err, errlen))
            return nullptr;
#endif
        x->name = x->device.str();
        return x.release();
    } catch (const std::exception &e) {
        set_err(err, errlen, std::string("bad device '") + device + "': " + e.what());
        return nullptr;
    }
}

void djn_exec_destroy(djn_exec_t **self_p) {
    if (!self_p || !*self_p)
        return;
    delete *self_p;
    *self_p = nullptr;
}

const char *djn_exec_device(const djn_exec_t *x) {
    return x->name.c_str();
}

djn_stor_t *djn_stor_retain(djn_stor_t *s) {
    return new djn_stor{s->storage};
}
void djn_stor_release(djn_stor_t *s) {
    delete s;
}
uint64_t djn_stor_nbytes(const djn_stor_t *s) {
    return s->storage.nbytes();
}

uint64_t djn_stor_id(const djn_stor_t *s) {
    return (uint64_t)(uintptr_t)s->storage.unsafeGetStorageImpl();
}

bool djn_exec_same(djn_exec_t *x, djn_stor_t *s, const void *bytes, uint64_t n) {
    if (n != s->storage.nbytes())
        return false;
    if (!n)
        return true;
    try {
        if (x->device.is_cpu())
            return std::memcmp(s->storage.data(), bytes, n) == 0;
        c10::DeviceGuard g(x->device);
        c10::InferenceMode im;
        auto mine = at::from_blob(const_cast<void *>(bytes), {(int64_t)n},
                                  at::TensorOptions().dtype(at::kByte));
        auto filed = at::empty({0}, at::TensorOptions().dtype(at::kByte).device(x->device));
        filed.set_(s->storage, 0, {(int64_t)n}, {1});
        return at::equal(filed, mine.to(x->device));
    } catch (...) {
        return false; /* not shown equal: not shared */
    }
}

djn_status_t djn_exec_zero(djn_exec_t *x, djn_stor_t *s, char *err, size_t errlen) {
    size_t n = s->storage.nbytes();
    if (!n)
        return DJN_OK;
    djn_vmu_t *v = x->vmu && s->storage.data() ? djn_vmu_find(s->storage.data()) : nullptr;
    if (v && !djn_vmu_in_slab(v, s->storage.data()))
        return DJN_OK; /* a fresh Data block: scrubbed when it was last freed (djn_vmu.c) */
    try {
        if (x->device.is_cpu()) {
            std::memset(s->storage.mutable_data(), 0, n);
        } else {
            c10::DeviceGuard g(x->device);
            c10::InferenceMode im;
            auto t = at::empty({0}, at::TensorOptions().dtype(at::kByte).device(x->device));
            t.set_(s->storage, 0, {(int64_t)n}, {1});
            t.zero_();
        }
        return DJN_OK;
    } catch (const std::exception &e) {
        set_err(err, errlen,
                std::string("zero-filling ") + std::to_string(n) + " bytes on " + x->name +
                    " failed: " + e.what());
        return DJN_ERR_DEVICE;
    }
}

void djn_exec_install_allocator(void) {
    c10::SetCPUAllocator(&g_vmu_allocator, /*priority=*/100);
#if DJN_CUDA
    install_cuda_allocator();
#endif
}

void djn_exec_set_threads(int n) {
    if (n > 0)
        at::set_num_threads(n);
}

void djn_exec_use_vmu(djn_exec_t *x, djn_vmu_t *v) {
    if (!x->device.is_cpu())
        return; // CUDA workers: their device's djn_dvmu (DJN_CUDA builds) or ATen's allocator
    x->vmu = v;
    t_vmu = v;
}

void djn_exec_enter(djn_exec_t *x) {
    t_vmu = x->vmu;
}
void djn_exec_leave(djn_exec_t *x) {
    (void)x;
    t_vmu = nullptr;
    t_slab = false;
}

int djn_exec_in_slab(const djn_exec_t *x, const djn_stor_t *s) {
    return storage_in_slab(x, s->storage);
}

int djn_stor_in_slab(const djn_stor_t *s) {
    const void *p = s->storage.data();
    djn_vmu_t *v = p ? djn_vmu_find(p) : nullptr;
    return v && djn_vmu_in_slab(v, p);
}

djn_status_t djn_exec_alloc(djn_exec_t *x, uint64_t nbytes, uint64_t slab_off, djn_stor_t **out,
                            char *err, size_t errlen) {
    *out = nullptr;
    try {
        c10::DeviceGuard g(x->device);
        c10::InferenceMode im;
        *out = wrap(new_storage(x, nbytes, slab_off));
        return DJN_OK;
    } catch (const c10::Error &e) {
        set_err(err, errlen,
                std::string("cannot allocate ") + std::to_string(nbytes) + " bytes on " + x->name +
                    ": " + e.what_without_backtrace());
        return DJN_ERR_OOM;
    } catch (const std::exception &e) {
        set_err(err, errlen,
                std::string("cannot allocate ") + std::to_string(nbytes) + " bytes on " + x->name +
                    ": " + e.what());
        return DJN_ERR_OOM;
    }
}

djn_status_t djn_exec_upload(djn_exec_t *x, const void *bytes, uint64_t n, djn_stor_t **out,
                             char *err, size_t errlen) {
    *out = nullptr;
    try {
        c10::DeviceGuard g(x->device);
        c10::InferenceMode im;
        c10::Storage s = new_storage(x, n);
        if (n) {
            if (x->device.is_cpu()) {
                std::memcpy(s.mutable_data(), bytes, n);
            } else {
                auto src = at::from_blob(const_cast<void *>(bytes), {(int64_t)n},
                                         at::TensorOptions().dtype(at::kByte));
                auto dst = at::empty({0}, at::TensorOptions().dtype(at::kByte).device(x->device));
                dst.set_(s, 0, {(int64_t)n}, {1});
                dst.copy_(src, false);
            }
        }
        *out = wrap(std::move(s));
        return DJN_OK;
    } catch (const c10::Error &e) {
        set_err(err, errlen,
                std::string("upload of ") + std::to_string(n) + " bytes to " + x->name +
                    " failed: " + e.what_without_backtrace());
        return DJN_ERR_OOM;
    } catch (const std::exception &e) {
        set_err(err, errlen,
                std::string("upload of ") + std::to_string(n) + " bytes to " + x->name +
                    " failed: " + e.what());
        return DJN_ERR_OOM;
    }
}

djn_status_t djn_exec_copy(djn_exec_t *x, djn_stor_t *dst, djn_stor_t *src, uint64_t n, char *err,
                           size_t errlen) {
    if (n > dst->storage.nbytes() || n > src->storage.nbytes()) {
        set_err(err, errlen, "copy beyond a storage");
        return DJN_ERR_ARGS;
    }
    if (!n)
        return DJN_OK;
    try {
        c10::DeviceGuard g(x->device);
        c10::InferenceMode im;
        auto opts = at::TensorOptions().dtype(at::kByte).device(x->device);
        auto d = at::empty({0}, opts), s = at::empty({0}, opts);
        d.set_(dst->storage, 0, {(int64_t)n}, {1});
        s.set_(src->storage, 0, {(int64_t)n}, {1});
        d.copy_(s);
        return DJN_OK;
    } catch (const std::exception &e) {
        set_err(err, errlen, std::string("copy on ") + x->name + " failed: " + e.what());
        return DJN_ERR_DEVICE;
    }
}

djn_status_t djn_exec_read(djn_exec_t *x, djn_stor_t *s, uint64_t off, uint64_t n, void *dst,
                           char *err, size_t errlen) {
    if (off > s->storage.nbytes() || n > s->storage.nbytes() - off) {
        set_err(err, errlen,
                "fetch of bytes [" + std::to_string(off) + ", " + std::to_string(off + n) +
                    ") beyond a storage of " + std::to_string(s->storage.nbytes()) + " bytes");
        return DJN_ERR_ARGS;
    }
    if (!n)
        return DJN_OK;
    try {
        c10::DeviceGuard g(x->device);
        c10::InferenceMode im;
        if (x->device.is_cpu()) {
            std::memcpy(dst, static_cast<const uint8_t *>(s->storage.data()) + off, n);
        } else {
            auto src = at::empty({0}, at::TensorOptions().dtype(at::kByte).device(x->device));
            src.set_(s->storage, (int64_t)off, {(int64_t)n}, {1});
            auto d = at::from_blob(dst, {(int64_t)n}, at::TensorOptions().dtype(at::kByte));
            d.copy_(src, false);
        }
        return DJN_OK;
    } catch (const std::exception &e) {
        set_err(err, errlen, std::string("read from ") + x->name + " failed: " + e.what());
        return DJN_ERR_DEVICE;
    }
}

djn_status_t djn_exec_write(djn_exec_t *x, djn_stor_t *s, uint64_t off, const void *bytes,
                            uint64_t n, char *err, size_t errlen) {
    if (off > s->storage.nbytes() || n > s->storage.nbytes() - off) {
        set_err(err, errlen,
                "write of bytes [" + std::to_string(off) + ", " + std::to_string(off + n) +
                    ") beyond a storage of " + std::to_string(s->storage.nbytes()) + " bytes");
        return DJN_ERR_ARGS;
    }
    if (!n)
        return DJN_OK;
    try {
        if (x->device.is_cpu()) {
            std::memcpy(static_cast<uint8_t *>(s->storage.mutable_data()) + off, bytes, n);
            return DJN_OK;
        }
        c10::DeviceGuard g(x->device);
        c10::InferenceMode im;
        auto src = at::from_blob(const_cast<void *>(bytes), {(int64_t)n},
                                 at::TensorOptions().dtype(at::kByte));
        auto d = at::empty({0}, at::TensorOptions().dtype(at::kByte).device(x->device));
        d.set_(s->storage, (int64_t)off, {(int64_t)n}, {1});
        d.copy_(src, false);
        return DJN_OK;
    } catch (const std::exception &e) {
        set_err(err, errlen, std::string("write to ") + x->name + " failed: " + e.what());
        return DJN_ERR_DEVICE;
    }
}

bool djn_exec_equal(djn_exec_t *x, djn_stor_t *a, djn_stor_t *b) {
    size_t n = a->storage.nbytes();
    if (n != b->storage.nbytes())
        return false;
    if (!n || a->storage.unsafeGetStorageImpl() == b->storage.unsafeGetStorageImpl())
        return true;
    try {
        if (x->device.is_cpu())
            return std::memcmp(a->storage.data(), b->storage.data(), n) == 0;
        c10::DeviceGuard g(x->device);
        c10::InferenceMode im;
        auto opts = at::TensorOptions().dtype(at::kByte).device(x->device);
        auto ta = at::empty({0}, opts), tb = at::empty({0}, opts);
        ta.set_(a->storage, 0, {(int64_t)n}, {1});
        tb.set_(b->storage, 0, {(int64_t)n}, {1});
        return at::equal(ta, tb);
    } catch (...) {
        return false; /* not shown equal: not shared */
    }
}

// A fetch sent without a copy: the reply frame points into a copy-on-write snapshot of
// the storage (c10::impl::cow::lazy_clone_storage), which the frame holds until ZeroMQ
// has sent it. A kernel that writes the storage meanwhile (a later fragment of a client
// that did not wait for the reply), or a resize or free of it, leaves the snapshot's
// bytes as they were: c10 copies for the writer. Host memory only, and only storages
// whose data pointer is plain (VMU blocks and the server's CPU allocations are).
bool djn_exec_lend(djn_exec_t *x, djn_stor_t *s, uint64_t off, uint64_t n, const void **data,
                   void **hold) {
    *data = nullptr;
    *hold = nullptr;
    const c10::Storage &st = s->storage;
    if (!x->device.is_cpu() || !n || off > st.nbytes() || n > st.nbytes() - off || !st.data() ||
        storage_in_slab(x, st))
        return false;
    try {
        c10::intrusive_ptr<c10::StorageImpl> snap =
            c10::impl::cow::lazy_clone_storage(*st.unsafeGetStorageImpl());
        if (!snap || snap->data() != st.data())
            return false;
        *data = static_cast<const uint8_t *>(snap->data()) + off;
        *hold = snap.release();
        return true;
    } catch (...) {
        return false;
    }
}

void djn_exec_unlend(void *hold) {
    if (hold) /* the snapshot's last reference may be the storage's: its deleter runs here */
        (void)c10::intrusive_ptr<c10::StorageImpl>::reclaim(static_cast<c10::StorageImpl *>(hold));
}

void djn_exec_gen_release(void *gen) {
    delete static_cast<SessionRng *>(gen);
}

void djn_exec_reseed(djn_exec_t *x, djn_exec_env_t *env) {
    if (env->seed < 0)
        return;
    Ctx c{x, env, nullptr, {}};
    auto &g = session_gen(c);
    std::lock_guard<std::mutex> lock(g.mutex());
    g.set_current_seed((uint64_t)env->seed);
}

void djn_exec_rng_enter(djn_exec_t *x, djn_exec_env_t *env) {
    try {
        rng_mu(x).lock();
        Ctx c{x, env, nullptr, {}};
        at::Generator &sg = session_gen(c);
        at::Generator d = default_gen(x);
        std::lock_guard<std::mutex> l1(d.mutex());
        std::lock_guard<std::mutex> l2(sg.mutex());
        x->rng_saved = d.get_state();
        d.set_state(sg.get_state());
        x->rng_active = true;
    } catch (...) {
        x->rng_active = false;
        rng_mu(x).unlock();
    }
}

bool djn_exec_rng_exit(djn_exec_t *x, djn_exec_env_t *env) {
    if (!x->rng_active)
        return false;
    try {
        Ctx c{x, env, nullptr, {}};
        at::Generator &sg = session_gen(c);
        at::Generator d = default_gen(x);
        std::lock_guard<std::mutex> l1(d.mutex());
        std::lock_guard<std::mutex> l2(sg.mutex());
        sg.set_state(d.get_state());
        d.set_state(x->rng_saved);
    } catch (...) {
    }
    x->rng_saved = at::Tensor();
    x->rng_active = false;
    rng_mu(x).unlock();
    return true;
}

void djn_exec_sync(djn_exec_t *x) {
    try {
        if (!x->device.is_cpu())
            c10::impl::getDeviceGuardImpl(x->device.type())->synchronizeDevice(x->device.index());
    } catch (...) {
    }
}

djn_status_t djn_exec_node(djn_exec_t *x, const djn_node_t *n, djn_exec_env_t *env, djn_buf_t *dyn,
                           char *err, size_t errlen) {
    auto opname = [n] { return std::string(n->op) + (n->overload[0] ? "." : "") + n->overload; };
    try {
        c10::DeviceGuard g(x->device);
        c10::InferenceMode im;
        if (!strcmp(n->op, "djinn::seed")) { // torch.manual_seed, in program order
            if (n->nargs != 1 || n->args[0].kind != DJN_V_INT)
                throw OpError(DJN_ERR_ARGS, "expects one integer seed");
            djn_exec_env_t e2 = *env;
            e2.seed = n->args[0].u.i & INT64_MAX;
            if (x->rng_active) {
                at::Generator d = default_gen(x);
                std::lock_guard<std::mutex> lock(d.mutex());
                d.set_current_seed((uint64_t)e2.seed);
            } else {
                djn_exec_reseed(x, &e2);
            }
            if (dyn) // a (pointless) DYNAMIC seed node still gets a well-formed, empty result
                djn_enc_array(dyn, 0);
            return DJN_OK;
        }
        if (run_rng_node(x, n, env, dyn))
            return DJN_OK;
        const djn_op_entry &entry = find_op(x, n);
        if (entry.denied)
            throw OpError(DJN_ERR_DENIED,
                          std::string("refused by the server's operator policy: ") + entry.denied);
        const auto &op = entry.h;
        const auto &schema = op.schema();
        if (entry.rng && !x->rng_active) // the session's random state, swapped in only when needed
            djn_exec_rng_enter(x, env);
        const auto &args = schema.arguments();
        if (n->nargs != args.size())
            throw OpError(DJN_ERR_ARGS, "expects " + std::to_string(args.size()) +
                                            " arguments, got " + std::to_string(n->nargs));
        const auto &rets = schema.returns();
        bool dynamic = n->flags & DJN_NODE_DYNAMIC;
        if (dynamic && !dyn)
            throw OpError(DJN_ERR_PROTO, "a DYNAMIC node must be the last node of its fragment");
        if (!dynamic && n->nouts != rets.size())
            throw OpError(DJN_ERR_ARGS, "expects " + std::to_string(rets.size()) +
                                            " outputs, got " + std::to_string(n->nouts));
        Ctx c{x, env, &schema, {}};
        SlabMode slab(env->slab);
        torch::jit::Stack stack;
        stack.reserve(args.size());
        for (size_t i = 0; i < args.size(); i++) {
            check_enum(n->args[i], args[i]);
            stack.push_back(to_ivalue(c, n->args[i], args[i].type(), args[i].name().c_str(),
                                      writes_arg(args[i])));
        }
        if (entry.guarded) {
            try {
                djn_guard_run(schema, stack);
            } catch (const djn_guard_error &e) {
                throw OpError(DJN_ERR_ARGS, e.what());
            }
        }
        at::Tensor eb_indices, eb_offsets;
        if (entry.ebag && !dynamic && n->nouts > 1) {
            eb_indices = stack[1].toTensor();
            eb_offsets = stack[2].toTensor();
        }
        op.callBoxed(&stack);
        if (stack.size() != rets.size())
            throw OpError(DJN_ERR_INTERNAL, "returned " + std::to_string(stack.size()) + " values");
        if (eb_indices.defined())
            fill_offset2bag(n->outs[1], stack[1], eb_indices, eb_offsets);
        if (entry.uninit && !x->vmu) // ATen's caching allocator recycles other sessions' bytes
            for (auto &v : stack)
                if (v.isTensor() && v.toTensor().defined())
                    v.toTensor().zero_();
        for (uint64_t h : c.written) { // a kernel may have grown an out= storage: account it
            char m[256] = {0};
            djn_status_t st = env->written_fn(env->ctx, h, m, sizeof m);
            if (st != DJN_OK)
                throw OpError(st, m);
        }
        if (dynamic) {
            djn_enc_array(dyn, (uint32_t)stack.size());
            for (auto &v : stack)
                encode_result(c, v, dyn);
            return DJN_OK;
        }
        for (size_t i = 0; i < rets.size(); i++) {
            const djn_value_t &o = n->outs[i];
            const c10::IValue &v = stack[i];
            if (v.isTensor()) {
                bind_result(c, v.toTensor(), o);
            } else if (v.isTensorList()) {
                auto l = v.toTensorList();
                if (o.kind != DJN_V_LIST || o.len != l.size())
                    throw OpError(DJN_ERR_ARGS, "output list length mismatch");
                for (size_t j = 0; j < l.size(); j++)
                    bind_result(c, l.get(j), o.u.items[j]);
            }
        }
        return DJN_OK;
    } catch (const OpError &e) {
        set_err(err, errlen, opname() + ": " + e.what());
        return e.st;
    } catch (const c10::Error &e) {
        set_err(err, errlen, opname() + " failed: " + e.what_without_backtrace());
        return DJN_ERR_OP;
    } catch (const std::exception &e) {
        set_err(err, errlen, opname() + " failed: " + e.what());
        return DJN_ERR_OP;
    }
}

} // extern "C"

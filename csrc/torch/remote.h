// remote.h: declarations shared by the thin C++ layer (csrc/torch/*.cpp). The C core
// (csrc/client) does the real work; these files adapt it to PyTorch's interfaces.
#pragma once

#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/stack.h>

#include <string>

extern "C" {
#include "djn_client.h"
}

namespace djinn {

// The process's client core (djn_client.h): one connection, one session.
inline djn_client_t *client() {
    return djn_client_default();
}

// Python exception classes, by kind (set from djinn/__init__.py at import).
enum class ErrorKind { Remote = 0, SessionLost = 1, Unreachable = 2, Resource = 3 };

// Throw the Python exception that matches a C status (djinn.RemoteError & subclasses).
[[noreturn]] void raise(djn_status_t st, const std::string &msg);
// Throw for the C core's last error on this thread.
[[noreturn]] void raise_last();
inline void check(djn_status_t st) {
    if (st != DJN_OK)
        raise_last();
}

// Refuse, at the first use on 'remote', a dtype the wire does not carry (quantized,
// bit-packed, sub-byte): nothing is recorded for it.
inline void check_dtype(at::ScalarType t) {
    TORCH_CHECK_TYPE(djn_dtype_size(static_cast<uint32_t>(t)) != 0, "djinn: tensors of dtype ", t,
                     " are not supported on 'remote'");
}

// Refuse a layout 'remote' does not hold (compressed sparse, mkldnn, ...), naming it and
// saying what to do (RemoteLayouts.cpp): NotImplementedError, nothing recorded.
[[noreturn]] void refuse_layout(at::Layout layout);

c10::Allocator *allocator();
// Pinned host memory (RemoteHostAllocator.cpp).
c10::Allocator *pinned_allocator();
bool is_pinned_ptr(const void *ptr);
// The current device of this thread: the one set, else the process's default, which the
// servers choose the first time (RemoteGuard.cpp, "Placement").
c10::DeviceIndex current_device();
void set_current_device(c10::DeviceIndex d); // -1: none (the default)
// Whether this thread's current device is still to be chosen by the servers; and what
// they chose (djn_client_place, with hints: Module.cpp's _place).
bool place_pending();
void set_placed(c10::DeviceIndex d);

inline uint64_t handle_of(const c10::Storage &s) {
    return static_cast<uint64_t>(reinterpret_cast<uintptr_t>(s.data_ptr().get()));
}

// A tensor's reference as the wire carries it.
djn_tref_t tref_of(const at::Tensor &t);

// A storage over a handle the server issued (data-dependent results).
c10::Storage adopt_storage(uint64_t handle, uint64_t nbytes, c10::DeviceIndex device);

// A tensor viewing `storage` with the given geometry.
at::Tensor make_view(const c10::Storage &storage, at::ScalarType dtype, c10::IntArrayRef sizes,
                     c10::IntArrayRef strides, int64_t offset);

// Generators of 'remote' (RemoteGenerator.cpp): their state lives on the server.
const at::Generator &default_generator(c10::DeviceIndex dev);
at::Generator new_generator(c10::DeviceIndex dev);
// The server-side id a random op records for `g` (0: the session's default generator);
// raises CUDA's error for a generator of another device.
int64_t generator_id(const at::Generator &g);

// Which devices an op's tensor arguments may mix (RemoteDevices.cpp): as on CUDA.
enum class DeviceRule : uint8_t {
    Exact,      // codegen device check: every tensor on one device
    CpuScalars, // TensorIterator-like: 0-dim CPU tensors may join
    TakesCpu,   // indexing, copies: CPU tensors are data
};
DeviceRule device_rule(const c10::FunctionSchema &s);
// Raises CUDA's "Expected all tensors to be on the same device" error where CUDA would.
void check_devices(DeviceRule rule, const c10::FunctionSchema &schema,
                   const torch::jit::Stack &stack, size_t first);

// An output whose CPU kernel returns another dtype or shape than the op's Meta kernel.
struct OutFix {
    int index;
    std::optional<at::ScalarType> dtype;
    std::optional<std::vector<int64_t>> sizes; // contiguous
};
// For a server device that is a CPU (RemoteCpuShapes.cpp): the outputs to adjust, or
// true when the op's outputs can only be described by the server (run it DYNAMIC).
bool cpu_output_fixes(const std::string &name, const std::string &overload,
                      const torch::jit::Stack &stack, size_t first, std::vector<OutFix> &fixes);
// Whether remote:dev is a CPU on the server.
bool server_device_is_cpu(c10::DeviceIndex dev);

// The boxed fallback: capture any op into the pending fragment.
void fallback(const c10::OperatorHandle &op, torch::jit::Stack *stack);
// Record aten::copy_(dst, src) between remote tensors, bytes as they are (no bits).
void record_copy(const at::Tensor &dst, const at::Tensor &src);
// Record an in-place unary op (aten::neg_, aten::conj_physical_) on a remote tensor.
void record_inplace(const char *op, const at::Tensor &t);
// dst = src between remote tensors, honouring the conjugate and negative bits.
void copy_remote(const at::Tensor &dst, const at::Tensor &src);
// A remote tensor's values in a fresh contiguous tensor without conj/neg bits.
at::Tensor resolved(const at::Tensor &t);

} // namespace djinn

namespace djinn {
// Grow or shrink a remote storage (resize_, set_, storage.resize_).
void resize_storage_bytes(const c10::Storage &storage, size_t newsize);
// Phase hint for the next `ops` compute nodes (and softmaxes), set where attention is
// dispatched.
void set_phase_hint(djn_phase_t p, int ops);
} // namespace djinn

namespace djinn {
// C++ shape functions (RemoteMeta.cpp): a kernel over the fallback's meta mirrors that
// replaces the mirrors on the stack by the op's meta results and returns true, or returns
// false, leaving the stack as it was, for a case it does not describe.
using MetaShapeFn = bool (*)(const c10::OperatorHandle &op, torch::jit::Stack &mirrors);
// The op's shape function, or nullptr: it then runs on the Meta device.
MetaShapeFn meta_shape_fn(const c10::FunctionSchema &schema);
// Whether shape functions are used (tests and benchmarks switch them off to compare).
bool meta_fast_enabled();
bool set_meta_fast(bool on); // returns the previous setting
// Every op with a shape function, and whether this torch's schema lets it be used.
std::vector<std::pair<std::string, bool>> meta_fast_ops();
// Functional structured ops the fallback captures whole ("add.Tensor", ...): each has a
// shape function for that overload here (RemoteKernels.cpp registers them).
std::vector<std::string> whole_ops();
// For one of those, the out= overload its node is recorded as; nullptr for any other op.
const char *whole_out_overload(const c10::FunctionSchema &schema);
// The fallback's meta cache: forget every entry; count misses by how they were inferred.
struct MetaCounters {
    uint64_t hits, fast, slow;
};
void meta_cache_clear();
MetaCounters meta_counters();
// Ops whose misses ran on the Meta device since the last meta_cache_clear(), with counts.
std::vector<std::pair<std::string, uint64_t>> meta_slow_ops();
} // namespace djinn

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

c10::Allocator *allocator();
c10::DeviceIndex current_device();
void set_current_device(c10::DeviceIndex d);

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

// The boxed fallback: capture any op into the pending fragment.
void fallback(const c10::OperatorHandle &op, torch::jit::Stack *stack);
// Record aten::copy_(dst, src) between remote tensors.
void record_copy(const at::Tensor &dst, const at::Tensor &src);

} // namespace djinn

namespace djinn {
// Grow or shrink a remote storage (resize_, set_, storage.resize_).
void resize_storage_bytes(const c10::Storage &storage, size_t newsize);
// Phase hint for the next nodes, set where attention is dispatched.
void set_phase_hint(djn_phase_t p);
} // namespace djinn

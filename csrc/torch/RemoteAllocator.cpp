// RemoteAllocator.cpp: storages of the 'remote' device hold a handle, not bytes.
//
// The data pointer of a remote storage *is* its handle (a fake address from the C
// core's bump counter, so storages never overlap as far as PyTorch's overlap checks can
// tell). The deleter queues a FREE that rides on the next message to the server.
#include <c10/core/Allocator.h>
#include <c10/core/StorageImpl.h>

#include "remote.h"

namespace djinn {
namespace {

void delete_handle(void *ctx) {
    djn_client_free(client(), static_cast<uint64_t>(reinterpret_cast<uintptr_t>(ctx)));
}

struct RemoteAllocator final : c10::Allocator {
    c10::DataPtr allocate(size_t nbytes) override {
        // refused here, at the allocation, as CUDA raises OutOfMemoryError at torch.empty:
        // the fragment never holds a storage the server would refuse
        c10::DeviceIndex dev = current_device();
        if (nbytes > DJN_MAX_TENSOR_BYTES)
            raise(DJN_ERR_OOM, "djinn: cannot allocate " + std::to_string(nbytes) +
                                   " bytes on remote:" + std::to_string(dev) +
                                   ": a storage may hold at most " +
                                   std::to_string(DJN_MAX_TENSOR_BYTES) + " bytes");
        uint64_t h = djn_client_alloc(client(), dev, nbytes);
        if (!h) {
            if (djn_client_errcode() != DJN_OK && djn_client_errcode() != DJN_ERR_NOMEM)
                raise_last(); // its server cannot be reached, or no such device
            raise(DJN_ERR_NOMEM, "djinn: out of host memory allocating a remote storage");
        }
        void *p = reinterpret_cast<void *>(static_cast<uintptr_t>(h));
        return {p, p, &delete_handle, c10::Device(c10::DeviceType::PrivateUse1, dev)};
    }
    c10::DeleterFnPtr raw_deleter() const override { return nullptr; }
    void copy_data(void *, const void *, std::size_t) const override {
        TORCH_CHECK(false, "djinn: remote storages cannot be copied byte-wise on the client; "
                           "use tensor.copy_() or .cpu()");
    }
};

RemoteAllocator g_allocator;

} // namespace

c10::Allocator *allocator() {
    return &g_allocator;
}

c10::Storage adopt_storage(uint64_t handle, uint64_t nbytes, c10::DeviceIndex device) {
    djn_client_adopt(client(), device, handle, nbytes);
    void *p = reinterpret_cast<void *>(static_cast<uintptr_t>(handle));
    c10::DataPtr dp(p, p, &delete_handle, c10::Device(c10::DeviceType::PrivateUse1, device));
    return c10::Storage(c10::make_intrusive<c10::StorageImpl>(c10::StorageImpl::use_byte_size_t(),
                                                              nbytes, std::move(dp), &g_allocator,
                                                              /*resizable=*/true));
}

} // namespace djinn

REGISTER_ALLOCATOR(c10::DeviceType::PrivateUse1, &djinn::g_allocator);

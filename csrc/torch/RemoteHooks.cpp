// RemoteHooks.cpp: PyTorch's PrivateUse1 hooks for 'remote'. Random numbers are drawn
// on the server (per-session generators); the generators handed out here name them
// (RemoteGenerator.cpp).
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/core/Generator.h>
#include <ATen/detail/PrivateUse1HooksInterface.h>
#include <c10/core/CPUAllocator.h>

#include <mutex>
#include <vector>

#include "remote.h"

namespace djinn {
namespace {

struct RemoteHooks final : at::PrivateUse1HooksInterface {
    bool isBuilt() const override { return true; }
    bool isAvailable() const override { return djn_client_device_count(client()) > 0; }
    bool hasPrimaryContext(c10::DeviceIndex) const override { return true; }
    c10::DeviceIndex deviceCount() const override {
        return static_cast<c10::DeviceIndex>(djn_client_device_count(client()));
    }
    void setCurrentDevice(c10::DeviceIndex d) const override { set_current_device(d); }
    c10::DeviceIndex getCurrentDevice() const override { return current_device(); }
    c10::DeviceIndex exchangeDevice(c10::DeviceIndex d) const override {
        auto old = current_device();
        set_current_device(d);
        return old;
    }
    c10::DeviceIndex maybeExchangeDevice(c10::DeviceIndex d) const override {
        return exchangeDevice(d);
    }
    const at::Generator &getDefaultGenerator(c10::DeviceIndex idx) const override {
        return default_generator(idx < 0 ? current_device() : idx);
    }
    at::Generator getNewGenerator(c10::DeviceIndex idx) const override {
        return new_generator(idx);
    }
    at::Device getDeviceFromPtr(void *) const override {
        return at::Device(c10::DeviceType::PrivateUse1, current_device());
    }
    bool isPinnedPtr(const void *p) const override { return is_pinned_ptr(p); }
    c10::Allocator *getPinnedMemoryAllocator() const override { return pinned_allocator(); }
    void resizePrivateUse1Bytes(const c10::Storage &storage, size_t newsize) const override;
};

RemoteHooks *g_hooks = [] {
    auto *h = new RemoteHooks();
    at::RegisterPrivateUse1HooksInterface(h);
    return h;
}();

} // namespace

// Grow (or shrink) a remote storage: a new handle receives the old bytes on the server
// (an aten::copy_ of the common prefix), then the storage takes the new data pointer;
// the old handle is freed by its deleter.
void resize_storage_bytes(const c10::Storage &storage, size_t newsize) {
    auto *impl = storage.unsafeGetStorageImpl();
    size_t old = impl->nbytes();
    if (newsize == old)
        return;
    auto dev = impl->device().index();
    c10::DeviceGuard guard(c10::Device(c10::DeviceType::PrivateUse1, dev));
    c10::DataPtr fresh = allocator()->allocate(newsize);
    size_t common = std::min(old, newsize);
    if (common) {
        c10::Storage dst_storage(c10::make_intrusive<c10::StorageImpl>(
            c10::StorageImpl::use_byte_size_t(), newsize,
            c10::DataPtr(fresh.get(), fresh.get(), nullptr, fresh.device()), allocator(), false));
        auto dst = make_view(dst_storage, at::kByte, {(int64_t)common}, {1}, 0);
        auto src = make_view(storage, at::kByte, {(int64_t)common}, {1}, 0);
        record_copy(dst, src);
    }
    impl->set_data_ptr_noswap(std::move(fresh));
    impl->set_nbytes(newsize);
}

void RemoteHooks::resizePrivateUse1Bytes(const c10::Storage &storage, size_t newsize) const {
    resize_storage_bytes(storage, newsize);
}

} // namespace djinn

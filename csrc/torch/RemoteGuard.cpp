// RemoteGuard.cpp: the device guard for 'remote'. The current device is thread-local
// state on the client; streams and events are trivial because the client sees one
// ordered stream per device (the server orders work per device).
#include <c10/core/impl/DeviceGuardImplInterface.h>

#include "remote.h"

namespace djinn {
namespace {

thread_local c10::DeviceIndex t_device = 0;
constexpr auto kPU1 = c10::DeviceType::PrivateUse1;

struct RemoteGuardImpl final : c10::impl::DeviceGuardImplInterface {
    c10::DeviceType type() const override { return kPU1; }
    c10::Device exchangeDevice(c10::Device d) const override {
        c10::Device old(kPU1, t_device);
        t_device = d.index() < 0 ? 0 : d.index();
        return old;
    }
    c10::Device getDevice() const override { return c10::Device(kPU1, t_device); }
    void setDevice(c10::Device d) const override { t_device = d.index() < 0 ? 0 : d.index(); }
    void uncheckedSetDevice(c10::Device d) const noexcept override {
        t_device = d.index() < 0 ? 0 : d.index();
    }
    c10::Stream getStream(c10::Device d) const noexcept override {
        return c10::Stream(c10::Stream::DEFAULT, d);
    }
    c10::Stream getDefaultStream(c10::Device d) const override {
        return c10::Stream(c10::Stream::DEFAULT, d);
    }
    c10::Stream exchangeStream(c10::Stream s) const noexcept override {
        return c10::Stream(c10::Stream::DEFAULT, s.device());
    }
    // Called by the autograd engine at its first backward pass, even a CPU-only one, to
    // size its device thread pool. Connecting there would start a server for programs
    // that never use 'remote', so before the first connection this reports the most
    // devices a server can have; idle engine threads cost nothing.
    c10::DeviceIndex deviceCount() const noexcept override {
        int n = djn_client_session_id(client()) ? djn_client_device_count(client()) : 16;
        return static_cast<c10::DeviceIndex>(n);
    }
    void record(void **, const c10::Stream &, const c10::DeviceIndex,
                const c10::EventFlag) const override {}
    void block(void *, const c10::Stream &) const override {}
    bool queryEvent(void *) const override { return true; }
    void destroyEvent(void *, const c10::DeviceIndex) const noexcept override {}
    bool queryStream(const c10::Stream &) const override { return true; }
    void synchronizeStream(const c10::Stream &) const override {
        check(djn_client_flush(client(), true));
    }
    void synchronizeDevice(const c10::DeviceIndex) const override {
        check(djn_client_flush(client(), true));
    }
};

} // namespace

c10::DeviceIndex current_device() {
    return t_device;
}
void set_current_device(c10::DeviceIndex d) {
    t_device = d;
}

C10_REGISTER_GUARD_IMPL(PrivateUse1, RemoteGuardImpl);

} // namespace djinn

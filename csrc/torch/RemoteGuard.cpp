// RemoteGuard.cpp: the device guard for 'remote'. The current device is thread-local
// state on the client; streams and events are trivial because the client sees one
// ordered stream per device (the server orders work per device).
//
// Placement. A thread that never chose a device (set_device, a guard on remote:i) uses
// the process's default device, which the servers choose the first time it is needed
// (djn_client_place: the device holding this process's model, else the least loaded).
// So 'remote' without an index lands there, and current_device() reports it. A guard
// that only saves and restores the device (exchangeDevice around work on remote:i)
// does not make the servers choose: it saves "no choice" (-1) and restores it.
#include <c10/core/impl/DeviceGuardImplInterface.h>

#include <atomic>

#include "remote.h"

namespace djinn {
namespace {

thread_local c10::DeviceIndex t_device = -1; // -1: none chosen on this thread
std::atomic<int> g_placed{-1};               // the process's default, once known
constexpr auto kPU1 = c10::DeviceType::PrivateUse1;

c10::DeviceIndex idx(c10::Device d) {
    return d.index() < 0 ? -1 : d.index();
}

// The device this thread would use now, without asking the servers: -1 if not known.
c10::DeviceIndex known_device() {
    return t_device >= 0 ? t_device : static_cast<c10::DeviceIndex>(g_placed.load());
}

struct RemoteGuardImpl final : c10::impl::DeviceGuardImplInterface {
    c10::DeviceType type() const override { return kPU1; }
    c10::Device exchangeDevice(c10::Device d) const override {
        c10::Device old(kPU1, known_device());
        t_device = idx(d);
        return old;
    }
    c10::Device getDevice() const override { return c10::Device(kPU1, current_device()); }
    void setDevice(c10::Device d) const override { t_device = idx(d); }
    void uncheckedSetDevice(c10::Device d) const noexcept override { t_device = idx(d); }
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
    c10::DeviceIndex d = known_device();
    if (d >= 0)
        return d;
    int placed = -1;
    djn_client_place(client(), nullptr, nullptr, 0, &placed); // no server: 0, asked again later
    if (placed < 0)
        return 0;
    g_placed.store(placed);
    return static_cast<c10::DeviceIndex>(placed);
}
void set_current_device(c10::DeviceIndex d) {
    t_device = d < 0 ? -1 : d;
}
bool place_pending() {
    return known_device() < 0;
}
void set_placed(c10::DeviceIndex d) {
    g_placed.store(d);
}

C10_REGISTER_GUARD_IMPL(PrivateUse1, RemoteGuardImpl);

} // namespace djinn

// RemoteHostAllocator.cpp: pinned host memory for 'remote' (tensor.pin_memory(),
// DataLoader(pin_memory=True)).
//
// Host buffers that uploads to the server read from: page-aligned anonymous mappings,
// locked in RAM with mlock(2) so they are never swapped out while a transfer reads
// them, and registered so that is_pinned() knows them. The kernel bounds locked memory
// per process (RLIMIT_MEMLOCK, often 8 MiB in containers): past it the buffer is still
// handed out and registered, unlocked, and PyTorch warns once, naming the limit.
// Rejected: failing the allocation past the limit (CUDA's cudaHostAlloc has no such
// limit, so code written for CUDA, a DataLoader that pins every batch, would fail here),
// and the plain CPU allocator (is_pinned() would be false after pin_memory()).
#include <c10/core/Allocator.h>
#include <c10/util/Exception.h>

#include <sys/mman.h>
#include <sys/resource.h>

#include <map>
#include <mutex>

#include "remote.h"

namespace djinn {
namespace {

std::mutex &g_mu = *new std::mutex;
auto &g_blocks = *new std::map<uintptr_t, size_t>; // base -> mapped length

void host_free(void *p) {
    if (!p)
        return;
    size_t len = 0;
    {
        std::lock_guard<std::mutex> l(g_mu);
        auto it = g_blocks.find(reinterpret_cast<uintptr_t>(p));
        if (it == g_blocks.end())
            return;
        len = it->second;
        g_blocks.erase(it);
    }
    munlock(p, len);
    munmap(p, len);
}

struct HostAllocator final : c10::Allocator {
    c10::DataPtr allocate(size_t n) override {
        size_t len = n ? n : 1;
        void *p = mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        TORCH_CHECK_WITH(OutOfMemoryError, p != MAP_FAILED, "djinn: cannot allocate ", n,
                         " bytes of pinned host memory");
        if (mlock(p, len) != 0) {
            struct rlimit rl {};
            getrlimit(RLIMIT_MEMLOCK, &rl);
            TORCH_WARN_ONCE("djinn: pinned host memory beyond the memlock limit (ulimit -l: ",
                            rl.rlim_cur == RLIM_INFINITY ? std::string("unlimited")
                                                         : std::to_string(rl.rlim_cur) + " bytes",
                            ") is registered but not locked in RAM; raise the limit to lock it");
        }
        {
            std::lock_guard<std::mutex> l(g_mu);
            g_blocks.emplace(reinterpret_cast<uintptr_t>(p), len);
        }
        return {p, p, &host_free, c10::Device(c10::DeviceType::CPU)};
    }
    c10::DeleterFnPtr raw_deleter() const override { return &host_free; }
    void copy_data(void *dest, const void *src, std::size_t count) const override {
        std::memcpy(dest, src, count);
    }
};

HostAllocator g_host;

} // namespace

c10::Allocator *pinned_allocator() {
    return &g_host;
}

bool is_pinned_ptr(const void *ptr) {
    auto a = reinterpret_cast<uintptr_t>(ptr);
    std::lock_guard<std::mutex> l(g_mu);
    auto it = g_blocks.upper_bound(a);
    if (it == g_blocks.begin())
        return false;
    --it;
    return a < it->first + it->second;
}

} // namespace djinn

// RemoteGenerator.cpp: random generators of the 'remote' device, held by the server.
//
// Random numbers are drawn on the server, so the state of every generator lives there,
// per session and device (executor.cpp's SessionRng): the session's default generator
// (id 0: torch.manual_seed, torch.remote.get_rng_state) and one per
// torch.Generator(device='remote') the client makes (ids from 1). A RemoteGenerator on
// the client names its server generator and keeps only what PyTorch asks without a round
// trip (the seed it was given). Everything that changes the state is a node of the
// fragment, in program order with the random ops around it:
//   manual_seed    -> djinn::rng_seed(id, seed)   (id 0: djinn::seed, as torch.manual_seed)
//   get_state      -> djinn::rng_get_state(id), a DYNAMIC node: flush, then fetch the bytes
//   set_state      -> upload the bytes, djinn::rng_set_state(id, state)
//   clone          -> djinn::rng_copy(new id, id)
//   destruction    -> djinn::rng_free(id), recorded with the next generator node
// A random op given a generator records its id; the server draws from that generator.
#include <c10/core/GeneratorImpl.h>

#include <atomic>
#include <deque>
#include <mutex>
#include <random>
#include <vector>

#include "remote.h"

namespace djinn {
namespace {

std::atomic<int64_t> g_next_id{1};
// Ids the client dropped (never destroyed: generators may outlive static destructors).
std::mutex &g_free_mu = *new std::mutex;
auto &g_freed = *new std::vector<std::pair<c10::DeviceIndex, int64_t>>;

struct Lock {
    djn_client_t *c;
    explicit Lock(djn_client_t *cl) : c(cl) { djn_client_lock(c); }
    ~Lock() { djn_client_unlock(c); }
};

// Record djinn::<op>(int args..., [tensor]) on `dev` (the caller holds the lock).
void record_rng(c10::DeviceIndex dev, const char *op, std::initializer_list<int64_t> ints,
                const at::Tensor *tensor, uint32_t flags) {
    djn_client_t *C = client();
    uint32_t nargs = (uint32_t)ints.size() + (tensor ? 1 : 0);
    check(djn_client_rec_begin(C, dev, op, "", nargs));
    djn_buf_t *b = djn_client_rec_buf(C);
    for (int64_t v : ints)
        djn_enc_int(b, v);
    if (tensor) {
        djn_tref_t r;
        try {
            r = tref_of(*tensor);
        } catch (...) {
            djn_client_rec_abort(C);
            throw;
        }
        djn_client_rec_tensor(C, &r, false);
    }
    djn_client_rec_outs(C, 0);
    check(djn_client_rec_end(C, flags, DJN_CLASS_MEMORY, DJN_PHASE_NONE));
}

void drain_freed() {
    std::vector<std::pair<c10::DeviceIndex, int64_t>> ids;
    {
        std::lock_guard<std::mutex> l(g_free_mu);
        ids.swap(g_freed);
    }
    for (auto &[dev, id] : ids)
        record_rng(dev, "djinn::rng_free", {id}, nullptr, 0);
}

struct RemoteGenerator final : c10::GeneratorImpl {
    RemoteGenerator(c10::DeviceIndex dev, int64_t id)
        : c10::GeneratorImpl(c10::Device(c10::DeviceType::PrivateUse1, dev),
                             c10::DispatchKeySet(c10::DispatchKey::PrivateUse1)),
          id_(id) {}
    ~RemoteGenerator() override {
        if (id_ == 0)
            return;
        std::lock_guard<std::mutex> l(g_free_mu);
        g_freed.emplace_back(device().index(), id_);
    }

    int64_t id() const { return id_; }

    void set_current_seed(uint64_t seed) override {
        seed_ = seed;
        if (id_ == 0) { // the session's generator: torch.manual_seed's path
            djn_client_seed(client(), seed);
            return;
        }
        Lock l(client());
        drain_freed();
        record_rng(device().index(), "djinn::rng_seed", {id_, (int64_t)(seed & INT64_MAX)}, nullptr,
                   0);
    }
    uint64_t current_seed() const override { return seed_; }
    uint64_t seed() override {
        static std::random_device rd;
        uint64_t s = ((uint64_t)rd() << 32 | rd()) & INT64_MAX;
        set_current_seed(s);
        return s;
    }
    void set_offset(uint64_t) override {
        TORCH_CHECK(false, "djinn: generators on 'remote' have no offset (use get_state and "
                           "set_state)");
    }
    uint64_t get_offset() const override {
        TORCH_CHECK(false, "djinn: generators on 'remote' have no offset (use get_state and "
                           "set_state)");
    }
    c10::intrusive_ptr<c10::TensorImpl> get_state() const override {
        djn_client_t *C = client();
        c10::DeviceIndex dev = device().index();
        at::Tensor remote;
        {
            Lock l(C);
            record_rng(dev, "djinn::rng_get_state", {id_}, nullptr, DJN_NODE_DYNAMIC);
            djn_reply_t *reply = nullptr;
            const djn_value_t *res = nullptr;
            check(djn_client_run_dynamic(C, &reply, &res));
            struct Free {
                djn_reply_t *r;
                ~Free() { djn_reply_free(&r); }
            } f{reply};
            djn_dyn_tensor_t dt;
            TORCH_CHECK(res->kind == DJN_V_LIST && res->len == 1 &&
                            djn_dyn_tensor_decode(&res->u.items[0], &dt),
                        "djinn: malformed generator state from the server");
            std::vector<int64_t> sizes(dt.ref.sizes, dt.ref.sizes + dt.ref.ndim);
            std::vector<int64_t> strides(dt.ref.strides, dt.ref.strides + dt.ref.ndim);
            remote =
                make_view(adopt_storage(dt.ref.handle, dt.nbytes, dev),
                          static_cast<at::ScalarType>(dt.ref.dtype), sizes, strides, dt.ref.offset);
        }
        return remote.to(at::kCPU).contiguous().unsafeReleaseIntrusivePtr();
    }
    void set_state(const c10::TensorImpl &new_state) override {
        at::Tensor st = at::Tensor(c10::intrusive_ptr<c10::TensorImpl>::reclaim_copy(
            const_cast<c10::TensorImpl *>(&new_state)));
        TORCH_CHECK_TYPE(st.scalar_type() == at::kByte && st.device().is_cpu(),
                         "RNG state must be a torch.ByteTensor on the CPU");
        c10::DeviceIndex dev = device().index();
        at::Tensor remote = st.contiguous().to(c10::Device(c10::DeviceType::PrivateUse1, dev));
        Lock l(client());
        drain_freed();
        record_rng(dev, "djinn::rng_set_state", {id_}, &remote, 0);
    }

  private:
    RemoteGenerator *clone_impl() const override {
        auto *g = new RemoteGenerator(device().index(), g_next_id++);
        g->seed_ = seed_;
        Lock l(client());
        record_rng(device().index(), "djinn::rng_copy", {g->id_, id_}, nullptr, 0);
        return g;
    }

    int64_t id_;
    uint64_t seed_ = c10::default_rng_seed_val;
};

} // namespace

const at::Generator &default_generator(c10::DeviceIndex dev) {
    static std::mutex &mu = *new std::mutex;
    static std::deque<at::Generator> &gens = *new std::deque<at::Generator>; // stable references
    std::lock_guard<std::mutex> lock(mu);
    size_t i = dev < 0 ? 0 : static_cast<size_t>(dev);
    while (gens.size() <= i)
        gens.push_back(at::make_generator<RemoteGenerator>((c10::DeviceIndex)gens.size(), 0));
    return gens[i];
}

at::Generator new_generator(c10::DeviceIndex dev) {
    return at::make_generator<RemoteGenerator>(dev < 0 ? current_device() : dev, g_next_id++);
}

int64_t generator_id(const at::Generator &g) {
    TORCH_CHECK(g.device().type() == c10::DeviceType::PrivateUse1,
                "Expected a 'remote' device type for generator but found '", g.device().type(),
                "'");
    auto *r = dynamic_cast<RemoteGenerator *>(g.unsafeGetGeneratorImpl());
    TORCH_CHECK(r, "djinn: a generator of device 'remote' that djinn did not make");
    return r->id();
}

} // namespace djinn

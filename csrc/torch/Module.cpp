// Module.cpp: djinn._C, the Python entry points. Everything that may wait on the
// network releases the GIL first.
#include <torch/csrc/Generator.h>
#include <torch/csrc/utils/device_lazy_init.h>
#include <torch/extension.h>

#include "remote.h"

namespace djinn {
extern PyObject *g_error_types[4];
PyObject *error_type(djn_status_t st);
void register_proto(pybind11::module_ &m);  // Proto.cpp
void register_models(pybind11::module_ &m); // Models.cpp
} // namespace djinn

namespace py = pybind11;
using release = py::call_guard<py::gil_scoped_release>;

namespace {

djn_client_t *C() {
    return djn_client_default();
}

// A struct of counters as a dict, by the descriptor table (djn_stats.h).
py::dict fields_to_py(djn_stats_scope_t scope, const void *base) {
    uint32_t n;
    const djn_stats_field_t *f = djn_stats_fields(&n);
    py::dict d;
    for (uint32_t i = 0; i < n; i++) {
        if (f[i].scope != scope)
            continue;
        const char *p = static_cast<const char *>(base) + f[i].offset;
        if (f[i].is_float)
            d[f[i].name] = *reinterpret_cast<const double *>(p);
        else
            d[f[i].name] = *reinterpret_cast<const uint64_t *>(p);
    }
    return d;
}

// Called with the GIL held: set the typed Python exception (djinn.RemoteError & co).
void check_py(djn_status_t st) {
    if (st != DJN_OK) {
        djn_status_t code = djn_client_errcode();
        const char *msg = djn_client_errmsg();
        PyErr_SetString(djinn::error_type(code == DJN_OK ? st : code),
                        msg && *msg ? msg : djn_status_str(st));
        throw py::error_already_set();
    }
}

} // namespace

PYBIND11_MODULE(_C, m) {
    m.doc() = "Djinn's native core: the 'remote' PrivateUse1 backend";
    m.def("_register_errors",
          [](py::object remote, py::object lost, py::object unreachable, py::object resource) {
              py::object objs[4] = {remote, lost, unreachable, resource};
              for (int i = 0; i < 4; i++) {
                  Py_XINCREF(objs[i].ptr());
                  djinn::g_error_types[i] = objs[i].ptr();
              }
          });
    m.def("_set_server_binary",
          [](const std::string &p) { djn_client_set_server_binary(C(), p.c_str()); });
    m.def("_init", []() {
        torch::utils::register_fork_handler_for_device_init(c10::DeviceType::PrivateUse1);
    });
    m.def("_connect", []() {
        djn_status_t st;
        {
            py::gil_scoped_release r;
            st = djn_client_connect(C());
        }
        check_py(st);
    });
    m.def(
        "_device_count", []() { return djn_client_device_count(C()); }, release());
    m.def("_device_name", [](int i) { return std::string(djn_client_device_name(C(), i)); });
    m.def("_endpoint", []() { return std::string(djn_client_endpoint(C())); });
    m.def("_session_id", []() { return djn_client_session_id(C()); });
    m.def(
        "_get_device", []() { return (int)djinn::current_device(); }, release());
    m.def("_place_pending", []() { return djinn::place_pending(); });
    // Have the servers choose the default device now, with hints: a model of their store
    // and (hash_hi, hash_lo, nbytes) of weights about to be uploaded (PROTOCOL.md 5.6).
    m.def("_place", [](std::optional<std::string> model,
                       const std::vector<std::tuple<uint64_t, uint64_t, uint64_t>> &hashes) {
        if (!djinn::place_pending())
            return (int)djinn::current_device();
        std::vector<djn_place_hash_t> h;
        for (size_t i = 0; i < hashes.size() && i < DJN_MAX_PLACE_HASHES; i++)
            h.push_back({std::get<0>(hashes[i]), std::get<1>(hashes[i]), std::get<2>(hashes[i])});
        int dev = -1;
        djn_status_t st;
        {
            py::gil_scoped_release r;
            st = djn_client_place(C(), model ? model->c_str() : nullptr, h.data(),
                                  (uint32_t)h.size(), &dev);
        }
        check_py(st);
        djinn::set_placed((c10::DeviceIndex)dev);
        return dev;
    });
    // (hash_hi, hash_lo, nbytes): the plain XXH3-128 of a contiguous CPU tensor's bytes or
    // of a buffer, as an upload of them is offered to the server (HAVE, PLACE).
    m.def("_content_hash", [](const at::Tensor &t) {
        TORCH_CHECK(t.device().is_cpu(), "djinn: _content_hash takes a CPU tensor");
        at::Tensor c = t.contiguous();
        uint64_t n = c.nbytes(), h[2];
        {
            py::gil_scoped_release r;
            djn_client_content_hash(c.data_ptr(), n, h);
        }
        return std::make_tuple(h[0], h[1], n);
    });
    m.def("_content_hash_buffer", [](py::buffer b) {
        py::buffer_info bi = b.request();
        uint64_t n = (uint64_t)(bi.size * bi.itemsize), h[2];
        {
            py::gil_scoped_release r;
            djn_client_content_hash(bi.ptr, n, h);
        }
        return std::make_tuple(h[0], h[1], n);
    });
    m.def("_set_device", [](int d) { djinn::set_current_device((c10::DeviceIndex)d); });
    m.def("_synchronize", []() {
        djn_status_t st;
        {
            py::gil_scoped_release r;
            st = djn_client_flush(C(), true);
        }
        check_py(st);
    });
    m.def("_set_qos", [](const std::string &name) {
        int q = djn_client_qos_parse(name.c_str());
        if (q < 0)
            throw py::value_error("djinn.qos: the class must be 'auto', 'realtime', 'interactive' "
                                  "or 'batch', got '" +
                                  name + "'");
        djn_status_t st;
        {
            py::gil_scoped_release r;
            st = djn_client_set_qos(C(), q);
        }
        check_py(st);
    });
    m.def("_qos", []() {
        static const char *names[] = {"auto", "realtime", "interactive", "batch"};
        return std::string(names[djn_client_qos(C())]);
    });
    m.def("_manual_seed", [](uint64_t s) { djn_client_seed(C(), s); });
    m.def("_get_default_generator", [](int idx) {
        return py::reinterpret_steal<py::object>(
            THPGenerator_initDefaultGenerator(djinn::default_generator((c10::DeviceIndex)idx)));
    });
    m.def(
        "_shutdown", []() { djn_client_shutdown(C()); }, release());
    m.def("_counters", []() {
        djn_stats_client_t c;
        djn_client_counters(C(), &c);
        return fields_to_py(DJN_STATS_SCOPE_CLIENT, &c);
    });
    m.def("_reset_counters", []() { djn_client_counters_reset(C()); });
    // The fallback's meta cache and its C++ shape functions (tests, benchmarks)
    m.def("_meta_cache_clear", []() { djinn::meta_cache_clear(); });
    m.def("_meta_counters", []() {
        auto c = djinn::meta_counters();
        py::dict d;
        d["hits"] = c.hits;
        d["fast"] = c.fast;
        d["slow"] = c.slow;
        return d;
    });
    m.def("_meta_slow_ops", []() { return djinn::meta_slow_ops(); });
    m.def("_meta_fast", [](bool on) { return djinn::set_meta_fast(on); });
    m.def("_meta_fast_ops", []() { return djinn::meta_fast_ops(); });
    m.def("_stats_fields", []() {
        // the descriptor table: [(scope, wire name, python key, doc)]
        static const char *scopes[] = {"server", "session", "device", "client"};
        uint32_t n;
        const djn_stats_field_t *f = djn_stats_fields(&n);
        py::list l;
        for (uint32_t i = 0; i < n; i++)
            l.append(py::make_tuple(scopes[f[i].scope], f[i].name, f[i].py, f[i].doc));
        return l;
    });
    m.def("_srg", []() {
        std::vector<djn_srg_node_t> nodes(65536);
        uint64_t fp[2];
        uint32_t n = djn_client_srg(C(), nodes.data(), (uint32_t)nodes.size(), fp);
        py::list l;
        static const char *phases[] = {"none", "prefill", "decode", "training"};
        for (uint32_t i = 0; i < n && i < nodes.size(); i++) {
            const auto &x = nodes[i];
            std::string op = std::string(x.op) + (x.overload[0] ? "." : "") + x.overload;
            py::dict sem;
            sem["op_class"] = x.cls == DJN_CLASS_COMPUTE ? "compute" : "memory";
            sem["phase"] = phases[x.phase];
            l.append(py::make_tuple(op, sem, x.persistent ? "persistent" : "ephemeral"));
        }
        char hex[40];
        snprintf(hex, sizeof hex, "%016llx%016llx", (unsigned long long)fp[0],
                 (unsigned long long)fp[1]);
        return py::make_tuple(l, std::string(hex));
    });
    m.def("_servers", []() {
        // DJINN_SERVER's servers in order: (endpoint, first device, devices, session id)
        py::list l;
        int n = djn_client_server_count(C());
        for (int i = 0; i < n; i++) {
            djn_client_server_t s;
            if (djn_client_server_info(C(), i, &s))
                l.append(py::make_tuple(std::string(s.endpoint), s.first_device, s.ndevices,
                                        s.session_id));
        }
        return l;
    });
    m.def("_device_server", [](int device) {
        int local = -1, server;
        {
            py::gil_scoped_release r;
            server = djn_client_device_server(C(), device, &local);
        }
        check_py(server < 0 ? DJN_ERR_DEVICE : DJN_OK);
        return py::make_tuple(server, local);
    });
    m.def("_server_stats", [](int device) {
        auto rep = std::make_unique<djn_stats_rep_t>();
        djn_status_t st;
        {
            py::gil_scoped_release r;
            st = djn_client_stats(C(), device, rep.get());
        }
        check_py(st);
        py::dict d = fields_to_py(DJN_STATS_SCOPE_SESSION, &rep->session);
        if (rep->has_server)
            for (auto kv : fields_to_py(DJN_STATS_SCOPE_SERVER, &rep->server))
                d[kv.first] = kv.second;
        py::list devs;
        for (uint32_t i = 0; i < rep->ndevices; i++) {
            py::dict dd = fields_to_py(DJN_STATS_SCOPE_DEVICE, &rep->devices[i]);
            dd["name"] = std::string(rep->devices[i].name);
            devs.append(dd);
        }
        d["devices"] = devs;
        return d;
    });
    djinn::register_proto(m);
    djinn::register_models(m);
}

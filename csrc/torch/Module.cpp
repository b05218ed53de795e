// Module.cpp: djinn._C, the Python entry points. Everything that may wait on the
// network releases the GIL first.
#include <torch/csrc/utils/device_lazy_init.h>
#include <torch/extension.h>

#include "remote.h"

namespace djinn {
extern PyObject *g_error_types[4];
PyObject *error_type(djn_status_t st);
} // namespace djinn

namespace py = pybind11;
using release = py::call_guard<py::gil_scoped_release>;

namespace {

py::object to_py(const djn_value_t *v) {
    if (!v)
        return py::none();
    switch (v->kind) {
    case DJN_V_NONE: return py::none();
    case DJN_V_BOOL: return py::bool_(v->u.b);
    case DJN_V_INT: return py::int_(v->u.i);
    case DJN_V_FLOAT: return py::float_(v->u.f);
    case DJN_V_STR: return py::str(std::string(v->u.s, v->len));
    case DJN_V_LIST: {
        py::list l;
        for (uint32_t i = 0; i < v->len; i++) l.append(to_py(&v->u.items[i]));
        return l;
    }
    case DJN_V_MAP: {
        py::dict d;
        for (uint32_t i = 0; i < v->len; i++) d[to_py(&v->u.items[2 * i])] = to_py(&v->u.items[2 * i + 1]);
        return d;
    }
    default: return py::none();
    }
}

// Called with the GIL held: set the typed Python exception (djinn.RemoteError & co).
void check_py(djn_status_t st) {
    if (st != DJN_OK) {
        djn_status_t code = djn_client_errcode();
        const char *msg = djn_client_errmsg();
        PyErr_SetString(djinn::error_type(code == DJN_OK ? st : code), msg && *msg ? msg : djn_status_str(st));
        throw py::error_already_set();
    }
}

} // namespace

PYBIND11_MODULE(_C, m) {
    m.doc() = "Djinn's native core: the 'remote' PrivateUse1 backend";
    m.def("_register_errors", [](py::object remote, py::object lost, py::object unreachable, py::object resource) {
        py::object objs[4] = {remote, lost, unreachable, resource};
        for (int i = 0; i < 4; i++) {
            Py_XINCREF(objs[i].ptr());
            djinn::g_error_types[i] = objs[i].ptr();
        }
    });
    m.def("_set_server_binary", [](const std::string &p) { djn_client_set_server_binary(p.c_str()); });
    m.def("_init", []() {
        torch::utils::register_fork_handler_for_device_init(c10::DeviceType::PrivateUse1);
    });
    m.def("_connect", []() {
        djn_status_t st;
        {
            py::gil_scoped_release r;
            st = djn_client_connect();
        }
        check_py(st);
    });
    m.def("_device_count", []() { return djn_client_device_count(); }, release());
    m.def("_device_name", [](int i) { return std::string(djn_client_device_name(i)); });
    m.def("_endpoint", []() { return std::string(djn_client_endpoint()); });
    m.def("_session_id", []() { return djn_client_session_id(); });
    m.def("_get_device", []() { return (int)djinn::current_device(); });
    m.def("_set_device", [](int d) { djinn::set_current_device((c10::DeviceIndex)d); });
    m.def("_synchronize", []() {
        djn_status_t st;
        {
            py::gil_scoped_release r;
            st = djn_client_flush(true);
        }
        check_py(st);
    });
    m.def("_manual_seed", [](uint64_t s) { djn_client_seed(s); });
    m.def("_shutdown", []() { djn_client_shutdown(); }, release());
    m.def("_counters", []() {
        djn_client_counters_t c;
        djn_client_counters(&c);
        py::dict d;
        d["bytes_sent"] = c.bytes_sent;
        d["bytes_received"] = c.bytes_recv;
        d["messages"] = c.messages;
        d["flushes"] = c.flushes;
        d["nodes"] = c.nodes;
        d["uploads"] = c.uploads;
        d["upload_bytes"] = c.upload_bytes;
        d["fetches"] = c.fetches;
        d["fetch_bytes"] = c.fetch_bytes;
        d["fetch_cache_hits"] = c.cache_hits;
        d["dynamic_syncs"] = c.dynamic_syncs;
        d["dedup_bytes"] = c.dedup_bytes;
        d["plan_cache_sends"] = c.cached_sends;
        d["plan_cache_resends"] = c.plan_evictions;
        return d;
    });
    m.def("_reset_counters", []() { djn_client_counters_reset(); });
    m.def("_srg", []() {
        std::vector<djn_srg_node_t> nodes(65536);
        uint64_t fp[2];
        uint32_t n = djn_client_srg(nodes.data(), (uint32_t)nodes.size(), fp);
        py::list l;
        static const char *phases[] = {"none", "prefill", "decode"};
        for (uint32_t i = 0; i < n && i < nodes.size(); i++) {
            const auto &x = nodes[i];
            std::string op = std::string(x.op) + (x.overload[0] ? "." : "") + x.overload;
            py::dict sem;
            sem["op_class"] = x.cls == DJN_CLASS_COMPUTE ? "compute" : "memory";
            sem["phase"] = phases[x.phase];
            l.append(py::make_tuple(op, sem, x.persistent ? "persistent" : "ephemeral"));
        }
        char hex[40];
        snprintf(hex, sizeof hex, "%016llx%016llx", (unsigned long long)fp[0], (unsigned long long)fp[1]);
        return py::make_tuple(l, std::string(hex));
    });
    m.def("_server_stats", []() {
        djn_value_t *v = nullptr;
        djn_arena_t *a = nullptr;
        djn_status_t st;
        {
            py::gil_scoped_release r;
            st = djn_client_stats(&v, &a);
        }
        check_py(st);
        py::object o = to_py(v);
        djn_arena_destroy(&a);
        return o;
    });
}

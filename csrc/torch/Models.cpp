// Models.cpp: djinn._C entry points for ghost loading and shadow sync (djinn/models.py).
//
// _model_describe / _model_bind send LOAD_MODEL through the client core (in order with
// the session's traffic, the GIL released while waiting); _remote_from_handle makes a
// remote tensor over a handle the server bound; Sync wraps a shadow-sync thread
// (csrc/client/djn_sync.h), whose progress the Python progress bar polls.
#include <torch/extension.h>

#include <string>
#include <vector>

#include "remote.h"

extern "C" {
#include "djn_sync.h"
}

namespace py = pybind11;

namespace djinn {
PyObject *error_type(djn_status_t st);

namespace {

[[noreturn]] void throw_last(djn_status_t st) {
    djn_status_t code = djn_client_errcode();
    const char *msg = djn_client_errmsg();
    PyErr_SetString(error_type(code == DJN_OK ? st : code), msg && *msg ? msg : djn_status_str(st));
    throw py::error_already_set();
}

py::tuple describe(int device, const std::string &name) {
    djn_load_req_t req{(uint32_t)device, name.c_str(), 0, nullptr};
    djn_reply_t *reply = nullptr;
    djn_load_rep_t rep;
    djn_status_t st;
    {
        py::gil_scoped_release nogil;
        st = djn_client_load_model(client(), &req, &reply, &rep);
    }
    if (st != DJN_OK)
        throw_last(st);
    py::list tensors;
    for (uint32_t i = 0; i < rep.ntensors; i++) {
        const djn_model_tensor_t &t = rep.tensors[i];
        py::list shape;
        for (uint32_t d = 0; d < t.ndim; d++)
            shape.append(t.shape[d]);
        tensors.append(py::make_tuple(std::string(t.name), (int)t.dtype, py::tuple(shape)));
    }
    py::tuple out = py::make_tuple(std::string(rep.config), tensors);
    djn_reply_free(&reply);
    return out;
}

// Reserve a handle per tensor and bind them all in one LOAD_MODEL; returns the handles
// and the bytes the server read from its disk for them.
py::tuple bind(int device, const std::string &name, const std::vector<std::string> &names,
               const std::vector<uint64_t> &nbytes) {
    TORCH_CHECK(names.size() == nbytes.size(), "djinn: names and sizes differ in length");
    std::vector<djn_model_bind_t> binds(names.size());
    std::vector<uint64_t> handles(names.size());
    for (size_t i = 0; i < names.size(); i++) {
        handles[i] = djn_client_reserve(client(), device, nbytes[i]);
        binds[i] = {names[i].c_str(), handles[i]};
    }
    djn_load_req_t req{(uint32_t)device, name.c_str(), (uint32_t)binds.size(), binds.data()};
    djn_reply_t *reply = nullptr;
    djn_load_rep_t rep;
    djn_status_t st;
    {
        py::gil_scoped_release nogil;
        st = djn_client_load_model(client(), &req, &reply, &rep);
    }
    if (st != DJN_OK)
        throw_last(st);
    uint64_t read = rep.read_bytes;
    djn_reply_free(&reply);
    return py::make_tuple(handles, read);
}

at::Tensor from_handle(uint64_t handle, uint64_t nbytes, int dtype, std::vector<int64_t> shape,
                       int device) {
    auto st = static_cast<at::ScalarType>(dtype);
    c10::Storage s = adopt_storage(handle, nbytes, (c10::DeviceIndex)device);
    std::vector<int64_t> strides(shape.size());
    int64_t acc = 1;
    for (size_t i = shape.size(); i-- > 0;) {
        strides[i] = acc;
        acc *= shape[i] ? shape[i] : 1;
    }
    return make_view(s, st, shape, strides, 0);
}

struct Sync {
    djn_sync_t *s = nullptr;
    ~Sync() { djn_sync_destroy(&s); }
};

} // namespace

void register_models(py::module_ &m) {
    m.def("_model_describe", &describe, "LOAD_MODEL: (config json, [(name, dtype, shape)])");
    m.def("_model_bind", &bind, "LOAD_MODEL with binds: (handles, bytes read by the server)");
    m.def("_remote_from_handle", &from_handle);
    py::class_<Sync>(m, "_Sync")
        .def(py::init(
            [](int device, const std::vector<std::string> &files,
               const std::vector<std::tuple<uint64_t, uint32_t, uint64_t, uint64_t>> &items) {
                std::vector<const char *> f;
                for (auto &x : files)
                    f.push_back(x.c_str());
                std::vector<djn_sync_item_t> it;
                for (auto &x : items)
                    it.push_back({std::get<0>(x), std::get<1>(x), std::get<2>(x), std::get<3>(x)});
                char err[512];
                auto *s = new Sync();
                s->s = djn_sync_start(client(), device, f.data(), (uint32_t)f.size(), it.data(),
                                      (uint32_t)it.size(), err, sizeof err);
                if (!s->s) {
                    delete s;
                    PyErr_SetString(error_type(DJN_ERR_IO), err);
                    throw py::error_already_set();
                }
                return s;
            }))
        .def("progress",
             [](Sync &s) {
                 djn_sync_progress_t p{};
                 if (s.s)
                     djn_sync_progress(s.s, &p);
                 else
                     p.finished = true;
                 py::dict d;
                 d["items"] = p.items;
                 d["items_done"] = p.items_done;
                 d["bytes"] = p.bytes;
                 d["bytes_done"] = p.bytes_done;
                 d["finished"] = p.finished;
                 d["status"] = (int)p.st;
                 d["error"] = std::string(p.msg);
                 return d;
             })
        .def("wait",
             [](Sync &s, double timeout) {
                 djn_status_t st;
                 if (!s.s)
                     return true;
                 {
                     py::gil_scoped_release nogil;
                     st = djn_sync_wait(s.s, timeout < 0 ? -1 : (int)(timeout * 1000));
                 }
                 if (st == DJN_ERR_TIMEOUT)
                     return false;
                 if (st != DJN_OK) {
                     djn_sync_progress_t p;
                     djn_sync_progress(s.s, &p);
                     PyErr_SetString(error_type(st), p.msg);
                     throw py::error_already_set();
                 }
                 return true;
             })
        .def("stop", [](Sync &s) {
            py::gil_scoped_release nogil;
            djn_sync_destroy(&s.s);
        });
}

} // namespace djinn

// RemoteErrors.cpp: C status codes become typed Python exceptions at this one boundary.
// The exception object carries its Python type; torch's HANDLE_TH_ERRORS sets it with
// the GIL held, so nothing here touches Python while an op runs.
#include <torch/csrc/Exceptions.h>

#include "remote.h"

namespace djinn {

PyObject *g_error_types[4] = {nullptr, nullptr, nullptr, nullptr};

namespace {
struct DjinnError : torch::PyTorchError {
    ErrorKind kind;
    DjinnError(ErrorKind k, std::string m) : torch::PyTorchError(std::move(m)), kind(k) {}
    PyObject *python_type() override {
        PyObject *t = g_error_types[static_cast<int>(kind)];
        return t ? t : PyExc_RuntimeError;
    }
};
} // namespace

static ErrorKind kind_of(djn_status_t st) {
    ErrorKind k = ErrorKind::Remote;
    switch (st) {
    case DJN_ERR_SESSION:
        k = ErrorKind::SessionLost;
        break;
    case DJN_ERR_TIMEOUT:
    case DJN_ERR_IO:
    case DJN_ERR_CLOSED: // a draining server: it opens no new session
        k = ErrorKind::Unreachable;
        break;
    case DJN_ERR_OOM:
    case DJN_ERR_QUOTA:
    case DJN_ERR_NOMEM:
        k = ErrorKind::Resource;
        break;
    default:
        break;
    }
    return k;
}

void raise(djn_status_t st, const std::string &msg) {
    throw DjinnError(kind_of(st), msg);
}

PyObject *error_type(djn_status_t st) {
    PyObject *t = g_error_types[static_cast<int>(kind_of(st))];
    return t ? t : PyExc_RuntimeError;
}

void raise_last() {
    djn_status_t st = djn_client_errcode();
    const char *m = djn_client_errmsg();
    raise(st == DJN_OK ? DJN_ERR_INTERNAL : st, m && *m ? m : djn_status_str(st));
}

} // namespace djinn

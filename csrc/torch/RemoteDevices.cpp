// RemoteDevices.cpp: which devices an op's tensors may mix, and the errors, as on CUDA.
//
// A CPU tensor passed to an op on remote tensors is never uploaded silently where CUDA
// would refuse it, so code written for CUDA fails the same way here, with the same
// words. CUDA has two rules:
//   1. Kernels PyTorch's codegen wraps in a device check (every CUDA kernel of
//      native_functions.yaml without `device_check: NoCheck`; DeviceChecks.inc, from
//      gen_device_checks.py): the first defined tensor among the out= arguments, then
//      the positional ones, sets the device; any other raises "Expected all tensors to
//      be on the same device, but got <arg> is on <device>, different from other
//      tensors on <device> (when checking argument in method wrapper_...)".
//   2. The others check in their kernels: TensorIterator lets a 0-dim CPU tensor join
//      (a "CPU scalar") and otherwise raises "Expected all tensors to be on the same
//      device, but found at least two devices, cuda:0 and cpu!"; indexing and copies
//      take CPU tensors (indices, sources) by design.
// Wrapped numbers (Python scalars turned into tensors) are scalars, not tensors, here.
#include <torch/library.h>

#include <unordered_set>

#include "remote.h"

namespace djinn {
namespace {

const std::unordered_set<std::string> kChecked = {
#include "DeviceChecks.inc"
};

// Non-checked ops (every overload) whose CUDA kernels take CPU tensors of any shape:
// indices, and the source of a copy.
const std::unordered_set<std::string> kTakesCpu = {"aten::index",
                                                   "aten::_unsafe_index",
                                                   "aten::index_put_",
                                                   "aten::index_put",
                                                   "aten::_unsafe_index_put",
                                                   "aten::_index_put_impl_",
                                                   "aten::_index_put_impl",
                                                   "aten::copy_",
                                                   "aten::copy",
                                                   "aten::_copy_from",
                                                   "aten::_copy_from_and_resize",
                                                   "aten::_to_copy",
                                                   "aten::lift_fresh"};

bool wrapped(const at::Tensor &t) {
    return t.device().is_cpu() && t.unsafeGetTensorImpl()->is_wrapped_number();
}

template <class F> void each_tensor(const c10::IValue &v, F fn) {
    if (v.isTensor()) {
        if (v.toTensor().defined())
            fn(v.toTensor());
    } else if (v.isTensorList()) {
        for (const at::Tensor &t : v.toTensorList())
            if (t.defined())
                fn(t);
    } else if (v.isOptionalTensorList()) {
        for (const std::optional<at::Tensor> &t : v.toOptionalTensorList())
            if (t && t->defined())
                fn(*t);
    }
}

// As CUDA's wrappers are named (structured ops reach 'remote' as their out= variant,
// called by the functional one the user called: name that one).
std::string method_name(const c10::FunctionSchema &s) {
    std::string n = s.name().substr(s.name().find("::") + 2);
    const std::string &o = s.overload_name();
    if (o.empty() || o == "out")
        return "wrapper_remote_" + n;
    if (o.size() > 4 && o.compare(o.size() - 4, 4, "_out") == 0)
        return "wrapper_remote_" + n + "_" + o.substr(0, o.size() - 4);
    return "wrapper_remote_" + n + "_" + o;
}

} // namespace

DeviceRule device_rule(const c10::FunctionSchema &s) {
    std::string full = s.name() + (s.overload_name().empty() ? "" : "." + s.overload_name());
    if (kChecked.count(full))
        return DeviceRule::Exact;
    if (kTakesCpu.count(s.name()))
        return DeviceRule::TakesCpu;
    return DeviceRule::CpuScalars;
}

void check_devices(DeviceRule rule, const c10::FunctionSchema &schema,
                   const torch::jit::Stack &stack, size_t first) {
    std::optional<c10::Device> remote;
    for (size_t i = first; i < stack.size() && !remote; i++)
        each_tensor(stack[i], [&](const at::Tensor &t) {
            if (!remote && t.device().type() == c10::DeviceType::PrivateUse1)
                remote = t.device();
        });
    if (!remote) // a factory op with device='remote': its CPU arguments are data
        return;
    const auto &args = schema.arguments();
    if (rule == DeviceRule::Exact) {
        std::optional<c10::Device> common;
        auto visit = [&](size_t i) {
            each_tensor(stack[first + i], [&](const at::Tensor &t) {
                if (wrapped(t))
                    return;
                if (!common)
                    common = t.device();
                else if (*common != t.device())
                    TORCH_CHECK(false, "Expected all tensors to be on the same device, but got ",
                                args[i].name(), " is on ", t.device(),
                                ", different from other tensors on ", *common,
                                " (when checking argument in method ", method_name(schema), ")");
            });
        };
        for (size_t i = 0; i < args.size(); i++)
            if (args[i].is_out())
                visit(i);
        for (size_t i = 0; i < args.size(); i++)
            if (!args[i].is_out() && !args[i].kwarg_only())
                visit(i);
        return;
    }
    for (size_t i = first; i < stack.size(); i++) {
        bool written = args[i - first].alias_info() && args[i - first].alias_info()->isWrite();
        each_tensor(stack[i], [&](const at::Tensor &t) {
            if (t.device() == *remote || wrapped(t))
                return;
            if (t.device().is_cpu() && (rule == DeviceRule::TakesCpu || (t.dim() == 0 && !written)))
                return;
            TORCH_CHECK(false,
                        "Expected all tensors to be on the same device, but found at least two "
                        "devices, ",
                        *remote, " and ", t.device(), "!");
        });
    }
}

} // namespace djinn

"""torch.compile on 'remote': which backends work, said before Inductor tries.

Inductor generates kernels that read and write device memory directly (C++ or Triton);
a remote tensor's memory is on the server, so Inductor cannot compile for 'remote'.
The graph-level backends work: ``backend="eager"`` and ``backend="aot_eager"`` run the
traced (and, for aot_eager, differentiated) graph op by op, and every op is captured
and runs on the server like eager code.

Inductor finds a PrivateUse1 backend's code generators on its device module
(``torch.remote.Scheduling`` and friends, read by ``init_backend_registration``).
``djinn.remote`` hands them out lazily from here (importing Inductor costs seconds, so
``import djinn`` does not): the first time Inductor asks, 'remote' is registered with a
graph pass that refuses any graph holding remote tensors, naming the backends that
work, and with code generators that refuse the same way should Inductor reach them.
"""

import torch
from torch._inductor.codegen.common import (
    DeviceOpOverrides,
    register_backend_for_device,
    register_device_op_overrides,
)
from torch._inductor.custom_graph_pass import CustomGraphModulePass

MESSAGE = (
    "djinn: torch.compile's default backend (Inductor) cannot generate code for 'remote' "
    "tensors, whose memory is on the djinn server. Use torch.compile(model, "
    "backend='aot_eager') or backend='eager': the compiled graph then runs on the server "
    "op by op, like eager code."
)


class RemoteNotSupported(RuntimeError):
    """torch.compile with Inductor was given a graph on 'remote'."""


def _refuse(*args, **kwargs):
    raise RemoteNotSupported(MESSAGE)


class _RefuseRemoteGraphs(CustomGraphModulePass):
    """Runs after Inductor's post-grad passes on graphs that hold 'remote' tensors."""

    def __call__(self, gm):
        _refuse()

    def uuid(self):
        return "djinn-refuse-remote-v1"


class Scheduling:
    def __init__(self, *args, **kwargs):
        _refuse()


class PythonWrapperCodegen:
    supports_caching = False  # nothing compiled for 'remote' may be cached

    @staticmethod
    def create(*args, **kwargs):
        _refuse()


_registered = False


def _register():
    global _registered
    if _registered:
        return
    _registered = True
    name = torch._C._get_privateuse1_backend_name()
    register_device_op_overrides(name, DeviceOpOverrides())
    register_backend_for_device(
        name,
        Scheduling,
        PythonWrapperCodegen,
        PythonWrapperCodegen,
        PythonWrapperCodegen,
        device_custom_pass=_RefuseRemoteGraphs(),
    )


def device_module_attr(name):
    """What ``torch.remote.<name>`` is for Inductor's backend registration. The C++
    wrapper is None: Inductor then leaves the registration made here in place."""
    _register()
    return {"Scheduling": Scheduling, "PythonWrapperCodegen": PythonWrapperCodegen}.get(name)

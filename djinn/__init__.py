"""Djinn: a remote GPU as a PyTorch device.

``import djinn`` registers the ``remote`` device (PyTorch's PrivateUse1 backend) and
nothing else: no server is contacted until a tensor is first placed on ``remote``.
With ``DJINN_SERVER`` unset that first use starts an embedded ``djinn-server`` on
loopback, stopped when this process exits; ``DJINN_SERVER=tcp://host:port`` uses a
running server instead.
"""

import os as _os

import torch as _torch


class RemoteError(RuntimeError):
    """An operation failed on the djinn server; the message names the op and the cause."""


class SessionLost(RemoteError):
    """The server no longer knows this session (it restarted, or the lease expired).

    Remote tensors created before are gone; using ``remote`` again opens a new session."""


class ServerUnreachable(RemoteError):
    """No djinn server answered within the timeout (``DJINN_CONNECT_TIMEOUT``/``DJINN_TIMEOUT``),
    it went away, or it is draining (shutting down) and opens no new session."""


class ResourceError(RemoteError, _torch.OutOfMemoryError):
    """Out of memory or over a quota, on the server or on this host.

    Also a ``torch.OutOfMemoryError``, which code written for CUDA catches."""


from . import _C  # noqa: E402

_C._register_errors(RemoteError, SessionLost, ServerUnreachable, ResourceError)


def _server_binary():
    here = _os.path.dirname(_os.path.abspath(__file__))
    for cand in (
        _os.environ.get("DJINN_SERVER_BIN", ""),
        _os.path.join(here, "bin", "djinn-server"),
    ):
        if cand and _os.access(cand, _os.X_OK):
            return cand
    from shutil import which

    return which("djinn-server") or ""


_C._set_server_binary(_server_binary())

from . import remote  # noqa: E402
from . import srg  # noqa: E402

_torch.utils.rename_privateuse1_backend("remote")
_torch._register_device_module("remote", remote)
_torch.utils.generate_methods_for_privateuse1_backend(for_storage=True)
_C._init()
remote._patch_printing()
remote._install_place_hook()

from .remote import bytes_moved, reset_bytes_moved, server_stats, synchronize  # noqa: E402
from . import models  # noqa: E402
from .models import from_pretrained  # noqa: E402

models._install_hook()

QOS_CLASSES = ("auto", "realtime", "interactive", "batch")


class qos:  # noqa: N801 - used like torch.no_grad
    """Run the work of a block in a QoS class: ``with djinn.qos('interactive'): ...``.

    ``'interactive'`` fragments go before ``'batch'`` ones on a busy device, and a long
    batch fragment pauses between its nodes to let them run; ``'realtime'`` goes first of
    all, for keys the server allows (others get ``RemoteError`` naming the class).
    ``'auto'`` (the default, or ``DJINN_QOS``) lets the server decide from the work: decode
    steps interactive, prefill, training and bulk transfers batch. The class is the
    process's (all threads); the block's end restores the previous one. Work recorded
    before the block keeps its class: it is sent first.
    """

    def __init__(self, name):
        if name not in QOS_CLASSES:
            raise ValueError(
                f"djinn.qos: the class must be one of {', '.join(QOS_CLASSES)}, got {name!r}"
            )
        self.name = name
        self._prev = []

    def __enter__(self):
        self._prev.append(_C._qos())
        _C._set_qos(self.name)
        return self

    def __exit__(self, *exc):
        _C._set_qos(self._prev.pop())
        return False


def current_qos():
    """The QoS class fragments are sent in now (``'auto'`` unless set)."""
    return _C._qos()


__all__ = [
    "RemoteError",
    "SessionLost",
    "ServerUnreachable",
    "ResourceError",
    "remote",
    "srg",
    "synchronize",
    "server_stats",
    "bytes_moved",
    "reset_bytes_moved",
    "from_pretrained",
    "models",
    "qos",
    "current_qos",
]

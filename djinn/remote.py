"""``torch.remote``: the device module of the ``remote`` backend, mirroring ``torch.cuda``."""
import contextlib

import torch

from . import _C

_initialized = False


def _lazy_init():
    global _initialized
    if not _initialized:
        _C._connect()
        _initialized = True


def init():
    _lazy_init()


def is_initialized():
    return _initialized


def is_available():
    """True when a djinn server (embedded or ``DJINN_SERVER``) answers and has a device."""
    try:
        return _C._device_count() > 0
    except Exception:
        return False


def device_count():
    """Devices of the server (``cuda:N`` there, or ``cpu`` when it has no GPU)."""
    return _C._device_count()


def device_name(index=None):
    return _C._device_name(current_device() if index is None else index)


def current_device():
    return _C._get_device()


def _idx(device):
    if isinstance(device, torch.device):
        return device.index or 0
    if isinstance(device, str):
        return torch.device(device).index or 0
    return int(device)


def set_device(device):
    idx = _idx(device)
    n = device_count()
    if not 0 <= idx < n:
        raise ValueError(f"remote:{idx} does not exist: the server has {n} device(s)")
    _C._set_device(idx)


@contextlib.contextmanager
def device(dev):
    prev = current_device()
    set_device(dev)
    try:
        yield
    finally:
        _C._set_device(prev)


def synchronize(device=None):
    """Run everything captured so far and wait for it (raises the first failure)."""
    _C._synchronize()


def _is_in_bad_fork():
    return False


def manual_seed(seed):
    """Seed the server-side generators of this session (all devices)."""
    _C._manual_seed(int(seed) & ((1 << 63) - 1))


manual_seed_all = manual_seed


def seed():
    import random

    manual_seed(random.getrandbits(63))


seed_all = seed


def get_amp_supported_dtype():
    return [torch.float16, torch.bfloat16]


def server_stats():
    """Counters of the server this process talks to (sessions, handles, bytes...)."""
    return _C._server_stats()


def memory_stats(device=None):
    """Server memory as this session sees it, plus the bytes this process moved.

    Keys: ``session.allocated_bytes`` / ``session.peak_bytes`` (device bytes this
    session holds privately), ``text.bytes`` / ``text.entries`` / ``text.refs`` (shared,
    content-addressed weights: one copy however many sessions use them),
    ``server.private_bytes`` (all sessions' private bytes), ``server.sessions``,
    ``bytes_sent`` / ``bytes_received`` (this process, over the wire)."""
    s = server_stats()
    c = _C._counters()
    return {
        "session.allocated_bytes": s.get("session_bytes", 0),
        "session.peak_bytes": s.get("session_peak_bytes", 0),
        "session.quota_bytes": s.get("session_quota_bytes", 0),
        "text.bytes": s.get("text_bytes", 0),
        "text.entries": s.get("text_entries", 0),
        "text.refs": s.get("text_refs", 0),
        "text.hits": s.get("text_hits", 0),
        "server.private_bytes": s.get("bytes_in_use", 0),
        "server.sessions": s.get("sessions_open", 0),
        "bytes_sent": c["bytes_sent"],
        "bytes_received": c["bytes_received"],
        "dedup_bytes": c["dedup_bytes"],
    }


def memory_allocated(device=None):
    """Device bytes this session holds privately on the server (Text weights excluded)."""
    return memory_stats(device)["session.allocated_bytes"]


def max_memory_allocated(device=None):
    return memory_stats(device)["session.peak_bytes"]


def bytes_moved():
    """Bytes this process sent to and received from the server, with message counts."""
    return _C._counters()


def reset_bytes_moved():
    _C._reset_counters()


def endpoint():
    return _C._endpoint()


def session_id():
    return _C._session_id()


def _patch_printing():
    """Format remote tensors from one CPU copy: a single fetch instead of one per element."""
    import torch._tensor_str as ts

    orig = ts._tensor_str
    if getattr(orig, "_djinn", False):
        return

    def _tensor_str(self, indent):
        if self.device.type == "remote":
            self = self.cpu()
        return orig(self, indent)

    _tensor_str._djinn = True
    ts._tensor_str = _tensor_str

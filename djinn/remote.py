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
    """Seed this session's random state on the server, in program order with the ops
    around it. (On a server with several devices, the current device's.)"""
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
    """Server memory as this process sees it, like ``torch.cuda.memory_stats``.

    Per device (the VMU of a CPU device; zeros on a CUDA device, which keeps ATen's
    caching allocator):

    - ``data.*``: the Data segment (weights/Text content, KV caches, outputs clients
      hold): ``capacity_bytes``, ``used_bytes``, ``peak_bytes``, ``free_blocks``,
      ``largest_free_bytes`` and ``fragmentation`` (external: 1 - largest free block /
      free bytes).
    - ``slab.*``: the stack slab for one fragment's activations: ``capacity_bytes``,
      ``in_use_bytes``, ``high_water_bytes``, ``resets``, ``resets_deferred`` (fragments
      after which something still referenced the slab).
    - ``plan.*``: the meta-simulator's last plan: ``peak_bytes`` (slab bytes it needs),
      ``lower_bound_bytes`` (most bytes live at once), ``bump_bytes`` (what a plain
      bump allocator would take), ``fragments`` planned, ``copied_out_bytes`` (results
      clients hold, moved from the slab to Data).

    Server-wide: ``text.*`` (content-addressed weights shared by all sessions:
    ``bytes``, ``entries``, ``refs``, ``hits``), ``plan_cache.*`` (``hits``, ``misses``,
    ``entries``, ``capacity``, ``evictions``), ``sched.us_hit_avg`` /
    ``sched.us_miss_avg`` (server scheduling time per fragment), ``server.private_bytes``
    and ``server.sessions``. This session: ``session.allocated_bytes``,
    ``session.peak_bytes``, ``session.quota_bytes``. This process: ``bytes_sent``,
    ``bytes_received``, ``dedup_bytes`` (uploads the server already held),
    ``plan_cache.sends`` (fragments sent as GRAPH_CACHED)."""
    s = server_stats()
    c = _C._counters()
    devs = s.get("devices", [])
    idx = current_device() if device is None else _idx(device)
    d = devs[idx] if 0 <= idx < len(devs) else {}
    return {
        "data.capacity_bytes": d.get("data_capacity", 0),
        "data.used_bytes": d.get("data_used", 0),
        "data.peak_bytes": d.get("data_peak", 0),
        "data.free_blocks": d.get("data_free_blocks", 0),
        "data.largest_free_bytes": d.get("data_largest_free", 0),
        "data.fragmentation": d.get("data_fragmentation", 0.0),
        "slab.capacity_bytes": d.get("slab_capacity", 0),
        "slab.in_use_bytes": d.get("slab_in_use", 0),
        "slab.high_water_bytes": d.get("slab_high_water", 0),
        "slab.resets": d.get("slab_resets", 0),
        "slab.resets_deferred": d.get("slab_resets_deferred", 0),
        "plan.fragments": d.get("planned_fragments", 0),
        "plan.peak_bytes": d.get("plan_peak_last", 0),
        "plan.lower_bound_bytes": d.get("plan_lower_bound_last", 0),
        "plan.bump_bytes": d.get("plan_bump_last", 0),
        "plan.copied_out_bytes": d.get("copied_out_bytes", 0),
        "plan.peak_bytes_total": d.get("plan_peak_sum", 0),
        "plan.lower_bound_bytes_total": d.get("plan_lower_bound_sum", 0),
        "plan.bump_bytes_total": d.get("plan_bump_sum", 0),
        "text.bytes": s.get("text_bytes", 0),
        "text.entries": s.get("text_entries", 0),
        "text.refs": s.get("text_refs", 0),
        "text.hits": s.get("text_hits", 0),
        "plan_cache.hits": s.get("plan_cache_hits", 0),
        "plan_cache.misses": s.get("plan_cache_misses", 0),
        "plan_cache.entries": s.get("plan_cache_entries", 0),
        "plan_cache.capacity": s.get("plan_cache_capacity", 0),
        "plan_cache.evictions": s.get("plan_cache_evictions", 0),
        "sched.us_hit_avg": s.get("sched_us_hit_avg", 0),
        "sched.us_miss_avg": s.get("sched_us_miss_avg", 0),
        "session.allocated_bytes": s.get("session_bytes", 0),
        "session.peak_bytes": s.get("session_peak_bytes", 0),
        "session.quota_bytes": s.get("session_quota_bytes", 0),
        "server.private_bytes": s.get("bytes_in_use", 0),
        "server.sessions": s.get("sessions_open", 0),
        "bytes_sent": c["bytes_sent"],
        "bytes_received": c["bytes_received"],
        "dedup_bytes": c["dedup_bytes"],
        "plan_cache.sends": c["plan_cache_sends"],
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

"""``torch.remote``: the device module of the ``remote`` backend, mirroring ``torch.cuda``."""

import contextlib
import functools
import os

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
    """Devices of every server of ``DJINN_SERVER``, in the order listed (``cuda:N`` on a
    server, or ``cpu`` when it has no GPU): ``remote:0..n-1`` are the first server's n."""
    return _C._device_count()


def device_name(index=None):
    return _C._device_name(current_device() if index is None else index)


def current_device():
    """This thread's device: the one set (:func:`set_device`), else the process's default,
    which the server chooses the first time it is needed (the device that holds this
    process's model, else the least loaded; ``DJINN_PLACE=0``: device 0)."""
    return _C._get_device()


def _idx(device):
    if isinstance(device, str):
        device = torch.device(device)
    if isinstance(device, torch.device):
        return current_device() if device.index is None else device.index
    return int(device)


def set_device(device):
    idx = _idx(device)
    n = device_count()
    if not 0 <= idx < n:
        raise ValueError(f"remote:{idx} does not exist: the server(s) have {n} device(s)")
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
    _default_generator(current_device()).manual_seed(int(seed) & ((1 << 63) - 1))


def manual_seed_all(seed):
    """Seed this session's random state on every device (what ``torch.manual_seed`` calls)."""
    for i in range(device_count()):
        _default_generator(i).manual_seed(int(seed) & ((1 << 63) - 1))


def seed():
    import random

    manual_seed(random.getrandbits(63))


seed_all = seed


def _device_index(device):
    if device is None or device == "remote":
        return current_device()
    if isinstance(device, torch.device):
        return current_device() if device.index is None else device.index
    if isinstance(device, str):
        return _device_index(torch.device(device))
    return int(device)


def _default_generator(index):
    return _C._get_default_generator(index)


class _DefaultGenerators:
    """``torch.remote.default_generators[i]``: the session's generator of remote:i."""

    def __getitem__(self, i):
        if not 0 <= i < device_count():
            raise IndexError(f"remote:{i} does not exist")
        return _default_generator(i)

    def __len__(self):
        return device_count()

    def __iter__(self):
        return (self[i] for i in range(len(self)))


default_generators = _DefaultGenerators()


def get_rng_state(device="remote"):
    """The random state of this session on ``device`` (held by the server), as a CPU
    ``torch.uint8`` tensor, like ``torch.cuda.get_rng_state``. Flushes pending work."""
    return _default_generator(_device_index(device)).get_state()


def set_rng_state(new_state, device="remote"):
    """Restore a state :func:`get_rng_state` returned, in program order with the ops
    around it."""
    with torch.no_grad():
        _default_generator(_device_index(device)).set_state(new_state.clone())


def get_rng_state_all():
    return [get_rng_state(i) for i in range(device_count())]


def set_rng_state_all(new_states):
    for i, state in enumerate(new_states):
        set_rng_state(state, i)


def initial_seed():
    """The seed last given to this session's generator of the current device."""
    return _default_generator(current_device()).initial_seed()


def get_amp_supported_dtype():
    return [torch.float16, torch.bfloat16]


def server_stats(device=None):
    """Counters of the server of ``device`` (default: the current one): sessions, handles,
    bytes..., and its own devices under ``"devices"``."""
    _lazy_init()
    return _C._server_stats(current_device() if device is None else _idx(device))


def servers():
    """The servers of ``DJINN_SERVER`` in order, as dicts: ``endpoint``, ``first_device``
    (the global index of its first device), ``device_count``, ``session_id``."""
    _lazy_init()
    keys = ("endpoint", "first_device", "device_count", "session_id")
    return [dict(zip(keys, s)) for s in _C._servers()]


def device_server(device=None):
    """``(server, index)``: which entry of :func:`servers` holds ``device``, and the
    device's number on that server."""
    _lazy_init()
    return tuple(_C._device_server(current_device() if device is None else _idx(device)))


def _stats_doc():
    rows = _C._stats_fields()
    out = []
    for scope in ("device", "server", "session", "client"):
        out.append(f"\n    {scope}:\n")
        out += [f"    - ``{py}``: {doc}\n" for sc, _, py, doc in rows if sc == scope]
    return "".join(out)


def memory_stats(device=None):
    """Server memory and traffic as this process sees it, like ``torch.cuda.memory_stats``.

    Every key comes from the one descriptor table of counters (csrc/common/djn_stats.h):
    ``device`` keys describe the chosen device (its VMU; zeros on a CUDA device, which
    keeps ATen's caching allocator), ``server`` keys the whole server (present only when
    the server shows them to this client: an operator, or a server without keys),
    ``session`` keys this session, ``client`` keys the bytes this process moved.
    """
    idx = current_device() if device is None else _idx(device)
    s = server_stats(idx)
    devs = s.get("devices", [])
    local = device_server(idx)[1]
    d = devs[local] if 0 <= local < len(devs) else {}
    counters = _C._counters()
    out = {}
    for scope, name, py, _ in _C._stats_fields():
        src = {"device": d, "server": s, "session": s, "client": counters}[scope]
        if name in src:
            out[py] = src[name]
    return out


memory_stats.__doc__ += _stats_doc()


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


# ------------------------------------------------------------------ placement

_PLACE_TENSORS = 8  # content hashes offered: the largest weights identify a model


def _text_min_bytes():
    try:
        return int(float(os.environ.get("DJINN_TEXT_MIN_BYTES", "65536")))
    except ValueError:
        return 65536


def _place_hashes(tensors):
    """(hash_hi, hash_lo, nbytes) of the largest CPU tensors that would travel as shared
    content (Text uploads: DJINN_TEXT_MIN_BYTES and up), each storage once."""
    least, seen, sized = _text_min_bytes(), set(), []
    for t in tensors:
        if t is None or t.device.type != "cpu" or t.layout != torch.strided:
            continue
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape))
        n = t.numel() * t.element_size()
        if n >= least and key not in seen:
            seen.add(key)
            sized.append((n, t))
    sized.sort(key=lambda x: -x[0])
    return [_C._content_hash(t.detach()) for _, t in sized[:_PLACE_TENSORS]]


def _place_for(module):
    """Before a module's first move to 'remote' without an index: let the server choose
    the default device knowing the module's weights (the device that already holds them
    for this tenant, else the least loaded)."""
    if _C._place_pending():
        _C._place(None, _place_hashes(list(module.parameters()) + list(module.buffers())))


def _wants_default_remote(device):
    return (
        device is not None
        and torch.device(device).type == "remote"
        and (torch.device(device).index is None)
    )


def _install_place_hook():
    """``module.to('remote')`` and ``module.remote()`` consult the server before they
    move the first weight, when the default device is not chosen yet."""
    nn = torch.nn.Module
    if getattr(nn.to, "_djinn_place", False):
        return
    orig_to, orig_remote = nn.to, getattr(nn, "remote", None)

    @functools.wraps(orig_to)
    def to(self, *args, **kwargs):
        try:
            device = torch._C._nn._parse_to(*args, **kwargs)[0]
        except Exception:  # noqa: BLE001 - the real call reports bad arguments
            device = None
        if _wants_default_remote(device):
            _place_for(self)
        return orig_to(self, *args, **kwargs)

    to._djinn_place = True
    nn.to = to
    if orig_remote is not None:

        @functools.wraps(orig_remote)
        def remote(self, device=None):
            if device is None or _wants_default_remote(device):
                _place_for(self)
            return orig_remote(self, device)

        nn.remote = remote


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


_INDUCTOR_HOOKS = ("Scheduling", "PythonWrapperCodegen", "CppWrapperCodegen", "WrapperFxCodegen")


def __getattr__(name):
    # Inductor reads a PrivateUse1 backend's code generators from its device module:
    # they refuse 'remote' graphs with a message naming the backends that work
    # (djinn/_inductor.py; imported only when Inductor asks).
    if name in _INDUCTOR_HOOKS:
        from . import _inductor

        return _inductor.device_module_attr(name)
    raise AttributeError(f"module 'torch.remote' has no attribute '{name}'")

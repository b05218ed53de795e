"""Ghost loading and shadow sync: Hugging Face models on ``remote`` whose weights this
process never holds, and local checkpoints uploaded in the background.

``djinn.from_pretrained("all-MiniLM-L6-v2")`` asks the server for a model of its store
(``djinn-server --models DIR``): the model is built on the meta device, and every
parameter and buffer the checkpoint holds becomes a remote tensor bound to the server's
own copy (shared read-only Text, loaded from the server's disk once for every tenant).
No weight byte crosses the network and none is held here; buffers the checkpoint lacks
(``position_ids``, rotary ``inv_freq``) are computed on the CPU and uploaded as usual.

``djinn.from_pretrained("/path/to/folder")`` is shadow sync: the model is returned at
once over remote tensors that hold nothing yet, and a C thread reads, hashes and uploads
the local safetensors in the background, offering each hash first so that content this
tenant uploaded before (kept by the server's Text cache: a rerun, a reconnect) is not
sent again. An op that needs a weight whose upload is still pending makes that weight go
first. ``model.djinn_sync`` reports progress (a tqdm bar with ``progress=True``) and
``model.djinn_sync.wait()`` waits for the rest.

``AutoModel.from_pretrained(name, device_map="remote")`` does the same once
:func:`patch_transformers` ran (``import djinn`` installs it when transformers is
imported).
"""

import contextlib
import json
import os
import struct
import threading
import warnings

import torch

from . import _C

__all__ = ["ShadowSync", "from_pretrained", "patch_transformers"]

# wire dtype codes (c10::ScalarType numbering, djn_proto.h)
_DTYPES = {
    0: torch.uint8,
    1: torch.int8,
    2: torch.int16,
    3: torch.int32,
    4: torch.int64,
    5: torch.float16,
    6: torch.float32,
    7: torch.float64,
    11: torch.bool,
    15: torch.bfloat16,
}
_CODES = {v: k for k, v in _DTYPES.items()}
_ST_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


# ------------------------------------------------------------------ the skeleton


@contextlib.contextmanager
def _params_on_meta():
    """Parameters are created on the meta device (no memory, no initialisation cost);
    buffers stay real CPU tensors, so values computed at construction (position ids,
    rotary frequencies) exist for the buffers a checkpoint does not hold."""
    old = torch.nn.Module.register_parameter

    def register(self, name, param):
        old(self, name, param)
        p = self._parameters.get(name)
        if p is not None and p.device.type != "meta":
            self._parameters[name] = type(p)(p.to("meta"), requires_grad=p.requires_grad)

    torch.nn.Module.register_parameter = register
    try:
        yield
    finally:
        torch.nn.Module.register_parameter = old


def _build(config, auto_class):
    import transformers

    cfg = config if not isinstance(config, dict) else transformers.AutoConfig.for_model(**config)
    auto_class = auto_class or transformers.AutoModel
    ctx = getattr(transformers.modeling_utils, "no_init_weights", None)
    make = getattr(auto_class, "from_config", None) or auto_class._from_config
    with _params_on_meta(), ctx() if ctx else contextlib.nullcontext():
        model = make(cfg)
    return model


def _slots(model):
    """Each distinct parameter or buffer once (tied weights are one), with every
    (module, attribute) that holds it and every name it goes by."""
    out = {}
    for mname, mod in model.named_modules(remove_duplicate=False):
        for kind, table in (("param", mod._parameters), ("buffer", mod._buffers)):
            for attr, t in table.items():
                if t is None:
                    continue
                e = out.setdefault(id(t), {"tensor": t, "kind": kind, "owners": [], "names": []})
                e["owners"].append((mod, kind, attr))
                e["names"].append(f"{mname}.{attr}" if mname else attr)
    return list(out.values())


def _checkpoint_name(names, have, prefix):
    """The checkpoint's name for a tensor: as is, or with or without the base model's
    prefix ("bert.", "model."), as Hugging Face loads them."""
    for n in names:
        cands = [n]
        if prefix:
            cands += [f"{prefix}.{n}"]
            if n.startswith(prefix + "."):
                cands.append(n[len(prefix) + 1 :])
        for c in cands:
            if c in have:
                return c
    return None


def _install(entry, tensor):
    t = entry["tensor"]
    if entry["kind"] == "param":
        tensor = torch.nn.Parameter(tensor, requires_grad=t.requires_grad)
    for mod, kind, attr in entry["owners"]:
        (mod._parameters if kind == "param" else mod._buffers)[attr] = tensor


def _plan(model, ckpt):
    """Match the model's tensors with the checkpoint's: (bound, to upload, missing)."""
    prefix = getattr(model, "base_model_prefix", "") or ""
    bound, upload, missing = [], [], []
    for e in _slots(model):
        ck = _checkpoint_name(e["names"], ckpt, prefix)
        if ck is None:
            (upload if e["kind"] == "buffer" else missing).append(e)
            continue
        shape = ckpt[ck][1]
        if tuple(shape) != tuple(e["tensor"].shape):
            raise ValueError(
                f"djinn: checkpoint tensor '{ck}' has shape {tuple(shape)} but the model "
                f"expects {tuple(e['tensor'].shape)} for '{e['names'][0]}'"
            )
        bound.append((e, ck))
    return bound, upload, missing


def _finish(model, device, upload, missing):
    for e in upload:  # buffers the checkpoint lacks: computed here, uploaded
        _install(e, e["tensor"].to(device))
    if missing:
        names = ", ".join(e["names"][0] for e in missing[:8])
        warnings.warn(
            f"djinn: {len(missing)} parameters are not in the checkpoint and start as zeros "
            f"({names}{', ...' if len(missing) > 8 else ''})",
            stacklevel=3,
        )
        for e in missing:
            t = e["tensor"]
            _install(e, torch.zeros(t.shape, dtype=t.dtype, device=device))
    model.eval()
    return model


def _nbytes(dtype, shape):
    n = 1
    for s in shape:
        n *= s
    return n * torch.empty((), dtype=dtype).element_size()


# ------------------------------------------------------------------ ghost loading


def _ghost(name, device, auto_class):
    if device.index is None:  # the server places this process by the model (PROTOCOL 5.6)
        _C._place(name, [])
    idx = device.index if device.index is not None else torch.remote.current_device()
    config_json, tensors = _C._model_describe(idx, name)
    ckpt = {n: (_DTYPES[code], shape) for n, code, shape in tensors}
    model = _build(json.loads(config_json), auto_class)
    bound, upload, missing = _plan(model, ckpt)
    names = [ck for _, ck in bound]
    sizes = [_nbytes(*ckpt[ck]) for ck in names]
    handles, read = _C._model_bind(idx, name, names, sizes)
    for (e, ck), h, n in zip(bound, handles, sizes):
        dtype, shape = ckpt[ck]
        _install(e, _C._remote_from_handle(h, n, _CODES[dtype], list(shape), idx))
    model.djinn_server_read_bytes = read
    return _finish(model, torch.device("remote", idx), upload, missing)


# ------------------------------------------------------------------ shadow sync


def _local_checkpoint(path):
    """{name: (dtype, shape, file index, byte offset, nbytes)} and the files, from the
    safetensors headers alone (no weight byte is read here)."""
    index = os.path.join(path, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index) as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
    elif os.path.exists(os.path.join(path, "model.safetensors")):
        files = ["model.safetensors"]
    else:
        files = sorted(f for f in os.listdir(path) if f.endswith(".safetensors"))
    if not files:
        raise FileNotFoundError(f"djinn: no safetensors files in '{path}'")
    files = [os.path.join(path, f) for f in files]
    ckpt = {}
    for fi, fname in enumerate(files):
        with open(fname, "rb") as f:
            (hlen,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(hlen))
        for name, v in header.items():
            if name == "__metadata__":
                continue
            b, e = v["data_offsets"]
            ckpt[name] = (_ST_DTYPES[v["dtype"]], tuple(v["shape"]), fi, 8 + hlen + b, e - b)
    return ckpt, files


class ShadowSync:
    """The background upload of a model's weights (``model.djinn_sync``)."""

    def __init__(self, native, total, progress):
        import atexit

        self._native = native
        self._bar_thread = None
        atexit.register(native.stop)  # before the client's own shutdown
        if progress:
            self._bar_thread = threading.Thread(target=self._bar, args=(total,), daemon=True)
            self._bar_thread.start()

    def progress(self):
        """dict: items, items_done, bytes, bytes_done, finished, status, error."""
        return self._native.progress()

    @property
    def done(self):
        return self._native.progress()["finished"]

    def wait(self, timeout=None):
        """Wait until every weight is uploaded (True), or ``timeout`` seconds pass
        (False). Raises the error that stopped the upload, if one did."""
        ok = self._native.wait(-1.0 if timeout is None else float(timeout))
        if ok and self._bar_thread is not None:
            self._bar_thread.join(5)
        return ok

    def stop(self):
        self._native.stop()

    def _bar(self, total):
        from tqdm.auto import tqdm

        with tqdm(total=total, unit="B", unit_scale=True, desc="djinn shadow sync") as bar:
            last = 0
            while True:
                p = self._native.progress()
                bar.update(p["bytes_done"] - last)
                last = p["bytes_done"]
                if p["finished"]:
                    break
                self._native.wait(0.1)


def _shadow_hashes(ckpt, files):
    """Content hashes of the checkpoint's largest tensors (read memory-mapped), for
    placement: the device already holding them for this tenant is chosen."""
    import mmap

    from .remote import _PLACE_TENSORS, _text_min_bytes

    big = sorted((v for v in ckpt.values() if v[4] >= _text_min_bytes()), key=lambda v: -v[4])
    out = []
    for _, _, fi, off, n in big[:_PLACE_TENSORS]:
        with open(files[fi], "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
            view = memoryview(m)[off : off + n]
            try:
                out.append(_C._content_hash_buffer(view))
            finally:
                view.release()
    return out


def _shadow(path, device, auto_class, progress):
    with open(os.path.join(path, "config.json")) as f:
        config = json.load(f)
    ckpt, files = _local_checkpoint(path)
    if device.index is None and _C._place_pending():
        _C._place(None, _shadow_hashes(ckpt, files))
    idx = device.index if device.index is not None else torch.remote.current_device()
    dev = torch.device("remote", idx)
    model = _build(config, auto_class)
    bound, upload, missing = _plan(model, ckpt)
    items = []
    for e, ck in bound:
        dtype, shape, fi, off, n = ckpt[ck]
        t = torch.empty(shape, dtype=dtype, device=dev)
        items.append((t.untyped_storage().data_ptr(), fi, off, n))
        _install(e, t)
    total = sum(i[3] for i in items)
    if progress is None:
        progress = total >= (256 << 20)
    model.djinn_sync = ShadowSync(_C._Sync(idx, files, items), total, progress)
    return _finish(model, dev, upload, missing)


# ------------------------------------------------------------------ entry points


def from_pretrained(name_or_path, *, device="remote", auto_class=None, progress=None):
    """A Hugging Face model on ``remote`` without holding its weights here.

    ``name_or_path``: the name of a model in the server's store (ghost loading: the
    server reads its own files; nothing is uploaded), or a local folder with
    ``config.json`` and safetensors (shadow sync: returned at once, uploaded in the
    background, only what the server lacks). ``auto_class``: the transformers class
    whose ``from_config`` builds the model (default ``AutoModel``). ``progress``: show a
    tqdm bar for the background upload (default: when it exceeds 256 MiB).

    Unknown names raise :class:`djinn.RemoteError` listing the models the server offers
    this tenant; a model the tenant may not load raises it too, naming the model."""
    device = torch.device(device)
    if device.type != "remote":
        raise ValueError(f"djinn.from_pretrained loads onto 'remote', not '{device}'")
    if os.path.isdir(name_or_path):
        return _shadow(name_or_path, device, auto_class, progress)
    return _ghost(name_or_path, device, auto_class)


def patch_transformers():
    """Make ``transformers`` models load with ``device_map="remote"`` (or
    ``torch.device("remote")``) through :func:`from_pretrained`. Idempotent."""
    import transformers

    base = transformers.PreTrainedModel
    if getattr(base.from_pretrained, "_djinn", False):
        return
    original = base.from_pretrained.__func__

    def from_pretrained_hook(cls, name_or_path, *args, **kwargs):
        dm = kwargs.get("device_map")
        if isinstance(dm, (str, torch.device)) and torch.device(dm).type == "remote":
            auto = cls if not cls.__name__.startswith("Auto") else None
            return from_pretrained(str(name_or_path), device=dm, auto_class=auto)
        return original(cls, name_or_path, *args, **kwargs)

    from_pretrained_hook._djinn = True
    base.from_pretrained = classmethod(from_pretrained_hook)

    for auto in ("AutoModel", "AutoModelForCausalLM", "AutoModelForMaskedLM"):
        cls = getattr(transformers, auto, None)
        if cls is None or getattr(cls.from_pretrained, "_djinn", False):
            continue
        orig_auto = cls.from_pretrained.__func__

        def auto_hook(c, name_or_path, *args, _orig=orig_auto, **kwargs):
            dm = kwargs.get("device_map")
            if isinstance(dm, (str, torch.device)) and torch.device(dm).type == "remote":
                return from_pretrained(str(name_or_path), device=dm, auto_class=c)
            return _orig(c, name_or_path, *args, **kwargs)

        auto_hook._djinn = True
        cls.from_pretrained = classmethod(auto_hook)


class _PatchOnImport:
    """A meta-path finder that runs :func:`patch_transformers` right after
    ``transformers`` is imported, so ``import djinn`` costs no transformers import."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "transformers":
            return None
        import importlib.util
        import sys

        sys.meta_path.remove(self)
        try:
            spec = importlib.util.find_spec(fullname)
        finally:
            sys.meta_path.insert(0, self)
        if spec is None or spec.loader is None:
            return spec
        loader = spec.loader
        exec_module = loader.exec_module

        def exec_and_patch(module):
            exec_module(module)
            try:
                sys.meta_path.remove(self)
            except ValueError:
                pass
            try:
                patch_transformers()
            except Exception as e:  # noqa: BLE001 - a newer transformers: loading still works
                warnings.warn(f"djinn: could not hook transformers.from_pretrained: {e}")

        loader.exec_module = exec_and_patch
        return spec


def _install_hook():
    import sys

    if "transformers" in sys.modules:
        try:
            patch_transformers()
        except Exception as e:  # noqa: BLE001
            warnings.warn(f"djinn: could not hook transformers.from_pretrained: {e}")
    elif not any(isinstance(f, _PatchOnImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _PatchOnImport())

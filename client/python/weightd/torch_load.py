"""torch.load and torch.jit.load(...).state_dict() through the daemon, and zero-copy module
loading: weightd.load, weightd.jit_load_state, weightd.load_into."""
import collections
import inspect
import io
import json
import os
import threading

import grpc

from . import _tree
from .client import DEFAULT_ADDRESS, Client
from .errors import WeightdError

_default_lock = threading.Lock()
_default = None  # ((address, pid), Client)


def default_client():
    """The process's Client for $WEIGHTD_ADDRESS (else the default address), made on first use
    and again after a fork or a change of $WEIGHTD_ADDRESS."""
    global _default
    address = os.environ.get("WEIGHTD_ADDRESS") or DEFAULT_ADDRESS
    key = (address, os.getpid())
    with _default_lock:
        if _default is None or _default[0] != key:
            # A replaced Client stays open while tensors of its loads live (Client.__del__).
            _default = (key, Client(address))
        return _default[1]


def _torch():
    try:
        import torch
    except ImportError:
        raise ImportError("weightd.load needs torch (pip install 'weightd[torch]')") from None
    return torch


def _path_of(f, caller):
    """A path for `f`: a str/bytes/PathLike, or a file object naming the file it reads."""
    if isinstance(f, (str, bytes, os.PathLike)):
        return os.fsdecode(os.fspath(f))
    name = getattr(f, "name", None)
    if not (hasattr(f, "read") or hasattr(f, "readinto")):
        raise TypeError("%s: f must be a path (str or os.PathLike) or a file opened from one, "
                        "not %s" % (caller, type(f).__name__))
    if not isinstance(name, (str, bytes, os.PathLike)):
        raise TypeError(
            "%s: the daemon reads checkpoints from files it maps itself, so f must be a path "
            "or a file object with the name of its file; this %s has no usable name (an "
            "in-memory buffer?): write it to a file under a model root and pass the path"
            % (caller, type(f).__name__))
    path = os.fsdecode(os.fspath(name))
    try:
        st = os.stat(path)
    except OSError as e:
        raise TypeError("%s: the file object names %r, which cannot be opened (%s): pass the "
                        "path" % (caller, path, e.strerror)) from None
    try:
        fst = os.fstat(f.fileno())
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        fst = None
    if fst is not None and (fst.st_dev, fst.st_ino) != (st.st_dev, st.st_ino):
        raise TypeError("%s: the file object's name %r is another file than the one it reads "
                        "(renamed or replaced?): pass the path" % (caller, path))
    try:
        position = f.tell()
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        position = 0
    if position != 0:
        raise TypeError("%s: the file object is at byte %d; weightd reads whole files from "
                        "the start: pass the path" % (caller, position))
    return path


def _placement(map_location, torch, caller):
    """Client.load's map_location for torch.load's map_location (not a callable)."""
    if map_location is None:
        return {}  # every storage where it was saved, as torch.load does
    if isinstance(map_location, (str, torch.device)):
        return str(map_location)
    if isinstance(map_location, dict):
        out = {}
        for saved, target in map_location.items():
            if not isinstance(saved, str) or not isinstance(target, (str, torch.device)):
                raise TypeError("%s: a map_location dict maps saved location tags (str) to "
                                "devices, not %r: %r" % (caller, saved, target))
            out[saved] = str(target)
        return out
    raise TypeError("%s: map_location must be None, a str, a torch.device, a dict or a "
                    "callable, not %s" % (caller, type(map_location).__name__))


def _untyped(torch, tensor):
    if hasattr(tensor, "untyped_storage"):  # torch >= 2.0
        return tensor.untyped_storage()
    return tensor.storage().untyped()


def _as_untyped(torch, storage, caller):
    if isinstance(storage, torch.UntypedStorage):
        return storage
    if isinstance(storage, torch.TypedStorage):
        return storage.untyped() if hasattr(storage, "untyped") else storage._untyped_storage
    raise TypeError("%s: map_location returned a %s, not a storage"
                    % (caller, type(storage).__name__))


def _unique_names(model, caller):
    """The model's tensor columns (Model.tensor_columns: the packed table read in bulk);
    refuses a model with two tensors of one name."""
    columns = model.tensor_columns()
    if len(set(columns.names)) != len(columns.names):
        names = set()
        for name in columns.names:
            if name in names:
                raise WeightdError(grpc.StatusCode.UNIMPLEMENTED,
                                   "%s: %s holds two tensors named %r (a dict key with a dot "
                                   "next to a nested dict?); load it with "
                                   "Client.load(tensors=...) or torch.load"
                                   % (caller, model.path, name))
            names.add(name)
    return columns


def _rebuild_on_storages(torch, model, columns, relocate, copy, caller):
    """{name: tensor} like `model`, each storage copied (copy) and/or handed to `relocate`
    (torch.load's map_location callable) once, the tensors rebuilt on what it returns."""
    storages = {}
    out = {}
    for index, (name, buffer_index, storage_byte_offset, saved_location) in enumerate(zip(
            columns.names, columns.buffer_index, columns.storage_byte_offset,
            columns.saved_location)):
        tensor = model[name]
        if buffer_index < 0:  # meta: no storage
            out[name] = tensor
            continue
        key = (buffer_index, storage_byte_offset) if tensor.numel() else ("empty", index)
        storage = storages.get(key)
        if storage is None:
            storage = _untyped(torch, tensor)
            if copy:
                storage = storage.clone()
            if relocate is not None:
                moved = relocate(storage, saved_location)
                if moved is None:
                    moved = torch.serialization.default_restore_location(storage,
                                                                         saved_location)
                storage = _as_untyped(torch, moved, caller)
            storages[key] = storage
        rebuilt = torch.empty(0, dtype=tensor.dtype, device=storage.device)
        rebuilt.set_(storage, tensor.storage_offset(), tensor.shape, tensor.stride())
        if tensor.requires_grad:
            rebuilt.requires_grad_(True)
        out[name] = rebuilt
    return out


def load(f, map_location=None, *, weights_only=True, mmap=None, client=None):
    """What torch.load(f, map_location, weights_only=True) returns, through the daemon.

    The same nested dicts, OrderedDicts (with their _metadata), lists, tuples, sets and
    primitives, with the daemon's tensors in their places: torch.nn.Parameter where torch gives
    one, tensors of one storage sharing it. f: a path (str/PathLike) or a file object opened
    from one. map_location: None (each storage where it was saved), a str or torch.device, a
    dict {saved tag: target}, or a callable(storage, saved_tag) that returns the storage to use
    (None: torch's default), called once per storage with a zero-copy CPU storage.
    mmap: None/True: host tensors are zero-copy read-only views of the daemon's memory (do not
    write to them); False: every storage is copied, so tensors are private and writable.
    weights_only=False is refused: weightd never runs pickle code. client: a weightd.Client
    (default: one per process for $WEIGHTD_ADDRESS).
    """
    caller = "weightd.load"
    if not weights_only:
        raise ValueError(
            "weightd.load: weights_only=False is not supported: weightd never runs pickle "
            "code, so it reads exactly what torch.load(weights_only=True) allows (and more "
            "pickle protocols and big-endian files); use torch.load for files that need code")
    if mmap not in (None, True, False):
        raise TypeError("weightd.load: mmap must be None, True or False, not %r" % (mmap,))
    torch = _torch()
    path = _path_of(f, caller)
    client = client or default_client()
    relocate = None
    if callable(map_location) and not isinstance(map_location, (str, dict, torch.device)):
        relocate, placement = map_location, "cpu"
    else:
        placement = _placement(map_location, torch, caller)
    model = client.load(path, map_location=placement)
    if model.format == "torchscript":
        raise ValueError("weightd.load: %s is a TorchScript archive; torch.load would run "
                         "torch.jit.load on it (code). weightd.jit_load_state(f) gives its "
                         "state_dict() without running code" % path)
    if model.format not in ("torch-zip", "torch-legacy"):
        raise ValueError("weightd.load: %s is a %s file, which torch.load cannot read; "
                         "Client.load gives its tensors" % (path, model.format))
    columns = _unique_names(model, caller)
    if relocate is not None or mmap is False:
        tensors = _rebuild_on_storages(torch, model, columns, relocate, mmap is False, caller)
    else:
        tensors = dict(model)
    requires_grad = dict(zip(columns.names, columns.requires_grad))
    text = model.metadata_json
    if not text:
        raise WeightdError(grpc.StatusCode.INTERNAL,
                           "weightd.load: the daemon sent no value tree for %s" % path)
    tree = json.loads(text)

    def tensor(name, parameter):
        if name not in tensors:
            raise WeightdError(grpc.StatusCode.INTERNAL,
                               "weightd.load: the value tree of %s names tensor %r, which "
                               "the daemon did not describe" % (path, name))
        value = tensors[name]
        if parameter:
            return torch.nn.Parameter(value.detach(), requires_grad=requires_grad[name])
        return value

    return _tree.TreeBuilder(torch, tensor).build(tree)


def _module_prefixes(tree):
    """state_dict()._metadata keys of a TorchScript module tree: every module, pre-order."""
    out = []

    def walk(node, prefix, depth):
        if depth > 1000:
            return
        out.append(prefix)
        for key, value in node.items():
            if (isinstance(value, dict) and isinstance(value.get("__class__"), str)
                    and value["__class__"].startswith("__torch__") and "training" in value):
                walk(value, key if not prefix else prefix + "." + key, depth + 1)

    if isinstance(tree, dict):
        walk(tree, "", 0)
    return out


def jit_load_state(f, _extra_files=None, *, map_location=None, client=None):
    """torch.jit.load(f, map_location, _extra_files).state_dict() without running the
    archive's code: an OrderedDict of its parameters and buffers (with _metadata) in
    state_dict() order. _extra_files: a dict whose keys are filled with those files' bytes
    (b"" for files the archive lacks), as torch.jit.load does."""
    caller = "weightd.jit_load_state"
    torch = _torch()
    path = _path_of(f, caller)
    if callable(map_location) and not isinstance(map_location, (str, dict, torch.device)):
        raise TypeError("weightd.jit_load_state: map_location is a str or torch.device, as "
                        "for torch.jit.load")
    client = client or default_client()
    model = client.load(path, map_location=_placement(map_location, torch, caller))
    if model.format != "torchscript":
        raise ValueError("weightd.jit_load_state: %s is a %s file, not a TorchScript archive; "
                         "use weightd.load" % (path, model.format))
    columns = _unique_names(model, caller)
    state = collections.OrderedDict((name, model[name].detach()) for name in columns.names)
    text = model.metadata_json
    state._metadata = collections.OrderedDict(
        (prefix, {"version": 1}) for prefix in _module_prefixes(json.loads(text) if text else {}))
    if _extra_files is not None:
        for name in list(_extra_files):
            _extra_files[name] = model.extra_file_bytes.get(name, b"")
    return state


def _assign_supported(module):
    try:
        return "assign" in inspect.signature(module.load_state_dict).parameters
    except (TypeError, ValueError):
        return False


def load_into(module, f, *, device="cpu", map_location=None, dtype=None, prefix=None,
              strict=True, assign=None, client=None):
    """Fills `module` (typically built on the meta device) with the checkpoint's tensors.

    With torch >= 2.1 (load_state_dict(assign=True)) the module's parameters and buffers
    become the daemon's tensors themselves: nothing is copied (host tensors are read-only views
    of the daemon's memory, GPU tensors live in its arena; inference only). With an older torch,
    or assign=False, the values are copied into the module's own tensors (meta tensors are
    first allocated on `device` with to_empty). prefix: take the tensors under "<prefix>."
    (e.g. "model" for {"model": state_dict, ...}), names stripped of it. device, map_location,
    dtype: as for Client.load. Returns load_state_dict's (missing_keys, unexpected_keys).
    """
    torch = _torch()
    path = _path_of(f, "weightd.load_into")
    client = client or default_client()
    model = client.load(path, device=device, map_location=map_location, dtype=dtype,
                        tensors=[prefix] if prefix else None)
    state = collections.OrderedDict()
    for full in model.tensor_columns().names:
        name = full
        if prefix:
            if not name.startswith(prefix + "."):
                continue
            name = name[len(prefix) + 1:]
        state[name] = model[full]
    if assign is None:
        assign = _assign_supported(module)
    if assign:
        if not _assign_supported(module):
            raise TypeError("weightd.load_into: assign=True needs torch >= 2.1 "
                            "(load_state_dict(assign=True)); this is torch %s"
                            % torch.__version__)
        return module.load_state_dict(state, strict=strict, assign=True)
    tensors = list(module.parameters()) + list(module.buffers())
    if any(t.is_meta for t in tensors):
        target = device if device not in (None, "meta") else "cpu"
        module.to_empty(device=_target_device(torch, target, state))
    return module.load_state_dict(state, strict=strict)


def _target_device(torch, device, state):
    """Where to_empty puts a meta module: the device the tensors arrived on (the daemon's fake
    GPU hands out CPU tensors), else `device`."""
    for tensor in state.values():
        if not tensor.is_meta:
            return tensor.device
    return torch.device(str(device))

"""Rebuilds what torch.load returns from the daemon's JSON tree (ModelDescription.metadata_json).

The daemon (loader/format/pytree.h) writes JSON null, bools, numbers, strings and arrays for
None, bool, int/float, str and list, and every other value as an object whose first key is a
marker "__x__": {"__tensor__": name[, "__parameter__": true]}, {"__tuple__": [...]},
{"__items__": [[key, value], ...]} for dicts whose keys are not plain strings, "__class__" for
OrderedDict/Counter (with "__state__": their attributes) and TorchScript objects, and so on.
A JSON object without marker keys is a plain dict.
"""
import base64
import binascii
import collections
import sys

import grpc

from .errors import UnsupportedDtypeError, WeightdError


def _bad(message):
    return WeightdError(grpc.StatusCode.INTERNAL, "weightd.load: " + message)


def _is_marker(key):
    return len(key) >= 4 and key.startswith("__") and key.endswith("__")


_DICT_CLASSES = {"collections.OrderedDict": collections.OrderedDict,
                 "collections.Counter": collections.Counter}


class TreeBuilder:
    """One rebuild: `tensor(name, parameter)` gives the tensor a reference names."""

    def __init__(self, torch, tensor, max_depth=200):
        # 200: the daemon's own bound (ReadOptions::max_depth). Up to four Python frames per
        # level: make sure the interpreter allows them.
        self.torch = torch
        self.tensor = tensor
        self.max_depth = max_depth
        if sys.getrecursionlimit() < 5 * max_depth + 1000:
            sys.setrecursionlimit(5 * max_depth + 1000)

    def build(self, value, depth=0):
        if depth > self.max_depth:
            raise _bad("tree nested deeper than %d" % self.max_depth)
        if value is None or isinstance(value, (bool, int, float, str)):
            return value
        if isinstance(value, list):
            return [self.build(item, depth + 1) for item in value]
        if not isinstance(value, dict):
            raise _bad("unexpected JSON value %r" % (value,))
        if not any(_is_marker(k) for k in value):
            return {k: self.build(v, depth + 1) for k, v in value.items()}
        return self._tagged(value, depth)

    def _items(self, value, key, depth):
        items = value.get(key)
        if not isinstance(items, list):
            raise _bad("%s is not a list in %s" % (key, _short(value)))
        return [self.build(item, depth + 1) for item in items]

    def _tagged(self, value, depth):
        if "__tensor__" in value:
            name = value["__tensor__"]
            if not isinstance(name, str):
                raise _bad("tensor reference %s" % _short(value))
            return self.tensor(name, value.get("__parameter__") is True)
        if "__class__" in value or "__items__" in value:
            return self._mapping(value, depth)
        if "__tuple__" in value:
            return tuple(self._items(value, "__tuple__", depth))
        if "__size__" in value:
            return self.torch.Size(self._items(value, "__size__", depth))
        if "__set__" in value:
            return set(self._items(value, "__set__", depth))
        if "__frozenset__" in value:
            return frozenset(self._items(value, "__frozenset__", depth))
        if "__slice__" in value:
            return slice(*self._items(value, "__slice__", depth))
        if "__int__" in value:
            try:
                return int(value["__int__"])
            except (TypeError, ValueError):
                raise _bad("bad big int %s" % _short(value)) from None
        if "__float__" in value:
            text = value["__float__"]
            if text not in ("nan", "inf", "-inf"):
                raise _bad("bad float %s" % _short(value))
            return float(text)
        if "__complex__" in value:
            parts = self._items(value, "__complex__", depth)
            if len(parts) != 2:
                raise _bad("bad complex %s" % _short(value))
            return complex(parts[0], parts[1])
        if "__bytes__" in value or "__bytearray__" in value:
            key = "__bytes__" if "__bytes__" in value else "__bytearray__"
            try:
                data = base64.b64decode(value[key], validate=True)
            except (TypeError, ValueError, binascii.Error):
                raise _bad("bad base64 in %s" % _short(value)) from None
            return data if key == "__bytes__" else bytearray(data)
        if "__device__" in value:
            return self.torch.device(value["__device__"])
        if "__dtype__" in value:
            dtype = getattr(self.torch, str(value["__dtype__"]), None)
            if not isinstance(dtype, self.torch.dtype):
                raise UnsupportedDtypeError(
                    "weightd.load: the checkpoint holds dtype torch.%s, which this torch %s "
                    "does not have" % (value["__dtype__"], self.torch.__version__))
            return dtype
        if "__global__" in value:
            return self._global(str(value["__global__"]))
        if "__storage__" in value:
            raise WeightdError(grpc.StatusCode.UNIMPLEMENTED,
                               "weightd.load: the checkpoint holds a bare storage (not a "
                               "tensor); weightd hands out tensors only")
        if "__repr__" in value:
            raise WeightdError(grpc.StatusCode.UNIMPLEMENTED,
                               "weightd.load: the checkpoint holds a value weightd cannot "
                               "rebuild (a dict key that is a tensor or object?): %s"
                               % value["__repr__"])
        raise _bad("unknown marker in %s" % _short(value))

    def _mapping(self, value, depth):
        cls = value.get("__class__")
        if cls is None:
            out = {}
        elif cls in _DICT_CLASSES:
            out = _DICT_CLASSES[cls]()
        else:
            raise WeightdError(grpc.StatusCode.UNIMPLEMENTED,
                               "weightd.load: the checkpoint holds a %s object, which only "
                               "running its code could rebuild" % cls)
        if "__items__" in value:
            for pair in value["__items__"]:
                if not isinstance(pair, list) or len(pair) != 2:
                    raise _bad("bad dict item %r" % (pair,))
                key = self.build(pair[0], depth + 1)
                try:
                    out[key] = self.build(pair[1], depth + 1)
                except TypeError:
                    raise _bad("unhashable dict key %r" % (key,)) from None
        for key, item in value.items():
            if not _is_marker(key):
                out[key] = self.build(item, depth + 1)
        state = value.get("__state__")
        if state is not None:
            # torch.load(weights_only=True) does inst.__dict__.update(state) for OrderedDicts
            # (a state_dict's _metadata).
            state = self.build(state, depth + 1)
            if not isinstance(state, dict):
                raise _bad("the attributes of a %s are a %s" % (cls, type(state).__name__))
            out.__dict__.update(state)
        return out

    def _global(self, name):
        # Inert torch constants (layouts, memory formats, qschemes); never a callable.
        module, _, attr = name.rpartition(".")
        if module == "torch":
            found = getattr(self.torch, attr, None)
            kinds = tuple(k for k in (getattr(self.torch, "layout", None),
                                      getattr(self.torch, "memory_format", None),
                                      getattr(self.torch, "qscheme", None),
                                      getattr(self.torch, "dtype", None)) if k is not None)
            if found is not None and isinstance(found, kinds):
                return found
        raise WeightdError(grpc.StatusCode.UNIMPLEMENTED,
                           "weightd.load: the checkpoint holds a reference to %s, which "
                           "weightd does not hand out" % name)


def _short(value):
    text = repr(value)
    return text if len(text) <= 120 else text[:117] + "..."

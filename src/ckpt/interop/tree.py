"""The non-tensor part of a state as JSON, for safetensors metadata (``ckpt.tree``).

Plain JSON where it can (str-keyed dicts, lists, str, int, finite floats, bool, None), tagged objects
where JSON has no type: ``{"$tuple": [...]}``, ``{"$dict": [[key, value], ...]}`` (non-str keys),
``{"$odict": ..., "$attrs": ...}``, ``$set``, ``$frozenset``, ``$bytes``, ``$bytearray`` (base64),
``$complex``, ``$float`` ("nan", "inf"), ``$slice``, ``$size``, ``$dtype``, ``$device``, ``$np`` (numpy
scalar), and ``{"$tensor": NAME}`` / ``{"$ndarray": NAME}`` for tensors stored in the file, with
``"$same_as": FIRST_NAME`` for a tied one. Decoding builds only those types: nothing is imported or run.
"""

from __future__ import annotations

import base64
import math
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch

from ckpt.errors import InvalidArgumentError, UnsupportedTypeError
from ckpt.interop.files import flat_name

TREE_KEY = "ckpt.tree"
_NUMPY_CHARS = frozenset("?bBhHiIlLqQefdFD")


def encode(obj: Any, tensor_ref: Callable[[tuple, Any], dict], path: tuple) -> Any:
    """JSON for a non-tensor value; tagged objects ({"$tuple": ...}) for what JSON lacks."""
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if type(obj) is int:
        return obj
    if type(obj) is float:
        return obj if math.isfinite(obj) else {"$float": repr(obj)}
    if isinstance(obj, (torch.Tensor, np.ndarray)):
        return tensor_ref(path, obj)
    if type(obj) in (dict, OrderedDict):
        items = list(obj.items())
        if type(obj) is dict and all(isinstance(k, str) and not k.startswith("$") for k, _ in items):
            return {k: encode(v, tensor_ref, path + (k,)) for k, v in items}
        enc = [[encode(k, tensor_ref, path), encode(v, tensor_ref, path + (k,))] for k, v in items]
        if type(obj) is dict:
            return {"$dict": enc}
        out: dict[str, Any] = {"$odict": enc}
        if vars(obj):
            out["$attrs"] = encode(dict(vars(obj)), tensor_ref, path)
        return out
    if type(obj) is list:
        return [encode(v, tensor_ref, path + (i,)) for i, v in enumerate(obj)]
    if type(obj) is tuple:
        return {"$tuple": [encode(v, tensor_ref, path + (i,)) for i, v in enumerate(obj)]}
    if type(obj) in (set, frozenset):
        return {f"${type(obj).__name__}": [encode(v, tensor_ref, path) for v in obj]}
    if type(obj) in (bytes, bytearray):
        return {f"${type(obj).__name__}": base64.b64encode(obj).decode("ascii")}
    if type(obj) is complex:
        return {"$complex": [encode(obj.real, tensor_ref, path), encode(obj.imag, tensor_ref, path)]}
    if type(obj) is slice:
        return {"$slice": [obj.start, obj.stop, obj.step]}
    if type(obj) is torch.Size:
        return {"$size": list(obj)}
    if type(obj) is torch.dtype:
        return {"$dtype": str(obj).removeprefix("torch.")}
    if type(obj) is torch.device:
        return {"$device": str(obj)}
    if isinstance(obj, np.generic) and obj.dtype.char in _NUMPY_CHARS:
        return {"$np": [obj.dtype.str, encode(obj.item(), tensor_ref, path)]}
    raise UnsupportedTypeError(f"cannot write {type(obj).__name__} at {flat_name(path) or '<root>'} into "
                               f"safetensors metadata; restore to a .pt file instead")


def decode(node: Any, tensors: Mapping[str, torch.Tensor], arrays: dict[str, Any], depth: int = 0) -> Any:
    """The inverse of encode; ``arrays`` caches ndarray views so tied arrays stay one object."""
    if depth > 500:
        raise InvalidArgumentError(f"{TREE_KEY} metadata is nested too deeply")
    d = depth + 1
    if isinstance(node, list):
        return [decode(v, tensors, arrays, d) for v in node]
    if not isinstance(node, dict):
        return node
    tag = next((k for k in node if k.startswith("$")), None)
    if tag is None:
        return {k: decode(v, tensors, arrays, d) for k, v in node.items()}
    v = node[tag]
    if tag in ("$tensor", "$ndarray"):
        name = node.get("$same_as", v)  # a tied tensor is the first one's object again
        if not isinstance(name, str) or name not in tensors:
            raise InvalidArgumentError(f"{TREE_KEY} names tensor {name!r:.80}, which the file does not hold")
        if tag == "$tensor":
            return tensors[name]
        if name not in arrays:
            arrays[name] = tensors[name].numpy()
        return arrays[name]
    if tag in ("$dict", "$odict"):
        out = OrderedDict() if tag == "$odict" else {}
        for k, item in v:
            out[_hashable(decode(k, tensors, arrays, d))] = decode(item, tensors, arrays, d)
        if "$attrs" in node:
            out.__dict__.update(decode(node["$attrs"], tensors, arrays, d))
        return out
    if tag == "$tuple":
        return tuple(decode(x, tensors, arrays, d) for x in v)
    if tag in ("$set", "$frozenset"):
        items = (_hashable(decode(x, tensors, arrays, d)) for x in v)
        return set(items) if tag == "$set" else frozenset(items)
    if tag in ("$bytes", "$bytearray"):
        raw = base64.b64decode(v, validate=True)
        return raw if tag == "$bytes" else bytearray(raw)
    if tag == "$float" and v in ("nan", "inf", "-inf"):
        return float(v)
    if tag == "$complex":
        return complex(decode(v[0], tensors, arrays, d), decode(v[1], tensors, arrays, d))
    if tag == "$slice" and all(x is None or type(x) is int for x in v):
        return slice(*v)
    if tag == "$size":
        return torch.Size(int(x) for x in v)
    if tag == "$dtype":
        dtype = getattr(torch, str(v), None)
        if isinstance(dtype, torch.dtype):
            return dtype
    if tag == "$device":
        return torch.device(str(v))
    if tag == "$np":
        dt = np.dtype(str(v[0]))
        if dt.char in _NUMPY_CHARS:
            return dt.type(decode(v[1], tensors, arrays, d))
    raise InvalidArgumentError(f"{TREE_KEY} metadata has an entry ckpt cannot read: {tag} {v!r:.80}")


def _hashable(k: Any) -> Any:
    try:
        hash(k)
    except TypeError:
        raise InvalidArgumentError(f"{TREE_KEY} metadata uses an unhashable dict key or set item {k!r:.80}") from None
    return k

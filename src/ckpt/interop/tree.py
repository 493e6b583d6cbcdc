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
import warnings
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch

from ckpt.errors import InvalidFileError, UnsupportedTypeError
from ckpt.interop.files import flat_name
from ckpt.validation import describe

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
    """The inverse of encode; ``arrays`` caches ndarray views so tied arrays stay one object.

    The metadata comes from a file and may be hostile: every tag checks the shape and range of
    its value and builds only its own type; anything else is an InvalidFileError.
    """
    if depth > 500:
        raise _bad("is nested too deeply")
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
            raise _bad(f"names tensor {describe(name)}, which the file does not hold")
        if tag == "$tensor":
            return tensors[name]
        if name not in arrays:
            try:
                arrays[name] = tensors[name].numpy()
            except (TypeError, RuntimeError) as exc:  # e.g. bfloat16, which numpy has no type for
                raise _bad(f"asks for tensor {describe(name)} as a numpy array, which it cannot be ({exc})") from None
        return arrays[name]
    if tag in ("$dict", "$odict"):
        out = OrderedDict() if tag == "$odict" else {}
        for pair in _list(tag, v):
            if not isinstance(pair, list) or len(pair) != 2:
                raise _bad(f"has a {tag} entry that is not a [key, value] pair: {describe(pair)}")
            out[_hashable(decode(pair[0], tensors, arrays, d))] = decode(pair[1], tensors, arrays, d)
        if "$attrs" in node:
            attrs = decode(node["$attrs"], tensors, arrays, d)
            if tag != "$odict" or not isinstance(attrs, dict) or not all(isinstance(k, str) for k in attrs):
                raise _bad(f"has $attrs that are not a str-keyed dict on an $odict: {describe(attrs)}")
            out.__dict__.update(attrs)
        return out
    if tag == "$tuple":
        return tuple(decode(x, tensors, arrays, d) for x in _list(tag, v))
    if tag in ("$set", "$frozenset"):
        items = [_hashable(decode(x, tensors, arrays, d)) for x in _list(tag, v)]
        return set(items) if tag == "$set" else frozenset(items)
    if tag in ("$bytes", "$bytearray") and isinstance(v, str):
        try:
            raw = base64.b64decode(v, validate=True)
        except ValueError as exc:  # binascii.Error
            raise _bad(f"has {tag} that is not base64 ({exc})") from None
        return raw if tag == "$bytes" else bytearray(raw)
    if tag == "$float" and v in ("nan", "inf", "-inf"):
        return float(v)
    if tag == "$complex":
        parts = [decode(x, tensors, arrays, d) for x in _list(tag, v)]
        if len(parts) == 2 and all(_is_real(x) for x in parts):
            try:
                return complex(parts[0], parts[1])
            except OverflowError:
                raise _bad(f"has a $complex part too large for a float: {describe(v)}") from None
    if tag == "$slice" and isinstance(v, list) and len(v) == 3 and all(x is None or _is_int(x) for x in v):
        return slice(*v)
    if tag == "$size" and isinstance(v, list) and all(_is_int(x) and 0 <= x < 2**63 for x in v):
        return torch.Size(v)
    if tag == "$dtype" and isinstance(v, str) and v.isidentifier() and not v.startswith("_"):
        dtype = getattr(torch, v, None)
        if isinstance(dtype, torch.dtype):
            return dtype
    if tag == "$device" and isinstance(v, str) and len(v) <= 64:
        try:
            return torch.device(v)
        except (RuntimeError, ValueError, TypeError) as exc:
            why = " ".join(str(exc).split())[:120]
            raise _bad(f"has a $device torch does not know: {describe(v)} ({why})") from None
    if tag == "$np" and isinstance(v, list) and len(v) == 2 and isinstance(v[0], str) and len(v[0]) <= 8:
        return _np_scalar(v[0], decode(v[1], tensors, arrays, d))
    raise _bad(f"has an entry ckpt cannot read: {describe(tag)} {describe(v)}")


def _np_scalar(code: str, value: Any) -> Any:
    """A numpy scalar of dtype ``code`` holding ``value`` exactly, or InvalidFileError."""
    try:
        dt = np.dtype(code)
    except (TypeError, ValueError) as exc:
        raise _bad(f"has a $np dtype numpy does not know: {describe(code)} ({exc})") from None
    if dt.char not in _NUMPY_CHARS:
        raise _bad(f"has a $np dtype ckpt does not write: {describe(code)}")
    kind_ok = {"b": type(value) is bool, "i": _is_int(value), "u": _is_int(value),
               "f": _is_real(value), "c": _is_real(value) or type(value) is complex}[dt.kind]
    if dt.kind in "iu" and kind_ok:
        info = np.iinfo(dt)
        kind_ok = info.min <= value <= info.max
    if not kind_ok:
        raise _bad(f"has a $np value that does not fit {dt.name}: {describe(value)}")
    try:
        with np.errstate(all="raise"), warnings.catch_warnings():
            warnings.simplefilter("error")
            return dt.type(value)
    except (ArithmeticError, ValueError, TypeError, RuntimeWarning) as exc:
        raise _bad(f"has a $np value that does not fit {dt.name}: {describe(value)} ({exc})") from None


def _is_int(x: Any) -> bool:
    return type(x) is int


def _is_real(x: Any) -> bool:
    return type(x) in (int, float)


def _list(tag: str, v: Any) -> list:
    if not isinstance(v, list):
        raise _bad(f"has {tag} whose value is not a list: {describe(v)}")
    return v


def _bad(what: str) -> InvalidFileError:
    return InvalidFileError(f"{TREE_KEY} metadata {what}")


def _hashable(k: Any) -> Any:
    try:
        hash(k)
    except TypeError:
        raise _bad(f"uses an unhashable dict key or set item {describe(k)}") from None
    return k

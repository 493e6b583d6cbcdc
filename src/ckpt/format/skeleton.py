"""Split a training state into its tensors and a pickled "skeleton", and read skeletons back safely.

Tensors (and numpy arrays) are stored elsewhere, so the skeleton holds only plain containers and
scalars, with every tensor replaced by a persistent id naming its slot. A skeleton is only ever read
through the restricted unpickler of :mod:`ckpt.format.unpickle`, which resolves no Python global outside
a short allowlist: a planted pickle can build lists and dicts, but it cannot import or call anything.
"""

from __future__ import annotations

import io
import pickle
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from ckpt.errors import UnsupportedTypeError
from ckpt.format.unpickle import (_CONTAINERS, _NUMPY_CHARS, MAX_DEPTH, MAX_SKELETON_BYTES, ArraySlot, TensorSlot,
                                  _corrupt, _fill, _max_nodes, allowed_globals, load_structure)

__all__ = ["Flattened", "TensorSlot", "ArraySlot", "flatten", "unflatten", "load_structure"]

PROTOCOL = 5
_MAX_TREE_NODES = 50_000_000

_ALLOWED_GLOBALS = allowed_globals()

_GLOBAL_OBJECTS = frozenset(_ALLOWED_GLOBALS.values())


# Values pickled as themselves; the walk has nothing to check inside them.
_PLAIN = frozenset({type(None), bool, int, float, complex, str, bytes, bytearray})
# Types the pickler may meet outside persistent ids; anything else is refused while pickling.
_PICKLABLE = _PLAIN | _CONTAINERS | {slice, torch.Size}


@dataclass
class Flattened:
    """A state split for storage: `skeleton` plus the tensors its slots refer to."""

    skeleton: bytes  # protocol 5 pickle; tensors replaced by ("tensor" | "ndarray", slot)
    tensors: list[torch.Tensor]  # slot -> tensor as given (not copied, maybe a view, on CUDA...)
    kinds: list[str]  # slot -> "torch" or "numpy"
    leaves: list[tuple[tuple, int]]  # (key path, slot) for every tensor leaf, in traversal order


# ----------------------------------------------------------------------------------------- save


def flatten(state: Any) -> Flattened:
    """Split `state` into a skeleton pickle and a slot table of tensors.

    Raises UnsupportedTypeError, naming the key path, for anything the restricted unpickler
    could not read back, so a bad state fails at save time rather than at load time.
    """
    walk = _Flattener()
    walk.visit(state, (), "value", 0)
    buffer = io.BytesIO()
    _SkeletonPickler(buffer, walk.pids).dump(state)
    skeleton = buffer.getvalue()
    if len(skeleton) > MAX_SKELETON_BYTES:
        raise UnsupportedTypeError(
            f"the state's non-tensor part pickles to {len(skeleton)} bytes, over the "
            f"{MAX_SKELETON_BYTES}-byte limit; store bulky data as tensors or numpy arrays")
    if walk.nodes > _max_nodes(len(skeleton)) or walk.visits > 16 * len(walk.containers) + 4096:
        raise UnsupportedTypeError(
            f"the state reuses the same containers at so many places that it expands to "
            f"{walk.nodes} values, which loading would refuse; store each container once")
    return Flattened(skeleton, walk.tensors, walk.kinds, walk.leaves)


class _Attr:
    """Key-path component for an attribute (OrderedDict._metadata); only used in messages."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name


def _where(path: tuple, context: str = "value") -> str:
    text = "state" + "".join(f".{k.name}" if isinstance(k, _Attr) else f"[{k!r}]" for k in path)
    return text if context == "value" else f"{text} (inside {context})"


class _Flattener:
    """One walk over the state: checks every value, assigns tensor slots, records the leaves.

    Doing the checks here rather than while pickling is what lets errors name a key path.
    `context` is "value" where a tensor may appear, else where we are ("a dict key", ...).
    """

    def __init__(self) -> None:
        self.tensors: list[torch.Tensor] = []
        self.kinds: list[str] = []
        self.leaves: list[tuple[tuple, int]] = []
        self.pids: dict[int, tuple[str, int]] = {}  # id(tensor or ndarray in state) -> persistent id
        self._by_storage: dict[tuple, int] = {}
        self._open: set[int] = set()  # ids of the containers we are inside, to catch cycles
        self.nodes = 0  # size of the state as a tree (shared containers count at every path)
        self.containers: set[int] = set()  # distinct containers (a skeleton has no memo: sharing expands)
        self.visits = 0  # containers entered, counting a shared one at every place it appears

    def visit(self, obj: Any, path: tuple, context: str, depth: int) -> None:
        self.nodes += 1  # counted exactly as _TreeCheck counts them at load time
        if self.nodes > _MAX_TREE_NODES:
            raise UnsupportedTypeError(
                f"the state expands to more than {_MAX_TREE_NODES} values as a tree (containers shared at "
                f"many places); store each container once")
        kind = type(obj)
        if kind in _PLAIN:
            return
        if depth > MAX_DEPTH:
            raise UnsupportedTypeError(f"{_where(path)} is nested more than {MAX_DEPTH} levels deep")
        if isinstance(obj, torch.Tensor) or kind is np.ndarray:
            if context != "value":
                raise UnsupportedTypeError(
                    f"{_where(path, context)} holds a tensor or array; ckpt stores those by key "
                    "path, so they may only appear as dict values or list/tuple items")
            self.leaves.append((path, self._slot(obj, path)))
        elif kind in _CONTAINERS:
            self._visit_container(obj, path, context, depth)
        else:
            _check_atom(obj, path, context)

    def _visit_container(self, obj: Any, path: tuple, context: str, depth: int) -> None:
        self.containers.add(id(obj))
        self.visits += 1
        if id(obj) in self._open:
            raise UnsupportedTypeError(
                f"{_where(path, context)} contains itself (a reference cycle); ckpt stores trees")
        self._open.add(id(obj))
        try:
            if isinstance(obj, dict):
                for key, value in obj.items():
                    self.visit(key, path, "a dict key", depth + 1)
                    self.visit(value, path + (key,), context, depth + 1)
                for name, value in vars(obj).items() if type(obj) is OrderedDict else ():
                    self.visit(value, path + (_Attr(name),), "an OrderedDict attribute", depth + 1)
            elif isinstance(obj, (list, tuple)):
                for index, value in enumerate(obj):
                    self.visit(value, path + (index,), context, depth + 1)
            else:
                for value in obj:
                    self.visit(value, path, "a set", depth + 1)
        finally:
            self._open.discard(id(obj))

    def _slot(self, obj: torch.Tensor | np.ndarray, path: tuple) -> int:
        known = self.pids.get(id(obj))
        if known is not None:
            return known[1]
        if type(obj) is np.ndarray:
            tensor, kind = _tensor_from_numpy(obj, path), "numpy"
        else:
            _check_tensor(obj, path)
            tensor, kind = obj, "torch"
        key = _storage_key(tensor, kind)
        slot = self._by_storage.get(key) if key is not None else None
        if slot is None:
            slot = len(self.tensors)
            self.tensors.append(tensor)
            self.kinds.append(kind)
            if key is not None:
                self._by_storage[key] = slot
        self.pids[id(obj)] = ("ndarray" if kind == "numpy" else "tensor", slot)
        return slot


def _storage_key(tensor: torch.Tensor, kind: str) -> tuple | None:
    """Identity of a tensor view: equal keys mean the same bytes seen the same way.

    state_dict() returns fresh tensor objects, so id() cannot detect tied weights. Storages
    without memory (empty tensors) all have data_ptr 0 and are never tied.
    """
    # The view's first byte (storage start + offset) names the same memory as (storage, offset) does,
    # without making a Python storage object per tensor.
    pointer = tensor.data_ptr()
    if pointer == 0:  # no memory (an empty tensor): never tied
        return None
    return (kind, tensor.device, pointer, tuple(tensor.shape), tensor.stride(), tensor.dtype, tensor.is_conj(),
            tensor.is_neg())


def _check_tensor(tensor: torch.Tensor, path: tuple) -> None:
    kind = type(tensor)
    if (kind is torch.Tensor or kind is torch.nn.Parameter) and tensor.layout == torch.strided \
            and not (tensor.is_nested or tensor.is_quantized or tensor.is_meta):
        return  # the usual case, decided without formatting the path (this runs once per tensor)
    where = _where(path)
    if kind is not torch.Tensor and kind is not torch.nn.Parameter:
        name = f"{kind.__module__}.{kind.__qualname__}"
        if kind.__module__.startswith("torch.distributed"):
            raise UnsupportedTypeError(
                f"{where} is a {name}; use ckpt's torch.distributed integration to save sharded state")
        raise UnsupportedTypeError(
            f"{where} is a tensor subclass {name}; convert it to a plain torch.Tensor before saving")
    if tensor.is_nested:
        raise UnsupportedTypeError(
            f"{where} is a nested tensor; save its components (tensor.unbind()) instead")
    if tensor.layout != torch.strided:
        raise UnsupportedTypeError(
            f"{where} has layout {tensor.layout}; convert it with tensor.to_dense() before saving")
    if tensor.is_quantized:
        raise UnsupportedTypeError(
            f"{where} is a quantized tensor; save tensor.dequantize() or its int_repr(), "
            "q_scale() and q_zero_point() instead")
    if tensor.is_meta:
        raise UnsupportedTypeError(
            f"{where} is on the meta device and has no data; materialize it (e.g. "
            "module.to_empty(device=...)) or leave it out of the state")


def _tensor_from_numpy(array: np.ndarray, path: tuple) -> torch.Tensor:
    """Wrap an ndarray as a tensor sharing its memory (copied only for negative strides)."""
    where = _where(path)
    if array.dtype.hasobject:
        raise UnsupportedTypeError(
            f"{where} is a numpy array of dtype {array.dtype} (holds Python objects, which "
            "cannot be stored safely); convert it to a numeric dtype or to a list")
    if not array.dtype.isnative:
        raise UnsupportedTypeError(
            f"{where} is a numpy array with non-native byte order ({array.dtype.str}); convert "
            "it with array.astype(array.dtype.newbyteorder('='))")
    if array.dtype.char not in _NUMPY_CHARS:
        raise UnsupportedTypeError(
            f"{where} is a numpy array of dtype {array.dtype}, which torch cannot hold; convert "
            "it to a bool, integer, float or complex dtype")
    if any(stride < 0 for stride in array.strides):
        array = np.ascontiguousarray(array)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # read-only arrays: we never write to them
            return torch.from_numpy(array)
    except (TypeError, ValueError, RuntimeError) as error:
        raise UnsupportedTypeError(f"{where}: numpy array cannot be stored ({error})") from error


def _check_atom(obj: Any, path: tuple, context: str) -> None:
    """Accept the non-container values the skeleton can carry; refuse everything else."""
    kind = type(obj)
    if kind is torch.dtype or kind is torch.device or kind is torch.Size:
        return
    if kind is slice:
        if all(type(part) in (int, type(None)) for part in (obj.start, obj.stop, obj.step)):
            return
        problem = "a slice with non-integer bounds"
    elif isinstance(obj, np.generic):
        if obj.dtype.char in _NUMPY_CHARS:
            return
        problem = f"a numpy scalar of dtype {obj.dtype}"
    else:
        problem = f"a {kind.__module__}.{kind.__qualname__}"
    raise UnsupportedTypeError(
        f"{_where(path, context)} is {problem}, which ckpt cannot store safely; {_advice(obj)}")


def _advice(obj: Any) -> str:
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):
        return "convert the namedtuple with ._asdict() or tuple(...)"
    if hasattr(type(obj), "__dataclass_fields__"):
        return "convert the dataclass with dataclasses.asdict(...)"
    if callable(obj):
        return "functions and classes cannot be stored; keep them in code and store their settings"
    if isinstance(obj, (int, float, str)):
        return "store it as a plain int, float or str (e.g. an Enum's .value)"
    if isinstance(obj, np.ndarray):
        return "store plain np.ndarray data (np.asarray drops subclass parts such as a mask)"
    for base in (dict, list, tuple, set, frozenset):
        if isinstance(obj, base):
            return f"convert it to a plain {base.__name__}"
    if hasattr(obj, "state_dict"):
        return "store obj.state_dict() instead"
    return ("use only dicts, lists, tuples, sets, numbers, str, bytes, tensors and numpy arrays "
            "(e.g. store vars(obj) or a to_dict() of the object)")


def _scalar_pid(obj: Any) -> tuple | None:
    """Persistent ids for torch/numpy values that would otherwise pickle as globals."""
    kind = type(obj)
    if kind is torch.dtype:
        return ("dtype", str(obj).removeprefix("torch."))
    if kind is torch.device:
        return ("device", obj.type, obj.index)
    if isinstance(obj, np.generic):
        return ("npscalar", obj.dtype.char, obj.tobytes())
    return None


class _SkeletonPickler(pickle.Pickler):
    """Pickles an already-walked state, swapping tensors and torch/numpy values for persistent ids.

    reducer_override is a second guard behind the walk: any object that would need a global
    outside the allowlist fails here rather than producing an unreadable checkpoint.
    """

    def __init__(self, file: io.BytesIO, pids: dict[int, tuple[str, int]]) -> None:
        super().__init__(file, protocol=PROTOCOL)
        self._pids = pids
        # No memo: equal states pickle to equal bytes however their objects are shared (format 2's
        # content hash is over these bytes). flatten() refuses cycles, the one thing a memo is needed for.
        self.fast = True

    def persistent_id(self, obj: Any) -> tuple | None:
        if type(obj) in _PICKLABLE:
            return None
        pid = self._pids.get(id(obj))
        return pid if pid is not None else _scalar_pid(obj)

    def reducer_override(self, obj: Any) -> Any:
        if type(obj) in _PICKLABLE or (type(obj) is type and obj in _GLOBAL_OBJECTS):
            return NotImplemented  # the classes themselves are met when REDUCE args are saved
        kind = type(obj)
        raise UnsupportedTypeError(
            f"cannot store a {kind.__module__}.{kind.__qualname__} in a checkpoint; {_advice(obj)}")


# ----------------------------------------------------------------------------------------- load


def unflatten(skeleton: bytes, tensors: Sequence[torch.Tensor]) -> Any:
    """Rebuild the state: `load_structure`, then put `tensors[slot]` where each placeholder is.

    A slot used at several places gets the very same object at each (tied weights stay tied).
    Slots of kind "numpy" come back as ndarrays sharing memory with the CPU tensor.
    """
    structure = load_structure(skeleton, num_slots=len(tensors))
    placed: dict[int, Any] = {}  # slot -> object put in the state (one ndarray per numpy slot)

    def value(placeholder: TensorSlot) -> Any:
        slot = placeholder.slot
        if slot not in placed:
            placed[slot] = tensors[slot]
            if type(placeholder) is ArraySlot:
                try:
                    placed[slot] = tensors[slot].numpy(force=True)
                except (TypeError, RuntimeError) as error:
                    raise _corrupt(f"slot {slot} cannot be a numpy array ({error})") from error
        return placed[slot]

    return _fill(structure, value, {})



"""Split a training state into its tensors and a pickled "skeleton", and read skeletons back safely.

Tensors (and numpy arrays) are stored elsewhere, so the skeleton holds only plain containers and
scalars, with every tensor replaced by a persistent id naming its slot. A skeleton is only ever read
through `_RestrictedUnpickler`, which resolves no Python global outside a short allowlist: a planted
pickle can build lists and dicts, but it cannot import or call anything.
"""

from __future__ import annotations

import io
import pickle
import pickletools
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch

from ckpt.errors import CkptError, CorruptCheckpointError, UnsafeMetadataError, UnsupportedTypeError

__all__ = ["Flattened", "TensorSlot", "ArraySlot", "flatten", "unflatten", "load_structure"]

PROTOCOL = 5
MAX_SKELETON_BYTES = 256 * 2**20
MAX_DEPTH = 200  # nesting levels; real states have fewer than ten
_MAX_SLOTS = 2**31
_MAX_TREE_NODES = 50_000_000

# The only globals a skeleton may name: protocol 5 writes REDUCE on the last four for complex,
# slice, OrderedDict and torch.Size. set and frozenset have their own opcodes since protocol 4
# and are listed because they are equally harmless constructors.
_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "complex"): complex,
    ("builtins", "slice"): slice,
    ("collections", "OrderedDict"): OrderedDict,
    ("torch", "Size"): torch.Size,
}

# Opcodes that the protocol 4/5 pickler writes for the allowed types, plus GLOBAL (checked by
# name). Notably absent: EXT1/2/4, which the C unpickler answers from copyreg's process-wide
# cache without ever calling find_class; INST/OBJ; PUT/BINPUT/LONG_BINPUT, whose index sizes the
# memo (one 4-byte index makes it allocate and zero 64 GiB); PERSID and out-of-band buffers.
_ALLOWED_OPCODES = frozenset("""
    PROTO FRAME STOP MARK POP POP_MARK DUP MEMOIZE BINGET LONG_BINGET
    NONE NEWTRUE NEWFALSE BININT BININT1 BININT2 LONG1 LONG4 BINFLOAT
    SHORT_BINUNICODE BINUNICODE BINUNICODE8 SHORT_BINBYTES BINBYTES BINBYTES8 BYTEARRAY8
    EMPTY_DICT SETITEM SETITEMS EMPTY_LIST APPEND APPENDS EMPTY_TUPLE TUPLE TUPLE1 TUPLE2 TUPLE3
    EMPTY_SET ADDITEMS FROZENSET GLOBAL STACK_GLOBAL REDUCE NEWOBJ BUILD BINPERSID
""".split())

_GLOBAL_OBJECTS = frozenset(_ALLOWED_GLOBALS.values())

_TORCH_DTYPES: dict[str, torch.dtype] = {
    str(d).removeprefix("torch."): d for d in vars(torch).values() if isinstance(d, torch.dtype)
}
# numpy type codes that torch.from_numpy accepts; also the numpy scalar types we store.
_NUMPY_CHARS = frozenset("?bBhHiIlLqQefdFD")

# Values pickled as themselves; the walk has nothing to check inside them.
_PLAIN = frozenset({type(None), bool, int, float, complex, str, bytes, bytearray})
_CONTAINERS = frozenset({dict, OrderedDict, list, tuple, set, frozenset})
# Types the pickler may meet outside persistent ids; anything else is refused while pickling.
_PICKLABLE = _PLAIN | _CONTAINERS | {slice, torch.Size}


class TensorSlot:
    """Placeholder for the tensor in slot `slot`, as `load_structure` returns it.

    Immutable, with no __dict__ and no __setstate__, so a crafted BUILD or REDUCE on it fails.
    """

    __slots__ = ("slot",)

    def __init__(self, slot: int) -> None:
        object.__setattr__(self, "slot", slot)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable")

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.slot == self.slot  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash((type(self).__name__, self.slot))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.slot})"


class ArraySlot(TensorSlot):
    """Placeholder for a slot that held a numpy array; `unflatten` gives back an ndarray."""

    __slots__ = ()


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
    if walk.nodes > _max_nodes(len(skeleton)) or walk.nodes > 16 * len(walk.containers) + 4096:
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
    pointer = tensor.untyped_storage().data_ptr()
    if pointer == 0:
        return None
    return (kind, tensor.device, pointer, tensor.storage_offset(), tuple(tensor.shape),
            tensor.stride(), tensor.dtype, tensor.is_conj(), tensor.is_neg())


def _check_tensor(tensor: torch.Tensor, path: tuple) -> None:
    kind = type(tensor)
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


def load_structure(skeleton: bytes, num_slots: int | None = None) -> Any:
    """Unpickle a skeleton without executing anything; tensors come back as TensorSlot/ArraySlot.

    `num_slots`, when known, bounds the slot numbers. The result is safe to walk naively: no
    cycles, at most MAX_DEPTH levels, a bounded size as a tree, and placeholders only as dict
    values or list/tuple items. Raises UnsafeMetadataError for any global or opcode ckpt never
    writes, CorruptCheckpointError for damaged or malformed data.
    """
    if not isinstance(skeleton, (bytes, bytearray, memoryview)):
        raise CorruptCheckpointError(f"skeleton must be bytes, got {type(skeleton).__name__}")
    if len(skeleton) > MAX_SKELETON_BYTES:
        raise CorruptCheckpointError(
            f"skeleton is {len(skeleton)} bytes, over the {MAX_SKELETON_BYTES}-byte limit; "
            "the checkpoint is damaged or was not written by ckpt")
    data = bytes(skeleton)
    _scan_opcodes(data)
    unpickler = _RestrictedUnpickler(io.BytesIO(data), num_slots)
    try:
        structure = unpickler.load()
    except CkptError:
        raise
    except Exception as error:  # truncated, garbage, or type errors from allowed constructors
        raise _corrupt(f"{type(error).__name__}: {error}") from error
    _TreeCheck(_max_nodes(len(data))).visit(structure, 0)
    return structure


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


def _max_nodes(skeleton_size: int) -> int:
    """How many nodes a skeleton may expand to as a tree: far above what sharing in a real state
    gives (about one node per byte without it), far below what a crafted DAG can reach."""
    return 64 * skeleton_size + 4096


def _corrupt(detail: str) -> CorruptCheckpointError:
    return CorruptCheckpointError(
        f"skeleton is not a valid ckpt pickle ({detail}); the checkpoint is damaged or was not "
        "written by ckpt")


def _unsafe(what: str, global_name: str | None = None) -> UnsafeMetadataError:
    return UnsafeMetadataError(
        f"the skeleton asks for {what}, which ckpt never writes; the checkpoint may be malicious "
        "and nothing in it was executed", global_name=global_name)


def _shown(module: str, name: str) -> str:
    text = f"{module}.{name}"
    return text if len(text) <= 200 and text.isprintable() else ascii(text[:200])


def _refuse_global(module: str, name: str) -> UnsafeMetadataError:
    shown = _shown(module, name)
    return _unsafe(f"the Python global {shown} (not on the allowlist)", global_name=shown)


def _scan_opcodes(data: bytes) -> None:
    """Check every opcode before anything is unpickled (see _ALLOWED_OPCODES for why).

    Reads the whole stream so that a refused global is named even when it comes after some
    other refused opcode (old-protocol pickles start with PUT). Arguments are skipped using
    pickletools' table of their sizes; pickletools.genops decodes them all and is much slower.
    """
    pos, end = 0, len(data)
    refused_opcode = None
    while pos < end:
        code = data[pos]
        name = _OPCODE_NAMES.get(code)
        if name is None:
            raise _corrupt(f"unknown opcode {code:#04x} at offset {pos}")
        start, pos = pos + 1, _skip_argument(data, pos + 1, code)
        if name in ("GLOBAL", "INST"):
            module, qualname = _global_name(data[start:pos])
            if (module, qualname) not in _ALLOWED_GLOBALS:
                raise _refuse_global(module, qualname)
        elif name.startswith("EXT"):
            _refuse_extension(int.from_bytes(data[start:pos], "little", signed=name == "EXT4"))
        if name not in _ALLOWED_OPCODES and refused_opcode is None:
            refused_opcode = name
        if name == "STOP":
            break
    else:
        raise _corrupt("the data is truncated (it has no STOP opcode)")
    if refused_opcode is not None:
        raise _unsafe(f"the pickle opcode {refused_opcode}")


def _argument_kinds() -> dict[int, tuple[int, int]]:
    """opcode byte -> (size, kind): kind 0 fixed size, 1 length-prefixed, 2 newline-terminated lines."""
    prefixes = {pickletools.TAKEN_FROM_ARGUMENT1: 1, pickletools.TAKEN_FROM_ARGUMENT4: 4,
                pickletools.TAKEN_FROM_ARGUMENT4U: 4, pickletools.TAKEN_FROM_ARGUMENT8U: 8}
    kinds = {}
    for op in pickletools.opcodes:
        n = op.arg.n if op.arg is not None else 0
        if n >= 0:
            kinds[ord(op.code)] = (n, 0)
        elif n == pickletools.UP_TO_NEWLINE:
            kinds[ord(op.code)] = (2 if op.arg.name.endswith("_pair") else 1, 2)
        else:
            kinds[ord(op.code)] = (prefixes[n], 1)
    return kinds


_ARGUMENTS = _argument_kinds()
_OPCODE_NAMES = {ord(op.code): op.name for op in pickletools.opcodes}


def _skip_argument(data: bytes, pos: int, code: int) -> int:
    size, kind = _ARGUMENTS[code]
    if kind == 0:
        return pos + size
    if kind == 1:
        return pos + size + int.from_bytes(data[pos:pos + size], "little")
    for _ in range(size):
        newline = data.find(b"\n", pos)
        if newline < 0:
            raise _corrupt("the data is truncated inside a text argument")
        pos = newline + 1
    return pos


def _global_name(argument: bytes) -> tuple[str, str]:
    """Split the "module\nname\n" argument of GLOBAL and INST."""
    try:
        module, name, _ = argument.decode().split("\n")
    except (UnicodeDecodeError, ValueError) as error:
        raise _corrupt(f"malformed global name: {error}") from error
    return module, name


def _refuse_extension(code: int) -> None:
    import copyreg

    registered = copyreg._inverted_registry.get(code)  # type: ignore[attr-defined]
    if registered is not None:
        shown = _shown(*registered)
        raise _unsafe(f"copyreg extension code {code}, i.e. the Python global {shown}", shown)
    raise _unsafe(f"copyreg extension code {code}")


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler whose only globals are _ALLOWED_GLOBALS and whose persistent ids are ours."""

    def __init__(self, file: io.BytesIO, num_slots: int | None) -> None:
        super().__init__(file)
        self._slot_limit = _MAX_SLOTS if num_slots is None else num_slots
        self._slot_kinds: dict[int, type] = {}

    def find_class(self, module: str, name: str) -> Any:
        found = _ALLOWED_GLOBALS.get((module, name))
        if found is None:
            raise _refuse_global(str(module), str(name))
        return found

    def persistent_load(self, pid: Any) -> Any:
        if type(pid) is not tuple or not pid or type(pid[0]) is not str:
            raise _corrupt(f"unexpected persistent id of type {type(pid).__name__}")
        tag, args = pid[0], pid[1:]
        if tag in ("tensor", "ndarray") and len(args) == 1:
            return self._placeholder(ArraySlot if tag == "ndarray" else TensorSlot, args[0])
        if tag == "dtype" and len(args) == 1 and args[0] in _TORCH_DTYPES:
            return _TORCH_DTYPES[args[0]]
        if tag == "device" and len(args) == 2:
            return _load_device(*args)
        if tag == "npscalar" and len(args) == 2 and args[0] in _NUMPY_CHARS:
            dtype = np.dtype(args[0])
            if type(args[1]) is bytes and len(args[1]) == dtype.itemsize:
                return np.frombuffer(args[1], dtype=dtype)[0]
        raise _corrupt(f"malformed persistent id {ascii(pid)[:200]}")

    def _placeholder(self, kind: type, slot: Any) -> TensorSlot:
        if type(slot) is not int or not 0 <= slot < self._slot_limit:
            raise _corrupt(f"tensor slot {ascii(slot)[:50]} is out of range 0..{self._slot_limit - 1}")
        if self._slot_kinds.setdefault(slot, kind) is not kind:
            raise _corrupt(f"slot {slot} is used both as a tensor and as a numpy array")
        return kind(slot)


def _load_device(device_type: Any, index: Any) -> torch.device:
    if (type(device_type) is str and device_type.isidentifier() and len(device_type) <= 32
            and (index is None or (type(index) is int and 0 <= index < 2**16))):
        try:
            return torch.device(device_type, index)
        except (RuntimeError, ValueError, TypeError):
            pass
    raise _corrupt(f"malformed device {ascii(device_type)[:50]}:{ascii(index)[:20]}")


class _TreeCheck:
    """Checks an unpickled structure before anyone walks it: crafted pickles can build cycles,
    deep nesting, and small DAGs that expand to 2**60 paths, which would hang or crash a naive
    recursive walker. Also refuses placeholders where flatten never puts tensors.
    """

    def __init__(self, max_nodes: int) -> None:
        self._max_nodes = max_nodes
        self._seen: dict[int, tuple[int, bool]] = {}  # id -> (nodes as a tree, holds a placeholder)
        self._open: set[int] = set()

    def visit(self, obj: Any, depth: int) -> tuple[int, bool]:
        kind = type(obj)
        if kind is TensorSlot or kind is ArraySlot:
            return 1, True
        if kind is slice and not all(type(p) in (int, type(None)) for p in (obj.start, obj.stop, obj.step)):
            raise _corrupt("a slice holds something other than ints")
        if kind not in _CONTAINERS:
            return 1, False
        if id(obj) in self._seen:
            return self._seen[id(obj)]
        if id(obj) in self._open:
            raise _corrupt("the structure contains a reference cycle")
        if depth > MAX_DEPTH:
            raise _corrupt(f"the structure is nested more than {MAX_DEPTH} levels deep")
        self._open.add(id(obj))
        values, others = _children(obj)
        nodes, holds = 1, False
        for child in values:
            size, has = self.visit(child, depth + 1)
            nodes, holds = nodes + size, holds or has
        for child in others:
            size, has = self.visit(child, depth + 1)
            if has:
                raise _corrupt("a tensor placeholder is inside a dict key, a set or an attribute")
            nodes += size
        if nodes > self._max_nodes:
            raise _corrupt(f"the structure expands to more than {self._max_nodes} nodes")
        self._open.discard(id(obj))
        self._seen[id(obj)] = nodes, holds
        return nodes, holds


def _children(obj: Any) -> tuple[Iterable[Any], Iterable[Any]]:
    """(children where a tensor may be, children where it may not) of a container."""
    if isinstance(obj, dict):
        others = list(obj)
        if type(obj) is OrderedDict:
            others += vars(obj).values()
        return obj.values(), others
    if isinstance(obj, (list, tuple)):
        return obj, ()
    return (), obj


def _fill(obj: Any, values: Callable[[TensorSlot], Any], done: dict[int, Any]) -> Any:
    """Replace placeholders in a checked structure: lists and dicts in place, tuples rebuilt
    when they held one. Each shared container is handled once, so sharing survives."""
    kind = type(obj)
    if kind is TensorSlot or kind is ArraySlot:
        return values(obj)
    if kind not in (list, tuple, dict, OrderedDict):
        return obj  # a set, or an atom: _TreeCheck made sure no placeholder is inside
    if id(obj) in done:
        return done[id(obj)]
    result = obj
    if kind is list:
        for index, value in enumerate(obj):
            obj[index] = _fill(value, values, done)
    elif kind is tuple:
        items = tuple(_fill(value, values, done) for value in obj)
        if any(new is not old for new, old in zip(items, obj)):
            result = items
    else:
        for key, value in obj.items():
            obj[key] = _fill(value, values, done)
    done[id(obj)] = result
    return result

"""Reading skeletons back safely, without torch: the restricted unpickler and the checks around it.

A skeleton is only ever read through `_RestrictedUnpickler`, which resolves no Python global outside a
short allowlist: a planted pickle can build lists and dicts, but it cannot import or call anything.
Every opcode is checked before anything is unpickled, and the result is checked before anyone walks it.
torch values (torch.Size, dtypes, devices) are made with torch, or, with ``plain=True``, as stand-ins
that need no torch.
"""

from __future__ import annotations

import io
import pickle
import pickletools
import re
from collections import OrderedDict
from typing import Any, Callable, Iterable

from ckpt.errors import CkptError, CorruptCheckpointError, UnsafeMetadataError

MAX_SKELETON_BYTES = 256 * 2**20
MAX_DEPTH = 200  # nesting levels; real states have fewer than ten
_MAX_SLOTS = 2**31
_CONTAINERS = frozenset({dict, OrderedDict, list, tuple, set, frozenset})
# numpy type codes that torch.from_numpy accepts; also the numpy scalar types we store.
_NUMPY_CHARS = frozenset("?bBhHiIlLqQefdFD")
_DTYPE_NAME = re.compile(r"[a-z][a-z0-9_]{0,31}")


class Size(tuple):
    """torch.Size, read without torch."""

    __slots__ = ()


class DTypeName(str):
    """A torch dtype, read without torch ("torch.float32")."""


class DeviceName(str):
    """A torch device, read without torch ("cuda:0")."""


def allowed_globals(plain: bool = False) -> dict[tuple[str, str], Any]:
    """The only globals a skeleton may name: protocol 5 writes REDUCE on complex, slice, OrderedDict and
    torch.Size; set and frozenset have their own opcodes since protocol 4 and are listed because they
    are equally harmless constructors."""
    if plain:
        size: Any = Size
    else:
        import torch
        size = torch.Size
    return {("builtins", "set"): set, ("builtins", "frozenset"): frozenset, ("builtins", "complex"): complex,
            ("builtins", "slice"): slice, ("collections", "OrderedDict"): OrderedDict, ("torch", "Size"): size}


_ALLOWED_NAMES = frozenset(allowed_globals(plain=True))
_DTYPES: dict[str, Any] = {}


def _torch_dtypes() -> dict[str, Any]:
    if not _DTYPES:
        import torch
        _DTYPES.update({str(d).removeprefix("torch."): d for d in vars(torch).values() if isinstance(d, torch.dtype)})
    return _DTYPES


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


def load_structure(skeleton: bytes, num_slots: int | None = None, *, plain: bool = False) -> Any:
    """Unpickle a skeleton without executing anything; tensors come back as TensorSlot/ArraySlot.

    With ``plain`` nothing imports torch: ``torch.Size`` comes back as :class:`Size` (a tuple), dtypes and
    devices as :class:`DTypeName`/:class:`DeviceName` strings (for the CLI's read commands and the web
    view, which only need the structure).

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
    unpickler = _RestrictedUnpickler(io.BytesIO(data), num_slots, plain)
    try:
        structure = unpickler.load()
    except CkptError:
        raise
    except Exception as error:  # truncated, garbage, or type errors from allowed constructors
        raise _corrupt(f"{type(error).__name__}: {error}") from error
    _TreeCheck(_max_nodes(len(data))).visit(structure, 0)
    return structure


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
    pickletools' table of their sizes (one table lookup per opcode: a 10,000-tensor skeleton has
    about 50,000 opcodes); pickletools.genops decodes them all and is much slower.
    """
    pos, end = 0, len(data)
    refused_opcode = None
    table = _SCAN
    from_bytes = int.from_bytes
    while pos < end:
        code = data[pos]
        entry = table[code]
        if entry is None:
            raise _corrupt(f"unknown opcode {code:#04x} at offset {pos}")
        size, kind, special, allowed = entry
        start = pos + 1
        if kind == 0:
            pos = start + size
        elif kind == 1:
            pos = start + size + from_bytes(data[start:start + size], "little")
        else:
            pos = _skip_argument(data, start, code)
        if not allowed and refused_opcode is None:
            refused_opcode = _OPCODE_NAMES[code]
        if special:
            name = _OPCODE_NAMES[code]
            if name == "STOP":
                break
            if name in ("GLOBAL", "INST"):
                module, qualname = _global_name(data[start:pos])
                if (module, qualname) not in _ALLOWED_NAMES:
                    raise _refuse_global(module, qualname)
            else:  # EXT1/2/4
                _refuse_extension(from_bytes(data[start:pos], "little", signed=name == "EXT4"))
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
_SPECIAL = {"STOP", "GLOBAL", "INST", "EXT1", "EXT2", "EXT4"}
# byte -> (argument size, argument kind, needs a closer look, allowed), or None for no opcode at all
_SCAN: list[tuple[int, int, bool, bool] | None] = [
    (*_ARGUMENTS[b], _OPCODE_NAMES[b] in _SPECIAL, _OPCODE_NAMES[b] in _ALLOWED_OPCODES) if b in _OPCODE_NAMES
    else None for b in range(256)]


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

    def __init__(self, file: io.BytesIO, num_slots: int | None, plain: bool) -> None:
        super().__init__(file)
        self._slot_limit = _MAX_SLOTS if num_slots is None else num_slots
        self._slot_kinds: dict[int, type] = {}
        self._plain = plain
        self._globals = allowed_globals(plain)

    def find_class(self, module: str, name: str) -> Any:
        found = self._globals.get((module, name))
        if found is None:
            raise _refuse_global(str(module), str(name))
        return found

    def persistent_load(self, pid: Any) -> Any:
        if type(pid) is not tuple or not pid or type(pid[0]) is not str:
            raise _corrupt(f"unexpected persistent id of type {type(pid).__name__}")
        tag, args = pid[0], pid[1:]
        if tag in ("tensor", "ndarray") and len(args) == 1:
            return self._placeholder(ArraySlot if tag == "ndarray" else TensorSlot, args[0])
        if tag == "dtype" and len(args) == 1 and type(args[0]) is str:
            if self._plain:
                if _DTYPE_NAME.fullmatch(args[0]):
                    return DTypeName("torch." + args[0])
            else:
                found = _torch_dtypes().get(args[0])
                if found is not None:
                    return found
        if tag == "device" and len(args) == 2:
            return _load_device(*args, plain=self._plain)
        if tag == "npscalar" and len(args) == 2 and args[0] in _NUMPY_CHARS:
            import numpy as np
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


def _load_device(device_type: Any, index: Any, *, plain: bool) -> Any:
    if (type(device_type) is str and device_type.isidentifier() and len(device_type) <= 32
            and (index is None or (type(index) is int and 0 <= index < 2**16))):
        if plain:
            return DeviceName(device_type if index is None else f"{device_type}:{index}")
        import torch
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

"""Malicious pickle payloads, built from raw opcodes or from objects with a hostile __reduce__.

Every "live" payload creates `sentinel` when given to plain `pickle.loads`, which the tests check,
so a refusal by ckpt is known to have stopped a working exploit and not a broken one.
"""

from __future__ import annotations

import os
import pickle
import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

PROTO4 = b"\x80\x04"


def unicode(text: str) -> bytes:
    """SHORT_BINUNICODE / BINUNICODE push of a str."""
    raw = text.encode()
    return (b"\x8c" + bytes([len(raw)]) if len(raw) < 256 else b"X" + struct.pack("<I", len(raw))) + raw


def stack_global(module: str, name: str) -> bytes:
    return unicode(module) + unicode(name) + b"\x93"


def call1(func: bytes, arg: bytes) -> bytes:
    """func(arg): `func` and `arg` are opcode fragments that each push one value."""
    return func + arg + b"\x85R"  # TUPLE1, REDUCE


def touch_command(sentinel: Path) -> str:
    return f"touch '{sentinel}'"


def create_file_source(sentinel: Path) -> str:
    return f"open({str(sentinel)!r}, 'w').close()"


class _Reduce:
    """An object that pickles as func(*args)."""

    def __init__(self, func: Callable, args: tuple) -> None:
        self.func, self.args = func, args

    def __reduce__(self) -> tuple:
        return self.func, self.args


def via_reduce(func: Callable, args: tuple, protocol: int) -> bytes:
    """The classic: pickle an object whose __reduce__ calls `func`, wrapped in a dict as a state."""
    return pickle.dumps({"model": {"weight": _Reduce(func, args)}}, protocol=protocol)


@dataclass
class Payload:
    id: str
    build: Callable[[Path], bytes]  # sentinel path -> pickle bytes
    global_name: str  # what the refusal message must name
    live: bool = True  # creates the sentinel under plain pickle.loads


def payloads() -> list[Payload]:
    found = []
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        found.append(Payload(f"os.system-reduce-p{protocol}",
                             lambda s, p=protocol: via_reduce(os.system, (touch_command(s),), p),
                             "posix.system"))
    found += [
        Payload("subprocess.Popen", lambda s: via_reduce(subprocess.Popen, (["touch", str(s)],), 4),
                "subprocess.Popen"),
        Payload("builtins.eval", lambda s: via_reduce(eval, (create_file_source(s),), 4), "builtins.eval"),
        # protocol 2 writes Python 2 names; plain pickle maps them back (fix_imports)
        Payload("__builtin__.exec", lambda s: via_reduce(exec, (create_file_source(s),), 2),
                "__builtin__.exec"),
        # getattr(__import__("os"), "system")(cmd), all by hand
        Payload("builtins.getattr+__import__", lambda s: PROTO4 + call1(
            stack_global("builtins", "getattr") + call1(stack_global("builtins", "__import__"), unicode("os"))
            + unicode("system") + b"\x86R",  # TUPLE2, REDUCE
            unicode(touch_command(s))) + b".", "builtins.getattr"),
        Payload("builtins.__import__", lambda s: PROTO4 + call1(
            stack_global("builtins", "__import__"), unicode("os")) + b".", "builtins.__import__", live=False),
        Payload("stack-global-os.system", lambda s: PROTO4 + call1(
            stack_global("os", "system"), unicode(touch_command(s))) + b".", "os.system"),
        Payload("stack-global-posix.system", lambda s: PROTO4 + call1(
            stack_global("posix", "system"), unicode(touch_command(s))) + b".", "posix.system"),
        # protocol 4 resolves dotted names by getattr: torch.os is the os module
        Payload("dotted-torch.os.system", lambda s: PROTO4 + call1(
            stack_global("torch", "os.system"), unicode(touch_command(s))) + b".", "torch.os.system"),
        Payload("dotted-torch.Size.__class__", lambda s: PROTO4 + stack_global("torch", "Size.__class__")
                + b".", "torch.Size.__class__", live=False),
        Payload("dotted-collections.OrderedDict.fromkeys", lambda s: PROTO4 + stack_global(
            "collections", "OrderedDict.fromkeys") + b".", "collections.OrderedDict.fromkeys", live=False),
        Payload("torch._utils._rebuild_tensor", lambda s: PROTO4 + stack_global(
            "torch._utils", "_rebuild_tensor") + b".", "torch._utils._rebuild_tensor", live=False),
        Payload("torch-pickled-tensor", lambda s: _pickled_tensor(), "torch._utils._rebuild_tensor_v2",
                live=False),
        Payload("torch.load", lambda s: PROTO4 + call1(stack_global("torch", "load"), unicode(str(s)))
                + b".", "torch.load", live=False),
        Payload("numpy.load", lambda s: PROTO4 + call1(stack_global("numpy", "load"), unicode(str(s)))
                + b".", "numpy.load", live=False),
        Payload("numpy.core.multiarray._reconstruct", lambda s: PROTO4 + stack_global(
            "numpy.core.multiarray", "_reconstruct") + b".", "numpy.core.multiarray._reconstruct",
            live=False),
        Payload("numpy-pickled-array", lambda s: _pickled_array(), "_reconstruct", live=False),
        # INST: MARK, arg, INST os system -> os.system(arg)
        Payload("INST-os.system", lambda s: b"(" + unicode(touch_command(s)) + b"ios\nsystem\n.",
                "os.system"),
        Payload("INST-after-STRING", lambda s: b"(S" + repr(touch_command(s)).encode()
                + b"\nios\nsystem\n.", "os.system"),
        # protocol 1 OBJ: MARK, GLOBAL os system, STRING arg, OBJ
        Payload("OBJ-os.system", lambda s: b"(cos\nsystem\nS" + repr(touch_command(s)).encode()
                + b"\no.", "os.system"),
        Payload("GLOBAL-builtins.eval", lambda s: b"cbuiltins\neval\n(S" + repr(create_file_source(s))
                .encode() + b"\ntR.", "builtins.eval"),
    ]
    return found


def _pickled_tensor() -> bytes:
    import torch

    return pickle.dumps({"w": torch.zeros(2)}, protocol=4)


def _pickled_array() -> bytes:
    import numpy as np

    return pickle.dumps({"w": np.zeros(2)}, protocol=4)


def ext_opcode(code: int) -> bytes:
    """EXT1, EXT2 or EXT4 (whichever fits) pushing the object copyreg registered under `code`."""
    if code < 256:
        return b"\x82" + bytes([code])
    if code < 65536:
        return b"\x83" + struct.pack("<H", code)
    return b"\x84" + struct.pack("<i", code)


def ext_payload(code: int, sentinel: Path) -> bytes:
    """Calls whatever copyreg registered under `code` with the touch command."""
    return PROTO4 + call1(ext_opcode(code), unicode(touch_command(sentinel))) + b"."


def ext_lookup(code: int) -> bytes:
    """A harmless pickle that only resolves extension `code`: loading it fills copyreg's cache."""
    return PROTO4 + ext_opcode(code) + b"."


def with_persistent_ids(obj: Any, pids: dict[int, Any], protocol: int = 5) -> bytes:
    """Pickle `obj`, writing pids[id(x)] as the persistent id of each x found in `pids`."""
    import io

    class _Pickler(pickle.Pickler):
        def persistent_id(self, x: Any) -> Any:
            return pids.get(id(x))

    buffer = io.BytesIO()
    _Pickler(buffer, protocol=protocol).dump(obj)
    return buffer.getvalue()

"""``map_location``: where ``load()`` puts each tensor, in every form ``torch.load`` accepts.

    None                          tensors stay where ckpt reads them: on the CPU
    "cuda:0" / b"cuda:0" / torch.device("cuda:0")
                                  every tensor goes to that device
    {"cuda:0": "cpu", ...}        a tensor whose location is a key goes to that key's value (a
                                  device string or torch.device); any other stays on the CPU
    callable(tensor, location)    returns the tensor to use (e.g. ``lambda t, loc: t.cuda(1)``), or
                                  None for "as read" (on the CPU); it must keep the shape and dtype

A tensor's ``location`` is the device string it was saved from ("cuda:1", "cpu"...) when the
checkpoint records one, else "cpu". The callable gets the tensor as read, on the CPU, where
``torch.load`` passes a CPU storage: the usual idioms (``lambda s, loc: s``, ``lambda s, loc:
s.cuda()``) work unchanged, and a returned storage is accepted too.

One difference from ``torch.load``, on purpose: where torch falls back to the *saved* device (no
map_location, a location missing from the dict, a callable returning None), ckpt leaves the tensor on
the CPU. ckpt never moves a tensor to a device the caller did not name, so a checkpoint saved on a
GPU loads on a machine without one. numpy arrays are never moved (the loader does not call this for them).

``resolve(map_location)`` checks the argument once, before anything is read, and returns the per-tensor
function; ``apply(tensor, saved_device, map_location)`` does both, for one tensor.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Union

import torch

from ckpt.errors import InvalidArgumentError
from ckpt.validation import describe

#: What ``load(map_location=...)`` accepts.
MapLocation = Union[None, str, bytes, torch.device, Mapping[str, Union[str, torch.device]],
                    Callable[[torch.Tensor, str], Any]]
#: The checked form: a function of (tensor as read, saved location) -> tensor to return.
Mapper = Callable[[torch.Tensor, str], torch.Tensor]

CPU = "cpu"


def device(value: Any, what: str = "map_location") -> torch.device:
    """``value`` (str, bytes or torch.device) as a torch.device, or an InvalidArgumentError that says why."""
    if isinstance(value, torch.device):
        return value
    if isinstance(value, bytes):
        try:
            value = value.decode("ascii")
        except UnicodeDecodeError:
            raise InvalidArgumentError(f"{what} {describe(value)} is not a device name") from None
    if not isinstance(value, str) or len(value) > 64:
        raise InvalidArgumentError(f"{what} must be a device ('cpu', 'cuda:0', a torch.device), a dict of "
                                   f"location -> device, or a callable (tensor, location); got "
                                   f"{type(value).__name__} {describe(value)}")
    try:
        return torch.device(value)
    except (RuntimeError, ValueError, TypeError) as exc:
        why = " ".join(str(exc).split())[:160]
        raise InvalidArgumentError(f"{what} {describe(value)} is not a device torch knows ({why})") from None


def check_available(dev: torch.device, what: str = "map_location") -> None:
    """InvalidArgumentError when ``dev`` is a CUDA device this process cannot use (no CUDA, no such index)."""
    if dev.type != "cuda":
        return  # other accelerators are checked by the move itself (see _move)
    if not torch.cuda.is_available():
        raise InvalidArgumentError(f"{what} asks for {dev}, but CUDA is not available here; pass "
                                   f"map_location='cpu' (or a dict such as {{'{dev}': 'cpu'}})")
    count = torch.cuda.device_count()
    if dev.index is not None and dev.index >= count:
        raise InvalidArgumentError(f"{what} asks for {dev}, but this machine has {count} CUDA device(s)")


def resolve(map_location: Any, *, non_blocking: bool = False) -> Mapper:
    """Check ``map_location`` once and return the function that places each tensor."""
    if map_location is None:
        return _as_read
    if isinstance(map_location, (str, bytes, torch.device)):
        target = device(map_location)
        check_available(target)
        return lambda t, _location: _move(t, target, non_blocking, "map_location")
    if isinstance(map_location, Mapping):
        table: dict[str, torch.device] = {}
        for key, value in map_location.items():
            if isinstance(key, bytes):
                key = key.decode("ascii", "replace")
            if not isinstance(key, str):
                raise InvalidArgumentError(f"map_location dict keys must be location strings such as 'cuda:0', "
                                           f"got {type(key).__name__} {describe(key)}")
            table[key] = device(value, f"map_location[{key!r}]")

        def mapped(t: torch.Tensor, location: str) -> torch.Tensor:
            target = table.get(location)
            return t if target is None else _move(t, target, non_blocking, f"map_location[{location!r}]")
        return mapped
    if callable(map_location):
        return lambda t, location: _called(map_location, t, location)
    raise InvalidArgumentError(f"map_location must be None, a device ('cpu', 'cuda:0', a torch.device), a dict "
                               f"of location -> device, or a callable (tensor, location); got "
                               f"{type(map_location).__name__} {describe(map_location)}")


def apply(tensor: torch.Tensor, saved_device: str | None, map_location: Any, *,
          non_blocking: bool = False) -> torch.Tensor:
    """``tensor`` (as read, on the CPU) placed as ``map_location`` says; ``saved_device`` is its location
    ("cpu" when the checkpoint records none)."""
    return resolve(map_location, non_blocking=non_blocking)(tensor, saved_device or CPU)


def _as_read(t: torch.Tensor, _location: str) -> torch.Tensor:
    return t


def _move(t: torch.Tensor, target: torch.device, non_blocking: bool, what: str) -> torch.Tensor:
    if t.device == target or (target.index is None and t.device.type == target.type):
        return t
    check_available(target, what)
    try:
        return t.to(target, non_blocking=non_blocking)
    except torch.OutOfMemoryError:
        raise
    except (RuntimeError, AssertionError) as exc:  # e.g. "Torch not compiled with CUDA enabled", no MPS
        why = " ".join(str(exc).split())[:160]
        raise InvalidArgumentError(f"{what} sends tensors to {target}, which this process cannot use ({why}); "
                                   f"pass map_location='cpu'") from None


def _called(fn: Callable[[torch.Tensor, str], Any], t: torch.Tensor, location: str) -> torch.Tensor:
    out = fn(t, location)
    if out is None:
        return t
    if isinstance(out, (torch.UntypedStorage, torch.TypedStorage)):
        out = _from_storage(out, t)
    if not isinstance(out, torch.Tensor):
        raise InvalidArgumentError(f"the map_location callable returned {type(out).__name__} "
                                   f"{describe(out)} for a tensor at {location!r}; return a tensor (e.g. "
                                   f"t.cuda()), or None to keep it as read")
    if out.shape != t.shape or out.dtype != t.dtype:
        raise InvalidArgumentError(f"the map_location callable changed a tensor at {location!r} from "
                                   f"{t.dtype} {tuple(t.shape)} to {out.dtype} {tuple(out.shape)}; it may only "
                                   f"move it (dtype and shape must stay)")
    return out


def _from_storage(storage: Any, like: torch.Tensor) -> torch.Tensor:
    """A tensor like ``like`` over ``storage`` (what a torch.load-style callable returns)."""
    untyped = storage.untyped() if isinstance(storage, torch.TypedStorage) else storage
    if untyped.nbytes() < like.untyped_storage().nbytes():
        raise InvalidArgumentError(f"the map_location callable returned a storage of {untyped.nbytes()} bytes "
                                   f"for a tensor that needs {like.untyped_storage().nbytes()}")
    out = torch.empty(0, dtype=like.dtype, device=untyped.device)
    return out.set_(untyped, like.storage_offset(), like.shape, like.stride())

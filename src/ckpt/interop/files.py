"""What reading and writing standalone files share: formats by suffix, atomic output, key-path names."""

from __future__ import annotations

import os
import uuid
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ckpt.errors import InvalidArgumentError
from ckpt.validation import INT_MAX, INT_MIN

PT_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
SAFETENSORS_SUFFIXES = (".safetensors",)


class OutputExistsError(InvalidArgumentError):
    """The output file exists and overwriting was not asked for."""


def file_format(path: str | os.PathLike[str]) -> str:
    """'pt' or 'safetensors', from the file name's suffix."""
    name = os.fspath(path).lower()
    if name.endswith(SAFETENSORS_SUFFIXES):
        return "safetensors"
    if name.endswith(PT_SUFFIXES):
        return "pt"
    raise InvalidArgumentError(f"cannot tell the format of {os.fspath(path)!r} from its name: use a "
                               f"{', '.join(PT_SUFFIXES)} or .safetensors suffix")


def flat_name(path: tuple) -> str:
    return ".".join(str(k) for k in path)


def tensor_leaves(obj: Any, path: tuple = ()) -> Iterator[tuple[tuple, Any]]:
    """(key path, tensor or ndarray) for every array leaf, in order (sets never hold tensors)."""
    if isinstance(obj, (torch.Tensor, np.ndarray)):
        yield path, obj
    elif isinstance(obj, Mapping):
        for k, v in obj.items():
            yield from tensor_leaves(v, path + (k,))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from tensor_leaves(v, path + (i,))


@contextmanager
def output_file(path: str | os.PathLike[str], *, overwrite: bool) -> Iterator[str]:
    """Yield a temporary path next to ``path``; on success it is fsynced and renamed to ``path``.

    Without ``overwrite`` an existing file is never replaced, even one created meanwhile.
    """
    path = os.path.abspath(os.fspath(path))
    if os.path.isdir(path):
        raise InvalidArgumentError(f"{path} is a directory; give a file name")
    if os.path.lexists(path) and not overwrite:
        raise OutputExistsError(f"{path} exists; pass --force to overwrite it")
    directory = os.path.dirname(path)
    if not os.path.isdir(directory):
        raise InvalidArgumentError(f"directory {directory} does not exist")
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # writers may create private temp files; the result is a normal file
        if overwrite:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)  # atomic create-if-absent
            except FileExistsError:
                raise OutputExistsError(f"{path} exists; pass --force to overwrite it") from None
            except OSError:  # no hard links on this file system
                if os.path.lexists(path):
                    raise OutputExistsError(f"{path} exists; pass --force to overwrite it") from None
                os.replace(tmp, path)
    finally:
        if os.path.lexists(tmp):
            os.unlink(tmp)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@dataclass
class Written:
    path: str
    format: str
    tensors: int
    bytes: int
    notes: list[str] = field(default_factory=list)


def count_tensors(state: Any) -> tuple[int, int]:
    """(tensor leaves, bytes of distinct tensors) in ``state``."""
    n = size = 0
    seen: set[int] = set()
    for _, t in tensor_leaves(state):
        n += 1
        if id(t) not in seen:
            seen.add(id(t))
            size += t.nbytes
    return n, size


def file_tensor(t: Any, name: str) -> torch.Tensor:
    if isinstance(t, np.ndarray):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            t = torch.from_numpy(np.ascontiguousarray(t))
    t = t.detach()
    if t.device.type != "cpu":
        t = t.cpu()
    return t.contiguous()


def all_leaves(obj: Any) -> Iterator[Any]:
    if isinstance(obj, Mapping):
        for v in obj.values():
            yield from all_leaves(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from all_leaves(v)
    else:
        yield obj


@dataclass
class Imported:
    state: Any
    kind: str  # "pt", "lightning", "safetensors", "ckpt-safetensors"
    epoch: int | None = None
    step: int | None = None
    metrics: dict[str, Any] = field(default_factory=dict)


def int_or_none(v: Any) -> int | None:
    """A file's own epoch or step, when it is a usable one (in ckpt's range); None makes the user pass it."""
    if isinstance(v, torch.Tensor) and v.numel() == 1 and not v.is_floating_point() and not v.is_complex():
        v = v.item()
    if isinstance(v, int) and not isinstance(v, bool) and INT_MIN <= v <= INT_MAX:
        return v
    return None

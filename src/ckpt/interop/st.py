"""``.safetensors`` files: tensors under their key paths joined with ".", the rest as JSON metadata."""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
import torch

from ckpt.errors import InvalidArgumentError, InvalidFileError, UnsupportedTypeError
from ckpt.interop.files import (Imported, Written, all_leaves, file_tensor, flat_name, int_or_none, output_file,
                                tensor_leaves)
from ckpt.interop.tree import TREE_KEY, decode, encode

INFO_KEY = "ckpt.checkpoint"
SUBTREE_KEY = "ckpt.key"


def safetensors_payload(state: Any, *, weights_only: bool = False
                        ) -> tuple[dict[str, torch.Tensor], str | None, int]:
    """(name -> tensor ready for save_file, the ckpt.tree JSON or None, number of non-tensor values dropped).

    Tensors appearing twice (tied weights) or sharing memory are cloned, since safetensors refuses
    shared storage; ckpt.tree records the tie so an import ties them again.
    """
    tensors: dict[str, torch.Tensor] = {}
    first_name: dict[int, str] = {}
    storages: set[tuple[int, torch.device]] = set()

    def ref(path: tuple, obj: Any) -> dict:
        name = flat_name(path)
        if name in tensors:
            if weights_only:
                raise InvalidArgumentError(f"two tensors would both be named {name!r} in the safetensors file "
                                           f"(key paths joined with '.'); export a narrower --only sub-tree or "
                                           f"restore to .pt")
            n = 1
            while f"{name}#{n}" in tensors:
                n += 1
            name = f"{name}#{n}"
        t = file_tensor(obj, name)
        storage = (t.untyped_storage().data_ptr(), t.device)
        shared = storage[0] != 0 and storage in storages
        tensors[name] = t.clone() if shared or id(obj) in first_name else t
        storages.add(storage)
        out = {"$ndarray" if isinstance(obj, np.ndarray) else "$tensor": name}
        if id(obj) in first_name:
            out["$same_as"] = first_name[id(obj)]
        else:
            first_name[id(obj)] = name
        return out

    if weights_only:
        for path, t in tensor_leaves(state):
            ref(path, t)
        leaves = sum(1 for _ in all_leaves(state))
        return tensors, None, leaves - len(tensors)
    tree = json.dumps(encode(state, ref, ()), separators=(",", ":"), allow_nan=False)
    return tensors, tree, 0


def write_safetensors(state: Any, path: str, *, overwrite: bool = False, weights_only: bool = False,
                      info: dict[str, Any] | None = None, key: tuple | None = None) -> Written:
    """``weights_only``: just the tensors (export). Otherwise the full state, exactly re-importable."""
    from safetensors.torch import save_file
    tensors, tree, dropped = safetensors_payload(state, weights_only=weights_only)
    metadata = {"format": "pt"}
    if tree is not None:
        metadata[TREE_KEY] = tree
    if info is not None:
        metadata[INFO_KEY] = json.dumps(info, separators=(",", ":"), default=str)
    if key:
        metadata[SUBTREE_KEY] = "/".join(map(str, key))
    notes = [f"{dropped} non-tensor value(s) left out (weights only)"] if dropped else []
    with output_file(path, overwrite=overwrite) as tmp:
        try:
            save_file(tensors, tmp, metadata=metadata)
        except (ValueError, TypeError, KeyError) as exc:  # e.g. a dtype safetensors has no code for
            raise UnsupportedTypeError(f"safetensors cannot hold this state ({exc}); restore to .pt instead") from exc
    size = sum(t.nbytes for t in tensors.values())
    return Written(os.path.abspath(path), "safetensors", len(tensors), size, notes)


def read_safetensors(path: str) -> Imported:
    """A safetensors file: ckpt's own (``ckpt.tree``) comes back exactly; any other as
    ``{"model": {name: tensor}, "metadata": {...}}`` (or under ``ckpt.key`` for a ckpt export)."""
    from safetensors import SafetensorError, safe_open
    if not os.path.isfile(path):
        raise InvalidArgumentError(f"{path} is not a file")
    try:
        with safe_open(path, framework="pt", device="cpu") as f:
            metadata = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError, OverflowError, MemoryError) as exc:
        raise InvalidFileError(f"{path} is not a readable safetensors file ({_why(exc)})") from None
    info: dict[str, Any] = {}
    if INFO_KEY in metadata:
        try:
            raw = json.loads(metadata[INFO_KEY])
            info = raw if isinstance(raw, dict) else {}
        except ValueError:
            info = {}
    metrics = info.get("metrics") if isinstance(info.get("metrics"), dict) else {}
    epoch, step = int_or_none(info.get("epoch")), int_or_none(info.get("step"))
    if TREE_KEY in metadata:
        try:
            tree = json.loads(metadata[TREE_KEY])
        except (ValueError, RecursionError) as exc:
            raise InvalidFileError(f"{path}: {TREE_KEY} metadata is not valid JSON ({_why(exc)})") from None
        try:
            state = decode(tree, tensors, {})
        except InvalidFileError as exc:
            raise InvalidFileError(f"{path}: {exc}") from None
        except (TypeError, ValueError, IndexError, AttributeError, RecursionError, ArithmeticError) as exc:
            # decode checks every tag; this is a backstop for what its checks missed
            raise InvalidFileError(f"{path}: {TREE_KEY} metadata is malformed ({_why(exc)})") from None
        return Imported(state, "ckpt-safetensors", epoch, step, dict(metrics))
    key = [p for p in metadata.get(SUBTREE_KEY, "model").split("/") if p] or ["model"]
    model = tensors
    for k in reversed(key):
        model = {k: model}
    state = {**model, "metadata": metadata}
    return Imported(state, "safetensors", epoch, step, dict(metrics))


def _why(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:200] or type(exc).__name__

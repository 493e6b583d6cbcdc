"""What ``ckpt export`` writes by default: the model's weights, and nothing labelled as weights that is not.

* An ordinary checkpoint: its ``model`` sub-tree (Lightning: ``state_dict``; a tutorial's
  ``model_state_dict``). Without one, every tensor, unless the checkpoint also holds optimizer or
  scheduler state: then a clear error names the sub-trees to choose from with ``--only``.
* A Hugging Face Trainer checkpoint (stored by ckpt.integrations.huggingface): the tensors of its model
  weight files (``model.safetensors``, its shards, ``pytorch_model.bin``, ``adapter_model.*``), merged
  under their own names: what ``model.load_state_dict`` takes. Never optimizer states or file bytes.
* A torch.distributed.checkpoint (ckpt.integrations.dcp): whole tensors assembled from their shards,
  those under ``model.`` (or ``--only KEY``), with that prefix removed.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from ckpt.cli.common import CliError
from ckpt.cli.console import join_safe, safe

HF_FORMAT = "hf-trainer-checkpoint-1"
DCP_FORMAT = "torch.distributed.checkpoint"
MODEL_KEYS = ("model", "state_dict", "model_state_dict", "model_state")
#: Top-level keys that hold training state, never weights to export.
TRAINING_STATE = re.compile(r"^(optim|optimizer|optimizers|optimizer_states?|optimizer_state_dict|optim_state|"
                            r"scheduler|schedulers|lr_scheduler|lr_schedulers|scheduler_state_dict|scaler|"
                            r"grad_scaler|amp|rng|rng_state|ema_optimizer)$", re.I)
HF_WEIGHTS = re.compile(r"(^|/)(model|pytorch_model|adapter_model|diffusion_pytorch_model|tf_model|flax_model)"
                        r"(-\d+-of-\d+)?\.(safetensors|bin)$")


def checkpoint_format(structure: Any) -> str | None:
    """The ``format`` an integration records at the top of the state, if any."""
    fmt = structure.get("format") if isinstance(structure, Mapping) else None
    return fmt if isinstance(fmt, str) else None


def default_key(leaves: Any) -> tuple | None:
    """The sub-tree ``export`` writes without --only, for an ordinary checkpoint (None: every tensor)."""
    top = list(dict.fromkeys(p[0] for p, _ in leaves if p))
    for candidate in MODEL_KEYS:
        if candidate in top:
            return (candidate,)
    training = [k for k in top if isinstance(k, str) and TRAINING_STATE.match(k)]
    if training:
        weights = [k for k in top if k not in training]
        raise CliError(f"this checkpoint has no 'model' sub-tree, and exporting every tensor would include "
                       f"{join_safe(map(str, training))}; pass --only with the sub-tree that holds the weights"
                       + (f" (one of: {join_safe(map(str, weights))})" if weights else ""))
    return None


def hf_weight_files(structure: Mapping) -> list[str]:
    """The model weight files of a stored Trainer checkpoint directory (an error when there are none)."""
    files = structure.get("files") if isinstance(structure.get("files"), Mapping) else {}
    chosen = [name for name, entry in files.items() if isinstance(name, str) and HF_WEIGHTS.search(name)
              and isinstance(entry, Mapping) and entry.get("kind") in ("safetensors", "torch")]
    if not chosen:
        raise CliError(f"this Hugging Face Trainer checkpoint has no model weights file (model.safetensors, "
                       f"pytorch_model.bin...); its files are {join_safe(sorted(map(str, files)))}; pass --only "
                       f"files/NAME/tensors to export one")
    return sorted(chosen)


def hf_weights(lazy: Any, structure: Mapping, chosen: list[str]) -> dict[str, Any]:
    """{tensor name: tensor} merged from the weight files ``chosen`` (shards of one model)."""
    files = structure["files"]
    out: dict[str, Any] = {}
    for name in chosen:
        entry = files[name]
        part = "tensors" if entry["kind"] == "safetensors" else "state"
        tensors = lazy.load(key=("files", name, part))
        if not isinstance(tensors, Mapping):
            raise CliError(f"{safe(name)} in this checkpoint holds no state dict; pass --only to choose what to export")
        for k, v in tensors.items():
            if str(k) in out:
                raise CliError(f"tensor {safe(k)!r} is in two weight files ({join_safe(chosen)}); pass --only "
                               f"files/NAME/{part} to export one of them")
            out[str(k)] = v
    return out


def dcp_select(structure: Mapping, parts: tuple[str, ...] | None) -> tuple[dict[str, Any], str | None]:
    """The tensor entries of a distributed checkpoint under ``parts`` (default ``model``), and the prefix."""
    entries = structure.get("state_dict_metadata") if isinstance(structure.get("state_dict_metadata"), Mapping) else {}
    tensors = {fqn: e for fqn, e in entries.items() if isinstance(e, Mapping) and e.get("type") == "tensor"}
    tops = list(dict.fromkeys(str(fqn).split(".")[0] for fqn in tensors))
    if parts:
        prefix = ".".join(parts)
    elif "model" in tops:
        prefix = "model"
    else:
        training = [t for t in tops if TRAINING_STATE.match(t)]
        if training:
            raise CliError(f"this distributed checkpoint has no 'model.' keys, and exporting every tensor would "
                           f"include {join_safe(training)}; pass --only with the prefix of the weights (one of: "
                           f"{join_safe([t for t in tops if t not in training]) or '-'})")
        prefix = None
    chosen = {fqn: e for fqn, e in tensors.items()
              if prefix is None or fqn == prefix or str(fqn).startswith(prefix + ".")}
    if not chosen:
        raise CliError(f"no tensor of this distributed checkpoint is named {safe(prefix)} or {safe(prefix)}.*; "
                       f"its top-level prefixes are {join_safe(tops) or '-'}")
    return chosen, prefix


def dcp_weights(lazy: Any, chosen: Mapping[str, Any], prefix: str | None) -> dict[str, Any]:
    """Whole tensors assembled from their shards, named without ``prefix``."""
    import torch
    out: dict[str, Any] = {}
    for fqn, e in chosen.items():
        whole = torch.empty(tuple(e["size"]), dtype=e["dtype"])
        for n, c in enumerate(e["chunks"]):
            piece = lazy.tensor(("state_dict_metadata", fqn, "chunks", n, "data"))
            dest = whole
            for d, (o, size) in enumerate(zip(c["offsets"], c["sizes"])):
                dest = dest.narrow(d, int(o), int(size))
            dest.copy_(piece.reshape(tuple(c["sizes"])))
        name = str(fqn)[len(prefix) + 1:] if prefix is not None and fqn != prefix else str(fqn)
        out[name] = whole
    return out

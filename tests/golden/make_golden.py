"""Build a golden store: a small store of the current on-disk format, checked into tests/golden/.

tests/test_golden.py copies every ``tests/golden/format-*/`` directory, opens the copy with the ckpt being
tested, verifies it and restores every checkpoint bit-exact against the ``expected.json`` beside it. A
golden store is a fixed sample of what a released format looks like on disk; later versions of ckpt must
keep reading it.

When to run this script
-----------------------
Only when the on-disk format changes (``ckpt.format.manifest.FORMAT``, the ``ckpt-store.json``
marker, the pack layout, or the index schema in a way old stores must survive), and always into a NEW
directory named after the format version, e.g.::

    .venv/bin/python tests/golden/make_golden.py tests/golden/format-2

then commit the directory (``store/`` and ``expected.json``, a few hundred KB). Never regenerate or edit an
existing ``format-N`` directory: its whole point is that it was written by an older ckpt. The script
refuses to write into a directory that exists.

What the store holds
--------------------
* run ``golden-a`` (objective ``val_loss``, min): a small model with a tied weight (embedding and output
  head), LayerNorm, int64 and bool buffers, a bf16 EMA copy, an Adam optimizer state after one step,
  numpy arrays and scalars and plain Python values (OrderedDict, tuple, set, frozenset, bytes, complex,
  slice, torch.Size/dtype/device, NaN); four epochs, one with a step number, NaN in one metric, epoch 2
  tagged ``golden-best``; epoch 1 deleted and its pack garbage-collected;
* run ``golden-b``, saved with ``compression="zstd"`` (so it has compressed pack entries), branched from
  golden-a@0 (lineage across runs), two epochs sharing a frozen tensor with golden-a (deduplicated);
* an index (index.sqlite) with its WAL checkpointed into the main file, so no -wal/-shm files.

``expected.json`` records, for every live checkpoint, its identity (id, run, epoch, step, metrics, tags,
parent, content hash) and its state as :func:`describe` writes it: structure, types, and for every tensor
and array its dtype, shape and the SHA-256 of its bytes. :func:`describe` is part of the golden contract:
do not change what it outputs for existing values.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sqlite3
import sys
from collections import OrderedDict
from typing import Any

import numpy as np
import torch

EXPECTED = "expected.json"
STORE = "store"
TIED = [["model", "embed.weight"], ["model", "head.weight"]]


# -- describing a state (the golden contract) ---------------------------------------------------------

def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def tensor_bytes(t: torch.Tensor) -> bytes:
    t = t.detach().cpu().contiguous()
    if t.numel() == 0:
        return b""
    return t.reshape(-1).view(torch.uint8).numpy().tobytes()


def describe(obj: Any) -> Any:
    """A JSON description of ``obj`` that is equal for two values iff they are equal bit for bit, type for
    type, key order for key order."""
    if isinstance(obj, torch.Tensor):
        return {"$tensor": str(obj.dtype).removeprefix("torch."), "shape": list(obj.shape),
                "sha256": _sha(tensor_bytes(obj))}
    if isinstance(obj, np.ndarray):
        return {"$ndarray": obj.dtype.str, "shape": list(obj.shape), "sha256": _sha(np.ascontiguousarray(obj).tobytes())}
    if isinstance(obj, np.generic):
        return {"$np": obj.dtype.str, "hex": obj.tobytes().hex()}
    if isinstance(obj, dict):
        out: dict[str, Any] = {"$odict" if type(obj) is OrderedDict else "$dict":
                               [[describe(k), describe(v)] for k, v in obj.items()]}
        if type(obj) is not dict and type(obj) is not OrderedDict:
            out["type"] = type(obj).__name__
        attrs = vars(obj) if type(obj) is OrderedDict else {}
        if attrs:
            out["$attrs"] = describe(dict(sorted(attrs.items())))
        return out
    if isinstance(obj, list):
        return {"$list": [describe(v) for v in obj]}
    if isinstance(obj, torch.Size):
        return {"$size": list(obj)}
    if isinstance(obj, tuple):
        return {"$tuple": [describe(v) for v in obj]}
    if isinstance(obj, (set, frozenset)):
        return {"$" + type(obj).__name__: sorted(json.dumps(describe(v), sort_keys=True) for v in obj)}
    if isinstance(obj, bool) or obj is None:
        return obj
    if isinstance(obj, int):
        return {"$int": str(obj)}
    if isinstance(obj, float):
        return {"$float": repr(obj)}
    if isinstance(obj, complex):
        return {"$complex": [repr(obj.real), repr(obj.imag)]}
    if isinstance(obj, str):
        return {"$str": obj}
    if isinstance(obj, bytes):
        return {"$bytes": obj.hex()}
    if isinstance(obj, bytearray):
        return {"$bytearray": bytes(obj).hex()}
    if isinstance(obj, slice):
        return {"$slice": [describe(obj.start), describe(obj.stop), describe(obj.step)]}
    if isinstance(obj, torch.dtype):
        return {"$dtype": str(obj)}
    if isinstance(obj, torch.device):
        return {"$device": str(obj)}
    raise TypeError(f"describe() does not know {type(obj).__name__}")


# -- deterministic states (no RNG: integer arithmetic, then one correctly rounded conversion) --------

def values(n: int, seed: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    i = torch.arange(n, dtype=torch.int64)
    x = ((i * 2654435761 + seed * 40503) % 65521).to(torch.float64) / 65521.0 - 0.5
    return x.to(dtype)


def smooth(n: int, seed: int) -> torch.Tensor:
    """Slowly varying float32 values: their exponent byte plane compresses well (a zstd entry)."""
    i = torch.arange(n, dtype=torch.float64)
    return (1.0 + (i + seed) / (4.0 * n)).to(torch.float32)


class Tiny(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(16, 8)
        self.proj = torch.nn.Linear(8, 8)
        self.norm = torch.nn.LayerNorm(8)
        self.head = torch.nn.Linear(8, 16, bias=False)
        self.head.weight = self.embed.weight  # tied, as in language models
        self.register_buffer("steps", torch.zeros((), dtype=torch.int64))
        self.register_buffer("mask", torch.tensor([True, False, True, True]))


def model_and_optimizer(epoch: int) -> tuple[Tiny, torch.optim.Optimizer]:
    model = Tiny()
    with torch.no_grad():
        for k, (name, p) in enumerate(model.named_parameters()):
            p.copy_(values(p.numel(), 1000 * epoch + k).reshape(p.shape))
        model.steps.fill_(10 * epoch)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, foreach=False)
    for k, p in enumerate(model.parameters()):
        p.grad = values(p.numel(), 7 + 1000 * epoch + k).reshape(p.shape)
    opt.step()
    return model, opt


def frozen() -> torch.Tensor:
    return values(2048, 424_242)  # the same in every save of both runs: stored once


def state_a(epoch: int) -> dict:
    model, opt = model_and_optimizer(epoch)
    sd = model.state_dict()
    return {
        "model": sd,
        "ema": OrderedDict((k, v.to(torch.bfloat16)) for k, v in sd.items() if v.is_floating_point()),
        "optimizer": opt.state_dict(),
        "frozen": frozen(),
        "ints": {"int8": values(64, 5 + epoch).mul(200).to(torch.int8), "arange": torch.arange(epoch, epoch + 32),
                 "half": values(16, 9 + epoch, torch.float16), "empty": torch.zeros(0, 3)},
        "numpy": {"array": (np.arange(6, dtype=np.float64).reshape(2, 3) + epoch) / 7,
                  "ids": np.arange(epoch, epoch + 5, dtype=np.int16), "scalar": np.float32(1.5 + epoch)},
        "python": {"epoch": epoch, "nan": float("nan"), "inf": -float("inf"), "name": "golden-a",
                   "shape": torch.Size([2, 3]), "dtype": torch.bfloat16, "device": torch.device("cpu"),
                   "pair": (1, "two"), "tags": {"a", "b"}, "frozen_set": frozenset({3}), "none": None,
                   "raw": b"\x00\xff", "buf": bytearray(b"ab"), "z": 1 - 2j, "window": slice(1, None, 2),
                   "big": 2**70, "flag": True, "history": [0.5, 0.25, float("nan")]},
    }


def state_b(epoch: int) -> dict:
    return {"model": {"backbone": smooth(16384, epoch), "head": values(256, 77 + epoch)},
            "frozen": frozen(), "numpy": np.linspace(0, 1, 9, dtype=np.float32) + epoch, "epoch": epoch}


# -- building -------------------------------------------------------------------------------------

def build(out_dir: str) -> dict:
    from ckpt import CheckpointStore
    from ckpt.catalog.migrate import head_revision
    from ckpt.format import manifest as mf

    if os.path.exists(out_dir):
        raise SystemExit(f"{out_dir} exists: golden stores are never regenerated; pick a new format-N directory")
    loc = os.path.join(out_dir, STORE)
    store = CheckpointStore(loc)
    store.set_objective("golden-a", "val_loss", "min")
    infos = {}
    for epoch, metrics, step in ((0, {"val_loss": 0.9, "acc": float("nan")}, None),
                                 (1, {"val_loss": 0.7, "acc": 0.6}, None),
                                 (2, {"val_loss": 0.4, "acc": 0.8}, 20),
                                 (3, {"val_loss": 0.5, "acc": 0.85}, None)):
        infos[("golden-a", epoch)] = store.save("golden-a", epoch, state_a(epoch), metrics, step=step)
    store.tag("golden-a@2", "golden-best")
    store.finish_run("golden-a", "completed")

    deleted = store.delete("golden-a@1", free=False)
    own_pack = {s.pack for s in store.manifest(infos[("golden-a", 0)].id).slots} | \
        {s.pack for s in store.manifest(infos[("golden-a", 2)].id).slots}
    gc = store.gc(grace_seconds=0)
    assert len(gc.packs) == 1 and gc.packs[0] not in own_pack, gc  # epoch 1's own pack, and nothing else

    zstore = CheckpointStore(loc, compression="zstd")
    for epoch in (0, 1):
        parent = infos[("golden-a", 0)] if epoch == 0 else None
        infos[("golden-b", epoch)] = zstore.save("golden-b", epoch, state_b(epoch), {"loss": 1.0 / (epoch + 2)},
                                                 parent=parent)
    assert "zstd" in {s.codec for s in zstore.manifest("golden-b@1").slots}, "no compressed entry"
    zstore.finish_run("golden-b", "completed")
    zstore.close()

    live = [i for i in store.list()]
    report = store.verify(full=True)
    assert report.ok, report.problems
    states = {("golden-a", e): state_a(e) for e in (0, 2, 3)}
    states.update({("golden-b", e): state_b(e) for e in (0, 1)})
    checkpoints = []
    for info in live:
        loaded = store.load(info.id)
        assert describe(loaded) == describe(states[(info.run, info.epoch)]), (info.run, info.epoch)
        checkpoints.append({
            "id": info.id, "run": info.run, "epoch": info.epoch, "step": info.step,
            "metrics": {k: repr(v) for k, v in info.metrics.items()}, "tags": list(info.tags),
            "parent": info.parent, "content_hash": info.content_hash,
            "codecs": sorted({s.codec for s in store.manifest(info.id).slots}),
            "state": describe(states[(info.run, info.epoch)]),
        })
    store.close()
    _checkpoint_wal(os.path.join(loc, "index.sqlite"))
    expected = {
        "format": mf.FORMAT, "store_marker": 2, "index_revision": head_revision(),
        "written_by": {"ckpt": __import__("ckpt").__version__, "torch": torch.__version__,
                       "numpy": np.__version__, "python": sys.version.split()[0]},
        "runs": {"golden-a": {"objective": "val_loss", "mode": "min", "status": "completed"},
                 "golden-b": {"objective": None, "mode": None, "status": "completed"}},
        "tags": {"golden-best": infos[("golden-a", 2)].id},
        "latest": infos[("golden-b", 1)].id,
        "best_golden_a": infos[("golden-a", 2)].id,
        "deleted": {"id": deleted.id, "pack": gc.packs[0]},
        "tied": TIED,
        "checkpoints": checkpoints,
    }
    with open(os.path.join(out_dir, EXPECTED), "w") as f:
        json.dump(expected, f, indent=1, sort_keys=True)
        f.write("\n")
    return expected


def _checkpoint_wal(path: str) -> None:
    """Fold the WAL into the database file, so the golden index is one self-contained file."""
    conn = sqlite3.connect(path)
    try:
        conn.execute("VACUUM")  # drop free pages: the index is checked in
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
    for suffix in ("-wal", "-shm"):
        p = path + suffix
        if os.path.exists(p):
            if suffix == "-wal" and os.path.getsize(p):
                raise SystemExit(f"{p} still holds frames after a checkpoint")
            os.unlink(p)


def main() -> None:
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    expected = build(sys.argv[1])
    size = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(sys.argv[1]) for f in fs)
    print(f"wrote {sys.argv[1]}: {len(expected['checkpoints'])} checkpoints, {size / 1024:.0f} KiB")


if __name__ == "__main__":
    main()

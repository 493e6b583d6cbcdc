"""Data order as checkpointable state: loader generators, the position inside an epoch, random splits.

The order of an epoch is fixed by the generator states the loader and its sampler hold when the epoch's
iterator is created (or by the global torch generator when they have none). So a checkpoint keeps those
states as they were at the start of the epoch plus the number of batches already trained on; a resume
sets them back, creates the iterator and skips that many batches. That replays every draw the sampler
made, so even samplers that draw mid-epoch (``replacement=True``) continue exactly.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, Subset, random_split

from ckpt.errors import InvalidArgumentError


def loader_generators(loader: Any) -> dict[str, torch.Generator]:
    """The torch generators that decide a loader's order, by where they hang (each one once)."""
    found: dict[str, torch.Generator] = {}
    seen: set[int] = set()
    sampler = getattr(loader, "sampler", None)
    batch_sampler = getattr(loader, "batch_sampler", None)
    candidates = [("loader", loader), ("sampler", sampler), ("batch_sampler", batch_sampler),
                  ("batch_sampler.sampler", getattr(batch_sampler, "sampler", None))]
    for name, obj in candidates:
        g = getattr(obj, "generator", None)
        if isinstance(g, torch.Generator) and id(g) not in seen:
            seen.add(id(g))
            found[name] = g
    return found


def generator_states(loader: Any) -> dict[str, torch.Tensor]:
    return {name: g.get_state() for name, g in loader_generators(loader).items()}


def set_generator_states(loader: Any, states: dict[str, torch.Tensor]) -> None:
    gens = loader_generators(loader)
    if set(gens) != set(states):
        raise InvalidArgumentError(
            f"the training loader's generators ({sorted(gens) or 'none'}) differ from the checkpoint's "
            f"({sorted(states) or 'none'}); build the DataLoader the same way as in the run being resumed "
            f"(e.g. DataLoader(..., shuffle=True, generator=torch.Generator().manual_seed(0)))")
    for name, g in gens.items():
        g.set_state(states[name])


def set_epoch(loader: Any, epoch: int) -> None:
    """Call ``set_epoch`` on a sampler that has one (DistributedSampler reshuffles with it)."""
    for obj in (getattr(loader, "sampler", None), getattr(getattr(loader, "batch_sampler", None), "sampler", None)):
        if hasattr(obj, "set_epoch"):
            obj.set_epoch(epoch)
            return


def num_batches(loader: Any) -> int | None:
    try:
        return len(loader)
    except TypeError:
        return None


def epoch_iterator(loader: Iterable[Any], skip: int = 0) -> Iterator[Any]:
    """A fresh iterator over ``loader`` with its first ``skip`` batches already consumed.

    A single-process DataLoader over a map-style dataset skips by drawing indices only (no data is
    loaded, the sampler draws exactly as before). Anything else (worker processes, iterable datasets,
    plain iterables) loads and discards the batches, which also replays worker-side randomness.
    """
    it = iter(loader)
    fast = (isinstance(loader, DataLoader) and loader.num_workers == 0
            and not isinstance(loader.dataset, IterableDataset) and hasattr(it, "_next_index"))
    for done in range(skip):
        try:
            if fast:
                it._next_index()  # type: ignore[attr-defined]
                it._num_yielded += 1  # type: ignore[attr-defined]
            else:
                next(it)
        except StopIteration:
            raise InvalidArgumentError(f"the checkpoint resumes after batch {skip} of the epoch but the "
                                       f"training loader ran out after {done}; resume with the same data "
                                       f"and batch size") from None
    return it


def subset_indices(loader: Any) -> torch.Tensor | None:
    """The indices of a Subset the loader reads (e.g. from torch's random_split), if it reads one."""
    ds = getattr(loader, "dataset", None)
    if isinstance(ds, Subset):
        return torch.as_tensor(list(ds.indices), dtype=torch.int64)
    return None


class DataSplit:
    """A random split of a dataset whose indices travel in every checkpoint.

        split = DataSplit(dataset, [0.8, 0.2], seed=0)
        train_ds, val_ds = split
        fit(..., split=split)        # a resumed run gets exactly these indices back

    Without ``seed`` a random one is drawn from the OS (not from the global generators, so creating
    the split does not shift any other random stream) and recorded; on resume the checkpoint's indices
    are put back into the same Subset objects, so loaders built on them see the original split.
    """

    def __init__(self, dataset: Dataset, lengths: Sequence[int | float], seed: int | None = None) -> None:
        self.seed = int.from_bytes(os.urandom(8), "little") >> 1 if seed is None else int(seed)
        self.seed_given = seed is not None  # a drawn seed differs in every process: not part of the run's definition
        self.dataset = dataset
        self.subsets: list[Subset] = random_split(dataset, lengths, torch.Generator().manual_seed(self.seed))

    def __iter__(self) -> Iterator[Subset]:
        return iter(self.subsets)

    def __len__(self) -> int:
        return len(self.subsets)

    def __getitem__(self, i: int) -> Subset:
        return self.subsets[i]

    @property
    def train(self) -> Subset:
        return self.subsets[0]

    @property
    def val(self) -> Subset:
        return self.subsets[1]

    def state_dict(self) -> dict[str, Any]:
        return {"seed": self.seed,
                "indices": [torch.as_tensor(list(s.indices), dtype=torch.int64) for s in self.subsets]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        indices = state["indices"]
        have = [len(s) for s in self.subsets]
        want = [len(i) for i in indices]
        if have != want:
            raise InvalidArgumentError(f"the checkpoint's split has parts of sizes {want}, this one {have}; "
                                       f"resume with the same dataset and split sizes")
        for subset, idx in zip(self.subsets, indices):
            subset.indices = idx.tolist()  # in place: loaders already built on the subsets follow
        self.seed = int(state["seed"])

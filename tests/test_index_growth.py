"""The index grows per save and per pack, never per checkpoint x tensor: what one save adds does not
depend on how many tensors the state has, and the tensor table holds each unique tensor once."""

import sqlite3

import torch

from ckpt import CheckpointStore


def _rows(path) -> dict[str, int]:
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        names = [r[0] for r in con.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")]
        return {n: con.execute(f'SELECT count(*) FROM "{n}"').fetchone()[0] for n in names}
    finally:
        con.close()


def _history(tmp_path, n: int, saves: int) -> tuple[dict[str, int], dict[str, int], dict[str, int]]:
    """``saves`` saves of ``n`` tensors, one tensor changed before each; then one more such save.
    Returns the rows before it, the rows it added, and the rows after pruning to the last checkpoint."""
    index = tmp_path / f"index-{n}.sqlite"
    g = torch.Generator().manual_seed(0)
    state = {f"block{i // 8}.p{i % 8}": torch.randn(64, generator=g) for i in range(n)}
    keys = list(state)
    with CheckpointStore(tmp_path / f"store-{n}", index=f"sqlite:///{index}") as store:
        store.save("r", 0, state)
        for epoch in range(1, saves):
            state[keys[epoch % n]].add_(1.0)
            store.save("r", epoch, state)
        before = _rows(index)
        state[keys[saves % n]].add_(1.0)
        store.save("r", saves, state)
        after = _rows(index)
        store.prune(keep_last=1, run="r")
        store.gc(grace_seconds=0)
        pruned = _rows(index)
    added = {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)}
    return before, added, pruned


def test_rows_one_save_adds_do_not_depend_on_the_number_of_tensors(tmp_path):
    few_before, few, _ = _history(tmp_path, 40, 12)
    many_before, many, many_pruned = _history(tmp_path, 800, 12)
    assert few == many, f"one save of 40 tensors added {few} rows, of 800 tensors {many}"
    # One checkpoint, one pack, one new tensor, and one row per pack the checkpoint reads (13 here).
    assert many["checkpoints"] == 1 and many["packs"] == 1 and many["tensors"] == 1, many
    assert many["checkpoint_packs"] == 13, many
    # One row per unique tensor: the first save's 800 and one per later save, never checkpoints x tensors.
    assert many_before["tensors"] == 800 + 11, many_before
    assert few_before["tensors"] == 40 + 11, few_before
    # Pruning to the last checkpoint leaves its rows only (it still reads all 13 packs).
    assert many_pruned["checkpoints"] == 1 and many_pruned["checkpoint_packs"] == 13, many_pruned
    assert many_pruned["tensors"] == 800 + 12, many_pruned

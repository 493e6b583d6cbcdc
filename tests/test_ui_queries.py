"""The catalog queries the web view relies on (ckpt.catalog: commit_marker, checkpoint_rows, run_states,
run_totals, best_per_run, run_checkpoints, pack_owners, tags) answer what the store's own methods answer,
and the view's in-memory lineage keeps up with commits and deletions."""

from __future__ import annotations

import torch

from ckpt import CheckpointStore


def _fill(store: CheckpointStore) -> None:
    store.set_objective("a", "val_loss", "min")
    base = {"w": torch.zeros(8), "frozen": torch.ones(16)}
    for e in range(5):
        base["w"] = base["w"] + 1
        store.save("a", e, {"model": dict(base)}, {"val_loss": [0.5, 0.3, 0.3, 0.4, float("nan")][e], "val_acc": e / 10})
    store.save("b", 0, {"model": dict(base)}, {"val_acc": 0.9}, parent="a@1")  # fine-tune of a@1
    store.set_objective("b", "val_acc", "max")
    store.save("b", 1, {"model": {"w": torch.full((8,), 7.0), "frozen": base["frozen"]}}, {"val_acc": 0.95})
    store.save("c", 0, {"x": torch.arange(3)})  # no metrics, no objective
    store.tag("a@2", "keep-me")


def test_view_queries_agree_with_the_store(tmp_path):
    with CheckpointStore(tmp_path / "s") as store:
        _fill(store)
        cat = store.catalog
        runs = {r.name: r for r in store.runs()}
        states = {r.name: r for r in cat.run_states()}
        assert {n: (r.status, r.objective, r.mode, r.best_value) for n, r in states.items()} == \
            {n: (r.status, r.objective, r.mode, r.best_value) for n, r in runs.items()}
        assert states["a"].best_value == 0.3  # NaN never wins; the earliest of a tie (a@1)
        best = cat.best_per_run()
        assert best == {"a": store.get("a:best").id, "b": store.get("b:best").id}
        totals = cat.run_totals()
        for name, r in runs.items():
            infos = store.list(run=name)
            assert totals[name] == (r.checkpoints, sum(i.logical_size for i in infos),
                                    sum(i.new_bytes for i in infos), r.latest_epoch)
            assert repr(cat.run_checkpoints(name)) == repr(infos)  # repr: NaN metrics compare equal
        rows = cat.checkpoint_rows()
        assert [r[1] for r in rows] == [i.id for i in store.list()]
        assert cat.commit_marker() == (len(rows), rows[-1][0])
        assert cat.checkpoint_rows(rows[-2][0]) == rows[-1:]
        assert cat.tags() == {"keep-me": store.get("a@2").id}
        b0 = store.get("b@0")
        owners = cat.pack_owners(sorted(store.manifest(b0.id).packs))
        assert store.get("a@0").id in owners.values()  # "frozen" was written by a's first save
        assert all(store.get(cid).created_at <= b0.created_at for cid in owners.values())


def test_lineage_in_memory_follows_commits_and_deletions(tmp_path):
    from ckpt.ui.source import Source
    loc = str(tmp_path / "s")
    with CheckpointStore(loc) as store:
        _fill(store)
    src = Source(loc)
    try:
        lin = src.lineage()
        with CheckpointStore(loc) as store:
            assert set(lin.rows) == {i.id for i in store.list()}
            assert src.branch_points(list(lin.rows)) == store.catalog.branch_points(list(lin.rows))
            store.save("c", 1, {"x": torch.arange(4)})
            store.delete("a@0")
            store.save("c", 2, {"x": torch.arange(5)})
            expected = {i.id for i in store.list()}
            runs = {r.name: r for r in store.runs()}
        src.refresh(force=True)
        assert set(src.lineage().rows) == expected
        got = {r.name: t for r, t in src.runs()}
        assert {n: (t.checkpoints, t.latest_epoch) for n, t in got.items()} == \
            {n: (r.checkpoints, r.latest_epoch) for n, r in runs.items()}
    finally:
        src.close()


def test_a_store_read_through_an_in_memory_index_picks_up_new_saves(tmp_path):
    """No usable index file (a snapshot, a remote store without a cache): the view rebuilds the index in
    memory from the manifests and synchronises it with storage every few seconds."""
    import os

    from ckpt.ui import source as source_mod
    from ckpt.ui.source import Source
    loc = str(tmp_path / "s")
    with CheckpointStore(loc) as store:
        store.save("a", 0, {"w": torch.zeros(2)})
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(os.path.join(loc, "index.sqlite" + suffix)):
            os.remove(os.path.join(loc, "index.sqlite" + suffix))
    src = Source(loc)
    try:
        assert src.store.catalog.url in ("sqlite://", "sqlite:///:memory:")
        assert [r.epoch for r in src.lineage().rows.values()] == [0]
        with CheckpointStore(loc) as store:  # another writer: rebuilds its own index, saves
            store.save("a", 1, {"w": torch.ones(2)})
        src._synced -= source_mod.SYNC_EVERY  # as if the sync interval had passed
        src.refresh(force=True)
        assert sorted(r.epoch for r in src.lineage().rows.values()) == [0, 1]
    finally:
        src.close()

"""Die at each step of the commit protocol (A: pending row, B: pack, C: manifest, D: index commit).

A helper process (tests/helpers/crash_at.py) saves checkpoint 1 of run "r", then monkeypatches itself to
call ``os._exit(137)`` at one named point while saving checkpoint 2. The test then inspects the raw store
and reopens it (recovery) and asserts exactly the state the protocol promises: before the manifest is
published checkpoint 2 never existed (its pack and temp files are garbage gc removes, and the same
(run, epoch) can be saved again); from the manifest on it is durable and rolled forward on reopen.
A save that *raises* (injected OSError) must clean up after itself in the same process.
"""

from __future__ import annotations

import json
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "helpers"))

import fault_procs as fp  # noqa: E402
import fault_states as fs  # noqa: E402

from ckpt import CheckpointStore, DuplicateCheckpointError  # noqa: E402

CRASH_AT = fp.helper("crash_at.py")
TIMEOUT = 120

# point -> garbage the crash must leave on storage (proves the process died where we meant it to)
BEFORE_MANIFEST = {
    "after_begin": {"orphan_pack": False, "pack_temp": False, "manifest_temp": False},
    "pack_tmp_written": {"orphan_pack": False, "pack_temp": True, "manifest_temp": False},
    "pack_renamed": {"orphan_pack": True, "pack_temp": False, "manifest_temp": False},
    "before_manifest": {"orphan_pack": True, "pack_temp": False, "manifest_temp": False},
    "manifest_tmp_written": {"orphan_pack": True, "pack_temp": False, "manifest_temp": True},
}
AFTER_MANIFEST = {
    "manifest_linked": {"manifest_temp": True},
    "before_index_commit": {"manifest_temp": False},
    "during_index_commit": {"manifest_temp": False},
}


def _run(store_dir, point: str, expect_rc: int, *, may_survive: bool = False):
    r = fp.run_helper([CRASH_AT, str(store_dir), point], TIMEOUT)
    out = r.stdout.splitlines()
    assert r.returncode == expect_rc, f"{point}: exit {r.returncode}, stdout {out}\n{r.stderr[-4000:]}"
    assert out and out[0].startswith("saved1 "), out
    assert not any(line.startswith("unexpected") for line in out), out
    assert may_survive or not any(line.startswith("survived") for line in out), out
    return out[0].split()[1], out[1:]


def _temps(store_dir, directory: str) -> list[str]:
    return [t for t in fs.temp_files(str(store_dir)) if t.startswith(directory + os.sep)]


def _check_loads(store, expected: dict[int, str]) -> None:
    """Exactly these (epoch -> id) checkpoints are listed, and each restores bit-exact."""
    infos = store.list()
    assert [(i.epoch, i.id) for i in infos] == sorted(expected.items()), infos
    for info in infos:
        fs.assert_bit_exact(store.load(info.id), fs.step_state(info.epoch), f"r@{info.epoch}")
        assert info.metrics == {"loss": 1.0 if info.epoch == 1 else 0.5}


def _verify_ok(store) -> None:
    report = store.verify(full=True)
    assert report.ok, [str(p) for p in report.problems]


def _unfinished_before_recovery(store_dir) -> list[tuple[str, str]]:
    with CheckpointStore(store_dir, readonly=True) as ro:  # read-only open never recovers
        assert [i.epoch for i in ro.list()] == [1], "a half-saved checkpoint is visible"
        return fs.non_committed_rows(ro)


@pytest.mark.parametrize("point", sorted(BEFORE_MANIFEST))
def test_crash_before_manifest_leaves_checkpoint_absent(tmp_path, point):
    store_dir = tmp_path / "store"
    cid1, _ = _run(store_dir, point, 137)
    exp = BEFORE_MANIFEST[point]

    # Raw state left by the dead writer.
    packs = fs.pack_files(str(store_dir))
    assert len(packs) == (2 if exp["orphan_pack"] else 1), packs
    assert bool(_temps(store_dir, "packs")) == exp["pack_temp"], fs.temp_files(str(store_dir))
    assert bool(_temps(store_dir, "manifests")) == exp["manifest_temp"], fs.temp_files(str(store_dir))
    assert fs.manifest_files(str(store_dir)) == {cid1}
    unfinished = _unfinished_before_recovery(store_dir)
    assert [status for _, status in unfinished] == ["pending"], unfinished

    with CheckpointStore(store_dir) as store:  # recovery: the writer is dead, drop its pending row
        assert fs.non_committed_rows(store) == []
        _check_loads(store, {1: cid1})
        _verify_ok(store)

        referenced = fs.referenced_packs(store)
        temps = fs.temp_files(str(store_dir))
        gc = store.gc(grace_seconds=0)
        assert set(gc.packs) == packs - referenced
        assert sorted(gc.temp_files) == temps
        assert fs.pack_files(str(store_dir)) == referenced, "an unreferenced pack survived gc"
        assert fs.temp_files(str(store_dir)) == [], "a temp file survived gc"
        _verify_ok(store)
        _check_loads(store, {1: cid1})

        # The dead save's claim on (r, 2) is gone: it can be saved now, with the right lineage.
        info2 = store.save("r", 2, fs.step_state(2), {"loss": 0.5})
        assert info2.parent == cid1
        _check_loads(store, {1: cid1, 2: info2.id})
        _verify_ok(store)


@pytest.mark.parametrize("point", sorted(AFTER_MANIFEST))
def test_crash_after_manifest_rolls_forward(tmp_path, point):
    store_dir = tmp_path / "store"
    cid1, _ = _run(store_dir, point, 137)
    manifests = fs.manifest_files(str(store_dir))
    assert len(manifests) == 2 and cid1 in manifests
    (cid2,) = manifests - {cid1}
    assert bool(_temps(store_dir, "manifests")) == AFTER_MANIFEST[point]["manifest_temp"]
    # Before recovery the index still has checkpoint 2 pending (step D never committed) and hides it.
    unfinished = _unfinished_before_recovery(store_dir)
    assert unfinished == [(cid2, "pending")], unfinished

    with CheckpointStore(store_dir) as store:  # recovery rolls the durable manifest forward
        assert fs.non_committed_rows(store) == []
        _check_loads(store, {1: cid1, 2: cid2})
        info2 = store.get("r@2")
        assert info2.parent == cid1
        assert info2.new_bytes > 0 and info2.content_hash == store.manifest(cid2).content_hash
        assert store.latest().id == cid2
        _verify_ok(store)

        gc = store.gc(grace_seconds=0)
        assert gc.packs == [], "gc deleted a pack of a rolled-forward checkpoint"
        assert fs.pack_files(str(store_dir)) == fs.referenced_packs(store)
        assert fs.temp_files(str(store_dir)) == []
        _check_loads(store, {1: cid1, 2: cid2})
        _verify_ok(store)
        with pytest.raises(DuplicateCheckpointError):
            store.save("r", 2, fs.step_state(2), {"loss": 0.5})

    # Reopening again changes nothing (recovery is idempotent).
    with CheckpointStore(store_dir) as store:
        _check_loads(store, {1: cid1, 2: cid2})


def _facts(lines: list[str]) -> dict:
    (line,) = [x for x in lines if x.startswith("facts ")]
    return json.loads(line[len("facts "):])


@pytest.mark.parametrize("point", ["raise_in_pack_write", "raise_in_manifest_write"])
def test_failed_save_cleans_up_and_can_be_retried(tmp_path, point):
    store_dir = tmp_path / "store"
    cid1, lines = _run(store_dir, point, 0)
    facts = _facts(lines)
    # Seen by the failing process itself, right after save() raised:
    assert facts["raised"].startswith("StorageError") and "no space left" in facts["raised"].lower(), facts
    assert facts["listed"] == [[cid1, 1]], facts  # checkpoint 1 intact, nothing half-visible
    assert facts["unfinished_rows"] == [], facts  # no pending row left behind
    assert facts["temp_files"] == [], facts
    assert len(facts["packs"]) == 1, facts  # only checkpoint 1's pack: the failed save removed its own
    assert facts["manifests"] == [cid1], facts
    assert "resave_error" not in facts, facts  # the same (run, epoch) saves fine right away
    cid2 = facts["resaved"]

    with CheckpointStore(store_dir) as store:
        assert fs.non_committed_rows(store) == []
        _check_loads(store, {1: cid1, 2: cid2})
        assert store.get(cid2).parent == cid1
        _verify_ok(store)
        gc = store.gc(grace_seconds=0)
        assert gc.packs == [] and gc.temp_files == []
        assert fs.pack_files(str(store_dir)) == fs.referenced_packs(store)
        _check_loads(store, {1: cid1, 2: cid2})


@pytest.mark.parametrize("point", ["raise_in_tag_ref", "raise_in_index_commit"])
def test_failure_after_manifest_does_not_strand_the_checkpoint(tmp_path, point):
    """A save that fails after its manifest is durable: tag-ref write error, or a step D index error."""
    store_dir = tmp_path / "store"
    cid1, lines = _run(store_dir, point, 0, may_survive=True)
    if not any(line.startswith("survived") for line in lines):  # (a fix may also make save() succeed)
        facts = _facts(lines)
        assert facts["raised"].startswith("StorageError"), facts
        # The process that saved a durable manifest must either see checkpoint 2 committed or be able
        # to save (r, 2) again; a pending row owned by a live process gives neither.
        assert 2 in [e for _, e in facts["listed"]] or "resaved" in facts, facts
        assert facts["unfinished_rows"] == [], facts
    with CheckpointStore(store_dir) as store:
        assert [i.epoch for i in store.list()] == [1, 2]
        _check_loads(store, {1: cid1, 2: store.get("r@2").id})
        _verify_ok(store)

"""Faults for real: a full disk, retention and gc racing writers and readers, damaged stores.

Scenarios of issue 6 not covered elsewhere (see the module docstrings of test_crash.py,
test_commit_steps.py, test_concurrency.py and test_lifecycle.py for the others):

* 3, disk full: a real, small tmpfs (mounted here when we are root; skipped otherwise) filled to several
  levels of headroom, so the save runs out of space in the pack, the manifest or the index; and, where no
  tmpfs can be mounted, a real file-size limit (RLIMIT_FSIZE, SIGXFSZ ignored: EFBIG after a short write)
  in a subprocess. Each time: a typed StorageError, nothing half-visible, the previous checkpoint intact,
  no temp file left, and once space is back gc leaves no orphan and the same save succeeds.
* 6, retention and gc in a loop (one process) while three writer processes save and a reader process
  loads, ~15 s: the reader never gets wrong tensors or an error for a checkpoint that is still committed,
  no returned save is lost unless prune removed it on purpose, verify(full=True) is clean at the end. And a
  save + prune loop SIGKILLed dozens of times never leaves its run without a restorable checkpoint.
* 7, the corruption cases test_lifecycle.py does not cover: bytes appended to a pack, two packs swapped,
  a deleted pack, a deleted manifest the index still lists, garbage in the index database.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import sys
import time
import warnings

import pytest
import torch
from click.testing import CliRunner

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "helpers"))

import fault_procs as fp  # noqa: E402
import fault_states as fs  # noqa: E402
import gc_churn  # noqa: E402
import save_prune  # noqa: E402

from ckpt import (CheckpointNotFoundError, CheckpointStore, CkptError, CorruptCheckpointError,  # noqa: E402
                  IndexCorruptError,
                  MissingBlobError, StorageError)
from ckpt.cli import cli  # noqa: E402
from conftest import tmpfs_mount  # noqa: E402

STEP_TIMEOUT = 120  # any one step of any child process (torch import on a loaded 2-core machine)


def cli_run(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def _verify_ok(store: CheckpointStore) -> None:
    report = store.verify(full=True)
    assert report.ok, [str(p) for p in report.problems]


# =====================================================================================================
# Scenario 3: disk full
# =====================================================================================================

def _full_state(epoch: int) -> dict:
    """~2.1 MiB: a frozen part shared by every epoch and 2 MiB new in each."""
    return {"frozen": fs.randn(32 * 1024, 11), "w": fs.randn(512 * 1024, 500 + epoch),
            "ids": torch.arange(epoch, epoch + 100), "epoch": epoch}


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 24 MiB tmpfs of our own: a real device that really runs out of space."""
    with tmpfs_mount(tmp_path, 24) as mnt:
        yield mnt


def _free(path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def _fill_to(mnt, headroom: int) -> None:
    """Leave about ``headroom`` bytes free on the tmpfs (one filler file, outside the store)."""
    filler = mnt / "filler"
    if filler.exists():
        filler.unlink()
    todo = max(0, _free(mnt) - headroom)
    with open(filler, "wb") as f:
        chunk = b"\0" * (1 << 20)
        while todo > 0:
            n = f.write(chunk[:min(todo, len(chunk))])
            todo -= n


def _says_what_to_do(message: str) -> bool:
    low = message.lower()
    return "free space" in low or "free some space" in low or "ckpt gc" in low or "ckpt prune" in low


@pytest.mark.timeout(300)
def test_disk_full_on_a_real_tmpfs_at_every_stage_of_a_save(small_tmpfs):
    mnt = small_tmpfs
    store_dir = str(mnt / "store")
    store = CheckpointStore(store_dir)
    try:
        first = store.save("r", 0, _full_state(0), {"loss": 1.0})
        state1 = _full_state(1)
        pack = state1["w"].nbytes + state1["ids"].nbytes  # what save 2 writes ("frozen" is deduplicated)
        # Headroom from "not even the pack fits" to "everything fits": the save runs out of space
        # somewhere in the pack, the manifest or the index (whose WAL grows too), or not at all.
        headrooms = [256 << 10, pack - (64 << 10), pack, *(pack + k * 4096 for k in range(1, 96)), 8 << 20]
        failures: list[str] = []
        for headroom in headrooms:
            _fill_to(mnt, headroom)
            manifests_before = fs.manifest_files(store_dir)
            try:
                store.save("r", 1, state1, {"loss": 0.5})
            except StorageError as exc:
                failures.append(str(exc))
                assert isinstance(exc, CkptError) and isinstance(exc, OSError)
                low = str(exc).lower()
                assert "no space left" in low or "disk is full" in low, exc
                # Nothing half-visible, the previous checkpoint intact, the failed save's temp files gone.
                assert [(i.id, i.epoch) for i in store.list()] == [(first.id, 0)]
                fs.assert_bit_exact(store.load("r@0"), _full_state(0))
                assert fs.temp_files(store_dir) == [], fs.temp_files(store_dir)
                with CheckpointStore(store_dir, readonly=True) as other:  # what another process sees
                    assert [i.id for i in other.list()] == [first.id]
                if fs.manifest_files(store_dir) - manifests_before:
                    failures[-1] = "(durable) " + failures[-1]
                    # The index ran out of space in step D, after the manifest was published: the save is
                    # durable and the next open rolls it forward (checked below). Saving it again from this
                    # process is test_retry_after_a_durable_failed_save_does_not_write_a_second_manifest.
                    break
            else:
                break
        (mnt / "filler").unlink()
        print(f"\n{len(failures)} failed saves: " + " | ".join(m[:50] for m in failures[-8:]))
        assert failures, "the save never ran out of space"
        # Pack and manifest writes that fail say what to do (the index's own message does not:
        # test_disk_full_in_the_index_says_what_to_do).
        assert [m for m in failures if "packs/" in m], failures
        storage_failures = [m for m in failures if "index database" not in m]
        assert all(_says_what_to_do(m) for m in storage_failures), storage_failures
    finally:
        store.close()

    # Space is back: a new process opens (recovery), gc leaves no orphan, the same save succeeds.
    with CheckpointStore(store_dir) as store:
        assert fs.non_committed_rows(store) == []
        listed = {i.epoch: i for i in store.list()}
        assert set(listed) <= {0, 1} and listed[0].id == first.id
        for info in listed.values():  # a save whose manifest made it is complete (rolled forward)
            fs.assert_bit_exact(store.load(info.id), _full_state(info.epoch))
        store.gc(grace_seconds=0)
        assert fs.pack_files(store_dir) == fs.referenced_packs(store), "an orphan pack survived gc"
        assert fs.temp_files(store_dir) == []
        if 1 not in listed:
            info = store.save("r", 1, _full_state(1), {"loss": 0.5})
            assert info.parent == first.id
        fs.assert_bit_exact(store.load("r@1"), _full_state(1))
        fs.assert_bit_exact(store.load("r@0"), _full_state(0))
        _verify_ok(store)


@pytest.mark.timeout(300)
def test_disk_full_in_the_index_says_what_to_do(small_tmpfs):
    mnt = small_tmpfs
    store_dir = str(mnt / "store")
    with CheckpointStore(store_dir) as store:
        store.save("r", 0, {"w": torch.ones(1000)})
        with store.index.engine.connect() as conn:  # empty WAL: the next transaction must grow it
            conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
        _fill_to(mnt, 0)
        with pytest.raises(StorageError) as err:
            store.save("r", 1, {"w": torch.zeros(1000)})
        assert [i.epoch for i in store.list()] == [0]
        assert _says_what_to_do(str(err.value)), str(err.value)


def _index_fails_twice(monkeypatch) -> None:
    """Step D's index transaction fails twice (a full disk under the index), after the manifest is durable."""
    import ckpt.catalog.writes as commit
    real = commit.ingest
    failures = []

    def ingest(session, *a, **k):
        if len(failures) < 2:
            failures.append(1)
            raise StorageError("index database error: database or disk is full (injected)")
        return real(session, *a, **k)
    monkeypatch.setattr(commit, "ingest", ingest)


def test_retry_after_a_durable_failed_save_does_not_write_a_second_manifest(tmp_path, monkeypatch):
    store_dir = str(tmp_path / "store")
    with CheckpointStore(store_dir) as store:
        store.save("r", 0, _cstate(0))
        _index_fails_twice(monkeypatch)
        with pytest.raises(StorageError):
            store.save("r", 1, _cstate(1))
        monkeypatch.undo()
        (durable,) = fs.manifest_files(store_dir) - {store.get("r@0").id}
        try:  # the user retries; it is already durable, so either answer is fine...
            store.save("r", 1, _cstate(1))
        except CkptError:
            pass
        # ...but (r, 1) must exist once, as the durable checkpoint, with its pack.
        assert len(fs.manifest_files(store_dir)) == 2, "a second manifest for r@1 was written"
        assert store.get("r@1").id == durable
        store.gc(grace_seconds=0)
        fs.assert_bit_exact(store.load("r@1"), _cstate(1))
        _verify_ok(store)
        assert store.reindex() == 2


def test_reindex_survives_two_manifests_for_the_same_epoch(tmp_path):
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    ids = {}
    for loc, seed in ((a, 0), (b, 1)):  # two stores saved r@0 independently (e.g. merged by rsync)
        with CheckpointStore(loc) as store:
            ids[store.save("r", 0, _cstate(seed)).id] = seed
    for sub in ("manifests", "packs"):
        for name in os.listdir(os.path.join(b, sub)):
            shutil.copy(os.path.join(b, sub, name), os.path.join(a, sub, name))
    os.unlink(os.path.join(a, "index.sqlite"))
    with CheckpointStore(a) as store:  # the index is rebuilt from the manifests on open
        (info,) = store.list()
        fs.assert_bit_exact(store.load(info.id), _cstate(ids[info.id]))
        assert store.reindex() == 1
        report = store.verify(full=True)
        (other,) = set(ids) - {info.id}
        assert any(p.subject == other for p in report.problems), [str(p) for p in report.problems]


@pytest.mark.timeout(300)
def test_file_size_limit_mid_save_fails_cleanly_and_gc_cleans_up(tmp_path):
    """RLIMIT_FSIZE: what a full quota looks like to a writer, and it works without root."""
    store_dir = str(tmp_path / "store")
    r = fp.run_helper([fp.helper("fsize_saver.py"), store_dir, str(1 << 20)], STEP_TIMEOUT)
    assert r.returncode == 0, r.stdout + r.stderr[-4000:]
    lines = r.stdout.splitlines()
    facts = json.loads(next(x for x in lines if x.startswith("facts "))[6:])
    assert facts["raised"] == "StorageError", facts
    assert "CkptError" in facts["mro"] and "OSError" in facts["mro"], facts
    assert "packs/" in facts["message"] and "Nothing already committed was changed" in facts["message"], facts
    assert facts["listed"] == [[facts["first"], 0]], facts  # nothing half-visible
    assert facts["loads"] is True, facts  # the previous checkpoint restores bit-exact
    assert facts["temp_files"] == [] and len(facts["packs"]) == 1, facts
    assert facts["manifests"] == [facts["first"]], facts
    resaved = json.loads(next(x for x in lines if x.startswith("resaved "))[8:])
    with CheckpointStore(store_dir) as store:
        assert [i.id for i in store.list()] == [facts["first"], resaved["id"]]
        assert store.gc(grace_seconds=0).packs == []
        assert fs.pack_files(store_dir) == fs.referenced_packs(store)
        assert fs.temp_files(store_dir) == []
        _verify_ok(store)


# =====================================================================================================
# Scenario 6: retention and gc while writers and readers work
# =====================================================================================================

CHURN_SECONDS = float(os.environ.get("CKPT_CHURN_SECONDS", "15"))
CHURN_WRITERS = 3


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_prune_and_gc_loop_while_writers_save_and_a_reader_loads(tmp_path):
    store_dir = str(tmp_path / "store")
    CheckpointStore(store_dir).close()
    helper = fp.helper("gc_churn.py")
    secs = str(CHURN_SECONDS)
    writers = [fp.LineProc([sys.executable, helper, "writer", store_dir, str(i), secs], name=f"writer-{i}")
               for i in range(CHURN_WRITERS)]
    maintainer = fp.LineProc([sys.executable, helper, "maintainer", store_dir, secs], name="maintainer")
    reader = fp.LineProc([sys.executable, helper, "reader", store_dir, secs], name="reader")
    procs = [*writers, maintainer, reader]
    try:
        for p in procs:
            p.expect("started", STEP_TIMEOUT)
        for p in procs:
            p.send("go")
        summaries = {}
        for p in procs:
            summaries[p.name] = json.loads(p.expect("summary", CHURN_SECONDS + STEP_TIMEOUT).split(" ", 1)[1])
        for p in procs:
            rc = p.finish(STEP_TIMEOUT)
            assert rc == 0, f"{p.name} exited {rc}: {p.seen[-5:]}\n{p.stderr[-4000:]}"
            assert "locked" not in p.stderr.lower(), p.stderr[-4000:]
    finally:
        for p in procs:
            p.kill()
    print(f"\nchurn for {CHURN_SECONDS} s: {summaries}")

    bad = [line for line in reader.seen if line.startswith("BAD")]
    assert not bad, bad[:10]
    rs = summaries["reader"]
    assert rs["ok"] > 0 and rs["bad"] == 0, rs
    assert summaries["maintainer"]["rounds"] > 0 and summaries["maintainer"]["pruned"] > 0, summaries

    saved = {}  # id -> (writer, epoch): every save that returned
    last = {}
    for i, w in enumerate(writers):
        for line in w.seen:
            if line.startswith("saved "):
                _, epoch, cid = line.split()
                saved[cid] = (i, int(epoch))
                last[i] = cid
    assert len(last) == CHURN_WRITERS and all(s["saves"] > 0 for n, s in summaries.items() if n.startswith("w"))
    pruned = {line.split()[1] for line in maintainer.seen if line.startswith("pruned ")}
    assert pruned <= set(saved), "prune removed something no writer reported saving"

    with CheckpointStore(store_dir) as store:
        listed = {i.id: i for i in store.list()}
        # Nothing that returned from save() is lost unless prune removed it on purpose, and every
        # writer's last checkpoint (its run's latest, which retention always keeps) is there.
        lost = set(saved) - set(listed) - pruned
        assert not lost, sorted((saved[c], c) for c in lost)
        assert set(last.values()) <= set(listed)
        assert not (set(listed) & pruned), "a checkpoint prune reported removing is still listed"
        for cid, info in listed.items():
            idx, epoch = saved[cid]
            assert (info.run, info.epoch) == (f"{gc_churn.RUN_PREFIX}{idx}", epoch)
            fs.assert_bit_exact(store.load(cid), gc_churn.churn_state(idx, epoch), f"{info.run}@{epoch}")
        _verify_ok(store)
        store.gc(grace_seconds=0)
        assert fs.pack_files(store_dir) == fs.referenced_packs(store)
        assert fs.temp_files(store_dir) == []
        assert fs.non_committed_rows(store) == []
        _verify_ok(store)


SP_KILLS = int(os.environ.get("CKPT_SAVE_PRUNE_KILLS", "30"))


def _read_log(path) -> list[str]:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return [line.rstrip("\n") for line in f if line.endswith("\n")]
    except FileNotFoundError:
        return []


def _wait_for(log, marker: str, ctx: str, timeout: float = STEP_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while True:
        lines = _read_log(log)
        assert not any(x.startswith("error") for x in lines), f"{ctx}: child failed: {lines}"
        if any(x.startswith(marker) for x in lines):
            return
        assert time.monotonic() < deadline, f"{ctx}: no {marker!r} within {timeout} s: {lines}"
        time.sleep(0.002)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_sigkill_between_save_and_prune_never_leaves_the_run_without_a_checkpoint(tmp_path):
    seed = int(os.environ.get("CKPT_CRASH_SEED", str(random.randrange(2**32))))
    rng = random.Random(seed)
    store_dir = str(tmp_path / "store")
    logs = tmp_path / "logs"
    logs.mkdir()
    server = fp.LineProc([sys.executable, fp.helper("save_prune.py"), "--serve"], name="save+prune fork server")
    live = None
    where = {"in_save": 0, "in_prune": 0, "between": 0, "startup": 0}
    returned: dict[int, str] = {}
    attempted: set[int] = set()
    try:
        for i in range(SP_KILLS):
            ctx = f"kill {i} (CKPT_CRASH_SEED={seed})"
            log = logs / f"{i:03d}.log"
            server.send(f"spawn {store_dir} {log}")
            live = int(server.expect("pid", 60).split()[1])
            _wait_for(log, "saved" if rng.random() < 0.7 else "ready", ctx)
            time.sleep(rng.uniform(0, 0.25))
            os.kill(live, signal.SIGKILL)
            server.send(f"reap {live}")
            status = int(server.expect(f"status {live}", 60).split()[2])
            live = None
            assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, f"{ctx}: {_read_log(log)}"
            lines = _read_log(log)
            for line in lines:
                if line.startswith("saved "):
                    returned[int(line.split()[1])] = line.split()[2]
                if line.startswith("saving "):
                    attempted.add(int(line.split()[1]))
            tail = lines[-1] if lines else ""
            key = ("in_save" if tail.startswith("saving") else "in_prune" if tail.startswith("pruning")
                   else "startup" if not any(x.startswith("saving") for x in lines) else "between")
            where[key] += 1

            with CheckpointStore(store_dir) as store:  # recovery, as the next training process would
                assert fs.non_committed_rows(store) == [], ctx
                infos = store.list(run=save_prune.RUN) if returned else []
                if returned:
                    # The run always has a restorable checkpoint, at least as new as the last returned save.
                    assert infos, f"{ctx}: the run has no checkpoint left; log {lines}"
                    latest = infos[-1]
                    assert latest.epoch >= max(returned), (ctx, latest, max(returned))
                    fs.assert_bit_exact(store.load(f"{save_prune.RUN}:latest"),
                                        save_prune.sp_state(latest.epoch), ctx)
                    assert latest.epoch not in returned or returned[latest.epoch] == latest.id, ctx
                report = store.verify(full=False)
                assert report.ok, (ctx, [str(p) for p in report.problems])
        server.send("quit")
        assert server.finish(30) == 0, server.stderr
    finally:
        if live is not None:
            os.kill(live, signal.SIGKILL)
        server.kill()
    print(f"\n{SP_KILLS} kills, seed {seed}: {where}, epochs saved up to {max(returned, default=None)}")
    assert returned, "no save ever returned"
    assert where["in_prune"] + where["between"] > 0, where  # some kills landed after a save, around prune

    with CheckpointStore(store_dir) as store:
        infos = store.list(run=save_prune.RUN)
        # A kill may land after a manifest was published: recovery rolls that save forward (and the next
        # life continues after it), so epochs past the last returned save exist only if they were saved.
        assert infos and infos[-1].epoch >= max(returned), infos
        assert all(i.epoch in returned or i.epoch in attempted for i in infos), (infos, sorted(attempted))
        for info in infos:
            fs.assert_bit_exact(store.load(info.id), save_prune.sp_state(info.epoch))
        _verify_ok(store)
        store.gc(grace_seconds=0)
        assert fs.pack_files(store_dir) == fs.referenced_packs(store)
        assert fs.temp_files(store_dir) == []
        _verify_ok(store)


def _lineup(tmp_path, n: int = 3):
    """A writer store with n checkpoints of run "r" (no metrics: prune keeps only what keep_last says)
    and a second, read-only handle on it: the reader, in what could as well be another process."""
    loc = str(tmp_path / "s")
    writer = CheckpointStore(loc)
    for e in range(n):
        writer.save("r", e, fs.step_state(e))
    return writer, CheckpointStore(loc, readonly=True)


def _after_first_manifest_read(reader: CheckpointStore, action) -> None:
    """Run ``action`` once, right after the reader resolved its selector and before it reads the manifest:
    the interleaving a concurrent prune produces (real files and index; only the timing is forced)."""
    real = reader._ctx.manifest
    fired: list[bool] = []

    def manifest(cid: str, *args):
        if not fired:
            fired.append(True)
            action()
        return real(cid, *args)
    reader._ctx.manifest = manifest  # type: ignore[method-assign]


def test_latest_pruned_during_load_is_not_reported_as_damaged(tmp_path):
    writer, reader = _lineup(tmp_path)

    def save_and_prune():
        writer.save("r", 3, fs.step_state(3))
        writer.prune(keep_last=1)  # removes r@0..r@2, including the one the reader is about to read
    _after_first_manifest_read(reader, save_and_prune)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        state, info = reader.load("latest", with_info=True)
    assert info.epoch == 3
    fs.assert_bit_exact(state, fs.step_state(3))


def test_checkpoint_deleted_during_load_is_not_found_not_missing(tmp_path):
    writer, reader = _lineup(tmp_path)
    victim = reader.get("r@1").id
    _after_first_manifest_read(reader, lambda: writer.delete(victim))
    with pytest.raises(CheckpointNotFoundError):
        reader.load(victim)


def test_load_of_a_checkpoint_pruned_before_resolution_is_a_clean_not_found(tmp_path):
    writer, reader = _lineup(tmp_path)
    victim = reader.get("r@0").id
    writer.prune(keep_last=1)
    with pytest.raises(CheckpointNotFoundError):
        reader.load(victim)
    fs.assert_bit_exact(reader.load("latest"), fs.step_state(2))


# =====================================================================================================
# Scenario 7: corruption
# =====================================================================================================

def _cstate(epoch: int) -> dict:
    """Every epoch has the same layout (so a swapped pack lines up exactly) and a frozen part shared by all."""
    return {"frozen": fs.randn(4096, 1), "w": fs.randn(8192, 100 + epoch),
            "b": fs.randn(64, 200 + epoch, torch.bfloat16), "epoch": epoch}


@pytest.fixture(scope="module")
def corrupt_template(tmp_path_factory):
    loc = str(tmp_path_factory.mktemp("corrupt") / "s")
    with CheckpointStore(loc) as store:
        for e in range(3):
            store.save("r", e, _cstate(e), {"loss": 1.0 / (e + 1)})
    return loc


@pytest.fixture
def damaged(corrupt_template, tmp_path):
    loc = str(tmp_path / "s")
    shutil.copytree(corrupt_template, loc)
    return loc


def _own_pack(loc: str, selector: str) -> str:
    """The pack holding what ``selector`` wrote itself ("w"), as a path."""
    with CheckpointStore(loc, readonly=True) as store:
        m = store.manifest(selector)
        slot = next(m.slots[i] for p, i in m.leaves if p == ("w",))
    return os.path.join(loc, "packs", f"{slot.pack}.safetensors")


def _append(loc):
    with open(_own_pack(loc, "r@2"), "ab") as f:
        f.write(os.urandom(100))


def _swap(loc):
    a, b = _own_pack(loc, "r@1"), _own_pack(loc, "r@2")
    tmp = a + ".swap"
    os.rename(a, tmp)
    os.rename(b, a)
    os.rename(tmp, b)


def _delete_pack(loc):
    os.unlink(_own_pack(loc, "r@2"))


def _delete_manifest(loc):
    with CheckpointStore(loc, readonly=True) as store:
        cid = store.get("r@2").id
    os.unlink(os.path.join(loc, "manifests", f"{cid}.ckpt"))


def _delete_shared_pack(loc):
    with CheckpointStore(loc, readonly=True) as store:
        m = store.manifest("r@0")
        slot = next(m.slots[i] for p, i in m.leaves if p == ("frozen",))
    os.unlink(os.path.join(loc, "packs", f"{slot.pack}.safetensors"))


# damage -> (verify problem kinds, epochs whose restore must fail, epoch load("latest") falls back to or None)
DAMAGE = {
    "appended_bytes": (_append, {"bad-pack"}, set(), 2),
    "swapped_packs": (_swap, {"pack-mismatch"}, {1, 2}, 0),
    "deleted_pack": (_delete_pack, {"bad-pack"}, {2}, 1),
    "deleted_manifest": (_delete_manifest, {"bad-manifest"}, {2}, 1),
    "deleted_shared_pack": (_delete_shared_pack, {"bad-pack"}, {0, 1, 2}, None),
}


@pytest.mark.parametrize("case", sorted(DAMAGE))
def test_damage_is_refused_reported_and_skipped_by_latest(damaged, case, tmp_path):
    damage, kinds, must_fail, latest_epoch = DAMAGE[case]
    damage(damaged)
    store = CheckpointStore(damaged)  # a fresh process's view: nothing cached
    try:
        # Restore never returns wrong tensors: a damaged checkpoint raises, an intact one is bit-exact.
        for e in range(3):
            if e in must_fail:
                with pytest.raises(CorruptCheckpointError):
                    store.load(f"r@{e}")
                with pytest.raises(CorruptCheckpointError):
                    store.load_into({"w": torch.zeros(8192), "frozen": torch.zeros(4096)}, f"r@{e}",
                                    key=None, strict=False)
            else:
                fs.assert_bit_exact(store.load(f"r@{e}"), _cstate(e), f"{case}: r@{e}")
        if case == "deleted_manifest":
            with pytest.raises(MissingBlobError):
                store.load("r@2")

        # latest skips the damaged newest checkpoints, loudly, for the newest good one.
        if latest_epoch is None:
            with pytest.warns(RuntimeWarning, match="damaged"), pytest.raises(CorruptCheckpointError):
                store.load("latest")
        elif latest_epoch == 2:
            fs.assert_bit_exact(store.load("latest"), _cstate(2))
        else:
            with pytest.warns(RuntimeWarning, match="damaged") as caught:
                state, info = store.load("latest", with_info=True)
            assert info.epoch == latest_epoch
            fs.assert_bit_exact(state, _cstate(latest_epoch))
            assert len([w for w in caught if "damaged" in str(w.message)]) == 2 - latest_epoch

        report = store.verify(full=True)
        assert not report.ok and {p.kind for p in report.problems} >= kinds, [str(p) for p in report.problems]
    finally:
        store.close()

    # The command line says so too: exit 1, one PROBLEM line per problem.
    res = cli_run("--store", damaged, "verify")
    assert res.exit_code == 1, res.output
    assert "PROBLEM" in res.stdout and "FAILED" in res.stdout
    res = cli_run("--store", damaged, "--json", "verify", "--full")
    assert res.exit_code == 1
    doc = json.loads(res.stdout)
    assert doc["ok"] is False and {p["kind"] for p in doc["problems"]} >= kinds
    # ckpt restore of a damaged checkpoint fails and writes nothing.
    for e in sorted(must_fail):
        out = tmp_path / f"restored-{e}.pt"
        res = cli_run("--store", damaged, "restore", f"r@{e}", "-o", str(out))
        assert res.exit_code == 4 and res.stderr.startswith("error:"), res.output  # damaged data
        assert not out.exists() and not [p for p in os.listdir(tmp_path) if p.startswith(".restored")]


def test_deleted_manifest_is_dropped_by_reindex_and_its_pack_by_gc(damaged):
    _delete_manifest(damaged)
    with CheckpointStore(damaged) as store:
        assert store.reindex() == 2
        assert [i.epoch for i in store.list()] == [0, 1]
        assert store.verify(full=True).ok
        assert len(store.gc(grace_seconds=0).packs) == 1  # r@2's own pack, now unreferenced
        assert fs.pack_files(damaged) == fs.referenced_packs(store)
        for e in (0, 1):
            fs.assert_bit_exact(store.load(f"r@{e}"), _cstate(e))
        fs.assert_bit_exact(store.load("latest"), _cstate(1))


def _garbage_index(loc: str) -> None:
    path = os.path.join(loc, "index.sqlite")
    for suffix in ("-wal", "-shm"):
        if os.path.exists(path + suffix):
            os.unlink(path + suffix)
    with open(path, "r+b") as f:
        f.write(random.Random(7).randbytes(8192))


def test_garbage_index_can_be_deleted_and_is_rebuilt_from_storage(damaged):
    _garbage_index(damaged)
    with pytest.raises(IndexCorruptError):
        CheckpointStore(damaged)
    os.unlink(os.path.join(damaged, "index.sqlite"))
    with CheckpointStore(damaged) as store:  # the index is a cache: rebuilt from manifests on open
        assert [i.epoch for i in store.list()] == [0, 1, 2]
        for e in range(3):
            fs.assert_bit_exact(store.load(f"r@{e}"), _cstate(e))
        _verify_ok(store)


def test_garbage_index_is_a_typed_error_that_says_how_to_rebuild(damaged):
    _garbage_index(damaged)
    for readonly in (True, False):
        with pytest.raises(CkptError, match="reindex|delete"):
            CheckpointStore(damaged, readonly=readonly)
    res = cli_run("--store", damaged, "verify")
    assert res.exit_code in (1, 4) and "index" in res.stderr and "unexpected" not in res.stderr, res.output


def test_reindex_rebuilds_a_garbage_index(damaged):
    _garbage_index(damaged)
    res = cli_run("--store", damaged, "reindex")
    assert res.exit_code == 0, res.output
    with CheckpointStore(damaged) as store:
        assert [i.epoch for i in store.list()] == [0, 1, 2]
        _verify_ok(store)

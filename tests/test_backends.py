"""The store's contract on every backend: blobs on local disk, memory:// and S3 (a moto server), index on
SQLite and PostgreSQL (a throwaway cluster). Like fsspec's abstract test mixins, each contract test runs
once per combination through the parametrized ``backend`` fixture; the servers start only when a
combination needs them (tests/servers.py).

Then the parts that only exist on some backends: conditional (create-only) and multipart writes on S3,
a writer killed during an upload or between manifest and index, many processes writing through
PostgreSQL, the schema and migrations on PostgreSQL, and the CLI on a remote store.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import uuid
from dataclasses import dataclass, field

import pytest
import sqlalchemy as sa
import torch
from torch import nn

from ckpt import CheckpointStore
from ckpt.errors import (CkptError, CorruptCheckpointError, DuplicateCheckpointError, ReadOnlyStoreError,
                         StoreNotFoundError)
from ckpt.catalog.schema import Checkpoint, CheckpointPack
from conftest import assert_same

INDEXES = ("sqlite", "postgresql")
CHILD_TIMEOUT = 180  # seconds for a child process step (torch import on a busy 2-core machine)


@dataclass
class Backend:
    """One (blob storage, index) combination; ``open()`` gives a new handle on the same store."""

    blobs: str
    index_kind: str
    location: str
    index: str
    storage_options: dict | None
    request: pytest.FixtureRequest
    tmp_path: object
    opened: list = field(default_factory=list)

    def open(self, **kwargs) -> CheckpointStore:
        kwargs.setdefault("index", self.index)
        s = CheckpointStore(self.location, storage_options=self.storage_options, **kwargs)
        self.opened.append(s)
        return s

    def fresh_index(self) -> str:
        """A new, empty index of the same kind (as on a new machine, or after the index was lost)."""
        if self.index_kind == "sqlite":
            return f"sqlite:///{self.tmp_path}/index-{uuid.uuid4().hex[:8]}.sqlite"
        server = self.request.getfixturevalue("postgres_server")
        return server.url(server.create_database())

    @property
    def child_env(self) -> dict:
        return {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}


def _make_backend(blobs: str, index_kind: str, request, tmp_path) -> Backend:
    options = None
    if blobs == "local":
        location = str(tmp_path / "store")
    elif blobs == "memory":
        location = f"memory://ckpt-{uuid.uuid4().hex}"
    else:
        location = request.getfixturevalue("s3_url")
        options = request.getfixturevalue("s3_server").storage_options
    if index_kind == "sqlite":
        index = f"sqlite:///{tmp_path}/index.sqlite"
    else:
        index = request.getfixturevalue("pg_url")
    return Backend(blobs, index_kind, location, index, options, request, tmp_path)


# Every blob backend with SQLite, and the two real multi-machine set-ups with PostgreSQL (a shared
# directory, object storage). memory:// with PostgreSQL adds nothing the others do not cover.
COMBINATIONS = [("local", "sqlite"), ("memory", "sqlite"), ("s3", "sqlite"), ("local", "postgresql"),
                ("s3", "postgresql")]


@pytest.fixture(params=COMBINATIONS, ids=lambda p: f"{p[0]}-{p[1]}")
def backend(request, tmp_path):
    b = _make_backend(*request.param, request, tmp_path)
    yield b
    for s in b.opened:
        s.close()


def _state(epoch: int, *, frozen_seed: int = 7) -> dict:
    g = torch.Generator().manual_seed(1000 + epoch)
    frozen = torch.Generator().manual_seed(frozen_seed)
    return {
        "model": {"w": torch.randn(256, 64, generator=g), "frozen": torch.randn(1000, 100, generator=frozen),
                  "b": torch.arange(64, dtype=torch.int64)},
        "optimizer": {"step": epoch, "lr": 0.1, "exp_avg": torch.full((256, 64), float(epoch))},
        "epoch": epoch,
    }


def _raw(store: CheckpointStore, rel: str) -> bytes:
    return store.storage.read(rel, 1 << 40)


def _overwrite(store: CheckpointStore, rel: str, data: bytes) -> None:
    """Replace a blob behind ckpt's back (to damage it)."""
    store.storage.put(rel, data)


def _non_committed(store: CheckpointStore) -> list:
    with store.index.read() as s:
        return s.execute(sa.select(Checkpoint.id, Checkpoint.status)
                         .where(Checkpoint.status != "committed")).all()


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


# ============================================================================ the contract, everywhere


def test_round_trip_is_bit_exact(backend):
    store = backend.open()
    dtypes = [torch.float32, torch.float16, torch.bfloat16, torch.int8, torch.int64, torch.bool,
              torch.complex64, torch.float8_e4m3fn, torch.uint16]
    state = {str(d): (torch.randint(0, 256, (4, 33), dtype=torch.uint8).view(d) if d.itemsize == 1 and d != torch.bool
                      else torch.randn(4, 33).to(d)) for d in dtypes}
    state["compressible"] = torch.zeros(64, 1024)  # zstd under compression="auto" on S3
    state["nested"] = {"list": [torch.ones(3), (1, "two", None)], "scalar": torch.tensor(2.5)}
    state["view"] = torch.arange(100.0)[5:50:3]
    info = store.save("rt", 0, state, {"loss": 0.5})
    assert_same(store.load(info.id), {k: (v.contiguous() if isinstance(v, torch.Tensor) else v)
                                      for k, v in state.items()})
    assert_same(store.load(key="nested"), state["nested"])
    codecs = {s.codec for s in store.manifest().slots}
    assert codecs == ({"zstd", "raw"} if backend.blobs == "s3" else {"raw"})
    model = nn.Linear(4, 3)
    store.save("rt", 1, {"model": model.state_dict()})
    fresh = nn.Linear(4, 3)
    report = store.load_into(fresh)
    assert report.loaded == 2 and torch.equal(fresh.weight, model.weight)
    again = backend.open()  # another handle (another process, another host) sees the same
    assert [i.id for i in again.list()] == [i.id for i in store.list()]
    assert again.verify(full=True).ok


def test_unchanged_tensors_are_stored_once(backend):
    store = backend.open()
    infos = [store.save("dedup", e, _state(e), {"loss": 1.0 / (e + 1)}) for e in range(3)]
    frozen_bytes = 1000 * 100 * 4
    assert infos[0].new_bytes > frozen_bytes // 2  # (zstd on S3 barely shrinks random floats)
    assert all(i.new_bytes < frozen_bytes // 2 for i in infos[1:])
    assert [i.parent for i in infos] == [None, infos[0].id, infos[1].id]
    homes = {s.pack for i in infos for p, s in ((p, store.manifest(i.id).slots[s]) for p, s in
                                                 store.manifest(i.id).leaves) if p == ("model", "frozen")}
    assert len(homes) == 1
    assert store.get("latest~2").id == infos[0].id
    assert_same(store.load("dedup@1"), _state(1))
    assert store.verify(full=True).ok


def test_selectors_metrics_tags_and_runs(backend):
    store = backend.open()
    for e, acc in enumerate([0.5, 0.9, 0.7, float("nan")]):
        store.save("sel", e, {"x": torch.full((10,), float(e))}, {"val_acc": acc, "loss": 1.0 - e / 10})
    store.save("other", 0, {"x": torch.zeros(1)}, {"val_acc": 0.99})
    store.set_objective("sel", "val_acc", "max")
    assert store.best(run="sel").epoch == 1  # NaN never wins
    assert store.get("sel:best").epoch == 1 and store.get("best:val_acc").run == "other"
    assert store.get("sel@2").epoch == 2 and store.latest().run == "other"
    assert [i.epoch for i in store.list("sel", sort="loss")] == [3, 2, 1, 0]
    store.tag("sel@2", "release")
    assert store.get("release").epoch == 2 and "release" in store.get("sel@2").tags
    store.untag("release")
    assert store.get("sel@2").tags == ()
    store.finish_run("sel")
    runs = {r.name: r for r in store.runs()}
    assert runs["sel"].status == "completed" and runs["sel"].checkpoints == 4
    assert runs["sel"].objective == "val_acc" and runs["sel"].mode == "max"


def test_same_run_and_epoch_is_refused(backend):
    store = backend.open()
    first = store.save("dup", 0, {"x": torch.ones(2)})
    with pytest.raises(DuplicateCheckpointError):
        backend.open().save("dup", 0, {"x": torch.zeros(2)})
    assert torch.equal(store.load(first.id)["x"], torch.ones(2))
    assert _non_committed(store) == []


def test_delete_and_gc_free_only_unreferenced_packs(backend):
    store = backend.open()
    for e in range(3):
        store.save("gc", e, _state(e))
    packs_before = {e.name for e in store.storage.list("packs")}
    m1 = store.manifest("gc@1")
    own = next(m1.slots[s].pack for p, s in m1.leaves if p == ("model", "w"))
    store.delete("gc@1")
    assert [i.epoch for i in store.list()] == [0, 2]
    store.gc(grace_seconds=0)  # (delete may already have freed the pack itself)
    packs_after = {e.name for e in store.storage.list("packs")}
    assert packs_after == packs_before - {f"{own}.safetensors"}  # only the pack nobody else uses
    assert_same(store.load("gc@0"), _state(0))  # the shared frozen tensor survived
    assert store.verify(full=True).ok and store.gc(grace_seconds=0).packs == []
    plan = store.prune(keep_last=1)
    assert [i.epoch for i in plan.remove] == [0] and [i.epoch for i in store.list()] == [2]
    assert_same(store.load(), _state(2))


def test_damage_is_detected_and_latest_falls_back(backend):
    store = backend.open()
    for e in range(2):
        store.save("dmg", e, _state(e))
    m = store.manifest("dmg@1")
    slot = next(m.slots[s] for p, s in m.leaves if p == ("model", "w"))
    rel = f"packs/{slot.pack}.safetensors"
    data = bytearray(_raw(store, rel))
    data[slot.offset + 10] ^= 0x40
    _overwrite(store, rel, bytes(data))
    report = store.verify(full=True)
    assert any(p.kind == "corrupt-tensor" for p in report.problems)
    with pytest.raises(CorruptCheckpointError):
        store.load("dmg@1")
    with pytest.warns(RuntimeWarning, match="damaged"):
        assert store.load("latest")["epoch"] == 0
    mrel = f"manifests/{m.id}.ckpt"
    _overwrite(store, mrel, _raw(store, mrel).replace(b'"epoch":1', b'"epoch":7'))
    with pytest.raises(CorruptCheckpointError, match="checksum"):
        backend.open().load(m.id)  # a new handle: manifests are immutable, so handles may cache them


def test_lost_index_is_rebuilt_from_storage(backend):
    store = backend.open()
    for e in range(3):
        store.save("lost", e, _state(e), {"loss": 1.0 / (e + 1)})
    store.set_objective("lost", "loss", "min")
    store.tag("lost@1", "keep")
    before = [(i.id, i.epoch, i.metrics, i.parent) for i in store.list()]
    fresh = backend.open(index=backend.fresh_index())  # a new machine: empty index, same storage
    assert [(i.id, i.epoch, i.metrics, i.parent) for i in fresh.list()] == before
    assert fresh.get("keep").epoch == 1 and fresh.best(run="lost").epoch == 2
    assert fresh.reindex() == 3
    assert fresh.verify(full=True).ok
    assert_same(fresh.load("lost@2"), _state(2))


def test_save_that_fails_before_its_manifest_leaves_nothing(backend, monkeypatch):
    store = backend.open()
    store.save("fail", 0, _state(0))
    real = store.storage.put

    def broken(rel, data, **kw):
        if rel.startswith("manifests/"):
            raise OSError("network went away")
        return real(rel, data, **kw)
    monkeypatch.setattr(store.storage, "put", broken)
    with pytest.raises((OSError, CkptError)):
        store.save("fail", 1, _state(1))
    monkeypatch.undo()
    assert [i.epoch for i in store.list()] == [0] and _non_committed(store) == []
    store.save("fail", 1, _state(1))  # the claim on (run, epoch) was released
    assert store.gc(grace_seconds=0).packs == []  # the failed save removed its own pack
    assert store.verify(full=True).ok


def test_save_interrupted_after_its_manifest_is_rolled_forward(backend):
    store = backend.open()
    info = store.save("fwd", 0, _state(0), {"loss": 0.25})
    dead = _dead_pid()

    def undo_step_d(s):  # as if the writer died between publishing the manifest and indexing it
        row = s.get(Checkpoint, info.id)
        row.status, row.seq, row.pid, row.host = "pending", None, dead, __import__("socket").gethostname()
        s.execute(sa.delete(CheckpointPack).where(CheckpointPack.checkpoint_id == info.id))
    store.index.write_txn(undo_step_d)
    assert store.list() == []
    reopened = backend.open()  # recovery on open
    assert [i.id for i in reopened.list()] == [info.id]
    assert reopened.get(info.id).metrics == {"loss": 0.25}
    assert_same(reopened.load(), _state(0))
    assert reopened.gc(grace_seconds=0).packs == [] and reopened.verify(full=True).ok


def test_concurrent_writers_from_threads(backend):
    backend.open().close()  # created up front; this test is about concurrent saves
    errors: list[BaseException] = []
    results: dict = {}
    barrier = threading.Barrier(6)

    def worker(i: int) -> None:
        try:
            s = backend.open()
            barrier.wait(timeout=120)
            if i < 4:
                results[i] = s.save(f"w{i}", 0, {"shared": _state(0)["model"]["frozen"],
                                                 "own": torch.full((1000,), float(i))})
            else:  # two writers race for the same (run, epoch): exactly one wins
                try:
                    results[i] = s.save("race", 0, {"x": torch.full((10,), float(i))})
                except DuplicateCheckpointError:
                    results[i] = None
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors, errors
    assert sum(results[i] is None for i in (4, 5)) == 1
    store = backend.open()
    assert sorted(i.run for i in store.list()) == ["race", "w0", "w1", "w2", "w3"]
    for i in range(4):
        assert torch.equal(store.load(f"w{i}@0")["own"], torch.full((1000,), float(i)))
    winner = next(i for i in (4, 5) if results[i] is not None)
    assert torch.equal(store.load("race@0")["x"], torch.full((10,), float(winner)))
    assert _non_committed(store) == [] and store.verify(full=True).ok


def test_create_only_writes_never_replace(backend):
    store = backend.open()
    rel = f"manifests/{uuid.uuid4().hex}.json"
    store.storage.put(rel, b"first", create_only=True)
    with pytest.raises(FileExistsError):
        store.storage.put(rel, b"second", create_only=True)
    assert _raw(store, rel) == b"first"
    # Racing writers of one key: exactly one succeeds, and its bytes are what is there.
    rel2 = f"manifests/{uuid.uuid4().hex}.json"
    outcome: dict[int, str] = {}
    barrier = threading.Barrier(4)

    def racer(i: int) -> None:
        barrier.wait(timeout=60)
        try:
            store.storage.put(rel2, f"writer {i}".encode(), create_only=True)
            outcome[i] = "won"
        except FileExistsError:
            outcome[i] = "lost"
    threads = [threading.Thread(target=racer, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    winners = [i for i, o in outcome.items() if o == "won"]
    if backend.blobs == "memory":  # fsspec's memory:// has no atomic create: at least one wins
        assert winners
    else:
        assert len(winners) == 1 and len(outcome) == 4
    assert _raw(store, rel2) in {f"writer {i}".encode() for i in winners}
    store.storage.delete(rel)
    store.storage.delete(rel2)


def test_readonly_handles_read_and_never_write(backend):
    store = backend.open()
    store.save("ro", 0, _state(0))
    ro = backend.open(readonly=True)
    assert ro.latest().epoch == 0
    assert_same(ro.load(), _state(0))
    with pytest.raises(ReadOnlyStoreError):
        ro.save("ro", 1, _state(1))
    if backend.blobs != "memory":
        missing = backend.location.rstrip("/") + "-missing"
        with pytest.raises(StoreNotFoundError):
            CheckpointStore(missing, index=backend.fresh_index(), readonly=True,
                            storage_options=backend.storage_options)
        from ckpt.storage import open_storage
        assert not open_storage(missing, backend.storage_options).exists("ckpt-store.json")


# ============================================================================ index: schema, migrations


@pytest.fixture(params=INDEXES)
def index_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/index.sqlite"
    return request.getfixturevalue("pg_url")


def test_migrations_build_the_models_schema(index_url, tmp_path):
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from ckpt.catalog.migrate import head_revision
    from ckpt.catalog.schema import Base
    store = CheckpointStore(tmp_path / "s", index=index_url)
    with store.index.engine.connect() as conn:
        ctx = MigrationContext.configure(conn)
        assert compare_metadata(ctx, Base.metadata) == []
        assert ctx.get_current_heads() == (head_revision(),)
    store.close()


def test_many_first_opens_migrate_once(index_url, tmp_path):
    """Eight handles open a brand-new index at the same moment: one migrates, none fails."""
    from ckpt.catalog.engine import Index
    from ckpt.catalog.migrate import current_revision, ensure_schema, head_revision
    errors: list[BaseException] = []
    barrier = threading.Barrier(8)

    def opener() -> None:
        idx = Index(index_url)
        try:
            barrier.wait(timeout=60)
            ensure_schema(idx, readonly=False)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)
        finally:
            idx.dispose()
    threads = [threading.Thread(target=opener) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors, errors
    idx = Index(index_url)
    assert current_revision(idx) == head_revision()
    idx.dispose()


def test_newer_schema_is_refused_on_postgresql(pg_url, tmp_path):
    from ckpt import SchemaVersionError
    CheckpointStore(tmp_path / "s", index=pg_url).close()
    engine = sa.create_engine(pg_url)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE alembic_version SET version_num = 'fffffffff999'"))
    engine.dispose()
    for readonly in (False, True):
        with pytest.raises(SchemaVersionError, match="upgrade ckpt"):
            CheckpointStore(tmp_path / "s", index=pg_url, readonly=readonly)


KILL_MID_MIGRATION = textwrap.dedent("""
    import os, sys
    import alembic.command
    real = alembic.command.upgrade
    def upgrade_then_die(cfg, rev):
        real(cfg, rev)          # every table is created inside the open transaction...
        os._exit(9)             # ...and the process dies before it commits
    alembic.command.upgrade = upgrade_then_die
    from ckpt import CheckpointStore
    CheckpointStore(sys.argv[1], index=sys.argv[2])
""")


def test_kill_during_migration_on_postgresql_leaves_nothing(pg_url, tmp_path):
    script = tmp_path / "kill.py"
    script.write_text(KILL_MID_MIGRATION)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run([sys.executable, str(script), str(tmp_path / "s"), pg_url], timeout=CHILD_TIMEOUT,
                          env=env, capture_output=True, text=True)
    assert proc.returncode == 9, proc.stderr
    engine = sa.create_engine(pg_url)
    assert sa.inspect(engine).get_table_names() == []  # transactional DDL: all or nothing
    engine.dispose()
    store = CheckpointStore(tmp_path / "s", index=pg_url)
    store.save("r", 0, {"x": torch.ones(1)})
    assert store.latest().epoch == 0
    store.close()


def test_index_url_never_shows_the_password(pg_url, tmp_path):
    url = pg_url.replace("postgres@", "postgres:s3cret-pw@")  # trust auth: the password is ignored
    store = CheckpointStore(tmp_path / "s", index=url)
    assert "s3cret-pw" not in repr(store) and "s3cret-pw" not in store.index.url
    store.close()


# ============================================================================ S3 specifics


def test_large_packs_go_up_as_multipart_uploads(request, tmp_path):
    s3_backend = _make_backend("s3", "sqlite", request, tmp_path)
    request.addfinalizer(lambda: [s.close() for s in s3_backend.opened])
    store = s3_backend.open()
    big = torch.randn(3_000_000)  # ~12 MiB, barely compressible: several 5 MiB parts
    info = store.save("mp", 0, {"big": big, "small": torch.ones(3)})
    slot = store.manifest(info.id).slots[0]
    bucket, key = store.storage.bucket, store.storage._key(f"packs/{slot.pack}.safetensors")
    head = s3_backend.request.getfixturevalue("s3_server").client().head_object(Bucket=bucket, Key=key)
    assert head["ETag"].strip('"').rsplit("-", 1)[-1].isdigit() and "-" in head["ETag"]  # "<md5>-<parts>"
    assert head["ContentLength"] == info.new_bytes
    assert torch.equal(store.load()["big"], big)
    assert store.storage.abort_stale_uploads(0) == []  # nothing left behind
    with pytest.raises(FileExistsError):  # packs are create-only on object stores
        store.storage.put(f"packs/{slot.pack}.safetensors", b"x" * (3 << 20), create_only=True)
    assert torch.equal(s3_backend.open().load()["big"], big)


KILLED_WRITER = textwrap.dedent("""
    import sys, time, torch
    from ckpt import CheckpointStore
    location, index, mode = sys.argv[1:4]
    store = CheckpointStore(location, index=index)
    s3 = store.storage
    if mode == "upload":               # stop inside a multipart upload, after its first part
        real = s3._send
        async def send(method, body, **kwargs):
            if method == "upload_part" and kwargs.get("PartNumber") == 2:
                print("uploading", flush=True)
                time.sleep(600)
            return await real(method, body, **kwargs)
        s3._send = send
    else:                              # stop after the manifest is published, before the index knows
        real_put = s3.put
        def put(rel, data, **kwargs):
            n = real_put(rel, data, **kwargs)
            if rel.startswith("manifests/"):
                print("manifest-written", flush=True)
                time.sleep(600)
            return n
        s3.put = put
    g = torch.Generator().manual_seed(5)
    store.save("killed", 0, {"big": torch.randn(3_000_000, generator=g)}, {"loss": 0.5})
    print("saved", flush=True)
""")


@pytest.mark.parametrize("index_kind,when", [("postgresql", "upload"), ("sqlite", "after-manifest")])
def test_writer_killed_mid_save(request, tmp_path, index_kind, when):
    s3_backend = _make_backend("s3", index_kind, request, tmp_path)
    request.addfinalizer(lambda: [s.close() for s in s3_backend.opened])
    script = tmp_path / "writer.py"
    script.write_text(KILLED_WRITER)
    first = s3_backend.open()
    first.save("killed", 1, {"x": torch.ones(3)})  # something committed beforehand
    proc = subprocess.Popen([sys.executable, str(script), s3_backend.location, s3_backend.index, when],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=s3_backend.child_env)
    try:
        line = _readline(proc, CHILD_TIMEOUT)
        assert line.strip() == ("uploading" if when == "upload" else "manifest-written"), \
            line + proc.stderr.read() if proc.poll() is not None else line
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    store = s3_backend.open()  # recovery: the writer's pid is gone
    g = torch.Generator().manual_seed(5)
    if when == "upload":
        assert [i.epoch for i in store.list()] == [1]
        assert _non_committed(store) == []
        stale = store.storage.abort_stale_uploads(0)
        assert len(stale) == 1 and stale[0].startswith("packs/")
        assert store.storage.abort_stale_uploads(0) == []
        assert store.gc(grace_seconds=0).packs == []  # no object was ever created
        store.save("killed", 0, {"big": torch.randn(3_000_000, generator=g)})  # the claim was released
    else:
        assert sorted(i.epoch for i in store.list()) == [0, 1]
        assert store.get("killed@0").metrics == {"loss": 0.5}
        assert torch.equal(store.load("killed@0")["big"], torch.randn(3_000_000, generator=g))
    assert store.verify(full=True).ok


def _readline(proc: subprocess.Popen, timeout: float) -> str:
    out: list[str] = []
    t = threading.Thread(target=lambda: out.append(proc.stdout.readline()), daemon=True)
    t.start()
    t.join(timeout)
    return out[0] if out else ""


SAVERS = textwrap.dedent("""
    # Imports torch once, then forks one saver per process (as many hosts would each run one).
    import os, sys, time, traceback, torch
    from ckpt import CheckpointStore, DuplicateCheckpointError
    location, index, n, outdir = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    go = os.path.join(outdir, "go")

    def saver(idx):
        store = CheckpointStore(location, index=index)  # every process opens the store at once
        open(os.path.join(outdir, f"ready-{idx}"), "w").close()
        while not os.path.exists(go):
            time.sleep(0.01)
        lines = []
        shared = torch.randn(500_000, generator=torch.Generator().manual_seed(42))
        for rnd in range(2):
            info = store.save(f"p{idx}", rnd, {"shared": shared, "own": torch.full((1000,), float(idx * 10 + rnd))})
            lines.append(f"saved {info.id} {info.new_bytes}")
        try:
            info = store.save("race", 0, {"x": torch.full((10,), float(idx))})
            lines.append(f"race-won {info.id}")
        except DuplicateCheckpointError:
            lines.append("race-lost")
        with open(os.path.join(outdir, f"out-{idx}"), "w") as f:
            f.write("\\n".join(lines) + "\\n")

    pids = []
    for idx in range(n):
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                saver(idx)
            except BaseException:
                traceback.print_exc()
                code = 1
            finally:
                os._exit(code)
        pids.append(pid)
    while len([f for f in os.listdir(outdir) if f.startswith("ready-")]) < n:
        time.sleep(0.01)
    open(go, "w").close()  # release every saver at the same moment
    sys.exit(max(os.waitstatus_to_exitcode(os.waitpid(p, 0)[1]) != 0 for p in pids))
""")


def test_processes_write_one_store_through_postgresql(s3_server, tmp_path, request):
    """Four processes (as on four hosts) save to one S3 store with one PostgreSQL index at once."""
    b = _make_backend("s3", "postgresql", request, tmp_path)
    request.addfinalizer(lambda: [s.close() for s in b.opened])
    script = tmp_path / "savers.py"
    script.write_text(SAVERS)
    outdir = tmp_path / "out"
    outdir.mkdir()
    proc = subprocess.run([sys.executable, str(script), b.location, b.index, "4", str(outdir)],
                          capture_output=True, text=True, timeout=CHILD_TIMEOUT, env=b.child_env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    lines = [ln.split() for i in range(4) for ln in (outdir / f"out-{i}").read_text().splitlines()]
    assert sum(ln[0] == "race-won" for ln in lines) == 1 and sum(ln[0] == "race-lost" for ln in lines) == 3
    store = b.open()
    assert len(store.list()) == 9 and _non_committed(store) == []
    second_round = [int(ln[2]) for ln in lines if ln[0] == "saved"][1::2]
    assert all(nb < 500_000 * 4 for nb in second_round)  # the shared tensor was reused, not rewritten
    for i in range(4):
        assert torch.equal(store.load(f"p{i}@1")["own"], torch.full((1000,), float(i * 10 + 1)))
    with store.index.read() as s:
        seqs = s.scalars(sa.select(Checkpoint.seq)).all()
    assert sorted(seqs) == list(range(1, 10))  # one commit order, no gaps or repeats
    assert store.verify(full=True).ok


def test_cli_reindexes_a_remote_store_from_a_laptop(s3_server, tmp_path, request):
    """`ckpt --store s3://... --index postgresql://... reindex`, credentials and endpoint from the env."""
    b = _make_backend("s3", "postgresql", request, tmp_path)
    request.addfinalizer(lambda: [s.close() for s in b.opened])
    store = b.open()
    for e in range(2):
        store.save("cli", e, _state(e), {"loss": 1.0 / (e + 1)})
    new_index = b.fresh_index()
    out = subprocess.run([sys.executable, "-m", "ckpt.cli", "--store", b.location, "--index", new_index,
                          "reindex"], capture_output=True, text=True, timeout=CHILD_TIMEOUT, env=b.child_env)
    assert out.returncode == 0, out.stderr
    again = b.open(index=new_index, readonly=True)
    assert [(i.id, i.metrics) for i in again.list()] == [(i.id, i.metrics) for i in store.list()]

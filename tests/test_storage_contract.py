"""One storage contract, checked on local disk, memory:// and S3 (moto), plus what is backend-specific:
local fallbacks and write errors, S3 streaming with bounded memory and no local spooling, and a writer
SIGKILLed in the middle of a multipart upload."""

from __future__ import annotations

import array
import hashlib
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
import uuid

import pytest

from ckpt.errors import CorruptCheckpointError, MissingBlobError, StorageError
from ckpt.storage import LocalStorage, open_storage, temp_owner_pid
from ckpt.storage.fsspec_backend import FsspecStorage

HELPER = os.path.join(os.path.dirname(__file__), "helpers", "storage_proc.py")
MiB = 1 << 20


def helper(*args: str, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, HELPER, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


@pytest.fixture(params=["local", "memory", "s3"])
def url(request, tmp_path):
    if request.param == "local":
        yield str(tmp_path / "store")
    elif request.param == "memory":
        u = f"memory://ckpt-contract-{uuid.uuid4().hex}"
        yield u
        fs = open_storage(u).fs
        if fs.exists(fs._strip_protocol(u)):
            fs.rm(fs._strip_protocol(u), recursive=True)
    else:
        yield request.getfixturevalue("s3_url")


@pytest.fixture
def storage(url):
    return open_storage(url)


def pending_uploads(storage) -> list[str]:
    return storage.abort_stale_uploads(-60, dry_run=True)


def leftovers(storage, directory: str) -> list[str]:
    return sorted(e.name for e in storage.list(directory))


def pattern(n: int, seed: int = 0) -> bytes:
    """n deterministic, non-repeating-per-part bytes."""
    out = bytearray()
    i = 0
    while len(out) < n:
        out += hashlib.sha256(f"{seed}-{i}".encode()).digest() * 2048  # 64 KiB
        i += 1
    return bytes(out[:n])


class TestContract:
    def test_put_read_exists_size_list_delete(self, storage):
        assert storage.put("packs/a.bin", b"x" * 100) == 100
        storage.put("packs/b.bin", memoryview(b"hello"))
        storage.put("top.json", bytearray(b"{}"))
        assert storage.exists("packs/a.bin") and not storage.exists("packs/c.bin")
        assert storage.size("packs/b.bin") == 5
        assert storage.read("packs/b.bin", max_size=5) == b"hello"
        listed = {e.name: e for e in storage.list("packs")}
        assert sorted(listed) == ["a.bin", "b.bin"]
        assert listed["a.bin"].size == 100 and listed["a.bin"].mtime and abs(listed["a.bin"].mtime - time.time()) < 120
        assert [e.name for e in storage.list("")] == ["top.json"]  # files directly under it only
        assert storage.list("packs/") == storage.list("packs") or sorted(storage.list("packs/")) == sorted(
            storage.list("packs"))
        assert storage.list("nothing-here") == [] and storage.list("packs/nothing/deeper") == []
        assert storage.delete("packs/a.bin") is True
        assert storage.delete("packs/a.bin") is False
        assert not storage.exists("packs/a.bin")
        with pytest.raises(MissingBlobError):
            storage.read("packs/a.bin", 1000)
        with pytest.raises(MissingBlobError):
            storage.size("packs/a.bin")
        with pytest.raises(MissingBlobError):
            storage.reader("packs/a.bin")

    def test_overwrite_unless_create_only(self, storage):
        storage.put("refs/r", b"one")
        storage.put("refs/r", b"two")
        assert storage.read("refs/r", 10) == b"two"
        storage.put("manifests/m", b"first", create_only=True)
        with pytest.raises(FileExistsError):
            storage.put("manifests/m", b"second!", create_only=True)
        assert storage.read("manifests/m", 100) == b"first"
        storage.put("locks/empty", b"", create_only=True)
        with pytest.raises(FileExistsError):
            storage.put("locks/empty", b"", create_only=True)
        assert storage.size("locks/empty") == 0
        assert leftovers(storage, "manifests") == ["m"] and leftovers(storage, "locks") == ["empty"]

    def test_a_second_instance_sees_changes_at_once(self, storage, url):
        """No listing or existence caches: other processes and hosts write the same store."""
        other = open_storage(url)
        assert other.list("manifests") == [] and not other.exists("manifests/m")
        storage.put("manifests/m", b"1")
        assert [e.name for e in other.list("manifests")] == ["m"] and other.exists("manifests/m")
        assert other.delete("manifests/m")
        assert storage.list("manifests") == [] and not storage.exists("manifests/m")

    @pytest.mark.parametrize("reserve", [0, 16, 1536 * 1024])
    @pytest.mark.parametrize("total", [0, 1000, MiB, 3 * MiB + 12345])
    def test_sink_writes_and_commits_with_prefix(self, storage, reserve, total):
        """Sizes around the S3 part size (1 MiB in the test session), reserves inside one part and across two."""
        data = pattern(total)
        prefix = pattern(reserve, seed=1)
        sink = storage.open_sink("packs/p.bin", reserve=reserve)
        assert sink.position == reserve and sink.key == "packs/p.bin"
        # tiny pieces, every buffer type, then big ones
        cut = [0, 1, 7, 100, 4096, 300 * 1024, 2 * MiB, total]
        cut = sorted({min(c, total) for c in cut})
        for i, (a, b) in enumerate(zip(cut, cut[1:])):
            piece = data[a:b]
            if i % 3 == 1:
                piece = memoryview(bytearray(piece))
            elif i % 3 == 2 and len(piece) % 4 == 0:
                piece = memoryview(array.array("f", piece))  # a non-byte format
            sink.write(piece)
        assert sink.position == reserve + total
        assert not storage.exists("packs/p.bin")  # nothing visible before commit
        assert sink.commit(prefix) == reserve + total
        assert storage.size("packs/p.bin") == reserve + total
        with storage.reader("packs/p.bin") as r:
            assert r.size == reserve + total
            assert r.read(0, r.size) == prefix + data
        assert leftovers(storage, "packs") == ["p.bin"]
        assert pending_uploads(storage) == []
        with pytest.raises(ValueError):
            sink.write(b"more")

    def test_sink_misuse(self, storage):
        sink = storage.open_sink("packs/q.bin", reserve=8)
        sink.write(b"abc")
        with pytest.raises(ValueError):
            sink.commit(b"short")
        sink.abort()
        with pytest.raises(ValueError):
            storage.open_sink("packs/q.bin", reserve=-1)

    def test_sink_create_only(self, storage):
        storage.put("packs/p.bin", b"first", create_only=True)
        sink = storage.open_sink("packs/p.bin", reserve=4)
        sink.write(pattern(2 * MiB + 5))  # multipart on S3
        with pytest.raises(FileExistsError):
            sink.commit(b"head")
        assert storage.read("packs/p.bin", 100) == b"first"
        small = storage.open_sink("packs/p.bin")
        small.write(b"tiny")
        with pytest.raises(FileExistsError):
            small.commit()
        assert storage.read("packs/p.bin", 100) == b"first"
        assert leftovers(storage, "packs") == ["p.bin"]
        assert pending_uploads(storage) == []

    @pytest.mark.parametrize("total", [100, 3 * MiB])
    def test_abort_leaves_nothing(self, storage, total):
        sink = storage.open_sink("packs/gone.bin", reserve=8)
        sink.write(pattern(total))
        if storage.is_local:  # the temp file is there while writing, named for gc
            (tmp,) = storage.list("packs")
            assert tmp.name.startswith(".gone.bin.tmp-") and temp_owner_pid(tmp.name) == os.getpid()
        sink.abort()
        sink.abort()  # idempotent
        assert not storage.exists("packs/gone.bin")
        assert storage.list("packs") == []
        assert pending_uploads(storage) == []
        with pytest.raises(ValueError):
            sink.commit(bytes(8))
        with pytest.raises(RuntimeError):
            with storage.open_sink("packs/gone.bin") as s:
                s.write(pattern(2 * MiB))
                raise RuntimeError("the writer failed")
        assert storage.list("packs") == [] and pending_uploads(storage) == []

    def test_reader_bounds(self, storage):
        data = pattern(1000)
        storage.put("packs/r.bin", data)
        with storage.reader("packs/r.bin") as r:
            assert r.read(10, 20) == data[10:30]
            out = bytearray(50)
            r.read_into(950, memoryview(out))
            assert bytes(out) == data[950:]
            assert r.read(1000, 0) == b""
            for offset, length in [(990, 20), (-1, 5), (1001, 0), (0, -1)]:
                with pytest.raises(MissingBlobError):
                    r.read(offset, length)
            tracemalloc.start()
            try:
                with pytest.raises(MissingBlobError):
                    r.read(0, 2 ** 40)  # a manifest may claim anything: refused before allocating
                with pytest.raises(MissingBlobError):
                    r.read_into(999, memoryview(bytearray(2)))
                peak = tracemalloc.get_traced_memory()[1]
            finally:
                tracemalloc.stop()
            assert peak < MiB
            with pytest.raises(ValueError):
                r.read_into(0, memoryview(b"readonly!"))
            if r.positional:  # several threads at once
                outs = [bytearray(100) for _ in range(8)]
                threads = [threading.Thread(target=r.read_into, args=(i * 100, memoryview(outs[i])))
                           for i in range(8)]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()
                assert b"".join(outs) == data[:800]

    def test_read_refuses_oversized_blob(self, storage):
        storage.put("manifests/huge", pattern(5000))
        with pytest.raises(CorruptCheckpointError) as info:
            storage.read("manifests/huge", max_size=4999)
        assert "5000" in str(info.value) and "4999" in str(info.value)
        assert storage.read("manifests/huge", max_size=5000) == pattern(5000)

    def test_touch_moves_mtime_and_never_resurrects(self, storage):
        storage.put("locks/l", b"", create_only=True)
        storage.put("refs/keep", b"content")
        before = {e.name: e.mtime for e in storage.list("locks")}["l"]
        before_ref = {e.name: e.mtime for e in storage.list("refs")}["keep"]
        time.sleep(1.1 if storage.is_object_store else 0.05)  # S3 times have 1 s resolution
        storage.touch("locks/l")
        storage.touch("refs/keep")
        assert {e.name: e.mtime for e in storage.list("locks")}["l"] > before
        assert {e.name: e.mtime for e in storage.list("refs")}["keep"] > before_ref
        assert storage.read("refs/keep", 100) == b"content" and storage.size("locks/l") == 0
        storage.delete("locks/l")
        with pytest.raises(MissingBlobError):
            storage.touch("locks/l")
        assert not storage.exists("locks/l")

    @pytest.mark.parametrize("key", ["../escape", "/abs", "a//b", "a/./b", "a/../b", "", "a\\b", "dir/"])
    def test_keys_that_could_leave_the_root_are_refused(self, storage, key):
        with pytest.raises(ValueError):
            storage.put(key, b"x")
        with pytest.raises(ValueError):
            storage.reader(key)
        with pytest.raises(ValueError):
            storage.list("../up")


# ------------------------------------------------------------------------------------ dispatch


def test_open_storage_picks_the_class(tmp_path, s3_url):
    assert isinstance(open_storage(str(tmp_path)), LocalStorage)
    assert isinstance(open_storage(tmp_path), LocalStorage)
    local = open_storage(f"file://{tmp_path}")
    assert isinstance(local, LocalStorage) and local.root == str(tmp_path) and local.is_local
    mem = open_storage("memory://dispatch")
    assert isinstance(mem, FsspecStorage) and mem.protocol == "memory" and mem.url == "memory://dispatch"
    from ckpt.storage.s3 import S3Storage
    s3 = open_storage(s3_url)
    assert isinstance(s3, S3Storage) and s3.is_object_store and s3.url == s3_url
    assert isinstance(open_storage(s3_url.replace("s3://", "s3a://")), S3Storage)
    with pytest.raises(StorageError):
        open_storage("nosuchprotocol://x/y")


def test_storage_modules_do_not_import_torch_or_numpy():
    out = subprocess.run([sys.executable, HELPER, "imports"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "HEAVY []"


# ---------------------------------------------------------------------------------- local only


def test_local_create_only_without_hard_links(tmp_path, monkeypatch):
    """Filesystems without link(): renameat2(NOREPLACE), then an O_EXCL claim, keep create-only."""
    import ckpt.storage.local as local

    def no_link(src, dst):
        raise OSError(1, "Operation not permitted")
    monkeypatch.setattr(local.os, "link", no_link)
    for rename_works in (True, False):
        if not rename_works:
            monkeypatch.setattr(local, "_rename_noreplace", lambda src, dst: False)
        s = LocalStorage(tmp_path / f"store-{rename_works}")
        s.put("manifests/m", b"first", create_only=True)
        with pytest.raises(FileExistsError):
            s.put("manifests/m", b"second", create_only=True)
        sink = s.open_sink("manifests/m")
        sink.write(b"third")
        with pytest.raises(FileExistsError):
            sink.commit()
        assert s.read("manifests/m", 100) == b"first"
        assert [e.name for e in s.list("manifests")] == ["m"]
        with s.open_sink("packs/p", reserve=2) as sink:
            sink.write(b"body")
            sink.commit(b"hd")
        assert s.read("packs/p", 100) == b"hdbody"


def test_local_write_past_a_file_size_limit_explains_and_cleans_up(tmp_path):
    proc = subprocess.run([sys.executable, HELPER, "efbig", str(tmp_path), str(MiB), str(3 * MiB)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = dict(line.split(" ", 1) for line in proc.stdout.splitlines())
    assert lines["ERROR"].startswith("StorageError") and "file-size limit" in lines["ERROR"]
    assert "ulimit" in lines["ERROR"] and "Nothing already committed was changed" in lines["ERROR"]
    assert lines["LEFT"] == "[]"  # the temp file is gone: the space is free again


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_local_permission_error_explains(tmp_path):
    s = LocalStorage(tmp_path)
    s.makedirs("packs")
    os.chmod(tmp_path / "packs", 0o500)
    try:
        with pytest.raises(StorageError, match="check permissions"):
            s.put("packs/x", b"data")
    finally:
        os.chmod(tmp_path / "packs", 0o700)


def test_local_small_writes_are_gathered(tmp_path, monkeypatch):
    """Thousands of tiny tensors must not cost a syscall each."""
    import ckpt.storage.local as local
    calls = []
    real_write = os.write
    monkeypatch.setattr(local.os, "write", lambda fd, b: calls.append(len(b)) or real_write(fd, b))
    s = LocalStorage(tmp_path)
    with s.open_sink("packs/many") as sink:
        for i in range(10_000):
            sink.write(i.to_bytes(4, "little"))
        sink.write(bytes(3 * MiB))  # a big one goes straight through
        sink.commit()
    assert len(calls) <= 3, calls
    assert s.size("packs/many") == 40_000 + 3 * MiB


# ------------------------------------------------------------------------------------- S3 only


def test_s3_sink_streams_with_bounded_memory_and_no_local_files(s3_url, tmp_path, monkeypatch):
    empty = tmp_path / "tmpdir"
    empty.mkdir()
    monkeypatch.setenv("TMPDIR", str(empty))
    monkeypatch.setattr(tempfile, "tempdir", str(empty))
    storage = open_storage(s3_url)
    with storage.open_sink("warm-up") as warm:  # botocore loads its models on first use: not ours to count
        warm.write(bytes(2 * storage.part_size + 1))
        warm.commit()
    storage.part_size = 8 * MiB
    total, piece = 96 * MiB, bytearray(pattern(MiB))
    digest = hashlib.sha256()
    tracemalloc.start()
    try:
        sink = storage.open_sink("packs/big.bin", reserve=32)
        for i in range(total // MiB):
            piece[0] = i % 251  # the sink copies what it is given: the caller may reuse its buffer
            digest.update(piece)
            sink.write(piece)
        sink.commit(b"P" * 32)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # (concurrency + 1) parts by design (the first one held back included), plus a part's worth of
    # request buffers and this test's own
    bound = (storage.concurrency + 2) * storage.part_size
    assert peak < bound, f"peak {peak / MiB:.0f} MiB, bound {bound / MiB:.0f} MiB"
    assert os.listdir(empty) == []
    head = storage._head("packs/big.bin")
    assert head["ETag"].strip('"').endswith("-13")  # 96 MiB + 32 bytes in 8 MiB parts: multipart
    check = hashlib.sha256()
    with storage.reader("packs/big.bin") as r:
        assert r.size == total + 32 and r.read(0, 32) == b"P" * 32
        buf = bytearray(24 * MiB)  # split into concurrent ranged GETs
        for offset in range(32, r.size, len(buf)):
            view = memoryview(buf)[:min(len(buf), r.size - offset)]
            r.read_into(offset, view)
            check.update(view)
    assert check.digest() == digest.digest()


def test_s3_writer_killed_mid_upload_leaves_no_object(s3_url):
    proc = helper("sink", s3_url, "packs/killed.bin", str(5 * MiB))
    try:
        assert proc.stdout.readline().strip() == "WRITTEN", proc.stderr.read()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    storage = open_storage(s3_url)
    assert not storage.exists("packs/killed.bin") and storage.list("packs") == []
    # (moto reports every upload as begun in 2010, so the grace period cannot be checked here)
    assert pending_uploads(storage) == ["packs/killed.bin"]
    assert storage.abort_stale_uploads(0) == ["packs/killed.bin"]
    assert pending_uploads(storage) == []


def test_s3_create_only_without_conditional_writes(s3_url):
    """CKPT_S3_CONDITIONAL_WRITES=0 (servers without If-None-Match): a HEAD check instead."""
    storage = open_storage(s3_url)
    storage.conditional = False
    storage.put("manifests/m", b"first", create_only=True)
    with pytest.raises(FileExistsError):
        storage.put("manifests/m", b"second", create_only=True)
    sink = storage.open_sink("manifests/m")
    sink.write(pattern(3 * MiB))
    with pytest.raises(FileExistsError):
        sink.commit()
    assert storage.read("manifests/m", 100) == b"first" and pending_uploads(storage) == []
    storage.put("locks/l", b"", create_only=True)
    storage.touch("locks/l")
    storage.delete("locks/l")
    with pytest.raises(MissingBlobError):
        storage.touch("locks/l")

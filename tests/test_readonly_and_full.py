"""A read-only store stays readable, a read-only open writes nothing, and a full disk prunes its way out.

Real mounts (root only, as CI runs): a read-only bind mount of a store (a mounted snapshot, a colleague's
directory) and a 24 MiB tmpfs that fills up. Without root the mount tests skip with the reason; the
write-nothing check runs everywhere.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
import torch
from click.testing import CliRunner

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "helpers"))

import fault_states as fs  # noqa: E402

from ckpt import CheckpointStore, ReadOnlyStoreError, StorageError  # noqa: E402
from ckpt.cli import cli  # noqa: E402
from conftest import tmpfs_mount  # noqa: E402


def _state(epoch: int) -> dict:
    return {"model": {"w": fs.randn(4096, 900 + epoch), "b": torch.arange(8) + epoch}, "epoch": epoch}


def _tree(root: str) -> dict[str, tuple[int, float]]:
    out = {}
    for d, _, files in os.walk(root):
        for f in files:
            p = os.path.join(d, f)
            st = os.stat(p)
            out[os.path.relpath(p, root)] = (st.st_size, st.st_mtime)
    return out


def _mount(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["mount", *args], capture_output=True, text=True, timeout=60)


@pytest.fixture
def readonly_mount(tmp_path):
    """(writable store dir, the same store through a read-only bind mount)."""
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("a read-only bind mount needs root")
    src = tmp_path / "src"
    with CheckpointStore(src) as store:
        for e in range(3):
            store.save("r", e, _state(e), {"val_acc": 0.5 + e / 10})
        store.tag("r@1", "keep")
    ro = tmp_path / "ro"
    ro.mkdir()
    r = _mount("--bind", str(src), str(ro))
    if r.returncode != 0:
        pytest.skip(f"cannot bind-mount here ({r.stderr.strip()})")
    r = _mount("-o", "remount,ro,bind", str(ro))
    if r.returncode != 0:
        subprocess.run(["umount", str(ro)], capture_output=True, timeout=60)
        pytest.skip(f"cannot remount read-only here ({r.stderr.strip()})")
    try:
        yield src, ro
    finally:
        subprocess.run(["umount", str(ro)], capture_output=True, timeout=60)
        subprocess.run(["umount", "-l", str(ro)], capture_output=True, timeout=60)


def _cli(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_read_only_mount_reads_through_api_and_cli(readonly_mount, tmp_path):
    src, ro = readonly_mount
    with pytest.raises(OSError):
        (ro / "probe").write_text("x")  # the mount really is read-only
    with CheckpointStore(ro, readonly=True) as store:
        assert [i.epoch for i in store.list()] == [0, 1, 2]
        fs.assert_bit_exact(store.load("best:val_acc"), _state(2))
        assert store.get("keep").epoch == 1
        assert store.verify(full=True).ok
        with pytest.raises(ReadOnlyStoreError):
            store.save("r", 3, _state(3))
    for args in (["ls"], ["show", "latest"], ["verify", "--full"], ["runs"], ["log", "r"]):
        res = _cli("--store", str(ro), *args)
        assert res.exit_code == 0, (args, res.output)
    out = tmp_path / "best.pt"
    res = _cli("--store", str(ro), "restore", "best:val_acc", "-o", str(out))
    assert res.exit_code == 0 and out.exists(), res.output


def test_read_only_mount_without_an_index_reads_through_a_rebuilt_one(tmp_path):
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("a read-only bind mount needs root")
    src = tmp_path / "src"
    with CheckpointStore(src) as store:
        for e in range(2):
            store.save("r", e, _state(e), {"val_acc": e / 2})
    for name in os.listdir(src):
        if name.startswith("index.sqlite"):
            os.unlink(src / name)  # a snapshot copied without its index (it is only a cache)
    ro = tmp_path / "ro"
    ro.mkdir()
    if _mount("--bind", str(src), str(ro)).returncode or _mount("-o", "remount,ro,bind", str(ro)).returncode:
        subprocess.run(["umount", str(ro)], capture_output=True, timeout=60)
        pytest.skip("cannot make a read-only bind mount here")
    try:
        with CheckpointStore(ro, readonly=True) as store:
            assert [i.epoch for i in store.list()] == [0, 1]
            fs.assert_bit_exact(store.load("latest"), _state(1))
        res = _cli("--store", str(ro), "ls")
        assert res.exit_code == 0 and "r" in res.output, res.output
    finally:
        subprocess.run(["umount", str(ro)], capture_output=True, timeout=60)


def test_readonly_open_writes_nothing_even_with_an_old_or_missing_index(tmp_path):
    loc = tmp_path / "s"
    with CheckpointStore(loc) as store:
        store.save("r", 0, _state(0))
    before = _tree(str(loc))
    with CheckpointStore(loc, readonly=True) as store:  # the index is current: opened read-only
        assert store.latest().epoch == 0
    assert _tree(str(loc)) == before
    for name in os.listdir(loc):
        if name.startswith("index.sqlite"):
            os.unlink(loc / name)
    before = _tree(str(loc))
    with CheckpointStore(loc, readonly=True) as store:  # no index: read through an in-memory one
        fs.assert_bit_exact(store.load(), _state(0))
    assert _tree(str(loc)) == before, "a read-only open created or changed files"


def test_a_long_lived_read_only_store_sees_checkpoints_committed_after_it_opened(tmp_path):
    """An evaluator opens the store read-only while no writer is running (the index is then opened
    immutable, creating nothing) and must still see what a trainer commits later, from another process."""
    loc = tmp_path / "s"
    with CheckpointStore(loc) as store:
        store.save("r", 0, _state(0))
    save = (f"from ckpt import CheckpointStore\nimport torch\n"
            f"with CheckpointStore({str(loc)!r}) as s:\n"
            f"    s.save('r', {{e}}, {{{{'w': torch.full((8,), {{e}}.0)}}}})\n")
    with CheckpointStore(loc, readonly=True) as watcher:
        assert watcher.latest().epoch == 0
        for epoch in (1, 2):
            done = subprocess.run([sys.executable, "-c", save.format(e=epoch)], capture_output=True, text=True,
                                  timeout=120)
            assert done.returncode == 0, done.stderr[-2000:]
            assert watcher.latest().epoch == epoch
            assert torch.equal(watcher.load("latest")["w"], torch.full((8,), float(epoch)))


@pytest.fixture
def small_tmpfs(tmp_path):
    with tmpfs_mount(tmp_path, 24) as mnt:
        yield mnt


def _big(epoch: int) -> dict:
    return {"w": fs.randn(900 * 1024, 700 + epoch), "epoch": epoch}  # 3.5 MiB new per save


def test_a_full_disk_prunes_its_way_out(small_tmpfs):
    loc = str(small_tmpfs / "store")
    saved = []
    with CheckpointStore(loc) as store:
        with pytest.raises(StorageError) as err:
            for e in range(100):  # the 24 MiB fill up after a handful
                saved.append(store.save("r", e, _big(e), {"loss": 1.0 / (e + 1)}).epoch)
        assert "no space" in str(err.value).lower() or "full" in str(err.value).lower()
        assert len(saved) >= 2
    # What the advice says: prune, then gc. Both must work on the full disk.
    res = _cli("--store", loc, "prune", "--keep-last", "1")
    assert res.exit_code == 0, res.output
    res = _cli("--store", loc, "gc", "--grace", "0")
    assert res.exit_code == 0, res.output
    with CheckpointStore(loc) as store:
        kept = [i.epoch for i in store.list()]
        assert kept == [saved[-1]] or kept == [saved[-1], saved[-1] + 1], kept  # a durable last save rolls forward
        assert fs.non_committed_rows(store) == []
        nxt = kept[-1] + 1
        store.save("r", nxt, _big(nxt))  # there is room again
        fs.assert_bit_exact(store.load(f"r@{nxt}"), _big(nxt))
        assert store.verify(full=True).ok

"""Hostile and unlucky input on the command line (issue 12): every integer option and selector in one
range, and exit codes that tell a usage error (2) from damaged data (4) and a full or unwritable store (5)."""

import errno
import json
import os
import random
import resource
import signal
import subprocess
import sys

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file

from ckpt import CheckpointStore
from ckpt.cli import cli
from ckpt.cli.errors import exit_code
from ckpt.errors import (AmbiguousSelectorError, CheckpointNotFoundError, CorruptCheckpointError,
                         DuplicateCheckpointError, IndexCorruptError, InvalidArgumentError, InvalidFileError,
                         KeyMismatchError, MetricDirectionError, MissingBlobError, ReadOnlyStoreError,
                         SchemaVersionError, SelectorError, StorageError, StorageFullError, StorageNotWritableError,
                         StoreNotFoundError, UnsafeMetadataError, UnsupportedTypeError)
from ckpt.validation import INT_MAX
from conftest import tmpfs_mount

HUGE = "99999999999999999999"


def run(*args, env=None):
    return CliRunner().invoke(cli, list(args), env={"CKPT_DEBUG": "", **(env or {})}, catch_exceptions=False)


def one_line(res, code):
    assert res.exit_code == code, (res.exit_code, res.output)
    assert res.stderr.startswith("error: ") and len(res.stderr.splitlines()) == 1, res.stderr
    assert "unexpected" not in res.stderr and "Traceback" not in res.output
    return res.stderr


def _state(epoch: int) -> dict:
    return {"model": {"w": torch.full((64,), float(epoch))}, "epoch": epoch}


@pytest.fixture(scope="module")
def loc(tmp_path_factory):
    loc = str(tmp_path_factory.mktemp("edges-cli") / "s")
    with CheckpointStore(loc) as store:
        for e in range(2):
            store.save("r", e, _state(e), {"val_acc": 0.5 + e / 10})
    return loc


@pytest.fixture
def fresh(tmp_path):
    loc = str(tmp_path / "s")
    with CheckpointStore(loc) as store:
        for e in range(2):
            store.save("r", e, _state(e), {"val_acc": 0.5 + e / 10})
    return loc


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    path = tmp_path_factory.mktemp("edges-files") / "w.safetensors"
    save_file({"w": torch.ones(4)}, path)
    return str(path)


# --- one integer range: exit 2, never 3 --------------------------------------------------------------

@pytest.mark.parametrize("args", [
    ["show", f"r@{HUGE}"], ["show", "r@-1"], ["show", f"r@{INT_MAX + 1}"], ["show", "r@" + "9" * 5000],
    ["show", f"latest~{HUGE}"], ["show", "latest~" + "7" * 5000], ["restore", f"r@{HUGE}"], ["export", f"r@{HUGE}"],
    ["rm", f"r@{HUGE}"], ["tag", f"r@{HUGE}", "t"], ["diff", f"r@{HUGE}", "latest"],
    ["ls", "--limit", HUGE], ["ls", "--limit", "-1"], ["log", "--limit", HUGE], ["diff", "r@0", "r@1", "--top", HUGE],
    ["prune", "--keep-last", HUGE, "--dry-run"], ["prune", "--keep-every", HUGE, "--dry-run"],
    ["ls", "--limit", "9" * 5000],
], ids=lambda a: " ".join(a)[:40])
def test_integers_out_of_range_are_usage_errors(loc, args):
    err = one_line(run("--store", loc, *args), 2)
    assert "range" in err or "4611686018427387903" in err, err
    assert len(err) < 400 + sum(map(len, args))  # click echoes a bad option value whole


@pytest.mark.parametrize("option, value", [("--epoch", HUGE), ("--epoch", "-1"), ("--step", HUGE),
                                           ("--step", str(INT_MAX + 1))])
def test_import_integer_options_out_of_range_are_usage_errors(tmp_path, weights, option, value):
    extra = [] if option == "--epoch" else ["--epoch", "0"]
    res = run("--store", str(tmp_path / "s"), "import", weights, "--run", "r", option, value, *extra)
    assert "4611686018427387903" in one_line(res, 2)
    assert not (tmp_path / "s").exists()


def test_the_range_ends_work_from_the_command_line(tmp_path, weights):
    loc = str(tmp_path / "s")
    res = run("--store", loc, "import", weights, "--run", "r", "--epoch", str(INT_MAX), "--step", str(INT_MAX))
    assert res.exit_code == 0, res.output
    res = run("--store", loc, "--json", "show", f"r@{INT_MAX}")
    assert res.exit_code == 0 and json.loads(res.stdout)["epoch"] == INT_MAX
    assert run("--store", loc, "ls", "--limit", str(INT_MAX)).exit_code == 0


# --- names with control characters -------------------------------------------------------------------

@pytest.mark.parametrize("char", ["\x1b", "\r", "\n", "\x7f", "\x9b", "\u2028"], ids=lambda c: f"U+{ord(c):04X}")
def test_control_characters_in_names_are_usage_errors(fresh, weights, char):
    name = f"x{char}]0;pwned"
    for args in (["import", weights, "--run", name, "--epoch", "5"],
                 ["import", weights, "--run", "ok", "--epoch", "5", "--metric", f"{name}=1"],
                 ["import", weights, "--run", "ok", "--epoch", "5", "--tag", name],
                 ["tag", "latest", name]):
        err = one_line(run("--store", fresh, *args), 2)
        assert f"U+{ord(char):04X}" in err and char not in err.rstrip("\n") and "\x1b" not in err, err
    with CheckpointStore(fresh, readonly=True) as store:
        assert [i.epoch for i in store.list()] == [0, 1] and all(not i.tags for i in store.list())


# --- exit code 4: damaged data ---------------------------------------------------------------------

def _pack_of(loc: str, selector: str) -> str:
    with CheckpointStore(loc, readonly=True) as store:
        m = store.manifest(selector)
    packs = {s.pack for s in m.slots}
    assert len(packs) == 1
    return os.path.join(loc, "packs", f"{packs.pop()}.safetensors")


def test_a_damaged_pack_exits_4(fresh, tmp_path):
    path = _pack_of(fresh, "r@0")
    data = bytearray(open(path, "rb").read())
    data[-8:] = bytes(b ^ 0xFF for b in data[-8:])
    with open(path, "wb") as f:
        f.write(data)
    err = one_line(run("--store", fresh, "restore", "r@0", "-o", str(tmp_path / "x.pt")), 4)
    assert "checksum" in err and "ckpt verify" in err, err
    assert not (tmp_path / "x.pt").exists()
    assert run("--store", fresh, "restore", "r@1", "-o", str(tmp_path / "y.pt")).exit_code == 0


def test_a_missing_pack_exits_4(fresh, tmp_path):
    os.unlink(_pack_of(fresh, "r@1"))
    one_line(run("--store", fresh, "restore", "r@1", "-o", str(tmp_path / "x.pt")), 4)
    one_line(run("--store", fresh, "export", "r@1", "-o", str(tmp_path / "x.safetensors")), 4)


def test_a_garbage_index_exits_4_and_says_reindex(fresh):
    path = os.path.join(fresh, "index.sqlite")
    for suffix in ("-wal", "-shm"):
        if os.path.exists(path + suffix):
            os.unlink(path + suffix)
    with open(path, "r+b") as f:
        f.write(random.Random(3).randbytes(8192))
    assert "reindex" in one_line(run("--store", fresh, "ls"), 4)


@pytest.mark.parametrize("tree", ['{"$device": "bogus:0"}', '{"$np": ["|i1", 1000]}', '{"$np": ["<u8", -1]}',
                                  '{"$complex": [1e308, {"$np": ["<f2", 1e10]}]}', '{"$size": [-1]}',
                                  '{"$odict": [], "$attrs": [1]}'])
def test_import_of_hostile_safetensors_metadata_exits_4_and_creates_nothing(tmp_path, tree):
    path = tmp_path / "h.safetensors"
    save_file({"w": torch.ones(1)}, path, metadata={"ckpt.tree": tree})
    err = one_line(run("--store", str(tmp_path / "s"), "import", str(path), "--run", "h", "--epoch", "0"), 4)
    assert "ckpt.tree" in err and str(path) in err
    assert not (tmp_path / "s").exists()


def test_import_of_a_damaged_pt_exits_4_and_a_missing_one_2(tmp_path):
    torch.save({"w": torch.ones(1000)}, tmp_path / "good.pt")
    (tmp_path / "cut.pt").write_bytes((tmp_path / "good.pt").read_bytes()[:500])
    loc = str(tmp_path / "s")
    one_line(run("--store", loc, "import", str(tmp_path / "cut.pt"), "--run", "c", "--epoch", "0"), 4)
    one_line(run("--store", loc, "import", str(tmp_path / "missing.pt"), "--run", "c", "--epoch", "0"), 2)
    assert not os.path.exists(loc)


# --- exit code 5: storage full or unwritable --------------------------------------------------------

def _limited(limit: int):
    def pre() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return pre


@pytest.mark.timeout(300)
def test_a_file_size_limit_exits_5_and_changes_nothing_committed(fresh, tmp_path):
    big = tmp_path / "big.safetensors"
    save_file({"w": torch.randn(1 << 20)}, big)  # 4 MiB of tensor data; the limit is 1 MiB
    before = sorted(os.listdir(os.path.join(fresh, "packs")))
    r = subprocess.run([sys.executable, "-m", "ckpt.cli", "--store", fresh, "import", str(big), "--run", "r",
                        "--epoch", "7"], capture_output=True, text=True, timeout=240, preexec_fn=_limited(1 << 20),
                       env={**os.environ, "CKPT_DEBUG": ""})
    assert r.returncode == 5, (r.returncode, r.stderr[-3000:])
    assert r.stderr.startswith("error: ") and len(r.stderr.splitlines()) == 1 and "unexpected" not in r.stderr
    assert "limit" in r.stderr or "space" in r.stderr, r.stderr
    with CheckpointStore(fresh) as store:
        assert [i.epoch for i in store.list()] == [0, 1]
        store.gc(grace_seconds=0)
    assert sorted(os.listdir(os.path.join(fresh, "packs"))) == before


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 16 MiB tmpfs of our own: a real device that runs out of space."""
    with tmpfs_mount(tmp_path, 16) as mnt:
        yield mnt


@pytest.mark.timeout(300)
def test_a_full_disk_exits_5(small_tmpfs, tmp_path):
    loc = str(small_tmpfs / "s")
    with CheckpointStore(loc) as store:
        store.save("r", 0, _state(0))
    big = tmp_path / "big.safetensors"
    save_file({"w": torch.randn(6 << 20)}, big)  # 24 MiB: more than the whole tmpfs
    err = one_line(run("--store", loc, "import", str(big), "--run", "r", "--epoch", "1"), 5)
    assert "space" in err, err
    with CheckpointStore(loc, readonly=True) as store:
        assert [i.epoch for i in store.list()] == [0]


def test_an_unwritable_output_path_exits_5_and_a_missing_directory_2(loc, tmp_path):
    if os.geteuid() == 0:
        target = "/proc/ckpt-edges-test.pt"  # even root cannot create files in /proc
    else:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o555)
        target = str(ro / "x.pt")
    res = run("--store", loc, "restore", "latest", "-o", target)
    assert res.exit_code in (2, 5), res.output  # /proc answers ENOENT on some kernels
    one_line(res, res.exit_code)
    one_line(run("--store", loc, "restore", "latest", "-o", str(tmp_path / "nodir" / "x.pt")), 2)


# --- the mapping itself ----------------------------------------------------------------------------

@pytest.mark.parametrize("exc, code", [
    (InvalidArgumentError("x"), 2), (SelectorError("x"), 2), (CheckpointNotFoundError("x"), 2),
    (AmbiguousSelectorError("x"), 2), (StoreNotFoundError("x"), 2), (MetricDirectionError("x"), 2),
    (DuplicateCheckpointError("x"), 2), (UnsupportedTypeError("x"), 2), (KeyMismatchError("x"), 2),
    (SchemaVersionError("x"), 2), (FileNotFoundError(errno.ENOENT, "x"), 2), (FileExistsError(errno.EEXIST, "x"), 2),
    (OSError(errno.ENAMETOOLONG, "x"), 2),
    (CorruptCheckpointError("x"), 4), (MissingBlobError("x"), 4), (IndexCorruptError("x"), 4),
    (UnsafeMetadataError("x"), 4), (InvalidFileError("x"), 4),
    (StorageError("x"), 5), (StorageFullError("x"), 5), (StorageNotWritableError("x"), 5),
    (ReadOnlyStoreError("x"), 5), (PermissionError(errno.EACCES, "x"), 5), (OSError(errno.ENOSPC, "x"), 5),
    (OSError(errno.EROFS, "x"), 5), (OSError(errno.EIO, "x"), 5), (ConnectionError("x"), 5),
    (RuntimeError("x"), 3), (ValueError("x"), 3), (KeyError("x"), 3), (MemoryError(), 3),
], ids=lambda v: type(v).__name__ if isinstance(v, BaseException) else str(v))
def test_exit_code_by_class(exc, code):
    assert exit_code(exc) == code


def test_a_raw_enospc_from_a_command_exits_5_with_advice(loc, monkeypatch):
    from ckpt.store import CheckpointStore as Store

    def full(self, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device", "/x/y")
    monkeypatch.setattr(Store, "list", full)
    err = one_line(run("--store", loc, "ls"), 5)
    assert "No space left on device: /x/y" in err and "free space" in err


def test_plot_to_an_unknown_image_format_is_a_usage_error(loc, tmp_path):
    err = one_line(run("--store", loc, "plot", "val_acc", "-o", str(tmp_path / "x.bmp")), 2)
    assert "bmp" in err and not (tmp_path / "x.bmp").exists()


def test_an_argument_that_is_not_utf8_is_a_usage_error(loc):
    for args in (["show", "r\udcff"], ["ls", "--run", "\udcff"], ["log", "\udcff"]):
        err = one_line(run("--store", loc, *args), 2)
        assert "not valid UTF-8" in err and "\\udcff" in err

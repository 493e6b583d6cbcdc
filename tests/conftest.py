import contextlib
import os
import shutil
import subprocess

import numpy as np
import pytest
import torch

from ckpt import CheckpointStore

os.environ.setdefault("CKPT_CACHE_DIR", os.path.join(os.path.dirname(__file__), "..", ".pytest_cache", "ckpt"))


_DETERMINISTIC_AT_START = torch.are_deterministic_algorithms_enabled()


@pytest.fixture(autouse=True)
def _no_leaked_determinism():
    """Tests and module fixtures that train in-process call ``seed_everything``, which turns on
    deterministic algorithms for the whole process; put torch's default back after every test."""
    yield
    if torch.are_deterministic_algorithms_enabled() != _DETERMINISTIC_AT_START:
        from ckpt.training.rng import deterministic_algorithms
        deterministic_algorithms(_DETERMINISTIC_AT_START)


@pytest.fixture
def store(tmp_path):
    s = CheckpointStore(tmp_path / "store")
    yield s
    s.close()


@pytest.fixture(params=["local", "memory"])
def any_store(request, tmp_path):
    """The same contract on local disk and on fsspec's memory:// filesystem."""
    if request.param == "local":
        s = CheckpointStore(tmp_path / "store")
    else:
        import uuid
        s = CheckpointStore(f"memory://ckpt-test-{uuid.uuid4().hex}")
    yield s
    s.close()


def assert_same(a, b, path="root"):
    """Exact structural equality: types, key order, tensor bits, dtypes."""
    assert type(a) is type(b), f"{path}: {type(a)} != {type(b)}"
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape, path
        if a.numel():  # compare bits: works for every dtype, and NaNs compare equal to themselves
            assert torch.equal(a.contiguous().reshape(-1).view(torch.uint8),
                               b.contiguous().reshape(-1).view(torch.uint8)), path
    elif isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes(), path
    elif isinstance(a, dict):
        assert list(a.keys()) == list(b.keys()), path
        for k in a:
            assert_same(a[k], b[k], f"{path}/{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{path}/{i}")
    elif isinstance(a, float) and a != a:
        assert b != b, path
    else:
        assert a == b, path


# --- backend servers (tests/servers.py): PostgreSQL and moto S3, started on first use ---------------
from servers import pg_url, postgres_server, s3_server, s3_url  # noqa: E402,F401


@contextlib.contextmanager
def tmpfs_mount(tmp_path, mib: int):
    """A tmpfs of ``mib`` MiB of our own: a real device that really runs out of space (skips without root)."""
    mnt = tmp_path / "tmpfs"
    mnt.mkdir()
    if not hasattr(os, "geteuid") or os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("mounting a tmpfs needs root (the RLIMIT_FSIZE test covers a full disk without it)")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={mib}m,mode=0755", "tmpfs", str(mnt)],
                       capture_output=True, text=True, timeout=60)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip()}); the RLIMIT_FSIZE test covers a full disk")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True, timeout=60)
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True, timeout=60)  # if still busy

import os

import pytest
import torch

from ckpt import CheckpointStore

os.environ.setdefault("CKPT_CACHE_DIR", os.path.join(os.path.dirname(__file__), "..", ".pytest_cache", "ckpt"))


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
        assert torch.equal(a.reshape(-1).view(torch.uint8) if a.numel() else a,
                           b.reshape(-1).view(torch.uint8) if b.numel() else b), path
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

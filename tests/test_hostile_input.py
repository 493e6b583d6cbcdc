"""Scenario 8: hostile files everywhere a store reads them, never executed, always a typed error.

* a manifest whose skeleton carries a pickle payload (the attacker recomputes the checksum: it is not a
  signature), for every live payload of tests/attacks/pickles.py: load, latest, open, verify, restore,
  reindex and recovery all refuse it, and the sentinel file the payload would create never appears;
* ``ckpt import`` of .pt/.pth/.ckpt/.bin files carrying payloads: inside torch's zip format, as raw
  pickles, in torch's legacy (non-zip) format, in the legacy tar format (CVE-2025-32434 went through it),
  in a Lightning checkpoint's hyper_parameters, as a storage type, and opcodes abusing the weights_only
  unpickler (CVE-2026-24747: SETITEMS on a list). Run in a child process, so memory corruption could not
  take the test session down;
* manifests mutated at random (hypothesis), with and without a recomputed checksum: only
  CorruptCheckpointError or UnsafeMetadataError ever escapes, in bounded time;
* zstd slots whose frame declares or produces more than the manifest says, including 1 GiB bombs in a
  few KB, loaded in a child process that reports its peak memory: typed error, bounded memory.
"""

from __future__ import annotations

import base64
import io
import json
import math
import os
import pickle
import shutil
import struct
import subprocess
import sys
import tarfile
import time
import uuid
import zipfile
from datetime import timedelta
from pathlib import Path

import blake3
import numpy as np
import pytest
import torch
import zstandard
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "helpers"))

import fault_procs as fp  # noqa: E402
import fault_states as fs  # noqa: E402
import manifests as mft  # noqa: E402
from attacks import pickles as P  # noqa: E402
from conftest import assert_same  # noqa: E402

from ckpt import (CheckpointStore, CkptError, CorruptCheckpointError, InvalidArgumentError,  # noqa: E402
                  UnsafeMetadataError)
from ckpt import interop  # noqa: E402
from ckpt.cli import cli  # noqa: E402
from ckpt.reader import load_state  # noqa: E402
from ckpt.format import codec  # noqa: E402
from ckpt.format import manifest as mf  # noqa: E402
from ckpt.format.pack_header import build_header  # noqa: E402
from ckpt.format.skeleton import TensorSlot, load_structure  # noqa: E402
from ckpt.format.tensors import dtype_from_name  # noqa: E402

LIVE = [p for p in P.payloads() if p.live]
TIMEOUT = 120


def cli_run(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def sign(body: dict) -> bytes:
    """A format-1 manifest with a valid checksum: what anyone who can write the store can produce."""
    body = {k: v for k, v in body.items() if k != "checksum"}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()
    body["checksum"] = blake3.blake3(canonical).hexdigest()
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def wait_absent(sentinel: Path, seconds: float = 0.3) -> None:
    """The sentinel never appears (a payload that escaped via Popen would create it asynchronously)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert not sentinel.exists(), f"{sentinel} was created: a payload ran"
        time.sleep(0.02)
    assert not sentinel.exists(), f"{sentinel} was created: a payload ran"


def wait_present(sentinel: Path, seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while not sentinel.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert sentinel.exists(), "control: the payload does not run under an unrestricted load"


def _state(epoch: int) -> dict:
    return {"model": {"w": fs.randn(256, 40 + epoch), "ids": torch.arange(4)}, "epoch": epoch, "lr": 0.1}


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    loc = str(tmp_path_factory.mktemp("hostile") / "s")
    with CheckpointStore(loc) as store:
        ids = [store.save("r", e, _state(e), {"loss": 1.0 / (e + 1)}).id for e in range(2)]
    return loc, ids


@pytest.fixture
def copy(template, tmp_path):
    loc, ids = template
    dst = str(tmp_path / "s")
    shutil.copytree(loc, dst)
    return dst, ids


# =====================================================================================================
# A pickle payload in a manifest's skeleton
# =====================================================================================================

def plant_skeleton(loc: str, cid: str, skeleton: bytes) -> None:
    doc = mft.read(loc, cid)
    doc.skeleton = skeleton
    mft.write(loc, cid, doc)  # checksum and content hash recomputed: neither is a signature


@pytest.mark.parametrize("payload", LIVE, ids=lambda p: p.id)
def test_manifest_with_a_pickle_payload_is_refused_everywhere(copy, payload, tmp_path):
    loc, (good, evil) = copy
    sentinel = tmp_path / "PWNED"
    plant_skeleton(loc, evil, payload.build(sentinel))
    with CheckpointStore(loc) as store:  # a fresh process's view
        for attempt in (lambda: store.load(evil), lambda: store.load("latest"), lambda: store.open(evil),
                        lambda: store.load_into({"w": torch.zeros(256)}, evil, key="model", strict=False),
                        lambda: store.manifest(evil)):
            with pytest.raises(UnsafeMetadataError) as err:
                attempt()
            assert payload.global_name in str(err.value) and "nothing in it was executed" in str(err.value)
        fs.assert_bit_exact(store.load(good), _state(0))
        report = store.verify(full=True)
        assert [(p.kind, p.subject) for p in report.problems] == [("bad-manifest", evil)], report.problems
    out = tmp_path / "out.pt"
    res = cli_run("--store", loc, "restore", evil, "-o", str(out))
    assert res.exit_code == 4 and res.stderr.startswith("error:") and "malicious" in res.stderr, res.output
    assert "Traceback" not in res.output and not out.exists()
    res = cli_run("--store", loc, "verify")
    assert res.exit_code == 1 and "bad-manifest" in res.stdout
    with CheckpointStore(loc) as store:  # reindex skips it rather than trusting or running it
        assert store.reindex() == 1 and [i.id for i in store.list()] == [good]
    os.unlink(os.path.join(loc, "index.sqlite"))
    with CheckpointStore(loc) as store:  # and so does rebuilding a lost index on open
        assert [i.id for i in store.list()] == [good]
    wait_absent(sentinel)


def test_malicious_manifest_of_a_dead_writers_claim_does_not_block_the_store(tmp_path):
    loc = str(tmp_path / "s")
    r = fp.run_helper([fp.helper("crash_at.py"), loc, "after_begin"], TIMEOUT)  # dies after step A
    assert r.returncode == 137, r.stdout + r.stderr[-2000:]
    with CheckpointStore(loc, readonly=True) as ro:
        ((claim, status),) = fs.non_committed_rows(ro)
        good = ro.get("r@1").id
    assert status == "pending"
    doc = mft.read(loc, good)
    doc.header["id"] = claim
    sentinel = tmp_path / "PWNED"
    doc.skeleton = LIVE[0].build(sentinel)
    mft.write(loc, claim, doc)
    with CheckpointStore(loc) as store:  # recovery drops the claim (its manifest is unusable)
        assert fs.non_committed_rows(store) == []
        assert [i.id for i in store.list()] == [good]
        assert any(p.subject == claim for p in store.verify().problems)
    wait_absent(sentinel)


# =====================================================================================================
# ckpt import of hostile PyTorch files
# =====================================================================================================

def _torch_zip(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def with_data_pkl(zip_bytes: bytes, data_pkl: bytes) -> bytes:
    """torch's zip format with its pickle (``*/data.pkl``) replaced: how a hostile .pt is made."""
    src = zipfile.ZipFile(io.BytesIO(zip_bytes))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as dst:
        for info in src.infolist():
            data = src.read(info.filename)
            dst.writestr(info.filename, data_pkl if info.filename.endswith("/data.pkl") else data)
    return out.getvalue()


def legacy_tar(member: bytes) -> bytes:
    """torch's pre-1.0 tar format (sys_info, pickle, storages, tensors members), each a payload."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:", format=tarfile.PAX_FORMAT) as tar:
        for name in ("sys_info", "pickle", "storages", "tensors"):
            info = tarfile.TarInfo(name)
            info.size = len(member)
            tar.addfile(info, io.BytesIO(member))
    return buf.getvalue()


def storage_type_payload(sentinel: Path) -> bytes:
    """A tensor whose persistent id names os.system as its storage type (the type is called later)."""
    pid = P.unicode("storage") + P.stack_global("os", "system") + P.unicode("0") + P.unicode("cpu") + b"K\x02"
    rebuild = P.stack_global("torch._utils", "_rebuild_tensor_v2")
    args = b"(" + pid + b"tQK\x00K\x02\x85K\x01\x85\x89" + P.stack_global("collections", "OrderedDict") + b")Rt"
    return P.PROTO4 + b"}" + P.unicode("w") + rebuild + args + b"Rs."


SUFFIXES = (".pt", ".pth", ".ckpt", ".bin")


def hostile_files(directory: Path, sentinel: Path) -> dict[str, bytes]:
    base = _torch_zip({"w": torch.ones(2)})
    files: dict[str, bytes] = {}
    for i, p in enumerate(LIVE):
        payload = p.build(sentinel)
        files[f"zip-{p.id}{SUFFIXES[i % 4]}"] = with_data_pkl(base, payload)
        files[f"raw-{p.id}{SUFFIXES[(i + 1) % 4]}"] = payload
    evil = P._Reduce(os.system, (P.touch_command(sentinel),))
    buf = io.BytesIO()
    torch.save({"model": {"w": torch.ones(2)}, "x": evil}, buf, _use_new_zipfile_serialization=False)
    files["legacy-non-zip.pth"] = buf.getvalue()
    files["legacy-tar-CVE-2025-32434.pt"] = legacy_tar(P.via_reduce(os.system, (P.touch_command(sentinel),), 2))
    files["lightning-hyper-parameters.ckpt"] = _torch_zip({
        "epoch": 3, "global_step": 30, "pytorch-lightning_version": "2.4.0",
        "state_dict": {"layer.weight": torch.ones(2, 2)}, "optimizer_states": [],
        "hyper_parameters": {"args": evil}})
    files["storage-type-os.system.pt"] = with_data_pkl(base, storage_type_payload(sentinel))
    files["setitems-on-list-CVE-2026-24747.pt"] = with_data_pkl(base, b"\x80\x02]q\x00(K\x01K\x02u.")
    return files


def test_control_hostile_zip_files_do_run_under_an_unrestricted_torch_load(tmp_path):
    """Control: the .pt files below are working exploits, so refusing them means something."""
    base = _torch_zip({"w": torch.ones(2)})
    for p in LIVE:
        if p.id == "subprocess.Popen":
            continue  # asynchronous; the plain-pickle control in test_skeleton.py covers it
        sentinel = tmp_path / f"control-{p.id}"
        path = tmp_path / f"control-{p.id}.pt"
        path.write_bytes(with_data_pkl(base, p.build(sentinel)))
        try:
            torch.load(path, weights_only=False)
        except Exception:  # noqa: BLE001 - the payload ran during unpickling; what it returns may not load
            pass
        wait_present(sentinel)
    assert torch.load(io.BytesIO(base), weights_only=True)["w"].tolist() == [1.0, 1.0]  # the format is right


def test_ckpt_import_refuses_every_hostile_file_without_running_it(tmp_path):
    sentinel = tmp_path / "PWNED"
    files = hostile_files(tmp_path, sentinel)
    paths = []
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
        paths.append(str(tmp_path / name))
    loc = str(tmp_path / "store")
    r = subprocess.run([sys.executable, fp.helper("import_each.py"), loc, *paths], capture_output=True,
                       text=True, timeout=300, env=fp.child_env())
    assert r.returncode == 0, f"the importing process died ({r.returncode}):\n{r.stderr[-4000:]}"
    results = [json.loads(line[7:]) for line in r.stdout.splitlines() if line.startswith("result ")]
    assert len(results) == len(paths) and r.stdout.rstrip().endswith("done")
    for res in results:
        name = os.path.basename(res["file"])
        err = res["stderr"]
        assert res["exit_code"] == 4 and res["exception"] is None, (name, res)  # unsafe or damaged data
        assert err.startswith("error: ") and len(err.splitlines()) == 1 and "Traceback" not in err, (name, err)
        if "tar" in name:  # torch refuses the legacy tar format under weights_only before reading it
            assert "weights_only" in err and "legacy .tar format" in err, (name, err)
        else:
            assert "executed nothing" in err, (name, err)
    wait_absent(sentinel)
    assert not CheckpointStore.exists(loc), "a refused import created a store"

    # The API raises the typed error (in this process: the child showed these files crash nothing).
    for name in files:
        path = str(tmp_path / name)
        expected = InvalidArgumentError if "tar" in name else UnsafeMetadataError
        with pytest.raises(expected):
            interop.read_file(path)
    wait_absent(sentinel)


def test_import_refuses_a_storage_record_shorter_than_its_tensor(tmp_path):
    src = zipfile.ZipFile(io.BytesIO(_torch_zip({"w": torch.ones(2)})))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as dst:
        for info in src.infolist():
            data = src.read(info.filename)
            dst.writestr(info.filename, data[:2] if info.filename.endswith("/data/0") else data)
    path = tmp_path / "short-record.pt"
    path.write_bytes(out.getvalue())
    with pytest.raises(RuntimeError):
        torch.load(path, weights_only=True, mmap=False)  # torch itself refuses it without mmap
    with pytest.raises(CkptError):
        interop.read_file(str(path))


# =====================================================================================================
# Malformed manifests, fuzzed
# =====================================================================================================

def _fuzz_state() -> dict:
    return {"model": {"w": torch.linspace(-1, 1, 4096), "ids": torch.arange(10),
                      "half": torch.ones(3, dtype=torch.bfloat16)},
            "optimizer": {"state": {0: {"step": torch.tensor(3.0)}}, "param_groups": [{"lr": 0.1, "params": [0]}]},
            "np": np.arange(5, dtype=np.int16), "extra": [1, 2.5, "x", None, (1, 2)]}


@pytest.fixture(scope="module")
def fuzz_store(tmp_path_factory):
    loc = str(tmp_path_factory.mktemp("fuzz") / "s")
    store = CheckpointStore(loc, compression="zstd")  # one zstd slot, the rest raw
    info = store.save("r", 0, _fuzz_state(), {"loss": 0.5}, step=3)
    raw = store.storage.read(mf.path_for(info.id), 1 << 20)
    assert 1 in set(mft.parse(raw).rows["codec"].tolist())  # zstd
    yield store, info.id, raw
    store.close()


def _paths(obj, prefix=()):
    yield prefix
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _paths(v, prefix + (i,))


_VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(-2**70, 2**70),
    st.sampled_from([0, 1, -1, 2**31, 2**32 - 1, 2**63, 2**64, 10**30, 4096, 16384]),
    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=24),
    st.sampled_from(["nan", "inf", "-inf", "float32", "bfloat16", "complex32", "zstd", "raw", "numpy", "torch",
                     "0" * 32, "f" * 64, "", "AAAA", "gASVAAAAAAAAAAB9lC4="]),
    st.lists(st.integers(-3, 2**40), max_size=5), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)


def _placeholders(obj, out: set) -> set:
    if isinstance(obj, TensorSlot):
        out.add(obj.slot)
    elif isinstance(obj, dict):
        for v in obj.values():
            _placeholders(v, out)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            _placeholders(v, out)
    return out


def known_manifest_bug(m: mf.Manifest) -> str | None:
    """The two malformations format-1 manifests once let through (each has a regression test below)."""
    for s in m.slots:
        try:
            itemsize = dtype_from_name(s.dtype).itemsize
        except CkptError:
            continue
        if math.prod(s.shape) * itemsize != s.nbytes:
            return "shape-nbytes"
    if _placeholders(m.structure(), set()) != set(range(len(m.slots))):
        return "leaves"
    return None


_FIELDS = [name for name in mf.SLOT_DTYPE.names if name not in ("hash", "check")]


@settings(max_examples=int(os.environ.get("CKPT_FUZZ_EXAMPLES", "300")), deadline=timedelta(seconds=20),
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                 HealthCheck.data_too_large])
@given(data=st.data())
def test_fuzzed_manifests_only_raise_typed_errors(fuzz_store, data):
    store, cid, raw = fuzz_store
    doc = mft.parse(raw)
    body = doc.header
    targets = [p for p in _paths(body) if p and p[0] not in ("checksum", "slots", "dims", "skeleton")]
    for _ in range(data.draw(st.integers(1, 4), label="mutations")):
        where = data.draw(st.sampled_from(["header", "column", "dims", "skeleton"]), label="where")
        if where == "column" and len(doc.rows):
            i = data.draw(st.integers(0, len(doc.rows) - 1), label="row")
            name = data.draw(st.sampled_from(_FIELDS), label="field")
            bits = doc.rows.dtype[name].itemsize * 8
            doc.rows[name][i] = data.draw(st.integers(0, 2**bits - 1), label="value")
            continue
        if where == "dims" and len(doc.dims):
            i = data.draw(st.integers(0, len(doc.dims) - 1), label="dim")
            doc.dims[i] = data.draw(st.integers(-2**63, 2**63 - 1), label="value")
            continue
        if where == "skeleton" and doc.skeleton:
            at = data.draw(st.integers(0, len(doc.skeleton) - 1), label="at")
            b = bytearray(doc.skeleton)
            b[at] ^= data.draw(st.integers(1, 255), label="xor")
            doc.skeleton = bytes(b)
            continue
        path = data.draw(st.sampled_from(targets), label="path")
        parent = body
        try:
            for k in path[:-1]:
                parent = parent[k]
            op = data.draw(st.sampled_from(["set", "delete", "duplicate"]), label="op")
            if op == "set":
                parent[path[-1]] = data.draw(_VALUES, label="value")
            elif op == "delete":
                del parent[path[-1]]
            elif isinstance(parent, list):
                parent.append(parent[path[-1]])
        except (KeyError, IndexError, TypeError):
            continue  # the path went away with an earlier mutation
    try:
        blob = mft.build(doc, resign=data.draw(st.booleans(), label="resign"),
                         rehash=data.draw(st.booleans(), label="rehash"))
    except (ValueError, TypeError, OverflowError):
        return  # the mutation cannot even be written as JSON (e.g. NaN): nothing to read
    if data.draw(st.integers(0, 4), label="byte-flip") == 0:
        blob = bytearray(blob)
        blob[data.draw(st.integers(0, len(blob) - 1))] ^= data.draw(st.integers(1, 255))
        blob = bytes(blob)
    started = time.monotonic()
    try:
        m = mf.decode(blob, expected_id=cid)
        assert known_manifest_bug(m) is None  # decode refuses both shapes of damage format 1 once let through
        load_state(store.storage, m, verify=True)
        load_state(store.storage, m, verify="full")
    except (CorruptCheckpointError, UnsafeMetadataError):
        pass
    assert time.monotonic() - started < 15


def test_manifest_fuzzing_base_case_loads(fuzz_store):
    store, cid, raw = fuzz_store
    m = mf.decode(mft.build(mft.parse(raw)), expected_id=cid)
    assert known_manifest_bug(m) is None
    assert_same(load_state(store.storage, m), _fuzz_state())


@pytest.mark.parametrize("shape", [[2**62], [2**31] * 4])
def test_manifest_whose_shape_disagrees_with_nbytes_is_corrupt(fuzz_store, shape):
    store, cid, raw = fuzz_store
    doc = mft.parse(raw)
    shapes = doc.shapes()
    shapes[1] = shape
    doc.set_shapes(shapes)
    with pytest.raises(CorruptCheckpointError):
        load_state(store.storage, mf.decode(mft.build(doc), expected_id=cid))


def test_manifest_whose_slots_miss_a_skeleton_placeholder_is_corrupt(fuzz_store):
    store, cid, raw = fuzz_store
    doc = mft.parse(raw)
    shapes = doc.shapes()[:-1]
    doc.rows = doc.rows[:-1].copy()
    doc.set_shapes(shapes)
    with pytest.raises(CorruptCheckpointError):
        load_state(store.storage, mf.decode(mft.build(doc), expected_id=cid))


# =====================================================================================================
# zstd slots that declare or produce more than the manifest says
# =====================================================================================================

ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
BLOCK = 128 * 1024  # the largest block a frame may hold


def rle_frame(produces: int, declares: int | None, byte: int = 7) -> bytes:
    """A hand-made zstd frame of RLE blocks: ``produces`` bytes from ~4 bytes per 128 KiB, declaring
    ``declares`` bytes (None: no content size in the header, a 128 KiB window)."""
    if declares is None:
        header = ZSTD_MAGIC + bytes([0x00, 7 << 3])  # no content size; window 2**17
    else:
        header = ZSTD_MAGIC + bytes([0xE0]) + struct.pack("<Q", declares)  # single segment, 8-byte size
    blocks = []
    left = produces
    while left > 0:
        n = min(BLOCK, left)
        left -= n
        blocks.append(((n << 3) | (1 << 1) | (1 if left == 0 else 0)).to_bytes(3, "little") + bytes([byte]))
    return header + b"".join(blocks)


def ckz_payload(frame: bytes, total: int) -> bytes:
    """ckpt's codec payload for a uint8 tensor of ``total`` bytes (one chunk, one plane) holding ``frame``."""
    assert total <= codec.CHUNK_BYTES and len(frame) < total
    return struct.pack("<4sB3xQ", codec.MAGIC, 1, codec.CHUNK_BYTES) + struct.pack("<I", len(frame)) + frame


def test_hand_made_frames_are_real_zstd():
    frame = rle_frame(300_000, 300_000)
    assert zstandard.ZstdDecompressor().decompress(frame) == b"\7" * 300_000
    assert zstandard.frame_content_size(rle_frame(BLOCK, None)) == -1
    out = bytearray(300_000)
    codec.decode_into(ckz_payload(frame, len(out)), memoryview(out), 1)
    assert out == b"\7" * 300_000


NBYTES = 1 << 20  # the tensor the manifest describes: 1 MiB of uint8
GIB = 1 << 30
BOMBS = {
    "declares-1GiB": rle_frame(GIB, GIB),           # honest header, 1024x what the manifest says
    "declares-2**60": rle_frame(BLOCK, 2**60),      # a header that would make a naive reader allocate 1 EiB
    "lies-produces-1GiB": rle_frame(GIB, NBYTES),  # declares the right size, produces 1 GiB
    "no-size-produces-1GiB": rle_frame(GIB, None),
}


def plant_pack(loc: str, payload: bytes, name: str) -> tuple[str, int]:
    """A valid safetensors pack holding ``payload`` as one U8 entry; returns (pack id, payload offset)."""
    pack_id = uuid.uuid4().hex
    prefix, ((begin, end),) = build_header([(name, "U8", [len(payload)], len(payload))], {"format": "ckpt-pack-1"})
    with open(os.path.join(loc, "packs", f"{pack_id}.safetensors"), "wb") as f:
        f.write(prefix + payload)
    return pack_id, begin


@pytest.fixture
def zstd_store(tmp_path):
    loc = str(tmp_path / "z")
    with CheckpointStore(loc, compression="zstd") as store:
        ids = [store.save("z", e, {"blob": torch.full((NBYTES,), e + 1, dtype=torch.uint8)}).id for e in range(2)]
        m = store.manifest(ids[1])
        assert m.slots[0].codec == "zstd" and m.slots[0].nbytes == NBYTES
    return loc, ids


def test_zstd_slot_whose_frame_declares_more_than_the_manifest_is_corrupt(zstd_store):
    loc, (good, target) = zstd_store
    doc = mft.read(loc, target)
    doc.set_shapes([[NBYTES // 2]])
    doc.rows["nbytes"][0] = NBYTES // 2  # the stored frame makes twice that
    mft.write(loc, target, doc)
    with CheckpointStore(loc) as store:
        with pytest.raises(CorruptCheckpointError):
            store.load(target)
        with pytest.warns(RuntimeWarning, match="damaged"):
            assert store.load("latest")["blob"][0].item() == 1  # falls back to the good one
        assert not store.verify(full=True).ok


def test_zstd_bombs_are_refused_in_bounded_memory(zstd_store):
    loc, (good, target) = zstd_store
    victims = []
    for i, (name, frame) in enumerate(BOMBS.items()):
        doc = mft.read(loc, target)
        payload = ckz_payload(frame, NBYTES)
        pack_id, offset = plant_pack(loc, payload, doc.rows["hash"][0].tobytes().hex())
        doc.header["id"] = cid = uuid.uuid4().hex
        doc.header["epoch"] = 10 + i
        doc.header["packs"] = [[pack_id, offset + len(payload)]]
        doc.rows["pack"][0], doc.rows["offset"][0], doc.rows["length"][0] = 0, offset, len(payload)
        mft.write(loc, cid, doc)
        victims.append((name, cid))
    with CheckpointStore(loc) as store:  # index the planted manifests
        assert store.reindex() == 2 + len(BOMBS)
    r = subprocess.run([sys.executable, fp.helper("bounded_load.py"), loc, good, *(c for _, c in victims)],
                       capture_output=True, text=True, timeout=300, env=fp.child_env())
    assert r.returncode == 0, r.stderr[-4000:]
    results = {json.loads(line[7:])["id"]: json.loads(line[7:]) for line in r.stdout.splitlines()
               if line.startswith("result ")}
    for name, cid in victims:
        res = results[cid]
        assert res["error"] == "CorruptCheckpointError", (name, res)
        assert res["rss_growth"] < 64 << 20, (name, res)  # 1 GiB if the bomb had been inflated
    with CheckpointStore(loc) as store:
        problems = {p.subject for p in store.verify(full=True).problems}
        assert {mft.read(loc, c).header["packs"][0][0] for _, c in victims} <= problems

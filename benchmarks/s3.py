"""The object-store case: a 256 MiB state saved to S3 (a moto server on loopback, started by the harness)
with TMPDIR on a 32 MiB tmpfs, against plain multipart uploads of the same bytes in the same run.

Contenders (each a fresh worker process, fresh bucket; the harness resets moto between them):
    s3fs    the bytes streamed through ``s3fs`` ``open(..., "wb")`` (sequential 32 MiB parts)
    boto3   ``upload_fileobj`` from memory, 32 MiB parts, 8 in parallel (ckpt's own defaults)
    ckpt    ``CheckpointStore("s3://...", compression="none").save(...)``: does it work with a temp dir
            smaller than the checkpoint, and at what throughput
    ckpt_disktmp  the same with the temp dir on disk (room for a local spool): the throughput of a
            version that spools, for comparison; the same as ckpt once nothing is spooled

moto is a Python server sharing this machine's cores with the client: absolute throughput is moto's,
the ratio is the point.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

from benchmarks.cases import nbytes, s3, tensors
from benchmarks.measure import Timer

PART = 32 << 20
ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
       "AWS_EC2_METADATA_DISABLED": "true"}


# -- run by the harness -------------------------------------------------------------------------------------
@contextlib.contextmanager
def moto_server() -> Iterator[str]:
    """A moto S3 server on 127.0.0.1 (in memory), stopped on exit; yields its endpoint URL."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    endpoint = f"http://127.0.0.1:{port}"
    log = tempfile.NamedTemporaryFile(prefix="ckpt-bench-moto-", suffix=".log", delete=False)
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **ENV})
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=5).read()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"moto server did not start: {open(log.name).read()[-3000:]}")
                time.sleep(0.2)
        yield endpoint
    finally:
        proc.kill()
        proc.wait(timeout=60)
        os.unlink(log.name)


def reset_moto(endpoint: str) -> None:
    """Forget every bucket (moto keeps objects in memory)."""
    req = urllib.request.Request(f"{endpoint}/moto-api/reset", method="POST", data=b"")
    urllib.request.urlopen(req, timeout=60).read()


@contextlib.contextmanager
def small_tmpdir(size_mib: int = 32) -> Iterator[tuple[str | None, str]]:
    """A tmpfs of ``size_mib`` for TMPDIR when we may mount one (root); else (None, why not)."""
    d = tempfile.mkdtemp(prefix="ckpt-bench-tmpfs-")
    mounted = False
    try:
        if os.geteuid() != 0:
            yield None, "not root: could not mount a 32 MiB tmpfs, TMPDIR left as it is"
            return
        out = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mib}m,mode=1777", "ckpt-bench-tmp", d],
                             capture_output=True, text=True)
        if out.returncode != 0:
            yield None, f"mount of a {size_mib} MiB tmpfs failed ({out.stderr.strip()}): TMPDIR left as it is"
            return
        mounted = True
        yield d, f"TMPDIR on a {size_mib} MiB tmpfs"
    finally:
        if mounted:
            subprocess.run(["umount", "-l", d], capture_output=True)
        shutil.rmtree(d, ignore_errors=True)


# -- run in a worker --------------------------------------------------------------------------------------
def _client(endpoint: str):  # type: ignore[no-untyped-def]
    import boto3
    return boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="testing",
                        aws_secret_access_key="testing", region_name="us-east-1")


def run(system: str, quick: bool, t: Timer) -> None:
    endpoint = os.environ["CKPT_BENCH_S3_ENDPOINT"]
    state = s3(quick)
    ts = tensors(state)
    bucket = f"bench-{uuid.uuid4().hex[:16]}"
    _client(endpoint).create_bucket(Bucket=bucket)
    t.out["bytes"] = float(nbytes(state))
    if system == "s3fs":
        import s3fs
        fs = s3fs.S3FileSystem(endpoint_url=endpoint, key="testing", secret="testing", use_listings_cache=False)

        def stream() -> None:
            with fs.open(f"{bucket}/plain.bin", "wb", block_size=PART) as f:
                for x in ts:
                    f.write(x.reshape(-1).numpy().data.cast("B"))
        t("save", stream)
    elif system == "boto3":
        from boto3.s3.transfer import TransferConfig
        data = io.BytesIO(b"".join(x.numpy().tobytes() for x in ts))
        cfg = TransferConfig(multipart_threshold=PART, multipart_chunksize=PART, max_concurrency=8)
        client = _client(endpoint)
        t("save", lambda: client.upload_fileobj(data, bucket, "plain.bin", Config=cfg))
    else:
        if system == "ckpt_disktmp":
            tempfile.tempdir = os.environ.get("CKPT_BENCH_WORKDIR") or None
        run_ckpt(endpoint, bucket, state, t)
    t.out["mb_per_s"] = t.out["bytes"] / t.out["save"] / 1e6 if "save" in t.out else 0.0


def run_ckpt(endpoint: str, bucket: str, state: dict, t: Timer) -> None:
    from ckpt import CheckpointStore
    tmp = tempfile.gettempdir()
    t.info["tmpdir"] = f"{tmp}: {shutil.disk_usage(tmp).total >> 20} MiB"
    opts = {"endpoint_url": endpoint, "key": "testing", "secret": "testing"}
    store = CheckpointStore(f"s3://{bucket}/store", compression="none", storage_options=opts)
    try:
        t("save", lambda: store.save("s3", 0, state))
        t.out["works"] = 1.0
    except Exception as exc:  # the point of the case: report, do not crash the harness
        t.out.pop("save", None)
        t.out["works"] = 0.0
        t.info["error"] = f"{type(exc).__name__}: {exc}"[:600]
    finally:
        # In our own tmpfs, anything left is this save's.
        if os.environ.get("CKPT_BENCH_TMPFS") and tmp == os.environ.get("TMPDIR"):
            left: list[Any] = os.listdir(tmp)
            if left:
                t.info["left_in_tmpdir"] = left[:10]
        with contextlib.suppress(Exception):
            store.close()

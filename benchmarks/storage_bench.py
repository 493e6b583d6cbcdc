"""Storage and lock costs (a measurement, not a test).

    python -m benchmarks.storage_bench [--mib 256] [--locks 1000]

- local shared lock: acquire + release, median of N (on a temp dir, and on /dev/shm if present)
- S3 (a moto server started here): a 256 MiB blob through ckpt's streaming sink, against s3fs's
  pipe_file and boto3's upload_fileobj of the same bytes from memory (same part size and concurrency),
  and reading it back through ckpt's reader against s3fs's cat_file.
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid

MiB = 1 << 20


def lock_cost(root: str, n: int) -> float:
    from ckpt.locks import Locks
    from ckpt.storage import open_storage
    locks = Locks(open_storage(root), stale_after=300)
    for _ in range(20):
        locks.shared().release()
    times = []
    for _ in range(n):
        t = time.perf_counter()
        locks.shared().release()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e6


def start_moto() -> tuple[subprocess.Popen, str]:
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
    from servers import S3_ENV, free_port
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    env = {**os.environ, **S3_ENV}
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    for _ in range(600):
        try:
            urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=5).read()
            break
        except OSError:
            time.sleep(0.1)
    os.environ.update({k: v for k, v in S3_ENV.items() if k != "CKPT_S3_PART_SIZE"})
    os.environ["AWS_ENDPOINT_URL_S3"] = endpoint
    return proc, endpoint


def best_of(runs: int, fn) -> float:
    return min(fn() for _ in range(runs))


def s3_bench(mib: int) -> dict[str, float]:
    import boto3
    from boto3.s3.transfer import TransferConfig
    from ckpt.storage import open_storage
    proc, endpoint = start_moto()
    try:
        bucket = f"bench-{uuid.uuid4().hex[:12]}"
        client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
        client.create_bucket(Bucket=bucket)
        storage = open_storage(f"s3://{bucket}/store")
        data = os.urandom(mib * MiB)
        view = memoryview(data)
        part, conc = storage.part_size, storage.concurrency
        n = 0

        def sink() -> float:
            nonlocal n
            n += 1
            t = time.perf_counter()
            s = storage.open_sink(f"packs/sink-{n}", reserve=64)
            for off in range(64, len(view), 4 * MiB):
                s.write(view[off:off + 4 * MiB])
            s.commit(bytes(view[:64]))
            return time.perf_counter() - t

        def s3fs_pipe() -> float:
            nonlocal n
            n += 1
            t = time.perf_counter()
            storage.fs.pipe_file(f"{bucket}/store/packs/pipe-{n}", data, chunksize=part, max_concurrency=conc)
            return time.perf_counter() - t

        def boto() -> float:
            nonlocal n
            n += 1
            config = TransferConfig(multipart_threshold=part, multipart_chunksize=part, max_concurrency=conc)
            t = time.perf_counter()
            client.upload_fileobj(io.BytesIO(data), bucket, f"store/packs/boto-{n}", Config=config)
            return time.perf_counter() - t

        def read_ckpt() -> float:
            out = bytearray(len(data))
            t = time.perf_counter()
            with storage.reader("packs/sink-1") as r:
                r.read_into(0, memoryview(out))
            elapsed = time.perf_counter() - t
            assert out == data
            return elapsed

        def read_s3fs() -> float:
            t = time.perf_counter()
            got = storage.fs.cat_file(f"{bucket}/store/packs/sink-1")
            elapsed = time.perf_counter() - t
            assert got == data
            return elapsed

        results = {"ckpt sink": best_of(3, sink), "s3fs pipe_file": best_of(3, s3fs_pipe),
                   "boto3 upload_fileobj": best_of(3, boto), "ckpt reader": best_of(3, read_ckpt),
                   "s3fs cat_file": best_of(3, read_s3fs)}
        return {k: mib / v for k, v in results.items()}
    finally:
        proc.kill()
        proc.wait()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mib", type=int, default=256)
    ap.add_argument("--locks", type=int, default=1000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(dir=os.path.dirname(os.path.abspath(__file__))) as d:
        print(f"local shared lock acquire+release (disk): {lock_cost(d, args.locks):.0f} us median")
    if os.path.isdir("/dev/shm"):
        with tempfile.TemporaryDirectory(dir="/dev/shm") as d:
            print(f"local shared lock acquire+release (tmpfs): {lock_cost(d, args.locks):.0f} us median")
    for name, rate in s3_bench(args.mib).items():
        print(f"S3 (moto) {args.mib} MiB {name}: {rate:.0f} MiB/s (best of 3)")


if __name__ == "__main__":
    main()

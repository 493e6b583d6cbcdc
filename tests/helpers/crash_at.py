"""Save checkpoint 1 of run "r", then die (or fail) at one named point of checkpoint 2's commit.

    python crash_at.py STORE POINT

The injection points are chosen at the OS-call level (os.open/replace/link/unlink/write, fsync_dir) where
possible, so they keep meaning the same protocol step however the save is implemented. Crash points end
the process with ``os._exit(137)`` (no cleanup, no atexit: like SIGKILL) at:

    after_begin          step A committed (pending row), before any file of the new pack is created
    pack_tmp_written     pack temp file written and fsynced, before os.link publishes it
    pack_renamed         pack linked into place, before the packs/ directory fsync
    before_manifest      pack published; the manifest's Storage.put dies before writing anything
    manifest_tmp_written manifest temp file written, before os.link publishes it
    manifest_linked      manifest published (linked), before its temp name is unlinked
    before_index_commit  manifest durable; ckpt.commit.ingest (step D) never runs
    during_index_commit  step D's statements ran inside the index transaction; dies before COMMIT

Failure points make checkpoint 2's save raise instead; the process carries on, prints ``facts {json}``
about what it sees right after the failure, saves the same (run, epoch) again, and exits 0:

    raise_in_pack_write      OSError(ENOSPC) after a partial write into the pack
    raise_in_manifest_write  OSError(ENOSPC) while writing the manifest (the pack is already published)
    raise_in_tag_ref         OSError(ENOSPC) writing the tag ref of save(..., tags=...), after the manifest
                             is published
    raise_in_index_commit    StorageError from step D (the index transaction), once, after the manifest
"""

from __future__ import annotations

import errno
import json
import os
import sys
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import fault_states as fs  # noqa: E402

import ckpt.catalog.writes as commit  # noqa: E402  (step D is ckpt.catalog.writes.ingest)
import ckpt.storage.local as local  # noqa: E402
from ckpt import CheckpointStore  # noqa: E402
from ckpt.storage.base import TMP_MARKER  # noqa: E402
from ckpt.storage.local import LocalStorage  # noqa: E402
from ckpt.errors import StorageError  # noqa: E402

CRASH = 137
_patched: list[tuple[object, str, object]] = []


def patch(obj: object, name: str, new: object) -> None:
    _patched.append((obj, name, getattr(obj, name)))
    setattr(obj, name, new)


def unpatch() -> None:
    while _patched:
        obj, name, old = _patched.pop()
        setattr(obj, name, old)


def die() -> None:
    sys.stdout.flush()
    os._exit(CRASH)


def unexpected(msg: str) -> None:
    print(f"unexpected {msg}", flush=True)
    os._exit(3)


def arm(point: str, store_dir: str) -> None:
    root = os.path.realpath(store_dir)

    def under(path, directory: str) -> bool:
        return os.path.dirname(os.path.realpath(os.fspath(path))) == os.path.join(root, directory)

    if point == "after_begin":
        real_open = os.open

        def open_(path, flags, *a, **k):
            if under(path, "packs"):
                die()
            return real_open(path, flags, *a, **k)
        patch(os, "open", open_)

    elif point == "pack_tmp_written":
        real_link = os.link

        def link(src, dst, *a, **k):
            if under(dst, "packs"):
                if not (os.path.exists(src) and TMP_MARKER in os.path.basename(src)):
                    unexpected(f"link {src} -> {dst}")
                die()
            return real_link(src, dst, *a, **k)
        patch(os, "link", link)

    elif point == "pack_renamed":
        def fsync_dir(path):
            if os.path.realpath(path) != os.path.join(root, "packs"):
                unexpected(f"first fsync_dir of save 2 is {path}, not the packs directory")
            die()
        patch(local, "fsync_dir", fsync_dir)

    elif point == "before_manifest":
        real_put = LocalStorage.put

        def put(self, rel, data, **k):
            if rel.startswith("manifests/"):
                die()
            return real_put(self, rel, data, **k)
        patch(LocalStorage, "put", put)

    elif point == "manifest_tmp_written":
        real_link = os.link

        def link(src, dst, *a, **k):
            if under(dst, "manifests"):
                die()
            return real_link(src, dst, *a, **k)
        patch(os, "link", link)

    elif point == "manifest_linked":
        real_unlink = os.unlink

        def unlink(path, *a, **k):
            if under(path, "manifests") and TMP_MARKER in os.path.basename(os.fspath(path)):
                die()
            return real_unlink(path, *a, **k)
        patch(os, "unlink", unlink)

    elif point == "before_index_commit":
        patch(commit, "ingest", lambda *a, **k: die())

    elif point == "during_index_commit":
        real_ingest = commit.ingest

        def ingest(session, *a, **k):
            real_ingest(session, *a, **k)
            getattr(session, "flush", lambda: None)()  # every statement of step D has run in the open transaction
            die()
        patch(commit, "ingest", ingest)

    elif point in ("raise_in_pack_write", "raise_in_manifest_write", "raise_in_tag_ref"):
        target = {"raise_in_pack_write": "packs", "raise_in_manifest_write": "manifests",
                  "raise_in_tag_ref": os.path.join("refs", "tags")}[point]
        real_write, real_pwrite = os.write, os.pwrite

        def hit(fd: int) -> bool:
            try:
                return under(os.readlink(f"/proc/self/fd/{fd}"), target)
            except OSError:
                return False

        def write(fd, data):
            if hit(fd):
                real_write(fd, memoryview(data)[:len(data) // 2])  # a partial write, then the disk is full
                raise OSError(errno.ENOSPC, "No space left on device (injected)")
            return real_write(fd, data)

        def pwrite(fd, data, offset):
            if hit(fd):
                real_pwrite(fd, memoryview(data)[:len(data) // 2], offset)
                raise OSError(errno.ENOSPC, "No space left on device (injected)")
            return real_pwrite(fd, data, offset)
        patch(os, "write", write)
        patch(os, "pwrite", pwrite)

    elif point == "raise_in_index_commit":
        real_ingest = commit.ingest
        failed: list[bool] = []

        def ingest(session, *a, **k):
            if not failed:  # step D fails once (a transient index error), after the manifest is durable
                failed.append(True)
                raise StorageError("index database error: disk I/O error (injected)")
            return real_ingest(session, *a, **k)
        patch(commit, "ingest", ingest)

    else:
        unexpected(f"point {point!r}")


def main() -> None:
    store_path, point = sys.argv[1:3]
    store = CheckpointStore(store_path)
    info1 = store.save("r", 1, fs.step_state(1), {"loss": 1.0})
    print(f"saved1 {info1.id}", flush=True)
    arm(point, store_path)
    tags = ("candidate",) if point == "raise_in_tag_ref" else ()
    try:
        info2 = store.save("r", 2, fs.step_state(2), {"loss": 0.5}, tags=tags)
    except Exception as exc:
        unpatch()
        facts = {
            "raised": f"{type(exc).__name__}: {exc}",
            "listed": [(i.id, i.epoch) for i in store.list()],
            "unfinished_rows": fs.non_committed_rows(store),
            "temp_files": fs.temp_files(store_path),
            "packs": sorted(fs.pack_files(store_path)),
            "manifests": sorted(fs.manifest_files(store_path)),
        }
        try:  # the same (run, epoch) again, in the same process, now that storage works
            facts["resaved"] = store.save("r", 2, fs.step_state(2), {"loss": 0.5}).id
        except Exception as exc2:
            facts["resave_error"] = f"{type(exc2).__name__}: {exc2}"
        print("facts " + json.dumps(facts), flush=True)
        return
    unpatch()
    print(f"survived {info2.id}", flush=True)


if __name__ == "__main__":
    try:
        main()
    except BaseException:
        traceback.print_exc()
        os._exit(2)

"""verify: the index, the manifests and the packs must agree; with ``full``, every byte is re-hashed."""

from __future__ import annotations

from sqlalchemy import select

from ckpt.commit import Context
from ckpt.errors import CkptError
from ckpt.index.schema import Checkpoint
from ckpt.loading import read_manifest
from ckpt.records import Problem, VerifyReport
from ckpt.serialization import manifest as mf
from ckpt.serialization.packs import read_slot
from ckpt.serialization.safetensors_header import parse_header


def _manifest_ids(ctx: Context) -> set[str]:
    return {e.name[:-5] for e in ctx.blobs.list("manifests")
            if e.name.endswith(".json") and not e.name.startswith(".")}


def verify_store(ctx: Context, *, full: bool) -> VerifyReport:
    report = VerifyReport()
    with ctx.index.read() as s:
        rows = [(r.id, r.run.name, r.epoch, r.content_hash)
                for r in s.scalars(select(Checkpoint).where(Checkpoint.status == "committed"))]
    on_disk = _manifest_ids(ctx)
    indexed = {r[0] for r in rows}
    for extra in sorted(on_disk - indexed):
        report.problems.append(Problem("unindexed-manifest", extra,
                                       "manifest on storage is not in the index; run `ckpt reindex`"))
    slots_by_pack: dict[str, dict[tuple[str, int, int], mf.Slot]] = {}
    for cid, run, epoch, chash in rows:
        report.checkpoints += 1
        try:
            m = read_manifest(ctx.blobs, cid)
        except CkptError as exc:
            report.problems.append(Problem("bad-manifest", cid, f"{run}@{epoch}: {exc}"))
            continue
        if (m.run, m.epoch, m.content_hash) != (run, epoch, chash):
            report.problems.append(Problem("index-mismatch", cid, f"index says {run}@{epoch} {chash[:12]}, "
                                           f"manifest says {m.run}@{m.epoch} {m.content_hash[:12]}"))
        for s in m.slots:
            slots_by_pack.setdefault(s.pack, {})[(s.hash, s.offset, s.length)] = s
    for pack, slots in sorted(slots_by_pack.items()):
        report.packs += 1
        _check_pack(ctx, pack, list(slots.values()), full, report)
    return report


def _check_pack(ctx: Context, pack: str, slots: list[mf.Slot], full: bool, report: VerifyReport) -> None:
    rel = mf.pack_path(pack)
    try:
        with ctx.blobs.open_reader(rel) as reader:
            entries, _meta, _start = parse_header(reader.read, reader.size)
            for s in slots:
                e = entries.get(s.hash)
                if e is None or tuple(e["data_offsets"]) != (s.offset, s.offset + s.length):
                    report.problems.append(Problem("pack-mismatch", pack, f"tensor {s.hash[:12]} is not "
                                                   f"where manifests say (offset {s.offset}, {s.length} bytes)"))
                    continue
                if not full:
                    continue
                try:
                    read_slot(reader, s)
                    report.tensors_checked += 1
                    report.bytes_checked += s.nbytes
                except CkptError as exc:
                    report.problems.append(Problem("corrupt-tensor", pack, str(exc)))
    except CkptError as exc:
        report.problems.append(Problem("bad-pack", pack, str(exc)))

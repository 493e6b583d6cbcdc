"""verify: the index, the manifests and the packs must agree; with ``full``, every byte is re-hashed."""

from __future__ import annotations

from typing import Any

from ckpt import sync
from ckpt.errors import CkptError
from ckpt.format import manifest as mf
from ckpt.format.pack_header import parse_header
from ckpt.packs import read_slot
from ckpt.records import Problem, VerifyReport


def verify_store(ctx: Any, *, full: bool) -> VerifyReport:
    report = VerifyReport()
    indexed = ctx.catalog.committed()
    infos = {i.id: i for i in ctx.catalog.list()} if indexed else {}
    on_disk = sync.listing(ctx.storage)
    for extra in sorted(set(on_disk) - set(indexed)):
        try:  # readable: the index only missed it; unreadable: reindex skipped it, and will again
            sync.read_manifest(ctx.storage, extra, on_disk[extra], structure=True).check_structure()
        except CkptError as exc:
            report.problems.append(Problem("bad-manifest", extra, f"{extra[:12]} (not indexed): {exc}; listings "
                                           f"skip it, and gc frees nothing while it cannot tell what it names: "
                                           f"restore the file or remove manifests/{extra}.*"))
            continue
        report.problems.append(Problem("unindexed-manifest", extra,
                                       "manifest on storage is not in the index; run `ckpt reindex`"))
    slots_by_pack: dict[str, dict[tuple[str, int, int], mf.Slot]] = {}
    for cid, fmt in indexed.items():
        report.checkpoints += 1
        info = infos.get(cid)
        label = f"{info.run}@{info.epoch}" if info else cid[:12]
        try:
            m = sync.read_manifest(ctx.storage, cid, fmt, structure=True)
            m.check_structure()  # the skeleton must be readable (and safe) too
        except CkptError as exc:
            report.problems.append(Problem("bad-manifest", cid, f"{label}: {exc}"))
            continue
        if info is not None and (m.run, m.epoch, m.content_hash) != (info.run, info.epoch, info.content_hash):
            report.problems.append(Problem("index-mismatch", cid, f"index says {info.run}@{info.epoch} "
                                           f"{info.content_hash[:12]}, manifest says {m.run}@{m.epoch} "
                                           f"{m.content_hash[:12]}"))
        for s in m.slots:
            slots_by_pack.setdefault(s.pack, {})[(s.hash, s.offset, s.length)] = s
    for pack, slots in sorted(slots_by_pack.items()):
        report.packs += 1
        _check_pack(ctx, pack, list(slots.values()), full, report)
    return report


def _check_pack(ctx: Any, pack: str, slots: list[mf.Slot], full: bool, report: VerifyReport) -> None:
    try:
        with ctx.storage.reader(mf.pack_path(pack)) as reader:
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
                    read_slot(reader, s, verify="full")
                    report.tensors_checked += 1
                    report.bytes_checked += s.nbytes
                except CkptError as exc:
                    report.problems.append(Problem("corrupt-tensor", pack, str(exc)))
    except CkptError as exc:
        report.problems.append(Problem("bad-pack", pack, str(exc)))

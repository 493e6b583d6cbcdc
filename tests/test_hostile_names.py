"""Scenario 9: hostile run names, tags and state keys never escape the store or collide.

Every name is either refused with InvalidArgumentError or stored as itself: it comes back exactly, it
never shares a checkpoint, tag or file with another name (``a/b``, ``a_b`` and ``a\\b``; NFC and NFD forms
of one letter), it survives losing the index (names live inside documents whose file names are digests),
and no file is ever created outside the store directory: the whole tree around the store is compared
before and after. ``ckpt restore -o PATH`` writes PATH and nothing else.
"""

from __future__ import annotations

import os
import re
import sys

import pytest
import torch
from click.testing import CliRunner

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "helpers"))

from conftest import assert_same  # noqa: E402

from ckpt import CheckpointStore, InvalidArgumentError  # noqa: E402
from ckpt.cli import cli  # noqa: E402

NAMES = [
    "../x", "..\\x", "../../../../../../etc/passwd", "/abs/path", "a/b", "a_b", "a\\b", ".", "..", "...",
    "~", ".hidden", "-rf", "--store", "CON", "nul.txt", "%2e%2e%2f", "a b", "a;b", "$(touch PWNED)", "`id`", "*",
    "\u202eevil.pt", "e\u0301", "\u00e9", "\U0001F600", "\u200b", "\ufeffbom", "\u540d\u524d", "x" * 256,
    "x" * 512, "'\"", "a:b", "deadbeef-run", "latest-run", "best-run",
]
REFUSED_EVERYWHERE = ["a\0b", "\ud800", "a\udfffb", "a\nb", "tab\t", "x" * 10_000, "", " lead", "trail "]


def cli_run(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def tree(root) -> dict[str, tuple[int, int]]:
    """Every file and directory under ``root``: relative path -> (size, mtime_ns) for files and symlinks,
    (-1, 0) for directories (whose mtimes change with what is created inside them)."""
    out = {}
    for base, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(base, name)
            st = os.lstat(path)
            out[os.path.relpath(path, root)] = (-1, 0) if os.path.isdir(path) and not os.path.islink(path) \
                else (st.st_size, st.st_mtime_ns)
    return out


def outside_store(before: dict, after: dict, store_rel: str) -> set[str]:
    """Paths created, removed or changed outside the store directory (the directories leading to it
    are made when the store is created, and their mtimes change with it)."""
    parts = store_rel.split(os.sep)
    ancestors = {os.sep.join(parts[:i]) for i in range(1, len(parts))}
    changed = {p for p in set(before) | set(after) if before.get(p) != after.get(p)}
    return {p for p in changed if p != store_rel and not p.startswith(store_rel + os.sep) and p not in ancestors}


def state_for(i: int) -> dict:
    return {"w": torch.full((8,), float(i)), "i": i}


@pytest.fixture
def arena(tmp_path):
    """A store inside a directory we watch, with a sibling directory a traversal would hit."""
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "passwd").write_text("root:x:0:0\n")
    return tmp_path, tmp_path / "deep" / "store"


def test_hostile_run_names_are_refused_or_stored_exactly_and_never_escape(arena):
    root, loc = arena
    before = tree(root)
    stored: dict[str, str] = {}
    with CheckpointStore(loc) as store:
        for i, name in enumerate(NAMES + REFUSED_EVERYWHERE):
            try:
                info = store.save(name, 0, state_for(i))
            except InvalidArgumentError as exc:
                assert name in REFUSED_EVERYWHERE or len(name) > 256, (name, exc)
                continue
            assert name not in REFUSED_EVERYWHERE, f"{name!r} was accepted"
            assert info.run == name
            stored[name] = info.id
            store.finish_run(name)  # writes refs/runs/<digest>.json, which holds the name
        assert len(stored) >= len(NAMES) - 1
        assert len(set(stored.values())) == len(stored)
        assert {r.name for r in store.runs()} == set(stored), "a run name was changed or merged"
        for i, name in enumerate(NAMES):
            if name not in stored:
                continue
            for selector in (f"{name}@0", f"{name}:latest"):  # every run name works in selectors
                assert store.get(selector).id == stored[name], (name, selector)
            (only,) = store.list(run=name)
            assert only.id == stored[name] and only.run == name
            assert_same(store.load(stored[name]), state_for(i))
        store.set_objective("../x", "loss", "min")
    assert outside_store(before, tree(root), os.path.relpath(loc, root)) == set()
    # Names live in documents, not in file names: every key under the store is a hex id or digest.
    for path in tree(loc):
        for part in path.split(os.sep):
            assert re.fullmatch(r"\.?[0-9a-f]{32,64}(\.json|\.ckpt|\.safetensors)?(\.tmp-.*)?|[a-z]+|(s|x)-[0-9a-zA-Z.-]+\.lock|gen-[0-9]+|"
                                r"ckpt-store\.json|index\.sqlite(-wal|-shm)?", part), path

    # Losing the index loses no name: reindex restores them from the manifests and run refs.
    os.unlink(loc / "index.sqlite")
    with CheckpointStore(loc) as store:
        assert {r.name: r.status for r in store.runs()} == {n: "completed" for n in stored}
        assert {n: store.get(f"{n}:latest").id for n in stored} == stored
        assert next(r for r in store.runs() if r.name == "../x").objective == "loss"
    assert outside_store(before, tree(root), os.path.relpath(loc, root)) == set()


def test_hostile_tags_never_collide_or_escape(arena):
    root, loc = arena
    before = tree(root)
    tagged: dict[str, str] = {}
    with CheckpointStore(loc) as store:
        ids = [store.save("r", e, state_for(e)).id for e in range(len(NAMES) + len(REFUSED_EVERYWHERE))]
        for i, name in enumerate(NAMES + REFUSED_EVERYWHERE):
            try:
                store.tag(ids[i], name)
            except InvalidArgumentError:
                assert name in REFUSED_EVERYWHERE or len(name) > 256 or any(c in name for c in "@:~") \
                    or re.fullmatch(r"[0-9a-fA-F]{6,}", name), name
                continue
            assert name not in REFUSED_EVERYWHERE, f"tag {name!r} was accepted"
            tagged[name] = ids[i]
        # "a/b", "a_b" and "a\\b", and NFC/NFD "é", are different tags on different checkpoints.
        for a, b in (("a/b", "a_b"), ("a/b", "a\\b"), ("\u00e9", "e\u0301"), ("../x", "..\\x")):
            assert tagged[a] != tagged[b]
        for name, cid in tagged.items():
            assert store.get(name).id == cid, name
            assert name in store.get(cid).tags
            assert [i.id for i in store.list(tag=name)] == [cid]
        store.untag("a/b")
        assert store.get("a_b").id == tagged["a_b"] and "a/b" not in store.get(tagged["a/b"]).tags
        del tagged["a/b"]
    os.unlink(loc / "index.sqlite")
    with CheckpointStore(loc) as store:  # tags come back from refs/tags/<digest>.json
        assert {n: store.get(n).id for n in tagged} == tagged
        assert {t for info in store.list() for t in info.tags} == set(tagged)
    assert outside_store(before, tree(root), os.path.relpath(loc, root)) == set()


def hostile_state() -> dict:
    keys = NAMES + ["a\0b", "\ud800", "a\udfffb", "a\nb", "x" * 10_000, "", " ", "model.w", "model/w"]
    state = {k: torch.full((2,), float(i)) for i, k in enumerate(keys)}
    state["nested"] = {"../..": {"..": torch.arange(3)}, 7: torch.ones(1), -1: "int keys", (1, "t"): "tuple key"}
    state["list"] = [torch.zeros(1), {"\u202e": torch.ones(2)}]
    return state


def test_hostile_state_keys_round_trip_exactly(arena, tmp_path):
    root, loc = arena
    before = tree(root)
    state = hostile_state()
    with CheckpointStore(loc) as store:
        info = store.save("keys", 0, state)
        assert_same(store.load(info.id), state)
        for key in ("../x", "a\0b", "\ud800", "x" * 10_000, ""):
            assert_same(store.load(info.id, key=key), state[key])
        assert_same(store.load(info.id, key=("nested", "../..", "..")), torch.arange(3))
        target = {"../x": torch.zeros(2), "a\0b": torch.zeros(2)}
        store.load_into(target, info.id, key=None, strict=False)
        assert_same(target["../x"], state["../x"]) and assert_same(target["a\0b"], state["a\0b"])
        cid = info.id
    os.unlink(loc / "index.sqlite")
    with CheckpointStore(loc) as store:  # the manifest alone carries the keys exactly
        assert_same(store.load(cid), state)
    assert outside_store(before, tree(root), os.path.relpath(loc, root)) == set()


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_restore_writes_only_the_path_it_is_given(arena, suffix):
    root, loc = arena
    with CheckpointStore(loc) as store:
        store.save("../../escape", 3, {"../../x": torch.ones(2), "a/b": torch.zeros(2), "..": {"/": torch.ones(1)}},
                   step=9)
    out_dir = root / "out"
    out_dir.mkdir()
    store_rel = os.path.relpath(loc, root)

    before = tree(root)
    target = out_dir / f"restored{suffix}"
    res = cli_run("--store", str(loc), "restore", "../../escape@3", "-o", str(target))
    assert res.exit_code == 0, res.output
    assert outside_store(before, tree(root), store_rel) == {os.path.relpath(target, root)}

    before = tree(root)  # -o DIR/: a sanitised default name inside DIR, and nothing else
    res = cli_run("--store", str(loc), "restore", "../../escape@3", "-o", str(out_dir) + os.sep)
    assert res.exit_code == 0, res.output
    (new,) = outside_store(before, tree(root), store_rel)
    assert os.path.dirname(new) == "out" and re.fullmatch(r"[A-Za-z0-9._-]+", os.path.basename(new)), new
    assert not os.path.basename(new).startswith(".")

    before = tree(root)  # an existing PATH is not overwritten without --force, and nothing else is written
    res = cli_run("--store", str(loc), "restore", "../../escape@3", "-o", str(target))
    assert res.exit_code == 2 and "exists" in res.stderr
    assert outside_store(before, tree(root), store_rel) == set()

"""Running an example never destroys anything: a user's folder is refused and left as it was, the default
is a new folder under the temp directory, and re-running into an example's own folder adds to it."""

from __future__ import annotations

import glob
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(ROOT, "examples")
# How each example takes its folder.
FOLDER_ARG = {
    "demo.py": [], "quickstart.py": [], "early_stopping.py": ["--store"], "finetune_frozen.py": ["--store"],
    "resume_after_crash.py": ["--store"], "plot_history.py": ["--store"],
}


def run(name: str, *args: str, tmpdir: str | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    if tmpdir is not None:
        env["TMPDIR"] = tmpdir  # the default folder goes under this test's own temp folder
    return subprocess.run([sys.executable, os.path.join(EXAMPLES, name), *args], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=ROOT)


def snapshot(folder) -> dict[str, tuple[int, int, bytes]]:  # type: ignore[no-untyped-def]
    out = {}
    for dirpath, _, files in os.walk(folder):
        for f in files:
            p = os.path.join(dirpath, f)
            st = os.stat(p)
            with open(p, "rb") as fh:
                out[os.path.relpath(p, folder)] = (st.st_size, st.st_mtime_ns, fh.read())
    return out


def test_every_example_is_covered():
    found = {os.path.basename(p) for p in glob.glob(os.path.join(EXAMPLES, "*.py"))} - {"_folders.py"}
    assert found == set(FOLDER_ARG)


@pytest.mark.parametrize("name", sorted(FOLDER_ARG))
def test_a_users_folder_is_refused_and_left_untouched(tmp_path, name):
    user = tmp_path / "checkpoints"
    user.mkdir()
    (user / "notes.txt").write_text("my notes\n")
    (user / "run1").mkdir()
    (user / "run1" / "epoch-7.pth").write_bytes(b"\x80weights")
    before = snapshot(user)
    out = run(name, *FOLDER_ARG[name], str(user), tmpdir=str(tmp_path))
    assert out.returncode == 2, out.stdout + out.stderr
    assert f"error: {user} is not empty (notes.txt, run1)" in out.stderr
    assert "left untouched" in out.stderr and "new or empty folder" in out.stderr
    assert "Traceback" not in out.stderr
    assert snapshot(user) == before and sorted(os.listdir(user)) == ["notes.txt", "run1"]
    assert sorted(os.listdir(tmp_path)) == ["checkpoints"]  # nothing written anywhere else either


def test_a_file_given_as_the_folder_is_refused(tmp_path):
    f = tmp_path / "important.txt"
    f.write_text("keep me")
    out = run("quickstart.py", str(f), tmpdir=str(tmp_path))
    assert out.returncode == 2 and "exists and is not a folder" in out.stderr
    assert f.read_text() == "keep me"


def test_default_run_uses_a_new_temp_folder_and_rerunning_into_its_own_folder_adds(tmp_path):
    out = run("quickstart.py", tmpdir=str(tmp_path))
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    made = re.search(r"^store: (\S+) \(a new folder\)$", out.stdout, re.M).group(1)
    assert os.path.dirname(os.path.dirname(made)) == str(tmp_path)
    assert os.path.basename(os.path.dirname(made)).startswith("ckpt-quickstart-")
    assert os.path.isfile(os.path.join(os.path.dirname(made), ".ckpt-example"))
    assert "verify: ok" in out.stdout

    # A folder it makes itself, then runs again into it: the earlier store stays, a user's note too.
    mine = tmp_path / "mine"
    first = run("quickstart.py", str(mine))
    assert first.returncode == 0, first.stderr[-2000:]
    assert f"store: {mine / 'store'} (a new folder)" in first.stdout
    (mine / "notes.txt").write_text("added later")
    kept = snapshot(mine / "store")
    second = run("quickstart.py", str(mine))
    assert second.returncode == 0, second.stderr[-2000:]
    assert f"store: {mine / 'store-2'} (a new folder)" in second.stdout and "verify: ok" in second.stdout
    assert snapshot(mine / "store") == kept and (mine / "notes.txt").read_text() == "added later"
    assert sorted(os.listdir(mine)) == [".ckpt-example", "notes.txt", "store", "store-2"]


def test_an_empty_folder_is_used(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    out = run("quickstart.py", str(empty))
    assert out.returncode == 0, out.stderr[-2000:]
    assert sorted(os.listdir(empty)) == [".ckpt-example", "store"]


def test_plot_history_only_reads_a_store_that_has_the_run(tmp_path):
    """A user's real store: plot_history reads the run and changes nothing in it; an existing PNG is
    not overwritten."""
    made = run("plot_history.py", "--store", str(tmp_path / "ex"), "-o", str(tmp_path / "a.png"))
    assert made.returncode == 0, made.stderr[-2000:]
    store = tmp_path / "ex" / "store"
    before = snapshot(store)
    png = tmp_path / "curves.png"
    png.write_bytes(b"mine")
    refused = run("plot_history.py", "--store", str(store), "-o", str(png))
    assert refused.returncode == 2 and "already exists and was left untouched" in refused.stderr
    assert png.read_bytes() == b"mine"
    out = run("plot_history.py", "--store", str(store), "-o", str(tmp_path / "b.png"))
    assert out.returncode == 0, out.stderr[-2000:]
    assert f"reading run 'overfit-mlp' from {store} (read-only)" in out.stdout
    assert (tmp_path / "b.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert snapshot(store) == before


def test_no_example_deletes_or_overwrites_files():
    for path in glob.glob(os.path.join(EXAMPLES, "*.py")):
        with open(path) as f:
            text = f.read()
        for call in ("rmtree", "os.remove", "os.unlink", ".unlink(", "--force", "os.replace", "shutil.move"):
            assert call not in text, f"{os.path.basename(path)} uses {call}"

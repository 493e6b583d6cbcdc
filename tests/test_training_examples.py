"""The training examples run as a user would run them, and say what they claim."""

from __future__ import annotations

import csv
import importlib.util
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from test_training import _isolated_torch, fast_tmp  # noqa: F401

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(ROOT, "examples")
SAMPLE = os.path.join(EXAMPLES, "data", "electricity_sample.arff")


def run_example(name: str, *args: str, timeout: float = 240) -> str:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    out = subprocess.run([sys.executable, os.path.join(EXAMPLES, name), *args], capture_output=True, text=True,
                         timeout=timeout, env=env, cwd=ROOT)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out.stdout


def _example_module(name: str):  # type: ignore[no-untyped-def]
    if EXAMPLES not in sys.path:
        sys.path.insert(0, EXAMPLES)  # as when run as a script: examples/_folders.py is importable
    spec = importlib.util.spec_from_file_location(f"example_{name}", os.path.join(EXAMPLES, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def test_early_stopping_example(fast_tmp):
    out = run_example("early_stopping.py", "--store", str(fast_tmp / "s"))
    m = re.search(r"stopped: early_stopping after (\d+) epochs", out)
    assert m, out
    best = int(re.search(r"best \(from the store's index\): epoch (\d+)", out).group(1))
    assert best < int(m.group(1)) - 1  # patience ran out after the best epoch
    assert f"restored the best checkpoint" in out and "test_acc" in out
    kept = re.findall(r"^\s+epoch\s+(\d+)\s+val_loss", out, re.M)
    assert 3 <= len(kept) <= 5 and int(kept[0]) == best


def test_early_stopping_example_on_electricity_sample_file(fast_tmp, monkeypatch, capsys):
    """The --data path end to end (in this process: the subprocess run above covers the script)."""
    ex = _example_module("early_stopping")
    monkeypatch.setattr(sys, "argv", ["early_stopping.py", "--store", str(fast_tmp / "s"), "--data", SAMPLE,
                                      "--max-epochs", "6"])
    ex.main()
    out = capsys.readouterr().out
    assert "data: 240 rows, 8 features" in out and "electricity_sample.arff" in out
    assert "stopped:" in out


def test_electricity_loader_reads_arff_and_csv(tmp_path):
    ex = _example_module("early_stopping")
    x, y = ex.load_electricity(SAMPLE)
    assert x.shape == (240, 8) and x.dtype == np.float32 and set(np.unique(y)) <= {0.0, 1.0}
    assert 0.0 <= x[:, 1].min() and x[:, 1].max() <= 1.0  # the nominal day, scaled
    # The same rows as OpenML's CSV export, one with a missing value (dropped).
    path = tmp_path / "electricity.csv"
    with open(SAMPLE) as f:
        rows = [line.strip().split(",") for line in f if line[:1].isdigit()]
    rows[3][5] = "?"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["date", "day", "period", "nswprice", "nswdemand", "vicprice", "vicdemand", "transfer", "class"])
        w.writerows(rows)
    xc, yc = ex.load_electricity(str(path))
    assert xc.shape == (239, 8)
    assert np.array_equal(np.delete(x, 3, axis=0), xc) and np.array_equal(np.delete(y, 3), yc)
    gx, gy = ex.synthetic_electricity(days=3, seed=1)
    assert gx.shape == (144, 8) and 0.2 < gy.mean() < 0.8


@pytest.mark.slow
def test_resume_after_crash_example(fast_tmp):
    out = run_example("resume_after_crash.py", "--store", str(fast_tmp / "s"))
    assert "child exit status -9 (SIGKILL)" in out and "run status: crashed" in out
    assert "resuming run 'spiral-mlp' from" in out
    assert "resumed run bit-identical to the uninterrupted one: yes" in out
    assert "DIFFERENT" not in out


def test_finetune_frozen_example(fast_tmp):
    out = run_example("finetune_frozen.py", "--store", str(fast_tmp / "s"))
    assert "shape differs, left as initialized: head.weight" in out
    shares = [float(s) for s in re.findall(r"^\s+\d+\s+[\d.]+ KiB\s+[\d.]+ KiB\s+([\d.]+)%", out, re.M)]
    assert len(shares) == 4 and all(s < 5 for s in shares)  # each checkpoint adds under 5% of its size
    assert "parent of the first fine-tune checkpoint" in out


def test_plot_history_example(fast_tmp):
    png = fast_tmp / "curves.png"
    out = run_example("plot_history.py", "--store", str(fast_tmp / "s"), "-o", str(png))
    assert "training one" in out and f"wrote {png}" in out
    with open(png, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert png.stat().st_size > 20_000
    rows = re.findall(r"^\s+\d+\s+[\d.]+\s+[\d.]+\s+[\d.]+\s+[\d.]+$", out, re.M)
    assert len(rows) >= 5  # one line per epoch of the history, including pruned epochs

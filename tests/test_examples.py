"""Every example runs, as a user would run it."""

import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_quickstart_example(tmp_path):
    out = subprocess.run([sys.executable, os.path.join(ROOT, "examples", "quickstart.py"), str(tmp_path / "s")],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "best checkpoint" in out.stdout and "verify: ok" in out.stdout
    lines = [line for line in out.stdout.splitlines() if line.startswith("fine-tune epoch 9")]
    state, written = (int(x) for x in lines[0].replace(",", "").split(":")[1].split()[::4][:2])
    assert written < state / 2  # the frozen backbone was not written again


def test_main_demo_tells_the_whole_story(tmp_path):
    out = subprocess.run([sys.executable, os.path.join(ROOT, "examples", "demo.py"), str(tmp_path / "s")],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    text = out.stdout
    assert "exited with status 143" in text and "run status: interrupted" in text
    assert "resuming run 'mlp-demo'" in text and "stopped: early_stopping" in text
    for command in ("$ ckpt runs", "$ ckpt ls --sort val_acc", "$ ckpt diff", "$ ckpt restore best"):
        assert command in text
    assert "plain torch.load(weights_only=True)" in text
    assert f"The store: {tmp_path / 's' / 'store'} (a new folder)" in text


def test_main_demo_output_reads_in_order_through_a_pipe(tmp_path):
    """Output piped (as here): headings stay in order with the child's and the CLI's lines, the epoch it
    says it stopped after is the last epoch it printed, and sizes are in one unit family (KiB/MiB)."""
    out = subprocess.run([sys.executable, os.path.join(ROOT, "examples", "demo.py"), str(tmp_path / "s")],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:]
    text = out.stdout
    order = ["1. Training starts", "epoch 0 |", "training process exited", "2. The same script runs again",
             "resuming run", "stopped:", "3. The store, from the command line", "$ ckpt runs", "mlp-demo",
             "$ ckpt ls", "$ ckpt diff", "$ ckpt restore best", "wrote ", "plain torch.load"]
    where = [text.index(mark, text.index(order[i - 1]) if i else 0) for i, mark in enumerate(order)]
    assert where == sorted(where)
    epochs = [int(e) for e in re.findall(r"^epoch (\d+) \|", text, re.M)]
    said = int(re.search(r"stopped: early_stopping after epoch (\d+);", text).group(1))
    assert said == max(epochs)
    assert "KiB" in text and not re.search(r"\d (kB|KB|MB|GB)\b", text)

"""Every example runs, as a user would run it."""

import os
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

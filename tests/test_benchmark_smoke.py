"""The benchmark harness runs end to end (tiny sizes; benchmarks are not tests: no timing is asserted)."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_benchmark_quick_mode_writes_results(tmp_path):
    out = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "run.py"), "--quick",
                          "--cases", "fp32,lora", "--out", str(tmp_path)], capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    doc = json.loads((tmp_path / "quick.json").read_text())
    assert {"raw", "torch", "safetensors", "dcp", "ckpt", "codec"} <= set(doc["results"]["fp32"])
    assert doc["results"]["lora"]["ckpt"]["dedup_new_bytes"]["min"] < 0.02 * doc["results"]["lora"]["ckpt"]["bytes"]["min"]
    md = (tmp_path / "quick.md").read_text()
    assert "| fp32 | ckpt |" in md and "durable save" in md

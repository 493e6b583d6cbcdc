"""The benchmark harness runs end to end (tiny sizes; benchmarks are not tests: no timing is asserted).

What is checked is that every case still runs against the public API and reports what its targets need,
so that the harness keeps measuring the core while it is rewritten. Each case costs a few worker
processes (~2 s of `import torch` each): the first test (~35 s of CPU) holds the cases that depend most
on the core (history, S3); the second, marked slow (~40 s), the 1 GiB contenders, start-up and models.
"""

import json
import os
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def quick(tmp_path, *args):
    out = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "run.py"), "--quick", *args,
                          "--out", str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    return json.loads((tmp_path / "quick.json").read_text()), (tmp_path / "quick.md").read_text()


def target(doc, case, prefix):
    rows = [r for r in doc["targets"] if r["case"] == case and r["what"].startswith(prefix)]
    assert rows, f"no target row {case}: {prefix}... in {[r['what'] for r in doc['targets']]}"
    return rows[0]


def test_benchmark_quick_mode_writes_results(tmp_path):
    doc, md = quick(tmp_path, "--only", "lora,tiny,growth,prune,s3,index,ui")
    r = doc["results"]
    assert r["lora"]["ckpt"]["dedup_new_bytes"]["min"] < 0.02 * r["lora"]["ckpt"]["bytes"]["min"]
    assert "| lora | ckpt |" in md and "99%-frozen save" in md
    # The history cases: both contenders of tiny, the growth windows, rows counted for N and N/10 tensors.
    assert target(doc, "tiny", "save (median of 5)")["ratio"] > 0
    assert target(doc, "growth", "save: mean of saves")["ratio"] > 0
    rows = target(doc, "growth", "index rows added by one save")
    assert rows["ckpt"] >= 1 and rows["baseline"] >= 1  # a save adds at least its checkpoint row
    assert "200 vs 20 tensors" in rows["what"]
    assert r["prune"]["ckpt"]["removed"]["min"] == 10 and r["prune"]["ckpt"]["left"]["min"] == 2
    assert target(doc, "prune", "prune(keep_last=2) 10 of 12")["ratio"] > 0
    # S3 on moto, with TMPDIR on a small tmpfs where we may mount one.
    assert {"s3fs", "boto3", "ckpt"} <= set(r["s3"])
    works = target(doc, "s3", "256 MiB save to S3")
    assert works["ckpt"] in (0, 1)
    if works["ckpt"]:  # 256 KiB x 32 fits any temp dir; then the throughput rows are there
        assert target(doc, "s3", "S3 throughput: ckpt / plain multipart upload (boto3)")["ratio"] > 0
    assert any("tmpfs" in n for n in doc["notes"]["s3"])
    assert len(doc["results"]["index"]) == 4
    # ckpt ui: every page answered over HTTP from the real command; the runs and run pages have targets
    assert {"first runs page (cold)", "runs page", "run page", "run page (history)", "checkpoint page",
            "lineage (all runs)", "runs page after a new save"} <= set(r["ui"])
    assert target(doc, "ui", "run page (ms)")["goal"] == "< 200"


@pytest.mark.slow
def test_benchmark_quick_mode_1gib_startup_and_models(tmp_path):
    doc, md = quick(tmp_path, "--only", "fp32,catalog,resnet50,gpu")
    r = doc["results"]
    assert {"raw", "torch", "safetensors", "dcp", "ckpt", "codec"} <= set(r["fp32"])
    assert "| fp32 | ckpt |" in md and "durable save" in md
    assert r["catalog"]["ckpt"]["cli_ls"]["min"] > 0 and r["catalog"]["python"]["python_pass"]["min"] > 0
    assert target(doc, "catalog", "import ckpt.catalog does not import torch")["ckpt"] is not None
    assert doc["info"]["catalog"]["ckpt"]["cli_ls_lines"] > 20  # header + 20 checkpoints, not an error
    model = r["resnet50"]
    assert model["ckpt"]["tensors"]["min"] == model["torch"]["tensors"]["min"] > 800
    assert target(doc, "resnet50", "load_into hot")["ratio"] > 0
    assert doc["info"]["resnet50"]["ckpt"]["scalar_tensors"] > 100  # AdamW `step` and BN counters
    if torch.cuda.is_available():
        assert {"raw", "torch", "dcp", "ckpt"} <= set(r["gpu_fp32"])
    else:
        assert "skipped: no CUDA on this machine" in doc["notes"]["gpu_fp32"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA present: scripts/gpu-check.sh would run for real")
def test_gpu_check_says_no_cuda_and_succeeds():
    out = subprocess.run(["bash", os.path.join(ROOT, "scripts", "gpu-check.sh")], capture_output=True, text=True,
                         timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "no CUDA here" in out.stdout

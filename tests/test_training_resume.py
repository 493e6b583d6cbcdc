"""Exact resume across real process deaths (reliability scenario 16).

Child processes run the scenario of test_training.py (`python tests/test_training.py --child STORE`)
and are killed: SIGKILL right after a random epoch's checkpoint, SIGKILL at a random step inside an
epoch, SIGKILL at a random moment (inside a save, a step, anywhere), and SIGTERM at a random moment. Each
time the run is finished afterwards and must be bit-identical to the uninterrupted reference run:
weights, optimizer, scheduler, every RNG, data order, metric history, early-stopping state and epoch.
Set CKPT_TEST_SEED to replay a failure; the seed is printed.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time

import pytest

from ckpt import CheckpointStore
from test_training import (RUN, STEPS_PER_EPOCH, _isolated_torch, assert_same_run, diff_states,  # noqa: F401
                           fast_tmp, reference, scenario)

CHILD = os.path.join(os.path.dirname(os.path.abspath(__file__)), "test_training.py")


def _rng() -> random.Random:
    seed = int(os.environ.get("CKPT_TEST_SEED", time.time_ns() % 1_000_000))
    print(f"CKPT_TEST_SEED={seed}")
    return random.Random(seed)


class Child:
    """A child training process whose stdout (READY / STEP n / SAVED e s lines) is read as it runs."""

    def __init__(self, store, *args: str) -> None:  # type: ignore[no-untyped-def]
        env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
        self.proc = subprocess.Popen([sys.executable, CHILD, str(store), *args], stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, env=env)
        self.lines: list[str] = []
        self.ready = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:  # type: ignore[union-attr]
            self.lines.append(line.strip())
            if line.startswith("READY"):
                self.ready.set()
        self.ready.set()

    def wait(self, timeout: float = 120) -> tuple[int, str]:
        rc = self.proc.wait(timeout)
        self._reader.join(10)
        return rc, self.proc.stderr.read()  # type: ignore[union-attr]

    @property
    def steps(self) -> list[int]:
        return [int(x.split()[1]) for x in self.lines if x.startswith("STEP")]


def _status(store_dir) -> str:  # type: ignore[no-untyped-def]
    with CheckpointStore(store_dir) as s:
        return {r.name: r.status for r in s.runs()}[RUN]


@pytest.mark.slow
def test_sigkill_at_random_epochs_steps_and_moments_then_resume_is_bit_identical(fast_tmp, reference):
    ref_store, ref = reference
    total = ref.global_step  # the reference stops early, after this many steps
    rnd = _rng()
    store_dir = fast_tmp / "s"

    # 1. SIGKILL right after the checkpoint of a random epoch (not the last one)
    epoch = rnd.randrange(0, ref.epochs - 2)
    rc, err = Child(store_dir, "--kill-after-epoch", str(epoch)).wait()
    assert rc == -signal.SIGKILL, err
    with CheckpointStore(store_dir) as s:
        last = s.latest(RUN)
        assert (last.epoch, "val_loss" in last.metrics) == (epoch, True)
        assert {r.name: r.status for r in s.runs()}[RUN] == "crashed"  # nobody marked it: the process died

    # 2. SIGKILL at a random step inside a later epoch, between two step checkpoints
    start = (epoch + 1) * STEPS_PER_EPOCH
    step = rnd.choice([s for s in range(start + 1, total - 2) if s % 5 and s % STEPS_PER_EPOCH])
    child = Child(store_dir, "--kill-at-step", str(step))
    rc, err = child.wait()
    assert rc == -signal.SIGKILL, err
    assert child.steps[0] == start + 1 and child.steps[-1] == step
    with CheckpointStore(store_dir) as s:
        assert s.latest(RUN).step == max(x for x in range(step) if x % 5 == 0 or x % STEPS_PER_EPOCH == 0)

    # 3. SIGKILL at a random moment: steps are slowed down so the run lasts a while; the kill may land
    #    in a step, in a save, in an evaluation or in retention's pruning
    child = Child(store_dir, "--step-delay", "0.03")
    assert child.ready.wait(120)
    time.sleep(rnd.uniform(0.0, 0.8))
    child.proc.send_signal(signal.SIGKILL)
    rc, err = child.wait()
    assert rc in (-signal.SIGKILL, 0), err

    # 4. finish in this process; same result as the run that was never interrupted
    result, _ = scenario(CheckpointStore(store_dir), save_every_steps=5, retention=dict(keep_last=3, keep_best=1))
    assert result.stop_reason == ref.stop_reason == "early_stopping"
    assert result.early_stopping.stopped_epoch == ref.early_stopping.stopped_epoch
    assert result.global_step == total
    assert_same_run(CheckpointStore(store_dir), ref_store)
    assert _status(store_dir) == "completed"


@pytest.mark.slow
def test_sigterm_finishes_the_step_saves_marks_the_run_and_exits_cleanly(fast_tmp, reference):
    ref_store, ref = reference
    rnd = _rng()
    store_dir = fast_tmp / "s"
    child = Child(store_dir, "--step-delay", "0.03")
    assert child.ready.wait(120)
    time.sleep(rnd.uniform(0.1, 1.0))
    child.proc.send_signal(signal.SIGTERM)
    rc, err = child.wait()
    if rc == 0:
        pytest.skip("the child finished before the signal (machine too fast for the delay)")
    assert rc == 128 + signal.SIGTERM, err
    assert "Traceback" not in err and "SIGTERM received" in err
    last_step = child.steps[-1]
    with CheckpointStore(store_dir) as s:
        latest = s.latest(RUN)
        loop = s.load(f"{RUN}:latest", key="loop")
    assert latest.step == last_step  # the step running when the signal came was finished and saved
    assert loop["global_step"] == last_step and loop["stop_reason"] is None
    assert _status(store_dir) == "interrupted"  # as docs/training.md says; not "completed", not "crashed"

    result, _ = scenario(CheckpointStore(store_dir), save_every_steps=5, retention=dict(keep_last=3, keep_best=1))
    assert result.resumed_from.step == last_step
    assert result.early_stopping.stopped_epoch == ref.early_stopping.stopped_epoch
    assert_same_run(CheckpointStore(store_dir), ref_store)

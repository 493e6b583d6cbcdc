"""Hugging Face transformers: a real Trainer on a tiny GPT-2 built from a config (no downloads) stores its
checkpoints through CkptCallback and resumes from one chosen by selector, bit for bit."""

from __future__ import annotations

import json
import os
import shutil
import time

import numpy as np
import pytest
import torch

pytest.importorskip("transformers", reason="the Hugging Face integration needs `pip install transformers`")
pytest.importorskip("accelerate", reason="transformers' Trainer needs `pip install accelerate`")

from transformers import (GPT2Config, GPT2LMHeadModel, Trainer, TrainerControl, TrainerState,  # noqa: E402
                          TrainingArguments)

from ckpt import CheckpointStore  # noqa: E402
from ckpt.errors import DuplicateCheckpointError  # noqa: E402
from ckpt.integrations.huggingface import CkptCallback  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


class Tokens(torch.utils.data.Dataset):
    def __init__(self, n: int = 24) -> None:
        g = torch.Generator().manual_seed(0)
        self.ids = torch.randint(0, 64, (n, 16), generator=g)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def _model() -> GPT2LMHeadModel:
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=64, n_positions=16, n_embd=32, n_layer=2, n_head=2, resid_pdrop=0.0,
                     embd_pdrop=0.0, attn_pdrop=0.0, use_cache=False)
    return GPT2LMHeadModel(cfg)


def _args(out, **kw) -> TrainingArguments:
    options = dict(max_steps=6, learning_rate=1e-2, metric_for_best_model="loss")
    options.update(kw)
    return TrainingArguments(output_dir=str(out), save_steps=2, save_strategy="steps", per_device_train_batch_size=4,
                             logging_steps=1, report_to=[], use_cpu=True, seed=1, dataloader_num_workers=0,
                             disable_tqdm=True, eval_strategy="steps", eval_steps=2, **options)


def _agreement(pred) -> dict:
    """How often the next token is predicted: a metric whose name says nothing about its direction."""
    logits = pred.predictions[0] if isinstance(pred.predictions, tuple) else pred.predictions
    return {"agreement": float(np.mean(logits.argmax(-1)[:, :-1] == pred.label_ids[:, 1:]))}


def _train(cb, out, **kw):
    trainer = Trainer(model=_model(), args=_args(out, **kw), train_dataset=Tokens(), eval_dataset=Tokens(8),
                      callbacks=[cb], compute_metrics=_agreement if kw.get("metric_for_best_model") == "agreement"
                      else None)
    trainer.train()
    return {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}


def test_trainer_checkpoints_go_to_the_store_and_resume_by_selector(tmp_path):
    store = CheckpointStore(tmp_path / "store")
    cb = CkptCallback(store, run="gpt", keep_local=False)
    trainer = Trainer(model=_model(), args=_args(tmp_path / "out"), train_dataset=Tokens(),
                      eval_dataset=Tokens(8), callbacks=[cb])
    trainer.train()
    final = {k: v.clone() for k, v in trainer.model.state_dict().items()}

    infos = store.list("gpt")
    assert [i.step for i in infos] == [2, 4, 6] and [i.id for i in cb.saved] == [i.id for i in infos]
    assert all("eval_loss" in i.metrics and "loss" in i.metrics for i in infos)
    assert store.best(run="gpt").metrics["eval_loss"] == min(i.metrics["eval_loss"] for i in infos)
    # metric_for_best_model="loss" declared the run's objective: "best" just works.
    run = next(r for r in store.runs() if r.name == "gpt")
    assert (run.objective, run.mode) == ("eval_loss", "min")
    assert store.get("best").id == store.best(run="gpt").id
    assert not [d for d in os.listdir(tmp_path / "out") if d.startswith("checkpoint-")]  # keep_local=False
    files = store.load(infos[-1].id)["files"]
    assert files["model.safetensors"]["kind"] == "safetensors" and files["optimizer.pt"]["kind"] == "torch"
    # The stored weights are the trained model's, bit for bit.
    weights = files["model.safetensors"]["tensors"]
    assert all(torch.equal(weights[k], final[k]) for k in weights)

    # Resume from the step-2 checkpoint (an id prefix is a selector) and train to the end again.
    resume_dir = cb.checkout(infos[0].id[:10], tmp_path / "resume")
    assert set(os.listdir(resume_dir)) >= {"model.safetensors", "optimizer.pt", "scheduler.pt", "rng_state.pth",
                                           "trainer_state.json", "config.json"}
    cb2 = CkptCallback(store, run="gpt-resumed")
    trainer2 = Trainer(model=_model(), args=_args(tmp_path / "out2"), train_dataset=Tokens(),
                       eval_dataset=Tokens(8), callbacks=[cb2])
    trainer2.train(resume_from_checkpoint=resume_dir)
    assert [i.step for i in store.list("gpt-resumed")] == [4, 6]
    resumed = trainer2.model.state_dict()
    for k, v in final.items():
        assert torch.equal(resumed[k], v), k
    assert os.path.isdir(cb2.checkout("latest", tmp_path / "latest"))
    store.close()


def _weights_of(store, info):
    return store.load(info.id)["files"]["model.safetensors"]["tensors"]


def _same(stored, trained):
    return all(torch.equal(stored[k], trained[k]) for k in stored)


def test_a_reused_callback_never_answers_for_another_train(tmp_path):
    store = CheckpointStore(tmp_path / "store")
    cb = CkptCallback(store)  # the run comes from each train()'s args.run_name
    first = _train(cb, tmp_path / "a", run_name="trial-a")
    second = _train(cb, tmp_path / "b", run_name="trial-b", learning_rate=3e-2,
                    metric_for_best_model="agreement", greater_is_better=True)
    assert cb.run == "trial-b"
    a, b = store.list("trial-a"), store.list("trial-b")
    assert [i.step for i in a] == [i.step for i in b] == [2, 4, 6]
    assert _same(_weights_of(store, a[-1]), first) and _same(_weights_of(store, b[-1]), second)
    assert not _same(_weights_of(store, b[-1]), first)
    with open(os.path.join(cb.checkout("latest", tmp_path / "co"), ".ckpt-checkout")) as f:
        assert json.load(f)["checkpoint"] == b[-1].id
    # metric_for_best_model with greater_is_better: the objective is eval_agreement, higher is better.
    run = next(r for r in store.runs() if r.name == "trial-b")
    assert (run.objective, run.mode) == ("eval_agreement", "max")
    assert store.get("trial-b:best").id == max(b, key=lambda i: (i.metrics["eval_agreement"], -i.step)).id

    # One run named for every train(): a second train() from scratch is refused before it trains.
    fixed = CkptCallback(store, run="fixed")
    _train(fixed, tmp_path / "f1", max_steps=2)
    before = [i.id for i in store.list("fixed")]
    with pytest.raises(DuplicateCheckpointError, match="earlier train"):
        _train(fixed, tmp_path / "f2", max_steps=2)
    assert not (tmp_path / "f2").exists() or not os.listdir(tmp_path / "f2")
    # Another callback (another process) into that run: refused at the clashing step, nothing merged.
    with pytest.raises(DuplicateCheckpointError, match="another training"):
        _train(CkptCallback(store, run="fixed"), tmp_path / "f3", max_steps=2, learning_rate=3e-2)
    assert [i.id for i in store.list("fixed")] == before
    store.close()


def test_a_search_trial_stores_its_own_directory_never_a_stale_one(tmp_path):
    """During trainer.hyperparameter_search the Trainer saves under output_dir/run-N/; an older
    output_dir/checkpoint-STEP from another train() must not be stored for the trial."""
    store = CheckpointStore(tmp_path / "store")
    out = tmp_path / "out"
    _train(CkptCallback(store, run="plain"), out, max_steps=2)  # leaves out/checkpoint-2 behind
    stale = out / "checkpoint-2"
    old = time.time() - 3600
    os.utime(stale / "trainer_state.json", (old, old))
    os.utime(stale, (old, old))
    cb = CkptCallback(store, run="search")
    args = _args(out, max_steps=2)
    state = TrainerState(global_step=2, epoch=1.0, is_hyper_param_search=True, trial_name="run-1")
    cb.on_train_begin(args, state, TrainerControl())
    trial = out / "run-1" / "checkpoint-2"
    shutil.copytree(stale, trial, copy_function=shutil.copyfile)  # what the Trainer writes for the trial, now
    (trial / "trial.txt").write_text("trial 1")
    cb.on_save(args, state, TrainerControl())
    assert cb.run == "search.run-1" and [i.run for i in cb.saved] == ["search.run-1"]
    files = store.load(cb.saved[0].id)["files"]
    assert bytes(files["trial.txt"]["data"].numpy()) == b"trial 1"
    # Only the stale directory there: nothing is stored (and it says so), rather than the wrong one.
    shutil.rmtree(out / "run-1")
    cb.on_save(args, state, TrainerControl())
    assert len(cb.saved) == 1 and "search" not in [r.name for r in store.runs()]
    store.close()

"""Hugging Face transformers: a real Trainer on a tiny GPT-2 built from a config (no downloads) stores its
checkpoints through CkptCallback and resumes from one chosen by selector, bit for bit."""

from __future__ import annotations

import os

import pytest
import torch

pytest.importorskip("transformers", reason="the Hugging Face integration needs `pip install transformers`")
pytest.importorskip("accelerate", reason="transformers' Trainer needs `pip install accelerate`")

from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments  # noqa: E402

from ckpt import CheckpointStore  # noqa: E402
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
                     embd_pdrop=0.0, attn_pdrop=0.0)
    return GPT2LMHeadModel(cfg)


def _args(out, **kw) -> TrainingArguments:
    return TrainingArguments(output_dir=str(out), max_steps=6, save_steps=2, save_strategy="steps",
                             per_device_train_batch_size=4, learning_rate=1e-2, logging_steps=1, report_to=[],
                             use_cpu=True, seed=1, dataloader_num_workers=0, disable_tqdm=True,
                             eval_strategy="steps", eval_steps=2, metric_for_best_model="loss", **kw)


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

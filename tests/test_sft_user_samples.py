"""A user's own SFT ``sample`` strategy, given by import path, runs through the same hook as ``loss_reweighting`` in
a real (tiny) SFT trainer: its hook is called every step, it reads its own data column, what it returns reaches the
loss, and a failing or malformed strategy stops the run with one line."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from test_sft import B, COMPLETIONS, PROMPTS, _batch, _loss_and_grad, _tiny_model_and_tokenizer

trl = pytest.importorskip("trl")
datasets = pytest.importorskip("datasets")

ROOT = Path(__file__).resolve().parents[1]
USER = "user_strategies.user_sample"
QUALITY = [1.0, 2.0, 0.5, 4.0]


def _sft(tmp_path, strategies=(), max_steps=2, learning_rate=5e-2, **columns):
    from posttrain.trainers.sft import PosttrainSFTTrainer

    model, tokenizer = _tiny_model_and_tokenizer()
    args = trl.SFTConfig(output_dir=str(tmp_path), report_to=[], bf16=False, use_cpu=True,
                         per_device_train_batch_size=B, save_strategy="no", max_steps=max_steps,
                         learning_rate=learning_rate, dataset_num_proc=None, logging_steps=1, disable_tqdm=True)
    data = datasets.Dataset.from_dict({"prompt": PROMPTS, "completion": COMPLETIONS, **columns})
    tr = PosttrainSFTTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer,
                             sample_strategies=list(strategies))
    tr.model.train()
    return tr


def test_a_user_sample_strategy_reads_its_column_and_weights_the_loss(tmp_path):
    user = {"name": f"{USER}:ColumnScale", "scale": 0.5}
    ours = _sft(tmp_path / "u", [user], quality=QUALITY)
    explicit = _sft(tmp_path / "e", weight=[0.5 * q for q in QUALITY])  # the same weights as a 'weight' column
    plain = _sft(tmp_path / "p")
    batch = _batch(ours)
    loss, _ = _loss_and_grad(ours, batch)
    assert ours.sample_strategies[0].calls == [(0, B)]  # the hook ran, on the whole (gathered) micro-batch
    assert abs(loss.item() - _loss_and_grad(explicit, _batch(explicit))[0].item()) <= 1e-9
    assert abs(loss.item() - _loss_and_grad(plain, _batch(plain))[0].item()) > 1e-4
    assert ours._metrics["train"]["user/quality_mean"][-1] == pytest.approx(sum(QUALITY) / B)
    assert ours._metrics["train"]["samples/weight_mean"][-1] == pytest.approx(0.5 * sum(QUALITY) / B)
    ours.train()  # inside trainer.train(), through the dataloader: the column survives TRL's preparation
    assert [c[0] for c in ours.sample_strategies[0].calls[1:]] == [0, 1]


def test_zero_sample_weights_leave_the_model_unchanged(tmp_path):
    tr = _sft(tmp_path, [f"{USER}:ZeroSamples"])
    before = {k: v.clone() for k, v in tr.model.state_dict().items()}
    tr.train()
    assert [r["loss"] for r in tr.state.log_history if "loss" in r] == [0.0, 0.0]
    assert all(torch.equal(before[k], v) for k, v in tr.model.state_dict().items())
    moved = _sft(tmp_path / "plain")
    moved.train()
    assert any(not torch.equal(before[k], v) for k, v in moved.model.state_dict().items())


def test_one_line_errors_for_user_sample_strategies(tmp_path):
    from posttrain.errors import StrategyFailed, UserError

    with pytest.raises(UserError, match=r"^weighting\.samples: ColumnScale needs a 'quality' column in data\.train$"):
        _sft(tmp_path / "a", [f"{USER}:ColumnScale"])
    with pytest.raises(UserError, match=r"^weighting\.samples\.0: sample strategy 'user_strategies.user_sample:"
                                        r"Plain' implements none of the hooks of its kind \(sample_weights\)"):
        _sft(tmp_path / "b", [f"{USER}:Plain"])
    tr = _sft(tmp_path / "c", [f"{USER}:WrongLength"])
    with pytest.raises(StrategyFailed, match=r"^sample strategy 'WrongLength': sample_weights must return 4 finite, "
                                             r"non-negative weights, got shape \(3,\)$"):
        tr.sample_weights(*_record(tr), {})


def _record(tr):
    batch = _batch(tr)
    with tr._record_fused_outputs(tr.model) as records:
        tr.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"],
                 fused_lm_head=True, use_cache=False)
    return records[0]


def test_a_user_sample_strategy_that_raises_stops_the_run_with_a_checkpoint(tmp_path):
    out = tmp_path / "run"
    res = subprocess.run(
        [sys.executable, "-m", "posttrain", "run", "recipes/tiny_sft.yaml", f"output.dir={out}", "model.threads=1",
         "train.max_steps=3", "output.save_model=false", "output.plots=false",
         "weighting.samples=[{name: 'tests.user_strategies.user_sample:Exploding'}]"],
        capture_output=True, text=True, timeout=600, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == 3, res.stderr[-2000:]
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("posttrain: stopped:") and "Exploding" in last and "sample_weights" in last, last
    assert "boom from a user sample strategy" in last
    summary = json.loads((out / "summary.json").read_text())
    assert summary["checkpoint"] and Path(summary["checkpoint"]).is_dir()

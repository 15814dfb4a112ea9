"""The DPO trainer glue, driving TRL's real DPOTrainer on the tiny model: the weighted path reproduces TRL's loss
when weights are neutral, weights and margins reach the loss, beta-DPO adapts beta / filters / checkpoints its state."""
import copy
import os

import pytest
import torch
from datasets import Dataset
from trl import DPOConfig, DPOTrainer

from posttrain.errors import UserError
from posttrain.models import load_tiny_model
from posttrain.trainers import AdaptiveDPOTrainer
from posttrain.trainers.checkpointing import COMPLETE_MARKER, STATE_FILE
from posttrain.weighting.pairs import madpo_weights

N = 4
WORDS = ["rain", "cats", "Mondays", "coffee", "music", "traffic", "summer", "homework"]


@pytest.fixture(scope="module")
def tiny(one_torch_thread):
    return load_tiny_model()


def _pairs(n=N, **columns):
    rows = {
        "prompt": [[{"role": "user", "content": f"Say something about {WORDS[i % len(WORDS)]}."}] for i in range(n)],
        "chosen": [[{"role": "assistant", "content": f"I love {WORDS[i % len(WORDS)]}, it is great!"}]
                   for i in range(n)],
        "rejected": [[{"role": "assistant", "content": "No." if i % 2 else f"I hate {WORDS[i % len(WORDS)]}."}]
                     for i in range(n)],
    }
    rows.update({k: list(v) for k, v in columns.items()})
    return Dataset.from_dict(rows)


def _args(tmp_path, **cfg):
    base = dict(output_dir=str(tmp_path), per_device_train_batch_size=N, use_cpu=True, bf16=False, report_to="none",
                max_steps=1, gradient_checkpointing=False, max_length=64, logging_steps=1, save_strategy="no",
                disable_tqdm=True, seed=0)
    base.update(cfg)
    return DPOConfig(**base)


def _trainer(tiny, tmp_path, data, cls=AdaptiveDPOTrainer, **kw):
    model, tok = tiny
    cfg = {k: kw.pop(k) for k in list(kw) if k != "pair_strategies"}
    extra = {"pair_strategies": kw["pair_strategies"]} if "pair_strategies" in kw else {}
    tr = cls(model=copy.deepcopy(model), ref_model=copy.deepcopy(model), args=_args(tmp_path, **cfg),
             train_dataset=data, processing_class=tok, **extra)
    tr.model.train()
    return tr


def _loss(tr, rows=None):
    ds = tr.train_dataset
    batch = tr.data_collator([ds[i] for i in (rows if rows is not None else range(len(ds)))])
    if not isinstance(tr, AdaptiveDPOTrainer):
        batch = {k: v for k, v in batch.items() if k not in ("weight", "margin")}
    return tr.compute_loss(tr.model, batch)


def test_unit_weights_equal_trl_loss(tiny, tmp_path):
    plain = _trainer(tiny, tmp_path / "a", _pairs(), cls=DPOTrainer)
    ours = _trainer(tiny, tmp_path / "b", _pairs(weight=[1.0] * N))
    assert ours._weighted  # the weight column switches on our path: this compares our loss with TRL's
    ref, got = _loss(plain), _loss(ours)
    assert got.requires_grad
    assert abs(got.item() - ref.item()) <= 1e-6, (got.item(), ref.item())
    # TRL's metrics are still logged, and ours beside them
    for key in ("rewards/margins", "logps/chosen", "entropy", "pairs/weight_mean", "pairs/beta"):
        assert key in ours._metrics["train"], key


@pytest.mark.parametrize("loss_type,loss_weights,precompute", [
    ("ipo", None, False), (["sigmoid", "sft"], [1.0, 0.5], False), ("sigmoid", None, True)])
def test_other_loss_types_equal_trl(tiny, tmp_path, loss_type, loss_weights, precompute):
    cfg = dict(loss_type=loss_type, loss_weights=loss_weights, precompute_ref_log_probs=precompute)
    plain = _trainer(tiny, tmp_path / "a", _pairs(), cls=DPOTrainer, **cfg)
    ours = _trainer(tiny, tmp_path / "b", _pairs(weight=[1.0] * N), **cfg)
    assert abs(_loss(ours).item() - _loss(plain).item()) <= 1e-6


def test_weight_column_survives_collator_and_scales_loss(tiny, tmp_path):
    ours = _trainer(tiny, tmp_path / "w", _pairs(weight=[2.0] * N))
    batch = next(iter(ours.get_train_dataloader()))  # through remove_unused_columns and the collator
    assert torch.equal(batch["weight"], torch.full((N,), 2.0))
    plain = _trainer(tiny, tmp_path / "p", _pairs(), cls=DPOTrainer)
    assert abs(_loss(ours).item() - 2 * _loss(plain).item()) <= 2e-6


def test_zero_weight_pair_is_ignored(tiny, tmp_path):
    ours = _trainer(tiny, tmp_path / "z", _pairs(weight=[0.0, 1.0, 1.0, 1.0]))
    plain = _trainer(tiny, tmp_path / "p", _pairs(), cls=DPOTrainer)
    # the zero-weight pair adds nothing: mean over 4 with pair 0 at zero = 3/4 of TRL's mean over pairs 1..3
    assert abs(_loss(ours).item() - 0.75 * _loss(plain, rows=[1, 2, 3]).item()) <= 1e-5
    # ... and its content has no influence on the loss
    other = _pairs(weight=[0.0, 1.0, 1.0, 1.0]).map(
        lambda ex, i: {"rejected": [{"role": "assistant", "content": "Something else entirely."}]} if i == 0 else {},
        with_indices=True)
    changed = _trainer(tiny, tmp_path / "c", other)
    assert abs(_loss(changed).item() - _loss(ours).item()) <= 1e-6


def test_madpo_uses_margins(tiny, tmp_path):
    margins = [-3.0, 0.5, 1.0, 5.0]
    w = madpo_weights(torch.tensor(margins, dtype=torch.float64), tau=2.0)
    assert not torch.allclose(w, torch.ones(N, dtype=torch.float64))  # the margins do matter
    madpo = _trainer(tiny, tmp_path / "m", _pairs(margin=margins), pair_strategies=[{"name": "madpo", "tau": 2.0}])
    explicit = _trainer(tiny, tmp_path / "e", _pairs(weight=w.tolist()))
    unweighted = _trainer(tiny, tmp_path / "u", _pairs(margin=margins))  # a margin column alone changes nothing
    plain = _trainer(tiny, tmp_path / "p", _pairs(), cls=DPOTrainer)
    assert not unweighted._weighted
    assert abs(_loss(madpo).item() - _loss(explicit).item()) <= 1e-6
    assert abs(_loss(unweighted).item() - _loss(plain).item()) <= 1e-6
    assert abs(_loss(madpo).item() - _loss(plain).item()) > 1e-4
    m = madpo._metrics["train"]
    assert m["pairs/weight_mean"][-1] == pytest.approx(w.mean().item(), rel=1e-5)
    assert m["pairs/margin_mean"][-1] == pytest.approx(sum(margins) / N)


def test_margin_strategy_without_margin_column_is_a_user_error(tiny, tmp_path):
    with pytest.raises(UserError, match="margin"):
        _trainer(tiny, tmp_path, _pairs(), pair_strategies=[{"name": "madpo"}])
    with pytest.raises(UserError, match="weighting.pairs"):
        _trainer(tiny, tmp_path, _pairs(margin=[0.0] * N), pair_strategies=[{"name": "madpo", "c_min": 1.5}])
    with pytest.raises(UserError, match="cannot be combined"):
        _trainer(tiny, tmp_path, _pairs(weight=[1.0] * N), loss_type="nca_pair")


def test_beta_dpo_adapts_beta_filters_and_checkpoints(tiny, tmp_path):
    strategies = [{"name": "beta_dpo", "rho": 0.5, "alpha": 0.6}]
    out = tmp_path / "run"
    tr = _trainer(tiny, out, _pairs(), pair_strategies=strategies, max_steps=2, learning_rate=5e-3,
                  save_strategy="steps", save_steps=1)
    tr.train()
    logs = [r for r in tr.state.log_history if "loss" in r]
    assert len(logs) == 2
    for r in logs:
        assert r["pairs/kept_fraction"] == 0.5  # int(4 * (1 - 0.5)) = 2 of 4 pairs
    # step 1: policy == reference, all gaps 0, beta = beta0; step 2: the policy moved, beta differs from beta0
    assert logs[0]["pairs/beta"] == pytest.approx(0.1)
    assert abs(logs[1]["pairs/beta"] - 0.1) > 1e-6
    strategy = tr.pair_strategies[0].beta_dpo
    assert strategy.num_updates == 2 and strategy.gap_std > 0
    saved = torch.load(out / "checkpoint-2" / STATE_FILE, weights_only=True)
    assert saved["strategies"]["0:beta_dpo"] == strategy.state_dict()
    assert (out / "checkpoint-2" / COMPLETE_MARKER).exists()
    # resume from checkpoint-1: the EMA continues from the saved state (1 update) instead of restarting at 0
    assert torch.load(out / "checkpoint-1" / STATE_FILE, weights_only=True)["strategies"]["0:beta_dpo"]["num_updates"] == 1
    resumed = _trainer(tiny, out, _pairs(), pair_strategies=strategies, max_steps=2, learning_rate=5e-3)
    resumed.train(resume_from_checkpoint=os.path.join(out, "checkpoint-1"))
    assert resumed.pair_strategies[0].beta_dpo.num_updates == 2
    assert resumed.pair_strategies[0].beta_dpo.gap_mean == pytest.approx(strategy.gap_mean, rel=1e-4)

"""The GRPO trainer glue: our weighted path reproduces TRL's loss exactly when weights are neutral, the 80/20
strategy reproduces TRL's top_entropy_quantile, pre-fills survive TRL's prompt rendering."""
import copy

import pytest
import torch
from trl import GRPOConfig, GRPOTrainer

from posttrain.data import arithmetic_problems
from posttrain.models import load_tiny_model
from posttrain.recipes.schema import StrategySpec, WeightingSection
from posttrain.trainers import PosttrainGRPOTrainer

B, T, G = 4, 6, 2


def _reward(completions, **kw):
    return [0.0] * len(completions)


@pytest.fixture(scope="module")
def tiny():
    torch.set_num_threads(1)
    return load_tiny_model()


def _trainer(tiny, tmp_path, tokens=(), **cfg):
    model, tok = tiny
    args = GRPOConfig(output_dir=str(tmp_path), per_device_train_batch_size=B, num_generations=G,
                      max_completion_length=T, use_cpu=True, bf16=False, report_to="none", max_steps=1,
                      gradient_checkpointing=False, **cfg)
    weighting = WeightingSection(tokens=[StrategySpec(**t) for t in tokens])
    tr = PosttrainGRPOTrainer(model=copy.deepcopy(model), reward_funcs=[_reward], args=args,
                              train_dataset=arithmetic_problems(8, low=1, high=9), processing_class=tok,
                              weighting=weighting)
    tr.current_gradient_accumulation_steps = 1  # set by the training loop in real runs
    tr.model.train()  # _compute_loss logs under "train" and uses the accumulation normaliser in train mode
    return tr


def _inputs(seed=0, beta=False):
    g = torch.Generator().manual_seed(seed)
    prompt_ids = torch.randint(10, 1000, (B, 5), generator=g)
    completion_ids = torch.randint(10, 1000, (B, T), generator=g)
    completion_mask = torch.ones(B, T, dtype=torch.long)
    completion_mask[0, 4:] = 0
    completion_mask[2, 2:] = 0
    inputs = {
        "prompt_ids": prompt_ids, "prompt_mask": torch.ones(B, 5, dtype=torch.long),
        "completion_ids": completion_ids, "completion_mask": completion_mask,
        "advantages": torch.randn(B, generator=g),
        "old_per_token_logps": -torch.rand(B, T, generator=g) * 8,  # off-policy: ratios != 1, clipping active
        "num_items_in_batch": completion_mask.sum(),
        "group_ids": torch.arange(B) // G,
    }
    if beta:
        inputs["ref_per_token_logps"] = -torch.rand(B, T, generator=g) * 8
    return inputs


NEUTRAL = [{"name": "steer", "w_min": 1.0, "w_max": 1.0}]


@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dr_grpo", "dapo"])
@pytest.mark.parametrize("beta", [0.0, 0.04])
def test_neutral_weights_equal_trl_loss(tiny, tmp_path, loss_type, beta):
    tr = _trainer(tiny, tmp_path, NEUTRAL, loss_type=loss_type, epsilon_high=0.28)
    tr.beta = beta
    inputs = _inputs(beta=beta != 0.0)
    ours = tr._compute_loss(tr.model, inputs)
    trl = GRPOTrainer._compute_loss(tr, tr.model, inputs)
    assert torch.allclose(ours, trl, atol=1e-6, rtol=1e-6), (ours.item(), trl.item())
    assert tr._metrics["train"]["weights/mean"][-1] == pytest.approx(1.0)


def test_neutral_weights_equal_trl_gradients(tiny, tmp_path):
    tr = _trainer(tiny, tmp_path, NEUTRAL, loss_type="dapo")
    inputs = _inputs(seed=3)
    params = [p for p in tr.model.parameters() if p.requires_grad]
    ours = torch.autograd.grad(tr._compute_loss(tr.model, inputs), params)
    trl = torch.autograd.grad(GRPOTrainer._compute_loss(tr, tr.model, inputs), params)
    for a, b in zip(ours, trl):
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("rho", [0.2, 0.5])
def test_high_entropy_strategy_equals_trl_top_entropy_quantile(tiny, tmp_path, rho):
    ours_tr = _trainer(tiny, tmp_path, [{"name": "high_entropy", "top_fraction": rho}], loss_type="dapo")
    trl_tr = _trainer(tiny, tmp_path / "trl", (), loss_type="dapo", top_entropy_quantile=rho)
    trl_tr.model.load_state_dict(ours_tr.model.state_dict())
    inputs = _inputs(seed=1)
    ours = ours_tr._compute_loss(ours_tr.model, inputs)
    trl = GRPOTrainer._compute_loss(trl_tr, trl_tr.model, inputs)
    assert torch.allclose(ours, trl, atol=1e-6), (ours.item(), trl.item())
    assert 0.0 < ours_tr._metrics["train"]["weights/frac_zero"][-1] < 1.0


def test_steer_changes_the_loss_and_logs(tiny, tmp_path):
    tr = _trainer(tiny, tmp_path, [{"name": "steer"}], loss_type="dapo")
    inputs = _inputs(seed=2)
    ours = tr._compute_loss(tr.model, inputs)
    trl = GRPOTrainer._compute_loss(tr, tr.model, inputs)
    assert torch.isfinite(ours) and not torch.allclose(ours, trl)
    m = tr._metrics["train"]
    assert 0.8 - 1e-6 <= m["weights/min"][-1] <= m["weights/max"][-1] <= 1.2 + 1e-6  # float32 weights
    assert "entropy" in m and "weighting/steer/mean" in m


def test_tw_grpo_reorders_shuffled_groups(tiny, tmp_path):
    tr = _trainer(tiny, tmp_path, [{"name": "tw_grpo", "alpha": 1.7}], loss_type="dapo")
    inputs = _inputs(seed=4)
    perm = torch.tensor([2, 0, 3, 1])  # TRL's shuffle: groups no longer contiguous
    shuffled = {k: (v[perm] if isinstance(v, torch.Tensor) and v.dim() > 0 else v) for k, v in inputs.items()}
    a = tr._compute_loss(tr.model, inputs)
    b = tr._compute_loss(tr.model, shuffled)
    assert torch.allclose(a, b, atol=1e-6)
    assert 1.0 <= tr._metrics["train"]["weights/max"][-1] <= 1.7 + 1e-6  # float32 weights


def test_unknown_token_strategy_is_a_user_error(tiny, tmp_path):
    from posttrain.errors import UserError

    with pytest.raises(UserError, match="weighting.tokens"):
        _trainer(tiny, tmp_path, [{"name": "nope"}])
    # TRL's own 80/20 mask now composes with token strategies (tests/test_trainer_trl_features.py checks the loss)
    assert _trainer(tiny, tmp_path, NEUTRAL, top_entropy_quantile=0.2).top_entropy_quantile == 0.2


def test_prefill_is_continued_not_closed(tiny, tmp_path):
    tr = _trainer(tiny, tmp_path)
    prompt = [{"role": "user", "content": "What is 2+3?"}, {"role": "assistant", "content": "2 + 3 = "}]
    ids, _, _ = tr._tokenize_prompts([prompt])
    text = tr.processing_class.decode(ids[0])
    assert text.endswith("<|im_start|>assistant\n2 + 3 = ")
    assert text.count("<|im_start|>assistant") == 1

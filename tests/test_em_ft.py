"""EM-FT (arXiv 2505.15134) as the ``em_ft`` token strategy: the loss is the token-mean entropy of the sampled
completions with its gradient, no policy-gradient term, and zero-advantage batches are not skipped."""
import copy

import pytest
import torch
from trl import GRPOConfig

from posttrain.data import arithmetic_problems
from posttrain.models import load_tiny_model
from posttrain.recipes.schema import StrategySpec, WeightingSection
from posttrain.trainers import PosttrainGRPOTrainer
from posttrain.weighting.protocol import StrategyError, build_strategy
from posttrain.weighting.tokens import TokenBatch, em_ft_token_loss

B, T = 4, 5


def _constant(completions, **kw):
    return [1.0] * len(completions)  # every group equal: TRL's advantages are all 0


@pytest.fixture(scope="module")
def tiny():
    torch.set_num_threads(1)
    return load_tiny_model()


def _trainer(tiny, tmp_path, keep=False, **cfg):
    model, tok = tiny
    args = GRPOConfig(output_dir=str(tmp_path), per_device_train_batch_size=B, num_generations=2,
                      max_completion_length=T, use_cpu=True, bf16=False, report_to="none",
                      gradient_checkpointing=False, learning_rate=1e-2, loss_type="dapo", beta=0.0,
                      **{"max_steps": 1, **cfg})
    weighting = WeightingSection(tokens=[StrategySpec(name="em_ft", keep_policy_gradient=keep)])
    return PosttrainGRPOTrainer(model=copy.deepcopy(model), reward_funcs=[_constant], args=args,
                                train_dataset=arithmetic_problems(8, low=1, high=9), processing_class=tok,
                                weighting=weighting)


def test_em_ft_token_loss_and_hooks_by_hand():
    ents = torch.tensor([[0.5, 2.0, 7.0]], requires_grad=True)
    mask = torch.tensor([[1, 1, 0]])
    loss = em_ft_token_loss(ents, mask, coef=2.0)
    assert loss.tolist() == [[1.0, 4.0, 0.0]]
    loss.sum().backward()
    assert ents.grad.tolist() == [[2.0, 2.0, 0.0]]
    s = build_strategy("token", {"name": "em_ft"})
    batch = TokenBatch(advantages=torch.tensor([3.0]), mask=mask, entropies_grad=ents)
    assert s.token_advantages(batch).tolist() == [[0.0, 0.0, 0.0]]
    kept = build_strategy("token", {"name": "em_ft", "keep_policy_gradient": True})
    assert kept.token_advantages(batch)[0, :2].tolist() == [3.0, 3.0]  # unchanged on valid tokens
    with pytest.raises(StrategyError, match="coef"):
        build_strategy("token", {"name": "em_ft", "coef": 0.0})
    with pytest.raises(ValueError, match="entropies_grad"):
        s.token_loss(TokenBatch(advantages=torch.zeros(1), mask=mask))


def test_em_ft_loss_is_token_mean_entropy_with_gradient(tiny, tmp_path):
    tr = _trainer(tiny, tmp_path)
    tr.current_gradient_accumulation_steps = 1
    tr.model.train()
    g = torch.Generator().manual_seed(0)
    mask = torch.ones(B, T, dtype=torch.long)
    mask[1, 3:] = 0
    inputs = {"prompt_ids": torch.randint(10, 200, (B, 4), generator=g), "prompt_mask": torch.ones(B, 4, dtype=torch.long),
              "completion_ids": torch.randint(10, 200, (B, T), generator=g), "completion_mask": mask,
              "advantages": torch.zeros(B), "num_items_in_batch": mask.sum(), "group_ids": torch.arange(B) // 2}
    assert not tr._carries_no_gradient(inputs)  # zero advantages, yet EM-FT's loss term is not skipped
    loss = tr._compute_loss(tr.model, inputs)
    ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], dim=1)
    logits = tr.model(input_ids=ids).logits[:, 3:-1] / tr.temperature
    p = logits.softmax(-1)
    ent = -(p * logits.log_softmax(-1)).sum(-1)
    want = (ent * mask).sum() / mask.sum()
    assert loss.item() == pytest.approx(want.item(), rel=1e-4)
    loss.backward()
    grads = [q.grad for q in tr.model.parameters() if q.grad is not None]
    assert grads and sum(float(g.abs().sum()) for g in grads) > 0


def test_em_ft_training_moves_parameters(tiny, tmp_path):
    tr = _trainer(tiny, tmp_path, max_steps=3)
    before = [q.detach().clone() for q in tr.model.parameters()]
    tr.train()
    moved = sum(float((q.detach() - b).abs().sum()) for q, b in zip(tr.model.parameters(), before))
    assert moved > 0
    logged = [r for r in tr.state.log_history if "entropy" in r]
    assert logged and all(r.get("zero_advantage/skipped_fraction", 0.0) == 0.0 for r in logged)

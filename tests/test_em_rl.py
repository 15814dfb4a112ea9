"""EM-RL (arXiv 2505.15134) in the GRPO trainer: the reward TRL receives is exactly the negative entropy (token
kind) / the sequence log-prob (traj kind) that selective_logprobs_and_entropy gives for the rollout policy."""
import copy
from pathlib import Path

import pytest
import torch
from trl import GRPOConfig

from posttrain.data import arithmetic_problems
from posttrain.losses import selective_logprobs_and_entropy
from posttrain.models import load_tiny_model
from posttrain.rewards import build_reward
from posttrain.trainers import PosttrainGRPOTrainer

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny():
    torch.set_num_threads(1)
    return load_tiny_model()


def test_neg_entropy_reward_in_trainer_equals_selective_logprobs_and_entropy(tiny, tmp_path):
    model, tok = tiny
    args = GRPOConfig(output_dir=str(tmp_path), per_device_train_batch_size=4, num_generations=2,
                      max_completion_length=5, use_cpu=True, bf16=False, report_to="none", max_steps=1,
                      gradient_checkpointing=False, temperature=0.8)
    rewards = [build_reward("neg_entropy", {"kind": "token"}),
               build_reward("neg_entropy", {"kind": "traj", "name": "em_traj"}),
               build_reward("neg_entropy", {"kind": "token", "normalize_by_length": True, "name": "em_mean"})]
    tr = PosttrainGRPOTrainer(model=copy.deepcopy(model), reward_funcs=rewards, args=args,
                              train_dataset=arithmetic_problems(8, low=1, high=9), processing_class=tok)
    tr.model.train()
    batch = [tr.train_dataset[i] for i in (0, 0, 1, 1)]
    out = tr._generate_and_score_completions(batch)
    got = tr._last_rewards_NK  # [N, K], in rollout order
    ids = torch.cat([out["prompt_ids"], out["completion_ids"]], dim=1)
    att = torch.cat([out["prompt_mask"], out["completion_mask"]], dim=1)
    with torch.no_grad():
        logits = tr.model(input_ids=ids, attention_mask=att).logits[:, :-1] / 0.8
    labels = ids[:, 1:].masked_fill(att[:, 1:] == 0, -100)
    labels[:, : out["prompt_ids"].size(1) - 1] = -100
    logps, ents = selective_logprobs_and_entropy(logits, None, labels)
    mask = (labels != -100).float()
    torch.testing.assert_close(got[:, 0], -(ents * mask).sum(-1), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(got[:, 1], (logps * mask).sum(-1), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(got[:, 2], -(ents * mask).sum(-1) / mask.sum(-1), atol=1e-4, rtol=1e-4)
    assert bool((got[:, 0] < 0).all())
    # TRL normalised these rewards into advantages: the policy gradient is not zero
    assert out["advantages"].abs().sum() > 0


def test_neg_entropy_without_policy_stats_is_one_clear_error():
    fn = build_reward("neg_entropy", {})
    with pytest.raises(ValueError, match="needs 'policy_logps'.*selective_logprobs_and_entropy"):
        fn(completions=["7"])
    assert fn(completions=["7", "8"], policy_logps=[[-1.0, -0.5], torch.tensor([-2.0])]) == [-1.5, -2.0]
    with pytest.raises(ValueError, match="kind must be one of"):
        build_reward("neg_entropy", {"kind": "seq"})


@pytest.mark.parametrize("override, key, says", [
    ("eval.reward=null", "eval.reward", "the evaluation scores with rewards.0 by default"),
    ("eval.reward={name: neg_entropy}", "eval.reward", "not the evaluation"),
    ("advantage={name: remax}", "rewards.0", "not ReMax's greedy baseline"),
    ("weighting.objectives={name: hypervolume}", "rewards.0", "weighting.objectives 'hypervolume'"),
])
def test_neg_entropy_where_no_rollout_policy_exists_is_one_line(override, key, says):
    from posttrain.recipes import RecipeError, load_recipe

    with pytest.raises(RecipeError) as err:
        load_recipe(ROOT / "recipes" / "tiny_grpo_em_rl.yaml", [override])
    msg = str(err.value)
    assert "\n" not in msg and f": {key}: " in msg and says in msg, msg

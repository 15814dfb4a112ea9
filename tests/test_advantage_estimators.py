"""Advantage estimators as strategies in the real GRPO trainer (tiny model): the advantages of a step are the pure
estimator applied to that step's rewards; ReMax's greedy baseline is generated and scored in the step; every
estimator composes with the sequence and objective strategies; bad settings are one-line errors."""
import copy

import pytest
import torch
from trl import GRPOConfig

from posttrain.data import arithmetic_problems
from posttrain.errors import UserError
from posttrain.evaluation import generate_greedy
from posttrain.losses.advantages import (reinforce_pp_advantages, reinforce_pp_baseline_advantages,
                                         remax_advantages, rloo_advantages)
from posttrain.models import load_tiny_model
from posttrain.recipes.schema import StrategySpec, WeightingSection
from posttrain.rewards.base import completion_text
from posttrain.trainers import PosttrainGRPOTrainer
from posttrain.weighting.protocol import StrategyEnv, build_strategy

G = 4


def text_length(completions, **kw):
    return [min(len(completion_text(c)), 40) / 40.0 for c in completions]


def vowel_share(completions, **kw):
    out = []
    for c in completions:
        t = completion_text(c)
        out.append(sum(ch in "aeiou" for ch in t) / max(len(t), 1))
    return out


@pytest.fixture(scope="module")
def tiny(one_torch_thread):
    return load_tiny_model()


def _trainer(tiny, tmp_path, advantage, rewards=(text_length,), weighting=None, **cfg):
    model, tok = tiny
    args = dict(output_dir=str(tmp_path / "trainer"), per_device_train_batch_size=2 * G, num_generations=G,
                max_completion_length=6, use_cpu=True, bf16=False, report_to="none", max_steps=1,
                gradient_checkpointing=False, learning_rate=1e-2, logging_steps=1, save_strategy="no",
                disable_tqdm=True, seed=0, temperature=1.0, beta=0.0, loss_type="dapo")
    args.update(cfg)
    return PosttrainGRPOTrainer(model=copy.deepcopy(model), reward_funcs=list(rewards), args=GRPOConfig(**args),
                                train_dataset=arithmetic_problems(32, low=1, high=9), processing_class=tok,
                                advantage=advantage, weighting=weighting)


def _inputs():
    ds = arithmetic_problems(8, low=1, high=9, seed=3)
    return [dict(ds[i]) for i in range(2) for _ in range(G)]


def _step(tr):
    tr.model.train()
    torch.manual_seed(0)
    out = tr._generate_and_score_completions(_inputs())
    return out, tr._last_rewards_NK[:, 0], out["completion_mask"].float()


@pytest.mark.parametrize("name, expected", [
    ("rloo", lambda r, m: rloo_advantages(r, G)),
    ("reinforce_pp", lambda r, m: reinforce_pp_advantages(r, m)[:, 0]),
    ("reinforce_pp_baseline", lambda r, m: reinforce_pp_baseline_advantages(r, G, m)[:, 0]),
])
def test_the_step_uses_the_estimator_on_its_rewards(tiny, tmp_path, name, expected):
    out, rewards, mask = _step(_trainer(tiny, tmp_path, {"name": name}))
    want = expected(rewards, mask)
    assert want.abs().sum() > 0
    assert torch.allclose(out["advantages"], want.to(out["advantages"].dtype), atol=1e-6)


def test_remax_baseline_is_the_greedy_reply_of_each_prompt_scored_in_the_step(tiny, tmp_path):
    tr = _trainer(tiny, tmp_path, {"name": "remax"})
    # the greedy replies of the two prompts, generated independently, scored by the same reward
    prompts = [r["prompt"] for r in _inputs()[::G]]
    texts, _ = generate_greedy(copy.deepcopy(tr.model), tr.processing_class, prompts, max_new_tokens=6, batch_size=4)
    baseline = torch.tensor(text_length(texts))
    out, rewards, _ = _step(tr)
    assert torch.allclose(out["advantages"], remax_advantages(rewards, baseline, G), atol=1e-6)
    assert tr._metrics["train"]["remax/greedy_seconds"][-1] > 0


@pytest.mark.parametrize("name", ["rloo", "remax", "reinforce_pp", "reinforce_pp_baseline"])
def test_every_estimator_composes_with_sequence_and_objective_strategies(tiny, tmp_path, name):
    weighting = WeightingSection(
        objectives=StrategySpec(name="lagrangian", thresholds=[None, 0.5]),
        sequences=[StrategySpec(name="dra"), StrategySpec(name="seed", answer="text"),
                   StrategySpec(name="loss_reweighting", burn_in_steps=0)])
    tr = _trainer(tiny, tmp_path, {"name": name}, rewards=(text_length, vowel_share), weighting=weighting)
    tr.train()
    row = tr.state.log_history[0]
    for key in ("reward_weights/text_length", "sequence_weighting/dra/mean", "sequence_weighting/seed/scale_mean",
                "sequence_weighting/loss_reweighting/max"):
        assert key in row, key


def test_bad_estimator_settings_are_one_line_errors(tiny, tmp_path):
    with pytest.raises(UserError, match="advantage: rloo: singleton: Input should be 'zero' or 'raw'"):
        _trainer(tiny, tmp_path, {"name": "rloo", "singleton": "none"})
    with pytest.raises(UserError, match="unknown advantage strategy 'ppo'"):
        _trainer(tiny, tmp_path, {"name": "ppo"})
    with pytest.raises(ValueError, match="needs at least 2 sequences per step"):
        build_strategy("advantage", {"name": "reinforce_pp"}, StrategyEnv(generation_batch_size=1))
    with pytest.raises(ValueError, match="rloo needs at least 2 samples per prompt"):
        build_strategy("advantage", {"name": "rloo"}, StrategyEnv(num_generations=1))

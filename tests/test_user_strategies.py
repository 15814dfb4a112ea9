"""A user's own strategy of each GRPO kind, given by import path from a module outside ``posttrain/``, runs through
the same hooks as ours in a real (tiny) training run: its hook is called and what it returns reaches the loss."""
import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from trl import GRPOConfig

from posttrain.data import arithmetic_problems
from posttrain.errors import UserError
from posttrain.models import load_tiny_model
from posttrain.recipes import RecipeError, load_recipe
from posttrain.recipes.schema import StrategySpec, WeightingSection
from posttrain.rewards.base import completion_text
from posttrain.trainers import PosttrainGRPOTrainer
from tests.user_strategies import grpo_kinds

ROOT = Path(__file__).resolve().parents[1]
G = 4
USER = "tests.user_strategies.grpo_kinds"


def text_length(completions, **kw):
    return [min(len(completion_text(c)), 40) / 40.0 for c in completions]


def always_high(completions, **kw):
    return [0.9] * len(completions)


@pytest.fixture(scope="module")
def tiny(one_torch_thread):
    return load_tiny_model()


def _trainer(tiny, tmp_path, rewards=(text_length,), *, objectives=None, sequences=(), tokens=(), advantage=None,
             **cfg):
    model, tok = tiny
    args = dict(output_dir=str(tmp_path / "trainer"), per_device_train_batch_size=2 * G, num_generations=G,
                max_completion_length=6, use_cpu=True, bf16=False, report_to="none", max_steps=2,
                gradient_checkpointing=False, learning_rate=1e-2, logging_steps=1, save_strategy="no",
                disable_tqdm=True, seed=0, temperature=1.0, beta=0.0, loss_type="dapo")
    args.update(cfg)
    weighting = WeightingSection(objectives=StrategySpec(**objectives) if objectives else None,
                                 sequences=[StrategySpec(**s) for s in sequences],
                                 tokens=[StrategySpec(**s) for s in tokens])
    return PosttrainGRPOTrainer(model=copy.deepcopy(model), reward_funcs=list(rewards), args=GRPOConfig(**args),
                                train_dataset=arithmetic_problems(32, low=1, high=9), processing_class=tok,
                                weighting=weighting, advantage=advantage)


def _params(trainer):
    return [p.detach().clone() for p in trainer.model.parameters()]


def _moved(before, trainer) -> float:
    return max(float((a - b.detach()).abs().max()) for a, b in zip(before, trainer.model.parameters()))


def _logged(trainer, key):
    return [row[key] for row in trainer.state.log_history if key in row]


@pytest.mark.parametrize("kind, kwargs, cls", [
    ("advantage", {"advantage": {"name": f"{USER}:ZeroAdvantages"}}, grpo_kinds.ZeroAdvantages),
    ("sequence", {"sequences": [{"name": f"{USER}:ScaleAdvantages", "factor": 0.0}]}, grpo_kinds.ScaleAdvantages),
    ("token", {"tokens": [{"name": f"{USER}:ZeroTokenWeights"}]}, grpo_kinds.ZeroTokenWeights),
])
def test_a_user_strategy_that_zeroes_the_signal_freezes_the_policy(tiny, tmp_path, kind, kwargs, cls):
    """Zero advantages / zero token weights reach the loss: no parameter moves, while the same run without the
    strategy does move them (so the check can fail)."""
    cls.calls = 0
    tr = _trainer(tiny, tmp_path / kind, **kwargs)
    before = _params(tr)
    tr.train()
    assert cls.calls >= 2  # called in every step
    assert _moved(before, tr) == 0.0
    plain = _trainer(tiny, tmp_path / f"{kind}-plain")
    before = _params(plain)
    plain.train()
    assert _moved(before, plain) > 0.0


def test_a_user_sequence_strategy_scales_the_advantages_it_is_given(tiny, tmp_path):
    grpo_kinds.ScaleAdvantages.calls = 0
    tr = _trainer(tiny, tmp_path, sequences=[{"name": f"{USER}:ScaleAdvantages", "factor": 0.5}], max_steps=1)
    tr.model.train()
    torch.manual_seed(0)
    ds = arithmetic_problems(8, low=1, high=9, seed=3, prefill=False)
    inputs = [dict(ds[i]) for i in range(2) for _ in range(G)]
    scaled = tr._generate_and_score_completions(inputs)["advantages"]
    plain = _trainer(tiny, tmp_path / "plain", max_steps=1)
    plain.model.train()
    torch.manual_seed(0)
    ref = plain._generate_and_score_completions(inputs)["advantages"]
    assert ref.abs().sum() > 0
    assert torch.allclose(scaled, 0.5 * ref)
    assert grpo_kinds.ScaleAdvantages.calls == 1
    assert tr._metrics["train"]["user/scale"] == [0.5]


def test_a_user_objective_strategy_sets_the_mix(tiny, tmp_path):
    grpo_kinds.SecondRewardOnly.calls = 0
    tr = _trainer(tiny, tmp_path, rewards=(text_length, always_high),
                  objectives={"name": f"{USER}:SecondRewardOnly"})
    tr.train()
    assert grpo_kinds.SecondRewardOnly.calls == 2
    # TRL logs the mixed reward with the weights in use: all weight on the constant 0.9 reward
    assert _logged(tr, "reward") == [pytest.approx(0.9)] * 2
    assert tr.reward_weights.tolist() == [0.0, 1.0]


def test_a_user_strategy_that_raises_stops_the_run_with_a_checkpoint(tmp_path):
    out = tmp_path / "run"
    res = subprocess.run(
        [sys.executable, "-m", "posttrain", "run", "recipes/tiny_grpo.yaml", f"output.dir={out}", "model.threads=1",
         "train.max_steps=3", "output.save_model=false", "output.plots=false",
         f"weighting.sequences=[{{name: '{USER}:Exploding'}}]"],
        capture_output=True, text=True, timeout=600, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == 3, res.stderr[-2000:]
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("posttrain: stopped:") and "Exploding" in last and "adjust_advantages" in last, last
    assert "boom from a user strategy" in last
    summary = json.loads((out / "summary.json").read_text())
    assert summary["checkpoint"] and Path(summary["checkpoint"]).is_dir()


@pytest.mark.parametrize("section", ["weighting.sequences=[{name: '%s'}]", "weighting.objectives={name: '%s'}",
                                     "advantage={name: '%s'}", "weighting.tokens=[{name: '%s'}]"])
def test_a_user_strategy_without_a_hook_of_its_kind_is_refused_at_validate_time(section):
    with pytest.raises(RecipeError) as err:
        load_recipe(ROOT / "recipes" / "tiny_grpo.yaml", [section % f"{USER}:DoesNothing"])
    msg = str(err.value)
    assert "implements none of the hooks" in msg and "\n" not in msg, msg


def test_a_user_token_strategy_that_raises_on_the_dry_run_is_one_line_at_validate_time():
    with pytest.raises(RecipeError) as err:
        load_recipe(ROOT / "recipes" / "tiny_grpo.yaml", [f"weighting.tokens=[{{name: '{USER}:ExplodesAlways'}}]"])
    msg = str(err.value)
    assert "weighting.tokens: a strategy 'ExplodesAlways' failed on the validate-time synthetic batch" in msg, msg
    assert "RuntimeError: boom in token_weights" in msg and "\n" not in msg, msg


def test_a_user_strategy_of_the_wrong_kind_is_refused(tiny, tmp_path):
    with pytest.raises(UserError, match="implements estimate, which the trainer never calls on a sequence"):
        _trainer(tiny, tmp_path, sequences=[{"name": f"{USER}:ZeroAdvantages"}])
    with pytest.raises(RecipeError, match="unknown argument"):
        load_recipe(ROOT / "recipes" / "tiny_grpo.yaml",
                    [f"weighting.sequences=[{{name: '{USER}:ScaleAdvantages', factr: 2}}]"])


def test_posttrain_strategies_lists_every_kind_with_descriptions(capsys):
    from posttrain.cli import main

    assert main(["strategies"]) == 0
    out = capsys.readouterr().out
    for kind in ("objective", "sequence", "advantage", "token", "pair"):
        assert f"{kind} strategies" in out
    for name in ("steer", "tw_grpo", "dra", "seed", "loss_reweighting", "lagrangian", "hypervolume", "rloo", "remax",
                 "reinforce_pp", "madpo", "beta_dpo"):
        assert f"  {name} " in out, name
    assert main(["strategies", "--args"]) == 0
    assert "w_min: float = 0.8" in capsys.readouterr().out

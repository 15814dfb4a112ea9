"""DAPO dynamic sampling: the keep rule by hand, and in the real GRPO trainer (tiny model): zero-variance groups are
replaced by fresh prompts, the batch keeps its size, the cap is a warning with the kept fraction (never a hang),
the refill generator is checkpointed; a micro-batch whose advantages are all zero skips the policy's forward and
backward and gives exactly the gradient (zero) of the full computation."""
import copy
import logging

import pytest
import torch
from trl import GRPOConfig

from posttrain.data import arithmetic_problems
from posttrain.errors import UserError
from posttrain.models import load_tiny_model
from posttrain.rewards.base import completion_text
from posttrain.trainers import PosttrainGRPOTrainer
from posttrain.weighting.dynamic_sampling import informative_groups

G = 4


# ------------------------------------------------------------------------------------------------- the keep rule
def test_informative_groups_by_hand():
    v = torch.tensor([1.0, 0.0, 0.0, 0.0,    # mixed: keep
                      1.0, 1.0, 1.0, 1.0,    # all correct: drop
                      0.1, 0.1, 0.1, 0.1,    # all equal, not exactly representable sums: drop
                      0.3, float("nan"), 0.3, 0.2,   # NaN left out, still varies: keep
                      float("nan")] * 1 + [float("nan")] * 3 +   # nothing finite: drop
                     [5.0] + [float("nan")] * 3)                  # one finite value (a singleton): keep (verl)
    assert informative_groups(v, G).tolist() == [True, False, False, True, False, True]
    assert informative_groups(v, G, rule="range", bounds=(0.0, 1.0)).tolist() == [True, False, True, True, False,
                                                                                  False]


def test_informative_groups_rejects_bad_input():
    with pytest.raises(ValueError, match="multiple of group_size"):
        informative_groups(torch.zeros(5), 4)
    with pytest.raises(ValueError, match="infinite"):
        informative_groups(torch.tensor([0.0, float("inf")]), 2)
    with pytest.raises(ValueError, match="rule must be one of"):
        informative_groups(torch.zeros(4), 2, rule="var")


# ------------------------------------------------------------------------------------------------- in the trainer
def varies_for_even_answers(completions, answer, **kw):
    """Constant 0.5 for odd answers (zero-variance groups), the completion length for even ones (informative)."""
    return [0.5 if int(a) % 2 else min(len(completion_text(c)), 40) / 40.0 for c, a in zip(completions, answer)]


def constant(completions, **kw):
    return [0.5] * len(completions)


@pytest.fixture(scope="module")
def tiny(one_torch_thread):
    return load_tiny_model()


def _trainer(tiny, tmp_path, reward, dynamic_sampling, **cfg):
    model, tok = tiny
    args = dict(output_dir=str(tmp_path / "trainer"), per_device_train_batch_size=2 * G, num_generations=G,
                max_completion_length=6, use_cpu=True, bf16=False, report_to="none", max_steps=2,
                gradient_checkpointing=False, learning_rate=1e-2, logging_steps=1, save_strategy="no",
                disable_tqdm=True, seed=0, temperature=1.0, beta=0.0, loss_type="dapo")
    args.update(cfg)
    return PosttrainGRPOTrainer(model=copy.deepcopy(model), reward_funcs=[reward], args=GRPOConfig(**args),
                                train_dataset=arithmetic_problems(64, low=1, high=9), processing_class=tok,
                                dynamic_sampling=dynamic_sampling)


def _batch(seed=3):
    ds = arithmetic_problems(16, low=1, high=9, seed=seed)
    odd = [dict(r) for r in ds if int(r["answer"]) % 2][:1]
    even = [dict(r) for r in ds if not int(r["answer"]) % 2][:1]
    return [r for r in odd + even for _ in range(G)]  # group 0: zero variance; group 1: informative


def test_zero_variance_groups_are_replaced_by_fresh_prompts(tiny, tmp_path):
    tr = _trainer(tiny, tmp_path, varies_for_even_answers, {"max_rounds": 20, "metric": "reward"})
    tr.model.train()
    torch.manual_seed(0)
    out = tr._generate_and_score_completions(_batch())
    assert out["completion_ids"].size(0) == 2 * G  # the batch keeps its size
    m = tr._metrics["train"]
    assert m["dynamic_sampling/rounds"][-1] >= 2 and m["dynamic_sampling/kept_fraction"][-1] == 1.0
    assert m["dynamic_sampling/zero_variance_groups"][-1] >= 1
    # every kept group varies: no group of the assembled batch has all-zero advantages
    adv = out["advantages"].view(-1, G)
    assert bool((adv.abs().sum(dim=1) > 0).all())
    mask = out["completion_mask"]
    assert int(out["num_items_in_batch"]) == int(mask.sum())


def test_the_cap_warns_with_the_kept_fraction_and_completes_the_batch(tiny, tmp_path, caplog):
    tr = _trainer(tiny, tmp_path, constant, {"max_rounds": 2})
    tr.model.train()
    with caplog.at_level(logging.WARNING, logger="posttrain.trainers"):
        out = tr._generate_and_score_completions(_batch())
    assert out["completion_ids"].size(0) == 2 * G and torch.equal(out["advantages"], torch.zeros(2 * G))
    assert tr._metrics["train"]["dynamic_sampling/rounds"] == [2.0]
    assert tr._metrics["train"]["dynamic_sampling/kept_fraction"] == [0.0]
    assert any("kept" not in r.message and "informative" in r.message for r in caplog.records)


def test_refill_generator_state_round_trips(tiny, tmp_path):
    a = _trainer(tiny, tmp_path / "a", constant, {"max_rounds": 2})
    a._refill_prompts(2)
    state = a.posttrain_state()
    b = _trainer(tiny, tmp_path / "b", constant, {"max_rounds": 2})
    b.load_posttrain_state(state)
    assert [r["prompt"] for r in a._refill_prompts(3)] == [r["prompt"] for r in b._refill_prompts(3)]


def test_bad_dynamic_sampling_settings_are_user_errors(tiny, tmp_path):
    with pytest.raises(UserError, match="metric: 'acc' is neither 'reward' nor a reward name"):
        _trainer(tiny, tmp_path, constant, {"metric": "acc"})


def test_all_zero_advantages_skip_the_policy_pass_with_the_same_gradient(tiny, tmp_path):
    tr = _trainer(tiny, tmp_path, constant, None)
    tr.model.train()
    out = tr._generate_and_score_completions(_batch())
    assert torch.equal(out["advantages"], torch.zeros(2 * G))
    calls = []
    orig = tr._get_per_token_logps_and_entropies
    tr._get_per_token_logps_and_entropies = lambda *a, **k: calls.append(1) or orig(*a, **k)
    tr.current_gradient_accumulation_steps = 1
    loss = tr._compute_loss(tr.model, out)
    assert calls == [] and float(loss.detach()) == 0.0  # no policy forward
    loss.backward()
    assert all(p.grad is None or float(p.grad.abs().max()) == 0.0 for p in tr.model.parameters())
    assert tr._metrics["train"]["zero_advantage/skipped_fraction"] == [1.0]
    # the full computation gives the same (zero) gradient
    tr.model.zero_grad()
    from trl import GRPOTrainer

    GRPOTrainer._compute_loss(tr, tr.model, out).backward()
    assert calls == [1]
    assert all(p.grad is None or float(p.grad.abs().max()) == 0.0 for p in tr.model.parameters())

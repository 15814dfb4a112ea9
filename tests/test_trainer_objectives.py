"""Objective and sequence reweighting inside the real GRPO trainer (tiny model, real TRL step, real rewards):
weights are logged and move the documented way, fixed weights reproduce TRL's reward_weights, strategy state
survives a checkpoint round trip, and DRA / SEED / loss-based weights change the advantages as specified."""
import copy
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from trl import GRPOConfig, GRPOTrainer

from posttrain.data import arithmetic_problems
from posttrain.errors import UserError
from posttrain.losses import group_advantages
from posttrain.models import load_tiny_model
from posttrain.recipes import load_recipe
from posttrain.recipes.loader import RecipeError
from posttrain.recipes.schema import StrategySpec, WeightingSection
from posttrain.rewards.base import completion_text
from posttrain.trainers import PosttrainGRPOTrainer
from posttrain.trainers import grpo_services as services
from posttrain.weighting.sequences import dra_weights, loss_sample_weights

ROOT = Path(__file__).resolve().parents[1]
G = 4


# ----------------------------------------------------------------------------------------------- reward functions
def text_length(completions, **kw):
    return [min(len(completion_text(c)), 40) / 40.0 for c in completions]


def vowel_share(completions, **kw):
    out = []
    for c in completions:
        t = completion_text(c)
        out.append(sum(ch in "aeiou" for ch in t) / max(len(t), 1))
    return out


def always_low(completions, **kw):
    return [0.1] * len(completions)


def always_high(completions, **kw):
    return [0.9] * len(completions)


@pytest.fixture(scope="module")
def tiny(one_torch_thread):
    return load_tiny_model()


def _args(tmp_path, **cfg):
    base = dict(output_dir=str(tmp_path / "trainer"), per_device_train_batch_size=2 * G, num_generations=G,
                max_completion_length=6, use_cpu=True, bf16=False, report_to="none", max_steps=3,
                gradient_checkpointing=False, learning_rate=1e-2, logging_steps=1, save_strategy="no",
                disable_tqdm=True, seed=0, temperature=1.0, beta=0.0, loss_type="dapo")
    base.update(cfg)
    return GRPOConfig(**base)


def _trainer(tiny, tmp_path, rewards, objectives=None, sequences=(), eval_ds=None, **cfg):
    model, tok = tiny
    weighting = WeightingSection(objectives=StrategySpec(**objectives) if objectives else None,
                                 sequences=[StrategySpec(**s) for s in sequences])
    return PosttrainGRPOTrainer(model=copy.deepcopy(model), reward_funcs=list(rewards), args=_args(tmp_path, **cfg),
                                train_dataset=arithmetic_problems(32, low=1, high=9), processing_class=tok,
                                weighting=weighting, objective_eval_dataset=eval_ds)


def _logged(trainer, key):
    return [row[key] for row in trainer.state.log_history if key in row]


def _mix(trainer, rewards_NK, texts=None):
    """The rollout side up to TRL's mix: the objective strategies' ``mix_weights`` on these rewards."""
    trainer._local_texts = list(texts) if texts is not None else ["x"] * rewards_NK.size(0)
    return trainer._mix(rewards_NK)


def _advantages(trainer, out, rewards_NK, texts=None):
    """The rollout side after TRL: ``reshape_rewards`` -> estimator -> ``adjust_advantages`` on ``out``."""
    return trainer._rollout_hooks(_mix(trainer, rewards_NK, texts), out)


def _objective(trainer):
    return trainer._rollout_strategies[0]


def _generation_inputs(n_prompts=2):
    # no assistant pre-fill: TRL renders these prompts exactly as our trainer does, so both sample the same tokens
    ds = arithmetic_problems(8, low=1, high=9, seed=3, prefill=False)
    return [dict(ds[i]) for i in range(n_prompts) for _ in range(G)]


# ---------------------------------------------------------------------------------------------- objective weights
def test_lagrangian_raises_violated_and_lowers_satisfied_objectives_in_training(tiny, tmp_path):
    tr = _trainer(tiny, tmp_path, [text_length, always_low, always_high],
                  {"name": "lagrangian", "thresholds": [None, 0.5, 0.5], "init": "zeros", "lr": 1.0})
    tr.train()
    low, high, primary = (_logged(tr, f"reward_weights/{n}") for n in ("always_low", "always_high", "text_length"))
    assert len(low) == 3 == len(high)
    # step 1 uses the initial multipliers (sigmoid(0) = 0.5 each -> weights [0.5, 0.25, 0.25])
    assert low[0] == pytest.approx(0.25) and high[0] == pytest.approx(0.25) and primary[0] == pytest.approx(0.5)
    assert low[0] < low[1] < low[2]       # J = 0.1 < 0.5: the violated constraint gains weight
    assert high[0] > high[1] > high[2]    # J = 0.9 > 0.5: the satisfied one loses weight
    assert all(abs(a + b + c - 1) < 1e-9 for a, b, c in zip(low, high, primary))
    assert _logged(tr, "rewards/always_low/mean") == pytest.approx([0.1] * 3)


def test_recap_surrogate_favours_the_objective_that_still_improves(tiny, tmp_path):
    tr = _trainer(tiny, tmp_path, [always_low, always_high], {"name": "recap", "window": 1})
    tr.model.train()
    flat, falling = 0.5, [0.2, 0.6]   # objective 1's shortfall 1 - J falls 0.8 -> 0.4: convergence rate 2
    for j in falling:
        rpf = torch.tensor([[flat, j]] * (2 * G))
        _mix(tr, rpf)
    w = tr.reward_weights.tolist()
    # c = (0.8/0.4, 0.5/0.5), i from the 2-value std; lambda = K softmax(s / T) -> objective 1 heavier
    assert w[1] > w[0] and sum(w) == pytest.approx(1.0)
    assert tr._metrics["train"]["reward_weights/always_high"][-1] == pytest.approx(w[1])


@pytest.mark.parametrize("strategy", [None, "fixed"])
def test_fixed_weights_reproduce_trl_reward_weights(tiny, tmp_path, strategy):
    """Our trainer with fixed weights [3, 1] gives exactly TRL's advantages with reward_weights [0.75, 0.25]
    (same sampled completions); TRL's unnormalised [3, 1] agrees up to its 1e-4 std epsilon."""
    rewards = [text_length, vowel_share]
    obj = {"name": "fixed", "weights": [3, 1]} if strategy else None
    ours = _trainer(tiny, tmp_path / "ours", rewards, obj, reward_weights=None if strategy else [0.75, 0.25])
    model, tok = tiny
    outs = {}
    for label, weights in (("simplex", [0.75, 0.25]), ("raw", [3.0, 1.0])):
        trl = GRPOTrainer(model=copy.deepcopy(model), reward_funcs=rewards,
                          args=_args(tmp_path / label, reward_weights=weights),
                          train_dataset=arithmetic_problems(32, low=1, high=9), processing_class=tok)
        trl.model.train()
        torch.manual_seed(0)
        outs[label] = trl._generate_and_score_completions(_generation_inputs())
    ours.model.train()
    torch.manual_seed(0)
    mine = ours._generate_and_score_completions(_generation_inputs())
    assert torch.equal(mine["completion_ids"], outs["simplex"]["completion_ids"])
    assert mine["advantages"].abs().sum() > 0  # the rewards differ within groups: a real comparison
    assert torch.equal(mine["advantages"], outs["simplex"]["advantages"])
    assert torch.allclose(mine["advantages"], outs["raw"]["advantages"], atol=2e-3)
    if strategy:
        assert ours._metrics["train"]["reward_weights/text_length"][-1] == pytest.approx(0.75)


def test_group_advantages_equal_trl_and_trust_without_aux_is_plain_grpo(tiny, tmp_path):
    """The recompute path (used by dra / trust) reproduces TRL's advantages: trust with alpha = 0 adds nothing."""
    rewards = [text_length, vowel_share]
    ours = _trainer(tiny, tmp_path / "ours", rewards, {"name": "trust", "alpha": 0.0})
    model, tok = tiny
    trl = GRPOTrainer(model=copy.deepcopy(model), reward_funcs=rewards, args=_args(tmp_path / "trl",
                      reward_weights=[1.0, 0.0]), train_dataset=arithmetic_problems(32, low=1, high=9),
                      processing_class=tok)
    trl.model.train()
    ours.model.train()
    torch.manual_seed(1)
    ref = trl._generate_and_score_completions(_generation_inputs())
    torch.manual_seed(1)
    mine = ours._generate_and_score_completions(_generation_inputs())
    assert ref["advantages"].abs().sum() > 0
    assert torch.allclose(mine["advantages"], ref["advantages"], atol=1e-6)


def test_trust_adds_the_discounted_auxiliary_reward_per_group(tiny, tmp_path):
    tr = _trainer(tiny, tmp_path, [always_low, always_high], {"name": "trust", "alpha": 0.3, "T": 500.0})
    tr.model.train()
    # group 0: mixed outcomes, aux higher for the correct rollouts (trusted); group 1: saturated (all wrong)
    rpf = torch.tensor([[1.0, 0.9], [1.0, 0.7], [0.0, 0.1], [0.0, 0.3],
                        [0.0, 0.9], [0.0, 0.2], [0.0, 0.5], [0.0, 0.1]])
    out = {"completion_ids": torch.zeros(8, 2, dtype=torch.long), "advantages": torch.zeros(8)}
    adv = _advantages(tr, out, rpf)
    d = 0.3  # alpha * exp(-0 / T), trusted
    r0 = torch.tensor([1.0, 1.0, 0.0, 0.0]) + d * torch.tensor([0.9, 0.7, 0.0, 0.3 * 0.0])  # a < 0.2 gates t to 0
    expected = group_advantages(torch.cat([r0, torch.zeros(4)]), G)
    assert torch.allclose(adv, expected, atol=1e-6)
    assert adv[0] > adv[1] > 0 and torch.all(adv[4:] == 0)  # the aux reward ranks the two correct rollouts


# ------------------------------------------------------------------------------------- gradient (DRW method (b))
def test_gradient_objective_gradient_equals_trls_loss_gradient(tiny, tmp_path):
    """Row k of the per-objective gradients is the gradient of TRL's own GRPO loss (its ``_compute_loss``) on the
    same completions with reward k's group advantages: the Gram matrix sees exactly the policy gradient TRL
    would apply for that objective alone."""
    from trl import GRPOTrainer as TRLGRPO

    rewards = [text_length, vowel_share]
    tr = _trainer(tiny, tmp_path, rewards, {"name": "fixed"})
    tr.model.train()
    tr.current_gradient_accumulation_steps = 1
    torch.manual_seed(0)
    out = tr._generate_and_score_completions(_generation_inputs())
    params = [p for p in tr.model.parameters() if p.requires_grad]
    n = out["completion_ids"].size(0)
    adv_KN = torch.stack([group_advantages(tr._last_rewards_NK[:, k].float(), G) for k in range(2)])
    grads = services.policy_gradients(tr, out, adv_KN, params, slice(0, n))
    assert grads.shape == (2, sum(p.numel() for p in params))
    for k in range(2):
        adv = group_advantages(tr._last_rewards_NK[:, k].float(), G)
        assert adv.abs().sum() > 0  # a real comparison
        inputs = {**out, "advantages": adv}
        loss = TRLGRPO._compute_loss(tr, tr.model, inputs)
        ref = torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params)])
        assert torch.allclose(grads[k], ref, rtol=1e-4, atol=1e-7), (k, (grads[k] - ref).abs().max())


def test_gradient_objective_moves_weight_to_the_objective_with_a_gradient(tiny, tmp_path):
    """A constant reward has zero advantages, hence a zero gradient and score s = 0, while the other objective's
    s = |g|^2 > 0: the exponentiated-gradient step moves weight to it, every step, staying on the simplex."""
    tr = _trainer(tiny, tmp_path, [text_length, always_high], {"name": "gradient", "regularization_factor": 1.0},
                  max_steps=3)
    tr.train()
    w_len, w_const = _logged(tr, "reward_weights/text_length"), _logged(tr, "reward_weights/always_high")
    assert len(w_len) == 3
    assert 0.5 < w_len[0] < w_len[1] < w_len[2] < 1.0
    assert all(abs(a + b - 1.0) < 1e-9 for a, b in zip(w_len, w_const))
    assert _logged(tr, "objective_weighting/gradient_score/always_high") == [0.0] * 3
    assert min(_logged(tr, "objective_weighting/gradient_score/text_length")) > 0
    # state round trip: the weights and the strategy state come back from a checkpoint
    fresh = _trainer(tiny, tmp_path / "b", [text_length, always_high], {"name": "gradient", "regularization_factor": 1.0})
    fresh.load_posttrain_state(tr.posttrain_state())
    assert _objective(fresh).weighting.weights() == _objective(tr).weighting.weights()
    assert fresh.reward_weights.tolist() == tr.reward_weights.tolist()


def test_gradient_identical_objectives_keep_equal_weights_and_parameter_filter(tiny, tmp_path):
    """Two copies of the same reward have identical gradients, so identical scores: weights stay uniform.
    ``parameters`` restricts the Gram matrix to the matching tensors; matching none is a one-line error."""
    def text_length_again(completions, **kw):
        return text_length(completions)

    tr = _trainer(tiny, tmp_path, [text_length, text_length_again],
                  {"name": "gradient", "parameters": r"layers\.1\."}, max_steps=2)
    tr.train()
    selected = tr._gradient_params[r"layers\.1\."]
    assert selected and all(p.requires_grad for p in selected)
    names = {id(p): n for n, p in tr.model.named_parameters()}
    assert all("layers.1." in names[id(p)] for p in selected)
    assert len(selected) < len([p for p in tr.model.parameters() if p.requires_grad])
    assert _logged(tr, "reward_weights/text_length") == [pytest.approx(0.5)] * 2
    with pytest.raises(UserError, match="no trainable parameter matches"):
        _trainer(tiny, tmp_path / "none", [text_length], {"name": "gradient", "parameters": "no_such_layer"})


# ------------------------------------------------------------------------------------------ hypervolume (held out)
def test_hypervolume_evaluates_each_objective_and_scales_advantages(tiny, tmp_path):
    eval_ds = arithmetic_problems(6, low=1, high=9, split="heldout")
    tr = _trainer(tiny, tmp_path, [always_low, always_high],
                  {"name": "hypervolume", "eval_every": 1, "eval_prompts": 4}, eval_ds=eval_ds, max_steps=2)
    tr.train()
    assert _logged(tr, "objective_eval_reference/always_low") == [pytest.approx(0.1)]
    assert _logged(tr, "objective_eval/always_high") == [pytest.approx(0.9)] * 2
    # constant performance = the reference: no hypervolume gain -> m = 0.5 from step 2 on
    assert _logged(tr, "objective_weighting/meta_reward") == [1.0, 0.5]
    assert _objective(tr).weighting.meta_reward() == 0.5
    out = {"completion_ids": torch.zeros(4, 2, dtype=torch.long), "advantages": torch.tensor([1.0, -1.0, 2.0, 0.0])}
    tr.model.train()
    adv = tr._rollout_hooks(_mix(tr, torch.zeros(4, 2)), out)
    assert torch.equal(adv, torch.tensor([0.5, -0.5, 1.0, 0.0]))


# ------------------------------------------------------------------------------------------------- state round trip
@pytest.mark.parametrize("objectives", [
    {"name": "lagrangian", "thresholds": [None, 0.5], "lr": 0.5},
    {"name": "recap", "window": 1},
])
def test_strategy_state_round_trip_through_a_checkpoint(tiny, tmp_path, objectives):
    seqs = [{"name": "loss_reweighting", "burn_in_steps": 3}]
    a = _trainer(tiny, tmp_path / "a", [text_length, vowel_share], objectives, seqs)
    g = torch.Generator().manual_seed(0)
    batches = [torch.rand(2 * G, 2, generator=g) for _ in range(4)]
    a.model.train()
    for rpf in batches[:3]:
        _mix(a, rpf)
    a._rollout_strategies[1].num_steps = 2
    buf = io.BytesIO()
    torch.save(a.posttrain_state(), buf)  # as CheckpointStateMixin writes it
    buf.seek(0)
    state = torch.load(buf, map_location="cpu", weights_only=True)

    b = _trainer(tiny, tmp_path / "b", [text_length, vowel_share], objectives, seqs)
    fresh = _trainer(tiny, tmp_path / "c", [text_length, vowel_share], objectives, seqs)
    b.load_posttrain_state(state)
    assert b.reward_weights.tolist() == a.reward_weights.tolist()
    assert _objective(b).state_dict() == _objective(a).state_dict()
    assert b._rollout_strategies[1].num_steps == 2
    for tr in (a, b, fresh):
        tr.model.train()
        _mix(tr, batches[3])
    assert b.reward_weights.tolist() == a.reward_weights.tolist()
    assert json.dumps(_objective(b).state_dict()) == json.dumps(_objective(a).state_dict())
    assert fresh.reward_weights.tolist() != a.reward_weights.tolist()  # without the state: different weights


# ------------------------------------------------------------------------------------------- sequence strategies
def _hand_batch(n, advantages):
    return {"completion_ids": torch.zeros(n, 3, dtype=torch.long), "completion_mask": torch.ones(n, 3),
            "prompt_ids": torch.zeros(n, 2, dtype=torch.long), "prompt_mask": torch.ones(n, 2),
            "advantages": torch.tensor(advantages, dtype=torch.float32)}


def test_seed_scales_only_the_group_with_diverse_answers(tiny, tmp_path):
    tr = _trainer(tiny, tmp_path, [text_length], sequences=[{"name": "seed", "alpha": 0.5}])
    texts = ["5", "5", " 5 ", "5.", "1", "2", "3", "it is 4"]  # group 0: one answer; group 1: four answers
    adv = [0.5, -0.5, 1.0, -1.0, 1.5, -1.5, 0.5, -0.5]
    tr.model.train()
    out = {"advantages": _advantages(tr, _hand_batch(8, adv), torch.zeros(8, 1), texts)}
    # SE = 0 -> f = 1; SE = log 4 = SE_max -> f(alpha * 1) = 1 - 0.5 (linear)
    expected = torch.tensor(adv[:4] + [0.5 * a for a in adv[4:]])
    assert torch.allclose(out["advantages"], expected, atol=1e-6)


def test_dra_discounts_redundant_completions_before_group_normalisation(tiny, tmp_path):
    from posttrain.rewards.similarity import encode_texts

    tr = _trainer(tiny, tmp_path, [always_low], sequences=[{"name": "dra"}])
    texts = ["the cat sat on the mat", "the cat sat on the mat", "a cat sat on a mat",
             "quarterly tax filing deadlines", "7", "8", "9", "10"]
    rpf = torch.tensor([[1.0], [1.0], [1.0], [1.0], [1.0], [0.0], [0.0], [0.0]])
    tr.model.train()
    out = {"advantages": _advantages(tr, _hand_batch(8, [0.0] * 8), rpf, texts)}
    w = dra_weights(torch.from_numpy(encode_texts(texts)), torch.arange(8) // G)
    expected = group_advantages(rpf[:, 0] * tr.reward_weights[0] * w, G)
    assert torch.allclose(out["advantages"], expected, atol=1e-5)
    # same reward 1 in group 0, but the distinct completion gets the largest advantage, the duplicates the least
    a = out["advantages"]
    assert a[3] > a[2] > a[0] and a[0] == pytest.approx(a[1].item(), abs=1e-6)
    # without DRA all four would have advantage 0 (equal rewards)
    assert torch.equal(group_advantages(rpf[:, 0], G)[:4], torch.zeros(4))


def test_loss_reweighting_after_burn_in_upweights_high_loss_completions(tiny, tmp_path):
    tr = _trainer(tiny, tmp_path, [text_length], sequences=[{"name": "loss_reweighting", "burn_in_steps": 1}])
    nll = torch.tensor([0.1, 0.5, 1.0, 2.0, 0.3, 0.3, 0.7, 1.5])
    batch = _hand_batch(8, [1.0] * 8)
    batch["old_per_token_logps"] = -nll[:, None].expand(8, 3).clone()
    tr.model.train()
    burn_in = _advantages(tr, copy.deepcopy(batch), torch.zeros(8, 1))
    assert torch.equal(burn_in, torch.ones(8))  # global_step 0 < burn_in_steps: uniform
    tr.state.global_step = 1
    adv = _advantages(tr, copy.deepcopy(batch), torch.zeros(8, 1))
    expected = 8 * loss_sample_weights(nll)
    assert torch.allclose(adv, expected, atol=1e-5)
    assert adv.mean().item() == pytest.approx(1.0, abs=1e-5)
    assert adv[0] < adv[1] < adv[2] < adv[3] and adv[3] == pytest.approx(adv[7].item())  # linupper: flat above mid-range


def test_sequence_strategies_in_a_real_training_step(tiny, tmp_path):
    tr = _trainer(tiny, tmp_path, [text_length, vowel_share], {"name": "fixed"},
                  [{"name": "dra"}, {"name": "seed", "answer": "text"}, {"name": "loss_reweighting",
                                                                          "burn_in_steps": 0}], max_steps=1)
    tr.train()
    for key in ("sequence_weighting/dra/mean", "sequence_weighting/seed/scale_mean",
                "sequence_weighting/loss_reweighting/max", "reward_weights/text_length"):
        assert len(_logged(tr, key)) == 1, key
    assert 0.0 < _logged(tr, "sequence_weighting/dra/mean")[0] <= 1.0 + 1e-6


# ---------------------------------------------------------------------------------------------------- validation
@pytest.mark.parametrize("override, fragment", [
    ("weighting.objectives={name: gradient, parameters: 'lora_(A'}", "weighting.objectives: gradient: parameters is not a valid"),
    ("weighting.objectives={name: gradient, initial_weights: [1, 1]}", "weighting.objectives: gradient: initial_weights has 2 entries but num_objectives=1"),
    ("weighting.objectives={name: lagrangian}", "weighting.objectives: lagrangian: 'thresholds' is required"),
    ("weighting.objectives={name: lagrangian, thresholds: [0.5, 0.5]}", "weighting.objectives: lagrangian: configured for 2"),
    ("weighting.objectives={name: trust}", "weighting.objectives: trust needs exactly 2 rewards"),
    ("weighting.objectives={name: hypervolume, eval_prompts: 0}", "weighting.objectives: hypervolume: eval_prompts"),
    ("weighting.objectives={name: fixed, lagrangian: {thresholds: [1]}, hypervolume: {foo: 1}}",
     "weighting.objectives: hypervolume (argument block): hypervolume: unknown argument 'foo'"),
    ("weighting.sequences=[{name: dra, scope: device}]", "weighting.sequences.0: dra: scope: Input should be 'group' or "
     "'process'"),
    ("weighting.sequences=[{name: seed, form: cubic}]", "weighting.sequences.0: seed: form: Input should be 'linear'"),
    ("weighting.sequences=[{name: loss_reweighting, temperature: 0}]", "weighting.sequences.0: loss_reweighting"),
    ("weighting.sequences=[{name: seed}, {name: seed}]", "weighting.sequences: seed is listed twice"),
])
def test_bad_weighting_specs_are_one_line_errors_naming_the_key(override, fragment):
    with pytest.raises(RecipeError) as err:
        load_recipe(ROOT / "recipes" / "tiny_grpo.yaml", [override])
    msg = str(err.value)
    assert fragment in msg and "\n" not in msg, msg


def test_argument_blocks_make_strategies_switchable_by_name():
    r = load_recipe(ROOT / "recipes" / "tiny_grpo.yaml",
                    ["weighting.objectives={name: fixed, lagrangian: {thresholds: [0.5]}}",
                     "weighting.objectives.name=lagrangian"])
    assert r.weighting.objectives.name == "lagrangian"


def test_hypervolume_without_held_out_prompts_is_a_user_error(tiny, tmp_path):
    with pytest.raises(UserError, match="hypervolume needs held-out prompts"):
        _trainer(tiny, tmp_path, [text_length], {"name": "hypervolume"})


# ------------------------------------------------------------------------------------------------- end to end (CLI)
@pytest.mark.slow
def test_tiny_multiobjective_recipe_runs_with_lagrangian(tmp_path):
    out = tmp_path / "run"
    res = subprocess.run([sys.executable, "-m", "posttrain", "run", "recipes/tiny_multiobj_arithmetic.yaml",
                          f"output.dir={out}", "model.threads=1", "train.max_steps=2",
                          "weighting.objectives.name=lagrangian", "output.save_model=false"],
                         capture_output=True, text=True, timeout=600, cwd=ROOT,
                         env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr[-3000:]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "reward" in r]
    assert [r["step"] for r in rows] == [1, 2]
    for name in ("correct", "brevity", "format"):
        assert f"reward_weights/{name}" in rows[0] and f"rewards/{name}/mean" in rows[0]
    assert sum(rows[0][f"reward_weights/{n}"] for n in ("correct", "brevity", "format")) == pytest.approx(1.0)
    assert (out / "training_curves.png").stat().st_size > 10_000

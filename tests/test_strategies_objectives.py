"""The objective strategies (posttrain.weighting.objectives.*Strategy) driven through their hooks with hand-built
contexts: hand-computed weights, rewards and advantages per hook, logged keys, config errors (one line), warnings,
state round trips, a user strategy built by import path, and the policy-gradient surrogate the gradient strategy's
trainer service differentiates."""
from __future__ import annotations

import json
import logging
import math
from collections import defaultdict
from pathlib import Path

import pytest
import torch

from posttrain.losses.advantages import group_advantages
from posttrain.losses.policy import policy_gradient_surrogate
from posttrain.weighting.objectives import (
    ConvergenceInstabilityWeights,
    FixedStrategy,
    GradientStrategy,
    HypervolumeStrategy,
    LagrangianStrategy,
    RecapStrategy,
    RecapWeights,
    TrustStrategy,
)
from posttrain.weighting.protocol import (
    RolloutContext,
    StepEndContext,
    StrategyEnv,
    StrategyError,
    build_strategy,
    implemented_hooks,
    registered,
    strategy_warnings,
)

G = 4
NAN = float("nan")


class Log(defaultdict):
    """``ctx.log`` collector: key -> list of logged values."""

    def __init__(self):
        super().__init__(list)

    def __call__(self, key, value):
        self[key].append(value)


def env(names=("a", "b"), weights=None, **kw):
    return StrategyEnv(reward_names=tuple(names), reward_weights=tuple(weights or [1.0] * len(names)),
                       num_generations=G, **kw)


def build(spec, environment=None):
    return build_strategy("objective", spec, environment or env())


def ctx(rewards, log=None, names=("a", "b"), group_size=G, **kw):
    r = torch.as_tensor(rewards, dtype=torch.float32)
    return RolloutContext(rewards_NK=r, reward_names=tuple(names), weights_K=(0.5,) * r.size(1),
                          group_size=group_size, log=log if log is not None else Log(), **kw)


def constant(values, n=2 * G):
    return [list(values)] * n


def json_roundtrip(state):
    return json.loads(json.dumps(state, allow_nan=False))


def sigmoid(x):
    return 1.0 / (1.0 + math.exp(-x))


# ------------------------------------------------------------------------------------------------------- registry
def test_every_objective_strategy_is_registered_with_its_hooks():
    reg = registered("objective")
    assert {"fixed", "lagrangian", "recap", "convergence_instability", "trust", "hypervolume", "gradient"} <= set(reg)
    assert reg["recap"] is reg["convergence_instability"] is RecapStrategy
    assert ConvergenceInstabilityWeights is RecapWeights
    assert implemented_hooks(FixedStrategy) == ("mix_weights",)
    assert implemented_hooks(LagrangianStrategy) == ("mix_weights",)
    assert implemented_hooks(RecapStrategy) == ("mix_weights",)
    assert implemented_hooks(TrustStrategy) == ("mix_weights", "reshape_rewards")
    assert implemented_hooks(GradientStrategy) == ("mix_weights", "reshape_rewards")
    assert implemented_hooks(HypervolumeStrategy) == ("mix_weights", "adjust_advantages", "on_step_end")
    for cls in set(reg.values()):
        for name, field in cls.Config.model_fields.items():
            assert field.description, (cls.name, name)


def test_the_old_import_paths_still_work():
    from posttrain.weighting.objectives.hypervolume import HypervolumeWeights, meta_reward_from_hvc
    from posttrain.weighting.objectives.hypervolume_guided import HypervolumeWeights as OldHV
    from posttrain.weighting.objectives.hypervolume_guided import meta_reward_from_hvc as old_meta

    assert OldHV is HypervolumeWeights and old_meta is meta_reward_from_hvc


# ---------------------------------------------------------------------------------------------------------- fixed
def test_fixed_mixes_the_rewards_weights_normalised_and_logs_them():
    s = build("fixed", env(weights=[3.0, 1.0]))
    log = Log()
    assert s.mix_weights(ctx(constant([0.2, 0.4]), log)) == [0.75, 0.25]
    assert log == {"reward_weights/a": [0.75], "reward_weights/b": [0.25]}
    assert s.weighting.step == 1
    # evaluation batches leave the weights (and the state) alone
    log = Log()
    assert s.mix_weights(ctx(constant([0.2, 0.4]), log, mode="eval")) is None and not log
    assert s.weighting.step == 1
    assert build({"name": "fixed", "weights": [1, 3]}).mix_weights(ctx(constant([0, 0]))) == [0.25, 0.75]


# ----------------------------------------------------------------------------------------------------- lagrangian
def test_lagrangian_mixes_with_the_current_multipliers_then_raises_the_violated_constraint():
    names = ("primary", "low", "high")
    s = build({"name": "lagrangian", "thresholds": [None, 0.5, 0.5], "init": "zeros", "lr": 1.0}, env(names))
    rewards = constant([0.7, 0.1, 0.9])
    log = Log()
    # step 1: sigmoid(0) = 0.5 each -> mix (2 - 1, 0.5, 0.5) / 2
    assert s.mix_weights(ctx(rewards, log, names)) == pytest.approx([0.5, 0.25, 0.25])
    assert log["objective_weighting/lambda/low"] == [0.5] and log["objective_weighting/lambda/high"] == [0.5]
    assert "objective_weighting/lambda/primary" not in log
    # then one SGD step on L = sum lambda (J - theta): grad = 0.25 (J - 0.5) = -0.1 / +0.1 (norm 0.14 < 0.5: no clip)
    lam_low, lam_high = sigmoid(0.1), sigmoid(-0.1)
    w = s.mix_weights(ctx(rewards, log, names))
    assert w == pytest.approx([(2 - lam_low - lam_high) / 2, lam_low / 2, lam_high / 2], rel=1e-6)
    assert w[1] > 0.25 > w[2]  # J = 0.1 < 0.5: the violated constraint gains weight; J = 0.9 > 0.5 loses it
    assert log["reward_weights/low"] == pytest.approx([0.25, lam_low / 2], rel=1e-6)
    assert log["objective_weighting/lambda/low"] == pytest.approx([0.5, lam_low], rel=1e-6)


def test_an_objective_without_a_valid_sample_keeps_the_multipliers_with_a_warning(caplog):
    s = build({"name": "lagrangian", "thresholds": [None, 0.5], "init": "zeros"})
    before = s.state_dict()
    rewards = [[0.3, NAN]] * (2 * G)
    with caplog.at_level(logging.WARNING):
        assert s.mix_weights(ctx(rewards)) == pytest.approx([0.5, 0.5])  # (1 - lambda, lambda), lambda = 0.5
    assert "no valid reward" in caplog.text
    assert s.state_dict() == before  # no multiplier step


# ---------------------------------------------------------------------------------------------------------- recap
def test_recap_updates_before_the_mix_and_favours_the_objective_that_still_improves():
    s = build({"name": "recap", "window": 1})
    log = Log()
    # warm-up (fewer than 2W values): uniform, and this step's value already counts (Algorithm 2)
    assert s.mix_weights(ctx(constant([0.5, 0.2]), log)) == [0.5, 0.5]
    w = s.mix_weights(ctx(constant([0.5, 0.6]), log))
    # shortfalls 1 - J: a (0.5, 0.5) flat; b (0.8, 0.4) falling: c = 0.8 / 0.4 = 2, i = std / (0.4 + 0.8)
    c_b, i_b = 2.0, math.sqrt(2 * 0.2 ** 2) / 1.2
    s_a, s_b = 0.5 * 1.0 + 0.5 * 0.0, 0.5 * c_b + 0.5 * i_b
    e_a, e_b = math.exp(s_a / 5.0), math.exp(s_b / 5.0)
    assert w == pytest.approx([e_a / (e_a + e_b), e_b / (e_a + e_b)], rel=1e-5)
    assert w[1] > w[0]
    assert log["reward_weights/b"] == pytest.approx([0.5, w[1]])
    assert s.weighting.step == 2
    assert build({"name": "convergence_instability", "window": 1}).name == "recap"


# ---------------------------------------------------------------------------------------------------------- trust
TRUST_REWARDS = [[1.0, 0.9], [1.0, 0.7], [0.0, 0.1], [0.0, 0.3],    # mixed outcomes, aux higher when correct
                 [0.0, 0.9], [0.0, 0.2], [0.0, 0.5], [0.0, 0.1]]    # saturated (all wrong)


def test_trust_adds_the_discounted_auxiliary_reward_per_group():
    s = build({"name": "trust", "alpha": 0.3, "T": 500.0})
    log = Log()
    c = ctx(TRUST_REWARDS, log, step=0)
    assert s.mix_weights(c) == pytest.approx([1 / 1.3, 0.3 / 1.3])
    rewards = s.reshape_rewards(c)
    d = 0.3  # alpha * exp(-0 / T), trusted (mean aux of correct 0.8 >= wrong 0): a < 0.2 gates t to 0
    expected = torch.tensor([1.0 + d * 0.9, 1.0 + d * 0.7, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0])
    assert rewards.dtype == torch.float32 and torch.allclose(rewards, expected, atol=1e-7)
    adv = group_advantages(rewards, G)
    assert adv[0] > adv[1] > 0 and torch.all(adv[4:] == 0)  # the aux reward ranks the two correct rollouts
    assert log["objective_weighting/trust/mean_discount"] == [pytest.approx((d + 0.0) / 2)]
    assert log["reward_weights/a"] == [pytest.approx(1 / 1.3)]


def test_trust_anneals_with_the_step_and_handles_missing_scores():
    s = build("trust")
    c = ctx([[1.0, NAN], [1.0, 0.7], [0.0, 0.1], [0.0, 0.3], [NAN, 0.9], [0.0, 0.2], [1.0, 0.5], [0.0, NAN]],
            step=500)
    b = 0.3 * math.exp(-1)
    assert s.mix_weights(c) == pytest.approx([1 / (1 + b), b / (1 + b)])
    r = s.reshape_rewards(c)
    # group 0: missing aux counts 0 -> t = (0, 0.7, 0, 0); trusted, d = b.  group 1: outcome (0, 0, 1, 0) with the
    # missing outcome as 0; t gated to (0, 0, 0.5, 0); trusted; the row whose outcome is missing stays missing
    expected = torch.tensor([1.0, 1.0 + b * 0.7, 0.0, 0.0, NAN, 0.0, 1.0 + b * 0.5, 0.0])
    assert torch.allclose(r, expected, atol=1e-6, equal_nan=True)
    assert s.mix_weights(ctx(TRUST_REWARDS, mode="eval")) is None and s.reshape_rewards(ctx(TRUST_REWARDS,
                                                                                             mode="eval")) is None


# ------------------------------------------------------------------------------------------------------- gradient
def test_gradient_moves_weight_to_the_objective_with_a_gradient_and_mixes_this_steps_reward():
    s = build({"name": "gradient", "regularization_factor": 1.0})
    seen = {}

    def policy_gradients(advantages_KN, parameters=None):
        seen["adv"], seen["parameters"] = advantages_KN, parameters
        return torch.tensor([[1.0, 2.0], [0.0, 0.0]])  # objective b (a constant reward) has no gradient

    rewards = [[1.0, 0.5], [0.0, 0.5], [1.0, 0.5], [1.0, 0.5], [0.0, 0.5], [0.0, 0.5], [NAN, NAN], [1.0, 0.5]]
    log = Log()
    c = ctx(rewards, log, learning_rate=0.1, policy_gradients=policy_gradients)
    assert s.mix_weights(c) == [0.5, 0.5] and not log  # the current weights; logged once updated
    r = s.reshape_rewards(c)
    assert seen["parameters"] is None and c.weights_K == tuple(s.weighting.weights())
    # advantages per objective alone (TRL's formula), [K, N]
    rt = torch.tensor(rewards)
    assert torch.equal(seen["adv"], torch.stack([group_advantages(rt[:, 0], G), group_advantages(rt[:, 1], G)]))
    assert torch.equal(seen["adv"][1], torch.zeros(8))
    # s = Gram row sums = (<g_a, g_a + g_b>, <g_b, g_a + g_b>) = (5, 0); log w += 0.1 * s / 1 -> softmax
    w_a = math.exp(0.5) / (math.exp(0.5) + 1.0)
    assert s.weighting.weights() == pytest.approx([w_a, 1 - w_a])
    assert log["reward_weights/a"] == [pytest.approx(w_a)]
    assert log["objective_weighting/gradient_score/a"] == [5.0] and log["objective_weighting/gradient_score/b"] == [0.0]
    assert log["objective_weighting/gradient_norm/a"] == [pytest.approx(math.sqrt(5))]
    w = torch.tensor([w_a, 1 - w_a], dtype=torch.float32)
    expected = (rt * w).nansum(dim=1)
    expected[6] = NAN  # every objective missing
    assert torch.allclose(r, expected, equal_nan=True)
    # the next step's TRL mix starts from the new weights
    assert s.mix_weights(ctx(rewards)) == pytest.approx([w_a, 1 - w_a])


def test_gradient_with_a_non_finite_gradient_keeps_the_weights(caplog):
    s = build("gradient", env(weights=[3.0, 1.0]))
    c = ctx(constant([1.0, 0.0]), learning_rate=1.0, policy_gradients=lambda adv, parameters=None: torch.tensor([[NAN], [1.0]]))
    with caplog.at_level(logging.WARNING):
        r = s.reshape_rewards(c)
    assert "non-finite per-objective gradient" in caplog.text
    assert s.weighting.weights() == [0.75, 0.25] and s.weighting.step == 0
    assert torch.allclose(r, torch.full((2 * G,), 0.75))


def test_gradient_parameter_pattern_is_exposed_and_checked_against_the_trainable_parameters():
    params = ("model.layers.0.q_proj.lora_A.weight", "model.layers.1.q_proj.lora_A.weight")
    s = build({"name": "gradient", "parameters": r"layers\.1\."}, env(trainable_parameters=params))
    assert s.parameter_pattern == r"layers\.1\."
    assert [p for p in params if s.selects(p)] == [params[1]]
    everything = build("gradient", env(trainable_parameters=params))
    assert everything.parameter_pattern is None and all(everything.selects(p) for p in params)
    with pytest.raises(StrategyError, match=r"^gradient: no trainable parameter matches parameters='nope'$"):
        build({"name": "gradient", "parameters": "nope"}, env(trainable_parameters=params))
    build({"name": "gradient", "parameters": "nope"})  # validate time: the parameters are not known yet


# ---------------------------------------------------------------------------------------------------- hypervolume
class FakeEvaluation:
    """``evaluate_objectives`` service returning the queued performance vectors."""

    def __init__(self, *results):
        self.results, self.calls, self.kwargs = list(results), 0, []

    def __call__(self, num_prompts=32, max_new_tokens=None):
        self.calls += 1
        self.kwargs.append((num_prompts, max_new_tokens))
        return self.results.pop(0)


def test_hypervolume_evaluates_the_reference_then_scales_the_advantages_by_the_meta_reward():
    names = ("low", "high")
    s = build({"name": "hypervolume", "eval_every": 1, "eval_prompts": 4},
              env(names, has_eval_data=True))
    assert s.eval_prompts == 4 and s.eval_max_new_tokens is None
    evaluate = FakeEvaluation([0.1, 0.9], [0.1, 0.9], [0.2, 0.95])
    log = Log()
    c = ctx(constant([0.1, 0.9]), log, names, evaluate_objectives=evaluate)
    assert s.mix_weights(c) == [0.5, 0.5]
    assert log["objective_eval_reference/low"] == [0.1] and log["objective_weighting/meta_reward"] == [1.0]
    assert s.adjust_advantages(ctx(constant([0, 0]), advantages_N=torch.tensor([1.0, -1.0]))).tolist() == [1.0, -1.0]
    # after step 1: the same performance as the reference -> no hypervolume gain -> m = 0.5
    s.on_step_end(StepEndContext(step=1, reward_names=names, evaluate_objectives=evaluate, log=log))
    assert log["objective_eval/high"] == [0.9] and log["objective_weighting/hvc"] == [0.0]
    assert log["objective_weighting/front_hypervolume"] == [0.0]
    assert s.mix_weights(c) == [0.5, 0.5] and log["objective_weighting/meta_reward"] == [1.0, 0.5]
    assert evaluate.calls == 2  # the reference is evaluated once
    assert evaluate.kwargs == [(4, None), (4, None)]  # the strategy's eval_prompts reach the evaluation service
    adv = s.adjust_advantages(ctx(constant([0, 0]), advantages_N=torch.tensor([1.0, -1.0, 2.0, 0.0])))
    assert torch.equal(adv, torch.tensor([0.5, -0.5, 1.0, 0.0]))
    # after step 2: a point better in both objectives: HVC = 0.1 * 0.05 -> m = 0.5 + 1.5 tanh(HVC)
    s.on_step_end(StepEndContext(step=2, reward_names=names, evaluate_objectives=evaluate, log=log))
    hvc = log["objective_weighting/hvc"][-1]
    assert hvc == pytest.approx(0.1 * 0.05)
    assert s.weighting.meta_reward() == pytest.approx(0.5 + 1.5 * math.tanh(0.005))
    assert log["objective_weighting/front_hypervolume"][-1] == pytest.approx(0.005)


def test_hypervolume_apply_to_reward_scales_the_mix_and_evaluates_on_its_cadence():
    s = build({"name": "hypervolume", "apply_to": "reward", "eval_every": 2, "reference": [0.5, 0.5],
               "eval_max_new_tokens": 16}, env(weights=[3.0, 1.0], has_eval_data=True))
    assert s.eval_prompts == 32 and s.eval_max_new_tokens == 16

    def never(**kwargs):
        raise AssertionError("not an evaluation step")

    s.on_step_end(StepEndContext(step=1, evaluate_objectives=never))
    s.on_step_end(StepEndContext(step=2, evaluate_objectives=FakeEvaluation([0.5, 0.5])))  # HVC 0 -> m = 0.5
    log = Log()
    c = ctx(constant([0, 0]), log, evaluate_objectives=never, advantages_N=torch.ones(2 * G))
    assert s.mix_weights(c) == [0.375, 0.125]  # the base weights (0.75, 0.25) times m
    assert log["reward_weights/a"] == [0.75]   # the base weights are logged
    assert s.adjust_advantages(c) is None


# ------------------------------------------------------------------------------------------------- state round trip
def _drive(strategy, steps=3):
    g = torch.Generator().manual_seed(0)
    grads = iter(torch.randn(10, 2, 3, generator=g))
    evaluation = iter([[0.2 + 0.1 * i, 0.3 + 0.05 * i] for i in range(10)])
    for step in range(steps):
        rewards = torch.rand(2 * G, 2, generator=g)
        c = ctx(rewards, step=step, learning_rate=0.01, policy_gradients=lambda adv, parameters=None: next(grads),
                evaluate_objectives=lambda **kw: next(evaluation))
        out = [strategy.mix_weights(c)]
        if "reshape_rewards" in implemented_hooks(strategy):
            out.append(strategy.reshape_rewards(c).tolist())
        if "on_step_end" in implemented_hooks(strategy):
            strategy.on_step_end(StepEndContext(step=step + 1, evaluate_objectives=lambda **kw: next(evaluation)))
    return out


@pytest.mark.parametrize("spec", [
    "fixed",
    {"name": "lagrangian", "thresholds": [None, 0.5], "lr": 0.5},
    {"name": "recap", "window": 1},
    "trust",
    {"name": "hypervolume", "eval_every": 1},
    {"name": "gradient", "regularization_factor": 0.01},
])
def test_state_round_trips_through_json(spec):
    e = env(has_eval_data=True)
    a = build(spec, e)
    _drive(a)
    state = json_roundtrip(a.state_dict())
    assert set(state) == {"objective"}
    b = build(spec, e)
    b.load_state_dict(state)
    assert b.state_dict() == a.state_dict()
    # a checkpoint written before the strategy protocol holds the wrapped object's own state_dict
    c = build(spec, e)
    c.load_state_dict(json_roundtrip(a.state_dict()["objective"]))
    assert c.state_dict() == a.state_dict()
    torch.manual_seed(0)
    assert _drive(b, 1) == _drive(a, 1)


def test_a_state_of_another_strategy_or_config_is_refused():
    a = build({"name": "lagrangian", "thresholds": [None, 0.5]})
    with pytest.raises(ValueError, match="strategy 'fixed'"):
        a.load_state_dict(build("fixed").state_dict())
    with pytest.raises(ValueError, match="different config"):
        a.load_state_dict(build({"name": "lagrangian", "thresholds": [None, 0.6]}).state_dict())


# ------------------------------------------------------------------------------------------------- config errors
@pytest.mark.parametrize("spec, environment, fragment", [
    ({"name": "gradient", "parameters": "lora_(A"}, env(["r"]), "gradient: parameters is not a valid"),
    ({"name": "gradient", "initial_weights": [1, 1]}, env(["r"]),
     "gradient: initial_weights has 2 entries but num_objectives=1"),
    ({"name": "lagrangian"}, env(["r"]), "lagrangian: 'thresholds' is required"),
    ({"name": "lagrangian", "thresholds": [0.5, 0.5]}, env(["r"]),
     "lagrangian: configured for 2 objective(s) but the recipe has 1 reward(s)"),
    ({"name": "recap", "num_objectives": 3}, env(), "recap: configured for 3 objective(s)"),
    ({"name": "fixed", "weights": [1, 1, 1]}, env(), "fixed: configured for 3 objective(s)"),
    ({"name": "trust"}, env(["r"]), "trust needs exactly 2 rewards"),
    ({"name": "trust"}, env(["x", "y", "z"]), "trust needs exactly 2 rewards (outcome, auxiliary), got 3"),
    ({"name": "hypervolume", "eval_prompts": 0}, env(has_eval_data=True), "hypervolume: eval_prompts"),
    ({"name": "hypervolume", "eval_max_new_tokens": 1.5}, env(has_eval_data=True),
     "hypervolume: eval_max_new_tokens"),
    ({"name": "hypervolume"}, env(), "hypervolume needs held-out prompts: set data.eval"),
    ({"name": "hypervolume", "apply_to": "loss"}, env(has_eval_data=True), "hypervolume: apply_to"),
    ({"name": "fixed"}, env(["r", "r"]), "fixed: the rewards need distinct names for per-objective logging"),
    ({"name": "fixed", "weights": [1, -1]}, env(), "fixed: weights must be non-negative"),
    ({"name": "recap", "temperature": 0}, env(), "recap: temperature"),
    ({"name": "lagrangian", "thresholds": [None, None]}, env(), "lagrangian: at most one objective may be primary"),
    ({"name": "lagrangian", "thresholds": [None, 0.5], "kind": "soft"}, env(), "lagrangian: kind"),
    ({"name": "trust", "T": 0}, env(), "trust: T"),
    ({"name": "fixed", "lagrangian": {"thresholds": [1]}}, env(),
     "lagrangian (argument block): lagrangian: configured"),
    ({"name": "fixed", "hypervolume": {"foo": 1}}, env(), "hypervolume (argument block): hypervolume: unknown argument 'foo'"),
])
def test_bad_configs_are_one_line_errors_naming_the_key(spec, environment, fragment):
    with pytest.raises(StrategyError) as err:
        build(spec, environment)
    msg = str(err.value)
    assert fragment in msg and "\n" not in msg, msg


def test_defaults_come_from_the_run():
    e = env(("x", "y"), weights=[1.0, 3.0], has_eval_data=True)
    assert build("fixed", e).weighting.weights() == [0.25, 0.75]
    assert build("hypervolume", e).weighting.weights() == [0.25, 0.75]
    assert build("hypervolume", e).weighting.maximize == [True, True]
    assert build("gradient", e).weighting.weights() == [0.25, 0.75]
    assert build("recap", e).weighting.num_objectives == 2
    for name in ("fixed", "hypervolume", "gradient", "recap", "trust"):
        assert build(name, e).weighting.names == ["x", "y"], name
    assert build({"name": "fixed", "names": ["p", "q"]}, e).weighting.names == ["p", "q"]


def test_settings_that_would_do_nothing_are_warned_about():
    e = env(has_eval_data=True, max_steps=4)
    assert strategy_warnings([build({"name": "recap", "window": 2}, e)]) == []
    assert "outlasts the run" in strategy_warnings([build({"name": "recap", "window": 3}, e)])[0]
    assert "never added" in strategy_warnings([build({"name": "trust", "alpha": 0}, e)])[0]
    assert "never changes" in strategy_warnings([build({"name": "hypervolume", "eval_every": 4}, e)])[0]
    assert "cancels" in strategy_warnings([build({"name": "hypervolume", "apply_to": "reward", "eval_every": 1}, e)])[0]
    assert "never change" in strategy_warnings([build({"name": "gradient", "accumulation_steps": 5}, e)])[0]
    assert "never move" in strategy_warnings([build({"name": "lagrangian", "thresholds": [None, 1], "lr": 0}, e)])[0]
    assert strategy_warnings([build({"name": "lagrangian", "thresholds": [None, 1], "lr": 0, "fixed": True}, e)]) == []


# --------------------------------------------------------------------------------------------------- user strategy
@pytest.fixture()
def user_strategies_on_path(monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parent))


def test_a_user_objective_strategy_runs_by_import_path(user_strategies_on_path):
    s = build({"name": "user_strategies.user_objective:ShortfallWeights", "floor": 0.1})
    log = Log()
    w = s.mix_weights(ctx(constant([0.5, 0.9]), log))
    assert w == pytest.approx([0.6 / 0.8, 0.2 / 0.8])  # (1 - 0.5 + 0.1, 1 - 0.9 + 0.1), normalised
    assert log["reward_weights/a"] == [pytest.approx(0.75)]
    with pytest.raises(StrategyError, match="floor"):
        build({"name": "user_strategies.user_objective:ShortfallWeights", "floor": -1})


@pytest.mark.parametrize("cls, fragment", [
    ("DoesNothing", "implements none of the hooks of its kind (mix_weights, reshape_rewards, adjust_advantages, "
                    "on_step_end); it would do nothing"),
    ("WrongKindHook", "implements token_weights, which the trainer never calls on"),  # only a token hook
])
def test_a_user_class_implementing_no_objective_hook_is_refused(user_strategies_on_path, cls, fragment):
    with pytest.raises(StrategyError) as err:
        build(f"user_strategies.user_objective:{cls}")
    assert fragment in str(err.value) and "\n" not in str(err.value)


# ------------------------------------------------------------------------------------- policy-gradient surrogate
def test_policy_gradient_surrogate_by_hand():
    logps = torch.tensor([[-1.0, -2.0, -3.0], [-0.5, -1.0, 0.0]], requires_grad=True)
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    adv = torch.tensor([2.0, -1.0])
    loss = policy_gradient_surrogate(logps, adv, mask, 3)
    # sequence log-probs (-3, -0.5): -(2 * -3 + -1 * -0.5) / 3 = 5.5 / 3
    assert loss.item() == pytest.approx(5.5 / 3)
    (grad,) = torch.autograd.grad(loss, logps)
    assert torch.allclose(grad, torch.tensor([[-2 / 3, -2 / 3, 0.0], [1 / 3, 0.0, 0.0]]))
    # the normaliser may be a tensor (the all-reduced token count), the advantages another dtype
    loss64 = policy_gradient_surrogate(logps.detach().double(), adv, mask.double(), torch.tensor(3.0))
    assert loss64.dtype == torch.float64 and loss64.item() == pytest.approx(5.5 / 3)

"""The sequence strategies (dra, seed, loss_reweighting) driven through their hooks with hand-built contexts.

No trainer, no model: every service (embeddings, log-probs, all-gather, log) is a lambda, and the expected numbers
are computed by hand from the papers' formulas.
"""
from __future__ import annotations

import io
import json
import math
import pathlib
import subprocess
import sys

import pytest
import torch

from posttrain.losses.advantages import group_advantages
from posttrain.registry import RegistryError
from posttrain.weighting.protocol import (
    RolloutContext,
    StrategyEnv,
    StrategyError,
    build_strategies,
    build_strategy,
    implemented_hooks,
    registered,
    strategy_warnings,
)
from posttrain.weighting.sequences import (
    DiversityRewardAdjustment,
    LossReweighting,
    SemanticEntropyScaling,
    final_answers,
    token_mean_nll,
)

ROOT = pathlib.Path(__file__).resolve().parents[1]
EPS = 1e-6


def _ctx(n, group_size, log=None, **kw):
    """A rollout context over ``n`` rows of one objective; ``log`` collects ``ctx.log`` calls."""
    if log is not None:
        kw["log"] = lambda key, value: log.setdefault(key, []).append(value)
    return RolloutContext(rewards_NK=torch.zeros(n, 1), reward_names=("r",), weights_K=(1.0,),
                          group_size=group_size, **kw)


def _fail(*args):
    raise AssertionError("this service must not be called")


# ---------------------------------------------------------------------------------------------------------- registry
def test_builtin_sequence_strategies_are_registered_with_one_hook_each():
    reg = registered("sequence")
    assert reg["dra"] is DiversityRewardAdjustment
    assert reg["seed"] is SemanticEntropyScaling
    assert reg["loss_reweighting"] is LossReweighting
    assert implemented_hooks(DiversityRewardAdjustment) == ("reshape_rewards",)
    assert implemented_hooks(SemanticEntropyScaling) == ("adjust_advantages",)
    assert implemented_hooks(LossReweighting) == ("adjust_advantages",)
    for cls in (DiversityRewardAdjustment, SemanticEntropyScaling, LossReweighting):
        assert "arXiv" in cls.cite
        for name, field in cls.Config.model_fields.items():
            assert field.description and "arXiv" in field.description, (cls.__name__, name)


# --------------------------------------------------------------------------------------------------------------- DRA
# Two prompts of G = 4. Group 0: rows 0 and 1 identical, row 2 at cosine 0.6 from them and 0.8 from row 3, row 3
# orthogonal to rows 0/1. Group 1: four orthogonal rows. Cross-group cosines: row 0/1 . row 4 = 1, row 3 . row 5 = 1.
EMB = torch.tensor([[1.0, 0, 0, 0], [1.0, 0, 0, 0], [0.6, 0.8, 0, 0], [0, 1.0, 0, 0],
                    [1.0, 0, 0, 0], [0, 1.0, 0, 0], [0, 0, 1.0, 0], [0, 0, 0, 1.0]])
# per-group row sums of S: row 0: 1 + 1 + 0.6 + 0 = 2.6; row 2: 0.6 + 0.6 + 1 + 0.8 = 3.0; row 3: 0.8 + 1 = 1.8
DRA_GROUP = [1 / (2.6 + EPS), 1 / (2.6 + EPS), 1 / (3.0 + EPS), 1 / (1.8 + EPS)] + [1 / (1 + EPS)] * 4


def test_dra_discounts_redundant_completions_before_group_normalisation():
    log = {}
    rewards = torch.tensor([1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0])
    dra = build_strategy("sequence", "dra")
    ctx = _ctx(8, 4, log, rewards_N=rewards, embed_completions=lambda: EMB)
    out = dra.reshape_rewards(ctx)
    expected = rewards * torch.tensor(DRA_GROUP)
    assert out.tolist() == pytest.approx(expected.tolist(), rel=1e-6)
    assert log["sequence_weighting/dra/mean"] == pytest.approx([sum(DRA_GROUP) / 8], rel=1e-6)
    assert log["sequence_weighting/dra/min"] == pytest.approx([1 / (3.0 + EPS)], rel=1e-6)
    # within-group spread: group 0's four factors (population std / mean), group 1's equal factors give 0
    g0 = [1 / 2.6, 1 / 2.6, 1 / 3.0, 1 / 1.8]
    m0 = sum(g0) / 4
    cv0 = math.sqrt(sum((x - m0) ** 2 for x in g0) / 4) / m0
    assert log["sequence_weighting/dra/group_cv"] == pytest.approx([(cv0 + 0.0) / 2], rel=1e-5)
    # same reward 1 in group 0: after the group baseline the distinct completion leads, the most redundant trails
    adv = group_advantages(out, 4)
    assert adv[3] > adv[0] > adv[2] and adv[0] == pytest.approx(adv[1].item(), abs=1e-6)
    assert torch.equal(group_advantages(rewards, 4)[:4], torch.zeros(4))  # without DRA: all 0


def test_dra_group_cv_is_zero_when_every_completion_embeds_alike():
    # 4 identical completions per group: every factor is 1/(4 + eps), a group-uniform scale that std-scaled group
    # advantages cancel -- the logged CV says DRA does not act
    log = {}
    dra = build_strategy("sequence", "dra")
    ctx = _ctx(8, 4, log, rewards_N=torch.tensor([1.0, 0, 1, 0, 1, 1, 0, 0]),
               embed_completions=lambda: torch.ones(8, 3))
    out = dra.reshape_rewards(ctx)
    assert log["sequence_weighting/dra/group_cv"] == pytest.approx([0.0], abs=1e-7)
    # equal up to the std epsilon of group_advantages (1e-4 against a std of 0.14 instead of 0.58)
    assert torch.allclose(group_advantages(out, 4), group_advantages(ctx.rewards_N, 4), atol=1e-3)


def test_dra_scope_process_compares_every_completion_of_a_process():
    # G = 2 and 2 processes of 4 rows: 'group' compares pairs, 'process' the 4 rows of each process
    rewards = torch.ones(8)
    by_group = [1 / (2 + EPS)] * 2 + [1 / (1.8 + EPS)] * 2 + [1 / (1 + EPS)] * 4
    outs = {}
    for scope in ("group", "process"):
        dra = build_strategy("sequence", {"name": "dra", "scope": scope})
        for rank in (0, 1):  # every process sees the gathered batch and computes the same N factors
            ctx = _ctx(8, 2, rewards_N=rewards, embed_completions=lambda: EMB, process_index=rank, num_processes=2)
            outs[scope, rank] = dra.reshape_rewards(ctx)
    assert outs["group", 0].tolist() == pytest.approx(by_group, rel=1e-6)
    assert outs["process", 0].tolist() == pytest.approx(DRA_GROUP, rel=1e-6)  # rows 0-3 = process 0, 4-7 = process 1
    assert torch.equal(outs["group", 0], outs["group", 1]) and torch.equal(outs["process", 0], outs["process", 1])
    # one process: 'process' compares all 8 rows (cross-group cosines count now)
    one = build_strategy("sequence", {"name": "dra", "scope": "process"}).reshape_rewards(
        _ctx(8, 2, rewards_N=rewards, embed_completions=lambda: EMB))
    assert one[0].item() == pytest.approx(1 / (3.6 + EPS), rel=1e-6)  # 2.6 + its cosine 1 with row 4
    with pytest.raises(StrategyError, match="split evenly over 3 processes"):
        build_strategy("sequence", {"name": "dra", "scope": "process"}).reshape_rewards(
            _ctx(8, 2, rewards_N=rewards, embed_completions=lambda: EMB, num_processes=3))


def test_dra_edge_cases():
    dra = build_strategy("sequence", {"name": "dra", "min_divisor": 1.0})
    # NaN reward (unscorable completion) stays NaN; min_divisor = 1 keeps the factor in (0, 1]
    anti = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])
    out = dra.reshape_rewards(_ctx(2, 2, rewards_N=torch.tensor([float("nan"), 2.0]), embed_completions=lambda: anti))
    assert math.isnan(out[0].item()) and out[1].item() == pytest.approx(2 / (1 + EPS))
    # evaluation rollouts: unchanged, nothing embedded
    assert dra.reshape_rewards(_ctx(2, 2, rewards_N=torch.ones(2), embed_completions=_fail, mode="eval")) is None
    with pytest.raises(StrategyError, match=r"expected \[3, D\]"):
        dra.reshape_rewards(_ctx(3, 3, rewards_N=torch.ones(3), embed_completions=lambda: torch.ones(2, 4)))
    with pytest.raises(StrategyError, match="embed_completions"):  # the trainer did not provide the service
        dra.reshape_rewards(_ctx(2, 2, rewards_N=torch.ones(2)))
    with pytest.raises(ValueError, match="embeddings"):
        dra.reshape_rewards(_ctx(2, 2, rewards_N=torch.ones(2),
                                 embed_completions=lambda: torch.tensor([[1.0, float("nan")], [1.0, 0.0]])))


# -------------------------------------------------------------------------------------------------------------- SEED
def test_seed_scales_only_the_group_with_diverse_answers():
    log = {}
    seed = build_strategy("sequence", {"name": "seed", "alpha": 0.5})
    texts = ["5", "5", " 5 ", "5.", "1", "2", "3", "it is 4"]  # group 0: one answer; group 1: four answers
    adv = torch.tensor([0.5, -0.5, 1.0, -1.0, 1.5, -1.5, 0.5, -0.5])
    out = seed.adjust_advantages(_ctx(8, 4, log, advantages_N=adv, texts=texts))
    # SE = 0 -> f = 1; SE = log 4 = SE_max -> f(alpha * 1) = 1 - 0.5 (linear)
    assert out.tolist() == pytest.approx(adv[:4].tolist() + (0.5 * adv[4:]).tolist(), abs=1e-6)
    assert log["sequence_weighting/seed/scale_mean"] == pytest.approx([0.75], abs=1e-6)


def test_seed_answer_readers():
    texts = ["5", "5", " 5 ", "5."]
    # 'text': exact strings "5", "5", "5", "5." -> clusters of 3 and 1
    se = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    seed = build_strategy("sequence", {"name": "seed", "alpha": 0.5, "answer": "text"})
    out = seed.adjust_advantages(_ctx(4, 4, advantages_N=torch.ones(4), texts=texts))
    assert out.tolist() == pytest.approx([1 - 0.5 * se / math.log(4)] * 4, rel=1e-6)
    assert final_answers(["1 then 2", "x", " \\boxed{7} and 8"], "first") == [1, None, 7]
    assert final_answers(["1 then 2", "x", " 3 "], "last") == [2, None, 3]
    assert final_answers(["1 then 2", " 3 "], "strict") == [None, 3]
    assert final_answers(["  a ", "   "], "text") == ["a", None]
    with pytest.raises(ValueError, match="answer must be one of"):
        final_answers(["1"], "middle")


def test_seed_edge_cases():
    seed = build_strategy("sequence", "seed")
    assert seed.adjust_advantages(_ctx(2, 2, advantages_N=torch.ones(2), texts=["1", "2"], mode="eval")) is None
    with pytest.raises(StrategyError, match="3 completion texts for 2 advantages"):
        seed.adjust_advantages(_ctx(2, 2, advantages_N=torch.ones(2), texts=["1", "2", "3"]))
    with pytest.raises(StrategyError, match="do not form groups of 4"):
        seed.adjust_advantages(_ctx(6, 4, advantages_N=torch.ones(6), texts=["1"] * 6))
    # float64 advantages keep their dtype; no answer anywhere -> every None its own cluster -> SE = log G
    out = seed.adjust_advantages(_ctx(2, 2, advantages_N=torch.ones(2, dtype=torch.float64), texts=["a", "b"]))
    assert out.dtype == torch.float64 and out.tolist() == pytest.approx([0.98] * 2)


# -------------------------------------------------------------------------------------------------- loss_reweighting
NLL = [0.1, 0.5, 1.0, 2.0, 0.3, 0.3, 0.7, 1.5]


def _linupper_by_hand(losses, temperature=0.4, delta=1.0):
    """Sow et al. with f = linupper, times N: h = 2 delta l / D - delta (l_max + l_min) / D, f = min(h + delta,
    delta), g = exp(f / temperature), w = g / sum g."""
    lo, hi = min(losses), max(losses)
    d = hi - lo
    f = [min(2 * delta * x / d - delta * (hi + lo) / d + delta, delta) for x in losses]
    g = [math.exp(v / temperature) for v in f]
    return [len(losses) * v / sum(g) for v in g]


def _logps(nll):
    return -torch.tensor(nll)[:, None].expand(len(nll), 3).clone(), torch.ones(len(nll), 3)


def test_loss_reweighting_after_burn_in_upweights_high_loss_completions():
    log = {}
    lw = build_strategy("sequence", {"name": "loss_reweighting", "burn_in_steps": 1})
    ones = torch.ones(8)
    burn_in = lw.adjust_advantages(_ctx(8, 4, log, advantages_N=ones, step=0, completion_logps=lambda: _logps(NLL)))
    assert torch.equal(burn_in, torch.ones(8))  # 0 completed steps < burn_in_steps: uniform
    adv = lw.adjust_advantages(_ctx(8, 4, log, advantages_N=ones, step=1, completion_logps=lambda: _logps(NLL)))
    assert adv.tolist() == pytest.approx(_linupper_by_hand(NLL), rel=1e-5)
    assert adv.mean().item() == pytest.approx(1.0, abs=1e-5)
    assert adv[0] < adv[1] < adv[2] < adv[3] and adv[3] == pytest.approx(adv[7].item())  # linupper: flat above mid
    assert log["sequence_weighting/loss_reweighting/max"] == pytest.approx([1.0, max(_linupper_by_hand(NLL))],
                                                                           rel=1e-5)
    assert lw.num_steps == 1 and lw.state_dict() == {"num_steps": 1}
    assert lw.adjust_advantages(_ctx(8, 4, advantages_N=ones, completion_logps=_fail, mode="eval")) is None


def test_loss_reweighting_over_two_simulated_processes():
    # each process computes the losses of its own 4 rows; all_gather concatenates both processes' losses
    shares = [NLL[:4], NLL[4:]]
    outs, maxima = [], []
    for rank in (0, 1):
        log = {}
        mine = torch.tensor(shares[rank])
        gather = (lambda t, rank=rank: torch.cat([t, torch.tensor(shares[1])]) if rank == 0
                  else torch.cat([torch.tensor(shares[0]), t]))
        lw = build_strategy("sequence", {"name": "loss_reweighting", "burn_in_steps": 0})
        ctx = _ctx(8, 4, log, advantages_N=torch.full((8,), 2.0), process_index=rank, num_processes=2,
                   completion_logps=lambda: _logps(mine.tolist()), all_gather=gather)
        outs.append(lw.adjust_advantages(ctx))
        maxima.append(log["sequence_weighting/loss_reweighting/max"][0])
    by_hand = _linupper_by_hand(NLL)
    assert torch.equal(outs[0], outs[1]) and outs[0].tolist() == pytest.approx([2 * w for w in by_hand], rel=1e-5)
    assert maxima == pytest.approx([max(by_hand[:4]), max(by_hand[4:])], rel=1e-5)  # this process's rows


def test_token_mean_nll_ignores_padding():
    logps = torch.tensor([[-1.0, -3.0, -100.0], [-0.5, -0.5, -0.5], [-7.0, -7.0, -7.0]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1], [0, 0, 0]])
    assert token_mean_nll(logps, mask).tolist() == pytest.approx([2.0, 0.5, 0.0])


def test_loss_reweighting_burn_in_warning():
    env = StrategyEnv(max_steps=1000)
    lw = build_strategy("sequence", "loss_reweighting", env)  # default burn-in: 1000 (official)
    warns = strategy_warnings([lw])
    assert len(warns) == 1 and warns[0].startswith("loss_reweighting: burn_in_steps=1000 >= max_steps=1000")
    assert "\n" not in warns[0]
    assert strategy_warnings([build_strategy("sequence", "loss_reweighting", StrategyEnv(max_steps=1001))]) == []
    assert strategy_warnings([build_strategy("sequence", "loss_reweighting", StrategyEnv())]) == []  # unknown
    seed = build_strategy("sequence", {"name": "seed", "alpha": 0}, env)
    assert strategy_warnings([seed]) == ["seed: alpha = 0 makes every scale 1: seed leaves the advantages unchanged"]


def test_loss_reweighting_state_round_trip():
    a = build_strategy("sequence", {"name": "loss_reweighting", "burn_in_steps": 3})
    ctx = _ctx(8, 4, advantages_N=torch.ones(8), step=2, completion_logps=lambda: _logps(NLL))
    assert torch.equal(a.adjust_advantages(ctx), torch.ones(8))  # still in burn-in
    assert a.state_dict() == {"num_steps": 2}
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    for state in (json.loads(json.dumps(a.state_dict())), torch.load(buf, weights_only=True)):
        b = build_strategy("sequence", {"name": "loss_reweighting", "burn_in_steps": 3})
        b.load_state_dict(state)
        assert b.num_steps == 2 and b.state_dict() == a.state_dict()
    with pytest.raises(ValueError, match="num_steps"):
        b.load_state_dict({})
    # dra and seed keep no state
    for name in ("dra", "seed"):
        s = build_strategy("sequence", name)
        assert s.state_dict() == {}
        with pytest.raises(ValueError, match="keeps no state"):
            s.load_state_dict({"num_steps": 1})


# ------------------------------------------------------------------------------------------------------------ config
@pytest.mark.parametrize("spec, message", [
    ({"name": "dra", "scope": "device"}, "dra: scope: Input should be 'group' or 'process' (got 'device')"),
    ({"name": "dra", "min_divisor": 0}, "dra: min_divisor: Input should be greater than 0 (got 0)"),
    ({"name": "dra", "eps": float("inf")}, "dra: eps: Input should be a finite number (got inf)"),
    ({"name": "dra", "foo": 1}, "dra: unknown argument 'foo'; accepted: eps, min_divisor, scope"),
    ({"name": "seed", "form": "cubic"},
     "seed: form: Input should be 'linear', 'exponential', 'focal' or 'inverse' (got 'cubic')"),
    ({"name": "seed", "answer": "middle"}, "seed: answer: Input should be 'last', 'first', 'strict' or 'text'"),
    ({"name": "seed", "alpha": -1}, "seed: alpha: Input should be greater than or equal to 0 (got -1)"),
    ({"name": "seed", "estimator": "plugin"}, "seed: estimator: Input should be 'rao' or 'eq5' (got 'plugin')"),
    ({"name": "loss_reweighting", "temperature": 0},
     "loss_reweighting: temperature: Input should be greater than 0 (got 0)"),
    ({"name": "loss_reweighting", "strategy": "nope"}, "loss_reweighting: strategy: Input should be 'linupper'"),
    ({"name": "loss_reweighting", "burn_in_steps": -1}, "loss_reweighting: burn_in_steps: Input should be greater"),
    ({"name": "loss_reweighting", "burn_in_steps": 1.5}, "loss_reweighting: burn_in_steps: Input should be a valid"),
    ({"name": "loss_reweighting", "burn_in_steps": True}, "loss_reweighting: burn_in_steps: Input should be a valid"),
])
def test_bad_configs_are_one_line_errors_naming_the_key(spec, message):
    with pytest.raises(StrategyError) as err:
        build_strategy("sequence", spec)
    assert str(err.value).startswith(message) and "\n" not in str(err.value), str(err.value)


def test_list_errors_name_the_index_and_duplicates():
    with pytest.raises(StrategyError, match=r"^1: seed: form: Input should be"):
        build_strategies("sequence", ["dra", {"name": "seed", "form": "cubic"}])
    with pytest.raises(StrategyError, match="^seed is listed twice$"):
        build_strategies("sequence", ["seed", {"name": "seed", "alpha": 0.1}])
    with pytest.raises(RegistryError, match="unknown sequence strategy 'dr'; known: dra, loss_reweighting, seed"):
        build_strategy("sequence", "dr")


def test_configs_keep_the_previous_defaults():
    assert build_strategy("sequence", "dra").config.model_dump() == {"eps": 1e-6, "min_divisor": 0.1,
                                                                     "scope": "group"}
    assert build_strategy("sequence", "seed").config.model_dump() == {
        "alpha": 0.02, "form": "linear", "gamma": 2.0, "estimator": "rao", "answer": "last"}
    lw = build_strategy("sequence", "loss_reweighting")
    assert lw.config.model_dump() == {"strategy": "linupper", "temperature": 0.4, "delta": 1.0,
                                      "burn_in_steps": 1000}
    assert (lw.weighter.strategy, lw.weighter.temperature, lw.weighter.delta, lw.weighter.burn_in_steps) == (
        "linupper", 0.4, 1.0, 1000)


# -------------------------------------------------------------------------------------------------- user strategies
def test_user_sequence_strategy_by_import_path():
    log = {}
    s = build_strategy("sequence", {"name": "user_strategies.user_sequence:ShortCompletionBonus", "factor": 3.0})
    adv = torch.tensor([1.0, -1.0, 0.5, -0.5])
    out = s.adjust_advantages(_ctx(4, 2, log, advantages_N=adv, texts=["7", "a long one", "12", "no"]))
    assert out.tolist() == [3.0, -1.0, 1.5, -1.5]
    assert log == {"user/short_share": [0.75]}
    with pytest.raises(StrategyError, match=r"^ShortCompletionBonus: factor: Input should be greater than 0"):
        build_strategy("sequence", {"name": "user_strategies.user_sequence:ShortCompletionBonus", "factor": 0})


@pytest.mark.parametrize("cls, fragment", [
    ("ConfigOnly", "implements none of the hooks of its kind (reshape_rewards, adjust_advantages, on_step_end)"),
    ("TokenHookOnly", "implements token_weights, which the trainer never calls"),
])
def test_user_class_without_a_sequence_hook_is_refused(cls, fragment):
    with pytest.raises(StrategyError) as err:
        build_strategy("sequence", f"user_strategies.user_sequence:{cls}")
    msg = str(err.value)
    assert fragment in msg and f"'user_strategies.user_sequence:{cls}'" in msg and "\n" not in msg, msg


# ------------------------------------------------------------------------------------------------------- isolation
def test_sequence_strategies_import_no_trainer_library():
    code = ("import sys, posttrain.weighting.sequences\n"
            "print(sorted(m for m in ('trl', 'transformers', 'accelerate', 'posttrain.trainers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"

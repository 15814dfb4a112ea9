"""The domain (data-mixture) strategies through their hooks with hand-built DomainContexts: hand-computed update
rules (fixed, temperature + cooldown, upweight, influence, bilevel), simplex invariants (hypothesis), edge cases
(one domain, a size-0 domain, zero gradients, non-finite input), one-line config errors naming the key, the bilevel
state round trip, the sharded all-reduce scope, a user domain strategy by import path, and refusal of classes with
no domain hook."""
from __future__ import annotations

import json
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from posttrain.registry import RegistryError
from posttrain.weighting.domains import (BilevelMixing, FixedDomains, InfluenceMixing, TemperatureSampling,
                                         Upweighting, apply_floor, cooldown_temperature, fixed_domain_weights,
                                         influence_scores, influence_weights, mirror_descent_step,
                                         standardize_scores, temperature_weights, upweight_factors)
from posttrain.weighting.protocol import (DomainContext, StrategyEnv, StrategyError, build_strategy, registered,
                                          strategy_class)

USER = "tests.user_strategies.user_domain"
NAMES = ("fixed", "temperature", "upweight", "influence", "bilevel")


def _ctx(weights=(0.2, 0.3, 0.5), sizes=(100, 10, 1), *, G=None, g=None, step=0, logs=None, **kw) -> DomainContext:
    d = len(weights)
    domains = tuple("abcdefghij"[:d])
    extra = {}
    if G is not None:
        extra["domain_gradients"] = lambda: torch.as_tensor(G, dtype=torch.float64)
        extra["heldout_gradient"] = lambda: torch.as_tensor(g, dtype=torch.float64)
    if logs is not None:
        extra["log"] = lambda key, value: logs.__setitem__(key, value)
    return DomainContext(domains=domains, weights_D=tuple(weights), sizes_D=tuple(sizes), step=step, **extra, **kw)


def _approx(values, rel=1e-12, abs=1e-15):
    return pytest.approx(list(values), rel=rel, abs=abs)


# ---------------------------------------------------------------------------------------------------------- registry
def test_builtins_registered_with_cited_fields():
    reg = registered("domain")
    assert {n: reg[n] for n in NAMES} == {"fixed": FixedDomains, "temperature": TemperatureSampling,
                                         "upweight": Upweighting, "influence": InfluenceMixing,
                                         "bilevel": BilevelMixing}
    assert "2410.04579" in Upweighting.cite and "2508.17677" in InfluenceMixing.cite
    assert "2406.19976" in BilevelMixing.cite and "2505.20241" in BilevelMixing.cite
    for name in ("temperature", "upweight", "influence", "bilevel"):
        for field, info in reg[name].Config.model_fields.items():
            assert "arXiv" in (info.description or ""), (name, field)
    assert "arXiv" in FixedDomains.Config.model_fields["weights"].description


# ------------------------------------------------------------------------------------------------------------- fixed
def test_fixed_by_hand():
    assert fixed_domain_weights([2, 1, 1]).tolist() == [0.5, 0.25, 0.25]
    assert fixed_domain_weights({"b": 1.0, "a": 3.0}, domains=("a", "b")).tolist() == [0.75, 0.25]
    # proportional to size: 100/111, 10/111, 1/111
    assert fixed_domain_weights(sizes=[100, 10, 1]).tolist() == _approx([0.9009009009009009, 0.09009009009009009,
                                                                          0.009009009009009009])
    s = build_strategy("domain", {"name": "fixed", "weights": {"c": 2, "a": 1, "b": 1}})
    assert s.domain_weights(_ctx()) == [0.25, 0.25, 0.5]
    assert build_strategy("domain", "fixed").domain_weights(_ctx(sizes=(3, 1, 0 + 4))) == [0.375, 0.125, 0.5]


def test_fixed_mismatches_are_one_line():
    s = build_strategy("domain", {"name": "fixed", "weights": [1, 1]})
    with pytest.raises(ValueError, match="^weights has 2 values for 3 domains$"):
        s.domain_weights(_ctx())
    s = build_strategy("domain", {"name": "fixed", "weights": {"a": 1, "z": 1}})
    with pytest.raises(ValueError, match=r"^weights: no weight for domain\(s\) 'b', 'c'; unknown domain\(s\) 'z'"):
        s.domain_weights(_ctx())


# ------------------------------------------------------------------------------------------------------- temperature
def test_temperature_weights_by_hand():
    assert temperature_weights([1, 4], 2.0).tolist() == _approx([1 / 3, 2 / 3])  # sqrt: 1, 2
    assert temperature_weights([1, 8, 27], 3.0).tolist() == _approx([1 / 6, 2 / 6, 3 / 6])  # cube roots 1, 2, 3
    assert temperature_weights([1, 3], 1.0).tolist() == _approx([0.25, 0.75])  # T = 1: proportional
    assert temperature_weights([1, 10**9], 1e6).tolist() == pytest.approx([0.5, 0.5], abs=1e-4)  # T -> inf: uniform
    big = temperature_weights([1, 10**300], 0.01)  # n^(1/T) overflows; the log-space form does not
    assert big.tolist() == [0.0, 1.0]


def test_cooldown_schedule_by_hand():
    kw = dict(temperature=5.0, final_temperature=1.0, cooldown_start=0.5, total_steps=100)
    # linear: 5 until step 50, then 5 + (1 - 5) * (step - 50) / 50, 1 from step 100 on
    assert [cooldown_temperature(t, **kw) for t in (0, 49, 50, 75, 90, 100, 200)] == \
        pytest.approx([5.0, 5.0, 5.0, 3.0, 1.8, 1.0, 1.0])
    assert [cooldown_temperature(t, shape="step", **kw) for t in (0, 49, 50, 99)] == [5.0, 5.0, 1.0, 1.0]
    assert cooldown_temperature(10**6, temperature=2.0) == 2.0  # no cooldown: constant
    assert cooldown_temperature(0, temperature=5.0, final_temperature=1.0, cooldown_start=0.0, total_steps=10) == 5.0


def test_temperature_strategy_follows_the_step():
    logs = {}
    s = build_strategy("domain", {"name": "temperature", "temperature": 5.0, "final_temperature": 1.0},
                       StrategyEnv(max_steps=100))
    # step 75: T = 3 -> p ∝ (1, 8^(1/3) = 2)
    assert s.domain_weights(_ctx((0.5, 0.5), (1, 8), step=75, logs=logs)) == _approx([1 / 3, 2 / 3])
    assert logs == {"domain_weighting/temperature/T": 3.0}
    assert s.domain_weights(_ctx((0.5, 0.5), (1, 8), step=100)) == _approx([1 / 9, 8 / 9])  # T = 1
    # total_steps overrides max_steps: step 75 of 50 -> the end of the cooldown
    s = build_strategy("domain", {"name": "temperature", "final_temperature": 1.0, "total_steps": 50},
                       StrategyEnv(max_steps=100))
    assert s.domain_weights(_ctx((0.5, 0.5), (1, 8), step=75)) == _approx([1 / 9, 8 / 9])


# ---------------------------------------------------------------------------------------------------------- upweight
def test_upweight_by_hand():
    # sizes 1, 4; T = 2: p = (1/3, 2/3), q = (1/5, 4/5), w = p / q = (5/3, 5/6); sum q w = 1/3 + 2/3 = 1
    assert upweight_factors([1, 4], 2.0).tolist() == _approx([5 / 3, 5 / 6])
    assert upweight_factors([7, 3, 5], 1.0).tolist() == _approx([1.0, 1.0, 1.0])
    logs = {}
    s = build_strategy("domain", {"name": "upweight", "temperature": 2.0})
    ctx = _ctx((0.5, 0.5), (1, 4), logs=logs)
    assert s.domain_weights(ctx) == _approx([0.2, 0.8])  # natural sampling
    assert s.domain_loss_weights(ctx) == _approx([5 / 3, 5 / 6])
    assert logs == {"domain_weighting/upweight/T": 2.0}


def test_upweight_cooldown_and_expectation():
    s = build_strategy("domain", {"name": "upweight", "temperature": 3.0, "final_temperature": 1.0,
                                  "cooldown_shape": "step", "cooldown_start": 0.25}, StrategyEnv(max_steps=8))
    early, late = _ctx((0.5, 0.5), (1, 8), step=1), _ctx((0.5, 0.5), (1, 8), step=2)
    # T = 3: p = (1/3, 2/3), q = (1/9, 8/9): w = (3, 3/4); from step 2 (= 0.25 * 8) on T = 1: all ones
    assert s.domain_loss_weights(early) == _approx([3.0, 0.75])
    assert s.domain_loss_weights(late) == _approx([1.0, 1.0])
    q, w = s.domain_weights(early), s.domain_loss_weights(early)
    assert sum(a * b for a, b in zip(q, w)) == pytest.approx(1.0, rel=1e-12)


# --------------------------------------------------------------------------------------------------------- influence
def test_influence_scores_and_default_rule_by_hand():
    G, g = [[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], [1.0, 2.0]
    assert influence_scores(G, g).tolist() == [1.0, 2.0, 3.0]
    # standardised: mean 2, population std sqrt(2/3) -> z = (-sqrt(1.5), 0, sqrt(1.5))
    assert standardize_scores(torch.tensor([1.0, 2.0, 3.0])).tolist() == _approx([-math.sqrt(1.5), 0, math.sqrt(1.5)])
    # softmax(z) = (0.2938327, 1, 3.4032977) / 4.6971303 = (0.0625558, 0.2128959, 0.7245483);
    # mixed with (0.2, 0.3, 0.5) at eta = 0.5; floor 0.1 / 3 inactive
    e = [0.293832655878073, 1.0, 3.4032976934155132]
    target = [x / sum(e) for x in e]
    expected = [0.5 * a + 0.5 * b for a, b in zip((0.2, 0.3, 0.5), target)]
    assert expected == pytest.approx([0.1312779, 0.2564480, 0.6122741], abs=1e-7)
    logs = {}
    s = build_strategy("domain", "influence")
    assert s.domain_weights(_ctx(G=G, g=g, logs=logs)) == _approx(expected)
    assert logs == {"domain_weighting/influence/score/a": 1.0, "domain_weighting/influence/score/b": 2.0,
                    "domain_weighting/influence/score/c": 3.0}


def test_influence_variants_by_hand():
    # raw scores (0, ln 2, ln 5), tau 1, uniform prior, jump (eta 1), no floor: w = (1, 2, 5) / 8
    w = influence_weights([0.2, 0.3, 0.5], [0.0, math.log(2), math.log(5)], standardize=False, mixing=1.0, floor=0.0)
    assert w.tolist() == _approx([0.125, 0.25, 0.625])
    # tau 0.5 doubles the scores: (1, 4, 25) / 30
    w = influence_weights([0.2, 0.3, 0.5], [0.0, math.log(2), math.log(5)], standardize=False, mixing=1.0,
                          floor=0.0, temperature=0.5)
    assert w.tolist() == _approx([1 / 30, 4 / 30, 25 / 30])
    # exponentiated gradient (prior = previous): (0.5, 0.25, 0.25) * (1, 2, 2) -> uniform
    w = influence_weights([0.5, 0.25, 0.25], [0.0, math.log(2), math.log(2)], standardize=False, mixing=1.0,
                          floor=0.0, prior="previous")
    assert w.tolist() == _approx([1 / 3, 1 / 3, 1 / 3])
    # floor: target (1, 2, 5)/8 -> with floor 0.6 (each >= 0.2): KL projection (0.2, max(0.2, c 0.25), c 0.625)
    # c = 0.8 / 0.875 -> (0.2, 0.2285714, 0.5714286)
    w = influence_weights([0.2, 0.3, 0.5], [0.0, math.log(2), math.log(5)], standardize=False, mixing=1.0, floor=0.6)
    assert w.tolist() == _approx([0.2, 0.25 * 0.8 / 0.875, 0.625 * 0.8 / 0.875])


def test_influence_zero_gradients_and_one_domain_leave_weights_unchanged():
    s = build_strategy("domain", "influence")
    assert s.domain_weights(_ctx(G=torch.zeros(3, 4), g=torch.ones(4))) == _approx([0.2, 0.3, 0.5])
    assert s.domain_weights(_ctx(G=torch.ones(3, 4), g=torch.zeros(4))) == _approx([0.2, 0.3, 0.5])
    assert s.domain_weights(_ctx((1.0,), (5,))) == [1.0]  # no gradient needed for one domain
    # equal (non-zero) scores carry no preference: the target is the uniform prior, mixed at eta = 0.5
    assert s.domain_weights(_ctx(G=torch.ones(3, 2), g=torch.ones(2))) == _approx([(0.2 + 1 / 3) / 2,
                                                                                   (0.3 + 1 / 3) / 2,
                                                                                   (0.5 + 1 / 3) / 2])


def test_influence_sharded_gradients_sum_partial_dot_products():
    G = torch.tensor([[1.0, 0.0, 2.0, 1.0], [0.0, 1.0, 1.0, -1.0], [0.5, 0.5, 0.0, 3.0]])
    g = torch.tensor([1.0, 2.0, 0.5, 1.0])
    w0, n = (0.2, 0.3, 0.5), (1, 1, 1)
    full = build_strategy("domain", "influence").domain_weights(_ctx(w0, n, G=G, g=g))  # scores (3, 1.5, 4.5)
    parts = [G[:, :2] @ g[:2], G[:, 2:] @ g[2:]]  # (1, 2, 1.5) + (2, -0.5, 3)
    outs = []
    for rank in range(2):
        ctx = _ctx(w0, n, G=G[:, 2 * rank:2 * rank + 2], g=g[2 * rank:2 * rank + 2],
                   all_reduce_sum=lambda t: parts[0] + parts[1])
        outs.append(build_strategy("domain", {"name": "influence", "sharded_gradients": True}).domain_weights(ctx))
    assert outs[0] == outs[1] == _approx(full)
    shard_only = build_strategy("domain", "influence").domain_weights(_ctx(w0, n, G=G[:, :2], g=g[:2]))
    assert shard_only != _approx(full)  # without the all-reduce a shard would decide on its own slice


# ----------------------------------------------------------------------------------------------------------- bilevel
def test_mirror_descent_step_by_hand():
    lw = torch.log(torch.tensor([0.5, 0.25, 0.25], dtype=torch.float64))
    # raw: (0.5, 0.25, 0.25) * (1, 2, 4) -> (0.5, 0.5, 1) / 2
    out = mirror_descent_step(lw, [0.0, math.log(2), math.log(4)], step_size=1.0, normalize="none")
    assert torch.softmax(out, 0).tolist() == _approx([0.25, 0.25, 0.5])
    assert out.max().item() == 0.0  # recentred
    # l2: s = (0, 3, 4) -> (0, 0.6, 0.8); step 5 ln 2 -> factors (1, 8, 16): (0.5, 2, 4) / 6.5
    out = mirror_descent_step(lw, [0.0, 3.0, 4.0], step_size=5 * math.log(2))
    assert torch.softmax(out, 0).tolist() == _approx([1 / 13, 4 / 13, 8 / 13])
    # zero alignment: unchanged
    assert torch.softmax(mirror_descent_step(lw, [0.0, 0.0, 0.0]), 0).tolist() == _approx([0.5, 0.25, 0.25])


def test_bilevel_strategy_accumulates_from_its_state():
    G, g = [[0.0], [math.log(2)], [math.log(4)]], [1.0]
    logs = {}
    s = build_strategy("domain", {"name": "bilevel", "step_size": 1.0, "normalize": "none"})
    assert s.domain_weights(_ctx((0.5, 0.25, 0.25), (1, 1, 1), G=G, g=g, logs=logs)) == _approx([0.25, 0.25, 0.5])
    assert logs["domain_weighting/bilevel/alignment/c"] == pytest.approx(math.log(4))
    # second update continues from the state (ctx.weights_D is not read again): (0.25, 0.5, 2) / 2.75
    assert s.domain_weights(_ctx((0.9, 0.05, 0.05), (1, 1, 1), G=G, g=g)) == _approx([1 / 11, 2 / 11, 8 / 11])
    assert s.num_updates == 2


def test_bilevel_zero_gradients_one_domain_and_floor():
    s = build_strategy("domain", "bilevel")
    assert s.domain_weights(_ctx(G=torch.zeros(3, 2), g=torch.ones(2))) == _approx([0.2, 0.3, 0.5], rel=1e-12)
    assert build_strategy("domain", "bilevel").domain_weights(_ctx((1.0,), (3,), G=[[2.0]], g=[1.0])) == [1.0]
    # a domain at weight 0 stays representable (log clamped) and the floor lifts it: floor 0.3 -> each >= 0.1
    s = build_strategy("domain", {"name": "bilevel", "floor": 0.3})
    w = s.domain_weights(_ctx((0.0, 0.5, 0.5), (1, 1, 1), G=torch.zeros(3, 1), g=[1.0]))
    assert w == _approx([0.0, 0.5, 0.5], abs=1e-300)  # zero gradients: no step, no projection either
    w = s.domain_weights(_ctx((0.0, 0.5, 0.5), (1, 1, 1), G=[[0.0], [1.0], [0.0]], g=[1.0]))
    assert min(w) >= 0.1 - 1e-12 and sum(w) == pytest.approx(1.0) and all(math.isfinite(x) for x in s.state_dict()[
        "log_weights"])


def test_bilevel_state_round_trip():
    G, g = torch.tensor([[1.0, 0.0], [0.5, 2.0], [-1.0, 1.0]]), torch.tensor([0.3, -0.2])
    s = build_strategy("domain", "bilevel")
    for _ in range(3):
        s.domain_weights(_ctx(G=G, g=g))
    state = json.loads(json.dumps(s.state_dict()))
    assert state["num_updates"] == 3 and len(state["log_weights"]) == 3
    other = build_strategy("domain", "bilevel")
    other.load_state_dict(state)
    assert other.state_dict() == s.state_dict()
    assert other.domain_weights(_ctx(G=G, g=g)) == s.domain_weights(_ctx(G=G, g=g))
    fresh = build_strategy("domain", "bilevel")
    fresh.load_state_dict(build_strategy("domain", "bilevel").state_dict())
    assert fresh.state_dict() == {"log_weights": None, "num_updates": 0}
    with pytest.raises(ValueError, match="missing num_updates"):
        other.load_state_dict({"log_weights": None})
    with pytest.raises(ValueError, match="state has 3 domains, the context 2"):
        other.domain_weights(_ctx((0.5, 0.5), (1, 1), G=[[1.0], [2.0]], g=[1.0]))


@pytest.mark.parametrize("name", ["fixed", "temperature", "upweight", "influence"])
def test_stateless_strategies_keep_no_state(name):
    s = build_strategy("domain", name)
    assert s.state_dict() == {}
    s.load_state_dict({})
    with pytest.raises(ValueError, match="keeps no state"):
        s.load_state_dict({"x": 1})


# ------------------------------------------------------------------------------------------------------------- edges
@pytest.mark.parametrize("name", NAMES)
def test_one_domain_is_the_whole_mix(name):
    s = build_strategy("domain", name)
    ctx = _ctx((1.0,), (7,))  # no gradient services: one domain needs no measurement
    assert s.domain_weights(ctx) == [1.0]
    if name == "upweight":
        assert s.domain_loss_weights(ctx) == [1.0]


@pytest.mark.parametrize("name", ["fixed", "temperature", "upweight"])
def test_empty_domain_is_an_error_naming_it(name):
    s = build_strategy("domain", name)
    with pytest.raises(ValueError, match=r"^sizes_D: domain 'b' has size 0 \(an empty domain cannot be sampled"):
        s.domain_weights(_ctx(sizes=(5, 0, 2)))
    with pytest.raises(ValueError, match="size 0"):
        upweight_factors([3, 0], 2.0)


@pytest.mark.parametrize("bad,fragment", [
    (dict(weights=(0.5, float("nan"), 0.5)), "^weights_D has 1 non-finite"),
    (dict(weights=(0.5, -0.1, 0.6)), "^weights_D must be non-negative"),
    (dict(weights=(0.5, 0.5)), "^weights_D has 2 values for 3 domains"),  # domains follow weights in _ctx
    (dict(sizes=(1, float("inf"), 2)), "^sizes_D has 1 non-finite"),
    (dict(sizes=(1, 2.5, 2)), "^sizes_D must be non-negative whole numbers"),
    (dict(G=[[1.0, float("nan")], [0, 0], [0, 0]], g=[1.0, 1.0]), "^domain_gradients has 1 non-finite"),
    (dict(G=[[1.0, 1.0]] * 3, g=[float("inf"), 1.0]), "^heldout_gradient has 1 non-finite"),
    (dict(G=[[1.0, 1.0]] * 3, g=[1.0, 1.0, 1.0]), r"^heldout_gradient must be \[P\] with P = 2"),
    (dict(G=[[1.0, 1.0]] * 2, g=[1.0, 1.0]), "^domain_gradients has 2 rows for 3 domains"),
])
@pytest.mark.parametrize("name", ["influence", "bilevel"])
def test_bad_context_is_a_value_error_naming_the_argument(name, bad, fragment):
    kw = dict(G=[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], g=[1.0, 2.0])
    kw.update(bad)
    if "weights" in kw and len(kw["weights"]) == 2:  # 3 domains, 2 weights
        ctx = DomainContext(domains=("a", "b", "c"), weights_D=kw.pop("weights"), sizes_D=(1, 1, 1),
                            domain_gradients=lambda: torch.tensor(kw["G"]), heldout_gradient=lambda: torch.tensor(
                                kw["g"]))
    else:
        ctx = _ctx(**kw)
    with pytest.raises(ValueError, match=fragment):
        build_strategy("domain", name).domain_weights(ctx)


def test_missing_services_are_one_line():
    with pytest.raises(StrategyError, match="^the trainer provides no 'domain_gradients' service"):
        build_strategy("domain", "influence").domain_weights(_ctx())
    with pytest.raises(ValueError, match="^sizes_D is empty"):
        build_strategy("domain", "temperature").domain_weights(_ctx(sizes=()))


def test_huge_finite_inputs_stay_finite():
    w = influence_weights([0.5, 0.5], [1e308, -1e308], standardize=False, temperature=1e-3, floor=0.0)
    assert w.tolist() == _approx([0.75, 0.25])
    lw = mirror_descent_step([0.0, 0.0], [1e308, -1e308], step_size=1.0)  # l2: s/||s|| = (1, -1)/sqrt(2)
    assert lw.tolist() == _approx([0.0, -math.sqrt(2)])
    assert torch.softmax(lw, 0).tolist() == _approx([0.8044296825069569, 0.19557031749304313])
    with pytest.raises(ValueError, match="overflows"):
        mirror_descent_step([0.0, 0.0], [1e308, -1e308], step_size=10.0, normalize="none")


def test_apply_floor_by_hand():
    # (0.9, 0.1, 0) with floor 0.1: fix the 0 -> c = 0.9 -> (0.81, 0.09, 0.1): fix 0.09 -> c = 0.8/0.9 -> 0.8
    assert apply_floor(torch.tensor([0.9, 0.1, 0.0], dtype=torch.float64), 0.1).tolist() == _approx([0.8, 0.1, 0.1])
    same = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    assert apply_floor(same, 0.2).tolist() == same.tolist()  # idempotent above the floor
    assert apply_floor(same, 1 / 3).tolist() == _approx([1 / 3] * 3)
    with pytest.raises(ValueError, match="above 1/D"):
        apply_floor(same, 0.5)


# ---------------------------------------------------------------------------------------------------- simplex props
_SIZES = st.lists(st.integers(1, 10**7), min_size=1, max_size=6)
_REAL = st.floats(-1e6, 1e6, allow_nan=False)


@settings(max_examples=60, deadline=None)
@given(sizes=_SIZES, t=st.floats(0.05, 50.0))
def test_temperature_family_on_the_simplex(sizes, t):
    p = temperature_weights(sizes, t)
    assert torch.isfinite(p).all() and (p >= 0).all() and float(p.sum()) == pytest.approx(1.0, abs=1e-12)
    w = upweight_factors(sizes, t)
    q = torch.tensor(sizes, dtype=torch.float64) / sum(sizes)
    assert torch.isfinite(w).all() and (w > 0).all() and float((q * w).sum()) == pytest.approx(1.0, rel=1e-9)


@settings(max_examples=80, deadline=None)
@given(data=st.data(), d=st.integers(1, 6), tau=st.floats(0.01, 100.0), eta=st.floats(0.01, 1.0),
       floor=st.floats(0.0, 1.0), prior=st.sampled_from(["uniform", "previous"]), standardize=st.booleans())
def test_influence_on_the_simplex_above_the_floor(data, d, tau, eta, floor, prior, standardize):
    w0 = data.draw(st.lists(st.floats(0.0, 1.0), min_size=d, max_size=d).filter(lambda v: sum(v) > 1e-3))
    s = data.draw(st.lists(_REAL, min_size=d, max_size=d))
    w = influence_weights(w0, s, temperature=tau, mixing=eta, prior=prior, standardize=standardize, floor=floor)
    assert torch.isfinite(w).all() and (w >= 0).all() and float(w.sum()) == pytest.approx(1.0, abs=1e-12)
    if d > 1 and any(s):
        assert float(w.min()) >= floor / d - 1e-12


@settings(max_examples=80, deadline=None)
@given(data=st.data(), d=st.integers(1, 6), eta=st.floats(1e-3, 10.0), floor=st.floats(0.0, 1.0),
       normalize=st.sampled_from(["l2", "none"]), steps=st.integers(1, 4))
def test_bilevel_on_the_simplex_above_the_floor(data, d, eta, floor, normalize, steps):
    w0 = data.draw(st.lists(st.floats(0.0, 1.0), min_size=d, max_size=d).filter(lambda v: sum(v) > 1e-3))
    G = data.draw(st.lists(st.lists(st.floats(-1e3, 1e3), min_size=3, max_size=3), min_size=d, max_size=d))
    g = data.draw(st.lists(st.floats(-1e3, 1e3), min_size=3, max_size=3))
    s = build_strategy("domain", {"name": "bilevel", "step_size": eta, "normalize": normalize, "floor": floor})
    for _ in range(steps):
        w = torch.tensor(s.domain_weights(_ctx(tuple(w0), (1,) * d, G=G, g=g)), dtype=torch.float64)
        assert torch.isfinite(w).all() and (w >= 0).all() and float(w.sum()) == pytest.approx(1.0, abs=1e-12)
        assert all(math.isfinite(x) for x in s.state_dict()["log_weights"])
        if floor > 0 and bool((torch.tensor(G, dtype=torch.float64) @ torch.tensor(g, dtype=torch.float64)).any()):
            assert float(w.min()) >= floor / d - 1e-12


# ------------------------------------------------------------------------------------------------------ config errors
@pytest.mark.parametrize("spec,env,message", [
    ({"name": "temperature", "temperature": 0}, None, "temperature: temperature: Input should be greater than 0"),
    ({"name": "temperature", "final_temperature": 6.0}, None,
     "temperature: final_temperature must be <= temperature (5.0): a cooldown lowers the temperature"),
    ({"name": "temperature", "final_temperature": 1.0}, None,
     "temperature: total_steps is required for a cooldown (final_temperature) when the run's max_steps is unknown"),
    ({"name": "temperature", "cooldown_start": 1.0}, None, "temperature: cooldown_start: Input should be less than 1"),
    ({"name": "temperature", "total_steps": 0}, None, "temperature: total_steps: Input should be greater than or "),
    ({"name": "upweight", "cooldown_shape": "cosine"}, None,
     "upweight: cooldown_shape: Input should be 'step' or 'linear' (got 'cosine')"),
    ({"name": "upweight", "temperature": float("inf")}, None, "upweight: temperature: "),
    ({"name": "influence", "mixing": 0}, None, "influence: mixing: Input should be greater than 0"),
    ({"name": "influence", "floor": 1.5}, None, "influence: floor: Input should be less than or equal to 1"),
    ({"name": "influence", "prior": "natural"}, None, "influence: prior: Input should be 'uniform' or 'previous'"),
    ({"name": "bilevel", "step_size": -1}, None, "bilevel: step_size: Input should be greater than 0"),
    ({"name": "bilevel", "lr": 1}, None,
     "bilevel: unknown argument 'lr'; accepted: step_size, normalize, floor, sharded_gradients"),
    ({"name": "fixed", "weights": [-1, 2]}, None, "fixed: weights: must be non-negative finite numbers, got -1"),
    ({"name": "fixed", "weights": [0, 0]}, None, "fixed: weights: must be non-empty with a positive sum"),
    ({"name": "fixed", "weights": {"a": float("nan")}}, None, "fixed: weights: must be non-negative finite numbers"),
])
def test_bad_config_is_one_line_naming_the_key(spec, env, message):
    with pytest.raises(StrategyError) as err:
        build_strategy("domain", spec, env)
    assert str(err.value).startswith(message) and "\n" not in str(err.value), str(err.value)


def test_temperature_family_warns_when_it_would_not_act():
    from posttrain.weighting.protocol import strategy_warnings

    env = StrategyEnv(max_steps=10)
    assert strategy_warnings([build_strategy("domain", {"name": "temperature", "final_temperature": 1.0}, env)]) == []
    late = build_strategy("domain", {"name": "temperature", "final_temperature": 1.0, "total_steps": 40}, env)
    assert strategy_warnings([late]) == ["temperature: the cooldown starts at step 20 >= max_steps=10: the "
                                         "temperature stays 5.0 for the whole run"]
    flat = build_strategy("domain", {"name": "upweight", "temperature": 1.0}, env)
    assert strategy_warnings([flat]) == ["upweight: temperature 1 throughout is plain proportional (natural) "
                                         "sampling with all loss factors 1"]


def test_cooldown_with_known_run_length_builds():
    s = build_strategy("domain", {"name": "upweight", "final_temperature": 1.0}, StrategyEnv(max_steps=10))
    assert s.total_steps == 10


# ------------------------------------------------------------------------------------------------------ user classes
def test_user_domain_strategy_by_import_path():
    logs = {}
    s = build_strategy("domain", {"name": f"{USER}:LossProportional", "power": 2.0})
    assert s.domain_weights(_ctx(step=3)) == _approx([1 / 3] * 3)
    ctx = _ctx(step=5, losses_D=torch.tensor([1.0, 2.0, 3.0]), logs=logs)
    assert s.domain_weights(ctx) == _approx([1 / 14, 4 / 14, 9 / 14])
    assert s.calls == [3, 5] and logs == {"user/loss_sum": 14.0}
    with pytest.raises(StrategyError, match=r"^LossProportional: power: Input should be greater than or equal to 0"):
        build_strategy("domain", {"name": f"{USER}:LossProportional", "power": -1})


@pytest.mark.parametrize("cls,fragment", [
    ("ConfigOnly", "implements none of the hooks of its kind (domain_weights, domain_loss_weights)"),
    ("TokenHookOnly", "implements token_weights, which the trainer never calls on a domain strategy"),
])
def test_class_without_a_domain_hook_is_refused(cls, fragment):
    with pytest.raises(StrategyError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        strategy_class("domain", f"{USER}:{cls}")


def test_unknown_domain_strategy_lists_the_known():
    with pytest.raises(RegistryError, match="unknown domain strategy 'doremi'; known: bilevel, fixed, influence, "
                                            "temperature, upweight"):
        build_strategy("domain", "doremi")
    with pytest.raises(StrategyError, match="is a token strategy, not a domain strategy"):
        strategy_class("domain", "posttrain.weighting.tokens.steer:Steer")

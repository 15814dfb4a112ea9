"""Token strategies as protocol strategies of kind "token": Configs, the decorator bridge, built strategies composed
exactly like spec dicts, user strategies by import path, and the Config defaults against the pure functions'."""
from __future__ import annotations

import inspect
import math
from pathlib import Path

import pytest
import torch

from posttrain.registry import RegistryError
from posttrain.weighting import protocol
from posttrain.weighting.protocol import Strategy, StrategyError, build_strategies, build_strategy
from posttrain.weighting.tokens import (
    HOOK_OF_KIND,
    TOKEN_STRATEGIES,
    ClipCov,
    ClipCovConfig,
    EntropyAdvantage,
    EntropyAdvantageConfig,
    FunctionTokenStrategy,
    HighEntropy,
    HighEntropyConfig,
    KlCov,
    KlCovConfig,
    Steer,
    SteerConfig,
    TokenBatch,
    TwGrpo,
    TwGrpoConfig,
    apply_token_strategies,
    build_token_strategies,
    clip_cov_mask,
    clipping_disabled,
    compose_token_weights,
    dry_run_token_strategies,
    entropy_advantage,
    high_entropy_mask,
    kl_cov_mask,
    kl_cov_penalty,
    parse_token_specs,
    required_inputs,
    steer_weights,
    token_kinds,
    token_strategy,
    tw_grpo_weights,
    tw_grpo_weights_chunked,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

LN2 = math.log(2.0)
USER = "user_strategies.user_token"
BUILTINS = ("steer", "high_entropy", "clip_cov", "tw_grpo", "kl_cov", "entropy_advantage")


@pytest.fixture(autouse=True)
def _user_strategies_on_path(monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).parent))


def t(*rows):
    return torch.tensor(rows, dtype=torch.float32)


def close(a, b, tol=1e-5):
    b = torch.as_tensor(b, dtype=a.dtype)
    assert a.shape == b.shape, (a.shape, b.shape)
    assert bool(((a - b).abs() <= tol).all()), (a, b)


# 1x4 STEER example (tests/test_weighting_tokens.py): p = p_old = 0.5, A = 1 -> |Omega| = 0.5 (H - ln 2)
STEER_H = t([LN2, LN2 + 0.2, LN2 + 0.4, LN2 + 0.8])
HALF = t([math.log(0.5)] * 4)


def _small_batch(**kw):
    base = dict(advantages=torch.tensor([1.0]), mask=torch.ones(1, 4), logps=HALF.clone(), old_logps=HALF.clone(),
                entropies=STEER_H.clone(), old_entropies=STEER_H.clone())
    base.update(kw)
    return TokenBatch(**base)


def _full_batch(seed=0):
    """Every optional input, 2 groups of 2 rows, enough spread that Clip-Cov finds candidates in its band."""
    g = torch.Generator().manual_seed(seed)
    B, T, V = 4, 6, 7
    mask = torch.ones(B, T)
    mask[1, 4:] = 0
    mask[3, 2:] = 0
    logps = -torch.rand(B, T, generator=g) * 4
    full = torch.log_softmax(torch.randn(B, T, V, generator=g) * 2, dim=-1)
    return TokenBatch(advantages=torch.randn(B, generator=g) * 3, mask=mask, logps=logps,
                      old_logps=logps - 0.2 * torch.rand(B, T, generator=g), entropies=torch.rand(B, T, generator=g) * 2,
                      old_entropies=torch.rand(B, T, generator=g) * 2, group_size=2, full_logprobs_fn=lambda: full,
                      clip_low=0.2, clip_high=0.28, generator=torch.Generator().manual_seed(123))


ALL_SPECS = [
    {"name": "entropy_advantage", "alpha": 0.3},
    {"name": "steer", "w_min": 0.7, "w_max": 1.3},
    {"name": "high_entropy", "top_fraction": 0.5, "entropy_source": "old"},
    {"name": "clip_cov", "clip_ratio": 0.2, "cov_lb": 0.0, "cov_ub": 50.0},
    {"name": "tw_grpo", "alpha": 1.5},
    {"name": "kl_cov", "k_percent": 30.0, "kl_coef": 0.5},
    "high_entropy",
]


# ------------------------------------------------------------------------------------------ registration
def test_builtins_are_protocol_token_strategies_with_hook_by_kind():
    registered = protocol.registered("token")
    classes = {"steer": Steer, "high_entropy": HighEntropy, "clip_cov": ClipCov, "tw_grpo": TwGrpo, "kl_cov": KlCov,
               "entropy_advantage": EntropyAdvantage}
    for name, cls in classes.items():
        assert registered[name] is cls and TOKEN_STRATEGIES.get(name).strategy_class is cls
        assert issubclass(cls, Strategy) and cls.kind == "token" and cls.name == name
        assert protocol.implemented_hooks(cls) == (HOOK_OF_KIND[cls.token_kind],)
        assert token_kinds(cls) == (TOKEN_STRATEGIES.get(name).kind,)
        assert cls.Config is TOKEN_STRATEGIES.get(name).config
        assert cls.cite and "arXiv" in cls.cite
    assert HOOK_OF_KIND == {"weight": "token_weights", "loss_term": "token_loss", "advantage": "token_advantages"}
    assert protocol.implemented_hooks(KlCov) == ("token_loss",) and KlCov.disables_clipping
    assert protocol.implemented_hooks(EntropyAdvantage) == ("token_advantages",)
    assert Steer.needs == {"logps", "old_logps", "old_entropies"} and not Steer.disables_clipping
    assert TwGrpo.needs == {"full_logprobs", "group_size"}


def test_every_config_field_is_documented_and_cites_a_paper():
    for name in BUILTINS:
        config = protocol.registered("token")[name].Config
        assert config.model_fields, name
        for key, info in config.model_fields.items():
            assert info.description and len(info.description) > 40, (name, key)
            assert "arXiv" in info.description or key == "chunk_size", (name, key)


def test_instance_needs_follow_the_arguments():
    current, old = build_strategies("token", ["high_entropy", {"name": "high_entropy", "entropy_source": "old"}],
                                    unique=False)
    assert HighEntropy.needs == {"entropies"}
    assert current.needs == {"entropies"} and old.needs == {"old_entropies"}
    assert required_inputs([old]) == {"old_entropies"} == required_inputs([{"name": "high_entropy",
                                                                              "entropy_source": "old"}])
    assert clipping_disabled(build_strategies("token", ["kl_cov"])) and not clipping_disabled([current])


# --------------------------------------------------------------------------------------------- Config errors
@pytest.mark.parametrize("spec, fragment", [
    ({"name": "steer", "mode": "cubic"}, "steer: mode must be one of ('linear', 'exponential'), got 'cubic'"),
    ({"name": "steer", "w_min": 1.2, "w_max": 0.8}, "steer: w_max must be >= w_min (1.2) in mode 'linear'"),
    ({"name": "steer", "w_min": 0.0, "mode": "exponential"}, "steer: w_min must be in (0, 1] in mode 'exponential'"),
    ({"name": "steer", "w_min": -0.1}, "steer: w_min: Input should be greater than or equal to 0"),
    ({"name": "steer", "w_max": float("inf")}, "steer: w_max: Input should be a finite number"),
    ({"name": "steer", "w_mn": 0.5}, "steer: unknown argument 'w_mn'; accepted: w_min, w_max, mode"),
    ({"name": "high_entropy", "top_fraction": 1.5}, "high_entropy: top_fraction: Input should be less than or equal to 1"),
    ({"name": "high_entropy", "entropy_source": "older"}, "high_entropy: entropy_source must be one of"),
    ({"name": "clip_cov", "clip_ratio": 2.0}, "clip_cov: clip_ratio: Input should be less than or equal to 1"),
    ({"name": "clip_cov", "cov_lb": 5.0}, "clip_cov: cov_lb (5.0) must be < cov_ub (5.0)"),
    ({"name": "clip_cov", "clip_low": -0.1}, "clip_cov: clip_low: must be a finite number >= 0, null (no clamp) or"),
    ({"name": "clip_cov", "clip_high": "wide"}, "clip_cov: clip_high: must be a finite number >= 0"),
    ({"name": "kl_cov", "k_percent": 101}, "kl_cov: k_percent: Input should be less than or equal to 100"),
    ({"name": "kl_cov", "kl_coef": -1}, "kl_cov: kl_coef: Input should be greater than or equal to 0"),
    ({"name": "tw_grpo", "alpha": 0.0}, "tw_grpo: alpha: Input should be greater than 0"),
    ({"name": "tw_grpo", "chunk_size": 0}, "tw_grpo: chunk_size: Input should be greater than or equal to 1"),
    ({"name": "tw_grpo", "chunk_size": 2.5}, "tw_grpo: chunk_size: Input should be a valid integer"),
    ({"name": "entropy_advantage", "kappa": 1.0}, "entropy_advantage: kappa: Input should be greater than 1"),
    ({"name": "entropy_advantage", "alpha": -0.1}, "entropy_advantage: alpha: Input should be greater than or equal to 0"),
])
def test_config_errors_are_one_line_naming_the_key(spec, fragment):
    with pytest.raises(StrategyError) as err:
        build_strategies("token", [spec])
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("0: ") and fragment in msg, msg
    with pytest.raises(StrategyError, match=r"^2: "):
        build_token_strategies(["steer", "kl_cov", spec])


def test_configs_reject_what_the_pure_functions_reject():
    """Each value the pure function refuses is refused by the Config before any batch exists (so `validate`
    needs no dry run for built-ins); the same spec through the spec-dict path fails only at run time."""
    z = torch.zeros(1, 2)
    m = torch.ones(1, 2)
    cases = [
        ({"name": "steer", "mode": "cubic"}, lambda: steer_weights(torch.ones(1), z, z, z, m, mode="cubic")),
        ({"name": "steer", "w_min": 1.2, "w_max": 0.8}, lambda: steer_weights(torch.ones(1), z, z, z, m, w_min=1.2,
                                                                              w_max=0.8)),
        ({"name": "high_entropy", "top_fraction": 1.5}, lambda: high_entropy_mask(z, m, top_fraction=1.5)),
        ({"name": "clip_cov", "clip_ratio": 2.0}, lambda: clip_cov_mask(torch.ones(1), z, z, m, clip_ratio=2.0)),
        ({"name": "kl_cov", "k_percent": 101}, lambda: kl_cov_mask(torch.ones(1), z, m, k_percent=101)),
        ({"name": "tw_grpo", "alpha": 0.0}, lambda: tw_grpo_weights(torch.zeros(2, 2, 3), torch.ones(2, 2), 2,
                                                                     alpha=0.0)),
        ({"name": "entropy_advantage", "kappa": 1.0}, lambda: entropy_advantage(torch.ones(1), z, m, kappa=1.0)),
    ]
    for spec, pure in cases:
        with pytest.raises(ValueError):
            pure()
        with pytest.raises(StrategyError):
            build_strategy("token", spec)
        parse_token_specs([spec])  # the spec-dict path checks names and argument names only, as before


def test_do_nothing_settings_warn():
    built = build_strategies("token", [{"name": "high_entropy", "top_fraction": 1.0}, {"name": "kl_cov", "kl_coef": 0},
                                       {"name": "tw_grpo", "alpha": 1.0}, {"name": "entropy_advantage", "alpha": 0},
                                       {"name": "steer", "mode": "exponential", "w_min": 1.0}])
    lines = protocol.strategy_warnings(built)
    assert [ln.split(":")[0] for ln in lines] == ["high_entropy", "kl_cov", "tw_grpo", "entropy_advantage", "steer"]
    assert all("\n" not in ln for ln in lines)
    assert protocol.strategy_warnings(build_strategies("token", list(BUILTINS))) == []


# ------------------------------------------------------------------------------- built == spec dicts, bitwise
def _same_result(a, b):
    for key in ("weights", "advantages", "extra_token_loss"):
        x, y = getattr(a, key), getattr(b, key)
        assert (x is None) == (y is None), key
        if x is not None:
            assert x.dtype == y.dtype and torch.equal(x, y), key
    assert a.clip_disabled == b.clip_disabled
    assert a.diagnostics == b.diagnostics


def test_built_strategies_compose_bitwise_like_spec_dicts():
    built = build_strategies("token", ALL_SPECS, unique=False)
    from_specs = apply_token_strategies(ALL_SPECS, _full_batch())
    from_built = apply_token_strategies(built, _full_batch())
    _same_result(from_specs, from_built)
    assert set(from_specs.diagnostics) == {"entropy_advantage", "steer", "high_entropy", "clip_cov", "tw_grpo",
                                           "kl_cov", "high_entropy#2"}
    assert from_specs.diagnostics["clip_cov"]["frac_zero"] > 0  # Clip-Cov really chose tokens (seeded generator)
    assert from_specs.clip_disabled and from_specs.extra_token_loss is not None
    mixed = [built[0], *ALL_SPECS[1:4], *built[4:]]  # built strategies and spec dicts in one list
    _same_result(from_specs, apply_token_strategies(mixed, _full_batch()))
    assert required_inputs(built) == required_inputs(ALL_SPECS)
    assert clipping_disabled(built) == clipping_disabled(ALL_SPECS)
    # defaults too, and through build_token_strategies
    _same_result(apply_token_strategies(list(BUILTINS), _full_batch(1)),
                 apply_token_strategies(build_token_strategies(list(BUILTINS)), _full_batch(1)))


def test_built_strategies_through_compose_token_weights_and_chunked_tw_grpo():
    specs = ALL_SPECS[1:5]
    w1, d1 = compose_token_weights(specs, _full_batch())
    w2, d2 = compose_token_weights(build_strategies("token", specs), _full_batch())
    assert torch.equal(w1, w2) and d1 == d2
    b = _full_batch()
    g = torch.Generator().manual_seed(5)
    hidden, head = torch.randn(4, 6, 3, generator=g), torch.randn(7, 3, generator=g)
    b = b.replace(hidden=hidden, lm_head_weight=head, temperature=0.7)
    spec = [{"name": "tw_grpo", "chunk_size": 4}]
    assert torch.equal(compose_token_weights(spec, b)[0], compose_token_weights(build_strategies("token", spec), b)[0])
    with pytest.raises(ValueError, match="kl_cov.*not a weight"):
        compose_token_weights(build_strategies("token", ["kl_cov"]), b)


def test_built_strategy_errors_keep_the_spec_path_wording():
    b = _small_batch()
    [steer] = build_strategies("token", ["steer"])
    with pytest.raises(ValueError, match="token strategy 'steer' needs batch input 'old_entropies'"):
        apply_token_strategies([steer], b.replace(old_entropies=None))
    with pytest.raises(ValueError, match="token strategy 'steer': entropies has 1 non-finite"):
        apply_token_strategies([steer], b.replace(old_entropies=t([1.0, float("nan"), 1.0, 1.0])))


# ----------------------------------------------------------------------------------------- user strategies
def test_user_strategy_class_by_import_path():
    built = build_strategies("token", [{"name": f"{USER}:ConstantWeights", "factor": 0.25},
                                       {"name": "high_entropy", "top_fraction": 0.5}])
    user = built[0]
    assert user.needs == {"entropies"} and not getattr(user, "disables_clipping", False)
    assert token_kinds(user) == ("weight",)
    res = apply_token_strategies(built, _small_batch())
    # 80/20 on H = ln2 + [0, .2, .4, .8] with rho 0.5 keeps [0, 0, 1, 1]; the user's weight is 0.25 everywhere
    close(res.weights, [[0.0, 0.0, 0.25, 0.25]])
    assert res.diagnostics["ConstantWeights"]["mean"] == 0.25
    # the same class named in a spec dict
    res2 = apply_token_strategies([{"name": f"{USER}:ConstantWeights", "factor": 0.25},
                                   {"name": "high_entropy", "top_fraction": 0.5}], _small_batch())
    assert torch.equal(res.weights, res2.weights) and res.diagnostics == res2.diagnostics
    assert required_inputs([{"name": f"{USER}:ConstantWeights"}]) == {"entropies"}
    with pytest.raises(ValueError, match="token strategy 'ConstantWeights' needs batch input 'entropies'"):
        apply_token_strategies(built[:1], _small_batch(entropies=None))
    with pytest.raises(StrategyError, match=r"^0: ConstantWeights: factor: Input should be greater than 0"):
        build_strategies("token", [{"name": f"{USER}:ConstantWeights", "factor": -1}])


def test_user_loss_term_and_two_hook_class():
    b = _small_batch(advantages=t([1.0, -1.0, 0.5, 0.0]))
    loss, shifted = build_strategies("token", [{"name": f"{USER}:EntropyLoss", "coef": 0.5},
                                               {"name": f"{USER}:ShiftedAdvantages", "shift": 1.0}])
    assert loss.disables_clipping and clipping_disabled([loss]) and token_kinds(loss) == ("loss_term",)
    assert token_kinds(shifted) == ("advantage", "weight")
    res = apply_token_strategies([loss, shifted], b)
    close(res.advantages, [[2.0, 0.0, 1.5, 1.0]])  # the advantage hook ran first
    close(res.weights, [[2.0, 2.0, 2.0, 2.0]])
    close(res.extra_token_loss, 0.5 * STEER_H)
    assert res.clip_disabled and res.diagnostics["EntropyLoss"] == {"coef": 0.5}
    assert set(res.diagnostics) == {"EntropyLoss", "ShiftedAdvantages", "ShiftedAdvantages#2"}


def test_user_plain_function_by_import_path():
    path = f"{USER}:doubled"
    w, _ = compose_token_weights([{"name": path}], _small_batch(mask=t([1, 0, 1, 1])))  # as before: spec dicts
    close(w, [[2, 0, 2, 2]])
    [built] = build_token_strategies([{"name": path, "factor": 3.0}])
    assert isinstance(built, FunctionTokenStrategy) and built.name == path and token_kinds(built) == ("weight",)
    assert list(type(built).Config.model_fields) == ["factor"] and type(built).Config().factor == 2.0
    res = apply_token_strategies([built, "high_entropy"], _small_batch())
    close(res.weights, [[0, 0, 0, 3.0]])
    assert set(res.diagnostics) == {path, "high_entropy"}
    with pytest.raises(StrategyError, match=r"^0: user_strategies.user_token:doubled: factr: unknown argument"):
        build_token_strategies([{"name": path, "factr": 1.0}])
    with pytest.raises(StrategyError, match="factor: Input should be a valid number"):
        build_token_strategies([{"name": path, "factor": "big"}])


@pytest.mark.parametrize("name, fragment", [
    ("PairOnly", "implements pair_weights, which the trainer never calls on a token strategy (its hooks: "
                 "token_advantages, token_weights, token_loss)"),
    ("NoHook", "implements none of the hooks of its kind"),
    ("NotAStrategy", "must subclass posttrain.weighting.protocol.Strategy"),
])
def test_user_class_without_a_token_hook_is_refused(name, fragment):
    spec = {"name": f"{USER}:{name}"}
    for build in (lambda: build_strategies("token", [spec]), lambda: build_token_strategies([spec]),
                  lambda: apply_token_strategies([spec], _small_batch())):
        with pytest.raises(StrategyError) as err:
            build()
        assert fragment in str(err.value) and "\n" not in str(err.value)


def test_unknown_names_and_import_paths_are_one_line():
    with pytest.raises(RegistryError, match="unknown token strategy 'stear'"):
        build_strategies("token", ["stear"])
    with pytest.raises(RegistryError, match="has no attribute 'Missing'"):
        build_token_strategies([f"{USER}:Missing"])


# ------------------------------------------------------------------------------------------- the decorator
def test_decorator_registers_a_function_and_a_protocol_class():
    @token_strategy("test_scaled_mask", needs={"entropies"})
    def scaled(batch, *, scale: float = 0.5, keep_top: bool = False):
        w = torch.full(batch.mask.shape, scale)
        return w if not keep_top else w * (batch.entropies >= batch.entropies.max())

    cls = scaled.strategy_class
    assert protocol.registered("token")["test_scaled_mask"] is cls and cls.token_kind == "weight"
    assert {k: f.default for k, f in cls.Config.model_fields.items()} == {"scale": 0.5, "keep_top": False}
    with pytest.raises(StrategyError, match="test_scaled_mask: scale: Input should be a valid number"):
        build_strategy("token", {"name": "test_scaled_mask", "scale": "x"})
    spec = {"name": "test_scaled_mask", "scale": 0.25, "keep_top": True}
    a = apply_token_strategies([spec], _small_batch())
    b = apply_token_strategies([build_strategy("token", spec)], _small_batch())
    close(a.weights, [[0, 0, 0, 0.25]])
    assert torch.equal(a.weights, b.weights) and a.diagnostics == b.diagnostics


def test_decorator_kinds_and_checked_config():
    from pydantic import Field

    from posttrain.weighting.tokens import TokenStrategyConfig

    @token_strategy("test_entropy_loss", needs={"entropies"}, kind="loss_term", disables_clipping=True)
    def entropy_loss(batch, *, coef=0.1):
        return coef * batch.entropies

    @token_strategy("test_flat_advantage", kind="advantage")
    def flat(batch):
        return torch.ones(batch.mask.shape)

    assert protocol.implemented_hooks(entropy_loss.strategy_class) == ("token_loss",)
    assert entropy_loss.strategy_class.disables_clipping and entropy_loss.strategy_class.needs == {"entropies"}
    assert protocol.implemented_hooks(flat.strategy_class) == ("token_advantages",)
    assert list(flat.strategy_class.Config.model_fields) == []

    class GoodConfig(TokenStrategyConfig):
        factor: float = Field(0.5, gt=0, description="the weight")

    @token_strategy("test_configured", config=GoodConfig)
    def configured(batch, *, factor: float = 0.5):
        return torch.full(batch.mask.shape, factor)

    assert configured.strategy_class.Config is GoodConfig

    class WrongDefault(TokenStrategyConfig):
        factor: float = Field(0.7, description="the weight")

    with pytest.raises(ValueError, match="Config default of 'factor' \\(0.7\\) differs from the function's \\(0.5\\)"):
        token_strategy("test_wrong_default", config=WrongDefault)(configured.fn)
    with pytest.raises(ValueError, match="Config fields \\['factor'\\] differ from the function's arguments"):
        token_strategy("test_wrong_fields", config=GoodConfig)(flat.fn)
    assert "test_wrong_default" not in TOKEN_STRATEGIES and "test_wrong_fields" not in TOKEN_STRATEGIES


# ----------------------------------------------------------------------------------------------- dry run
def test_dry_run_catches_what_only_the_function_detects():
    dry_run_token_strategies(build_strategies("token", list(BUILTINS)))
    dry_run_token_strategies(list(BUILTINS))
    [built] = build_token_strategies([{"name": f"{USER}:at_most_one", "factor": 2.0}])  # the Config cannot know
    with pytest.raises(ValueError, match=r"token strategy 'user_strategies.user_token:at_most_one': factor must be <= 1"):
        dry_run_token_strategies([built])
    with pytest.raises(ValueError, match="factor must be <= 1"):
        dry_run_token_strategies([{"name": f"{USER}:at_most_one", "factor": 2.0}])


def test_repeated_names_are_allowed_for_tokens():
    built = build_token_strategies(["high_entropy", {"name": "high_entropy", "top_fraction": 1.0}])
    res = apply_token_strategies(built, _small_batch())
    assert set(res.diagnostics) == {"high_entropy", "high_entropy#2"}
    with pytest.raises(StrategyError, match="high_entropy is listed twice"):
        build_strategies("token", ["high_entropy", "high_entropy"])  # the protocol's default: pass unique=False


# ----------------------------------------------------------------------- Config defaults = pure-function defaults
def _defaults(fn):
    return {k: p.default for k, p in inspect.signature(fn).parameters.items() if p.default is not p.empty}


def test_config_defaults_equal_the_pure_functions_defaults():
    assert SteerConfig().model_dump() == {"w_min": 0.8, "w_max": 1.2, "mode": "linear"}
    assert _defaults(steer_weights) == {"w_min": 0.8, "w_max": 1.2, "mode": "linear"}
    assert HighEntropyConfig().model_dump() == {"top_fraction": 0.2, "entropy_source": "current"}
    assert _defaults(high_entropy_mask) == {"top_fraction": 0.2}
    assert ClipCovConfig().model_dump() == {"clip_ratio": 2e-4, "cov_lb": 1.0, "cov_ub": 5.0,
                                            "clip_low": "from_batch", "clip_high": "from_batch"}
    assert _defaults(clip_cov_mask) == {"clip_ratio": 2e-4, "cov_lb": 1.0, "cov_ub": 5.0, "clip_low": 0.2,
                                        "clip_high": 0.2, "generator": None}
    assert KlCovConfig().model_dump() == {"k_percent": 0.2, "kl_coef": 1.0}
    assert _defaults(kl_cov_mask) == {"k_percent": 0.2} and _defaults(kl_cov_penalty) == {"kl_coef": 1.0}
    assert TwGrpoConfig().model_dump() == {"alpha": 1.7, "chunk_size": 64}
    assert _defaults(tw_grpo_weights) == {"alpha": 1.7}
    assert _defaults(tw_grpo_weights_chunked) == {"alpha": 1.7, "chunk_size": 64, "temperature": 1.0}
    assert EntropyAdvantageConfig().model_dump() == {"alpha": 0.4, "kappa": 2.0}
    assert _defaults(entropy_advantage) == {"alpha": 0.4, "kappa": 2.0}


def _default(name):
    return build_strategy("token", name)


def test_default_steer_hand():
    # linear, 0.8 / 1.2: |Omega| = [0, .1, .2, .4] -> w = 1.2 - |Omega| / 0.4 * 0.4
    close(_default("steer").token_weights(_small_batch()), [[1.2, 1.1, 1.0, 0.8]])


def test_default_high_entropy_hand():
    # rho 0.2 on 0..9: tau = quantile(0.8) = 7.2 -> keeps 8 and 9
    b = TokenBatch(advantages=torch.ones(1), mask=torch.ones(1, 10),
                   entropies=torch.arange(10, dtype=torch.float32).reshape(1, 10))
    close(_default("high_entropy").token_weights(b), [[0] * 8 + [1, 1]])


def test_default_clip_cov_hand():
    # A = [2, -2, 2, -2], logp = [0, -4, -1, -3] -> Cov = [4, 4, 2, 2], all in (1, 5), ratio 1 (nothing clipped):
    # clip_ratio 2e-4 of 4 tokens -> max(int(8e-4), 1) = 1 token chosen by randperm(4) of the seeded generator.
    # The clip range comes from the batch; without one it is 0.2 / 0.2, clip_cov_mask's own default.
    adv, lp = t([2.0, -2.0, 2.0, -2.0]), t([0.0, -4.0, -1.0, -3.0])
    b = TokenBatch(advantages=adv, mask=torch.ones(1, 4), logps=lp, old_logps=lp,
                   generator=torch.Generator().manual_seed(7))
    w = _default("clip_cov").token_weights(b)
    chosen = int(torch.randperm(4, generator=torch.Generator().manual_seed(7))[0])
    expected = [1.0] * 4
    expected[chosen] = 0.0
    close(w, [expected])
    assert torch.equal(w, clip_cov_mask(adv, lp, lp, torch.ones(1, 4), generator=torch.Generator().manual_seed(7)))
    # an old log-prob that makes token 0's ratio e > 1.2 with A > 0: already clipped at the default 0.2, a candidate
    # when the batch's clip_high is 2 (e < 3)
    old = lp.clone()
    old[0, 0] = -1.0
    strat = build_strategy("token", {"name": "clip_cov", "clip_ratio": 1.0})
    close(strat.token_weights(b.replace(old_logps=old)), [[1, 0, 0, 0]])
    close(strat.token_weights(b.replace(old_logps=old, clip_low=0.2, clip_high=2.0)), [[0, 0, 0, 0]])


def test_default_kl_cov_hand():
    # A = [1, 1, -1, -1], logp = [-.5, -3, -2, -2.5] -> Cov = [1.5, -1, 0, .5]; k 0.2 % of 4 -> 1 token (token 0);
    # penalty kl_coef * |logp - old| = 1 * 0.25 there
    lp = t([-0.5, -3.0, -2.0, -2.5]).requires_grad_(True)
    b = TokenBatch(advantages=t([1.0, 1.0, -1.0, -1.0]), mask=torch.ones(1, 4), logps=lp, old_logps=lp.detach() - 0.25)
    pen, diag = _default("kl_cov").token_loss(b)
    close(pen.detach(), [[0.25, 0, 0, 0]])
    assert pen.requires_grad and diag == {"selected_frac": 0.25, "penalty_mean": 0.0625}


def test_default_tw_grpo_hand():
    # one group of 2, V = 2: K = [0, 0.5] (t0 identical rows; t1 rows [.8,.2] / [.2,.8], D = 0.5 each)
    # -> K^ = [0, 0.5 / (0.5 + 1e-8)] -> w = 1 + 0.7 K^ with the default alpha 1.7
    L = lambda *p: [math.log(x) for x in p]  # noqa: E731
    lp = torch.tensor([[L(.5, .5), L(.8, .2)], [L(.5, .5), L(.2, .8)]])
    b = TokenBatch(advantages=torch.ones(2), mask=torch.ones(2, 2), group_size=2, full_logprobs_fn=lambda: lp)
    k1 = 0.5 / (0.5 + 1e-8)
    close(_default("tw_grpo").token_weights(b), [[1.0, 1 + 0.7 * k1], [1.0, 1 + 0.7 * k1]])


def test_default_entropy_advantage_hand():
    # psi = min(0.4 H, |A| / 2)
    b = TokenBatch(advantages=t([1.0, -1.0, 0.0, 2.0, 5.0]), mask=t([1, 1, 1, 1, 0]),
                   entropies=t([0.5, 10.0, 3.0, 1.0, 1.0]))
    close(_default("entropy_advantage").token_advantages(b), [[1.2, -0.5, 0.0, 2.4, 0.0]])

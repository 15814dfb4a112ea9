"""The pair strategies through their hooks with hand-built PairContexts (MADPO's weights, beta-DPO's EMA / filter /
batch beta over one and two simulated processes, train vs eval), one-line config errors naming the key, state round
trip, the weighted loss by hand, a user pair strategy by import path -- also in a real tiny DPO run, where its
weights reach the loss -- and refusal of classes with no pair hook."""
from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from trl import DPOTrainer

from posttrain.errors import UserError
from posttrain.losses import dpo_loss, rpo_nll_term, weighted_preference_loss
from posttrain.registry import RegistryError
from posttrain.weighting.pair_specs import build_pair_weighting, dry_run_pair_specs
from posttrain.weighting.pairs import (BetaDPO, BetaDPOStrategy, MADPOStrategy, build_pair_strategies,
                                       madpo_weights, required_columns, rpo_trl_args, split_pair_strategies)
from posttrain.weighting.protocol import PairContext, StrategyError, build_strategy, registered


def _sig(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def _softplus(x: float) -> float:
    return math.log1p(math.exp(x))


def _ctx(gaps=None, *, margins=None, mode="train", generator=None, dtype=torch.float64, **kw) -> PairContext:
    """A context whose implicit-reward gaps are ``gaps`` (policy_chosen = gaps, every other log-prob 0)."""
    n = len(gaps) if gaps is not None else len(margins)
    g = torch.tensor(gaps if gaps is not None else [0.0] * n, dtype=dtype)
    zeros = torch.zeros(n, dtype=dtype)
    columns = {} if margins is None else {"margin": torch.tensor(margins, dtype=dtype)}
    return PairContext(g, zeros, zeros, zeros, beta=0.1, columns=columns, mode=mode, generator=generator, **kw)


# ---------------------------------------------------------------------------------------------------------- registry
def test_builtins_registered_and_compat_registry():
    assert registered("pair")["madpo"] is MADPOStrategy
    assert registered("pair")["beta_dpo"] is BetaDPOStrategy
    assert MADPOStrategy.columns == ("margin",) and "2510.05342" in MADPOStrategy.cite
    assert "2407.08639" in BetaDPOStrategy.cite
    for cls in (MADPOStrategy, BetaDPOStrategy):
        for name, field in cls.Config.model_fields.items():
            assert "arXiv" in (field.description or ""), (cls.__name__, name)


# ------------------------------------------------------------------------------------------------------------- MADPO
def test_madpo_hook_by_hand():
    s = build_strategy("pair", {"name": "madpo"})
    w = s.pair_weights(_ctx(margins=[1.0, 0.0, -3.0, -2.0]))
    # h = 1, defaults: k = (2-1)/(1-0.5) = 2, c(1) = 0.5 + 1.5/(1 + 2 e^{-1}) = 1.3641753, w = sig(c)/sig(1)
    c = 0.5 + 1.5 / (1 + 2 * math.exp(-1.0))
    assert w[0].item() == pytest.approx(_sig(c) / _sig(1.0), rel=1e-12)
    assert w[0].item() == pytest.approx(1.0894304274768822, rel=1e-12)
    assert w[1].item() == 1.0  # h = 0
    assert w[2].item() == 1.0 and w[3].item() == 1.0  # h <= -tau = -2: capped at 1
    assert not w.requires_grad and w.shape == (4,)


def test_madpo_paper_tau_by_hand():
    s = build_strategy("pair", {"name": "madpo", "tau": 6.907})
    w = s.pair_weights(_ctx(margins=[1.0, -5.0]))
    # c(1) = 0.5 + 1.5/(1 + 2 e^{1 - 6.907}) = 1.9918832, w = sig(c)/sig(1) = 1.2036549
    c = 0.5 + 1.5 / (1 + 2 * math.exp(1.0 - 6.907))
    assert w[0].item() == pytest.approx(_sig(c) / _sig(1.0), rel=1e-12)
    assert w[0].item() == pytest.approx(1.2036548771810056, rel=1e-9)
    # h = -5 > -tau: c(5) = 0.5 + 1.5/(1 + 2 e^{-1.907}); w = sig(-5 c)/sig(-5) < 1
    c5 = 0.5 + 1.5 / (1 + 2 * math.exp(5.0 - 6.907))
    assert w[1].item() == pytest.approx(_sig(-5 * c5) / _sig(-5.0), rel=1e-9)


def test_madpo_hook_needs_margin_and_finite_values():
    s = build_strategy("pair", {"name": "madpo"})
    with pytest.raises(KeyError):
        s.pair_weights(_ctx([0.0, 0.0]))  # no margin column: the trainer checks this before training
    with pytest.raises(ValueError, match="margins"):
        s.pair_weights(_ctx(margins=[1.0, float("nan")]))
    assert required_columns([s]) == [("margin", "madpo")]


# ---------------------------------------------------------------------------------------------------------- beta-DPO
def test_beta_dpo_hook_by_hand_train_then_eval():
    s = build_strategy("pair", {"name": "beta_dpo", "rho": 0.0})
    logged = {}
    keep, beta = s.batch_beta(_ctx([1.0, 2.0, 3.0], log=logged.__setitem__))
    # EMA first: mean 2, unbiased std 1 -> M0 = 0.1*2 = 0.2, sigma = 0.1; rho = 0 keeps all;
    # beta = 0.1 (1 + 0.6 (2 - 0.2)) = 0.208
    assert keep.tolist() == [True, True, True] and keep.dtype == torch.bool
    assert isinstance(beta, float) and beta == pytest.approx(0.208)
    assert logged == pytest.approx({"pairs/kept_fraction": 1.0, "pairs/gap_ema_mean": 0.2, "pairs/gap_ema_std": 0.1})
    # evaluation: no EMA update; beta from the current M0: mean(0, 4) = 2 -> 0.1 (1 + 0.6 (2 - 0.2)) = 0.208
    _, beta_eval = s.batch_beta(_ctx([0.0, 4.0], mode="eval"))
    assert beta_eval == pytest.approx(0.208)
    assert s.state_dict() == pytest.approx({"gap_mean": 0.2, "gap_std": 0.1, "num_updates": 1})


def test_beta_dpo_gap_is_the_implicit_reward_gap():
    s = build_strategy("pair", {"name": "beta_dpo", "rho": 0.0})
    t = lambda *v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
    # (2 - 1) - (0 - 0.5) = 1.5 ; (1 - 1) - (1 - 0) = -1 -> mean 0.25 -> M0 = 0.025
    ctx = PairContext(t(2.0, 1.0), t(0.0, 1.0), t(1.0, 1.0), t(0.5, 0.0), beta=0.1)
    s.batch_beta(ctx)
    assert s.beta_dpo.gap_mean == pytest.approx(0.025)
    assert s.beta_dpo.gap_std == pytest.approx(0.1 * math.sqrt(((1.5 - 0.25) ** 2 + (-1 - 0.25) ** 2) / 1))


def test_beta_dpo_hook_equals_official_order_on_one_process():
    s = build_strategy("pair", {"name": "beta_dpo", "rho": 0.5, "alpha": 0.6})
    ref, gen_ref, gen = BetaDPO(rho=0.5, alpha=0.6), torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    for step in range(3):
        gaps = torch.randn(8, generator=torch.Generator().manual_seed(10 + step))
        keep, beta = s.batch_beta(_ctx(gaps.tolist(), dtype=torch.float32, generator=gen))
        keep_ref, beta_ref = ref.step(gaps, generator=gen_ref)
        assert torch.equal(keep, keep_ref) and beta == float(beta_ref)
        assert int(keep.sum()) == 4
    assert s.state_dict() == ref.state_dict()


def test_beta_dpo_two_simulated_processes_slice_the_global_mask():
    full = torch.randn(8, generator=torch.Generator().manual_seed(5))
    single, gen_single = BetaDPO(rho=0.5), torch.Generator().manual_seed(7)
    keep_full, beta_full = single.step(full, generator=gen_single)
    halves, betas = [], []
    for rank in range(2):
        s = build_strategy("pair", {"name": "beta_dpo", "rho": 0.5})
        ctx = _ctx(full[rank * 4:(rank + 1) * 4].tolist(), dtype=torch.float32,
                   generator=torch.Generator().manual_seed(7), process_index=rank, num_processes=2,
                   all_gather=lambda t: full)  # every rank receives the concatenation of both ranks' gaps
        keep, beta = s.batch_beta(ctx)
        halves.append(keep)
        betas.append(beta)
        assert s.state_dict() == single.state_dict()
    assert torch.equal(torch.cat(halves), keep_full)
    assert betas[0] == betas[1] == float(beta_full)


def test_beta_dpo_needs_equal_local_batches():
    s = build_strategy("pair", {"name": "beta_dpo"})
    ctx = _ctx([0.1, 0.2], num_processes=2, all_gather=lambda t: torch.cat([t, t[:1]]))
    with pytest.raises(RuntimeError, match="equal local batch sizes"):
        s.batch_beta(ctx)


def test_beta_dpo_warns_when_it_would_do_nothing():
    from posttrain.weighting.protocol import strategy_warnings

    quiet = build_strategy("pair", {"name": "beta_dpo", "alpha": 0.0})  # filtering only: the official default
    assert strategy_warnings([quiet, build_strategy("pair", {"name": "madpo"})]) == []
    idle = build_strategy("pair", {"name": "beta_dpo", "alpha": 0.0, "rho": 0.0})
    assert strategy_warnings([idle]) == ["beta_dpo: alpha 0 and rho 0 disable both the dynamic beta and the filter: "
                                         "this is plain DPO with beta = beta0 = 0.1"]


def test_beta_dpo_state_round_trip():
    s = build_strategy("pair", {"name": "beta_dpo", "rho": 0.5})
    for step in range(3):
        s.batch_beta(_ctx(torch.randn(6, generator=torch.Generator().manual_seed(step)).tolist(),
                          generator=torch.Generator().manual_seed(0)))
    state = json.loads(json.dumps(s.state_dict()))
    assert state["num_updates"] == 3
    other = build_strategy("pair", {"name": "beta_dpo", "rho": 0.5})
    other.load_state_dict(state)
    assert other.state_dict() == s.state_dict()
    gaps = torch.randn(6, generator=torch.Generator().manual_seed(9)).tolist()
    a = s.batch_beta(_ctx(gaps, generator=torch.Generator().manual_seed(1)))
    b = other.batch_beta(_ctx(gaps, generator=torch.Generator().manual_seed(1)))
    assert torch.equal(a[0], b[0]) and a[1] == b[1]
    with pytest.raises(ValueError, match="missing"):
        other.load_state_dict({"gap_mean": 0.0})


# ------------------------------------------------------------------------------------------------------ config errors
@pytest.mark.parametrize("spec,fragment", [
    ({"name": "madpo", "c_min": 1.5}, "madpo: c_min: Input should be less than 1"),
    ({"name": "madpo", "c_max": 1.0}, "madpo: c_max: Input should be greater than 1"),
    ({"name": "madpo", "c_max": float("inf")}, "madpo: c_max: "),
    ({"name": "madpo", "lam": 0.0}, "madpo: lam: Input should be greater than 0"),
    ({"name": "madpo", "tau": -1.0}, "madpo: tau: Input should be greater than 0"),
    ({"name": "madpo", "tau2": 1.0}, "madpo: unknown argument 'tau2'; accepted: c_max, c_min, lam, tau"),
    ({"name": "beta_dpo", "rho": 1.0}, "beta_dpo: rho: Input should be less than 1"),
    ({"name": "beta_dpo", "gamma": 1.5}, "beta_dpo: gamma: Input should be less than or equal to 1"),
    ({"name": "beta_dpo", "beta0": 0.0}, "beta_dpo: beta0: Input should be greater than 0"),
    ({"name": "beta_dpo", "min_std": 0.0}, "beta_dpo: min_std: "),
    ({"name": "beta_dpo", "alpha": float("nan")}, "beta_dpo: alpha: "),
])
def test_bad_config_is_one_line_naming_the_key(spec, fragment):
    with pytest.raises(StrategyError) as err:
        build_strategy("pair", spec)
    assert str(err.value).startswith(fragment) and "\n" not in str(err.value), str(err.value)


def test_pair_lists_index_errors_and_refuse_two_batch_betas():
    with pytest.raises(StrategyError, match=r"^1: beta_dpo: rho: "):
        build_pair_strategies([{"name": "madpo"}, {"name": "beta_dpo", "rho": 2.0}])
    with pytest.raises(StrategyError, match=r"^1: beta_dpo: only one batch-beta strategy is allowed \(already have "
                                             r"beta_dpo\)$"):
        build_pair_strategies([{"name": "beta_dpo"}, {"name": "beta_dpo", "rho": 0.5}])
    with pytest.raises(RegistryError, match="unknown pair strategy 'wpo'"):
        build_pair_strategies([{"name": "wpo"}])
    with pytest.raises(StrategyError, match="only one batch-beta"):
        dry_run_pair_specs([{"name": "beta_dpo"}, {"name": "user_strategies.user_pair:FailingBeta"}])
    # MADPO twice: the weights multiply, as before the protocol
    built = build_pair_strategies([{"name": "madpo"}, {"name": "madpo", "tau": 6.907}, {"name": "beta_dpo"}])
    weighters, beta = split_pair_strategies(built)
    assert [type(s) for s in weighters] == [MADPOStrategy, MADPOStrategy] and type(beta) is BetaDPOStrategy
    # built strategies are accepted as they are; a strategy of another kind is refused
    assert build_pair_strategies([built[2]])[0] is built[2]
    from user_strategies.user_pair import TokenHookOnly

    with pytest.raises(StrategyError, match=r"^0: TokenHookOnly is not a pair strategy \(it implements none of "
                                             r"pair_weights, batch_beta\)$"):
        build_pair_strategies([TokenHookOnly()])


def test_compat_pair_weighting_view():
    pw = build_pair_weighting([{"name": "madpo", "tau": 2.0}, {"name": "beta_dpo", "rho": 0.5}])
    margins = torch.tensor([-3.0, 0.5, 1.0, 5.0])
    assert torch.equal(pw.margin_weights(margins), madpo_weights(margins, tau=2.0))
    assert isinstance(pw.gap_strategy, BetaDPO) and pw.needs_margins and pw.active
    keep, beta = pw.gap_strategy.step(torch.tensor([0.2, -0.1, 0.4, 0.0]), generator=torch.Generator().manual_seed(0))
    assert int(keep.sum()) == 2


def test_rpo_is_trls_sft_term():
    assert rpo_trl_args() == {"loss_type": ["sigmoid", "sft"], "loss_weights": [1.0, 1.0]}
    assert rpo_trl_args(0.5)["loss_weights"] == [1.0, 0.5]
    with pytest.raises(ValueError, match="alpha"):
        rpo_trl_args(0.0)
    from posttrain.weighting.pairs import rpo

    assert rpo.rpo_nll_term is rpo_nll_term and "2405.16436" in rpo.__doc__
    assert "rpo" not in registered("pair")  # a loss term, not a pair strategy


# ------------------------------------------------------------------------------------------------- the weighted loss
def _t(*v):
    return torch.tensor(v, dtype=torch.float64)


def test_weighted_preference_loss_by_hand():
    pc, pr, zero = _t(-1.0, -2.0), _t(-2.0, -1.0), _t(0.0, 0.0)  # Delta = [1, -1]
    # beta 1, sigmoid: l = [softplus(-1), softplus(1)] = [0.3132617, 1.3132617]
    plain = weighted_preference_loss(pc, pr, zero, zero, beta=1.0)
    assert plain.item() == pytest.approx((_softplus(-1) + _softplus(1)) / 2, rel=1e-12)
    w = _t(2.0, 1.0)
    # weights not renormalised: (2*0.3132617 + 1.3132617) / 2 = 0.9698925
    assert weighted_preference_loss(pc, pr, zero, zero, beta=1.0, weights=w).item() == pytest.approx(
        0.9698925312773343, rel=1e-12)
    # pair 1 filtered out of numerator and denominator: 2*0.3132617 / 1 = 0.6265234
    keep = torch.tensor([True, False])
    assert weighted_preference_loss(pc, pr, zero, zero, beta=1.0, weights=w, keep=keep).item() == pytest.approx(
        0.6265233750364457, rel=1e-12)
    # nothing kept: 0 (denominator max(0, 1) = 1), not NaN
    none = torch.tensor([False, False])
    assert weighted_preference_loss(pc, pr, zero, zero, beta=1.0, keep=none).item() == 0.0
    # hinge: relu(1 - Delta) = [0, 2] -> mean 1; two types add with their loss weights: 0.5*1 + 2*plain
    mixed = weighted_preference_loss(pc, pr, zero, zero, beta=1.0, loss_types=["hinge", "sigmoid"],
                                     loss_weights=[0.5, 2.0])
    assert mixed.item() == pytest.approx(0.5 * 1.0 + 2.0 * plain.item(), rel=1e-12)


def test_weighted_preference_loss_ipo_lengths_and_sft():
    pc, pr, zero = _t(-1.0, -2.0), _t(-2.0, -1.0), _t(0.0, 0.0)
    # IPO on length-normalised log-ratios: lengths chosen [2, 1], rejected [1, 4] -> Delta = [-0.5+2, -2+0.25]
    # = [1.5, -1.75]; beta 0.5 -> (Delta - 1)^2 = [0.25, 7.5625] -> mean 3.90625
    ipo = weighted_preference_loss(pc, pr, zero, zero, beta=0.5, loss_types=["ipo"], chosen_lengths=_t(2.0, 1.0),
                                   rejected_lengths=_t(1.0, 4.0))
    assert ipo.item() == pytest.approx(3.90625, rel=1e-12)
    # a zero length counts as 1 (as TRL): lengths [0, 1] / [1, 1] -> Delta = [1, -1] -> (Delta - 1)^2 = [0, 4]
    assert weighted_preference_loss(pc, pr, zero, zero, beta=0.5, loss_types=["ipo"], chosen_lengths=_t(0.0, 1.0),
                                    rejected_lengths=_t(1.0, 1.0)).item() == pytest.approx(2.0)
    # RPO's SFT term: token-mean NLL of the chosen tokens -(-1 - 2 - 3)/3 = 2, neither weighted nor filtered
    tok, mask = _t(-1.0, -2.0, -3.0, -9.0).view(2, 2), torch.tensor([[1, 1], [1, 0]])
    sft = dict(loss_types=["sigmoid", "sft"], loss_weights=[1.0, 0.5], chosen_token_logps=tok, chosen_mask=mask)
    full = weighted_preference_loss(pc, pr, zero, zero, beta=1.0, **sft)
    sigmoid = (_softplus(-1) + _softplus(1)) / 2
    assert full.item() == pytest.approx(sigmoid + 0.5 * 2.0, rel=1e-12)
    filtered = weighted_preference_loss(pc, pr, zero, zero, beta=1.0, weights=_t(0.0, 0.0),
                                        keep=torch.tensor([False, False]), **sft)
    assert filtered.item() == pytest.approx(1.0, rel=1e-12)


def test_weighted_preference_loss_matches_dpo_loss_and_carries_gradient():
    g = torch.Generator().manual_seed(0)
    pc = torch.randn(5, generator=g, dtype=torch.float64, requires_grad=True)
    pr, rc, rr = (torch.randn(5, generator=g, dtype=torch.float64) for _ in range(3))
    w = torch.rand(5, generator=g, dtype=torch.float64)
    keep = torch.tensor([True, False, True, True, False])
    got = weighted_preference_loss(pc, pr, rc, rr, beta=0.3, loss_types=["robust"], weights=w, keep=keep,
                                   label_smoothing=0.1)
    losses, _, _ = dpo_loss(pc, pr, rc, rr, beta=0.3, loss_type="robust", label_smoothing=0.1)
    assert got.detach().item() == pytest.approx(float((losses.detach() * w * keep).sum() / 3), rel=1e-12)
    got.backward()
    assert pc.grad is not None and pc.grad[1].item() == 0.0 and pc.grad[0].item() != 0.0


@pytest.mark.parametrize("kwargs,fragment", [
    (dict(loss_types=["nca_pair"]), "unknown loss type"),
    (dict(loss_types=["sft"], chosen_token_logps=torch.zeros(2, 1), chosen_mask=torch.ones(2, 1)), "no pairwise"),
    (dict(loss_types=["sigmoid", "hinge"], loss_weights=[1.0]), "loss_weights has 1 entries"),
    (dict(loss_types=["ipo"]), "'ipo' needs chosen_lengths"),
    (dict(loss_types=["sigmoid", "sft"]), "'sft' needs chosen_token_logps"),
])
def test_weighted_preference_loss_errors(kwargs, fragment):
    with pytest.raises(ValueError, match=fragment):
        weighted_preference_loss(_t(0.0, 0.0), _t(0.0, 0.0), _t(0.0, 0.0), _t(0.0, 0.0), beta=0.1, **kwargs)


# -------------------------------------------------------------------------------------------------- user strategies
def test_user_pair_strategy_by_import_path():
    s = build_strategy("pair", {"name": "user_strategies.user_pair:ScaledColumnWeights", "scale": 0.5})
    logged = {}
    ctx = PairContext(*(torch.zeros(3),) * 4, beta=0.1, columns={"difficulty": torch.tensor([1.0, 2.0, 4.0])},
                      log=logged.__setitem__)
    assert s.pair_weights(ctx).tolist() == [0.5, 1.0, 2.0]
    assert s.calls == [("train", 3)] and logged == {"user/difficulty_mean": pytest.approx(7 / 3)}
    assert required_columns([s]) == [("difficulty", "ScaledColumnWeights")]
    with pytest.raises(StrategyError, match="scale: Input should be greater than or equal to 0"):
        build_strategy("pair", {"name": "user_strategies.user_pair:ScaledColumnWeights", "scale": -1})


@pytest.mark.parametrize("cls,fragment", [
    ("ConfigOnly", "implements none of the hooks of its kind (pair_weights, batch_beta)"),
    ("TokenHookOnly", "implements token_weights, which the trainer never calls on a pair strategy"),
])
def test_user_class_without_pair_hook_is_refused_in_one_line(cls, fragment):
    with pytest.raises(StrategyError) as err:
        build_strategy("pair", {"name": f"user_strategies.user_pair:{cls}"})
    assert fragment in str(err.value) and "\n" not in str(err.value)


# ------------------------------------------------------------------------------------- a real tiny DPO training run
@pytest.fixture(scope="module")
def tiny(one_torch_thread):
    from posttrain.models import load_tiny_model

    return load_tiny_model()


def _dpo(tiny, tmp_path, data, pair_strategies=(), cls=None, **cfg):
    from test_trainer_dpo import _args

    from posttrain.trainers import AdaptiveDPOTrainer

    model, tok = tiny
    cls = cls or AdaptiveDPOTrainer
    extra = {} if cls is DPOTrainer else {"pair_strategies": list(pair_strategies)}
    tr = cls(model=copy.deepcopy(model), ref_model=copy.deepcopy(model), args=_args(tmp_path, **cfg),
             train_dataset=data, processing_class=tok, **extra)
    tr.model.train()
    return tr


def _batch_loss(tr, drop=("weight", "margin", "difficulty")):
    batch = tr.data_collator([tr.train_dataset[i] for i in range(len(tr.train_dataset))])
    if not hasattr(tr, "pair_strategies"):  # TRL's own trainer: no extra columns
        batch = {k: v for k, v in batch.items() if k not in drop}
    return tr.compute_loss(tr.model, batch)


def test_user_pair_strategy_in_a_real_dpo_run(tiny, tmp_path):
    from test_trainer_dpo import N, _pairs

    difficulty = [1.0, 2.0, 0.5, 4.0]
    user = {"name": "user_strategies.user_pair:ScaledColumnWeights", "scale": 0.5}
    ours = _dpo(tiny, tmp_path / "u", _pairs(difficulty=difficulty), [user])
    # the same weights as a 'weight' column: 0.5 * difficulty
    explicit = _dpo(tiny, tmp_path / "e", _pairs(weight=[0.5 * d for d in difficulty]))
    plain = _dpo(tiny, tmp_path / "p", _pairs(), cls=DPOTrainer)
    loss = _batch_loss(ours)
    assert ours.pair_strategies[0].calls == [("train", N)]  # the hook ran, on the whole micro-batch
    assert abs(loss.item() - _batch_loss(explicit).item()) <= 1e-6  # its weights reached the loss
    assert abs(loss.item() - _batch_loss(plain).item()) > 1e-4
    assert ours._metrics["train"]["user/difficulty_mean"][-1] == pytest.approx(sum(difficulty) / N)
    assert ours._metrics["train"]["pairs/weight_mean"][-1] == pytest.approx(0.5 * sum(difficulty) / N)
    # uniform difficulty 1, scale 0.5: exactly half of TRL's loss
    half = _dpo(tiny, tmp_path / "h", _pairs(difficulty=[1.0] * N), [user])
    assert abs(_batch_loss(half).item() - 0.5 * _batch_loss(plain).item()) <= 1e-6
    # a training step: the hook runs inside trainer.train(), through the dataloader (its column survives)
    ours.train()
    assert ours.pair_strategies[0].calls[-1] == ("train", N) and len(ours.pair_strategies[0].calls) == 2


def test_user_zero_weights_leave_the_model_unchanged(tiny, tmp_path):
    from test_trainer_dpo import _pairs

    tr = _dpo(tiny, tmp_path / "z", _pairs(), ["user_strategies.user_pair:ZeroWeights"], learning_rate=5e-2)
    assert _batch_loss(tr).item() == 0.0
    before = {k: v.clone() for k, v in tr.model.state_dict().items()}
    tr.train()
    assert [r["loss"] for r in tr.state.log_history if "loss" in r] == [0.0]
    assert all(torch.equal(before[k], v) for k, v in tr.model.state_dict().items())


def test_trainer_one_line_errors_for_user_strategies(tiny, tmp_path):
    from test_trainer_dpo import _pairs

    with pytest.raises(UserError, match=r"^weighting\.pairs: ScaledColumnWeights needs a 'difficulty' column in "
                                        r"data\.train$"):
        _dpo(tiny, tmp_path, _pairs(), [{"name": "user_strategies.user_pair:ScaledColumnWeights"}])
    with pytest.raises(UserError, match=r"^weighting\.pairs: madpo needs a 'margin' column in data\.train .*"
                                        r"reward_model\+dpo"):
        _dpo(tiny, tmp_path, _pairs(), [{"name": "madpo"}])
    with pytest.raises(UserError) as err:
        _dpo(tiny, tmp_path, _pairs(), ["user_strategies.user_pair:ConfigOnly"])
    assert str(err.value).startswith("weighting.pairs.0: pair strategy") and "\n" not in str(err.value)
    with pytest.raises(UserError, match=r"^weighting\.pairs\.1: FailingBeta: only one batch-beta"):
        _dpo(tiny, tmp_path, _pairs(), ["beta_dpo", "user_strategies.user_pair:FailingBeta"])
    failing = _dpo(tiny, tmp_path, _pairs(), ["user_strategies.user_pair:FailingBeta"])
    loss = _batch_loss(failing)  # the step is skipped (zero loss) and the run asked to stop with a checkpoint
    assert float(loss.detach()) == 0.0
    assert failing.guard.stop_reason == "pair strategy 'FailingBeta' failed in batch_beta: no beta today"


def test_trainer_state_per_strategy_and_pre_protocol_checkpoints(tiny, tmp_path):
    from test_trainer_dpo import _pairs

    tr = _dpo(tiny, tmp_path, _pairs(margin=[0.0, 1.0, 2.0, 3.0]), ["madpo", {"name": "beta_dpo", "rho": 0.5}])
    tr.pair_strategies[1].load_state_dict({"gap_mean": 0.5, "gap_std": 0.25, "num_updates": 3})
    state = tr.posttrain_state()
    assert state["strategies"] == {"0:madpo": {}, "1:beta_dpo": {"gap_mean": 0.5, "gap_std": 0.25, "num_updates": 3}}
    assert set(state["generators"]) == {"train", "eval"}
    fresh = _dpo(tiny, tmp_path, _pairs(margin=[0.0, 1.0, 2.0, 3.0]), ["madpo", {"name": "beta_dpo", "rho": 0.5}])
    fresh.load_posttrain_state(state)
    assert fresh.pair_strategies[1].state_dict() == state["strategies"]["1:beta_dpo"]
    # a checkpoint written before the protocol keeps beta-DPO's EMA under 'gap_strategy'
    old = _dpo(tiny, tmp_path, _pairs(), [{"name": "beta_dpo"}])
    old.load_posttrain_state({"gap_strategy": {"gap_mean": -1.0, "gap_std": 2.0, "num_updates": 7}})
    assert old.pair_strategies[0].state_dict() == {"gap_mean": -1.0, "gap_std": 2.0, "num_updates": 7}

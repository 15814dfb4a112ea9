"""Hand-computed cases, edge cases, composition and errors for posttrain.weighting.tokens."""
from __future__ import annotations

import ast
import importlib.util
import math
import types
from pathlib import Path

import pytest
import torch

from posttrain.registry import RegistryError
from posttrain.weighting.tokens import (
    TOKEN_STRATEGIES,
    TokenBatch,
    apply_token_strategies,
    clip_cov_mask,
    clipping_disabled,
    compose_token_weights,
    entropy_advantage,
    high_entropy_mask,
    kl_cov_loss,
    kl_cov_mask,
    kl_cov_penalty,
    required_inputs,
    steer_weights,
    token_strategy,
    token_weight_stats,
    tw_grpo_weights,
    tw_grpo_weights_chunked,
)
from posttrain.weighting.tokens import _common

LN2 = math.log(2.0)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def t(*rows):
    return torch.tensor(rows, dtype=torch.float32)


def close(a, b, tol=1e-5):
    # (torch.testing.assert_close costs ~2.5 s of imports on first use)
    b = torch.as_tensor(b, dtype=a.dtype)
    assert a.shape == b.shape, (a.shape, b.shape)
    assert bool(((a - b).abs() <= tol).all()), (a, b)


# ----------------------------------------------------------------------------------------------- STEER
# 1x4 example. p = p_old = 0.5 and A = 1, so Omega = 1/0.5 * 0.5*0.5 * (ln 0.5 + H) = 0.5 (H - ln 2).
# H = ln2 + [0, 0.2, 0.4, 0.8]  ->  |Omega| = [0, 0.1, 0.2, 0.4], m_min = 0, m_max = 0.4.
STEER_H = t([LN2, LN2 + 0.2, LN2 + 0.4, LN2 + 0.8])
HALF = t([math.log(0.5)] * 4)
ONE = t([1, 1, 1, 1])


def test_steer_linear_hand():
    # w = 1.2 - metric / 0.4 * 0.4 = 1.2 - metric
    w = steer_weights(torch.tensor([1.0]), STEER_H, HALF, HALF, ONE)
    close(w, [[1.2, 1.1, 1.0, 0.8]])


def test_steer_exponential_hand():
    # k = -ln 0.8 / max(0.4, 0.02); w = exp(-k m) = 0.8 ** (m / 0.4) = 0.8 ** [0, .25, .5, 1]
    w = steer_weights(torch.tensor([1.0]), STEER_H, HALF, HALF, ONE, w_min=0.8, w_max=1.0, mode="exponential")
    close(w, [[1.0, 0.945741609, 0.894427191, 0.8]])


def test_steer_exponential_floor_002():
    # metric = 0.5 (H - ln2) = [0.01, 0.005]; m_max = 0.01 < 0.02 -> k = -ln 0.8 / 0.02 -> w = 0.8 ** (m / 0.02)
    h = t([LN2 + 0.02, LN2 + 0.01])
    lp = t([math.log(0.5)] * 2)
    w = steer_weights(torch.tensor([1.0]), h, lp, lp, t([1, 1]), mode="exponential")
    close(w, [[0.8**0.5, 0.8**0.25]])


def test_steer_uses_old_prob_and_broadcast_2d_advantages():
    # token 0: p = 0.5, p_old = 0.25, A = 1, H = ln2 + 0.2 -> Omega = 4 * 0.25 * 0.2 = 0.2
    # token 1: p = p_old = 0.5, A = -1, H = ln2 + 0.2      -> |Omega| = 2 * 0.25 * 0.2 = 0.1
    # token 2: A = 0                                       -> 0
    h = t([LN2 + 0.2, LN2 + 0.2, LN2 + 0.2])
    lp = t([math.log(0.5)] * 3)
    old = t([math.log(0.25), math.log(0.5), math.log(0.5)])
    w = steer_weights(t([1.0, -1.0, 0.0]), h, old, lp, t([1, 1, 1]))
    # linear: 1.2 - m / 0.2 * 0.4
    close(w, [[0.8, 1.0, 1.2]])


def test_steer_probability_clamps():
    # logp = 0 -> p = 1 clamps to 1 - 1e-8 (== 1.0 in float32) -> p(1-p) = 0 -> Omega = 0
    # old_logp = -100 -> p_old clamps to 1e-8 -> A / p_old = 1e8
    h = t([1.0, 1.0])
    lp = t([0.0, math.log(0.5)])
    old = t([-100.0, math.log(0.5)])
    w = steer_weights(torch.tensor([1.0]), h, old, lp, t([1, 1]))
    close(w, [[1.2, 0.8]])  # metric [0, >0]


def test_steer_overflowing_omega_is_zeroed():
    # A = 3e38 with p_old = 1e-8 -> A / p_old = inf -> Omega non-finite -> 0 (official) -> the max weight.
    h = STEER_H[:, :3]
    lp = HALF[:, :3]
    adv = t([3e38, 1.0, 1.0])
    w = steer_weights(adv, h, t([-100.0, math.log(0.5), math.log(0.5)]), lp, t([1, 1, 1]))
    # metrics: [0, 0.1, 0.2] -> 1.2 - m / 0.2 * 0.4
    close(w, [[1.2, 1.0, 0.8]])
    assert torch.isfinite(w).all()


def test_steer_equal_metrics_and_zero_advantages():
    w = steer_weights(torch.tensor([0.0, 0.0]), t([1, 2], [3, 4]), t([-1, -1], [-1, -1]), t([-1, -2], [-3, -4]),
                      t([1, 1], [1, 0]), w_min=0.9, w_max=1.3)
    close(w, [[1.1, 1.1], [1.1, 0.0]])
    w = steer_weights(torch.tensor([0.0]), t([1, 2]), t([-1, -1]), t([-1, -2]), t([1, 1]), mode="exponential")
    close(w, [[1.0, 1.0]])


def test_steer_padding_ignored_even_if_nan():
    h = torch.cat([STEER_H, t([float("nan")])], dim=1)
    lp = torch.cat([HALF, t([float("nan")])], dim=1)
    mask = t([1, 1, 1, 1, 0])
    w = steer_weights(torch.tensor([1.0]), h, lp, lp, mask)
    close(w, [[1.2, 1.1, 1.0, 0.8, 0.0]])


def test_steer_empty_mask_one_token():
    z = torch.zeros(2, 3)
    assert steer_weights(torch.ones(2), z, z - 1, z - 1, z).eq(0).all()
    w = steer_weights(torch.ones(1), t([0.3]), t([-1.0]), t([-2.0]), t([1]))
    close(w, [[1.0]])


def test_steer_errors():
    z = torch.zeros(1, 2)
    with pytest.raises(ValueError, match="logps"):
        steer_weights(torch.ones(1), z, z, t([float("nan"), 0.0]), t([1, 1]))
    with pytest.raises(ValueError, match="advantages"):
        steer_weights(torch.tensor([float("inf")]), z, z, z, t([1, 1]))
    with pytest.raises(ValueError, match="mode"):
        steer_weights(torch.ones(1), z, z, z, t([1, 1]), mode="cubic")
    with pytest.raises(ValueError, match="w_max"):
        steer_weights(torch.ones(1), z, z, z, t([1, 1]), w_min=1.2, w_max=0.8)
    with pytest.raises(ValueError, match="w_min"):
        steer_weights(torch.ones(1), z, z, z, t([1, 1]), w_min=0.0, mode="exponential")
    with pytest.raises(ValueError, match="shape"):
        steer_weights(torch.ones(1), torch.zeros(1, 3), z, z, t([1, 1]))
    with pytest.raises(ValueError, match="advantages"):
        steer_weights(torch.ones(3), z, z, z, t([1, 1]))


# ----------------------------------------------------------------------------------------- 80/20 mask
def test_high_entropy_hand_counts():
    h = torch.arange(10, dtype=torch.float32).reshape(1, 10)
    # q = 0.8, rank = 0.8 * 9 = 7.2 -> tau = 7.2 -> keeps 8 and 9: 2 tokens (not ceil(0.2 * 10))
    close(high_entropy_mask(h, torch.ones(1, 10)), [[0] * 8 + [1, 1]])
    close(high_entropy_mask(h, torch.ones(1, 10), top_fraction=1.0), [[1] * 10])
    close(high_entropy_mask(h, torch.ones(1, 10), top_fraction=0.0), [[0] * 9 + [1]])


def test_high_entropy_ties_and_padding():
    h = t([1.0, 2.0, 2.0, 2.0, 9.0])
    m = t([1, 1, 1, 1, 0])  # the padded 9.0 is ignored
    # valid sorted [1,2,2,2], q = 0.75, rank = 2.25 -> tau = 2 -> all three 2s kept (ties kept)
    close(high_entropy_mask(h, m, top_fraction=0.25), [[0, 1, 1, 1, 0]])
    close(high_entropy_mask(t([3.0, 1.0, 3.0]), t([1, 1, 1]), top_fraction=0.0), [[1, 0, 1]])


def test_high_entropy_edge_cases():
    z = torch.zeros(2, 3)
    assert high_entropy_mask(torch.rand(2, 3), z).eq(0).all()
    close(high_entropy_mask(torch.full((2, 2), 0.7), torch.ones(2, 2)), [[1, 1], [1, 1]])  # all equal: all kept
    close(high_entropy_mask(t([0.4]), t([1])), [[1]])
    with pytest.raises(ValueError, match="top_fraction"):
        high_entropy_mask(z, z, top_fraction=1.5)
    with pytest.raises(ValueError, match="entropies"):
        high_entropy_mask(t([float("nan"), 1.0]), t([1, 1]))


def _trl_get_high_entropy_mask():
    """TRL 1.16's own ``GRPOTrainer.get_high_entropy_mask``, compiled from the installed source file without
    importing trl (importing it costs ~15 s here). ``self`` is a one-process stand-in whose accelerator's
    ``pad_across_processes`` and ``gather`` are the identity, as they are for a single process."""
    spec = importlib.util.find_spec("trl")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("trl is not installed")
    src_path = Path(list(spec.submodule_search_locations)[0]) / "trainer" / "grpo_trainer.py"
    tree = ast.parse(src_path.read_text())
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "GRPOTrainer")
    fn = next(n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name == "get_high_entropy_mask")
    fn.decorator_list = []
    ns = {"torch": torch}
    exec(compile(ast.Module(body=[fn], type_ignores=[]), str(src_path), "exec"), ns)
    acc = types.SimpleNamespace(pad_across_processes=lambda x, dim=0, pad_index=0: x, gather=lambda x: x)
    return lambda h, m, thr: ns["get_high_entropy_mask"](types.SimpleNamespace(accelerator=acc), h, m, thr)


def test_high_entropy_matches_trl_source():
    trl_mask = _trl_get_high_entropy_mask()
    g = torch.Generator().manual_seed(0)
    for trial in range(40):
        B, T = 1 + trial % 4, 1 + (trial * 7) % 9
        h = torch.rand(B, T, generator=g) * 3
        if trial % 3 == 0:
            h = torch.round(h)  # many ties
        m = (torch.rand(B, T, generator=g) > 0.3).float()
        if trial % 10 == 9:
            m = torch.zeros(B, T)
        for rho in (0.0, 0.2, 0.5, 1.0, 0.37):
            ours = high_entropy_mask(h, m, top_fraction=rho)
            theirs = trl_mask(h, m, 1 - rho)  # TRL calls it with 1 - top_entropy_quantile
            assert torch.equal(ours.bool(), theirs), (trial, rho)


def test_quantile_fallback_matches_torch(monkeypatch):
    g = torch.Generator().manual_seed(1)
    x = torch.round(torch.rand(1001, generator=g) * 50) / 7
    expected = {q: torch.quantile(x, q) for q in (0.0, 0.1, 0.5, 0.8, 0.9, 1.0, 0.333)}
    monkeypatch.setattr(_common, "TORCH_QUANTILE_MAX", 10)
    for q, e in expected.items():
        assert torch.equal(_common.quantile_linear(x, q), e), q


# -------------------------------------------------------------------------------------------- Clip-Cov
# A = [2, -2, 2, -2], logp = [0, -4, -1, -3]: mean A = 0, mean logp = -2 -> Cov = [2*2, -2*-2, 2*1, -2*-1] = [4,4,2,2]
CC_A = torch.tensor([[2.0, -2.0, 2.0, -2.0, 0.0]])
CC_LP = t([0.0, -4.0, -1.0, -3.0, 0.0])
CC_M = t([1, 1, 1, 1, 0])


def test_clip_cov_hand():
    old = CC_LP.clone()
    old[0, 0] = -1.0  # ratio e > 1.2 with A > 0 -> already clipped by PPO -> not a candidate
    # candidates: tokens 1, 2, 3 (1 < Cov < 5); clip_ratio 1 -> n_clip = 4 -> min(4, 3) = 3 chosen
    close(clip_cov_mask(CC_A, CC_LP, old, CC_M, clip_ratio=1.0), [[1, 0, 0, 0, 0]])
    # cov_ub = 3: candidates 2, 3 only
    close(clip_cov_mask(CC_A, CC_LP, old, CC_M, clip_ratio=1.0, cov_ub=3.0), [[1, 1, 0, 0, 0]])
    # cov_lb = 2 is strict: candidates only token 1 (Cov 4)
    close(clip_cov_mask(CC_A, CC_LP, old, CC_M, clip_ratio=1.0, cov_lb=2.0), [[1, 0, 1, 1, 0]])
    # no clamp at all (clip_low = clip_high = None): token 0 is a candidate again
    close(clip_cov_mask(CC_A, CC_LP, old, CC_M, clip_ratio=1.0, clip_low=None, clip_high=None), [[0, 0, 0, 0, 0]])


def test_clip_cov_random_choice_is_seeded():
    # default clip_ratio 2e-4 with 4 valid tokens -> n_clip = max(int(8e-4), 1) = 1; 4 candidates, ratio 1
    g = torch.Generator().manual_seed(123)
    w = clip_cov_mask(CC_A, CC_LP, CC_LP, CC_M, generator=g)
    expected_idx = int(torch.randperm(4, generator=torch.Generator().manual_seed(123))[0])
    exp = [1.0, 1.0, 1.0, 1.0, 0.0]
    exp[expected_idx] = 0.0
    close(w, [exp])
    w2 = clip_cov_mask(CC_A, CC_LP, CC_LP, CC_M, generator=torch.Generator().manual_seed(123))
    assert torch.equal(w, w2)
    # clip_ratio 0.5 -> n_clip 2
    w = clip_cov_mask(CC_A, CC_LP, CC_LP, CC_M, clip_ratio=0.5, generator=torch.Generator().manual_seed(5))
    assert int((w[0, :4] == 0).sum()) == 2 and w[0, 4] == 0


def test_clip_cov_edge_cases():
    z = torch.zeros(2, 3)
    assert clip_cov_mask(torch.ones(2), z, z, z).eq(0).all()  # empty mask
    m = torch.ones(2, 3)
    close(clip_cov_mask(torch.zeros(2), z, z, m, clip_ratio=1.0), m)  # zero advantages: Cov = 0, no candidate
    close(clip_cov_mask(torch.ones(1), t([-1.0]), t([-1.0]), t([1])), [[1]])  # one token: Cov = 0
    with pytest.raises(ValueError, match="clip_ratio"):
        clip_cov_mask(torch.ones(2), z, z, m, clip_ratio=2.0)
    with pytest.raises(ValueError, match="old_logps"):
        clip_cov_mask(torch.ones(2), z, z + float("inf"), m)


# --------------------------------------------------------------------------------------------- KL-Cov
def test_kl_cov_mask_hand_and_quirk():
    # A = [1,1,-1,-1] (mean 0), logp = [-0.5,-3,-2,-2.5] (mean -2): Cov = [1.5, -1, 0, 0.5]
    adv = t([1.0, 1.0, -1.0, -1.0])
    lp = t([-0.5, -3.0, -2.0, -2.5])
    m = torch.ones(1, 4)
    # k_percent = 50 > N = 4: official k = min(50, 4) = 4 -> k_num = max(1, int(4 * 4 / 100)) = 1
    close(kl_cov_mask(adv, lp, m, k_percent=50), [[1, 0, 0, 0]])
    # k_percent = 0 -> nothing selected
    close(kl_cov_mask(adv, lp, m, k_percent=0), [[0, 0, 0, 0]])
    # default 0.2 % of 4 tokens -> int(0.008) = 0 -> max(1, 0) = 1
    close(kl_cov_mask(adv, lp, m), [[1, 0, 0, 0]])


def test_kl_cov_mask_percentage_semantics():
    # 2 x 100 valid tokens, k_percent = 1.5 -> k_num = int(200 * 1.5 / 100) = 3.
    adv = torch.zeros(2, 100)
    lp = torch.zeros(2, 100)
    adv[0, 10], lp[0, 10] = 1.0, 1.0
    adv[1, 20], lp[1, 20] = 2.0, 2.0
    adv[1, 30], lp[1, 30] = -3.0, -3.0
    # centred Cov is largest at exactly these three positions
    sel = kl_cov_mask(adv, lp, torch.ones(2, 100), k_percent=1.5)
    assert sel.sum() == 3 and sel[0, 10] == sel[1, 20] == sel[1, 30] == 1
    assert kl_cov_mask(adv, lp, torch.zeros(2, 100)).eq(0).all()


def test_kl_cov_penalty_hand_and_grad():
    lp = t([-1.0, -2.0, -0.5]).requires_grad_(True)
    old = t([-1.5, -1.0, float("nan")])  # NaN where not selected is ignored
    pen = kl_cov_penalty(lp, old, t([1, 0, 0]), kl_coef=2.0)
    close(pen.detach(), [[1.0, 0.0, 0.0]])
    pen.sum().backward()
    close(lp.grad, [[2.0, 0.0, 0.0]])  # the gradient flows through logps (a loss term, not a weight)
    with pytest.raises(ValueError, match="old_logps"):
        kl_cov_penalty(lp, old, t([0, 0, 1]))
    with pytest.raises(ValueError, match="kl_coef"):
        kl_cov_penalty(lp, old, t([1, 0, 0]), kl_coef=-1.0)


def test_kl_cov_loss_is_penalty_of_mask():
    adv = t([1.0, 1.0, -1.0, -1.0])
    lp = t([-0.5, -3.0, -2.0, -2.5])
    old = lp - 0.25
    close(kl_cov_loss(adv, lp, old, torch.ones(1, 4), k_percent=50, kl_coef=1.0), [[0.25, 0, 0, 0]])


# -------------------------------------------------------------------------------------------- TW-GRPO
def _f(x):
    return math.exp(x) - x - 1


def test_tw_grpo_hand():
    # V = 2, one group of G = 2, T = 3.
    # t0: both rows [.5,.5]                       -> K0 = 0
    # t1: rows [.8,.2] and [.2,.8]; mu = log .4   -> d = [-ln2, ln2] / [ln2, -ln2] -> D = 0.5 each -> K1 = 0.5
    # t2: row 0 [.8,.2], row 1 masked -> uniform [.5,.5]; mu = [log sqrt(.4), log sqrt(.1)]
    L = lambda *p: [math.log(x) for x in p]  # noqa: E731
    lp = torch.tensor([[L(.5, .5), L(.8, .2), L(.8, .2)],
                       [L(.5, .5), L(.2, .8), L(.3, .7)]])  # row 1, t2 is padding: its values are ignored
    mask = t([1, 1, 1], [1, 1, 0])
    K1 = 0.5
    K2 = (_f(.5 * math.log(.625)) + _f(.5 * math.log(2.5)) + _f(.5 * math.log(1.6)) + _f(.5 * math.log(.4))) / 2
    k_hat = [0.0, K1 / (K1 + 1e-8), K2 / (K1 + 1e-8)]
    w_row = [1 + 0.7 * k for k in k_hat]
    close(tw_grpo_weights(lp, mask, 2, alpha=1.7), [w_row, w_row[:2] + [0.0]])


def _reference_tw(lp, mask, G, alpha):
    """Independent, loop-based restatement of methods.md A4 (float64)."""
    B, T, V = lp.shape
    out = torch.zeros(B, T, dtype=torch.float64)
    for g in range(B // G):
        K = []
        for tt in range(T):
            rows = []
            for i in range(g * G, g * G + G):
                rows.append(lp[i, tt].double() if mask[i, tt] else torch.full((V,), -math.log(V), dtype=torch.float64))
            mu = sum(rows) / G
            Ds = []
            for r in rows:
                d = (mu - r).clamp(-11, 11)
                Ds.append(float((d.exp() - d - 1).sum()))
            K.append(sum(Ds) / G)
        kmin, kmax = min(K), max(K)
        for i in range(g * G, g * G + G):
            for tt in range(T):
                out[i, tt] = (1 + (alpha - 1) * (K[tt] - kmin) / (kmax - kmin + 1e-8)) * float(mask[i, tt])
    return out


def test_tw_grpo_matches_reference_and_padded_positions_count():
    g = torch.Generator().manual_seed(0)
    B, T, V, G = 4, 5, 7, 2
    lp = torch.log_softmax(torch.randn(B, T, V, generator=g) * 2, dim=-1)
    mask = torch.ones(B, T)
    mask[0, 3:] = 0
    mask[1, 4:] = 0  # position 4 of group 0 is fully padded -> K = 0 is that group's minimum
    mask[3, 2:] = 0
    w = tw_grpo_weights(lp, mask, G, alpha=1.4)
    close(w, _reference_tw(lp, mask, G, 1.4).float())
    assert w[0, 4] == 0 and w[1, 4] == 0


def test_tw_grpo_chunked_equals_full():
    g = torch.Generator().manual_seed(3)
    B, T, H, V, G = 6, 7, 5, 11, 3
    hidden = torch.randn(B, T, H, generator=g)
    W = torch.randn(V, H, generator=g)
    mask = (torch.rand(B, T, generator=g) > 0.25).float()
    for temp in (1.0, 0.7):
        full = tw_grpo_weights(torch.log_softmax(hidden @ W.T / temp, -1), mask, G, alpha=1.7)
        for cs in (1, 3, 64):
            ch = tw_grpo_weights_chunked(hidden, W, mask, G, alpha=1.7, chunk_size=cs, temperature=temp)
            close(ch, full, tol=1e-5)


def test_tw_grpo_edge_cases_and_fallbacks():
    lp = torch.log_softmax(torch.randn(4, 3, 5), -1)
    close(tw_grpo_weights(lp[:1].expand(4, 3, 5), torch.ones(4, 3), 2), torch.ones(4, 3))  # equal K -> ones
    mask = t([1, 1, 0], [1, 0, 0], [1, 1, 1], [0, 0, 0])
    with pytest.warns(UserWarning, match="divisible"):
        close(tw_grpo_weights(lp, mask, 3), mask)
    with pytest.warns(UserWarning, match="3-D"):
        close(tw_grpo_weights(lp[..., 0], mask, 2), mask)
    assert tw_grpo_weights(lp, torch.zeros(4, 3), 2).eq(0).all()
    w = tw_grpo_weights(lp[:1, :1], torch.ones(1, 1), 1)  # one sequence, one token: K = 0 -> 1
    close(w, [[1.0]])
    bad = lp.clone()
    bad[0, 0, 0] = float("-inf")
    with pytest.raises(ValueError, match="full_logprobs"):
        tw_grpo_weights(bad, torch.ones(4, 3), 2)
    with pytest.raises(ValueError, match="group_size"):
        tw_grpo_weights(lp, mask, 0)
    with pytest.raises(ValueError, match="alpha"):
        tw_grpo_weights(lp, mask, 2, alpha=0.0)


# ------------------------------------------------------------------------------------ entropy advantage
def test_entropy_advantage_hand():
    # alpha 0.4, kappa 2: psi = min(0.4 H, |A| / 2)
    adv = t([1.0, -1.0, 0.0, 2.0, 5.0])
    h = t([0.5, 10.0, 3.0, 1.0, 1.0])
    m = t([1, 1, 1, 1, 0])
    close(entropy_advantage(adv, h, m), [[1.2, -0.5, 0.0, 2.4, 0.0]])
    # [B] advantages broadcast over T
    close(entropy_advantage(torch.tensor([1.0, -2.0]), t([0.5, 5.0], [0.5, 5.0]), torch.ones(2, 2)),
          [[1.2, 1.5], [-1.8, -1.0]])


def test_entropy_advantage_errors_and_detach():
    adv = torch.ones(1, 2, requires_grad=True)
    h = torch.ones(1, 2, requires_grad=True)
    out = entropy_advantage(adv, h, torch.ones(1, 2))
    assert not out.requires_grad
    with pytest.raises(ValueError, match="kappa"):
        entropy_advantage(adv, h, torch.ones(1, 2), kappa=1.0)
    with pytest.raises(ValueError, match="alpha"):
        entropy_advantage(adv, h, torch.ones(1, 2), alpha=-0.1)


# ------------------------------------------------------------------------------------------------ stats
def test_token_weight_stats_hand():
    w = t([1.0, 0.0, 2.0, 1.0, 7.0])
    h = t([1.0, 2.0, 3.0, 4.0, 100.0])
    m = t([1, 1, 1, 1, 0])
    s = token_weight_stats(w, h, m)
    exp = {"weight_mean": 1.0, "weight_std": math.sqrt(0.5), "weight_min": 0.0, "weight_max": 2.0,
           "weight_frac_zero": 0.25, "entropy_mean": 2.5, "entropy_p10": 1.3, "entropy_p50": 2.5,
           "entropy_p90": 3.7, "weight_entropy_corr": 1 / math.sqrt(10)}
    assert set(s) == set(exp)
    for k, v in exp.items():
        assert s[k] == pytest.approx(v, abs=1e-6), k


def test_token_weight_stats_degenerate():
    s = token_weight_stats(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2, 3))
    assert all(v == 0.0 for v in s.values())
    s = token_weight_stats(torch.ones(1, 3), t([1.0, 2.0, 3.0]), torch.ones(1, 3))
    assert s["weight_entropy_corr"] == 0.0 and s["weight_std"] == 0.0
    s = token_weight_stats(t([0.1, 0.1, 0.1]), t([1.0, 2.0, 3.0]), torch.ones(1, 3))
    assert s["weight_entropy_corr"] == 0.0
    s = token_weight_stats(t([0.5]), t([1.0]), t([1]))
    assert s["weight_entropy_corr"] == 0.0 and s["entropy_p90"] == 1.0
    assert "entropy_mean" not in token_weight_stats(torch.ones(1, 2), None, torch.ones(1, 2))


# ------------------------------------------------------------------------------------------ composition
def _batch(**kw):
    base = dict(
        advantages=torch.tensor([1.0]),
        mask=ONE.clone(),
        logps=HALF.clone(),
        old_logps=HALF.clone(),
        entropies=STEER_H.clone(),
        old_entropies=STEER_H.clone(),
    )
    base.update(kw)
    return TokenBatch(**base)


def test_registry_names_and_kinds():
    names = {"steer", "high_entropy", "clip_cov", "tw_grpo", "kl_cov", "entropy_advantage"}
    assert names <= set(TOKEN_STRATEGIES.names())
    assert TOKEN_STRATEGIES.get("steer").kind == "weight"
    assert TOKEN_STRATEGIES.get("kl_cov").kind == "loss_term"
    assert TOKEN_STRATEGIES.get("entropy_advantage").kind == "advantage"
    sig = __import__("inspect").signature(TOKEN_STRATEGIES.get("steer"))  # what a recipe checker sees
    assert list(sig.parameters) == ["batch", "w_min", "w_max", "mode"]
    assert sig.parameters["w_min"].default == 0.8


def test_compose_multiplies_and_reports():
    specs = [{"name": "steer", "w_min": 0.8, "w_max": 1.2, "mode": "linear"},
             {"name": "high_entropy", "top_fraction": 0.5}]
    w, diag = compose_token_weights(specs, _batch())
    # STEER [1.2, 1.1, 1.0, 0.8]; 80/20 on H = ln2 + [0, .2, .4, .8] with rho 0.5: tau = ln2 + 0.3 -> [0,0,1,1]
    close(w, [[0.0, 0.0, 1.0, 0.8]])
    assert set(diag) == {"steer", "high_entropy"}
    assert diag["high_entropy"]["frac_zero"] == 0.5 and diag["steer"]["max"] == pytest.approx(1.2)
    assert not w.requires_grad


def test_compose_empty_and_repeated():
    w, diag = compose_token_weights([], _batch(mask=t([1, 1, 0, 1])))
    close(w, [[1, 1, 0, 1]])
    assert diag == {}
    w, diag = compose_token_weights(["high_entropy", {"name": "high_entropy", "top_fraction": 1.0}], _batch())
    assert set(diag) == {"high_entropy", "high_entropy#2"}


def test_apply_all_kinds():
    lp = t([-0.5, -3.0, -2.0, -2.5]).requires_grad_(True)
    b = TokenBatch(advantages=t([1.0, 1.0, -1.0, -1.0]), mask=torch.ones(1, 4), logps=lp,
                   old_logps=lp.detach() - 0.25, entropies=t([0.5, 0.5, 0.5, 0.5]))
    specs = [{"name": "kl_cov", "k_percent": 50}, {"name": "entropy_advantage", "alpha": 0.4, "kappa": 2.0}]
    res = apply_token_strategies(specs, b)
    close(res.advantages, [[1.2, 1.2, -0.8, -0.8]])  # psi = min(0.2, |A| / 2) = 0.2
    assert res.weights is None and res.clip_disabled
    # KL-Cov saw the shaped advantages (mean 0.2): Cov = [1*1.5, 1*-1, -1*0, -1*-0.5] -> token 0
    close(res.extra_token_loss.detach(), [[0.25, 0, 0, 0]])
    assert res.extra_token_loss.requires_grad
    assert res.diagnostics["kl_cov"]["selected_frac"] == 0.25
    assert res.diagnostics["entropy_advantage"]["shift_mean"] == pytest.approx(0.2)
    with pytest.raises(ValueError, match="kl_cov.*not a weight"):
        compose_token_weights(specs, b)


def test_tw_grpo_strategy_paths_agree():
    g = torch.Generator().manual_seed(0)
    hidden, W = torch.randn(4, 3, 5, generator=g), torch.randn(9, 5, generator=g)
    mask = torch.ones(4, 3)
    full = lambda: torch.log_softmax(hidden @ W.T, -1)  # noqa: E731
    b1 = TokenBatch(advantages=torch.ones(4), mask=mask, group_size=2, full_logprobs_fn=full)
    b2 = TokenBatch(advantages=torch.ones(4), mask=mask, group_size=2, hidden=hidden, lm_head_weight=W)
    w1, _ = compose_token_weights([{"name": "tw_grpo", "alpha": 1.5}], b1)
    w2, _ = compose_token_weights([{"name": "tw_grpo", "alpha": 1.5, "chunk_size": 2}], b2)
    close(w1, w2)


def test_clip_cov_strategy_uses_loss_clip_range_and_generator():
    old = CC_LP.clone()
    old[0, 0] = -1.0  # ratio e: clipped at clip_high 0.2, not with clip_high 2.0
    b = TokenBatch(advantages=CC_A, mask=CC_M, logps=CC_LP, old_logps=old, clip_low=0.2, clip_high=2.0)
    w, _ = compose_token_weights([{"name": "clip_cov", "clip_ratio": 1.0}], b)
    close(w, [[0, 0, 0, 0, 0]])
    w, _ = compose_token_weights([{"name": "clip_cov", "clip_ratio": 1.0, "clip_high": 0.2}], b)
    close(w, [[1, 0, 0, 0, 0]])
    b = TokenBatch(advantages=CC_A, mask=CC_M, logps=CC_LP, old_logps=CC_LP, generator=torch.Generator().manual_seed(9))
    w1, _ = compose_token_weights(["clip_cov"], b)
    b = b.replace(generator=torch.Generator().manual_seed(9))
    assert torch.equal(w1, compose_token_weights(["clip_cov"], b)[0])


def test_required_inputs():
    assert required_inputs([]) == frozenset()
    assert required_inputs([{"name": "steer"}]) == {"logps", "old_logps", "old_entropies"}
    assert required_inputs([{"name": "high_entropy"}]) == {"entropies"}
    assert required_inputs([{"name": "high_entropy", "entropy_source": "old"}]) == {"old_entropies"}
    assert required_inputs(["tw_grpo", "clip_cov"]) == {"full_logprobs", "group_size", "logps", "old_logps"}
    assert clipping_disabled(["kl_cov"]) and not clipping_disabled(["steer", "clip_cov"])


def test_composition_errors():
    b = _batch()
    with pytest.raises(RegistryError, match="unknown token weighting strategy 'stear'"):
        compose_token_weights([{"name": "stear"}], b)
    msg = "token strategy 'steer': unknown argument 'w_mn'; accepted: w_min, w_max, mode"
    with pytest.raises(ValueError, match=msg):
        compose_token_weights([{"name": "steer", "w_mn": 0.5}], b)
    with pytest.raises(ValueError, match="token strategy 'steer': mode must be"):
        compose_token_weights([{"name": "steer", "mode": "cubic"}], b)
    with pytest.raises(ValueError, match="token strategy 'high_entropy': top_fraction"):
        compose_token_weights([{"name": "high_entropy", "top_fraction": -1}], b)
    with pytest.raises(ValueError, match="token strategy 'steer' needs batch input 'old_entropies'"):
        compose_token_weights(["steer"], b.replace(old_entropies=None))
    with pytest.raises(ValueError, match="needs batch input 'full_logprobs'"):
        compose_token_weights(["tw_grpo"], b.replace(group_size=2))
    with pytest.raises(ValueError, match="'name'"):
        compose_token_weights([{"top_fraction": 0.2}], b)
    with pytest.raises(ValueError, match="token strategy 'steer': entropies has 1 non-finite"):
        compose_token_weights(["steer"], b.replace(old_entropies=t([1.0, float("nan"), 1.0, 1.0])))
    for e in (RegistryError("x"), ValueError("x")):
        assert "\n" not in str(e)


def test_user_strategy_by_decorator_and_import_path(monkeypatch):
    @token_strategy("test_halve", needs={"entropies"})
    def halve(batch, *, factor: float = 0.5):
        return torch.full(batch.mask.shape, factor)

    w, diag = compose_token_weights([{"name": "test_halve", "factor": 0.25}, "high_entropy"], _batch())
    close(w, [[0, 0, 0, 0.25]])
    mod = types.ModuleType("_posttrain_user_tokens")
    mod.double = lambda batch: torch.full(batch.mask.shape, 2.0)  # a plain callable: kind "weight", needs nothing
    monkeypatch.setitem(__import__("sys").modules, "_posttrain_user_tokens", mod)
    w, _ = compose_token_weights([{"name": "_posttrain_user_tokens:double"}], _batch(mask=t([1, 0, 1, 1])))
    close(w, [[2, 0, 2, 2]])

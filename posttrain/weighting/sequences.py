"""Per-sequence / per-prompt weights for GRPO-family training (torch only; never imports TRL or transformers).

Implemented here (specs: ``methods.md`` B6, B7, E15; user guide ``docs/weighting_pairs_sequences.md``):

* :func:`dra_weights` / :func:`dra_adjust_rewards` -- DRA-GRPO diversity-aware reward adjustment (arXiv 2505.09655),
  official code ``xiwenc1/DRA-GRPO`` ``src/open_r1/trl/trainer/grpo_trainer.py::GRPOTrainer._prepare_inputs``
  (l.662-698). Takes precomputed sentence embeddings; the trainer embeds.
* :func:`semantic_entropy` / :func:`seed_grpo_scale` / :func:`seed_grpo_prompt_scales` -- SEED-GRPO semantic-entropy
  advantage modulation (arXiv 2505.12346, Sec. 3.2 Eqs. 5-6).
* :func:`loss_sample_weights` / :class:`LossSampleWeighter` -- Sow et al., "Dynamic Loss-Based Sample Reweighting
  for Improved LLM Pretraining" (ICLR 2025, arXiv 2502.06733), official code
  ``sowmaster/Sample-Level-Loss-Reweighting-ICLR-2025`` ``src/trainer.py`` (``h_func``, ``f_func_*``, ``g_func``,
  ``DoGETrainer.training_step``).

House rules: every returned weight is detached; any finite input gives finite output (empty, single element,
all-equal, zero variance); a non-finite input raises ``ValueError`` naming the argument. Batch statistics are
computed over exactly the tensors handed in -- the trainer decides the scope (local or all-gathered).
"""
from __future__ import annotations

from typing import Any, Dict, Hashable, List, Optional, Sequence

import torch
import torch.nn.functional as F

from posttrain.registry import Registry
from posttrain.weighting._checks import as_float_tensor as _as_float_tensor
from posttrain.weighting._checks import check_finite
from posttrain.weighting._checks import check_real as _check_real

__all__ = [
    "dra_weights",
    "dra_adjust_rewards",
    "semantic_entropy",
    "seed_grpo_scale",
    "seed_grpo_prompt_scales",
    "loss_sample_weights",
    "LossSampleWeighter",
    "LOSS_STRATEGIES",
    "SEQUENCE_STRATEGIES",
]

SEQUENCE_STRATEGIES = Registry("sequence weighting strategy")


# ----------------------------------------------------------------------------------------------------------------------
# DRA-GRPO (B7)
# ----------------------------------------------------------------------------------------------------------------------
def dra_weights(
    embeddings: Any,
    group_ids: Optional[Any] = None,
    *,
    eps: float = 1e-6,
    min_divisor: float = 0.1,
) -> torch.Tensor:
    """DRA-GRPO diversity factor per completion (Diversity-aware Reward Adjustment, arXiv 2505.09655).

    Official code ``xiwenc1/DRA-GRPO``, ``src/open_r1/trl/trainer/grpo_trainer.py::_prepare_inputs`` l.662-698
    (graph-cut submodular mutual information of ``{i}`` with the rest)::

        e_i <- e_i / ||e_i||;   S = E E^T;   w_i = 1 / (sum_j S_ij + eps)

    so that the adjusted reward is ``R~_i = R_i * w_i = R_i / (1 + SMI_i)`` with ``SMI_i = sum_{j != i} S_ij``
    (the self-similarity ``S_ii = 1`` supplies the 1). Apply ``w`` to the rewards *before* the group advantage.

    Scope (``group_ids``):
      * ``None`` (default) -- similarity over **all rows handed in**: the official code's convention (it uses every
        completion held by the local process, which can span several prompts' groups). To reproduce the code, pass the
        per-device slice.
      * a [N] integer tensor/list -- only pairs with the same id count (the paper's wording "the rest of the group").

    Guards (documented choices):
      * **Negative cosines** (not guarded by the official code): ``sum_j S_ij`` can be <= 0, which makes the official
        factor huge or negative. Here the divisor is clamped: ``w_i = 1 / (max(sum_j S_ij, min_divisor) + eps)``
        (default ``min_divisor = 0.1``, so ``w <= 10``). The result equals the official code whenever
        ``sum_j S_ij >= min_divisor``. ``min_divisor = 1.0`` gives the graph-cut reading with non-negative
        similarity (``w in (0, 1]``, diversity can only discount redundancy).
      * Zero-norm embedding rows are treated as orthogonal to everything; the diagonal is set to exactly 1
        (self-similarity), also removing rounding of ``||e_i||^2``.

    Edge cases: ``N == 0`` -> empty; ``N == 1`` -> ``[1/(1+eps)]``; a singleton group -> ``1/(1+eps)``.
    Returns a detached float tensor [N] (dtype of ``embeddings``; float32 for integer input).
    """
    eps = _check_real("eps", eps)
    min_divisor = _check_real("min_divisor", min_divisor)
    if eps < 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    if min_divisor <= 0:
        raise ValueError(f"min_divisor must be > 0, got {min_divisor}")
    e_in = _as_float_tensor("embeddings", embeddings)
    if e_in.dim() != 2:
        raise ValueError(f"embeddings must be 2-D [N, D], got shape {tuple(e_in.shape)}")
    n = e_in.shape[0]
    if n == 0:
        return torch.empty(0, dtype=e_in.dtype, device=e_in.device)
    e = e_in.to(torch.float64)
    # scale rows by their max-abs first so that the norm cannot overflow for huge finite entries
    scale = e.abs().amax(dim=1, keepdim=True).clamp_min(torch.finfo(torch.float64).tiny)
    e = F.normalize(e / scale, p=2, dim=1)
    sim = e @ e.T
    sim.fill_diagonal_(1.0)
    if group_ids is not None:
        g = torch.as_tensor(group_ids, device=e.device)
        if g.dim() != 1 or g.shape[0] != n:
            raise ValueError(f"group_ids must be 1-D with {n} entries (one per embedding row), got shape {tuple(g.shape)}")
        if torch.is_floating_point(g):
            check_finite("group_ids", g)
        sim = sim * (g[:, None] == g[None, :]).to(sim.dtype)
    divisor = sim.sum(dim=1).clamp_min(min_divisor)
    w = 1.0 / (divisor + eps)
    return w.to(e_in.dtype).detach()


def dra_adjust_rewards(
    rewards: Any,
    embeddings: Any,
    group_ids: Optional[Any] = None,
    *,
    eps: float = 1e-6,
    min_divisor: float = 0.1,
) -> torch.Tensor:
    """DRA-adjusted rewards ``R~ = R * dra_weights(embeddings, group_ids)`` (arXiv 2505.09655, official
    ``_prepare_inputs``: ``rewards * weights`` before the group mean/std). ``rewards`` is [N] (the summed reward per
    completion, i.e. after objective weighting). Returns a detached tensor [N]. See :func:`dra_weights`.
    """
    r = _as_float_tensor("rewards", rewards)
    if r.dim() != 1:
        raise ValueError(f"rewards must be 1-D [N], got shape {tuple(r.shape)}")
    w = dra_weights(embeddings, group_ids, eps=eps, min_divisor=min_divisor)
    if w.shape[0] != r.shape[0]:
        raise ValueError(f"rewards has {r.shape[0]} entries but embeddings has {w.shape[0]} rows")
    return (r * w.to(device=r.device, dtype=r.dtype)).detach()


SEQUENCE_STRATEGIES.register("dra", dra_weights)


# ----------------------------------------------------------------------------------------------------------------------
# SEED-GRPO (B6)
# ----------------------------------------------------------------------------------------------------------------------
_SE_ESTIMATORS = ("rao", "eq5")


def _cluster_ids(answers: Sequence[Optional[Hashable]]) -> List[int]:
    """Exact-match clusters; every ``None`` (no extracted answer) is its own singleton cluster."""
    ids: List[int] = []
    seen: Dict[Hashable, int] = {}
    next_id = 0
    for a in answers:
        if a is None:
            ids.append(next_id)
            next_id += 1
            continue
        if a not in seen:
            seen[a] = next_id
            next_id += 1
        ids.append(seen[a])
    return ids


def semantic_entropy(
    answers_per_prompt: Sequence[Sequence[Optional[Hashable]]],
    seq_logprobs: Optional[Any] = None,
    *,
    estimator: str = "rao",
) -> torch.Tensor:
    """Semantic entropy per prompt, SEED-GRPO (arXiv 2505.12346, Sec. 3.2 Eq. 5).

    ``answers_per_prompt``: one list per prompt holding the G extracted final answers of its rollouts (strings or any
    hashable; ``None`` = no answer found). Clusters = **exact match** of the extracted answer (the paper: "only
    considers whether the final answers generated by the model are identical"; normalise answers in the extractor if
    you want e.g. whitespace-insensitive matching). Every ``None`` forms its own cluster -- the choice of the
    third-party reimplementation (maxent-grpo's ``NO_ANSWER_FOUND``); the paper is silent.

    Cluster probabilities ``p_k = p(C_k | q)``:
      * ``seq_logprobs is None`` -- **frequency estimate** ``p_k = |C_k| / G``.
      * ``seq_logprobs`` given (same nesting as the answers, or a [P, G] tensor) -- **likelihood estimate** as in the
        third-party reimplementation: the values should be *length-normalised* sequence log-likelihoods under
        pi_old; they are logsumexp-normalised within the group (``p_i = softmax(seq_logprobs)_i``) and
        ``p_k = sum_{i in C_k} p_i``. (Eq. 5's literal ``sum pi_old(o_i|q)`` over raw sequence likelihoods is
        unusable: tiny numbers, huge ``-log p``.)

    Estimator (the paper's Eq. 5 is ambiguous -- UNCERTAIN per methods.md B6):
      * ``"rao"`` (default) -- Rao-Blackwellised entropy ``-sum_k p_k log p_k`` (what the reimplementation computes);
      * ``"eq5"`` -- the literal Eq. 5 ``-(1/K) sum_k log p_k``.
    Both give 0 for one cluster and ``log G`` when all G answers differ (frequency estimate); ``SE_max = log G``.

    Edge cases: an empty group or G == 1 gives 0. Returns a float32 tensor [P] (detached).
    Raises ``ValueError`` on non-finite ``seq_logprobs``, mismatched lengths or an unknown estimator.
    """
    if estimator not in _SE_ESTIMATORS:
        raise ValueError(f"unknown semantic-entropy estimator '{estimator}'; choose one of {_SE_ESTIMATORS}")
    if isinstance(answers_per_prompt, (str, bytes)):
        raise ValueError("answers_per_prompt must be a list of per-prompt answer lists, got a string")
    groups = list(answers_per_prompt)
    for i, grp in enumerate(groups):
        if isinstance(grp, (str, bytes)) or not isinstance(grp, Sequence):
            raise ValueError(
                f"answers_per_prompt[{i}] must be the list of that prompt's answers, got {type(grp).__name__}; "
                "for a single prompt pass [answers]"
            )
    lp_groups: Optional[List[torch.Tensor]] = None
    if seq_logprobs is not None:
        if isinstance(seq_logprobs, torch.Tensor):
            lp = _as_float_tensor("seq_logprobs", seq_logprobs)
            if lp.dim() != 2 or lp.shape[0] != len(groups):
                raise ValueError(f"seq_logprobs tensor must be [P={len(groups)}, G], got shape {tuple(lp.shape)}")
            lp_groups = [lp[i] for i in range(lp.shape[0])]
        else:
            seq_list = list(seq_logprobs)
            if len(seq_list) != len(groups):
                raise ValueError(f"seq_logprobs has {len(seq_list)} groups but answers_per_prompt has {len(groups)}")
            lp_groups = [_as_float_tensor("seq_logprobs", torch.as_tensor(x, dtype=torch.float64)) for x in seq_list]
        for i, (grp, lpg) in enumerate(zip(groups, lp_groups)):
            if lpg.dim() != 1 or lpg.shape[0] != len(grp):
                raise ValueError(
                    f"seq_logprobs[{i}] must have one value per answer ({len(grp)}), got shape {tuple(lpg.shape)}"
                )

    out = torch.zeros(len(groups), dtype=torch.float64)
    for i, grp in enumerate(groups):
        g = len(grp)
        if g <= 1:
            continue
        ids = torch.tensor(_cluster_ids(grp), dtype=torch.long)
        k = int(ids.max()) + 1
        if lp_groups is None:
            p_member = torch.full((g,), 1.0 / g, dtype=torch.float64)
        else:
            p_member = torch.softmax(lp_groups[i].to(torch.float64), dim=0)
        p = torch.zeros(k, dtype=torch.float64).index_add_(0, ids, p_member)
        if estimator == "rao":
            # 0 * log 0 := 0 (a cluster can get probability underflowing to 0 under the likelihood estimate)
            se = -(torch.where(p > 0, p * torch.log(p.clamp_min(1e-300)), torch.zeros_like(p))).sum()
        else:
            # -(1/K) sum log p_k; clamp so an underflowed cluster probability stays finite (log(1e-300) ~ -690.8)
            se = -torch.log(p.clamp_min(1e-300)).mean()
        out[i] = se.clamp_min(0.0)
    return out.to(torch.float32)


_SEED_FORMS = ("linear", "exponential", "focal", "inverse")


def seed_grpo_scale(
    se: Any,
    group_size: Any,
    *,
    alpha: float = 0.02,
    form: str = "linear",
    gamma: float = 2.0,
) -> torch.Tensor:
    """SEED-GRPO per-prompt advantage scale ``f(alpha * SE / SE_max)``, ``SE_max = log G`` (arXiv 2505.12346 Eq. 6:
    ``A^_i = A_i * f(alpha * SE(q) / SE_max(q))``; one scalar per prompt, broadcast to all its rollouts and tokens).

    !!! The exact forms of f are a GUESS. The paper (v1) only says f "can take various forms, such as linear,
    exponential, or focal", picks Linear, and defers details to supplementary material that is not public. We use the
    natural reading (methods.md B6): ``linear: 1 - x``, ``exponential: exp(-x)``, ``focal: (1 - x)^gamma``. !!!

    ``form="inverse"``: the third-party "official-parity" reimplementation (maxent-grpo,
    ``_compute_seed_grpo_statistics``): ``1 / (1 + alpha_eff * SE)`` with ``alpha_eff = alpha / log G``; that code's
    default ``alpha = 0.0417`` (pass it explicitly for parity).

    Notes: the paper applies the scale to the mean-centred advantage ``r - mean`` (Dr.GRPO, no std division); on top
    of std-normalised GRPO it multiplies ``A/std`` (never tested in the paper). With ``alpha = 0.02`` and
    ``SE <= log G`` the scale stays in ``[0.98, 1]`` -- the paper's effect size is small (UNCERTAIN, see methods.md).

    Args: ``se`` [P] semantic entropies (>= 0, finite); ``group_size`` int or [P] ints (G per prompt);
    ``alpha >= 0`` (default 0.02, the paper's); ``gamma > 0`` (focal exponent, default 2.0 -- not given by the paper).
    Edge cases: ``G <= 1`` -> scale 1 (``SE_max = 0``); the result is clamped to ``>= 0``.
    Returns a detached float32 tensor [P] (0-d if ``se`` is a scalar).
    """
    if form not in _SEED_FORMS:
        raise ValueError(f"unknown SEED-GRPO form '{form}'; choose one of {_SEED_FORMS}")
    alpha = _check_real("alpha", alpha)
    gamma = _check_real("gamma", gamma)
    if alpha < 0:
        raise ValueError(f"alpha must be >= 0, got {alpha}")
    if gamma <= 0:
        raise ValueError(f"gamma must be > 0, got {gamma}")
    se_t = _as_float_tensor("se", se).to(torch.float64)
    if (se_t < 0).any():
        raise ValueError("se (semantic entropy) must be >= 0")
    g = _as_float_tensor("group_size", group_size).to(torch.float64)
    if (g < 0).any():
        raise ValueError("group_size must be >= 0")
    try:
        se_t, g = torch.broadcast_tensors(se_t, g)
    except RuntimeError:
        raise ValueError(
            f"group_size shape {tuple(g.shape)} does not broadcast to se shape {tuple(se_t.shape)}"
        ) from None
    se_max = torch.log(g.clamp_min(1.0))  # log G; 0 when G <= 1
    trivial = se_max <= 0
    safe_max = torch.where(trivial, torch.ones_like(se_max), se_max)
    x = alpha * se_t / safe_max
    if form == "linear":
        f = 1.0 - x
    elif form == "exponential":
        f = torch.exp(-x)
    elif form == "focal":
        f = (1.0 - x).clamp_min(0.0).pow(gamma)
    else:  # inverse
        f = 1.0 / (1.0 + x)
    f = torch.where(trivial, torch.ones_like(f), f).clamp_min(0.0)
    return f.to(torch.float32).detach()


def seed_grpo_prompt_scales(
    answers_per_prompt: Sequence[Sequence[Optional[Hashable]]],
    seq_logprobs: Optional[Any] = None,
    *,
    alpha: float = 0.02,
    form: str = "linear",
    gamma: float = 2.0,
    estimator: str = "rao",
) -> torch.Tensor:
    """SEED-GRPO end to end: :func:`semantic_entropy` then :func:`seed_grpo_scale` with ``G = len(answers)`` per
    prompt (arXiv 2505.12346, Eqs. 5-6). Returns the per-prompt scale [P]; the trainer repeats it over each prompt's
    G rollouts (``repeat_interleave``) and multiplies the advantages. Same caveats (the f forms are a GUESS).
    """
    se = semantic_entropy(answers_per_prompt, seq_logprobs, estimator=estimator)
    sizes = torch.tensor([len(a) for a in answers_per_prompt], dtype=torch.float64)
    return seed_grpo_scale(se, sizes, alpha=alpha, form=form, gamma=gamma)


SEQUENCE_STRATEGIES.register("seed", seed_grpo_prompt_scales)


# ----------------------------------------------------------------------------------------------------------------------
# Loss-based sample reweighting (E15)
# ----------------------------------------------------------------------------------------------------------------------
def _f_linupper(h: torch.Tensor, delta: float) -> torch.Tensor:
    return torch.minimum(h + delta, torch.full_like(h, delta))


def _f_mid(h: torch.Tensor, delta: float) -> torch.Tensor:
    return 1.0 - h.pow(2) / delta**2


def _f_extremes(h: torch.Tensor, delta: float) -> torch.Tensor:
    return h.abs()


def _f_upper(h: torch.Tensor, delta: float) -> torch.Tensor:
    return 0.5 * h + 0.5 * delta


#: strategy name -> f(h, delta); "quadratic" is the paper's name for the code's "mid".
LOSS_STRATEGIES = {
    "linupper": _f_linupper,
    "quadratic": _f_mid,
    "mid": _f_mid,
    "extremes": _f_extremes,
    "upper": _f_upper,
}


def loss_sample_weights(
    losses: Any,
    *,
    strategy: str = "linupper",
    temperature: float = 0.4,
    delta: float = 1.0,
) -> torch.Tensor:
    """Loss-based sample weights (Sow et al., ICLR 2025, arXiv 2502.06733), summing to 1 over the batch handed in.

    Official code ``sowmaster/Sample-Level-Loss-Reweighting-ICLR-2025`` ``src/trainer.py``: ``h_func``,
    ``f_func_{linupper,mid,extremes,upper}``, ``g_func`` and their use in ``DoGETrainer.training_step``::

        D   = max(l_max - l_min, 1e-6)
        h_i = 2*delta*l_i/D - delta*(l_max + l_min)/D        (in [-delta, delta])
        f   : linupper  min(h + delta, delta)   (paper default: down-weights low-loss samples)
              quadratic 1 - h^2/delta^2         (code name "mid": down-weights both extremes)
              extremes  |h|                     (up-weights both extremes)
              upper     0.5*h + 0.5*delta       (code only)
        g_i = exp((f_i - max f) / temperature)  (temperature = the code's ``kl_reg``)
        w_i = g_i / sum_j g_j

    ``losses``: [N] per-sample losses (the official ones are token-mean CE per sequence). ``l_min``/``l_max`` are
    over the tensor handed in (the official code all-gathers them; the trainer decides the scope).
    Defaults: ``linupper``, ``temperature = 0.4`` (the DoGE/DoReMi configs; ``ours_nodr.json`` uses mid / 1.0),
    ``delta = 1``.

    Numerics (same values as the official formula): ``h`` is computed as ``delta*((l - l_min) - (l_max - l))/D`` in
    float64 after dividing the losses by their largest magnitude (when > 1), avoiding the cancellation of
    ``2l/D - (l_max+l_min)/D`` when ``D`` is floored, and overflow for huge finite losses.
    Edge cases: all-equal losses -> ``h = 0`` for all -> uniform ``1/N``; ``N == 1`` -> ``[1.0]``; ``N == 0`` ->
    empty. Returns a detached tensor [N] (float dtype of ``losses``; float32 for integer input).
    """
    if strategy not in LOSS_STRATEGIES:
        raise ValueError(f"unknown loss-reweighting strategy '{strategy}'; choose one of {sorted(LOSS_STRATEGIES)}")
    temperature = _check_real("temperature", temperature)
    delta = _check_real("delta", delta)
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if delta <= 0:
        raise ValueError(f"delta must be > 0, got {delta}")
    l_in = _as_float_tensor("losses", losses)
    if l_in.dim() != 1:
        raise ValueError(f"losses must be 1-D [N], got shape {tuple(l_in.shape)}")
    n = l_in.shape[0]
    if n == 0:
        return torch.empty(0, dtype=l_in.dtype, device=l_in.device)
    x = l_in.to(torch.float64)
    d_floor = 1e-6
    s = float(x.abs().max())
    if s > 1.0:  # scale-invariant rewrite; the floor is scaled along with the data
        x = x / s
        d_floor = d_floor / s
    lmin, lmax = x.min(), x.max()
    d = torch.clamp(lmax - lmin, min=d_floor)
    h = delta * ((x - lmin) - (lmax - x)) / d
    f = LOSS_STRATEGIES[strategy](h, delta)
    g = torch.exp((f - f.max()) / temperature)
    w = g / g.sum()
    return w.to(l_in.dtype).detach()


class LossSampleWeighter:
    """Stateful wrapper of :func:`loss_sample_weights` with the official burn-in (Sow et al., arXiv 2502.06733;
    official ``DoGETrainer.training_step``: ``if step < burnout_steps: uniform else reweighted``).

    * :meth:`weights` returns sample weights summing to 1 over the losses handed in: ``1/N`` each while
      ``num_steps < burn_in_steps`` (default 1000, the official ``burnout_steps``), then
      :func:`loss_sample_weights`.
    * :meth:`step` advances the counter once per optimizer step (the official test is ``global_step <
      burnout_steps``, ``global_step`` counting completed optimizer steps).

    Token-length factor (choice): the repo's loss is ``sum_i w_i * (n_i / sum n) * l_i * world_size * B_local``
    (burn-in: ``sum_i (n_i / sum n) * l_i``); the README form omits ``n_i / sum n``. These weights do **not**
    include ``n_i / sum n``: they are per-sequence weights only, and the length handling is left to the loss's explicit
    aggregation (``policy_loss(aggregation=...)``), so the weighting and the aggregation compose instead of
    double-counting length. To mirror the repo exactly, multiply by ``N * n_i / sum n`` yourself and sum.
    During burn-in the uniform ``1/N`` is returned for the same reason (the repo's burn-in weight is ``n_i/sum n``).

    State (``state_dict``): ``{"num_steps": int}``; hyper-parameters are constructor arguments, not state.
    """

    def __init__(
        self,
        strategy: str = "linupper",
        temperature: float = 0.4,
        delta: float = 1.0,
        burn_in_steps: int = 1000,
    ):
        if strategy not in LOSS_STRATEGIES:
            raise ValueError(f"unknown loss-reweighting strategy '{strategy}'; choose one of {sorted(LOSS_STRATEGIES)}")
        self.strategy = strategy
        self.temperature = _check_real("temperature", temperature)
        self.delta = _check_real("delta", delta)
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if self.delta <= 0:
            raise ValueError(f"delta must be > 0, got {delta}")
        if int(burn_in_steps) != burn_in_steps or burn_in_steps < 0:
            raise ValueError(f"burn_in_steps must be a non-negative integer, got {burn_in_steps}")
        self.burn_in_steps = int(burn_in_steps)
        self.num_steps = 0

    @property
    def in_burn_in(self) -> bool:
        return self.num_steps < self.burn_in_steps

    def weights(self, losses: Any) -> torch.Tensor:
        """Sample weights [N] summing to 1 (uniform during burn-in). Detached; ``ValueError`` on non-finite losses."""
        l_in = _as_float_tensor("losses", losses)
        if l_in.dim() != 1:
            raise ValueError(f"losses must be 1-D [N], got shape {tuple(l_in.shape)}")
        if self.in_burn_in:
            n = l_in.shape[0]
            return torch.full((n,), 1.0 / max(n, 1), dtype=l_in.dtype, device=l_in.device)
        return loss_sample_weights(l_in, strategy=self.strategy, temperature=self.temperature, delta=self.delta)

    def step(self) -> None:
        """Advance one optimizer step."""
        self.num_steps += 1

    def state_dict(self) -> Dict[str, Any]:
        return {"num_steps": int(self.num_steps)}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        if "num_steps" not in state:
            raise ValueError("LossSampleWeighter state is missing 'num_steps'")
        self.num_steps = int(state["num_steps"])

    def __repr__(self) -> str:
        return (
            f"LossSampleWeighter(strategy={self.strategy!r}, temperature={self.temperature}, delta={self.delta}, "
            f"burn_in_steps={self.burn_in_steps}; num_steps={self.num_steps})"
        )


SEQUENCE_STRATEGIES.register("loss_reweighting", LossSampleWeighter)

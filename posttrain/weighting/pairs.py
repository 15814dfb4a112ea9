"""Per-pair weights for DPO-family losses (torch only; never imports TRL or transformers).

Implemented here (specs: ``methods.md`` D12-D14, user guide ``docs/weighting_pairs_sequences.md``):

* :func:`madpo_weights` / :func:`madpo_coefficient` -- MADPO, Margin-Adaptive DPO (arXiv 2510.05342),
  official code ``sirano1004/Margin-Apative-Direct-Preference-Optimization``, ``utils/loss_functions.py::MADPOLoss``.
* :class:`BetaDPO` -- beta-DPO, DPO with dynamic beta (Wu et al., NeurIPS 2024, arXiv 2407.08639),
  official code ``junkangwu/beta-DPO``, ``trainers.py::preference_loss`` / ``update_and_sync_tensor_mean``.
* RPO (Liu et al., arXiv 2405.16436) needs no weight: its SFT term is added by the loss/trainer. How it composes
  (TRL ``rpo_alpha`` token-mean NLL vs the paper's sequence-sum form) is documented in the user guide.

House rules: every returned weight is detached; any finite input gives finite output; a non-finite input raises
``ValueError`` naming the argument. Batch statistics are computed over exactly the tensors handed in -- the trainer
decides the scope (local batch or all-gathered across processes).
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

import torch
import torch.nn.functional as F

from posttrain.registry import Registry
from posttrain.weighting._checks import as_float_tensor as _as_float_tensor
from posttrain.weighting._checks import check_real as _check_real

__all__ = [
    "madpo_coefficient",
    "madpo_weights",
    "BetaDPO",
    "PAIR_STRATEGIES",
]

PAIR_STRATEGIES = Registry("pair weighting strategy")


# ----------------------------------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------------------------------


def _logsigmoid(x: torch.Tensor) -> torch.Tensor:
    """``log sigmoid(x) = -softplus(-x)``; same values as ``F.logsigmoid`` (the linear branch above |x| = 50 is exact
    to float64 precision) but much faster on CPU."""
    return -F.softplus(-x, threshold=50.0)


_F64_MAX = torch.finfo(torch.float64).max


def _saturate(v: float) -> float:
    """Clip a python float to the finite float64 range (inf only arises from overflow of huge finite inputs)."""
    return max(-_F64_MAX, min(_F64_MAX, v))


def _validate_madpo(c_max: float, c_min: float, lam: float, tau: float) -> Tuple[float, float, float, float]:
    c_max = _check_real("c_max", c_max)
    c_min = _check_real("c_min", c_min)
    lam = _check_real("lam", lam)
    tau = _check_real("tau", tau)
    if not (c_min < 1.0 < c_max):
        raise ValueError(
            f"MADPO needs c_min < 1 < c_max (got c_min={c_min}, c_max={c_max}); otherwise the factor "
            f"(c_max - 1)/(1 - c_min) in c(m) is not positive and c(tau) = 1 no longer holds"
        )
    if lam <= 0:
        raise ValueError(f"MADPO needs lam > 0 (got lam={lam})")
    if tau <= 0:
        raise ValueError(f"MADPO needs tau > 0 (got tau={tau})")
    return c_max, c_min, lam, tau


# ----------------------------------------------------------------------------------------------------------------------
# MADPO (D12)
# ----------------------------------------------------------------------------------------------------------------------
def madpo_coefficient(
    m: Any, *, c_max: float = 2.0, c_min: float = 0.5, lam: float = 1.0, tau: float = 2.0
) -> torch.Tensor:
    """MADPO margin coefficient ``c(m)``.

    Paper: "Margin-Adaptive Direct Preference Optimization" (MADPO), arXiv 2510.05342. Official code:
    ``sirano1004/Margin-Apative-Direct-Preference-Optimization``, ``utils/loss_functions.py::MADPOLoss.coef``::

        c(m) = c_min + (c_max - c_min) / (1 + ((c_max - 1)/(1 - c_min)) * exp(lam * (m - tau)))

    with ``m = |h|`` the absolute reward-model margin. Properties: ``c(tau) = 1`` (exactly 1.0 for the defaults,
    to within one rounding otherwise); ``c -> c_min`` as ``m -> inf``; ``c(0)`` is below ``c_max``; decreasing in m.

    Defaults are the official class defaults (c_max=2, c_min=0.5, lam=1, tau=2); the paper's notebook uses
    ``tau = ln(0.999/0.001) ~= 6.907``. Requires ``c_min < 1 < c_max``, ``lam > 0``, ``tau > 0`` (``ValueError``
    otherwise). Numerics: the formula is evaluated as in the official code, in float64; for huge ``m`` the exp
    overflows to ``inf`` in the *denominator only*, which gives exactly ``c_min`` (never NaN); for very negative
    arguments it underflows to 0, giving ``c_max``. Returns a detached tensor of ``m``'s shape and float dtype.
    """
    c_max, c_min, lam, tau = _validate_madpo(c_max, c_min, lam, tau)
    m_t = _as_float_tensor("m", m)
    k = (c_max - 1.0) / (1.0 - c_min)
    x = m_t.to(torch.float64)
    c = c_min + (c_max - c_min) / (1.0 + k * torch.exp(lam * (x - tau)))
    return c.to(m_t.dtype)


def madpo_weights(
    margins: Any, *, c_max: float = 2.0, c_min: float = 0.5, lam: float = 1.0, tau: float = 2.0
) -> torch.Tensor:
    """MADPO per-pair weights (Margin-Adaptive DPO, arXiv 2510.05342, D12).

    ``margins`` is ``h = r(y_w) - r(y_l)``: the frozen Bradley-Terry reward model's margin *toward the labelled
    winner* (the official code computes ``h1 = r1 - r2`` and ``h2 = -h1`` and picks the one of the labelled choice).
    Official code ``utils/loss_functions.py::MADPOLoss.forward``::

        w = sigmoid(c(|h|) * h) / sigmoid(h)   if h > -tau
        w = 1                                  if h <= -tau   (cap for strongly "mislabelled" pairs)

    The loss is then ``mean_i w_i * (-log sigmoid(beta * (Delta_w - Delta_l)))`` -- a plain mean, weights are NOT
    renormalised (pass them as ``weights=`` to ``dpo_loss``).

    Behaviour: hard positive pairs (small ``h > 0``, ``c > 1``) get ``w > 1``; easy pairs (``h > tau``, ``c < 1``)
    get ``w < 1`` (-> 1 as h -> inf); mildly negative ``h in (-tau, 0)`` gets ``w < 1``; ``w = 1`` at ``h = 0`` and
    the cap is continuous at ``h = -tau`` because ``c(tau) = 1``. For ``h > 0`` the weight is bounded by 2.

    Numerics: the sigmoid ratio is computed as ``exp(logsigmoid(c*h) - logsigmoid(h))`` in float64 (stable for any
    finite margin, e.g. +-1e4). With a very large ``tau`` and ``h`` close to ``-tau`` the weight is genuinely tiny
    (about ``exp(-(c-1)|h|)``) and can underflow to 0 -- still finite.

    Args: ``margins`` any-shape finite tensor (or list); hyper-parameters as in :func:`madpo_coefficient`.
    Returns: detached weights, same shape as ``margins``, float dtype of ``margins`` (float32 for integer input).
    Raises ``ValueError`` for non-finite margins or invalid hyper-parameters.
    """
    c_max, c_min, lam, tau = _validate_madpo(c_max, c_min, lam, tau)
    h_in = _as_float_tensor("margins", margins)
    h = h_in.to(torch.float64)
    c = madpo_coefficient(h.abs(), c_max=c_max, c_min=c_min, lam=lam, tau=tau)
    ratio = torch.exp(_logsigmoid(c * h) - _logsigmoid(h))
    w = torch.where(h > -tau, ratio, torch.ones_like(ratio))
    return w.to(h_in.dtype).detach()


PAIR_STRATEGIES.register("madpo", madpo_weights)


# ----------------------------------------------------------------------------------------------------------------------
# beta-DPO (D13)
# ----------------------------------------------------------------------------------------------------------------------
class BetaDPO:
    """beta-DPO: dynamic batch beta + beta-guided data filtering (Wu et al., "beta-DPO: Direct Preference
    Optimization with Dynamic beta", NeurIPS 2024, arXiv 2407.08639).

    Official code ``junkangwu/beta-DPO``: ``trainers.py::BasicTrainer.update_and_sync_tensor_mean`` (EMA),
    ``trainers.py::preference_loss`` (filter + beta, branch ``mode_loss == "beta_DPO"``), ``get_batch_metrics``
    (order of operations). Per batch, in this order (use :meth:`step` to get exactly this order):

    1. ``M_i = (log pi(y_w) - log pi_ref(y_w)) - (log pi(y_l) - log pi_ref(y_l))`` (detached implicit-reward gap;
       the official code all-gathers it over ranks first).
    2. :meth:`update`: ``M0 <- gamma*M0 + (1-gamma)*mean(M)``, ``sigma <- gamma*sigma + (1-gamma)*std(M)``
       (unbiased std), both initialised at 0, updated BEFORE the loss on the same batch.
    3. :meth:`keep_mask`: ``p_i ∝ exp(-1/2 ((M_i - M0)/sigma)^2)``; ``n_keep = int(N*(1-rho))`` indices drawn
       without replacement by ``torch.multinomial``.
    4. :meth:`beta`: ``beta_b = beta0 * (1 + alpha*(mean_{i kept} M_i - M0))`` clamped to ``>= 1e-3``, detached.
    5. (loss library / trainer) ``sum_i mask_i * (-log sigmoid(beta_b * (Delta_w - Delta_l))) / max(sum mask, 1)``;
       logged rewards use the base ``beta0``.

    Defaults: ``beta0=0.1``, ``alpha=0.6`` (README example; the official config default ``a=0.0`` disables the
    adaptation), ``rho=0.2`` (``mode_weight``), ``gamma=0.9``.

    Scope: the statistics are computed over whatever ``gaps`` this object is given. The official code all-gathers
    the gaps over ranks and then all-reduce-averages the EMA (a no-op once every rank holds the same gathered gaps),
    so for parity the trainer must all-gather the gaps first and hand every rank the same global tensor (and the
    same generator seed, so every rank draws the same global mask and slices its local part).

    Deviations from the official code (documented choices):

    * **Zero-spread guard**: the filter uses ``sigma_eff = max(sigma, min_std)`` (``min_std=1e-6``). The official
      code has no guard: if all gaps are equal (e.g. step 1 with policy == reference) ``sigma = 0``, ``(M-M0)/sigma``
      is NaN and ``torch.multinomial`` raises.
    * **Underflow guard**: the Gaussian log-weights are shifted by their max before ``exp`` (same distribution) and
      floored at the smallest normal float64, so pairs far in the tail (which would have probability exactly 0 and
      make ``multinomial`` without replacement raise when fewer than ``n_keep`` are positive) are drawn last.
    * **Single-element batch**: an unbiased std of one value is undefined (NaN in the official code, which would
      poison the EMA). Here ``sigma`` is left unchanged for ``N == 1`` (the mean is still updated); ``N == 0`` is a
      no-op.
    * **n_keep**: ``int(N*(1-rho))`` as in the official code, but at least 1 when ``N >= 1`` (the official code
      would draw 0 samples and take the mean of an empty set, NaN). ``rho == 0`` keeps every pair (no RNG draw).
    * :meth:`beta` with no kept pair (empty batch / all-False mask) returns ``beta0`` clamped, instead of NaN.
    * EMA state is kept as python floats (float64) instead of a float32 CUDA tensor.
    * Overflow guards that only act on absurd finite gaps (|M| beyond ~1e150): mean/std computed as
      ``s * mean(M/s)`` with ``s = max|M|``, ``|z|`` capped at 1e150 before squaring, beta saturating at the dtype's
      max. Realistic values are unaffected; they exist so that any finite input gives a finite output.
    """

    def __init__(
        self,
        beta0: float = 0.1,
        alpha: float = 0.6,
        rho: float = 0.2,
        gamma: float = 0.9,
        min_std: float = 1e-6,
    ):
        self.beta0 = _check_real("beta0", beta0)
        self.alpha = _check_real("alpha", alpha)
        self.rho = _check_real("rho", rho)
        self.gamma = _check_real("gamma", gamma)
        self.min_std = _check_real("min_std", min_std)
        if self.beta0 <= 0:
            raise ValueError(f"beta0 must be > 0, got {beta0}")
        if not 0.0 <= self.rho < 1.0:
            raise ValueError(f"rho (fraction of pairs filtered out) must be in [0, 1), got {rho}")
        if not 0.0 <= self.gamma <= 1.0:
            raise ValueError(f"gamma (EMA decay) must be in [0, 1], got {gamma}")
        if self.min_std <= 0:
            raise ValueError(f"min_std must be > 0, got {min_std}")
        self.gap_mean: float = 0.0
        self.gap_std: float = 0.0
        self.num_updates: int = 0

    # -- statistics ------------------------------------------------------------------------------------------------
    @staticmethod
    def _gaps(gaps: Any) -> torch.Tensor:
        g = _as_float_tensor("gaps", gaps)
        if g.dim() != 1:
            raise ValueError(f"gaps must be a 1-D tensor [N] of per-pair implicit-reward gaps, got shape {tuple(g.shape)}")
        return g

    def update(self, gaps: Any) -> Tuple[float, float]:
        """EMA update of the gap mean and (unbiased) std from this batch's gaps; returns ``(gap_mean, gap_std)``.

        Official: ``update_and_sync_tensor_mean`` (``gap.mean()``, ``gap.std()`` = unbiased). ``N == 0``: no-op;
        ``N == 1``: only the mean is updated (see class docstring).
        """
        g = self._gaps(gaps).to(torch.float64)
        n = g.numel()
        if n == 0:
            return self.gap_mean, self.gap_std
        # mean/std of g/s times s (s = max|g|): same values, but no overflow of the sum for huge finite gaps
        scale = float(g.abs().max())
        gs = g / scale if scale > 0 else g
        mult = scale if scale > 0 else 1.0
        gm = self.gamma
        self.gap_mean = _saturate(gm * self.gap_mean + (1.0 - gm) * _saturate(float(gs.mean()) * mult))
        if n >= 2:
            self.gap_std = _saturate(gm * self.gap_std + (1.0 - gm) * _saturate(float(gs.std(unbiased=True)) * mult))
        self.num_updates += 1
        return self.gap_mean, self.gap_std

    def n_keep(self, n: int) -> int:
        """Number of pairs kept out of ``n``: ``int(n*(1-rho))`` (official), at least 1 when ``n >= 1``."""
        if n <= 0:
            return 0
        return max(1, min(n, int(n * (1 - self.rho))))

    def keep_mask(self, gaps: Any, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """beta-guided filtering: boolean mask [N] of the pairs kept for the loss.

        Gaussian-weighted sampling without replacement (``torch.multinomial(p, n_keep, replacement=False,
        generator=generator)``) with ``p_i ∝ exp(-1/2 ((M_i - M0)/max(sigma, min_std))^2)`` using the CURRENT EMA
        statistics (call :meth:`update` first, as the official code does). Deterministic for a seeded
        ``generator`` (which must live on ``gaps``'s device); ``rho == 0`` keeps all without drawing.
        """
        g = self._gaps(gaps)
        n = g.numel()
        keep = torch.zeros(n, dtype=torch.bool, device=g.device)
        k = self.n_keep(n)
        if k == 0:
            return keep
        if k >= n:
            keep[:] = True
            return keep
        sigma = max(self.gap_std, self.min_std)
        # |z| is capped at 1e150 so that z^2 stays finite (only matters for absurdly large finite gaps)
        z = ((g.to(torch.float64) - self.gap_mean) / sigma).clamp(-1e150, 1e150)
        logw = -0.5 * z.pow(2)
        w = torch.exp(logw - logw.max()).clamp_min(torch.finfo(torch.float64).tiny)
        idx = torch.multinomial(w, k, replacement=False, generator=generator)
        keep[idx] = True
        return keep

    def beta(self, gaps: Any, keep: Optional[Any] = None) -> torch.Tensor:
        """Batch beta ``beta0 * (1 + alpha * (mean_{kept} M - M0))`` clamped to ``>= 1e-3``.

        ``keep``: boolean/0-1 mask [N] (e.g. from :meth:`keep_mask`), or ``None`` for all pairs. Returns a detached
        0-d tensor (dtype/device of ``gaps``); ``float(...)`` gives the python number. No kept pair -> ``beta0``.
        """
        g = self._gaps(gaps)
        if keep is None:
            sel = g
        else:
            keep_t = torch.as_tensor(keep, device=g.device)
            if keep_t.shape != g.shape:
                raise ValueError(f"keep must have the shape of gaps {tuple(g.shape)}, got {tuple(keep_t.shape)}")
            sel = g[keep_t.bool()]
        if sel.numel() == 0:
            value = self.beta0
        else:
            s64 = sel.to(torch.float64)
            scale = float(s64.abs().max())
            kept_mean = float((s64 / scale).mean()) * scale if scale > 0 else 0.0
            value = self.beta0 * (1.0 + self.alpha * _saturate(kept_mean - self.gap_mean))
        # lower clamp 1e-3 (official); the upper saturation at the dtype's max only matters for absurd gaps
        value = min(max(value, 1e-3), torch.finfo(g.dtype).max)
        return torch.tensor(value, dtype=g.dtype, device=g.device)

    def step(self, gaps: Any, generator: Optional[torch.Generator] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """The official per-batch order: :meth:`update`, then :meth:`keep_mask`, then :meth:`beta`.

        Returns ``(keep_mask [N] bool, beta 0-d tensor)``.
        """
        self.update(gaps)
        keep = self.keep_mask(gaps, generator=generator)
        return keep, self.beta(gaps, keep)

    # -- checkpointing ---------------------------------------------------------------------------------------------
    def state_dict(self) -> Dict[str, Any]:
        """Plain python floats/ints (JSON- and ``torch.save``-safe)."""
        return {"gap_mean": float(self.gap_mean), "gap_std": float(self.gap_std), "num_updates": int(self.num_updates)}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        missing = {"gap_mean", "gap_std", "num_updates"} - set(state)
        if missing:
            raise ValueError(f"BetaDPO state is missing {sorted(missing)}")
        self.gap_mean = _check_real("gap_mean", state["gap_mean"])
        self.gap_std = _check_real("gap_std", state["gap_std"])
        self.num_updates = int(state["num_updates"])

    def __repr__(self) -> str:
        return (
            f"BetaDPO(beta0={self.beta0}, alpha={self.alpha}, rho={self.rho}, gamma={self.gamma}, "
            f"min_std={self.min_std}; gap_mean={self.gap_mean:.6g}, gap_std={self.gap_std:.6g}, "
            f"num_updates={self.num_updates})"
        )


PAIR_STRATEGIES.register("beta_dpo", BetaDPO)

"""beta-DPO: Direct Preference Optimization with Dynamic beta (Wu et al., NeurIPS 2024, arXiv 2407.08639).

Official code ``junkangwu/beta-DPO``: ``trainers.py::BasicTrainer.update_and_sync_tensor_mean`` (the EMA of the
gap statistics), ``trainers.py::preference_loss`` (branch ``mode_loss == "beta_DPO"``: beta-guided filtering and
the batch beta), ``trainers.py::BasicTrainer.get_batch_metrics`` (order of operations, all-gather of the gaps).

* :class:`BetaDPO` -- the pure math and its state (EMA of the implicit-reward gap's mean and std).
* :class:`BetaDPOStrategy` -- the ``pair`` strategy ``beta_dpo``: hook ``batch_beta(ctx)`` runs the official
  per-batch order on the gaps of *every* process (all-gathered, the official scope) and returns this process's
  slice of the global keep mask and the batch beta.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

import torch
from pydantic import Field

from posttrain.checks import as_float_tensor as _as_float_tensor
from posttrain.checks import check_real as _check_real
from posttrain.weighting.protocol import PairContext, Strategy, StrategyConfig, register_strategy

__all__ = ["BetaDPO", "BetaDPOConfig", "BetaDPOStrategy"]

_CITE = ("beta-DPO, Wu et al., NeurIPS 2024, arXiv 2407.08639 (dynamic beta: beta_b = beta0 (1 + alpha "
         "(mean_kept M - M0)); beta-guided filtering: p_i ~ exp(-(M_i - M0)^2 / (2 sigma^2))); junkangwu/beta-DPO "
         "trainers.py::preference_loss, BasicTrainer.update_and_sync_tensor_mean")


_F64_MAX = torch.finfo(torch.float64).max


def _saturate(v: float) -> float:
    """Clip a python float to the finite float64 range (inf only arises from overflow of huge finite inputs)."""
    return max(-_F64_MAX, min(_F64_MAX, v))



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


# ----------------------------------------------------------------------------------------------------------- strategy
class BetaDPOConfig(StrategyConfig):
    """Arguments of the ``beta_dpo`` pair strategy (those of :class:`BetaDPO`)."""

    beta0: float = Field(0.1, gt=0.0, allow_inf_nan=False, description=(
        "Base beta0 of the batch beta beta_b = beta0 (1 + alpha (mean_kept M - M0)), clamped >= 1e-3. This "
        "strategy's own value: it replaces train.beta in the loss (TRL's logged rewards keep train.beta). "
        "Default 0.1, the official value (beta-DPO, Wu et al., arXiv 2407.08639, dynamic beta calibration; "
        "junkangwu/beta-DPO trainers.py::preference_loss)"))
    alpha: float = Field(0.6, allow_inf_nan=False, description=(
        "Scale alpha of the beta adaptation; 0 disables it (the official config default a=0.0 does). Default 0.6, "
        "the official README example (beta-DPO, arXiv 2407.08639, dynamic beta calibration; "
        "junkangwu/beta-DPO trainers.py::preference_loss, config loss.a)"))
    rho: float = Field(0.2, ge=0.0, lt=1.0, allow_inf_nan=False, description=(
        "Fraction of pairs filtered out per batch: int(N (1 - rho)) pairs are kept, drawn without replacement "
        "with p_i ~ exp(-(M_i - M0)^2 / (2 sigma^2)); 0 keeps every pair (no draw). Default 0.2 (beta-DPO, "
        "arXiv 2407.08639, beta-guided data filtering; junkangwu/beta-DPO trainers.py::preference_loss, "
        "mode_weight)"))
    gamma: float = Field(0.9, ge=0.0, le=1.0, allow_inf_nan=False, description=(
        "EMA decay of the gap mean M0 and std sigma, M0 <- gamma M0 + (1 - gamma) mean(M), updated on training "
        "batches before the loss. Default 0.9, the official value (beta-DPO, arXiv 2407.08639; junkangwu/beta-DPO "
        "trainers.py::BasicTrainer.update_and_sync_tensor_mean)"))
    min_std: float = Field(1e-6, gt=0.0, allow_inf_nan=False, description=(
        "Floor of sigma in the filter's Gaussian, max(sigma, min_std): a guard the official code lacks (all-equal "
        "gaps, e.g. the first step with policy = reference, give sigma = 0 and a NaN draw there) (beta-DPO, "
        "arXiv 2407.08639, beta-guided data filtering; junkangwu/beta-DPO trainers.py::preference_loss)"))


@register_strategy("pair", "beta_dpo")
class BetaDPOStrategy(Strategy):
    """beta-DPO: per-batch beta from the implicit-reward gaps, and Gaussian-weighted filtering of outlier pairs
    (Wu et al., NeurIPS 2024, arXiv 2407.08639).

    Hook ``batch_beta(ctx)``: the gaps ``ctx.implicit_reward_gaps_B`` of this process are all-gathered with
    ``ctx.all_gather`` (the official code's scope; every process must hold the same number of pairs); on training
    batches (``ctx.mode == "train"``) the EMA is updated first; the global keep mask is drawn with
    ``ctx.generator`` (seeded identically on every rank, so all ranks draw the same mask; evaluation batches use
    their own generator and leave the EMA alone); the batch beta is computed from the kept gaps. Returns this
    process's slice of the mask and the beta (a float); logs ``pairs/kept_fraction``, ``pairs/gap_ema_mean`` and
    ``pairs/gap_ema_std``. The trainer then takes ``sum_i w_i keep_i l_i(beta_b) / max(sum_i keep_i, 1)``.

    State: :meth:`BetaDPO.state_dict` of :attr:`beta_dpo` (``gap_mean``, ``gap_std``, ``num_updates``).
    """

    Config = BetaDPOConfig
    cite = _CITE

    def __init__(self, config: Optional[BetaDPOConfig] = None, env=None):
        super().__init__(config, env)
        c = self.config
        self.beta_dpo = BetaDPO(beta0=c.beta0, alpha=c.alpha, rho=c.rho, gamma=c.gamma, min_std=c.min_std)

    @classmethod
    def warnings(cls, config: BetaDPOConfig, env) -> List[str]:
        if config.alpha == 0 and config.rho == 0:
            return [f"alpha 0 and rho 0 disable both the dynamic beta and the filter: this is plain DPO with "
                    f"beta = beta0 = {config.beta0}"]
        return []

    def batch_beta(self, ctx: PairContext) -> Tuple[torch.Tensor, float]:
        gaps = ctx.implicit_reward_gaps_B
        n = gaps.numel()
        all_gaps = ctx.all_gather(gaps)
        if all_gaps.numel() != n * ctx.num_processes:
            raise RuntimeError("beta-DPO needs equal local batch sizes on every process")
        estimator = self.beta_dpo
        if ctx.mode == "train":
            estimator.update(all_gaps)
        all_keep = estimator.keep_mask(all_gaps.cpu(), generator=ctx.generator).to(gaps.device)
        beta = float(estimator.beta(all_gaps, all_keep))
        ctx.log("pairs/kept_fraction", all_keep.float().mean().item())
        ctx.log("pairs/gap_ema_mean", float(estimator.gap_mean))
        ctx.log("pairs/gap_ema_std", float(estimator.gap_std))
        rank = ctx.process_index
        return all_keep[rank * n:(rank + 1) * n], beta

    def state_dict(self) -> Dict[str, Any]:
        return self.beta_dpo.state_dict()

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.beta_dpo.load_state_dict(state)

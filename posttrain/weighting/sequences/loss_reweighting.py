"""Loss-based sample reweighting (Sow et al., "Dynamic Loss-Based Sample Reweighting for Improved Large Language
Model Pretraining", ICLR 2025, arXiv 2502.06733, Sec. 3).

Each sample's weight is a softmax over a function ``f`` of its loss rescaled to ``[-delta, delta]`` within the
batch, uniform for a burn-in of the first optimizer steps (official code
``sowmaster/Sample-Level-Loss-Reweighting-ICLR-2025`` ``src/trainer.py``: ``h_func``, ``f_func_*``, ``g_func``,
``DoGETrainer.training_step``). For GRPO the per-sample loss is the completion's token-mean negative
log-likelihood under the rollout policy, and the weights (scaled to mean 1) multiply the advantages.

* :func:`loss_sample_weights` / :class:`LossSampleWeighter` / :func:`token_mean_nll` -- the pure math;
* :class:`LossReweightingConfig` / :class:`LossReweighting` -- the ``loss_reweighting`` sequence strategy (hook
  ``adjust_advantages``; state ``{"num_steps": int}``).
"""
from __future__ import annotations

from typing import Any, Dict, List, Literal, Optional

import torch
from pydantic import Field

from posttrain.checks import as_float_tensor as _as_float_tensor
from posttrain.checks import check_real as _check_real
from posttrain.weighting.protocol import (RolloutContext, Strategy, StrategyConfig, StrategyEnv, StrategyError,
                                          register_strategy)

__all__ = ["loss_sample_weights", "LossSampleWeighter", "LOSS_STRATEGIES", "token_mean_nll",
           "LossReweightingConfig", "LossReweighting"]


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
    * ``num_steps`` is the burn-in counter and has one meaning: completed optimizer steps (the official test is
      ``global_step < burnout_steps``). Inside posttrain it is *set*, never incremented: the ``loss_reweighting``
      strategy (:class:`LossReweighting`) assigns the trainer's completed-step count before every :meth:`weights`
      call, so it is right after a resume and when one optimizer step spans several generation batches. A
      hand-written loop sets it the same way (``weighter.num_steps = completed_steps``).

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


def token_mean_nll(logps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``[n]`` token-mean negative log-likelihood of each completion, ``-sum_t m_t log p_t / max(sum_t m_t, 1)``,
    from per-token log-probs ``[n, T]`` and the completion mask ``[n, T]`` (the per-sample loss of Sow et al.,
    arXiv 2502.06733: the official loss is the token-mean cross-entropy of each sequence). A completion with no
    token gets 0."""
    mask = mask.float()
    return -(logps * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)


# ----------------------------------------------------------------------------------------------------------- strategy
class LossReweightingConfig(StrategyConfig):
    """Arguments of the ``loss_reweighting`` sequence strategy."""

    strategy: Literal["linupper", "quadratic", "mid", "extremes", "upper"] = Field("linupper", description=(
        "The function f of the rescaled loss h in [-delta, delta] (Sow et al., arXiv 2502.06733, Sec. 3; "
        "sowmaster/Sample-Level-Loss-Reweighting-ICLR-2025 src/trainer.py::f_func_*): 'linupper' min(h + delta, "
        "delta) (the paper's default: down-weights low-loss samples), 'quadratic' (= the code's 'mid') "
        "1 - h^2/delta^2 (down-weights both extremes), 'extremes' |h| (up-weights both extremes), 'upper' "
        "0.5 h + 0.5 delta (code only)"))
    temperature: float = Field(0.4, gt=0, allow_inf_nan=False, description=(
        "Softmax temperature of the weights, w_i ∝ exp(f_i / temperature) (the official code's kl_reg; 0.4 as in "
        "its DoGE/DoReMi configs, Sow et al., arXiv 2502.06733; src/trainer.py::g_func)"))
    delta: float = Field(1.0, gt=0, allow_inf_nan=False, description=(
        "Half-width of the interval [-delta, delta] the batch's losses are rescaled to "
        "(Sow et al., arXiv 2502.06733; src/trainer.py::h_func, default 1)"))
    burn_in_steps: int = Field(1000, ge=0, strict=True, description=(
        "Optimizer steps with uniform weights before the reweighting starts (the official burnout_steps, default "
        "1000; Sow et al., arXiv 2502.06733; src/trainer.py::DoGETrainer.training_step)"))


@register_strategy("sequence", "loss_reweighting")
class LossReweighting(Strategy):
    """Sow et al.: up- or down-weight completions by their loss within the batch (arXiv 2502.06733).

    Hook ``adjust_advantages`` (training rollouts only; ``None`` in evaluation): ``logps, mask =
    ctx.completion_logps()`` (this process's rows under the rollout policy), per-sample loss
    :func:`token_mean_nll`, ``losses = ctx.all_gather(nll)`` over the ``N`` rows (the official scope), burn-in
    counter ``num_steps = ctx.step`` (completed optimizer steps), weights :meth:`LossSampleWeighter.weights` times
    ``N`` (mean 1) multiply ``ctx.advantages_N``. Logs ``sequence_weighting/loss_reweighting/max``: the largest
    factor of *this process's* rows (what the trainer logged before the port; on one process, of all rows).
    State: ``{"num_steps": int}`` (``state_dict`` / ``load_state_dict``, as :class:`LossSampleWeighter`).
    """

    Config = LossReweightingConfig
    cite = ("Sow et al., Dynamic Loss-Based Sample Reweighting, ICLR 2025, arXiv 2502.06733, Sec. 3; "
            "sowmaster/Sample-Level-Loss-Reweighting-ICLR-2025 src/trainer.py (h_func, f_func_*, g_func, "
            "DoGETrainer.training_step)")

    def __init__(self, config: Optional[LossReweightingConfig] = None, env: Optional[StrategyEnv] = None):
        super().__init__(config, env)
        c = self.config
        self.weighter = LossSampleWeighter(strategy=c.strategy, temperature=c.temperature, delta=c.delta,
                                           burn_in_steps=c.burn_in_steps)

    @classmethod
    def warnings(cls, config: LossReweightingConfig, env: StrategyEnv) -> List[str]:
        if env.max_steps is not None and config.burn_in_steps >= env.max_steps:
            return [f"burn_in_steps={config.burn_in_steps} >= max_steps={env.max_steps}: the weights stay uniform "
                    f"for the whole run, so loss_reweighting never acts (set a shorter burn_in_steps)"]
        return []

    @property
    def num_steps(self) -> int:
        """The burn-in counter (completed optimizer steps at the last rollout)."""
        return self.weighter.num_steps

    @num_steps.setter
    def num_steps(self, value: int) -> None:
        self.weighter.num_steps = int(value)

    @torch.no_grad()
    def adjust_advantages(self, ctx: RolloutContext) -> Optional[torch.Tensor]:
        if ctx.mode != "train":
            return None
        adv = ctx.advantages_N
        if adv is None:
            raise StrategyError("loss_reweighting: the context carries no advantages (advantages_N)")
        logps, mask = ctx.completion_logps()
        losses = ctx.all_gather(token_mean_nll(logps, mask).float())
        if losses.shape[0] != adv.shape[0]:
            raise StrategyError(f"loss_reweighting: {losses.shape[0]} gathered losses for {adv.shape[0]} advantages")
        self.weighter.num_steps = int(ctx.step)  # burn-in counts completed optimizer steps
        w = (self.weighter.weights(losses) * losses.numel()).to(adv.device, adv.dtype)
        ctx.log("sequence_weighting/loss_reweighting/max", float(w[ctx.local_rows].max()))
        return adv * w

    def state_dict(self) -> Dict[str, Any]:
        return self.weighter.state_dict()

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.weighter.load_state_dict(state)

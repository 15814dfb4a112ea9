"""Per-step diagnostics of token weights (for logging; no paper)."""
from __future__ import annotations

import math

import torch

from ._common import check_finite, check_same_shape, quantile_linear, valid_of


def _summary(x: torch.Tensor) -> dict:
    """mean / std (population) / min / max / frac_zero of a 1-D float64 tensor; zeros when empty."""
    if x.numel() == 0:
        return {"mean": 0.0, "std": 0.0, "min": 0.0, "max": 0.0, "frac_zero": 0.0}
    return {
        "mean": float(x.mean()),
        "std": float(x.std(unbiased=False)),
        "min": float(x.min()),
        "max": float(x.max()),
        "frac_zero": float((x == 0).double().mean()),
    }


def _pearson(x: torch.Tensor, y: torch.Tensor) -> float:
    """Pearson correlation in float64; 0.0 when undefined (fewer than 2 points or zero variance)."""
    if x.numel() < 2 or bool(x.max() == x.min()) or bool(y.max() == y.min()):
        return 0.0
    xc, yc = x - x.mean(), y - y.mean()
    den = math.sqrt(float((xc * xc).sum())) * math.sqrt(float((yc * yc).sum()))
    if not (den > 0 and math.isfinite(den)):
        return 0.0
    r = float((xc * yc).sum()) / den
    return max(-1.0, min(1.0, r)) if math.isfinite(r) else 0.0


def token_weight_stats(weights: torch.Tensor, entropies: torch.Tensor | None, mask: torch.Tensor) -> dict:
    """Floats to log each step, all over the valid tokens of the tensors passed in.

    Keys: ``weight_mean``, ``weight_std`` (population std), ``weight_min``, ``weight_max``,
    ``weight_frac_zero`` (fraction of valid tokens whose weight is exactly 0); and, when ``entropies`` is
    given, ``entropy_mean``, ``entropy_p10``, ``entropy_p50``, ``entropy_p90`` (linear-interpolation
    quantiles, as ``torch.quantile``) and ``weight_entropy_corr`` (Pearson correlation of weight and entropy,
    0.0 when undefined: empty mask, one token, or constant weights/entropies). Never NaN: an empty mask gives
    zeros. Computed in float64; non-finite values at valid positions raise ``ValueError``.
    """
    valid = valid_of(mask)
    check_same_shape(weights=weights, mask=mask)
    check_finite("weights", weights.detach(), valid)
    with torch.no_grad():
        w = weights.detach()[valid].double()
        out = {f"weight_{k}": v for k, v in _summary(w).items()}
        if entropies is None:
            return out
        check_same_shape(entropies=entropies, mask=mask)
        check_finite("entropies", entropies.detach(), valid)
        h = entropies.detach()[valid].double()
        if h.numel() == 0:
            out.update(entropy_mean=0.0, entropy_p10=0.0, entropy_p50=0.0, entropy_p90=0.0, weight_entropy_corr=0.0)
            return out
        out["entropy_mean"] = float(h.mean())
        for q in (10, 50, 90):
            out[f"entropy_p{q}"] = float(quantile_linear(h, q / 100))
        out["weight_entropy_corr"] = _pearson(w, h)
    return out

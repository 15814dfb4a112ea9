"""Helpers shared by the token-weighting strategies (torch only, no formulas from papers here)."""
from __future__ import annotations


import torch

from posttrain.checks import check_finite, check_real, check_same_shape

__all__ = ["check_finite", "check_same_shape", "valid_of", "work_dtype", "clean", "broadcast_advantages",
           "quantile_linear", "check_real"]

# torch.quantile refuses inputs with more than 2**24 elements ("quantile() input tensor is too large").
TORCH_QUANTILE_MAX = 2**24


def valid_of(mask: torch.Tensor) -> torch.Tensor:
    """Boolean validity mask (nonzero = valid token), like TRL's ``mask.bool()``."""
    if not isinstance(mask, torch.Tensor):
        raise ValueError(f"mask must be a torch.Tensor, got {type(mask).__name__}")
    if mask.dim() != 2:
        raise ValueError(f"mask must have shape [B, T], got {tuple(mask.shape)}")
    return mask.bool()


def work_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """float32, or float64 if any input is float64 (bf16/fp16 inputs are upcast)."""
    dt = torch.float32
    for t in tensors:
        if t.dtype == torch.float64:
            dt = torch.float64
    return dt


def clean(x: torch.Tensor, valid: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Detached copy of ``x`` in ``dtype`` with padding positions set to 0 (so NaN padding cannot leak)."""
    x = x.detach().to(dtype)
    return torch.where(valid, x, torch.zeros((), dtype=dtype, device=x.device))


def broadcast_advantages(advantages: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Accept advantages of shape [B] or [B, T]; return a [B, T] view."""
    if not isinstance(advantages, torch.Tensor):
        raise ValueError(f"advantages must be a torch.Tensor, got {type(advantages).__name__}")
    B, T = mask.shape
    if advantages.dim() == 1 and advantages.shape[0] == B:
        return advantages.unsqueeze(1).expand(B, T)
    if tuple(advantages.shape) == (B, T):
        return advantages
    raise ValueError(f"advantages must have shape [B]=({B},) or [B, T]=({B}, {T}), got {tuple(advantages.shape)}")


def quantile_linear(x: torch.Tensor, q: float) -> torch.Tensor:
    """``torch.quantile(x, q)`` (linear interpolation) for a 1-D tensor of any length.

    Uses ``torch.quantile`` itself up to 2**24 elements (bit-identical to TRL); above that limit it
    reproduces torch's algorithm (float32 rank ``q * (n - 1)``, floor/ceil neighbours, ``lerp``) with two
    ``kthvalue`` calls instead of a full sort.
    """
    x = x.reshape(-1)
    n = x.numel()
    if n <= TORCH_QUANTILE_MAX:
        return torch.quantile(x, q)
    rank = torch.tensor(q, dtype=x.dtype) * (n - 1)
    lo = int(rank.floor().item())
    hi = int(rank.ceil().item())
    v_lo = torch.kthvalue(x, lo + 1).values
    v_hi = v_lo if hi == lo else torch.kthvalue(x, hi + 1).values
    return torch.lerp(v_lo, v_hi, (rank - lo).to(device=x.device))

"""Input checks shared by every weighting strategy (torch only).

House rule (design.md): a non-finite input is an error with a clear message, never a silent NaN.
"""
from __future__ import annotations

import torch


def check_finite(name: str, x: torch.Tensor, mask: torch.Tensor | None = None) -> None:
    """Raise ``ValueError`` naming ``name`` if ``x`` (restricted to ``mask`` when given) has NaN/inf."""
    vals = x if mask is None else x[mask.bool()]
    if vals.numel() and not torch.isfinite(vals).all():
        bad = (~torch.isfinite(vals)).sum().item()
        raise ValueError(f"{name} has {bad} non-finite value(s); weighting strategies need finite inputs")


def check_same_shape(**tensors: torch.Tensor) -> None:
    """Raise ``ValueError`` if the given tensors do not all have the same shape."""
    shapes = {k: tuple(v.shape) for k, v in tensors.items()}
    if len(set(shapes.values())) > 1:
        raise ValueError("shape mismatch: " + ", ".join(f"{k}={s}" for k, s in shapes.items()))

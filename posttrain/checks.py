"""Argument and input checks shared by every loss, estimator and weighting strategy (torch only).

House rule: a non-finite input is an error with a clear message naming the argument, never a silent NaN.
"""
from __future__ import annotations

import math
from typing import Any, Optional

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


def check_real(name: str, value: Any, low: Optional[float] = None, high: Optional[float] = None, *,
               low_open: bool = False, high_open: bool = False) -> float:
    """A finite real scalar within ``[low, high]`` (``low_open`` / ``high_open`` exclude the bound)."""
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(f"{name} must be a scalar, got a tensor of shape {tuple(value.shape)}")
        value = value.item()
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a real number, got {value!r}") from None
    if not math.isfinite(v):
        raise ValueError(f"{name} must be finite, got {value!r}")
    if low is not None and (v < low or (low_open and v == low)):
        raise ValueError(f"{name} must be {'>' if low_open else '>='} {low}, got {v}")
    if high is not None and (v > high or (high_open and v == high)):
        raise ValueError(f"{name} must be {'<' if high_open else '<='} {high}, got {v}")
    return v


def check_choice(name: str, value: Any, choices: tuple) -> Any:
    """``value`` if it is one of ``choices``; one-line ``ValueError`` otherwise."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
    return value


def as_float_tensor(name: str, x: Any) -> torch.Tensor:
    """``torch.as_tensor`` + float dtype (integers/bools become the default float), detached; ``ValueError`` naming
    ``name`` if any value is non-finite."""
    t = torch.as_tensor(x)
    if not torch.is_floating_point(t):
        t = t.to(torch.get_default_dtype())
    t = t.detach()
    check_finite(name, t)
    return t

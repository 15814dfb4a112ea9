"""Per-example float columns (``weight``, ``margin``, ...) carried through TRL's collators to the loss (glue).

TRL's collators keep only token ids (and reference log-probs), and ``remove_unused_columns`` drops every column the
model's forward does not take; a trainer that reads per-example columns in its loss wraps the collator with
:class:`FloatColumnsCollator` and lists the columns in ``_extra_columns`` for :class:`KeepColumnsMixin`.
"""
from __future__ import annotations

from typing import Any, Dict, List, Sequence

import torch


class FloatColumnsCollator:
    """Wraps a TRL collator: also returns the listed columns present in the examples as float32 tensors."""

    def __init__(self, inner, columns: Sequence[str]):
        self.inner, self.columns = inner, tuple(columns)

    def __call__(self, examples: List[Dict[str, Any]]) -> Dict[str, Any]:
        out = self.inner(examples)
        for col in self.columns:
            if col in examples[0]:
                values = [ex[col] for ex in examples]
                if any(v is None for v in values):
                    raise ValueError(f"column '{col}' has missing values (None)")
                out[col] = torch.tensor([float(v) for v in values], dtype=torch.float32)
        return out


class KeepColumnsMixin:
    """Keep ``self._extra_columns`` through ``remove_unused_columns`` (TRL's ``_set_signature_columns_if_needed``)."""

    _extra_columns: Sequence[str] = ()

    def _set_signature_columns_if_needed(self):
        super()._set_signature_columns_if_needed()
        if not self._is_vision_dataset:
            self._signature_columns = list(self._signature_columns) + [c for c in self._extra_columns
                                                                       if c not in self._signature_columns]

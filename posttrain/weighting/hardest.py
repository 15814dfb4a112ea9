"""ReLIFT's hardest questions and their demonstration buffer (pure torch / Python; no TRL).

ReLIFT (Ma et al., "Learning What Reinforcement Learning Can't: Interleaved Online Fine-Tuning for Hardest
Questions", arXiv 2506.07527, Sec. 3 / Fig. 1; official code ``TheRoadQaQ/ReLIFT``,
``relift/verl/verl/relift/trainer.py::ReLIFTRayPPOTrainer.fit``) interleaves RL with fine-tuning on the questions the
policy cannot solve at all:

* :func:`select_hardest` -- a prompt is *hardest* when every one of its G rollouts scored exactly ``fail_value``
  (the official code: the summed token reward of each rollout equals 0 with ``reward_impl_version=3``, where a
  format error scores -1 and is *not* hardest). ``threshold`` is our [inferred] extension for continuous rewards:
  hardest when every rollout scores ``<= threshold``.
* :class:`HardestBuffer` -- one row per hardest prompt; new rows go **in front** (the official code concatenates the
  new rows before the buffer), an SFT phase starts when ``len(buffer) >= sft_data_size`` and takes the **first**
  ``sft_data_size`` rows (newest first), the rest stays. An empty buffer has length 0 (the official code calls
  ``len(None)`` there and crashes).
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional

import torch

__all__ = ["HardestBuffer", "select_hardest"]


def select_hardest(rewards_PG: torch.Tensor, fail_value: float = 0.0, *,
                   threshold: Optional[float] = None) -> torch.Tensor:
    """``[P]`` bool: prompt ``p`` is hardest when all ``G`` rewards of its row equal ``fail_value`` exactly
    (ReLIFT's official selection), or, with ``threshold``, are all ``<= threshold`` [inferred, for partial credit].

    A group with any NaN (a failed reward) is never hardest: its outcome is unknown. ``rewards_PG`` must be 2-D
    (``ValueError`` otherwise); ``P = 0`` gives an empty result."""
    if rewards_PG.dim() != 2:
        raise ValueError(f"rewards_PG must be [P, G], got shape {tuple(rewards_PG.shape)}")
    r = rewards_PG.detach()
    if threshold is None:
        hit = r == float(fail_value)
    else:
        hit = r <= float(threshold)
    return hit.all(dim=1) & ~torch.isnan(r).any(dim=1)


class HardestBuffer:
    """Newest-first buffer of hardest-question rows (any picklable-free values: strings, lists, dicts, numbers).

    ``add(rows)`` puts ``rows`` (in their order) in front of the buffer; ``take(k)`` removes and returns the first
    ``k`` rows (ReLIFT's ``sft_buffer_batch[:sft_data_size]``), or ``[]`` when fewer than ``k`` are held.
    ``capacity`` (default None: unbounded, as the official code) drops the oldest rows beyond it [inferred option].
    ``state_dict`` / ``load_state_dict`` make it part of a checkpoint (plain lists, loadable with
    ``torch.load(weights_only=True)``)."""

    def __init__(self, capacity: Optional[int] = None):
        if capacity is not None and (isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1):
            raise ValueError(f"capacity must be None or an integer >= 1, got {capacity!r}")
        self.capacity = capacity
        self._rows: List[Any] = []

    def __len__(self) -> int:
        return len(self._rows)

    def add(self, rows: List[Any]) -> None:
        self._rows = list(rows) + self._rows
        if self.capacity is not None:
            del self._rows[self.capacity:]

    def ready(self, k: int) -> bool:
        return k >= 1 and len(self._rows) >= k

    def take(self, k: int) -> List[Any]:
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        if len(self._rows) < k:
            return []
        taken, self._rows = self._rows[:k], self._rows[k:]
        return taken

    def rows(self) -> List[Any]:
        return list(self._rows)

    def state_dict(self) -> Dict[str, Any]:
        return {"rows": list(self._rows), "capacity": self.capacity}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        if not isinstance(state, dict) or not isinstance(state.get("rows"), list):
            raise ValueError("not a HardestBuffer state (expected {'rows': [...]})")
        self._rows = list(state["rows"])

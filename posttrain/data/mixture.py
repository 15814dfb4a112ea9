"""Data mixtures: several datasets as domains, and the sampler that draws each batch by the current domain weights.

``data.train: {mixture: [{name, args, domain, weight}, ...]}`` is built by :func:`concat_domains` into one dataset
(the domains' rows in recipe order, plus an integer ``domain_id`` column); :class:`DomainSampler` then yields dataset
indices as a stream of *units*: a unit is ``unit_size`` rows, each row's domain drawn from the current ``weights_D``
(``torch.multinomial`` with a seeded generator) and the row itself the next one of that domain's seeded permutation
(a new permutation each time a domain is exhausted, so every row of a domain is seen once per pass over it). Each
drawn row is repeated ``mini_repeat`` times in a row and the whole unit ``repeat_count`` times -- TRL 1.16's
``RepeatSampler`` layout for GRPO (``num_generations`` copies of a prompt; one unit per generation batch reused for
``steps_per_generation x num_iterations`` micro-steps), so prompt groups stay intact; SFT uses ``1, 1``.

Ranks: the stream depends only on the seed, the weights and the unit counter, so every process yields the same
indices and takes its slice of each global batch, as with TRL's samplers (accelerate's ``BatchSamplerShard``).

Resume: the dataloader runs ahead of training (accelerate prefetches a batch), so the sampler's own position is
past what was trained on. It keeps the state *before* each recent unit (generator, per-domain cursors, the weights
the unit is drawn with); :meth:`DomainSampler.state_at` gives the state at a number of *consumed* rows (plus the
weights of the units drawn after it), and after :meth:`DomainSampler.load_state_dict` the next iteration redraws
those units exactly (each with the weights it had) and skips the consumed rows.
Weights set with :meth:`DomainSampler.set_weights` apply from the next unit drawn.
"""
from __future__ import annotations

import hashlib
import math
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
from pydantic import BaseModel, ConfigDict, Field

__all__ = ["DomainOptions", "DomainSampler", "concat_domains", "split_domain_spec", "DOMAIN_COLUMN",
           "EVAL_DOMAIN_COLUMN"]

DOMAIN_COLUMN = "domain_id"
#: a held-out row's domain name (``data.eval: {mixture: [...]}`` sets it; ``posttrain.evaluation.evaluate`` reports
#: ``by_domain`` from it)
EVAL_DOMAIN_COLUMN = "domain"
_KEEP_SNAPSHOTS = 16


class DomainOptions(BaseModel):
    """Trainer options given beside a domain strategy's own arguments in ``weighting.domains.0``."""

    model_config = ConfigDict(extra="forbid")
    update_every: int = Field(1, ge=1, strict=True, description="Optimizer steps between two calls of the strategy.")
    gradient_rows: int = Field(4, ge=1, strict=True, description="Rows per domain of the domain_gradients() batch.")
    heldout_rows: int = Field(16, ge=1, strict=True, description="Rows of data.heldout for heldout_gradient().")


def split_domain_spec(spec: Any) -> Tuple[Dict[str, Any], DomainOptions]:
    """``(strategy spec, DomainOptions)`` of a ``weighting.domains`` entry (the trainer options removed).
    Raises ``ValueError`` ``<option>: <problem>`` on a bad option."""
    from pydantic import ValidationError

    from posttrain.weighting.protocol import format_validation_error

    spec = dict(spec.model_dump() if isinstance(spec, BaseModel) else ({"name": spec} if isinstance(spec, str)
                                                                          else spec))
    options = {k: spec.pop(k) for k in list(spec) if k in DomainOptions.model_fields}
    try:
        return spec, DomainOptions(**options)
    except ValidationError as exc:
        raise ValueError(format_validation_error(exc)) from None


def concat_domains(datasets: Sequence[Any], where: str = "data.train.mixture", *, column: str = DOMAIN_COLUMN,
                   labels: Optional[Sequence[Any]] = None, purpose: str = "trained"):
    """One ``datasets.Dataset`` of the domains' rows (in order) with a ``column`` holding each row's domain label
    (``labels[d]``, default the index ``d``: the training mixture's ``domain_id``); the datasets must have the same
    columns and none may have ``column`` (``ValueError`` naming the first entry that differs)."""
    import datasets as hf

    first = set(datasets[0].column_names)
    for i, ds in enumerate(datasets):
        if i and set(ds.column_names) != first:
            raise ValueError(f"{where}.{i}: columns {sorted(ds.column_names)} differ from {where}.0's "
                             f"{sorted(first)} (the domains are {purpose} as one dataset)")
        if column in ds.column_names:
            raise ValueError(f"{where}.{i}: the dataset has a '{column}' column, which the mixture sets")
    parts = [ds.cast(datasets[0].features) if ds.features != datasets[0].features else ds for ds in datasets]
    labels = list(range(len(parts))) if labels is None else list(labels)
    ids = [labels[d] for d, ds in enumerate(parts) for _ in range(len(ds))]
    return hf.concatenate_datasets(list(parts)).add_column(column, ids)


def _perm_seed(seed: int, domain: int, epoch: int) -> int:
    digest = hashlib.sha256(f"domain-permutation|{seed}|{domain}|{epoch}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


class DomainSampler(torch.utils.data.Sampler):
    """Dataset indices drawn unit by unit from the current domain weights (module docstring).

    ``rows_D``: the dataset indices of each domain (each non-empty); ``weights_D``: the initial weights (>= 0, not
    all 0; normalised); ``unit_size``: rows drawn per unit; ``mini_repeat`` / ``repeat_count``: TRL's repetition
    (GRPO: ``num_generations`` / ``steps_per_generation x num_iterations``); ``seed``; ``units_per_epoch``: units
    per ``__iter__`` (default: enough to cover the dataset once, at least 1).
    """

    def __init__(self, rows_D: Sequence[Sequence[int]], weights_D: Sequence[float], *, unit_size: int,
                 mini_repeat: int = 1, repeat_count: int = 1, seed: int = 0, units_per_epoch: Optional[int] = None):
        if not rows_D or any(len(r) == 0 for r in rows_D):
            raise ValueError("every domain needs at least one row")
        if unit_size < 1 or mini_repeat < 1 or repeat_count < 1:
            raise ValueError("unit_size, mini_repeat and repeat_count must be >= 1")
        self.rows_D = [list(map(int, r)) for r in rows_D]
        self.unit_size, self.mini_repeat, self.repeat_count = int(unit_size), int(mini_repeat), int(repeat_count)
        self.seed = int(seed)
        total = sum(len(r) for r in self.rows_D)
        self.units_per_epoch = int(units_per_epoch or max(1, math.ceil(total / self.unit_size)))
        self.weights_D = self._checked(weights_D)
        self.generator = torch.Generator().manual_seed(self.seed)
        self.cursors_D = [0] * len(self.rows_D)
        self.unit = 0                        # units drawn so far
        self._perms: Dict[Tuple[int, int], List[int]] = {}
        self._snapshots: Dict[int, Dict[str, Any]] = {}
        self._resume: Optional[Tuple[Dict[str, Any], int]] = None   # (snapshot of the unit to redraw, rows to skip)
        self._queued: List[List[float]] = []  # weights of units to redraw after a resume (drawn before the save)
        self.last_unit_domains: List[int] = []
        self.unit_log: Optional[List[Dict[str, Any]]] = None  # a list: every drawn unit is recorded (debug)

    # ------------------------------------------------------------------ weights
    def _checked(self, weights_D: Sequence[float]) -> torch.Tensor:
        w = torch.as_tensor(list(weights_D), dtype=torch.float64)
        if w.numel() != len(self.rows_D) or not bool(torch.isfinite(w).all()) or bool((w < 0).any()) \
                or float(w.sum()) <= 0:
            raise ValueError(f"weights_D must be {len(self.rows_D)} finite values >= 0, not all 0; got {list(weights_D)}")
        return w / w.sum()

    def set_weights(self, weights_D: Sequence[float]) -> None:
        """The weights of every unit drawn from now on."""
        self.weights_D = self._checked(weights_D)

    @property
    def unit_rows(self) -> int:
        """Indices yielded per unit (``unit_size x mini_repeat x repeat_count``)."""
        return self.unit_size * self.mini_repeat * self.repeat_count

    def __len__(self) -> int:
        return self.units_per_epoch * self.unit_rows

    # ------------------------------------------------------------------ drawing
    def _row(self, d: int, cursors: List[int]) -> int:
        n = len(self.rows_D[d])
        epoch, pos = divmod(cursors[d], n)
        key = (d, epoch)
        if key not in self._perms:
            if len(self._perms) > 4 * len(self.rows_D):
                self._perms.clear()
            g = torch.Generator().manual_seed(_perm_seed(self.seed, d, epoch))
            self._perms[key] = torch.randperm(n, generator=g).tolist()
        cursors[d] += 1
        return self.rows_D[d][self._perms[key][pos]]

    def _snapshot(self) -> Dict[str, Any]:
        return {"unit": self.unit, "generator": self.generator.get_state().clone(),
                "cursors_D": list(self.cursors_D), "unit_weights_D": self.weights_D.tolist()}

    def draw_unit(self) -> List[int]:
        """Draw the next unit's ``unit_size`` rows (domains from the weights, rows from the domains' permutations)."""
        if self._queued:  # a unit the saved run had drawn already: with the weights it was drawn with
            self.weights_D, current = torch.tensor(self._queued.pop(0), dtype=torch.float64), self.weights_D
        else:
            current = None
        snap = self._snapshot()
        if current is not None:
            self.weights_D = current
        self._snapshots[self.unit] = snap
        for old in [k for k in self._snapshots if k < self.unit - _KEEP_SNAPSHOTS]:
            del self._snapshots[old]
        w = torch.tensor(snap["unit_weights_D"], dtype=torch.float64)
        domains = torch.multinomial(w, self.unit_size, replacement=True, generator=self.generator).tolist()
        rows = [self._row(d, self.cursors_D) for d in domains]
        self.last_unit_domains = domains
        if self.unit_log is not None:
            self.unit_log.append({"unit": self.unit, "domains": domains, "weights": snap["unit_weights_D"]})
        self.unit += 1
        return rows

    def draw_rows(self, n: int, generator: torch.Generator) -> List[int]:
        """``n`` rows drawn with another generator (domains by the current weights, rows uniformly within a domain),
        leaving this sampler's stream untouched (dynamic sampling's refill prompts)."""
        domains = torch.multinomial(self.weights_D, n, replacement=True, generator=generator).tolist()
        return [self.rows_D[d][int(torch.randint(len(self.rows_D[d]), (1,), generator=generator))] for d in domains]

    def _expand(self, rows: List[int]) -> List[int]:
        once = [r for r in rows for _ in range(self.mini_repeat)]
        return once * self.repeat_count

    def __iter__(self) -> Iterator[int]:
        skip = 0
        if self._resume is not None:
            snap, skip = self._resume
            self._resume = None
            self.unit, self.cursors_D = int(snap["unit"]), list(snap["cursors_D"])
            self.generator.set_state(snap["generator"])
            first = self._expand(self.draw_unit())
            yield from first[skip:]
            start = 1
        else:
            start = 0
        for _ in range(start, self.units_per_epoch):
            yield from self._expand(self.draw_unit())

    # ------------------------------------------------------------------ checkpoint state
    def state_at(self, consumed_rows: int) -> Dict[str, Any]:
        """The state at ``consumed_rows`` indices consumed by training (of all processes): the snapshot before the
        unit that holds the next row, the rows of it already consumed, and the current weights."""
        unit, offset = divmod(int(consumed_rows), self.unit_rows)
        if unit == self.unit and unit not in self._snapshots:
            snap = self._snapshot()    # nothing drawn past the consumed rows (no prefetch yet)
        elif unit in self._snapshots:
            snap = self._snapshots[unit]
        else:
            raise RuntimeError(f"domain sampler: no state for unit {unit} (drawn: {self.unit}; kept: "
                               f"{sorted(self._snapshots)})")
        drawn = [self._snapshots[k]["unit_weights_D"] for k in range(unit, self.unit) if k in self._snapshots]
        return {"snapshot": snap, "offset": offset, "weights_D": self.weights_D.tolist(), "seed": self.seed,
                "num_domains": len(self.rows_D), "drawn_weights_D": drawn or [snap["unit_weights_D"]]}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        if int(state["num_domains"]) != len(self.rows_D) or int(state["seed"]) != self.seed:
            raise ValueError(f"the checkpoint's domain sampler has {state['num_domains']} domains and seed "
                             f"{state['seed']}; this run has {len(self.rows_D)} and {self.seed}")
        self.weights_D = self._checked(state["weights_D"])
        self._resume = (state["snapshot"], int(state["offset"]))
        self._queued = [list(w) for w in state["drawn_weights_D"]]
        self.unit = int(state["snapshot"]["unit"])
        self._snapshots = {}

"""Where the recipe layer finds the strategy registries (imported lazily: a module may not exist yet)."""
from __future__ import annotations

import importlib

_SOURCES = {
    "tokens": ("posttrain.weighting.tokens", "TOKEN_STRATEGIES"),
    "sequences": ("posttrain.weighting.sequences", "SEQUENCE_STRATEGIES"),
    "objectives": ("posttrain.weighting.objectives", "OBJECTIVE_STRATEGIES"),
    "pairs": ("posttrain.weighting.pairs", "PAIR_STRATEGIES"),
}


def strategy_registries() -> dict:
    out = {}
    for group, (module, attr) in _SOURCES.items():
        try:
            out[group] = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError):
            continue
    return out

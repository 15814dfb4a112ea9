"""Imports every module that registers a built-in strategy (``posttrain.weighting.protocol.register_strategy``).

One line per kind; each package's ``__init__`` imports its method files. Loaded lazily by the protocol's
registry lookups, so importing :mod:`posttrain.weighting.protocol` alone stays cheap.
"""
import importlib

for _module in ("posttrain.weighting.objectives", "posttrain.weighting.sequences", "posttrain.weighting.tokens",
                "posttrain.weighting.pairs", "posttrain.weighting.advantages", "posttrain.weighting.domains",
                "posttrain.weighting.samples"):
    importlib.import_module(_module)

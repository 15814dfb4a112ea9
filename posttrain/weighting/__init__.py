"""Reweighting strategies (pure torch/numpy; never imports TRL or transformers).

Submodules: ``tokens`` (per-token weights/masks), ``sequences`` (per-sequence / per-prompt),
``objectives`` (per-objective reward weights that adapt during training), ``pairs`` (per-pair DPO weights).
"""

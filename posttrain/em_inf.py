"""EM-INF decoding (Agarwal et al., arXiv 2505.15134) for HF ``generate``: glue around the pure math in
:mod:`posttrain.losses.entropy`.

:class:`EmInfLogitsProcessor` adjusts each decoding step's logits (``mode: logits`` -- the official
``shivamag125/EM_PT eval/utils/em_inf_utils.py::ent_sample``; ``mode: adaptive_temperature`` -- the paper's
Algorithm 1) *before* the sampling temperature, as the official code does (the optimised logits then go through the
usual processors). :func:`em_inf_generate_kwargs` turns a recipe's ``eval.em_inf`` section into ``generate`` keyword
arguments. HF generation only: vLLM's fused sampling has no per-step hook (the official code patches HF's
``_sample`` too); posttrain's evaluation always decodes with HF ``generate``, whatever ``rollout.engine`` is.
"""
from __future__ import annotations

from typing import Any, Dict

import torch
from transformers import LogitsProcessor, LogitsProcessorList, TemperatureLogitsWarper

from posttrain.losses.entropy import adaptive_temperature_logits, em_inf_adjust_logits


class EmInfLogitsProcessor(LogitsProcessor):
    """Entropy-lowering adjustment of every step's next-token logits (settings: the ``eval.em_inf`` section or an
    object with the same attributes)."""

    def __init__(self, settings: Any):
        self.settings = settings

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        s = self.settings
        if s.mode == "adaptive_temperature":
            out = adaptive_temperature_logits(scores, target_ratio=s.target_ratio, threshold=s.threshold,
                                              tau_min=s.tau_min, tau_max=s.tau_max, max_iter=s.max_iter, tol=s.tol)
        else:
            out = em_inf_adjust_logits(scores, learning_rate=s.learning_rate, n_grad_steps=s.n_grad_steps,
                                       kl_weight=s.kl_weight, threshold=s.threshold, parity=s.parity)
        return out.to(scores.dtype)


def em_inf_generate_kwargs(settings: Any) -> Dict[str, Any]:
    """``generate`` keyword arguments for EM-INF decoding: the adjustment, then ``settings.temperature`` sampling
    (0: greedy on the adjusted logits); no top-k / top-p, as the official scripts."""
    processors = [EmInfLogitsProcessor(settings)]
    if settings.temperature == 0:
        return dict(do_sample=False, temperature=None, top_p=None, top_k=None,
                    logits_processor=LogitsProcessorList(processors))
    if settings.temperature != 1.0:
        processors.append(TemperatureLogitsWarper(float(settings.temperature)))
    return dict(do_sample=True, temperature=1.0, top_p=1.0, top_k=0, logits_processor=LogitsProcessorList(processors))

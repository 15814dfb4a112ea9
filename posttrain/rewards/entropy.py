"""EM-RL's reward (Agarwal et al., "The Unreasonable Effectiveness of Entropy Minimization in LLM Reasoning",
arXiv 2505.15134): the negative entropy of the rollout policy as the reward, no label.

``neg_entropy`` reads the per-token log-probs / entropies of each completion under the policy that sampled it,
passed as the keyword arguments ``policy_logps`` and ``policy_entropies`` (one sequence of floats or 1-D tensor per
completion, one value per completion token, aligned with ``completion_ids``). posttrain's GRPO trainer computes them
(one no-grad chunked forward over the generation batch) for every reward that sets ``needs_policy_stats``; in your
own loop compute them with :func:`posttrain.losses.selective_logprobs_and_entropy` and pass them::

    labels = input_ids[:, 1:].masked_fill(~completion_mask_BT, -100)   # -100 outside the completions
    logps, ents = selective_logprobs_and_entropy(logits[:, :-1], None, labels)
    keep = labels != -100
    fn = build_reward("neg_entropy", {"kind": "token"})
    fn(completions=texts, policy_logps=[l[k] for l, k in zip(logps, keep)],
       policy_entropies=[e[k] for e, k in zip(ents, keep)])
"""
from __future__ import annotations

import torch

from posttrain.losses.entropy import NEG_ENTROPY_KINDS, neg_entropy_reward

from .base import RewardFunction, check_choice, check_type
from .registry import register_reward

POLICY_STATS = ("policy_logps", "policy_entropies")


class NegEntropy(RewardFunction):
    default_name = "neg_entropy"
    #: the trainer passes ``policy_logps`` / ``policy_entropies`` of the rollout policy to rewards that set this
    needs_policy_stats = True

    def __init__(self, kind: str, normalize_by_length: bool, name: str | None):
        super().__init__(name)
        self.kind = kind
        self.normalize_by_length = normalize_by_length

    def score(self, texts, *, prompts, completion_ids, **kwargs):
        key = "policy_logps" if self.kind == "traj" else "policy_entropies"
        rows = kwargs.get(key)
        if rows is None:
            raise ValueError(f"reward '{self.__name__}' (EM-RL, kind {self.kind}) needs '{key}': the per-token "
                             f"{'log-probs' if self.kind == 'traj' else 'entropies'} of each completion under the "
                             f"rollout policy (posttrain's GRPO trainer passes them; in your own code compute them "
                             f"with posttrain.losses.selective_logprobs_and_entropy)")
        if len(rows) != len(texts):
            raise ValueError(f"reward '{self.__name__}': {len(rows)} {key} rows for {len(texts)} completions")
        rows = [torch.as_tensor(r, dtype=torch.float32).reshape(-1) for r in rows]
        width = max((r.numel() for r in rows), default=0)
        values = torch.zeros(len(rows), max(width, 1))
        mask = torch.zeros_like(values)
        for i, r in enumerate(rows):
            values[i, :r.numel()], mask[i, :r.numel()] = r, 1.0
        src = dict(logps_BT=values, entropies_BT=None) if self.kind == "traj" else dict(logps_BT=None,
                                                                                        entropies_BT=values)
        return neg_entropy_reward(mask_BT=mask, kind=self.kind, normalize_by_length=self.normalize_by_length,
                                  **src).tolist()


@register_reward("neg_entropy")
def neg_entropy(*, kind: str = "traj", normalize_by_length: bool = False, name: str | None = None) -> NegEntropy:
    """EM-RL (arXiv 2505.15134): the negative entropy of the rollout policy as the reward, no label.

    ``kind``: ``traj`` (EM-RL-sequence, ``Σ_t log π(y_t|x, y_<t)``, the one-sample estimate of ``-H(π(·|x))``) or
    ``token`` (EM-RL-token, ``-Σ_t H(π(·|x, y_<t))``); reward forms per a third-party note of the paper.
    ``normalize_by_length`` [inferred; default off, the stated form]: the mean over completion tokens instead of
    the sum (both sums favour short completions). Range: ``(-inf, 0]``. Needs ``policy_logps`` /
    ``policy_entropies`` (posttrain's GRPO trainer passes them; see :mod:`posttrain.rewards.entropy`).
    """
    owner = "neg_entropy"
    check_type(owner, "kind", kind, str)
    check_choice(owner, "kind", kind, NEG_ENTROPY_KINDS)
    check_type(owner, "normalize_by_length", normalize_by_length, bool)
    return NegEntropy(kind, normalize_by_length, name)

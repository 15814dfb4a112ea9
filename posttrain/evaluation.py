"""Greedy before/after evaluation of a policy on held-out prompts with a scoring reward."""
from __future__ import annotations

import math
import time
from typing import Any, Callable, Dict, List, Sequence

import torch
from tqdm.auto import tqdm

from posttrain.data.mixture import EVAL_DOMAIN_COLUMN


def _prompt_text(prompt, tokenizer) -> str:
    from posttrain.data import render_prompt

    # Same rendering as our GRPO trainer (continues a final assistant message, e.g. "a + b = ").
    return render_prompt(prompt, tokenizer)


@torch.no_grad()
def generate_greedy(model, tokenizer, prompts: List[Any], *, max_new_tokens: int, batch_size: int,
                    desc: str = "eval", em_inf: Any = None) -> tuple[list[str], list[list[int]]]:
    """Greedy completions (text without special tokens, and token ids incl. EOS if produced). ``em_inf`` (a recipe's
    ``eval.em_inf`` section): EM-INF decoding instead (arXiv 2505.15134; :mod:`posttrain.em_inf`)."""
    was_training = model.training
    model.eval()
    old_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    texts, ids_out = [], []
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    device = next(model.parameters()).device
    decode = dict(do_sample=False, temperature=None, top_p=None, top_k=None)
    if em_inf is not None:
        from posttrain.em_inf import em_inf_generate_kwargs

        decode = em_inf_generate_kwargs(em_inf)
    try:
        for start in tqdm(range(0, len(prompts), batch_size), desc=desc, leave=False):
            batch = [_prompt_text(p, tokenizer) for p in prompts[start:start + batch_size]]
            enc = tokenizer(batch, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
            # synced_gpus=False: evaluation is one process on a full model (in a ZeRO-3 run the caller gathers the
            # parameters, posttrain.distributed.full_policy); transformers would otherwise sync every decoding
            # step with the other ranks, which are not generating, and hang.
            out = model.generate(**enc, max_new_tokens=max_new_tokens, pad_token_id=pad, eos_token_id=eos,
                                 synced_gpus=False, **decode)
            for row in out[:, enc["input_ids"].shape[1]:].tolist():
                if eos in row:  # keep EOS (rewards may check termination), drop padding after it
                    row = row[: row.index(eos) + 1]
                ids_out.append(row)
                texts.append(tokenizer.decode(row, skip_special_tokens=True))
    finally:
        tokenizer.padding_side = old_side
        model.train(was_training)
    return texts, ids_out


def score_replies(scorer: Callable, dataset, texts: List[str], ids: List[List[int]] | None = None) -> List[float]:
    """Score one reply per row of ``dataset`` (in order) with ``scorer``, a TRL-style reward function.

    Conversational prompts get conversational completions; the dataset's other columns are passed as keyword
    arguments, as TRL passes them to reward functions. A ``None`` score (the reward abstains) becomes NaN. This is
    the scoring half of `evaluate`, shared so that replies generated elsewhere are scored exactly as it scores them.
    """
    prompts = list(dataset["prompt"])
    if len(texts) != len(prompts):
        raise ValueError(f"{len(texts)} replies for {len(prompts)} prompts")
    conversational = bool(prompts) and isinstance(prompts[0], list)
    completions = [[{"role": "assistant", "content": t}] for t in texts] if conversational else list(texts)
    columns = {k: list(dataset[k]) for k in dataset.column_names if k != "prompt"}
    scores = scorer(prompts=prompts, completions=completions, completion_ids=ids, **columns)
    return [float("nan") if s is None else float(s) for s in scores]


def evaluate(model, tokenizer, dataset, scorer: Callable, *, max_new_tokens: int, batch_size: int,
             success_threshold: float = 1.0, desc: str = "eval", n_examples: int = 5, em_inf: Any = None) -> Dict[str, Any]:
    """Score greedy completions of ``dataset['prompt']`` with ``scorer`` (a TRL-style reward function); with
    ``em_inf`` (``eval.em_inf``) the completions are decoded with EM-INF instead (``decoding: em_inf`` in the result).

    Returns ``accuracy`` (fraction with score >= threshold), ``mean_score``, ``n``, ``truncated_fraction``
    (no EOS within ``max_new_tokens``), ``seconds`` and a few examples. A dataset with a ``domain`` column (a
    ``data.eval`` mixture, or a user's column) adds ``by_domain`` (``{name: {accuracy, mean_score, n, n_scored,
    truncated_fraction}}``, the same definitions over the domain's rows) and ``item_domains`` (each item's domain,
    parallel to ``item_scores``); the overall metrics are over all rows either way.
    """
    t0 = time.time()
    prompts = list(dataset["prompt"])
    texts, ids = generate_greedy(model, tokenizer, prompts, max_new_tokens=max_new_tokens,
                                 batch_size=batch_size, desc=desc, em_inf=em_inf)
    scores = score_replies(scorer, dataset, texts, ids)
    truncated = [tokenizer.eos_token_id not in r for r in ids]
    n = len(prompts)
    out = {
        **score_summary(scores, truncated, success_threshold),
        "seconds": round(time.time() - t0, 2),
        "decoding": "greedy" if em_inf is None else f"em_inf ({em_inf.mode}, temperature {em_inf.temperature})",
        # per held-out item, in dataset order (paired comparisons bootstrap over items: posttrain compare)
        "item_scores": [s if math.isfinite(s) else None for s in scores],
        "examples": [
            {"prompt": _short(prompts[i]), "completion": texts[i], "score": scores[i]} for i in range(min(n_examples, n))
        ],
    }
    if EVAL_DOMAIN_COLUMN in dataset.column_names:
        domains = [str(d) for d in dataset[EVAL_DOMAIN_COLUMN]]
        out["by_domain"] = by_domain(scores, truncated, domains, success_threshold)
        out["item_domains"] = domains
    return out


def score_summary(scores: Sequence[float], truncated: Sequence[bool], success_threshold: float = 1.0) -> Dict[str, Any]:
    """``accuracy`` (fraction of all items with score >= threshold; a NaN score is not correct), ``mean_score``
    (over the finite scores; None without any), ``n``, ``n_scored`` and ``truncated_fraction`` of one set of items."""
    valid = [s for s in scores if math.isfinite(s)]
    n = len(scores)
    return {
        "accuracy": sum(s >= success_threshold for s in valid) / n if n else 0.0,
        "mean_score": sum(valid) / len(valid) if valid else None,
        "n": n,
        "n_scored": len(valid),
        "truncated_fraction": sum(map(bool, truncated)) / n if n else 0.0,
    }


def by_domain(scores: Sequence[float], truncated: Sequence[bool], domains: Sequence[str],
              success_threshold: float = 1.0) -> Dict[str, Dict[str, Any]]:
    """:func:`score_summary` of each domain's items, domains in order of first appearance."""
    groups: Dict[str, List[int]] = {}
    for i, d in enumerate(domains):
        groups.setdefault(d, []).append(i)
    return {d: score_summary([scores[i] for i in idx], [truncated[i] for i in idx], success_threshold)
            for d, idx in groups.items()}


def describe_domains(ev: Dict[str, Any]) -> str:
    """``"; add 0.500 (n=4), mul 0.250 (n=4)"`` for an evaluation with ``by_domain``, else ``""``."""
    per = ev.get("by_domain") or {}
    return "".join(f"{'; ' if k == 0 else ', '}{d} {m['accuracy']:.3f} (n={m['n']})"
                   for k, (d, m) in enumerate(per.items()))


def _short(prompt) -> str:
    if isinstance(prompt, list):
        return " | ".join(f"{m['role']}: {m['content']}" for m in prompt)
    return str(prompt)

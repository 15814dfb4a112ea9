"""Per-item held-out scores of a run (for the paired bootstrap) and pass@k by sampling the saved model.

Per-item greedy scores are read, in this order, from

1. ``<run>/eval_items.jsonl``: one JSON row per held-out item, in data order:
   ``{"id": "<prompt hash>", "score": float | null, "correct": bool}`` (``truncated`` optional);
2. ``summary.json`` -> ``eval.after.item_scores``: a list of floats in data order (what
   ``posttrain.evaluation.evaluate`` returns once it adds ``"item_scores": scores`` to its result);

each item's domain comes from the rows' ``domain`` (1) or ``eval.after.item_domains`` (2; a held-out set with
domains, ``data.eval: {mixture: [...]}``), and gives the per-domain metrics ``<metric>/<domain>``;

and are absent otherwise (the harness then uses the paired t over seeds). Nothing here trains.

``python -m posttrain.compare.items RUN_DIR --k K [--samples N] [--temperature T] [--seed S]`` samples N replies per
held-out item from ``RUN_DIR/model`` and writes ``RUN_DIR/pass_at_k.json`` (per item: the number correct).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np


def item_id(prompt: Any) -> str:
    """A stable id of a held-out item: the first 12 hex digits of sha1 of its JSON-encoded prompt."""
    return hashlib.sha1(json.dumps(prompt, sort_keys=True, default=str).encode()).hexdigest()[:12]


def read_item_scores(run_dir: Path, threshold: float = 1.0, which: str = "after") -> Optional[Dict[str, Any]]:
    """``{"ids": [...] | None, "score": array, "correct": array, "source": str}`` or None when the run did not store
    per-item scores. ``correct`` is 1.0 / 0.0 (a missing score is not correct, as `evaluate` counts accuracy).
    ``which``: ``after`` (the trained model) or ``before`` (the initial model: ``summary.json`` only)."""
    run_dir = Path(run_dir)
    path = run_dir / "eval_items.jsonl"
    if which == "after" and path.is_file():
        rows = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
        score = np.array([np.nan if r.get("score") is None else float(r["score"]) for r in rows])
        correct = np.array([float(bool(r["correct"])) if "correct" in r else
                            float(np.isfinite(s) and s >= threshold) for r, s in zip(rows, score)])
        out = {"ids": [r.get("id") for r in rows], "score": score, "correct": correct, "source": path.name,
               "domains": [str(r["domain"]) for r in rows] if rows and all("domain" in r for r in rows) else None}
        if rows and all("truncated" in r for r in rows):
            out["truncated"] = np.array([float(bool(r["truncated"])) for r in rows])
        return out
    sp = run_dir / "summary.json"
    if sp.is_file():
        after = (json.loads(sp.read_text()).get("eval") or {}).get(which) or {}
        scores = after.get("item_scores")
        if isinstance(scores, list) and scores:
            score = np.array([np.nan if s is None else float(s) for s in scores])
            with np.errstate(invalid="ignore"):
                correct = np.where(np.isfinite(score), score >= threshold, False).astype(float)
            domains = after.get("item_domains")
            return {"ids": None, "score": score, "correct": correct, "source": f"summary.json eval.{which}.item_scores",
                    "domains": [str(d) for d in domains] if isinstance(domains, list)
                    and len(domains) == len(scores) else None}
    return None


def items_by_domain(items: Dict[str, Any]) -> Dict[str, Dict[str, Any]]:
    """The per-item arrays of ``items`` (``read_item_scores``) split by the items' domains (``{}`` without them),
    domains in order of first appearance: ``{domain: {"score", "correct", ["truncated"]}}``."""
    domains = items.get("domains")
    if not domains:
        return {}
    labels = np.asarray(domains, dtype=object)
    keys = [k for k in ("score", "correct", "truncated") if k in items]
    return {d: {k: items[k][labels == d] for k in keys} for d in dict.fromkeys(domains)}


def item_metric_values(items: Dict[str, Any], metric: str) -> Optional[np.ndarray]:
    """The per-item values whose mean is ``metric`` (accuracy -> correct, mean_score -> score, truncated_fraction ->
    truncated), or None when the metric has no per-item form here."""
    key = {"accuracy": "correct", "mean_score": "score", "truncated_fraction": "truncated"}.get(metric)
    return items.get(key) if key else None


def read_pass_at_k(run_dir: Path, k: int, n: int, temperature: float) -> Optional[Dict[str, Any]]:
    """``pass_at_k.json`` of a run if it was made with these settings: ``{"value", "items": array}``."""
    from posttrain.compare.stats import pass_at_k

    path = Path(run_dir) / "pass_at_k.json"
    if not path.is_file():
        return None
    d = json.loads(path.read_text())
    if (d.get("k"), d.get("samples"), d.get("temperature")) != (k, n, temperature):
        return None
    per = np.array([pass_at_k(n, int(c), k) for c in d["correct"]])
    return {"value": float(per.mean()) if per.size else None, "items": per, "ids": d.get("ids")}


def sample_pass_at_k(run_dir: Path, *, k: int, samples: int, temperature: float, seed: int = 0,
                     max_new_tokens: Optional[int] = None) -> Dict[str, Any]:
    """Sample ``samples`` replies per held-out item from ``<run>/model`` (rendered and left-padded as in
    evaluation), score them with the recipe's eval scorer (``eval.reward``, else ``rewards.0``); a reply is correct
    when its score >= ``eval.success_threshold``. Writes and returns ``pass_at_k.json``."""
    import torch
    import yaml

    from posttrain.data import render_prompt
    from posttrain.evaluation import score_replies
    from posttrain.models import load_model_and_tokenizer
    from posttrain.recipes.schema import Recipe
    from posttrain.pipelines.checks import build_eval_dataset
    from posttrain.run import build_rewards

    run_dir = Path(run_dir)
    recipe = Recipe.model_validate(yaml.safe_load((run_dir / "recipe.resolved.yaml").read_text()))
    if not (run_dir / "model").is_dir():
        raise FileNotFoundError(f"{run_dir}/model does not exist (pass@k needs the saved model)")
    if recipe.model.threads:
        torch.set_num_threads(recipe.model.threads)
    model, tok = load_model_and_tokenizer(str(run_dir / "model"), dtype=getattr(torch, recipe.model.dtype))
    model.eval()
    ds = build_eval_dataset(recipe.data.eval)
    spec = recipe.eval.reward or recipe.rewards[0]
    scorer = build_rewards([spec], "eval.reward", tok)[0]
    prompts = list(ds["prompt"])
    max_new = max_new_tokens or recipe.eval.max_new_tokens
    eos = tok.eos_token_id
    pad = tok.pad_token_id if tok.pad_token_id is not None else eos
    torch.manual_seed(seed)
    texts: List[str] = []
    old_side, tok.padding_side = tok.padding_side, "left"
    try:
        with torch.no_grad():
            bs = max(1, recipe.eval.batch_size // samples)
            for start in range(0, len(prompts), bs):
                enc = tok([render_prompt(p, tok) for p in prompts[start:start + bs]], return_tensors="pt",
                          padding=True, add_special_tokens=False)
                out = model.generate(**enc, do_sample=True, temperature=temperature, top_p=1.0, top_k=0,
                                     num_return_sequences=samples, max_new_tokens=max_new, pad_token_id=pad,
                                     eos_token_id=eos)
                for row in out[:, enc["input_ids"].shape[1]:].tolist():
                    if eos in row:
                        row = row[: row.index(eos) + 1]
                    texts.append(tok.decode(row, skip_special_tokens=True))
    finally:
        tok.padding_side = old_side
    rep = ds.select([i for i in range(len(prompts)) for _ in range(samples)])
    scores = score_replies(scorer, rep, texts)
    thr = recipe.eval.success_threshold
    correct = [sum(1 for s in scores[i * samples:(i + 1) * samples] if math.isfinite(s) and s >= thr)
               for i in range(len(prompts))]
    res = {"k": k, "samples": samples, "temperature": temperature, "seed": seed, "max_new_tokens": max_new,
           "threshold": thr, "ids": [item_id(p) for p in prompts], "correct": correct}
    (run_dir / "pass_at_k.json").write_text(json.dumps(res) + "\n")
    return res


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m posttrain.compare.items", description="pass@k of a finished run")
    p.add_argument("run_dir")
    p.add_argument("--k", type=int, required=True)
    p.add_argument("--samples", type=int, default=None)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-new-tokens", type=int, default=None)
    a = p.parse_args(argv)
    from posttrain.errors import UserError

    try:
        sample_pass_at_k(Path(a.run_dir), k=a.k, samples=a.samples or a.k, temperature=a.temperature, seed=a.seed,
                         max_new_tokens=a.max_new_tokens)
    except (FileNotFoundError, ValueError, UserError) as exc:
        print(f"posttrain compare: pass@k: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

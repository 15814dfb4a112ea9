"""Stage 1 of ``algorithm: reward_model+dpo``: the per-pair ``margin`` column ``h = r(y_w) - r(y_l)`` for MADPO.

MADPO (arXiv 2510.05342, D12, stage 1): a Bradley-Terry reward model, ``L = -log sigma(r(y_w) - r(y_l))``, trained on
the same preference data and then frozen; its margins toward the labelled winner weight the DPO pairs. Here the
reward model is TRL's own ``RewardTrainer`` (a sequence-classification head on the policy's base model, LoRA if the
recipe uses it), and the margins are computed once over the training pairs, written to
``<output.dir>/reward_model/margins.json`` (reused by ``--resume``) and added as the ``margin`` column. Alternatively
(``reward_model.source: columns``) the margins are read from two score columns of the data, e.g. the gold scores of
the ``preferences`` dataset (an oracle reward model). No formula lives here.
"""
from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any, Dict, List, Tuple

from posttrain.errors import UserError
from posttrain.recipes import Recipe


def _stats(margins: List[float], ds) -> Dict[str, Any]:
    n = len(margins)
    info: Dict[str, Any] = {"n": n, "margin_mean": sum(margins) / n,
                            "margin_abs_mean": sum(abs(m) for m in margins) / n,
                            "agrees_with_labels": sum(m > 0 for m in margins) / n}
    if "flipped" in (ds.column_names or ()):
        # the gold label of a pair is "chosen wins" unless the noise flipped it: how often the RM recovers it
        gold = [not f for f in ds["flipped"]]
        info["agrees_with_gold"] = sum((m > 0) == g for m, g in zip(margins, gold)) / n
        info["label_noise"] = 1 - sum(gold) / n
    return info


def margins_from_columns(recipe: Recipe, ds) -> List[float]:
    rm = recipe.reward_model
    for key, col in (("chosen_column", rm.chosen_column), ("rejected_column", rm.rejected_column)):
        if col not in (ds.column_names or ()):
            raise UserError(f"reward_model.{key}: data.train has no column '{col}' "
                            f"(columns: {', '.join(ds.column_names or ())})")
    out = []
    for i, (c, r) in enumerate(zip(ds[rm.chosen_column], ds[rm.rejected_column])):
        try:
            m = (float(c) - float(r)) * rm.scale
        except (TypeError, ValueError):
            raise UserError(f"reward_model: row {i}: scores must be numbers, got {c!r} and {r!r}") from None
        if not math.isfinite(m):
            raise UserError(f"reward_model: row {i}: non-finite margin from scores {c!r} and {r!r}")
        out.append(m)
    return out


def train_reward_model_margins(recipe: Recipe, ds, out: Path) -> Tuple[List[float], Dict[str, Any]]:
    """Train the Bradley-Terry reward model with TRL's ``RewardTrainer`` and score every pair of ``ds``."""
    import time

    import torch
    from transformers import AutoModelForSequenceClassification
    from trl import RewardConfig, RewardTrainer

    from posttrain.models import ModelLoadError, load_tokenizer, resolve_model_path
    from posttrain.trainers import JsonlMetricsCallback

    from .skeleton import build_trl_args, lora_config

    rm = recipe.reward_model
    try:
        path = resolve_model_path(recipe.model.name, recipe.model.cache_dir)
        tokenizer = load_tokenizer(recipe.model.name, recipe.model.cache_dir)
        model = AutoModelForSequenceClassification.from_pretrained(
            path, num_labels=1, dtype=getattr(torch, recipe.model.dtype),
            trust_remote_code=recipe.model.trust_remote_code)
    except (ModelLoadError, OSError) as exc:
        raise UserError(f"model.name: {str(exc).splitlines()[0]}") from None
    model.config.pad_token_id = tokenizer.pad_token_id  # the score head reads the last non-pad token
    # the recipe's TRL defaults (bf16 / checkpointing off on CPU, seed, logging), with reward_model.train's fields
    rm_recipe = recipe.model_copy(update={"train": dict(rm.train)})
    args = build_trl_args(rm_recipe, out, config_cls=RewardConfig, where="reward_model.train")
    peft_config = lora_config(rm.lora or recipe.model.lora, task_type="SEQ_CLS")
    rm_ds = ds.select_columns(["prompt", "chosen", "rejected"])  # a 'margin' column would change TRL's RM loss
    out.mkdir(parents=True, exist_ok=True)
    try:
        trainer = RewardTrainer(model=model, args=args, train_dataset=rm_ds, processing_class=tokenizer,
                                peft_config=peft_config, callbacks=[JsonlMetricsCallback(out / "metrics.jsonl")])
    except ValueError as exc:
        raise UserError(f"reward_model.train: {str(exc).splitlines()[0]}") from None
    t0 = time.time()
    result = trainer.train()
    info = {"source": "train", "train_seconds": round(time.time() - t0, 1), "global_step": trainer.state.global_step,
            "train_loss": result.metrics.get("train_loss")}
    margins = score_pairs(trainer, rm_ds, batch_size=rm.batch_size)
    return [m * rm.scale for m in margins], info


def score_pairs(trainer, ds, *, batch_size: int) -> List[float]:
    """``r(prompt + chosen) - r(prompt + rejected)`` for every row of ``ds``, in order, with the trained (frozen)
    reward model; tokenised by TRL's own ``_prepare_dataset`` so scoring sees exactly the training format (but
    without the ``max_length`` filter, which would drop rows)."""
    import torch

    args = copy.copy(trainer.args)
    args.max_length = None
    tokenized = trainer._prepare_dataset(ds, trainer.processing_class, args, "scoring")
    model = trainer.model
    was_training = model.training
    model.eval()
    device = trainer.accelerator.device
    margins: List[float] = []
    try:
        with torch.no_grad():
            for start in range(0, len(tokenized), batch_size):
                rows = [tokenized[i] for i in range(start, min(start + batch_size, len(tokenized)))]
                batch = trainer.data_collator(rows)
                rewards = model(input_ids=batch["input_ids"].to(device),
                                attention_mask=batch["attention_mask"].to(device)).logits[:, 0]
                chosen, rejected = rewards.float().chunk(2)
                margins.extend((chosen - rejected).tolist())
    finally:
        model.train(was_training)
    return margins


def add_margin_column(recipe: Recipe, ds, out: Path, *, resume: bool = False):
    """``(ds with a 'margin' column, summary dict)``. Cached in ``<out>/reward_model/margins.json``."""
    from .skeleton import is_main

    rm_dir = Path(out) / "reward_model"
    cache = rm_dir / "margins.json"
    if resume and cache.is_file() and len(json.loads(cache.read_text())["margins"]) == len(ds):
        saved = json.loads(cache.read_text())
        margins, info = saved["margins"], dict(saved["info"], reused=True)
    else:
        if recipe.reward_model.source == "columns":
            margins, info = margins_from_columns(recipe, ds), {"source": "columns"}
        else:
            margins, info = train_reward_model_margins(recipe, ds, rm_dir)
        info.update(_stats(margins, ds))
        if is_main():
            rm_dir.mkdir(parents=True, exist_ok=True)
            tmp = cache.with_suffix(".tmp")
            tmp.write_text(json.dumps({"margins": margins, "info": info}))
            tmp.replace(cache)
    if "margin" in (ds.column_names or ()):
        ds = ds.remove_columns("margin")  # stage 1 defines the margins
    print(f"[posttrain] reward-model margins ({info['source']}): mean {info['margin_mean']:.3f}, "
          f"agree with labels {info['agrees_with_labels']:.2f}"
          + (f", with gold {info['agrees_with_gold']:.2f}" if "agrees_with_gold" in info else ""), flush=True)
    return ds.add_column("margin", [float(m) for m in margins]), info

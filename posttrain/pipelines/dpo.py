"""``posttrain run`` for ``algorithm: dpo`` and ``reward_model+dpo``.  Glue only.

recipe -> model + preference pairs -> [stage 1: a ``margin`` column from a reward model or score columns]
-> :class:`~posttrain.trainers.AdaptiveDPOTrainer` (pair strategies from ``weighting.pairs``) -> greedy evaluation
before / after with the scoring reward -> the same outputs as a GRPO run (metrics.jsonl, summary.json, plot, model).
"""
from __future__ import annotations

import time

from posttrain.errors import UserError
from posttrain.recipes import Recipe

PAIR_COLUMNS_NEEDED = ("prompt", "chosen", "rejected")


def _check_pairs(ds, where: str) -> None:
    cols = set(ds.column_names or ())
    missing = [c for c in PAIR_COLUMNS_NEEDED if c not in cols]
    if missing:
        raise UserError(f"{where}: DPO needs preference pairs with columns prompt, chosen, rejected; "
                        f"missing {', '.join(missing)} (e.g. use data.train.name=preferences)")
    if len(ds) == 0:
        raise UserError(f"{where}: the dataset is empty")


def run_dpo_recipe(recipe: Recipe, *, recipe_path: str, overrides=(), resume: bool = False) -> dict:
    # run.py's helpers are reused read-only, so both algorithms treat output dirs, threads and data alike
    from posttrain.run import (_build_dataset, _build_rewards, _is_main, build_trl_args, configure_threads,
                               finish_run, load_policy, lora_config, prepare_metrics_file, prepare_output_dir,
                               raise_if_stopped, resume_checkpoint, write_resolved_recipe)

    unused = [k for k, v in (("weighting.tokens", recipe.weighting.tokens),
                             ("weighting.sequences", recipe.weighting.sequences),
                             ("weighting.objectives", recipe.weighting.objectives)) if v]
    if unused:
        raise UserError(f"{unused[0]}: not used by algorithm '{recipe.algorithm}' (DPO takes weighting.pairs)")
    t_start = time.time()
    out = prepare_output_dir(recipe, resume)
    ckpt = resume_checkpoint(out) if resume else None
    threads = configure_threads(recipe)

    from transformers import set_seed
    from trl import DPOConfig

    from posttrain.debug import debug_callbacks
    from posttrain.evaluation import evaluate
    from posttrain.trainers import AdaptiveDPOTrainer, JsonlMetricsCallback

    set_seed(recipe.seed)
    write_resolved_recipe(out, recipe, recipe_path, overrides)
    train_ds = _build_dataset(recipe.data.train, "data.train")
    _check_pairs(train_ds, "data.train")
    eval_ds = _build_dataset(recipe.data.eval, "data.eval") if recipe.data.eval else None
    summary: dict = {"recipe": recipe.name, "algorithm": recipe.algorithm, "model": recipe.model.name,
                     "seed": recipe.seed, "threads": threads, "eval": {}}
    if recipe.algorithm == "reward_model+dpo":
        from .reward_model import add_margin_column

        train_ds, summary["reward_model"] = add_margin_column(recipe, train_ds, out, resume=resume)

    model, tokenizer = load_policy(recipe)
    scorer = None
    if eval_ds is not None and recipe.eval.enabled:
        spec = recipe.eval.reward or (recipe.rewards[0] if recipe.rewards else None)
        if spec is None:
            raise UserError("eval.reward: DPO evaluation needs a scoring reward (eval.reward or rewards.0), "
                            "or set eval.enabled=false")
        scorer = _build_rewards([spec], "eval.reward" if recipe.eval.reward else "rewards", tokenizer)[0]

    args = build_trl_args(recipe, out, config_cls=DPOConfig)
    ev_kw = dict(max_new_tokens=recipe.eval.max_new_tokens, batch_size=recipe.eval.batch_size,
                 success_threshold=recipe.eval.success_threshold)
    if scorer is not None and _is_main():
        summary["eval"]["before"] = evaluate(model, tokenizer, eval_ds, scorer, desc="eval before", **ev_kw)
        b = summary["eval"]["before"]
        print(f"[posttrain] eval before: mean score {b['mean_score']:.3f}, accuracy {b['accuracy']:.3f} "
              f"(n={b['n']})", flush=True)

    metrics_path = prepare_metrics_file(out, resume, ckpt)
    try:
        trainer = AdaptiveDPOTrainer(
            model=model, args=args, train_dataset=train_ds, processing_class=tokenizer, peft_config=lora_config(recipe),
            callbacks=[JsonlMetricsCallback(metrics_path), *debug_callbacks()],
            pair_strategies=[s.model_dump() for s in recipe.weighting.pairs],
            max_nonfinite_steps=recipe.reliability.max_nonfinite_steps, diagnostics_dir=out / "diagnostics",
        )
    except ValueError as exc:  # TRL's own configuration checks
        raise UserError(f"train: {str(exc).splitlines()[0]}") from None
    t_train = time.time()
    result = trainer.train(resume_from_checkpoint=str(ckpt) if ckpt is not None else None)
    summary["train_seconds"] = round(time.time() - t_train, 1)
    raise_if_stopped(trainer, out, summary)
    summary["global_step"] = trainer.state.global_step
    summary["train_metrics"] = dict(result.metrics)
    if recipe.output.plots and "margin" in train_ds.column_names and _is_main():
        from posttrain.reporting import plot_margins

        plot_margins(train_ds["margin"], trainer.pair_weighting.margin_weights, out / "margins.png")
    return finish_run(trainer, tokenizer, recipe, out, summary, t_start=t_start, metrics_path=metrics_path,
                      scorer=scorer, eval_ds=eval_ds, ev_kw=ev_kw, describe_after=lambda a, b: (
                          f"mean score {a['mean_score']:.3f}, accuracy {a['accuracy']:.3f} (n={a['n']})"
                          + (f"; before {b['mean_score']:.3f} / {b['accuracy']:.3f}" if b else "")))

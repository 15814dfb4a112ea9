"""``posttrain run`` for ``algorithm: dpo`` and ``reward_model+dpo``.  Glue only.

recipe -> model + preference pairs -> [stage 1: a ``margin`` column from a reward model or score columns]
-> :class:`~posttrain.trainers.AdaptiveDPOTrainer` (pair strategies from ``weighting.pairs``) -> greedy evaluation
before / after with the scoring reward -> the same outputs as a GRPO run (metrics.jsonl, summary.json, plot, model).
"""
from __future__ import annotations

import time

from posttrain.errors import UserError
from posttrain.recipes import Recipe


def run_dpo_recipe(recipe: Recipe, *, recipe_path: str, overrides=(), resume: bool = False) -> dict:
    from posttrain.errors import RunStopped
    from posttrain.pipelines.checks import check_run
    from posttrain.pipelines.outdirs import is_main as dirs_main, plan_run_dirs

    t_start = time.time()
    dirs = plan_run_dirs(recipe, resume)
    checked = check_run(recipe, out=dirs.work)  # everything checkable, before the output dir is touched
    dirs.prepare()
    try:
        summary = _run_dpo(recipe, dirs.work, checked, recipe_path=recipe_path, overrides=overrides, resume=resume,
                           t_start=t_start)
    except UserError:
        dirs.abandon()
        raise
    except RunStopped as exc:
        raise RunStopped(f"{exc}{dirs.stopped_note()}") from None
    dirs.commit()
    if dirs_main():
        print(f"[posttrain] done in {summary['wall_seconds']:.0f} s -> {dirs.final}", flush=True)
    return summary


def _run_dpo(recipe, out, checked, *, recipe_path, overrides, resume, t_start):
    from posttrain.run import (_build_rewards, _is_main, build_trl_args, configure_threads, finish_run, load_policy,
                               lora_config, prepare_metrics_file, raise_if_stopped, resume_checkpoint,
                               write_resolved_recipe)

    ckpt = resume_checkpoint(out) if resume else None
    threads = configure_threads(recipe)

    from transformers import set_seed
    from trl import DPOConfig

    from posttrain.debug import debug_callbacks
    from posttrain.evaluation import evaluate
    from posttrain.trainers import AdaptiveDPOTrainer, JsonlMetricsCallback

    set_seed(recipe.seed)
    write_resolved_recipe(out, recipe, recipe_path, overrides)
    train_ds, eval_ds = checked.train_ds, checked.eval_ds
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

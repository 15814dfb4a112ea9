"""``posttrain run`` for ``algorithm: dpo`` and ``reward_model+dpo``: the DPO part of the run skeleton.  Glue only.

recipe -> preference pairs -> [stage 1 (``reward_model+dpo``): a ``margin`` column from a reward model or score
columns, :mod:`posttrain.pipelines.reward_model`] -> policy -> :class:`~posttrain.trainers.AdaptiveDPOTrainer`
(pair strategies from ``weighting.pairs``) -> greedy evaluation before / after with the scoring reward -> the same
outputs as a GRPO run (metrics.jsonl, summary.json, plot, model; ``margins.png`` with a margin column).
"""
from __future__ import annotations

from posttrain.errors import UserError

from .skeleton import Pipeline, RunContext, build_rewards, is_main, load_policy, lora_config, run_pipeline


class DPOPipeline(Pipeline):
    name = "dpo"

    def trl_config_class(self):
        from trl import DPOConfig

        return DPOConfig

    def setup(self, ctx: RunContext) -> None:
        recipe = ctx.recipe
        if recipe.algorithm == "reward_model+dpo":
            from .reward_model import add_margin_column

            ctx.train_ds, ctx.summary["reward_model"] = add_margin_column(recipe, ctx.train_ds, ctx.out,
                                                                          resume=ctx.resume)
        ctx.model, ctx.tokenizer = load_policy(recipe)
        if ctx.eval_ds is not None and recipe.eval.enabled:
            spec = recipe.eval.reward or recipe.rewards[0]  # the pre-flight checked that there is one
            where = "eval.reward" if recipe.eval.reward else "rewards"
            ctx.scorer = build_rewards([spec], where, ctx.tokenizer)[0]

    def make_trainer(self, ctx: RunContext, args, callbacks: list):
        from posttrain.trainers import AdaptiveDPOTrainer

        recipe = ctx.recipe
        try:
            return AdaptiveDPOTrainer(
                model=ctx.model, args=args, train_dataset=ctx.train_ds, processing_class=ctx.tokenizer,
                peft_config=lora_config(recipe.model.lora), callbacks=callbacks,
                pair_strategies=[s.model_dump() for s in recipe.weighting.pairs],
                max_nonfinite_steps=recipe.reliability.max_nonfinite_steps, diagnostics_dir=ctx.out / "diagnostics",
            )
        except ValueError as exc:  # TRL's own configuration checks
            raise UserError(f"train: {str(exc).splitlines()[0]}") from None

    def after_train(self, ctx: RunContext, trainer) -> None:
        if ctx.recipe.output.plots and "margin" in ctx.train_ds.column_names and is_main():
            from posttrain.reporting import plot_margins

            plot_margins(ctx.train_ds["margin"], trainer.pair_weighting.margin_weights, ctx.out / "margins.png")

    def describe(self, ev: dict) -> str:
        return f"mean score {ev['mean_score']:.3f}, accuracy {ev['accuracy']:.3f} (n={ev['n']})"

    def describe_before(self, ev: dict) -> str:
        return f"{ev['mean_score']:.3f} / {ev['accuracy']:.3f}"


def run_dpo_recipe(recipe, *, recipe_path: str, overrides=(), resume: bool = False) -> dict:
    return run_pipeline(DPOPipeline(), recipe, recipe_path=recipe_path, overrides=overrides, resume=resume)

"""``posttrain run`` for ``algorithm: grpo``: the GRPO part of the run skeleton.  Glue only.

recipe -> policy + prompts + reward functions (each wrapped in SafeReward) -> :class:`~posttrain.trainers.
PosttrainGRPOTrainer` (TRL's GRPO with the recipe's token / sequence / objective weighting) -> greedy evaluation
before / after with the scoring reward (``eval.reward``, default the first reward).
"""
from __future__ import annotations

from .skeleton import Pipeline, RunContext, build_rewards, build_trl_args, load_policy, lora_config, run_pipeline


class GRPOPipeline(Pipeline):
    name = "grpo"

    def trl_config_class(self):
        from trl import GRPOConfig

        return GRPOConfig

    def setup(self, ctx: RunContext) -> None:
        recipe = ctx.recipe
        ctx.model, ctx.tokenizer = load_policy(recipe)
        ctx.extra["reward_fns"] = build_rewards(recipe.rewards, "rewards", ctx.tokenizer, safe=True)
        if ctx.eval_ds is not None and recipe.eval.enabled:
            spec = recipe.eval.reward
            ctx.scorer = (build_rewards([spec], "eval.reward", ctx.tokenizer)[0] if spec
                          else ctx.extra["reward_fns"][0])

    def trl_args(self, ctx: RunContext):
        args = build_trl_args(ctx.recipe, ctx.out, config_cls=self.trl_config_class())
        rewards = ctx.recipe.rewards
        if len(rewards) > 1 or any(s.weight != 1.0 for s in rewards):
            args.reward_weights = [s.weight for s in rewards]  # train.reward_weights is folded into these
        return args

    def make_trainer(self, ctx: RunContext, args, callbacks: list):
        from posttrain.trainers import PosttrainGRPOTrainer

        recipe = ctx.recipe
        return PosttrainGRPOTrainer(
            model=ctx.model,
            reward_funcs=ctx.extra["reward_fns"],
            args=args,
            train_dataset=ctx.train_ds,
            processing_class=ctx.tokenizer,
            peft_config=lora_config(recipe.model.lora),
            callbacks=callbacks,
            weighting=recipe.weighting,
            advantage=recipe.advantage,
            dynamic_sampling=recipe.rollout.dynamic_sampling,
            max_reward_failure_fraction=recipe.reliability.max_reward_failure_fraction,
            max_nonfinite_steps=recipe.reliability.max_nonfinite_steps,
            diagnostics_dir=ctx.out / "diagnostics",
            relift=recipe.relift,  # ReLIFT's interleaved fine-tuning on the hardest prompts (None: off)
            objective_eval_dataset=ctx.eval_ds,  # held-out prompts for weighting.objectives hypervolume's evaluations
            domains=ctx.extra.get("domains"),     # a data.train mixture: posttrain.trainers.domains
        )


def run_grpo_recipe(recipe, *, recipe_path: str, overrides=(), resume: bool = False) -> dict:
    return run_pipeline(GRPOPipeline(), recipe, recipe_path=recipe_path, overrides=overrides, resume=resume)

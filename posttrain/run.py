"""``posttrain run``: dispatch a recipe to its algorithm's pipeline (``posttrain.pipelines``).

Every algorithm runs through one skeleton, :func:`posttrain.pipelines.skeleton.run_pipeline` (pre-flight checks,
output directories and the safe replacement of a previous run, resume, threads, seed, evaluation, metrics, stop
handling, final outputs); ``posttrain.pipelines.grpo``, ``posttrain.pipelines.dpo`` and ``posttrain.pipelines.sft``
hold only what differs.
The helpers are re-exported here for scripts that build parts of a run themselves.
"""
from __future__ import annotations

from posttrain.errors import UserError
from posttrain.pipelines.checks import build_dataset, check_run
from posttrain.pipelines.skeleton import (build_rewards, configure_threads, finish_run, load_policy, lora_config,
                                          prepare_metrics_file, raise_if_stopped, resume_checkpoint,
                                          write_resolved_recipe)
from posttrain.pipelines.trl_args import build_trl_args

__all__ = ["build_dataset", "build_rewards", "build_trl_args", "check_run", "configure_threads", "finish_run",
           "load_policy", "lora_config", "prepare_metrics_file", "raise_if_stopped", "resume_checkpoint",
           "run_recipe", "write_resolved_recipe"]


def run_recipe(recipe, *, recipe_path: str, overrides=(), resume: bool = False) -> dict:
    if recipe.algorithm in ("dpo", "reward_model+dpo"):
        from posttrain.pipelines.dpo import run_dpo_recipe

        return run_dpo_recipe(recipe, recipe_path=recipe_path, overrides=overrides, resume=resume)
    if recipe.algorithm == "sft":
        from posttrain.pipelines.sft import run_sft_recipe

        return run_sft_recipe(recipe, recipe_path=recipe_path, overrides=overrides, resume=resume)
    if recipe.algorithm != "grpo":
        raise UserError(f"algorithm '{recipe.algorithm}' is not available in this version (grpo, dpo, "
                        f"reward_model+dpo, sft)")
    from posttrain.pipelines.grpo import run_grpo_recipe

    return run_grpo_recipe(recipe, recipe_path=recipe_path, overrides=overrides, resume=resume)

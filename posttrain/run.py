"""``posttrain run``: recipe -> model, data, rewards -> trainer -> evaluation, outputs.  Glue only."""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import List

import yaml

from posttrain.errors import RunStopped, UserError
from posttrain.recipes import Recipe


def _rank() -> int:
    return int(os.environ.get("RANK", "0"))


def _is_main() -> bool:
    return _rank() == 0


def configure_threads(recipe: Recipe) -> int:
    """Intra-op threads: the recipe's value, else the cores divided among this node's processes."""
    import torch

    n = recipe.model.threads
    if n is None:
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE", "1")))
        n = max(1, (os.cpu_count() or 1) // max(1, local_world))
    torch.set_num_threads(n)
    return n


def _build_dataset(spec, where: str):
    from posttrain.pipelines.checks import build_dataset

    return build_dataset(spec, where)


def _build_rewards(specs, where: str, tokenizer, *, safe: bool = False) -> List:
    """Build the reward callables; ``safe`` wraps each in SafeReward (failures -> missing samples, timeout)."""
    from posttrain.registry import RegistryError
    from posttrain.rewards import build_reward
    from posttrain.rewards.safe import SafeReward

    fns = []
    for i, spec in enumerate(specs):
        args = dict(spec.args)
        try:
            fn = build_reward(spec.name, args, tokenizer=tokenizer)
        except (RegistryError, TypeError, ValueError) as exc:
            raise UserError(f"{where}.{i}: {exc}") from None
        fns.append(SafeReward(fn, timeout=spec.timeout) if safe else fn)
    return fns


def resume_checkpoint(out: Path) -> Path:
    """The newest *complete* checkpoint of a run (incomplete ones are set aside, never deleted)."""
    from posttrain.trainers.checkpointing import latest_complete_checkpoint, quarantine_incomplete

    trainer_dir = out / "trainer"
    if _is_main():
        for moved in quarantine_incomplete(trainer_dir):
            print(f"[posttrain] resume: set aside incomplete checkpoint -> {moved}", flush=True)
    ckpt = latest_complete_checkpoint(trainer_dir)
    if ckpt is None:
        raise UserError(f"--resume: no complete checkpoint in '{trainer_dir}' (set train.save_steps to write "
                        f"checkpoints)")
    return ckpt


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop metrics rows logged after the checkpoint we resume from (they will be logged again)."""
    import json

    if not path.exists():
        return
    keep = [line for line in path.read_text().splitlines()
            if line.strip() and json.loads(line).get("step", 0) <= step]
    path.write_text("".join(line + "\n" for line in keep))


# ---------------------------------------------------------------- shared by the GRPO run and pipelines/dpo.py
def write_resolved_recipe(out: Path, recipe: Recipe, recipe_path: str, overrides) -> None:
    if _is_main():
        (out / "recipe.resolved.yaml").write_text(
            f"# resolved from {recipe_path}" + (f" with {' '.join(overrides)}" if overrides else "") + "\n"
            + yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False)
        )


def load_policy(recipe: Recipe):
    """(model, tokenizer) of ``model.name``; a model that cannot be loaded is a one-line ``UserError``."""
    import torch

    from posttrain.models import ModelLoadError, load_model_and_tokenizer

    try:
        return load_model_and_tokenizer(recipe.model.name, dtype=getattr(torch, recipe.model.dtype),
                                        cache_dir=recipe.model.cache_dir,
                                        trust_remote_code=recipe.model.trust_remote_code)
    except ModelLoadError as exc:
        raise UserError(f"model.name: {exc}") from None


def lora_config(recipe: Recipe):
    """peft ``LoraConfig`` from ``model.lora`` (None: train all weights)."""
    if recipe.model.lora is None:
        return None
    from peft import LoraConfig

    lora = recipe.model.lora
    return LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                      target_modules=list(lora.target_modules), task_type="CAUSAL_LM")


def prepare_metrics_file(out: Path, resume: bool, ckpt) -> Path:
    """``metrics.jsonl``: a fresh run starts empty; a resumed one keeps the rows up to its checkpoint."""
    metrics_path = out / "metrics.jsonl"
    if _is_main() and not resume and metrics_path.exists():
        metrics_path.unlink()
    if _is_main() and ckpt is not None:
        from posttrain.trainers.checkpointing import checkpoint_step

        _truncate_metrics(metrics_path, checkpoint_step(ckpt))
        print(f"[posttrain] resuming from {ckpt}", flush=True)
    return metrics_path


def raise_if_stopped(trainer, out: Path, summary: dict) -> None:
    """The trainer's StepGuard stopped the run (failed rewards, non-finite steps): summary, then ``RunStopped``."""
    if trainer.guard.stop_reason is None:
        return
    from posttrain.reporting import write_json
    from posttrain.trainers.checkpointing import latest_complete_checkpoint

    saved = latest_complete_checkpoint(out / "trainer")
    if _is_main():
        summary.update(stopped=trainer.guard.stop_reason, global_step=trainer.state.global_step,
                       checkpoint=str(saved) if saved else None)
        write_json(out / "summary.json", summary)
    raise RunStopped(f"{trainer.guard.stop_reason}; last good state saved in {saved} "
                     f"(continue with --resume after fixing the cause)")


def finish_run(trainer, tokenizer, recipe: Recipe, out: Path, summary: dict, *, t_start: float, metrics_path: Path,
               scorer, eval_ds, ev_kw: dict, describe_after) -> dict:
    """Evaluate after training, save the model, plot, write summary.json.  Every rank must call it: with ZeRO-3
    the parameters are sharded and are gathered for evaluation and saving (posttrain.distributed)."""
    from posttrain.distributed import full_policy, save_final_model
    from posttrain.evaluation import evaluate
    from posttrain.reporting import plot_curves, write_json

    if scorer is not None:
        with full_policy(trainer) as policy:
            if _is_main():
                summary["eval"]["after"] = evaluate(policy, tokenizer, eval_ds, scorer, desc="eval after", **ev_kw)
        if _is_main():
            print(f"[posttrain] eval after: {describe_after(summary['eval']['after'], summary['eval'].get('before'))}",
                  flush=True)
    if recipe.output.save_model:
        save_final_model(trainer, tokenizer, out / "model", is_main=_is_main())
    if _is_main():
        if recipe.output.plots:
            plot_curves(metrics_path, out / "training_curves.png", title=f"{recipe.name} ({recipe.model.name})")
        summary["wall_seconds"] = round(time.time() - t_start, 1)
        write_json(out / "summary.json", summary)
    return summary


def build_trl_args(recipe: Recipe, out: Path, config_cls=None, *, where: str = "train"):
    import torch
    from trl import GRPOConfig

    config_cls = config_cls or GRPOConfig  # DPOConfig / RewardConfig take the same defaults (pipelines/dpo.py)

    train = dict(recipe.train)
    on_gpu = torch.cuda.is_available()
    defaults = {
        # bf16 is slow on CPUs without bf16 instructions (environment.md); TRL defaults it on.
        "bf16": on_gpu and torch.cuda.is_bf16_supported(),
        # Checkpointing made a CPU step ~3x slower for small models (environment.md).
        "gradient_checkpointing": on_gpu,
        "use_cpu": not on_gpu,
        "save_strategy": "no",
        "disable_tqdm": False,
    }
    if "save_steps" in train and "save_strategy" not in train:
        defaults["save_strategy"] = "steps"  # asking for save_steps means asking for checkpoints
    for k, v in defaults.items():
        train.setdefault(k, v)
    train.update(
        output_dir=str(out / "trainer"),
        seed=recipe.seed,
        report_to=recipe.output.report_to or "none",
        logging_steps=recipe.output.logging_steps,
    )
    from posttrain.rollout import rollout_trl_kwargs

    if config_cls is GRPOConfig:  # rollouts exist only in online RL; DPO / reward models train on fixed data
        train.update(rollout_trl_kwargs(recipe.rollout))  # HF generate or vLLM (one-line error when vLLM is missing)
    if recipe.distributed.zero_stage or recipe.distributed.config:
        from posttrain.distributed import apply_deepspeed

        apply_deepspeed(train, recipe.distributed)  # shipped/user JSON; precision made to agree with train
    try:
        args = config_cls(**train)
    except (ValueError, TypeError) as exc:
        raise UserError(f"{where}: {str(exc).splitlines()[0]}") from None
    if "deepspeed" in train:
        from posttrain.distributed import check_deepspeed_mismatches

        check_deepspeed_mismatches(args)
    return args


def run_recipe(recipe: Recipe, *, recipe_path: str, overrides=(), resume: bool = False) -> dict:
    if recipe.algorithm in ("dpo", "reward_model+dpo"):
        from posttrain.pipelines.dpo import run_dpo_recipe

        return run_dpo_recipe(recipe, recipe_path=recipe_path, overrides=overrides, resume=resume)
    if recipe.algorithm != "grpo":
        raise UserError(f"algorithm '{recipe.algorithm}' is not available in this version (only 'grpo')")
    from posttrain.pipelines.checks import check_run
    from posttrain.pipelines.outdirs import plan_run_dirs

    t_start = time.time()
    dirs = plan_run_dirs(recipe, resume)
    checked = check_run(recipe, out=dirs.work)  # everything checkable, before the output dir is touched
    dirs.prepare()
    try:
        summary = _run_grpo(recipe, dirs.work, checked, recipe_path=recipe_path, overrides=overrides, resume=resume,
                            t_start=t_start)
    except UserError:
        dirs.abandon()
        raise
    except RunStopped as exc:
        raise RunStopped(f"{exc}{dirs.stopped_note()}") from None
    dirs.commit()
    if _is_main():
        print(f"[posttrain] done in {summary['wall_seconds']:.0f} s -> {dirs.final}", flush=True)
    return summary


def _run_grpo(recipe: Recipe, out: Path, checked, *, recipe_path, overrides, resume, t_start) -> dict:
    ckpt = resume_checkpoint(out) if resume else None
    threads = configure_threads(recipe)

    from transformers import set_seed

    from posttrain.debug import debug_callbacks
    from posttrain.evaluation import evaluate
    from posttrain.trainers import JsonlMetricsCallback, PosttrainGRPOTrainer

    set_seed(recipe.seed)
    write_resolved_recipe(out, recipe, recipe_path, overrides)
    model, tokenizer = load_policy(recipe)
    train_ds, eval_ds = checked.train_ds, checked.eval_ds
    reward_fns = _build_rewards(recipe.rewards, "rewards", tokenizer, safe=True)
    scorer = None
    if eval_ds is not None and recipe.eval.enabled:
        spec = recipe.eval.reward
        scorer = _build_rewards([spec], "eval.reward", tokenizer)[0] if spec else reward_fns[0]

    args = build_trl_args(recipe, out)
    if len(recipe.rewards) > 1 or any(s.weight != 1.0 for s in recipe.rewards):
        args.reward_weights = [s.weight for s in recipe.rewards]

    ev_kw = dict(max_new_tokens=recipe.eval.max_new_tokens, batch_size=recipe.eval.batch_size,
                 success_threshold=recipe.eval.success_threshold)
    summary: dict = {"recipe": recipe.name, "algorithm": recipe.algorithm, "model": recipe.model.name,
                     "seed": recipe.seed, "threads": threads, "eval": {}}
    if scorer is not None and _is_main():
        summary["eval"]["before"] = evaluate(model, tokenizer, eval_ds, scorer, desc="eval before", **ev_kw)
        print(f"[posttrain] eval before: accuracy {summary['eval']['before']['accuracy']:.3f} "
              f"(n={summary['eval']['before']['n']})", flush=True)

    metrics_path = prepare_metrics_file(out, resume, ckpt)
    trainer = PosttrainGRPOTrainer(
        model=model,
        reward_funcs=reward_fns,
        args=args,
        train_dataset=train_ds,
        processing_class=tokenizer,
        peft_config=lora_config(recipe),
        callbacks=[JsonlMetricsCallback(metrics_path), *debug_callbacks()],
        weighting=recipe.weighting,
        max_reward_failure_fraction=recipe.reliability.max_reward_failure_fraction,
        max_nonfinite_steps=recipe.reliability.max_nonfinite_steps,
        diagnostics_dir=out / "diagnostics",
        objective_eval_dataset=eval_ds,  # held-out prompts for weighting.objectives hypervolume's evaluations
    )
    t_train = time.time()
    result = trainer.train(resume_from_checkpoint=str(ckpt) if ckpt is not None else None)
    summary["train_seconds"] = round(time.time() - t_train, 1)
    raise_if_stopped(trainer, out, summary)
    summary["global_step"] = trainer.state.global_step
    summary["train_metrics"] = {k: v for k, v in result.metrics.items()}
    return finish_run(trainer, tokenizer, recipe, out, summary, t_start=t_start, metrics_path=metrics_path,
                      scorer=scorer, eval_ds=eval_ds, ev_kw=ev_kw, describe_after=lambda a, b: (
                          f"accuracy {a['accuracy']:.3f} (n={a['n']})" + (f"; before {b['accuracy']:.3f}" if b else "")))

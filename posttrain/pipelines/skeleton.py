"""One run skeleton for every algorithm: ``posttrain run`` = pre-flight -> output dirs -> [resume] -> threads, seed,
resolved recipe -> the algorithm's set-up -> greedy evaluation before -> train -> stop handling -> evaluation
after, final model, plot, summary -> swap the run into ``output.dir``.

An algorithm is a :class:`Pipeline`: what only it knows (its TRL config class, how it loads the policy and scoring
reward, builds its trainer, what it does after training and how it describes an evaluation).  Everything else --
and so every guarantee about output directories (:mod:`posttrain.pipelines.outdirs`), pre-flight checks
(:mod:`posttrain.pipelines.checks`), resume, metrics and stopping -- lives here once.  Glue only: no formula.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import yaml

from posttrain.errors import RunStopped, UserError

from .checks import check_run
from .outdirs import is_main, plan_run_dirs
from .trl_args import build_trl_args

__all__ = ["Pipeline", "RunContext", "already_finished", "build_rewards", "build_trl_args", "configure_threads",
           "finish_run", "is_main", "load_policy", "lora_config", "prepare_metrics_file", "raise_if_stopped",
           "resume_checkpoint", "run_pipeline", "write_resolved_recipe"]


# --------------------------------------------------------------------------------------------------- helpers
def configure_threads(recipe) -> int:
    """Intra-op threads: the recipe's value, else the cores divided among this node's processes."""
    import torch

    n = recipe.model.threads
    if n is None:
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE", "1")))
        n = max(1, (os.cpu_count() or 1) // max(1, local_world))
    torch.set_num_threads(n)
    return n


def build_rewards(specs, where: str, tokenizer, *, safe: bool = False) -> List:
    """Build the reward callables; ``safe`` wraps each in SafeReward (failures -> missing samples, timeout)."""
    from posttrain.registry import RegistryError
    from posttrain.rewards import build_reward
    from posttrain.rewards.safe import SafeReward

    fns = []
    for i, spec in enumerate(specs):
        try:
            fn = build_reward(spec.name, dict(spec.args), tokenizer=tokenizer)
        except (RegistryError, TypeError, ValueError) as exc:
            raise UserError(f"{where}.{i}: {exc}") from None
        fns.append(SafeReward(fn, timeout=spec.timeout) if safe else fn)
    return fns


def load_policy(recipe):
    """(model, tokenizer) of ``model.name``; a model that cannot be loaded is a one-line ``UserError``."""
    import torch

    from posttrain.models import ModelLoadError, load_model_and_tokenizer

    try:
        return load_model_and_tokenizer(recipe.model.name, dtype=getattr(torch, recipe.model.dtype),
                                        cache_dir=recipe.model.cache_dir,
                                        trust_remote_code=recipe.model.trust_remote_code)
    except ModelLoadError as exc:
        raise UserError(f"model.name: {exc}") from None


def lora_config(lora, task_type: str = "CAUSAL_LM"):
    """peft ``LoraConfig`` from a recipe ``LoraSection`` (None: train all weights)."""
    if lora is None:
        return None
    from peft import LoraConfig

    return LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                      target_modules=list(lora.target_modules), task_type=task_type)


def write_resolved_recipe(out: Path, recipe, recipe_path: str, overrides) -> None:
    if is_main():
        (out / "recipe.resolved.yaml").write_text(
            f"# resolved from {recipe_path}" + (f" with {' '.join(overrides)}" if overrides else "") + "\n"
            + yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False)
        )


def resume_checkpoint(out: Path) -> Path:
    """The newest *complete* checkpoint of a run (incomplete ones are set aside, never deleted)."""
    from posttrain.trainers.checkpointing import latest_complete_checkpoint, quarantine_incomplete

    trainer_dir = out / "trainer"
    if is_main():
        for moved in quarantine_incomplete(trainer_dir):
            print(f"[posttrain] resume: set aside incomplete checkpoint -> {moved}", flush=True)
    ckpt = latest_complete_checkpoint(trainer_dir)
    if ckpt is None:
        raise UserError(_no_checkpoint(trainer_dir))
    return ckpt


def _no_checkpoint(trainer_dir: Path) -> str:
    return f"--resume: no complete checkpoint in '{trainer_dir}' (set train.save_steps to write checkpoints)"


def already_finished(out: Path, recipe) -> Optional[str]:
    """Why ``--resume`` of the run in ``out`` has nothing to train, or None.

    Finished = its ``summary.json`` records a completed run (no ``stopped``) at ``train.max_steps`` (or any step
    when the recipe trains by epochs), or its newest complete checkpoint is at (or past) the step budget (the run
    was stopped after its last checkpoint, before it wrote its summary).  Resuming such a checkpoint would make the
    HF Trainer take one more optimizer step before it checks ``max_steps``, and so change the saved model."""
    from posttrain.trainers.checkpointing import checkpoint_step, latest_complete_checkpoint

    target = recipe.train.get("max_steps", -1)
    target = target if isinstance(target, int) and target > 0 else None
    try:
        summary = json.loads((out / "summary.json").read_text())
    except (OSError, ValueError):
        summary = None
    if isinstance(summary, dict) and "stopped" not in summary and isinstance(summary.get("global_step"), int):
        step = summary["global_step"]
        if target is None or step >= target:
            budget = f" of train.max_steps {target}" if target else ""
            return f"the run in {out} already finished (global_step {step}{budget}); nothing to train"
    ckpt = latest_complete_checkpoint(out / "trainer")
    if ckpt is None:
        return None
    step = checkpoint_step(ckpt)
    if target is None:
        try:
            target = int(json.loads((ckpt / "trainer_state.json").read_text()).get("max_steps") or 0) or None
        except (OSError, ValueError):
            target = None
    if target is not None and step >= target:
        return (f"the newest checkpoint {ckpt} is at step {step}, train.max_steps is {target}: nothing to train "
                f"(the trained weights are in that checkpoint)")
    return None


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop metrics rows logged after the checkpoint we resume from (they will be logged again)."""
    if not path.exists():
        return
    keep = [line for line in path.read_text().splitlines()
            if line.strip() and json.loads(line).get("step", 0) <= step]
    path.write_text("".join(line + "\n" for line in keep))


def prepare_metrics_file(out: Path, resume: bool, ckpt) -> Path:
    """``metrics.jsonl``: a fresh run starts empty; a resumed one keeps the rows up to its checkpoint."""
    metrics_path = out / "metrics.jsonl"
    if is_main() and not resume and metrics_path.exists():
        metrics_path.unlink()
    if is_main() and ckpt is not None:
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
    if is_main():
        summary.update(stopped=trainer.guard.stop_reason, global_step=trainer.state.global_step,
                       checkpoint=str(saved) if saved else None)
        write_json(out / "summary.json", summary)
    raise RunStopped(f"{trainer.guard.stop_reason}; last good state saved in {saved} "
                     f"(continue with --resume after fixing the cause)")


def finish_run(trainer, tokenizer, recipe, out: Path, summary: dict, *, t_start: float, metrics_path: Path,
               scorer, eval_ds, ev_kw: dict, describe_after) -> dict:
    """Evaluate after training, save the model, plot, write summary.json.  Every rank must call it: with ZeRO-3
    the parameters are sharded and are gathered for evaluation and saving (posttrain.distributed)."""
    from posttrain.distributed import full_policy, save_final_model
    from posttrain.evaluation import evaluate
    from posttrain.reporting import plot_curves, plot_domain_weights, write_json

    if scorer is not None:
        with full_policy(trainer) as policy:
            if is_main():
                summary["eval"]["after"] = evaluate(policy, tokenizer, eval_ds, scorer, desc="eval after", **ev_kw)
        if is_main():
            print(f"[posttrain] eval after: {describe_after(summary['eval']['after'], summary['eval'].get('before'))}",
                  flush=True)
    if recipe.output.save_model:
        save_final_model(trainer, tokenizer, out / "model", is_main=is_main())
    if is_main():
        if recipe.output.plots:
            plot_curves(metrics_path, out / "training_curves.png", title=f"{recipe.name} ({recipe.model.name})",
                        eval_summary=summary.get("eval"))
            if recipe.weighting.domains or hasattr(recipe.data.train, "mixture"):
                plot_domain_weights(metrics_path, out / "domain_weights.png",
                                    title=f"{recipe.name}: domain weights ({recipe.model.name})")
        summary["wall_seconds"] = round(time.time() - t_start, 1)
        write_json(out / "summary.json", summary)
    return summary


# -------------------------------------------------------------------------------------------------- skeleton
@dataclass
class RunContext:
    """What the skeleton hands a pipeline's hooks; ``setup`` fills ``model``, ``tokenizer`` and ``scorer``."""

    recipe: Any
    out: Path                 # where this attempt writes (see outdirs: output.dir or output.dir.incoming)
    resume: bool
    ckpt: Optional[Path]
    train_ds: Any
    eval_ds: Any
    summary: Dict[str, Any]
    model: Any = None
    tokenizer: Any = None
    scorer: Any = None        # the evaluation reward (None: no evaluation)
    extra: Dict[str, Any] = field(default_factory=dict)  # a pipeline's own objects (e.g. GRPO's reward functions)


class Pipeline:
    """One algorithm's part of a run.  Subclasses set ``name`` and implement the hooks; the defaults are no-ops."""

    name = "pipeline"

    def trl_config_class(self):
        raise NotImplementedError

    def setup(self, ctx: RunContext) -> None:
        """Load the policy and tokenizer, build the scoring reward, and any stage that comes before training."""
        raise NotImplementedError

    def trl_args(self, ctx: RunContext):
        return build_trl_args(ctx.recipe, ctx.out, config_cls=self.trl_config_class())

    def make_trainer(self, ctx: RunContext, args, callbacks: list):
        raise NotImplementedError

    def after_train(self, ctx: RunContext, trainer) -> None:
        pass

    def describe(self, ev: dict) -> str:
        """One evaluation in a line (``eval before: ...``)."""
        return f"accuracy {ev['accuracy']:.3f} (n={ev['n']})"

    def describe_before(self, ev: dict) -> str:
        """The before-evaluation as shown after the after-evaluation (``; before ...``)."""
        return f"{ev['accuracy']:.3f}"


def run_pipeline(pipeline: Pipeline, recipe, *, recipe_path: str, overrides=(), resume: bool = False) -> dict:
    """``posttrain run`` of ``recipe`` with ``pipeline``: the summary dict (also written to summary.json)."""
    from posttrain.trainers.checkpointing import latest_complete_checkpoint

    t_start = time.time()
    dirs = plan_run_dirs(recipe, resume)           # reads the file system only
    checked = check_run(recipe, out=dirs.work)     # everything checkable, before output.dir is touched
    if resume:
        done = already_finished(dirs.work, recipe)
        if done is not None:  # every rank decides the same from the same files: all return, none trains
            if is_main():
                print(f"[posttrain] --resume: {done}", flush=True)
            return {"recipe": recipe.name, "algorithm": recipe.algorithm, "finished": True, "note": done}
        if latest_complete_checkpoint(dirs.work / "trainer") is None:
            raise UserError(_no_checkpoint(dirs.work / "trainer"))  # before anything is created
    dirs.prepare()
    try:
        summary = _train(pipeline, recipe, dirs.work, checked, recipe_path=recipe_path, overrides=overrides,
                         resume=resume, t_start=t_start)
    except UserError:
        dirs.abandon()
        raise
    except RunStopped as exc:
        raise RunStopped(f"{exc}{dirs.stopped_note()}") from None
    except BaseException:
        # interrupted (Ctrl-C) or crashed: an attempt without a complete checkpoint has nothing to resume, and
        # must not make the next command refuse ("already holds a run"); one with checkpoints is kept for --resume
        if latest_complete_checkpoint(dirs.work / "trainer") is None:
            dirs.abandon()
        raise
    dirs.commit()
    if is_main():
        print(f"[posttrain] done in {summary['wall_seconds']:.0f} s -> {dirs.final}", flush=True)
    return summary


def _train(pipeline: Pipeline, recipe, out: Path, checked, *, recipe_path, overrides, resume, t_start) -> dict:
    from transformers import set_seed

    from posttrain.debug import debug_callbacks
    from posttrain.evaluation import describe_domains, evaluate
    from posttrain.trainers import JsonlMetricsCallback

    ckpt = resume_checkpoint(out) if resume else None
    threads = configure_threads(recipe)
    set_seed(recipe.seed)
    write_resolved_recipe(out, recipe, recipe_path, overrides)
    summary: dict = {"recipe": recipe.name, "algorithm": recipe.algorithm, "model": recipe.model.name,
                     "seed": recipe.seed, "threads": threads, "eval": {}}
    ctx = RunContext(recipe=recipe, out=out, resume=resume, ckpt=ckpt, train_ds=checked.train_ds,
                     eval_ds=checked.eval_ds, summary=summary)
    if checked.domains is not None:  # a data.train mixture (SFT, GRPO): posttrain.trainers.domains
        from posttrain.trainers.domains import DomainSetup

        names, weights = checked.domains
        spec = recipe.weighting.domains[0].model_dump() if recipe.weighting.domains else None
        ctx.extra["domains"] = DomainSetup(names, weights, spec, heldout=checked.heldout_ds)
    pipeline.setup(ctx)
    args = pipeline.trl_args(ctx)
    ev_kw = dict(max_new_tokens=recipe.eval.max_new_tokens, batch_size=recipe.eval.batch_size, em_inf=recipe.eval.em_inf,
                 success_threshold=recipe.eval.success_threshold)
    if ctx.scorer is not None and recipe.eval.before and is_main():
        summary["eval"]["before"] = evaluate(ctx.model, ctx.tokenizer, ctx.eval_ds, ctx.scorer, desc="eval before",
                                             **ev_kw)
        before = summary["eval"]["before"]
        print(f"[posttrain] eval before: {pipeline.describe(before)}{describe_domains(before)}", flush=True)

    metrics_path = prepare_metrics_file(out, resume, ckpt)
    trainer = pipeline.make_trainer(ctx, args, [JsonlMetricsCallback(metrics_path), *debug_callbacks()])
    t_train = time.time()
    result = trainer.train(resume_from_checkpoint=str(ckpt) if ckpt is not None else None)
    summary["train_seconds"] = round(time.time() - t_train, 1)
    raise_if_stopped(trainer, out, summary)
    summary["global_step"] = trainer.state.global_step
    summary["train_metrics"] = dict(result.metrics)
    pipeline.after_train(ctx, trainer)

    def describe_after(after, before):
        return (pipeline.describe(after) + describe_domains(after)
                + (f"; before {pipeline.describe_before(before)}" if before else ""))

    return finish_run(trainer, ctx.tokenizer, recipe, out, summary, t_start=t_start, metrics_path=metrics_path,
                      scorer=ctx.scorer, eval_ds=ctx.eval_ds, ev_kw=ev_kw, describe_after=describe_after)

"""``posttrain run`` for ``algorithm: sft``: the supervised part of the run skeleton.  Glue only.

recipe -> demonstrations (TRL's formats: ``prompt`` / ``completion``, ``messages`` or ``text``; e.g.
``arithmetic_sft``) -> policy -> :class:`~posttrain.trainers.sft.PosttrainSFTTrainer` (TRL's SFT with per-sample
weights: a ``weight`` column, ``weighting.samples``) -> greedy evaluation before / after of ``data.eval``'s prompts
with the scoring reward (``eval.reward``, default ``rewards.0``), as GRPO does, plus the held-out token-mean NLL of
``data.eval``'s completions when it is SFT data (``summary.json``: ``eval.heldout_nll.before|after``).
"""
from __future__ import annotations

from posttrain.errors import UserError

from .checks import sft_format
from .skeleton import Pipeline, RunContext, build_rewards, build_trl_args, is_main, load_policy, lora_config, run_pipeline


class SFTPipeline(Pipeline):
    name = "sft"

    def trl_config_class(self):
        from trl import SFTConfig

        return SFTConfig

    def setup(self, ctx: RunContext) -> None:
        recipe = ctx.recipe
        ctx.model, ctx.tokenizer = load_policy(recipe)
        if ctx.eval_ds is not None and recipe.eval.enabled:
            spec = recipe.eval.reward or recipe.rewards[0]  # the pre-flight checked that there is one
            where = "eval.reward" if recipe.eval.reward else "rewards"
            ctx.scorer = build_rewards([spec], where, ctx.tokenizer)[0]

    def trl_args(self, ctx: RunContext):
        args = build_trl_args(ctx.recipe, ctx.out, config_cls=self.trl_config_class())
        args.prediction_loss_only = True  # the held-out NLL needs no logits
        return args

    def _heldout(self, ctx: RunContext):
        ds = ctx.eval_ds
        text_field = str(ctx.recipe.train.get("dataset_text_field") or "text")
        if ds is None or not ctx.recipe.eval.enabled or sft_format(ds, text_field) is None:
            return None
        return ds

    def make_trainer(self, ctx: RunContext, args, callbacks: list):
        from posttrain.trainers.sft import PosttrainSFTTrainer

        recipe = ctx.recipe
        try:
            trainer = PosttrainSFTTrainer(
                model=ctx.model, args=args, train_dataset=ctx.train_ds, processing_class=ctx.tokenizer,
                peft_config=lora_config(recipe.model.lora), callbacks=callbacks,
                sample_strategies=[s.model_dump() for s in recipe.weighting.samples],
                max_nonfinite_steps=recipe.reliability.max_nonfinite_steps, diagnostics_dir=ctx.out / "diagnostics",
                domains=ctx.extra.get("domains"),
            )
        except ValueError as exc:  # TRL's own configuration / data checks
            raise UserError(f"train: {str(exc).splitlines()[0]}") from None
        heldout = self._heldout(ctx)
        if heldout is not None and not ctx.resume:
            nll = trainer.heldout_nll(heldout)
            ctx.summary["eval"].setdefault("heldout_nll", {})["before"] = nll
            if is_main():
                print(f"[posttrain] held-out NLL before: {nll:.4f}", flush=True)
        return trainer

    def after_train(self, ctx: RunContext, trainer) -> None:
        heldout = self._heldout(ctx)
        if heldout is None:
            return
        nll = trainer.heldout_nll(heldout)
        ctx.summary["eval"].setdefault("heldout_nll", {})["after"] = nll
        if is_main():
            before = ctx.summary["eval"]["heldout_nll"].get("before")
            print(f"[posttrain] held-out NLL after: {nll:.4f}" + (f"; before {before:.4f}" if before is not None
                                                                   else ""), flush=True)

    def describe(self, ev: dict) -> str:
        return f"mean score {_fmt(ev['mean_score'])}, accuracy {ev['accuracy']:.3f} (n={ev['n']})"

    def describe_before(self, ev: dict) -> str:
        return f"{_fmt(ev['mean_score'])} / {ev['accuracy']:.3f}"


def _fmt(v) -> str:
    return "n/a" if v is None else f"{v:.3f}"  # None: no reply could be scored


def run_sft_recipe(recipe, *, recipe_path: str, overrides=(), resume: bool = False) -> dict:
    return run_pipeline(SFTPipeline(), recipe, recipe_path=recipe_path, overrides=overrides, resume=resume)

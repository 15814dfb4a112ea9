"""TRL config objects from a recipe (shared by the pre-flight checks, every run pipeline and the reward-model stage)."""
from __future__ import annotations

from pathlib import Path

from posttrain.errors import UserError


def build_trl_args(recipe, out: Path, config_cls=None, *, where: str = "train"):
    """The TRL config (``GRPOConfig`` by default, ``DPOConfig`` / ``RewardConfig``) for ``recipe.train`` with
    posttrain's CPU defaults and the fields it sets from its own sections.  A value TRL rejects is one line naming
    ``where``.  Writes nothing (TRL creates ``output_dir`` only when it saves)."""
    import torch
    from trl import GRPOConfig

    config_cls = config_cls or GRPOConfig  # DPOConfig / RewardConfig take the same defaults

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
    )
    # the reward-model stage may set its own logging_steps (reward_model.train); otherwise output.logging_steps
    train.setdefault("logging_steps", recipe.output.logging_steps)
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

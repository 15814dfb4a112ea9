"""Scale-out glue: DeepSpeed configs for the recipe's ``distributed`` section, and the ZeRO-3-aware end of a run.

Configs ship as JSON in ``posttrain/configs`` (``zero2.json``, ``zero2_offload.json``, ``zero3.json``,
``zero3_offload.json``).  Their ``"auto"`` values are filled in by the HF Trainer from the TRL config, so
bf16/fp16, batch sizes, gradient accumulation and clipping always agree with the trainer (a mismatch makes
DeepSpeed raise, environment.md).  A user config (``distributed.config``) is checked against the trainer config
when the recipe is built, so a mismatch is one line before any model loads, not a traceback after it.

With ZeRO-3 every rank holds only a shard of each parameter.  Work that needs the whole model (greedy
evaluation, saving a merged LoRA model) must therefore run on *every* rank inside :func:`full_policy`, which
gathers the parameters; rank-0-only generation on a sharded model would hang in the first all-gather.
"""
from __future__ import annotations

import contextlib
import copy
import json
import os
from pathlib import Path
from typing import Iterator, Optional

from posttrain.errors import UserError

CONFIGS_DIR = Path(__file__).resolve().parent / "configs"
# the DeepSpeed keys the HF Trainer fills from / checks against the TRL config
_PRECISION_KEYS = ("bf16", "fp16")


def shipped_config_path(zero_stage: int, offload: bool = False) -> Path:
    if zero_stage not in (2, 3):
        raise UserError(f"distributed.zero_stage: {zero_stage} has no DeepSpeed config (use 2 or 3, or 0 for none)")
    return CONFIGS_DIR / f"zero{zero_stage}{'_offload' if offload else ''}.json"


def deepspeed_config(section) -> dict:
    """The DeepSpeed config dict for a recipe's ``distributed`` section (a fresh copy every call)."""
    if section.config:
        path = Path(section.config).expanduser()
        where = "distributed.config"
    else:
        path = shipped_config_path(section.zero_stage, section.offload)
        where = f"distributed.zero_stage={section.zero_stage}"
    try:
        cfg = json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{where}: file '{path}' does not exist") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"{where}: cannot read '{path}' as JSON: {str(exc).splitlines()[0]}") from None
    if not isinstance(cfg, dict):
        raise UserError(f"{where}: '{path}' must hold a JSON object")
    return cfg


def zero_stage_of(cfg: dict) -> int:
    return int((cfg.get("zero_optimization") or {}).get("stage", 0))


def apply_deepspeed(train: dict, section) -> dict:
    """Put the DeepSpeed config into the TRL kwargs ``train`` (in place) and make precision agree.

    A config that sets ``bf16.enabled`` / ``fp16.enabled`` to true/false decides the trainer's ``bf16`` / ``fp16``
    unless the recipe sets them under ``train`` too; if both are set and disagree this is a one-line error.
    """
    cfg = deepspeed_config(section)
    for key in _PRECISION_KEYS:
        ds_val = (cfg.get(key) or {}).get("enabled", "auto")
        if ds_val == "auto":
            continue
        if not isinstance(ds_val, bool):
            raise UserError(f"distributed.config: '{key}.enabled' must be true, false or \"auto\", got {ds_val!r}")
        if key in train and bool(train[key]) != ds_val:
            raise UserError(f"train.{key}={train[key]} disagrees with the DeepSpeed config ({key}.enabled="
                            f"{str(ds_val).lower()}); set it to \"auto\" in the config or change train.{key}")
        train[key] = ds_val
    train["deepspeed"] = cfg
    return train


def check_deepspeed_mismatches(args) -> None:
    """After the TRL config is built: HF's own comparison of the DeepSpeed config with it, as one line."""
    hf_cfg = getattr(args, "hf_deepspeed_config", None)
    mismatches = getattr(hf_cfg, "mismatches", None)
    if mismatches:
        items = "; ".join(m.lstrip("- ").strip() for m in mismatches)
        raise UserError(f"distributed.config disagrees with the train section ({items}); use \"auto\" for these keys")


def is_zero3(trainer) -> bool:
    plugin = getattr(getattr(trainer.accelerator, "state", None), "deepspeed_plugin", None)
    return bool(getattr(trainer, "is_deepspeed_enabled", False) and plugin is not None and plugin.zero_stage == 3)


@contextlib.contextmanager
def full_policy(trainer) -> Iterator:
    """Yield the unwrapped policy with all its parameters present.  Every rank must enter.

    ZeRO-3: the parameters are all-gathered on every rank and DeepSpeed's forward hooks are removed for the
    duration (TRL's ``unwrap_model_for_generation``, the path GRPO itself uses for generation), so one rank may run
    forward passes alone.  Changes to the weights inside the context are discarded on exit.  Anything else: the
    unwrapped model (ZeRO-0/1/2 and DDP keep a full replica on every rank).
    """
    if not is_zero3(trainer):
        yield trainer.accelerator.unwrap_model(trainer.model)
        return
    from trl.models.utils import unwrap_model_for_generation

    engine = trainer.model_wrapped
    with unwrap_model_for_generation(engine, trainer.accelerator, gather_deepspeed3_params=True) as model:
        # TRL removes the per-module hooks, but not DeepSpeed's start-of-forward hook on the top module, whose
        # reset_step() checks with the other ranks (a collective): take it off while one rank runs alone.
        offload = getattr(engine.optimizer, "parameter_offload", engine.optimizer)
        handle = getattr(offload, "fwd_pre_hook", None)
        hook = offload.module._forward_pre_hooks.get(handle.id) if handle is not None else None
        if hook is not None:
            handle.remove()
        try:
            yield model
        finally:
            if hook is not None:
                offload.fwd_pre_hook = offload.module.register_forward_pre_hook(hook)


def _merged_state_dict(peft_model) -> dict:
    """Weights of ``peft_model`` with the LoRA update merged, keyed like the base model, without changing the
    module tree (``merge_adapter`` / ``unmerge_adapter`` instead of ``merge_and_unload``)."""
    base = peft_model.get_base_model()
    peft_model.merge_adapter()
    try:
        out = {}
        for name, tensor in base.state_dict().items():
            if "lora_" in name or "lora_magnitude" in name:
                continue
            out[name.replace(".base_layer.", ".")] = tensor.detach().cpu().clone()
    finally:
        peft_model.unmerge_adapter()
    return out


def save_final_model(trainer, tokenizer, path: Path, *, is_main: bool) -> None:
    """Save the trained policy (LoRA merged) to ``path``.  Every rank must call it.

    - ZeRO-3 without LoRA: ``trainer.save_model`` — DeepSpeed consolidates the shards on rank 0
      (``stage3_gather_16bit_weights_on_model_save``, set in the shipped configs).
    - ZeRO-3 with LoRA: inside :func:`full_policy` rank 0 merges the adapters into a copy of the weights and saves
      that state dict with the base model's ``save_pretrained`` (``trainer.save_model`` would save the adapter only).
    - otherwise: rank 0 merges (``merge_and_unload``) and saves, as a single process does.
    """
    path = Path(path)
    if is_zero3(trainer):
        unwrapped = trainer.accelerator.unwrap_model(trainer.model)
        if not hasattr(unwrapped, "merge_adapter"):
            trainer.save_model(str(path))
        else:
            with full_policy(trainer) as model:
                if is_main:
                    state = _merged_state_dict(model)
                    model.get_base_model().save_pretrained(path, state_dict=state, safe_serialization=True)
        if is_main:
            tokenizer.save_pretrained(path)
        trainer.accelerator.wait_for_everyone()
        return
    if is_main:
        policy = trainer.accelerator.unwrap_model(trainer.model)
        to_save = policy.merge_and_unload() if hasattr(policy, "merge_and_unload") else policy
        to_save.save_pretrained(path, safe_serialization=True)
        tokenizer.save_pretrained(path)
    trainer.accelerator.wait_for_everyone()


# DeepSpeed's CPU shared-memory allreduce (deepspeed/ops/csrc/cpu/comm/shm.cpp, used when every rank is on one node,
# LOCAL_SIZE == WORLD_SIZE) creates one file per rank, /dev/shm/deepspeed_allreduce_buffer_<uid>_<addr>_<port>_<rank>
# (69 MB in deepspeed 0.19.8), and never unlinks it: each 2-process run leaks ~140 MB of RAM until reboot. 167 leaked
# files (11 GB) OOM-killed training runs on these 24 GiB machines. Removed at rank exit and by `posttrain launch`.
SHM_DIR = Path("/dev/shm")
SHM_PREFIX = "deepspeed_allreduce_buffer"


def remove_shm_allreduce_buffers(*, port, addr: Optional[str] = None, rank=None, shm_dir: Path = SHM_DIR) -> list:
    """Unlink DeepSpeed's shared-memory allreduce files of the run on ``port`` (only ``addr`` / ``rank`` if given);
    returns the removed paths. Safe while ranks still run: a mapped segment outlives its name."""
    pattern = f"{SHM_PREFIX}_{os.getuid()}_{addr if addr is not None else '*'}_{port}_{rank if rank is not None else '*'}"
    removed = []
    for path in shm_dir.glob(pattern):
        try:
            path.unlink()
            removed.append(path)
        except FileNotFoundError:  # another rank or the launcher was first
            pass
    return removed


def register_shm_cleanup() -> bool:
    """In a rank started by a launcher (MASTER_PORT and RANK set): unlink this rank's shared-memory allreduce file
    at exit. Covers the plain ``deepspeed`` launcher, which does not clean up; ``posttrain launch`` also sweeps the
    port after its ranks end (a killed rank runs no atexit)."""
    import atexit

    port, rank = os.environ.get("MASTER_PORT"), os.environ.get("RANK")
    if not port or rank is None:
        return False
    atexit.register(remove_shm_allreduce_buffers, port=port, addr=os.environ.get("MASTER_ADDR", ""), rank=rank)
    return True


def free_port(host: str = "127.0.0.1") -> int:
    import socket

    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def resolve_auto(cfg: dict, *, micro_batch_size: int, grad_accum: int = 1, world_size: int = 1,
                 gradient_clipping: float = 1.0, bf16: bool = False, fp16: bool = False,
                 hidden_size: Optional[int] = None) -> dict:
    """Replace the ``"auto"`` values of a shipped config by explicit ones, for ``deepspeed.initialize`` without the
    HF Trainer (the same values the Trainer would fill in)."""
    cfg = copy.deepcopy(cfg)
    fills = {"train_micro_batch_size_per_gpu": micro_batch_size, "gradient_accumulation_steps": grad_accum,
             "train_batch_size": micro_batch_size * grad_accum * world_size, "gradient_clipping": gradient_clipping}
    for k, v in fills.items():
        if cfg.get(k, "auto") == "auto":
            cfg[k] = v
    for key, val in (("bf16", bf16), ("fp16", fp16)):
        if (cfg.get(key) or {}).get("enabled") == "auto":
            cfg[key]["enabled"] = val
    zero = cfg.get("zero_optimization") or {}
    h = hidden_size or 1024
    auto_h = {"reduce_bucket_size": h * h, "stage3_prefetch_bucket_size": int(0.9 * h * h),
              "stage3_param_persistence_threshold": 10 * h}
    for k, v in auto_h.items():
        if zero.get(k) == "auto":
            zero[k] = v
    left = [k for k, v in _walk(cfg) if v == "auto"]
    if left:
        raise ValueError(f"resolve_auto: no value for {', '.join(left)}")
    return cfg


def _walk(d, prefix=""):
    for k, v in d.items():
        if isinstance(v, dict):
            yield from _walk(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v

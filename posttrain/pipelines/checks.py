"""Pre-flight: everything about a run that can be checked without loading the model's weights or training.

One function, :func:`check_run`, is called by ``posttrain validate`` and at the start of ``posttrain run`` *before
the output directory is touched*, so a bad data file, a missing column, a wrong model path or a TRL value that TRL
would only reject in the middle of its first step is one line (``UserError``, exit code 2) and never costs the
previous run or leaves a stub behind.  The recipe loader has already checked every key, name and type
(``posttrain.recipes.loader``); here come the checks that need files, data or TRL's config classes:

* data: every dataset is built (the builders are offline; ``preferences`` generates and caches its replies once),
  must be a ``datasets.Dataset`` with rows and the columns the algorithm reads (``prompt``; DPO pairs
  ``prompt`` / ``chosen`` / ``rejected``; SFT one of TRL's formats ``prompt`` + ``completion`` / ``messages`` /
  ``text``, and a ``weight`` column of finite numbers >= 0 if there is one; the score columns of
  ``reward_model.source: columns``; ReLIFT's demonstration column, every row non-empty);
* model: ``model.name`` must name a shipped model, an existing model directory, or a hub id that is in the local
  Hugging Face cache or whose hub answers (a path that does not exist fails at once instead of after ~50 s of hub
  retries);
* TRL: the config of every stage (``GRPOConfig`` / ``DPOConfig``, and ``RewardConfig`` for the reward-model stage)
  is built with the values the run will use, so TRL's own ``__post_init__`` checks run now;
* logging backends of ``output.report_to`` must be importable;
* DPO and SFT evaluation need a scoring reward.
"""
from __future__ import annotations

import contextlib
import os
import re
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional
from urllib.parse import urlparse

from posttrain.errors import UserError

PAIR_COLUMNS = ("prompt", "chosen", "rejected")


@dataclass
class Checked:
    """What the checks built and the run reuses (so the data is built once). ``domains``: for a ``data.train``
    mixture, ``(names, initial weights or None)``; ``heldout_ds``: ``data.heldout``."""

    train_ds: Any
    eval_ds: Optional[Any]
    domains: Optional[Any] = None
    heldout_ds: Optional[Any] = None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def build_dataset(spec, where: str):
    """Build ``spec`` (a ``DatasetSpec``) with its registered builder; must give a non-empty ``datasets.Dataset``.
    Any failure of the builder is one line naming ``where`` (``data.train`` / ``data.eval``)."""
    import datasets

    from posttrain.data import DATASETS
    from posttrain.registry import RegistryError

    try:
        builder = DATASETS.get(spec.name)
        ds = builder(**spec.args)
    except (RegistryError, TypeError, ValueError, FileNotFoundError, OSError) as exc:
        raise UserError(f"{where}: {_first_line(exc)}") from None
    except Exception as exc:  # noqa: BLE001 - a user builder's bug is still one line naming the recipe key
        raise UserError(f"{where}: dataset builder '{spec.name}' failed: {type(exc).__name__}: "
                        f"{_first_line(exc)}") from None
    if not isinstance(ds, datasets.Dataset):
        raise UserError(f"{where}: dataset builder '{spec.name}' returned a {type(ds).__name__}, not a "
                        f"datasets.Dataset")
    if len(ds) == 0:
        raise UserError(f"{where}: dataset builder '{spec.name}' returned no rows")
    return ds


def build_domain(entry, where: str):
    """A mixture entry's dataset (``data.train.mixture.<i>`` / ``data.eval.mixture.<i>``); an empty one is one
    line naming the entry and its domain."""
    try:
        return build_dataset(entry, where)
    except UserError as exc:
        if "returned no rows" in str(exc):
            raise UserError(f"{where}: domain '{entry.domain}' is empty (its dataset has no rows)") from None
        raise


def build_eval_dataset(spec, where: str = "data.eval"):
    """``data.eval``: one dataset, or a ``{mixture: [...]}`` of held-out domains concatenated (in order) with a
    ``domain`` column holding each row's domain name. Every part needs a ``prompt`` column."""
    hint = " (evaluation generates from the 'prompt' column)"
    if not hasattr(spec, "mixture"):
        ds = build_dataset(spec, where)
        check_columns(ds, where, ["prompt"], hint)
        return ds
    from posttrain.data.mixture import EVAL_DOMAIN_COLUMN, concat_domains

    parts = []
    for i, entry in enumerate(spec.mixture):
        parts.append(build_domain(entry, f"{where}.mixture.{i}"))
        check_columns(parts[-1], f"{where}.mixture.{i}", ["prompt"], hint)
    try:
        return concat_domains(parts, f"{where}.mixture", column=EVAL_DOMAIN_COLUMN,
                              labels=[e.domain for e in spec.mixture], purpose="evaluated")
    except ValueError as exc:
        raise UserError(_first_line(exc)) from None


def check_columns(ds, where: str, needed, hint: str = "") -> None:
    cols = list(ds.column_names or ())
    missing = [c for c in needed if c not in cols]
    if missing:
        raise UserError(f"{where}: the dataset has no column {', '.join(repr(c) for c in missing)} "
                        f"(columns: {', '.join(cols) or 'none'}){hint}")


def check_weight_column(ds, where: str) -> None:
    """A per-sample ``weight`` column: finite numbers >= 0, no missing values."""
    import math

    for i, v in enumerate(ds["weight"]):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
            raise UserError(f"{where}: column 'weight' must hold finite numbers >= 0; row {i} has {v!r}")


def check_pairs(ds, where: str) -> None:
    """DPO needs preference pairs: ``prompt``, ``chosen``, ``rejected``."""
    cols = set(ds.column_names or ())
    missing = [c for c in PAIR_COLUMNS if c not in cols]
    if missing:
        raise UserError(f"{where}: DPO needs preference pairs with columns prompt, chosen, rejected; "
                        f"missing {', '.join(missing)} (e.g. use data.train.name=preferences)")


def sft_format(ds, text_field: str = "text") -> Optional[str]:
    """Which of TRL 1.16's SFT data formats ``ds`` has (``prompt-completion``, ``messages``, ``text`` or the
    pre-tokenized ``input_ids``), or None."""
    cols = set(ds.column_names or ())
    if {"prompt", "completion"} <= cols:
        return "prompt-completion"
    for fmt, col in (("messages", "messages"), ("messages", "conversations"), ("text", text_field),
                     ("input_ids", "input_ids")):
        if col in cols:
            return fmt
    return None


def check_sft_data(ds, where: str, text_field: str = "text") -> None:
    """SFT needs one of TRL's formats: ``prompt`` + ``completion``, ``messages``, or ``text``."""
    if sft_format(ds, text_field) is None:
        cols = ", ".join(ds.column_names or ()) or "none"
        raise UserError(f"{where}: SFT needs columns prompt and completion, or messages, or {text_field} (TRL's "
                        f"formats); the dataset has {cols} (e.g. use data.train.name=arithmetic_sft)")


def check_demonstrations(ds, configured) -> None:
    """ReLIFT's demonstrations: the column (``relift.demonstration_column``, default ``solution`` / ``answer``) exists
    and no row's demonstration is missing or empty."""
    from posttrain.data.common import DataError, demonstration_column, demonstration_text

    try:
        column = demonstration_column(ds.column_names, configured)
        for i, value in enumerate(ds[column]):
            demonstration_text(value, column, i)
    except DataError as exc:
        raise UserError(f"relift.demonstration_column: data.train: {exc}") from None


def _hub_reachable(timeout: float = 3.0) -> bool:
    try:
        from huggingface_hub import constants

        endpoint = constants.ENDPOINT
    except Exception:  # noqa: BLE001
        endpoint = "https://huggingface.co"
    url = urlparse(endpoint)
    try:
        socket.create_connection((url.hostname or "huggingface.co", url.port or 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def check_model_name(recipe) -> None:
    """``model.name`` can be opened, checked without loading (or converting) any weights."""
    from posttrain.models import ModelLoadError, smollm2_gguf_path

    name = recipe.model.name
    key = name.lower()
    if key in ("smollm2-135m-instruct", "smollm2", "smollm2-135m"):
        from posttrain.models import cache_root

        cached = cache_root(recipe.model.cache_dir) / "models" / "SmolLM2-135M-Instruct" / "config.json"
        if not cached.is_file():
            try:
                smollm2_gguf_path()
            except ModelLoadError as exc:
                raise UserError(f"model.name: {exc}") from None
        return
    if key in ("tiny", "tiny-h32", "tiny-h64"):
        return
    p = Path(name).expanduser()
    if p.exists():
        if not p.is_dir() or not (p / "config.json").is_file():
            raise UserError(f"model.name: model path '{name}' is not a Hugging Face model directory (no config.json)")
        return
    head = name.split("/", 1)[0]
    looks_local = (name.startswith(("/", ".", "~")) or name.count("/") > 1 or "\\" in name
                   or ("/" in name and Path(head).expanduser().is_dir())
                   or name.endswith((".gguf", ".safetensors", ".bin", ".pt", ".json")))
    if looks_local:
        raise UserError(f"model.name: model path '{name}' does not exist")
    if not re.fullmatch(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?", name):
        raise UserError(f"model.name: '{name}' is neither an existing model directory nor a hub model id")
    try:
        from huggingface_hub import constants, try_to_load_from_cache

        cached = try_to_load_from_cache(name, "config.json")
        offline = constants.HF_HUB_OFFLINE
    except Exception:  # noqa: BLE001 - no usable hub client: transformers will report it
        return
    if isinstance(cached, str):
        return
    where = f"model.name: '{name}' is not a local model directory (none at '{p}') and not in the Hugging Face cache"
    if offline:
        raise UserError(f"{where}, and HF_HUB_OFFLINE is set")
    if not _hub_reachable():
        raise UserError(f"{where}, and the hub is unreachable")


def check_report_to(recipe) -> None:
    """Every backend of ``output.report_to`` is one transformers knows and its package is installed
    (:func:`posttrain.tracking.check_report_to`)."""
    from posttrain.tracking import check_report_to as check_backends

    check_backends(recipe.output.report_to)


@contextlib.contextmanager
def _one_process_env():
    """Hide the launcher's rank variables, so that building a TRL config does not join a process group."""
    saved = {k: os.environ.pop(k) for k in _DIST_ENV if k in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


_DIST_ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def check_run(recipe, *, out: Optional[Path] = None, standalone: bool = False) -> Checked:
    """All pre-flight checks of ``recipe`` (see the module docstring).  ``out``: the run directory the TRL config
    names (never created here).  ``standalone`` (``posttrain validate``): build the TRL configs as one process
    even under a launcher's environment; a run builds them as it will train, which also sets up the process group
    that :mod:`posttrain.pipelines.outdirs` synchronises on.  Returns the built datasets."""
    if standalone:
        with _one_process_env():
            return check_run(recipe, out=out)
    from .outdirs import final_dir
    from .trl_args import build_trl_args

    out = Path(out) if out is not None else final_dir(recipe)
    check_report_to(recipe)
    check_model_name(recipe)
    dpo = recipe.algorithm in ("dpo", "reward_model+dpo")
    sft = recipe.algorithm == "sft"
    text_field = str(recipe.train.get("dataset_text_field") or "text")

    def check_train(ds, where):
        if dpo:
            check_pairs(ds, where)
        elif sft:
            check_sft_data(ds, where, text_field)
            if "weight" in (ds.column_names or ()):
                check_weight_column(ds, where)
        else:
            check_columns(ds, where, ["prompt"], " (GRPO generates from the 'prompt' column)")

    mixture = getattr(recipe.data.train, "mixture", None)
    domains = heldout_ds = None
    if mixture is None:
        train_ds = build_dataset(recipe.data.train, "data.train")
        check_train(train_ds, "data.train")
    else:
        from posttrain.data.mixture import concat_domains

        parts = []
        for i, entry in enumerate(mixture):
            where = f"data.train.mixture.{i}"
            parts.append(build_domain(entry, where))
            check_train(parts[-1], where)
        try:
            train_ds = concat_domains(parts)
        except ValueError as exc:
            raise UserError(_first_line(exc)) from None
        weights = [e.weight for e in mixture]
        domains = ([e.domain for e in mixture], None if weights[0] is None else weights)
    if recipe.data.heldout is not None:
        heldout_ds = build_dataset(recipe.data.heldout, "data.heldout")
        if sft:
            check_sft_data(heldout_ds, "data.heldout", text_field)
        else:
            check_columns(heldout_ds, "data.heldout", ["prompt"])
            if not {"answer", "completion"} & set(heldout_ds.column_names or ()):
                raise UserError("data.heldout: GRPO's held-out gradient is the NLL of reference answers: the "
                                f"dataset needs a column 'answer' or 'completion' (columns: "
                                f"{', '.join(heldout_ds.column_names or ())})")
    if not (dpo or sft) and recipe.relift is not None:
        check_demonstrations(train_ds, recipe.relift.demonstration_column)
    eval_ds = None
    if recipe.data.eval is not None:
        eval_ds = build_eval_dataset(recipe.data.eval)
    if (dpo or sft) and eval_ds is not None and recipe.eval.enabled and recipe.eval.reward is None \
            and not recipe.rewards:
        raise UserError(f"eval.reward: {'SFT' if sft else 'DPO'} evaluation needs a scoring reward (eval.reward or "
                        f"rewards.0), or set eval.enabled=false")
    if recipe.algorithm == "reward_model+dpo":
        rm = recipe.reward_model
        if rm.source == "columns":
            for key, col in (("chosen_column", rm.chosen_column), ("rejected_column", rm.rejected_column)):
                if col not in (train_ds.column_names or ()):
                    raise UserError(f"reward_model.{key}: data.train has no column '{col}' "
                                    f"(columns: {', '.join(train_ds.column_names or ())})")
        else:
            from trl import RewardConfig

            build_trl_args(recipe.model_copy(update={"train": dict(rm.train)}), out / "reward_model",
                           config_cls=RewardConfig, where="reward_model.train")
    if dpo:
        from trl import DPOConfig

        build_trl_args(recipe, out, config_cls=DPOConfig)
    elif sft:
        from trl import SFTConfig

        build_trl_args(recipe, out, config_cls=SFTConfig)
    else:
        build_trl_args(recipe, out)
    return Checked(train_ds=train_ds, eval_ds=eval_ds, domains=domains, heldout_ds=heldout_ds)


__all__ = ["Checked", "PAIR_COLUMNS", "build_dataset", "build_domain", "build_eval_dataset",
           "check_columns", "check_model_name", "check_pairs",
           "check_demonstrations", "check_report_to", "check_run", "check_sft_data", "check_weight_column", "sft_format"]

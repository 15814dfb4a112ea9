"""Prompts from local files (jsonl / json / parquet / csv) through ``datasets``; nothing is fetched from a network."""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from .common import SPLITS, DataError, DataFileNotFoundError, check_n, check_seed, in_split, sample_indices

_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}


def _builder_for(path: Path) -> str:
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in (".gz", ".bz2", ".xz", ".zst") and len(suffixes) > 1:
        suffixes = suffixes[:-1]  # datasets decompresses these transparently
    ext = suffixes[-1] if suffixes else ""
    if ext not in _BUILDERS:
        raise DataError(
            f"cannot tell the format of '{path}' from its extension '{ext or '(none)'}'; "
            f"use .jsonl, .json, .parquet or .csv"
        )
    return _BUILDERS[ext]


def _first_line(exc: BaseException) -> str:
    # datasets wraps the real error (e.g. a JSON or Arrow parse error) in DatasetGenerationError; report the cause.
    seen = set()
    while exc.__cause__ is not None and id(exc) not in seen:
        seen.add(id(exc))
        exc = exc.__cause__
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _check_prompt_value(path: Path, key: str, row: int, value: Any) -> None:
    if isinstance(value, str):
        if value.strip():
            return
        raise DataError(f"'{path}': row {row}: column '{key}' is empty")
    if isinstance(value, list) and value and all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and "content" in m for m in value
    ):
        return
    raise DataError(
        f"'{path}': row {row}: column '{key}' must be a string or a list of {{role, content}} messages, "
        f"got {type(value).__name__}"
    )


def load_prompt_file(
    path: str | os.PathLike,
    *,
    prompt_key: str = "prompt",
    split: str | None = None,
    n: int | None = None,
    seed: int = 0,
    heldout_fraction: float = 0.2,
    cache_dir: str | None = None,
):
    """Load prompts from a local ``.jsonl`` / ``.json`` / ``.parquet`` / ``.csv`` file (optionally ``.gz`` etc.)
    with ``datasets.load_dataset`` and return a ``datasets.Dataset`` whose prompt column is named ``prompt``.

    * ``prompt_key``: the column holding the prompt (a string, or a list of ``{"role", "content"}`` messages in
      json/jsonl/parquet); it is renamed to ``prompt``. Preference pairs in TRL's implicit-prompt format
      (``chosen`` / ``rejected`` holding the whole conversation, no ``prompt`` column) get their prompt extracted as
      TRL does (``trl.data_utils.maybe_extract_prompt``). Every other column is kept (TRL hands them to the rewards,
      e.g. an ``answer`` column for ``math_answer``).
    * ``split``: ``None`` (default) → every row in file order; ``"train"`` / ``"heldout"`` → a deterministic
      disjoint split by a hash of the prompt (``heldout_fraction`` held out), as for the built-in datasets.
    * ``n`` / ``seed``: a seeded sample of ``n`` distinct rows (``n`` larger than the rows available is an error).

    Errors (:class:`~posttrain.data.DataError`, one line): missing file, unknown extension, unreadable or malformed
    file (with the parser's first line), no rows, missing prompt column (naming the columns present), a prompt of
    the wrong type.
    """
    if not isinstance(path, (str, os.PathLike)) or not str(path):
        raise DataError(f"file: path must be a file path, got {path!r}")
    p = Path(path).expanduser()
    if not p.exists():
        raise DataFileNotFoundError(f"dataset file '{p}' does not exist")
    if not p.is_file():
        raise DataError(f"dataset path '{p}' is not a file")
    if not os.access(p, os.R_OK):
        raise DataError(f"dataset file '{p}' is not readable (permission denied)")
    if not isinstance(prompt_key, str) or not prompt_key:
        raise DataError(f"file: prompt_key must be a non-empty string, got {prompt_key!r}")
    if split is not None and split not in SPLITS:
        raise DataError(f"file: split must be None, 'train' or 'heldout', got {split!r}")
    if isinstance(heldout_fraction, bool) or not isinstance(heldout_fraction, (int, float)) or not 0 < heldout_fraction < 1:
        raise DataError(f"file: heldout_fraction must be a number strictly between 0 and 1, got {heldout_fraction!r}")
    check_n("file", n)
    check_seed("file", seed)
    builder = _builder_for(p)
    if p.stat().st_size == 0:
        raise DataError(f"dataset file '{p}' is empty")

    from datasets import load_dataset
    from datasets.utils.logging import disable_progress_bar, enable_progress_bar, is_progress_bar_enabled

    bars = is_progress_bar_enabled()
    disable_progress_bar()
    ds_logger = logging.getLogger("datasets")
    level = ds_logger.level
    ds_logger.setLevel(logging.CRITICAL)  # datasets also logs parse failures; we report them once, below
    try:
        ds = load_dataset(builder, data_files=str(p), split="train", cache_dir=cache_dir)
    except Exception as exc:  # noqa: BLE001 - any parser failure is one line naming the file
        raise DataError(f"cannot read '{p}' as {builder}: {_first_line(exc)}") from None
    finally:
        ds_logger.setLevel(level)
        if bars:
            enable_progress_bar()

    if len(ds) == 0:
        raise DataError(f"dataset file '{p}' has no rows")
    if prompt_key == "prompt" and {"chosen", "rejected"} <= set(ds.column_names):
        # TRL's implicit-prompt preference format: the prompt is the shared start of chosen and rejected (TRL's own
        # maybe_extract_prompt, as its DPOTrainer applies it; a conversational 'prompt' column is kept as is)
        from trl.data_utils import maybe_extract_prompt

        ds = ds.map(maybe_extract_prompt, desc=None)
    if prompt_key not in ds.column_names:
        raise DataError(
            f"dataset file '{p}' has no column '{prompt_key}'; columns present: {', '.join(ds.column_names)}"
        )
    if prompt_key != "prompt":
        if "prompt" in ds.column_names:
            raise DataError(
                f"dataset file '{p}' has both '{prompt_key}' and 'prompt' columns; rename one or use prompt_key='prompt'"
            )
        ds = ds.rename_column(prompt_key, "prompt")
    for i, value in enumerate(ds["prompt"]):
        _check_prompt_value(p, prompt_key, i, value)

    indices = list(range(len(ds)))
    if split is not None:
        prompts = ds["prompt"]
        indices = [
            i for i in indices
            if in_split("file|" + json.dumps(prompts[i], sort_keys=True, ensure_ascii=False), split, heldout_fraction)
        ]
        if not indices:
            raise DataError(f"dataset file '{p}': the {split} split is empty ({len(ds)} rows); change heldout_fraction")
    if n is not None:
        if n > len(indices):
            raise DataError(f"file: asked for n={n} rows but '{p}' has only {len(indices)}"
                            + (f" in the {split} split" if split else ""))
        chosen = sample_indices(len(indices), n, seed, unique=True, owner="file", what="rows")
        indices = [indices[i] for i in chosen]
    if indices != list(range(len(ds))):
        ds = ds.select(indices)
    return ds

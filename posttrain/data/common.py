"""Helpers shared by the dataset builders: deterministic splits, seeded sampling, prompt formats, errors."""
from __future__ import annotations

import hashlib
import random
from typing import Any

SPLITS = ("train", "heldout")
FORMATS = ("conversational", "plain")
_SALT = "posttrain-split-v1"


class DataError(ValueError):
    """A dataset could not be built or loaded; the message is one line naming the argument, file or column."""


class DataFileNotFoundError(DataError, FileNotFoundError):
    """The dataset file does not exist."""


def split_bucket(key: str) -> float:
    """Deterministic position of ``key`` in [0, 1) (SHA-256, independent of Python's hash seed and of the seed)."""
    digest = hashlib.sha256(f"{_SALT}|{key}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def in_split(key: str, split: str, heldout_fraction: float) -> bool:
    """``key`` belongs to ``heldout`` iff its bucket < ``heldout_fraction``, else to ``train``.

    The assignment depends only on the key, never on the seed, the range or ``n``: train and held-out are disjoint
    for every seed, and a held-out set for fraction f is contained in the held-out set for any larger f."""
    held = split_bucket(key) < heldout_fraction
    return held if split == "heldout" else not held


def check_split_args(owner: str, split: str, heldout_fraction: float) -> None:
    if split not in SPLITS:
        raise DataError(f"{owner}: split must be 'train' or 'heldout', got {split!r}")
    if isinstance(heldout_fraction, bool) or not isinstance(heldout_fraction, (int, float)) or not (
        0.0 < heldout_fraction < 1.0
    ):
        raise DataError(f"{owner}: heldout_fraction must be a number strictly between 0 and 1, got {heldout_fraction!r}")


def check_n(owner: str, n: Any) -> None:
    if n is None:
        return
    if isinstance(n, bool) or not isinstance(n, int) or n <= 0:
        raise DataError(f"{owner}: n must be a positive integer or None (all), got {n!r}")


def check_seed(owner: str, seed: Any) -> None:
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise DataError(f"{owner}: seed must be an integer, got {seed!r}")


def check_format(owner: str, fmt: str) -> None:
    if fmt not in FORMATS:
        raise DataError(f"{owner}: format must be 'conversational' or 'plain', got {fmt!r}")


def check_opt_str(owner: str, arg: str, value: Any) -> None:
    if value is not None and not isinstance(value, str):
        raise DataError(f"{owner}: {arg} must be a string or None, got {type(value).__name__} {value!r}")


def sample_indices(
    pool_size: int, n: int | None, seed: int, *, unique: bool, owner: str, what: str,
    hint: str = "widen the range or change heldout_fraction",
) -> list[int]:
    """Seeded choice of ``n`` indices from ``range(pool_size)`` (all, shuffled, when ``n`` is None).

    ``unique=True``: without replacement; ``n`` larger than the pool is an error. ``unique=False``: when ``n``
    exceeds the pool, successive shuffled passes over the pool are concatenated, so every item appears
    ``n // pool_size`` or one more times (no item is favoured)."""
    if pool_size == 0:
        raise DataError(f"{owner}: no {what} in this split; {hint}")
    rng = random.Random(seed)
    if n is None:
        order = list(range(pool_size))
        rng.shuffle(order)
        return order
    if n > pool_size and unique:
        raise DataError(
            f"{owner}: asked for n={n} distinct {what} but there are only {pool_size}; lower n, {hint}, "
            f"or pass unique=False to allow repeats"
        )
    out: list[int] = []
    while len(out) < n:
        order = list(range(pool_size))
        rng.shuffle(order)
        out.extend(order[: n - len(out)])
    return out


def chat_prompt(user: str, *, system: str | None = None, prefill: str | None = None) -> list[dict[str, str]]:
    msgs = []
    if system:
        msgs.append({"role": "system", "content": system})
    msgs.append({"role": "user", "content": user})
    if prefill:
        msgs.append({"role": "assistant", "content": prefill})
    return msgs


def render_prompt(prompt: Any, tokenizer: Any, **template_kwargs) -> str:
    """The text a model should continue, for either prompt format.

    A string is returned as is. A conversation ending with a user (or tool) message gets the chat template with
    ``add_generation_prompt=True``; one ending with an assistant message is a **pre-fill** and gets
    ``continue_final_message=True`` (the open assistant turn is continued, not closed).

    Use it for generation outside TRL (evaluation), and note that TRL 1.16's ``GRPOTrainer._tokenize_prompts``
    always passes ``add_generation_prompt=True``: given a pre-filled conversation it closes the assistant turn and
    opens a new one, so the pre-fill is lost. Either override ``_tokenize_prompts`` to render with this function,
    or build the dataset with ``format="plain", tokenizer=tok`` (the chat template is then applied here, once).
    """
    if isinstance(prompt, str):
        return prompt
    if not isinstance(prompt, (list, tuple)) or not prompt:
        raise DataError(f"prompt must be a string or a non-empty list of messages, got {type(prompt).__name__}")
    last_role = prompt[-1].get("role") if isinstance(prompt[-1], dict) else None
    if last_role == "assistant":
        return tokenizer.apply_chat_template(
            list(prompt), tokenize=False, add_generation_prompt=False, continue_final_message=True, **template_kwargs
        )
    return tokenizer.apply_chat_template(list(prompt), tokenize=False, add_generation_prompt=True, **template_kwargs)


def resolve_tokenizer(tokenizer: Any):
    """A tokenizer object as is; a string is loaded with ``posttrain.models.load_tokenizer`` (offline names such as
    the SmolLM2 alias, local dirs)."""
    if tokenizer is None or not isinstance(tokenizer, str):
        return tokenizer
    from posttrain.models import load_tokenizer  # lazy: data must not import transformers unless asked

    return load_tokenizer(tokenizer)


#: Columns holding a reference solution, in the order they are looked for (ReLIFT's demonstrations).
DEMONSTRATION_COLUMNS = ("solution", "answer")


def demonstration_column(columns, configured: str | None = None) -> str:
    """The column of a prompt dataset holding each row's demonstration: ``configured`` if given (it must exist),
    else the first of :data:`DEMONSTRATION_COLUMNS` present. :class:`DataError` (one line) when there is none."""
    cols = list(columns or ())
    if configured is not None:
        if configured not in cols:
            raise DataError(f"the dataset has no column '{configured}' (columns: {', '.join(cols) or 'none'})")
        return configured
    for name in DEMONSTRATION_COLUMNS:
        if name in cols:
            return name
    raise DataError(f"the dataset has neither a 'solution' nor an 'answer' column to take demonstrations from "
                    f"(columns: {', '.join(cols) or 'none'}); name one")


def demonstration_text(value: Any, column: str, row: int) -> str:
    """A row's demonstration as text (numbers become their string); :class:`DataError` when missing or empty."""
    if value is None or isinstance(value, bool) or not isinstance(value, (str, int, float)) or not str(value).strip():
        raise DataError(f"column '{column}' has no demonstration in row {row} (got {value!r})")
    return str(value)

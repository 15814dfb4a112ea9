"""Shared plumbing for reward functions: TRL's calling convention, text extraction, argument checks.

TRL 1.16 (``GRPOTrainer._calculate_rewards``) calls every reward function as::

    fn(prompts=[...], completions=[...], completion_ids=[[int, ...], ...],
       **dataset_columns, trainer_state=..., log_extra=..., log_metric=...)

and expects ``list[float | None]`` with one entry per completion (``None`` = not applicable, TRL turns it into NaN
and leaves that reward out for that sample). ``completions`` is a list of ``str`` for plain-text prompts and a list
of message lists ``[{"role": "assistant", "content": str}]`` for conversational prompts; the content holds only the
generated continuation (never a pre-filled assistant prefix). ``completion_ids`` holds the generated token ids,
cut just after the first EOS token, so a completion that stopped by itself ends with an EOS id and one that hit
``max_completion_length`` does not.

Every reward here is an instance of a :class:`RewardFunction` subclass: a picklable callable with a ``__name__``
(TRL logs ``rewards/<__name__>/mean``), built by a *factory* registered in :data:`posttrain.rewards.REWARDS`.
"""
from __future__ import annotations

import math
from typing import Any, Iterable, Sequence


class RewardFunction:
    """Base class: a callable with TRL's reward signature.

    Subclasses implement :meth:`score`, which receives the completion texts (already extracted from either
    completion format) and the remaining keyword arguments, and returns one ``float`` (or ``None``) per completion.
    """

    default_name = "reward"
    #: token ids that end a completion (set by the factory's ``eos_token_id`` or by :meth:`bind_tokenizer`)
    eos_token_ids: tuple[int, ...] | None = None

    def __init__(self, name: str | None = None):
        if name is not None:
            check_type(self.default_name, "name", name, str)
            if not name.strip():
                raise ValueError(f"{self.default_name}: name must be a non-empty string")
        self.__name__ = name or self.default_name

    def __call__(self, prompts=None, completions=None, completion_ids=None, **kwargs) -> list[float | None]:
        if completions is None:
            raise TypeError(f"reward '{self.__name__}' was called without completions=")
        texts = [completion_text(c) for c in completions]
        if completion_ids is not None and len(completion_ids) != len(texts):
            raise ValueError(
                f"reward '{self.__name__}': got {len(completion_ids)} completion_ids for {len(texts)} completions"
            )
        if prompts is not None and len(prompts) != len(texts):
            raise ValueError(f"reward '{self.__name__}': got {len(prompts)} prompts for {len(texts)} completions")
        ids = None if completion_ids is None else [_as_int_list(x) for x in completion_ids]
        out = self.score(texts, prompts=prompts, completion_ids=ids, **kwargs)
        return [None if r is None else float(r) for r in out]

    def score(self, texts: list[str], *, prompts, completion_ids, **kwargs) -> list[float | None]:
        raise NotImplementedError

    def bind_tokenizer(self, tokenizer: Any = None, *, eos_token_ids: Iterable[int] | int | None = None) -> None:
        """Give the reward the EOS id(s) it needs to tell a finished completion from a cut-off one.

        Does nothing if the factory already received ``eos_token_id``. Trainers call this after loading the tokenizer
        (``build_reward(..., tokenizer=tok)`` does it for you). Pass the same ids as TRL's ``eos_token_ids``
        (the generation config's EOS ids) when they differ from ``tokenizer.eos_token_id``.
        """
        if self.eos_token_ids is not None:
            return
        if eos_token_ids is None and tokenizer is not None:
            eos_token_ids = getattr(tokenizer, "eos_token_id", None)
        if eos_token_ids is not None:
            self.eos_token_ids = normalize_eos(self.__name__, eos_token_ids)

    def _ended_with_eos(self, ids: Sequence[int]) -> bool:
        if self.eos_token_ids is None:
            raise ValueError(
                f"reward '{self.__name__}' needs the EOS token id: pass eos_token_id=... in its args "
                f"or build it with build_reward(..., tokenizer=tokenizer)"
            )
        return len(ids) > 0 and ids[-1] in self.eos_token_ids

    def _token_count(self, text: str, ids: Sequence[int] | None) -> int:
        """Completion length in tokens: generated ids without a final EOS, else whitespace-separated words."""
        if ids is None:
            return len(text.split())
        n = len(ids)
        if n and self.eos_token_ids is not None and ids[-1] in self.eos_token_ids:
            n -= 1
        return n

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in sorted(vars(self).items()) if k != "__name__")
        return f"{type(self).__name__}(name={self.__name__!r}{', ' + params if params else ''})"


# --------------------------------------------------------------------------------------------------- text helpers
def _content_text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content blocks: [{"type": "text", "text": ...}, ...]
        parts = []
        for block in content:
            if isinstance(block, str):
                parts.append(block)
            elif isinstance(block, dict) and block.get("type", "text") == "text":
                parts.append(str(block.get("text", "")))
        return "".join(parts)
    return str(content)


def completion_text(completion: Any) -> str:
    """Text of one completion, whatever the format.

    ``str`` → itself; a message dict → its content; a list of messages → the content of the last assistant message
    (the final answer after any tool turns; the last message if none has role ``assistant``); ``None`` → ``""``.
    """
    if completion is None:
        return ""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        return _content_text(completion.get("content"))
    if isinstance(completion, (list, tuple)):
        if not completion:
            return ""
        messages = [m for m in completion if isinstance(m, dict)]
        assistant = [m for m in messages if m.get("role") == "assistant"]
        chosen = (assistant or messages or [None])[-1]
        return "" if chosen is None else _content_text(chosen.get("content"))
    return str(completion)


def prompt_text(prompt: Any) -> str:
    """Text of one prompt: a string as is; for a conversation, the content of the last user message
    (so an assistant pre-fill or a system message does not count); ``None`` → ``""``."""
    if prompt is None:
        return ""
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, (list, tuple)):
        messages = [m for m in prompt if isinstance(m, dict)]
        users = [m for m in messages if m.get("role") == "user"]
        chosen = (users or messages or [None])[-1]
        return "" if chosen is None else _content_text(chosen.get("content"))
    if isinstance(prompt, dict):
        return _content_text(prompt.get("content"))
    return str(prompt)


def _as_int_list(ids: Any) -> list[int]:
    if ids is None:
        return []
    if hasattr(ids, "tolist"):  # torch / numpy
        ids = ids.tolist()
    return [int(i) for i in ids]


def column(name: str, kwargs: dict, key: str, n: int) -> list:
    """Dataset column ``key`` from the reward kwargs, checked to have one value per completion."""
    if key not in kwargs:
        present = sorted(k for k in kwargs if k not in ("trainer_state", "log_extra", "log_metric", "environments"))
        raise ValueError(
            f"reward '{name}' needs the dataset column '{key}', which was not passed; "
            f"columns present: {', '.join(present) or '(none)'}"
        )
    values = kwargs[key]
    if isinstance(values, (str, bytes)) or not hasattr(values, "__len__"):
        values = [values] * n
    if len(values) != n:
        raise ValueError(f"reward '{name}': column '{key}' has {len(values)} values for {n} completions")
    return list(values)


# ------------------------------------------------------------------------------------------------ argument checks
def check_type(owner: str, arg: str, value: Any, types, *, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(types, type):
        types = (types,)
    bad_bool = isinstance(value, bool) and bool not in types
    if bad_bool or not isinstance(value, types):
        names = " or ".join(t.__name__ for t in types)
        raise TypeError(f"{owner}: {arg} must be {names}, got {type(value).__name__} {value!r}")


def check_choice(owner: str, arg: str, value: Any, choices: Sequence[str]) -> None:
    if value not in choices:
        opts = ", ".join(repr(c) for c in choices)
        raise ValueError(f"{owner}: {arg} must be one of {opts}, got {value!r}")


def check_positive_int(owner: str, arg: str, value: Any, *, allow_zero: bool = False, allow_none=False) -> None:
    if value is None and allow_none:
        return
    check_type(owner, arg, value, int)
    if value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"{owner}: {arg} must be {'>= 0' if allow_zero else '> 0'}, got {value}")


def check_finite(owner: str, arg: str, value: Any) -> float:
    check_type(owner, arg, value, (int, float))
    if not math.isfinite(value):
        raise ValueError(f"{owner}: {arg} must be finite, got {value}")
    return float(value)


def normalize_eos(owner: str, eos: Any) -> tuple[int, ...] | None:
    """``int`` or list of ``int`` → tuple of ids (``None`` stays ``None``)."""
    if eos is None:
        return None
    if isinstance(eos, int) and not isinstance(eos, bool):
        return (eos,)
    if isinstance(eos, (list, tuple, set)) and eos and all(isinstance(i, int) and not isinstance(i, bool) for i in eos):
        return tuple(eos)
    raise TypeError(f"{owner}: eos_token_id must be an int or a non-empty list of ints, got {eos!r}")

"""Shape-of-the-text rewards: format (regex), brevity, length penalty, termination."""
from __future__ import annotations

import re

from .base import RewardFunction, check_choice, check_positive_int, check_type, normalize_eos
from .registry import register_reward

#: "just a number": optional sign, digits (thousands commas allowed), optional decimals, optional final period.
NUMBER_ONLY = r"[-+\u2212]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?\.?"

_FLAG_NAMES = {"i": re.IGNORECASE, "m": re.MULTILINE, "s": re.DOTALL, "x": re.VERBOSE}


class FormatReward(RewardFunction):
    default_name = "format_reward"

    def __init__(self, pattern: str, how: str, flags: int, strip: bool, name: str | None):
        super().__init__(name)
        self.pattern = pattern
        self.how = how
        self.strip = strip
        self._regex = re.compile(pattern, flags)

    def score(self, texts, *, prompts, completion_ids, **kwargs):
        match = getattr(self._regex, self.how)
        return [1.0 if match(t.strip() if self.strip else t) else 0.0 for t in texts]


@register_reward("format_reward")
def format_reward(
    *,
    pattern: str = NUMBER_ONLY,
    how: str = "fullmatch",
    flags: str = "",
    strip: bool = True,
    name: str | None = None,
) -> FormatReward:
    """1.0 if the completion matches the regular expression ``pattern``, else 0.0.

    ``how``: ``fullmatch`` (default; the whole text must match), ``match`` (at the start) or ``search`` (anywhere).
    ``flags``: letters from ``i`` (ignore case), ``m`` (multiline), ``s`` (dot matches newline), ``x`` (verbose).
    ``strip`` removes surrounding whitespace first. The default pattern accepts "just a number" (``42``, ``-3``,
    ``1,234``, ``2.5``, ``7.``). An empty completion scores 1 only if the pattern matches the empty string.
    Range: {0, 1}. An invalid pattern is a ``ValueError`` at construction.
    """
    owner = "format_reward"
    check_type(owner, "pattern", pattern, str)
    check_type(owner, "how", how, str)
    check_choice(owner, "how", how, ("fullmatch", "match", "search"))
    check_type(owner, "flags", flags, str)
    check_type(owner, "strip", strip, bool)
    value = 0
    for ch in flags:
        if ch not in _FLAG_NAMES:
            raise ValueError(f"{owner}: flags may only contain the letters i, m, s, x; got {flags!r}")
        value |= _FLAG_NAMES[ch]
    try:
        re.compile(pattern, value)
    except re.error as exc:
        raise ValueError(f"{owner}: pattern {pattern!r} is not a valid regular expression: {exc}") from None
    return FormatReward(pattern, how, value, strip, name)


class Brevity(RewardFunction):
    default_name = "brevity"

    def __init__(self, max_tokens: int, target_tokens: int, eos_token_id, name: str | None, min_tokens: int = 0):
        super().__init__(name)
        self.max_tokens = max_tokens
        self.target_tokens = target_tokens
        self.min_tokens = min_tokens
        self.eos_token_ids = normalize_eos(self.default_name, eos_token_id)

    def score(self, texts, *, prompts, completion_ids, **kwargs):
        out = []
        for i, text in enumerate(texts):
            n = self._token_count(text, None if completion_ids is None else completion_ids[i])
            if n < self.min_tokens:
                out.append(n / self.min_tokens)
            elif n <= self.target_tokens:
                out.append(1.0)
            elif n >= self.max_tokens:
                out.append(0.0)
            else:
                out.append((self.max_tokens - n) / (self.max_tokens - self.target_tokens))
        return out


@register_reward("brevity")
def brevity(
    *, max_tokens: int, target_tokens: int = 0, min_tokens: int = 0, eos_token_id: int | list[int] | None = None,
    name: str | None = None
) -> Brevity:
    """Shortness in [0, 1]: 1.0 up to ``target_tokens``, falling linearly to 0.0 at ``max_tokens`` and beyond.

    ``min_tokens > 0`` makes it a length band: below ``min_tokens`` the score rises linearly from 0.0 (empty) to
    1.0, so that a one-word reply cannot satisfy it (our extension, for objectives that should not be met by
    any short reply).

    Length is the number of generated tokens (``completion_ids``, not counting a final EOS when the EOS id is known)
    or, when no ids are passed, the number of whitespace-separated words. With ``min_tokens = 0`` an empty
    completion scores 1.0, so combine brevity with a correctness reward. Needs
    ``0 <= min_tokens <= target_tokens < max_tokens``.
    """
    owner = "brevity"
    check_positive_int(owner, "max_tokens", max_tokens)
    check_positive_int(owner, "target_tokens", target_tokens, allow_zero=True)
    check_positive_int(owner, "min_tokens", min_tokens, allow_zero=True)
    if target_tokens >= max_tokens:
        raise ValueError(f"{owner}: target_tokens ({target_tokens}) must be smaller than max_tokens ({max_tokens})")
    if min_tokens > target_tokens:
        raise ValueError(f"{owner}: min_tokens ({min_tokens}) must not exceed target_tokens ({target_tokens})")
    return Brevity(max_tokens, target_tokens, eos_token_id, name, min_tokens)


class LengthPenalty(RewardFunction):
    default_name = "length_penalty"

    def __init__(self, max_tokens: int, buffer_tokens: int, eos_token_id, name: str | None):
        super().__init__(name)
        self.max_tokens = max_tokens
        self.buffer_tokens = buffer_tokens
        self.eos_token_ids = normalize_eos(self.default_name, eos_token_id)

    def score(self, texts, *, prompts, completion_ids, **kwargs):
        out = []
        free = self.max_tokens - self.buffer_tokens
        for i, text in enumerate(texts):
            n = self._token_count(text, None if completion_ids is None else completion_ids[i])
            if n <= free:
                out.append(0.0)
            elif n > self.max_tokens:
                out.append(-1.0)
            else:
                out.append((free - n) / self.buffer_tokens)
        return out


@register_reward("length_penalty")
def length_penalty(
    *, max_tokens: int, buffer_tokens: int = 0, eos_token_id: int | list[int] | None = None, name: str | None = None
) -> LengthPenalty:
    """Overlong penalty in [-1, 0]: DAPO's soft overlong punishment (Yu et al. 2025, "DAPO", Eq. 13).

    With L = completion length, L_max = ``max_tokens`` and L_cache = ``buffer_tokens``:
    0 if L <= L_max - L_cache; (L_max - L_cache - L) / L_cache inside the buffer; -1 if L > L_max.
    ``buffer_tokens=0`` is a hard cut: -1 only above ``max_tokens``. Length is counted as in :func:`brevity`.
    Set ``max_tokens`` to at most the trainer's ``max_completion_length``: a cut-off completion has exactly that
    many tokens, so with ``buffer_tokens=0`` and ``max_tokens == max_completion_length`` nothing is ever penalised.
    """
    owner = "length_penalty"
    check_positive_int(owner, "max_tokens", max_tokens)
    check_positive_int(owner, "buffer_tokens", buffer_tokens, allow_zero=True)
    if buffer_tokens > max_tokens:
        raise ValueError(f"{owner}: buffer_tokens ({buffer_tokens}) must not exceed max_tokens ({max_tokens})")
    return LengthPenalty(max_tokens, buffer_tokens, eos_token_id, name)


class Terminated(RewardFunction):
    default_name = "terminated"

    def __init__(self, eos_token_id, name: str | None):
        super().__init__(name)
        self.eos_token_ids = normalize_eos(self.default_name, eos_token_id)

    def score(self, texts, *, prompts, completion_ids, **kwargs):
        if completion_ids is None:
            raise ValueError(f"reward '{self.__name__}' needs completion_ids (TRL passes them; pass them when scoring by hand)")
        return [1.0 if self._ended_with_eos(ids) else 0.0 for ids in completion_ids]


@register_reward("terminated")
def terminated(*, eos_token_id: int | list[int] | None = None, name: str | None = None) -> Terminated:
    """1.0 if the completion ended with an EOS token (the model stopped by itself), 0.0 if it was cut off at the
    length limit (or is empty).

    Reads TRL's ``completion_ids`` (cut just after the first EOS). Needs the EOS id(s): ``eos_token_id`` or
    ``build_reward("terminated", tokenizer=tok)``. Range: {0, 1}.
    """
    return Terminated(eos_token_id, name)

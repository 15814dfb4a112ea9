"""Math answer correctness: number extraction and the ``math_answer`` reward.

Numbers are compared exactly as decimals (``Decimal("2.50") == Decimal("2.5")``), never as floats.
"""
from __future__ import annotations

import re
import threading
from decimal import Decimal, InvalidOperation
from typing import Any

from .base import RewardFunction, check_choice, check_type, column, normalize_eos
from .registry import register_reward

# A number: optional sign, integer part with optional thousands commas, optional decimal part.
_NUMBER = re.compile(r"(?P<sign>[-+\u2212])?(?P<int>\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?P<frac>\.\d+)?")
_STRICT = re.compile(r"[-+\u2212]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?")
_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
_WRAPPERS = ((r"$$", r"$$"), (r"$", r"$"), (r"\(", r"\)"), (r"\[", r"\]"))


def _to_decimal(sign: str | None, integer: str, frac: str | None) -> Decimal:
    neg = sign in ("-", "\u2212")
    return Decimal(("-" if neg else "") + integer.replace(",", "") + (frac or ""))


def parse_number(text: Any) -> Decimal | None:
    """``text`` (str/int/float) as an exact ``Decimal`` if it is exactly one number (commas, sign, decimals
    allowed, surrounding whitespace ignored), else ``None``."""
    if text is None or isinstance(text, bool):
        return None
    if isinstance(text, int):
        return Decimal(text)
    if isinstance(text, float):
        return Decimal(repr(text)) if text == text and abs(text) != float("inf") else None
    s = str(text).strip()
    m = _STRICT.fullmatch(s)
    if not m:
        return None
    n = _NUMBER.fullmatch(s)
    return _to_decimal(n.group("sign"), n.group("int"), n.group("frac")) if n else None


def extract_numbers(text: str) -> list[Decimal]:
    """All numbers in ``text``, in order. ``1,234`` is one number; a ``-`` directly after a digit, letter or
    closing bracket is an operator, not a sign (``5-3`` → 5, 3; ``x = -3`` → -3); ``7.`` at the end of a sentence is 7."""
    out = []
    for m in _NUMBER.finditer(text):
        sign = m.group("sign")
        if sign:
            start = m.start()
            prev = text[start - 1] if start > 0 else ""
            if prev and (prev.isalnum() or prev in ")]}_"):
                sign = None
        try:
            out.append(_to_decimal(sign, m.group("int"), m.group("frac")))
        except InvalidOperation:  # pragma: no cover - the regex only admits valid literals
            continue
    return out


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` (or ``\\fbox{...}``) with balanced braces, else ``None``."""
    matches = list(_BOXED.finditer(text))
    for m in reversed(matches):
        depth, i = 1, m.end()
        while i < len(text):
            if text[i] == "{":
                depth += 1
            elif text[i] == "}":
                depth -= 1
                if depth == 0:
                    return text[m.end():i]
            i += 1
    return None


def strict_number(text: str) -> Decimal | None:
    """The number if the *whole* text is one number, else ``None``.

    Allowed around the number: whitespace, one trailing period, ``$…$`` / ``\\(…\\)`` / ``\\[…\\]`` and one
    ``\\boxed{…}``. Anything else (a second line, words, units) makes it ``None``.
    """
    s = text.strip()
    if s.endswith(".") and not s.endswith(".."):
        s = s[:-1].rstrip()
    for left, right in _WRAPPERS:
        if len(s) > len(left) + len(right) and s.startswith(left) and s.endswith(right):
            s = s[len(left):-len(right)].strip()
            break
    if _BOXED.match(s) and s.endswith("}"):
        inner = last_boxed(s)
        if inner is not None and s == s[: s.find("{") + 1] + inner + "}":
            s = inner.strip()
    if s.endswith(".") and not s.endswith(".."):
        s = s[:-1].rstrip()
    return parse_number(s)


def find_answer_number(text: str, mode: str) -> Decimal | None:
    """Number a completion answers with, by ``mode``: ``strict`` (whole text), ``first`` / ``last`` (first/last
    number; inside the last ``\\boxed{}`` if there is one). ``None`` if there is none."""
    if mode == "strict":
        return strict_number(text)
    boxed = last_boxed(text)
    if boxed is not None:
        inner = strict_number(boxed)
        if inner is not None:
            return inner
        nums = extract_numbers(boxed)
        if nums:
            return nums[0] if mode == "first" else nums[-1]
    nums = extract_numbers(text)
    if not nums:
        return None
    return nums[0] if mode == "first" else nums[-1]


# ------------------------------------------------------------------------------------------------ math-verify
_MV = None
_MV_LOCK = threading.Lock()


def _math_verify():
    global _MV
    if _MV is None:
        with _MV_LOCK:
            if _MV is None:
                from math_verify import parse, verify  # ~1 s import; only for mode="verify"

                _MV = (parse, verify)
    return _MV


def verify_answer(text: str, answer: Any) -> bool:
    """math-verify's ``verify(parse(answer), parse(text))``; falls back to comparing the last number in the
    text with the answer when math-verify cannot parse either side or raises. Never raises."""
    try:
        parse, verify = _math_verify()
        timeout = 5 if threading.current_thread() is threading.main_thread() else None  # signal.alarm: main thread only
        gold = parse(str(answer), parsing_timeout=timeout)
        pred = parse(text, parsing_timeout=timeout)
        if gold and pred:
            return bool(verify(gold, pred, timeout_seconds=timeout))
    except Exception:  # noqa: BLE001 - a reward must not crash; fall back to numbers
        pass
    want = parse_number(answer)
    got = find_answer_number(text, "last")
    return want is not None and got is not None and got == want


# ---------------------------------------------------------------------------------------------------- reward
class MathAnswer(RewardFunction):
    default_name = "math_answer"

    def __init__(self, mode: str, answer_key: str, require_eos: bool, eos_token_id, name: str | None):
        super().__init__(name)
        self.mode = mode
        self.answer_key = answer_key
        self.require_eos = require_eos
        self.eos_token_ids = normalize_eos(self.default_name, eos_token_id)

    def score(self, texts, *, prompts, completion_ids, **kwargs):
        answers = column(self.__name__, kwargs, self.answer_key, len(texts))
        out: list[float | None] = []
        for i, (text, answer) in enumerate(zip(texts, answers)):
            if answer is None:
                out.append(None)  # no reference answer for this row: not applicable
                continue
            if self.require_eos and completion_ids is not None and not self._ended_with_eos(completion_ids[i]):
                out.append(0.0)
                continue
            if self.mode == "verify":
                out.append(1.0 if verify_answer(text, answer) else 0.0)
                continue
            want = parse_number(answer)
            if want is None:  # non-numeric reference: exact text match (stripped) is the only fair test
                out.append(1.0 if text.strip() == str(answer).strip() else 0.0)
                continue
            got = find_answer_number(text, self.mode)
            out.append(1.0 if got is not None and got == want else 0.0)
        return out


@register_reward("math_answer")
def math_answer(
    *,
    mode: str = "strict",
    answer_key: str = "answer",
    require_eos: bool = False,
    eos_token_id: int | list[int] | None = None,
    name: str | None = None,
) -> MathAnswer:
    """Correctness of a numeric answer against the dataset column ``answer_key``: 1.0 right, 0.0 wrong.

    Modes:
      * ``strict`` (default) — the whole completion, stripped, must be one number equal to the answer; a trailing
        period, ``$…$`` and ``\\boxed{…}`` are allowed. ``"7\\n\\nJustification: 1"`` scores 0, which removes the
        incentive to keep talking after the answer.
      * ``first`` / ``last`` — the first / last number in the text (``1,234``, ``-3``, ``2.5`` understood; the
        content of the last ``\\boxed{}`` wins when present).
      * ``verify`` — math-verify's ``parse``/``verify`` (symbolic: ``1/2`` equals ``0.5``); if math-verify cannot
        parse, falls back to the last number.

    ``require_eos=True``: a completion that did not end with the EOS token (cut off at the length limit) scores 0.
    Needs ``eos_token_id`` (or ``build_reward(..., tokenizer=tok)``) and TRL's ``completion_ids``; when a caller
    passes no ``completion_ids`` (e.g. scoring plain strings) the check is skipped.

    Edge cases: empty completion or no number → 0.0; a row whose answer is ``None`` → ``None`` (not applicable);
    a non-numeric answer is compared as stripped text. Missing answer column → ``ValueError`` naming it.
    Range: {0, 1}.
    """
    owner = "math_answer"
    check_type(owner, "mode", mode, str)
    check_choice(owner, "mode", mode, ("strict", "last", "first", "verify"))
    check_type(owner, "answer_key", answer_key, str)
    check_type(owner, "require_eos", require_eos, bool)
    return MathAnswer(mode, answer_key, require_eos, eos_token_id, name)

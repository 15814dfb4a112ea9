"""Seeded arithmetic problems ("What is a+b?") with disjoint train / held-out splits and difficulty levels."""
from __future__ import annotations

from typing import Any

from .common import (
    DataError,
    chat_prompt,
    check_format,
    check_n,
    check_opt_str,
    check_seed,
    check_split_args,
    in_split,
    render_prompt,
    resolve_tokenizer,
    sample_indices,
)

#: operand ranges (inclusive). Base greedy accuracy of SmolLM2-135M-Instruct with the pre-fill (environment.md):
#: easy ~0.82, medium ~0.38, hard ~0.21.
LEVELS: dict[str, tuple[int, int]] = {"easy": (1, 9), "medium": (1, 20), "hard": (10, 50)}
OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}
_COMMUTATIVE = {"+", "*"}
DEFAULT_INSTRUCTION = "Answer with just the number."


def pair_key(a: int, b: int, op: str) -> str:
    """Split key of a problem. For ``+`` and ``*`` the pair is unordered, so ``3+5`` and ``5+3`` always land in
    the same split (otherwise the held-out set would contain the training problems with operands swapped)."""
    if op in _COMMUTATIVE and a > b:
        a, b = b, a
    return f"arith|{a}{op}{b}"


def split_pairs(low: int, high: int, op: str, split: str, heldout_fraction: float) -> list[tuple[int, int]]:
    """All ``(a, b)`` with ``low <= a, b <= high`` in ``split``, in a fixed order (before sampling)."""
    return [
        (a, b)
        for a in range(low, high + 1)
        for b in range(low, high + 1)
        if in_split(pair_key(a, b, op), split, heldout_fraction)
    ]


def _resolve_range(owner: str, level: str | None, low: int | None, high: int | None) -> tuple[int, int]:
    if level is not None:
        if level not in LEVELS:
            raise DataError(f"{owner}: level must be one of {', '.join(repr(k) for k in LEVELS)}, got {level!r}")
        if low is not None or high is not None:
            raise DataError(f"{owner}: give either level or low/high, not both (level={level!r}, low={low}, high={high})")
        return LEVELS[level]
    low = 1 if low is None else low
    high = 20 if high is None else high
    for name, v in (("low", low), ("high", high)):
        if isinstance(v, bool) or not isinstance(v, int):
            raise DataError(f"{owner}: {name} must be an integer, got {v!r}")
    if low < 0 or high < low:
        raise DataError(f"{owner}: need 0 <= low <= high, got low={low}, high={high}")
    return low, high


def arithmetic_problems(
    n: int | None = None,
    *,
    seed: int = 0,
    split: str = "train",
    level: str | None = None,
    low: int | None = None,
    high: int | None = None,
    op: str = "+",
    heldout_fraction: float = 0.2,
    format: str = "conversational",
    prefill: bool = True,
    system: str | None = None,
    instruction: str | None = DEFAULT_INSTRUCTION,
    unique: bool | None = None,
    distinct: bool = False,
    tokenizer: Any = None,
):
    """``n`` problems "What is a+b?" as a ``datasets.Dataset`` with columns ``prompt``, ``answer`` (str of the
    exact integer result), ``a``, ``b`` (ints) and ``solution`` (the demonstration: the answer text that follows the
    pre-fill, e.g. for ReLIFT's fine-tuning steps; equal to ``answer`` here).

    Range: ``level`` (``easy`` 1..9, ``medium`` 1..20, ``hard`` 10..50) or ``low``/``high`` (inclusive; default
    1..20). ``op``: ``+``, ``-`` or ``*``.

    Splits: each problem is assigned to ``train`` or ``heldout`` by a hash of (a, b, op) — unordered for ``+``/``*``
    — with about ``heldout_fraction`` of the problems held out. The assignment ignores the seed and the range, so
    the splits are disjoint for any seeds and any ranges, provided both use the same ``heldout_fraction`` (a larger
    fraction moves problems from train to held-out). Within a split, ``seed`` drives the sampling.
    ``unique`` (default: True for ``heldout``, False for ``train``): distinct problems only, so ``n`` may not exceed
    the split's size (12 held-out problems for ``easy``, 67 for ``medium``, 322 for ``hard`` at 0.2; 24 / 111 / 505
    at 0.3); with repeats allowed, the split is cycled in shuffled passes. ``n=None``: the whole split, shuffled.
    ``distinct=True``: each *problem* at most once for ``+`` and ``*`` — ``a+b`` and ``b+a`` are one problem, asked
    as ``a+b`` with ``a <= b`` — so a held-out set of n items measures n distinct problems (with the default,
    ``unique`` distinct ordered pairs, about half the items of a ``+`` set are the other half swapped).

    Formats:
      * ``conversational`` — ``[user: "What is a+b? Answer with just the number."]`` followed, when
        ``prefill=True``, by ``[assistant: "a + b = "]``: the model continues the equation, so its first number is
        the result, not an operand. ``system`` adds a system message first.
      * ``plain`` — ``"Q: What is a+b? Answer with just the number.\\nA: a + b = "`` (``system`` text first, then a
        blank line). With ``tokenizer=`` (object or model name), the conversational messages are rendered through
        the chat template instead (pre-fill continued), giving a plain string prompt for trainers that do not
        continue a final assistant message (TRL 1.16 GRPO; see :func:`posttrain.data.render_prompt`).
    """
    owner = "arithmetic"
    check_n(owner, n)
    check_seed(owner, seed)
    check_split_args(owner, split, heldout_fraction)
    check_format(owner, format)
    check_opt_str(owner, "system", system)
    check_opt_str(owner, "instruction", instruction)
    if op not in OPS:
        raise DataError(f"{owner}: op must be one of '+', '-', '*', got {op!r}")
    if not isinstance(prefill, bool):
        raise DataError(f"{owner}: prefill must be true or false, got {prefill!r}")
    if unique is not None and not isinstance(unique, bool):
        raise DataError(f"{owner}: unique must be true, false or None, got {unique!r}")
    if tokenizer is not None and format != "plain":
        raise DataError(f"{owner}: tokenizer= renders the chat template into a plain prompt; use it with format='plain'")
    low, high = _resolve_range(owner, level, low, high)
    if unique is None:
        unique = split == "heldout"

    if not isinstance(distinct, bool):
        raise DataError(f"{owner}: distinct must be true or false, got {distinct!r}")
    pairs = split_pairs(low, high, op, split, heldout_fraction)
    if distinct and op in _COMMUTATIVE:
        pairs = [(a, b) for a, b in pairs if a <= b]
    idx = sample_indices(len(pairs), n, seed, unique=unique, owner=owner, what=f"{split} problems in {low}..{high}")
    tok = resolve_tokenizer(tokenizer)
    fn = OPS[op]

    prompts, answers, As, Bs = [], [], [], []
    for i in idx:
        a, b = pairs[i]
        question = f"What is {a}{op}{b}?"
        user = f"{question} {instruction}" if instruction else question
        lead = f"{a} {op} {b} = "
        if format == "conversational":
            prompt: Any = chat_prompt(user, system=system, prefill=lead if prefill else None)
        elif tok is not None:
            prompt = render_prompt(chat_prompt(user, system=system, prefill=lead if prefill else None), tok)
        else:
            prompt = (f"{system}\n\n" if system else "") + f"Q: {user}\nA: " + (lead if prefill else "")
        prompts.append(prompt)
        answers.append(str(fn(a, b)))
        As.append(a)
        Bs.append(b)

    from datasets import Dataset

    # ``solution``: the demonstration a fine-tuning step learns (ReLIFT's reference-solution column): the text the
    # strict math reward accepts after the pre-fill. Added last, so the other columns and the sampling are unchanged.
    return Dataset.from_dict({"prompt": prompts, "answer": answers, "a": As, "b": Bs, "solution": list(answers)})


def arithmetic_sft(n: int | None = None, *, format: str = "plain", noise: float = 0.0, **kwargs: Any):
    """SFT demonstrations for the arithmetic problems: :func:`arithmetic_problems` (same arguments, same seeded
    disjoint splits) with a ``completion`` column holding the exact answer, so the columns are ``prompt``,
    ``completion``, ``answer``, ``a``, ``b``, ``solution`` -- TRL 1.16's prompt-completion format (the loss covers the completion
    tokens only, ``completion_only_loss``).

    The prompt ends with the pre-fill (``"... A: 3 + 4 = "``, or the chat template continued after
    ``"3 + 4 = "`` with ``tokenizer=``), and the completion is the number (``"7"``): the model learns the same
    continuation that the greedy evaluation of the same prompt scores. No EOS is appended here: TRL's SFT dataset
    preparation appends ``tokenizer.eos_token`` to every non-conversational completion that does not end with it
    (for SmolLM2-Instruct that is ``<|im_end|>``, the end of the assistant turn), so the model also learns to stop.

    Only ``format="plain"``: a conversational prompt ending in a pre-filled assistant message is not continued by
    TRL's SFT tokenization (it renders the prompt with ``add_generation_prompt=True``); pass ``tokenizer=`` to get
    the chat template rendered into the plain prompt instead.

    ``noise`` (default 0: the demonstrations above, unchanged): the fraction of rows, chosen with ``seed``, whose
    completion is a *wrong* answer (the true one plus a non-zero offset in -9..9, never negative for ``+``/``*``);
    ``answer`` keeps the true result. A noisy domain for data-mixture demos (docs/domains.md).
    """
    if format != "plain":
        raise DataError(f"arithmetic_sft: format must be 'plain' (TRL's SFT does not continue a pre-filled "
                        f"assistant message; pass tokenizer= to render the chat template), got {format!r}")
    if isinstance(noise, bool) or not isinstance(noise, (int, float)) or not 0.0 <= noise <= 1.0:
        raise DataError(f"arithmetic_sft: noise must be a fraction in [0, 1], got {noise!r}")
    ds = arithmetic_problems(n, format="plain", **kwargs)
    completions = list(ds["answer"])
    if noise > 0:
        import random

        rng = random.Random(f"arithmetic_sft-noise|{kwargs.get('seed', 0)}")
        for i, answer in enumerate(completions):
            if rng.random() < noise:
                value = int(answer)
                offsets = [o for o in range(-9, 10) if o != 0 and (value + o >= 0 or value < 0)]
                completions[i] = str(value + rng.choice(offsets))
    return ds.add_column("completion", completions)

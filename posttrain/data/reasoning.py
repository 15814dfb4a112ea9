"""Multi-step addition with a one-line scratchpad ("What is a+b+c?" -> "a+b=x, x+c=y. Answer: y"): a seeded,
offline reasoning task whose completions need several tokens of working, with disjoint train / held-out splits."""
from __future__ import annotations

from typing import Any

from .common import (
    DataError,
    chat_prompt,
    check_n,
    check_seed,
    check_split_args,
    in_split,
    sample_indices,
)

#: The worked example shown before every question (one user/assistant exchange): the format to imitate.
EXAMPLE_OPERANDS = (3, 4, 5)


def chain_solution(operands: tuple[int, ...] | list[int]) -> str:
    """The canonical working of ``operands[0] + operands[1] + ...``, *without* the pre-fill ``"a+b="``:
    ``(9, 4, 16)`` -> ``"13, 13+16=29. Answer: 29"``; ``(2, 3)`` -> ``"5. Answer: 5"``."""
    total = operands[0] + operands[1]
    parts = [str(total)]
    for o in operands[2:]:
        parts.append(f"{total}+{o}={total + o}")
        total += o
    return ", ".join(parts) + f". Answer: {total}"


def chain_key(operands: tuple[int, ...]) -> str:
    """Split key: the *multiset* of operands, so every ordering of a held-out problem (``3+5+7``, ``5+7+3``) is held
    out too and no training problem is a held-out one with its operands permuted."""
    return "chain|" + "+".join(str(o) for o in sorted(operands))


def _tuples(k: int, low: int, high: int) -> list[tuple[int, ...]]:
    out: list[tuple[int, ...]] = [()]
    for _ in range(k):
        out = [t + (v,) for t in out for v in range(low, high + 1)]
    return out


def chain_arithmetic(
    n: int | None = None,
    *,
    seed: int = 0,
    split: str = "train",
    operands: int = 3,
    low: int = 1,
    high: int = 20,
    heldout_fraction: float = 0.35,
    distinct: bool | None = None,
    example: bool = True,
):
    """``n`` problems "What is a+b+c?" (``operands`` terms, each in ``low..high``) as a ``datasets.Dataset`` with
    columns ``prompt`` (conversational), ``answer`` (the sum, str), ``solution`` (the canonical working after the
    pre-fill, see :func:`chain_solution`) and ``operands`` (list of ints).

    Prompt: with ``example=True`` one worked exchange first (user "What is 3+4+5?", assistant
    "3+4=7, 7+5=12. Answer: 12"), then the question, then the assistant turn pre-filled with ``"a+b="``: the model
    writes the intermediate sums and the answer, e.g. ``"13, 13+16=29. Answer: 29"`` (about 15-19 SmolLM2 tokens
    for three operands in 1..20; the tokenizer splits numbers into digits, so each sum is one or more forking tokens).
    SmolLM2-135M-Instruct keeps this format in ~94 % of greedy replies but gets only ~12 % of 1..20 problems right
    (32-problem probe), so accuracy has room; without the example or the pre-fill it follows the format rarely.

    Splits: by a hash of the operand multiset (:func:`chain_key`), seed- and range-independent, so train and
    held-out are disjoint for any seeds. ``distinct`` (default True for ``heldout``): one ordering per multiset
    (ascending), so ``n`` held-out items are ``n`` different problems with different answers-by-operands; for
    three operands in 1..20 at 0.35 there are 593 such held-out problems. ``False``: every ordering, repeats
    allowed when ``n`` exceeds the split (shuffled passes, :func:`posttrain.data.common.sample_indices`).
    """
    owner = "chain_arithmetic"
    check_n(owner, n)
    check_seed(owner, seed)
    check_split_args(owner, split, heldout_fraction)
    for name, v in (("operands", operands), ("low", low), ("high", high)):
        if isinstance(v, bool) or not isinstance(v, int):
            raise DataError(f"{owner}: {name} must be an integer, got {v!r}")
    if not 2 <= operands <= 5:
        raise DataError(f"{owner}: operands must be between 2 and 5, got {operands}")
    if low < 0 or high < low:
        raise DataError(f"{owner}: need 0 <= low <= high, got low={low}, high={high}")
    for name, v in (("distinct", distinct), ("example", example)):
        if v is not None and not isinstance(v, bool):
            raise DataError(f"{owner}: {name} must be true or false, got {v!r}")
    if distinct is None:
        distinct = split == "heldout"
    ex = EXAMPLE_OPERANDS[:operands] if operands <= 3 else EXAMPLE_OPERANDS + (6,) * (operands - 3)
    pool = [t for t in _tuples(operands, low, high)  # the worked example is in neither split
            if in_split(chain_key(t), split, heldout_fraction) and chain_key(t) != chain_key(ex)]
    if distinct:
        pool = [t for t in pool if list(t) == sorted(t)]
    idx = sample_indices(len(pool), n, seed, unique=distinct, owner=owner,
                         what=f"{split} problems with {operands} operands in {low}..{high}")
    shot: list[dict[str, str]] = []
    if example:
        shot = chat_prompt("What is " + "+".join(map(str, ex)) + "?",
                           prefill=f"{ex[0]}+{ex[1]}=" + chain_solution(ex))
    prompts, answers, solutions, ops = [], [], [], []
    for i in idx:
        t = pool[i]
        prompts.append(shot + chat_prompt("What is " + "+".join(map(str, t)) + "?", prefill=f"{t[0]}+{t[1]}="))
        answers.append(str(sum(t)))
        solutions.append(chain_solution(t))
        ops.append(list(t))

    from datasets import Dataset

    return Dataset.from_dict({"prompt": prompts, "answer": answers, "solution": solutions, "operands": ops})

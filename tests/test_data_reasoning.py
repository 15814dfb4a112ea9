"""chain_arithmetic: multi-step addition with a one-line scratchpad (hand-checked rows, splits, strict scoring)."""
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from posttrain.data import DATASETS, DataError, chain_arithmetic, chain_solution
from posttrain.data.reasoning import chain_key
from posttrain.rewards import build_reward


def test_solution_hand_checked():
    assert chain_solution((9, 4, 16)) == "13, 13+16=29. Answer: 29"
    assert chain_solution((2, 3)) == "5. Answer: 5"
    assert chain_solution((1, 2, 3, 4)) == "3, 3+3=6, 6+4=10. Answer: 10"


def test_row_hand_checked():
    ds = chain_arithmetic(3, seed=0, split="heldout")
    row = ds[0]
    a, b, c = row["operands"]
    assert row["answer"] == str(a + b + c)
    assert row["solution"] == f"{a + b}, {a + b}+{c}={a + b + c}. Answer: {a + b + c}"
    assert row["prompt"] == [
        {"role": "user", "content": "What is 3+4+5?"},
        {"role": "assistant", "content": "3+4=7, 7+5=12. Answer: 12"},
        {"role": "user", "content": f"What is {a}+{b}+{c}?"},
        {"role": "assistant", "content": f"{a}+{b}="},
    ]
    assert chain_arithmetic(3, seed=0, split="heldout", example=False)[0]["prompt"][0]["content"] == \
        f"What is {a}+{b}+{c}?"


def test_heldout_has_500_distinct_problems_disjoint_from_train():
    held = chain_arithmetic(split="heldout")
    keys = [chain_key(tuple(o)) for o in held["operands"]]
    assert len(held) == 593 and len(set(keys)) == 593  # distinct multisets, not just distinct orderings
    train = chain_arithmetic(20000, split="train", seed=1)
    assert not set(keys) & {chain_key(tuple(o)) for o in train["operands"]}
    assert (3, 4, 5) not in {tuple(sorted(o)) for o in list(held["operands"]) + list(train["operands"])}  # the worked example
    assert chain_arithmetic(5, seed=2, split="heldout")["operands"] == chain_arithmetic(5, seed=2, split="heldout")["operands"]
    assert DATASETS.get("chain_arithmetic") is chain_arithmetic


def test_bad_arguments_are_one_line_errors():
    with pytest.raises(DataError, match="operands must be between 2 and 5"):
        chain_arithmetic(operands=1)
    with pytest.raises(DataError, match="asked for n=600 distinct"):
        chain_arithmetic(600, split="heldout")
    with pytest.raises(DataError, match="need 0 <= low <= high"):
        chain_arithmetic(low=5, high=2)


def test_strict_reward_scores_only_the_exact_working():
    ds = chain_arithmetic(1, seed=0, split="heldout")
    sol, ans = ds[0]["solution"], ds[0]["answer"]
    r = build_reward("math_answer", {"mode": "strict", "answer_key": "solution"})
    texts = [sol, f" {sol}\n", f"{sol}\n\nWhat is", f"Answer: {ans}", ans, sol.replace(", ", ",")]
    got = r(prompts=[ds[0]["prompt"]] * len(texts), completions=texts, solution=[sol] * len(texts))
    assert got == [1.0, 1.0, 0.0, 0.0, 0.0, 0.0]


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(0, 99), min_size=2, max_size=5))
def test_solution_ends_with_the_sum(ops):
    s = chain_solution(ops)
    assert s.endswith(f"Answer: {sum(ops)}") and s.count("=") == len(ops) - 2


@pytest.mark.slow
def test_tiny_reasoning_recipe_runs(tmp_path):
    """The tiny twin of recipes/reasoning.yaml trains 2 real TRL GRPO steps and evaluates on the held-out set."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "run"
    res = subprocess.run([sys.executable, "-m", "posttrain", "run", "recipes/tiny_reasoning.yaml", f"output.dir={out}",
                          "model.threads=1", "output.save_model=false", "output.plots=false"],
                         capture_output=True, text=True, timeout=600, cwd=root, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["global_step"] == 2
    assert summary["eval"]["after"]["n"] == 8 and len(summary["eval"]["after"]["item_scores"]) == 8
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "frac_reward_zero_std" in r] == [1, 2]

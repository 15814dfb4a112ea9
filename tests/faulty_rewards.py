"""Reward functions that misbehave on purpose, for the reliability tests (used by import path from recipes:
``rewards: [{name: "tests.faulty_rewards:flaky", args: {...}}]``; run from the repository root)."""
from __future__ import annotations

import math
import os
import signal
import time
import zlib

from posttrain.rewards import build_reward, reward_factory
from posttrain.rewards.base import completion_text


def _bad(text: str, fraction: float) -> bool:
    """Deterministic per-completion coin: the same completion is always bad or always good."""
    return (zlib.crc32(text.encode()) % 1000) < fraction * 1000


@reward_factory
def flaky(mode: str = "raise", fraction: float = 0.3, name: str = "flaky_reward"):
    """The strict math reward, failing on a deterministic ``fraction`` of completions in ``mode``:
    raise | nan | inf | string | wrong_length | sleep (sleeps 30 s on a whole call with a bad sample)."""
    inner = build_reward("math_answer", {"mode": "strict"})

    def flaky_reward(prompts=None, completions=None, completion_ids=None, **kw):
        texts = [completion_text(c) for c in completions]
        scores = inner(prompts=prompts, completions=completions, **kw)
        bad = [_bad(t, fraction) for t in texts]
        if mode == "raise" and any(bad):
            raise RuntimeError("reward service exploded")
        if mode == "wrong_length" and any(bad):
            return scores[:-1]
        if mode == "sleep" and any(bad):
            time.sleep(30)
        repl = {"nan": math.nan, "inf": math.inf, "string": "oops"}.get(mode)
        return [repl if (b and repl is not None) else s for s, b in zip(scores, bad)]

    flaky_reward.__name__ = name
    return flaky_reward


def text_hash_score(texts) -> list:
    """A deterministic, varied score in [0, 1) per text: gives the random tiny model non-zero advantages, so its
    weights really move (the strict math reward is 0 for every completion of an untrained random model)."""
    return [(zlib.crc32(t.encode()) % 997) / 997 for t in texts]


@reward_factory
def kill_at_step(step: int = 3):
    """:func:`text_hash_score`; sends SIGKILL to its own process when called at ``trainer_state.global_step ==
    step`` and the environment variable POSTTRAIN_TEST_KILL is set (a real ``kill -9``, mid-training)."""

    def hash_score(prompts=None, completions=None, completion_ids=None, trainer_state=None, **kw):
        if os.environ.get("POSTTRAIN_TEST_KILL") and trainer_state is not None and trainer_state.global_step == step:
            os.kill(os.getpid(), signal.SIGKILL)
        return text_hash_score([completion_text(c) for c in completions])

    return hash_score


@reward_factory
def hashed_text():
    """:func:`text_hash_score` as a reward: a varied signal for the random tiny model (so token strategies run)."""

    def hashed_text_score(completions, **kw):
        return text_hash_score([completion_text(c) for c in completions])

    return hashed_text_score

"""Reward functions with TRL's signature, and the registry recipes use to pick them by name.

    from posttrain.rewards import build_reward
    fn = build_reward("math_answer", {"mode": "strict", "require_eos": True}, tokenizer=tok)
    fn(prompts=..., completions=["7", " 7.", "7\\n\\nJustification: 1"], completion_ids=..., answer=["7"] * 3)

Registered factories (``REWARDS.names()``): ``math_answer``, ``format_reward``, ``brevity``, ``length_penalty``,
``terminated``, ``vader_sentiment``, ``minilm_similarity``, ``neg_entropy`` (EM-RL). Your own: an import path ``"pkg.mod:obj"`` (a plain
reward function, or a factory marked with :func:`reward_factory`), or ``register_reward("name")``.
See docs/rewards_and_data.md.
"""
from .base import RewardFunction, completion_text, prompt_text
from .registry import REWARDS, build_reward, is_reward_factory, register_reward, reward_factory
from .math import MathAnswer, extract_numbers, find_answer_number, math_answer, parse_number, strict_number, verify_answer
from .text import NUMBER_ONLY, brevity, format_reward, length_penalty, terminated
from .entropy import NegEntropy, neg_entropy
from .sentiment import vader_analyzer, vader_sentiment
from .similarity import SimilarityModelError, encode_texts, load_minilm, minilm_model_dir, minilm_similarity

__all__ = [
    "REWARDS",
    "RewardFunction",
    "build_reward",
    "register_reward",
    "reward_factory",
    "is_reward_factory",
    "completion_text",
    "prompt_text",
    "math_answer",
    "MathAnswer",
    "parse_number",
    "extract_numbers",
    "strict_number",
    "find_answer_number",
    "verify_answer",
    "format_reward",
    "NUMBER_ONLY",
    "brevity",
    "length_penalty",
    "terminated",
    "vader_sentiment",
    "neg_entropy",
    "NegEntropy",
    "vader_analyzer",
    "minilm_similarity",
    "encode_texts",
    "load_minilm",
    "minilm_model_dir",
    "SimilarityModelError",
]

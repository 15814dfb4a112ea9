"""Recipe specs -> configured objective / sequence strategies (shared by the recipe loader and the GRPO trainer).

A spec is the recipe's ``{name: ..., <argument>: value, ...}`` mapping. Arguments are either the strategy's own
constructor/function arguments (``posttrain.weighting.objectives`` / ``posttrain.weighting.sequences``) or one of
the few *trainer options* listed below, which say where and how the trainer feeds the strategy. Errors are
``ValueError`` with one line; the caller prefixes the key path (``weighting.objectives: ...``).

Defaults the trainer fills in from the recipe's ``rewards`` (one objective per reward, in order):
``names`` (the rewards' names), ``num_objectives``, ``weights`` for ``fixed`` (the rewards' ``weight``; normalised)
and ``hypervolume`` (the same, normalised), ``initial_weights`` for ``gradient`` (the same, normalised),
``maximize`` for ``hypervolume`` (all true: every shipped reward is "higher is better"; brevity is a reward in
[0, 1], not a token count).

Argument blocks: besides its own arguments a spec may hold one mapping per strategy name, used only when that
strategy is selected, so that a recipe can be switched with one override (``weighting.objectives.name=lagrangian``)::

    objectives:
      name: fixed
      lagrangian: {thresholds: [null, 0.8, 0.9]}
      hypervolume: {eval_every: 5}

Trainer options:

============================  =======================  ==================================================================
strategy                      option (default)         meaning
============================  =======================  ==================================================================
``hypervolume``               ``eval_prompts`` (32)    held-out prompts (the first N of ``data.eval``) evaluated greedily
``hypervolume``               ``eval_max_new_tokens``  greedy length (default: ``train.max_completion_length``)
``gradient``                  ``parameters`` (all)     regular expression searched in the trainable parameters' names:
                                                       the gradients of the Gram matrix (default: every trainable
                                                       parameter, the LoRA adapters with LoRA)
``dra``                       ``scope`` (``group``)    similarity over each prompt's group (paper wording) or
                                                       ``process`` (every completion of the process: the official code)
``seed``                      ``answer`` (``last``)    how a completion's final answer is read: ``last`` / ``first`` /
                                                       ``strict`` number (arithmetic) or ``text`` (stripped text)
============================  =======================  ==================================================================
"""
from __future__ import annotations

import inspect
import re
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

OBJECTIVE_OPTIONS: Dict[str, Dict[str, Any]] = {
    "hypervolume": {"eval_prompts": 32, "eval_max_new_tokens": None},
    "gradient": {"parameters": None},
}
SEQUENCE_OPTIONS: Dict[str, Dict[str, Any]] = {
    "dra": {"scope": "group"},
    "seed": {"answer": "last"},
    "loss_reweighting": {},
}
DRA_SCOPES = ("group", "process")
SEED_ANSWERS = ("last", "first", "strict", "text")


def _accepted(obj) -> Tuple[List[str], List[str]]:
    """(accepted keyword names, required ones) of a function or class."""
    params = inspect.signature(obj).parameters
    acc = [n for n, p in params.items() if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]
    req = [n for n, p in params.items()
           if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is inspect.Parameter.empty]
    return acc, req


def _split(name: str, obj, args: Dict[str, Any], options: Dict[str, Any], positional: Sequence[str] = ()):
    """Split ``args`` into strategy kwargs and trainer options; unknown keys -> ValueError."""
    accepted, _ = _accepted(obj)
    accepted = [a for a in accepted if a not in positional]
    kwargs, opts = {}, dict(options)
    for key, value in args.items():
        if key in options:
            opts[key] = value
        elif key in accepted:
            kwargs[key] = value
        else:
            allowed = accepted + list(options)
            raise ValueError(f"{name}: unknown argument '{key}'; accepted: {', '.join(allowed) or '(none)'}")
    return kwargs, opts


def _int_option(name: str, key: str, value: Any, low: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name}: {key} must be an integer >= {low}, got {value!r}")
    return value


def build_objective_strategy(spec: Dict[str, Any], reward_names: Sequence[str],
                             reward_weights: Optional[Sequence[float]] = None):
    """``(strategy, trainer_options)`` for the recipe's ``weighting.objectives`` spec and its K rewards."""
    from posttrain.weighting.objectives import OBJECTIVE_STRATEGIES
    from posttrain.weighting.objectives._common import normalise_simplex

    spec = dict(spec)
    name = spec.pop("name")
    cls = OBJECTIVE_STRATEGIES.get(name)  # RegistryError for an unknown name
    # Per-strategy argument blocks ({name: fixed, lagrangian: {thresholds: [...]}}): the selected strategy's block is
    # merged under the top-level arguments; the other blocks are checked too, so a typo never waits for a switch.
    blocks = {key: spec.pop(key) for key in list(spec)
              if key in OBJECTIVE_STRATEGIES and isinstance(spec[key], dict)}
    for other, block in blocks.items():
        if other != name:
            try:
                build_objective_strategy({"name": other, **block}, reward_names, reward_weights)
            except ValueError as exc:
                raise ValueError(f"{other} (argument block): {exc}") from None
    spec = {**blocks.get(name, {}), **spec}
    k = len(reward_names)
    kwargs, opts = _split(name, cls, spec, OBJECTIVE_OPTIONS.get(name, {}))
    accepted, _ = _accepted(cls)
    weights = list(reward_weights) if reward_weights is not None else [1.0] * k
    fill_names = "names" in accepted and "names" not in kwargs
    if "num_objectives" in accepted:
        kwargs.setdefault("num_objectives", k)
    if name == "fixed":
        kwargs.setdefault("weights", weights)
    if name == "hypervolume":
        if "weights" not in kwargs:
            kwargs["weights"] = normalise_simplex("weights", weights)
        kwargs.setdefault("maximize", [True] * k)
        _int_option(name, "eval_prompts", opts["eval_prompts"])
        if opts["eval_max_new_tokens"] is not None:
            _int_option(name, "eval_max_new_tokens", opts["eval_max_new_tokens"])
    if name == "gradient":
        if "initial_weights" not in kwargs:
            kwargs["initial_weights"] = normalise_simplex("weights", weights)
        pattern = opts["parameters"]
        if pattern is not None:
            if not isinstance(pattern, str):
                raise ValueError(f"gradient: parameters must be a regular expression string, got {pattern!r}")
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"gradient: parameters is not a valid regular expression ({exc}): {pattern!r}") from None
    if name == "lagrangian" and "thresholds" not in kwargs:
        raise ValueError("lagrangian: 'thresholds' is required: one per reward (the minimum mean reward; null marks "
                         "at most one primary, unconstrained objective)")
    if name == "trust" and k != 2:
        raise ValueError(f"trust needs exactly 2 rewards (outcome, auxiliary), got {k}")
    try:
        strategy = cls(**kwargs)
    except TypeError as exc:
        raise ValueError(f"{name}: {exc}") from None
    except ValueError as exc:
        raise ValueError(f"{name}: {exc}") from None
    if strategy.num_objectives != k:
        raise ValueError(f"{name}: configured for {strategy.num_objectives} objective(s) but the recipe has {k} "
                         f"reward(s); give one value per reward")
    if fill_names:
        if len(set(reward_names)) != k:
            raise ValueError(f"{name}: the rewards need distinct names for per-objective logging (got "
                             f"{list(reward_names)}); set args.name on the rewards")
        strategy.names = list(reward_names)
    return strategy, opts


def build_sequence_strategies(specs: Sequence[Dict[str, Any]]) -> List[Tuple[str, Any, Dict[str, Any], Dict[str, Any]]]:
    """``[(name, object, kwargs, trainer_options)]`` for the recipe's ``weighting.sequences`` list. Each strategy is
    dry-run on a tiny input so that bad argument *values* are reported now. ``loss_reweighting``'s object is a fresh
    :class:`~posttrain.weighting.sequences.LossSampleWeighter` (stateful); the others are the pure functions."""
    from posttrain.weighting.sequences import SEQUENCE_STRATEGIES, LossSampleWeighter

    out, seen = [], set()
    for i, spec in enumerate(specs):
        spec = dict(spec)
        name = spec.pop("name")
        obj = SEQUENCE_STRATEGIES.get(name)
        if name not in SEQUENCE_OPTIONS:
            raise ValueError(f"{name}: the GRPO trainer does not know where to apply this sequence strategy "
                             f"(wired: {', '.join(SEQUENCE_OPTIONS)})")
        if name in seen:
            raise ValueError(f"{name} is listed twice")
        seen.add(name)
        positional = {"dra": ("embeddings", "group_ids"), "seed": ("answers_per_prompt", "seq_logprobs"),
                      "loss_reweighting": ()}.get(name, ())
        kwargs, opts = _split(name, obj, spec, SEQUENCE_OPTIONS.get(name, {}), positional)
        try:
            if name == "dra":
                if opts["scope"] not in DRA_SCOPES:
                    raise ValueError(f"scope must be one of {DRA_SCOPES}, got {opts['scope']!r}")
                obj(torch.eye(2), torch.tensor([0, 0]), **kwargs)
            elif name == "seed":
                if opts["answer"] not in SEED_ANSWERS:
                    raise ValueError(f"answer must be one of {SEED_ANSWERS}, got {opts['answer']!r}")
                obj([["1", "2"]], **kwargs)
            elif name == "loss_reweighting":
                obj = LossSampleWeighter(**kwargs)
                obj.weights(torch.tensor([0.0, 1.0]))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{name}: {exc}") from None
        out.append((name, obj, kwargs, opts))
    return out

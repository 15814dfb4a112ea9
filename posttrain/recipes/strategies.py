"""Recipe-time checks of every configured strategy through the strategy protocol (no model is loaded).

Each strategy is built exactly as the trainer will build it (:func:`posttrain.weighting.protocol.build_strategy`,
its pydantic ``Config`` validates the arguments), with a :class:`~posttrain.weighting.protocol.StrategyEnv` made from
the recipe; token and pair strategies are also run once on a tiny synthetic batch, so value errors that only the
pure function detects are reported now. Problems are one line naming the key path; warnings (settings that would
make a method do nothing in this run) are returned for the caller to print.
"""
from __future__ import annotations

from functools import partial
from typing import Any, Callable, List, Sequence

from posttrain.registry import RegistryError
from posttrain.weighting import protocol


def strategy_env(recipe, reward_names: Sequence[str]) -> protocol.StrategyEnv:
    train = recipe.train
    max_steps = train.get("max_steps")
    return protocol.StrategyEnv(
        reward_names=tuple(reward_names), reward_weights=tuple(float(s.weight) for s in recipe.rewards),
        num_generations=int(train.get("num_generations", 8)),
        max_steps=int(max_steps) if isinstance(max_steps, int) and max_steps > 0 else None,
        has_eval_data=recipe.data.eval is not None, scale_rewards=str(train.get("scale_rewards", "group")),
        world_size=1, trainable_parameters=None,
        generation_batch_size=int(train.get("per_device_train_batch_size", 8))
        * int(train.get("steps_per_generation") or train.get("gradient_accumulation_steps", 1)))


def _prefixed(path: str, exc: Exception) -> str:
    """``weighting.sequences.0: dra: ...`` from ``0: dra: ...``; ``weighting.sequences: seed is listed twice``."""
    msg = str(exc)
    head, sep, rest = msg.partition(": ")
    if sep and head.isdigit():
        return f"{path}.{head}: {rest}"
    return f"{path}: {msg}"


def check_strategies(recipe, reward_names: Sequence[str], fail: Callable[[str, Any], None]) -> List[str]:
    """Build every strategy of ``recipe`` (``fail(path, message)`` raises); returns warning lines."""
    env = strategy_env(recipe, reward_names)
    w = recipe.weighting
    built: List[protocol.Strategy] = []
    lists = [("weighting.sequences", "sequence", w.sequences), ("weighting.tokens", "token", w.tokens),
             ("weighting.pairs", "pair", w.pairs)]
    singles = [("weighting.objectives", "objective", w.objectives), ("advantage", "advantage", recipe.advantage)]
    for path, kind, spec in singles:
        if spec is None:
            continue
        try:
            built.append(protocol.build_strategy(kind, spec, env))
        except RegistryError as exc:
            fail(f"{path}.name", exc)
        except (ValueError, TypeError) as exc:
            fail(path, exc)
    for path, kind, specs in lists:
        if not specs:
            continue
        try:
            dicts = [spec.model_dump() if hasattr(spec, "model_dump") else spec for spec in specs]
            strategies = _BUILDERS.get(kind, partial(protocol.build_strategies, kind))(dicts, env)
        except (RegistryError, ValueError, TypeError) as exc:
            raise_prefixed(fail, path, exc)
        dry_run = _DRY_RUNS.get(kind)
        if dry_run is not None:
            try:
                dry_run(strategies)
            except (ValueError, TypeError) as exc:
                raise_prefixed(fail, path, exc)
            except Exception as exc:  # noqa: BLE001 - a user's strategy code: one line, not a traceback
                msg = str(exc).splitlines()[0] if str(exc) else ""
                names = ", ".join(protocol.label(s) for s in strategies)
                fail(path, f"{names} failed on the validate-time synthetic batch (4 sequences x 3 tokens, groups of "
                           f"2): {type(exc).__name__}: {msg}")
        built += strategies
    if w.domains:  # the strategy's own arguments (trainer options such as update_every split off)
        from posttrain.data.mixture import split_domain_spec

        try:
            spec, _ = split_domain_spec(w.domains[0])
            built.append(protocol.build_strategy("domain", spec, env))
        except RegistryError as exc:
            fail("weighting.domains.0.name", exc)
        except (ValueError, TypeError) as exc:
            fail("weighting.domains.0", exc)
    if w.samples and recipe.algorithm == "sft":  # SFT's per-sample weights (posttrain.weighting.samples)
        from posttrain.weighting.samples import build_sample_strategies

        try:
            built += build_sample_strategies([spec.model_dump() for spec in w.samples], env)
        except (RegistryError, ValueError, TypeError) as exc:
            raise_prefixed(fail, "weighting.samples", exc)
    return [line for s in built for line in protocol.strategy_warnings([s])]


def raise_prefixed(fail, path: str, exc: Exception) -> None:
    full = _prefixed(path, exc)
    key, _, msg = full.partition(": ")
    fail(f"{key}.name" if isinstance(exc, RegistryError) and key != path else key, msg)


def _dry_run_tokens(strategies) -> None:
    from posttrain.weighting.tokens import dry_run_token_strategies

    dry_run_token_strategies(strategies)


def _build_pairs(specs, env):
    from posttrain.weighting.pairs import build_pair_strategies, split_pair_strategies

    strategies = build_pair_strategies(specs, env)  # a name may repeat (two margin strategies multiply)
    split_pair_strategies(strategies)  # at most one batch-beta strategy
    return strategies


def _build_tokens(specs, env):
    from posttrain.weighting.tokens import build_token_strategies  # a plain function by import path, too

    return build_token_strategies(specs, env)


_DRY_RUNS = {"token": _dry_run_tokens}
_BUILDERS = {"token": _build_tokens, "pair": _build_pairs}

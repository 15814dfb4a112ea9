"""The reward registry and :func:`build_reward`, which turns a recipe entry ``{name, args}`` into a TRL reward.

Two kinds of objects can be named in a recipe:

* a **factory** — a callable marked with :func:`reward_factory` (every entry of :data:`REWARDS` is one), or a
  class. It is called with the recipe's ``args`` and returns the reward function.
* a **plain reward function** — any other callable with TRL's signature ``fn(prompts, completions, **kwargs)``.
  It is used as is, so it takes no ``args``; a non-empty ``args`` is an error.

Names are resolved by :class:`posttrain.registry.Registry`: a registered name, or an import path
``"package.module:object"``.
"""
from __future__ import annotations

import inspect
from typing import Any, Callable, Mapping

from posttrain.registry import Registry, RegistryError

REWARDS = Registry("reward")

FACTORY_ATTR = "__posttrain_reward_factory__"


def reward_factory(fn: Callable) -> Callable:
    """Mark ``fn`` as a reward factory: ``build_reward`` will call ``fn(**args)`` to make the reward function."""
    setattr(fn, FACTORY_ATTR, True)
    return fn


def is_reward_factory(obj: Any) -> bool:
    return bool(getattr(obj, FACTORY_ATTR, False))


def register_reward(name: str) -> Callable[[Callable], Callable]:
    """Decorator: mark a factory and register it under ``name`` in :data:`REWARDS`."""

    def _add(fn: Callable) -> Callable:
        reward_factory(fn)
        REWARDS.register(name)(fn)
        return fn

    return _add


def _check_args_bind(label: str, factory: Callable, args: dict) -> None:
    try:
        sig = inspect.signature(factory)
    except (TypeError, ValueError):  # builtins / C callables: let the call itself complain
        return
    try:
        sig.bind(**args)
    except TypeError as exc:
        accepted = [
            p.name for p in sig.parameters.values() if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)
        ]
        raise TypeError(f"reward '{label}': {exc}; accepted args: {', '.join(accepted) or '(none)'}") from None


def build_reward(name: str, args: Mapping[str, Any] | None = None, *, tokenizer: Any = None) -> Callable:
    """Resolve ``name`` (registry name or ``'pkg.mod:obj'``) and return a TRL-compatible reward function.

    * factory (registry entries, anything decorated with :func:`reward_factory`, or a class) → ``factory(**args)``;
    * any other callable → the reward function itself; ``args`` must then be empty.

    ``tokenizer`` (optional) is offered to the result's ``bind_tokenizer`` so rewards that need the EOS id
    (``terminated``, ``math_answer(require_eos=True)``, token-count lengths) get it without a recipe argument.
    Errors are one line: :class:`~posttrain.registry.RegistryError` for an unknown name or bad import path,
    ``TypeError``/``ValueError`` naming the argument for bad ``args``.
    """
    if not isinstance(name, str) or not name:
        raise TypeError(f"reward name must be a non-empty string, got {name!r}")
    if args is None:
        args = {}
    if not isinstance(args, Mapping):
        raise TypeError(f"reward '{name}': args must be a mapping of argument names to values, got {type(args).__name__}")
    args = dict(args)
    obj = REWARDS.get(name)
    if is_reward_factory(obj) or isinstance(obj, type):  # a class is a constructor: treat it as a factory
        _check_args_bind(name, obj, args)
        fn = obj(**args)
        if not callable(fn):
            raise TypeError(f"reward factory '{name}' returned {type(fn).__name__}, not a callable reward function")
    elif callable(obj):
        if args:
            raise TypeError(
                f"reward '{name}' is a plain reward function and takes no args (got {', '.join(sorted(args))}); "
                f"decorate a factory with posttrain.rewards.reward_factory to accept args"
            )
        fn = obj
    else:
        raise RegistryError(f"reward '{name}' resolves to a {type(obj).__name__}, which is not callable")
    bind = getattr(fn, "bind_tokenizer", None)
    if tokenizer is not None and callable(bind):
        bind(tokenizer)
    return fn

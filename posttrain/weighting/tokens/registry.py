"""``TokenBatch`` (what a trainer hands to token strategies), the token strategies' registry and the bridge from a
decorated function to a protocol :class:`~posttrain.weighting.protocol.Strategy` of kind ``"token"``.

A token strategy is, for the trainer, a protocol ``Strategy`` of kind ``"token"`` implementing one (or more) of
the token hooks, each receiving a :class:`TokenBatch` and returning a ``[B, T]`` tensor (or ``(tensor, dict)`` with
extra diagnostics). The hook decides how the output is composed; its *token kind* is the name used in
diagnostics, docs and :class:`TokenStrategy`:

=====================  =================  ==========================================================================
hook                   token kind         composition
=====================  =================  ==========================================================================
``token_advantages``   ``"advantage"``    runs first (list order); shaped ``[B, T]`` advantages every later one sees
``token_weights``      ``"weight"``       weights multiply (masks are {0, 1} weights); detached
``token_loss``         ``"loss_term"``    an extra per-token loss, carries gradient; loss terms add
=====================  =================  ==========================================================================

Class attributes the trainer reads: ``needs`` (the optional :class:`TokenBatch` inputs the strategy reads, so the
trainer computes an input only when a configured strategy needs it; a built function strategy refines it from
its arguments) and ``disables_clipping`` (the policy loss must run without ratio clipping, KL-Cov).

Two ways to write one:

* verl-style, a pure function registered by one decorator::

      @token_strategy("halve", needs={"entropies"}, config=HalveConfig)   # config optional
      def halve(batch: TokenBatch, *, factor: float = 0.5):
          return torch.full(batch.mask.shape, factor)

  registers a :class:`TokenStrategy` (``TOKEN_STRATEGIES["halve"]``, callable as ``halve(batch, **args)``) and a
  protocol ``Strategy`` class (``halve.strategy_class``, registered as token strategy ``"halve"``) whose hook is
  chosen by ``kind`` and whose ``Config`` is the given one or is derived from the keyword signature;
* a ``Strategy`` subclass implementing a token hook (with optional ``needs`` / ``disables_clipping``), given by
  import path ``pkg.mod:Class`` or registered with ``register_strategy("token", name)``.
"""
from __future__ import annotations

import dataclasses
import inspect
import re
import typing
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Dict, List, Literal, Mapping, Optional, Tuple, Type

import torch
from pydantic import BaseModel, ConfigDict, Field, create_model, model_validator
from pydantic_core import PydanticUndefined

from ...registry import Registry, RegistryError
from ..protocol import (
    HOOKS,
    Strategy,
    StrategyConfig,
    StrategyEnv,
    StrategyError,
    implemented_hooks,
    register_strategy,
)

#: Optional inputs a strategy may declare in ``needs`` ("full_logprobs" = ``full_logprobs_fn`` or ``hidden`` +
#: ``lm_head_weight``). ``advantages`` and ``mask`` are always present.
INPUTS = frozenset({"logps", "old_logps", "entropies", "old_entropies", "group_size", "full_logprobs",
                    "entropies_grad"})
#: Token kinds (names used in diagnostics and docs) and the protocol hook of each.
KINDS = ("weight", "loss_term", "advantage")
HOOK_OF_KIND: Dict[str, str] = {"weight": "token_weights", "loss_term": "token_loss", "advantage": "token_advantages"}
KIND_OF_HOOK: Dict[str, str] = {hook: kind for kind, hook in HOOK_OF_KIND.items()}

TOKEN_STRATEGIES = Registry("token weighting strategy")


@dataclass(frozen=True, eq=False)
class TokenBatch:
    """Everything a token strategy may read; all [B, T] tensors share the mask's shape.

    Fields: ``advantages`` [B] or [B, T]; ``mask`` [B, T] (nonzero = valid); ``logps`` current-policy log-probs of
    the sampled tokens (may carry grad; weights only read values, ``kl_cov`` differentiates through them);
    ``old_logps`` pi_old log-probs (with a single update per rollout, pi_old = pi_theta: pass
    ``logps.detach()``); ``entropies`` current-policy entropies (detached); ``old_entropies`` pi_old entropies
    (STEER; equal to ``entropies`` when pi_old = pi_theta); ``entropies_grad`` the current-policy entropies *with*
    their gradient (EM-FT differentiates through them; given only to strategies that need it); ``group_size`` G with contiguous groups
    (TW-GRPO); ``full_logprobs_fn`` a zero-argument callable returning [B, T, V] log-softmax, or ``hidden``
    [B, T, H] + ``lm_head_weight`` [V, H] (+ ``temperature``) for the chunked TW-GRPO path (preferred when both
    are given); ``clip_low`` / ``clip_high`` the policy loss's clip range (Clip-Cov uses it unless its spec sets
    one); ``generator`` a seeded CPU ``torch.Generator`` for Clip-Cov's random choice.
    """

    advantages: torch.Tensor
    mask: torch.Tensor
    logps: Optional[torch.Tensor] = None
    old_logps: Optional[torch.Tensor] = None
    entropies: Optional[torch.Tensor] = None
    old_entropies: Optional[torch.Tensor] = None
    entropies_grad: Optional[torch.Tensor] = None
    group_size: Optional[int] = None
    full_logprobs_fn: Optional[Callable[[], torch.Tensor]] = None
    hidden: Optional[torch.Tensor] = None
    lm_head_weight: Optional[torch.Tensor] = None
    temperature: float = 1.0
    clip_low: Optional[float] = None
    clip_high: Optional[float] = None
    generator: Optional[torch.Generator] = None

    def has(self, need: str) -> bool:
        if need == "full_logprobs":
            return self.full_logprobs_fn is not None or (self.hidden is not None and self.lm_head_weight is not None)
        return getattr(self, need) is not None

    def replace(self, **changes: Any) -> "TokenBatch":
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class TokenStrategy:
    """A token strategy as a callable: ``strategy(batch, **args)`` checks the arguments and the batch inputs it
    needs, calls ``fn`` and prefixes its ``ValueError`` with the strategy's name.

    ``strategy_class`` is the protocol ``Strategy`` class the :func:`token_strategy` decorator built for it
    (``None`` for a plain function given by import path or a wrapped hook of a built strategy)."""

    name: str
    fn: Callable[..., Any]
    needs: frozenset = frozenset()
    kind: str = "weight"
    needs_fn: Optional[Callable[[Mapping[str, Any]], frozenset]] = None
    disables_clipping: bool = False
    params: tuple = field(default=(), compare=False)
    accepts_any: bool = field(default=False, compare=False)
    strategy_class: Optional[type] = field(default=None, compare=False)

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"token strategy '{self.name}': kind must be one of {KINDS}, got {self.kind!r}")
        unknown = set(self.needs) - INPUTS
        if unknown:
            raise ValueError(f"token strategy '{self.name}': unknown needs {sorted(unknown)}; known: {sorted(INPUTS)}")
        sig = inspect.signature(self.fn)
        ps = list(sig.parameters.values())[1:]  # first parameter is the batch
        named = (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
        object.__setattr__(self, "params", tuple(p.name for p in ps if p.kind in named))
        object.__setattr__(self, "accepts_any", any(p.kind == p.VAR_KEYWORD for p in ps))
        # inspect.signature(strategy) shows the real arguments (batch, *, w_min=..., ...), for recipe checkers
        object.__setattr__(self, "__signature__", sig)
        object.__setattr__(self, "__doc__", self.fn.__doc__)

    @property
    def config(self) -> Optional[Type[BaseModel]]:
        """The ``Config`` of :attr:`strategy_class` (``None`` without one)."""
        return None if self.strategy_class is None else self.strategy_class.Config

    def check_args(self, args: Mapping[str, Any]) -> None:
        """One-line ``ValueError`` naming the strategy and the first unknown argument."""
        if self.accepts_any:
            return
        for k in args:
            if k not in self.params:
                raise ValueError(f"token strategy '{self.name}': unknown argument '{k}'; "
                                 f"accepted: {', '.join(self.params) or '(none)'}")

    def requirements(self, args: Mapping[str, Any] | None = None) -> frozenset:
        args = dict(args or {})
        self.check_args(args)
        return frozenset(self.needs_fn(args)) if self.needs_fn is not None else frozenset(self.needs)

    def __call__(self, batch: TokenBatch, **args: Any):
        self.check_args(args)
        for need in sorted(self.requirements(args)):
            if not batch.has(need):
                raise ValueError(f"token strategy '{self.name}' needs batch input '{need}', which was not provided")
        try:
            return self.fn(batch, **args)
        except ValueError as exc:
            raise ValueError(f"token strategy '{self.name}': {exc}") from None


# ------------------------------------------------------------------------------------------------ configs
def _literal_choices(annotation: Any) -> Optional[tuple]:
    return tuple(typing.get_args(annotation)) if typing.get_origin(annotation) is Literal else None


class TokenStrategyConfig(StrategyConfig):
    """Base of the built-in token strategies' configs: a value outside a ``Literal`` field's choices is refused as
    ``<key> must be one of (...), got <value>`` (the wording of the pure functions' own checks)."""

    @model_validator(mode="before")
    @classmethod
    def _choices(cls, data: Any) -> Any:
        if isinstance(data, Mapping):
            for key, info in cls.model_fields.items():
                choices = _literal_choices(info.annotation)
                if choices is not None and key in data and data[key] not in choices:
                    raise ValueError(f"{key} must be one of {choices}, got {data[key]!r}")
        return data


class _OpenConfig(StrategyConfig):
    """Derived config of a function taking ``**kwargs``: any further argument is passed through."""

    model_config = ConfigDict(extra="allow")


def _class_name(name: str) -> str:
    words = [w for w in re.split(r"[^0-9A-Za-z]+", name) if w]
    return "".join(w[:1].upper() + w[1:] for w in words) or "TokenFunction"


def config_from_signature(fn: Callable[..., Any], class_name: str) -> Type[StrategyConfig]:
    """A pydantic config with one field per keyword argument of ``fn`` after the batch (annotation when it has
    one, else ``Any``; the function's default; required when it has none); unknown keys are refused unless ``fn``
    takes ``**kwargs``."""
    params = list(inspect.signature(fn).parameters.values())[1:]
    named = [p for p in params if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]
    base = _OpenConfig if any(p.kind == p.VAR_KEYWORD for p in params) else StrategyConfig
    try:
        hints = typing.get_type_hints(fn)
    except Exception:  # noqa: BLE001 - unresolvable annotations: the fields accept any value
        hints = {}

    def checkable(annotation: Any) -> Any:  # an annotation pydantic cannot check accepts any value
        try:
            create_model("_Probe", value=(annotation, None))
            return annotation
        except Exception:  # noqa: BLE001
            return Any

    fields = {p.name: (checkable(hints.get(p.name, Any)),
                       Field(... if p.default is p.empty else p.default,
                             description=f"argument '{p.name}' of {fn.__module__}.{fn.__qualname__}"))
              for p in named}
    return create_model(f"{class_name}Config", __base__=base, **fields)


def _check_config_matches(strat: TokenStrategy, config: Type[BaseModel]) -> None:
    """The Config describes exactly the function's arguments, with the same defaults (so both paths agree)."""
    fields = dict(config.model_fields)
    if not strat.accepts_any and set(fields) != set(strat.params):
        raise ValueError(f"token strategy '{strat.name}': Config fields {sorted(fields)} differ from the "
                         f"function's arguments {sorted(strat.params)}")
    params = inspect.signature(strat.fn).parameters
    for key, info in fields.items():
        if key not in params:
            continue
        have = PydanticUndefined if info.is_required() else info.get_default(call_default_factory=True)
        want = PydanticUndefined if params[key].default is inspect.Parameter.empty else params[key].default
        if not (have is want or have == want):
            raise ValueError(f"token strategy '{strat.name}': Config default of '{key}' ({have!r}) differs from "
                             f"the function's ({want!r})")


# ---------------------------------------------------------------------------------------- function bridge
class FunctionTokenStrategy(Strategy):
    """Base of the protocol classes built for token functions by :func:`token_strategy`: the hook of the
    function's kind calls ``function.fn(batch, **config)``.

    Instances carry ``arguments`` (the validated config as keyword arguments) and ``needs`` refined by them
    (e.g. ``high_entropy`` with ``entropy_source: old`` needs ``old_entropies``)."""

    kind: ClassVar[str] = "token"
    function: ClassVar[TokenStrategy]
    token_kind: ClassVar[str] = "weight"
    needs: ClassVar[frozenset] = frozenset()
    disables_clipping: ClassVar[bool] = False

    def __init__(self, config: Optional[BaseModel] = None, env: Optional[StrategyEnv] = None):
        super().__init__(config, env)
        self.arguments: Dict[str, Any] = self.config.model_dump()
        self.needs = self.function.requirements(self.arguments)

    def _call(self, batch: TokenBatch):
        return self.function.fn(batch, **self.arguments)


def _strategy_class(strat: TokenStrategy, config: Optional[Type[BaseModel]], cite: str,
                    warnings: Optional[Callable[[Any, StrategyEnv], List[str]]]) -> Type[FunctionTokenStrategy]:
    class_name = _class_name(strat.name if ":" not in strat.name else getattr(strat.fn, "__name__", "fn"))
    if config is None:
        config = config_from_signature(strat.fn, class_name)
    elif not (inspect.isclass(config) and issubclass(config, StrategyConfig)):
        raise ValueError(f"token strategy '{strat.name}': config must be a StrategyConfig subclass, got {config!r}")
    _check_config_matches(strat, config)
    hook = HOOK_OF_KIND[strat.kind]

    def run(self, batch):
        return self._call(batch)

    run.__name__, run.__qualname__ = hook, f"{class_name}.{hook}"
    run.__doc__ = f"{strat.kind} of {strat.name}: ``{strat.fn.__qualname__}(batch, **config)``."
    namespace: Dict[str, Any] = {
        "__module__": getattr(strat.fn, "__module__", __name__), "__qualname__": class_name,
        "__doc__": strat.fn.__doc__, "name": strat.name, "Config": config, "cite": cite, "function": strat,
        "token_kind": strat.kind, "needs": frozenset(strat.needs), "disables_clipping": strat.disables_clipping,
        hook: run,
    }
    if warnings is not None:
        namespace["warnings"] = classmethod(lambda cls, cfg, env: list(warnings(cfg, env)))
    return type(class_name, (FunctionTokenStrategy,), namespace)


def token_strategy(name: str, *, needs=(), kind: str = "weight", needs_fn=None, disables_clipping: bool = False,
                   config: Optional[Type[BaseModel]] = None, cite: str = "",
                   warnings: Optional[Callable[[Any, StrategyEnv], List[str]]] = None):
    """Decorator: register ``fn(batch, **args)`` as token strategy ``name``, twice over:

    * a :class:`TokenStrategy` in :data:`TOKEN_STRATEGIES` (what the decorator returns; spec dicts use it);
    * a protocol ``Strategy`` class of kind ``"token"`` (``returned.strategy_class``) whose hook is chosen by
      ``kind`` (``weight`` -> ``token_weights``, ``loss_term`` -> ``token_loss``, ``advantage`` ->
      ``token_advantages``), with class attributes ``needs`` / ``disables_clipping`` / ``token_kind``, ``Config``
      = ``config`` or one derived from ``fn``'s keyword signature, ``cite``, and ``warnings(config, env)`` (lines
      for legal settings that make the method do nothing).

    ``needs_fn(args)`` refines ``needs`` from the arguments. A given ``config`` must have exactly ``fn``'s keyword
    arguments as fields, with the same defaults (checked here)."""

    def _wrap(fn: Callable[..., Any]) -> TokenStrategy:
        strat = TokenStrategy(name=name, fn=fn, needs=frozenset(needs), kind=kind, needs_fn=needs_fn,
                              disables_clipping=disables_clipping)
        cls = _strategy_class(strat, config, cite, warnings)
        object.__setattr__(strat, "strategy_class", cls)
        if name in TOKEN_STRATEGIES:  # checked first: both registrations happen, or neither
            raise RegistryError(f"token weighting strategy '{name}' is already registered")
        register_strategy("token", name)(cls)
        TOKEN_STRATEGIES.register(name, strat)
        return strat

    return _wrap


def as_strategy(obj: Any, name: str) -> TokenStrategy:
    """A registered :class:`TokenStrategy`, or a plain callable resolved from an import path, wrapped using its
    optional ``kind`` / ``needs`` / ``disables_clipping`` attributes (default: a weight needing nothing extra)."""
    if isinstance(obj, TokenStrategy):
        return obj
    if not callable(obj):
        raise ValueError(f"token strategy '{name}' is not callable")
    return TokenStrategy(name=name, fn=obj, needs=frozenset(getattr(obj, "needs", ())),
                         kind=getattr(obj, "kind", "weight"),
                         disables_clipping=bool(getattr(obj, "disables_clipping", False)))


def function_strategy_class(obj: Any, name: str) -> Type[Strategy]:
    """The protocol class of a token function given by import path ``name``: the decorator's class for a
    :class:`TokenStrategy`, else a class built (not registered) from the plain function, its optional ``kind`` /
    ``needs`` / ``disables_clipping`` attributes and a Config derived from its keyword signature."""
    strat = as_strategy(obj, name)
    if strat.strategy_class is not None:
        return strat.strategy_class
    cls = _strategy_class(strat, None, "", None)
    object.__setattr__(strat, "strategy_class", cls)
    return cls


# ----------------------------------------------------------------------------------------- built strategies
def token_hooks(strategy: Any) -> Tuple[str, ...]:
    """The token hooks ``strategy`` (class or instance) implements, in step order; one-line ``StrategyError`` if
    none (it would do nothing)."""
    hooks = tuple(h for h in HOOKS["token"] if h in implemented_hooks(strategy))
    if not hooks:
        label = getattr(strategy, "name", "") or (strategy if inspect.isclass(strategy) else type(strategy)).__name__
        raise StrategyError(f"token strategy '{label}' implements none of the hooks of its kind "
                            f"({', '.join(HOOKS['token'])}); it would do nothing")
    return hooks


def token_kinds(strategy: Any) -> Tuple[str, ...]:
    """Token kinds (``weight`` / ``loss_term`` / ``advantage``) of a built strategy, one per implemented hook."""
    return tuple(KIND_OF_HOOK[h] for h in token_hooks(strategy))


def strategy_label(strategy: Strategy) -> str:
    return strategy.name or type(strategy).__name__


def strategy_terms(strategy: Strategy) -> List[TokenStrategy]:
    """One :class:`TokenStrategy` per token hook of a built ``strategy`` (called with no arguments: the
    strategy's config is already bound), carrying its ``needs`` and ``disables_clipping``."""
    if not isinstance(strategy, Strategy):
        raise StrategyError(f"expected a built token Strategy, got {type(strategy).__name__}")
    if strategy.kind and strategy.kind != "token":
        raise StrategyError(f"'{strategy_label(strategy)}' is a {strategy.kind} strategy, not a token strategy")
    needs = frozenset(getattr(strategy, "needs", ()) or ())
    clip = bool(getattr(strategy, "disables_clipping", False))
    return [TokenStrategy(name=strategy_label(strategy), fn=getattr(strategy, hook), needs=needs,
                          kind=KIND_OF_HOOK[hook], disables_clipping=clip) for hook in token_hooks(strategy)]


"""The strategy protocol: the hook points of a training step, what each hook receives, and how strategies are found.

Every reweighting method is a :class:`Strategy` subclass of one *kind* (the kind of weight it produces), in one
file named after the method, registered with :func:`register_strategy`. A trainer builds a context at a few fixed
points of its step and calls the hooks of every configured strategy that implements them; it never branches on a
method. A user's strategy, given in a recipe by import path (``name: my_pkg.mod:MyStrategy``), runs through exactly
the same path. Method files import torch (and numpy/math) only, never a trainer or TRL: what only a trainer can
provide (embedding texts, per-objective policy gradients, held-out evaluation, all-gather) reaches them as
callables on the context.

The GRPO step (TRL 1.16 ``GRPOTrainer``) and where each hook runs::

    prompts ─► rollout ─► completions ─► reward functions ─► rewards_NK   (all processes, failed samples NaN)
      │
      ├─ objective.mix_weights(ctx)        -> weights_K     the mix r_N = Σ_k w_k r_Nk TRL then forms
      │                                                     (fixed, lagrangian, recap, hypervolume, trust, gradient)
      ├─ objective/sequence.reshape_rewards(ctx) -> rewards_N    a new scalar reward before the baseline
      │                                                     (trust, gradient, dra), in recipe order
      ├─ advantage.estimate(ctx)           -> advantages_N  the estimator (grpo, ...); TRL's own advantages are
      │                                                     kept when nothing reshaped the reward and the
      │                                                     estimator is TRL's (``Strategy.trl_native``)
      ├─ objective/sequence.adjust_advantages(ctx) -> advantages_N   (seed, loss_reweighting, hypervolume)
    policy forward (each micro-batch) ─► logps_BT, entropies_BT        (TokenBatch)
      ├─ token.token_advantages(batch)     -> advantages_BT (entropy_advantage)
      ├─ token.token_weights(batch)        -> weights_BT    (steer, high_entropy, clip_cov, tw_grpo); multiply
      ├─ token.token_loss(batch)           -> loss_BT       (kl_cov); add
      └─ policy_loss(logps, old_logps, advantages, mask, token_weights=..., extra_token_loss=...)
    optimizer step ─► every strategy's on_step_end(ctx)                 (hypervolume's held-out evaluation)

The SFT step (TRL 1.16 ``SFTTrainer``)::

    samples ─► policy forward ─► per-token log-probs ─► SampleContext (per-sample NLL, all processes)
      └─ sample.sample_weights(ctx) -> weights_N      multiply each sample's token losses (loss_reweighting);
                                                      several multiply, with the data's ``weight`` column

Domains (data mixtures, for SFT and GRPO; the sampler draws each batch by ``weights_D``)::

    every update_every steps ─► DomainContext ─► domain.domain_weights(ctx) -> weights_D   (the sampling mix)
                                               └► domain.domain_loss_weights(ctx) -> factors_D (upweighting)

The DPO step (TRL 1.16 ``DPOTrainer``)::

    pairs ─► policy / reference sequence log-probs ─► PairContext
      ├─ pair.pair_weights(ctx)  -> weights_B       multiply the per-pair losses (madpo); several multiply
      ├─ pair.batch_beta(ctx)    -> (keep_B, beta)  filter pairs and set the batch beta (beta_dpo); at most one
      └─ dpo_loss(..., beta, weights=weights * keep) / max(Σ keep, 1)

A strategy's configuration is a pydantic model (``Config``) whose fields carry help text citing the paper and
equation; recipes are validated against it at ``posttrain validate`` time and ``docs/recipes.md`` is generated from
it. A strategy that implements none of its kind's hooks is refused (it would silently do nothing).
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Dict, List, Mapping, Optional, Sequence, Tuple, Type

import torch
from pydantic import BaseModel, ConfigDict, ValidationError

from posttrain.registry import RegistryError, import_path

__all__ = [
    "KINDS", "HOOKS", "Strategy", "StrategyConfig", "StrategyEnv", "RolloutContext", "StepEndContext",
    "PairContext", "DomainContext", "SampleContext", "mix_rewards", "StrategyError", "register_strategy", "strategy_class", "registered", "build_strategy",
    "build_strategies", "implemented_hooks", "format_validation_error",
]


class StrategyConfig(BaseModel):
    """Base of every strategy's configuration: unknown keys are errors, values are checked on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)


#: The kinds of strategy and, per kind, the hooks a strategy of that kind may implement (in step order).
HOOKS: Dict[str, Tuple[str, ...]] = {
    "objective": ("mix_weights", "reshape_rewards", "adjust_advantages", "on_step_end"),
    "sequence": ("reshape_rewards", "adjust_advantages", "on_step_end"),
    "advantage": ("estimate",),
    "token": ("token_advantages", "token_weights", "token_loss"),
    "pair": ("pair_weights", "batch_beta"),
    "domain": ("domain_weights", "domain_loss_weights"),
    "sample": ("sample_weights",),
}
KINDS: Tuple[str, ...] = tuple(HOOKS)
#: Recipe section of each kind (``weighting.<section>``; the advantage estimator is ``advantage``).
SECTIONS: Dict[str, str] = {"objective": "weighting.objectives", "sequence": "weighting.sequences",
                            "advantage": "advantage", "token": "weighting.tokens", "pair": "weighting.pairs",
                            "domain": "weighting.domains", "sample": "weighting.samples"}


class StrategyError(ValueError):
    """A problem with a strategy's configuration or use; ``str()`` is one line (the caller prefixes the key)."""


# ----------------------------------------------------------------------------------------------------------- contexts
@dataclass(frozen=True)
class StrategyEnv:
    """What is known about the run when a strategy is built (at ``posttrain validate`` time and in the trainer).

    ``reward_names`` / ``reward_weights``: one objective per reward function, in recipe order (the weights are the
    rewards' ``weight`` values); ``num_generations``: the group size G; ``max_steps``: optimizer steps of the run
    (``None`` when unknown); ``has_eval_data``: held-out prompts exist (``data.eval``); ``scale_rewards``: TRL's
    ``scale_rewards`` (``group`` / ``batch`` / ``none``); ``world_size``: processes; ``trainable_parameters``: names
    of the policy's trainable parameters (``None`` at validate time, before the model is loaded).
    """

    reward_names: Tuple[str, ...] = ()
    reward_weights: Tuple[float, ...] = ()
    num_generations: int = 2
    max_steps: Optional[int] = None
    has_eval_data: bool = False
    scale_rewards: str = "group"
    world_size: int = 1
    trainable_parameters: Optional[Tuple[str, ...]] = None
    generation_batch_size: Optional[int] = None

    @property
    def num_objectives(self) -> int:
        return len(self.reward_names)


def mix_rewards(rewards_NK: torch.Tensor, weights_K: Sequence[float]) -> torch.Tensor:
    """TRL 1.16's ``sum_then_normalize`` mix ``Σ_k w_k r_Nk`` (NaN objectives skipped; float32 weights, as TRL's
    ``reward_weights``) with NaN where every objective is missing (an unscorable sample)."""
    w = torch.tensor(list(weights_K), dtype=torch.float32, device=rewards_NK.device)
    rewards = (rewards_NK * w.unsqueeze(0)).nansum(dim=1)
    rewards[torch.isnan(rewards_NK).all(dim=1)] = torch.nan
    return rewards


def _missing(name: str) -> Callable[..., Any]:
    def fail(*args: Any, **kwargs: Any) -> Any:
        raise StrategyError(f"the trainer provides no '{name}' service in this context")

    return fail


@dataclass
class RolloutContext:
    """What the rollout-side GRPO hooks see: one generation batch of all processes (identical on every rank).

    Tensors (``N`` = completions of all processes, contiguous groups of ``group_size``; CPU or the trainer's device):

    * ``rewards_NK`` -- per-objective rewards, NaN where a reward failed or returned ``None``;
    * ``rewards_N`` -- the current scalar reward (:meth:`mix` of the current ``weights_K``: NaN where every
      objective is missing); updated by the trainer after each ``reshape_rewards`` hook. A strategy that changes
      the mix itself in ``reshape_rewards`` (the gradient strategy) also sets ``weights_K``, so that the trainer
      logs and saves the mix that formed the reward;
    * ``advantages_N`` -- the current advantages (``None`` before the estimator ran); updated after each
      ``adjust_advantages`` hook;
    * ``group_ids_N`` -- prompt group of each row; ``texts`` -- the completions as text (all processes);
    * ``completion_lengths_N`` -- completion tokens of each row (set after generation, before ``reshape_rewards``).

    Scalars: ``reward_names``, ``weights_K`` (the mix in use), ``group_size``, ``step`` (completed optimizer steps),
    ``max_steps``, ``learning_rate`` (the actor's current one), ``scale_rewards`` (TRL's), ``process_index``,
    ``num_processes``, ``mode`` (``train`` / ``eval``: strategies update their state in ``train`` only).

    Services (callables; a missing one raises a one-line :class:`StrategyError`):

    * ``all_gather(t)`` -- concatenation of every process's ``t`` along dim 0;
    * ``all_reduce_sum(t)`` -- element-wise sum over processes;
    * ``embed_completions()`` -- ``[N, D]`` sentence embeddings of ``texts`` (all-MiniLM-L6-v2, offline);
    * ``completion_logps()`` -- ``(logps_nT, mask_nT)`` of *this process's* rows under the rollout policy (no grad;
      rows ``local_rows`` of the batch);
    * ``policy_gradients(advantages_KN, parameters=None)`` -- ``[K, P]``: for each row of advantages, the gradient
      of the on-policy GRPO/DAPO surrogate ``-Σ_{i,t} A_i log π(y_i,t) / T`` over the trainable parameters whose
      name matches the regular expression ``parameters`` (all when ``None``), summed over processes;
    * ``evaluate_objectives(num_prompts=32, max_new_tokens=None)`` -- per-objective mean score of greedy
      completions of the first ``num_prompts`` held-out prompts (``K`` floats, identical on every rank);
    * ``greedy_rewards()`` -- ``[P]``: the reward (mixed with ``weights_K``) of one greedy completion of every prompt
      group of the batch, generated and scored now (ReMax's baseline);
    * ``log(key, value)`` -- add a scalar to this step's metrics.
    """

    rewards_NK: torch.Tensor
    reward_names: Tuple[str, ...]
    weights_K: Tuple[float, ...]
    group_size: int
    rewards_N: Optional[torch.Tensor] = None
    advantages_N: Optional[torch.Tensor] = None
    texts: Sequence[str] = ()
    completion_lengths_N: Optional[torch.Tensor] = None
    step: int = 0
    max_steps: Optional[int] = None
    learning_rate: float = 0.0
    scale_rewards: str = "group"
    mode: str = "train"
    process_index: int = 0
    num_processes: int = 1
    all_gather: Callable[[torch.Tensor], torch.Tensor] = field(default=lambda t: t)
    all_reduce_sum: Callable[[torch.Tensor], torch.Tensor] = field(default=lambda t: t)
    embed_completions: Callable[[], torch.Tensor] = field(default_factory=lambda: _missing("embed_completions"))
    completion_logps: Callable[[], Tuple[torch.Tensor, torch.Tensor]] = field(
        default_factory=lambda: _missing("completion_logps"))
    policy_gradients: Callable[[torch.Tensor], torch.Tensor] = field(
        default_factory=lambda: _missing("policy_gradients"))
    evaluate_objectives: Callable[[], List[float]] = field(default_factory=lambda: _missing("evaluate_objectives"))
    greedy_rewards: Callable[[], torch.Tensor] = field(default_factory=lambda: _missing("greedy_rewards"))
    log: Callable[[str, float], None] = field(default=lambda key, value: None)

    @property
    def group_ids_N(self) -> torch.Tensor:
        return torch.arange(self.rewards_NK.size(0), device=self.rewards_NK.device) // self.group_size

    def mix(self, weights_K: Optional[Sequence[float]] = None) -> torch.Tensor:
        """TRL 1.16's ``sum_then_normalize`` mix ``Σ_k w_k r_Nk`` (NaN objectives skipped) with NaN where every
        objective is missing (an unscorable sample); ``weights_K`` defaults to the mix in use."""
        return mix_rewards(self.rewards_NK, self.weights_K if weights_K is None else weights_K)

    @property
    def local_rows(self) -> slice:
        """This process's rows of the ``N`` rows (processes hold equal, contiguous shares)."""
        n = self.rewards_NK.size(0) // max(self.num_processes, 1)
        return slice(self.process_index * n, (self.process_index + 1) * n)


@dataclass
class StepEndContext:
    """What ``on_step_end`` sees after an optimizer step: ``step`` (completed steps), ``reward_names`` and the
    services ``evaluate_objectives(num_prompts=32, max_new_tokens=None)`` and ``log(key, value)`` of
    :class:`RolloutContext`."""

    step: int
    reward_names: Tuple[str, ...] = ()
    evaluate_objectives: Callable[[], List[float]] = field(default_factory=lambda: _missing("evaluate_objectives"))
    log: Callable[[str, float], None] = field(default=lambda key, value: None)


@dataclass
class PairContext:
    """What the DPO pair hooks see for one micro-batch of ``B`` preference pairs on this process.

    ``policy_chosen_B`` / ``policy_rejected_B`` / ``ref_chosen_B`` / ``ref_rejected_B``: sequence log-probs
    (policy ones may carry gradient: read values only); ``columns``: per-pair float data columns (``margin``,
    ``weight``, ...); ``beta``: the recipe's beta; ``step``; ``mode`` (``train`` / ``eval``); ``generator``: a CPU
    generator seeded identically on every rank (draws must agree across processes); services ``all_gather(t)``
    and ``log(key, value)``; ``process_index`` / ``num_processes``.
    """

    policy_chosen_B: torch.Tensor
    policy_rejected_B: torch.Tensor
    ref_chosen_B: torch.Tensor
    ref_rejected_B: torch.Tensor
    beta: float
    columns: Mapping[str, torch.Tensor] = field(default_factory=dict)
    step: int = 0
    mode: str = "train"
    generator: Optional[torch.Generator] = None
    process_index: int = 0
    num_processes: int = 1
    all_gather: Callable[[torch.Tensor], torch.Tensor] = field(default=lambda t: t)
    log: Callable[[str, float], None] = field(default=lambda key, value: None)

    @property
    def implicit_reward_gaps_B(self) -> torch.Tensor:
        """``(log π(y_w) - log π_ref(y_w)) - (log π(y_l) - log π_ref(y_l))``, detached (β-DPO's gap, before β)."""
        return ((self.policy_chosen_B - self.ref_chosen_B) - (self.policy_rejected_B - self.ref_rejected_B)).detach()


@dataclass
class DomainContext:
    """What the domain (data-mixture) hooks see, once per ``update_every`` optimizer steps (identical on every rank).

    ``domains``: the domain names (``D``); ``weights_D``: the sampling distribution in use (sums to 1);
    ``sizes_D``: rows per domain; ``step``; ``losses_D`` / ``counts_D``: per-domain training loss (SFT: token-mean
    NLL; GRPO: the negative mean reward) and samples since the last update, summed over processes (``None`` before
    any); services ``domain_gradients()`` -> ``[D, P]`` mean gradient of each domain's loss over the selected
    (e.g. LoRA) parameters on a small batch of that domain, ``heldout_gradient()`` -> ``[P]`` the same for the
    held-out set, ``heldout_losses()`` -> ``[D]`` (or ``[1]``) held-out loss per domain, ``all_reduce_sum(t)``,
    ``log(key, value)``. ``generator``: a CPU generator seeded identically on every rank.
    """

    domains: Tuple[str, ...]
    weights_D: Tuple[float, ...]
    sizes_D: Tuple[int, ...] = ()
    step: int = 0
    losses_D: Optional[torch.Tensor] = None
    counts_D: Optional[torch.Tensor] = None
    generator: Optional[torch.Generator] = None
    domain_gradients: Callable[[], torch.Tensor] = field(default_factory=lambda: _missing("domain_gradients"))
    heldout_gradient: Callable[[], torch.Tensor] = field(default_factory=lambda: _missing("heldout_gradient"))
    heldout_losses: Callable[[], torch.Tensor] = field(default_factory=lambda: _missing("heldout_losses"))
    all_reduce_sum: Callable[[torch.Tensor], torch.Tensor] = field(default=lambda t: t)
    log: Callable[[str, float], None] = field(default=lambda key, value: None)


@dataclass
class SampleContext:
    """What the SFT ``sample_weights`` hook sees for one micro-batch, gathered over all processes (identical on
    every rank; ``N`` = samples of all processes, this process's rows are :attr:`local_rows`).

    ``losses_N``: each sample's token-mean NLL of its loss tokens under the current policy (detached);
    ``num_tokens_N``: its loss-token count; ``columns``: gathered per-sample float data columns (``weight``, ...);
    ``step``: completed optimizer steps; ``mode`` (``train`` / ``eval``: the hook runs in training only);
    ``process_index`` / ``num_processes``; service ``log(key, value)``.
    """

    losses_N: torch.Tensor
    num_tokens_N: Optional[torch.Tensor] = None
    columns: Mapping[str, torch.Tensor] = field(default_factory=dict)
    step: int = 0
    mode: str = "train"
    process_index: int = 0
    num_processes: int = 1
    log: Callable[[str, float], None] = field(default=lambda key, value: None)

    @property
    def local_rows(self) -> slice:
        """This process's rows of the ``N`` rows (processes hold equal, contiguous shares)."""
        n = self.losses_N.size(0) // max(self.num_processes, 1)
        return slice(self.process_index * n, (self.process_index + 1) * n)


# ----------------------------------------------------------------------------------------------------------- strategy
class Strategy:
    """Base class of every reweighting method. Subclasses set ``kind`` and ``name`` (via :func:`register_strategy`
    or as class attributes), a ``Config`` model, and override the hooks of their kind (:data:`HOOKS`).

    ``__init__(config, env)`` receives the validated config and the :class:`StrategyEnv`; raise ``ValueError``
    (one line) for settings that conflict with the run (e.g. two objectives where three rewards are configured).
    ``warnings(config, env)`` returns lines to print for settings that are legal but probably not meant (a
    burn-in longer than the run). ``state_dict`` / ``load_state_dict`` carry state across checkpoints (JSON-like
    values). ``cite`` names the paper and equation (shown by ``posttrain strategies``)."""

    kind: ClassVar[str] = ""
    name: ClassVar[str] = ""
    Config: ClassVar[Type[BaseModel]] = StrategyConfig
    cite: ClassVar[str] = ""
    #: advantage estimators only: True when TRL's own advantages equal this estimator's (kept unless reshaped)
    trl_native: ClassVar[bool] = False
    #: domain strategies only: True when the hooks call ``domain_gradients()`` / ``heldout_gradient()`` (the run then
    #: needs a held-out set, ``data.heldout``)
    needs_heldout: ClassVar[bool] = False

    def __init__(self, config: Optional[BaseModel] = None, env: Optional[StrategyEnv] = None):
        self.config = config if config is not None else self.Config()
        self.env = env if env is not None else StrategyEnv()

    # -- hooks (override those of your kind; the base versions are never called) ------------------------------
    def mix_weights(self, ctx: RolloutContext) -> Optional[Sequence[float]]:
        """Objective weights ``w_K`` for this step's mix (``None``: keep the current ones)."""
        raise NotImplementedError

    def reshape_rewards(self, ctx: RolloutContext) -> Optional[torch.Tensor]:
        """A new scalar reward ``[N]`` before the baseline (``None``: unchanged)."""
        raise NotImplementedError

    def estimate(self, ctx: RolloutContext) -> torch.Tensor:
        """Advantages ``[N]`` from ``ctx.rewards_N``."""
        raise NotImplementedError

    def adjust_advantages(self, ctx: RolloutContext) -> Optional[torch.Tensor]:
        """New advantages ``[N]`` from ``ctx.advantages_N`` (``None``: unchanged)."""
        raise NotImplementedError

    def on_step_end(self, ctx: StepEndContext) -> None:
        """After each optimizer step (training)."""
        raise NotImplementedError

    def token_advantages(self, batch) -> torch.Tensor:
        """``[B, T]`` shaped advantages from ``batch.advantages`` (a :class:`~posttrain.weighting.tokens.TokenBatch`)."""
        raise NotImplementedError

    def token_weights(self, batch) -> torch.Tensor:
        """``[B, T]`` detached weights multiplying the per-token policy loss (masks are {0, 1} weights)."""
        raise NotImplementedError

    def token_loss(self, batch) -> torch.Tensor:
        """``[B, T]`` extra per-token loss added to the policy loss (carries gradient)."""
        raise NotImplementedError

    def pair_weights(self, ctx: PairContext) -> torch.Tensor:
        """``[B]`` detached weights multiplying the per-pair losses."""
        raise NotImplementedError

    def batch_beta(self, ctx: PairContext) -> Tuple[torch.Tensor, float]:
        """``(keep_B bool, beta)`` for this batch."""
        raise NotImplementedError

    def domain_weights(self, ctx: "DomainContext") -> Sequence[float]:
        """The next sampling distribution over the domains (``D`` values on the simplex)."""
        raise NotImplementedError

    def sample_weights(self, ctx: "SampleContext") -> torch.Tensor:
        """``[N]`` detached per-sample weights of the SFT loss (mean 1 keeps the loss scale); they multiply."""
        raise NotImplementedError

    def domain_loss_weights(self, ctx: "DomainContext") -> Sequence[float]:
        """Per-domain factors on the loss (upweighting instead of resampling), mean 1 under the sampling mix."""
        raise NotImplementedError

    # -- optional ---------------------------------------------------------------------------------------------
    @classmethod
    def warnings(cls, config: BaseModel, env: StrategyEnv) -> List[str]:
        return []

    def state_dict(self) -> Dict[str, Any]:
        return {}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        if state:
            raise ValueError(f"{self.name or type(self).__name__} keeps no state, got {sorted(state)}")

    @classmethod
    def summary(cls) -> str:
        """The docstring's first paragraph, on one line."""
        doc = (inspect.getdoc(cls) or "").strip()
        return " ".join(line.strip() for line in doc.split("\n\n")[0].splitlines())

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config!r})"


def implemented_hooks(obj: Any) -> Tuple[str, ...]:
    """The hooks (of any kind) that ``obj`` (a class or instance) overrides or, for a duck-typed user class not
    derived from :class:`Strategy`, defines."""
    cls = obj if inspect.isclass(obj) else type(obj)
    out = []
    for hooks in HOOKS.values():
        for hook in hooks:
            impl = getattr(cls, hook, None)
            if impl is None or hook in out:
                continue
            if getattr(Strategy, hook) is not impl:
                out.append(hook)
    return tuple(out)


# ----------------------------------------------------------------------------------------------------------- registry
_REGISTRY: Dict[str, Dict[str, Type[Strategy]]] = {kind: {} for kind in KINDS}


def register_strategy(kind: str, name: str, *, aliases: Sequence[str] = ()):
    """Class decorator: set ``kind`` / ``name`` and register the strategy (and its aliases) under that kind."""
    if kind not in HOOKS:
        raise ValueError(f"unknown strategy kind {kind!r}; kinds: {', '.join(KINDS)}")

    def _add(cls: Type[Strategy]) -> Type[Strategy]:
        cls.kind, cls.name = kind, name
        _check_class(cls, kind, name)
        for n in (name, *aliases):
            have = _REGISTRY[kind].get(n)
            if have is not None and have is not cls:
                raise RegistryError(f"{kind} strategy '{n}' is already registered ({have.__qualname__})")
            _REGISTRY[kind][n] = cls
        return cls

    return _add


def _check_class(cls: Any, kind: str, name: str) -> None:
    foreign = [h for h in implemented_hooks(cls) if h not in HOOKS[kind]]
    if foreign:
        raise StrategyError(f"{kind} strategy '{name}' implements {', '.join(foreign)}, which the trainer never calls "
                            f"on a {kind} strategy (its hooks: {', '.join(HOOKS[kind])})")
    if not [h for h in implemented_hooks(cls) if h in HOOKS[kind]]:
        raise StrategyError(f"{kind} strategy '{name}' implements none of the hooks of its kind "
                            f"({', '.join(HOOKS[kind])}); it would do nothing")
    config = getattr(cls, "Config", None)
    if not (inspect.isclass(config) and issubclass(config, BaseModel)):
        raise StrategyError(f"{kind} strategy '{name}': Config must be a pydantic model class")


def _load_builtins() -> None:
    """Import the modules that register the built-in strategies (once)."""
    import posttrain.weighting.builtin  # noqa: F401


def registered(kind: str) -> Dict[str, Type[Strategy]]:
    """``{name: class}`` of the built-in strategies of ``kind`` (aliases included)."""
    _load_builtins()
    return dict(_REGISTRY[kind])


def strategy_class(kind: str, name: str) -> Type[Strategy]:
    """The registered class, or the class at an import path ``pkg.mod:Class`` (checked like a registered one)."""
    _load_builtins()
    if kind not in HOOKS:
        raise StrategyError(f"unknown strategy kind {kind!r}; kinds: {', '.join(KINDS)}")
    if name in _REGISTRY[kind]:
        return _REGISTRY[kind][name]
    if ":" not in name:
        known = ", ".join(sorted(_REGISTRY[kind])) or "(none)"
        raise RegistryError(f"unknown {kind} strategy '{name}'; known: {known}; or give an import path "
                            f"'package.module:Class'")
    cls = import_path(name, f"{kind} strategy")
    if not inspect.isclass(cls):
        raise StrategyError(f"{kind} strategy '{name}' must be a class (a Strategy subclass), got "
                            f"{type(cls).__name__}")
    if not issubclass(cls, Strategy):
        raise StrategyError(f"{kind} strategy '{name}' must subclass posttrain.weighting.protocol.Strategy")
    if cls.kind and cls.kind != kind:
        raise StrategyError(f"'{name}' is a {cls.kind} strategy, not a {kind} strategy")
    _check_class(cls, kind, name)
    return cls


def format_validation_error(exc: ValidationError) -> str:
    """One line from a pydantic error: ``key: message (got value)``."""
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"])
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        msg = "unknown argument"
    got = ""
    if err["type"] not in ("missing", "extra_forbidden") and "input" in err \
            and not isinstance(err["input"], (dict, list)):
        got = f" (got {err['input']!r})"
    return f"{loc + ': ' if loc else ''}{msg}{got}"


def _config_of(cls: Type[Strategy], args: Mapping[str, Any], env: StrategyEnv) -> BaseModel:
    defaults = getattr(cls, "config_defaults", None)
    merged = {**(defaults(env) if callable(defaults) else {}), **args}
    try:
        return cls.Config(**merged)
    except ValidationError as exc:
        err = exc.errors()[0]
        label_ = cls.name or cls.__name__
        if err["type"] == "extra_forbidden":
            accepted = ", ".join(cls.Config.model_fields) or "(none)"
            raise StrategyError(f"{label_}: unknown argument '{'.'.join(str(p) for p in err['loc'])}'; accepted: "
                                f"{accepted}") from None
        raise StrategyError(f"{label_}: {format_validation_error(exc)}") from None


def split_spec(kind: str, spec: Any) -> Tuple[str, Dict[str, Any], Dict[str, Dict[str, Any]]]:
    """``(name, args, blocks)`` of a recipe spec ``{name: ..., <arg>: value, <other strategy>: {...}}``.

    Argument blocks: a mapping under the name of another registered strategy of the same kind is that strategy's
    arguments, used only when it is selected, so a recipe switches strategy with one override
    (``weighting.objectives.name=lagrangian``)."""
    if isinstance(spec, str):
        spec = {"name": spec}
    if isinstance(spec, BaseModel):
        spec = spec.model_dump()
    if not isinstance(spec, Mapping):
        raise StrategyError(f"a strategy spec must be a mapping with a 'name' key, got {spec!r}")
    args = dict(spec)
    name = args.pop("name", None)
    if not isinstance(name, str) or not name:
        raise StrategyError(f"a strategy spec needs a 'name' string, got {spec!r}")
    known = registered(kind)
    blocks = {k: args.pop(k) for k in list(args) if k in known and k != name and isinstance(args[k], Mapping)}
    if name in args and isinstance(args[name], Mapping):
        args = {**args.pop(name), **args}
    return name, args, blocks


def build_strategy(kind: str, spec: Any, env: Optional[StrategyEnv] = None) -> Strategy:
    """Build one strategy of ``kind`` from a recipe spec. Errors are one line (``RegistryError`` for an unknown
    name, :class:`StrategyError` / ``ValueError`` otherwise) naming the strategy; the caller prefixes the key path."""
    env = env or StrategyEnv()
    name, args, blocks = split_spec(kind, spec)
    for other, block in blocks.items():  # the other blocks are checked too: a typo never waits for a switch
        try:
            build_strategy(kind, {"name": other, **block}, env)
        except (StrategyError, ValueError) as exc:
            raise StrategyError(f"{other} (argument block): {exc}") from None
    cls = strategy_class(kind, name)
    config = _config_of(cls, args, env)
    try:
        return cls(config, env)
    except (TypeError, ValueError) as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        label = cls.name or name
        raise StrategyError(msg if msg.startswith(f"{label}") else f"{label}: {msg}") from None


def build_strategies(kind: str, specs: Sequence[Any], env: Optional[StrategyEnv] = None,
                     *, unique: bool = True) -> List[Strategy]:
    """Build a list of strategies; errors are prefixed with the list index (``0: steer: ...``)."""
    out: List[Strategy] = []
    seen: Dict[str, int] = {}
    for i, spec in enumerate(specs):
        try:
            s = build_strategy(kind, spec, env)
        except (StrategyError, RegistryError, ValueError) as exc:
            raise type(exc)(f"{i}: {exc}") from None
        label = s.name or type(s).__name__
        if unique and label in seen:
            raise StrategyError(f"{label} is listed twice")
        seen[label] = i
        out.append(s)
    return out


def strategy_warnings(strategies: Sequence[Strategy]) -> List[str]:
    out = []
    for s in strategies:
        out.extend(f"{s.name}: {w}" for w in type(s).warnings(s.config, s.env))
    return out


def label(strategy: Any, kind: str = "") -> str:
    """``kind strategy 'name'`` for messages (``kind``: the kind to name when the class declares none, e.g. a
    user's class given by import path)."""
    return f"{getattr(strategy, 'kind', '') or kind or 'a'} strategy '{getattr(strategy, 'name', '') or type(strategy).__name__}'"


def required_columns(strategies: Sequence[Any]) -> List[Tuple[str, str]]:
    """``[(column, strategy name), ...]``: the per-example data columns the strategies read (their ``columns``
    class attribute; pair and sample strategies receive them in ``ctx.columns``)."""
    return [(str(col), getattr(s, "name", "") or type(s).__name__) for s in strategies
            for col in getattr(s, "columns", ()) or ()]


def with_hook(strategies: Sequence[Any], hook: str) -> List[Any]:
    """The strategies (in order) that implement ``hook``."""
    return [s for s in strategies if hook in implemented_hooks(s)]

"""Load a YAML recipe, apply ``key.path=value`` overrides, validate, and report problems in one line."""
from __future__ import annotations

import copy
import dataclasses
import re
import typing
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Tuple

import yaml
from pydantic import TypeAdapter, ValidationError

from .schema import Recipe

# The shipped recipes are package data: ``posttrain/recipes/shipped`` is a symlink to the repository's top-level
# ``recipes/`` directory (the one users browse and edit), and setuptools copies the files it points to into the
# wheel and the sdist, so an installed posttrain has them too.  Resolved, so paths print as ``.../recipes/x.yaml``
# in a checkout.
RECIPES_DIR = (Path(__file__).resolve().parent / "shipped").resolve()


class RecipeError(ValueError):
    """A user-input problem.  ``str(err)`` is one line naming the file / key path and what is wrong."""


def _read_yaml(path: Path) -> Dict[str, Any]:
    if not path.exists():
        raise RecipeError(f"recipe file '{path}' does not exist")
    if not path.is_file():
        raise RecipeError(f"recipe path '{path}' is not a file")
    try:
        text = path.read_text()
    except OSError as exc:
        raise RecipeError(f"cannot read recipe '{path}': {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)  # safe_load: a recipe can never construct Python objects
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise RecipeError(f"{path}: malformed YAML{where}: {problem}") from None
    if data is None:
        raise RecipeError(f"{path}: the recipe is empty")
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: the top level of a recipe must be a mapping of sections, got {type(data).__name__}")
    return data


def _deep_merge(base: Dict[str, Any], over: Dict[str, Any]) -> Dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def shipped_recipe_path(name: str) -> Optional[Path]:
    """The shipped recipe called ``name`` (``tiny_grpo`` or ``tiny_grpo.yaml``), or None."""
    if not name or "/" in name or "\\" in name or name.startswith("."):
        return None
    p = RECIPES_DIR / (name if name.endswith((".yaml", ".yml")) else f"{name}.yaml")
    return p if p.is_file() else None


def _read_with_extends(path: Path, seen: tuple = ()) -> Dict[str, Any]:
    """``extends: other.yaml`` merges this recipe over another: mappings merge key by key, everything else (lists
    included) replaces.  The base is a path relative to the recipe's directory or, when no such file exists, the
    name of a shipped recipe (``extends: tiny_grpo``), so a recipe anywhere can build on the shipped ones.  Chains
    are allowed, cycles are an error."""
    data = _read_yaml(path)
    base = data.pop("extends", None)
    if base is None:
        return data
    if not isinstance(base, str) or not base.strip():
        raise RecipeError(f"{path}: extends: must be a path to another recipe file or a shipped recipe name "
                          f"(got {base!r})")
    base_path = (path.parent / base).expanduser().resolve()
    if not base_path.exists():
        shipped = shipped_recipe_path(base)
        if shipped is None:
            raise RecipeError(f"{path}: extends: '{base}' is neither a recipe file (no '{base_path}') nor a "
                              f"shipped recipe (see `posttrain recipes`)")
        base_path = shipped.resolve()
    if base_path in seen or base_path == path.resolve():
        raise RecipeError(f"{path}: extends: '{base}' makes a cycle")
    return _deep_merge(_read_with_extends(base_path, seen + (path.resolve(),)), data)


def parse_override(item: str) -> Tuple[List[str], Any]:
    if "=" not in item:
        raise RecipeError(f"override '{item}' must look like key.path=value (e.g. train.max_steps=5)")
    key, _, raw = item.partition("=")
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise RecipeError(f"override '{item}' has an empty key path")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw  # keep as string; validation will complain if the type is wrong
    return key.split("."), value


def apply_overrides(data: Dict[str, Any], overrides: Iterable[str]) -> Dict[str, Any]:
    """Return a copy of ``data`` with dotted overrides applied (list items by index: ``rewards.0.weight=2``)."""
    out = copy.deepcopy(data)
    for item in overrides:
        parts, value = parse_override(item)
        node: Any = out
        for i, part in enumerate(parts[:-1]):
            where = ".".join(parts[: i + 1])
            if isinstance(node, list):
                node = node[_list_index(part, node, where)]
            elif isinstance(node, dict):
                if node.get(part) is None:
                    node[part] = {}
                node = node[part]
            else:
                raise RecipeError(f"override '{item}': '{where}' is not a section")
        last = parts[-1]
        if isinstance(node, list):
            node[_list_index(last, node, ".".join(parts))] = value
        elif isinstance(node, dict):
            node[last] = value
        else:
            raise RecipeError(f"override '{item}': '{'.'.join(parts[:-1])}' is not a section")
    return out


def _list_index(part: str, node: list, where: str) -> int:
    if not part.lstrip("-").isdigit() or not -len(node) <= int(part) < len(node):
        raise RecipeError(f"override key '{where}': index '{part}' is not valid for a list of {len(node)}")
    return int(part)


def _model_in(annotation):
    """The pydantic model class inside a field annotation (``Optional[X]``, ``List[X]``, ``X``), or None."""
    from pydantic import BaseModel

    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def _sibling_keys(loc: tuple, root=Recipe) -> List[str]:
    """The keys allowed next to the key at ``loc`` (the fields of the section that holds it)."""
    cls = root
    for part in loc[:-1]:
        if isinstance(part, int):
            continue  # a list item: same model as the list
        field = cls.model_fields.get(part) if cls is not None else None
        if field is None:
            return []
        cls = _model_in(field.annotation)
    return list(cls.model_fields) if cls is not None else []


def _format_validation_error(err: ValidationError, source: str, root=Recipe) -> str:
    """One line for pydantic's errors: the first unknown key if there is one (a typo such as ``modle:`` also makes
    ``model`` missing; the typo is the cause), with the closest allowed key (difflib), else the first error."""
    import difflib

    errors = err.errors()
    first = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
    loc = ".".join(str(p) for p in first["loc"] if not str(p).startswith("<"))  # union tags: <dataset>, ...
    msg = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        msg = "unknown key"
        key = first["loc"][-1] if first["loc"] else None
        close = difflib.get_close_matches(str(key), _sibling_keys(tuple(first["loc"]), root), n=1, cutoff=0.6)
        if close:
            msg += f" (did you mean '{close[0]}'?)"
    elif first["type"] == "missing":
        msg = "required key is missing"
    got = ""
    if first["type"] not in ("missing", "extra_forbidden") and "input" in first and not isinstance(first["input"], (dict, list)):
        got = f" (got {first['input']!r})"
    more = f" [+{len(errors) - 1} more problem(s)]" if len(errors) > 1 else ""
    return f"{source}: {loc + ': ' if loc else ''}{msg}{got}{more}"


def _check_trl_fields(values: Dict[str, Any], cfg_cls, prefix: str, source: str) -> None:
    """Every key of ``values`` must be a field of the TRL config dataclass ``cfg_cls``, with a value of its type."""
    fields = {f.name: f for f in dataclasses.fields(cfg_cls)}
    hints = typing.get_type_hints(cfg_cls)
    for key, value in values.items():
        if key not in fields:
            raise RecipeError(f"{source}: {prefix}.{key}: unknown key (not a field of trl.{cfg_cls.__name__})")
        try:
            adapter = TypeAdapter(hints.get(key, Any))
        except Exception:  # noqa: BLE001 - exotic annotation: TRL itself will check it
            continue
        try:
            # Keep the coerced value: YAML reads 1e-5 (no dot) as the *string* '1e-5', which TRL would pass
            # straight to the optimizer.
            values[key] = adapter.validate_python(value, strict=False)
        except ValidationError as exc:
            msg = exc.errors()[0]["msg"]
            raise RecipeError(f"{source}: {prefix}.{key}: {msg} (got {value!r})") from None


def _check_algorithm_sections(recipe: Recipe, source: str) -> None:
    """Sections that belong to another algorithm are errors, not silently ignored; the reward-model stage's
    ``reward_model.train`` keys are checked against ``trl.RewardConfig``."""
    w = recipe.weighting
    if recipe.algorithm == "grpo" and w.pairs:
        raise RecipeError(f"{source}: weighting.pairs: pair strategies need algorithm 'dpo' or 'reward_model+dpo'")
    if recipe.algorithm == "sft" and w.pairs:
        raise RecipeError(f"{source}: weighting.pairs: pair strategies need algorithm 'dpo' or 'reward_model+dpo' "
                          f"(SFT takes weighting.samples)")
    if recipe.algorithm != "sft" and w.samples:
        raise RecipeError(f"{source}: weighting.samples: sample strategies weight the SFT loss; they need "
                          f"algorithm 'sft' (GRPO's loss_reweighting is under weighting.sequences)")
    if recipe.algorithm != "grpo":
        takes = "SFT takes weighting.samples" if recipe.algorithm == "sft" else "DPO takes weighting.pairs"
        for key, value in (("tokens", w.tokens), ("sequences", w.sequences), ("objectives", w.objectives)):
            if value:
                raise RecipeError(f"{source}: weighting.{key}: not used by algorithm '{recipe.algorithm}' "
                                  f"({takes})")
    _check_mixture(recipe, source)
    _check_eval_mixture(recipe, source)
    if recipe.algorithm == "reward_model+dpo" and recipe.reward_model.source == "train":
        from trl import RewardConfig

        reserved = [k for k in recipe.reward_model.train
                    if k in ("output_dir", "seed", "report_to", "deepspeed", "resume_from_checkpoint")]
        if reserved:
            raise RecipeError(f"{source}: reward_model.train.{reserved[0]}: set by posttrain from the recipe")
        _check_trl_fields(recipe.reward_model.train, RewardConfig, "reward_model.train", source)
        _check_trl_values(recipe.reward_model.train, "reward_model.train", source)


def _check_mixture(recipe: Recipe, source: str) -> None:
    """``data.train: {mixture: [...]}`` and ``weighting.domains``: algorithm, unique domains, initial weights that form
    a distribution (all given or none), a strategy only with a mixture, a held-out set for one that needs it."""
    def fail(key: str, msg: str) -> None:
        raise RecipeError(f"{source}: {key}: {msg}")

    mixture = getattr(recipe.data.train, "mixture", None)
    domains = recipe.weighting.domains
    if mixture is None:
        if domains:
            fail("weighting.domains", "a domain strategy needs a data mixture: data.train: {mixture: [{name: ..., "
                                      "domain: ...}, ...]}")
        if recipe.data.heldout is not None:
            fail("data.heldout", "the held-out set of a domain strategy; set it with a data.train mixture")
        return
    if recipe.algorithm not in ("sft", "grpo"):
        fail("data.train.mixture", f"data mixtures are for algorithm 'sft' and 'grpo', not '{recipe.algorithm}'")
    seen: Dict[str, int] = {}
    for i, entry in enumerate(mixture):
        if entry.domain in seen:
            fail(f"data.train.mixture.{i}.domain", f"domain '{entry.domain}' is also data.train.mixture."
                                                   f"{seen[entry.domain]}'s; each domain once")
        seen[entry.domain] = i
    given = [i for i, e in enumerate(mixture) if e.weight is not None]
    if given and len(given) < len(mixture):
        missing = next(i for i in range(len(mixture)) if i not in given)
        fail(f"data.train.mixture.{missing}.weight", "give an initial weight for every domain or for none")
    if given:
        total = sum(e.weight for e in mixture)
        if abs(total - 1.0) > 1e-6:
            fail(f"data.train.mixture.{len(mixture) - 1}.weight", f"the initial weights must sum to 1 (they sum "
                                                                  f"to {total:g})")
    if domains:
        from posttrain.data.mixture import split_domain_spec
        from posttrain.weighting.protocol import strategy_class

        try:
            spec, _ = split_domain_spec(domains[0])
        except ValueError as exc:
            fail("weighting.domains.0", str(exc))
        cls = strategy_class("domain", spec["name"])  # the name was checked with the other strategies
        if cls.needs_heldout and recipe.data.heldout is None:
            fail("weighting.domains.0", f"{spec['name']} needs a held-out set (its gradient): set data.heldout "
                                        f"(e.g. clean rows of the target task, apart from data.eval)")
        if spec.get("sharded_gradients"):
            fail("weighting.domains.0.sharded_gradients", "the trainer's gradient services return full gradients "
                                                          "(summed over processes); set it to false")


def _check_eval_mixture(recipe: Recipe, source: str) -> None:
    """``data.eval: {mixture: [...]}``: each domain once (they key ``by_domain``)."""
    mixture = getattr(recipe.data.eval, "mixture", None) or []
    seen: Dict[str, int] = {}
    for i, entry in enumerate(mixture):
        if entry.domain in seen:
            raise RecipeError(f"{source}: data.eval.mixture.{i}.domain: domain '{entry.domain}' is also "
                              f"data.eval.mixture.{seen[entry.domain]}'s; each domain once")
        seen[entry.domain] = i


# The loss types TRL 1.16's DPOTrainer._compute_loss dispatches on; DPOConfig itself accepts any string and the
# run would only fail at its first step.
DPO_LOSS_TYPES = frozenset({"sigmoid", "sigmoid_norm", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair",
                            "sppo_hard", "aot", "aot_unpaired", "apo_zero", "apo_down", "discopop", "sft"})


# The loss types TRL 1.16's GRPOTrainer._compute_loss dispatches on; GRPOConfig accepts any string and the run
# would only fail at its first step ("Unknown loss type").
GRPO_LOSS_TYPES = frozenset({"grpo", "bnpo", "dr_grpo", "dapo", "cispo", "sapo", "luspo", "vespo"})

# The loss types TRL 1.16's SFTTrainer.compute_loss knows ("chunked_nll" is its deprecated alias of "nll").
SFT_LOSS_TYPES = frozenset({"nll", "dft", "chunked_nll"})


def _check_trl_values(values: Dict[str, Any], prefix: str, source: str) -> None:
    """Values TRL's configs accept but its trainers reject (or mishandle) only once training runs: reported now.

    Shared by ``train`` and ``reward_model.train``; each key is checked only when present (the loader has already
    checked that it is a field of the TRL config)."""
    def fail(key: str, msg: str) -> None:
        raise RecipeError(f"{source}: {prefix}.{key}: {msg} (got {values[key]!r})")

    def number(key: str):
        v = values.get(key)
        return v if isinstance(v, (int, float)) and not isinstance(v, bool) else None

    if number("temperature") is not None and values["temperature"] <= 0:
        fail("temperature", "must be > 0 (sampling divides the logits by it)")
    if number("gradient_accumulation_steps") is not None and values["gradient_accumulation_steps"] < 1:
        fail("gradient_accumulation_steps", "must be >= 1")
    for key in ("max_completion_length", "max_length", "max_prompt_length"):
        if number(key) is not None and values[key] <= 0:
            fail(key, "must be > 0 (or null where TRL allows no limit)")
    if values.get("push_to_hub"):
        fail("push_to_hub", "posttrain runs offline and never pushes to a hub; the trained model is saved in "
                            "<output.dir>/model (output.save_model)")
    strategy = values.get("eval_strategy")
    if strategy is not None and str(getattr(strategy, "value", strategy)) != "no":
        fail("eval_strategy", "TRL's in-training evaluation is not used by posttrain (no eval_dataset is passed "
                              "to the trainer; data.eval is evaluated before and after training, see eval); use 'no'")


def _check_train_section(recipe: Recipe, source: str) -> None:
    """Keys under ``train:`` must be fields of TRL's config for the algorithm, with values of the right type."""
    if recipe.algorithm == "grpo":
        from trl import GRPOConfig as cfg_cls
    elif recipe.algorithm == "sft":
        from trl import SFTConfig as cfg_cls
    else:
        from trl import DPOConfig as cfg_cls
    _check_trl_fields(recipe.train, cfg_cls, "train", source)
    _check_trl_values(recipe.train, "train", source)
    if recipe.algorithm == "grpo" and "loss_type" in recipe.train and recipe.train["loss_type"] not in GRPO_LOSS_TYPES:
        raise RecipeError(f"{source}: train.loss_type: unknown GRPO loss type {recipe.train['loss_type']!r}; "
                          f"TRL 1.16 knows: {', '.join(sorted(GRPO_LOSS_TYPES))}")
    # Values TRL would reject in __post_init__ with a multi-line traceback: check the common ones here.
    ng = recipe.train.get("num_generations", 8 if recipe.algorithm == "grpo" else None)
    if recipe.algorithm == "grpo" and isinstance(ng, int) and ng < 2:
        raise RecipeError(f"{source}: train.num_generations: GRPO needs at least 2 generations per prompt (got {ng})")
    if recipe.algorithm == "sft" and "loss_type" in recipe.train and recipe.train["loss_type"] not in SFT_LOSS_TYPES:
        raise RecipeError(f"{source}: train.loss_type: unknown SFT loss type {recipe.train['loss_type']!r}; "
                          f"TRL 1.16 knows: {', '.join(sorted(SFT_LOSS_TYPES))}")
    if recipe.algorithm in ("dpo", "reward_model+dpo") and "loss_type" in recipe.train:
        types = recipe.train["loss_type"]
        for t in [types] if isinstance(types, str) else types:
            if t not in DPO_LOSS_TYPES:
                raise RecipeError(f"{source}: train.loss_type: unknown DPO loss type {t!r}; "
                                  f"TRL 1.16 knows: {', '.join(sorted(DPO_LOSS_TYPES))}")
    for key in ("learning_rate", "max_steps", "per_device_train_batch_size"):
        v = recipe.train.get(key)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and v <= 0 and not (key == "max_steps" and v == -1):
            raise RecipeError(f"{source}: train.{key}: must be > 0 (got {v!r})")


def _unknown_args(obj, args: Dict[str, Any]) -> Optional[str]:
    """Name the first argument ``obj`` (function or class) does not accept, with the accepted ones; None if fine."""
    import inspect

    try:
        params = inspect.signature(obj).parameters
    except (TypeError, ValueError):
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return None
    accepted = [n for n, p in params.items() if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]
    for key in args:
        if key not in accepted:
            return f"unknown argument '{key}'; accepted: {', '.join(accepted) or '(none)'}"
    return None


def _check_policy_stats_reward(recipe: Recipe, path: str, name: str, fail) -> None:
    """A reward that reads the rollout policy's log-probs (EM-RL's ``neg_entropy``) scores GRPO rollouts only: not
    the greedy evaluation, ReMax's greedy baseline or an objective strategy's held-out evaluation, which have no
    rollout policy statistics."""
    what = f"{name} reads the rollout policy's log-probs (EM-RL), so it can only score GRPO training rollouts"
    if path == "eval.reward":
        fail(path, f"{what}, not the evaluation; use a task reward here (e.g. math_answer)")
    if recipe.algorithm != "grpo":
        fail(path, f"{what}; algorithm '{recipe.algorithm}' has none")
    if path == "rewards.0" and recipe.eval.reward is None and recipe.eval.enabled and recipe.data.eval is not None:
        fail("eval.reward", f"the evaluation scores with rewards.0 by default, and {what}; set eval.reward "
                            f"(e.g. {{name: math_answer}}) or eval.enabled=false")
    advantage = getattr(recipe.advantage, "name", None) if recipe.advantage is not None else None
    if advantage == "remax":
        fail(path, f"{what}, not ReMax's greedy baseline (advantage: remax); use grpo or rloo")
    objective = getattr(recipe.weighting.objectives, "name", None) if recipe.weighting.objectives else None
    if objective == "hypervolume":
        fail(path, f"{what}, not the held-out greedy evaluation of weighting.objectives 'hypervolume'")


def _check_names(recipe: Recipe, source: str, warnings_out: List[str]) -> None:
    """Registered names (rewards, datasets, strategies) and their arguments, without loading any model."""
    from posttrain.data import DATASETS
    from posttrain.registry import RegistryError
    from posttrain.rewards import build_reward

    def fail(path: str, msg) -> None:
        raise RecipeError(f"{source}: {path}: {msg}")

    def resolve(path: str, getter, name: str):
        try:
            return getter(name)
        except RegistryError as exc:
            fail(path, exc)

    rewards = [(f"rewards.{i}", spec) for i, spec in enumerate(recipe.rewards)]
    if recipe.eval.reward is not None:
        rewards.append(("eval.reward", recipe.eval.reward))
    reward_names = []
    for path, spec in rewards:
        try:
            fn = build_reward(spec.name, spec.args)  # cheap: reward models load lazily on first call
        except RegistryError as exc:
            fail(f"{path}.name", exc)
        except (TypeError, ValueError) as exc:
            fail(f"{path}.args", exc)
        if path.startswith("rewards."):
            reward_names.append(getattr(fn, "__name__", spec.name))
        if getattr(fn, "needs_policy_stats", False):
            _check_policy_stats_reward(recipe, path, spec.name, fail)
    train = recipe.data.train
    datasets = ([(f"data.train.mixture.{i}", e) for i, e in enumerate(train.mixture)] if hasattr(train, "mixture")
                else [("data.train", train)])
    ev = recipe.data.eval
    datasets += ([(f"data.eval.mixture.{i}", e) for i, e in enumerate(ev.mixture)] if hasattr(ev, "mixture")
                 else [("data.eval", ev)] if ev is not None else [])
    datasets += [("data.heldout", recipe.data.heldout)] if recipe.data.heldout is not None else []
    for path, spec in datasets:
        builder = resolve(f"{path}.name", DATASETS.get, spec.name)
        problem = _unknown_args(builder, spec.args)
        if problem:
            fail(f"{path}.args", problem)

    from posttrain.recipes.strategies import check_strategies

    for line in check_strategies(recipe, reward_names, fail):
        warnings_out.append(f"{source}: {line}")


def load_recipe(path: str | Path, overrides: Iterable[str] = (), *, check_registries: bool = True) -> Recipe:
    """Read, override, validate.  Raises :class:`RecipeError` (one line) on any problem."""
    path = Path(path)
    data = apply_overrides(_read_with_extends(path), list(overrides))
    source = str(path)
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as exc:
        raise RecipeError(_format_validation_error(exc, source)) from None
    if recipe.name is None:
        recipe.name = re.sub(r"[^A-Za-z0-9._-]", "_", path.stem).lstrip("._-") or "run"
    _check_train_section(recipe, source)
    if check_registries:
        warned: List[str] = []
        _check_names(recipe, source, warned)
        for line in warned:
            _warn(line)
    _check_algorithm_sections(recipe, source)  # after the names, so an unknown name is reported as such
    for line in relift_warnings(recipe):
        _warn(f"{source}: {line}")
    return recipe


def relift_warnings(recipe: Recipe) -> List[str]:
    """A ReLIFT section that can never start an SFT phase: ``relift.sft_data_size`` hardest prompts are more than
    the prompts the run generates for in ``train.max_steps`` steps on one process (more processes see more; with
    dynamic sampling, every round counts)."""
    cfg = recipe.relift
    steps = recipe.train.get("max_steps", -1)
    if cfg is None or not isinstance(steps, int) or isinstance(steps, bool) or steps <= 0:
        return []
    t = recipe.train
    per_step = (t.get("per_device_train_batch_size", 8) * t.get("gradient_accumulation_steps", 1)
                // max(int(t.get("num_generations", 8) or 8), 1))
    seen = steps * per_step
    if recipe.rollout.dynamic_sampling is not None:  # every generation round's prompts are candidates
        seen *= recipe.rollout.dynamic_sampling.max_rounds
    if cfg.sft_data_size > seen:
        return [f"relift.sft_data_size ({cfg.sft_data_size}) exceeds the {seen} prompt(s) the run rolls out in "
                f"train.max_steps={steps} steps on one process: no SFT phase can ever start"]
    return []


def _warn(line: str) -> None:
    """A setting that is legal but probably not meant (it would make a method do nothing): one line on stderr, once
    per process (rank 0 only under a launcher)."""
    import os
    import sys

    if os.environ.get("RANK", "0") == "0" and line not in _WARNED:
        _WARNED.add(line)
        print(f"posttrain: warning: {line}", file=sys.stderr, flush=True)


_WARNED: set = set()


def shipped_recipes(directory: Optional[Path] = None) -> List[Tuple[str, str, Path]]:
    """``(name, description, path)`` of the recipes shipped in ``recipes/``."""
    directory = directory or RECIPES_DIR
    out = []
    for p in sorted(directory.glob("*.yaml")):
        try:
            data = yaml.safe_load(p.read_text()) or {}
            desc = str(data.get("description", "")).strip().splitlines()[0] if data.get("description") else ""
        except (yaml.YAMLError, OSError):
            desc = "(unreadable)"
        out.append((p.stem, desc, p))
    return out


# --trl-config: a TRL YAML config (as for `trl grpo --config file.yaml`) becomes recipe overrides. Keys of TRL's
# ScriptArguments / ModelConfig that posttrain sets elsewhere are mapped; every other key is a train: field.
_TRL_KEY_MAP = {"model_name_or_path": "model.name", "output_dir": "output.dir", "seed": "seed",
                "report_to": "output.report_to", "logging_steps": "output.logging_steps",
                "vllm_mode": "rollout.mode", "vllm_server_base_url": "rollout.server_base_url",
                "vllm_gpu_memory_utilization": "rollout.gpu_memory_utilization", "deepspeed": "distributed.config",
                "trust_remote_code": "model.trust_remote_code", "dtype": "model.dtype", "torch_dtype": "model.dtype"}
_TRL_LORA_KEYS = {"lora_r": "r", "lora_alpha": "alpha", "lora_dropout": "dropout", "lora_target_modules": "target_modules"}
_TRL_DATA_KEYS = ("dataset_name", "dataset_config", "dataset_train_split", "dataset_test_split", "datasets")


def trl_config_overrides(path: str | Path) -> List[str]:
    """Dotted recipe overrides equivalent to a TRL YAML config file (one line errors naming the file and key).

    ``model_name_or_path`` -> ``model.name``, ``output_dir`` -> ``output.dir``, ``report_to`` / ``logging_steps`` ->
    ``output.*``, ``use_vllm`` / ``vllm_*`` -> ``rollout.*``, ``deepspeed`` -> ``distributed.config``, ``use_peft`` with
    ``lora_*`` -> ``model.lora``, ``dtype`` -> ``model.dtype``; every other key -> ``train.<key>`` (checked against
    TRL's config class like any ``train:`` key). Hub dataset keys are refused: data comes from ``data.train``."""
    path = Path(path)
    data = _read_yaml(path)
    out: List[str] = []

    def add(key: str, value: Any) -> None:
        dumped = yaml.safe_dump(value, default_flow_style=True, width=10**9).strip()
        out.append(f"{key}={dumped.removesuffix('...').strip()}")

    lora = {_TRL_LORA_KEYS[k]: v for k, v in data.items() if k in _TRL_LORA_KEYS and v is not None}
    for key, value in data.items():
        if key in _TRL_DATA_KEYS:
            raise RecipeError(f"{path}: {key}: posttrain reads its data from data.train / data.eval (local files or "
                              f"built-in datasets), not from a hub dataset; remove it from the TRL config")
        if key in _TRL_LORA_KEYS or key == "use_peft":
            continue
        if key == "use_vllm":
            add("rollout.engine", "vllm" if value else "hf")
        elif key in _TRL_KEY_MAP:
            add(_TRL_KEY_MAP[key], [value] if key == "report_to" and isinstance(value, str) else value)
        else:
            add(f"train.{key}", value)
    if data.get("use_peft"):
        add("model.lora", lora)
    elif lora:
        raise RecipeError(f"{path}: {', '.join(sorted(k for k in data if k in _TRL_LORA_KEYS))}: set use_peft: true "
                          f"to train LoRA adapters (or remove the lora_* keys)")
    return out
